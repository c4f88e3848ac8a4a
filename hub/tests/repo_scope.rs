//! Project-scoped repository credentials (Argo CD's project-scoped
//! repositories): a repository Secret with `project: team-a` serves team
//! A's applications only; team B's application naming the same URL is
//! refused with an error naming the repository and both projects, not
//! fetched anonymously from the mirror team A's credentials filled.
//! The same holds whichever way the scoped credentials were given: a
//! repository Secret, `repo add --project` (SetRepositoryCredentials with
//! a project), or a credential template (`repo-creds`) with a project;
//! and for ApplicationSet git generators, which fetch as the set's
//! template project. (The repository is a local one: team A's fetch shows
//! the credentials were handed to it by failing in Git, as a file:// URL
//! takes none.)

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use flotilla_proto as pb;

mod support;
use support::{flotilla, hub_with_c1, ok, web_repo};

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

/// Where team A's scoped credentials come from.
#[derive(Clone, Copy, Debug)]
enum Given {
    RepositorySecret,
    Api,
    CredentialTemplate,
    /// None: the test gives them itself.
    Nothing,
}

struct Setup {
    _dir: tempfile::TempDir,
    url: String,
    hub: flotilla_hub::server::RunningHub,
    admin: support::Api,
}

/// A hub with cluster c1, projects team-a and team-b, and a repository
/// whose credentials are scoped to team-a as `given` says.
async fn setup(given: Given) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = web_repo(dir.path());
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let secret = |name: &str, kind: &str, url: &str| {
        std::fs::write(
            secrets.join(format!("{name}.yaml")),
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: flotilla\n  labels:\n    argocd.argoproj.io/secret-type: {kind}\nstringData:\n  url: {url:?}\n  project: team-a\n  username: bot\n  password: team-a-secret\n"
            ),
        )
        .unwrap();
    };
    match given {
        Given::RepositorySecret => secret("team-a-repo", "repository", &url),
        // A prefix of the repository's URL: its parent directory.
        Given::CredentialTemplate => secret(
            "team-a-creds",
            "repo-creds",
            &format!("file://{}", dir.path().display()),
        ),
        Given::Api | Given::Nothing => {}
    }

    let (hub, mut admin) = hub_with_c1(dir.path(), |config| {
        config.poll_interval = Duration::from_secs(1);
        config.repository_secrets = Some(secrets.clone());
    })
    .await;
    for team in ["team-a", "team-b"] {
        admin
            .create_project(pb::CreateProjectRequest {
                manifest: project_yaml(team),
                upsert: false,
            })
            .await
            .unwrap();
    }
    if let Given::Api = given {
        admin
            .add_repository(pb::AddRepositoryRequest {
                url: url.clone(),
                revision: "main".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let credentials = |project: &str, password: &str| pb::SetRepositoryCredentialsRequest {
            url: url.clone(),
            username: "bot".into(),
            password: password.into(),
            project: project.into(),
            ..Default::default()
        };
        // What cannot be scoped is refused, naming the cause.
        let e = admin
            .set_repository_credentials(credentials("team-z", "team-a-secret"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("project \"team-z\" does not exist"),
            "{}",
            e.message()
        );
        let e = admin
            .set_repository_credentials(credentials("team-a", ""))
            .await
            .unwrap_err();
        assert!(e.message().contains("none are given"), "{}", e.message());
        let r = admin
            .set_repository_credentials(credentials("team-a", "team-a-secret"))
            .await
            .unwrap()
            .into_inner();
        assert!(r.has_credentials && r.project == "team-a", "{r:?}");
    }
    Setup {
        _dir: dir,
        url,
        hub,
        admin,
    }
}

async fn scoped_credentials_serve_their_project_only(given: Given) {
    let Setup {
        _dir,
        url,
        hub,
        mut admin,
    } = setup(given).await;
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
                "{given:?}: {}",
                a.error
            );
            assert!(
                b.error
                    .contains("credentials are scoped to project \"team-a\"")
                    && b.error.contains("\"b-web\" is in project \"team-b\""),
                "{given:?}: {}",
                b.error
            );
            assert!(
                b.revision.is_empty(),
                "nothing was fetched for b-web: {b:?}"
            );
            assert!(!b.error.contains("team-a-secret"), "{}", b.error);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{given:?}: a-web: {a:?}\nb-web: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_credentials_from_a_repository_secret() {
    scoped_credentials_serve_their_project_only(Given::RepositorySecret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_credentials_from_repo_add_project() {
    scoped_credentials_serve_their_project_only(Given::Api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_credentials_from_a_credential_template() {
    scoped_credentials_serve_their_project_only(Given::CredentialTemplate).await;
}

fn set_yaml(name: &str, project: &str, url: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: {name}\nspec:\n  generators:\n  - git:\n      repoURL: {url}\n      revision: main\n      directories:\n      - path: '*'\n  template:\n    metadata:\n      name: '{name}-{{{{path.basename}}}}'\n    spec:\n      project: {project}\n      source:\n        repoURL: {url}\n        path: '{{{{path}}}}'\n      destination:\n        name: c1\n        namespace: default\n"
    )
}

/// An ApplicationSet's git generator fetches as its template's project:
/// team A's set is handed the scoped credentials, team B's set, and a set
/// whose project is templated (known only after generating), are refused
/// with an error naming the repository and both projects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appset_git_generators_fetch_as_their_template_project() {
    let Setup {
        _dir,
        url,
        hub,
        mut admin,
    } = setup(Given::RepositorySecret).await;
    for (name, project) in [
        ("a-set", "team-a"),
        ("b-set", "team-b"),
        ("t-set", "'{{path.basename}}'"),
    ] {
        admin
            .create_application_set(pb::CreateApplicationSetRequest {
                manifest: set_yaml(name, project, &url),
                upsert: false,
            })
            .await
            .unwrap();
    }
    let errors = |s: &pb::ApplicationSet| {
        s.conditions
            .iter()
            .filter(|c| c.r#type == "ErrorOccurred")
            .map(|c| c.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut got = Vec::new();
        for name in ["a-set", "b-set", "t-set"] {
            got.push(
                admin
                    .get_application_set(pb::GetApplicationSetRequest { name: name.into() })
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        let (a, b, t) = (errors(&got[0]), errors(&got[1]), errors(&got[2]));
        if !a.is_empty() && !b.is_empty() && !t.is_empty() {
            assert!(
                !a.contains("scoped") && a.contains("file://***@"),
                "a-set: {a}"
            );
            assert!(
                b.contains("credentials are scoped to project \"team-a\"")
                    && b.contains("ApplicationSet \"b-set\" is in project \"team-b\""),
                "b-set: {b}"
            );
            assert!(
                t.contains("credentials are scoped to project \"team-a\"")
                    && t.contains("ApplicationSet \"t-set\" has a templated project"),
                "t-set: {t}"
            );
            for (s, e) in [(&got[1], &b), (&got[2], &t)] {
                assert!(!e.contains("team-a-secret"), "{e}");
                assert!(
                    s.applications.is_empty(),
                    "{}: nothing generated: {s:?}",
                    s.name
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "{got:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hub.shutdown().await.unwrap();
}

/// `flotilla repo add --project`: refused without credentials or for a
/// project that does not exist, before anything is registered; with a
/// password file, the stored credentials are the project's, as `repo get`
/// shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_add_project_through_the_cli() {
    let Setup {
        _dir: dir,
        url,
        hub,
        mut admin,
    } = setup(Given::Nothing).await;
    let other = url;
    let password = dir.path().join("password");
    std::fs::write(&password, "team-a-secret\n").unwrap();
    let password = password.to_str().unwrap();
    let refused = |args: &[&str], why: &str| {
        let out = flotilla(&hub, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    };
    refused(
        &["repo", "add", &other, "--skip-check", "--project", "team-a"],
        "--project scopes the repository's credentials",
    );
    refused(
        &[
            "repo",
            "add",
            &other,
            "--skip-check",
            "--password-file",
            password,
            "--project",
            "team-z",
        ],
        "--project \"team-z\": no such project",
    );
    let repos = admin
        .list_repositories(pb::ListRepositoriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .repositories;
    assert!(repos.iter().all(|r| r.url != other), "{repos:?}");

    ok(&flotilla(
        &hub,
        &[
            "repo",
            "add",
            &other,
            "--skip-check",
            "--password-file",
            password,
            "--project",
            "team-a",
        ],
    ));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&flotilla(&hub, &["repo", "get", &other, "-o", "json"]))).unwrap();
    assert_eq!(json["project"], "team-a", "{json}");
    assert_eq!(json["hasCredentials"], true, "{json}");
    let text = ok(&flotilla(&hub, &["repo", "get", &other]));
    assert!(text.contains("stored, project team-a only"), "{text}");
    hub.shutdown().await.unwrap();
}
