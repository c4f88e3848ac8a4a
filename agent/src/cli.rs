//! Command line: run the agent, or assess health of YAML files offline.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tracing::info;

use crate::cache::Cache;
use crate::cluster::Cluster;
use crate::custom_health::HealthRules;
use crate::engine::Engine;
use crate::link::{Link, LinkConfig};

/// Flotilla agent: keeps this cluster at the desired state streamed by the
/// hub and reports status.
#[derive(Debug, Parser)]
#[command(
    name = "flotilla-agent",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Log format on stderr: `text` (coloured only on a terminal) or
    /// `json` (one object per line, for log pipelines). The level filter
    /// is RUST_LOG.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, global = true,
          default_value_t = crate::telemetry::LogFormat::Text)]
    log_format: crate::telemetry::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the health status and message of each object in YAML files,
    /// with the rules the agent uses. No cluster is contacted.
    Health(HealthArgs),
    /// Renew the client certificate now (new key, over mutual TLS) and
    /// exit; a running agent picks it up on its next connection.
    Renew(crate::enroll::RenewArgs),
}

/// Options of the agent itself.
#[derive(Debug, Args)]
struct RunArgs {
    /// Hub URL, e.g. https://hub.example.com:7443.
    #[arg(long, env = "FLOTILLA_HUB")]
    hub: Option<String>,
    /// State directory: tls.crt, tls.key, ca.crt and the desired-state cache.
    #[arg(long, env = "FLOTILLA_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Kubeconfig file; without it the in-cluster configuration (or the
    /// usual kubeconfig inference) is used.
    #[arg(long, env = "FLOTILLA_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig.
    #[arg(long)]
    context: Option<String>,
    /// Directory of custom Lua health checks (`<group>/<Kind>/health.lua`,
    /// as Argo CD's resource customizations).
    #[arg(long, env = "FLOTILLA_HEALTH_CHECKS")]
    health_checks: Option<PathBuf>,
    /// One-time bootstrap token (`flt1.<secret>.<ca-pin>`, from `flotilla
    /// cluster add --bootstrap-token`): used to enroll when the state
    /// directory holds no certificate yet.
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// SHA-256 of the hub CA's public key (hex, optionally `sha256:`);
    /// overrides the pin inside the token.
    #[arg(long, env = "FLOTILLA_CA_PIN")]
    ca_pin: Option<String>,
    /// Namespace of the per-application inventory ConfigMaps.
    #[arg(long, default_value = crate::inventory::DEFAULT_NAMESPACE)]
    inventory_namespace: String,
    /// Plain-HTTP address serving /healthz, /readyz and /metrics
    /// (Prometheus text format), e.g. 0.0.0.0:8081. Off when not given.
    #[arg(long, value_name = "ADDR", env = "FLOTILLA_HEALTH_LISTEN")]
    health_listen: Option<std::net::SocketAddr>,
    /// How long a sync waits for the resource hooks of one wave of a phase
    /// before it deletes them and fails (e.g. `30m`, `1h`).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_hook_timeout)]
    hook_timeout: std::time::Duration,
    /// Largest gRPC message the agent decodes from the hub (bytes, or with
    /// KiB/MiB/GiB); announced to the hub, which sends desired state in
    /// parts and chunks below it.
    #[arg(long, env = "FLOTILLA_MAX_MESSAGE_SIZE", default_value = "16MiB", value_parser = flotilla_proto::wire::parse_size)]
    max_message_size: usize,
    /// Where the desired-state cache is kept besides the state directory:
    /// `cluster` (also as Secrets in the agent's namespace, so a pod
    /// rescheduled onto another node enforces the last state with the hub
    /// down) or `disk` (the state directory only). Default: `cluster` when
    /// the agent runs in a cluster (POD_NAMESPACE set, no --kubeconfig),
    /// else `disk`.
    #[arg(long, env = "FLOTILLA_CACHE_STORE", value_enum)]
    cache_store: Option<CacheStore>,
}

/// Where the desired-state cache is kept (`--cache-store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CacheStore {
    /// The state directory and Secrets in the agent's namespace.
    Cluster,
    /// The state directory only.
    Disk,
}

fn parse_hook_timeout(s: &str) -> Result<std::time::Duration, String> {
    crate::bundle::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("invalid duration {s:?} (e.g. 90s, 30m, 1h)"))
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// YAML files (multi-document).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Directory of custom Lua health checks, as for the agent.
    #[arg(long, env = "FLOTILLA_HEALTH_CHECKS")]
    health_checks: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Runs the command line.
///
/// # Errors
/// Whatever stops the agent, or unreadable files for `health`.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Health(args)) => health_command(&args),
        Some(Command::Renew(args)) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let _telemetry = crate::telemetry::init_with(cli.log_format);
            crate::enroll::renew_command(&args).await
        }
        None => run(cli.run, cli.log_format).await,
    }
}

async fn kube_client(args: &RunArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let options = kube::config::KubeConfigOptions {
                context: args.context.clone(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no --kubeconfig and no in-cluster configuration")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

async fn run(args: RunArgs, log_format: crate::telemetry::LogFormat) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let telemetry = crate::telemetry::init_with(log_format);
    let (Some(hub), Some(state_dir)) = (args.hub.clone(), args.state_dir.clone()) else {
        bail!("--hub and --state-dir are required (or use a subcommand, see --help)");
    };
    // Refused before enrollment spends the token.
    let in_cluster =
        std::env::var("POD_NAMESPACE").is_ok_and(|ns| !ns.is_empty()) && args.kubeconfig.is_none();
    if args.cache_store == Some(CacheStore::Cluster) && !in_cluster {
        bail!(
            "--cache-store cluster needs the agent's namespace: run in a cluster with POD_NAMESPACE set and no --kubeconfig"
        );
    }
    crate::enroll::prepare_state_dir(&state_dir)
        .with_context(|| format!("preparing state directory {}", state_dir.display()))?;
    // Probes and metrics answer from the start: enrollment below may wait
    // for the hub for a long time (and spends the one-time token), and a
    // kubelet that sees no health port kills the pod meanwhile.
    let cache = Arc::new(Cache::open(&state_dir)?);
    if let Some(addr) = args.health_listen {
        let (bound, _) = crate::health_http::serve(addr, cache.clone())
            .await
            .with_context(|| format!("health listener on {addr}"))?;
        println!("flotilla-agent health listening on http://{bound}/healthz");
    }
    if let Some(why) = crate::link::removed_marker(&state_dir) {
        return idle_removed(&state_dir, why.trim(), telemetry).await;
    }
    let client = kube_client(&args).await?;
    // In a cluster (POD_NAMESPACE, no --kubeconfig) the identity also
    // lives in a Secret of the agent's namespace.
    let identity = match (std::env::var("POD_NAMESPACE"), &args.kubeconfig) {
        (Ok(ns), None) if !ns.is_empty() => {
            Some(crate::identity::IdentitySecret::new(client.clone(), &ns))
        }
        _ => None,
    };
    let mut restored = false;
    if let Some(identity) = &identity
        && !crate::enroll::is_enrolled(&state_dir)
    {
        restored = identity
            .restore(&state_dir)
            .await
            .context("reading the identity Secret")?;
    }
    if !crate::enroll::is_enrolled(&state_dir) {
        let Some(token) = args.token.as_deref().filter(|t| !t.trim().is_empty()) else {
            bail!(
                "{} holds no client certificate: pass --token (FLOTILLA_TOKEN) to enroll",
                state_dir.display()
            );
        };
        let token = crate::enroll::Token::parse(token, args.ca_pin.as_deref())?;
        // Retried while the hub is down, busy or rate limiting; a wrong
        // pin or a refused token needs a person and stops the agent.
        crate::enroll::enroll_with_retry(&hub, &state_dir, &token).await?;
    }
    if let Some(identity) = &identity
        && !restored
    {
        identity
            .save(&state_dir)
            .await
            .context("storing the identity Secret")?;
    }
    // The cluster copy of the cache, next to the identity Secret: a new
    // pod (empty state directory) takes the last desired state from it.
    let namespace = identity.as_ref().map(|i| i.namespace().to_owned());
    let cluster_cache = match (args.cache_store, namespace) {
        (Some(CacheStore::Disk), _) => None,
        (None, None) => None,
        (Some(CacheStore::Cluster), None) => bail!(
            "--cache-store cluster needs the agent's namespace: run in a cluster with POD_NAMESPACE set and no --kubeconfig"
        ),
        (_, Some(ns)) => Some(crate::cluster_cache::ClusterCache::new(client.clone(), &ns)),
    };
    if let Some(store) = cluster_cache {
        let written = crate::cluster_cache::restore(&cache, &store).await;
        tokio::spawn(crate::cluster_cache::mirror(cache.clone(), store, written));
    }
    let trigger = Arc::new(Notify::new());
    let cluster = Arc::new(Cluster::with_watches(client, trigger.clone()));
    let (reports_tx, reports_rx) = watch::channel(None);
    let link = Link::new(
        &LinkConfig {
            hub: hub.clone(),
            state_dir: state_dir.clone(),
        },
        cache.clone(),
        trigger.clone(),
        reports_rx,
    )?
    .with_max_message_size(args.max_message_size);
    let cached = cache.snapshot();
    info!(
        hub = %hub,
        cluster = %link.cluster(),
        state_dir = %state_dir.display(),
        cached_generation = cached.generation,
        cached_apps = cached.apps.len(),
        version = crate::link::AGENT_VERSION,
        "flotilla-agent starting"
    );
    let link = link.with_diffs(cluster.clone());
    let rules = health_rules(args.health_checks.as_ref())?;
    if !rules.is_empty() {
        info!(checks = rules.len(), "custom health checks loaded");
    }
    let engine = Engine::new(cluster, cache, trigger, reports_tx)
        .with_health_rules(rules)
        .with_hook_timeout(args.hook_timeout)
        .with_inventory(crate::inventory::Inventory::new(
            args.inventory_namespace.clone(),
        ));
    let reconnect = Arc::new(Notify::new());
    let link = link
        .with_sync_requests(engine.sync_requests())
        .with_terminations(engine.terminations())
        .with_reconnect(reconnect.clone());
    let renewal = tokio::spawn(crate::enroll::renew_loop(
        hub.clone(),
        state_dir.clone(),
        reconnect,
        identity,
    ));
    let removed = tokio::select! {
        () = engine.run() => None,
        removed = link.run() => Some(removed),
        () = shutdown() => {
            info!("flotilla-agent stopping");
            None
        }
    };
    if let Some(removed) = removed {
        // The engine is dropped with the select: nothing is applied or
        // repaired from here on.
        renewal.abort();
        return idle_removed(&state_dir, &removed.message, telemetry).await;
    }
    telemetry.shutdown().await;
    Ok(())
}

/// The hub removed this cluster: manage nothing, say so, and wait for the
/// agent to be uninstalled (exiting would only make Kubernetes restart it).
async fn idle_removed(
    state_dir: &std::path::Path,
    why: &str,
    telemetry: crate::telemetry::TelemetryGuard,
) -> anyhow::Result<()> {
    tracing::error!(
        state_dir = %state_dir.display(),
        "flotilla-agent removed: {why}; this agent manages nothing and idles. Uninstall it, \
         or delete {} and enroll again to manage this cluster again",
        state_dir.join(crate::link::REMOVED_FILE).display()
    );
    crate::metrics::metrics().set_connected(false);
    shutdown().await;
    info!("flotilla-agent stopping");
    telemetry.shutdown().await;
    Ok(())
}

async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One assessed object of the `health` command.
#[derive(Debug, serde::Serialize)]
struct HealthRow {
    file: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
    status: String,
    message: String,
}

fn health_rules(dir: Option<&PathBuf>) -> anyhow::Result<HealthRules> {
    Ok(match dir {
        Some(d) => HealthRules::load(d)?,
        None => HealthRules::builtin(),
    })
}

fn health_command(args: &HealthArgs) -> anyhow::Result<()> {
    let rules = health_rules(args.health_checks.as_ref())?;
    let rows = assess_files(&rules, &args.files)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => print!("{}", health_table(&rows)),
    }
    Ok(())
}

fn assess_files(rules: &HealthRules, files: &[PathBuf]) -> anyhow::Result<Vec<HealthRow>> {
    let mut rows = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .with_context(|| format!("parsing {}", file.display()))?;
        for doc in docs.into_iter().filter(Value::is_object) {
            let h = rules.assess(&doc);
            let field = |p: &str| {
                doc.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            rows.push(HealthRow {
                file: file.display().to_string(),
                api_version: field("/apiVersion"),
                kind: field("/kind"),
                namespace: field("/metadata/namespace"),
                name: field("/metadata/name"),
                status: h.status.to_string(),
                message: h.message,
            });
        }
    }
    Ok(rows)
}

fn health_table(rows: &[HealthRow]) -> String {
    let header = ["KIND", "NAMESPACE", "NAME", "HEALTH", "MESSAGE"];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.kind.as_str(),
                r.namespace.as_str(),
                r.name.as_str(),
                r.status.as_str(),
                r.message.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i + 1 == row.len() {
                    (*c).to_owned()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_table_aligns_columns() {
        let rows = vec![HealthRow {
            file: "f".into(),
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: "default".into(),
            name: "web".into(),
            status: "Healthy".into(),
            message: String::new(),
        }];
        assert_eq!(
            health_table(&rows),
            "KIND        NAMESPACE  NAME  HEALTH   MESSAGE\nDeployment  default    web   Healthy\n"
        );
    }
}
