//! Kubernetes API simulator hosting many virtual clusters behind one HTTPS
//! listener, each addressed by the path prefix `/clusters/sim-K`.
//!
//! See `README.md` for what is exact, approximated and missing.

pub mod builtin_schema;
pub mod controllers;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod fields;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use store::Faults;

use crate::controllers::Timing;
use crate::server::Sim;
use crate::store::{Cluster, Key};

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of virtual clusters (`sim-1` … `sim-N`).
    pub clusters: usize,
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where to write `sim-K.kubeconfig` files.
    pub kubeconfig_dir: Option<PathBuf>,
    /// Where to persist cluster state between runs.
    pub state_dir: Option<PathBuf>,
    /// Whether the simulated workload controllers run.
    pub controllers: bool,
    /// Time until workloads become available.
    pub rollout_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            clusters: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubeconfig_dir: None,
            state_dir: None,
            controllers: true,
            rollout_delay: Duration::from_secs(1),
        }
    }
}

/// Entry point.
pub struct Simulator;

/// A running simulator.
pub struct SimHandle {
    sim: Arc<Sim>,
    ca_pem: String,
    kubeconfig_dir: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Objects every fresh cluster starts with.
pub fn initial_objects() -> BTreeMap<Key, Value> {
    let mut m = BTreeMap::new();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let o = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "resourceVersion": "1",
                "creationTimestamp": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        m.insert(
            ("/namespaces".to_string(), String::new(), ns.to_string()),
            o,
        );
    }
    m
}

fn state_file(dir: &std::path::Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Writes the state of every cluster whose resourceVersion differs from
/// `persisted` (all when empty), recording what was written.
fn persist(sim: &Sim, dir: &std::path::Path, persisted: &mut BTreeMap<String, u64>) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!(error = %e, "cannot create state dir");
        return;
    }
    for (name, c) in &sim.clusters {
        let rv = c.lock().rv;
        if persisted.get(name) == Some(&rv) {
            continue;
        }
        persisted.insert(name.clone(), rv);
        let tmp = dir.join(format!(".{name}.json.tmp"));
        let data = c.snapshot().to_string();
        if std::fs::write(&tmp, data)
            .and_then(|()| std::fs::rename(&tmp, state_file(dir, name)))
            .is_err()
        {
            tracing::warn!(cluster = %name, "cannot persist state");
        }
    }
}

impl Simulator {
    /// Starts the simulator and returns once it accepts connections.
    ///
    /// # Errors
    /// Fails when the listener cannot bind, certificates cannot be made or
    /// kubeconfig files cannot be written.
    pub async fn start(cfg: SimConfig) -> anyhow::Result<SimHandle> {
        let tls = tls::generate()?;
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let mut clusters = BTreeMap::new();
        for i in 1..=cfg.clusters {
            let name = format!("sim-{i}");
            let c = Cluster::new(&name);
            let loaded = cfg
                .state_dir
                .as_ref()
                .map(|d| state_file(d, &name))
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            match loaded {
                Some(snap) => c.load(&snap),
                None => c.reset(initial_objects(), 1),
            }
            clusters.insert(name, Arc::new(c));
        }
        let sim = Arc::new(Sim {
            clusters,
            addr,
            timing: Timing {
                enabled: cfg.controllers,
                rollout_delay: cfg.rollout_delay,
            },
        });
        let handle = SimHandle {
            sim: sim.clone(),
            ca_pem: tls.ca_pem,
            kubeconfig_dir: cfg.kubeconfig_dir.clone(),
            stop: None,
            task: None,
        };
        if let Some(dir) = &cfg.kubeconfig_dir {
            std::fs::create_dir_all(dir)?;
            for name in handle.cluster_names() {
                std::fs::write(
                    dir.join(format!("{name}.kubeconfig")),
                    handle.kubeconfig_yaml(&name),
                )?;
            }
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(
            sim,
            listener,
            tls.server_config,
            stop_rx,
            cfg.state_dir,
        ));
        Ok(SimHandle {
            stop: Some(stop_tx),
            task: Some(task),
            ..handle
        })
    }
}

async fn run(
    sim: Arc<Sim>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: oneshot::Receiver<()>,
    state_dir: Option<PathBuf>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    let ctl = tokio::spawn(controller_loop(sim.clone(), state_dir.clone()));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => {
                let Ok((tcp, _)) = r else { continue };
                let acceptor = acceptor.clone();
                let sim = sim.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req| server::handle(sim.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    ctl.abort();
    for c in sim.clusters.values() {
        c.watch_epoch.send_modify(|e| *e += 1);
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    if let Some(d) = state_dir {
        persist(&sim, &d, &mut BTreeMap::new());
    }
}

async fn controller_loop(sim: Arc<Sim>, state_dir: Option<PathBuf>) {
    let mut pending: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut persisted: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_persist = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        for (name, c) in &sim.clusters {
            let dirty = c.lock().dirty;
            if dirty || pending.contains(name) {
                if controllers::reconcile(c, sim.timing) {
                    pending.insert(name.clone());
                } else {
                    pending.remove(name);
                }
            }
        }
        if let Some(d) = &state_dir
            && last_persist.elapsed() > Duration::from_secs(5)
        {
            last_persist = tokio::time::Instant::now();
            persist(&sim, d, &mut persisted);
        }
    }
}

impl SimHandle {
    /// `sim-1` … `sim-N`.
    pub fn cluster_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sim.clusters.keys().cloned().collect();
        v.sort_by_key(|n| n.trim_start_matches("sim-").parse::<usize>().unwrap_or(0));
        v
    }

    /// `https://127.0.0.1:PORT/clusters/<cluster>`.
    pub fn server_url(&self, cluster: &str) -> String {
        format!("https://{}/clusters/{cluster}", self.sim.addr)
    }

    /// `DIR/<cluster>.kubeconfig` when a kubeconfig directory was configured.
    pub fn kubeconfig_path(&self, cluster: &str) -> Option<PathBuf> {
        self.kubeconfig_dir
            .as_ref()
            .map(|d| d.join(format!("{cluster}.kubeconfig")))
    }

    /// A kubeconfig for one cluster (CA data and a bearer token; any token is accepted).
    pub fn kubeconfig_yaml(&self, cluster: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: {cluster}-admin\n  user:\n    token: flotilla-sim-{cluster}\ncontexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: {cluster}-admin\n    namespace: default\ncurrent-context: {cluster}\npreferences: {{}}\n",
            self.server_url(cluster)
        )
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sim.addr
    }

    /// Sets fault injection for a cluster (unknown names are ignored).
    pub fn set_faults(&self, cluster: &str, faults: Faults) {
        if let Some(c) = self.sim.clusters.get(cluster) {
            server::set_faults(c, faults);
        }
    }

    /// Simulates an API server restart, keeping or wiping state.
    pub fn restart(&self, cluster: &str, keep_state: bool) {
        if let Some(c) = self.sim.clusters.get(cluster) {
            server::restart(c, keep_state);
        }
    }

    /// Forgets the watch history, so watches resuming from any older
    /// resourceVersion get `410 Gone`.
    pub fn compact(&self, cluster: &str) {
        if let Some(c) = self.sim.clusters.get(cluster) {
            c.compact();
        }
    }

    /// Counters of a cluster: `requests`, `writes` (POST/PUT/PATCH/DELETE),
    /// `held` (requests waiting, see [`Faults::hold_after_requests`]),
    /// `objects`, `resourceVersion`. Also at `GET /admin/clusters/NAME/stats`.
    pub fn stats(&self, cluster: &str) -> Option<serde_json::Value> {
        self.sim.clusters.get(cluster).map(|c| server::stats(c))
    }

    /// Stops serving, ends watches and persists state (when a state dir is set).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
