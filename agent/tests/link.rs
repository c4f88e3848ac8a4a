//! The link against a scripted hub over real mutual TLS: Hello carries what
//! the cache holds, desired states are merged, persisted and acknowledged,
//! an incomplete state makes the agent ask again with a fresh Hello, and
//! status reports flow.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_agent::cache::Cache;
use flotilla_agent::link::{Link, LinkConfig};
use flotilla_agent::report::Report;
use flotilla_proto::agent_link_server::{AgentLink, AgentLinkServer};
use flotilla_proto::{
    AgentMessage, AppBundle, AppRef, AppStatus, DesiredState, EnrollRequest, EnrollResponse,
    HubMessage, RenewRequest, agent_message, hub_message,
};
use futures::Stream;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// What the scripted hub saw: (connection number, message).
type Seen = mpsc::UnboundedSender<(usize, AgentMessage)>;

struct ScriptedHub {
    /// What to send on each connection, right after the Hello.
    script: Arc<Mutex<Vec<Vec<HubMessage>>>>,
    seen: Seen,
    connections: Arc<Mutex<usize>>,
}

type HubStream = Pin<Box<dyn Stream<Item = Result<HubMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentLink for ScriptedHub {
    async fn enroll(&self, _: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn renew(&self, _: Request<RenewRequest>) -> Result<Response<EnrollResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    type ConnectStream = HubStream;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<HubStream>, Status> {
        assert!(
            request.peer_certs().is_some_and(|c| !c.is_empty()),
            "no client certificate"
        );
        let n = {
            let mut c = self.connections.lock().expect("lock");
            *c += 1;
            *c
        };
        let messages = {
            let mut s = self.script.lock().expect("lock");
            if s.is_empty() {
                Vec::new()
            } else {
                s.remove(0)
            }
        };
        let mut inbound = request.into_inner();
        let seen = self.seen.clone();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            if let Ok(Some(hello)) = inbound.message().await {
                let _ = seen.send((n, hello));
            }
            for m in messages {
                let _ = tx.send(Ok(m)).await;
            }
            while let Ok(Some(m)) = inbound.message().await {
                let _ = seen.send((n, m));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test hub CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "sim-7");
    let client = client_params
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn bundle(name: &str, digest: &str) -> AppBundle {
    AppBundle {
        name: name.into(),
        digest: digest.into(),
        revision: format!("rev-{digest}"),
        manifests: vec![r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#.into()],
        ..AppBundle::default()
    }
}

fn desired(generation: u64, index: &[(&str, &str)], bundles: Vec<AppBundle>) -> HubMessage {
    HubMessage {
        kind: Some(hub_message::Kind::Desired(DesiredState {
            generation,
            index: index
                .iter()
                .map(|(n, d)| AppRef {
                    name: (*n).into(),
                    digest: (*d).into(),
                    ..Default::default()
                })
                .collect(),
            bundles,
            ..DesiredState::default()
        })),
    }
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(usize, AgentMessage)>,
) -> (usize, agent_message::Kind) {
    let (n, m) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a message from the agent in time")
        .expect("channel open");
    (n, m.kind.expect("kind"))
}

#[tokio::test]
async fn link_resumes_acknowledges_and_asks_again_when_incomplete() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.crt"), &pki.ca).expect("write");
    std::fs::write(dir.path().join("tls.crt"), &pki.client_cert).expect("write");
    std::fs::write(dir.path().join("tls.key"), &pki.client_key).expect("write");

    let script = vec![
        // Connection 1: a full state, then one that lacks a bundle.
        vec![
            desired(1, &[("a", "d1")], vec![bundle("a", "d1")]),
            desired(2, &[("a", "d2")], vec![]),
        ],
        // Connection 2: the agent said it has a@d1; it gets d2.
        vec![desired(2, &[("a", "d2")], vec![bundle("a", "d2")])],
    ];
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let hub = ScriptedHub {
        script: Arc::new(Mutex::new(script)),
        seen: seen_tx,
        connections: Arc::new(Mutex::new(0)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.server_cert, &pki.server_key))
        .client_ca_root(Certificate::from_pem(&pki.ca));
    let server = Server::builder()
        .tls_config(tls)
        .expect("tls")
        .add_service(AgentLinkServer::new(hub))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);

    let cache = Arc::new(Cache::open(dir.path()).expect("cache"));
    let trigger = Arc::new(Notify::new());
    let (reports_tx, reports_rx) = watch::channel(None);
    let link = Link::new(
        &LinkConfig {
            hub: format!("https://localhost:{}", addr.port()),
            state_dir: dir.path().to_owned(),
        },
        cache.clone(),
        trigger.clone(),
        reports_rx,
    )
    .expect("link");
    assert_eq!(link.cluster(), "sim-7");
    let agent = tokio::spawn(link.run());

    let (n, hello) = next(&mut seen).await;
    let agent_message::Kind::Hello(hello) = hello else {
        panic!("first message must be Hello, got {hello:?}")
    };
    assert_eq!((n, hello.generation, hello.apps.len()), (1, 0, 0));
    assert_eq!(hello.claimed_cluster, "sim-7");
    let (_, ack) = next(&mut seen).await;
    assert!(matches!(ack, agent_message::Kind::Ack(a) if a.generation == 1));
    assert_eq!(cache.snapshot().apps["a"].bundle.digest, "d1");
    assert_eq!(
        flotilla_agent::cache::load(&dir.path().join("desired-state.json"))
            .expect("load")
            .map(|s| s.generation),
        Some(1)
    );

    // Incomplete generation 2: no ack; a new stream says what the agent has.
    let (n, hello) = next(&mut seen).await;
    let agent_message::Kind::Hello(hello) = hello else {
        panic!("expected a fresh Hello, got {hello:?}")
    };
    assert_eq!(n, 2);
    assert_eq!(hello.generation, 1);
    assert_eq!(
        hello.apps,
        vec![AppRef {
            name: "a".into(),
            digest: "d1".into(),
            ..Default::default()
        }]
    );
    let (_, ack) = next(&mut seen).await;
    assert!(matches!(ack, agent_message::Kind::Ack(a) if a.generation == 2));
    assert_eq!(cache.snapshot().apps["a"].bundle.revision, "rev-d2");

    // Reports flow once the engine has something to say.
    reports_tx.send_replace(Some(Report {
        generation: 2,
        apps: vec![AppStatus {
            name: "a".into(),
            digest: "d2".into(),
            ..AppStatus::default()
        }],
    }));
    let (_, status) = next(&mut seen).await;
    let agent_message::Kind::Status(status) = status else {
        panic!("expected a status report, got {status:?}")
    };
    assert_eq!(status.generation, 2);
    assert_eq!(status.apps[0].digest, "d2");

    agent.abort();
    server.abort();
}
