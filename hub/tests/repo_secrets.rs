//! Repositories declared as Secrets (Argo CD's `secret-type: repository`
//! and `repo-creds`): the hub registers them at start and fetches them,
//! credential templates reach the repositories under their URL prefix, and
//! a Secret that cannot be honoured stops the hub with its name.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, start};
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
async fn a_repository_secret_without_url_stops_the_hub_naming_it() {
    let secrets = tempfile::tempdir().unwrap();
    write(
        secrets.path(),
        "repositories.yaml",
        &secret("no-url", "repository", &[("username", "bot")]),
    );
    let data = tempfile::tempdir().unwrap();
    let mut config = HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap());
    config.repository_secrets = Some(secrets.path().to_owned());
    let Err(e) = start(config).await else {
        panic!("the hub started with a repository Secret without url");
    };
    let e = e.to_string();
    assert!(
        e.contains("--repository-secrets")
            && e.contains("repositories.yaml")
            && e.contains("Secret \"no-url\": url is required"),
        "{e}"
    );
}
