//! `--allowed-fetch-hosts`: an application naming a repository on a host
//! outside the list is refused before any connection is made (a listener
//! standing in for an internal service sees none), with an error on the
//! application naming the host and the rules; an allowed repository is
//! fetched as before.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, start};
use flotilla_proto as pb;

mod support;
use support::{api, git, write};

fn app_yaml(name: &str, url: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {url}\n    path: web\n  destination:\n    name: c1\n    namespace: default\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_outside_the_list_are_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write(
        &repo,
        "web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
    );
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "init"]);

    // Stands in for an internal service an app author wants the hub to
    // call: counts connections.
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal_url = format!("http://{}/org/app.git", internal.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((_c, _)) = internal.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });

    let mut config = HubConfig::new(dir.path().join("hub"), "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    config.allowed_fetch_hosts = vec!["git.allowed.example".into(), "file://".into()];
    let hub = start(config).await.unwrap();
    let mut admin = api(&hub).await;
    admin
        .add_cluster(pb::AddClusterRequest {
            name: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for (name, url) in [
        ("local", format!("file://{}", repo.display())),
        ("internal", internal_url.clone()),
    ] {
        admin
            .create_application(pb::CreateApplicationRequest {
                manifest: app_yaml(name, &url),
                upsert: false,
            })
            .await
            .unwrap();
    }
    let get = |name: &'static str| {
        let mut admin = admin.clone();
        async move {
            admin
                .get_application(pb::GetApplicationRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (local, internal) = (get("local").await, get("internal").await);
        if !local.revision.is_empty() && !internal.error.is_empty() {
            assert!(local.error.is_empty(), "{local:?}");
            assert!(
                internal.error.contains("host \"127.0.0.1\" is not allowed by --allowed-fetch-hosts (git.allowed.example, file://)"),
                "{}",
                internal.error
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "local: {local:?}\ninternal: {internal:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the refused host was contacted"
    );
    hub.shutdown().await.unwrap();
}
