//! `flotilla-hub`: the hub server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use flotilla_hub::cli::parse_duration;
use flotilla_hub::listener::ListenerLimits;
use flotilla_hub::server::{HubConfig, RepoSpec};
use flotilla_hub::telemetry::LogFormat;

/// mimalloc: at 1,000 clusters × 50 applications the system allocator was
/// a third of the hub's CPU and kept freed memory (docs/architecture.md#scale).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-hub",
    version,
    about = "Flotilla hub: Git to per-cluster desired state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the agent link and the user API on one TLS listener.
    Serve(Box<ServeArgs>),
    /// Internal: evaluates Jsonnet for a running hub (request on stdin,
    /// result on stdout), so that an evaluation can be killed.
    #[command(hide = true)]
    JsonnetEval,
    /// Print the hub CA certificate (DATA/ca.crt, PEM) on stdout and its
    /// pin on stderr: the CLI's --ca-file, read out of a hub image that
    /// has no shell (`kubectl exec flotilla-hub-0 -- flotilla-hub print-ca`).
    PrintCa {
        /// The hub's data directory.
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "/var/lib/flotilla")]
        data_dir: PathBuf,
    },
}

fn print_ca(data_dir: &std::path::Path) -> Result<()> {
    let path = data_dir.join("ca.crt");
    let pem = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (has the hub started once?)", path.display()))?;
    let pin = flotilla_hub::pki::ca_pin_of(&pem)
        .with_context(|| format!("{} is not a CA certificate", path.display()))?;
    print!("{pem}");
    eprintln!("hub CA pin: sha256:{pin}");
    Ok(())
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Where the hub keeps its database, CA (ca.crt, ca.key), server
    /// certificate, Git mirrors and admin.token.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; the chosen one is
    /// printed in the "listening on" line).
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Extra DNS name or IP for the server certificate (repeatable);
    /// localhost and 127.0.0.1 are always included.
    #[arg(long = "advertise-host", value_name = "HOST")]
    advertise_hosts: Vec<String>,
    /// Git repository to poll (repeatable): `URL` or `URL#APPS_PATH`, where
    /// APPS_PATH is the directory holding Application resources. Without
    /// `#APPS_PATH`, --apps-path applies.
    #[arg(long = "repo", value_name = "URL[#APPS_PATH]")]
    repos: Vec<String>,
    /// Default directory of Application resources for --repo without `#`
    /// (empty: the repository only supplies manifests).
    #[arg(long, default_value = "")]
    apps_path: String,
    /// Branch, tag or commit of every --repo.
    #[arg(long, default_value = "HEAD")]
    revision: String,
    /// Poll interval, e.g. 15s, 2m, 500ms.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Close an agent stream that sends nothing for this long (agents send
    /// a heartbeat every 30s).
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    stream_idle_timeout: Duration,
    /// Command that builds a kustomization; the directory is appended, e.g.
    /// "kustomize build" or "kubectl kustomize" [default: kustomize build
    /// when kustomize is on PATH, else kubectl kustomize].
    #[arg(long, value_name = "COMMAND")]
    kustomize_command: Option<String>,
    /// helm program used for `helm template` [default: helm on PATH].
    #[arg(long, value_name = "COMMAND")]
    helm_command: Option<String>,
    /// Longest a kustomize or helm run may take.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    render_timeout: Duration,
    /// Longest one Git fetch (or Helm index download) may take; a slower
    /// one fails with "timed out after …" and only its own applications
    /// wait for it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    git_fetch_timeout: Duration,
    /// Git fetches running at once.
    #[arg(long, default_value_t = flotilla_hub::gitsync::DEFAULT_FETCH_CONCURRENCY)]
    git_fetch_concurrency: usize,
    /// Renders (directory, kustomize, helm, jsonnet) running at once
    /// [default: the number of CPUs, at least 2].
    #[arg(long)]
    render_concurrency: Option<usize>,
    /// Memory sled may use to cache the store's pages, in MiB (sled's own
    /// default of 1 GiB makes the RSS climb for minutes).
    #[arg(long, default_value_t = flotilla_hub::store::DEFAULT_CACHE_MIB)]
    store_cache_mib: u64,
    /// Longest a user API call may take before it is answered with
    /// DEADLINE_EXCEEDED.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    api_deadline: Duration,
    /// Plain-HTTP address for Git push webhooks (POST /api/webhook);
    /// put it behind an ingress for TLS. Off when not given.
    #[arg(long, value_name = "ADDR")]
    webhook_listen: Option<SocketAddr>,
    /// Shared secret of the webhooks (GitHub/Gitea HMAC, GitLab token).
    #[arg(long, env = "FLOTILLA_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Share (0..1) of an ApplicationSet's applications that may be
    /// deleted within --appset-deletion-window; more is held until
    /// `flotilla appset confirm NAME`.
    #[arg(long, default_value_t = flotilla_hub::appset::lifecycle::DEFAULT_DELETION_BUDGET)]
    appset_deletion_budget: f64,
    /// Window over which --appset-deletion-budget is judged (deletions in
    /// the window count together).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    appset_deletion_window: Duration,
    /// Match ApplicationSet git file generator paths with doublestar
    /// globbing (`*` stays within a directory, `**` crosses them) instead
    /// of `git ls-files` pathspecs; Argo CD's
    /// --enable-new-git-file-globbing.
    #[arg(long, env = "FLOTILLA_APPSET_ENABLE_NEW_GIT_FILE_GLOBBING")]
    appset_enable_new_git_file_globbing: bool,
    /// Plain-HTTP address serving /healthz, /readyz and /metrics
    /// (Prometheus text format). Off when not given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// HTTPS address of the web UI (served with the hub's certificate; log
    /// in with an API token). Off when not given.
    #[arg(long, value_name = "ADDR")]
    ui_listen: Option<SocketAddr>,
    /// SSO: the OpenID Connect issuer URL (as its tokens' `iss` spells
    /// it). With it, `/auth/login` on the UI and `flotilla login --sso`
    /// log users in; the groups claim maps to policy.csv groups.
    #[arg(long, value_name = "URL", requires_all = ["oidc_client_id", "oidc_redirect_url"])]
    oidc_issuer: Option<String>,
    /// SSO: this hub's client id at the issuer.
    #[arg(long, value_name = "ID")]
    oidc_client_id: Option<String>,
    /// SSO: file holding the client secret (the environment variable
    /// FLOTILLA_OIDC_CLIENT_SECRET is read when this is not given; the
    /// secret is never a command-line value).
    #[arg(long, value_name = "PATH")]
    oidc_client_secret_file: Option<PathBuf>,
    /// SSO: the UI's callback as registered at the issuer,
    /// `https://HOST/auth/callback`.
    #[arg(long, value_name = "URL")]
    oidc_redirect_url: Option<String>,
    /// SSO: scopes requested (comma-separated; `openid` is always added).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "openid,profile,email,groups"
    )]
    oidc_scopes: Vec<String>,
    /// SSO: the ID token claim holding the user's groups.
    #[arg(long, default_value = flotilla_hub::sso::DEFAULT_GROUPS_CLAIM)]
    oidc_groups_claim: String,
    /// SSO: PEM file of CAs the issuer's certificate is checked against
    /// (on top of the system's roots).
    #[arg(long, value_name = "PATH")]
    oidc_ca_file: Option<PathBuf>,
    /// Hosts the hub may fetch Git repositories and Helm charts from
    /// (comma-separated globs: `github.com`, `*.corp.example`,
    /// `git.example:8443`). Any other host is refused before a request is
    /// made, with an application condition naming the host. Empty: any.
    #[arg(long, value_delimiter = ',', value_name = "GLOBS")]
    allowed_fetch_hosts: Vec<String>,
    /// OpenSSH known_hosts file (e.g. from `ssh-keyscan HOST`) that the
    /// host keys of ssh repositories are verified against; read at every
    /// fetch. Without it, only repositories added with
    /// --insecure-ignore-host-key can be fetched over ssh.
    #[arg(long, env = "FLOTILLA_SSH_KNOWN_HOSTS", value_name = "FILE")]
    ssh_known_hosts: Option<PathBuf>,
    /// Directory of repositories and credential templates declared as
    /// Secrets (Argo CD's `argocd.argoproj.io/secret-type: repository` and
    /// `repo-creds`), read at start, every --repository-secrets-interval
    /// and on SIGHUP: Secret manifests (*.yaml) and Secrets mounted under
    /// repository/NAME/ and repo-creds/NAME/.
    #[arg(long, env = "FLOTILLA_REPOSITORY_SECRETS", value_name = "DIR")]
    repository_secrets: Option<PathBuf>,
    /// How often --repository-secrets is read again.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    repository_secrets_interval: Duration,
    /// File with the key (64 hex digits) that seals repository credentials
    /// in the store; created 0600 on first start when missing. Keep it
    /// apart from backups of the database. [default: DATA/credentials.key]
    #[arg(long, env = "FLOTILLA_CREDENTIALS_KEY_FILE", value_name = "FILE")]
    credentials_key_file: Option<PathBuf>,
    /// Longest a TLS handshake (or, on the plain-HTTP listeners, the first
    /// request after connecting) may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tls_handshake_timeout: Duration,
    /// Close a connection with no request in flight for this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    connection_idle_timeout: Duration,
    /// Connections still in their TLS handshake, from all sources; when
    /// full, the oldest is dropped.
    #[arg(long, default_value_t = ListenerLimits::default().max_pending)]
    max_pending_connections: usize,
    /// Connections still in their TLS handshake, per source address.
    #[arg(long, default_value_t = ListenerLimits::default().max_pending_per_source)]
    max_pending_connections_per_source: usize,
    /// Established connections without a client certificate (CLI, API,
    /// enrolling agents).
    #[arg(long, default_value_t = ListenerLimits::default().max_unauthenticated)]
    max_unauthenticated_connections: usize,
    /// The same, per source address.
    #[arg(long, default_value_t = ListenerLimits::default().max_unauthenticated_per_source)]
    max_unauthenticated_connections_per_source: usize,
    /// Established connections with an agent certificate.
    #[arg(long, default_value_t = ListenerLimits::default().max_authenticated)]
    max_agent_connections: usize,
    /// Largest gRPC message the hub decodes or encodes, on the agent link
    /// and the API (bytes, or with KiB/MiB/GiB).
    #[arg(long, env = "FLOTILLA_MAX_MESSAGE_SIZE", default_value = "16MiB", value_parser = flotilla_proto::wire::parse_size)]
    max_message_size: usize,
    /// Largest chunk of a bundle sent to an agent, and the size desired
    /// state is split at (bytes, or with KiB/MiB/GiB).
    #[arg(long, default_value = "1MiB", value_parser = flotilla_proto::wire::parse_size)]
    bundle_chunk_size: usize,
    /// Log format on stderr: `text` (coloured only on a terminal) or
    /// `json` (one object per line, for log pipelines). The level filter
    /// is RUST_LOG.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `flotilla-hub jsonnet-eval`: one request on stdin, its answer on stdout.
fn jsonnet_eval() -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading the request")?;
    let output = flotilla_hub::render::jsonnet::run_child(&input);
    std::io::stdout()
        .write_all(&output)
        .context("writing the answer")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = match Cli::parse().command {
        Command::Serve(args) => *args,
        Command::JsonnetEval => return jsonnet_eval(),
        Command::PrintCa { data_dir } => return print_ca(&data_dir),
    };
    let telemetry = flotilla_hub::telemetry::init_with(args.log_format);
    let repos = args
        .repos
        .iter()
        .map(|r| {
            let (url, apps_path) = match r.split_once('#') {
                Some((u, p)) => (u.to_owned(), p.to_owned()),
                None => (r.clone(), args.apps_path.clone()),
            };
            RepoSpec {
                url,
                apps_path,
                revision: args.revision.clone(),
                poll_interval: Some(args.poll_interval),
            }
        })
        .collect();
    let oidc = match args.oidc_issuer {
        None => None,
        Some(issuer) => {
            let client_secret = match &args.oidc_client_secret_file {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("--oidc-client-secret-file {}", path.display()))?
                    .trim()
                    .to_owned(),
                None => std::env::var("FLOTILLA_OIDC_CLIENT_SECRET").unwrap_or_default(),
            };
            Some(flotilla_hub::sso::OidcConfig {
                issuer,
                client_id: args.oidc_client_id.unwrap_or_default(),
                client_secret,
                redirect_url: args.oidc_redirect_url.unwrap_or_default(),
                scopes: args.oidc_scopes,
                groups_claim: args.oidc_groups_claim,
                ca_file: args.oidc_ca_file,
            })
        }
    };
    let config = HubConfig {
        oidc,
        sso_login_rate: flotilla_hub::api::sso_login::LoginRate::default(),
        allowed_fetch_hosts: args.allowed_fetch_hosts,
        data_dir: args.data_dir,
        listen: args.listen,
        advertise_hosts: args.advertise_hosts,
        repos,
        poll_interval: args.poll_interval,
        render_tools: flotilla_hub::render::RenderTools {
            kustomize: args
                .kustomize_command
                .as_deref()
                .and_then(flotilla_hub::render::RenderTools::command),
            helm: args
                .helm_command
                .as_deref()
                .and_then(flotilla_hub::render::RenderTools::command),
            // Jsonnet runs in a child process of this binary, so a
            // runaway evaluation is killed at the timeout.
            jsonnet: std::env::current_exe()
                .ok()
                .map(|exe| vec![exe.display().to_string(), "jsonnet-eval".into()]),
            timeout: args.render_timeout,
        },
        webhook_listen: args.webhook_listen,
        webhook_secret: args.webhook_secret,
        appset_deletion_budget: args.appset_deletion_budget,
        appset_deletion_window: args.appset_deletion_window,
        appset_new_git_file_globbing: args.appset_enable_new_git_file_globbing,
        metrics_listen: args.metrics_listen,
        ui_listen: args.ui_listen,
        stream_idle_timeout: args.stream_idle_timeout,
        ssh_known_hosts: args.ssh_known_hosts,
        repository_secrets: args.repository_secrets,
        repository_secrets_interval: args.repository_secrets_interval,
        credentials_key_file: args.credentials_key_file,
        git_limits: flotilla_hub::gitsync::GitLimits {
            fetch_timeout: args.git_fetch_timeout,
            fetch_concurrency: args.git_fetch_concurrency.max(1),
            render_concurrency: args
                .render_concurrency
                .unwrap_or_else(flotilla_hub::gitsync::default_render_concurrency)
                .max(1),
        },
        api_deadline: args.api_deadline,
        store_cache_bytes: args.store_cache_mib.saturating_mul(1024 * 1024),
        wire: flotilla_hub::api::WireLimits {
            max_message_size: args.max_message_size,
            chunk_size: args.bundle_chunk_size,
        },
        limits: ListenerLimits {
            handshake_timeout: args.tls_handshake_timeout,
            idle_timeout: args.connection_idle_timeout,
            max_pending: args.max_pending_connections,
            max_pending_per_source: args.max_pending_connections_per_source,
            max_unauthenticated: args.max_unauthenticated_connections,
            max_unauthenticated_per_source: args.max_unauthenticated_connections_per_source,
            max_authenticated: args.max_agent_connections,
            ..ListenerLimits::default()
        },
    };
    let served = flotilla_hub::server::serve(config, shutdown_signal())
        .await
        .context("flotilla-hub");
    telemetry.shutdown().await;
    served
}
