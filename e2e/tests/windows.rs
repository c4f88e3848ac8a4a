//! Sync windows (deploy windows) end to end, on simulated clusters: a deny
//! window of the application's AppProject, computed from this test's clock
//! to close a few tens of seconds after it is added, holds an automated
//! application's new commit (the cluster keeps the old object, its
//! resourceVersion unchanged), refuses a manual sync naming the window
//! until the window gets `manualSync: true`, and lets the held commit go
//! out when it closes, with no other trigger (the hub wakes at the window's
//! end). A RollingSync ApplicationSet's step is held the same way and
//! resumes when the window closes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};

const CONVERGE: Duration = Duration::from_secs(120);
/// How long a window stays open after the test adds it: time for the new
/// commit to be fetched and rendered and the assertions made while held.
const HOLD: Duration = Duration::from_secs(40);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A daily deny window opening at this minute (UTC) and closing `HOLD`
/// from now: (schedule, duration, closes at in ms).
fn window_from_now() -> (String, String, i64) {
    let now = now_ms();
    let secs = now / 1000;
    let (minute, hour) = ((secs / 60) % 60, (secs / 3600) % 24);
    let into_minute = secs % 60;
    let duration = into_minute + i64::try_from(HOLD.as_secs()).unwrap_or(40);
    let closes = (secs - into_minute + duration) * 1000;
    (
        format!("{minute} {hour} * * *"),
        format!("{duration}s"),
        closes,
    )
}

fn project_yaml() -> &'static str {
    "apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata:
  name: shop
spec:
  sourceRepos:
  - '*'
  destinations:
  - name: '*'
    namespace: '*'
"
}

fn config_map(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  value: \"{value}\"\n"
    )
}

fn application(repo: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: web
spec:
  project: shop
  source:
    repoURL: {repo}
    path: web
  destination:
    name: sim-1
    namespace: default
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
"
    )
}

/// The ConfigMap's value and resourceVersion on `cluster`.
fn seen(fleet: &Fleet, cluster: &str) -> anyhow::Result<(String, String)> {
    let cm = fleet
        .kubectl_get(cluster, "configmap", "default", "settings")?
        .ok_or_else(|| anyhow::anyhow!("no ConfigMap on {cluster}"))?;
    let s = |p: &str| {
        cm.pointer(p)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    Ok((s("/data/value"), s("/metadata/resourceVersion")))
}

async fn wait_value(fleet: &Fleet, cluster: &str, value: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{cluster} has value {value}"),
        CONVERGE,
        || async {
            match seen(fleet, cluster) {
                Ok((v, _)) if v == value => Ok(()),
                Ok((v, _)) => Err(format!("value {v}")),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

/// Waits until the hub wants `revision` of `app` on `cluster` and shows
/// the window blocking it.
async fn wait_held(fleet: &Fleet, app: &str, cluster: &str, revision: &str) -> anyhow::Result<()> {
    eventually(&format!("{app} held at {revision}"), CONVERGE, || async {
        let a = fleet.app(app).await.map_err(|e| e.to_string())?;
        let c = a
            .clusters
            .iter()
            .find(|c| c.cluster == cluster)
            .ok_or("no cluster row")?;
        let message = c
            .status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_default();
        if c.desired_revision == revision && message.contains("blocked by sync window") {
            Ok(())
        } else {
            Err(format!(
                "desired {} message {message:?}",
                c.desired_revision
            ))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deny_window_holds_automated_and_manual_sync_until_it_closes() -> anyhow::Result<()> {
    // The repository is polled hourly: commits are fetched on `refresh`,
    // so nothing but the hub's wake-up at the window's end releases the
    // held commit.
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        poll_interval_secs: 3600,
        ..Default::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project.yaml");
    std::fs::write(&project, project_yaml())?;
    fleet.cli_ok(&["proj", "create", "-f", &project.to_string_lossy()])?;
    let repo = fleet.repo.url();
    let first = fleet.repo.commit_files(
        &[
            ("apps/web.yaml", &application(&repo)),
            ("web/cm.yaml", &config_map("1")),
        ],
        "web 1",
    )?;
    fleet.cli_ok(&["refresh"])?;
    fleet.wait_synced("web", "sim-1", &first, CONVERGE).await?;
    let (_, version_before) = seen(&fleet, "sim-1")?;

    // A deny window open now, closing HOLD from now.
    let (schedule, duration, closes_ms) = window_from_now();
    fleet.cli_ok(&[
        "proj",
        "windows",
        "add",
        "shop",
        "--kind",
        "deny",
        "--schedule",
        &schedule,
        "--duration",
        &duration,
        "--applications",
        "web",
    ])?;
    let list: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["proj", "windows", "list", "shop", "-o", "json"])?)?;
    assert_eq!(list[0]["active"], true, "{list}");
    assert_eq!(list[0]["kind"], "deny", "{list}");
    let table = fleet.cli_ok(&["proj", "windows", "list", "shop"])?;
    assert!(
        table.contains("Active") && table.contains(&schedule),
        "{table}"
    );

    // The new commit is rendered but held: the cluster keeps the old
    // object, untouched.
    let second = fleet
        .repo
        .commit_file("web/cm.yaml", &config_map("2"), "web 2")?;
    fleet.cli_ok(&["refresh"])?;
    wait_held(&fleet, "web", "sim-1", &second).await?;
    assert_eq!(
        seen(&fleet, "sim-1")?,
        ("1".to_owned(), version_before.clone())
    );
    let get = fleet.cli_ok(&["app", "get", "web"])?;
    assert!(get.contains("blocked by sync window"), "{get}");
    let history = fleet.cli_ok(&["app", "history", "web", "-o", "json"])?;
    assert!(
        !history.contains(&second),
        "no automated deployment recorded while held: {history}"
    );

    // A manual sync is refused, naming the window.
    let out = fleet.cli(&["app".into(), "sync".into(), "web".into()])?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "manual sync passed the window");
    assert!(
        err.contains("blocked by sync window")
            && err.contains("deny window 0")
            && err.contains("project shop"),
        "{err}"
    );
    assert_eq!(seen(&fleet, "sim-1")?, ("1".to_owned(), version_before));

    // With manualSync it passes.
    fleet.cli_ok(&["proj", "windows", "enable-manual-sync", "shop", "0"])?;
    fleet.cli_ok(&["app", "sync", "web"])?;
    wait_value(&fleet, "sim-1", "2").await?;

    // Automated sync stays held: a third commit waits for the window to
    // close, and then goes out with nothing else asking for it.
    let third = fleet
        .repo
        .commit_file("web/cm.yaml", &config_map("3"), "web 3")?;
    fleet.cli_ok(&["refresh"])?;
    wait_held(&fleet, "web", "sim-1", &third).await?;
    assert_eq!(seen(&fleet, "sim-1")?.0, "2");
    assert!(
        now_ms() < closes_ms,
        "the window closed before the held state was checked; raise HOLD"
    );
    wait_value(&fleet, "sim-1", "3").await?;
    let at = now_ms();
    assert!(
        at >= closes_ms,
        "went out {} ms before the window closed",
        closes_ms - at
    );
    fleet.wait_synced("web", "sim-1", &third, CONVERGE).await?;
    let list: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["proj", "windows", "list", "shop", "-o", "json"])?)?;
    assert_eq!(list[0]["active"], false, "{list}");
    Ok(())
}

fn rolling_set(repo: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: shop
spec:
  goTemplate: true
  generators:
    - list:
        elements:
          - cluster: sim-1
            env: dev
          - cluster: sim-2
            env: prod
  strategy:
    type: RollingSync
    rollingSync:
      steps:
        - matchExpressions:
            - key: env
              operator: In
              values: [dev]
        - matchExpressions:
            - key: env
              operator: In
              values: [prod]
  template:
    metadata:
      name: '{{{{.cluster}}}}-shop'
      labels:
        env: '{{{{.env}}}}'
    spec:
      project: shop
      source:
        repoURL: {repo}
        targetRevision: HEAD
        path: web
      destination:
        name: '{{{{.cluster}}}}'
        namespace: default
      syncPolicy:
        automated: {{}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deny_window_holds_a_rolling_sync_until_it_closes() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 2,
        ..Default::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let project = dir.path().join("project.yaml");
    std::fs::write(&project, project_yaml())?;
    fleet.cli_ok(&["proj", "create", "-f", &project.to_string_lossy()])?;
    let repo = fleet.repo.url();
    let first = fleet.repo.commit_files(
        &[
            ("apps/set.yaml", &rolling_set(&repo)),
            ("web/cm.yaml", &config_map("1")),
        ],
        "set 1",
    )?;
    for c in ["sim-1", "sim-2"] {
        fleet
            .wait_synced(&format!("{c}-shop"), c, &first, CONVERGE)
            .await?;
    }
    let before: Vec<(String, String)> = ["sim-1", "sim-2"]
        .iter()
        .map(|c| seen(&fleet, c))
        .collect::<anyhow::Result<_>>()?;

    let (schedule, duration, closes_ms) = window_from_now();
    fleet.cli_ok(&[
        "proj",
        "windows",
        "add",
        "shop",
        "--kind",
        "deny",
        "--schedule",
        &schedule,
        "--duration",
        &duration,
        "--applications",
        "*-shop",
    ])?;
    let second = fleet
        .repo
        .commit_file("web/cm.yaml", &config_map("2"), "set 2")?;
    // Rendered, shown blocked, and not synced by the set.
    wait_held(&fleet, "sim-1-shop", "sim-1", &second).await?;
    let after: Vec<(String, String)> = ["sim-1", "sim-2"]
        .iter()
        .map(|c| seen(&fleet, c))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(after, before, "the set synced inside the deny window");
    assert!(
        now_ms() < closes_ms,
        "the window closed before the held state was checked; raise HOLD"
    );

    // The window closes: the set goes on, dev then prod.
    wait_value(&fleet, "sim-1", "2").await?;
    let at = now_ms();
    assert!(
        at >= closes_ms,
        "synced {} ms before the window closed",
        closes_ms - at
    );
    wait_value(&fleet, "sim-2", "2").await?;
    Ok(())
}
