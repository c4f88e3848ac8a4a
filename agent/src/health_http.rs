//! Plain-HTTP listener for probes and Prometheus (`--health-listen`):
//! `/healthz` (the process answers), `/readyz` (connected to the hub at
//! least once, or enforcing a cached desired state) and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::cache::Cache;

/// Whether the agent is ready, else why not.
///
/// # Errors
/// The reason it is not ready.
pub fn check(cache: &Cache) -> Result<(), String> {
    let m = crate::metrics::metrics();
    // The engine's last pass says what it enforces; the cache is read only
    // before that pass.
    if m.connected_once() || m.generation() > 0 || cache.snapshot().generation > 0 {
        Ok(())
    } else {
        Err("never connected to the hub and no cached desired state".to_owned())
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(cache): State<Arc<Cache>>) -> impl IntoResponse {
    match check(&cache) {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::metrics().encode(),
    )
}

/// The router of the listener.
pub fn router(cache: Arc<Cache>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(cache)
}

/// Binds `addr` and serves until the task is aborted.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    cache: Arc<Cache>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(cache);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health listener failed");
        }
    });
    tracing::info!(addr = %local, "health and metrics listening");
    Ok((local, task))
}
