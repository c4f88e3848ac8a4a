//! `flotilla app refresh` (the Refresh rpc) fetches again even right after
//! a fetch: two pushes a second apart both arrive without waiting for the
//! poll interval.

use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, start};
use flotilla_proto as pb;

mod support;
use support::{Api, api, git, write};

const APP: &str = "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: web\nspec:\n  source:\n    repoURL: @URL@\n    path: web\n  destination:\n    name: c1\n    namespace: default\n";

async fn wait_revision(api: &mut Api, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let app = api
            .get_application(pb::GetApplicationRequest { name: "web".into() })
            .await
            .expect("get web")
            .into_inner();
        if app.revision == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "web stayed at {} (error {:?}), wanted {want}: the refresh did not fetch",
            app.revision,
            app.error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_right_after_a_fetch_still_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let url = format!("file://{}", repo.display());
    git(&repo, &["init", "-q", "-b", "main"]);
    let cm = |n: u32| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  n: \"{n}\"\n")
    };
    write(&repo, "web/cm.yaml", &cm(0));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "0"]);

    let mut config = HubConfig::new(dir.path().join("hub"), "127.0.0.1:0".parse().expect("addr"));
    // Only a refresh can bring a new commit within the test's deadline.
    config.poll_interval = Duration::from_secs(600);
    let hub = start(config).await.expect("hub starts");
    let mut api = api(&hub).await;
    api.add_cluster(pb::AddClusterRequest {
        name: "c1".into(),
        ..Default::default()
    })
    .await
    .expect("add c1");
    api.create_application(pb::CreateApplicationRequest {
        manifest: APP.replace("@URL@", &url),
        upsert: false,
    })
    .await
    .expect("create web");
    wait_revision(&mut api, &git(&repo, &["rev-parse", "HEAD"])).await;

    // Each push is followed at once by a refresh, as a CI job would do;
    // the pushes come well within a second of the previous fetch.
    for n in 1..=3 {
        write(&repo, "web/cm.yaml", &cm(n));
        git(&repo, &["commit", "-q", "-am", &n.to_string()]);
        let head = git(&repo, &["rev-parse", "HEAD"]);
        api.refresh(pb::RefreshRequest::default())
            .await
            .expect("refresh");
        wait_revision(&mut api, &head).await;
    }
    hub.shutdown().await.expect("hub shuts down");
}

/// A registered repository is polled at its own interval (1s here), far
/// shorter than the hub's default (600s): every push arrives without a
/// refresh, also after fetches that brought nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_is_polled_at_its_own_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let url = format!("file://{}", repo.display());
    git(&repo, &["init", "-q", "-b", "main"]);
    let cm = |n: u32| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  n: \"{n}\"\n")
    };
    write(&repo, "web/cm.yaml", &cm(0));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "0"]);

    let mut config = HubConfig::new(dir.path().join("hub"), "127.0.0.1:0".parse().expect("addr"));
    config.poll_interval = Duration::from_secs(600);
    let hub = start(config).await.expect("hub starts");
    let mut api = api(&hub).await;
    api.add_cluster(pb::AddClusterRequest {
        name: "c1".into(),
        ..Default::default()
    })
    .await
    .expect("add c1");
    api.add_repository(pb::AddRepositoryRequest {
        url: url.clone(),
        revision: "HEAD".into(),
        poll_interval_secs: 1,
        ..Default::default()
    })
    .await
    .expect("add repository");
    api.create_application(pb::CreateApplicationRequest {
        manifest: APP.replace("@URL@", &url),
        upsert: false,
    })
    .await
    .expect("create web");
    wait_revision(&mut api, &git(&repo, &["rev-parse", "HEAD"])).await;

    for n in 1..=2 {
        // A poll that finds nothing new happens in between.
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let repos = api
                .list_repositories(pb::ListRepositoriesRequest {})
                .await
                .expect("list repositories")
                .into_inner()
                .repositories;
            if repos
                .iter()
                .any(|r| r.url == url && r.last_fetch_ms > since)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the repository was not fetched again within 20s: {repos:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        write(&repo, "web/cm.yaml", &cm(n));
        git(&repo, &["commit", "-q", "-am", &n.to_string()]);
        let head = git(&repo, &["rev-parse", "HEAD"]);
        wait_revision(&mut api, &head).await;
    }
    hub.shutdown().await.expect("hub shuts down");
}
