//! Keys and tokens never appear in the logs, at any level: run enrollment,
//! a direct certificate issue and authenticated API calls with every target
//! at TRACE and search the captured output.

// Test helpers outside #[test] functions: a failed setup should panic.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_hub::server::{HubConfig, start};
use flotilla_proto as pb;
use pb::agent_link_client::AgentLinkClient;
use pb::hub_api_client::HubApiClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tokens_are_never_logged() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let data = tempfile::tempdir().unwrap();
    let mut config = HubConfig::new(data.path(), "127.0.0.1:0".parse().unwrap());
    config.poll_interval = Duration::from_secs(1);
    let hub = start(config).await.unwrap();
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let admin_token = std::fs::read_to_string(hub.admin_token_file())
        .unwrap()
        .trim()
        .to_owned();
    let channel = Channel::from_shared(hub.url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut api = HubApiClient::with_interceptor(channel.clone(), Auth(admin_token.clone()));
    let direct = api
        .add_cluster(pb::AddClusterRequest {
            name: "direct".into(),
            issue_certificate: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let boot = api
        .add_cluster(pb::AddClusterRequest {
            name: "boot".into(),
            create_bootstrap_token: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    AgentLinkClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: boot.bootstrap_token.clone(),
            csr_der: csr.der().to_vec(),
            agent_version: "t".into(),
        })
        .await
        .unwrap();
    api.list_clusters(pb::ListClustersRequest {}).await.unwrap();
    hub.shutdown().await.unwrap();

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.contains("agent enrolled"), "logs were not captured");
    let secret = boot.bootstrap_token.split('.').nth(1).unwrap().to_owned();
    let ca_key = std::fs::read_to_string(data.path().join("ca.key")).unwrap();
    let key_body = |pem: &str| {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
    };
    for (what, needle) in [
        ("admin token", admin_token),
        ("bootstrap token secret", secret),
        ("issued private key", key_body(&direct.key_pem)),
        ("CA private key", key_body(&ca_key)),
    ] {
        assert!(needle.len() >= 32, "{what} is too short to search for");
        assert!(!logs.contains(&needle), "{what} appears in the logs");
        // Also no long fragment of it (line-wrapped or truncated output).
        assert!(
            !logs.contains(&needle[..32]),
            "part of the {what} appears in the logs"
        );
    }
}
