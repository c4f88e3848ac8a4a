//! Wiring: open the store, load the CA, start the Git loop and serve both
//! gRPC services on one TLS listener.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::api::agent_link::AgentLinkService;
use crate::api::hub_api::HubApiService;
use crate::api::{self, HubContext};
use crate::fleet::Fleet;
use crate::gitsync::{DEFAULT_POLL_INTERVAL, GitSync};
use crate::pki::{self, Pki};
use crate::store::{Store, StoreError};
use flotilla_proto as pb;

/// Largest message an agent may send (status reports of big applications).
const MAX_AGENT_MESSAGE: usize = 64 * 1024 * 1024;

/// A repository given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSpec {
    pub url: String,
    pub apps_path: String,
    pub revision: String,
    pub poll_interval: Option<Duration>,
}

/// How to run the hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    /// Port 0 picks a free port; [`RunningHub::local_addr`] tells which.
    pub listen: SocketAddr,
    /// Extra names/addresses for the server certificate.
    pub advertise_hosts: Vec<String>,
    pub repos: Vec<RepoSpec>,
    pub poll_interval: Duration,
    /// kustomize/helm commands and their timeout.
    pub render_tools: crate::render::RenderTools,
    /// Plain-HTTP listener for Git push webhooks (`POST /api/webhook`).
    pub webhook_listen: Option<SocketAddr>,
    /// Shared secret webhooks must prove (HMAC or GitLab token).
    pub webhook_secret: Option<String>,
    /// Share of an ApplicationSet's applications one evaluation may delete
    /// before the deletions are held for `flotilla appset confirm`.
    pub appset_deletion_budget: f64,
    /// Window over which that share is judged.
    pub appset_deletion_window: Duration,
    /// doublestar globbing for ApplicationSet `git` file generators
    /// (Argo CD's `--enable-new-git-file-globbing`).
    pub appset_new_git_file_globbing: bool,
    /// Plain-HTTP listener for `/healthz`, `/readyz` and `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// An agent stream that sends nothing for this long is closed (agents
    /// send a status heartbeat every 30 s).
    pub stream_idle_timeout: Duration,
    /// OpenSSH known_hosts file the host keys of ssh repositories are
    /// verified against (read at every fetch). `None`: no host is known.
    pub ssh_known_hosts: Option<PathBuf>,
}

impl HubConfig {
    /// A config with defaults for everything but where to keep data and
    /// where to listen.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            advertise_hosts: Vec::new(),
            repos: Vec::new(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            render_tools: crate::render::RenderTools::default(),
            webhook_listen: None,
            webhook_secret: None,
            appset_deletion_budget: crate::appset::lifecycle::DEFAULT_DELETION_BUDGET,
            appset_deletion_window: crate::appset::lifecycle::DEFAULT_DELETION_WINDOW,
            appset_new_git_file_globbing: false,
            metrics_listen: None,
            stream_idle_timeout: crate::api::agent_link::DEFAULT_STREAM_IDLE_TIMEOUT,
            ssh_known_hosts: None,
        }
    }
}

/// Errors starting or running the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A hub that is serving.
#[derive(Debug)]
pub struct RunningHub {
    local_addr: SocketAddr,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), HubError>>,
}

impl RunningHub {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `https://ADDR`, the URL agents and the CLI use.
    pub fn url(&self) -> String {
        format!("https://{}", self.local_addr)
    }

    /// Where the CA certificate is (agents and the CLI trust it).
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("ca.crt")
    }

    /// Where the admin token was written on first start.
    pub fn admin_token_file(&self) -> PathBuf {
        admin_token_path(&self.data_dir)
    }

    /// Stops serving: closes agent streams, waits briefly for calls in
    /// flight, flushes the store.
    ///
    /// # Errors
    /// The server or the final flush failed.
    pub async fn shutdown(mut self) -> Result<(), HubError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "hub task failed");
                Ok(())
            }
        }
    }

    /// Waits until the hub stops by itself (it only does on error).
    ///
    /// # Errors
    /// The server failed.
    pub async fn wait(self) -> Result<(), HubError> {
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Path of the admin token file in a data directory.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// Starts the hub and returns once it is listening.
///
/// # Errors
/// The data directory, store, CA or listener cannot be set up.
pub async fn start(config: HubConfig) -> Result<RunningHub, HubError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| HubError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let store = Store::open(&data_dir.join("db"))?;
    let pki = Arc::new(Pki::load_or_create(&data_dir, &config.advertise_hosts)?);
    let path = admin_token_path(&data_dir);
    let adopted = crate::admin_token::ensure(&store, &path)?;
    if adopted == crate::admin_token::AdminToken::Adopted {
        println!("flotilla-hub adopted the admin token in {}", path.display());
    }
    if let crate::admin_token::AdminToken::Generated(secret) = adopted {
        pki::write_private(&path, format!("{secret}\n").as_bytes()).map_err(|source| {
            HubError::DataDir {
                path: path.clone(),
                source,
            }
        })?;
        println!("flotilla-hub admin token written to {}", path.display());
    }
    let fleet = Fleet::load(store.clone())?;
    let git = GitSync::new(
        store.clone(),
        fleet.clone(),
        data_dir.join("git"),
        config.poll_interval,
    );
    let appsets = crate::appset::lifecycle::AppSets::with_config(
        fleet.clone(),
        crate::appset::lifecycle::AppSetConfig {
            deletion_budget: config.appset_deletion_budget,
            deletion_window: config.appset_deletion_window,
            new_git_file_globbing: config.appset_new_git_file_globbing,
        },
        config.poll_interval,
    );
    git.set_appsets(appsets.clone());
    git.set_render_tools(config.render_tools.clone());
    if let Some(file) = &config.ssh_known_hosts
        && !file.is_file()
    {
        tracing::warn!(file = %file.display(), "ssh known hosts file not found; ssh repositories fail until it exists");
    }
    git.set_ssh(crate::source::SshSettings {
        known_hosts: config.ssh_known_hosts.clone(),
        // Key files of running ssh fetches, outside the mirrors.
        scratch_dir: data_dir.join("ssh"),
    });
    for r in &config.repos {
        let secs = r
            .poll_interval
            .unwrap_or(config.poll_interval)
            .as_secs()
            .max(1) as i64;
        git.add_repository(
            &r.url,
            &r.revision,
            &r.apps_path,
            secs,
            crate::gitsync::RepoKind::Git,
        )?;
    }
    store.flush()?;

    let (closing_tx, closing_rx) = watch::channel(false);
    let ctx = HubContext {
        store: store.clone(),
        fleet,
        pki: pki.clone(),
        git: git.clone(),
        commands: Arc::default(),
        appsets,
        closing: closing_rx,
        stream_idle_timeout: config.stream_idle_timeout,
    };

    let tls = ServerTlsConfig::new()
        // The chain includes the CA so an enrolling agent can check it
        // against the pin in its bootstrap token.
        .identity(Identity::from_pem(
            format!("{}{}", pki.server().cert_pem, pki.ca_pem()),
            &pki.server().key_pem,
        ))
        .client_ca_root(Certificate::from_pem(pki.ca_pem()))
        .client_auth_optional(true);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| HubError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| HubError::Listen {
        addr: config.listen,
        source,
    })?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));

    let auth_store = store.clone();
    let interceptor = move |mut req: tonic::Request<()>| {
        let caller = api::check_bearer(&auth_store, &req)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    };
    let router = Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            pb::agent_link_server::AgentLinkServer::new(AgentLinkService::new(ctx.clone()))
                .max_decoding_message_size(MAX_AGENT_MESSAGE)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(pb::hub_api_server::HubApiServer::with_interceptor(
            HubApiService::new(ctx.clone()),
            interceptor,
        ));

    let webhook_task = match config.webhook_listen {
        Some(addr) => {
            let state = crate::webhook::WebhookState {
                store: store.clone(),
                git: git.clone(),
                secret: config.webhook_secret.clone(),
            };
            let (bound, task) = crate::webhook::serve(addr, state)
                .await
                .map_err(|source| HubError::Listen { addr, source })?;
            println!("flotilla-hub webhook listening on http://{bound}/api/webhook");
            Some(task)
        }
        None => None,
    };
    let readiness = crate::health_http::Readiness::new(store.clone(), ctx.fleet.clone());
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let (bound, task) = crate::health_http::serve(addr, readiness.clone())
                .await
                .map_err(|source| HubError::Listen { addr, source })?;
            println!("flotilla-hub metrics listening on http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let git_task = tokio::spawn(git.clone().run());
    let task = tokio::spawn(async move {
        let (server_stop_tx, server_stop_rx) = oneshot::channel::<()>();
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = server_stop_rx.await;
        }));
        readiness.set_listener_up(true);
        let result = tokio::select! {
            r = &mut server => r.unwrap_or(Ok(())).map_err(HubError::from),
            _ = stop_rx => {
                tracing::info!("shutting down");
                let _ = closing_tx.send(true);
                let _ = server_stop_tx.send(());
                match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
                    Ok(r) => r.unwrap_or(Ok(())).map_err(HubError::from),
                    Err(_) => {
                        server.abort();
                        let _ = server.await;
                        Ok(())
                    }
                }
            }
        };
        // Wait for the aborted tasks to be dropped, so every handle on the
        // store is released when shutdown() returns and the same data
        // directory can be opened again at once.
        git_task.abort();
        let _ = git_task.await;
        for t in [webhook_task, metrics_task].into_iter().flatten() {
            t.abort();
            let _ = t.await;
        }
        store.flush_async().await?;
        result
    });
    tracing::info!(addr = %local_addr, "hub serving");
    Ok(RunningHub {
        local_addr,
        data_dir,
        stop: Some(stop_tx),
        task,
    })
}

/// Runs the hub until `shutdown` completes.
///
/// # Errors
/// The hub could not start or the server failed.
pub async fn serve(config: HubConfig, shutdown: impl Future<Output = ()>) -> Result<(), HubError> {
    let mut hub = start(config).await?;
    println!("flotilla-hub listening on {}", hub.url());
    tokio::select! {
        () = shutdown => hub.shutdown().await,
        r = &mut hub.task => r.unwrap_or(Ok(())),
    }
}
