//! Application lifecycle against an in-process hub over real TLS, with a
//! test agent stream where the agent's view matters: deletion with cascade
//! and propagation (and which deletions are refused), the revision carried
//! in the index without a bundle, a sync that keeps the repository's poll
//! interval, dry runs that cannot preview another state, and `app get`'s
//! exit code.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, RepoSpec, RunningHub, start};
use flotilla_proto as pb;
use pb::agent_link_client::AgentLinkClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Streaming};

mod support;
use support::{Api, api, flotilla, git, write};

const DEADLINE: Duration = Duration::from_secs(30);

fn app_yaml(name: &str, url: &str, path: &str, automated: bool) -> String {
    let policy = if automated {
        "  syncPolicy:\n    automated:\n      prune: true\n"
    } else {
        ""
    };
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {url}\n    targetRevision: main\n    path: {path}\n  destination:\n    name: c1\n    namespace: default\n{policy}"
    )
}

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

/// A repository with `apps/declared.yaml` (an Application declared in Git)
/// and the manifest directories `web` and `declared`.
fn make_repo(dir: &Path) -> String {
    let url = format!("file://{}", dir.display());
    git(dir, &["init", "-q", "-b", "main"]);
    write(
        dir,
        "apps/declared.yaml",
        &app_yaml("declared", &url, "declared", true),
    );
    write(dir, "web/cm.yaml", &configmap("web", "1"));
    write(dir, "declared/cm.yaml", &configmap("declared", "1"));
    write(
        dir,
        "root/child.yaml",
        &app_yaml("child", &url, "web", true),
    );
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "init"]);
    url
}

async fn start_hub(data: &Path, url: &str, default_poll: Duration) -> RunningHub {
    let mut config = HubConfig::new(data, "127.0.0.1:0".parse().unwrap());
    config.poll_interval = default_poll;
    config.repos = vec![RepoSpec {
        url: url.to_owned(),
        apps_path: "apps".into(),
        revision: "main".into(),
        poll_interval: Some(Duration::from_secs(1)),
    }];
    start(config).await.expect("hub starts")
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(admin: &mut Api, name: &str) -> Result<pb::Application, tonic::Status> {
    admin
        .get_application(pb::GetApplicationRequest { name: name.into() })
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until the hub has rendered `name` at `revision`.
async fn rendered_at(admin: &Api, name: &str, revision: &str) -> pb::Application {
    eventually(&format!("{name} rendered at {revision}"), || {
        let mut admin = admin.clone();
        async move {
            get(&mut admin, name)
                .await
                .ok()
                .filter(|a| a.revision == revision)
        }
    })
    .await
}

async fn add_cluster(admin: &mut Api, name: &str) -> Identity {
    let added = admin
        .add_cluster(pb::AddClusterRequest {
            name: name.into(),
            issue_certificate: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    Identity::from_pem(&added.certificate_pem, &added.key_pem)
}

/// A test agent: a mutually authenticated `Connect` stream.
struct Agent {
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: Streaming<pb::HubMessage>,
}

impl Agent {
    async fn connect(hub: &RunningHub, identity: Identity) -> Self {
        let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost")
            .identity(identity);
        let ch = Channel::from_shared(hub.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let rx = AgentLinkClient::new(ch)
            .connect(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let agent = Self { tx, rx };
        agent
            .send(pb::agent_message::Kind::Hello(pb::Hello {
                agent_version: "test-agent/1".into(),
                ..Default::default()
            }))
            .await;
        agent
    }

    async fn send(&self, kind: pb::agent_message::Kind) {
        self.tx
            .send(pb::AgentMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    /// The next desired state; acknowledged when `ack`.
    async fn desired(&mut self, ack: bool) -> pb::DesiredState {
        let msg = tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("a message within the deadline")
            .expect("stream ok")
            .expect("stream open");
        let Some(pb::hub_message::Kind::Desired(d)) = msg.kind else {
            panic!("expected a desired state, got {msg:?}");
        };
        if ack {
            self.send(pb::agent_message::Kind::Ack(pb::Ack {
                generation: d.generation,
            }))
            .await;
        }
        d
    }

    /// Desired states until one satisfies `f`.
    async fn desired_until(
        &mut self,
        what: &str,
        f: impl Fn(&pb::DesiredState) -> bool,
    ) -> pb::DesiredState {
        let start = Instant::now();
        loop {
            let d = self.desired(true).await;
            if f(&d) {
                return d;
            }
            assert!(start.elapsed() < DEADLINE, "no desired state with {what}");
        }
    }
}

/// The generation the hub holds for `cluster`.
async fn cluster_generation(admin: &Api, cluster: &str) -> u64 {
    admin
        .clone()
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
        .clusters
        .iter()
        .find(|c| c.name == cluster)
        .map(|c| c.generation)
        .unwrap()
}

/// Waits until the hub has stored c1's acknowledgement of `generation`.
async fn wait_acked(admin: &Api, generation: u64) {
    eventually("the acknowledgement stored", || {
        let mut admin = admin.clone();
        async move {
            let clusters = admin
                .list_clusters(pb::ListClustersRequest {})
                .await
                .ok()?
                .into_inner()
                .clusters;
            clusters
                .iter()
                .any(|c| c.name == "c1" && c.acked_generation >= generation)
                .then_some(())
        }
    })
    .await;
}

fn entry<'a>(d: &'a pb::DesiredState, name: &str) -> Option<&'a pb::AppRef> {
    d.index.iter().find(|r| r.name == name)
}

fn delete_request(name: &str, cascade: Option<bool>, policy: &str) -> pb::DeleteApplicationRequest {
    pb::DeleteApplicationRequest {
        name: name.into(),
        cascade,
        propagation_policy: policy.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_and_revisions_reach_the_agent_through_the_index() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    let hub = start_hub(data.path(), &url, Duration::from_secs(1)).await;
    let mut admin = api(&hub).await;
    let identity = add_cluster(&mut admin, "c1").await;
    for (name, path) in [("web", "web"), ("kept", "web"), ("broken", "missing")] {
        admin
            .create_application(pb::CreateApplicationRequest {
                manifest: app_yaml(name, &url, path, true),
                upsert: false,
            })
            .await
            .unwrap();
    }
    rendered_at(&admin, "web", &first).await;
    let mut agent = Agent::connect(&hub, identity).await;
    let d = agent
        .desired_until("web and declared", |d| {
            entry(d, "web").is_some() && entry(d, "declared").is_some()
        })
        .await;
    let web = entry(&d, "web").unwrap().clone();
    assert_eq!(web.revision, first);

    // A commit that leaves every application's content alone: the hub's
    // revision moves to it, no cluster gets a new generation (nothing is
    // sent), no deployment is recorded.
    for name in ["kept", "broken"] {
        rendered_at(&admin, name, &first).await;
    }
    let generation = cluster_generation(&admin, "c1").await;
    write(repo.path(), "README.md", "unrelated\n");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "readme"]);
    let second = git(repo.path(), &["rev-parse", "HEAD"]);
    for name in ["declared", "kept", "broken"] {
        rendered_at(&admin, name, &second).await;
    }
    let a = rendered_at(&admin, "web", &second).await;
    assert!(a.clusters.iter().all(|c| c.desired_revision == second));
    assert_eq!(
        cluster_generation(&admin, "c1").await,
        generation,
        "a commit that changes no content sent a new generation"
    );
    let history = admin
        .get_application_history(pb::GetApplicationHistoryRequest { name: "web".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        history
            .entries
            .iter()
            .map(|e| &e.revision)
            .collect::<Vec<_>>(),
        [&first],
        "Argo CD records no deployment when the content did not change"
    );

    // Declared in Git: refused, naming where to change it.
    let err = admin
        .delete_application(delete_request("declared", Some(true), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!(
            "application declared is managed by repository {url} (apps/declared.yaml); remove it from Git"
        )
    );
    // A policy without cascade, or an unknown one: refused, nothing deleted.
    for (cascade, policy, want) in [
        (
            Some(false),
            "background",
            "cannot set propagation policy when cascading is disabled",
        ),
        (
            Some(true),
            "sideways",
            "invalid propagation policy \"sideways\"",
        ),
    ] {
        let err = admin
            .delete_application(delete_request("web", cascade, policy))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(want), "{}", err.message());
    }
    get(&mut admin, "web").await.unwrap();

    // Cascade with background propagation: the agent is told with the
    // index that no longer has the application, until it acknowledges.
    let r = admin
        .delete_application(delete_request("web", Some(true), "background"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.clusters, ["c1"]);
    assert!(r.not_connected.is_empty());
    assert_eq!(r.propagation_policy, "background");
    assert_eq!(
        get(&mut admin, "web").await.unwrap_err().code(),
        Code::NotFound
    );
    let d = agent
        .desired_until("web deleted", |d| entry(d, "web").is_none())
        .await;
    assert_eq!(
        d.deletions,
        [pb::AppDeletion {
            name: "web".into(),
            propagation_policy: "background".into()
        }]
    );
    // Once acknowledged (above), the next state no longer carries it.
    // Without cascade: orphan.
    wait_acked(&admin, d.generation).await;
    admin
        .delete_application(delete_request("kept", Some(false), ""))
        .await
        .unwrap();
    let d = agent
        .desired_until("kept deleted", |d| entry(d, "kept").is_none())
        .await;
    assert_eq!(
        d.deletions,
        [pb::AppDeletion {
            name: "kept".into(),
            propagation_policy: "orphan".into()
        }]
    );

    // Generated by an ApplicationSet: refused too.
    let set = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: gen\nspec:\n  generators:\n  - list:\n      elements:\n      - cluster: c1\n  template:\n    metadata:\n      name: 'gen-{{{{cluster}}}}'\n    spec:\n      source:\n        repoURL: {url}\n        targetRevision: main\n        path: web\n      destination:\n        name: '{{{{cluster}}}}'\n        namespace: gen\n"
    );
    admin
        .create_application_set(pb::CreateApplicationSetRequest {
            manifest: set,
            upsert: false,
        })
        .await
        .unwrap();
    eventually("gen-c1 generated", || {
        let mut admin = admin.clone();
        async move { get(&mut admin, "gen-c1").await.ok() }
    })
    .await;
    let err = admin
        .delete_application(delete_request("gen-c1", Some(true), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .starts_with("application gen-c1 is managed by ApplicationSet gen;"),
        "{}",
        err.message()
    );

    // An app of apps deleted with cascade takes the Applications it
    // declared with it (Argo CD deletes its Application resources).
    let parent = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: parent\nspec:\n  source:\n    repoURL: {url}\n    targetRevision: main\n    path: root\n  destination:\n    name: in-hub\n  syncPolicy:\n    automated:\n      prune: true\n"
    );
    admin
        .create_application(pb::CreateApplicationRequest {
            manifest: parent,
            upsert: false,
        })
        .await
        .unwrap();
    let child = eventually("child declared by parent", || {
        let mut admin = admin.clone();
        async move { get(&mut admin, "child").await.ok() }
    })
    .await;
    assert_eq!(child.origin, "app:parent");
    admin
        .delete_application(delete_request("parent", Some(true), ""))
        .await
        .unwrap();
    assert_eq!(
        get(&mut admin, "child").await.unwrap_err().code(),
        Code::NotFound
    );

    // `app get` exits 1 when the application shows an error (and still
    // prints it), 0 otherwise; `app delete` of a declared application
    // fails with the hub's reason.
    eventually("broken shows its render error", || {
        let mut admin = admin.clone();
        async move {
            get(&mut admin, "broken")
                .await
                .ok()
                .filter(|a| !a.error.is_empty())
        }
    })
    .await;
    let out = flotilla(&hub, &["app", "get", "broken"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Error"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: broken:"),
        "{out:?}"
    );
    let out = flotilla(&hub, &["app", "get", "broken", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], "broken");
    let out = flotilla(&hub, &["app", "get", "declared"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = flotilla(&hub, &["app", "delete", "declared", "-y"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("remove it from Git"),
        "{out:?}"
    );
    // Not a terminal: no prompt, as `argocd app delete`.
    let out = flotilla(
        &hub,
        &["app", "delete", "broken", "--cascade=false", "-o", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["propagationPolicy"], "orphan");
    assert_eq!(json["cascade"], false);
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_keeps_the_poll_interval_and_a_dry_run_previews_only_what_agents_hold() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    write(
        repo.path(),
        "apps/manual.yaml",
        &app_yaml("manual", &url, "web", false),
    );
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "manual"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    // The hub's default interval is far away; the repository's is 1 s.
    let hub = start_hub(data.path(), &url, Duration::from_secs(600)).await;
    let mut admin = api(&hub).await;
    add_cluster(&mut admin, "c1").await;
    rendered_at(&admin, "manual", &first).await;

    let r = admin
        .sync_application(pb::SyncApplicationRequest {
            name: "manual".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, first);
    // The next poll comes after the repository's 1 s, not the hub's 600 s.
    write(repo.path(), "web/cm.yaml", &configmap("web", "2"));
    git(repo.path(), &["commit", "-q", "-am", "two"]);
    let second = git(repo.path(), &["rev-parse", "HEAD"]);
    rendered_at(&admin, "manual", &second).await;

    // Pinned to the first commit: the API says so, and what Git is at.
    admin
        .sync_application(pb::SyncApplicationRequest {
            name: "manual".into(),
            revision: first.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let a = eventually("the pin and Git's commit shown", || {
        let mut admin = admin.clone();
        let second = second.clone();
        async move {
            get(&mut admin, "manual")
                .await
                .ok()
                .filter(|a| a.git_revision == second)
        }
    })
    .await;
    assert_eq!(a.pinned_revision, first);
    assert_eq!(a.pinned_by, "sync --revision");
    assert_eq!(a.revision, first);

    // A dry run checks what the agents hold: a --revision is refused even
    // when it names Git's current commit, and so is a pinned application's
    // dry run (a sync would move it back to Git).
    for revision in ["main", "HEAD", second.as_str()] {
        let err = admin
            .sync_application(pb::SyncApplicationRequest {
                name: "manual".into(),
                revision: revision.into(),
                dry_run: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{revision}: {err:?}");
        assert!(
            err.message()
                .contains("--dry-run with --revision is not supported"),
            "{}",
            err.message()
        );
    }
    let err = admin
        .sync_application(pb::SyncApplicationRequest {
            name: "manual".into(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("is pinned to"), "{}", err.message());
    let err = admin
        .rollback_application(pb::RollbackApplicationRequest {
            name: "manual".into(),
            id: 1,
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A sync without --revision unpins.
    admin
        .sync_application(pb::SyncApplicationRequest {
            name: "manual".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let a = get(&mut admin, "manual").await.unwrap();
    assert!(a.pinned_revision.is_empty() && a.git_revision.is_empty());
    assert_eq!(a.revision, second);
    hub.shutdown().await.unwrap();
}
