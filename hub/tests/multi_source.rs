//! Multi-source Applications (`spec.sources`) through the hub's Git loop:
//! real Git repositories built with the git CLI, a Helm repository served
//! over HTTP, and a fake `helm` script (no real helm here) that prints a
//! chart's templates with the release, namespace and the `replicas` of the
//! last `--values` file substituted, so the test sees which value files
//! helm was given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use flotilla_hub::fleet::Fleet;
use flotilla_hub::gitsync::GitSync;
use flotilla_hub::render::RenderTools;
use flotilla_hub::store::{AppRecord, Store};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod support;
use support::{git, write};

type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

async fn serve_file(State(files): State<Files>, uri: Uri) -> impl IntoResponse {
    match files.lock().expect("files").get(uri.path()) {
        Some(body) => (StatusCode::OK, body.clone()),
        None => (StatusCode::NOT_FOUND, Vec::new()),
    }
}

/// A Helm repository with one chart, `podinfo` 1.0.0; returns its URL.
async fn helm_repository() -> String {
    let files: Files = Arc::default();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (path, content) in [
        (
            "podinfo/Chart.yaml",
            "apiVersion: v2\nname: podinfo\nversion: 1.0.0\n",
        ),
        ("podinfo/templates/deployment.yaml", DEPLOYMENT_TEMPLATE),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, content.as_bytes())
            .expect("append");
    }
    let archive = tar.into_inner().expect("tar").finish().expect("gzip");
    let index = format!(
        "apiVersion: v1\nentries:\n  podinfo:\n  - apiVersion: v2\n    name: podinfo\n    version: 1.0.0\n    digest: {}\n    urls:\n    - podinfo-1.0.0.tgz\n",
        hex::encode(Sha256::digest(&archive))
    );
    {
        let mut f = files.lock().expect("files");
        f.insert("/charts/index.yaml".into(), index.into_bytes());
        f.insert("/charts/podinfo-1.0.0.tgz".into(), archive);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(serve_file).with_state(files);
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    format!("http://{addr}/charts")
}

const DEPLOYMENT_TEMPLATE: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: RELEASE-web
  namespace: NAMESPACE
spec:
  replicas: REPLICAS
";

/// The fake helm. It runs with an empty PATH: tools by full path.
fn fake_helm(dir: &Path) -> PathBuf {
    let find = |p: &str| {
        flotilla_hub::render::exec::find_program(p)
            .unwrap_or_else(|| panic!("{p} on PATH"))
            .display()
            .to_string()
    };
    let script = format!(
        r#"#!/bin/sh
[ "$1" = template ] || exit 2
release=$2
chart=$3
ns=default
replicas=1
shift 3
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) ns=$2; shift 2 ;;
    --values)
      [ -f "$2" ] || {{ echo "Error: open $2: no such file or directory" >&2; exit 1; }}
      r=$({sed} -n 's/^replicas: *//p' "$2")
      [ -n "$r" ] && replicas=$r
      shift 2 ;;
    *) shift ;;
  esac
done
for f in "$chart"/templates/*.yaml; do
  echo ---
  {sed} -e "s/RELEASE/$release/g" -e "s/NAMESPACE/$ns/g" -e "s/REPLICAS/$replicas/g" "$f"
done
"#,
        sed = find("sed")
    );
    let path = dir.join("helm");
    std::fs::write(&path, script).expect("write helm");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    path
}

/// A Git repository of `files`; returns its URL.
fn repository(root: &Path, name: &str, files: &[(&str, &str)]) -> String {
    let repo = root.join(name);
    std::fs::create_dir_all(&repo).expect("mkdir");
    for (path, content) in files {
        write(&repo, path, content);
    }
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "config"]);
    format!("file://{}", repo.display())
}

fn head(url: &str) -> String {
    git(
        Path::new(url.strip_prefix("file://").expect("file URL")),
        &["rev-parse", "HEAD"],
    )
}

fn cm(name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  from: {value}\n")
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

fn application(name: &str, sources: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {name}
spec:
  sources:
{sources}  destination:
    name: c1
    namespace: apps
"
    )
}

fn objects(fleet: &Fleet, name: &str) -> Vec<Value> {
    fleet
        .bundle(name)
        .expect("a bundle")
        .manifests
        .iter()
        .map(|m| serde_json::from_str(m).expect("json"))
        .collect()
}

fn summary(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_source_applications() {
    let root = tempfile::tempdir().expect("tempdir");
    let charts = repository(
        root.path(),
        "charts",
        &[
            (
                "guestbook/Chart.yaml",
                "apiVersion: v2\nname: guestbook\nversion: 0.1.0\n",
            ),
            ("guestbook/templates/deployment.yaml", DEPLOYMENT_TEMPLATE),
            ("guestbook/values.yaml", "replicas: 1\n"),
        ],
    );
    let values = repository(
        root.path(),
        "values",
        &[
            ("env/prod.yaml", "replicas: 3\n"),
            ("env/dev.yaml", "replicas: 2\n"),
        ],
    );
    let extra = repository(
        root.path(),
        "extra",
        &[
            ("a/one.yaml", &cm("one", "a")),
            ("a/shared.yaml", &cm("shared", "a")),
            ("b/shared.yaml", &cm("shared", "b")),
            ("b/two.yaml", &cm("two", "b")),
        ],
    );
    let helm_repo = helm_repository().await;

    let tools = tempfile::tempdir().expect("tempdir");
    let helm = fake_helm(tools.path());
    let data = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&data.path().join("db")).expect("store");
    let fleet = Fleet::load(store.clone()).expect("fleet");
    let sync = GitSync::new(
        store.clone(),
        fleet.clone(),
        data.path().join("git"),
        Duration::from_secs(3600),
    );
    sync.set_render_tools(RenderTools {
        helm: Some(vec![helm.display().to_string()]),
        ..Default::default()
    });

    // A chart from Git with its values from another repository ($values),
    // the values repository only providing files.
    put_app(
        &store,
        &application(
            "git-chart",
            &format!(
                "  - repoURL: {charts}\n    path: guestbook\n    helm:\n      valueFiles:\n      - $values/env/prod.yaml\n  - repoURL: {values}\n    ref: values\n"
            ),
        ),
    );
    // Argo CD's documented case: a Helm repository chart, Git values.
    put_app(
        &store,
        &application(
            "repo-chart",
            &format!(
                "  - repoURL: {helm_repo}\n    chart: podinfo\n    targetRevision: 1.0.0\n    helm:\n      releaseName: podinfo\n      valueFiles:\n      - $values/env/dev.yaml\n  - repoURL: {values}\n    targetRevision: HEAD\n    ref: values\n"
            ),
        ),
    );
    // Two directories; the later source's `shared` wins. spec.source is
    // ignored when spec.sources is set (it names nothing that exists).
    put_app(
        &store,
        &format!(
            "{}  source:\n    repoURL: file:///nonexistent\n    path: nothing\n",
            application(
                "dirs",
                &format!("  - repoURL: {extra}\n    path: a\n  - repoURL: {extra}\n    path: b\n"),
            )
        ),
    );
    // Errors name the source.
    put_app(
        &store,
        &application(
            "bad-ref",
            &format!(
                "  - repoURL: {charts}\n    path: guestbook\n    helm:\n      valueFiles:\n      - $nope/env/prod.yaml\n  - repoURL: {values}\n    ref: values\n"
            ),
        ),
    );
    put_app(
        &store,
        &application(
            "bad-path",
            &format!(
                "  - repoURL: {extra}\n    path: a\n  - name: missing\n    repoURL: {extra}\n    path: missing\n"
            ),
        ),
    );
    put_app(
        &store,
        &application(
            "bad-file",
            &format!(
                "  - repoURL: {charts}\n    path: guestbook\n    helm:\n      valueFiles:\n      - $values/env/staging.yaml\n  - repoURL: {values}\n    ref: values\n"
            ),
        ),
    );
    sync.poll(true).await;

    let rec = |name: &str| store.app(name).expect("store").expect("app");

    let app = rec("git-chart");
    assert_eq!(app.error, "");
    assert_eq!(app.revision, format!("{},{}", head(&charts), head(&values)));
    let out = objects(&fleet, "git-chart");
    assert_eq!(summary(&out), ["Deployment/git-chart-web"]);
    assert_eq!(out[0]["spec"]["replicas"], 3, "the $values file was used");
    assert_eq!(out[0]["metadata"]["namespace"], "apps");

    let app = rec("repo-chart");
    assert_eq!(app.error, "");
    assert_eq!(app.revision, format!("1.0.0,{}", head(&values)));
    let out = objects(&fleet, "repo-chart");
    assert_eq!(summary(&out), ["Deployment/podinfo-web"]);
    assert_eq!(out[0]["spec"]["replicas"], 2);

    let app = rec("dirs");
    assert_eq!(app.error, "");
    assert_eq!(app.revision, format!("{0},{0}", head(&extra)));
    let out = objects(&fleet, "dirs");
    assert_eq!(
        summary(&out),
        ["ConfigMap/one", "ConfigMap/shared", "ConfigMap/two"]
    );
    assert_eq!(out[1]["data"]["from"], "b", "the later source wins");

    let err = rec("bad-ref").error;
    assert!(
        err.starts_with(&format!("source 1 of 2 ({charts}, path guestbook): "))
            && err.contains("\"$nope\", which is not one of the ref sources ($values)"),
        "{err}"
    );
    let err = rec("bad-path").error;
    assert!(
        err.starts_with(&format!("source \"missing\" ({extra}, path missing): "))
            && err.contains("does not exist"),
        "{err}"
    );
    let err = rec("bad-file").error;
    assert!(
        err.starts_with("source 1 of 2") && err.contains("env/staging.yaml"),
        "{err}"
    );
    // A failing application never got a good render: its agents get the
    // error, and nothing to apply.
    let bundle = fleet.bundle("bad-path").expect("an error bundle");
    assert!(bundle.manifests.is_empty());
    assert_eq!(bundle.render_error, rec("bad-path").error);

    // A new commit in the ref repository alone re-renders the chart.
    let values_dir = root.path().join("values");
    write(&values_dir, "env/prod.yaml", "replicas: 5\n");
    git(&values_dir, &["commit", "-q", "-am", "more replicas"]);
    sync.poll(true).await;
    let app = rec("git-chart");
    assert_eq!(app.revision, format!("{},{}", head(&charts), head(&values)));
    assert_eq!(objects(&fleet, "git-chart")[0]["spec"]["replicas"], 5);

    // resolve_app (used by `app sync`) resolves every source; another
    // revision is refused.
    let app = store.app("dirs").expect("store").expect("app").app;
    assert_eq!(
        sync.resolve_app(&app, "").await.expect("resolves"),
        format!("{0},{0}", head(&extra))
    );
    let err = sync.resolve_app(&app, "v1").await.unwrap_err();
    assert!(err.contains("multiple sources"), "{err}");
}

#[test]
fn sources_are_validated_as_argo_cd_does() {
    let doc = |sources: &str| {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: a\nspec:\n  sources:\n{sources}  destination:\n    name: c1\n"
        )
    };
    let table = [
        ("  - path: x\n", "spec.sources[0].repoURL: is required"),
        (
            "  - repoURL: file:///r\n",
            "spec.sources[0]: one of path, chart or ref is required",
        ),
        (
            "  - repoURL: file:///r\n    path: p\n  - repoURL: https://charts\n    chart: c\n    ref: v\n",
            "spec.sources[1].ref: a ref source cannot be a Helm repository chart",
        ),
        (
            "  - repoURL: file:///r\n    ref: a.b\n",
            "spec.sources[0].ref: \"a.b\" may only contain",
        ),
        (
            "  - repoURL: file:///r\n    ref: v\n  - repoURL: file:///s\n    ref: v\n",
            "spec.sources[1].ref: \"v\" is also the ref of spec.sources[0]",
        ),
        (
            "  - repoURL: https://charts\n    chart: c\n    path: p\n",
            "spec.sources[0].chart: a Helm repository chart has no path",
        ),
    ];
    for (sources, want) in table {
        let err = flotilla_hub::model::parse_applications(&doc(sources), "a.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{sources}: {err}");
        assert!(!err.contains("spec.source.repoURL"), "{err}");
    }
}
