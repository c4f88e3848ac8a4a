//! Rendering Kustomize sources from a real repository (built with the git
//! CLI) through the hub's renderer, with the kustomize found on this
//! machine (`kustomize build` or `kubectl kustomize`).

use flotilla_hub::render::{RenderRequest, RenderTools, render_source};
use flotilla_hub::source::GitCache;
use serde_json::Value;

mod support;
use support::{git, write};

const DEPLOYMENT: &str = "apiVersion: apps/v1
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

fn kustomize_available() -> bool {
    flotilla_hub::render::exec::find_program("kustomize").is_some()
        || flotilla_hub::render::exec::find_program("kubectl").is_some()
}

struct Fixture {
    _dir: tempfile::TempDir,
    cache: GitCache,
    url: String,
    commit: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    write(&repo, "base/deployment.yaml", DEPLOYMENT);
    write(
        &repo,
        "base/kustomization.yaml",
        "resources:\n- deployment.yaml\n",
    );
    write(
        &repo,
        "overlays/staging/kustomization.yaml",
        "resources:\n- ../../base\nnamespace: staging\nreplicas:\n- name: web\n  count: 1\n",
    );
    write(
        &repo,
        "overlays/production/kustomization.yaml",
        "resources:\n- ../../base\nnamespace: production\nreplicas:\n- name: web\n  count: 3\n",
    );
    write(
        &repo,
        "broken/kustomization.yaml",
        "resources:\n- does-not-exist.yaml\n",
    );
    write(
        &repo,
        "escape/kustomization.yaml",
        "resources:\n- ../../../../../../etc\n",
    );
    write(
        &repo,
        "remote/kustomization.yaml",
        "resources:\n- https://raw.githubusercontent.com/x/y/main/deploy.yaml\n",
    );
    write(
        &repo,
        "plain/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n",
    );
    std::fs::create_dir_all(repo.join("links")).expect("mkdir");
    write(&repo, "links/kustomization.yaml", "resources:\n- passwd\n");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/passwd", repo.join("links/passwd")).expect("symlink");
        std::os::unix::fs::symlink("/etc", repo.join("etc-link")).expect("symlink");
        std::os::unix::fs::symlink("base", repo.join("base-link")).expect("symlink");
    }
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "config"]);
    let url = format!("file://{}", repo.display());
    let cache = GitCache::new(dir.path().join("mirrors"));
    let commit = cache.fetch(&url, "HEAD").expect("fetch");
    Fixture {
        _dir: dir,
        cache,
        url,
        commit,
    }
}

fn request(f: &Fixture, path: &str, kustomize: &str) -> RenderRequest {
    RenderRequest {
        url: f.url.clone(),
        commit: f.commit.clone(),
        path: path.to_owned(),
        chart: String::new(),
        directory: None,
        kustomize: kustomize.to_owned(),
        helm: String::new(),
        release: String::new(),
        namespace: String::new(),
    }
}

fn objects(out: &[String]) -> Vec<Value> {
    out.iter()
        .map(|s| serde_json::from_str(s).expect("json"))
        .collect()
}

#[test]
fn kustomize_overlays_and_failures() {
    if !kustomize_available() {
        eprintln!("skipped: neither kustomize nor kubectl on PATH");
        return;
    }
    let f = fixture();
    let tools = RenderTools::default();

    for (path, ns, replicas) in [
        ("overlays/staging", "staging", 1),
        ("overlays/production", "production", 3),
    ] {
        let out = objects(&render_source(&f.cache, &tools, &request(&f, path, "")).expect(path));
        assert_eq!(out.len(), 1, "{path}: {out:?}");
        assert_eq!(out[0]["kind"], "Deployment");
        assert_eq!(out[0]["metadata"]["namespace"], ns, "{path}");
        assert_eq!(out[0]["spec"]["replicas"], replicas, "{path}");
    }

    // source.kustomize options through the generated overlay.
    let options = r#"{"namePrefix":"p-","images":["nginx:1.27"],"replicas":[{"name":"web","count":5}],"commonLabels":{"team":"a"}}"#;
    let out = objects(
        &render_source(&f.cache, &tools, &request(&f, "overlays/staging", options))
            .expect("with options"),
    );
    assert_eq!(out[0]["metadata"]["name"], "p-web");
    assert_eq!(out[0]["spec"]["replicas"], 5);
    assert_eq!(out[0]["metadata"]["labels"]["team"], "a");
    assert_eq!(
        out[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );

    let fails = [
        ("broken", "", "kustomize build"),
        ("escape", "", "points outside the repository"),
        ("remote", "", "remote bases are not allowed"),
        ("../outside", "", "escapes the repository"),
        ("/etc", "", "must be relative"),
        ("etc-link", "", "is not a directory"),
        ("overlays/staging", r#"{"patches":[]}"#, "not supported"),
    ];
    for (path, options, want) in fails {
        let err = render_source(&f.cache, &tools, &request(&f, path, options)).expect_err(path);
        assert!(err.contains(want), "{path}: {err}");
        assert!(!err.contains("flotilla-render-"), "temp dir leaked: {err}");
    }
    // The symlink to /etc/passwd is not materialized: kustomize cannot
    // read the host file.
    let err = render_source(&f.cache, &tools, &request(&f, "links", "")).expect_err("links");
    assert!(!err.contains("root:"), "{err}");

    // A symlink inside the repository is kept: its path renders like the
    // target (read through the tree it is a link, so a plain path).
    let out = render_source(&f.cache, &tools, &request(&f, "plain", "")).expect("plain");
    assert_eq!(out.len(), 1);
}

#[test]
fn kustomize_timeout_and_missing_helm() {
    let f = fixture();
    // A "kustomize" that never finishes.
    let tools = RenderTools {
        kustomize: Some(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "exec {} 30",
                flotilla_hub::render::exec::find_program("sleep")
                    .expect("sleep")
                    .display()
            ),
            "kustomize".into(),
        ]),
        timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let err =
        render_source(&f.cache, &tools, &request(&f, "overlays/staging", "")).expect_err("timeout");
    assert!(err.contains("timed out"), "{err}");

    let tools = RenderTools {
        helm: Some(vec!["/nonexistent/helm".into()]),
        ..Default::default()
    };
    let mut req = request(&f, "base", "");
    req.helm = "{}".into();
    req.release = "web".into();
    let err = render_source(&f.cache, &tools, &req).expect_err("helm");
    assert!(err.contains("configure --helm-command"), "{err}");
}
