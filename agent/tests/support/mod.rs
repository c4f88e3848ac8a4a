//! Helpers shared by the agent's integration tests: an engine against a
//! one-cluster Kubernetes API simulator.

// Each test crate uses a different subset.
#![allow(dead_code)]

use std::sync::Arc;

use flotilla_agent::bundle::Bundle;
use flotilla_agent::cache::{Cache, CachedApp};
use flotilla_agent::cluster::Cluster;
use flotilla_agent::engine::Engine;
use flotilla_agent::report::Report;
use flotilla_proto::AppStatus;
use tokio::sync::{Notify, watch};

pub mod interrupt;

/// A simulator with one cluster (`sim-1`), a client for it, and an engine
/// with its cache in a temporary directory.
pub struct Harness {
    pub sim: flotilla_sim::SimHandle,
    pub dir: tempfile::TempDir,
    pub client: kube::Client,
    pub cache: Arc<Cache>,
    pub engine: Engine,
    pub reports: watch::Receiver<Option<Report>>,
}

/// [`harness_with`] without watches.
pub async fn harness() -> Harness {
    harness_with(false).await
}

/// The harness; with `watches`, the cluster watches the objects it applies
/// and wakes the engine on changes (drift).
pub async fn harness_with(watches: bool) -> Harness {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = flotilla_sim::Simulator::start(flotilla_sim::SimConfig {
        clusters: 1,
        kubeconfig_dir: Some(dir.path().to_owned()),
        ..Default::default()
    })
    .await
    .expect("simulator");
    let path = sim.kubeconfig_path("sim-1").expect("kubeconfig path");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let cache = Arc::new(Cache::open(&state).expect("cache"));
    let (tx, reports) = watch::channel(None);
    let trigger = Arc::new(Notify::new());
    let cluster = if watches {
        Cluster::with_watches(client.clone(), trigger.clone())
    } else {
        Cluster::new(client.clone())
    };
    let engine = Engine::new(Arc::new(cluster), cache.clone(), trigger, tx);
    Harness {
        sim,
        dir,
        client,
        cache,
        engine,
        reports,
    }
}

/// Puts `bundle` in the cache as the desired state of its application (a
/// new generation), as the link does when the hub sends it.
pub fn set_bundle(cache: &Cache, bundle: Bundle) {
    cache
        .update(|s| {
            s.generation += 1;
            let app = s
                .apps
                .entry(bundle.name.clone())
                .or_insert_with(CachedApp::default);
            app.bundle = bundle;
        })
        .expect("cache update");
}

/// The last status the engine reported for `app`.
pub fn status(h: &Harness, app: &str) -> Option<AppStatus> {
    h.reports
        .borrow()
        .as_ref()
        .and_then(|r| r.apps.iter().find(|a| a.name == app).cloned())
}
