//! The hub server in-process, exercised over real TLS with tonic clients:
//! agent stream authentication, only-changed bundles, the Git loop, user
//! API authentication, revocation and restart.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, RepoSpec, RunningHub, start};
use flotilla_proto as pb;
use pb::agent_link_client::AgentLinkClient;
use pb::hub_api_client::HubApiClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Streaming};

const DEADLINE: Duration = Duration::from_secs(30);

mod support;
use support::{git, write};

fn app_yaml(name: &str, url: &str, path: &str, cluster: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {url}\n    path: {path}\n    directory:\n      recurse: true\n  destination:\n    name: {cluster}\n    namespace: default\n  syncPolicy:\n    automated:\n      prune: true\n"
    )
}

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

/// A config repository: apps/ with two Applications for cluster c1, and
/// their manifest directories.
fn make_repo(dir: &Path) -> String {
    let url = format!("file://{}", dir.display());
    git(dir, &["init", "-q", "-b", "main"]);
    write(dir, "apps/web.yaml", &app_yaml("web", &url, "web", "c1"));
    write(dir, "apps/db.yaml", &app_yaml("db", &url, "db", "c1"));
    write(dir, "web/cm.yaml", &configmap("web", "1"));
    write(dir, "db/nested/cm.yaml", &configmap("db", "1"));
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "init"]);
    url
}

async fn start_hub(data: &Path, repo_url: &str) -> RunningHub {
    let mut config = HubConfig::new(data, "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    config.repos = vec![RepoSpec {
        url: repo_url.to_owned(),
        apps_path: "apps".into(),
        revision: "main".into(),
        poll_interval: Some(Duration::from_secs(1)),
    }];
    start(config).await.expect("hub starts")
}

async fn channel(
    hub: &RunningHub,
    identity: Option<Identity>,
    ca_pem: &str,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Channel::from_shared(hub.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

type Api = HubApiClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

#[derive(Clone)]
struct Auth(Option<String>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

async fn api(hub: &RunningHub, token: Option<String>) -> Api {
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    HubApiClient::with_interceptor(channel(hub, None, &ca).await.unwrap(), Auth(token))
}

fn admin_token(hub: &RunningHub) -> String {
    std::fs::read_to_string(hub.admin_token_file())
        .unwrap()
        .trim()
        .to_owned()
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

struct AgentConn {
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: Streaming<pb::HubMessage>,
}

async fn open_stream(ch: Channel) -> Result<AgentConn, tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    let mut client = AgentLinkClient::new(ch);
    let resp = client.connect(ReceiverStream::new(rx)).await?;
    Ok(AgentConn {
        tx,
        rx: resp.into_inner(),
    })
}

fn hello(apps: &[(&str, &str)]) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            agent_version: "test-agent/1".into(),
            generation: 0,
            apps: apps
                .iter()
                .map(|(n, d)| pb::AppRef {
                    name: (*n).into(),
                    digest: (*d).into(),
                    ..Default::default()
                })
                .collect(),
            claimed_cluster: "someone-else".into(),
            ..Default::default()
        })),
    }
}

async fn next_desired(conn: &mut AgentConn) -> pb::DesiredState {
    let msg = tokio::time::timeout(DEADLINE, conn.rx.message())
        .await
        .expect("a message within the deadline")
        .expect("stream ok")
        .expect("stream open");
    match msg.kind {
        Some(pb::hub_message::Kind::Desired(d)) => d,
        other => panic!("expected DesiredState, got {other:?}"),
    }
}

fn digests(d: &pb::DesiredState) -> HashMap<String, String> {
    d.index
        .iter()
        .map(|a| (a.name.clone(), a.digest.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_end_to_end_over_tls() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    let hub = start_hub(data.path(), &url).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();

    // User API: no token, a wrong token → Unauthenticated.
    let err = api(&hub, None)
        .await
        .version(pb::VersionRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = api(&hub, Some("00".repeat(32)))
        .await
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    admin.version(pb::VersionRequest {}).await.unwrap();

    // Applications from Git get rendered.
    let web = eventually("web rendered", || {
        let mut admin = admin.clone();
        async move {
            let a = admin
                .get_application(pb::GetApplicationRequest { name: "web".into() })
                .await
                .ok()?
                .into_inner();
            (!a.revision.is_empty()).then_some(a)
        }
    })
    .await;
    assert_eq!(web.origin, format!("git:{url}:apps/web.yaml"));

    let added = admin
        .add_cluster(pb::AddClusterRequest {
            name: "c1".into(),
            labels: [("env".to_owned(), "dev".to_owned())].into(),
            issue_certificate: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(added.key_pem.contains("PRIVATE KEY"));
    let identity = Identity::from_pem(&added.certificate_pem, &added.key_pem);

    // No client certificate: Unauthenticated, no desired state.
    let anon = channel(&hub, None, &ca).await.unwrap();
    match open_stream(anon).await {
        Err(s) => assert_eq!(s.code(), Code::Unauthenticated),
        Ok(mut c) => {
            let _ = c.tx.send(hello(&[])).await;
            let r = c.rx.message().await;
            assert!(
                matches!(r, Err(ref s) if s.code() == Code::Unauthenticated),
                "{r:?}"
            );
        }
    }

    // A certificate from another CA: the handshake or the call fails.
    let other_dir = tempfile::tempdir().unwrap();
    let other = flotilla_hub::pki::Pki::load_or_create(other_dir.path(), &[]).unwrap();
    let forged = other.issue_client("c1").unwrap();
    let forged_id = Identity::from_pem(&forged.cert_pem, &forged.key_pem);
    if let Ok(ch) = channel(&hub, Some(forged_id), &ca).await {
        match open_stream(ch).await {
            Err(_) => {}
            Ok(mut c) => {
                let _ = c.tx.send(hello(&[])).await;
                assert!(
                    !matches!(c.rx.message().await, Ok(Some(_))),
                    "forged cert got a message"
                );
            }
        }
    }

    // The valid certificate: full state first.
    let ch = channel(&hub, Some(identity.clone()), &ca).await.unwrap();
    let first = eventually("both apps in the index", || {
        let ch = ch.clone();
        async move {
            let mut c = open_stream(ch).await.ok()?;
            c.tx.send(hello(&[])).await.ok()?;
            let d = next_desired(&mut c).await;
            (d.index.len() == 2).then_some(d)
        }
    })
    .await;
    assert_eq!(first.bundles.len(), 2);
    let web_bundle = first.bundles.iter().find(|b| b.name == "web").unwrap();
    assert!(web_bundle.manifests[0].contains("\"ConfigMap\""));
    assert!(web_bundle.render_error.is_empty());
    let db_bundle = first.bundles.iter().find(|b| b.name == "db").unwrap();
    assert_eq!(
        db_bundle.manifests.len(),
        1,
        "directory.recurse is honoured"
    );
    let have = digests(&first);

    // An agent that already holds web at its digest gets no bundle for it.
    let mut conn = open_stream(ch.clone()).await.unwrap();
    conn.tx
        .send(hello(&[
            ("web", have["web"].as_str()),
            ("db", "sha256:stale"),
        ]))
        .await
        .unwrap();
    let d = next_desired(&mut conn).await;
    assert_eq!(d.generation, first.generation);
    let names: Vec<_> = d.bundles.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["db"]);

    // Ack and status are stored.
    conn.tx
        .send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Ack(pb::Ack {
                generation: d.generation,
            })),
        })
        .await
        .unwrap();
    conn.tx
        .send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Status(pb::StatusReport {
                generation: d.generation,
                apps: vec![pb::AppStatus {
                    name: "web".into(),
                    revision: web_bundle.revision.clone(),
                    digest: have["web"].clone(),
                    sync: pb::SyncStatus::Synced as i32,
                    health: pb::HealthStatus::Healthy as i32,
                    ..Default::default()
                }],
            })),
        })
        .await
        .unwrap();
    eventually("status and ack stored", || {
        let mut admin = admin.clone();
        let generation = d.generation;
        async move {
            let a = admin
                .get_application(pb::GetApplicationRequest { name: "web".into() })
                .await
                .ok()?
                .into_inner();
            let st = a.clusters.first()?.status.clone()?;
            let c = admin
                .list_clusters(pb::ListClustersRequest {})
                .await
                .ok()?
                .into_inner()
                .clusters
                .remove(0);
            (st.sync == pb::SyncStatus::Synced as i32
                && c.acked_generation == generation
                && c.connected
                && c.agent_version == "test-agent/1")
                .then_some(())
        }
    })
    .await;

    // A commit that changes web only: a new generation with only web's
    // bundle. Malformed YAML in db's directory: db keeps its last good
    // bundle (nothing about it is sent; the agent goes on enforcing it) and
    // the hub shows the error, with file and line, on the application.
    let db_before = admin
        .get_application(pb::GetApplicationRequest { name: "db".into() })
        .await
        .unwrap()
        .into_inner();
    write(repo.path(), "web/cm.yaml", &configmap("web", "2"));
    // A manifest that does not parse (YAML that does not look like a
    // manifest is ignored, as Argo CD ignores it).
    write(
        repo.path(),
        "db/nested/bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: [1,\nb: 2\n",
    );
    git(repo.path(), &["commit", "-q", "-am", "change web"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "break db"]);
    admin.refresh(pb::RefreshRequest::default()).await.unwrap();
    let mut got_web = false;
    let start = Instant::now();
    while !got_web {
        assert!(start.elapsed() < DEADLINE, "no update pushed");
        let d = next_desired(&mut conn).await;
        assert!(d.generation > first.generation);
        for b in &d.bundles {
            match b.name.as_str() {
                "web" => {
                    assert!(b.manifests[0].contains("\"2\""), "{:?}", b.manifests);
                    got_web = true;
                }
                other => panic!("unexpected bundle {other}: {:?}", b.render_error),
            }
        }
    }
    let db = eventually("db shows its render error", || {
        let mut admin = admin.clone();
        async move {
            let db = admin
                .get_application(pb::GetApplicationRequest { name: "db".into() })
                .await
                .ok()?
                .into_inner();
            db.error.contains("bad.yaml").then_some(db)
        }
    })
    .await;
    assert!(
        db.error.contains("db/nested/bad.yaml") && db.error.contains("line"),
        "{}",
        db.error
    );
    assert_eq!(
        db.revision, db_before.revision,
        "db keeps its last good bundle"
    );

    // Removing the cluster closes its stream and refuses the certificate.
    admin
        .remove_cluster(pb::RemoveClusterRequest {
            name: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match conn.rx.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("stream closed");
    assert!(
        matches!(end, Err(ref s) if s.code() == Code::Unauthenticated),
        "{end:?}"
    );
    match open_stream(ch.clone()).await {
        Err(s) => assert_eq!(s.code(), Code::Unauthenticated),
        Ok(mut c) => {
            let _ = c.tx.send(hello(&[])).await;
            assert!(c.rx.message().await.is_err());
        }
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_resends_nothing() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    let hub = start_hub(data.path(), &url).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let added = admin
        .add_cluster(pb::AddClusterRequest {
            name: "c1".into(),
            labels: Default::default(),
            issue_certificate: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let identity = Identity::from_pem(&added.certificate_pem, &added.key_pem);
    let ch = channel(&hub, Some(identity.clone()), &ca).await.unwrap();
    let first = eventually("both apps rendered", || {
        let ch = ch.clone();
        async move {
            let mut c = open_stream(ch).await.ok()?;
            c.tx.send(hello(&[])).await.ok()?;
            let d = next_desired(&mut c).await;
            (d.bundles.len() == 2).then_some(d)
        }
    })
    .await;
    let have = digests(&first);
    hub.shutdown().await.unwrap();

    let hub = start_hub(data.path(), &url).await;
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let clusters = admin
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
        .clusters;
    assert_eq!(clusters.len(), 1);
    assert_eq!(
        admin
            .list_applications(pb::ListApplicationsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .applications
            .len(),
        2
    );
    // Same certificate, same CA; the agent says what it has: nothing is
    // re-sent and the generation did not move.
    let ch = channel(&hub, Some(identity), &ca).await.unwrap();
    let mut conn = open_stream(ch).await.unwrap();
    let refs: Vec<(&str, &str)> = have.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    conn.tx.send(hello(&refs)).await.unwrap();
    let d = next_desired(&mut conn).await;
    assert_eq!(d.generation, first.generation);
    assert!(d.bundles.is_empty());
    assert_eq!(digests(&d), have);
    hub.shutdown().await.unwrap();
}

async fn add_cluster(admin: &mut Api, name: &str) -> Identity {
    let added = admin
        .add_cluster(pb::AddClusterRequest {
            name: name.into(),
            labels: Default::default(),
            issue_certificate: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    Identity::from_pem(&added.certificate_pem, &added.key_pem)
}

/// The peer gets no DesiredState: the call, or the stream, fails with
/// Unauthenticated.
async fn assert_refused(ch: Channel) {
    match open_stream(ch).await {
        Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        Ok(mut c) => {
            let _ = c.tx.send(hello(&[])).await;
            let r = c.rx.message().await;
            assert!(
                matches!(r, Err(ref s) if s.code() == Code::Unauthenticated),
                "{r:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_client_certificate_gets_nothing() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(data.path(), &make_repo(repo.path())).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    add_cluster(&mut admin, "c1").await;
    assert_refused(channel(&hub, None, &ca).await.unwrap()).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_gets_nothing() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(data.path(), &make_repo(repo.path())).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    add_cluster(&mut admin, "c1").await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = flotilla_hub::pki::Pki::load_or_create(other_dir.path(), &[]).unwrap();
    let forged = other.issue_client("c1").unwrap();
    let id = Identity::from_pem(&forged.cert_pem, &forged.key_pem);
    // The handshake fails (TLS 1.3 may report it only on the first call).
    if let Ok(ch) = channel(&hub, Some(id), &ca).await {
        match open_stream(ch).await {
            Err(s) => assert_ne!(s.code(), Code::Ok),
            Ok(mut c) => {
                let _ = c.tx.send(hello(&[])).await;
                assert!(
                    !matches!(c.rx.message().await, Ok(Some(_))),
                    "a forged certificate got a message"
                );
            }
        }
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_of_a_removed_cluster_is_refused_even_after_re_adding() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(data.path(), &make_repo(repo.path())).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let old = add_cluster(&mut admin, "c1").await;
    admin
        .remove_cluster(pb::RemoveClusterRequest {
            name: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_refused(channel(&hub, Some(old.clone()), &ca).await.unwrap()).await;
    // Same name again: only the new certificate works.
    let new = add_cluster(&mut admin, "c1").await;
    assert_refused(channel(&hub, Some(old), &ca).await.unwrap()).await;
    let mut c = open_stream(channel(&hub, Some(new), &ca).await.unwrap())
        .await
        .unwrap();
    c.tx.send(hello(&[])).await.unwrap();
    next_desired(&mut c).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_api_requires_a_valid_token() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(data.path(), &make_repo(repo.path())).await;
    for token in [None, Some(String::new()), Some("ab".repeat(32))] {
        let err = api(&hub, token)
            .await
            .list_applications(pb::ListApplicationsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(hub.admin_token_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    api(&hub, Some(admin_token(&hub)))
        .await
        .list_applications(pb::ListApplicationsRequest::default())
        .await
        .unwrap();
    hub.shutdown().await.unwrap();
}

async fn app_names(admin: &mut Api) -> Vec<String> {
    let mut names: Vec<_> = admin
        .list_applications(pb::ListApplicationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .applications
        .into_iter()
        .map(|a| a.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_loop_keeps_apps_of_a_broken_file_and_drops_deleted_ones() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    let hub = start_hub(data.path(), &url).await;
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    eventually("both apps loaded", || {
        let mut admin = admin.clone();
        async move { (app_names(&mut admin).await == ["db", "web"]).then_some(()) }
    })
    .await;

    // web.yaml deleted, db.yaml broken: web goes, db stays, the repository
    // names the broken file.
    std::fs::remove_file(repo.path().join("apps/web.yaml")).unwrap();
    write(repo.path(), "apps/db.yaml", "kind: [\n");
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "break"]);
    admin.refresh(pb::RefreshRequest::default()).await.unwrap();
    let repo_rec = eventually("repository error recorded", || {
        let mut admin = admin.clone();
        async move {
            let r = admin
                .list_repositories(pb::ListRepositoriesRequest {})
                .await
                .ok()?
                .into_inner()
                .repositories
                .remove(0);
            (!r.last_error.is_empty()).then_some(r)
        }
    })
    .await;
    assert!(
        repo_rec.last_error.contains("apps/db.yaml"),
        "{}",
        repo_rec.last_error
    );
    assert_eq!(app_names(&mut admin).await, ["db"]);

    // Fixed again: the error clears.
    write(
        repo.path(),
        "apps/db.yaml",
        &app_yaml("db", &url, "db", "c1"),
    );
    git(repo.path(), &["commit", "-q", "-am", "fix"]);
    admin.refresh(pb::RefreshRequest::default()).await.unwrap();
    eventually("repository error cleared", || {
        let mut admin = admin.clone();
        async move {
            let r = admin
                .list_repositories(pb::ListRepositoriesRequest {})
                .await
                .ok()?
                .into_inner()
                .repositories
                .remove(0);
            r.last_error.is_empty().then_some(())
        }
    })
    .await;
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_created_through_the_api_is_rendered_and_deletable() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    // No repository registered: the application's source is fetched anyway.
    let mut config = HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    let hub = start(config).await.unwrap();
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let manifest = app_yaml("api-web", &url, "web", "c1");
    let created = admin
        .create_application(pb::CreateApplicationRequest {
            manifest: manifest.clone(),
            upsert: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.origin, "api");
    let err = admin
        .create_application(pb::CreateApplicationRequest {
            manifest: manifest.clone(),
            upsert: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    admin
        .create_application(pb::CreateApplicationRequest {
            manifest,
            upsert: true,
        })
        .await
        .unwrap();
    let err = admin
        .create_application(pb::CreateApplicationRequest {
            manifest: "kind: Application\n".into(),
            upsert: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    eventually("api app rendered", || {
        let mut admin = admin.clone();
        async move {
            let a = admin
                .get_application(pb::GetApplicationRequest {
                    name: "api-web".into(),
                })
                .await
                .ok()?
                .into_inner();
            (!a.revision.is_empty() && a.error.is_empty()).then_some(())
        }
    })
    .await;
    admin
        .delete_application(pb::DeleteApplicationRequest {
            name: "api-web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = admin
        .get_application(pb::GetApplicationRequest {
            name: "api-web".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    hub.shutdown().await.unwrap();
}

fn csr() -> (Vec<u8>, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    (csr.der().to_vec(), key.serialize_pem())
}

async fn enroll(
    hub: &RunningHub,
    token: &str,
) -> Result<(pb::EnrollResponse, String), tonic::Status> {
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut client = AgentLinkClient::new(channel(hub, None, &ca).await.unwrap());
    let (csr_der, key_pem) = csr();
    let resp = client
        .enroll(pb::EnrollRequest {
            token: token.to_owned(),
            csr_der,
            agent_version: "test-agent/1".into(),
        })
        .await?
        .into_inner();
    Ok((resp, key_pem))
}

async fn add_with_token(admin: &mut Api, name: &str) -> pb::AddClusterResponse {
    admin
        .add_cluster(pb::AddClusterRequest {
            name: name.into(),
            create_bootstrap_token: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_with_a_bootstrap_token_then_connect() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(data.path(), &make_repo(repo.path())).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let added = add_with_token(&mut admin, "c1").await;
    assert!(added.certificate_pem.is_empty() && added.key_pem.is_empty());
    // The token carries the CA pin.
    let pin = flotilla_hub::pki::ca_pin_of(&ca).unwrap();
    assert!(
        added.bootstrap_token.ends_with(&pin),
        "{}",
        added.bootstrap_token
    );
    assert_eq!(added.ca_pin, pin);

    // No certificate yet: the stream is refused.
    assert_refused(channel(&hub, None, &ca).await.unwrap()).await;

    let (resp, key_pem) = enroll(&hub, &added.bootstrap_token).await.unwrap();
    assert_eq!(resp.cluster_name, "c1");
    assert_eq!(resp.ca_pem, ca);
    let id = Identity::from_pem(&resp.certificate_pem, &key_pem);
    let mut c = open_stream(channel(&hub, Some(id), &ca).await.unwrap())
        .await
        .unwrap();
    c.tx.send(hello(&[])).await.unwrap();
    next_desired(&mut c).await;

    // Single use.
    let err = enroll(&hub, &added.bootstrap_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_refuses_bad_tokens() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());

    // An expired token for an existing cluster, planted before start.
    let (expired, hash) = flotilla_hub::pki::new_bootstrap_token("00");
    {
        let store = flotilla_hub::store::Store::open(&data.path().join("db")).unwrap();
        store
            .put_cluster(&flotilla_hub::store::ClusterRecord {
                name: "old".into(),
                ..Default::default()
            })
            .unwrap();
        store
            .put_bootstrap(
                &hash,
                &flotilla_hub::store::BootstrapRecord {
                    cluster: "old".into(),
                    expires_ms: 1,
                },
            )
            .unwrap();
        store.flush().unwrap();
    }
    let hub = start_hub(data.path(), &url).await;
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let err = enroll(&hub, &expired).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "expired");

    // Garbage and unknown tokens.
    for token in [
        "",
        "flt1",
        "flt1.abc.def",
        &format!("flt1.{}.00", "0".repeat(64)),
    ] {
        let err = enroll(&hub, token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
    }

    // A token of a cluster that was removed.
    let added = add_with_token(&mut admin, "gone").await;
    admin
        .remove_cluster(pb::RemoveClusterRequest {
            name: "gone".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = enroll(&hub, &added.bootstrap_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "removed cluster");

    // A bad CSR does not spend the token.
    let added = add_with_token(&mut admin, "c2").await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut client = AgentLinkClient::new(channel(&hub, None, &ca).await.unwrap());
    let err = client
        .enroll(pb::EnrollRequest {
            token: added.bootstrap_token.clone(),
            csr_der: b"garbage".to_vec(),
            agent_version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let (resp, _) = enroll(&hub, &added.bootstrap_token).await.unwrap();
    assert_eq!(resp.cluster_name, "c2");
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_replaces_the_certificate_on_first_use() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(data.path(), &make_repo(repo.path())).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let old = add_cluster(&mut admin, "c1").await;

    // Renew needs a valid client certificate.
    let (csr_der, key_pem) = csr();
    let mut anon = AgentLinkClient::new(channel(&hub, None, &ca).await.unwrap());
    let err = anon
        .renew(pb::RenewRequest {
            csr_der: csr_der.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut client = AgentLinkClient::new(channel(&hub, Some(old.clone()), &ca).await.unwrap());
    let resp = client
        .renew(pb::RenewRequest { csr_der })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.cluster_name, "c1");
    let new = Identity::from_pem(&resp.certificate_pem, &key_pem);

    // Until the new one is used, the old one still works.
    let mut c = open_stream(channel(&hub, Some(old.clone()), &ca).await.unwrap())
        .await
        .unwrap();
    c.tx.send(hello(&[])).await.unwrap();
    next_desired(&mut c).await;
    // First use of the new certificate revokes the old one.
    let mut c = open_stream(channel(&hub, Some(new.clone()), &ca).await.unwrap())
        .await
        .unwrap();
    c.tx.send(hello(&[])).await.unwrap();
    next_desired(&mut c).await;
    assert_refused(channel(&hub, Some(old), &ca).await.unwrap()).await;
    let mut c = open_stream(channel(&hub, Some(new), &ca).await.unwrap())
        .await
        .unwrap();
    c.tx.send(hello(&[])).await.unwrap();
    next_desired(&mut c).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_picked_up_by_polling_alone() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    let hub = start_hub(data.path(), &url).await;
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let get_web = |mut admin: Api| async move {
        admin
            .get_application(pb::GetApplicationRequest { name: "web".into() })
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    let first = eventually("web rendered", || {
        let admin = admin.clone();
        async move { get_web(admin).await.filter(|a| !a.revision.is_empty()) }
    })
    .await;
    write(repo.path(), "web/cm.yaml", &configmap("web", "polled"));
    git(repo.path(), &["commit", "-q", "-am", "no refresh"]);
    eventually("new revision without Refresh", || {
        let admin = admin.clone();
        let old = first.revision.clone();
        async move { get_web(admin).await.filter(|a| a.revision != old) }
    })
    .await;
    admin.version(pb::VersionRequest {}).await.unwrap();
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_agent_stream_is_closed_and_the_hub_keeps_serving() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    let mut config = HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap());
    config.repos = vec![RepoSpec {
        url,
        apps_path: "apps".into(),
        revision: "main".into(),
        poll_interval: Some(Duration::from_secs(1)),
    }];
    config.stream_idle_timeout = Duration::from_secs(1);
    let hub = start(config).await.expect("hub starts");
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let id = add_cluster(&mut admin, "c1").await;
    let mut c = open_stream(channel(&hub, Some(id.clone()), &ca).await.unwrap())
        .await
        .unwrap();
    c.tx.send(hello(&[])).await.unwrap();
    next_desired(&mut c).await;
    let after_hello = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // The peer keeps the connection open but says nothing more.
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match c.rx.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the idle stream is closed within the deadline");
    assert!(
        matches!(ended, Err(ref s) if s.code() == Code::DeadlineExceeded),
        "{ended:?}"
    );
    // The close records when the agent was last seen (messages write it
    // only now and then): at the close, after the Hello.
    let c1 = eventually("c1 shown disconnected", || {
        let mut admin = admin.clone();
        async move {
            let c = admin
                .list_clusters(pb::ListClustersRequest {})
                .await
                .ok()?
                .into_inner()
                .clusters
                .remove(0);
            (!c.connected).then_some(c)
        }
    })
    .await;
    assert!(
        c1.last_seen_ms >= after_hello,
        "last seen {} is the close, not the Hello (before {after_hello})",
        c1.last_seen_ms
    );
    // Nothing else is disturbed: the same cluster connects again.
    let mut again = open_stream(channel(&hub, Some(id), &ca).await.unwrap())
        .await
        .unwrap();
    again.tx.send(hello(&[])).await.unwrap();
    next_desired(&mut again).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_certificate_gets_nothing() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(data.path(), &make_repo(repo.path())).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut admin = api(&hub, Some(admin_token(&hub))).await;
    let added = admin
        .add_cluster(pb::AddClusterRequest {
            name: "c1".into(),
            issue_certificate: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The very certificate the hub issued (same serial, name and key),
    // re-signed by the hub CA with a validity that has already ended: only
    // the expiry check stands between it and the cluster's desired state.
    let issued_der = rustls_pemfile_der(&added.certificate_pem);
    let (_, issued) = x509_parser::parse_x509_certificate(&issued_der).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(issued.raw_serial()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "c1");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://flotilla/cluster/c1".try_into().unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(2);
    params.not_after = now - time::Duration::days(1);
    let key = rcgen::KeyPair::from_pem(&added.key_pem).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(data.path().join("ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca, ca_key).unwrap();
    let expired = params.signed_by(&key, &issuer).unwrap();
    let id = Identity::from_pem(expired.pem(), &added.key_pem);
    if let Ok(ch) = channel(&hub, Some(id), &ca).await {
        match open_stream(ch).await {
            Err(s) => assert_ne!(s.code(), Code::Ok),
            Ok(mut c) => {
                let _ = c.tx.send(hello(&[])).await;
                assert!(
                    !matches!(c.rx.message().await, Ok(Some(_))),
                    "an expired certificate got desired state"
                );
            }
        }
    }
    // The valid certificate still works.
    let valid = Identity::from_pem(&added.certificate_pem, &added.key_pem);
    let mut c = open_stream(channel(&hub, Some(valid), &ca).await.unwrap())
        .await
        .unwrap();
    c.tx.send(hello(&[])).await.unwrap();
    next_desired(&mut c).await;
    hub.shutdown().await.unwrap();
}

fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    rustls_pemfile::certs(&mut reader)
        .next()
        .expect("one certificate")
        .expect("valid PEM")
        .to_vec()
}
