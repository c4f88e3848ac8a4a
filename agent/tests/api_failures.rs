//! An API server that fails every request (issue 13, point 7): what cannot
//! be read is reported as "cannot read live state" (sync and health
//! Unknown, Argo CD's ComparisonError), never as drift or a missing object,
//! nothing is applied, one failed read ends the pass's reads, and the
//! engine counts the failing passes (its loop backs off on them) until a
//! read succeeds again.

use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_proto::{HealthStatus, SyncStatus};
use serde_json::json;

mod support;
use support::interrupt::restarted;
use support::{harness, set_bundle};

const DEADLINE: Duration = Duration::from_secs(60);

fn status(
    reports: &tokio::sync::watch::Receiver<Option<flotilla_agent::report::Report>>,
) -> Option<flotilla_proto::AppStatus> {
    reports
        .borrow()
        .as_ref()
        .and_then(|r| r.apps.iter().find(|a| a.name == "web").cloned())
}

fn requests(sim: &flotilla_sim::SimHandle) -> u64 {
    sim.stats("sim-1")
        .and_then(|s| s["requests"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_api_server_is_unreadable_not_drift() {
    let h = harness().await;
    let state = h.dir.path().join("state");
    let (mut engine, cache, reports) = restarted(&h.client, &state);
    let mut manifests: Vec<String> = (0..20)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")}})
                .to_string()
        })
        .collect();
    manifests.push(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80}]}})
        .to_string(),
    );
    set_bundle(
        &cache,
        Bundle {
            name: "web".into(),
            digest: "d1".into(),
            revision: "r1".into(),
            namespace: "web".into(),
            policy: Policy {
                automated: true,
                prune: true,
                self_heal: true,
                sync_options: vec!["CreateNamespace=true".into()],
                ..Policy::default()
            },
            manifests,
            ..Bundle::default()
        },
    );
    let until = Instant::now() + DEADLINE;
    while !(engine.pass().await
        && status(&reports).is_some_and(|s| s.sync == SyncStatus::Synced as i32))
    {
        assert!(
            Instant::now() < until,
            "never synced: {:?}",
            status(&reports)
        );
    }
    drop(engine);

    // Every request fails; a restarted agent knows no kinds yet (each one
    // would need discovery).
    h.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            error_rate: 1.0,
            error_code: 500,
            ..Default::default()
        },
    );
    let (mut engine, _cache, reports) = restarted(&h.client, &state);
    let writes = || {
        h.sim
            .stats("sim-1")
            .and_then(|s| s["writes"].as_u64())
            .unwrap_or(0)
    };
    let writes_before = writes();
    for pass in 1..=3u32 {
        let before = requests(&h.sim);
        engine.pass().await;
        let made = requests(&h.sim) - before;
        assert_eq!(engine.api_failures(), pass);
        // One failed read ends the reads: the inventory check, the
        // inventory list and the first read of the application.
        assert!(made <= 4, "pass {pass} made {made} requests");
        let s = status(&reports).expect("status");
        assert_eq!(s.sync, SyncStatus::Unknown as i32, "{s:#?}");
        assert_eq!(s.health, HealthStatus::Unknown as i32, "{s:#?}");
        assert!(
            s.message.starts_with("cannot read live state: "),
            "{}",
            s.message
        );
        assert!(s.message.contains("injected fault"), "{}", s.message);
        assert!(
            s.conditions
                .iter()
                .any(|c| c.r#type == "ComparisonError" && c.message == s.message),
            "{:?}",
            s.conditions
        );
        assert!(
            s.resources
                .iter()
                .all(|r| r.sync != SyncStatus::OutOfSync as i32 && r.drift.is_empty()),
            "a failed read shows as drift: {:#?}",
            s.resources
        );
        assert!(!s.message.contains("missing"), "{}", s.message);
    }
    // Nothing was attempted but reads.
    assert_eq!(
        writes(),
        writes_before,
        "the agent wrote to a failing API server"
    );

    // The server answers again: the next pass reads, and is Synced.
    h.sim.set_faults("sim-1", flotilla_sim::Faults::default());
    let until = Instant::now() + DEADLINE;
    loop {
        let settled = engine.pass().await;
        if settled && engine.api_failures() == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "never recovered: {:?}",
            status(&reports)
        );
    }
    let s = status(&reports).expect("status");
    assert_eq!(s.sync, SyncStatus::Synced as i32, "{s:#?}");
    assert!(s.conditions.is_empty(), "{:?}", s.conditions);
}
