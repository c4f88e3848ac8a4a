//! Agent benchmark against the Kubernetes API simulator; prints a table.
//!
//! 1. Applying N objects (default 1,000 ConfigMaps, `BENCH_OBJECTS=N`),
//!    agent vs `kubectl apply --server-side`, measured the same way on
//!    both sides: **including process start and discovery**. Each run
//!    starts a process and stops the clock when the objects are applied:
//!    - agent: the `flotilla-agent` binary offline (hub unreachable) over a
//!      cache holding the N objects, from spawn to its `applied` log line
//!      (after it has read the live state, created the namespace, recorded
//!      the inventory and applied every object);
//!    - kubectl: from spawn to exit, with a fresh `--cache-dir` per run so
//!      it discovers the API every time, as the agent does.
//!
//!    Each run applies into a fresh namespace (nothing exists yet on either
//!    side); runs alternate agent and kubectl so load on a shared machine
//!    hits both alike. Also shown: the agent's engine in-process (no
//!    process start; discovery included).
//! 2. The agent binary enforcing 100 and N objects from its cache: resident
//!    memory and CPU while idle (after a 5 s settle, over 10 s).
//!
//! Each measurement runs against its own simulated cluster (and is its own
//! application, namespace and inventory), so no run sees another's
//! objects. Every measurement is repeated (`BENCH_RUNS`, default 5; idle runs
//! `BENCH_IDLE_RUNS`, default 3) and printed as min and median; the load
//! average before and after says how busy the machine was.
//!
//! `cargo bench -p flotilla-agent --bench apply`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::bundle::{Bundle, Policy};
use flotilla_agent::cache::{Cache, CachedApp};
use flotilla_agent::cluster::Cluster;
use flotilla_agent::engine::Engine;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
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

/// A state directory whose cache holds `objs` for namespace `namespace`.
fn agent_state(dir: &Path, name: &str, namespace: &str, objs: &[Value]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_credentials(dir)?;
    let cache = Cache::open(dir)?;
    cache.update(|s| {
        s.generation = 1;
        s.apps.insert(
            name.into(),
            CachedApp {
                bundle: bundle(name, namespace, objs),
                ..CachedApp::default()
            },
        );
    })?;
    Ok(())
}

/// The engine in-process (no process start; a fresh discovery cache).
async fn through_engine(
    client: kube::Client,
    dir: &Path,
    run: usize,
    objs: &[Value],
) -> anyhow::Result<Duration> {
    let state = dir.join(format!("engine-state-{run}"));
    agent_state(
        &state,
        &format!("engine-{run}"),
        &format!("bench-engine-{run}"),
        objs,
    )?;
    let cache = Arc::new(Cache::open(&state)?);
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

/// The agent binary: this build's, or `BENCH_AGENT_BIN` (to compare with
/// another build).
fn agent_command(kubeconfig: &Path, state: &Path) -> tokio::process::Command {
    let bin = std::env::var_os("BENCH_AGENT_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_flotilla-agent").into());
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--hub")
        .arg("https://127.0.0.1:9") // nothing listens: offline enforcement
        .arg("--state-dir")
        .arg(state)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .kill_on_drop(true);
    cmd
}

/// The agent binary from spawn to its `applied` log line.
async fn through_agent(
    kubeconfig: &Path,
    dir: &Path,
    run: usize,
    objs: &[Value],
) -> anyhow::Result<Duration> {
    let state = dir.join(format!("agent-apply-{run}"));
    agent_state(
        &state,
        &format!("agent-{run}"),
        &format!("bench-agent-{run}"),
        objs,
    )?;
    let started = Instant::now();
    let mut child = agent_command(kubeconfig, &state)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "warn,flotilla_agent=info")
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let applied = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains(r#""message":"applied""#) {
                return Ok(started.elapsed());
            }
            if line.contains("apply finished with errors") {
                anyhow::bail!("agent: {line}");
            }
        }
        anyhow::bail!("agent exited before applying")
    })
    .await
    .map_err(|_| anyhow::anyhow!("agent did not apply within 600 s"))??;
    child.kill().await?;
    Ok(applied)
}

fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `kubectl apply --server-side` from spawn to exit, discovering afresh.
fn through_kubectl(
    kubeconfig: &Path,
    dir: &Path,
    run: usize,
    objs: &[Value],
) -> anyhow::Result<Duration> {
    let namespace = format!("bench-kubectl-{run}");
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    let mut items = vec![ns];
    for o in objs {
        let mut o = o.clone();
        o["metadata"]["namespace"] = json!(namespace);
        items.push(o);
    }
    let file = dir.join(format!("kubectl-objects-{run}.json"));
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )?;
    let cache_dir = dir.join(format!("kubectl-cache-{run}"));
    let started = Instant::now();
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(&cache_dir)
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
    Ok(elapsed)
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

/// Runs the agent binary offline over a cache of `n` objects until they
/// are all in the cluster; returns (idle RSS MiB, idle CPU % over the
/// window).
async fn agent_idle(
    client: &kube::Client,
    kubeconfig: &Path,
    dir: &Path,
    n: usize,
    run: usize,
) -> anyhow::Result<(f64, f64)> {
    let state = dir.join(format!("agent-idle-{n}-{run}"));
    let namespace = format!("bench-idle-{n}-{run}");
    agent_state(&state, &format!("idle-{n}-{run}"), &namespace, &objects(n))?;
    let mut child = agent_command(kubeconfig, &state)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stderr(match std::env::var_os("BENCH_AGENT_LOG_FILE") {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path)?),
            None => std::process::Stdio::null(),
        })
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("agent exited"))?;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &namespace);
    let deadline = Instant::now() + Duration::from_secs(600);
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
    // Settle, then measure an idle window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, ticks0) = proc_stats(pid).ok_or_else(|| anyhow::anyhow!("no /proc stats"))?;
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let (rss, ticks1) = proc_stats(pid).ok_or_else(|| anyhow::anyhow!("no /proc stats"))?;
    child.kill().await?;
    // Kernel clock ticks are 100 Hz on Linux.
    let cpu = (ticks1 - ticks0) as f64 / 100.0 / window.as_secs_f64() * 100.0;
    Ok((rss as f64 / 1024.0, cpu))
}

/// (min, median) of a non-empty sample.
fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".to_owned())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

fn row(what: &str, unit: &str, sample: Vec<f64>) {
    if sample.is_empty() {
        println!("{what:<58} {:>10} {:>10}", "n/a", "n/a");
        return;
    }
    let (min, median) = min_median(sample);
    println!(
        "{:<58} {min:>10.3} {median:>10.3}",
        format!("{what} ({unit})")
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let n = env_usize("BENCH_OBJECTS", 1000);
    let runs = env_usize("BENCH_RUNS", 5);
    let idle_runs = env_usize("BENCH_IDLE_RUNS", 3);
    let load_before = loadavg();
    let dir = tempfile::tempdir()?;
    // One simulated cluster per measurement: none sees another's objects
    // (the agent watches every tracked object of its cluster).
    let sim = flotilla_sim::Simulator::start(flotilla_sim::SimConfig {
        clusters: runs * 3 + idle_runs + 1,
        kubeconfig_dir: Some(dir.path().to_owned()),
        ..Default::default()
    })
    .await?;
    let mut fresh = (1..).map(|i| {
        sim.kubeconfig_path(&format!("sim-{i}"))
            .ok_or_else(|| anyhow::anyhow!("no kubeconfig for sim-{i}"))
    });
    let mut next = move || {
        fresh
            .next()
            .unwrap_or_else(|| Err(anyhow::anyhow!("no cluster")))
    };
    let objs = objects(n);
    let kubectl = kubectl_available();

    let (mut agent, mut kubectl_times, mut engine) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        agent.push(
            through_agent(&next()?, dir.path(), run, &objs)
                .await?
                .as_secs_f64(),
        );
        let kubeconfig = next()?;
        if kubectl {
            kubectl_times.push(through_kubectl(&kubeconfig, dir.path(), run, &objs)?.as_secs_f64());
        }
        let client = kube_client(&next()?).await?;
        engine.push(
            through_engine(client, dir.path(), run, &objs)
                .await?
                .as_secs_f64(),
        );
    }
    let (mut idle_small, mut idle_large) = (Vec::new(), Vec::new());
    for run in 0..idle_runs {
        let kubeconfig = next()?;
        let client = kube_client(&kubeconfig).await?;
        idle_small.push(agent_idle(&client, &kubeconfig, dir.path(), 100, run).await?);
    }
    let kubeconfig = next()?;
    let client = kube_client(&kubeconfig).await?;
    idle_large.push(agent_idle(&client, &kubeconfig, dir.path(), n, 0).await?);
    let load_after = loadavg();

    println!(
        "{n} objects, {runs} runs (idle: {idle_runs} runs with 100 objects, 1 with {n}); \
         load average before {load_before}, after {load_after}"
    );
    println!("{:<58} {:>10} {:>10}", "measurement", "min", "median");
    let median = |v: &[f64]| min_median(v.to_vec()).1;
    let ratio = (!kubectl_times.is_empty()).then(|| median(&kubectl_times) / median(&agent));
    row(
        &format!("apply {n}: agent binary, start+discovery+apply"),
        "s",
        agent,
    );
    row(
        &format!("apply {n}: kubectl --server-side, start+discovery+apply"),
        "s",
        kubectl_times,
    );
    match ratio {
        Some(r) => println!("{:<58} {:>10} {r:>10.2}", "  kubectl / agent (medians)", ""),
        None => println!(
            "{:<58} {:>10} {:>10}",
            "  kubectl / agent (medians)", "", "n/a"
        ),
    }
    row(
        &format!("apply {n}: agent engine in-process, discovery+apply"),
        "s",
        engine,
    );
    for (count, sample) in [(100, idle_small), (n, idle_large)] {
        row(
            &format!("agent binary, {count} objects: idle RSS"),
            "MiB",
            sample.iter().map(|s| s.0).collect(),
        );
        row(
            &format!("agent binary, {count} objects: idle CPU"),
            "%",
            sample.iter().map(|s| s.1).collect(),
        );
    }
    sim.shutdown().await;
    Ok(())
}
