//! The agent's desired-state cache survives a reschedule: an agent pod
//! moved to another node during a hub outage (a new process, an empty state
//! directory, the same identity Secret) restores the last desired state
//! from the cluster copy (Secrets in its namespace) and enforces it; a
//! corrupt cluster copy is reported by name and nothing of it is applied.
//!
//! Run: `cargo build --workspace --bins && cargo test -p flotilla-e2e --test agent_reschedule`.

use std::path::Path;
use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_e2e::process::Proc;
use k8s_openapi::api::core::v1::Secret;

const CONVERGE: Duration = Duration::from_secs(120);
const NAMESPACE: &str = "flotilla-system";

/// An agent as the chart runs it: in-cluster configuration (here the
/// simulator's kubeconfig through KUBECONFIG, not --kubeconfig) and
/// POD_NAMESPACE, so identity and cache live in Secrets of that namespace.
fn pod_agent(fleet: &Fleet, name: &str, state_dir: &Path) -> anyhow::Result<Proc> {
    let kubeconfig = fleet
        .sim
        .kubeconfig_path("sim-1")
        .ok_or_else(|| anyhow::anyhow!("no kubeconfig"))?;
    Proc::spawn(
        name,
        &flotilla_e2e::bin("flotilla-agent")?,
        &[
            "--hub".to_owned(),
            fleet.hub_url(),
            "--state-dir".to_owned(),
            state_dir.display().to_string(),
            "--health-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ],
        &[
            ("KUBECONFIG".to_owned(), kubeconfig.display().to_string()),
            ("POD_NAMESPACE".to_owned(), NAMESPACE.to_owned()),
            ("FLOTILLA_CACHE_STORE".to_owned(), "cluster".to_owned()),
        ],
        fleet.root.path().join(format!("{name}.log")),
    )
}

fn kubectl_ok(fleet: &Fleet, args: &[&str]) -> anyhow::Result<()> {
    let out = fleet.kubectl("sim-1", args)?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn greeting(fleet: &Fleet) -> Result<Option<String>, String> {
    let cm = fleet
        .kubectl_get("sim-1", "configmap", "guestbook", "guestbook-config")
        .map_err(|e| e.to_string())?;
    Ok(cm.map(|cm| {
        cm["data"]["greeting"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }))
}

/// Drift while no agent runs: the managed ConfigMap deleted by hand.
fn delete_managed_object(fleet: &Fleet) -> anyhow::Result<()> {
    kubectl_ok(
        fleet,
        &["delete", "configmap", "guestbook-config", "-n", "guestbook"],
    )?;
    anyhow::ensure!(greeting(fleet).map_err(anyhow::Error::msg)?.is_none());
    Ok(())
}

fn secret(fleet: &Fleet, name: &str) -> anyhow::Result<Option<Secret>> {
    Ok(fleet
        .kubectl_get("sim-1", "secret", NAMESPACE, name)?
        .map(serde_json::from_value)
        .transpose()?)
}

fn index(fleet: &Fleet) -> anyhow::Result<Option<flotilla_agent::cluster_cache::Index>> {
    let Some(s) = secret(fleet, flotilla_agent::cluster_cache::INDEX_NAME)? else {
        return Ok(None);
    };
    let raw = s
        .data
        .and_then(|mut d| d.remove("index.json"))
        .ok_or_else(|| anyhow::anyhow!("index Secret without index.json"))?;
    Ok(Some(serde_json::from_slice(&raw.0)?))
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rescheduled_agent_enforces_the_cluster_held_cache_with_the_hub_down()
-> anyhow::Result<()> {
    let mut fleet = Fleet::start_except(
        FleetOptions {
            clusters: 1,
            ..Default::default()
        },
        &[],
        &["sim-1"],
    )
    .await?;
    // `kubectl create namespace` speaks protobuf, which the simulator
    // does not; a Namespace document does the same.
    let ns_doc = fleet.root.path().join("namespace.yaml");
    std::fs::write(
        &ns_doc,
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"),
    )?;
    kubectl_ok(
        &fleet,
        &[
            "apply",
            "--server-side",
            "-f",
            &ns_doc.display().to_string(),
        ],
    )?;
    fleet.add_cluster("sim-1", &[("env", "dev")])?;
    // The enrolled identity `cluster add --out` wrote, as the first pod's
    // state directory.
    let pod1 = fleet.root.path().join("pod-1");
    copy_dir(&fleet.root.path().join("agents").join("sim-1"), &pod1)?;
    let mut agent = pod_agent(&fleet, "agent-pod-1", &pod1)?;
    agent.wait_for_line(CONVERGE, |l| l.contains("identity stored in the Secret"))?;
    let revision = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &revision, CONVERGE)
        .await?;
    // The cluster copy holds the application.
    agent.wait_for_line(CONVERGE, |l| {
        l.contains("desired-state cache stored in the cluster") && !l.contains("apps=0")
    })?;
    let idx = index(&fleet)?.ok_or_else(|| anyhow::anyhow!("no cache index Secret"))?;
    assert!(idx.generation > 0, "{idx:?}");
    assert!(!idx.chunks.is_empty());
    for chunk in &idx.chunks {
        assert!(
            secret(&fleet, &chunk.name)?.is_some(),
            "chunk {} missing",
            chunk.name
        );
    }

    // Hub outage; the pod is moved to another node: the process dies and
    // its state directory is gone.
    fleet.stop_hub();
    agent.kill();
    std::fs::remove_dir_all(&pod1)?;
    delete_managed_object(&fleet)?;

    let pod2 = fleet.root.path().join("pod-2");
    let mut agent = pod_agent(&fleet, "agent-pod-2", &pod2)?;
    agent.wait_for_line(CONVERGE, |l| {
        l.contains("identity restored from the Secret")
    })?;
    agent.wait_for_line(CONVERGE, |l| {
        l.contains("desired-state cache restored from the cluster")
    })?;
    eventually(
        "the new pod restored the deleted object with the hub down",
        CONVERGE,
        || async {
            match greeting(&fleet)? {
                Some(g) if g == "hello from git" => Ok(()),
                other => Err(format!("greeting is {other:?}")),
            }
        },
    )
    .await?;
    // The restored cache is on the new pod's disk too.
    assert!(pod2.join(flotilla_agent::cache::CACHE_FILE).is_file());

    // A corrupt chunk: the next new pod names it and applies nothing.
    agent.kill();
    std::fs::remove_dir_all(&pod2)?;
    delete_managed_object(&fleet)?;
    let idx = index(&fleet)?.ok_or_else(|| anyhow::anyhow!("no cache index Secret"))?;
    let bad = idx.chunks[0].name.clone();
    kubectl_ok(
        &fleet,
        &[
            "patch",
            "secret",
            &bad,
            "-n",
            NAMESPACE,
            "--type",
            "merge",
            "-p",
            r#"{"data":{"chunk":"Y29ycnVwdA=="}}"#,
        ],
    )?;
    let pod3 = fleet.root.path().join("pod-3");
    let mut agent = pod_agent(&fleet, "agent-pod-3", &pod3)?;
    let line = agent.wait_for_line(CONVERGE, |l| l.contains("cannot be used"))?;
    assert!(
        line.contains(&format!("{NAMESPACE}/{bad}")) && line.contains("corrupt"),
        "{line}"
    );
    let started = agent.wait_for_line(CONVERGE, |l| l.contains("flotilla-agent starting"))?;
    assert!(started.contains("cached_apps=0"), "{started}");
    assert!(!agent.has_line(|l| l.contains("restored from the cluster")));
    // Nothing of the corrupt copy was applied, and it was not overwritten
    // with an empty state.
    assert_eq!(greeting(&fleet).map_err(anyhow::Error::msg)?, None);
    assert_eq!(index(&fleet)?, Some(idx));
    // The failed read is counted for alerting.
    let base = agent
        .lines()
        .iter()
        .find_map(|l| {
            l.split("health listening on ")
                .nth(1)
                .and_then(|u| u.trim().strip_suffix("/healthz"))
                .map(str::to_owned)
        })
        .ok_or_else(|| anyhow::anyhow!("no health listener line"))?;
    let metrics = flotilla_e2e::http::get_ok(&base, "/metrics").map_err(anyhow::Error::msg)?;
    assert_eq!(
        flotilla_e2e::http::sample(
            &metrics,
            "flotilla_agent_cluster_cache_errors_total{operation=\"read\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    agent.kill();
    Ok(())
}
