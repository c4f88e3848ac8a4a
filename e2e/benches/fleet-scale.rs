//! Fleet scale: one release hub process against N simulated clusters with
//! M applications each, measuring what the hub acknowledges.
//!
//! Each simulated cluster is the agent's real link
//! (`flotilla_agent::link::Link`: mTLS gRPC stream, `Hello` with what it
//! holds, desired-state assembly, merge into its own cache, `Ack`), all in
//! this process on one tokio runtime (no thread per cluster). Next to each
//! link a reporter does what the real agent's engine does after every
//! desired state: it sends a status report (every application Synced and
//! Healthy at the revision and digest it holds), which the link repeats as
//! a heartbeat every 30 s, so the hub never closes a stream as idle. Nothing
//! is applied to a Kubernetes API (`cargo bench -p flotilla-agent --bench
//! apply` measures that part). The simulated agents' caches and credentials
//! live on tmpfs (`/dev/shm` by default, `--state-root`), so their disk
//! writes stay out of the measured path; the hub's data directory and the
//! Git repository are on the ordinary disk.
//!
//! The workload: one Git repository with M directories `bench/appJ` (a
//! ConfigMap and a Deployment each), M ApplicationSets with a clusters
//! generator, each making one application per cluster (N × M pairs).
//!
//! Phases (one table, one row per phase):
//! - register: `AddCluster` (certificate issued) for every cluster, one
//!   after the other;
//! - appsets→rendered: creating the M ApplicationSets until the hub shows
//!   the last cluster's application of every set at the head commit;
//! - connect→acked: starting every link until the hub reports every cluster
//!   connected with its acked generation equal to its generation;
//! - three commit kinds, each repeated `--commits` times: (a) one app
//!   changed (deployed to every cluster), (b) every app changed, (c) a file
//!   no application reads changed. For each: commit→hub (until the hub
//!   shows the commit, for a probe application or the repository, after a
//!   `Refresh` call as a webhook would make) and commit→acked (until the
//!   hub reports every cluster's acked generation equal to its generation,
//!   past the one it had before the commit for (a) and (b)), p50 / p99 /
//!   max over the commits; desired-state messages the hub sent per commit
//!   (its `flotilla_hub_desired_state_messages_total`); hub CPU per commit;
//! - with `--waves N` (issue 18's gating overhead): the last set is staged
//!   in N Flotilla waves by the clusters' `wave` label (no bake, whole
//!   waves at once) and left out of (b); (w) commits to it until
//!   `GetRollout` shows it Completed at the commit (every cluster Synced
//!   and Healthy there), to compare with (a), the same change all at once;
//! - reconnect storm: SIGTERM the hub, start it again on the same address
//!   and data directory; every link reconnects (with its own backoff) until
//!   every cluster is connected and acked again; the bytes of desired state
//!   the new hub sent, and how many clusters changed generation;
//! - idle: hub CPU over `--idle-secs` with every stream open;
//! - `/metrics` scrape and the bench's own `ListClusters` poll: wall time
//!   and hub CPU per call.
//!
//! "acked" is the hub's own view (`ListClusters`: `generation`,
//! `acked_generation`, `connected`), polled every `--poll-ms`; a state
//! counts once it held, unchanged, for one second, and its time is when it
//! was first seen (so the resolution is the poll interval). Hub CPU is
//! utime + stime of the hub process from `/proc/PID/stat` (it includes
//! answering the bench's polls; the last row gives that cost per call);
//! RSS is `VmRSS` from `/proc/PID/status` after each phase. The bench's own
//! CPU is shown per phase: it must stay well below the hub's.
//!
//! ```text
//! cargo build --release -p flotilla-hub --bins
//! cargo bench -p flotilla-e2e --bench fleet-scale            # 100 × 2, CI-sized
//! cargo bench -p flotilla-e2e --bench fleet-scale -- --clusters 10000 --apps 1 --commits 20
//! cargo bench -p flotilla-e2e --bench fleet-scale -- --clusters 1000 --apps 50 --no-baseline
//! ```
//!
//! A size larger than 1,000 × 1 runs 1,000 × 1 first, in the same process,
//! as the baseline row (`--no-baseline` skips it). `--perf FILE` records
//! the hub with `perf record` during the three commit phases.
//!
//! Results ("before": main as of the `scalebench` branch point, release
//! build, a 2-core machine shared with other builds) are in README's
//! benchmark table and docs/architecture.md ("Scale").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use flotilla_agent::cache::Cache;
use flotilla_agent::link::{CA_FILE, CERT_FILE, KEY_FILE, Link, LinkConfig};
use flotilla_agent::report::{Report, now_ms};
use flotilla_e2e::fleet::{Api, api_client, start_hub};
use flotilla_e2e::process::Proc;
use flotilla_e2e::repo::ConfigRepo;
use flotilla_proto as pb;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// Arguments after `cargo bench -p flotilla-e2e --bench fleet-scale --`.
#[derive(Parser, Debug, Clone)]
#[command(about = "Fleet-scale benchmark: one hub, N simulated clusters × M applications")]
struct Args {
    /// Number of clusters.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// Applications per cluster (one ApplicationSet each).
    #[arg(long, default_value_t = 2)]
    apps: usize,
    /// Commits of each kind.
    #[arg(long, default_value_t = 3)]
    commits: usize,
    /// Idle window, seconds.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Do not run the 1,000 × 1 baseline before a larger size.
    #[arg(long)]
    no_baseline: bool,
    /// Where the simulated agents' caches and credentials go (tmpfs).
    #[arg(long, default_value = "/dev/shm")]
    state_root: PathBuf,
    /// Interval of the bench's `ListClusters` poll, milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Worker threads of the bench's tokio runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Longest any one phase may take, seconds.
    #[arg(long, default_value_t = 1800)]
    deadline_secs: u64,
    /// Record the hub with `perf record -F 49 --call-graph dwarf` during the commit phases
    /// into this file (of the requested size, not the baseline).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Keep the run's directories.
    #[arg(long)]
    keep: bool,
    /// Stage the last ApplicationSet in this many Flotilla waves (clusters
    /// labelled `wave: wK` in equal parts, zero bake time, whole waves at
    /// once) and add the phase (w): a commit to it until its rollout is
    /// Completed, beside (a), a commit to the first set all at once.
    /// Needs `--apps` ≥ 2; 0: no waves.
    #[arg(long, default_value_t = 0)]
    waves: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// How long a state must hold, unchanged, to count as reached.
const QUIET: Duration = Duration::from_secs(1);

/// One row of the table.
struct Line {
    fleet: String,
    phase: String,
    wall: String,
    hub_cpu: String,
    hub_rss: String,
    bench_cpu: String,
    detail: String,
}

/// Seconds of CPU (utime + stime) of a process, from `/proc/PID/stat`.
fn cpu_secs(pid: &str, tick: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / tick
}

/// `VmRSS` of a process in KiB.
fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Raises the soft open-file limit to the hard one (the hub, started
/// after, inherits it); returns the limit now in force.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            eprintln!("fleet-scale: could not raise the open-file limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The filesystem type `path` is on, from `/proc/mounts` (longest prefix).
fn fs_type(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            let mount = f.next()?;
            let kind = f.next()?;
            path.starts_with(mount)
                .then(|| (mount.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_owned(), |(_, kind)| kind)
}

fn appset(j: usize, repo_url: &str, waves: usize) -> String {
    let strategy = if waves == 0 {
        String::new()
    } else {
        let list: String = (0..waves)
            .map(|k| {
                format!(
                    "      - name: w{k}\n        clusterSelector:\n          matchLabels: {{wave: w{k}}}\n"
                )
            })
            .collect();
        format!(
            "  strategy:\n    flotillaWaves:\n      progressDeadline: 10m\n      waves:\n{list}"
        )
    };
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata:
  name: app{j}
spec:
  generators:
  - clusters:
      selector:
        matchLabels:
          bench: fleet-scale
{strategy}  template:
    metadata:
      name: 'app{j}-{{{{name}}}}'
    spec:
      project: default
      source:
        repoURL: {repo_url}
        targetRevision: HEAD
        path: bench/app{j}
      destination:
        name: '{{{{name}}}}'
        namespace: app{j}
      syncPolicy:
        automated:
          prune: true
"#
    )
}

fn configmap(j: usize, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app{j}-config\ndata:\n  greeting: \"{value}\"\n"
    )
}

fn deployment(j: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: app{j}
  labels:
    app: app{j}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: app{j}
  template:
    metadata:
      labels:
        app: app{j}
    spec:
      containers:
      - name: web
        image: registry.example.com/app{j}:1.0.0
        ports:
        - containerPort: 8080
        envFrom:
        - configMapRef:
            name: app{j}-config
"#
    )
}

/// A simulated cluster: the agent's link and a reporter.
struct SimAgent {
    cache: Arc<Cache>,
    tasks: [JoinHandle<()>; 2],
}

impl SimAgent {
    fn start(hub_url: &str, state_dir: PathBuf) -> anyhow::Result<Self> {
        let cache = Arc::new(
            Cache::open(&state_dir).with_context(|| format!("cache in {}", state_dir.display()))?,
        );
        let trigger = Arc::new(Notify::new());
        let (reports, rx) = watch::channel(None);
        let link = Link::new(
            &LinkConfig {
                hub: hub_url.to_owned(),
                state_dir,
            },
            cache.clone(),
            trigger.clone(),
            rx,
        )?;
        let link = tokio::spawn(async move {
            // A removed cluster's link ends; the bench never removes one.
            let _removed = link.run().await;
        });
        let reporter = tokio::spawn(report_loop(cache.clone(), trigger, reports));
        Ok(Self {
            cache,
            tasks: [link, reporter],
        })
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the real agent's engine does after each desired state: report
/// every application (here: Synced and Healthy at what the cache holds).
async fn report_loop(
    cache: Arc<Cache>,
    trigger: Arc<Notify>,
    reports: watch::Sender<Option<Report>>,
) {
    loop {
        trigger.notified().await;
        let now = now_ms();
        let report = cache.read(|s| Report {
            generation: s.generation,
            apps: s
                .apps
                .values()
                .map(|a| pb::AppStatus {
                    name: a.bundle.name.clone(),
                    revision: a.bundle.revision.clone(),
                    digest: a.bundle.digest.clone(),
                    sync: pb::SyncStatus::Synced as i32,
                    health: pb::HealthStatus::Healthy as i32,
                    last_applied_ms: now,
                    observed_ms: now,
                    ..Default::default()
                })
                .collect(),
        });
        if reports.send(Some(report)).is_err() {
            return;
        }
    }
}

/// Generation per cluster as the hub reports it.
type Generations = HashMap<String, u64>;

async fn list_clusters(api: &Api) -> Result<Vec<pb::Cluster>, String> {
    Ok(api
        .clone()
        .list_clusters(pb::ListClustersRequest {})
        .await
        .map_err(|e| format!("ListClusters: {}", e.message()))?
        .into_inner()
        .clusters)
}

/// Whether every one of `n` clusters is connected and acked its generation
/// (past `before` when given); its generations when so.
fn all_acked(
    list: &[pb::Cluster],
    n: usize,
    before: Option<&Generations>,
) -> Result<Generations, String> {
    let mut disconnected = 0;
    let mut behind = 0;
    let mut stale = 0;
    for c in list {
        if !c.connected {
            disconnected += 1;
        }
        let newer = match before {
            Some(b) => c.generation > b.get(&c.name).copied().unwrap_or(0),
            None => c.generation > 0,
        };
        if !newer {
            stale += 1;
        }
        if c.acked_generation < c.generation {
            behind += 1;
        }
    }
    if list.len() == n && disconnected == 0 && behind == 0 && stale == 0 {
        Ok(list
            .iter()
            .map(|c| (c.name.clone(), c.generation))
            .collect())
    } else {
        Err(format!(
            "{} clusters listed of {n}: {disconnected} disconnected, {behind} not acked, {stale} without a new generation",
            list.len()
        ))
    }
}

/// Polls the hub every `every` until every cluster is acked (see
/// [`all_acked`]) in the same state for [`QUIET`]; returns when that state
/// was first seen (from `start`) and the generations.
async fn wait_acked(
    api: &Api,
    n: usize,
    before: Option<&Generations>,
    start: Instant,
    every: Duration,
    deadline: Duration,
    what: &str,
) -> anyhow::Result<(Duration, Generations)> {
    let mut held: Option<(Duration, Generations)> = None;
    let mut last = String::new();
    loop {
        let now = start.elapsed();
        match list_clusters(api)
            .await
            .and_then(|l| all_acked(&l, n, before))
        {
            Ok(gens) => match &held {
                Some((since, seen)) if *seen == gens => {
                    if now.saturating_sub(*since) >= QUIET {
                        return Ok((*since, gens));
                    }
                }
                _ => held = Some((now, gens)),
            },
            Err(state) => {
                held = None;
                last = state;
            }
        }
        if start.elapsed() > deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls until the hub shows `commit` for `probe` or for the repository.
async fn wait_hub_saw(
    api: &Api,
    probe: &str,
    commit: &str,
    start: Instant,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    loop {
        let app = api
            .clone()
            .get_application(pb::GetApplicationRequest {
                name: probe.to_owned(),
            })
            .await
            .map(|r| r.into_inner().revision);
        let repos = api
            .clone()
            .list_repositories(pb::ListRepositoriesRequest::default())
            .await
            .map(|r| r.into_inner().repositories);
        let seen = app.is_ok_and(|r| r == commit)
            || repos.is_ok_and(|rs| rs.iter().any(|r| r.last_commit == commit));
        if seen {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for the hub to show {commit}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The hub's metrics text.
async fn scrape(base: &str) -> anyhow::Result<String> {
    let base = base.to_owned();
    tokio::task::spawn_blocking(move || flotilla_e2e::http::get_ok(&base, "/metrics"))
        .await?
        .map_err(|e| anyhow::anyhow!("scraping the hub's /metrics: {e}"))
}

/// Desired-state messages and bytes the hub sent, by kind
/// (`desired`, `chunk`).
#[derive(Debug, Default, Clone, Copy)]
struct Wire {
    desired: f64,
    chunks: f64,
    bytes: f64,
}

impl Wire {
    fn of(text: &str) -> Self {
        let s = |series: &str| flotilla_e2e::http::sample(text, series).unwrap_or(0.0);
        Self {
            desired: s("flotilla_hub_desired_state_messages_total{kind=\"desired\"}"),
            chunks: s("flotilla_hub_desired_state_messages_total{kind=\"chunk\"}"),
            bytes: s("flotilla_hub_desired_state_bytes_total{kind=\"desired\"}")
                + s("flotilla_hub_desired_state_bytes_total{kind=\"chunk\"}"),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            desired: self.desired - before.desired,
            chunks: self.chunks - before.chunks,
            bytes: self.bytes - before.bytes,
        }
    }
}

/// `http://ADDR` of the hub's metrics listener, from its log.
fn metrics_base(hub: &Proc) -> Option<String> {
    hub.lines().iter().rev().find_map(|l| {
        let url = l.split("metrics listening on ").nth(1)?.trim();
        let hostport = url.strip_prefix("http://")?.split('/').next()?;
        Some(format!("http://{hostport}"))
    })
}

/// The hub process's measurements.
struct Meter {
    pid: String,
    tick: f64,
}

impl Meter {
    fn hub_cpu(&self) -> f64 {
        cpu_secs(&self.pid, self.tick)
    }
    fn bench_cpu(&self) -> f64 {
        cpu_secs("self", self.tick)
    }
    fn rss(&self) -> String {
        mib(rss_kib(&self.pid))
    }
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn cpu(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn spread(values: &[Duration]) -> String {
    let mut v = values.to_vec();
    v.sort();
    format!(
        "{} / {} / {}",
        secs(pct(&v, 50.0)),
        secs(pct(&v, 99.0)),
        secs(pct(&v, 100.0))
    )
}

/// Starts `perf record` on the hub; stopped with SIGINT by [`stop_perf`].
fn start_perf(pid: &str, out: &Path) -> Option<std::process::Child> {
    std::process::Command::new("perf")
        // DWARF unwinding: the release hub has no frame pointers, so `-g`
        // records stacks that stop at the first frame.
        .args([
            "record",
            "-F",
            "49",
            "--call-graph",
            "dwarf,32768",
            "-p",
            pid,
            "-o",
        ])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("fleet-scale: perf record: {e}"))
        .ok()
}

fn stop_perf(child: Option<std::process::Child>) {
    if let Some(mut child) = child {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    OneApp,
    AllApps,
    Nothing,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::OneApp => "(a) one app changed",
            Self::AllApps => "(b) every app changed",
            Self::Nothing => "(c) nothing deployed changed",
        }
    }
}

#[allow(clippy::too_many_lines)]
async fn run(
    args: &Args,
    clusters: usize,
    apps: usize,
    perf: Option<&Path>,
) -> anyhow::Result<Vec<Line>> {
    let fleet = format!("{clusters} × {apps}");
    // The baseline size (one application) has no set to stage.
    let waves = if apps >= 2 { args.waves } else { 0 };
    let deadline = Duration::from_secs(args.deadline_secs);
    let every = Duration::from_millis(args.poll_ms);
    let tick = clock_ticks();
    let mut lines = Vec::new();
    let root = tempfile::Builder::new()
        .prefix("flotilla-fleet-scale-")
        .tempdir()?;
    let agents_root = tempfile::Builder::new()
        .prefix("flotilla-fleet-scale-agents-")
        .tempdir_in(&args.state_root)
        .with_context(|| format!("a directory in {}", args.state_root.display()))?;
    let agents_fs = fs_type(agents_root.path());

    let repo = ConfigRepo::from_examples(&root.path().join("config-repo"))?;
    let mut files = Vec::new();
    for j in 0..apps {
        files.push((format!("bench/app{j}/configmap.yaml"), configmap(j, "v0")));
        files.push((format!("bench/app{j}/deployment.yaml"), deployment(j)));
    }
    files.push(("bench-notes/README.md".to_owned(), "v0\n".to_owned()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let head = repo.commit_files(&refs, "bench: the applications")?;

    let data_dir = root.path().join("hub-data");
    // Every simulated agent connects from 127.0.0.1 at once: lift the
    // per-address handshake cap (docs/security.md#limits), which would
    // otherwise admit them 64 at a time and measure the agents' backoff.
    let hub_args: Vec<String> = [
        "--max-pending-connections",
        "100000",
        "--max-pending-connections-per-source",
        "100000",
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (mut hub, addr) = start_hub(root.path(), &data_dir, "127.0.0.1:0", 0, &hub_args, &[])?;
    let hub_url = format!("https://{addr}");
    let mut meter = Meter {
        pid: hub
            .pid()
            .map(|p| p.to_string())
            .ok_or_else(|| anyhow::anyhow!("hub has no pid"))?,
        tick,
    };
    eprintln!("fleet-scale {fleet}: hub pid {} at {hub_url}", meter.pid);
    let mut metrics = flotilla_e2e::eventually("the hub's metrics listener", deadline, || async {
        metrics_base(&hub).ok_or_else(|| "not in the log yet".to_owned())
    })
    .await?;
    let api = api_client(&hub_url, &data_dir)
        .await?
        .max_decoding_message_size(256 << 20);

    // Register.
    eprintln!("fleet-scale {fleet}: registering {clusters} clusters");
    let (h0, b0) = (meter.hub_cpu(), meter.bench_cpu());
    let started = Instant::now();
    let mut names = Vec::with_capacity(clusters);
    for i in 0..clusters {
        let name = format!("c{i:05}");
        let r = api
            .clone()
            .add_cluster(pb::AddClusterRequest {
                name: name.clone(),
                labels: [("bench".to_owned(), "fleet-scale".to_owned())]
                    .into_iter()
                    .chain(
                        (waves > 0)
                            .then(|| ("wave".to_owned(), format!("w{}", i * waves / clusters))),
                    )
                    .collect(),
                issue_certificate: true,
                ..Default::default()
            })
            .await
            .with_context(|| format!("adding cluster {name}"))?
            .into_inner();
        let dir = agents_root.path().join(&name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(CA_FILE), r.ca_pem)?;
        std::fs::write(dir.join(CERT_FILE), r.certificate_pem)?;
        std::fs::write(dir.join(KEY_FILE), r.key_pem)?;
        names.push(name);
    }
    let register = started.elapsed();
    lines.push(Line {
        fleet: fleet.clone(),
        phase: "register (AddCluster × N)".into(),
        wall: secs(register),
        hub_cpu: cpu(meter.hub_cpu() - h0),
        hub_rss: meter.rss(),
        bench_cpu: cpu(meter.bench_cpu() - b0),
        detail: format!(
            "{:.1} ms per cluster",
            register.as_secs_f64() * 1000.0 / clusters.max(1) as f64
        ),
    });

    // ApplicationSets.
    eprintln!("fleet-scale {fleet}: creating {apps} ApplicationSets");
    let (h0, b0) = (meter.hub_cpu(), meter.bench_cpu());
    let started = Instant::now();
    for j in 0..apps {
        api.clone()
            .create_application_set(pb::CreateApplicationSetRequest {
                manifest: appset(j, &repo.url(), if j + 1 == apps { waves } else { 0 }),
                upsert: false,
            })
            .await
            .with_context(|| format!("creating ApplicationSet app{j}"))?;
    }
    let last = names.last().cloned().unwrap_or_default();
    flotilla_e2e::eventually("every ApplicationSet rendered", deadline, || async {
        for j in 0..apps {
            let a = api
                .clone()
                .get_application(pb::GetApplicationRequest {
                    name: format!("app{j}-{last}"),
                })
                .await
                .map_err(|e| format!("app{j}-{last}: {}", e.message()))?
                .into_inner();
            if a.revision != head {
                return Err(format!("app{j}-{last} at {:?}", a.revision));
            }
        }
        Ok(())
    })
    .await?;
    lines.push(Line {
        fleet: fleet.clone(),
        phase: "appsets → rendered".into(),
        wall: secs(started.elapsed()),
        hub_cpu: cpu(meter.hub_cpu() - h0),
        hub_rss: meter.rss(),
        bench_cpu: cpu(meter.bench_cpu() - b0),
        detail: format!("{apps} ApplicationSets, {} applications", clusters * apps),
    });

    // Connect.
    eprintln!("fleet-scale {fleet}: connecting {clusters} links");
    let (h0, b0) = (meter.hub_cpu(), meter.bench_cpu());
    let w0 = Wire::of(&scrape(&metrics).await?);
    let started = Instant::now();
    let mut agents = Vec::with_capacity(clusters);
    for name in &names {
        agents.push(SimAgent::start(&hub_url, agents_root.path().join(name))?);
    }
    let (connect, mut gens) = wait_acked(
        &api,
        clusters,
        None,
        started,
        every,
        deadline,
        "every cluster connected and acked",
    )
    .await?;
    let (h1, b1) = (meter.hub_cpu(), meter.bench_cpu());
    let sent = Wire::of(&scrape(&metrics).await?).since(w0);
    let complete = agents
        .iter()
        .filter(|a| {
            a.cache.read(|s| {
                s.apps.len() == apps && s.apps.values().all(|x| x.bundle.revision == head)
            })
        })
        .count();
    lines.push(Line {
        fleet: fleet.clone(),
        phase: "connect → all acked".into(),
        wall: secs(connect),
        hub_cpu: cpu(h1 - h0),
        hub_rss: meter.rss(),
        bench_cpu: cpu(b1 - b0),
        detail: format!(
            "{complete}/{clusters} caches hold all {apps} apps; {} desired + {} chunk msgs, {}; bench RSS {}; agent state on {agents_fs}",
            sent.desired,
            sent.chunks,
            mib((sent.bytes / 1024.0) as u64),
            mib(rss_kib("self")),
        ),
    });

    // Commits.
    let perf_child = perf.and_then(|p| start_perf(&meter.pid, p));
    let probe = format!("app0-{}", names.first().cloned().unwrap_or_default());
    let mut serial = 0;
    for kind in [Kind::OneApp, Kind::AllApps, Kind::Nothing] {
        eprintln!("fleet-scale {fleet}: {} × {}", args.commits, kind.label());
        let w0 = Wire::of(&scrape(&metrics).await?);
        let mut to_hub = Vec::new();
        let mut to_acked = Vec::new();
        let mut hub_cpu = Vec::new();
        let mut bench_cpu = 0.0;
        let mut bumped = 0;
        for _ in 0..args.commits {
            serial += 1;
            let value = format!("v{serial}");
            let changed: Vec<(String, String)> = match kind {
                Kind::OneApp => vec![("bench/app0/configmap.yaml".into(), configmap(0, &value))],
                // The set staged in waves has a phase of its own.
                Kind::AllApps => (0..apps - usize::from(waves > 0))
                    .map(|j| (format!("bench/app{j}/configmap.yaml"), configmap(j, &value)))
                    .collect(),
                Kind::Nothing => vec![("bench-notes/README.md".into(), format!("{value}\n"))],
            };
            let refs: Vec<(&str, &str)> = changed
                .iter()
                .map(|(p, c)| (p.as_str(), c.as_str()))
                .collect();
            let (h0, b0) = (meter.hub_cpu(), meter.bench_cpu());
            let started = Instant::now();
            let commit = repo.commit_files(&refs, &format!("bench: commit {serial}"))?;
            api.clone()
                .refresh(pb::RefreshRequest::default())
                .await
                .context("Refresh")?;
            let before = gens.clone();
            let need_newer = kind != Kind::Nothing;
            let (saw, acked) = tokio::join!(
                wait_hub_saw(&api, &probe, &commit, started, deadline),
                wait_acked(
                    &api,
                    clusters,
                    need_newer.then_some(&before),
                    started,
                    every,
                    deadline,
                    "every cluster acked the commit",
                )
            );
            let saw = saw?;
            // (c): the hub may act after it saw the commit; wait for it
            // to have seen it before judging the state settled.
            let (acked, now) = if need_newer {
                acked?
            } else {
                let (first, g) = acked?;
                if first < saw {
                    wait_acked(&api, clusters, None, started, every, deadline, "settled").await?
                } else {
                    (first, g)
                }
            };
            hub_cpu.push(Duration::from_secs_f64(meter.hub_cpu() - h0));
            bench_cpu += meter.bench_cpu() - b0;
            bumped += now
                .iter()
                .filter(|(n, g)| before.get(*n).is_some_and(|b| b != *g))
                .count();
            gens = now;
            to_hub.push(saw);
            to_acked.push(acked);
        }
        let sent = Wire::of(&scrape(&metrics).await?).since(w0);
        let n = args.commits.max(1) as f64;
        let mut sorted_cpu = hub_cpu.clone();
        sorted_cpu.sort();
        lines.push(Line {
            fleet: fleet.clone(),
            phase: format!("{}: commit → hub", kind.label()),
            wall: spread(&to_hub),
            hub_cpu: String::new(),
            hub_rss: String::new(),
            bench_cpu: String::new(),
            detail: format!("p50 / p99 / max over {} commits", args.commits),
        });
        lines.push(Line {
            fleet: fleet.clone(),
            phase: format!("{}: commit → all acked", kind.label()),
            wall: spread(&to_acked),
            hub_cpu: format!(
                "{} / commit (max {})",
                cpu(pct(&sorted_cpu, 50.0).as_secs_f64()),
                cpu(pct(&sorted_cpu, 100.0).as_secs_f64())
            ),
            hub_rss: meter.rss(),
            bench_cpu: format!("{} / commit", cpu(bench_cpu / n)),
            detail: format!(
                "{:.0} desired + {:.0} chunk msgs / commit ({} / commit); {:.0} clusters with a new generation / commit",
                sent.desired / n,
                sent.chunks / n,
                mib((sent.bytes / n / 1024.0) as u64),
                bumped as f64 / n,
            ),
        });
    }
    if waves > 0 {
        let j = apps - 1;
        let set = format!("app{j}");
        eprintln!(
            "fleet-scale {fleet}: {} × (w) one app in {} waves",
            args.commits, waves
        );
        let mut to_done = Vec::new();
        let mut hub_cpu = Vec::new();
        for _ in 0..args.commits {
            serial += 1;
            let path = format!("bench/{set}/configmap.yaml");
            let content = configmap(j, &format!("v{serial}"));
            let h0 = meter.hub_cpu();
            let started = Instant::now();
            let commit = repo.commit_files(
                &[(path.as_str(), content.as_str())],
                &format!("bench: commit {serial}"),
            )?;
            api.clone()
                .refresh(pb::RefreshRequest::default())
                .await
                .context("Refresh")?;
            flotilla_e2e::eventually("the waves rollout Completed", deadline, || async {
                let r = api
                    .clone()
                    .get_rollout(pb::GetRolloutRequest { name: set.clone() })
                    .await
                    .map_err(|e| e.message().to_owned())?
                    .into_inner();
                if r.target == commit && r.phase == "Completed" {
                    Ok(())
                } else {
                    Err(format!(
                        "{set} at {:?}, wave {}, {}: {}",
                        r.target, r.wave, r.phase, r.message
                    ))
                }
            })
            .await?;
            to_done.push(started.elapsed());
            hub_cpu.push(Duration::from_secs_f64(meter.hub_cpu() - h0));
        }
        hub_cpu.sort();
        lines.push(Line {
            fleet: fleet.clone(),
            phase: format!(
                "(w) one app in {} waves, no bake: commit → rollout Completed",
                waves
            ),
            wall: spread(&to_done),
            hub_cpu: format!(
                "{} / commit (max {})",
                cpu(pct(&hub_cpu, 50.0).as_secs_f64()),
                cpu(pct(&hub_cpu, 100.0).as_secs_f64())
            ),
            hub_rss: meter.rss(),
            bench_cpu: String::new(),
            detail: "every cluster Synced and Healthy at the commit, wave after wave; baseline: (a), one app all at once".into(),
        });
    }
    stop_perf(perf_child);

    // Reconnect storm.
    eprintln!("fleet-scale {fleet}: reconnect storm");
    let b0 = meter.bench_cpu();
    let started = Instant::now();
    tokio::task::block_in_place(|| hub.stop(Duration::from_secs(60)));
    let stopped = started.elapsed();
    let (new_hub, _) = tokio::task::block_in_place(|| {
        start_hub(root.path(), &data_dir, &addr, 1, &hub_args, &[])
    })?;
    hub = new_hub;
    let listening = started.elapsed();
    meter.pid = hub
        .pid()
        .map(|p| p.to_string())
        .ok_or_else(|| anyhow::anyhow!("restarted hub has no pid"))?;
    let before = gens.clone();
    let (storm, now) = wait_acked(
        &api,
        clusters,
        None,
        started,
        every,
        deadline,
        "every cluster reconnected and acked",
    )
    .await?;
    let storm_cpu = meter.hub_cpu();
    metrics = flotilla_e2e::eventually("the new hub's metrics listener", deadline, || async {
        metrics_base(&hub).ok_or_else(|| "not in the log yet".to_owned())
    })
    .await?;
    let sent = Wire::of(&scrape(&metrics).await?);
    let changed = now
        .iter()
        .filter(|(n, g)| before.get(*n).is_some_and(|b| b != *g))
        .count();
    lines.push(Line {
        fleet: fleet.clone(),
        phase: "reconnect storm (hub restart) → all acked".into(),
        wall: secs(storm),
        hub_cpu: cpu(storm_cpu),
        hub_rss: meter.rss(),
        bench_cpu: cpu(meter.bench_cpu() - b0),
        detail: format!(
            "stop {}, listening {}; re-sent {:.0} desired + {:.0} chunk msgs, {}; {changed} clusters changed generation",
            secs(stopped),
            secs(listening),
            sent.desired,
            sent.chunks,
            mib((sent.bytes / 1024.0) as u64),
        ),
    });

    // Idle.
    eprintln!("fleet-scale {fleet}: idle {} s", args.idle_secs);
    let (h0, b0) = (meter.hub_cpu(), meter.bench_cpu());
    let window = Duration::from_secs(args.idle_secs);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    let idle_hub = meter.hub_cpu() - h0;
    let idle_bench = meter.bench_cpu() - b0;
    let still = list_clusters(&api)
        .await
        .map_err(anyhow::Error::msg)?
        .iter()
        .filter(|c| c.connected)
        .count();
    lines.push(Line {
        fleet: fleet.clone(),
        phase: format!("idle ({} s window)", args.idle_secs),
        wall: String::new(),
        hub_cpu: format!("{:.1} % of a core", idle_hub / elapsed * 100.0),
        hub_rss: meter.rss(),
        bench_cpu: format!("{:.1} %", idle_bench / elapsed * 100.0),
        detail: format!("{still}/{clusters} still connected"),
    });

    // /metrics scrape and the bench's own poll.
    let mut scrape_times = Vec::new();
    let h0 = meter.hub_cpu();
    let mut size = 0;
    for _ in 0..5 {
        let started = Instant::now();
        size = scrape(&metrics).await?.len();
        scrape_times.push(started.elapsed());
    }
    let scrape_cpu = (meter.hub_cpu() - h0) / 5.0;
    lines.push(Line {
        fleet: fleet.clone(),
        phase: "/metrics scrape".into(),
        wall: spread(&scrape_times),
        hub_cpu: format!("{} / scrape", cpu(scrape_cpu)),
        hub_rss: meter.rss(),
        bench_cpu: String::new(),
        detail: format!("5 scrapes, {} KiB each", size / 1024),
    });
    let mut poll_times = Vec::new();
    let h0 = meter.hub_cpu();
    for _ in 0..5 {
        let started = Instant::now();
        list_clusters(&api).await.map_err(anyhow::Error::msg)?;
        poll_times.push(started.elapsed());
    }
    let poll_cpu = (meter.hub_cpu() - h0) / 5.0;
    lines.push(Line {
        fleet: fleet.clone(),
        phase: "ListClusters (the bench's ack poll)".into(),
        wall: spread(&poll_times),
        hub_cpu: format!("{} / call", cpu(poll_cpu)),
        hub_rss: String::new(),
        bench_cpu: String::new(),
        detail: format!("polled every {} ms while waiting for acks", args.poll_ms),
    });

    drop(agents);
    drop(hub);
    if args.keep {
        eprintln!(
            "kept {} and {}",
            root.keep().display(),
            agents_root.keep().display()
        );
    }
    Ok(lines)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if args.waves > 0 && args.apps < 2 {
        anyhow::bail!(
            "--waves needs --apps 2 or more: the last set is staged, the first is the baseline"
        );
    }
    let nofile = raise_nofile();
    if (nofile as usize) < args.clusters + 1024 {
        eprintln!(
            "fleet-scale: the open-file limit {nofile} is too low for {} clusters (each needs a socket in the bench and in the hub)",
            args.clusters
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let mut sizes = Vec::new();
    if !args.no_baseline && args.clusters * args.apps > 1000 {
        sizes.push((1000, 1, None));
    }
    sizes.push((args.clusters, args.apps, args.perf.as_deref()));
    let mut lines = Vec::new();
    for (clusters, apps, perf) in sizes {
        lines.extend(runtime.block_on(run(&args, clusters, apps, perf))?);
    }
    println!();
    println!(
        "fleet-scale: {} commits of each kind, acks polled every {} ms, open-file limit {nofile}, {} CPUs, bench runtime {} worker threads",
        args.commits,
        args.poll_ms,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        args.threads.max(1),
    );
    println!();
    println!(
        "| fleet | phase | wall (p50 / p99 / max) | hub CPU | hub RSS after | bench CPU | detail |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | --- |");
    for l in lines {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            l.fleet, l.phase, l.wall, l.hub_cpu, l.hub_rss, l.bench_cpu, l.detail
        );
    }
    Ok(())
}
