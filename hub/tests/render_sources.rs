//! Rendering sources from real repositories (built with the git CLI)
//! through the hub's renderer: Kustomize with the kustomize found on this
//! machine (`kustomize build` or `kubectl kustomize`), plain directories
//! with Argo CD's semantics, and Jsonnet.

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
        kustomize: kustomize.to_owned(),
        ..Default::default()
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
    req.helm = r#"{"skipCrds":true}"#.into();
    req.release = "web".into();
    let err = render_source(&f.cache, &tools, &req).expect_err("helm");
    assert!(err.contains("configure --helm-command"), "{err}");
}

/// A repository made of `files` (and `links`: path → symlink target).
fn repository(files: &[(&str, &str)], links: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    for (path, content) in files {
        write(&repo, path, content);
    }
    #[cfg(unix)]
    for (path, target) in links {
        let at = repo.join(path);
        std::fs::create_dir_all(at.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, at).expect("symlink");
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

fn directory_request(f: &Fixture, path: &str, directory: &str) -> RenderRequest {
    RenderRequest {
        url: f.url.clone(),
        commit: f.commit.clone(),
        path: path.to_owned(),
        directory: directory.to_owned(),
        ..Default::default()
    }
}

fn render(f: &Fixture, path: &str, directory: &str) -> Result<Vec<Value>, String> {
    render_source(
        &f.cache,
        &RenderTools::default(),
        &directory_request(f, path, directory),
    )
    .map(|out| objects(&out))
}

fn kinds_and_names(out: &[Value]) -> Vec<String> {
    out.iter()
        .map(|o| {
            let name = o["metadata"]["name"]
                .as_str()
                .or(o["metadata"]["generateName"].as_str())
                .unwrap_or_default();
            format!("{}/{name}", o["kind"].as_str().unwrap_or_default())
        })
        .collect()
}

/// The shape of argocd-example-apps' `sync-waves`: one multi-document
/// file with a PreSync hook Job that has only a generateName, Sync hooks
/// in waves 1 and 3, and ReplicaSets and Services in waves 0 and 2.
const SYNC_WAVES: &str = r#"---
apiVersion: batch/v1
kind: Job
metadata:
  generateName: schema-migrate-
  annotations:
    argocd.argoproj.io/hook: PreSync
spec:
  template:
    spec:
      containers:
      - name: migrate
        image: busybox:1.36
        command: ["true"]
      restartPolicy: Never
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: api
spec:
  replicas: 1
  selector:
    matchLabels: {tier: api}
  template:
    metadata:
      labels: {tier: api}
    spec:
      containers:
      - name: main
        image: nginx:1.27
---
apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  selector: {tier: api}
  ports:
  - port: 8080
---
apiVersion: batch/v1
kind: Job
metadata:
  name: banner-on
  annotations:
    argocd.argoproj.io/hook: Sync
    argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
    argocd.argoproj.io/sync-wave: "1"
spec:
  template:
    spec:
      containers:
      - name: on
        image: busybox:1.36
      restartPolicy: Never
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
  annotations:
    argocd.argoproj.io/sync-wave: "2"
spec:
  replicas: 1
  selector:
    matchLabels: {tier: web}
  template:
    metadata:
      labels: {tier: web}
    spec:
      containers:
      - name: main
        image: nginx:1.27
---
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    argocd.argoproj.io/sync-wave: "2"
spec:
  selector: {tier: web}
  ports:
  - port: 80
---
apiVersion: batch/v1
kind: Job
metadata:
  name: banner-off
  annotations:
    argocd.argoproj.io/hook: Sync
    argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
    argocd.argoproj.io/sync-wave: "3"
spec:
  template:
    spec:
      containers:
      - name: off
        image: busybox:1.36
      restartPolicy: Never
"#;

#[test]
fn sync_waves_layout_renders_as_a_directory() {
    let f = repository(
        &[
            ("sync-waves/manifests.yaml", SYNC_WAVES),
            // What else such a directory holds in the wild.
            ("sync-waves/README.md", "# sync waves\n"),
            ("sync-waves/values.yaml", "replicaCount: 1\n"),
        ],
        &[],
    );
    let out = render(&f, "sync-waves", "").expect("renders");
    assert_eq!(
        kinds_and_names(&out),
        [
            "Job/schema-migrate-",
            "ReplicaSet/api",
            "Service/api",
            "Job/banner-on",
            "ReplicaSet/web",
            "Service/web",
            "Job/banner-off",
        ]
    );
    let waves: Vec<&str> = out
        .iter()
        .map(|o| {
            o["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
                .as_str()
                .unwrap_or("0")
        })
        .collect();
    assert_eq!(waves, ["0", "0", "0", "1", "2", "2", "3"]);
}

#[test]
fn include_exclude_and_recurse() {
    let cm = |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n");
    let f = repository(
        &[
            ("app/a.yaml", &cm("a")),
            ("app/b.yml", &cm("b")),
            (
                "app/c.json",
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#,
            ),
            ("app/sub/d.yaml", &cm("d")),
            ("app/sub/deeper/e.yaml", &cm("e")),
            ("app/sub/skip-me.yaml", &cm("skipped")),
            ("app/notes.txt", &cm("txt")),
        ],
        &[],
    );
    // (directory options, names in order)
    let table: &[(&str, &[&str])] = &[
        ("", &["a", "b", "c"]),
        (r#"{"recurse":true}"#, &["a", "b", "c", "d", "e", "skipped"]),
        (
            r#"{"recurse":true,"include":"*.yaml"}"#,
            &["a", "d", "e", "skipped"],
        ),
        (
            r#"{"recurse":true,"include":"{*.yml,*.json}"}"#,
            &["b", "c"],
        ),
        (
            r#"{"recurse":true,"include":"sub/*"}"#,
            &["d", "e", "skipped"],
        ),
        // `**/` needs a slash, as in Argo CD: top-level files do not match.
        (
            r#"{"recurse":true,"include":"**/*.yaml"}"#,
            &["d", "e", "skipped"],
        ),
        (
            r#"{"recurse":true,"exclude":"{*skip*,*.json}"}"#,
            &["a", "b", "d", "e"],
        ),
        (
            r#"{"recurse":true,"include":"sub/*","exclude":"sub/deeper/*"}"#,
            &["d", "skipped"],
        ),
        // Without recurse, include cannot reach into subdirectories.
        (r#"{"include":"sub/*"}"#, &[]),
    ];
    for (options, want) in table {
        let out = render(&f, "app", options).unwrap_or_else(|e| panic!("{options}: {e}"));
        let names: Vec<&str> = out
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(names, *want, "{options}");
    }
    let err = render(&f, "app", r#"{"include":"{a,b"}"#).unwrap_err();
    assert!(
        err.contains("directory include \"{a,b\": unclosed {"),
        "{err}"
    );
    let err = render(&f, "app", r#"{"recurse":true,"includes":"*.yaml"}"#).unwrap_err();
    assert!(err.contains("unknown field `includes`"), "{err}");
}

#[test]
fn yaml_that_is_not_kubernetes() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n";
    let f = repository(
        &[
            ("plain/app.yaml", cm),
            ("plain/values.yaml", "replicaCount: 2\nimage: {tag: v1}\n"),
            ("plain/.github/workflows/ci.yml", "on: [push]\njobs: {}\n"),
            (
                "plain/kustomization-notes.yaml",
                "# how we deploy\nresources:\n- app.yaml\n",
            ),
            ("kustomize-doc/app.yaml", cm),
            (
                "kustomize-doc/kustomize.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- app.yaml\n",
            ),
            ("broken/app.yaml", cm),
            (
                "broken/half.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n---\nnot: [closed\n",
            ),
            ("only-docs/README.md", "nothing to deploy\n"),
        ],
        &[],
    );
    let out = render(&f, "plain", r#"{"recurse":true}"#).expect("renders");
    assert_eq!(kinds_and_names(&out), ["ConfigMap/app"]);

    let err = render(&f, "kustomize-doc", "").unwrap_err();
    assert!(
        err.starts_with("kustomize-doc/kustomize.yaml: document 0: kustomize.config.k8s.io/v1beta1 Kustomization is a Kustomize file"),
        "{err}"
    );
    let out = render(&f, "kustomize-doc", r#"{"exclude":"kustomize.yaml"}"#).expect("excluded");
    assert_eq!(kinds_and_names(&out), ["ConfigMap/app"]);

    let err = render(&f, "broken", "").unwrap_err();
    assert!(
        err.starts_with("broken/half.yaml: invalid YAML at line 6"),
        "{err}"
    );

    // Argo CD treats a directory without manifests as an empty application.
    assert_eq!(
        render(&f, "only-docs", "").expect("empty"),
        Vec::<Value>::new()
    );
}

const GUESTBOOK_JSONNET: &str = r#"local params = import 'params.libsonnet';
local labels = import 'labels.libsonnet';

function(replicas=params.replicas, tier='frontend')
[
  {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: params.name, labels: labels { env: std.extVar('env') } },
    spec: { ports: [{ port: params.servicePort }], selector: { app: params.name } },
  },
  {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: params.name, labels: labels },
    spec: {
      replicas: replicas,
      selector: { matchLabels: { app: params.name } },
      template: {
        metadata: { labels: { app: params.name, tier: tier } },
        spec: { containers: [{ name: params.name, image: std.extVar('image') }] },
      },
    },
  },
]
"#;

fn jsonnet_repository() -> Fixture {
    repository(
        &[
            ("jsonnet/guestbook/guestbook.jsonnet", GUESTBOOK_JSONNET),
            (
                "jsonnet/guestbook/params.libsonnet",
                "{ name: 'guestbook-ui', replicas: 1, servicePort: 80 }\n",
            ),
            ("vendor/common/labels.libsonnet", "{ team: 'web' }\n"),
            (
                "jsonnet/broken/broken.jsonnet",
                "local x = 1;\n{\n  apiVersion: 'v1',\n  kind: 'ConfigMap',\n  metadata: { name: undefined_variable },\n}\n",
            ),
            (
                "jsonnet/escape/escape.jsonnet",
                "{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' }, data: { p: importstr '../../../../../../etc/passwd' } }\n",
            ),
            (
                "jsonnet/link/link.jsonnet",
                "{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' }, data: { p: importstr 'passwd.txt' } }\n",
            ),
            (
                "jsonnet/absolute/abs.jsonnet",
                "{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' }, data: { p: importstr '/etc/passwd' } }\n",
            ),
            ("jsonnet/notk8s/data.jsonnet", "{ replicas: 3 }\n"),
            (
                "jsonnet/mixed/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\n",
            ),
            (
                "jsonnet/mixed/objects.jsonnet",
                "{ apiVersion: 'v1', kind: 'List', items: [{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'from-jsonnet-' + std.extVar('n') } }] }\n",
            ),
        ],
        &[("jsonnet/link/passwd.txt", "/etc/passwd")],
    )
}

#[test]
fn jsonnet_with_ext_vars_tlas_and_libs() {
    let f = jsonnet_repository();
    let options = r#"{"jsonnet":{
        "extVars":[{"name":"env","value":"prod-$ARGOCD_APP_NAME"},{"name":"image","value":"nginx:1.27"}],
        "tlas":[{"name":"replicas","value":"2 + 1","code":true},{"name":"tier","value":"web"}],
        "libs":["vendor/common"]}}"#;
    let mut req = directory_request(&f, "jsonnet/guestbook", options);
    req.env = vec![("ARGOCD_APP_NAME".into(), "guestbook".into())];
    let out = objects(&render_source(&f.cache, &RenderTools::default(), &req).expect("renders"));
    assert_eq!(
        kinds_and_names(&out),
        ["Service/guestbook-ui", "Deployment/guestbook-ui"]
    );
    assert_eq!(out[0]["metadata"]["labels"]["env"], "prod-guestbook");
    assert_eq!(out[0]["metadata"]["labels"]["team"], "web");
    assert_eq!(out[1]["spec"]["replicas"], 3);
    assert_eq!(
        out[1]["spec"]["template"]["metadata"]["labels"]["tier"],
        "web"
    );
    assert_eq!(
        out[1]["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );

    // Without the library path the import is not found; without the
    // extVar the evaluator says which.
    let err = render(&f, "jsonnet/guestbook", "").unwrap_err();
    assert!(
        err.starts_with("jsonnet/guestbook/guestbook.jsonnet: jsonnet: ")
            && err.contains("labels.libsonnet")
            && err.contains("no match locally or in the Jsonnet library paths"),
        "{err}"
    );
    let err = render(
        &f,
        "jsonnet/guestbook",
        r#"{"jsonnet":{"libs":["vendor/common"]}}"#,
    )
    .unwrap_err();
    assert!(err.contains("env"), "{err}");

    // YAML and Jsonnet side by side, in walk order; a List is expanded.
    let out = render(
        &f,
        "jsonnet/mixed",
        r#"{"jsonnet":{"extVars":[{"name":"n","value":"7","code":true}]}}"#,
    )
    .expect("mixed");
    assert_eq!(
        kinds_and_names(&out),
        ["ConfigMap/from-yaml", "ConfigMap/from-jsonnet-7"]
    );
}

#[test]
fn broken_and_escaping_jsonnet_is_an_error() {
    let f = jsonnet_repository();
    // (path, fragments of the error)
    let table: &[(&str, &[&str])] = &[
        (
            "jsonnet/broken",
            &[
                "jsonnet/broken/broken.jsonnet: jsonnet: ",
                "undefined_variable",
                "jsonnet/broken/broken.jsonnet:5",
            ],
        ),
        (
            "jsonnet/escape",
            &[
                "jsonnet/escape/escape.jsonnet: jsonnet: ",
                "leaves the repository",
            ],
        ),
        (
            "jsonnet/link",
            &[
                "jsonnet/link/link.jsonnet: jsonnet: ",
                "points outside the repository",
            ],
        ),
        ("jsonnet/absolute", &["absolute paths are not allowed"]),
        (
            "jsonnet/notk8s",
            &["jsonnet/notk8s/data.jsonnet: jsonnet: ", "missing kind"],
        ),
    ];
    for (path, fragments) in table {
        let err = render(&f, path, "").unwrap_err();
        for fragment in *fragments {
            assert!(err.contains(fragment), "{path}: {fragment:?} not in {err}");
        }
        assert!(!err.contains("root:"), "{path}: host file leaked: {err}");
    }
    let err = render(
        &f,
        "jsonnet/guestbook",
        r#"{"jsonnet":{"libs":["../../outside"]}}"#,
    )
    .unwrap_err();
    assert!(err.contains("is outside the repository"), "{err}");
}

#[test]
fn renderer_choice_follows_argo_cd() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: raw\n";
    let f = repository(
        &[
            (
                "k/kustomization.yaml",
                "resources:\n- cm.yaml\nnamePrefix: built-\n",
            ),
            ("k/cm.yaml", cm),
        ],
        &[],
    );
    // An explicit directory block reads the files as they are, even next
    // to a kustomization.yaml (which is not a manifest and is ignored).
    let out = render(&f, "k", r#"{"recurse":true}"#).expect("directory");
    assert_eq!(kinds_and_names(&out), ["ConfigMap/raw"]);
    let mut req = directory_request(&f, "k", r#"{"recurse":true}"#);
    req.kustomize = r#"{"namePrefix":"x-"}"#.into();
    let err = render_source(&f.cache, &RenderTools::default(), &req).unwrap_err();
    assert_eq!(
        err,
        "multiple application sources defined: Kustomize,Directory"
    );
    let mut req = directory_request(&f, "k", "");
    req.plugin = r#"{"name":"cmp"}"#.into();
    let err = render_source(&f.cache, &RenderTools::default(), &req).unwrap_err();
    assert!(err.contains("plugins are not supported"), "{err}");
}

/// The hub binary evaluates Jsonnet in a child process
/// (`flotilla-hub jsonnet-eval`) that is killed at the timeout.
#[test]
fn jsonnet_in_a_child_process() {
    let mut files = vec![(
        "slow/slow.jsonnet",
        "std.foldl(function(a, b) a + b, std.range(1, 200000000), 0)\n",
    )];
    files.push(("guestbook/guestbook.jsonnet", GUESTBOOK_JSONNET));
    files.push((
        "guestbook/params.libsonnet",
        "{ name: 'guestbook-ui', replicas: 1, servicePort: 80 }\n",
    ));
    files.push(("guestbook/labels.libsonnet", "{ team: 'web' }\n"));
    files.push(("escape/x.jsonnet", "importstr '../../../etc/passwd'\n"));
    let f = repository(&files, &[]);
    let tools = RenderTools {
        jsonnet: Some(vec![
            env!("CARGO_BIN_EXE_flotilla-hub").to_owned(),
            "jsonnet-eval".to_owned(),
        ]),
        timeout: std::time::Duration::from_secs(60),
        ..Default::default()
    };
    let options = r#"{"jsonnet":{"extVars":[{"name":"env","value":"prod"},{"name":"image","value":"nginx:1.27"}]}}"#;
    let out = objects(
        &render_source(
            &f.cache,
            &tools,
            &directory_request(&f, "guestbook", options),
        )
        .expect("renders in the child"),
    );
    assert_eq!(
        kinds_and_names(&out),
        ["Service/guestbook-ui", "Deployment/guestbook-ui"]
    );
    assert_eq!(out[0]["metadata"]["labels"]["env"], "prod");

    let err = render_source(&f.cache, &tools, &directory_request(&f, "escape", "")).unwrap_err();
    assert!(
        err.starts_with("escape/x.jsonnet: jsonnet: ") && err.contains("leaves the repository"),
        "{err}"
    );

    let tools = RenderTools {
        timeout: std::time::Duration::from_millis(1500),
        ..tools
    };
    let started = std::time::Instant::now();
    let err = render_source(&f.cache, &tools, &directory_request(&f, "slow", "")).unwrap_err();
    assert!(
        err.starts_with("slow/slow.jsonnet: jsonnet: evaluation timed out"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
