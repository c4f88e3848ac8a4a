//! Repositories declared as Secrets (Argo CD's `secret-type: repository`
//! and `repo-creds`): the hub registers them at start and fetches them,
//! credential templates give credentials by the longest URL prefix to every
//! repository without its own (declared, `repo add`ed or used by
//! applications), the directory is read again while the hub runs, and a
//! Secret that cannot be used is reported by name without disturbing the
//! others.
//!
//! The authenticated repositories are served over smart HTTPS by
//! `git http-backend` behind a basic-auth check (`GitServer` below), with a
//! certificate from a test CA that the hub, run as a process, trusts
//! through `SSL_CERT_FILE` (the hub sends no credentials over plain http).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use flotilla_hub::server::{HubConfig, RunningHub, start};
use flotilla_proto as pb;

mod support;
use support::{git, write};

fn secret(name: &str, kind: &str, fields: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: flotilla\n  labels:\n    argocd.argoproj.io/secret-type: {kind}\nstringData:\n"
    );
    for (k, v) in fields {
        s.push_str(&format!("  {k}: {v:?}\n"));
    }
    s
}

/// Repositories under `root` served over Git smart HTTP; a path under a
/// protected prefix needs that prefix's basic-auth user and password.
#[derive(Clone)]
struct GitServer {
    root: PathBuf,
    /// Path prefix → `Basic ...` header value it needs.
    protected: Arc<Vec<(String, String)>>,
}

async fn git_http(
    State(server): State<GitServer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if let Some((_, want)) = server
        .protected
        .iter()
        .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        && headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"git\"")],
            "",
        )
            .into_response();
    }
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &server.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (header, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("git-protocol", "GIT_PROTOCOL"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
    ] {
        if let Some(v) = headers.get(header).and_then(|v| v.to_str().ok()) {
            cmd.env(var, v);
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &body)
        .await
        .unwrap();
    drop(stdin);
    let raw = child.wait_with_output().await.unwrap().stdout;
    let (head_len, sep) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => (raw.windows(2).position(|w| w == b"\n\n").unwrap(), 2),
    };
    let head = String::from_utf8_lossy(&raw[..head_len]).into_owned();
    let mut response = Response::builder();
    for line in head.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').unwrap();
        if k.eq_ignore_ascii_case("status") {
            let code: u16 = v.trim()[..3].parse().unwrap();
            response = response.status(code);
        } else {
            response = response.header(k.trim(), v.trim());
        }
    }
    response
        .body(axum::body::Body::from(raw[head_len + sep..].to_vec()))
        .unwrap()
}

impl GitServer {
    /// Serves `root` over https with a certificate for 127.0.0.1 from a
    /// CA written to `ca_dir/ca.crt`; returns `https://ADDR`.
    async fn start(root: &Path, ca_dir: &Path, protected: &[(&str, &str, &str)]) -> String {
        let protected = protected
            .iter()
            .map(|(prefix, user, password)| {
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                ((*prefix).to_owned(), format!("Basic {token}"))
            })
            .collect();
        let server = Self {
            root: root.to_owned(),
            protected: Arc::new(protected),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(git_http).with_state(server);
        support::serve_https(listener, app, ca_dir);
        format!("https://{addr}")
    }
}

/// A bare repository `root/rel` with one commit holding a ConfigMap;
/// returns the commit.
fn bare_repo(root: &Path, rel: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q"]);
    write(
        work.path(),
        "cm.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {}}}\n",
            rel.replace(['/', '.'], "-")
        ),
    );
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-q", "-m", "first"]);
    let head = git(work.path(), &["rev-parse", "HEAD"]);
    let bare = root.join(rel);
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        work.path(),
        &["clone", "-q", "--bare", ".", bare.to_str().unwrap()],
    );
    head
}

async fn repositories(api: &mut support::Api) -> Vec<pb::Repository> {
    api.list_repositories(pb::ListRepositoriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .repositories
}

/// Polls the repository list until `done` holds; panics with the list
/// after 90 s.
async fn wait_repos(
    api: &mut support::Api,
    what: &str,
    done: impl Fn(&[pb::Repository]) -> bool,
) -> Vec<pb::Repository> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let repos = repositories(api).await;
        if done(&repos) {
            return repos;
        }
        assert!(Instant::now() < deadline, "{what}: {repos:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fetched(repos: &[pb::Repository], url: &str, commit: &str) -> bool {
    repos
        .iter()
        .any(|r| r.url == url && r.last_commit == commit)
}

/// `flotilla-hub serve` as a process (so it can be given `SSL_CERT_FILE`),
/// killed when dropped.
struct HubProcess {
    child: Child,
    url: String,
    data: tempfile::TempDir,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HubProcess {
    fn start(secrets: &Path, ca_file: &Path) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--poll-interval", "1s"])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--repository-secrets")
            .arg(secrets)
            .args(["--repository-secrets-interval", "200ms"])
            .env("SSL_CERT_FILE", ca_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut url = None;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(u) = line.strip_prefix("flotilla-hub listening on ") {
                url = Some(u.trim().to_owned());
                break;
            }
        }
        let url = url.expect("the hub printed where it listens");
        Self { child, url, data }
    }

    /// Runs the CLI against the hub; its stdout, or a panic with both
    /// streams.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("FLOTILLA_HUB", &self.url)
            .env("FLOTILLA_CA_FILE", self.data.path().join("ca.crt"))
            .env("FLOTILLA_TOKEN_FILE", self.data.path().join("admin.token"))
            .env_remove("FLOTILLA_TOKEN")
            .env(
                "FLOTILLA_CONFIG",
                self.data.path().join("no-such-config.json"),
            )
            .output()
            .unwrap();
        support::ok(&out)
    }

    fn repos(&self) -> Vec<serde_json::Value> {
        let json = self.cli(&["repo", "list", "-o", "json"]);
        serde_json::from_str(&json).unwrap()
    }
}

async fn hub_with_secrets(data: &Path, secrets: &Path) -> RunningHub {
    let mut config = HubConfig::new(data, "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    config.repository_secrets = Some(secrets.to_owned());
    config.repository_secrets_interval = Duration::from_millis(200);
    start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_declared_as_a_secret_is_registered_and_fetched() {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    write(
        repo.path(),
        "guestbook/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: g}\ndata: {a: b}\n",
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "first"]);
    let head = git(repo.path(), &["rev-parse", "HEAD"]);
    let url = format!("file://{}", repo.path().display());

    let secrets = tempfile::tempdir().unwrap();
    write(
        secrets.path(),
        "repositories.yaml",
        &[
            secret("local", "repository", &[("url", &url), ("name", "local")]),
            // Gets the template's credentials (never fetched: .invalid).
            secret(
                "private",
                "repository",
                &[("url", "https://git.example.invalid/org/team/app.git")],
            ),
            secret(
                "org-creds",
                "repo-creds",
                &[
                    ("url", "https://git.example.invalid/org"),
                    ("password", "org-token"),
                ],
            ),
        ]
        .join("---\n"),
    );
    // A Secret mounted as a volume, as the chart mounts them.
    write(
        secrets.path(),
        "repository/mounted/url",
        "https://charts.example.invalid/stable",
    );
    write(secrets.path(), "repository/mounted/type", "helm");

    let data = tempfile::tempdir().unwrap();
    let mut config = HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    config.repository_secrets = Some(secrets.path().to_owned());
    let hub = start(config).await.unwrap();
    let mut api = support::api(&hub).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let repos = loop {
        let repos = api
            .list_repositories(pb::ListRepositoriesRequest {})
            .await
            .unwrap()
            .into_inner()
            .repositories;
        let fetched = repos.iter().any(|r| r.url == url && r.last_commit == head);
        if fetched {
            break repos;
        }
        assert!(
            Instant::now() < deadline,
            "declared repository not fetched: {repos:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let find = |u: &str| repos.iter().find(|r| r.url == u).unwrap();
    let local = find(&url);
    assert_eq!(
        local.apps_path, "",
        "a declared repository is a manifest source"
    );
    assert!(!local.has_credentials);
    let private = find("https://git.example.invalid/org/team/app.git");
    assert!(private.has_credentials, "template credentials not applied");
    let charts = find("https://charts.example.invalid/stable");
    assert_eq!(charts.r#type, "helm");
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_templates_give_repo_added_repositories_credentials_by_longest_prefix() {
    let root = tempfile::tempdir().unwrap();
    let team_head = bare_repo(root.path(), "org/team/app.git");
    let other_head = bare_repo(root.path(), "org/other.git");
    // The team's repositories take only the team's token: the org
    // template (a shorter prefix) would be refused there.
    let ca = tempfile::tempdir().unwrap();
    let base = GitServer::start(
        root.path(),
        ca.path(),
        &[
            ("/org/", "bot", "org-token"),
            ("/org/team/", "team-bot", "team-token"),
        ],
    )
    .await;
    let secrets = tempfile::tempdir().unwrap();
    write(
        secrets.path(),
        "creds.yaml",
        &[
            secret(
                "org-creds",
                "repo-creds",
                &[
                    ("url", &format!("{base}/org")),
                    ("username", "bot"),
                    ("password", "org-token"),
                ],
            ),
            secret(
                "team-creds",
                "repo-creds",
                &[
                    ("url", &format!("{base}/org/team/")),
                    ("username", "team-bot"),
                    ("password", "team-token"),
                ],
            ),
        ]
        .join("---\n"),
    );
    let hub = tokio::task::block_in_place(|| {
        HubProcess::start(secrets.path(), &ca.path().join("ca.crt"))
    });
    let team = format!("{base}/org/team/app.git");
    let other = format!("{base}/org/other.git");
    let list = tokio::task::block_in_place(|| {
        // `repo add` checks the repository is reachable: with the
        // template's credentials.
        for url in [&team, &other] {
            hub.cli(&["repo", "add", url]);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let repos = hub.repos();
            let at = |u: &str, c: &str| repos.iter().any(|r| r["url"] == u && r["lastCommit"] == c);
            if at(&team, &team_head) && at(&other, &other_head) {
                return repos;
            }
            assert!(
                Instant::now() < deadline,
                "repositories not fetched with template credentials: {repos:#?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let find = |u: &str| list.iter().find(|r| r["url"] == u).unwrap().clone();
    assert_eq!(
        find(&team)["credentialsTemplate"],
        format!("{base}/org/team")
    );
    assert_eq!(find(&other)["credentialsTemplate"], format!("{base}/org"));
    assert_eq!(find(&team)["hasCredentials"], true);

    // The CLI names the template, never the secret values.
    let text = tokio::task::block_in_place(|| hub.cli(&["repo", "get", &team]));
    assert!(
        text.contains(&format!("from template {base}/org/team")),
        "{text}"
    );
    let json = serde_json::to_string(&list).unwrap();
    for out in [&json, &text] {
        assert!(
            !out.contains("team-token") && !out.contains("org-token"),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_read_again_while_the_hub_runs_and_a_bad_one_disturbs_no_other() {
    let root = tempfile::tempdir().unwrap();
    let public_head = bare_repo(root.path(), "public.git");
    let later_head = bare_repo(root.path(), "later.git");
    let public = format!("file://{}/public.git", root.path().display());
    let later = format!("file://{}/later.git", root.path().display());
    // Never fetched (.invalid): shows which template it would use.
    let base = "https://git.example.invalid";
    let private = format!("{base}/private/app.git");

    let secrets = tempfile::tempdir().unwrap();
    write(
        secrets.path(),
        "public.yaml",
        &secret("public", "repository", &[("url", &public)]),
    );
    // A TLS client certificate is not supported: named, not ignored.
    write(
        secrets.path(),
        "broken.yaml",
        &secret(
            "client-cert",
            "repo-creds",
            &[
                ("url", &format!("{base}/private")),
                ("tlsClientCertData", "CERT"),
            ],
        ),
    );
    let data = tempfile::tempdir().unwrap();
    let hub = hub_with_secrets(data.path(), secrets.path()).await;
    let errors = hub.repository_secret_errors();
    assert!(
        errors.len() == 1
            && errors[0].contains("broken.yaml")
            && errors[0].contains("Secret \"client-cert\"")
            && errors[0].contains("key \"tlsClientCertData\" is not supported"),
        "{errors:?}"
    );
    let mut api = support::api(&hub).await;
    wait_repos(&mut api, "the good Secret's repository fetched", |r| {
        fetched(r, &public, &public_head)
    })
    .await;

    // Added while the hub runs, as Kubernetes updates a mounted Secret:
    // repositories without credentials and the template that has them.
    write(
        secrets.path(),
        "private.yaml",
        &[
            secret("later", "repository", &[("url", &later)]),
            secret("private", "repository", &[("url", &private)]),
            secret(
                "private-creds",
                "repo-creds",
                &[
                    ("url", &format!("{base}/private")),
                    ("username", "bot"),
                    ("password", "s3cret"),
                ],
            ),
        ]
        .join("---\n"),
    );
    let repos = wait_repos(&mut api, "the added Secrets applied", |r| {
        fetched(r, &later, &later_head)
            && r.iter()
                .any(|r| r.url == private && !r.credentials_template.is_empty())
    })
    .await;
    let shown = repos.iter().find(|r| r.url == private).unwrap();
    assert_eq!(shown.credentials_template, format!("{base}/private"));
    assert_eq!(hub.repository_secret_errors().len(), 1);

    // Fixing the broken file clears its error; removing a Secret removes
    // the repository it declared, unless an application uses it: then the
    // repository stays and the error names the application, until the
    // application is gone.
    api.create_application(pb::CreateApplicationRequest {
        manifest: format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: uses-later}}\nspec:\n  project: default\n  source: {{repoURL: {later:?}, path: ., targetRevision: HEAD}}\n  destination: {{server: https://kubernetes.default.svc, namespace: default}}\n"
        ),
        upsert: false,
    })
    .await
    .unwrap();
    for f in ["broken.yaml", "public.yaml", "private.yaml"] {
        std::fs::remove_file(secrets.path().join(f)).unwrap();
    }
    wait_repos(
        &mut api,
        "the removed Secrets' unused repositories removed",
        |r| {
            !r.iter().any(|r| r.url == public || r.url == private)
                && r.iter().any(|r| r.url == later)
        },
    )
    .await;
    let errors = hub.repository_secret_errors();
    assert!(
        errors.len() == 1
            && errors[0].contains("Secret \"later\" is gone")
            && errors[0].contains("uses-later"),
        "{errors:?}"
    );
    api.delete_application(pb::DeleteApplicationRequest {
        name: "uses-later".into(),
        cascade: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_repos(
        &mut api,
        "the repository removed once no application uses it",
        |r| !r.iter().any(|r| r.url == later),
    )
    .await;
    assert_eq!(hub.repository_secret_errors(), Vec::<String>::new());
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secrets_directory_that_cannot_be_read_stops_the_hub_naming_it() {
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("no-such-dir");
    let mut config = HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap());
    config.repository_secrets = Some(missing.clone());
    let Err(e) = start(config).await else {
        panic!("the hub started with a missing --repository-secrets directory");
    };
    let e = e.to_string();
    assert!(
        e.contains("--repository-secrets") && e.contains(&missing.display().to_string()),
        "{e}"
    );
}
