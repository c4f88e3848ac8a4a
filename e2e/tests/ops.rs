//! Hub operations end to end: Kustomize overlays per environment deployed
//! by an ApplicationSet over labelled clusters, sources
//! that fail to render or leave the repository, Git push webhooks, and an
//! unreachable repository.
//!
//! Hub, agents and CLI run as separate processes; kubectl is the
//! independent observer of what landed in each cluster.

use std::time::Duration;

use flotilla_e2e::eventually;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONVERGE: Duration = Duration::from_secs(90);

const BASE_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.25
";

fn overlay(namespace: &str, replicas: u32) -> String {
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../base\nnamespace: {namespace}\nreplicas:\n- name: web\n  count: {replicas}\n"
    )
}

fn application(fleet: &Fleet, name: &str, path: &str, cluster: &str, namespace: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  project: default
  source:
    repoURL: {url}
    targetRevision: HEAD
    path: {path}
  destination:
    name: {cluster}
    namespace: {namespace}
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
    - CreateNamespace=true
",
        url = fleet.repo.url()
    )
}

/// Writes every file, then commits them together.
fn commit_files(fleet: &Fleet, files: &[(&str, String)], message: &str) -> anyhow::Result<String> {
    let Some(((last_path, last), rest)) = files.split_last() else {
        anyhow::bail!("nothing to commit");
    };
    for (path, content) in rest {
        let full = fleet.repo.dir().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(full, content)?;
    }
    fleet.repo.commit_file(last_path, last, message)
}

fn web_set(repo_url: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: web
spec:
  generators:
  - clusters:
      selector:
        matchExpressions:
        - key: env
          operator: In
          values: [staging, production]
  template:
    metadata:
      name: 'web-{{{{name}}}}'
    spec:
      project: default
      source:
        repoURL: {repo_url}
        targetRevision: HEAD
        path: 'web/overlays/{{{{metadata.labels.env}}}}'
      destination:
        name: '{{{{name}}}}'
        namespace: '{{{{metadata.labels.env}}}}'
      syncPolicy:
        automated:
          prune: true
          selfHeal: true
        syncOptions:
        - CreateNamespace=true
"#
    )
}

fn replicas(fleet: &Fleet, cluster: &str, namespace: &str) -> anyhow::Result<Option<i64>> {
    Ok(fleet
        .kubectl_get(cluster, "deployment", namespace, "web")?
        .and_then(|d| d["spec"]["replicas"].as_i64()))
}

/// Waits until the hub shows `error` on `app` containing `want`.
async fn wait_app_error(fleet: &Fleet, app: &str, want: &str) -> anyhow::Result<String> {
    eventually(&format!("{app} reports {want:?}"), CONVERGE, || async {
        let a = fleet.app(app).await.map_err(|e| e.to_string())?;
        if a.error.contains(want) {
            Ok(a.error)
        } else {
            Err(format!("error {:?}", a.error))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kustomize_overlays_land_per_environment_and_bad_sources_change_nothing()
-> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions::default()).await?;
    let environments = [
        ("sim-1", "staging", 1),
        ("sim-2", "production", 3),
        ("sim-3", "production", 3),
    ];
    let files = vec![
        ("web/base/deployment.yaml", BASE_DEPLOYMENT.to_owned()),
        (
            "web/base/kustomization.yaml",
            "resources:\n- deployment.yaml\n".to_owned(),
        ),
        (
            "web/overlays/staging/kustomization.yaml",
            overlay("staging", 1),
        ),
        (
            "web/overlays/production/kustomization.yaml",
            overlay("production", 3),
        ),
    ];
    let first = commit_files(&fleet, &files, "web: kustomize base and overlays")?;
    // Clusters labelled by environment; one ApplicationSet picks the
    // overlay from the label.
    for (cluster, env, _) in environments {
        let (ok, _, err) = cli(
            &fleet,
            &["cluster", "label", cluster, &format!("env={env}")],
        )?;
        assert!(ok, "{err}");
    }
    let set = fleet.root.path().join("web-set.yaml");
    std::fs::write(&set, web_set(&fleet.repo.url()))?;
    let (ok, out, err) = cli(
        &fleet,
        &["appset", "create", "-f", &set.display().to_string()],
    )?;
    assert!(ok, "appset create: {out}{err}");
    for (cluster, env, want) in environments {
        fleet
            .wait_synced(&format!("web-{cluster}"), cluster, &first, CONVERGE)
            .await?;
        assert_eq!(
            replicas(&fleet, cluster, env)?,
            Some(want),
            "kubectl on {cluster}"
        );
    }
    // Each cluster got only its own environment.
    assert_eq!(replicas(&fleet, "sim-1", "production")?, None);
    assert_eq!(replicas(&fleet, "sim-2", "staging")?, None);

    // One commit: staging's kustomization breaks, production scales to 4, and
    // two applications arrive whose sources cannot render.
    let second = commit_files(
        &fleet,
        &[
            (
                "web/overlays/staging/kustomization.yaml",
                "resources:\n- ../../base\n- missing.yaml\nnamespace: staging\n".to_owned(),
            ),
            (
                "web/overlays/production/kustomization.yaml",
                overlay("production", 4),
            ),
            (
                "apps/escape.yaml",
                application(&fleet, "escape", "../outside", "sim-1", "escape"),
            ),
            (
                "web/evil/kustomization.yaml",
                "resources:\n- ../../../../../../../etc\n".to_owned(),
            ),
            (
                "apps/evil.yaml",
                application(&fleet, "evil", "web/evil", "sim-1", "evil"),
            ),
        ],
        "break staging, scale production, add bad apps",
    )?;
    for cluster in ["sim-2", "sim-3"] {
        fleet
            .wait_synced(&format!("web-{cluster}"), cluster, &second, CONVERGE)
            .await?;
        assert_eq!(
            replicas(&fleet, cluster, "production")?,
            Some(4),
            "{cluster}"
        );
    }
    let err = wait_app_error(&fleet, "web-sim-1", "kustomize build").await?;
    assert!(err.contains("missing.yaml"), "{err}");
    // A path with `..` does not stop the Application from loading: the
    // error is on the application itself (not on the repository), its sync
    // status is Unknown, and nothing of it reaches a cluster.
    let err = wait_app_error(&fleet, "escape", "escapes the repository").await?;
    assert!(err.contains("../outside"), "{err}");
    eventually("escape is Unknown on sim-1", CONVERGE, || async {
        let status = fleet
            .status("escape", "sim-1")
            .await
            .map_err(|e| e.to_string())?;
        if status.sync == flotilla_proto::SyncStatus::Unknown as i32
            && status.message.contains("escapes the repository")
        {
            Ok(())
        } else {
            Err(format!("sync {} message {:?}", status.sync, status.message))
        }
    })
    .await?;
    let mut api = fleet.api().await?;
    let repos = api
        .list_repositories(flotilla_proto::ListRepositoriesRequest {})
        .await?
        .into_inner();
    for r in &repos.repositories {
        assert!(!r.last_error.contains("escape"), "{}", r.last_error);
    }
    wait_app_error(&fleet, "evil", "points outside the repository").await?;
    // The agent keeps the last good bundle (and keeps enforcing it); the
    // hub shows sync Unknown with the render error, and the staging
    // deployment applied before is left as it was.
    eventually("sim-1 shows the render error", CONVERGE, || async {
        let status = fleet
            .status("web-sim-1", "sim-1")
            .await
            .map_err(|e| e.to_string())?;
        if status.sync == flotilla_proto::SyncStatus::Unknown as i32
            && status.message.contains("kustomize build")
            && status.revision == first
        {
            Ok(())
        } else {
            Err(format!(
                "sync {} revision {} message {:?}",
                status.sync, status.revision, status.message
            ))
        }
    })
    .await?;
    // A manual sync refuses to apply the older state.
    let (ok, _, err) = cli(&fleet, &["app", "sync", "web-sim-1"])?;
    assert!(!ok && err.contains("cannot be rendered"), "{err}");
    assert_eq!(replicas(&fleet, "sim-1", "staging")?, Some(1));
    assert!(
        fleet
            .kubectl_get("sim-1", "namespace", "", "escape")?
            .is_none()
    );

    // Fixing the overlay heals it.
    let third = commit_files(
        &fleet,
        &[(
            "web/overlays/staging/kustomization.yaml",
            overlay("staging", 2),
        )],
        "fix staging",
    )?;
    fleet
        .wait_synced("web-sim-1", "sim-1", &third, CONVERGE)
        .await?;
    assert_eq!(replicas(&fleet, "sim-1", "staging")?, Some(2));
    assert!(fleet.app("web-sim-1").await?.error.is_empty());
    Ok(())
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    hex::encode(
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize(),
    )
}

/// POSTs `body` to the webhook URL with `headers`; returns the status code
/// and the response body.
async fn post(url: &str, headers: &[(&str, String)], body: &str) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("not an http URL: {url}"))?;
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad response {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_push_syncs_within_seconds_and_an_unreachable_repository_deletes_nothing()
-> anyhow::Result<()> {
    let fleet = Fleet::start_with_hub_args(
        FleetOptions {
            clusters: 1,
            poll_interval_secs: 600,
            ..Default::default()
        },
        &[
            "--webhook-listen",
            "127.0.0.1:0",
            "--webhook-secret",
            "s3cret",
        ],
    )
    .await?;
    let hook = fleet
        .webhook_url()
        .ok_or_else(|| anyhow::anyhow!("the hub printed no webhook address"))?;
    let first = fleet.repo.head()?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &first, CONVERGE)
        .await?;

    let cm = fleet
        .repo
        .read("guestbook/configmap.yaml")?
        .replace("hello from git", "hello from a webhook");
    let second = fleet.repo.commit_file(
        "guestbook/configmap.yaml",
        &cm,
        "guestbook: webhook greeting",
    )?;
    let payload = serde_json::json!({
        "ref": "refs/heads/main",
        "after": second,
        "repository": {"clone_url": fleet.repo.url(), "html_url": "https://example.invalid/x"},
    })
    .to_string();
    let sig = format!("sha256={}", hmac_sha256(b"s3cret", payload.as_bytes()));

    // Wrong signature: refused.
    let (code, _) = post(
        &hook,
        &[
            ("X-GitHub-Event", "push".into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_sha256(b"wrong", payload.as_bytes())),
            ),
        ],
        &payload,
    )
    .await?;
    assert_eq!(code, 401);
    // A push of a repository the hub does not know: accepted, ignored.
    let other =
        serde_json::json!({"repository": {"clone_url": "https://example.invalid/other.git"}})
            .to_string();
    let (code, _) = post(
        &hook,
        &[
            ("X-GitHub-Event", "push".into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_sha256(b"s3cret", other.as_bytes())),
            ),
        ],
        &other,
    )
    .await?;
    assert_eq!(code, 202);

    let started = std::time::Instant::now();
    let (code, body) = post(
        &hook,
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-Hub-Signature-256", sig),
        ],
        &payload,
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    // The poll interval is 600s: only the webhook can bring this in time.
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &second, Duration::from_secs(60))
        .await?;
    eprintln!("webhook to synced in {:?}", started.elapsed());
    let cm = fleet
        .kubectl_get("sim-1", "configmap", "guestbook", "guestbook-config")?
        .ok_or_else(|| anyhow::anyhow!("configmap missing"))?;
    assert_eq!(cm["data"]["greeting"], "hello from a webhook");

    // The repository goes away: the applications say why, nothing is
    // deleted, and it recovers when the repository is back.
    let moved = fleet.repo.dir().with_extension("moved");
    std::fs::rename(fleet.repo.dir(), &moved)?;
    let gitlab = serde_json::json!({"project": {"git_http_url": fleet.repo.url()}}).to_string();
    let (code, _) = post(
        &hook,
        &[
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", "s3cret".into()),
        ],
        &gitlab,
    )
    .await?;
    assert_eq!(code, 200);
    let err = wait_app_error(&fleet, "guestbook-sim-1", "repository").await?;
    eprintln!("unreachable: {err}");
    // Argo CD's ComparisonError: the sync status is Unknown with the
    // reason; health is still what the agent observes.
    let status = fleet.status("guestbook-sim-1", "sim-1").await?;
    assert_eq!(
        status.sync,
        flotilla_proto::SyncStatus::Unknown as i32,
        "{status:?}"
    );
    assert!(status.message.contains(&err), "{}", status.message);
    assert_eq!(status.health, flotilla_proto::HealthStatus::Healthy as i32);
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "guestbook", "guestbook-config")?
            .is_some()
    );
    let a = fleet.app("guestbook-sim-1").await?;
    assert_eq!(a.revision, second, "the last good render is kept");
    std::fs::rename(&moved, fleet.repo.dir())?;
    let (code, _) = post(
        &hook,
        &[
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", "s3cret".into()),
        ],
        &gitlab,
    )
    .await?;
    assert_eq!(code, 200);
    eventually("the error clears", CONVERGE, || async {
        let a = fleet
            .app("guestbook-sim-1")
            .await
            .map_err(|e| e.to_string())?;
        if a.error.is_empty() {
            Ok(())
        } else {
            Err(a.error)
        }
    })
    .await?;
    fleet
        .wait_synced("guestbook-sim-1", "sim-1", &second, CONVERGE)
        .await?;
    Ok(())
}

fn cli(fleet: &Fleet, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = fleet.cli(&args)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn greeting(fleet: &Fleet, cluster: &str) -> anyhow::Result<Option<String>> {
    Ok(fleet
        .kubectl_get(cluster, "configmap", "manual", "settings")?
        .and_then(|cm| cm["data"]["greeting"].as_str().map(str::to_owned)))
}

fn settings(greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  greeting: {greeting}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_sync_history_and_rollback() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 1,
        ..Default::default()
    })
    .await?;
    let c1 = fleet
        .repo
        .commit_file("manual/settings.yaml", &settings("one"), "manual: one")?;
    // No syncPolicy.automated: the hub renders every commit, the agent
    // applies only on `flotilla app sync`.
    let manifest = format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: manual
spec:
  source:
    repoURL: {}
    targetRevision: HEAD
    path: manual
  destination:
    name: sim-1
    namespace: manual
  syncPolicy:
    syncOptions:
    - CreateNamespace=true
",
        fleet.repo.url()
    );
    let file = fleet.root.path().join("manual-app.yaml");
    std::fs::write(&file, manifest)?;
    let (ok, _, err) = cli(
        &fleet,
        &["app", "create", "-f", &file.display().to_string()],
    )?;
    assert!(ok, "{err}");
    let rendered = |want: String| {
        let fleet = &fleet;
        async move {
            eventually(&format!("manual rendered at {want}"), CONVERGE, || async {
                let a = fleet.app("manual").await.map_err(|e| e.to_string())?;
                if a.revision == want {
                    Ok(())
                } else {
                    Err(format!("revision {:?} error {:?}", a.revision, a.error))
                }
            })
            .await
        }
    };
    rendered(c1.clone()).await?;
    assert_eq!(greeting(&fleet, "sim-1")?, None, "applied without a sync");

    let (ok, out, err) = cli(&fleet, &["app", "sync", "manual", "--timeout", "90s"])?;
    assert!(ok, "sync: {out}{err}");
    assert!(err.contains("sim-1:"), "progress per cluster: {err}");
    assert_eq!(greeting(&fleet, "sim-1")?.as_deref(), Some("one"));

    let c2 = fleet
        .repo
        .commit_file("manual/settings.yaml", &settings("two"), "manual: two")?;
    rendered(c2.clone()).await?;
    assert_eq!(
        greeting(&fleet, "sim-1")?.as_deref(),
        Some("one"),
        "a manual application is not applied on a new commit"
    );
    // The agents compare server-side: exactly the changed field, exit 1.
    let diff = eventually("app diff shows the new greeting", CONVERGE, || async {
        let out = fleet
            .cli(&["app".into(), "diff".into(), "manual".into()])
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.code() == Some(1) && text.contains("+  greeting: two") {
            Ok(text)
        } else {
            Err(format!(
                "exit {:?}: {text}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .await?;
    assert!(diff.contains("-  greeting: one"), "{diff}");
    assert!(
        diff.contains("sim-1/live/ConfigMap/manual/settings"),
        "{diff}"
    );
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(changed, ["-  greeting: one", "+  greeting: two"], "{diff}");
    let (ok, out, err) = cli(&fleet, &["app", "sync", "manual", "--timeout", "90s"])?;
    assert!(ok, "sync: {out}{err}");
    assert_eq!(greeting(&fleet, "sim-1")?.as_deref(), Some("two"));
    let out = fleet.cli(&["app".into(), "diff".into(), "manual".into()])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "no differences after the sync: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Refused while automated sync is on, as Argo CD does.
    let (ok, _, err) = cli(&fleet, &["app", "rollback", "guestbook-sim-1", "1"])?;
    assert!(!ok);
    assert!(
        err.contains("rollback cannot be initiated when auto-sync is enabled"),
        "{err}"
    );

    let (ok, out, err) = cli(&fleet, &["app", "history", "manual", "-o", "json"])?;
    assert!(ok, "{err}");
    let h: serde_json::Value = serde_json::from_str(&out)?;
    let entries = h["history"].as_array().cloned().unwrap_or_default();
    let summary: Vec<(u64, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().unwrap_or_default(),
                e["revision"].as_str().unwrap_or_default().to_owned(),
                e["initiatedBy"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, c1.clone(), "user:admin".to_owned()),
            (2, c2.clone(), "user:admin".to_owned())
        ]
    );

    let (ok, out, err) = cli(
        &fleet,
        &["app", "rollback", "manual", "1", "--timeout", "90s"],
    )?;
    assert!(ok, "rollback: {out}{err}");
    assert_eq!(greeting(&fleet, "sim-1")?.as_deref(), Some("one"));
    // Pinned to c1 while Git is at c2: OutOfSync against Git, as Argo CD
    // shows a rolled-back application (tests/lifecycle.rs has the rest).
    eventually("manual pinned at c1, OutOfSync", CONVERGE, || async {
        let s = fleet
            .status("manual", "sim-1")
            .await
            .map_err(|e| e.to_string())?;
        if s.revision == c1 && s.message.starts_with("pinned to") {
            Ok(())
        } else {
            Err(format!("{} {:?}", s.revision, s.message))
        }
    })
    .await?;
    let (ok, out, err) = cli(&fleet, &["app", "history", "manual"])?;
    assert!(ok, "{err}");
    assert!(out.contains("ID") && out.contains("INITIATED BY"), "{out}");
    let last = out
        .lines()
        .find(|l| l.starts_with('3'))
        .ok_or_else(|| anyhow::anyhow!("no entry 3 in {out}"))?;
    assert!(
        last.contains("rollback") && last.contains(&c1[..8]),
        "{out}"
    );
    assert!(out.contains("pinned to"), "{out}");

    // A later commit does not move a pinned application; a sync without
    // --revision unpins it.
    let c3 = fleet
        .repo
        .commit_file("manual/settings.yaml", &settings("three"), "manual: three")?;
    let (ok, out, err) = cli(&fleet, &["app", "sync", "manual", "--timeout", "90s"])?;
    assert!(ok, "sync: {out}{err}");
    assert_eq!(greeting(&fleet, "sim-1")?.as_deref(), Some("three"));
    fleet.wait_synced("manual", "sim-1", &c3, CONVERGE).await?;

    // `app wait` for CI.
    let (ok, out, err) = cli(&fleet, &["app", "wait", "manual", "--timeout", "60s"])?;
    assert!(ok, "wait: {out}{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_of_apps_manages_applications_from_git() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 2,
        ..Default::default()
    })
    .await?;
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
",
        fleet.repo.url()
    );
    let first = commit_files(
        &fleet,
        &[
            ("child/settings.yaml", settings("from a child")),
            // The directory must stay when the last Application goes: a
            // path that no longer exists is a render error, and a failed
            // render never prunes.
            (
                "root/README.md",
                "Applications managed by root\n".to_owned(),
            ),
            (
                "root/child.yaml",
                application(&fleet, "child", "child", "sim-1", "child"),
            ),
            ("apps/root.yaml", root),
        ],
        "app of apps",
    )?;
    fleet
        .wait_synced("child", "sim-1", &first, CONVERGE)
        .await?;
    let cm = fleet
        .kubectl_get("sim-1", "configmap", "child", "settings")?
        .ok_or_else(|| anyhow::anyhow!("child's configmap missing"))?;
    assert_eq!(cm["data"]["greeting"], "from a child");
    assert_eq!(fleet.app("child").await?.origin, "app:root");

    // Removing the file (the parent prunes) removes the application.
    fleet.repo.remove_file("root/child.yaml", "drop child")?;
    eventually("child removed from the hub", CONVERGE, || async {
        match fleet.app("child").await {
            Err(_) => Ok(()),
            Ok(a) => Err(format!("still there: {}", a.origin)),
        }
    })
    .await?;

    // An ApplicationSet selecting `tier: edge` and a Cluster resource that
    // puts that label on sim-2 (enrolled with `env: dev`).
    let edge = commit_files(
        &fleet,
        &[
            ("edge/settings.yaml", settings("from a set")),
            ("root/edge-set.yaml", edge_set(&fleet)),
            (
                "root/sim-2.yaml",
                "apiVersion: flotilla.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: sim-2\n  labels: {tier: edge}\n".to_owned(),
            ),
        ],
        "edge set and cluster",
    )?;
    fleet
        .wait_synced("edge-sim-2", "sim-2", &edge, CONVERGE)
        .await?;
    assert_eq!(
        edge_greeting(&fleet, "sim-2")?.as_deref(),
        Some("from a set")
    );
    assert_eq!(
        cluster_labels(&fleet, "sim-2").await?,
        ["env=dev", "tier=edge"]
    );
    let mut api = fleet.api().await?;
    let set = api
        .get_application_set(flotilla_proto::GetApplicationSetRequest {
            name: "edge".into(),
        })
        .await?
        .into_inner();
    assert_eq!(set.origin, "app:root");
    assert_eq!(set.applications, ["edge-sim-2"]);
    assert!(
        fleet.app("edge-sim-1").await.is_err(),
        "sim-1 has no tier label"
    );

    // Removing the set's file (the parent prunes) removes the set, its
    // application and, by the application's policy, its objects.
    fleet
        .repo
        .remove_file("root/edge-set.yaml", "drop edge set")?;
    eventually(
        "edge set, its application and objects removed",
        CONVERGE,
        || async {
            let mut api = fleet.api().await.map_err(|e| e.to_string())?;
            let set = api
                .get_application_set(flotilla_proto::GetApplicationSetRequest {
                    name: "edge".into(),
                })
                .await;
            if set.is_ok() {
                return Err("set still there".into());
            }
            if fleet.app("edge-sim-2").await.is_ok() {
                return Err("application still there".into());
            }
            match edge_greeting(&fleet, "sim-2").map_err(|e| e.to_string())? {
                Some(g) => Err(format!("configmap still there: {g}")),
                None => Ok(()),
            }
        },
    )
    .await?;

    // Removing the Cluster resource removes only the label it declared:
    // an enrolled cluster stays, with its certificate and other labels.
    fleet
        .repo
        .remove_file("root/sim-2.yaml", "drop sim-2 declaration")?;
    eventually("sim-2 loses only the declared label", CONVERGE, || async {
        let labels = cluster_labels(&fleet, "sim-2")
            .await
            .map_err(|e| e.to_string())?;
        if labels == ["env=dev"] {
            Ok(())
        } else {
            Err(format!("labels {labels:?}"))
        }
    })
    .await?;
    fleet.wait_connected(CONVERGE).await?;
    Ok(())
}

fn edge_set(fleet: &Fleet) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: edge
spec:
  generators:
  - clusters:
      selector:
        matchLabels: {{tier: edge}}
  template:
    metadata:
      name: 'edge-{{{{name}}}}'
    spec:
      source:
        repoURL: {url}
        targetRevision: HEAD
        path: edge
      destination:
        name: '{{{{name}}}}'
        namespace: edge
      syncPolicy:
        automated:
          prune: true
        syncOptions:
        - CreateNamespace=true
"#,
        url = fleet.repo.url()
    )
}

fn edge_greeting(fleet: &Fleet, cluster: &str) -> anyhow::Result<Option<String>> {
    Ok(fleet
        .kubectl_get(cluster, "configmap", "edge", "settings")?
        .and_then(|cm| cm["data"]["greeting"].as_str().map(str::to_owned)))
}

/// A cluster's labels as sorted `key=value`.
async fn cluster_labels(fleet: &Fleet, name: &str) -> anyhow::Result<Vec<String>> {
    let mut api = fleet.api().await?;
    let list = api
        .list_clusters(flotilla_proto::ListClustersRequest {})
        .await?
        .into_inner();
    let c = list
        .clusters
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| anyhow::anyhow!("no cluster {name}"))?;
    let mut labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    Ok(labels)
}

fn dry_deployment(replicas: u32, selector: &str, name: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {selector}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
"
    )
}

fn manual_application(fleet: &Fleet, name: &str, cluster: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  source:
    repoURL: {}
    targetRevision: HEAD
    path: dry
  destination:
    name: {cluster}
    namespace: dry
  syncPolicy:
    syncOptions:
    - CreateNamespace=true
",
        fleet.repo.url()
    )
}

/// Runs the CLI with `-o json`; returns the exit code, the parsed stdout
/// and stderr.
fn cli_json(
    fleet: &Fleet,
    args: &[&str],
) -> anyhow::Result<(Option<i32>, serde_json::Value, String)> {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend(["-o".to_owned(), "json".to_owned()]);
    let out = fleet.cli(&all)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let value = serde_json::from_str(&stdout)
        .map_err(|e| anyhow::anyhow!("{args:?}: not JSON ({e}): {stdout}{stderr}"))?;
    Ok((out.status.code(), value, stderr))
}

/// `kind/name` → (result, message or error) of one cluster's dry run.
fn dry_run_results(
    out: &serde_json::Value,
    cluster: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (String, String)>> {
    let results = out["results"].as_array().cloned().unwrap_or_default();
    let row = results
        .iter()
        .find(|r| r["cluster"] == cluster)
        .ok_or_else(|| anyhow::anyhow!("no result for {cluster}: {out:#}"))?;
    anyhow::ensure!(
        row["error"].as_str().unwrap_or_default().is_empty(),
        "{cluster}: {}",
        row["error"]
    );
    Ok(row["resources"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            let detail = if text("error").is_empty() {
                text("message")
            } else {
                text("error")
            };
            (
                format!("{}/{}", text("kind"), text("name")),
                (text("result"), detail),
            )
        })
        .collect())
}

fn resource_version(
    fleet: &Fleet,
    cluster: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    Ok(fleet
        .kubectl_get(cluster, kind, "dry", name)?
        .and_then(|o| o["metadata"]["resourceVersion"].as_str().map(str::to_owned)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_dry_run_reports_every_object_and_changes_nothing() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOptions {
        clusters: 2,
        ..Default::default()
    })
    .await?;
    let clusters = ["sim-1", "sim-2"];
    let c1 = commit_files(
        &fleet,
        &[
            ("dry/deployment.yaml", dry_deployment(1, "web", "web")),
            (
                "dry/old.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: old\ndata:\n  a: b\n"
                    .to_owned(),
            ),
        ],
        "dry: first",
    )?;
    // Manual applications: only `app sync` changes the clusters.
    for cluster in clusters {
        let file = fleet.root.path().join(format!("dry-{cluster}.yaml"));
        std::fs::write(
            &file,
            manual_application(&fleet, &format!("dry-{cluster}"), cluster),
        )?;
        let (ok, _, err) = cli(
            &fleet,
            &["app", "create", "-f", &file.display().to_string()],
        )?;
        assert!(ok, "{err}");
    }
    let rendered = |app: String, want: String| {
        let fleet = &fleet;
        async move {
            eventually(&format!("{app} rendered at {want}"), CONVERGE, || async {
                let a = fleet.app(&app).await.map_err(|e| e.to_string())?;
                let held = a
                    .clusters
                    .iter()
                    .filter_map(|c| c.status.as_ref())
                    .any(|s| s.revision == want);
                if a.revision == want && held {
                    Ok(())
                } else {
                    Err(format!("revision {:?} error {:?}", a.revision, a.error))
                }
            })
            .await
        }
    };
    // A real sync is followed by its command id: the operation the agent
    // reports carries it.
    for cluster in clusters {
        let app = format!("dry-{cluster}");
        rendered(app.clone(), c1.clone()).await?;
        let (code, out, err) = cli_json(&fleet, &["app", "sync", &app, "--timeout", "90s"])?;
        assert_eq!(code, Some(0), "{out}{err}");
        let id = out["results"][0]["commandId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!id.is_empty(), "{out:#}");
        let (code, got, err) = cli_json(&fleet, &["app", "get", &app])?;
        assert_eq!(code, Some(0), "{err}");
        let op = &got["clusters"][0]["operation"];
        assert_eq!(op["commandId"], id.as_str(), "{got:#}");
        assert_eq!(op["phase"], "Succeeded", "{got:#}");
        fleet.wait_synced(&app, cluster, &c1, CONVERGE).await?;
    }

    // Scale up, add a ConfigMap, drop one.
    std::fs::remove_file(fleet.repo.dir().join("dry/old.yaml"))?;
    let c2 = commit_files(
        &fleet,
        &[
            ("dry/deployment.yaml", dry_deployment(3, "web", "web")),
            (
                "dry/settings.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  greeting: hi\n"
                    .to_owned(),
            ),
        ],
        "dry: scale, add settings, drop old",
    )?;
    let mut versions = Vec::new();
    for cluster in clusters {
        rendered(format!("dry-{cluster}"), c2.clone()).await?;
        versions.push(resource_version(&fleet, cluster, "deployment", "web")?);
    }
    for cluster in clusters {
        let app = format!("dry-{cluster}");
        let (code, out, err) = cli_json(&fleet, &["app", "sync", &app, "--dry-run"])?;
        assert_eq!(code, Some(0), "{out:#}{err}");
        assert_eq!(out["dryRun"], true);
        let got = dry_run_results(&out, cluster)?;
        assert_eq!(got["Deployment/web"].0, "configured", "{got:?}");
        assert_eq!(got["ConfigMap/settings"].0, "created", "{got:?}");
        // Without --prune a removed object is only named.
        assert_eq!(
            got["ConfigMap/old"],
            (
                "prune-skipped".to_owned(),
                "ignored (requires pruning)".to_owned()
            ),
            "{got:?}"
        );
        let (code, out, err) = cli_json(&fleet, &["app", "sync", &app, "--dry-run", "--prune"])?;
        assert_eq!(code, Some(0), "{out:#}{err}");
        assert_eq!(dry_run_results(&out, cluster)?["ConfigMap/old"].0, "pruned");
    }
    // The clusters are as they were.
    for (cluster, before) in clusters.iter().zip(&versions) {
        assert_eq!(
            &resource_version(&fleet, cluster, "deployment", "web")?,
            before,
            "{cluster}: the dry run changed the Deployment"
        );
        assert_eq!(replicas(&fleet, cluster, "dry")?, Some(1), "{cluster}");
        assert!(
            fleet
                .kubectl_get(cluster, "configmap", "dry", "settings")?
                .is_none()
        );
        assert!(
            fleet
                .kubectl_get(cluster, "configmap", "dry", "old")?
                .is_some()
        );
    }
    // People get a table.
    let (ok, out, err) = cli(&fleet, &["app", "sync", "dry-sim-2", "--dry-run"])?;
    assert!(ok, "{out}{err}");
    assert!(out.contains("CLUSTER") && out.contains("RESULT"), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("settings"))
        .ok_or_else(|| anyhow::anyhow!("no settings row: {out}"))?;
    assert!(line.contains("sim-2") && line.contains("created"), "{out}");

    // The real sync applies, and prunes with --prune.
    let (code, out, err) = cli_json(
        &fleet,
        &["app", "sync", "dry-sim-1", "--prune", "--timeout", "90s"],
    )?;
    assert_eq!(code, Some(0), "{out:#}{err}");
    let id = out["results"][0]["commandId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, got, _) = cli_json(&fleet, &["app", "get", "dry-sim-1"])?;
    assert_eq!(
        got["clusters"][0]["operation"]["commandId"],
        id.as_str(),
        "{got:#}"
    );
    assert_eq!(replicas(&fleet, "sim-1", "dry")?, Some(3));
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "dry", "settings")?
            .is_some()
    );
    assert!(
        fleet
            .kubectl_get("sim-1", "configmap", "dry", "old")?
            .is_none()
    );

    // An object the API server refuses (selector does not match the
    // template) fails on its own; the others are still reported.
    let c3 = commit_files(
        &fleet,
        &[("dry/broken.yaml", dry_deployment(1, "other", "broken"))],
        "dry: a broken deployment",
    )?;
    rendered("dry-sim-1".to_owned(), c3).await?;
    let (code, out, err) = cli_json(&fleet, &["app", "sync", "dry-sim-1", "--dry-run"])?;
    assert_eq!(
        code,
        Some(1),
        "a refused object fails the dry run: {out:#}{err}"
    );
    assert!(err.contains("would fail"), "{err}");
    let got = dry_run_results(&out, "sim-1")?;
    let (result, error) = &got["Deployment/broken"];
    assert_eq!(result, "failed", "{got:?}");
    assert!(error.contains("selector"), "{got:?}");
    assert_eq!(got["Deployment/web"].0, "unchanged", "{got:?}");
    assert_eq!(got["ConfigMap/settings"].0, "unchanged", "{got:?}");
    assert!(
        fleet
            .kubectl_get("sim-1", "deployment", "dry", "broken")?
            .is_none()
    );
    Ok(())
}
