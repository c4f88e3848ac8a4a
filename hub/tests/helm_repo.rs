//! Applications whose source is a chart in a Helm repository: a real HTTP
//! server (axum) serves an `index.yaml` and chart archives built here with
//! tar and flate2; the hub's Git loop picks the version, downloads,
//! verifies, unpacks and renders the chart with a fake `helm` script that
//! prints the chart's templates with the release name and namespace
//! substituted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use flotilla_hub::fleet::Fleet;
use flotilla_hub::gitsync::{GitSync, RepoKind};
use flotilla_hub::render::RenderTools;
use flotilla_hub::store::{AppRecord, Store};
use sha2::{Digest, Sha256};

mod support;
use support::helm::{chart_tgz, fake_helm};

/// Path → body served; paths under `/private/` need basic auth u:s3cret-pw.
type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

const AUTH: &str = "Basic dTpzM2NyZXQtcHc="; // u:s3cret-pw

async fn serve_file(State(files): State<Files>, headers: HeaderMap, uri: Uri) -> impl IntoResponse {
    let path = uri.path().to_owned();
    if path.starts_with("/private/")
        && headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(AUTH)
    {
        return (StatusCode::UNAUTHORIZED, Vec::new());
    }
    match files.lock().expect("files").get(&path) {
        Some(body) => (StatusCode::OK, body.clone()),
        None => (StatusCode::NOT_FOUND, Vec::new()),
    }
}

/// Starts the server; returns its base URL.
async fn start_server(files: Files) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(serve_file).with_state(files);
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    format!("http://{addr}")
}

/// A chart archive whose values.yaml is a symlink to a host file.
fn hostile_tgz(chart: &str, version: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let content = format!("apiVersion: v2\nname: {chart}\nversion: {version}\n");
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, format!("{chart}/Chart.yaml"), content.as_bytes())
        .expect("append");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    tar.append_link(&mut h, format!("{chart}/values.yaml"), "/etc/passwd")
        .expect("symlink");
    tar.into_inner().expect("tar").finish().expect("gzip")
}

/// One published chart version: (version, archive path, digest written in
/// the index).
struct Published {
    version: String,
    file: String,
    digest: String,
}

/// A Helm repository served under `prefix`.
struct Repo {
    files: Files,
    prefix: String,
    charts: Vec<(String, Published)>,
}

impl Repo {
    fn publish(&mut self, chart: &str, version: &str, archive: Vec<u8>, digest: Option<&str>) {
        let file = format!("{chart}-{version}.tgz");
        let digest = digest
            .map(str::to_owned)
            .unwrap_or_else(|| hex::encode(Sha256::digest(&archive)));
        self.files
            .lock()
            .expect("files")
            .insert(format!("{}/{file}", self.prefix), archive);
        self.charts.push((
            chart.to_owned(),
            Published {
                version: version.to_owned(),
                file,
                digest,
            },
        ));
        self.write_index();
    }

    fn write_index(&self) {
        let mut text = String::from("apiVersion: v1\nentries:\n");
        let mut names: Vec<&str> = self.charts.iter().map(|(c, _)| c.as_str()).collect();
        names.sort();
        names.dedup();
        for name in names {
            text.push_str(&format!("  {name}:\n"));
            for (_, p) in self.charts.iter().filter(|(c, _)| c == name) {
                // Relative URLs, as `helm repo index` writes them.
                text.push_str(&format!(
                    "  - apiVersion: v2\n    name: {name}\n    version: {}\n    digest: {}\n    urls:\n    - {}\n    created: \"2024-01-01T00:00:00Z\"\n",
                    p.version, p.digest, p.file
                ));
            }
        }
        text.push_str("generated: \"2024-01-01T00:00:00Z\"\n");
        self.files
            .lock()
            .expect("files")
            .insert(format!("{}/index.yaml", self.prefix), text.into_bytes());
    }
}

fn application(name: &str, repo_url: &str, chart: &str, target: &str, helm: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  source:
    repoURL: {repo_url}
    chart: {chart}
    targetRevision: {target:?}
{helm}  destination:
    name: c1
    namespace: apps
"
    )
}

fn put_app(store: &Store, yaml: &str) {
    let app = flotilla_hub::model::parse_applications(yaml, "test")
        .expect("valid application")
        .remove(0);
    store
        .put_app(&AppRecord {
            app: app.into(),
            origin: "api".into(),
            revision: String::new(),
            error: String::new(),
        })
        .expect("put app");
}

fn app(store: &Store, name: &str) -> AppRecord {
    store.app(name).expect("store").expect("app exists")
}

/// The ConfigMaps of the application's current bundle.
fn configmaps(fleet: &Fleet, name: &str) -> Vec<serde_json::Value> {
    let bundle = fleet.bundle(name).expect("a bundle");
    bundle
        .manifests
        .iter()
        .map(|m| serde_json::from_str::<serde_json::Value>(m).expect("json"))
        .filter(|o| o["kind"] == "ConfigMap")
        .collect()
}

struct Hub {
    _data: tempfile::TempDir,
    store: Store,
    fleet: Arc<Fleet>,
    git: Arc<GitSync>,
}

fn hub(helm: Option<Vec<String>>) -> Hub {
    let data = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&data.path().join("db")).expect("store");
    let fleet = Fleet::load(store.clone()).expect("fleet");
    // A long interval: only a refresh fetches an index again.
    let git = GitSync::new(
        store.clone(),
        fleet.clone(),
        data.path().join("git"),
        Duration::from_secs(3600),
    );
    git.set_render_tools(RenderTools {
        helm,
        ..Default::default()
    });
    Hub {
        _data: data,
        store,
        fleet,
        git,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_from_a_helm_repository() {
    let files: Files = Arc::default();
    let base = start_server(files.clone()).await;
    let mut repo = Repo {
        files: files.clone(),
        prefix: "/charts".into(),
        charts: Vec::new(),
    };
    for v in ["6.4.0", "6.5.0", "6.5.1", "6.6.0", "6.5.9-rc.1"] {
        repo.publish("podinfo", v, chart_tgz("podinfo", v), None);
    }
    let url = format!("{base}/charts");
    let tools = tempfile::tempdir().expect("tempdir");
    let helm = fake_helm(tools.path());
    let h = hub(Some(vec![helm.display().to_string()]));

    put_app(
        &h.store,
        &application(
            "web",
            &url,
            "podinfo",
            "6.5.*",
            "    helm:\n      releaseName: frontend\n",
        ),
    );
    put_app(&h.store, &application("latest", &url, "podinfo", "", ""));
    put_app(&h.store, &application("nomatch", &url, "podinfo", "^9", ""));
    put_app(&h.store, &application("missing", &url, "nginx", "*", ""));
    put_app(
        &h.store,
        &application("down", "http://127.0.0.1:9/charts", "podinfo", "*", ""),
    );
    put_app(
        &h.store,
        &application(
            "oci",
            "oci://registry.example/charts",
            "podinfo",
            "1.0.0",
            "",
        ),
    );
    h.git.poll(true).await;

    // The highest 6.5.x, not the prerelease nor 6.6.0; rendered with the
    // release name and the destination namespace.
    let web = app(&h.store, "web");
    assert_eq!(web.error, "");
    assert_eq!(web.revision, "6.5.1");
    let cms = configmaps(&h.fleet, "web");
    assert_eq!(cms.len(), 1, "{cms:?}");
    assert_eq!(cms[0]["metadata"]["name"], "frontend-podinfo");
    assert_eq!(cms[0]["metadata"]["namespace"], "apps");
    assert_eq!(cms[0]["data"]["version"], "6.5.1");
    assert_eq!(h.fleet.bundle("web").expect("bundle").revision, "6.5.1");

    // No constraint: the latest release; the release name defaults to the
    // application name.
    let latest = app(&h.store, "latest");
    assert_eq!(
        (latest.revision.as_str(), latest.error.as_str()),
        ("6.6.0", "")
    );
    assert_eq!(
        configmaps(&h.fleet, "latest")[0]["metadata"]["name"],
        "latest-podinfo"
    );

    let e = app(&h.store, "nomatch").error;
    assert!(e.contains("no version matches \"^9\""), "{e}");
    assert!(e.contains("6.6.0, 6.5.9-rc.1, 6.5.1"), "{e}");
    assert!(e.contains("podinfo") && e.contains(&url), "{e}");
    let e = app(&h.store, "missing").error;
    assert!(e.contains("chart \"nginx\" not found"), "{e}");
    let e = app(&h.store, "down").error;
    assert!(
        e.contains("http://127.0.0.1:9/charts") && e.contains("index.yaml"),
        "{e}"
    );
    let e = app(&h.store, "oci").error;
    assert!(e.contains("not supported yet"), "{e}");
    for name in ["nomatch", "missing", "down", "oci"] {
        let b = h.fleet.bundle(name).expect("an error bundle");
        assert!(
            b.manifests.is_empty() && !b.render_error.is_empty(),
            "{name}"
        );
    }

    // A new matching version is not seen before the index is due...
    repo.publish("podinfo", "6.5.2", chart_tgz("podinfo", "6.5.2"), None);
    h.git.poll(false).await;
    assert_eq!(app(&h.store, "web").revision, "6.5.1");
    // ...and is picked up on the next refresh.
    let web_app = web.app.clone();
    h.git.refresh_app(&web_app, false);
    h.git.poll(false).await;
    let web = app(&h.store, "web");
    assert_eq!((web.revision.as_str(), web.error.as_str()), ("6.5.2", ""));
    assert_eq!(configmaps(&h.fleet, "web")[0]["data"]["version"], "6.5.2");

    // A digest mismatch: a clear error, and the clusters keep 6.5.2.
    repo.publish(
        "podinfo",
        "6.5.3",
        chart_tgz("podinfo", "6.5.3"),
        Some(&"0".repeat(64)),
    );
    h.git.refresh_app(&web_app, false);
    h.git.poll(false).await;
    let web = app(&h.store, "web");
    assert!(web.error.contains("digest mismatch"), "{}", web.error);
    assert!(web.error.contains("\"podinfo\" 6.5.3"), "{}", web.error);
    assert_eq!(web.revision, "6.5.2");
    let bundle = h.fleet.bundle("web").expect("bundle");
    assert_eq!(
        (bundle.revision.as_str(), bundle.render_error.as_str()),
        ("6.5.2", "")
    );
    assert_eq!(configmaps(&h.fleet, "web")[0]["data"]["version"], "6.5.2");

    // A hostile archive (a symlink to a host file) is refused the same way.
    repo.publish("podinfo", "6.5.4", hostile_tgz("podinfo", "6.5.4"), None);
    h.git.refresh_app(&web_app, false);
    h.git.poll(false).await;
    let web = app(&h.store, "web");
    assert!(web.error.contains("archive refused"), "{}", web.error);
    assert!(web.error.contains("symlink"), "{}", web.error);
    assert_eq!(configmaps(&h.fleet, "web")[0]["data"]["version"], "6.5.2");

    // A fixed release moves the application on.
    repo.publish("podinfo", "6.5.5", chart_tgz("podinfo", "6.5.5"), None);
    h.git.refresh_app(&web_app, false);
    h.git.poll(false).await;
    let web = app(&h.store, "web");
    assert_eq!((web.revision.as_str(), web.error.as_str()), ("6.5.5", ""));
    assert_eq!(configmaps(&h.fleet, "web")[0]["data"]["version"], "6.5.5");

    // `app sync --revision` resolves a version against the index, and a
    // pin (rollback) renders that version.
    assert_eq!(
        h.git.resolve_app(&web_app, "~6.4").await.as_deref(),
        Ok("6.4.0")
    );
    assert!(h.git.resolve_app(&web_app, "7.0.0").await.is_err());
    flotilla_hub::history::set_pin(&h.store, "web", Some("6.5.0".into())).expect("pin");
    h.git.poll(false).await;
    let web = app(&h.store, "web");
    assert_eq!((web.revision.as_str(), web.error.as_str()), ("6.5.0", ""));
    assert_eq!(configmaps(&h.fleet, "web")[0]["data"]["version"], "6.5.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_missing_helm() {
    let files: Files = Arc::default();
    let base = start_server(files.clone()).await;
    let mut repo = Repo {
        files: files.clone(),
        prefix: "/private".into(),
        charts: Vec::new(),
    };
    repo.publish("podinfo", "1.0.0", chart_tgz("podinfo", "1.0.0"), None);
    let url = format!("{base}/private");
    let tools = tempfile::tempdir().expect("tempdir");
    let helm = fake_helm(tools.path());
    let h = hub(Some(vec![helm.display().to_string()]));
    // Registered (as `flotilla repo add` does) to hold its credentials;
    // first polled as Git, since no application uses it as a Helm
    // repository yet.
    h.git
        .add_repository(&url, "", "", 0, RepoKind::Git)
        .expect("add repository");
    h.git.poll(true).await;
    let repo_rec = h.store.repo(&url).expect("store").expect("repository");
    assert!(!repo_rec.last_error.is_empty());
    put_app(&h.store, &application("web", &url, "podinfo", "1.0.0", ""));

    // Without credentials the repository refuses. It is no longer polled
    // as Git, and its Git error is gone.
    h.git.poll(true).await;
    let e = app(&h.store, "web").error;
    assert!(e.contains("401") && e.contains("credentials"), "{e}");
    let repo_rec = h.store.repo(&url).expect("store").expect("repository");
    assert_eq!(repo_rec.last_error, "");

    // With the stored https credentials of the URL it answers; the
    // password never shows.
    let credentials = serde_json::from_value(serde_json::json!({
        "username": "u",
        "password": "s3cret-pw",
    }))
    .expect("credentials");
    h.store
        .put_repo_credentials(&url, Some(&credentials))
        .expect("put credentials");
    let web = app(&h.store, "web").app;
    h.git.refresh_app(&web, false);
    h.git.poll(false).await;
    let rec = app(&h.store, "web");
    assert_eq!((rec.revision.as_str(), rec.error.as_str()), ("1.0.0", ""));
    assert_eq!(
        configmaps(&h.fleet, "web")[0]["metadata"]["name"],
        "web-podinfo"
    );

    // No helm on the hub: a clear error on the application.
    let h = hub(Some(vec!["/nonexistent/helm".into()]));
    h.store
        .put_repo_credentials(&url, Some(&credentials))
        .expect("put credentials");
    put_app(&h.store, &application("web", &url, "podinfo", "1.0.0", ""));
    h.git.poll(true).await;
    let e = app(&h.store, "web").error;
    assert!(e.contains("configure --helm-command"), "{e}");
    assert!(e.contains("chart \"podinfo\" 1.0.0"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_of_type_helm_is_checked_by_its_index() {
    let files: Files = Arc::default();
    let base = start_server(files.clone()).await;
    let mut repo = Repo {
        files: files.clone(),
        prefix: "/charts".into(),
        charts: Vec::new(),
    };
    repo.publish("podinfo", "1.0.0", chart_tgz("podinfo", "1.0.0"), None);
    let url = format!("{base}/charts");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = format!("http://{}/charts", closed.local_addr().expect("addr"));
    drop(closed);
    let h = hub(None);
    for u in [&url, &gone] {
        h.git
            .add_repository(u, "", "", 0, RepoKind::Helm)
            .expect("add repository");
    }
    h.git.poll(true).await;
    // Read as a Helm repository, not fetched as Git: no error and no
    // commit; the unreachable one says why.
    let ok = h.store.repo(&url).expect("store").expect("repository");
    assert_eq!((ok.kind.as_str(), ok.last_error.as_str()), ("helm", ""));
    assert!(ok.last_commit.is_empty() && ok.last_fetch_ms > 0);
    let bad = h.store.repo(&gone).expect("store").expect("repository");
    assert!(bad.last_error.contains("index.yaml"), "{}", bad.last_error);
    assert!(
        !bad.last_error.to_lowercase().contains("git"),
        "{}",
        bad.last_error
    );
}
