//! Plain-HTTP listener for probes and Prometheus (`--metrics-listen`):
//! `/healthz` (liveness: fails only when the store latched an IO error and
//! could not be reopened, so a restart is the way out), `/readyz` (the store
//! takes writes, TLS listener up, first Git pass done or no repositories)
//! and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::fleet::Fleet;
use crate::store::{Store, StoreHealth};

/// What `/readyz` looks at.
#[derive(Debug)]
pub struct Readiness {
    store: Store,
    fleet: Arc<Fleet>,
    listener_up: AtomicBool,
}

impl Readiness {
    /// Readiness of a hub with this store; the listener is not up yet.
    pub fn new(store: Store, fleet: Arc<Fleet>) -> Arc<Self> {
        Arc::new(Self {
            store,
            fleet,
            listener_up: AtomicBool::new(false),
        })
    }

    /// Marks the TLS listener as serving (or not).
    pub fn set_listener_up(&self, up: bool) {
        self.listener_up.store(up, Ordering::Relaxed);
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), String> {
        match self.store.health() {
            StoreHealth::Writable => {}
            StoreHealth::Recovering { error } | StoreHealth::Failed { error } => {
                return Err(format!("store cannot write, reopening it: {error}"));
            }
        }
        // A full disk shows up here even when nothing else writes.
        self.store
            .probe_write(PROBE_EVERY)
            .map_err(|e| format!("store cannot write: {e}"))?;
        if !self.listener_up.load(Ordering::Relaxed) {
            return Err("agent/API listener not up".to_owned());
        }
        let repos = self.store.repos().map_err(|e| format!("store: {e}"))?;
        let pending: Vec<String> = repos
            .iter()
            .filter(|r| r.last_fetch_ms == 0)
            .map(|r| crate::source::redact_url(&r.url))
            .collect();
        if !pending.is_empty() {
            return Err(format!("first Git pass pending for {}", pending.join(", ")));
        }
        Ok(())
    }

    /// `Ok` while the process can go on, else why it should be restarted.
    pub fn live(&self) -> Result<(), String> {
        match self.store.health() {
            StoreHealth::Failed { error } => Err(format!(
                "store latched an IO error and could not be reopened: {error}"
            )),
            StoreHealth::Writable | StoreHealth::Recovering { .. } => Ok(()),
        }
    }
}

/// How often `/readyz` writes a probe record (more frequent checks reuse
/// the last result).
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

async fn healthz(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    match r.live() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

async fn readyz(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    // The probe write flushes to disk: off the async workers.
    let checked = tokio::task::spawn_blocking(move || r.check())
        .await
        .unwrap_or_else(|e| Err(format!("readiness check failed: {e}")));
    match checked {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    let body = crate::metrics::metrics().encode(&r.store, &r.fleet);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// The router of the listener.
pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}
