//! `flotilla app terminate-op` end to end (hub → agent → simulated cluster,
//! kubectl observing): a sync that hangs in a PreSync hook Job is
//! terminated; the operation ends Failed "Operation terminated", the Sync
//! phase is never applied, the running hook is deleted and finished hooks
//! go per their delete policies; automated sync does not start the same
//! sync again, a user sync does; a cluster whose agent is away is named as
//! not reached; and terminate-op with nothing running is refused.

use std::time::{Duration, Instant};

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_proto::{AppStatus, ListClustersRequest};

const CONVERGE: Duration = Duration::from_secs(120);
/// How long automated sync is watched not to restart a terminated sync
/// (the agent passes every second while the application is OutOfSync).
const NO_RETRY: Duration = Duration::from_secs(10);

const APP: &str = "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: gated
  namespace: argocd
spec:
  project: default
  source:
    repoURL: {{REPO}}
    targetRevision: HEAD
    path: gated
  destination:
    name: sim-1
    namespace: gated
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
      - CreateNamespace=true
";

/// A PreSync hook Job in `wave`; `image` decides how it ends in the
/// simulator (`:never-ready` keeps running).
fn presync_job(name: &str, wave: i32, policy: Option<&str>, image: &str) -> String {
    let policy = policy
        .map(|p| format!("\n    argocd.argoproj.io/hook-delete-policy: {p}"))
        .unwrap_or_default();
    format!(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  annotations:
    argocd.argoproj.io/hook: PreSync
    argocd.argoproj.io/sync-wave: \"{wave}\"{policy}
spec:
  template:
    spec:
      containers:
      - name: step
        image: {image}
      restartPolicy: Never
  backoffLimit: 0
"
    )
}

const CONFIG: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  mode: gated
";

fn failed(out: &std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn terminate_op(fleet: &Fleet, app: &str) -> anyhow::Result<std::process::Output> {
    fleet.cli(&["app".to_owned(), "terminate-op".to_owned(), app.to_owned()])
}

/// `gated`'s status on sim-1 once `pred` holds for it.
async fn wait_status(
    fleet: &Fleet,
    what: &str,
    pred: impl Fn(&AppStatus) -> bool,
) -> anyhow::Result<AppStatus> {
    eventually(what, CONVERGE, || async {
        let s = fleet
            .status("gated", "sim-1")
            .await
            .map_err(|e| e.to_string())?;
        if pred(&s) {
            Ok(s)
        } else {
            Err(format!("{:?}", s.operation))
        }
    })
    .await
}

fn job_exists(fleet: &Fleet, name: &str) -> anyhow::Result<bool> {
    Ok(fleet.kubectl_get("sim-1", "job", "gated", name)?.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminate_op_stops_a_sync_hanging_in_a_presync_hook() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..FleetOptions::default()
    })
    .await?;
    let app = APP.replace("{{REPO}}", &fleet.repo.url());
    // PreSync wave -1: two hooks that succeed (one deleted when the
    // operation fails, one kept: the default policy only deletes it before
    // the next run); wave 0: one that never finishes. The ConfigMap is in
    // the Sync phase, after them.
    let prepare = presync_job("prepare", -1, Some("HookFailed"), "alpine:latest");
    let record = presync_job("record", -1, None, "alpine:latest");
    let gate = presync_job("gate", 0, Some("HookSucceeded"), "alpine:never-ready");
    let revision = fleet.repo.commit_files(
        &[
            ("gated/prepare.yaml", prepare.as_str()),
            ("gated/record.yaml", record.as_str()),
            ("gated/gate.yaml", gate.as_str()),
            ("gated/settings.yaml", CONFIG),
            ("apps/gated.yaml", app.as_str()),
        ],
        "gated: a sync that waits forever in PreSync",
    )?;

    // The sync runs, waiting for the gate hook.
    let running = wait_status(&fleet, "gated waiting for its gate hook", |s| {
        s.revision == revision
            && s.operation.as_ref().is_some_and(|op| {
                op.phase == "Running"
                    && op.hooks.iter().any(|h| {
                        h.key.as_ref().is_some_and(|k| k.name == "gate") && h.status == "Running"
                    })
            })
    })
    .await?;
    let started_ms = running.operation.unwrap_or_default().started_ms;
    anyhow::ensure!(job_exists(&fleet, "gate")?, "the gate Job was not created");

    // The agent goes away: its last report says Running, so the cluster
    // is named as not reached (exit 1), never skipped.
    drop(fleet.agents.remove("sim-1"));
    eventually("sim-1 disconnected", CONVERGE, || async {
        let mut api = fleet.api().await.map_err(|e| e.to_string())?;
        let list = api
            .list_clusters(ListClustersRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if list.clusters.iter().any(|c| c.connected) {
            Err("still connected".to_owned())
        } else {
            Ok(())
        }
    })
    .await?;
    let (code, stdout, stderr) = failed(&terminate_op(&fleet, "gated")?);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "error: gated: operation not terminated on: sim-1: cluster not connected\n"
    );
    // Back: the agent resumes the persisted operation.
    fleet.start_agent("sim-1")?;
    fleet.wait_connected(CONVERGE).await?;
    wait_status(&fleet, "gated's sync resumed", |s| {
        s.operation
            .as_ref()
            .is_some_and(|op| op.phase == "Running" && op.started_ms == started_ms)
    })
    .await?;

    let out = terminate_op(&fleet, "gated")?;
    let (code, stdout, stderr) = failed(&out);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "Application 'gated' operation terminating\n");

    let ended = wait_status(&fleet, "gated's operation terminated", |s| {
        s.operation
            .as_ref()
            .is_some_and(|op| op.phase == "Failed" && op.started_ms == started_ms)
    })
    .await?;
    let op = ended.operation.clone().unwrap_or_default();
    assert_eq!(op.message, "Operation terminated");
    let gate_run = op
        .hooks
        .iter()
        .find(|h| h.key.as_ref().is_some_and(|k| k.name == "gate"))
        .ok_or_else(|| anyhow::anyhow!("no gate hook in {op:#?}"))?;
    assert_eq!(gate_run.status, "Terminating", "{gate_run:?}");

    // kubectl: the Sync phase was never applied; the running hook and the
    // HookFailed one are deleted, the one without a policy stays.
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "gated", "settings")?
            .is_none(),
        "the ConfigMap of the Sync phase was applied"
    );
    eventually("the gate and prepare Jobs deleted", CONVERGE, || async {
        let gate = job_exists(&fleet, "gate").map_err(|e| e.to_string())?;
        let prepare = job_exists(&fleet, "prepare").map_err(|e| e.to_string())?;
        if gate || prepare {
            Err(format!("gate exists: {gate}, prepare exists: {prepare}"))
        } else {
            Ok(())
        }
    })
    .await?;
    assert!(job_exists(&fleet, "record")?, "the record Job was deleted");

    // Automated sync does not start the terminated sync again (the
    // application stays OutOfSync, so the agent keeps passing every second).
    let watched = Instant::now();
    while watched.elapsed() < NO_RETRY {
        let s = fleet.status("gated", "sim-1").await?;
        let op = s.operation.unwrap_or_default();
        assert_eq!(
            (op.phase.as_str(), op.started_ms),
            ("Failed", started_ms),
            "automated sync restarted the terminated sync: {}",
            op.message
        );
        assert!(!job_exists(&fleet, "gate")?, "the gate Job was recreated");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Nothing is running now: refused, exit 1.
    let (code, _, stderr) = failed(&terminate_op(&fleet, "gated")?);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no operation is in progress on application gated"),
        "{stderr}"
    );
    // An unknown application: exit 3.
    let (code, _, stderr) = failed(&terminate_op(&fleet, "nope")?);
    assert_eq!(code, 3, "{stderr}");

    // A user sync starts it again.
    fleet.cli_ok(&["app", "sync", "gated", "--async"])?;
    wait_status(&fleet, "gated syncing again", |s| {
        s.operation
            .as_ref()
            .is_some_and(|op| op.phase == "Running" && op.started_ms != started_ms)
    })
    .await?;
    eventually("the gate Job created again", CONVERGE, || async {
        match job_exists(&fleet, "gate") {
            Ok(true) => Ok(()),
            Ok(false) => Err("no gate Job".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    Ok(())
}
