//! Accepting connections so that no peer, authenticated or not, can take
//! the hub down: admission caps per class and per source, a deadline on the
//! TLS handshake (or, on plain HTTP, on the first request), and an idle
//! timeout on established connections.
//!
//! Every listener of the hub goes through here: the TLS listener of the
//! agent link and the user API ([`serve_grpc`], which hands connections to
//! tonic), and the plain-HTTP probe/metrics and webhook listeners
//! ([`serve_http`]).
//!
//! Classes on the TLS listener, each with its own cap, so that one kind of
//! peer cannot starve another:
//!
//! - **pending**: accepted, TLS handshake not finished. At most
//!   `max_pending` in all and `max_pending_per_source` per source address;
//!   each has `handshake_timeout` to finish. When the pending table is full
//!   the *oldest* pending connection is dropped to make room (a real client
//!   finishes its handshake in milliseconds; a slow-loris one waits), so a
//!   flood of half-open handshakes delays new clients instead of locking
//!   them out.
//! - **authenticated**: the handshake verified a client certificate of the
//!   hub CA (agents). Capped in all (`max_authenticated`) and per cluster
//!   name (`max_per_identity`); never displaced by the other classes, so
//!   established agents keep being served whatever unauthenticated peers
//!   do.
//! - **unauthenticated**: no client certificate (the CLI and API clients,
//!   enrolling agents). Capped in all and per source address.
//!
//! An established connection with no request in flight for `idle_timeout`
//! is closed; on plain HTTP, a connection that sends no request within
//! `handshake_timeout` too. Every refusal and timeout counts in
//! `flotilla_hub_connections_rejected_total{listener,reason}` or
//! `flotilla_hub_connection_timeouts_total{listener,phase}` and is logged,
//! at most once per 10 s per listener and reason.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// Limits of one listener. [`Default`] gives the documented defaults
/// (docs/security.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Time to finish the TLS handshake (TLS listener) or to send the first
    /// request after connecting (plain HTTP, and HTTP/2 after TLS).
    pub handshake_timeout: Duration,
    /// An established connection with no request in flight for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// Connections still in their handshake, from all sources.
    pub max_pending: usize,
    /// Connections still in their handshake, per source address.
    pub max_pending_per_source: usize,
    /// Established connections without a client certificate (TLS), or all
    /// connections (plain HTTP).
    pub max_unauthenticated: usize,
    /// The same, per source address.
    pub max_unauthenticated_per_source: usize,
    /// Established connections with a verified client certificate.
    pub max_authenticated: usize,
    /// Established connections per cluster (client certificate name).
    pub max_per_identity: usize,
    /// Longest a plain-HTTP request may take, body included.
    pub request_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_pending: 512,
            max_pending_per_source: 64,
            max_unauthenticated: 1024,
            max_unauthenticated_per_source: 128,
            max_authenticated: 50_000,
            max_per_identity: 8,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl ListenerLimits {
    /// Limits of the plain-HTTP listeners (probes, metrics, webhooks): the
    /// same deadlines, smaller caps.
    #[must_use]
    pub fn http(&self) -> Self {
        Self {
            max_unauthenticated: self.max_unauthenticated.min(256),
            max_unauthenticated_per_source: self.max_unauthenticated_per_source.min(32),
            ..self.clone()
        }
    }

    /// File descriptors the caps may use at once.
    #[must_use]
    pub fn max_descriptors(&self) -> usize {
        self.max_pending
            .saturating_add(self.max_unauthenticated)
            .saturating_add(self.max_authenticated)
    }
}

/// Lets one log line per key through at most every 10 s and counts the
/// others, so a flood of refusals does not become a flood of log lines.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last: Mutex<HashMap<ThrottleKey, (Instant, u64)>>,
}

/// What a throttled line is about: (listener or area, reason).
type ThrottleKey = (&'static str, &'static str);

impl LogThrottle {
    /// `Some(suppressed)` when a line for `key` may be logged now, with how
    /// many were held back since the last one.
    pub fn allow(&self, key: ThrottleKey) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(&key) {
            Some(entry) if now.duration_since(entry.0) < Duration::from_secs(10) => {
                entry.1 += 1;
                None
            }
            Some(entry) => {
                let suppressed = entry.1;
                *entry = (now, 0);
                Some(suppressed)
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// The process-wide throttle of the hub's abuse log lines.
pub fn throttle() -> &'static LogThrottle {
    static T: std::sync::OnceLock<LogThrottle> = std::sync::OnceLock::new();
    T.get_or_init(LogThrottle::default)
}

fn warn_limit(listener: &'static str, reason: &'static str, peer: Option<IpAddr>) {
    if let Some(suppressed) = throttle().allow((listener, reason)) {
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        tracing::warn!(
            listener,
            reason,
            peer = %peer,
            suppressed,
            "connection refused or closed by a limit (logged at most every 10s per reason)"
        );
    }
}

fn rejected(listener: &'static str, reason: &'static str, peer: Option<IpAddr>) {
    crate::metrics::metrics().connection_rejected(listener, reason);
    warn_limit(listener, reason, peer);
}

fn timed_out(listener: &'static str, phase: &'static str, peer: Option<IpAddr>) {
    crate::metrics::metrics().connection_timed_out(listener, phase);
    warn_limit(listener, phase, peer);
}

/// A count per key with a cap per key and in all.
#[derive(Debug)]
struct Counter<K> {
    listener: &'static str,
    class: &'static str,
    max: usize,
    max_per_key: usize,
    state: Mutex<(usize, HashMap<K, usize>)>,
}

impl<K: std::hash::Hash + Eq + Clone> Counter<K> {
    fn new(listener: &'static str, class: &'static str, max: usize, max_per_key: usize) -> Self {
        Self {
            listener,
            class,
            max,
            max_per_key,
            state: Mutex::new((0, HashMap::new())),
        }
    }

    /// Takes a place for `key`; `Err(per_key)` names the cap that refused.
    fn acquire(self: &Arc<Self>, key: K) -> Result<Slot<K>, bool> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let per = st.1.get(&key).copied().unwrap_or(0);
        if per >= self.max_per_key {
            return Err(true);
        }
        if st.0 >= self.max {
            return Err(false);
        }
        st.0 += 1;
        *st.1.entry(key.clone()).or_insert(0) += 1;
        crate::metrics::metrics().connections_open(self.listener, self.class, st.0);
        Ok(Slot {
            counter: self.clone(),
            key: Some(key),
        })
    }

    fn release(&self, key: &K) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = st.0.saturating_sub(1);
        if let Some(n) = st.1.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                st.1.remove(key);
            }
        }
        crate::metrics::metrics().connections_open(self.listener, self.class, st.0);
    }
}

/// A place taken in a [`Counter`], given back on drop.
#[derive(Debug)]
struct Slot<K: std::hash::Hash + Eq + Clone> {
    counter: Arc<Counter<K>>,
    key: Option<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.counter.release(&k);
        }
    }
}

/// Connections in their handshake, oldest first, so the oldest can be
/// dropped when the table is full.
#[derive(Debug)]
struct PendingTable {
    listener: &'static str,
    max: usize,
    max_per_source: usize,
    state: Mutex<PendingState>,
}

#[derive(Debug, Default)]
struct PendingState {
    next: u64,
    /// id → (source, eviction signal)
    order: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
    per_source: HashMap<IpAddr, usize>,
}

impl PendingState {
    fn remove(&mut self, id: u64) -> Option<(IpAddr, oneshot::Sender<()>)> {
        let (ip, tx) = self.order.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
        Some((ip, tx))
    }
}

/// A place in the pending table; `evicted` fires when it was given to a
/// newer connection.
struct PendingSlot {
    table: Arc<PendingTable>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut st = self.table.state.lock().unwrap_or_else(|p| p.into_inner());
        st.remove(self.id);
        crate::metrics::metrics().connections_open(self.table.listener, "pending", st.order.len());
    }
}

impl PendingTable {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PendingSlot> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.per_source.get(&ip).copied().unwrap_or(0) >= self.max_per_source {
            drop(st);
            rejected(self.listener, "pending_per_source", Some(ip));
            return None;
        }
        if st.order.len() >= self.max {
            let oldest = st.order.keys().next().copied();
            if let Some((old_ip, tx)) = oldest.and_then(|id| st.remove(id)) {
                let _ = tx.send(());
                crate::metrics::metrics().connection_rejected(self.listener, "pending_evicted");
                warn_limit(self.listener, "pending_evicted", Some(old_ip));
            }
        }
        let id = st.next;
        st.next += 1;
        let (tx, rx) = oneshot::channel();
        st.order.insert(id, (ip, tx));
        *st.per_source.entry(ip).or_insert(0) += 1;
        crate::metrics::metrics().connections_open(self.listener, "pending", st.order.len());
        Some(PendingSlot {
            table: self.clone(),
            id,
            evicted: rx,
        })
    }
}

/// Request activity of one connection, for the idle timeout.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    seen_request: AtomicBool,
    last_change: Mutex<Instant>,
}

impl Activity {
    /// A connection that must send its first request within the handshake
    /// timeout (plain HTTP: that is its handshake).
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            seen_request: AtomicBool::new(false),
            last_change: Mutex::new(Instant::now()),
        })
    }

    /// A connection past its TLS handshake: idle from the start. (A client
    /// may connect ahead of its first call; what such connections can hold
    /// is bounded by the class caps.)
    fn established() -> Arc<Self> {
        let a = Self::new();
        a.seen_request.store(true, Ordering::Relaxed);
        a
    }

    /// Marks a request as in flight until the guard is dropped (hold it in
    /// the response body, so a stream counts until it ends).
    pub fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.seen_request.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(self.clone())
    }

    /// When the connection becomes idle-expired, or `None` while a request
    /// is in flight.
    fn deadline(&self, limits: &ListenerLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self.last_change.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            since
                + if self.seen_request.load(Ordering::Relaxed) {
                    limits.idle_timeout
                } else {
                    limits.handshake_timeout
                },
        )
    }
}

/// A request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        *self.0.last_change.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The activity of the open connections of the TLS listener by peer
/// address: tonic serves the connections, and the request layer
/// ([`crate::api::guard`]) finds a request's connection here.
#[derive(Debug, Default)]
pub struct ConnRegistry {
    by_peer: Mutex<HashMap<SocketAddr, Weak<Activity>>>,
}

impl ConnRegistry {
    /// The activity of the connection from `peer`.
    pub fn activity(&self, peer: SocketAddr) -> Option<Arc<Activity>> {
        self.by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .and_then(Weak::upgrade)
    }

    fn insert(&self, peer: SocketAddr, activity: &Arc<Activity>) {
        self.by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Arc::downgrade(activity));
    }

    fn remove(&self, peer: SocketAddr) {
        self.by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
    }
}

/// An established connection: the stream, its class slot (given back when
/// the connection closes) and its idle timer.
pub struct GuardedConn<S> {
    inner: S,
    listener: &'static str,
    peer: SocketAddr,
    limits: Arc<ListenerLimits>,
    activity: Arc<Activity>,
    idle: Pin<Box<tokio::time::Sleep>>,
    registry: Option<Arc<ConnRegistry>>,
    _slot: Box<dyn Send + Sync>,
}

impl<S> Drop for GuardedConn<S> {
    fn drop(&mut self) {
        if let Some(r) = &self.registry {
            r.remove(self.peer);
        }
    }
}

impl<S> GuardedConn<S> {
    /// Whether the connection has been idle too long; re-arms the timer
    /// otherwise (the caller's task is woken when it fires).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            let next = match self.activity.deadline(&self.limits) {
                Some(deadline) if deadline <= Instant::now() => {
                    let phase = if self.activity.seen_request.load(Ordering::Relaxed) {
                        "idle"
                    } else {
                        "first_request"
                    };
                    timed_out(self.listener, phase, Some(self.peer.ip()));
                    return true;
                }
                Some(deadline) => deadline,
                None => Instant::now() + self.limits.idle_timeout,
            };
            self.idle
                .as_mut()
                .reset(tokio::time::Instant::from_std(next));
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idle_expired(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle; closed by the hub",
            )));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedConn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// tonic reads the peer address and certificates from here, as for its own
/// TLS acceptor.
impl Connected for GuardedConn<tokio_rustls::server::TlsStream<TcpStream>> {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// First and longest pause after an accept error such as EMFILE.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(100);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// At most one warning per this long while accept keeps failing.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts one connection, pausing after errors such as running out of
/// file descriptors instead of spinning on them.
async fn accept(listener: &TcpListener, name: &'static str) -> (TcpStream, SocketAddr) {
    // Backoff after errors that retrying at once does not cure, doubling
    // up to a second while they last; a warning at most every 10 s.
    let mut pause = ACCEPT_PAUSE_MIN;
    let mut last_warning: Option<std::time::Instant> = None;
    let mut suppressed = 0u64;
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                let transient = matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                );
                if !transient {
                    // EMFILE/ENFILE and the like: the descriptor is not
                    // freed by retrying at once.
                    rejected(name, "accept_error", None);
                    if last_warning.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                        let too_many_files = matches!(e.raw_os_error(), Some(24 | 23));
                        tracing::warn!(
                            listener = name,
                            error = %e,
                            suppressed,
                            pause_ms = pause.as_millis() as u64,
                            hint = if too_many_files { "the open files limit is exhausted: raise it (ulimit -n, LimitNOFILE) or lower --max-agent-connections" } else { "" },
                            "accepting a connection failed; pausing"
                        );
                        last_warning = Some(std::time::Instant::now());
                        suppressed = 0;
                    } else {
                        suppressed += 1;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                }
            }
        }
    }
}

/// The cluster named by a verified client certificate, if any.
fn identity_of(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<String> {
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates()?.first()?;
    crate::pki::peer_identity(leaf).ok().map(|id| id.cluster)
}

/// Accepts TLS connections on `listener` under `limits` and yields the
/// established ones for `tonic::transport::Server::serve_with_incoming*`
/// (which must then be built without its own TLS config). Stops when
/// `stop` becomes true.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ListenerLimits,
    registry: Arc<ConnRegistry>,
    mut stop: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<GuardedConn<tokio_rustls::server::TlsStream<TcpStream>>, io::Error>,
> {
    const NAME: &str = "grpc";
    let limits = Arc::new(limits);
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let pending = Arc::new(PendingTable {
        listener: NAME,
        max: limits.max_pending,
        max_per_source: limits.max_pending_per_source,
        state: Mutex::default(),
    });
    let unauthenticated = Arc::new(Counter::<IpAddr>::new(
        NAME,
        "unauthenticated",
        limits.max_unauthenticated,
        limits.max_unauthenticated_per_source,
    ));
    let authenticated = Arc::new(Counter::<String>::new(
        NAME,
        "authenticated",
        limits.max_authenticated,
        limits.max_per_identity,
    ));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = stopped(&mut stop) => return,
                conn = accept(&listener, NAME) => conn,
            };
            let Some(mut slot) = pending.admit(peer.ip()) else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, limits, registry, tx) = (
                acceptor.clone(),
                limits.clone(),
                registry.clone(),
                tx.clone(),
            );
            let (unauthenticated, authenticated) = (unauthenticated.clone(), authenticated.clone());
            tokio::spawn(async move {
                let handshake = tokio::select! {
                    r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => r,
                    _ = &mut slot.evicted => return,
                };
                drop(slot);
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        timed_out(NAME, "handshake", Some(peer.ip()));
                        return;
                    }
                };
                let class: Box<dyn Send + Sync> = match identity_of(&tls) {
                    Some(cluster) => match authenticated.acquire(cluster) {
                        Ok(s) => Box::new(s),
                        Err(per_key) => {
                            let reason = if per_key {
                                "authenticated_per_identity"
                            } else {
                                "authenticated_cap"
                            };
                            rejected(NAME, reason, Some(peer.ip()));
                            return;
                        }
                    },
                    None => match unauthenticated.acquire(peer.ip()) {
                        Ok(s) => Box::new(s),
                        Err(per_key) => {
                            let reason = if per_key {
                                "unauthenticated_per_source"
                            } else {
                                "unauthenticated_cap"
                            };
                            rejected(NAME, reason, Some(peer.ip()));
                            return;
                        }
                    },
                };
                let activity = Activity::established();
                registry.insert(peer, &activity);
                let conn = GuardedConn {
                    inner: tls,
                    listener: NAME,
                    peer,
                    idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
                    limits,
                    activity,
                    registry: Some(registry),
                    _slot: class,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The server-side TLS configuration of the agent link and API listener:
/// the hub's certificate chain (with the CA, so an enrolling agent can
/// check its pin), client certificates of the hub CA verified when offered
/// and optional (enrollment and the API have none), HTTP/2 only.
///
/// # Errors
/// The PEM material does not parse.
pub fn server_tls(
    chain_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("server key: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| format!("CA certificate: {e}"))?)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("server certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A response body that holds a guard until the body is done.
pub struct GuardedBody<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> GuardedBody<B, G> {
    /// `inner`, holding `guard` until it is dropped.
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: http_body::Body + Unpin, G: Unpin> http_body::Body for GuardedBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` over plain HTTP/1.1 on `listener` under `limits` until
/// `stop` becomes true. `name` labels metrics and logs.
pub fn serve_http(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let limits = Arc::new(limits);
    let conns = Arc::new(Counter::<IpAddr>::new(
        name,
        "unauthenticated",
        limits.max_unauthenticated,
        limits.max_unauthenticated_per_source,
    ));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = stopped(&mut stop) => return,
                conn = accept(&listener, name) => conn,
            };
            let slot = match conns.acquire(peer.ip()) {
                Ok(s) => s,
                Err(per_key) => {
                    let reason = if per_key {
                        "unauthenticated_per_source"
                    } else {
                        "unauthenticated_cap"
                    };
                    rejected(name, reason, Some(peer.ip()));
                    continue;
                }
            };
            let activity = Activity::new();
            let conn = GuardedConn {
                inner: tcp,
                listener: name,
                peer,
                idle: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                limits: limits.clone(),
                activity: activity.clone(),
                registry: None,
                _slot: Box::new(slot),
            };
            let router = router.clone();
            let request_timeout = limits.request_timeout;
            let handshake_timeout = limits.handshake_timeout;
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let active = activity.begin();
                        let router = router.clone();
                        async move {
                            use tower::ServiceExt as _;
                            let req = req.map(axum::body::Body::new);
                            let resp =
                                match tokio::time::timeout(request_timeout, router.oneshot(req))
                                    .await
                                {
                                    Ok(Ok(resp)) => resp,
                                    Ok(Err(never)) => match never {},
                                    Err(_) => {
                                        timed_out(name, "request", Some(peer.ip()));
                                        let mut resp = http::Response::new(axum::body::Body::from(
                                            "request took too long\n",
                                        ));
                                        *resp.status_mut() = http::StatusCode::REQUEST_TIMEOUT;
                                        resp
                                    }
                                };
                            Ok::<_, Infallible>(
                                resp.map(|b| axum::body::Body::new(GuardedBody::new(b, active))),
                            )
                        }
                    });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(handshake_timeout);
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(listener = name, peer = %peer, error = %e, "connection ended");
                        }
                    }
                    () = stopped(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
    })
}

/// Binds `addr` for [`serve_http`] and returns the bound address too.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Raises the soft limit on open files to the hard limit, as servers do, so
/// the connection caps are reached before the descriptors run out; returns
/// the limit in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::debug!(error = %e, "cannot raise the open files limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_caps_per_key_and_in_all() {
        let c = Arc::new(Counter::<u8>::new("t", "c", 3, 2));
        let a1 = c.acquire(1).unwrap();
        let _a2 = c.acquire(1).unwrap();
        assert_eq!(c.acquire(1).err(), Some(true));
        let _b1 = c.acquire(2).unwrap();
        assert_eq!(c.acquire(3).err(), Some(false));
        drop(a1);
        assert!(c.acquire(3).is_ok());
    }

    #[tokio::test]
    async fn a_full_pending_table_drops_its_oldest_entry() {
        let t = Arc::new(PendingTable {
            listener: "t",
            max: 2,
            max_per_source: 2,
            state: Mutex::default(),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut first = t.admit(a).unwrap();
        let mut second = t.admit(a).unwrap();
        // Per source: a third from the same address is refused.
        assert!(t.admit(a).is_none());
        // Another source takes the place of the oldest.
        let mut third = t.admit(b).unwrap();
        assert!((&mut first.evicted).await.is_ok());
        assert!(second.evicted.try_recv().is_err());
        assert!(third.evicted.try_recv().is_err());
        drop(first);
        // Dropping an evicted slot does not free another's place.
        assert_eq!(t.state.lock().unwrap().order.len(), 2);
        drop(second);
        assert_eq!(t.state.lock().unwrap().order.len(), 1);
        assert_eq!(t.state.lock().unwrap().per_source.get(&a), None);
    }

    #[test]
    fn idle_deadline_follows_requests() {
        let limits = ListenerLimits {
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            ..ListenerLimits::default()
        };
        let start = Instant::now();
        let a = Activity::new();
        let first = a.deadline(&limits).unwrap();
        assert!(first >= start + Duration::from_secs(5) && first < start + Duration::from_secs(6));
        let req = a.begin();
        assert_eq!(a.deadline(&limits), None);
        drop(req);
        let after = a.deadline(&limits).unwrap();
        assert!(after >= Instant::now() + Duration::from_secs(59));
    }

    #[test]
    fn log_throttle_lets_one_line_through_per_key() {
        let t = LogThrottle::default();
        assert_eq!(t.allow(("a", "x")), Some(0));
        assert_eq!(t.allow(("a", "x")), None);
        assert_eq!(t.allow(("a", "x")), None);
        assert_eq!(t.allow(("a", "y")), Some(0));
    }
}
