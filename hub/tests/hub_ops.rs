//! Sync, history, rollback, diff and webhooks against an in-process hub
//! (no agents: commands to clusters without a stream are reported).

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, RepoSpec, start};
use flotilla_proto as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

mod support;
use support::{api, git, write};

fn app_yaml(name: &str, url: &str, automated: bool) -> String {
    let policy = if automated {
        "  syncPolicy:\n    automated:\n      prune: true\n"
    } else {
        ""
    };
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {url}\n    path: web\n  destination:\n    name: c1\n    namespace: default\n{policy}"
    )
}

async fn post(addr: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST /api/webhook HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await.unwrap();
    let code = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, resp.split_once("\r\n\r\n").unwrap().1.to_owned())
}

fn signed(body: &str, secret: &str) -> String {
    format!(
        "sha256={}",
        hex_of(&flotilla_hub::webhook::hmac_sha256(
            secret.as_bytes(),
            body.as_bytes()
        ))
    )
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_history_rollback_diff_and_webhooks_without_agents() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let url = format!("file://{}", repo.display());
    git(&repo, &["init", "-q", "-b", "main"]);
    write(&repo, "apps/auto.yaml", &app_yaml("auto", &url, true));
    write(
        &repo,
        "web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
    );
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);

    let webhook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let webhook_addr = webhook.local_addr().unwrap();
    drop(webhook);
    let mut config = HubConfig::new(dir.path().join("hub"), "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(600);
    config.webhook_listen = Some(webhook_addr);
    config.webhook_secret = Some("s3cret".into());
    config.repos = vec![RepoSpec {
        url: url.clone(),
        apps_path: "apps".into(),
        revision: "main".into(),
        poll_interval: Some(Duration::from_secs(600)),
    }];
    let hub = start(config).await.unwrap();
    let mut api = api(&hub).await;
    api.add_cluster(pb::AddClusterRequest {
        name: "c1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    api.create_application(pb::CreateApplicationRequest {
        manifest: app_yaml("manual", &url, false),
        upsert: false,
    })
    .await
    .unwrap();

    // The automated application's first render is an `automated` entry.
    let start_wait = Instant::now();
    let history = loop {
        let h = api
            .get_application_history(pb::GetApplicationHistoryRequest {
                name: "auto".into(),
            })
            .await
            .map(|r| r.into_inner());
        if let Ok(h) = h
            && !h.entries.is_empty()
        {
            break h;
        }
        assert!(start_wait.elapsed() < Duration::from_secs(30), "no history");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(history.entries[0].initiated_by, "automated");
    assert_eq!(history.entries[0].revision, head);
    assert_eq!(history.entries[0].clusters, ["c1"]);

    let err = api
        .rollback_application(pb::RollbackApplicationRequest {
            name: "auto".into(),
            id: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("rollback cannot be initiated when auto-sync is enabled")
    );

    // Manual sync with no agent connected: rendered, recorded, reported.
    let r = api
        .sync_application(pb::SyncApplicationRequest {
            name: "manual".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, head);
    assert!(r.clusters.is_empty());
    assert_eq!(r.not_connected, ["c1"]);
    assert_eq!(r.history_id, 1);
    let h = api
        .get_application_history(pb::GetApplicationHistoryRequest {
            name: "manual".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.entries[0].initiated_by, "user:admin");
    assert!(h.pinned_revision.is_empty());

    let err = api
        .sync_application(pb::SyncApplicationRequest {
            name: "manual".into(),
            revision: "no-such-branch".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = api
        .sync_application(pb::SyncApplicationRequest {
            name: "manual".into(),
            cluster: "elsewhere".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = api
        .rollback_application(pb::RollbackApplicationRequest {
            name: "manual".into(),
            id: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("ids: 1"), "{}", err.message());

    let d = api
        .diff_application(pb::DiffApplicationRequest {
            name: "manual".into(),
            cluster: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.clusters.len(), 1);
    assert_eq!(d.clusters[0].error, "cluster not connected");

    api.refresh(pb::RefreshRequest {
        app: "manual".into(),
        hard: true,
    })
    .await
    .unwrap();
    let err = api
        .refresh(pb::RefreshRequest {
            app: "nope".into(),
            hard: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Webhooks.
    let addr = webhook_addr.to_string();
    let push = serde_json::json!({"repository": {"clone_url": url}}).to_string();
    let (code, _) = post(
        &addr,
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-Hub-Signature-256", signed(&push, "wrong")),
        ],
        &push,
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = post(
        &addr,
        &[
            ("X-GitHub-Event", "ping".into()),
            ("X-Hub-Signature-256", signed("{}", "s3cret")),
        ],
        "{}",
    )
    .await;
    assert_eq!(code, 202);
    let other = r#"{"repository":{"clone_url":"https://example.invalid/x.git"}}"#;
    let (code, _) = post(
        &addr,
        &[
            ("X-Gitea-Event", "push".into()),
            ("X-Gitea-Signature", signed(other, "s3cret")[7..].to_owned()),
        ],
        other,
    )
    .await;
    assert_eq!(code, 202);

    // A new commit arrives through the webhook, not the 600s poll.
    write(
        &repo,
        "web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  v: \"2\"\n",
    );
    git(&repo, &["commit", "-q", "-am", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    let (code, body) = post(
        &addr,
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-Hub-Signature-256", signed(&push, "s3cret")),
        ],
        &push,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let start_wait = Instant::now();
    loop {
        let a = api
            .get_application(pb::GetApplicationRequest {
                name: "auto".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if a.revision == second {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(30),
            "webhook did not bring {second}: {}",
            a.revision
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.shutdown().await.unwrap();
}

#[test]
fn credentials_go_into_the_userinfo() {
    use flotilla_hub::source::with_credentials;
    assert_eq!(
        with_credentials("https://git.example/org/r.git", "bot", "p@ss:w/rd"),
        "https://bot:p%40ss%3Aw%2Frd@git.example/org/r.git"
    );
    assert_eq!(
        with_credentials("https://old:x@git.example/r", "", "tok"),
        "https://git:tok@git.example/r"
    );
    assert_eq!(with_credentials("/local/path", "u", "p"), "/local/path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_credentials_never_show_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/private.git", closed.local_addr().unwrap());
    drop(closed);
    let mut config = HubConfig::new(dir.path().join("hub"), "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(600);
    let hub = start(config).await.unwrap();
    let mut api = api(&hub).await;
    api.add_repository(pb::AddRepositoryRequest {
        url: url.clone(),
        revision: "main".into(),
        apps_path: "apps".into(),
        poll_interval_secs: 600,
        ..Default::default()
    })
    .await
    .unwrap();
    let secret = "hunter2-very-secret-token";
    let r = api
        .set_repository_credentials(pb::SetRepositoryCredentialsRequest {
            url: url.clone(),
            username: "robot-user".into(),
            password: secret.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.has_credentials);
    let start_wait = Instant::now();
    let repo = loop {
        let list = api
            .list_repositories(pb::ListRepositoriesRequest {})
            .await
            .unwrap()
            .into_inner();
        let repo = list
            .repositories
            .into_iter()
            .find(|r| r.url == url)
            .unwrap();
        if !repo.last_error.is_empty() && repo.last_fetch_ms > 0 {
            break repo;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(30),
            "no fetch error"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(repo.has_credentials);
    assert!(!repo.last_error.contains(secret), "{}", repo.last_error);
    assert!(
        !repo.last_error.contains("robot-user"),
        "{}",
        repo.last_error
    );
    // Removing them.
    let r = api
        .set_repository_credentials(pb::SetRepositoryCredentialsRequest {
            url: url.clone(),
            username: String::new(),
            password: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.has_credentials);
    hub.shutdown().await.unwrap();
}
