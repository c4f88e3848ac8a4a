//! `AgentLink`: the long-lived stream each agent opens to the hub.
//!
//! The cluster identity comes only from the verified client certificate.
//! The stream carries that cluster's desired state and nothing else.
//!
//! Desired state goes out in bounded messages ([`flotilla_proto::wire`]):
//! to an agent that announces it, in parts and content-addressed chunks of
//! at most the chunk size, skipping the chunks the agent holds; to an older
//! agent as one message, withholding a bundle it cannot decode (the
//! application shows why at the hub).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::{HubContext, now_ms};
use crate::pki;
use flotilla_proto as pb;
use pb::agent_message::Kind as AgentKind;
use pb::hub_message::Kind as HubKind;
use pb::wire::{ChunkedForm, HeldChunks, PeerWire};

/// How long an agent may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Three missed agent heartbeats (sent every 30 s) close a stream, so a
/// peer that holds a connection open without speaking cannot pin hub
/// resources forever.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The `AgentLink` service.
#[derive(Clone, Debug)]
pub struct AgentLinkService {
    ctx: HubContext,
    enroll_limits: Arc<EnrollLimits>,
    chunks: Arc<ChunkCache>,
}

/// Chunked forms of the current large bundles, shared by every stream: a
/// bundle is cut and hashed once, whatever the number of clusters.
#[derive(Debug, Default)]
pub struct ChunkCache {
    forms: Mutex<HashMap<FormKey, (String, Arc<ChunkedForm>)>>,
}

/// (bundle digest, chunk size) of a chunked form; the value names its
/// application.
type FormKey = (String, usize);

impl ChunkCache {
    fn get(&self, digest: &str, size: usize) -> Option<Arc<ChunkedForm>> {
        self.forms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(digest.to_owned(), size))
            .map(|(_, f)| f.clone())
    }

    /// The chunked form of `bundle`, cut now if it is not cached.
    fn get_or_split(&self, bundle: &pb::AppBundle, size: usize) -> Arc<ChunkedForm> {
        if let Some(f) = self.get(&bundle.digest, size) {
            return f;
        }
        let form = Arc::new(pb::wire::split(bundle, size));
        self.forms.lock().unwrap_or_else(|p| p.into_inner()).insert(
            (bundle.digest.clone(), size),
            (bundle.name.clone(), form.clone()),
        );
        form
    }

    /// Cuts the bundles of `desired` that go in chunks, off the async
    /// threads (hashing a large bundle takes a while), and forgets forms of
    /// bundles that are no longer current.
    async fn prepare(&self, fleet: &crate::fleet::Fleet, desired: &pb::DesiredState, size: usize) {
        self.forms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(digest, _), (app, _)| fleet.bundle(app).is_some_and(|b| b.digest == *digest));
        for b in &desired.bundles {
            if prost::Message::encoded_len(b) <= size || self.get(&b.digest, size).is_some() {
                continue;
            }
            let bundle = b.clone();
            match tokio::task::spawn_blocking(move || pb::wire::split(&bundle, size)).await {
                Ok(form) => {
                    self.forms
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((b.digest.clone(), size), (b.name.clone(), Arc::new(form)));
                }
                // Cut on the stream's task instead.
                Err(e) => {
                    tracing::warn!(app = %b.name, error = %e, "cutting a bundle into chunks failed")
                }
            }
        }
    }
}

/// Failed enrollment attempts allowed per window: per source address, per
/// cluster (attempts with a token bound to it that still failed) and from
/// all sources together.
const FAILURES_PER_SOURCE: u32 = 10;
const FAILURES_PER_CLUSTER: u32 = 10;
const FAILURES_IN_ALL: u32 = 600;
const ENROLL_WINDOW: Duration = Duration::from_secs(60);

/// A fixed-window counter per key.
#[derive(Debug)]
pub struct RateLimit<K> {
    windows: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K> Default for RateLimit<K> {
    fn default() -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq> RateLimit<K> {
    /// Counts an event for `key`; false when it is over `max` in the
    /// current window.
    pub fn allow(&self, key: K, max: u32, window: Duration) -> bool {
        let now = Instant::now();
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 10_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = w.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= max
    }

    /// Whether `key` is over `max` in the current window, without counting.
    pub fn exceeded(&self, key: &K, max: u32, window: Duration) -> bool {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        w.get(key)
            .is_some_and(|(start, n)| start.elapsed() < window && *n >= max)
    }
}

/// The enrollment limits.
///
/// A token is looked up before any limit applies, so a valid token is never
/// refused because of other callers' failures: not when another client
/// behind the same address (one NAT) sends invalid tokens, and not when
/// many addresses do. Tokens carry 256 random bits; what guards them is
/// that, not a guess rate. The limits make failing callers back off and
/// bound their work: past [`FAILURES_PER_SOURCE`] failures a minute from one
/// address, or [`FAILURES_IN_ALL`] from all, failures are answered
/// `RESOURCE_EXHAUSTED`; past [`FAILURES_PER_CLUSTER`] failed attempts a
/// minute with a token bound to one cluster (a leaked token sent with bad
/// requests), that cluster's token is not even looked at until the window
/// ends. Sizes, deadlines and calls in flight are limited before the
/// request is decoded ([`super::guard`]).
#[derive(Debug, Default)]
pub struct EnrollLimits {
    per_source: RateLimit<IpAddr>,
    per_cluster: RateLimit<String>,
    in_all: RateLimit<()>,
}

impl EnrollLimits {
    /// Counts a failed attempt; the status to answer with.
    fn failure(&self, source: Option<IpAddr>, cluster: Option<&str>, status: Status) -> Status {
        let over_source =
            source.is_some_and(|s| !self.per_source.allow(s, FAILURES_PER_SOURCE, ENROLL_WINDOW));
        let over_cluster = cluster.is_some_and(|c| {
            !self
                .per_cluster
                .allow(c.to_owned(), FAILURES_PER_CLUSTER, ENROLL_WINDOW)
        });
        let over_all = !self.in_all.allow((), FAILURES_IN_ALL, ENROLL_WINDOW);
        if !(over_source || over_cluster || over_all) {
            return status;
        }
        let reason = if over_cluster {
            "cluster_failures"
        } else if over_source {
            "source_failures"
        } else {
            "failures"
        };
        crate::metrics::metrics().enrollment_refused(reason);
        if let Some(suppressed) = crate::listener::throttle().allow(("enroll", reason)) {
            tracing::warn!(
                peer = %source.map(|s| s.to_string()).unwrap_or_default(),
                cluster = cluster.unwrap_or_default(),
                reason,
                suppressed,
                "too many failed enrollment attempts (logged at most every 10s)"
            );
        }
        Status::resource_exhausted("too many failed enrollment attempts; try again later")
    }
}

impl AgentLinkService {
    pub fn new(ctx: HubContext) -> Self {
        Self {
            ctx,
            enroll_limits: Arc::default(),
            chunks: Arc::default(),
        }
    }

    /// Authenticates the peer of a stream: a certificate verified by TLS,
    /// naming a registered cluster, with the serial the hub last issued.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<pki::PeerIdentity, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let id = pki::peer_identity(leaf).map_err(|e| {
            tracing::warn!(error = %e, "refused agent stream");
            Status::unauthenticated("certificate does not name a cluster")
        })?;
        let rec = self.ctx.store.cluster(&id.cluster)?;
        let Some(rec) = rec else {
            tracing::warn!(cluster = %id.cluster, "refused agent stream: unknown cluster");
            return Err(Status::unauthenticated(format!(
                "unknown or removed cluster {:?}: this hub no longer accepts its agent; \
                 add the cluster again (flotilla cluster add) and enroll the agent with the new token",
                id.cluster
            )));
        };
        if rec.pending_serial.as_deref() == Some(id.serial.as_str()) {
            // First use of a renewed certificate: from now on only it counts.
            let serial = id.serial.clone();
            let promoted = self.ctx.store.update_cluster(&id.cluster, |c| {
                if c.pending_serial.as_deref() == Some(serial.as_str()) {
                    c.cert_serial = c.pending_serial.take();
                }
            })?;
            if promoted.is_some_and(|c| c.cert_serial.as_deref() == Some(id.serial.as_str())) {
                self.ctx.store.flush()?;
                tracing::info!(cluster = %id.cluster, serial = %id.serial, "renewed certificate in use; previous one revoked");
                return Ok(id);
            }
        }
        if rec.cert_serial.as_deref() != Some(id.serial.as_str()) {
            tracing::warn!(cluster = %id.cluster, serial = %id.serial, "refused agent stream: certificate revoked or superseded");
            return Err(Status::unauthenticated("certificate revoked"));
        }
        Ok(id)
    }
}

type HubStream = Pin<Box<dyn Stream<Item = Result<pb::HubMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_link_server::AgentLink for AgentLinkService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let source = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let limits = &self.enroll_limits;
        // One message for every token failure: a caller learns nothing
        // about which tokens exist.
        let refused = || Status::unauthenticated("invalid, used or expired bootstrap token");
        let found = match pki::bootstrap_token_hash(&req.token) {
            Some(hash) => self.ctx.store.bootstrap(&hash)?.map(|rec| (hash, rec)),
            None => None,
        };
        let Some((hash, rec)) = found else {
            return Err(limits.failure(source, None, refused()));
        };
        let cluster = rec.cluster.clone();
        if limits
            .per_cluster
            .exceeded(&cluster, FAILURES_PER_CLUSTER, ENROLL_WINDOW)
        {
            crate::metrics::metrics().enrollment_refused("cluster_failures");
            return Err(Status::resource_exhausted(
                "too many failed enrollment attempts; try again later",
            ));
        }
        let fail = |status: Status| limits.failure(source, Some(&cluster), status);
        if rec.expires_ms <= now_ms() {
            self.ctx.store.take_bootstrap(&hash)?;
            tracing::warn!(cluster = %rec.cluster, "refused enrollment: token expired");
            return Err(fail(refused()));
        }
        if self.ctx.store.cluster(&rec.cluster)?.is_none() {
            return Err(fail(refused()));
        }
        // Validate the request before spending the token.
        let (certificate_pem, serial) = self
            .ctx
            .pki
            .sign_csr(&rec.cluster, &req.csr_der)
            .map_err(|e| fail(Status::invalid_argument(e.to_string())))?;
        if self.ctx.store.take_bootstrap(&hash)?.is_none() {
            return Err(fail(refused()));
        }
        let updated = self.ctx.store.update_cluster(&rec.cluster, |c| {
            c.cert_serial = Some(serial.clone());
            c.pending_serial = None;
            c.agent_version.clone_from(&req.agent_version);
        })?;
        if updated.is_none() {
            return Err(fail(refused()));
        }
        self.ctx.store.flush_async().await?;
        tracing::info!(cluster = %rec.cluster, serial = %serial, "agent enrolled");
        Ok(Response::new(pb::EnrollResponse {
            certificate_pem,
            ca_pem: self.ctx.pki.ca_pem().to_owned(),
            cluster_name: rec.cluster,
        }))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let id = self.authenticate(&request)?;
        let req = request.into_inner();
        let (certificate_pem, serial) = self
            .ctx
            .pki
            .sign_csr(&id.cluster, &req.csr_der)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let updated = self.ctx.store.update_cluster(&id.cluster, |c| {
            c.pending_serial = Some(serial.clone());
        })?;
        if updated.is_none() {
            return Err(Status::unauthenticated("unknown or removed cluster"));
        }
        self.ctx.store.flush_async().await?;
        tracing::info!(cluster = %id.cluster, serial = %serial, "certificate renewed");
        Ok(Response::new(pb::EnrollResponse {
            certificate_pem,
            ca_pem: self.ctx.pki.ca_pem().to_owned(),
            cluster_name: id.cluster,
        }))
    }

    type ConnectStream = HubStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let id = self.authenticate(&request)?;
        let signals = self
            .ctx
            .fleet
            .subscribe(&id.cluster)
            .ok_or_else(|| Status::unauthenticated("unknown or removed cluster"))?;
        let (tx, rx) = mpsc::channel(8);
        let ctx = self.ctx.clone();
        let chunks = self.chunks.clone();
        let inbound = request.into_inner();
        tokio::spawn(async move {
            let cluster = id.cluster.clone();
            // The expiry shown with the cluster: the certificate in use.
            if let Err(e) = ctx.store.update_cluster(&cluster, |c| {
                c.cert_not_after_ms = id.not_after_ms;
            }) {
                tracing::warn!(cluster = %cluster, error = %e, "could not record the certificate's expiry");
            }
            ctx.fleet.link_opened(&cluster);
            if let Err(status) = session(&ctx, &chunks, &cluster, inbound, signals, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
            ctx.fleet.link_closed(&cluster);
            // Messages write the last-seen time only now and then: the
            // close records it exactly (a removed cluster stays removed).
            let now = now_ms();
            if let Err(e) = ctx.store.update_cluster(&cluster, |r| r.last_seen_ms = now) {
                tracing::warn!(cluster = %cluster, error = %e, "cannot record when the agent was last seen");
            }
            tracing::info!(cluster = %cluster, "agent stream closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type Outbound = mpsc::Sender<Result<pb::HubMessage, Status>>;

/// What a stream knows about its agent's holdings and abilities.
struct Peer {
    wire: PeerWire,
    /// Application → digest the agent holds.
    has: HashMap<String, String>,
    /// The chunks it holds.
    held: HeldChunks,
}

async fn send_desired(
    ctx: &HubContext,
    chunks: &ChunkCache,
    cluster: &str,
    peer: &mut Peer,
    tx: &Outbound,
) -> Result<bool, Status> {
    let Some((mut desired, _)) = ctx.fleet.desired_state(cluster, &peer.has) else {
        return Err(Status::unauthenticated("cluster removed"));
    };
    // The dispatch span continues the trace of the pass that computed this
    // generation; the agent's apply continues the dispatch.
    let span = tracing::info_span!("dispatch", cluster, generation = desired.generation);
    crate::telemetry::set_parent(&span, &desired.trace_context);
    let traced = crate::telemetry::trace_context_of(&span);
    if !traced.is_empty() {
        desired.trace_context = traced;
    }
    let generation = desired.generation;
    let (apps, bundles) = (desired.index.len(), desired.bundles.len());
    let limits = pb::wire::PlanLimits {
        chunk_size: ctx.wire.chunk_size,
    };
    let size = pb::wire::chunk_size_for(peer.wire, limits);
    if peer.wire.chunked {
        chunks.prepare(&ctx.fleet, &desired, size).await;
    }
    let plan = pb::wire::plan(
        desired,
        &peer.has,
        peer.wire,
        &mut peer.held,
        limits,
        &mut |b, size| chunks.get_or_split(b, size),
    );
    let withheld: BTreeMap<String, String> = plan
        .withheld
        .iter()
        .map(|w| (w.app.clone(), w.message.clone()))
        .collect();
    for w in &plan.withheld {
        tracing::warn!(cluster, app = %w.app, size = w.size, "{}", w.message);
    }
    crate::metrics::metrics().bundles_withheld(plan.withheld.len());
    ctx.fleet.set_withheld(cluster, withheld);
    tracing::info!(
        cluster,
        generation,
        apps,
        bundles,
        messages = plan.messages.len(),
        chunks = plan.chunks,
        chunk_bytes = plan.chunk_bytes,
        withheld = plan.withheld.len(),
        "sending desired state"
    );
    // From here on the agent holds what the plan says (the stream is
    // ordered; if it breaks, the agent's next Hello says what it has).
    peer.has = plan.index.into_iter().collect();
    let mut sent = true;
    async {
        for m in plan.messages {
            let kind = match &m.kind {
                Some(HubKind::Chunk(_)) => "chunk",
                _ => "desired",
            };
            let bytes = prost::Message::encoded_len(&m);
            if tx.send(Ok(m)).await.is_err() {
                sent = false;
                return;
            }
            crate::metrics::metrics().wire_sent(kind, bytes);
        }
    }
    .instrument(span)
    .await;
    if sent && let Some(lag) = ctx.fleet.take_send_lag(cluster, generation) {
        crate::metrics::metrics().send_lag(lag);
    }
    Ok(sent)
}

async fn session(
    ctx: &HubContext,
    chunks: &ChunkCache,
    cluster: &str,
    mut inbound: Streaming<pb::AgentMessage>,
    mut signals: tokio::sync::watch::Receiver<crate::fleet::ClusterSignal>,
    tx: &Outbound,
) -> Result<(), Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello within 30s"))??;
    let hello = match first.and_then(|m| m.kind) {
        Some(AgentKind::Hello(h)) => h,
        Some(_) => return Err(Status::invalid_argument("the first message must be Hello")),
        None => return Ok(()),
    };
    if !hello.claimed_cluster.is_empty() && hello.claimed_cluster != cluster {
        tracing::warn!(cluster, claimed = %hello.claimed_cluster, "agent claims another cluster name; ignored");
    }
    let wire = PeerWire::of(&hello);
    tracing::info!(
        cluster,
        agent_version = %hello.agent_version,
        generation = hello.generation,
        apps = hello.apps.len(),
        chunked_bundles = wire.chunked,
        max_message_size = wire.max_message_size,
        "agent connected"
    );
    let now = now_ms();
    let version = hello.agent_version.clone();
    ctx.store.update_cluster(cluster, |r| {
        r.last_hello_ms = now;
        r.last_seen_ms = now;
        r.agent_version = version;
    })?;
    let held = HeldChunks::of(&hello);
    let mut peer = Peer {
        wire,
        has: hello.apps.into_iter().map(|a| (a.name, a.digest)).collect(),
        held,
    };
    let mut commands = ctx.commands.subscribe(cluster);
    let mut sent_generation = signals.borrow_and_update().generation;
    if !send_desired(ctx, chunks, cluster, &mut peer, tx).await? {
        return Ok(());
    }
    let mut closing = ctx.closing.clone();
    let idle = ctx.stream_idle_timeout;
    let mut idle_deadline = tokio::time::Instant::now() + idle;
    loop {
        tokio::select! {
            _ = closing.changed() => {
                return Err(Status::unavailable("hub shutting down"));
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                tracing::warn!(cluster, idle_secs = idle.as_secs(), "agent stream idle: closing it");
                return Err(Status::deadline_exceeded(format!(
                    "no message from the agent for {}s; closing the idle stream",
                    idle.as_secs()
                )));
            }
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                idle_deadline = tokio::time::Instant::now() + idle;
                handle_message(ctx, cluster, msg)?;
            }
            changed = signals.changed() => {
                if changed.is_err() {
                    return Err(Status::unauthenticated("cluster removed"));
                }
                let signal = *signals.borrow_and_update();
                if signal.revoked {
                    return Err(tell_removed(ctx, cluster, tx).await);
                }
                if signal.generation != sent_generation {
                    sent_generation = signal.generation;
                    if !send_desired(ctx, chunks, cluster, &mut peer, tx).await? {
                        return Ok(());
                    }
                    // A large state keeps the agent busy receiving.
                    idle_deadline = tokio::time::Instant::now() + idle;
                }
            }
            command = commands.recv() => {
                let command = match command {
                    Ok(c) => c,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(cluster, dropped = n, "commands dropped for a slow stream");
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => continue,
                };
                // Desired state first: a sync must find the bundle it is
                // about (the stream is ordered).
                if signals.has_changed().unwrap_or(false) {
                    let signal = *signals.borrow_and_update();
                    if signal.revoked {
                        return Err(tell_removed(ctx, cluster, tx).await);
                    }
                    if signal.generation != sent_generation {
                        sent_generation = signal.generation;
                        if !send_desired(ctx, chunks, cluster, &mut peer, tx).await? {
                            return Ok(());
                        }
                    }
                }
                tracing::info!(cluster, id = %command.id, "sending command");
                if tx.send(Ok(pb::HubMessage { kind: Some(HubKind::Command(command)) })).await.is_err() {
                    return Ok(());
                }
            }
            () = tx.closed() => return Ok(()),
        }
    }
}

/// Tells the agent of a removed cluster that it was removed (and whether to
/// delete what it manages first) before its stream closes with the status
/// returned; an agent that does not know the message sees that status.
async fn tell_removed(ctx: &HubContext, cluster: &str, tx: &Outbound) -> Status {
    let cascade = ctx.commands.removal(cluster);
    tracing::info!(
        cluster,
        cascade,
        "cluster removed: telling its agent and closing its stream"
    );
    let removed = pb::ClusterRemoved {
        cascade,
        message: if cascade {
            format!(
                "cluster {cluster} was removed from the hub with --cascade: delete the objects this agent manages, then stop"
            )
        } else {
            format!(
                "cluster {cluster} was removed from the hub: stop managing it; its objects stay"
            )
        },
    };
    let message = pb::HubMessage {
        kind: Some(HubKind::Removed(removed)),
    };
    // A stalled agent does not hold the stream open.
    if tokio::time::timeout(std::time::Duration::from_secs(5), tx.send(Ok(message)))
        .await
        .is_err()
    {
        tracing::warn!(
            cluster,
            "could not tell the removed cluster's agent in time"
        );
    }
    Status::unauthenticated("cluster removed")
}

/// How old a connected cluster's stored last-seen time may get before a
/// message from its agent writes it again. While the stream is open every
/// listing shows the cluster as seen now; the stored time is what is shown
/// once it closes, and the close writes it exactly ([`Store::update_cluster`]
/// in `connect`).
const LAST_SEEN_WRITE_MS: i64 = 10_000;

/// Notes a message from `cluster`'s agent at `now`: its record, written
/// only when its last-seen time is older than [`LAST_SEEN_WRITE_MS`] (a
/// status report is not a cluster record write: at 1,000 clusters × 50
/// applications a commit brings thousands of them). `None`: the cluster
/// was removed.
fn seen(
    ctx: &HubContext,
    cluster: &str,
    now: i64,
) -> Result<Option<Arc<crate::store::ClusterRecord>>, Status> {
    match ctx.store.cluster_shared(cluster)? {
        Some(rec) if now.saturating_sub(rec.last_seen_ms) < LAST_SEEN_WRITE_MS => Ok(Some(rec)),
        Some(_) => Ok(ctx
            .store
            .update_cluster(cluster, |r| r.last_seen_ms = now)?),
        None => Ok(None),
    }
}

fn handle_message(ctx: &HubContext, cluster: &str, msg: pb::AgentMessage) -> Result<(), Status> {
    let now = now_ms();
    match msg.kind {
        Some(AgentKind::Ack(ack)) => {
            tracing::debug!(cluster, generation = ack.generation, "ack");
            ctx.store.update_cluster(cluster, |r| {
                r.acked_generation = ack.generation;
                r.last_seen_ms = now;
            })?;
            ctx.appsets.rollouts().deletions_may_have_progressed();
        }
        Some(AgentKind::Status(report)) => {
            let Some(rec) = seen(ctx, cluster, now)? else {
                return Err(Status::unauthenticated("cluster removed"));
            };
            // Only the cluster's own applications; a late report for a
            // removed application must not bring its status back.
            let statuses: Vec<pb::AppStatus> = report
                .apps
                .into_iter()
                .filter(|s| rec.desired_index.contains_key(&s.name))
                .map(|mut status| {
                    // Agents bound their reports; older ones do not, and
                    // what is stored is what every `app list` returns.
                    pb::wire::bound_status(&mut status, pb::wire::StatusLimits::default());
                    status
                })
                .collect();
            ctx.store.put_statuses(cluster, &statuses)?;
            ctx.appsets.rollouts().statuses_reported(cluster, &statuses);
        }
        Some(AgentKind::Diff(result)) => {
            seen(ctx, cluster, now)?;
            ctx.commands.diffs.deliver(cluster, result);
        }
        Some(AgentKind::Sync(result)) => {
            seen(ctx, cluster, now)?;
            // Matched to the request by command id and cluster: an agent
            // cannot answer for another cluster or for a command never sent.
            ctx.commands.syncs.deliver(cluster, result);
        }
        Some(AgentKind::Hello(_)) => {
            return Err(Status::invalid_argument("Hello may only be sent once"));
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_per_peer() {
        let limit = RateLimit::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let window = Duration::from_secs(3600);
        assert!((0..3).all(|_| limit.allow(a, 3, window)));
        assert!(!limit.allow(a, 3, window));
        assert!(limit.exceeded(&a, 3, window));
        assert!(!limit.exceeded(&b, 3, window));
        assert!(limit.allow(b, 3, window));
        // A zero window resets every time.
        assert!((0..10).all(|_| limit.allow(a, 3, Duration::ZERO)));
    }

    #[test]
    fn failures_turn_into_resource_exhausted_per_source_and_cluster() {
        let limits = EnrollLimits::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let refused = || Status::unauthenticated("no");
        for _ in 0..FAILURES_PER_SOURCE {
            assert_eq!(
                limits.failure(Some(a), None, refused()).code(),
                tonic::Code::Unauthenticated
            );
        }
        assert_eq!(
            limits.failure(Some(a), None, refused()).code(),
            tonic::Code::ResourceExhausted
        );
        // Another address is not affected.
        assert_eq!(
            limits.failure(Some(b), None, refused()).code(),
            tonic::Code::Unauthenticated
        );
        // Failures with one cluster's token, from many addresses.
        for i in 0..FAILURES_PER_CLUSTER {
            let ip = IpAddr::from([10, 1, 0, u8::try_from(i).unwrap()]);
            limits.failure(Some(ip), Some("c1"), refused());
        }
        assert!(
            limits
                .per_cluster
                .exceeded(&"c1".to_owned(), FAILURES_PER_CLUSTER, ENROLL_WINDOW)
        );
        assert!(!limits.per_cluster.exceeded(
            &"c2".to_owned(),
            FAILURES_PER_CLUSTER,
            ENROLL_WINDOW
        ));
    }
}
