//! Application lifecycle end to end, as Argo CD users know it: `app
//! delete` with cascade (foreground and background propagation, observed
//! on owned objects) and without (the objects stay, tracking and all), the
//! confirmation prompt on a terminal, applications declared in Git
//! (refused) or by an app of apps (recreated by the parent), an unchanged
//! application reporting each new commit without being applied again, a
//! rollback pin shown OutOfSync against Git, and `app get`'s exit code.
//!
//! Hub, agent and CLI run as separate processes; kubectl is the
//! independent observer of the cluster.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_proto::SyncStatus;

const CONVERGE: Duration = Duration::from_secs(90);

fn cli(fleet: &Fleet, args: &[&str]) -> anyhow::Result<(Option<i32>, String, String)> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = fleet.cli(&args)?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

/// An Application of this fleet's repository for sim-1, in namespace
/// `namespace` (created), automated unless `manual`.
fn application(fleet: &Fleet, name: &str, path: &str, namespace: &str, manual: bool) -> String {
    let automated = if manual {
        ""
    } else {
        "    automated:\n      prune: true\n      selfHeal: true\n"
    };
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  source:
    repoURL: {url}
    targetRevision: HEAD
    path: {path}
  destination:
    name: sim-1
    namespace: {namespace}
  syncPolicy:
{automated}    syncOptions:
    - CreateNamespace=true
",
        url = fleet.repo.url()
    )
}

/// Creates an application through the CLI.
fn create(fleet: &Fleet, name: &str, manifest: &str) -> anyhow::Result<()> {
    let file = fleet.root.path().join(format!("{name}.yaml"));
    std::fs::write(&file, manifest)?;
    let (code, out, err) = cli(fleet, &["app", "create", "-f", &file.display().to_string()])?;
    anyhow::ensure!(code == Some(0), "app create {name}: {out}{err}");
    Ok(())
}

fn kubectl_ok(fleet: &Fleet, args: &[&str]) -> anyhow::Result<String> {
    let out = fleet.kubectl("sim-1", args)?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A ConfigMap owned by `owner` (another ConfigMap in `namespace`) and
/// held by a finalizer of its own, created with kubectl: what the garbage
/// collector does with it shows the propagation policy of the owner's
/// deletion.
fn create_dependent(fleet: &Fleet, namespace: &str, owner: &str) -> anyhow::Result<()> {
    let live = fleet
        .kubectl_get("sim-1", "configmap", namespace, owner)?
        .ok_or_else(|| anyhow::anyhow!("{owner} missing"))?;
    let uid = live["metadata"]["uid"].as_str().unwrap_or_default();
    let dependent = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": format!("{owner}-dependent"), "namespace": namespace,
            "finalizers": ["e2e.flotilla.dev/hold"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": uid}],
        },
    });
    let file = fleet.root.path().join(format!("{owner}-dependent.json"));
    std::fs::write(&file, dependent.to_string())?;
    kubectl_ok(fleet, &["create", "-f", &file.display().to_string()])?;
    Ok(())
}

fn release(fleet: &Fleet, namespace: &str, name: &str) -> anyhow::Result<()> {
    kubectl_ok(
        fleet,
        &[
            "patch",
            "configmap",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
    )?;
    Ok(())
}

fn deleting(obj: &serde_json::Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

async fn wait_gone(fleet: &Fleet, namespace: &str, name: &str) -> anyhow::Result<()> {
    eventually(&format!("{namespace}/{name} gone"), CONVERGE, || async {
        match fleet.kubectl_get("sim-1", "configmap", namespace, name) {
            Ok(None) => Ok(()),
            Ok(Some(o)) => Err(format!("still there: {}", o["metadata"])),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

async fn wait_app_gone(fleet: &Fleet, name: &str) -> anyhow::Result<()> {
    eventually(&format!("{name} gone from the hub"), CONVERGE, || async {
        match fleet.app(name).await {
            Err(_) => Ok(()),
            Ok(a) => Err(format!("still there: {}", a.origin)),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_delete_cascades_with_the_propagation_asked_or_orphans() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    fleet.repo.commit_file(
        "lifecycle/fg/owner.yaml",
        &configmap("owner", "fg"),
        "foreground",
    )?;
    fleet.repo.commit_file(
        "lifecycle/bg/owner.yaml",
        &configmap("owner", "bg"),
        "background",
    )?;
    let head = fleet.repo.commit_file(
        "lifecycle/orphan/left.yaml",
        &configmap("left", "orphan"),
        "orphan",
    )?;
    for (name, ns) in [("fg", "del-fg"), ("bg", "del-bg"), ("orphan", "del-orphan")] {
        create(
            &fleet,
            name,
            &application(&fleet, name, &format!("lifecycle/{name}"), ns, false),
        )?;
    }
    for name in ["fg", "bg", "orphan"] {
        fleet.wait_synced(name, "sim-1", &head, CONVERGE).await?;
    }

    // The prompt: asked on a terminal only; "n" cancels (exit 0, as
    // `argocd app delete`), the application stays.
    let (code, out) = on_terminal(&fleet, &["app", "delete", "fg"], "n\n")?;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Are you sure you want to delete 'fg' and all its resources? [y/n]"),
        "{out}"
    );
    assert!(
        out.contains("The command to delete 'fg' was cancelled."),
        "{out}"
    );
    fleet.app("fg").await?;

    // Foreground (the default): the owner waits for what it owns.
    create_dependent(&fleet, "del-fg", "owner")?;
    let (code, out) = on_terminal(&fleet, &["app", "delete", "fg"], "y\n")?;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("application 'fg' deleted"), "{out}");
    wait_app_gone(&fleet, "fg").await?;
    let owner = eventually("the owner deleted in the foreground", CONVERGE, || async {
        let o = fleet
            .kubectl_get("sim-1", "configmap", "del-fg", "owner")
            .map_err(|e| e.to_string())?
            .ok_or("the owner went before its dependent")?;
        if deleting(&o) {
            Ok(o)
        } else {
            Err(format!("not deleting yet: {}", o["metadata"]))
        }
    })
    .await?;
    assert!(
        owner["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "foregroundDeletion")),
        "{}",
        owner["metadata"]
    );
    let dependent = fleet
        .kubectl_get("sim-1", "configmap", "del-fg", "owner-dependent")?
        .ok_or_else(|| anyhow::anyhow!("dependent missing"))?;
    assert!(deleting(&dependent), "{}", dependent["metadata"]);
    release(&fleet, "del-fg", "owner-dependent")?;
    wait_gone(&fleet, "del-fg", "owner-dependent").await?;
    wait_gone(&fleet, "del-fg", "owner").await?;

    // Background: the owner goes at once, the garbage collector takes the
    // dependent (held by its finalizer here).
    create_dependent(&fleet, "del-bg", "owner")?;
    let (code, out, err) = cli(
        &fleet,
        &[
            "app",
            "delete",
            "bg",
            "--propagation-policy",
            "background",
            "-y",
        ],
    )?;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("sim-1: the agent deletes its objects (background propagation)"),
        "{err}"
    );
    wait_gone(&fleet, "del-bg", "owner").await?;
    let dependent = fleet
        .kubectl_get("sim-1", "configmap", "del-bg", "owner-dependent")?
        .ok_or_else(|| anyhow::anyhow!("dependent missing"))?;
    assert!(deleting(&dependent), "{}", dependent["metadata"]);
    release(&fleet, "del-bg", "owner-dependent")?;
    wait_gone(&fleet, "del-bg", "owner-dependent").await?;

    // --cascade=false: the application goes, its objects stay untouched
    // (as Argo CD leaves them: tracking label and annotation included);
    // only the agent's inventory record goes.
    let before = fleet
        .kubectl_get("sim-1", "configmap", "del-orphan", "left")?
        .ok_or_else(|| anyhow::anyhow!("left missing"))?;
    let (code, out, err) = cli(&fleet, &["app", "delete", "orphan", "--cascade=false"])?;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("its objects stay"), "{err}");
    wait_app_gone(&fleet, "orphan").await?;
    eventually(
        "the orphan's inventory record removed",
        CONVERGE,
        || async {
            match fleet.kubectl_get(
                "sim-1",
                "configmap",
                "flotilla-system",
                "flotilla-inventory-orphan",
            ) {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still there".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?;
    let after = fleet
        .kubectl_get("sim-1", "configmap", "del-orphan", "left")?
        .ok_or_else(|| anyhow::anyhow!("an orphaned object was deleted"))?;
    assert_eq!(
        after["metadata"], before["metadata"],
        "the object was touched"
    );
    assert_eq!(after["metadata"]["labels"]["flotilla.dev/app"], "orphan");
    Ok(())
}

/// Runs the CLI with stdout (and stdin) on a terminal (`script` gives it a
/// pseudo-terminal), typing `input`; returns the exit code and what the
/// terminal showed.
fn on_terminal(fleet: &Fleet, args: &[&str], input: &str) -> anyhow::Result<(Option<i32>, String)> {
    use std::io::Write;
    let mut command = flotilla_e2e::bin("flotilla")?.display().to_string();
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    let data = fleet.hub_data();
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("FLOTILLA_HUB", fleet.hub_url())
        .env("FLOTILLA_CA_FILE", data.join("ca.crt"))
        .env("FLOTILLA_TOKEN_FILE", data.join("admin.token"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applications_declared_in_git_are_refused_or_recreated_by_their_parent()
-> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    // A repository's apps path declares guestbook-sim-1: refused, nothing
    // deleted.
    let head = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &head, CONVERGE)
        .await?;
    let (code, out, err) = cli(&fleet, &["app", "delete", "guestbook-sim-1", "-y"])?;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(&format!(
            "application guestbook-sim-1 is managed by repository {} (apps/guestbook-sim-1.yaml); remove it from Git",
            fleet.repo.url()
        )),
        "{err}"
    );
    fleet.app("guestbook-sim-1").await?;

    // A child of an app of apps with selfHeal: deleted as asked, then
    // declared again by its parent on its next pass (Argo CD's parent
    // recreates it the same way).
    let root = format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: root
spec:
  source:
    repoURL: {}
    targetRevision: HEAD
    path: root
  destination:
    name: in-hub
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
",
        fleet.repo.url()
    );
    fleet
        .repo
        .commit_file("child/cm.yaml", &configmap("child", "1"), "child source")?;
    fleet.repo.commit_file(
        "root/child.yaml",
        &application(&fleet, "child", "child", "child", false),
        "root declares child",
    )?;
    let head = fleet.repo.commit_file("apps/root.yaml", &root, "root")?;
    fleet.wait_synced("child", "sim-1", &head, CONVERGE).await?;
    assert_eq!(fleet.app("child").await?.origin, "app:root");
    let (code, out, err) = cli(&fleet, &["app", "delete", "child", "-y"])?;
    assert_eq!(code, Some(0), "{out}{err}");
    eventually("child recreated by root", CONVERGE, || async {
        let a = fleet.app("child").await.map_err(|e| e.to_string())?;
        if a.origin == "app:root" {
            Ok(())
        } else {
            Err(a.origin)
        }
    })
    .await?;
    fleet.wait_synced("child", "sim-1", &head, CONVERGE).await?;
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "child", "child")?
            .is_some()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_pins_and_get_exit_codes() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let c1 = fleet
        .repo
        .commit_file("steady/cm.yaml", &configmap("steady", "1"), "steady")?;
    create(
        &fleet,
        "steady",
        &application(&fleet, "steady", "steady", "steady", false),
    )?;
    fleet.wait_synced("steady", "sim-1", &c1, CONVERGE).await?;
    let before = fleet.status("steady", "sim-1").await?;
    let live = fleet
        .kubectl_get("sim-1", "configmap", "steady", "steady")?
        .ok_or_else(|| anyhow::anyhow!("steady missing"))?;
    let version = live["metadata"]["resourceVersion"].clone();

    // A commit that does not touch the application: it reports the new
    // commit, nothing is applied (same apply time, same resourceVersion),
    // no deployment is recorded.
    let c2 = fleet
        .repo
        .commit_file("elsewhere/readme.txt", "unrelated\n", "unrelated")?;
    fleet.wait_synced("steady", "sim-1", &c2, CONVERGE).await?;
    let after = fleet.status("steady", "sim-1").await?;
    assert_eq!(after.digest, before.digest);
    assert_eq!(
        after.last_applied_ms, before.last_applied_ms,
        "applied again"
    );
    assert_eq!(after.operation, before.operation);
    let live = fleet
        .kubectl_get("sim-1", "configmap", "steady", "steady")?
        .ok_or_else(|| anyhow::anyhow!("steady missing"))?;
    assert_eq!(live["metadata"]["resourceVersion"], version);
    let a = fleet.app("steady").await?;
    assert_eq!(a.revision, c2);
    let (code, out, err) = cli(&fleet, &["app", "history", "steady", "-o", "json"])?;
    assert_eq!(code, Some(0), "{err}");
    let h: serde_json::Value = serde_json::from_str(&out)?;
    let revisions: Vec<&str> = h["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["revision"].as_str())
        .collect();
    assert_eq!(revisions, [c1.as_str()]);

    // A rollback pins a manual application: it shows OutOfSync against
    // Git, with why, until a sync without --revision; `app rollback`
    // itself waits only for its operation.
    let p1 = fleet
        .repo
        .commit_file("pinned/cm.yaml", &configmap("pinned", "one"), "one")?;
    create(
        &fleet,
        "pinned",
        &application(&fleet, "pinned", "pinned", "pinned", true),
    )?;
    let (code, out, err) = cli(&fleet, &["app", "sync", "pinned", "--timeout", "90s"])?;
    assert_eq!(code, Some(0), "{out}{err}");
    let p2 = fleet
        .repo
        .commit_file("pinned/cm.yaml", &configmap("pinned", "two"), "two")?;
    eventually("pinned rendered at the second commit", CONVERGE, || async {
        let a = fleet.app("pinned").await.map_err(|e| e.to_string())?;
        if a.revision == p2 {
            Ok(())
        } else {
            Err(a.revision)
        }
    })
    .await?;
    let (code, out, err) = cli(&fleet, &["app", "sync", "pinned", "--timeout", "90s"])?;
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = cli(
        &fleet,
        &["app", "rollback", "pinned", "1", "--timeout", "90s"],
    )?;
    assert_eq!(code, Some(0), "rollback: {out}{err}");
    let value = |fleet: &Fleet| -> anyhow::Result<Option<String>> {
        Ok(fleet
            .kubectl_get("sim-1", "configmap", "pinned", "pinned")?
            .and_then(|c| c["data"]["value"].as_str().map(str::to_owned)))
    };
    assert_eq!(value(&fleet)?.as_deref(), Some("one"));
    let want = format!("pinned to {} by rollback; Git is at {}", &p1[..8], &p2[..8]);
    let status = eventually("pinned shown OutOfSync", CONVERGE, || async {
        let s = fleet
            .status("pinned", "sim-1")
            .await
            .map_err(|e| e.to_string())?;
        if s.sync == SyncStatus::OutOfSync as i32 && s.revision == p1 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await?;
    assert!(status.message.starts_with(&want), "{}", status.message);
    let (code, out, err) = cli(&fleet, &["app", "get", "pinned"])?;
    assert_eq!(code, Some(0), "OutOfSync is not an error: {out}{err}");
    assert!(out.contains("OutOfSync") && out.contains(&want), "{out}");
    assert!(out.contains("Pinned"), "{out}");
    let (_, out, _) = cli(&fleet, &["app", "list"])?;
    let row = out
        .lines()
        .find(|l| l.starts_with("pinned "))
        .ok_or_else(|| anyhow::anyhow!("no row in {out}"))?;
    assert!(row.contains("0/1"), "{out}");
    let (code, out, err) = cli(&fleet, &["app", "sync", "pinned", "--timeout", "90s"])?;
    assert_eq!(code, Some(0), "{out}{err}");
    fleet.wait_synced("pinned", "sim-1", &p2, CONVERGE).await?;
    assert_eq!(value(&fleet)?.as_deref(), Some("two"));

    // `app get` exits 1 on an error it shows: a render error, a failed
    // sync.
    create(
        &fleet,
        "unrenderable",
        &application(&fleet, "unrenderable", "no/such/path", "x", false),
    )?;
    let (_, out, err) = eventually("unrenderable shows its error", CONVERGE, || async {
        let r = cli(&fleet, &["app", "get", "unrenderable"]).map_err(|e| e.to_string())?;
        if r.0 == Some(1) {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await?;
    assert!(out.contains("Error"), "{out}");
    assert!(err.contains("error: unrenderable:"), "{err}");
    let failing = fleet.repo.commit_file(
        "failing/widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
        "a kind the cluster does not have",
    )?;
    create(
        &fleet,
        "failing",
        &application(&fleet, "failing", "failing", "failing", false),
    )?;
    let (_, _, err) = eventually("failing shows its failed sync", CONVERGE, || async {
        let r = cli(&fleet, &["app", "get", "failing"]).map_err(|e| e.to_string())?;
        if r.0 == Some(1) && r.2.contains("sync failed") {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await?;
    assert!(err.contains("error: failing:"), "{err} ({failing})");
    let (code, out, err) = cli(&fleet, &["app", "get", "steady"])?;
    assert_eq!(code, Some(0), "{out}{err}");
    Ok(())
}
