//! Bounded messages from the hub, in-process over real TLS: the desired
//! state of a cluster with a 6 MB application goes to an agent that
//! announces chunks in parts and chunks below its limit, and nothing large
//! goes again to an agent that holds it; an agent that announces nothing
//! (older ones) gets one message under 4 MiB without that bundle and the
//! application says why; `ListApplications` pages by count and by bytes.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_hub::server::{HubConfig, RepoSpec, RunningHub, start};
use flotilla_proto as pb;
use pb::agent_link_client::AgentLinkClient;
use pb::hub_api_client::HubApiClient;
use pb::wire;
use prost::Message as _;
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const DEADLINE: Duration = Duration::from_secs(60);

mod support;
use support::{git, write};

fn app_yaml(name: &str, url: &str, path: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {url}\n    path: {path}\n  destination:\n    name: c1\n    namespace: default\n  syncPolicy:\n    automated:\n      prune: true\n"
    )
}

fn filler(seed: &str, len: usize) -> String {
    let mut out = String::new();
    let mut block = sha2::Sha256::digest(seed.as_bytes());
    while out.len() < len {
        out.push_str(&hex::encode(block));
        block = sha2::Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// apps/web (one small ConfigMap) and apps/big (12 ConfigMaps of 500 kB).
fn make_repo(dir: &Path) -> String {
    let url = format!("file://{}", dir.display());
    git(dir, &["init", "-q", "-b", "main"]);
    write(dir, "apps/web.yaml", &app_yaml("web", &url, "web"));
    write(dir, "apps/big.yaml", &app_yaml("big", &url, "big"));
    write(
        dir,
        "web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  a: b\n",
    );
    for i in 0..12 {
        write(
            dir,
            &format!("big/cm-{i:02}.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big-{i:02}\ndata:\n  payload: {}\n",
                filler(&format!("big-{i}"), 500_000)
            ),
        );
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "init"]);
    url
}

async fn start_hub(
    data: &Path,
    repo_url: Option<&str>,
    wire: flotilla_hub::api::WireLimits,
) -> RunningHub {
    let mut config = HubConfig::new(data, "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    config.wire = wire;
    config.repos = repo_url
        .map(|url| RepoSpec {
            url: url.to_owned(),
            apps_path: "apps".into(),
            revision: "main".into(),
            poll_interval: Some(Duration::from_secs(1)),
        })
        .into_iter()
        .collect();
    start(config).await.expect("hub starts")
}

async fn channel(hub: &RunningHub, identity: Option<Identity>) -> Channel {
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
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
        .unwrap()
}

#[derive(Clone)]
struct Auth(String);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.0).parse().unwrap(),
        );
        Ok(req)
    }
}

type Api = HubApiClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

async fn api(hub: &RunningHub) -> Api {
    let token = std::fs::read_to_string(hub.admin_token_file()).unwrap();
    HubApiClient::with_interceptor(channel(hub, None).await, Auth(token.trim().to_owned()))
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens a stream as cluster `c1` with `hello`; returns the sender (keep
/// it alive) and the hub's messages.
async fn connect(
    hub: &RunningHub,
    identity: &Identity,
    hello: pb::Hello,
    decode_limit: usize,
) -> (
    mpsc::Sender<pb::AgentMessage>,
    tonic::Streaming<pb::HubMessage>,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(hello)),
    })
    .await
    .unwrap();
    let inbound = AgentLinkClient::new(channel(hub, Some(identity.clone())).await)
        .max_decoding_message_size(decode_limit)
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

/// Reads messages until a complete desired state; returns them.
async fn read_state(inbound: &mut tonic::Streaming<pb::HubMessage>) -> Vec<pb::HubMessage> {
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(DEADLINE, inbound.message())
            .await
            .expect("a message in time")
            .expect("the stream works")
            .expect("the stream stays open");
        let last = matches!(&m.kind, Some(pb::hub_message::Kind::Desired(d)) if !d.more);
        out.push(m);
        if last {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bundles_go_in_chunks_and_older_agents_get_a_reason() {
    let repo = tempfile::tempdir().unwrap();
    let url = make_repo(repo.path());
    let data = tempfile::tempdir().unwrap();
    let hub = start_hub(data.path(), Some(&url), Default::default()).await;
    let mut api = api(&hub).await;
    let added = api
        .add_cluster(pb::AddClusterRequest {
            name: "c1".into(),
            issue_certificate: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let identity = Identity::from_pem(&added.certificate_pem, &added.key_pem);
    // Both applications rendered into c1's index.
    let limit = wire::MIB;
    let hello = pb::Hello {
        agent_version: "test".into(),
        chunked_bundles: true,
        max_message_size: limit as u64,
        ..Default::default()
    };
    let messages = eventually("both applications in c1's desired state", || {
        let hello = hello.clone();
        let identity = identity.clone();
        let hub = &hub;
        async move {
            let (tx, mut inbound) = connect(hub, &identity, hello, limit).await;
            let messages = read_state(&mut inbound).await;
            drop(tx);
            let names: Vec<String> = messages
                .iter()
                .filter_map(|m| match &m.kind {
                    Some(pb::hub_message::Kind::Desired(d)) => {
                        Some(d.index.iter().map(|r| r.name.clone()))
                    }
                    _ => None,
                })
                .flatten()
                .collect();
            if names.contains(&"big".to_owned()) && names.contains(&"web".to_owned()) {
                Ok(messages)
            } else {
                Err(format!("index {names:?}"))
            }
        }
    })
    .await;

    // The agent announced chunks and decodes at most 1 MiB.
    let chunks = messages
        .iter()
        .filter(|m| matches!(m.kind, Some(pb::hub_message::Kind::Chunk(_))))
        .count();
    assert!(chunks >= 6, "{chunks} chunks for a 6 MB bundle");
    assert!(
        messages.iter().all(|m| m.encoded_len() <= limit),
        "a message over the agent's limit: {:?}",
        messages.iter().map(pb::HubMessage::encoded_len).max()
    );
    let mut asm = wire::Assembler::default();
    let mut whole = None;
    for m in messages {
        match m.kind.unwrap() {
            pb::hub_message::Kind::Chunk(c) => asm.chunk(c).unwrap(),
            pb::hub_message::Kind::Desired(d) => whole = asm.part(d),
            pb::hub_message::Kind::Command(_) | pb::hub_message::Kind::Removed(_) => {}
        }
    }
    let assembled = asm.assemble(whole.unwrap(), &|_, _| None).unwrap();
    let big = assembled
        .desired
        .bundles
        .iter()
        .find(|b| b.name == "big")
        .unwrap()
        .clone();
    assert_eq!(big.manifests.len(), 12);
    assert_eq!(wire::bundle_digest(&big), big.digest);
    let web = assembled
        .desired
        .bundles
        .iter()
        .find(|b| b.name == "web")
        .unwrap()
        .digest
        .clone();
    asm.committed(assembled.receipt);

    // Reconnecting with what it holds: no chunk, small parts.
    let (bundle_chunks, staged_chunks) =
        asm.hello(&|app| (app == "big").then(|| big.digest.clone()));
    let hello = pb::Hello {
        chunked_bundles: true,
        max_message_size: limit as u64,
        apps: vec![
            pb::AppRef {
                name: "big".into(),
                digest: big.digest.clone(),
                ..Default::default()
            },
            pb::AppRef {
                name: "web".into(),
                digest: web,
                ..Default::default()
            },
        ],
        bundle_chunks,
        staged_chunks,
        ..Default::default()
    };
    let (tx, mut inbound) = connect(&hub, &identity, hello, limit).await;
    let again = read_state(&mut inbound).await;
    drop(tx);
    assert_eq!(again.len(), 1, "{again:?}");
    let Some(pb::hub_message::Kind::Desired(d)) = &again[0].kind else {
        panic!("{again:?}");
    };
    assert!(
        d.bundles.is_empty() && d.chunked_bundles.is_empty(),
        "{d:?}"
    );

    // An older agent: one message it can decode, without the big bundle.
    let (tx, mut inbound) = connect(&hub, &identity, pb::Hello::default(), 4 * wire::MIB).await;
    let old = read_state(&mut inbound).await;
    assert_eq!(old.len(), 1);
    let Some(pb::hub_message::Kind::Desired(d)) = &old[0].kind else {
        panic!("{old:?}");
    };
    assert_eq!(
        d.bundles
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>(),
        ["web"]
    );
    assert!(!d.index.iter().any(|r| r.name == "big"));
    let big_app = api
        .get_application(pb::GetApplicationRequest { name: "big".into() })
        .await
        .unwrap()
        .into_inner();
    let st = big_app.clusters[0].status.clone().unwrap();
    assert_eq!(st.sync, pb::SyncStatus::Unknown as i32);
    assert!(
        st.message
            .contains("agent too old to receive chunked bundles"),
        "{}",
        st.message
    );
    assert!(st.conditions.iter().any(|c| c.r#type == "SyncError"));
    // The stream stays up, with nothing more to send: no reconnect loop.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inbound.message())
            .await
            .is_err(),
        "the old agent's stream ended or got more"
    );
    drop(tx);
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_lists_page_by_count_and_by_bytes() {
    let data = tempfile::tempdir().unwrap();
    // A small limit, so a few hundred applications do not fit in one.
    let limits = flotilla_hub::api::WireLimits {
        max_message_size: 128 * 1024,
        chunk_size: 32 * 1024,
    };
    let hub = start_hub(data.path(), None, limits).await;
    let mut api = api(&hub).await;
    for i in 0..400 {
        api.create_application(pb::CreateApplicationRequest {
            manifest: app_yaml(&format!("app-{i:03}"), "file:///nowhere", "x"),
            upsert: false,
        })
        .await
        .unwrap();
    }
    // An unpaged list does not fit: a clear error, not a cut list.
    let err = api
        .list_applications(pb::ListApplicationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("400 applications"),
        "{}",
        err.message()
    );
    // By count.
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = api
            .list_applications(pb::ListApplicationsRequest {
                page_size: 70,
                page_token: token,
                max_response_size: 0,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.applications.len() <= 70);
        names.extend(page.applications.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 6);
    let expected: Vec<String> = (0..400).map(|i| format!("app-{i:03}")).collect();
    assert_eq!(names, expected);
    // By bytes: the pages are cut to the client's limit.
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    let small = 24 * 1024;
    let mut api_small = api.clone().max_decoding_message_size(small);
    loop {
        let page = api_small
            .list_applications(pb::ListApplicationsRequest {
                page_size: 500,
                page_token: token,
                max_response_size: small as u64,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        names.extend(page.applications.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages > 5, "{pages} pages");
    assert_eq!(names, expected);
    hub.shutdown().await.unwrap();
}
