//! The `flotilla` user CLI: a thin client of `HubApi`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use flotilla_proto as pb;
use pb::hub_api_client::HubApiClient;

mod appset;
pub mod config;
pub mod diff;
pub mod edit;
pub mod exit;
pub mod filter;
mod get;
mod lifecycle;
mod ops;
mod proj;
mod rbac;
mod rollout;
mod sso;

pub use exit::{CliError, ExitStatus, exit_code};
use exit::{out, usage};
use get::{cluster_text, find_cluster, find_repo, repo_text};

/// Default hub URL when neither `--hub` nor `FLOTILLA_HUB` is given.
pub const DEFAULT_HUB: &str = "https://127.0.0.1:7443";

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    #[default]
    Table,
    /// The JSON document, for scripts.
    Json,
    /// YAML (`appset generate`; elsewhere the JSON document as YAML).
    Yaml,
    /// The table with more columns and full revisions (`app list`,
    /// `cluster list`, `repo list`, `app history`).
    Wide,
}

/// Flotilla: what runs where, at which commit, and is it healthy.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args)]
pub struct Global {
    /// Hub address, `HOST:PORT` or `https://HOST:PORT` [default: the
    /// current context's, else 127.0.0.1:7443].
    #[arg(long, env = "FLOTILLA_HUB", global = true, help_heading = "Connection")]
    pub hub: Option<String>,
    /// Use this saved context (see `flotilla context`) instead of the
    /// current one.
    #[arg(
        long,
        env = "FLOTILLA_CONTEXT",
        global = true,
        help_heading = "Connection"
    )]
    pub context: Option<String>,
    /// CA certificate that signed the hub's certificate (the hub's DATA/ca.crt).
    #[arg(
        long,
        env = "FLOTILLA_CA_FILE",
        global = true,
        help_heading = "Connection"
    )]
    pub ca_file: Option<PathBuf>,
    /// API token.
    #[arg(
        long,
        env = "FLOTILLA_TOKEN",
        global = true,
        hide_env_values = true,
        help_heading = "Connection"
    )]
    pub token: Option<String>,
    /// File holding the API token (e.g. the hub's DATA/admin.token).
    #[arg(
        long,
        env = "FLOTILLA_TOKEN_FILE",
        global = true,
        help_heading = "Connection"
    )]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true, help_heading = "Output")]
    pub output: Output,
    /// Largest response the CLI decodes (bytes, or with KiB/MiB/GiB); `app
    /// list` pages to stay under it.
    #[arg(long, env = "FLOTILLA_MAX_MESSAGE_SIZE", global = true, default_value = "16MiB", value_parser = flotilla_proto::wire::parse_size)]
    pub max_message_size: usize,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Applications.
    #[command(subcommand)]
    App(AppCommand),
    /// Clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// ApplicationSets (Argo CD compatible).
    #[command(subcommand)]
    Appset(appset::AppsetCommand),
    /// Waves rollouts of ApplicationSets (spec.strategy.flotillaWaves).
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// tenancy: Argo CD AppProjects (what applications may deploy where).
    #[command(subcommand)]
    Proj(proj::ProjCommand),
    /// Git repositories the hub polls.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Poll every repository now.
    Refresh,
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// tenancy: RBAC in Argo CD's policy.csv model (validate, can, get,
    /// set).
    #[command(subcommand)]
    Rbac(rbac::RbacCommand),
    /// tenancy: the audit log of changes and refused changes.
    Audit(rbac::AuditArgs),
    /// Check the hub, CA and token given now and save them as a context
    /// (in $FLOTILLA_CONFIG, else ~/.config/flotilla/config.json, 0600),
    /// made current; other contexts stay as they are.
    Login {
        /// Name of the context [default: the hub's HOST:PORT].
        #[arg(long)]
        name: Option<String>,
        /// Log in through the hub's identity provider (OIDC) in a browser
        /// instead of with an API token: the CLI listens on 127.0.0.1 for
        /// the provider's redirect, and saves the hub session token it
        /// gets (it expires with the ID token).
        #[arg(long)]
        sso: bool,
        /// With --sso: print the login URL only, do not start a browser.
        #[arg(long, requires = "sso")]
        no_browser: bool,
    },
    /// Forget a saved context and its token.
    Logout {
        /// The context [default: the current one].
        name: Option<String>,
    },
    /// List saved contexts, or make NAME the current one.
    Context {
        /// Context to switch to.
        name: Option<String>,
    },
    /// Print the hub version.
    Version,
    /// Print a shell completion script: `source <(flotilla completion
    /// bash)`, `flotilla completion zsh > "${fpath[1]}/_flotilla"`,
    /// `flotilla completion fish | source`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// List applications with a per-cluster summary.
    #[command(visible_alias = "ls")]
    List(filter::ListFilters),
    /// Show one application, one row per cluster.
    Get {
        /// The application.
        name: String,
        /// Keep running and print the application again whenever its
        /// status changes (Ctrl-C to stop).
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Change fields of an application's definition (as `argocd app
    /// set`); prints "updated" or "unchanged".
    Set(edit::SetArgs),
    /// Change an application's definition with a JSON merge patch.
    Patch(edit::PatchArgs),
    /// Create an application from an Argo CD Application manifest (also
    /// what `app get -o yaml` prints); prints "created", "updated" or
    /// "unchanged".
    Create {
        /// YAML or JSON file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Replace it if it exists.
        #[arg(long)]
        upsert: bool,
    },
    /// Delete an application and, with --cascade (the default), its objects
    /// in every cluster; asks first on a terminal, refused elsewhere
    /// without -y. Applications declared in a repository or generated by
    /// an ApplicationSet are refused: remove them from Git.
    #[command(visible_alias = "rm")]
    Delete(lifecycle::DeleteArgs),
    /// Render the application (at --revision, or its target revision) and
    /// have its clusters apply it now; prints progress per cluster.
    Sync(ops::SyncArgs),
    /// The last deployments (revisionHistoryLimit, default 10).
    History {
        /// The application.
        name: String,
    },
    /// Go back to the revision of a history entry (not while automated
    /// sync is on); pinned until the next `app sync` without --revision.
    Rollback {
        /// The application.
        name: String,
        /// The history entry (ID column of `app history`).
        id: u64,
        /// Delete objects the old revision does not have.
        #[arg(long)]
        prune: bool,
        /// How long to wait for every cluster.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Wait until every cluster reports Synced and/or Healthy (for CI).
    Wait(ops::WaitArgs),
    /// Stop the sync operation running on the application's clusters (as
    /// `argocd app terminate-op`): running hooks are deleted, no further
    /// wave is applied, and the operation ends Failed with "Operation
    /// terminated". Exit 1 when no cluster reports a running operation or
    /// one that does is not connected; 3 when the application is unknown.
    #[command(name = "terminate-op")]
    TerminateOp {
        /// The application.
        name: String,
    },
    /// Compare the desired objects with the live ones (server-side, by the
    /// agents): a unified diff per object; exit 1 when anything differs.
    Diff {
        /// The application.
        name: String,
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Print the rendered objects of an application, as its clusters are
    /// told to apply them (a YAML stream; `-o json`: a list).
    Manifests {
        /// The application.
        name: String,
    },
    /// Fetch the application's repository now and re-render it.
    Refresh {
        /// The application.
        name: String,
        /// Also drop its cached renders (render again at the same commit).
        #[arg(long)]
        hard: bool,
        /// Wait until the hub has fetched the application's repositories
        /// again and every cluster reports the commit they resolve to.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (exit code 1, with what
        /// is still awaited).
        #[arg(long, default_value = "2m", value_parser = parse_duration, requires = "wait")]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Register a cluster: issue its agent certificate into --out, or create
    /// a one-time bootstrap token for the agent to enroll with.
    Add {
        /// Name of the cluster (a DNS label; the agent's identity).
        name: String,
        /// Label as key=value (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Issue the agent's certificate now: write tls.crt, tls.key and
        /// ca.crt into this directory (the agent's state dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Create a one-time bootstrap token the agent enrolls with instead
        /// (it carries the hub CA pin).
        #[arg(long)]
        bootstrap_token: bool,
        /// Lifetime of the bootstrap token, e.g. 30m, 24h.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// RBAC of the agent in the printed manifest: `cluster` (every
        /// resource, cluster-wide) or `namespace` (only --namespaces).
        #[arg(long, default_value = "cluster", value_parser = ["cluster", "namespace"])]
        rbac_scope: String,
        /// Namespaces the agent may manage with --rbac-scope namespace.
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Hub URL as the agent's cluster reaches it (default: --hub).
        #[arg(long)]
        hub_url: Option<String>,
        /// Print only the agent's install manifest (implies
        /// --bootstrap-token); so does `-o yaml`.
        #[arg(long)]
        manifest_only: bool,
    },
    /// List clusters.
    #[command(visible_alias = "ls")]
    List,
    /// Show one cluster: labels, annotations, connection, agent, generation.
    Get {
        /// The cluster.
        name: String,
    },
    /// Remove a cluster and revoke its certificate; asks first on a
    /// terminal, refused elsewhere without -y. A connected agent is told:
    /// it stops enforcing (its objects stay), or with --cascade deletes
    /// them first.
    #[command(visible_alias = "rm")]
    Remove {
        /// The cluster.
        name: String,
        /// The connected agent deletes the objects it manages (as `app
        /// delete --cascade`) before it stops.
        #[arg(long)]
        cascade: bool,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Set (KEY=VALUE) or remove (KEY-) labels.
    Label {
        /// The cluster.
        name: String,
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        /// Labels to set (KEY=VALUE) or remove (KEY-).
        edits: Vec<String>,
    },
    /// Set (KEY=VALUE) or remove (KEY-) annotations.
    Annotate {
        /// The cluster.
        name: String,
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        /// Annotations to set (KEY=VALUE) or remove (KEY-).
        edits: Vec<String>,
    },
    /// Upsert clusters declared as `Cluster` (flotilla.dev/v1alpha1)
    /// resources or Argo CD cluster Secrets (inventory only).
    Apply {
        /// YAML file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// Name of the token (several tokens may share one).
        name: String,
        /// Only List/Get/Version calls (e.g. for CI systems): role:readonly.
        #[arg(long)]
        read_only: bool,
        /// An RBAC group or role of the token (repeat); none and no
        /// --read-only is role:admin.
        #[arg(long = "group", visible_alias = "role")]
        groups: Vec<String>,
        /// Refuse the token after this long (e.g. 12h); default: never.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List tokens (names only).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke every token with this name.
    Revoke {
        /// Name of the tokens to revoke.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Register a repository.
    Add {
        /// Repository URL: https://, ssh://user@host/path, user@host:path, file://, or a Helm repository with --type helm.
        url: String,
        /// Directory scanned for Application resources (empty: manifests only).
        #[arg(long, default_value = "")]
        apps_path: String,
        /// Branch, tag or commit.
        #[arg(long, default_value = "HEAD")]
        revision: String,
        /// Poll interval in seconds (0: the hub's default).
        #[arg(long, default_value_t = 0)]
        poll_interval_secs: i64,
        /// User name for https (default "git", for token-only hosts).
        #[arg(long, requires = "password_file")]
        username: Option<String>,
        /// File holding the https password or token (`-` for stdin); the
        /// hub stores it and never shows it.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// File holding the ssh private key for an ssh URL
        /// (`ssh://user@host[:port]/path` or `user@host:path`; `-` for
        /// stdin); the hub stores it and never shows it.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["password_file", "username"])]
        ssh_private_key_path: Option<PathBuf>,
        /// Do not verify the ssh server's host key (by default it must be in
        /// the hub's --ssh-known-hosts file).
        #[arg(long, requires = "ssh_private_key_path")]
        insecure_ignore_host_key: bool,
        /// `git`, or `helm` for a Helm chart repository (index.yaml) used
        /// by applications with `source.chart`; its index is fetched
        /// instead of Git.
        #[arg(long = "type", value_name = "git|helm", default_value = "git")]
        kind: String,
        /// Register it without checking that the hub can reach it (by
        /// default the hub fetches the revision, or the Helm index, first).
        #[arg(long)]
        skip_check: bool,
        /// Scope the credentials (--password-file, --ssh-private-key-path
        /// or in the URL) to this project: only its applications and
        /// ApplicationSets may use them; another project's are refused.
        #[arg(long, value_name = "PROJECT")]
        project: Option<String>,
    },
    /// Unregister a repository and drop its stored credentials; asks first
    /// on a terminal, refused elsewhere without -y. Refused while
    /// applications use it or were declared by it, unless --force.
    #[command(visible_alias = "rm")]
    Remove {
        /// The repository URL, as `repo list` shows it.
        url: String,
        /// Remove it even though applications use it or were declared by
        /// it (they stay, no longer updated from it).
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// List repositories.
    #[command(visible_alias = "ls")]
    List,
    /// Show one repository (by its URL, as `repo list` shows it).
    Get {
        /// The repository URL, as `repo list` shows it.
        url: String,
    },
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerAuth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub(crate) type Client = HubApiClient<InterceptedService<Channel, BearerAuth>>;

pub use config::config_path;
use config::{Resolved, resolve};

async fn client(r: &Resolved) -> Result<Client> {
    let token = r.token.as_deref().ok_or_else(|| {
        usage(
            "no API token: pass --token or --token-file (or set FLOTILLA_TOKEN / FLOTILLA_TOKEN_FILE, or run `flotilla login`)",
        )
    })?;
    let header: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| usage("the API token contains characters not allowed in a header"))?;
    let channel = channel(r).await?;
    Ok(HubApiClient::with_interceptor(channel, BearerAuth(header))
        .max_decoding_message_size(r.max_message_size)
        .max_encoding_message_size(r.max_message_size))
}

/// A connection to the hub (TLS checked against the CA), no token.
async fn channel(r: &Resolved) -> Result<Channel> {
    let mut endpoint = Channel::from_shared(r.hub.clone())
        .map_err(|e| usage(format!("invalid hub URL {:?}: {e}", r.hub)))?
        .connect_timeout(Duration::from_secs(10));
    if r.hub.starts_with("https://") {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = r.ca_pem.clone().ok_or_else(|| {
            usage("--ca-file (or FLOTILLA_CA_FILE) is required: the hub's DATA/ca.crt")
        })?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .context("TLS configuration")?;
    }
    endpoint.connect().await.map_err(|e| {
        CliError::Unreachable {
            hub: r.hub.clone(),
            cause: error_chain(&e),
        }
        .into()
    })
}

/// Every application, page by page: each response stays under the CLI's
/// message limit however many applications there are.
pub(crate) async fn list_all_applications(
    c: &mut Client,
    max_message_size: usize,
) -> Result<Vec<pb::Application>> {
    let mut apps = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_applications(pb::ListApplicationsRequest {
                page_size: 500,
                page_token,
                max_response_size: max_message_size as u64,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        apps.extend(page.applications);
        if page.next_page_token.is_empty() {
            return Ok(apps);
        }
        page_token = page.next_page_token;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        // Transport layers repeat their cause's words ("tcp connect
        // error: tcp connect error: ...").
        let text = c.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = c.source();
    }
    parts.join(": ")
}

pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    CliError::Hub(s).into()
}

/// Runs one CLI invocation, writing to stdout.
///
/// # Errors
/// Any failure, with a message for people; the binary exits non-zero.
pub async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    if let Command::Appset(appset::AppsetCommand::Generate(args)) = &cli.command {
        // Offline: no hub.
        return appset::generate(args, g.output);
    }
    match &cli.command {
        Command::Context { name } => return config::context_command(g, name.as_deref()),
        Command::Logout { name } => return config::logout(g, name.as_deref()),
        Command::Login {
            name,
            sso: true,
            no_browser,
        } => return sso::login(g, name.clone(), *no_browser).await,
        Command::Rbac(cmd) => {
            if let Some(done) = rbac::run_local(g, cmd) {
                return done;
            }
        }
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "flotilla",
                &mut script,
            );
            exit::write_stdout(&String::from_utf8_lossy(&script));
            return Ok(());
        }
        _ => {}
    }
    let resolved = resolve(g)?;
    let mut c = client(&resolved).await?;
    let hub = resolved.hub.clone();
    match cli.command {
        Command::Login { name, .. } => {
            c.version(pb::VersionRequest {}).await.map_err(status_err)?;
            config::login(g, &resolved, name)?;
        }
        Command::Logout { .. } | Command::Context { .. } | Command::Completion { .. } => {}
        Command::Token(cmd) => token(g, &mut c, cmd).await?,
        Command::Version => {
            let v = c
                .version(pb::VersionRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            let client = env!("CARGO_PKG_VERSION");
            print_out(
                g.output,
                json!({"version": v.version, "hub": v.version, "client": client}),
                || format!("client {client}\nhub {}\n", v.version),
            );
        }
        Command::Refresh => {
            c.refresh(pb::RefreshRequest::default())
                .await
                .map_err(status_err)?;
            print_out(g.output, json!({"refreshed": true}), || {
                "refresh requested\n".into()
            });
        }
        Command::App(cmd) => app(g, &mut c, cmd).await?,
        Command::Cluster(cmd) => cluster(g, &hub, &mut c, cmd).await?,
        Command::Repo(cmd) => repo(g, &mut c, cmd).await?,
        Command::Appset(cmd) => appset::run(g, &mut c, cmd).await?,
        Command::Proj(cmd) => proj::run(g, &mut c, cmd).await?,
        Command::Rollout(cmd) => rollout::run(g, &mut c, cmd).await?,
        Command::Rbac(cmd) => rbac::run(g, &mut c, cmd).await?,
        Command::Audit(args) => rbac::audit(g, &mut c, args).await?,
    }
    Ok(())
}

pub(crate) fn print_out(output: Output, value: Value, table: impl FnOnce() -> String) {
    match output {
        Output::Json => out!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ),
        Output::Yaml => out!("{}", serde_saphyr::to_string(&value).unwrap_or_default()),
        Output::Table | Output::Wide => out!("{}", table()),
    }
}

async fn app(g: &Global, c: &mut Client, cmd: AppCommand) -> Result<()> {
    match cmd {
        AppCommand::List(filters) => {
            let filter = filter::Filter::new(filters)?;
            let apps: Vec<pb::Application> = list_all_applications(c, g.max_message_size)
                .await?
                .into_iter()
                .filter(|a| filter.matches(a))
                .collect();
            print_out(
                g.output,
                Value::Array(apps.iter().map(app_json).collect()),
                || app_list_table(&apps, g.output == Output::Wide),
            );
        }
        AppCommand::Get { name, watch: true } => ops::watch(g, c, &name).await?,
        AppCommand::Get { name, watch: false } => {
            let a = c
                .get_application(pb::GetApplicationRequest { name })
                .await
                .map_err(status_err)?
                .into_inner();
            print_app(g.output, &a);
            // Shown above; the exit code tells scripts (docs/cli.md).
            let errors = lifecycle::app_errors(&a);
            if !errors.is_empty() {
                eprintln!("error: {}: {}", a.name, errors.join("; "));
                return Err(ExitStatus(1).into());
            }
        }
        AppCommand::Create { file, upsert } => {
            edit::create(g, c, &read_input(&file)?, upsert).await?;
        }
        AppCommand::Set(a) => edit::set(g, c, a).await?,
        AppCommand::Manifests { name } => edit::manifests(g, c, &name).await?,
        AppCommand::Patch(a) => edit::patch(g, c, a).await?,
        AppCommand::Refresh {
            name,
            hard,
            wait,
            timeout,
        } => ops::refresh(g, c, &name, hard, wait.then_some(timeout)).await?,
        AppCommand::Sync(a) => ops::sync(g, c, a).await?,
        AppCommand::History { name } => ops::history(g, c, &name).await?,
        AppCommand::Rollback {
            name,
            id,
            prune,
            timeout,
        } => ops::rollback(g, c, &name, id, prune, timeout).await?,
        AppCommand::Wait(a) => ops::wait(g, c, a).await?,
        AppCommand::TerminateOp { name } => ops::terminate_op(g, c, &name).await?,
        AppCommand::Diff { name, cluster } => ops::diff(g, c, &name, cluster).await?,
        AppCommand::Delete(a) => lifecycle::delete(g, c, a).await?,
    }
    Ok(())
}

/// `app list`'s table; `wide` adds the project, source and target, and
/// shows full revisions.
fn app_list_table(apps: &[pb::Application], wide: bool) -> String {
    let count = |a: &pb::Application, ok: &dyn Fn(&pb::AppStatus) -> bool| {
        a.clusters
            .iter()
            .filter(|s| s.status.as_ref().is_some_and(ok))
            .count()
    };
    let rows = apps
        .iter()
        .map(|a| {
            let total = a.clusters.len();
            let synced = count(a, &|s| s.sync == pb::SyncStatus::Synced as i32);
            let healthy = count(a, &|s| s.health == pb::HealthStatus::Healthy as i32);
            let revision = if wide {
                if a.revision.is_empty() {
                    "-".to_owned()
                } else {
                    a.revision.clone()
                }
            } else {
                short(&a.revision)
            };
            let mut row = vec![a.name.clone()];
            if wide {
                row.push(filter::definition(a).project);
            }
            row.push(a.destination.clone());
            if wide {
                let source = if a.chart.is_empty() {
                    format!("{} {}", a.repo_url, a.path)
                } else {
                    format!("{} chart {}", a.repo_url, a.chart)
                };
                row.push(source.trim().to_owned());
                row.push(a.target_revision.clone());
            }
            row.extend([
                revision,
                format!("{synced}/{total}"),
                format!("{healthy}/{total}"),
                a.origin.clone(),
                one_line(&a.error),
            ]);
            row
        })
        .collect();
    let headers: &[&str] = if wide {
        &[
            "NAME",
            "PROJECT",
            "DESTINATION",
            "SOURCE",
            "TARGET",
            "REVISION",
            "SYNCED",
            "HEALTHY",
            "ORIGIN",
            "ERROR",
        ]
    } else {
        &[
            "NAME",
            "DESTINATION",
            "REVISION",
            "SYNCED",
            "HEALTHY",
            "ORIGIN",
            "ERROR",
        ]
    };
    table(headers, rows)
}

/// `app get`'s output.
fn print_app(output: Output, a: &pb::Application) {
    print_out(output, app_json(a), || {
        let mut out = String::new();
        for (k, v) in [
            ("Name", a.name.as_str()),
            ("Origin", &a.origin),
            ("Repository", &a.repo_url),
            if a.chart.is_empty() {
                ("Path", &a.path)
            } else {
                ("Chart", &a.chart)
            },
            ("Target", &a.target_revision),
            ("Revision", &a.revision),
            ("Destination", &a.destination),
            ("Namespace", &a.namespace),
        ] {
            out.push_str(&format!("{k:<12} {v}\n"));
        }
        for (i, src) in a.sources.iter().enumerate() {
            let what = if src.chart.is_empty() {
                format!("path {}", src.path)
            } else {
                format!("chart {}", src.chart)
            };
            let r = if src.r#ref.is_empty() {
                String::new()
            } else {
                format!(" (ref {})", src.r#ref)
            };
            let at = a.revisions.get(i).map(|r| short(r)).unwrap_or_default();
            out.push_str(&format!(
                "{:<12} {} {what}{r} {} {at}\n",
                format!("Source {}", i + 1),
                src.repo_url,
                src.target_revision,
            ));
        }
        if !a.finalizers.is_empty() {
            out.push_str(&format!(
                "{:<12} {}\n",
                "Finalizers",
                a.finalizers.join(", ")
            ));
        }
        if !a.pinned_revision.is_empty() {
            let by = if a.pinned_by.is_empty() {
                String::new()
            } else {
                format!(" by {}", a.pinned_by)
            };
            let git = if a.git_revision.is_empty() || a.git_revision == a.pinned_revision {
                String::new()
            } else {
                format!(
                    "; Git is at {} (OutOfSync until a sync without --revision)",
                    short(&a.git_revision)
                )
            };
            out.push_str(&format!(
                "{:<12} {}{by}{git}\n",
                "Pinned",
                short(&a.pinned_revision)
            ));
        }
        if !a.error.is_empty() {
            out.push_str(&format!("{:<12} {}\n", "Error", one_line(&a.error)));
        }
        out.push('\n');
        let rows = a
            .clusters
            .iter()
            .map(|s| {
                let st = s.status.clone().unwrap_or_default();
                vec![
                    s.cluster.clone(),
                    short(&st.revision),
                    sync_name(s.status.as_ref().map(|s| s.sync)).to_owned(),
                    health_name(s.status.as_ref().map(|s| s.health)).to_owned(),
                    if s.status.is_none() {
                        "no status reported yet".to_owned()
                    } else {
                        one_line(&st.message)
                    },
                ]
            })
            .collect();
        out.push_str(&table(
            &["CLUSTER", "REVISION", "SYNC", "HEALTH", "MESSAGE"],
            rows,
        ));
        let resources: Vec<Vec<String>> = a
            .clusters
            .iter()
            .flat_map(|c| {
                let rs = c
                    .status
                    .as_ref()
                    .map(|s| s.resources.clone())
                    .unwrap_or_default();
                rs.into_iter().map(move |r| {
                    let k = r.key.unwrap_or_default();
                    let name = if k.namespace.is_empty() {
                        format!("{}/{}", k.kind, k.name)
                    } else {
                        format!("{}/{}/{}", k.kind, k.namespace, k.name)
                    };
                    let message = if r.message.is_empty() {
                        r.drift.first().cloned().unwrap_or_default()
                    } else {
                        one_line(&r.message)
                    };
                    vec![
                        c.cluster.clone(),
                        name,
                        sync_name(Some(r.sync)).to_owned(),
                        health_name(Some(r.health)).to_owned(),
                        message,
                    ]
                })
            })
            .collect();
        if !resources.is_empty() {
            out.push('\n');
            out.push_str(&table(
                &["CLUSTER", "RESOURCE", "SYNC", "HEALTH", "MESSAGE"],
                resources,
            ));
        }
        out.push_str(&hooks_and_conditions(a));
        out
    });
}

pub(crate) fn read_input(file: &Path) -> Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| usage(format!("label {l:?} must be KEY=VALUE")))?;
            if k.is_empty() {
                return Err(usage(format!("label {l:?} has an empty key")));
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

async fn cluster(g: &Global, hub: &str, c: &mut Client, cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Add {
            name,
            labels,
            out,
            bootstrap_token,
            ttl,
            rbac_scope,
            namespaces,
            hub_url,
            manifest_only,
        } => {
            let labels = parse_labels(&labels)?;
            let manifest_only = manifest_only || (g.output == Output::Yaml && out.is_none());
            let bootstrap_token = bootstrap_token || manifest_only;
            if rbac_scope == "namespace" && namespaces.is_empty() {
                return Err(usage("--rbac-scope namespace needs --namespaces a,b"));
            }
            if out.is_none() && !bootstrap_token {
                return Err(usage(
                    "pass --out DIR (issue the agent certificate now) or --bootstrap-token (the agent enrolls)",
                ));
            }
            if let Some(out) = &out {
                std::fs::create_dir_all(out)
                    .with_context(|| format!("creating {}", out.display()))?;
            }
            let resp = c
                .add_cluster(pb::AddClusterRequest {
                    name: name.clone(),
                    labels: labels.into_iter().collect(),
                    issue_certificate: out.is_some(),
                    create_bootstrap_token: bootstrap_token,
                    token_ttl_secs: ttl.as_secs().try_into().unwrap_or(i64::MAX),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let mut command = None;
            if let Some(out) = &out {
                let write = |file: &str, content: &str, private: bool| -> Result<()> {
                    let path = out.join(file);
                    if private {
                        crate::pki::write_private(&path, content.as_bytes())
                    } else {
                        std::fs::write(&path, content)
                    }
                    .with_context(|| format!("writing {}", path.display()))
                };
                write("tls.crt", &resp.certificate_pem, false)?;
                write("tls.key", &resp.key_pem, true)?;
                write("ca.crt", &resp.ca_pem, false)?;
                command = Some(format!(
                    "flotilla-agent --hub {hub} --state-dir {}",
                    out.display()
                ));
            }
            let mut manifest = None;
            if !resp.bootstrap_token.is_empty() {
                let install = crate::chart::AgentInstall {
                    hub_url: hub_url.unwrap_or_else(|| hub.to_owned()),
                    token: resp.bootstrap_token.clone(),
                    ca_pin: resp.ca_pin.clone(),
                    rbac_scope,
                    namespaces,
                };
                if let Some(warning) = install.hub_url_warning() {
                    eprintln!("warning: {warning}");
                }
                manifest = Some(
                    crate::chart::agent_manifest(&install)
                        .context("rendering the agent manifest")?,
                );
                command.get_or_insert_with(|| {
                    format!(
                        "FLOTILLA_TOKEN='{}' flotilla-agent --hub {} --state-dir ./flotilla-agent-{name}",
                        install.token, install.hub_url
                    )
                });
            }
            if manifest_only {
                out!("{}", manifest.unwrap_or_default());
                return Ok(());
            }
            let cluster = resp.cluster.clone().unwrap_or_default();
            print_out(
                g.output,
                json!({
                    "cluster": cluster_json(&cluster),
                    "stateDir": out,
                    "agentCommand": command,
                    "manifest": manifest,
                    "bootstrapToken": resp.bootstrap_token,
                    "caPin": resp.ca_pin,
                    "tokenExpiresMs": resp.token_expires_ms,
                }),
                || {
                    let mut text = format!("cluster {name} added\n");
                    if let (Some(out), Some(command)) = (&out, &command) {
                        text.push_str(&format!(
                            "credentials written to {}\nrun the agent with:\n  {command}\n",
                            out.display()
                        ));
                    }
                    if !resp.bootstrap_token.is_empty() {
                        text.push_str(&format!(
                            "bootstrap token (single use, expires in {}s):\n  {}\nhub CA pin: sha256:{}\n",
                            ttl.as_secs(),
                            resp.bootstrap_token,
                            resp.ca_pin
                        ));
                        if let (None, Some(command)) = (&out, &command) {
                            text.push_str(&format!(
                                "run the agent outside a cluster with:\n  {command}\n"
                            ));
                        }
                        if let Some(manifest) = &manifest {
                            text.push_str(&format!(
                                "or install it in the cluster with `kubectl apply --server-side -f -`:\n{manifest}"
                            ));
                        }
                    }
                    text
                },
            );
        }
        ClusterCommand::List => {
            let clusters = c
                .list_clusters(pb::ListClustersRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .clusters;
            print_out(
                g.output,
                Value::Array(clusters.iter().map(cluster_json).collect()),
                || {
                    let wide = g.output == Output::Wide;
                    let rows = clusters
                        .iter()
                        .map(|c| {
                            let mut row = vec![
                                c.name.clone(),
                                labels_str(&c.labels),
                                if c.connected { "yes" } else { "no" }.to_owned(),
                                get::rfc3339(c.last_seen_ms),
                                if c.agent_version.is_empty() {
                                    "-".into()
                                } else {
                                    c.agent_version.clone()
                                },
                                format!("{}/{}", c.acked_generation, c.generation),
                            ];
                            if wide {
                                row.push(labels_str(&c.annotations));
                                row.push(if c.server.is_empty() {
                                    "-".into()
                                } else {
                                    c.server.clone()
                                });
                            }
                            row
                        })
                        .collect();
                    let mut headers = vec![
                        "NAME",
                        "LABELS",
                        "CONNECTED",
                        "LAST SEEN",
                        "AGENT VERSION",
                        "GENERATION (ACKED/DESIRED)",
                    ];
                    if wide {
                        headers.extend(["ANNOTATIONS", "SERVER"]);
                    }
                    table(&headers, rows)
                },
            );
        }
        ClusterCommand::Label { name, edits } => {
            appset::label(g, c, &name, &edits, false).await?;
        }
        ClusterCommand::Annotate { name, edits } => {
            appset::label(g, c, &name, &edits, true).await?;
        }
        ClusterCommand::Apply { file } => appset::apply_clusters(g, c, &file).await?,
        ClusterCommand::Get { name } => {
            let cluster = find_cluster(c, &name).await?;
            print_out(g.output, cluster_json(&cluster), || cluster_text(&cluster));
        }
        ClusterCommand::Remove { name, cascade, yes } => {
            let question = if cascade {
                format!(
                    "Are you sure you want to remove cluster '{name}' and delete every object its agent manages?"
                )
            } else {
                format!(
                    "Are you sure you want to remove cluster '{name}'? Its agent's certificate is revoked."
                )
            };
            if !lifecycle::confirmed(true, yes, &question, &format!("removing cluster {name}"))? {
                exit::outln!("The command to remove cluster '{name}' was cancelled.");
                return Ok(());
            }
            let r = c
                .remove_cluster(pb::RemoveClusterRequest {
                    name: name.clone(),
                    cascade,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let agent = match (r.connected, cascade) {
                (true, true) => "its agent deletes the objects it manages, then stops",
                (true, false) => "its agent stops managing it; the objects stay",
                (false, true) => {
                    "its agent is not connected: nothing was deleted (delete the objects and uninstall the agent by hand)"
                }
                (false, false) => "its agent is not connected; the objects stay",
            };
            print_out(
                g.output,
                json!({"removed": name, "cascade": cascade, "agentConnected": r.connected}),
                || format!("cluster {name} removed; its certificate is revoked; {agent}\n"),
            );
        }
    }
    Ok(())
}

async fn token(g: &Global, c: &mut Client, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            name,
            read_only,
            groups,
            expires_in,
        } => {
            let resp = c
                .create_token(pb::CreateTokenRequest {
                    name,
                    read_only,
                    groups,
                    expires_in_secs: expires_in
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)),
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let info = resp.info.unwrap_or_default();
            print_out(
                g.output,
                json!({"name": info.name, "readOnly": info.read_only, "groups": info.groups, "token": resp.token}),
                || {
                    format!(
                        "token {} created{} with {} (shown only once):\n{}\n",
                        info.name,
                        if info.read_only { " (read-only)" } else { "" },
                        info.groups.join(", "),
                        resp.token
                    )
                },
            );
        }
        TokenCommand::List => {
            let tokens = c
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .tokens;
            print_out(
                g.output,
                Value::Array(
                    tokens
                        .iter()
                        .map(|t| json!({"name": t.name, "readOnly": t.read_only, "subject": t.subject, "groups": t.groups, "createdMs": t.created_ms, "created": get::rfc3339_json(t.created_ms), "expiresMs": t.expires_ms}))
                        .collect(),
                ),
                || {
                    let rows = tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                if t.read_only { "read-only" } else { "read-write" }.to_owned(),
                                t.subject.clone(),
                                t.groups.join(","),
                                get::rfc3339(t.created_ms),
                            ]
                        })
                        .collect();
                    table(&["NAME", "ACCESS", "SUBJECT", "GROUPS", "CREATED"], rows)
                },
            );
        }
        TokenCommand::Revoke { name } => {
            c.revoke_token(pb::RevokeTokenRequest { name: name.clone() })
                .await
                .map_err(status_err)?;
            print_out(g.output, json!({"revoked": name}), || {
                format!("token {name} revoked\n")
            });
        }
    }
    Ok(())
}

async fn repo(g: &Global, c: &mut Client, cmd: RepoCommand) -> Result<()> {
    match cmd {
        RepoCommand::Add {
            url,
            apps_path,
            revision,
            poll_interval_secs,
            username,
            password_file,
            ssh_private_key_path,
            insecure_ignore_host_key,
            kind,
            skip_check,
            project,
        } => {
            let project = project.unwrap_or_default();
            let password = match &password_file {
                Some(f) => Some(read_input(f)?.trim().to_owned()),
                None => None,
            };
            let ssh_private_key = match &ssh_private_key_path {
                Some(f) => {
                    let key = read_input(f)?;
                    // Checked before the repository is registered, so a
                    // wrong file leaves nothing half done.
                    if key.trim().is_empty() {
                        bail!("the ssh private key file is empty");
                    }
                    if !key.trim_start().starts_with("-----BEGIN ") {
                        bail!("{} is not an OpenSSH or PEM private key", f.display());
                    }
                    if !crate::source::is_ssh_url(&url) {
                        return Err(usage(
                            "--ssh-private-key-path needs an ssh URL (ssh://user@host/path or user@host:path)",
                        ));
                    }
                    Some(key)
                }
                None => None,
            };
            let url_for_creds = url.clone();
            // "added" only when it is new; "updated" or "unchanged" when a
            // repository of that URL was registered already.
            let bare = crate::source::split_credentials(url.trim())
                .map_or_else(|_| url.trim().to_owned(), |(bare, _)| bare);
            let before = c
                .list_repositories(pb::ListRepositoriesRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .repositories
                .into_iter()
                .find(|r| r.url == bare);
            let sets_credentials = password_file.is_some() || ssh_private_key_path.is_some();
            let in_url = crate::source::split_credentials(url.trim())
                .is_ok_and(|(_, embedded)| embedded.is_some());
            if !project.is_empty() && !sets_credentials && !in_url {
                return Err(usage(
                    "--project scopes the repository's credentials: give them with --password-file, --ssh-private-key-path or in the URL",
                ));
            }
            // Checked before anything is registered (the hub checks again
            // when it stores the credentials).
            if !project.is_empty() && project != "default" {
                c.get_project(pb::GetProjectRequest {
                    name: project.clone(),
                })
                .await
                .map_err(|s| {
                    if s.code() == tonic::Code::NotFound {
                        usage(format!(
                            "--project {project:?}: no such project, so the credentials cannot be scoped to it"
                        ))
                    } else {
                        status_err(s)
                    }
                })?;
            }
            if !skip_check {
                // Through the hub, with the credentials given here (or
                // those it stores): what it reaches is what counts.
                c.check_repository(pb::CheckRepositoryRequest {
                    url: url.clone(),
                    r#type: kind.clone(),
                    revision: revision.clone(),
                    username: username.clone().unwrap_or_default(),
                    password: password.clone().unwrap_or_default(),
                    ssh_private_key: ssh_private_key.clone().unwrap_or_default(),
                    insecure_ignore_host_key,
                })
                .await
                .map_err(|s| {
                    let mut s = s;
                    if s.code() == tonic::Code::FailedPrecondition {
                        s = tonic::Status::failed_precondition(format!(
                            "{} (--skip-check registers it anyway)",
                            s.message()
                        ));
                    }
                    status_err(s)
                })?;
            }
            let r = c
                .add_repository(pb::AddRepositoryRequest {
                    url,
                    revision,
                    apps_path,
                    poll_interval_secs,
                    r#type: kind,
                    // Scopes credentials in the URL; the others get it
                    // below.
                    project: if in_url {
                        project.clone()
                    } else {
                        String::new()
                    },
                })
                .await
                .map_err(status_err)?
                .into_inner();
            // The hub registers the URL without the credentials it may
            // carry: address it as registered.
            let url_for_creds = crate::source::split_credentials(url_for_creds.trim())
                .map_or(url_for_creds, |(bare, _)| bare);
            let r = match (password, ssh_private_key) {
                (_, Some(ssh_private_key)) => c
                    .set_repository_credentials(pb::SetRepositoryCredentialsRequest {
                        url: url_for_creds,
                        ssh_private_key,
                        insecure_ignore_host_key,
                        project,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner(),
                (Some(password), None) if !password.is_empty() => c
                    .set_repository_credentials(pb::SetRepositoryCredentialsRequest {
                        url: url_for_creds,
                        username: username.unwrap_or_default(),
                        password,
                        project,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner(),
                (Some(_), None) => bail!("the password file is empty"),
                (None, None) => r,
            };
            let settings = |r: &pb::Repository| {
                (
                    r.revision.clone(),
                    r.apps_path.clone(),
                    r.poll_interval_secs,
                    r.r#type.clone(),
                    r.has_credentials,
                    r.insecure_ignore_host_key,
                    r.project.clone(),
                )
            };
            let outcome = match &before {
                None => "added",
                Some(b) if !sets_credentials && settings(b) == settings(&r) => "unchanged",
                Some(_) => "updated",
            };
            let mut v = repo_json(&r);
            if let Some(o) = v.as_object_mut() {
                o.insert("result".into(), json!(outcome));
            }
            print_out(g.output, v, || format!("repository {} {outcome}\n", r.url));
        }
        RepoCommand::Remove { url, force, yes } => {
            if !lifecycle::confirmed(
                true,
                yes,
                &format!("Are you sure you want to remove repository '{url}' and its credentials?"),
                &format!("removing repository {url}"),
            )? {
                exit::outln!("The command to remove repository '{url}' was cancelled.");
                return Ok(());
            }
            let r = c
                .remove_repository(pb::RemoveRepositoryRequest {
                    url: url.clone(),
                    force,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_out(
                g.output,
                json!({"removed": url, "applications": r.applications}),
                || {
                    if r.applications.is_empty() {
                        format!("repository {url} removed\n")
                    } else {
                        format!(
                            "repository {url} removed; applications that used it stay: {}\n",
                            r.applications.join(", ")
                        )
                    }
                },
            );
        }
        RepoCommand::Get { url } => {
            let r = find_repo(c, &url).await?;
            print_out(g.output, repo_json(&r), || repo_text(&r));
        }
        RepoCommand::List => {
            let repos = c
                .list_repositories(pb::ListRepositoriesRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .repositories;
            print_out(
                g.output,
                Value::Array(repos.iter().map(repo_json).collect()),
                || {
                    let wide = g.output == Output::Wide;
                    let rows = repos
                        .iter()
                        .map(|r| {
                            let mut row = vec![
                                r.url.clone(),
                                r.r#type.clone(),
                                r.revision.clone(),
                                if r.apps_path.is_empty() {
                                    "-".into()
                                } else {
                                    r.apps_path.clone()
                                },
                                if wide && !r.last_commit.is_empty() {
                                    r.last_commit.clone()
                                } else {
                                    short(&r.last_commit)
                                },
                                get::rfc3339(r.last_fetch_ms),
                            ];
                            if wide {
                                row.push(format!("{}s", r.poll_interval_secs));
                                row.push(if !r.credentials_template.is_empty() {
                                    format!("template {}", r.credentials_template)
                                } else if r.has_credentials {
                                    "yes".to_owned()
                                } else {
                                    "no".to_owned()
                                });
                            }
                            row.push(one_line(&r.last_error));
                            row
                        })
                        .collect();
                    let mut headers =
                        vec!["URL", "TYPE", "REVISION", "APPS PATH", "COMMIT", "FETCHED"];
                    if wide {
                        headers.extend(["POLL", "CREDENTIALS"]);
                    }
                    headers.push("ERROR");
                    table(&headers, rows)
                },
            );
        }
    }
    Ok(())
}

/// Parses a duration such as `15s`, `500ms`, `2m`, `24h` (plain numbers
/// are seconds).
///
/// # Errors
/// Not a number with one of those units.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration {s:?}: use ms, s, m or h")),
    }
}

/// Display name of a wire sync status.
pub fn sync_name(v: Option<i32>) -> &'static str {
    match v.and_then(|v| pb::SyncStatus::try_from(v).ok()) {
        Some(pb::SyncStatus::Synced) => "Synced",
        Some(pb::SyncStatus::OutOfSync) => "OutOfSync",
        _ => "Unknown",
    }
}

/// Display name of a wire health status.
pub fn health_name(v: Option<i32>) -> &'static str {
    match v.and_then(|v| pb::HealthStatus::try_from(v).ok()) {
        Some(pb::HealthStatus::Healthy) => "Healthy",
        Some(pb::HealthStatus::Progressing) => "Progressing",
        Some(pb::HealthStatus::Degraded) => "Degraded",
        Some(pb::HealthStatus::Suspended) => "Suspended",
        Some(pb::HealthStatus::Missing) => "Missing",
        _ => "Unknown",
    }
}

fn short(rev: &str) -> String {
    // A multi-source revision: each source's, joined.
    if rev.contains(',') {
        return rev.split(',').map(short).collect::<Vec<_>>().join(",");
    }
    if rev.is_empty() {
        "-".into()
    } else if rev.len() >= 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        rev.chars().take(8).collect()
    } else {
        // A chart version (Helm repository source) is shown whole.
        rev.to_owned()
    }
}

fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.is_empty() {
        String::new()
    } else {
        line.to_owned()
    }
}

pub(crate) fn labels_str(labels: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    if sorted.is_empty() {
        return "-".into();
    }
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// Renders rows as an aligned table.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 3;
                l.push_str(cell);
                l.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn operation_json(o: &pb::OperationState) -> Value {
    json!({
        "phase": o.phase, "startedMs": o.started_ms, "finishedMs": o.finished_ms,
        "message": o.message, "commandId": o.command_id, "syncPhase": o.sync_phase,
        "hooks": o.hooks.iter().map(|h| {
            let k = h.key.clone().unwrap_or_default();
            json!({
                "group": k.group, "version": k.version, "kind": k.kind,
                "namespace": k.namespace, "name": k.name, "phase": h.phase,
                "status": h.status, "message": h.message, "deleted": h.deleted,
            })
        }).collect::<Vec<_>>(),
    })
}

/// `KIND/NAMESPACE/NAME` (or `KIND/NAME`) of a resource key.
fn resource_name(k: &pb::ResourceKey) -> String {
    if k.namespace.is_empty() {
        format!("{}/{}", k.kind, k.name)
    } else {
        format!("{}/{}/{}", k.kind, k.namespace, k.name)
    }
}

/// The hooks of each cluster's operation and the application's conditions,
/// as tables (empty when there are none).
fn hooks_and_conditions(a: &pb::Application) -> String {
    let mut out = String::new();
    let hooks: Vec<Vec<String>> = a
        .clusters
        .iter()
        .flat_map(|c| {
            let op = c
                .status
                .as_ref()
                .and_then(|s| s.operation.clone())
                .unwrap_or_default();
            op.hooks.into_iter().map(move |h| {
                let mut message = one_line(&h.message);
                if h.deleted {
                    message = if message.is_empty() {
                        "deleted".to_owned()
                    } else {
                        format!("{message} (deleted)")
                    };
                }
                vec![
                    c.cluster.clone(),
                    h.phase,
                    resource_name(&h.key.unwrap_or_default()),
                    h.status,
                    message,
                ]
            })
        })
        .collect();
    if !hooks.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["CLUSTER", "HOOK", "RESOURCE", "STATUS", "MESSAGE"],
            hooks,
        ));
    }
    let conditions: Vec<Vec<String>> = a
        .clusters
        .iter()
        .flat_map(|c| {
            let cs = c
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            cs.into_iter()
                .map(move |x| vec![c.cluster.clone(), x.r#type, one_line(&x.message)])
        })
        .collect();
    if !conditions.is_empty() {
        out.push('\n');
        out.push_str(&table(&["CLUSTER", "CONDITION", "MESSAGE"], conditions));
    }
    out
}

fn status_json(s: &pb::AppStatus) -> Value {
    json!({
        "revision": s.revision,
        "digest": s.digest,
        "sync": sync_name(Some(s.sync)),
        "health": health_name(Some(s.health)),
        "message": s.message,
        "lastAppliedMs": s.last_applied_ms,
        "observedMs": s.observed_ms,
        "operation": s.operation.as_ref().map(operation_json),
        "requestedOperation": s.requested_operation.as_ref().map(operation_json),
        "conditions": s.conditions.iter().map(|c| json!({"type": c.r#type, "message": c.message})).collect::<Vec<_>>(),
        "resources": s.resources.iter().map(|r| {
            let k = r.key.clone().unwrap_or_default();
            let mut v = json!({
                "group": k.group, "version": k.version, "kind": k.kind,
                "namespace": k.namespace, "name": k.name,
                "sync": sync_name(Some(r.sync)), "health": health_name(Some(r.health)),
                "message": r.message, "drift": r.drift,
            });
            // Argo CD's field, present only when set.
            if r.requires_pruning {
                v["requiresPruning"] = json!(true);
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// JSON form of an application (the `-o json` contract): the Application
/// resource (`apiVersion`, `kind`, `metadata`, `spec`, which `app create
/// -f` takes back) followed by Flotilla's status summary.
pub fn app_json(a: &pb::Application) -> Value {
    let mut v = app_json_single(a);
    if let (Some(Value::Object(mut resource)), Value::Object(summary)) = (edit::resource(a), &v) {
        for (k, x) in summary {
            if !resource.contains_key(k) {
                resource.insert(k.clone(), x.clone());
            }
        }
        v = Value::Object(resource);
    }
    // Multi-source applications list every source and its revision.
    if !a.sources.is_empty()
        && let Some(obj) = v.as_object_mut()
    {
        let sources: Vec<Value> = a
            .sources
            .iter()
            .map(|s| {
                json!({
                    "repoURL": s.repo_url, "path": s.path, "chart": s.chart,
                    "targetRevision": s.target_revision, "ref": s.r#ref, "name": s.name,
                })
            })
            .collect();
        obj.insert("sources".into(), Value::Array(sources));
        obj.insert("revisions".into(), json!(a.revisions));
    }
    v
}

fn app_json_single(a: &pb::Application) -> Value {
    let policy = a.policy.clone().unwrap_or_default();
    json!({
        "name": a.name,
        "origin": a.origin,
        "repoURL": a.repo_url,
        "path": a.path,
        "chart": a.chart,
        "targetRevision": a.target_revision,
        "revision": a.revision,
        "destination": a.destination,
        "namespace": a.namespace,
        "error": a.error,
        "pinnedRevision": a.pinned_revision,
        "pinnedBy": a.pinned_by,
        "gitRevision": a.git_revision,
        "finalizers": a.finalizers,
        "policy": {
            "automated": policy.automated, "prune": policy.prune,
            "selfHeal": policy.self_heal, "syncOptions": policy.sync_options,
        },
        "clusters": a.clusters.iter().map(|c| {
            let mut v = json!({
                "cluster": c.cluster,
                "desiredRevision": c.desired_revision,
                "reported": c.status.is_some(),
            });
            let st = c.status.as_ref().map(status_json).unwrap_or_else(|| json!({
                "revision": "", "digest": "", "sync": "Unknown", "health": "Unknown",
                "message": "", "lastAppliedMs": 0, "observedMs": 0, "resources": [],
            }));
            if let (Some(obj), Value::Object(st)) = (v.as_object_mut(), st) {
                obj.extend(st);
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// JSON form of a cluster.
pub fn cluster_json(c: &pb::Cluster) -> Value {
    let labels: BTreeMap<_, _> = c.labels.iter().collect();
    let annotations: BTreeMap<_, _> = c.annotations.iter().collect();
    json!({
        "name": c.name,
        "labels": labels,
        "annotations": annotations,
        "connected": c.connected,
        "lastSeenMs": c.last_seen_ms,
        "lastSeen": get::rfc3339_json(c.last_seen_ms),
        "agentVersion": c.agent_version,
        "generation": c.generation,
        "ackedGeneration": c.acked_generation,
        "server": c.server,
    })
}

/// JSON form of a repository.
pub fn repo_json(r: &pb::Repository) -> Value {
    json!({
        "url": r.url,
        "type": r.r#type,
        "revision": r.revision,
        "appsPath": r.apps_path,
        "pollIntervalSecs": r.poll_interval_secs,
        "lastCommit": r.last_commit,
        "lastError": r.last_error,
        "lastFetchMs": r.last_fetch_ms,
        "lastFetch": get::rfc3339_json(r.last_fetch_ms),
        "hasCredentials": r.has_credentials,
        "insecureIgnoreHostKey": r.insecure_ignore_host_key,
        "credentialsTemplate": r.credentials_template,
        "project": r.project,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_to_prune_says_so_in_json_as_argo_cd() {
        let resource = |name: &str, requires_pruning: bool| pb::ResourceStatus {
            key: Some(pb::ResourceKey {
                version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: "web".into(),
                name: name.into(),
                ..Default::default()
            }),
            sync: pb::SyncStatus::OutOfSync as i32,
            requires_pruning,
            ..Default::default()
        };
        let status = pb::AppStatus {
            resources: vec![resource("old", true), resource("new", false)],
            ..Default::default()
        };
        let v = status_json(&status);
        assert_eq!(v["resources"][0]["requiresPruning"], json!(true));
        assert!(v["resources"][1].get("requiresPruning").is_none(), "{v}");
    }

    #[test]
    fn hooks_and_conditions_show_in_get_and_json() {
        let key = |name: &str| pb::ResourceKey {
            group: "batch".into(),
            version: "v1".into(),
            kind: "Job".into(),
            namespace: "web".into(),
            name: name.into(),
        };
        let status = pb::AppStatus {
            operation: Some(pb::OperationState {
                phase: "Failed".into(),
                sync_phase: "SyncFail".into(),
                hooks: vec![
                    pb::HookResult {
                        key: Some(key("migrate")),
                        phase: "PreSync".into(),
                        status: "Failed".into(),
                        message: "Job has reached the specified backoff limit".into(),
                        deleted: true,
                    },
                    pb::HookResult {
                        key: Some(key("cleanup-x2b4f")),
                        phase: "SyncFail".into(),
                        status: "Succeeded".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            conditions: vec![pb::AppCondition {
                r#type: "SharedResourceWarning".into(),
                message: "Namespace/web is part of applications b and a".into(),
            }],
            ..Default::default()
        };
        let app = pb::Application {
            name: "b".into(),
            clusters: vec![pb::ClusterAppStatus {
                cluster: "sim-1".into(),
                status: Some(status),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = hooks_and_conditions(&app);
        assert_eq!(
            text,
            "\nCLUSTER   HOOK       RESOURCE                STATUS      MESSAGE\n\
             sim-1     PreSync    Job/web/migrate         Failed      Job has reached the specified backoff limit (deleted)\n\
             sim-1     SyncFail   Job/web/cleanup-x2b4f   Succeeded\n\
             \nCLUSTER   CONDITION               MESSAGE\n\
             sim-1     SharedResourceWarning   Namespace/web is part of applications b and a\n"
        );
        let json = app_json(&app);
        let c = &json["clusters"][0];
        assert_eq!(c["operation"]["syncPhase"], "SyncFail");
        assert_eq!(c["operation"]["hooks"][0]["name"], "migrate");
        assert_eq!(c["operation"]["hooks"][0]["deleted"], true);
        assert_eq!(c["conditions"][0]["type"], "SharedResourceWarning");
    }

    /// Every flag and argument of every command says what it is for, and
    /// the connection flags are listed under their own heading.
    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = Cli::command();
        let mut missing = Vec::new();
        walk(&cmd, "flotilla", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        for id in ["hub", "context", "ca_file", "token", "token_file"] {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id().as_str() == id)
                .unwrap();
            assert_eq!(arg.get_help_heading(), Some("Connection"), "{id}");
        }
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONGER"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A     LONGER\nxyz   1\n");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn labels_parse() {
        let l = parse_labels(&["env=prod".into(), "a=".into()]).unwrap();
        assert_eq!(l["env"], "prod");
        assert!(parse_labels(&["bad".into()]).is_err());
    }
}
