//! The quickstart demo: simulated clusters, a hub, one agent per cluster and
//! a Git repository made from `examples/`, converging in front of you.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use flotilla_e2e::fleet::{Fleet, FleetOptions};
use flotilla_proto::{HealthStatus, ListApplicationsRequest, SyncStatus};

/// Run a demo fleet: simulated Kubernetes clusters managed by a Flotilla hub
/// and agents from the example configuration repository.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Number of simulated clusters.
    #[arg(long, default_value_t = 3)]
    clusters: usize,
    /// Exit 0 once every application is Synced and Healthy on every cluster
    /// (non-zero with the status table on timeout).
    #[arg(long)]
    exit_when_synced: bool,
    /// How long --exit-when-synced waits.
    #[arg(long, default_value = "180")]
    timeout_secs: u64,
    /// Address of the hub's web UI (HTTPS).
    #[arg(long, default_value = "127.0.0.1:0")]
    ui_listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_binaries()?;
    println!(
        "starting {} simulated clusters, the hub and one agent per cluster…",
        args.clusters
    );
    let fleet = Fleet::start_with_hub_args(
        FleetOptions {
            clusters: args.clusters,
            poll_interval_secs: 2,
            register_repo: true,
        },
        &["--ui-listen", &args.ui_listen],
    )
    .await?;
    println!("config repository: {}", fleet.repo.dir().display());
    println!(
        "hub: {} (data in {})",
        fleet.hub_url(),
        fleet.hub_data().display()
    );
    for name in fleet.sim.cluster_names() {
        if let Some(path) = fleet.sim.kubeconfig_path(&name) {
            println!("cluster {name}: kubectl --kubeconfig {}", path.display());
        }
    }
    let data = fleet.hub_data();
    println!(
        "CLI: export FLOTILLA_HUB={} FLOTILLA_CA_FILE={} FLOTILLA_TOKEN_FILE={}",
        fleet.hub_url(),
        data.join("ca.crt").display(),
        data.join("admin.token").display()
    );
    // The hub prints its UI line before its API line, which the fleet
    // waited for.
    let ui = fleet
        .hub
        .lines()
        .iter()
        .find_map(|l| {
            l.split("flotilla-hub ui listening on ")
                .nth(1)
                .map(|u| u.trim().to_owned())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the hub did not say where its UI listens (no \"flotilla-hub ui listening on\" in its log)"
            )
        })?;
    let token_file = data.join("admin.token");
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| anyhow::anyhow!("reading the admin token {}: {e}", token_file.display()))?;
    println!(
        "UI: {ui} (the certificate is the hub CA's, {}); log in with the admin token {}",
        data.join("ca.crt").display(),
        token.trim()
    );
    println!();

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last_table = String::new();
    let mut reported_synced = false;
    loop {
        let (table, all_good) = match status_table(&fleet).await {
            Ok(t) => t,
            Err(e) => (format!("hub not answering: {e:#}\n"), false),
        };
        if table != last_table {
            println!("{table}");
            last_table = table.clone();
        }
        if all_good && !reported_synced {
            println!("every application is Synced and Healthy on every cluster");
            reported_synced = true;
            if args.exit_when_synced {
                return Ok(());
            } else {
                println!(
                    "edit {} and commit to see it roll out; Ctrl-C to stop",
                    fleet.repo.dir().display()
                );
            }
        }
        if args.exit_when_synced && Instant::now() >= deadline {
            eprintln!(
                "timed out after {}s; last status:\n{table}",
                args.timeout_secs
            );
            for (name, agent) in &fleet.agents {
                eprintln!("--- agent {name} log tail ---\n{}", agent.tail(15));
            }
            eprintln!("--- hub log tail ---\n{}", fleet.hub.tail(30));
            std::process::exit(1);
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("stopping");
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Builds the hub, agent and CLI binaries next to this one when the demo is
/// started through `cargo run`, so one command is enough on a fresh checkout.
fn ensure_binaries() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let release = flotilla_e2e::bin_dir().ends_with("release");
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--bins",
        "-p",
        "flotilla-hub",
        "-p",
        "flotilla-agent",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!("building flotilla-hub and flotilla-agent failed");
    }
    Ok(())
}

fn sync_name(v: i32) -> &'static str {
    match SyncStatus::try_from(v) {
        Ok(SyncStatus::Synced) => "Synced",
        Ok(SyncStatus::OutOfSync) => "OutOfSync",
        _ => "Unknown",
    }
}

fn health_name(v: i32) -> &'static str {
    match HealthStatus::try_from(v) {
        Ok(HealthStatus::Healthy) => "Healthy",
        Ok(HealthStatus::Progressing) => "Progressing",
        Ok(HealthStatus::Degraded) => "Degraded",
        Ok(HealthStatus::Suspended) => "Suspended",
        Ok(HealthStatus::Missing) => "Missing",
        _ => "Unknown",
    }
}

async fn status_table(fleet: &Fleet) -> anyhow::Result<(String, bool)> {
    let mut api = fleet.api().await?;
    let apps = api
        .list_applications(ListApplicationsRequest::default())
        .await?
        .into_inner()
        .applications;
    let mut rows: BTreeMap<(String, String), [String; 4]> = BTreeMap::new();
    let mut all_good = !apps.is_empty();
    for app in &apps {
        if app.clusters.is_empty() {
            all_good = false;
            rows.insert(
                (app.name.clone(), app.destination.clone()),
                [
                    "-".into(),
                    "Unknown".into(),
                    "Unknown".into(),
                    app.error.clone(),
                ],
            );
        }
        for c in &app.clusters {
            let (rev, sync, health, msg) = match &c.status {
                Some(s) => (
                    s.revision.chars().take(8).collect::<String>(),
                    sync_name(s.sync),
                    health_name(s.health),
                    s.message.clone(),
                ),
                None => ("-".into(), "Unknown", "Unknown", "waiting for agent".into()),
            };
            let current = c
                .status
                .as_ref()
                .is_some_and(|s| s.revision == app.revision);
            if sync != "Synced" || health != "Healthy" || !current {
                all_good = false;
            }
            let msg = if app.error.is_empty() {
                msg
            } else {
                app.error.clone()
            };
            rows.insert(
                (app.name.clone(), c.cluster.clone()),
                [rev, sync.into(), health.into(), msg],
            );
        }
    }
    let mut out = format!(
        "{:<22} {:<8} {:<9} {:<10} {:<12} {}\n",
        "APPLICATION", "CLUSTER", "REVISION", "SYNC", "HEALTH", "MESSAGE"
    );
    for ((app, cluster), [rev, sync, health, msg]) in rows {
        out.push_str(&format!(
            "{app:<22} {cluster:<8} {rev:<9} {sync:<10} {health:<12} {msg}\n"
        ));
    }
    Ok((out, all_good))
}
