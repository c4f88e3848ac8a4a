//! Wiring: open the store, load the CA, start the Git loop and serve both
//! gRPC services on one TLS listener.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::api::agent_link::AgentLinkService;
use crate::api::hub_api::HubApiService;
use crate::api::{self, HubContext};
use crate::fleet::Fleet;
use crate::gitsync::{DEFAULT_POLL_INTERVAL, GitSync};
use crate::pki::{self, Pki};
use crate::store::{Store, StoreError};
use flotilla_proto as pb;

/// Concurrent HTTP/2 streams (calls) per connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

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
    /// Connection caps and deadlines of every listener.
    pub limits: crate::listener::ListenerLimits,
    /// File holding the key repository credentials are sealed with (64 hex
    /// digits), created on first start when missing. `None`:
    /// `DATA/credentials.key`.
    pub credentials_key_file: Option<PathBuf>,
    /// Fetch pool, fetch timeout and render pool of the Git loop.
    pub git_limits: crate::gitsync::GitLimits,
    /// Longest a `HubApi` call may take before it is answered with
    /// `DEADLINE_EXCEEDED`.
    pub api_deadline: Duration,
    /// gRPC message size limits and the bundle chunk size.
    pub wire: crate::api::WireLimits,
    /// Bytes sled may use to cache pages (`--store-cache-mib`).
    pub store_cache_bytes: u64,
    /// operate: directory of repository and repo-creds Secrets (Argo CD's
    /// declarative shape), read at start and every
    /// `repository_secrets_interval` ([`crate::repo_secrets`]).
    pub repository_secrets: Option<PathBuf>,
    /// How often `repository_secrets` is read again.
    pub repository_secrets_interval: Duration,
    /// ui: HTTPS listener of the web UI (the hub's serving certificate).
    /// Off when `None`.
    pub ui_listen: Option<SocketAddr>,
    /// SSO with an OpenID Connect issuer (`--oidc-*`); off when `None`.
    pub oidc: Option<crate::sso::OidcConfig>,
    /// How often the unauthenticated `SsoLogin` service may be called.
    pub sso_login_rate: crate::api::sso_login::LoginRate,
    /// Host globs every Git and Helm fetch must match
    /// (`--allowed-fetch-hosts`); empty: any host.
    pub allowed_fetch_hosts: Vec<String>,
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
            limits: crate::listener::ListenerLimits::default(),
            credentials_key_file: None,
            git_limits: crate::gitsync::GitLimits::default(),
            api_deadline: crate::api::deadline::DEFAULT_API_DEADLINE,
            wire: crate::api::WireLimits::default(),
            store_cache_bytes: crate::store::DEFAULT_CACHE_MIB * 1024 * 1024,
            repository_secrets: None,
            repository_secrets_interval: crate::repo_secrets::reload::DEFAULT_RELOAD_INTERVAL,
            ui_listen: None,
            oidc: None,
            sso_login_rate: crate::api::sso_login::LoginRate::default(),
            allowed_fetch_hosts: Vec::new(),
        }
    }
}

/// Errors starting or running the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Sso(#[from] crate::sso::SsoError),
    #[error("{0}")]
    FetchHosts(String),
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
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("--repo: {0}")]
    Repo(String),
    #[error("--repository-secrets: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    RepoSecrets(Vec<crate::repo_secrets::RepoSecretError>),
    #[error("{0}")]
    Limits(String),
    #[error(transparent)]
    Ui(#[from] crate::ui::serve::ServeError),
}

/// A hub that is serving.
#[derive(Debug)]
pub struct RunningHub {
    local_addr: SocketAddr,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), HubError>>,
    declared: Option<Arc<crate::repo_secrets::reload::DeclaredRepositories>>,
    ui_addr: Option<SocketAddr>,
}

impl RunningHub {
    /// The Secrets under `--repository-secrets` the last read could not use
    /// (each naming its file and cause), and removed Secrets whose
    /// repository is kept for applications.
    pub fn repository_secret_errors(&self) -> Vec<String> {
        self.declared
            .as_ref()
            .map(|d| d.errors())
            .unwrap_or_default()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `https://ADDR`, the URL agents and the CLI use.
    pub fn url(&self) -> String {
        format!("https://{}", self.local_addr)
    }

    /// `https://ADDR/` of the web UI, when it is served.
    pub fn ui_url(&self) -> Option<String> {
        self.ui_addr.map(|a| format!("https://{a}/"))
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

/// Default path of the credentials key: in the data directory, beside (not
/// in) the database.
pub fn credentials_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("credentials.key")
}

/// Makes `dir` 0700 and takes group and other permissions off everything
/// under it, for data directories written by hubs that did not set a mask.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.path_is_symlink() {
            continue;
        }
        let meta = entry.metadata().map_err(std::io::Error::other)?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode & 0o7700))?;
        }
    }
    Ok(())
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
    config.wire.validate().map_err(HubError::Limits)?;
    let data_dir = config.data_dir.clone();
    // Everything the hub writes is its own: the store (credentials, token
    // hashes), keys, mirrors. sled creates its files itself, so the mask
    // is process-wide rather than per file.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    std::fs::create_dir_all(&data_dir).map_err(|source| HubError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    make_private(&data_dir).map_err(|source| HubError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let key_file = config
        .credentials_key_file
        .clone()
        .unwrap_or_else(|| credentials_key_path(&data_dir));
    let key = crate::store::CredentialsKey::load_or_create(&key_file)?;
    crate::store::set_cache_capacity(config.store_cache_bytes);
    let store = Store::open_with_key(&data_dir.join("db"), key)?;
    crate::metrics::metrics().store_cache_capacity(config.store_cache_bytes);
    tracing::info!(
        cache_mib = config.store_cache_bytes / (1024 * 1024),
        "store cache bounded"
    );
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
    git.set_limits(config.git_limits);
    if let Some(file) = &config.ssh_known_hosts
        && !file.is_file()
    {
        tracing::warn!(file = %file.display(), "ssh known hosts file not found; ssh repositories fail until it exists");
    }
    git.set_allowed_fetch_hosts(
        crate::fetch_hosts::FetchHosts::new(&config.allowed_fetch_hosts)
            .map_err(HubError::FetchHosts)?,
    );
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
        // As `flotilla repo add`: credentials in the URL are stored sealed
        // and the URL registered without them.
        let (url, embedded) =
            crate::source::split_credentials(r.url.trim()).map_err(HubError::Repo)?;
        git.add_repository(
            &url,
            &r.revision,
            &r.apps_path,
            secs,
            crate::gitsync::RepoKind::Git,
        )?;
        if let Some(c) = embedded {
            store.put_repo_credentials(
                &url,
                Some(&crate::store::RepoCredentials {
                    username: c.username,
                    password: c.password,
                    ..Default::default()
                }),
            )?;
        }
    }
    let declared = match &config.repository_secrets {
        Some(dir) => Some(declared_repositories(
            &store,
            &git,
            dir,
            config.poll_interval,
        )?),
        None => None,
    };
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
        wire: config.wire,
    };

    let rollout_ctx = ctx.clone();
    let windows_ctx = ctx.clone();
    // The chain includes the CA so an enrolling agent can check it against
    // the pin in its bootstrap token. TLS is done by crate::listener, not
    // by tonic, so that handshakes have a deadline and connections caps.
    let tls = crate::listener::server_tls(
        &format!("{}{}", pki.server().cert_pem, pki.ca_pem()),
        &pki.server().key_pem,
        pki.ca_pem(),
    )
    .map_err(HubError::Tls)?;
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
    let fd_limit = crate::listener::raise_fd_limit();
    crate::metrics::metrics().open_files_limit(fd_limit);
    tracing::info!(
        limit = fd_limit,
        "open files limit (raised to the hard limit); each connected cluster holds one"
    );
    let wanted = config.limits.max_descriptors();
    if fd_limit.is_some_and(|l| l < wanted as u64) {
        tracing::warn!(
            limit = fd_limit,
            wanted,
            "the open files limit is below the connection caps; the caps are reached later than the limit"
        );
    }
    let registry = Arc::new(crate::listener::ConnRegistry::default());
    let incoming = crate::listener::tls_incoming(
        listener,
        tls,
        config.limits.clone(),
        registry.clone(),
        ctx.closing.clone(),
    );

    let oidc = match &config.oidc {
        Some(c) => Some(Arc::new(crate::sso::Oidc::new(c.clone())?)),
        None => None,
    };
    let auth_store = store.clone();
    let interceptor = move |mut req: tonic::Request<()>| {
        let caller = api::check_bearer(&auth_store, &req)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    };
    let router = Server::builder()
        .layer(crate::api::guard::GuardLayer::new(registry))
        // tonic would otherwise lift hyper's default and allow any number.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // Both directions bounded: agents split their reports, and the hub
        // sends desired state in parts and chunks well below the limit.
        .add_service(
            pb::agent_link_server::AgentLinkServer::new(AgentLinkService::new(ctx.clone()))
                .max_decoding_message_size(config.wire.max_message_size)
                .max_encoding_message_size(config.wire.max_message_size),
        )
        .add_service(pb::sso_login_server::SsoLoginServer::new(
            crate::api::sso_login::SsoLoginService::new(
                store.clone(),
                oidc.clone(),
                config.sso_login_rate,
            ),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            tower::Layer::layer(
                &crate::api::deadline::DeadlineLayer::new(config.api_deadline),
                pb::hub_api_server::HubApiServer::new(HubApiService::new(ctx.clone()))
                    .max_decoding_message_size(config.wire.max_message_size)
                    .max_encoding_message_size(config.wire.max_message_size),
            ),
            interceptor,
        ));

    let http_limits = config.limits.http();
    let webhook_task = match config.webhook_listen {
        Some(addr) => {
            let state = crate::webhook::WebhookState {
                store: store.clone(),
                git: git.clone(),
                secret: config.webhook_secret.clone(),
            };
            let (listener, bound) = crate::listener::bind(addr)
                .await
                .map_err(|source| HubError::Listen { addr, source })?;
            let task = crate::listener::serve_http(
                "webhook",
                listener,
                crate::webhook::router(state),
                http_limits.clone(),
                ctx.closing.clone(),
            );
            tracing::info!(addr = %bound, "webhook listening");
            println!("flotilla-hub webhook listening on http://{bound}/api/webhook");
            Some(task)
        }
        None => None,
    };
    let readiness = crate::health_http::Readiness::new(store.clone(), ctx.fleet.clone());
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let (listener, bound) = crate::listener::bind(addr)
                .await
                .map_err(|source| HubError::Listen { addr, source })?;
            let task = crate::listener::serve_http(
                "metrics",
                listener,
                crate::health_http::router(readiness.clone()),
                http_limits,
                ctx.closing.clone(),
            );
            tracing::info!(addr = %bound, "metrics and probes listening");
            println!("flotilla-hub metrics listening on http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };
    let (ui_addr, ui_task) = match config.ui_listen {
        Some(addr) => {
            let tls = crate::ui::serve::tls_config(
                &format!("{}{}", pki.server().cert_pem, pki.ca_pem()),
                &pki.server().key_pem,
            )?;
            let router =
                crate::ui::router(crate::ui::UiState::new(ctx.clone()).with_sso(oidc.clone()));
            let (bound, task) =
                crate::ui::serve::serve(addr, tls, router, ctx.closing.clone()).await?;
            tracing::info!(addr = %bound, "web UI listening");
            println!("flotilla-hub ui listening on https://{bound}/");
            (Some(bound), Some(task))
        }
        None => (None, None),
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let git_task = tokio::spawn(git.clone().run());
    let rollout_task = Some(tokio::spawn(crate::rollout_run::run(rollout_ctx)));
    let windows_task = Some(tokio::spawn(crate::window_wake::run(windows_ctx)));
    let secrets_task = declared
        .clone()
        .map(|d| d.spawn(config.repository_secrets_interval));
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
        for t in [
            webhook_task,
            metrics_task,
            secrets_task,
            ui_task,
            rollout_task,
            windows_task,
        ]
        .into_iter()
        .flatten()
        {
            t.abort();
            let _ = t.await;
        }
        store.flush_async().await?;
        // Release the database now, whatever still holds a clone, so the
        // data directory can be opened again at once.
        let closing = store.clone();
        match tokio::task::spawn_blocking(move || closing.close()).await {
            Ok(closed) => closed?,
            Err(e) => tracing::error!(error = %e, "closing the store failed"),
        }
        result
    });
    tracing::info!(addr = %local_addr, "hub serving");
    Ok(RunningHub {
        local_addr,
        data_dir,
        stop: Some(stop_tx),
        task,
        declared,
        ui_addr,
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

/// Reads the repositories and credential templates declared as Secrets in
/// `dir` once (a Secret that cannot be used is logged and counted, and
/// does not stop the hub), to be read again while the hub runs.
///
/// # Errors
/// `dir` cannot be read, or the store fails.
fn declared_repositories(
    store: &Store,
    git: &Arc<crate::gitsync::GitSync>,
    dir: &std::path::Path,
    poll_interval: Duration,
) -> Result<Arc<crate::repo_secrets::reload::DeclaredRepositories>, HubError> {
    std::fs::read_dir(dir).map_err(|source| {
        HubError::RepoSecrets(vec![crate::repo_secrets::RepoSecretError::Io {
            path: dir.to_owned(),
            source,
        }])
    })?;
    let declared = Arc::new(crate::repo_secrets::reload::DeclaredRepositories::new(
        store.clone(),
        git.clone(),
        dir.to_owned(),
        poll_interval,
    ));
    declared.read_and_apply()?;
    Ok(declared)
}
