//! Project-scoped repository credentials (Argo CD's project-scoped
//! repositories): a repository Secret with `project: team-a` serves team
//! A's applications only; team B's application naming the same URL is
//! refused with an error naming the repository and both projects, not
//! fetched anonymously from the mirror team A's credentials filled.
//! (The repository is a local one: team A's fetch shows the credentials
//! were handed to it by failing in Git, as a file:// URL takes none.)

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, start};
use flotilla_proto as pb;

mod support;
use support::{api, git, write};

fn app_yaml(name: &str, project: &str, url: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  project: {project}\n  source:\n    repoURL: {url}\n    path: web\n  destination:\n    name: c1\n    namespace: default\n"
    )
}

fn project_yaml(name: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AppProject\nmetadata:\n  name: {name}\nspec:\n  sourceRepos: ['*']\n  destinations:\n  - name: c1\n    namespace: '*'\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_credentials_serve_their_project_only() {
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
    let url = format!("file://{}", repo.display());
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        secrets.join("team-a-repo.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: team-a-repo\n  namespace: flotilla\n  labels:\n    argocd.argoproj.io/secret-type: repository\nstringData:\n  url: {url:?}\n  project: team-a\n  username: bot\n  password: team-a-secret\n"
        ),
    )
    .unwrap();

    let mut config = HubConfig::new(dir.path().join("hub"), "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    config.repository_secrets = Some(secrets.clone());
    let hub = start(config).await.unwrap();
    let mut admin = api(&hub).await;
    admin
        .add_cluster(pb::AddClusterRequest {
            name: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for team in ["team-a", "team-b"] {
        admin
            .create_project(pb::CreateProjectRequest {
                manifest: project_yaml(team),
                upsert: false,
            })
            .await
            .unwrap();
    }
    for (name, team) in [("a-web", "team-a"), ("b-web", "team-b")] {
        admin
            .create_application(pb::CreateApplicationRequest {
                manifest: app_yaml(name, team, &url),
                upsert: false,
            })
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let get = |name: &str| {
            let mut admin = admin.clone();
            let name = name.to_owned();
            async move {
                admin
                    .get_application(pb::GetApplicationRequest { name })
                    .await
                    .unwrap()
                    .into_inner()
            }
        };
        let (a, b) = (get("a-web").await, get("b-web").await);
        // A file:// repository cannot take a user and password, so team
        // A's fetch fails in Git: proof enough that its application was
        // handed the scoped credentials (`***@` in the URL), where team B's
        // got none and was refused before any fetch.
        if !a.error.is_empty() && !b.error.is_empty() {
            assert!(
                !a.error.contains("scoped") && a.error.contains("file://***@"),
                "{}",
                a.error
            );
            assert!(
                b.error
                    .contains("credentials are scoped to project \"team-a\"")
                    && b.error.contains("\"b-web\" is in project \"team-b\""),
                "{}",
                b.error
            );
            assert!(
                b.revision.is_empty(),
                "nothing was fetched for b-web: {b:?}"
            );
            assert!(!b.error.contains("team-a-secret"), "{}", b.error);
            break;
        }
        assert!(Instant::now() < deadline, "a-web: {a:?}\nb-web: {b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hub.shutdown().await.unwrap();
}
