//! The UI's HTTPS listener: the hub's own serving certificate, HTTP/1.1,
//! a cap on connections and deadlines on the handshake and on request
//! headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Connections the UI serves at once (browsers open a few each; the live
/// updates hold one per open page).
const MAX_CONNECTIONS: usize = 512;
/// Longest a TLS handshake or a request's headers may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors setting up the UI listener.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("ui listener TLS configuration: {0}")]
    Tls(String),
    #[error("ui listener on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The TLS configuration of the UI: the hub's certificate chain and key,
/// no client certificates, HTTP/1.1 (server-sent events need no more).
///
/// # Errors
/// The PEM material does not parse.
pub fn tls_config(chain_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(format!("server certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ServeError::Tls(format!("server key: {e}")))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| ServeError::Tls(format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Binds `addr` and serves `router` over TLS until `stop` becomes true;
/// returns the bound address and the task.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { addr, source })?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = stopped(&mut stop) => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "ui accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(peer = %peer, "ui connection refused: too many connections");
                continue;
            };
            let (acceptor, router, mut stop) = (acceptor.clone(), router.clone(), stop.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "ui TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %peer, "ui TLS handshake timed out");
                        return;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HANDSHAKE_TIMEOUT);
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(peer = %peer, error = %e, "ui connection ended");
                        }
                    }
                    () = stopped(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                    }
                }
            });
        }
    });
    Ok((bound, task))
}
