//! The agent against a cluster that misbehaves (issue 13, points 7 and
//! 9c), with real processes: an API server that answers 500 to everything
//! is not hammered, its failures are logged a few times rather than once
//! per request, and the application shows "cannot read live state" (sync
//! Unknown, Argo CD's ComparisonError), never drift; a wiped cluster gets
//! its inventory namespace and the application's objects back.
//!
//! Rates are measured by counting the simulator's requests across a window
//! the test waits out by polling the clock; the bounds are loose (the
//! machine is shared), the behaviour they catch is not: without backoff the
//! agent makes over a hundred requests a second.

use std::time::{Duration, Instant};

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_proto::SyncStatus;

const CONVERGE: Duration = Duration::from_secs(90);
const APP: &str = "guestbook-sim-1";

fn requests(fleet: &Fleet) -> u64 {
    fleet
        .sim
        .stats("sim-1")
        .and_then(|s| s["requests"].as_u64())
        .unwrap_or(0)
}

/// Waits until `d` has passed, polling the clock; meanwhile `observe`
/// runs every half second.
async fn wait_out<F, Fut>(d: Duration, mut observe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let until = Instant::now() + d;
    while Instant::now() < until {
        observe().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_api_server_is_backed_off_from_and_shown_as_unreadable() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let revision = fleet.repo.head()?;
    fleet.wait_synced(APP, "sim-1", &revision, CONVERGE).await?;

    // Every request of the cluster fails with 500 from now on.
    fleet.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            error_rate: 1.0,
            error_code: 500,
            ..Default::default()
        },
    );
    let shown = eventually(
        "the status to say the live state cannot be read",
        CONVERGE,
        || async {
            let s = fleet
                .status(APP, "sim-1")
                .await
                .map_err(|e| e.to_string())?;
            if s.message.starts_with("cannot read live state: ")
                && s.sync == SyncStatus::Unknown as i32
                && s.conditions.iter().any(|c| {
                    c.r#type == "ComparisonError"
                        && c.message.starts_with("cannot read live state: ")
                })
            {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await?;
    assert!(
        shown.message.contains("500") || shown.message.contains("injected fault"),
        "the cause is not shown: {}",
        shown.message
    );

    // Over a window of 20 s: few requests, few log lines, and the status
    // never turns into drift.
    let agent_lines = || fleet.agents["sim-1"].lines().len();
    let (r0, l0, t0) = (requests(&fleet), agent_lines(), Instant::now());
    wait_out(Duration::from_secs(20), || async {
        let s = fleet.status(APP, "sim-1").await?;
        anyhow::ensure!(
            s.sync != SyncStatus::OutOfSync as i32,
            "a failed read was reported as drift: {s:?}"
        );
        anyhow::ensure!(
            !s.message.contains("missing"),
            "a failed read was reported as missing: {s:?}"
        );
        Ok(())
    })
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    let rate = (requests(&fleet) - r0) as f64 / secs;
    let lines = agent_lines() - l0;
    println!(
        "against a failing API server: {rate:.2} requests/s and {lines} log lines over {secs:.1} s"
    );
    assert!(
        rate <= 3.0,
        "the agent made {rate:.1} requests/s to a failing API server"
    );
    assert!(
        lines <= 30,
        "the agent logged {lines} lines in {secs:.0} s:\n{}",
        fleet.agents["sim-1"].tail(40)
    );

    // The server recovers: the backoff ends and the application is Synced
    // again without any help.
    fleet
        .sim
        .set_faults("sim-1", flotilla_sim::Faults::default());
    fleet.wait_synced(APP, "sim-1", &revision, CONVERGE).await?;
    Ok(())
}

fn inventory_objects(fleet: &Fleet) -> Result<Vec<String>, String> {
    let cm = fleet
        .kubectl_get(
            "sim-1",
            "configmap",
            "flotilla-system",
            &format!("flotilla-inventory-{APP}"),
        )
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no inventory ConfigMap".to_owned())?;
    let objects: Vec<serde_json::Value> =
        serde_json::from_str(cm["data"]["objects"].as_str().unwrap_or("[]"))
            .map_err(|e| e.to_string())?;
    Ok(objects
        .iter()
        .filter_map(|o| o["name"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_cluster_gets_its_inventory_namespace_and_objects_back() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let revision = fleet.repo.head()?;
    fleet.wait_synced(APP, "sim-1", &revision, CONVERGE).await?;
    let before = inventory_objects(&fleet).map_err(anyhow::Error::msg)?;
    assert!(
        before.iter().any(|n| n == "guestbook-ui"),
        "inventory before the wipe: {before:?}"
    );

    // Wipe: the inventory namespace and the application's namespace go,
    // with everything in them.
    for ns in ["flotilla-system", "guestbook"] {
        let out = fleet.kubectl("sim-1", &["delete", "namespace", ns, "--wait=true"])?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl delete namespace {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eventually("the inventory to be back", CONVERGE, || async {
        let objects = inventory_objects(&fleet)?;
        if objects.iter().any(|n| n == "guestbook-ui") {
            Ok(())
        } else {
            Err(format!("inventory holds {objects:?}"))
        }
    })
    .await?;
    eventually("the application's objects to be back", CONVERGE, || async {
        for (kind, name) in [
            ("deployment", "guestbook-ui"),
            ("service", "guestbook-ui"),
            ("configmap", "guestbook-config"),
        ] {
            if fleet
                .kubectl_get("sim-1", kind, "guestbook", name)
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Err(format!("{kind}/{name} missing"));
            }
        }
        Ok(())
    })
    .await?;
    fleet.wait_synced(APP, "sim-1", &revision, CONVERGE).await?;
    Ok(())
}
