//! Argo CD sync semantics end to end (hub → agent → simulated cluster, kubectl
//! observing): resource hooks on a repository shaped like
//! argocd-example-apps `pre-post-sync` (a Kustomize base plus PreSync and
//! PostSync Jobs), a failing PreSync hook with a SyncFail hook, a
//! generateName hook on every sync, and a Namespace shared by an
//! ApplicationSet application that is never pruned by it.

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions, ProcessOptions};
use flotilla_proto::{AppStatus, HealthStatus, SyncStatus};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(120);

fn one_cluster() -> FleetOptions {
    FleetOptions {
        clusters: 1,
        ..FleetOptions::default()
    }
}

fn application(name: &str, repo: &str, path: &str, namespace: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
  namespace: argocd
spec:
  project: default
  source:
    repoURL: {repo}
    targetRevision: HEAD
    path: {path}
  destination:
    name: sim-1
    namespace: {namespace}
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
      - CreateNamespace=true
"
    )
}

const GUESTBOOK_KUSTOMIZATION: &str = "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- guestbook-ui-deployment.yaml
- guestbook-ui-svc.yaml
";

fn guestbook_deployment(image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: guestbook-ui
spec:
  replicas: 1
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      app: guestbook-ui
  template:
    metadata:
      labels:
        app: guestbook-ui
    spec:
      containers:
      - image: {image}
        name: guestbook-ui
        ports:
        - containerPort: 80
"
    )
}

const GUESTBOOK_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: guestbook-ui
spec:
  ports:
  - port: 80
    targetPort: 80
  selector:
    app: guestbook-ui
";

/// A hook Job; `name` ending in `-` is a `generateName`.
fn hook_job(name: &str, hook: &str, policy: Option<&str>, image: &str) -> String {
    let naming = if name.ends_with('-') {
        format!("generateName: {name}")
    } else {
        format!("name: {name}")
    };
    let policy = policy
        .map(|p| format!("\n    argocd.argoproj.io/hook-delete-policy: {p}"))
        .unwrap_or_default();
    format!(
        "apiVersion: batch/v1
kind: Job
metadata:
  {naming}
  annotations:
    argocd.argoproj.io/hook: {hook}{policy}
spec:
  template:
    spec:
      containers:
      - name: sleep
        image: {image}
        command: [\"sleep\", \"1\"]
      restartPolicy: Never
  backoffLimit: 0
"
    )
}

/// `kubectl get KIND -A --watch --output-watch-events -o json`, its output
/// collected until [`Watch::events`].
struct Watch {
    child: Child,
}

impl Watch {
    fn start(fleet: &Fleet, kind: &str) -> anyhow::Result<Self> {
        let kubeconfig = fleet
            .sim
            .kubeconfig_path("sim-1")
            .ok_or_else(|| anyhow::anyhow!("no kubeconfig"))?;
        let child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "get",
                kind,
                "-A",
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self { child })
    }

    /// Stops the watch; every event seen: (type, name, resourceVersion,
    /// object).
    fn events(mut self) -> anyhow::Result<Vec<(String, String, u64, Value)>> {
        let _ = self.child.kill();
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut text)?;
        }
        let _ = self.child.wait();
        let mut events = Vec::new();
        for ev in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
            let Ok(ev) = ev else { break };
            let obj = ev["object"].clone();
            events.push((
                ev["type"].as_str().unwrap_or_default().to_owned(),
                obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                obj["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
                obj,
            ));
        }
        Ok(events)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first event of `name` for which `pred` holds: its resourceVersion.
fn first_rv(
    events: &[(String, String, u64, Value)],
    name: &str,
    pred: impl Fn(&str, &Value) -> bool,
) -> Option<u64> {
    events
        .iter()
        .find(|(ty, n, _, o)| n == name && pred(ty, o))
        .map(|(_, _, rv, _)| *rv)
}

fn condition(o: &Value, ty: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

/// Waits until `app`'s operation for `revision` on sim-1 has ended with
/// `phase`.
async fn wait_operation(
    fleet: &Fleet,
    app: &str,
    revision: &str,
    phase: &str,
) -> anyhow::Result<AppStatus> {
    eventually(
        &format!("{app} operation {phase} at {revision}"),
        CONVERGE,
        || async {
            let s = fleet
                .status(app, "sim-1")
                .await
                .map_err(|e| e.to_string())?;
            let op = s.operation.clone().unwrap_or_default();
            if s.revision == revision && op.phase == phase {
                Ok(s)
            } else {
                Err(format!(
                    "revision {} operation {} {:?} message {:?}",
                    s.revision, op.phase, op.message, s.message
                ))
            }
        },
    )
    .await
}

fn cli_json(fleet: &Fleet, args: &[&str]) -> anyhow::Result<Value> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = fleet.cli(&args)?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn cli_text(fleet: &Fleet, args: &[&str]) -> anyhow::Result<String> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = fleet.cli(&args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn job_names(fleet: &Fleet, namespace: &str) -> anyhow::Result<Vec<String>> {
    let out = fleet.kubectl("sim-1", &["get", "jobs", "-n", namespace, "-o", "name"])?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl get jobs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("job.batch/").to_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pre_post_sync_hooks_run_around_the_deployment_and_are_deleted() -> anyhow::Result<()> {
    let fleet = Fleet::start(one_cluster()).await?;
    let jobs = Watch::start(&fleet, "jobs")?;
    let deployments = Watch::start(&fleet, "deployments")?;
    let repo = fleet.repo.url();
    let deployment = guestbook_deployment("gcr.io/heptio-images/ks-guestbook-demo:0.2");
    let before = hook_job("before", "PreSync", Some("HookSucceeded"), "alpine:latest");
    let after = hook_job("after", "PostSync", Some("HookSucceeded"), "alpine:latest");
    let head = fleet.repo.commit_files(
        &[
            ("kustomize-guestbook/kustomization.yaml", GUESTBOOK_KUSTOMIZATION),
            ("kustomize-guestbook/guestbook-ui-deployment.yaml", &deployment),
            ("kustomize-guestbook/guestbook-ui-svc.yaml", GUESTBOOK_SERVICE),
            (
                "pre-post-sync/kustomization.yaml",
                "namePrefix: pre-post-sync-\n\nresources:\n- ../kustomize-guestbook\n- pre-sync-job.yaml\n- post-sync-job.yaml\n",
            ),
            ("pre-post-sync/pre-sync-job.yaml", &before),
            ("pre-post-sync/post-sync-job.yaml", &after),
            (
                "apps/pre-post-sync.yaml",
                &application("pre-post-sync", &repo, "pre-post-sync", "hooks"),
            ),
        ],
        "pre-post-sync: a guestbook with PreSync and PostSync jobs",
    )?;
    let status = wait_operation(&fleet, "pre-post-sync", &head, "Succeeded").await?;
    fleet
        .wait_synced("pre-post-sync", "sim-1", &head, CONVERGE)
        .await?;
    // Both hooks were deleted per HookSucceeded: kubectl sees no Job.
    eventually("hook Jobs deleted", CONVERGE, || async {
        match job_names(&fleet, "hooks") {
            Ok(n) if n.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let jobs = jobs.events()?;
    let deployments = deployments.events()?;
    let dep = "pre-post-sync-guestbook-ui";
    let rv = |what: &str, v: Option<u64>| v.ok_or_else(|| anyhow::anyhow!("never saw {what}"));
    let pre_created = rv(
        "PreSync Job",
        first_rv(&jobs, "pre-post-sync-before", |t, _| t == "ADDED"),
    )?;
    let pre_done = rv(
        "PreSync Job complete",
        first_rv(&jobs, "pre-post-sync-before", |_, o| {
            condition(o, "Complete")
        }),
    )?;
    let dep_created = rv(
        "Deployment",
        first_rv(&deployments, dep, |t, _| t == "ADDED"),
    )?;
    let dep_available = rv(
        "Deployment available",
        first_rv(&deployments, dep, |_, o| condition(o, "Available")),
    )?;
    let post_created = rv(
        "PostSync Job",
        first_rv(&jobs, "pre-post-sync-after", |t, _| t == "ADDED"),
    )?;
    let pre_deleted = rv(
        "PreSync Job deleted",
        first_rv(&jobs, "pre-post-sync-before", |t, _| t == "DELETED"),
    )?;
    let post_done = rv(
        "PostSync Job complete",
        first_rv(&jobs, "pre-post-sync-after", |_, o| {
            condition(o, "Complete")
        }),
    )?;
    let post_deleted = rv(
        "PostSync Job deleted",
        first_rv(&jobs, "pre-post-sync-after", |t, _| t == "DELETED"),
    )?;
    // One counter orders every write of the cluster.
    assert!(
        pre_created < pre_done && pre_done < dep_created,
        "PreSync {pre_created}/{pre_done} vs Deployment {dep_created}"
    );
    assert!(
        dep_available < post_created,
        "Deployment available {dep_available} vs PostSync {post_created}"
    );
    // HookSucceeded: deleted when the whole sync succeeded.
    assert!(post_done < pre_deleted && post_done < post_deleted);

    // Hooks are neither resources of the app nor in its inventory.
    let kinds: Vec<String> = status
        .resources
        .iter()
        .map(|r| r.key.clone().unwrap_or_default().kind)
        .collect();
    assert!(!kinds.contains(&"Job".to_owned()), "{kinds:?}");
    let inventory = fleet
        .kubectl_get(
            "sim-1",
            "configmap",
            "flotilla-system",
            "flotilla-inventory-pre-post-sync",
        )?
        .ok_or_else(|| anyhow::anyhow!("no inventory ConfigMap"))?;
    let objects = inventory["data"]["objects"].as_str().unwrap_or_default();
    assert!(
        objects.contains("Deployment") && !objects.contains("Job"),
        "{objects}"
    );
    // The operation shows each hook, at the API and in the CLI.
    let app = cli_json(&fleet, &["app", "get", "pre-post-sync", "-o", "json"])?;
    let op = &app["clusters"][0]["operation"];
    assert_eq!(op["phase"], "Succeeded", "{op}");
    let hooks: Vec<(String, String, String, bool)> = op["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            (
                h["phase"].as_str().unwrap_or_default().to_owned(),
                h["name"].as_str().unwrap_or_default().to_owned(),
                h["status"].as_str().unwrap_or_default().to_owned(),
                h["deleted"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        hooks,
        vec![
            (
                "PreSync".into(),
                "pre-post-sync-before".into(),
                "Succeeded".into(),
                true
            ),
            (
                "PostSync".into(),
                "pre-post-sync-after".into(),
                "Succeeded".into(),
                true
            ),
        ]
    );
    let text = cli_text(&fleet, &["app", "get", "pre-post-sync"])?;
    assert!(
        text.contains("PreSync    Job/hooks/pre-post-sync-before"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_presync_hook_stops_the_sync_and_runs_the_syncfail_hook() -> anyhow::Result<()> {
    let fleet = Fleet::start(one_cluster()).await?;
    let repo = fleet.repo.url();
    let files = |image: &str, check: &str| {
        vec![
            (
                "checked/deployment.yaml".to_owned(),
                guestbook_deployment(image),
            ),
            (
                "checked/check.yaml".to_owned(),
                hook_job("check", "PreSync", None, check),
            ),
            (
                "checked/on-failure.yaml".to_owned(),
                hook_job("on-failure-", "SyncFail", None, "alpine:latest"),
            ),
            (
                "apps/checked.yaml".to_owned(),
                application("checked", &repo, "checked", "checked"),
            ),
        ]
    };
    let commit = |files: Vec<(String, String)>, message: &str| {
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        fleet.repo.commit_files(&refs, message)
    };
    let first = commit(files("nginx:1.27", "alpine:latest"), "checked: v1")?;
    wait_operation(&fleet, "checked", &first, "Succeeded").await?;
    // The check fails on the next change: nothing of it is applied.
    let second = commit(
        files("nginx:1.28", "alpine:fail"),
        "checked: v2, check fails",
    )?;
    let status = wait_operation(&fleet, "checked", &second, "Failed").await?;
    let op = status.operation.clone().unwrap_or_default();
    assert!(
        op.message
            .starts_with("PreSync hook batch/Job checked/check failed: Job has reached the specified backoff limit"),
        "{}",
        op.message
    );
    assert_eq!(op.sync_phase, "SyncFail");
    let syncfail = op
        .hooks
        .iter()
        .find(|h| h.phase == "SyncFail")
        .ok_or_else(|| anyhow::anyhow!("no SyncFail hook in {op:#?}"))?;
    assert_eq!(syncfail.status, "Succeeded", "{syncfail:?}");
    assert!(
        syncfail
            .key
            .clone()
            .unwrap_or_default()
            .name
            .starts_with("on-failure-")
    );
    // kubectl: the Deployment was not changed; the failed check and the
    // SyncFail hook are there (BeforeHookCreation keeps them until the
    // next attempt replaces them).
    let dep = fleet
        .kubectl_get("sim-1", "deployment", "checked", "guestbook-ui")?
        .ok_or_else(|| anyhow::anyhow!("deployment gone"))?;
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    eventually(
        "the failed check and the SyncFail Job",
        CONVERGE,
        || async {
            let names = job_names(&fleet, "checked").map_err(|e| e.to_string())?;
            let check = fleet
                .kubectl_get("sim-1", "job", "checked", "check")
                .map_err(|e| e.to_string())?;
            let failed = check.as_ref().is_some_and(|c| condition(c, "Failed"));
            if failed && names.iter().any(|n| n.starts_with("on-failure-")) {
                Ok(())
            } else {
                Err(format!("{names:?}, check failed: {failed}"))
            }
        },
    )
    .await?;
    assert_eq!(status.sync, SyncStatus::OutOfSync as i32);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generate_name_hook_is_created_anew_on_every_sync() -> anyhow::Result<()> {
    let fleet = Fleet::start(one_cluster()).await?;
    let repo = fleet.repo.url();
    let head = fleet.repo.commit_files(
        &[
            (
                "reported/deployment.yaml",
                &guestbook_deployment("nginx:1.27"),
            ),
            (
                "reported/report.yaml",
                &hook_job("report-", "PostSync", None, "alpine:latest"),
            ),
            (
                "apps/reported.yaml",
                &application("reported", &repo, "reported", "reported"),
            ),
        ],
        "reported: a PostSync report with generateName",
    )?;
    wait_operation(&fleet, "reported", &head, "Succeeded").await?;
    let first = job_names(&fleet, "reported")?;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].starts_with("report-") && first[0].len() == "report-".len() + 5);
    // Sync again: a new Job with a new name, the previous one deleted
    // before (BeforeHookCreation, the default).
    let out = fleet.cli(&["app".into(), "sync".into(), "reported".into()])?;
    anyhow::ensure!(
        out.status.success(),
        "app sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = eventually("a new report Job", CONVERGE, || async {
        match job_names(&fleet, "reported") {
            Ok(n) if n.len() == 1 && n != first => Ok(n),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    assert!(second[0].starts_with("report-"), "{second:?}");
    let status = fleet.status("reported", "sim-1").await?;
    let op = status.operation.unwrap_or_default();
    assert_eq!(op.hooks.len(), 1, "{op:#?}");
    assert_eq!(op.hooks[0].key.clone().unwrap_or_default().name, second[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespace_shared_with_a_generated_application_warns_and_is_never_pruned_by_it()
-> anyhow::Result<()> {
    let fleet = Fleet::start_with(
        one_cluster(),
        ProcessOptions {
            hub_args: vec!["--appset-deletion-budget".into(), "1".into()],
            ..ProcessOptions::default()
        },
    )
    .await?;
    let repo = fleet.repo.url();
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n";
    let cm = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: team\ndata:\n  owner: {name}\n"
        )
    };
    let set = |elements: &str| {
        format!(
            "apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: teams
spec:
  generators:
  - list:
      elements: {elements}
  template:
    metadata:
      name: '{{{{name}}}}'
    spec:
      project: default
      source:
        repoURL: {repo}
        targetRevision: HEAD
        path: '{{{{name}}}}'
      destination:
        name: sim-1
        namespace: team
      syncPolicy:
        automated:
          prune: true
"
        )
    };
    let (cm_a, cm_b) = (cm("team-a"), cm("team-b"));
    let head = fleet.repo.commit_files(
        &[
            ("team-a/namespace.yaml", namespace),
            ("team-a/configmap.yaml", &cm_a),
            (
                "apps/team-a.yaml",
                &application("team-a", &repo, "team-a", "team"),
            ),
        ],
        "team-a owns the team namespace",
    )?;
    fleet
        .wait_synced("team-a", "sim-1", &head, CONVERGE)
        .await?;
    let head = fleet.repo.commit_files(
        &[
            ("team-b/namespace.yaml", namespace),
            ("team-b/configmap.yaml", &cm_b),
            ("apps/teams.yaml", &set("[{name: team-b}]")),
        ],
        "an ApplicationSet generates team-b, which declares the namespace too",
    )?;
    let status = wait_operation(&fleet, "team-b", &head, "Succeeded").await?;
    assert_eq!(status.conditions.len(), 1, "{status:#?}");
    assert_eq!(status.conditions[0].r#type, "SharedResourceWarning");
    assert_eq!(
        status.conditions[0].message,
        "Namespace/team is part of applications team-b and team-a"
    );
    let text = cli_text(&fleet, &["app", "get", "team-b"])?;
    assert!(
        text.contains(
            "SharedResourceWarning   Namespace/team is part of applications team-b and team-a"
        ),
        "{text}"
    );
    let ns = fleet
        .kubectl_get("sim-1", "namespace", "", "team")?
        .ok_or_else(|| anyhow::anyhow!("namespace gone"))?;
    assert_eq!(
        ns["metadata"]["annotations"]["flotilla.dev/tracking-id"], "team-a:/Namespace:/team",
        "team-b took the namespace over: {ns}"
    );
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "team", "team-b")?
            .is_some()
    );
    // The set stops generating team-b: its ConfigMap goes, the Namespace
    // stays with team-a.
    fleet.repo.commit_files(
        &[("apps/teams.yaml", &set("[]"))],
        "team-b is no longer generated",
    )?;
    eventually("team-b removed from the cluster", CONVERGE, || async {
        let cm = fleet
            .kubectl_get("sim-1", "configmap", "team", "team-b")
            .map_err(|e| e.to_string())?;
        let inventory = fleet
            .kubectl_get(
                "sim-1",
                "configmap",
                "flotilla-system",
                "flotilla-inventory-team-b",
            )
            .map_err(|e| e.to_string())?;
        if cm.is_none() && inventory.is_none() {
            Ok(())
        } else {
            Err(format!(
                "configmap {} inventory {}",
                cm.is_some(),
                inventory.is_some()
            ))
        }
    })
    .await?;
    assert!(
        fleet
            .kubectl_get("sim-1", "namespace", "", "team")?
            .is_some(),
        "team-b pruned team-a's namespace"
    );
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "team", "team-a")?
            .is_some()
    );
    let a = fleet.status("team-a", "sim-1").await?;
    assert_eq!(a.health, HealthStatus::Healthy as i32, "{a:#?}");
    Ok(())
}

/// A ConfigMap that stays when its application is deleted or pruned.
const KEPT_CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: kept-settings
  annotations:
    argocd.argoproj.io/sync-options: Prune=false,Delete=false
data:
  mode: keep
";

/// An application removed from Git: its Deployment is deleted, its
/// `Delete=false` ConfigMap stays, and its PostDelete hook still runs. The
/// PostDelete stage waits only for the objects it asked to delete: waiting
/// for every tracked object (the kept one never goes) held the hook back
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_application_keeps_delete_false_objects_and_still_runs_its_post_delete_hook()
-> anyhow::Result<()> {
    let fleet = Fleet::start(one_cluster()).await?;
    let repo = fleet.repo.url();
    let head = fleet.repo.commit_files(
        &[
            (
                "retired/deployment.yaml",
                &guestbook_deployment("nginx:1.27"),
            ),
            ("retired/kept.yaml", KEPT_CONFIGMAP),
            (
                "retired/cleanup.yaml",
                &hook_job(
                    "cleanup",
                    "PostDelete",
                    Some("BeforeHookCreation"),
                    "alpine:latest",
                ),
            ),
            (
                "apps/retired.yaml",
                // With the resources finalizer: deleting it deletes its
                // objects (without it they would be orphaned).
                &application("retired", &repo, "retired", "retired").replace(
                    "  namespace: argocd\n",
                    "  namespace: argocd\n  finalizers:\n  - resources-finalizer.argocd.argoproj.io\n",
                ),
            ),
        ],
        "retired: a Deployment, a kept ConfigMap and a PostDelete hook",
    )?;
    wait_operation(&fleet, "retired", &head, "Succeeded").await?;
    assert!(
        job_names(&fleet, "retired")?.is_empty(),
        "a PostDelete hook does not run at sync"
    );

    fleet
        .repo
        .remove_file("apps/retired.yaml", "retire the application")?;
    eventually("the PostDelete hook ran", CONVERGE, || async {
        match job_names(&fleet, "retired") {
            Ok(n) if n == ["cleanup"] => Ok(()),
            other => Err(format!("jobs {other:?}")),
        }
    })
    .await?;
    let gone = fleet.kubectl(
        "sim-1",
        &[
            "get",
            "deployment",
            "guestbook-ui",
            "-n",
            "retired",
            "-o",
            "name",
        ],
    )?;
    assert!(
        !gone.status.success(),
        "the Deployment was deleted before the PostDelete hook ran"
    );
    let kept = fleet.kubectl(
        "sim-1",
        &[
            "get",
            "configmap",
            "kept-settings",
            "-n",
            "retired",
            "-o",
            "json",
        ],
    )?;
    anyhow::ensure!(
        kept.status.success(),
        "the Delete=false ConfigMap stays: {}",
        String::from_utf8_lossy(&kept.stderr)
    );
    let kept: Value = serde_json::from_slice(&kept.stdout)?;
    assert_eq!(kept["data"]["mode"], "keep");
    Ok(())
}
