//! Agent benchmark against the Kubernetes API simulator; prints a table.
//!
//! 1. Applying N objects (default 1,000 ConfigMaps) through the agent's
//!    engine vs `kubectl apply --server-side` of the same objects.
//! 2. The agent binary enforcing N and 100 objects from its cache (hub
//!    unreachable, so this also exercises offline enforcement): resident
//!    memory and CPU while idle.
//!
//! `cargo bench -p flotilla-agent --bench apply` (`BENCH_OBJECTS=N` to change N).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::cache::{Cache, CachedApp};
use flotilla_agent::cluster::Cluster;
use flotilla_agent::engine::Engine;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

fn objects(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("bench-{i:05}"), "labels": {"bench": "yes"}},
                "data": {"index": i.to_string(), "payload": "x".repeat(256)}})
        })
        .collect()
}

fn bundle(name: &str, namespace: &str, objects: &[Value]) -> Bundle {
    Bundle {
        name: name.into(),
        digest: format!("{name}-1"),
        revision: "bench".into(),
        namespace: namespace.into(),
        policy: Policy {
            automated: true,
            self_heal: true,
            sync_options: vec!["CreateNamespace=true".into()],
            ..Policy::default()
        },
        manifests: objects.iter().map(Value::to_string).collect(),
        ..Bundle::default()
    }
}

async fn kube_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn through_engine(
    client: kube::Client,
    dir: &Path,
    objs: &[Value],
) -> anyhow::Result<Duration> {
    let state = dir.join("engine-state");
    std::fs::create_dir_all(&state)?;
    let cache = Arc::new(Cache::open(&state)?);
    cache.update(|s| {
        s.generation = 1;
        s.apps.insert(
            "bench".into(),
            CachedApp {
                bundle: bundle("bench", "bench-agent", objs),
                ..CachedApp::default()
            },
        );
    })?;
    let (tx, _rx) = watch::channel(None);
    let mut engine = Engine::new(
        Arc::new(Cluster::new(client)),
        cache,
        Arc::new(Notify::new()),
        tx,
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while !engine.pass().await {
        anyhow::ensure!(Instant::now() < deadline, "engine did not converge");
    }
    Ok(started.elapsed())
}

fn through_kubectl(
    kubeconfig: &Path,
    dir: &Path,
    objs: &[Value],
) -> anyhow::Result<Option<Duration>> {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        return Ok(None);
    }
    let ns =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench-kubectl"}});
    let mut items = vec![ns];
    for o in objs {
        let mut o = o.clone();
        o["metadata"]["namespace"] = json!("bench-kubectl");
        items.push(o);
    }
    let file = dir.join("kubectl-objects.json");
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )?;
    let started = Instant::now();
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "apply",
            "--server-side",
            "--validate=false",
            "--field-manager",
            "bench",
            "-f",
        ])
        .arg(&file)
        .output()?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(elapsed))
}

/// Resident set size (KiB) and total CPU ticks of a process, from /proc.
fn proc_stats(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((rss, utime + stime))
}

fn write_credentials(dir: &Path) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench");
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join("ca.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(())
}

/// Runs the agent binary offline over a cache of `n` objects; returns
/// (time to converge, idle RSS MiB, idle CPU % over the window).
async fn agent_binary(
    client: &kube::Client,
    kubeconfig: &Path,
    dir: &Path,
    n: usize,
) -> anyhow::Result<(Duration, f64, f64)> {
    let state = dir.join(format!("agent-{n}"));
    std::fs::create_dir_all(&state)?;
    write_credentials(&state)?;
    let namespace = format!("bench-binary-{n}");
    let cache = Cache::open(&state)?;
    cache.update(|s| {
        s.generation = 1;
        s.apps.insert(
            "bench".into(),
            CachedApp {
                bundle: bundle("bench", &namespace, &objects(n)),
                ..CachedApp::default()
            },
        );
    })?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .arg("--hub")
        .arg("https://127.0.0.1:9") // nothing listens: offline enforcement
        .arg("--state-dir")
        .arg(&state)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stderr(match std::env::var_os("BENCH_AGENT_LOG_FILE") {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path)?),
            None => std::process::Stdio::null(),
        })
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("agent exited"))?;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &namespace);
    let deadline = started + Duration::from_secs(600);
    loop {
        let list = cms
            .list(&kube::api::ListParams::default().labels("bench=yes"))
            .await;
        if list.map(|l| l.items.len()).unwrap_or(0) >= n {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "agent did not converge");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converged = started.elapsed();
    // Settle, then measure an idle window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, ticks0) = proc_stats(pid).ok_or_else(|| anyhow::anyhow!("no /proc stats"))?;
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let (rss, ticks1) = proc_stats(pid).ok_or_else(|| anyhow::anyhow!("no /proc stats"))?;
    child.kill().await?;
    // Kernel clock ticks are 100 Hz on Linux.
    let cpu = (ticks1 - ticks0) as f64 / 100.0 / window.as_secs_f64() * 100.0;
    Ok((converged, rss as f64 / 1024.0, cpu))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let n: usize = std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let sim = flotilla_sim::Simulator::start(flotilla_sim::SimConfig {
        clusters: 1,
        kubeconfig_dir: Some(dir.path().to_owned()),
        ..Default::default()
    })
    .await?;
    let kubeconfig = sim
        .kubeconfig_path("sim-1")
        .ok_or_else(|| anyhow::anyhow!("no kubeconfig"))?;
    let client = kube_client(&kubeconfig).await?;
    let objs = objects(n);

    let engine = through_engine(client.clone(), dir.path(), &objs).await?;
    let kubectl = through_kubectl(&kubeconfig, dir.path(), &objs)?;
    let small = agent_binary(&client, &kubeconfig, dir.path(), 100).await?;
    let large = agent_binary(&client, &kubeconfig, dir.path(), n).await?;

    println!("{:<48} {:>12}", "measurement", "value");
    println!(
        "{:<48} {:>12.2}",
        format!("apply {n} objects: agent engine (s)"),
        engine.as_secs_f64()
    );
    match kubectl {
        Some(k) => println!(
            "{:<48} {:>12.2}",
            format!("apply {n} objects: kubectl --server-side (s)"),
            k.as_secs_f64()
        ),
        None => println!(
            "{:<48} {:>12}",
            format!("apply {n} objects: kubectl --server-side (s)"),
            "n/a"
        ),
    }
    for (count, (converged, rss, cpu)) in [(100, small), (n, large)] {
        println!(
            "{:<48} {:>12.2}",
            format!("agent binary, {count} objects: converge (s)"),
            converged.as_secs_f64()
        );
        println!(
            "{:<48} {:>12.1}",
            format!("agent binary, {count} objects: idle RSS (MiB)"),
            rss
        );
        println!(
            "{:<48} {:>12.1}",
            format!("agent binary, {count} objects: idle CPU (%)"),
            cpu
        );
    }
    sim.shutdown().await;
    Ok(())
}
