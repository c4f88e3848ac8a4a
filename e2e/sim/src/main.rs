//! `flotilla-sim`: serves N simulated Kubernetes clusters until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use flotilla_sim::{SimConfig, Simulator};

/// Kubernetes API simulator hosting many virtual clusters.
#[derive(Parser, Debug)]
#[command(name = "flotilla-sim", version)]
struct Args {
    /// Number of virtual clusters.
    #[arg(long, default_value_t = 1)]
    clusters: usize,
    /// Listen address (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory for sim-K.kubeconfig files.
    #[arg(long)]
    kubeconfig_dir: PathBuf,
    /// Directory to persist state in.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Turn the simulated workload controllers off.
    #[arg(long)]
    no_controllers: bool,
    /// Milliseconds until workloads become available.
    #[arg(long, default_value_t = 1000)]
    rollout_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Handlers first: a harness may signal as soon as it reads the ready lines.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let handle = Simulator::start(SimConfig {
        clusters: args.clusters,
        listen: args.listen,
        kubeconfig_dir: Some(args.kubeconfig_dir),
        state_dir: args.state_dir,
        controllers: !args.no_controllers,
        rollout_delay: Duration::from_millis(args.rollout_delay_ms),
    })
    .await?;
    for name in handle.cluster_names() {
        let kc = handle
            .kubeconfig_path(&name)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!("{name} ready {} kubeconfig {kc}", handle.server_url(&name));
    }
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    handle.shutdown().await;
    Ok(())
}
