//! Helpers shared by the hub's integration tests: building real Git
//! repositories with the `git` CLI.

// Each test crate uses a different subset.
#![allow(dead_code)]

pub mod helm;

use std::path::Path;
use std::process::Command;

/// Runs `git` in `dir` with a fixed identity and no signing; panics with
/// git's stderr on failure. Returns trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Flotilla Test",
            "-c",
            "user.email=test@flotilla.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Writes `content` to `rel` under `dir`, creating parent directories.
pub fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

/// A `HubApi` client that sends the hub's admin token.
pub type Api = flotilla_proto::hub_api_client::HubApiClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(pub String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| tonic::Status::internal("token is not a header value"))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// Connects to an in-process hub with its CA and admin token.
pub async fn api(hub: &flotilla_hub::server::RunningHub) -> Api {
    let token = std::fs::read_to_string(hub.admin_token_file()).expect("admin token");
    api_as(hub, token.trim()).await
}

/// Connects to an in-process hub with its CA, sending `token`.
pub async fn api_as(hub: &flotilla_hub::server::RunningHub, token: &str) -> Api {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let ca = std::fs::read_to_string(hub.ca_file()).expect("hub CA");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(hub.url())
        .expect("hub URL")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("hub reachable");
    flotilla_proto::hub_api_client::HubApiClient::with_interceptor(
        channel,
        Bearer(token.to_owned()),
    )
}

/// A Git repository at `dir/repo` whose one commit on `main` holds
/// `web/cm.yaml`, a ConfigMap named web; returns its `file://` URL.
pub fn web_repo(dir: &Path) -> String {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir repo");
    git(&repo, &["init", "-q", "-b", "main"]);
    write(
        &repo,
        "web/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
    );
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    format!("file://{}", repo.display())
}

/// Starts a hub with its data in `dir/hub` on a free loopback port, its
/// configuration changed by `tune`, and registers cluster `c1`; returns it
/// with an admin client.
pub async fn hub_with_c1(
    dir: &Path,
    tune: impl FnOnce(&mut flotilla_hub::server::HubConfig),
) -> (flotilla_hub::server::RunningHub, Api) {
    let mut config = flotilla_hub::server::HubConfig::new(
        dir.join("hub"),
        "127.0.0.1:0".parse().expect("an address"),
    );
    tune(&mut config);
    let hub = flotilla_hub::server::start(config)
        .await
        .expect("hub starts");
    let mut admin = api(&hub).await;
    admin
        .add_cluster(flotilla_proto::AddClusterRequest {
            name: "c1".into(),
            ..Default::default()
        })
        .await
        .expect("cluster c1 added");
    (hub, admin)
}

/// Syncs application `name`.
pub async fn sync(
    api: &mut Api,
    name: &str,
) -> Result<flotilla_proto::SyncApplicationResponse, tonic::Status> {
    api.sync_application(flotilla_proto::SyncApplicationRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Runs the `flotilla` CLI against an in-process hub, with its CA and
/// admin token and no user configuration.
pub fn flotilla(hub: &flotilla_hub::server::RunningHub, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("FLOTILLA_HUB", hub.url())
        .env("FLOTILLA_CA_FILE", hub.ca_file())
        .env("FLOTILLA_TOKEN_FILE", hub.admin_token_file())
        .env_remove("FLOTILLA_TOKEN")
        .env(
            "FLOTILLA_CONFIG",
            hub.ca_file().with_file_name("no-such-config.json"),
        )
        .output()
        .expect("the flotilla CLI runs")
}

/// The stdout of a successful CLI run; panics with both streams otherwise.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Serves `app` over https on `listener` with a certificate for
/// 127.0.0.1 and localhost from a CA created in `ca_dir` (written to
/// `ca_dir/ca.crt`, which a client must be given to trust it).
pub fn serve_https(listener: tokio::net::TcpListener, app: axum::Router, ca_dir: &Path) {
    use rustls::pki_types::pem::PemObject as _;
    use std::sync::Arc;
    let pki = flotilla_hub::pki::Pki::load_or_create(ca_dir, &[]).expect("test CA");
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(pki.server().cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate chain");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.server().key_pem.as_bytes())
        .expect("server key");
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(conn) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                .await;
            });
        }
    });
}
