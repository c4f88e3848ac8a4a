//! Plain-HTTP listener for probes and Prometheus (`--metrics-listen`):
//! `/healthz` (the process answers), `/readyz` (store open, TLS listener up,
//! first Git pass done or no repositories) and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::fleet::Fleet;
use crate::store::Store;

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
        self.store
            .schema_version()
            .map_err(|e| format!("store: {e}"))?;
        if !self.listener_up.load(Ordering::Relaxed) {
            return Err("agent/API listener not up".to_owned());
        }
        let repos = self.store.repos().map_err(|e| format!("store: {e}"))?;
        let pending: Vec<String> = repos
            .iter()
            .filter(|r| r.last_fetch_ms == 0)
            .map(|r| crate::gitsync::redact(&r.url))
            .collect();
        if !pending.is_empty() {
            return Err(format!("first Git pass pending for {}", pending.join(", ")));
        }
        Ok(())
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    match r.check() {
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

/// Binds `addr` and serves until the task is aborted.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(readiness);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    tracing::info!(addr = %local, "metrics and probes listening");
    Ok((local, task))
}
