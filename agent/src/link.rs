//! The link to the hub: one mutually authenticated gRPC stream, resumed from
//! the last generation after every disconnect, with backoff and jitter.
//!
//! On every stream the agent first says what it holds (`Hello`: generation
//! and the digest of every cached application); the hub then sends only
//! what differs. Each `DesiredState` is merged into the cache, persisted,
//! acknowledged, and handed to the engine. Status reports go the other way,
//! coalesced.
//!
//! No message on the stream has to be large ([`flotilla_proto::wire`]): the
//! agent announces that it assembles desired state sent in parts and
//! content-addressed chunks, the largest message it decodes, and the chunks
//! it holds (of bundles that came in chunks, and of a transfer that broke
//! off), so the hub sends only the chunks it lacks. Status reports are
//! bounded and split the same way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto::agent_link_client::AgentLinkClient;
use flotilla_proto::wire::{self, Assembler};
use flotilla_proto::{
    Ack, AgentMessage, AppRef, DesiredState, DiffResult, Hello, SyncResult, agent_message, command,
    hub_message,
};
use rand::Rng;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

use crate::cache::Cache;
use crate::cluster::Cluster;
use crate::engine::{SyncRequest, SyncRequests, Terminations, diff_app};
use crate::report::{HEARTBEAT, MIN_INTERVAL, Report};

/// The agent's version, sent in `Hello`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Client certificate file in the state directory.
pub const CERT_FILE: &str = "tls.crt";
/// Client key file in the state directory.
pub const KEY_FILE: &str = "tls.key";
/// Hub CA file in the state directory.
pub const CA_FILE: &str = "ca.crt";
/// Written in the state directory when the hub removed the cluster: an
/// agent that finds it at start idles instead of enforcing its cache.
pub const REMOVED_FILE: &str = "removed";

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that stayed up (its first desired state received) this long
/// counts as a success and resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Errors of the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A credential file could not be read.
    #[error("reading {path}: {source}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The hub URL is not usable.
    #[error("invalid hub URL {url}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The connection could not be made.
    #[error("connecting to {hub}: {source}")]
    Connect {
        /// The hub.
        hub: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The hub refused or ended the stream.
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    /// A part or chunk of a desired state could not be assembled.
    #[error("desired state: {0}")]
    Wire(#[from] wire::WireError),
    /// A desired state arrived without bundles the agent needs.
    #[error("desired state {generation} lacks bundles for {apps:?}; asking again")]
    Incomplete {
        /// The generation.
        generation: u64,
        /// Applications whose bundle is missing or stale.
        apps: Vec<String>,
    },
    /// The outbound half closed.
    #[error("outbound stream closed")]
    Closed,
    /// The hub removed this cluster (`ClusterRemoved`).
    #[error("the hub removed this cluster: {message}")]
    Removed {
        /// Delete the managed objects before stopping.
        cascade: bool,
        /// The hub's words.
        message: String,
    },
}

/// Why [`Link::run`] ended: the hub removed the cluster, and the agent
/// stopped managing it (after deleting its objects with `cascade`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The objects were deleted first.
    pub cascade: bool,
    /// The hub's words.
    pub message: String,
}

/// The removal recorded in `state_dir` by an earlier run, if any.
#[must_use]
pub fn removed_marker(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join(REMOVED_FILE)).ok()
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Hub URL, e.g. `https://127.0.0.1:7443`.
    pub hub: String,
    /// Directory with `tls.crt`, `tls.key` and `ca.crt`.
    pub state_dir: PathBuf,
}

/// The link task.
pub struct Link {
    hub: String,
    config: LinkConfig,
    endpoint: Endpoint,
    reconnect: Arc<Notify>,
    cluster: String,
    cache: Arc<Cache>,
    trigger: Arc<Notify>,
    reports: watch::Receiver<Option<Report>>,
    requests: SyncRequests,
    terminations: Terminations,
    cluster_api: Option<Arc<Cluster>>,
    max_message_size: usize,
    /// Parts and chunks of desired state, kept across streams.
    assembler: Mutex<Assembler>,
}

fn read(path: &Path) -> Result<Vec<u8>, LinkError> {
    std::fs::read(path).map_err(|source| LinkError::Credentials {
        path: path.to_owned(),
        source,
    })
}

impl Link {
    /// Prepares the link: reads the credentials and builds the endpoint.
    ///
    /// # Errors
    /// When a credential file is missing or the URL is invalid.
    pub fn new(
        config: &LinkConfig,
        cache: Arc<Cache>,
        trigger: Arc<Notify>,
        reports: watch::Receiver<Option<Report>>,
    ) -> Result<Self, LinkError> {
        let (endpoint, cluster) = Self::endpoint(config)?;
        Ok(Self {
            hub: config.hub.clone(),
            config: config.clone(),
            endpoint,
            reconnect: Arc::new(Notify::new()),
            cluster,
            cache,
            trigger,
            reports,
            requests: SyncRequests::default(),
            terminations: Terminations::default(),
            cluster_api: None,
            max_message_size: wire::DEFAULT_MAX_MESSAGE_SIZE,
            assembler: Mutex::default(),
        })
    }

    /// Reads the credentials (again: renewal replaces them) and builds the
    /// endpoint; also returns the cluster name from the certificate.
    fn endpoint(config: &LinkConfig) -> Result<(Endpoint, String), LinkError> {
        let ca = read(&config.state_dir.join(CA_FILE))?;
        let cert = read(&config.state_dir.join(CERT_FILE))?;
        let key = read(&config.state_dir.join(KEY_FILE))?;
        let cluster = common_name(&cert).unwrap_or_default();
        let url_error = |message: String| LinkError::Url {
            url: config.hub.clone(),
            message,
        };
        let uri: http::Uri = config
            .hub
            .parse()
            .map_err(|e: http::uri::InvalidUri| url_error(e.to_string()))?;
        let host = uri
            .host()
            .ok_or_else(|| url_error("no host".to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(host);
        let endpoint = Endpoint::from_shared(config.hub.clone())
            .map_err(|e| url_error(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| url_error(e.to_string()))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        Ok((endpoint, cluster))
    }

    /// Ends the current stream and reconnects with the credentials in the
    /// state directory whenever `reconnect` is notified (after renewal).
    #[must_use]
    pub fn with_reconnect(mut self, reconnect: Arc<Notify>) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// The largest message the agent decodes (and sends): announced to the
    /// hub, which keeps every message of desired state under it.
    #[must_use]
    pub fn with_max_message_size(mut self, max: usize) -> Self {
        self.max_message_size = max;
        self
    }

    fn assembler(&self) -> std::sync::MutexGuard<'_, Assembler> {
        self.assembler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers the hub's diff requests against this cluster.
    #[must_use]
    pub fn with_diffs(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster_api = Some(cluster);
        self
    }

    /// Routes the hub's `TerminateOperation` commands to the engine.
    #[must_use]
    pub fn with_terminations(mut self, terminations: Terminations) -> Self {
        self.terminations = terminations;
        self
    }

    /// Routes the hub's `SyncNow` commands to the engine.
    #[must_use]
    pub fn with_sync_requests(mut self, requests: SyncRequests) -> Self {
        self.requests = requests;
        self
    }

    /// The cluster name from the client certificate (informational).
    #[must_use]
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Keeps a stream to the hub open, reconnecting with backoff, until the
    /// hub removes the cluster: then, with `cascade`, waits until the
    /// engine has deleted every application's objects, records the removal
    /// in the state directory and returns.
    pub async fn run(self) -> Removed {
        let mut backoff = Backoff::default();
        loop {
            let mut up_since = None;
            let outcome = tokio::select! {
                r = self.session(&mut up_since) => r,
                () = self.reconnect.notified() => {
                    info!(hub = %self.hub, "reconnecting with the renewed certificate");
                    backoff = Backoff::default();
                    continue;
                }
            };
            match outcome {
                Ok(()) => info!(hub = %self.hub, "hub closed the stream"),
                Err(LinkError::Removed { cascade, message }) => {
                    return self.wind_down(cascade, message).await;
                }
                Err(e) => warn!(hub = %self.hub, error = %error_chain(&e), "link down"),
            }
            let delay = backoff.after_session(up_since);
            info!(
                delay_ms = delay.as_millis(),
                attempt = backoff.failures(),
                "reconnecting to hub"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One stream to the hub. `up_since` is set when the first desired
    /// state of the stream has been received (the session is up).
    async fn session(&self, up_since: &mut Option<tokio::time::Instant>) -> Result<(), LinkError> {
        // Fresh credentials on every connection: renewal replaces them.
        let endpoint = match Self::endpoint(&self.config) {
            Ok((endpoint, _)) => endpoint,
            Err(e) => {
                warn!(error = %e, "re-reading credentials; using the previous ones");
                self.endpoint.clone()
            }
        };
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| LinkError::Connect {
                hub: self.hub.clone(),
                source,
            })?;
        let mut client = AgentLinkClient::new(channel)
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size);
        let (tx, rx) = mpsc::channel::<AgentMessage>(16);
        let snapshot = self.cache.snapshot();
        let (bundle_chunks, staged_chunks) = self
            .assembler()
            .hello(&|app| snapshot.apps.get(app).map(|a| a.bundle.digest.clone()));
        let hello = Hello {
            agent_version: AGENT_VERSION.to_owned(),
            generation: snapshot.generation,
            apps: snapshot
                .apps
                .values()
                .map(|a| AppRef {
                    name: a.bundle.name.clone(),
                    digest: a.bundle.digest.clone(),
                    // The hub needs only the digests.
                    revision: String::new(),
                })
                .collect(),
            claimed_cluster: self.cluster.clone(),
            chunked_bundles: true,
            max_message_size: self.max_message_size as u64,
            bundle_chunks,
            staged_chunks,
        };
        let app_count = hello.apps.len();
        tx.send(message(agent_message::Kind::Hello(hello)))
            .await
            .map_err(|_| LinkError::Closed)?;
        let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        info!(
            generation = snapshot.generation,
            cached_apps = app_count,
            "flotilla-agent connected to {} as {}",
            self.hub,
            self.cluster
        );
        crate::metrics::metrics().set_connected(true);
        let reporter = tokio::spawn(report_loop(
            tx.clone(),
            self.reports.clone(),
            report_part_size(self.max_message_size),
        ));
        let result = async {
            while let Some(msg) = inbound.message().await? {
                match msg.kind {
                    Some(hub_message::Kind::Chunk(chunk)) => {
                        let bytes = prost::Message::encoded_len(&chunk);
                        crate::metrics::metrics().wire_received("chunk", bytes);
                        self.assembler().chunk(chunk)?;
                    }
                    Some(hub_message::Kind::Desired(part)) => {
                        let bytes = prost::Message::encoded_len(&part);
                        crate::metrics::metrics().wire_received("desired", bytes);
                        let Some(whole) = self.assembler().part(part) else {
                            continue;
                        };
                        let generation = whole.generation;
                        self.receive(whole)?;
                        tx.send(message(agent_message::Kind::Ack(Ack { generation })))
                            .await
                            .map_err(|_| LinkError::Closed)?;
                        up_since.get_or_insert_with(tokio::time::Instant::now);
                        self.trigger.notify_one();
                    }
                    Some(hub_message::Kind::Removed(r)) => {
                        return Err(LinkError::Removed {
                            cascade: r.cascade,
                            message: r.message,
                        });
                    }
                    Some(hub_message::Kind::Command(cmd)) => match cmd.kind {
                        Some(command::Kind::Sync(sync)) => {
                            info!(app = %sync.app, id = %cmd.id, prune = sync.prune, dry_run = sync.dry_run, "sync requested by hub");
                            self.request_sync(cmd.id, sync, &tx).await?;
                        }
                        Some(command::Kind::Diff(diff)) => {
                            let bundle = self.cache.snapshot().apps.remove(&diff.app).map(|a| a.bundle);
                            let cluster = self.cluster_api.clone();
                            let tx = tx.clone();
                            let budget = diff_budget(self.max_message_size);
                            // Off the read loop: a diff reads every object.
                            tokio::spawn(async move {
                                let outcome = match (bundle, cluster) {
                                    (Some(b), Some(c)) => diff_app(&c, &b).await,
                                    (None, _) => Err(format!("application {} is not desired on this cluster", diff.app)),
                                    (_, None) => Err("diff is not available".to_owned()),
                                };
                                let (mut resources, mut error) = match outcome {
                                    Ok(r) => (r, String::new()),
                                    Err(e) => (Vec::new(), e),
                                };
                                // A diff of large objects must not exceed
                                // what the hub decodes.
                                wire::bound_diff(&mut resources, &mut error, budget);
                                let result = DiffResult {
                                    command_id: cmd.id,
                                    app: diff.app,
                                    resources,
                                    error,
                                };
                                let _ = tx.send(message(agent_message::Kind::Diff(result))).await;
                            });
                        }
                        Some(command::Kind::Terminate(t)) => {
                            info!(app = %t.app, id = %cmd.id, "terminate operation requested by hub");
                            // The engine ends the operation at its next
                            // pass; nothing running there: nothing changes.
                            self.terminations
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(t.app);
                            self.trigger.notify_one();
                        }
                        None => debug!("empty command"),
                    },
                    None => debug!("empty hub message"),
                }
            }
            Ok(())
        }
        .await;
        reporter.abort();
        crate::metrics::metrics().set_connected(false);
        result
    }

    /// Stops managing the removed cluster: with `cascade`, every
    /// application is deleted as by `app delete --cascade` (foreground
    /// propagation, deletion hooks) and this waits until the engine has
    /// done so; then the removal is recorded in the state directory, so a
    /// restarted agent idles too.
    async fn wind_down(&self, cascade: bool, message: String) -> Removed {
        warn!(cluster = %self.cluster, cascade, "{message}");
        if cascade {
            let deleted = self.cache.update(|s| {
                let names: Vec<String> = s.apps.keys().chain(s.removed.keys()).cloned().collect();
                let all = DesiredState {
                    generation: s.generation,
                    deletions: names
                        .iter()
                        .map(|name| flotilla_proto::AppDeletion {
                            name: name.clone(),
                            propagation_policy: "foreground".to_owned(),
                        })
                        .collect(),
                    ..DesiredState::default()
                };
                // Nothing is indexed, so nothing can be missing.
                let _ = s.merge(all);
                names
            });
            match &deleted {
                Ok(names) => {
                    info!(apps = ?names, "cluster removed with cascade: deleting what this agent manages")
                }
                Err(e) => {
                    warn!(error = %e, "could not persist the deletion of every application; deleting from memory")
                }
            }
            self.trigger.notify_one();
            let mut last_log = Instant::now();
            loop {
                let left: Vec<String> = self
                    .cache
                    .read(|s| s.apps.keys().chain(s.removed.keys()).cloned().collect());
                if left.is_empty() {
                    break;
                }
                if last_log.elapsed() >= Duration::from_secs(10) {
                    info!(apps = ?left, "cluster removed with cascade: still deleting");
                    last_log = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            info!("cluster removed with cascade: every managed object is deleted");
        }
        let marker = self.config.state_dir.join(REMOVED_FILE);
        if let Err(e) = std::fs::write(&marker, format!("{message}\n")) {
            warn!(path = %marker.display(), error = %e, "could not record the removal");
        }
        Removed { cascade, message }
    }

    /// Queues a `SyncNow` for the engine. A dry run is answered with a
    /// `SyncResult` on this stream once the engine has run it, or with an
    /// error when the application is not desired here or the request is
    /// replaced by a newer one before it runs.
    async fn request_sync(
        &self,
        id: String,
        sync: flotilla_proto::SyncNow,
        tx: &mpsc::Sender<AgentMessage>,
    ) -> Result<(), LinkError> {
        let refused = |error: String| SyncResult {
            command_id: id.clone(),
            app: sync.app.clone(),
            dry_run: true,
            error,
            ..SyncResult::default()
        };
        if !self.cache.snapshot().apps.contains_key(&sync.app) {
            warn!(app = %sync.app, id = %id, "sync requested for an application not desired on this cluster");
            if sync.dry_run {
                let error = format!("application {} is not desired on this cluster", sync.app);
                tx.send(message(agent_message::Kind::Sync(refused(error))))
                    .await
                    .map_err(|_| LinkError::Closed)?;
            }
            return Ok(());
        }
        let reply = if sync.dry_run {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let tx = tx.clone();
            let dropped = refused(
                "the dry run did not run: replaced by a newer sync request, or the application is no longer desired"
                    .to_owned(),
            );
            // Off the read loop: the engine answers when its pass reaches
            // the application.
            tokio::spawn(async move {
                let result = answer.await.unwrap_or(dropped);
                let _ = tx.send(message(agent_message::Kind::Sync(result))).await;
            });
            Some(reply)
        } else {
            None
        };
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                sync.app,
                SyncRequest {
                    prune: sync.prune,
                    dry_run: sync.dry_run,
                    command_id: id,
                    reply,
                },
            );
        self.trigger.notify_one();
        Ok(())
    }

    /// Assembles a complete desired state (its chunked bundles from the
    /// chunks received and those the agent holds), merges it into the cache
    /// and persists it.
    fn receive(&self, whole: DesiredState) -> Result<(), LinkError> {
        let chunked = whole.chunked_bundles.len();
        let cache = &self.cache;
        let assembled = self.assembler().assemble(whole, &|app, digest| {
            let snapshot = cache.snapshot();
            let held = snapshot.apps.get(app)?;
            (held.bundle.digest == digest).then(|| wire::manifest_stream(&held.bundle.manifests))
        })?;
        let receipt = assembled.receipt;
        let desired = assembled.desired;
        if chunked > 0 || receipt.parts > 1 {
            info!(
                generation = desired.generation,
                parts = receipt.parts,
                chunked_bundles = chunked,
                "desired state assembled"
            );
        }
        self.merge(desired)?;
        self.assembler().committed(receipt);
        Ok(())
    }

    /// Merges a complete desired state into the cache and persists it.
    fn merge(&self, desired: DesiredState) -> Result<(), LinkError> {
        let generation = desired.generation;
        let bundles = desired.bundles.len();
        crate::telemetry::remember(
            desired.bundles.iter().map(|b| b.name.as_str()),
            &desired.trace_context,
        );
        let merged = self.cache.update(|s| s.merge(desired));
        match merged {
            Ok(Ok(removed)) => {
                info!(generation, bundles, removed = ?removed, "desired state received");
                Ok(())
            }
            Ok(Err(apps)) => Err(LinkError::Incomplete { generation, apps }),
            Err(e) => {
                // Still enforced from memory; the cache writes it again in
                // the background until the disk takes it.
                warn!(error = %e, "could not persist the desired state");
                Ok(())
            }
        }
    }
}

/// An error with its causes, `a: b: c`, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn message(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

/// The largest diff answer: under the smallest limit a hub has by default
/// (older hubs: 4 MiB) and under half the agent's own.
fn diff_budget(max_message_size: usize) -> usize {
    (wire::LEGACY_MAX_MESSAGE_SIZE - wire::MIB)
        .min(max_message_size / 2)
        .max(wire::MIN_CHUNK_SIZE)
}

/// The largest status report message: well under the hub's limit (the
/// hub's default is larger than this), and under the agent's own.
fn report_part_size(max_message_size: usize) -> usize {
    wire::DEFAULT_CHUNK_SIZE
        .min(max_message_size / 2)
        .max(wire::MIN_CHUNK_SIZE)
}

/// Sends the engine's reports: right away on a new stream, then on change
/// at most every [`MIN_INTERVAL`], and at least every [`HEARTBEAT`]. Each
/// report is bounded (long drift and messages cut with a marker) and split
/// into messages of at most `part_size` bytes.
async fn report_loop(
    tx: mpsc::Sender<AgentMessage>,
    mut reports: watch::Receiver<Option<Report>>,
    part_size: usize,
) {
    loop {
        let report = reports.borrow_and_update().as_ref().map(Report::to_proto);
        let sent_at = Instant::now();
        let parts = report.map_or_else(Vec::new, |r| {
            wire::split_report(r, part_size, wire::StatusLimits::default())
        });
        for part in parts {
            if tx
                .send(message(agent_message::Kind::Status(part)))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            changed = reports.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
        tokio::time::sleep_until((sent_at + MIN_INTERVAL).into()).await;
    }
}

/// The reconnect delays of the link: 0.5 s doubling up to 30 s, with
/// ±20 % jitter.
///
/// Only a session that was up (the hub answered the Hello with a desired
/// state) for at least [`STABLE`] resets the sequence. A connection attempt
/// that failed, however long it took (a 10 s connect timeout, a TLS
/// handshake the hub never finishes), and a session that broke right after
/// it came up both count as failures, so a hub that is down or crashing
/// is not hammered every half second.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt, after a session that was up
    /// since `up_since` (`None`: it never came up).
    fn after_session(&mut self, up_since: Option<tokio::time::Instant>) -> Duration {
        if up_since.is_some_and(|up| up.elapsed() >= STABLE) {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        backoff(self.failures)
    }

    /// Failed attempts since the last stable session.
    fn failures(&self) -> u32 {
        self.failures
    }
}

/// The nominal delay after `failures` consecutive failures.
fn backoff_base(failures: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(BACKOFF_MAX)
}

/// [`backoff_base`] with ±20 % jitter.
fn backoff(failures: u32) -> Duration {
    backoff_base(failures).mul_f64(rand::rng().random_range(0.8..1.2))
}

/// The subject common name of the first certificate in a PEM file.
///
/// Only used to name the cluster in logs and in the informational
/// `Hello.claimed_cluster`; the hub takes the identity from the verified
/// certificate itself. Reads the last `commonName` attribute in the DER
/// (the subject follows the issuer).
#[must_use]
pub fn common_name(pem: &[u8]) -> Option<String> {
    let mut reader = pem;
    let der = rustls_pemfile::certs(&mut reader).next()?.ok()?;
    let bytes: &[u8] = der.as_ref();
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let pos = bytes.windows(CN_OID.len()).rposition(|w| w == CN_OID)?;
    let rest = bytes.get(pos + CN_OID.len()..)?;
    let (&_tag, rest) = rest.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if len >= 0x80 {
        return None;
    }
    let value = rest.get(..usize::from(len))?;
    String::from_utf8(value.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        let first = backoff(1);
        assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(600));
        assert!(backoff(100) <= BACKOFF_MAX.mul_f64(1.2));
    }

    fn within_jitter(delay: Duration, failures: u32) -> bool {
        let base = backoff_base(failures);
        delay >= base.mul_f64(0.8) && delay <= base.mul_f64(1.2)
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_session_up_for_a_while_resets_the_backoff() {
        let mut b = Backoff::default();
        // Connection attempts that time out after 10 s (the connect
        // timeout): as long as STABLE, but never up. The delay keeps
        // growing; it used to start over at 0.5 s every time.
        for n in 1..=4 {
            tokio::time::advance(Duration::from_secs(10)).await;
            let d = b.after_session(None);
            assert_eq!(b.failures(), n);
            assert!(within_jitter(d, n), "attempt {n}: {d:?}");
        }
        assert_eq!(backoff_base(4), Duration::from_secs(4));

        // Up, but broken after 2 s: still a failure.
        let up = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(2)).await;
        let d = b.after_session(Some(up));
        assert_eq!(b.failures(), 5);
        assert!(within_jitter(d, 5), "{d:?}");

        // Up for longer than STABLE: the next delay is the first one.
        let up = tokio::time::Instant::now();
        tokio::time::advance(STABLE + Duration::from_secs(1)).await;
        let d = b.after_session(Some(up));
        assert_eq!(b.failures(), 1);
        assert!(within_jitter(d, 1), "{d:?}");

        // The delay is capped.
        for _ in 0..20 {
            b.after_session(None);
        }
        assert_eq!(backoff_base(b.failures()), BACKOFF_MAX);
    }
}
