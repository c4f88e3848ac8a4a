//! Bounded messages on the wire, shared by hub and agent.
//!
//! No gRPC message between hub and agent, or hub and CLI, has to be larger
//! than a configured limit, however large an application or a fleet is:
//!
//! - A cluster's desired state is sent in *parts* ([`plan`]): several
//!   `DesiredState` messages of one generation, all but the last with
//!   `more` set; the agent acts on the state only after the last part
//!   ([`Assembler`]).
//! - A bundle too large for one part is sent as *content-addressed chunks*:
//!   its manifests as one byte stream (the `ManifestList` encoding) cut
//!   into pieces of at most the chunk size ([`split`]), each named by its
//!   SHA-256. Chunk boundaries depend on the manifests around them, not on
//!   offsets, so a change to one manifest changes one or two chunks and the
//!   others are not sent again to an agent that holds them.
//! - An agent announces in `Hello` that it assembles parts and chunks, the
//!   largest message it decodes, and the chunks it holds. An agent that
//!   does not (an older one) gets one message of at most
//!   [`LEGACY_MAX_MESSAGE_SIZE`] as before; a bundle that cannot fit is
//!   withheld and reported ([`Plan::withheld`]).
//! - Status details are truncated with a visible marker ([`bound_status`])
//!   and status reports are split across messages ([`split_report`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::v1 as pb;

/// One mebibyte.
pub const MIB: usize = 1 << 20;
/// Default largest message hub, agent and CLI decode (and encode).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * MIB;
/// Default largest chunk of a bundle, and target size of a desired-state
/// part.
pub const DEFAULT_CHUNK_SIZE: usize = MIB;
/// What agents that do not announce a limit decode: tonic's default.
pub const LEGACY_MAX_MESSAGE_SIZE: usize = 4 * MIB;
/// Smallest chunk size accepted (below it the per-chunk overhead dominates).
pub const MIN_CHUNK_SIZE: usize = 4 * 1024;
/// Room kept free in every message for what surrounds its payload.
const ENVELOPE: usize = 4 * 1024;

/// Errors of the wire rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A chunk's data does not match its name.
    #[error("chunk {expected}: data has digest {actual}")]
    ChunkDigest {
        /// The digest the chunk was sent under.
        expected: String,
        /// The digest of the data received.
        actual: String,
    },
    /// A chunked bundle names a chunk the agent neither received nor holds.
    #[error("application {app}: chunk {chunk} was neither sent nor held")]
    MissingChunk {
        /// The application.
        app: String,
        /// The chunk.
        chunk: String,
    },
    /// A chunk of a bundle does not have the size the bundle says.
    #[error("application {app}: chunk {chunk} is {actual} bytes, the bundle says {expected}")]
    ChunkSize {
        /// The application.
        app: String,
        /// The chunk.
        chunk: String,
        /// The size in the bundle.
        expected: u64,
        /// The size of the data.
        actual: u64,
    },
    /// The chunks of a bundle do not decode to manifests.
    #[error("application {app}: the chunks do not decode to manifests: {message}")]
    Decode {
        /// The application.
        app: String,
        /// Why.
        message: String,
    },
    /// The assembled bundle is not the one the hub named.
    #[error("application {app}: assembled bundle has digest {actual}, the hub sent {expected}")]
    BundleDigest {
        /// The application.
        app: String,
        /// The digest sent.
        expected: String,
        /// The digest of what was assembled.
        actual: String,
    },
    /// A chunked bundle came without its bundle header.
    #[error("a chunked bundle without its bundle")]
    NoHeader,
}

/// `sha256:<hex>` of `data`.
#[must_use]
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// sha256 over a bundle's canonical content: manifests, policy, namespace,
/// ignoreDifferences and render error. The revision is deliberately left
/// out: a commit that does not change an application's content does not
/// make its clusters re-apply it. The hub names bundles with it; the agent
/// checks every bundle it assembled from chunks against it.
#[must_use]
pub fn bundle_digest(b: &pb::AppBundle) -> String {
    let mut h = Sha256::new();
    let mut field = |tag: &str, bytes: &[u8]| {
        h.update(tag.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field("namespace", b.namespace.as_bytes());
    field(
        "policy",
        &b.policy
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default(),
    );
    field("render_error", b.render_error.as_bytes());
    for m in &b.manifests {
        field("manifest", m.as_bytes());
    }
    for d in &b.ignore_differences {
        field("ignore", d.as_bytes());
    }
    // tenancy: a bundle without rules keeps the digest it always had.
    if let Some(rules) = &b.project_rules {
        field("project_rules", &rules.encode_to_vec());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Parses a size: bytes (`1048576`), or with a binary unit (`512KiB`,
/// `16MiB`, `1GiB`; `K`, `M`, `G` mean the same).
///
/// # Errors
/// Not a size, or zero.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 1048576, 512KiB, 16MiB)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "ki" => 1 << 10,
        "m" | "mib" | "mi" => 1 << 20,
        "g" | "gib" | "gi" => 1 << 30,
        _ => return Err(format!("invalid size {s:?} (e.g. 1048576, 512KiB, 16MiB)")),
    };
    match number.checked_mul(factor) {
        Some(0) => Err(format!("size {s:?} must be more than zero")),
        Some(n) => Ok(n),
        None => Err(format!("size {s:?} is too large")),
    }
}

/// A size for people: `5.5 MiB`, `12 KiB`, `800 bytes`.
#[must_use]
pub fn format_size(n: usize) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    if n >= MIB {
        format!("{:.1} MiB", f / MIB as f64)
    } else if n >= 1024 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} bytes")
    }
}

/// Bytes a message takes as an element of a repeated field.
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

// ---------------------------------------------------------------------------
// Chunks
// ---------------------------------------------------------------------------

/// One chunk: its name and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// A slice of the bundle's manifest stream.
    pub data: Bytes,
}

/// A bundle cut into chunks ([`split`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkedForm {
    /// The bundle without its manifests.
    pub header: pb::AppBundle,
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
}

impl ChunkedForm {
    /// The chunks as the bundle names them.
    #[must_use]
    pub fn refs(&self) -> Vec<pb::ChunkRef> {
        self.chunks
            .iter()
            .map(|c| pb::ChunkRef {
                digest: c.digest.clone(),
                size: c.data.len() as u64,
            })
            .collect()
    }
}

/// The manifest stream of a bundle: the `ManifestList` encoding of its
/// manifests.
#[must_use]
pub fn manifest_stream(manifests: &[String]) -> Vec<u8> {
    pb::ManifestList {
        manifests: manifests.to_vec(),
    }
    .encode_to_vec()
}

/// A cheap hash of a record that decides whether a chunk ends after it:
/// its length and its first and last bytes (a manifest's name is near its
/// start), so the decision moves with the content, not with offsets.
fn boundary_hash(record: &[u8]) -> u64 {
    // FNV-1a.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for b in (record.len() as u64).to_le_bytes() {
        eat(b);
    }
    let head = record.len().min(256);
    for &b in &record[..head] {
        eat(b);
    }
    let tail = record.len().saturating_sub(64).max(head);
    for &b in &record[tail..] {
        eat(b);
    }
    h
}

/// Cuts a bundle's manifests into chunks of at most `chunk_size` bytes.
///
/// A chunk ends after a manifest with a probability proportional to the
/// manifest's size (about every `chunk_size / 2` bytes), decided by a hash
/// of that manifest; a manifest larger than the room left is cut at the
/// size limit. The same manifests always give the same chunks, and a change
/// to one manifest changes only the chunks around it.
#[must_use]
pub fn split(bundle: &pb::AppBundle, chunk_size: usize) -> ChunkedForm {
    let chunk_size = chunk_size.max(MIN_CHUNK_SIZE);
    let target = (chunk_size / 2).max(1) as u64;
    let mut stream = Vec::with_capacity(
        bundle
            .manifests
            .iter()
            .map(|m| field_len(m.len()))
            .sum::<usize>(),
    );
    let mut records = Vec::with_capacity(bundle.manifests.len());
    for m in &bundle.manifests {
        let start = stream.len();
        // Field 1, wire type 2 (length-delimited): the ManifestList encoding.
        stream.push(0x0a);
        prost::encode_length_delimiter(m.len(), &mut stream).unwrap_or_default();
        stream.extend_from_slice(m.as_bytes());
        records.push((start, stream.len()));
    }
    let stream = Bytes::from(stream);
    let mut cuts = Vec::new();
    let mut start = 0usize;
    for (rstart, rend) in records {
        if rend - start > chunk_size && rstart > start {
            cuts.push(rstart);
            start = rstart;
        }
        while rend - start > chunk_size {
            start += chunk_size;
            cuts.push(start);
        }
        let len = (rend - rstart) as u64;
        if boundary_hash(&stream[rstart..rend]) % target < len && rend > start {
            cuts.push(rend);
            start = rend;
        }
    }
    if start < stream.len() {
        cuts.push(stream.len());
    }
    let mut chunks = Vec::with_capacity(cuts.len());
    let mut from = 0;
    for to in cuts {
        let data = stream.slice(from..to);
        chunks.push(Chunk {
            digest: sha256_digest(&data),
            data,
        });
        from = to;
    }
    ChunkedForm {
        header: pb::AppBundle {
            manifests: Vec::new(),
            ..bundle.clone_without_manifests()
        },
        chunks,
    }
}

impl pb::AppBundle {
    /// The bundle without its manifests (cheap for a large bundle).
    #[must_use]
    pub fn clone_without_manifests(&self) -> Self {
        Self {
            name: self.name.clone(),
            digest: self.digest.clone(),
            revision: self.revision.clone(),
            repo_url: self.repo_url.clone(),
            path: self.path.clone(),
            namespace: self.namespace.clone(),
            policy: self.policy.clone(),
            manifests: Vec::new(),
            render_error: self.render_error.clone(),
            ignore_differences: self.ignore_differences.clone(),
            project_rules: self.project_rules.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// Planning the messages of one desired state (hub)
// ---------------------------------------------------------------------------

/// What an agent announced about the wire in its `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerWire {
    /// It assembles parts and chunks.
    pub chunked: bool,
    /// The largest message it decodes.
    pub max_message_size: usize,
}

impl PeerWire {
    /// From a `Hello` (an agent that says nothing decodes 4 MiB, whole).
    #[must_use]
    pub fn of(hello: &pb::Hello) -> Self {
        let announced = usize::try_from(hello.max_message_size).unwrap_or(usize::MAX);
        Self {
            chunked: hello.chunked_bundles,
            max_message_size: if announced == 0 {
                LEGACY_MAX_MESSAGE_SIZE
            } else {
                announced
            },
        }
    }
}

/// The chunks an agent holds, as the hub knows them: per application, the
/// chunks of the bundle it holds, and chunks it received without using
/// them yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldChunks {
    /// Application → chunk digests of its bundle on the agent.
    pub per_app: HashMap<String, Vec<String>>,
    /// Chunks received but not part of a bundle (until the next complete
    /// desired state).
    pub staged: HashSet<String>,
}

impl HeldChunks {
    /// From a `Hello`: only the lists of bundles the agent says it holds.
    #[must_use]
    pub fn of(hello: &pb::Hello) -> Self {
        let digests: HashMap<&str, &str> = hello
            .apps
            .iter()
            .map(|a| (a.name.as_str(), a.digest.as_str()))
            .collect();
        Self {
            per_app: hello
                .bundle_chunks
                .iter()
                .filter(|b| digests.get(b.name.as_str()) == Some(&b.digest.as_str()))
                .map(|b| (b.name.clone(), b.chunks.clone()))
                .collect(),
            staged: hello.staged_chunks.iter().cloned().collect(),
        }
    }

    /// Every chunk held, for lookups.
    fn all(&self) -> HashSet<String> {
        self.per_app
            .values()
            .flatten()
            .chain(&self.staged)
            .cloned()
            .collect()
    }
}

/// A bundle the hub could not send to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    /// The application.
    pub app: String,
    /// Its encoded size.
    pub size: usize,
    /// Why, for the application's status.
    pub message: String,
}

/// The messages that carry one desired state to one agent.
#[derive(Debug, Default)]
pub struct Plan {
    /// In order.
    pub messages: Vec<pb::HubMessage>,
    /// What the agent holds once it received them all: application →
    /// digest.
    pub index: BTreeMap<String, String>,
    /// Bundles not sent (older agents only).
    pub withheld: Vec<Withheld>,
    /// Chunk messages among `messages`.
    pub chunks: usize,
    /// Bytes of chunk data among `messages`.
    pub chunk_bytes: usize,
}

impl Plan {
    /// Encoded bytes of every message.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.messages.iter().map(Message::encoded_len).sum()
    }
}

/// How the hub sends large bundles.
#[derive(Debug, Clone, Copy)]
pub struct PlanLimits {
    /// Largest chunk, and target size of a part.
    pub chunk_size: usize,
}

/// The chunk size, and size of a part, for an agent: the hub's, or less
/// when the agent decodes less, so every message fits its limit.
#[must_use]
pub fn chunk_size_for(peer: PeerWire, limits: PlanLimits) -> usize {
    limits
        .chunk_size
        .min(peer.max_message_size.saturating_sub(ENVELOPE))
        .max(MIN_CHUNK_SIZE)
}

/// Splits `desired` (whose `bundles` are those the agent lacks) into the
/// messages for an agent that announced `peer`, holding `held` (updated to
/// what it holds afterwards). `chunked` gives the chunked form of a bundle
/// at a chunk size (the hub caches it across clusters).
pub fn plan(
    desired: pb::DesiredState,
    has: &HashMap<String, String>,
    peer: PeerWire,
    held: &mut HeldChunks,
    limits: PlanLimits,
    chunked: &mut dyn FnMut(&pb::AppBundle, usize) -> Arc<ChunkedForm>,
) -> Plan {
    if peer.chunked {
        plan_parts(desired, peer, held, limits, chunked)
    } else {
        plan_legacy(desired, has, peer.max_message_size)
    }
}

fn hub_message(kind: pb::hub_message::Kind) -> pb::HubMessage {
    pb::HubMessage { kind: Some(kind) }
}

/// Parts of at most `budget` bytes, in order.
struct Parts {
    generation: u64,
    budget: usize,
    current: pb::DesiredState,
    len: usize,
}

impl Parts {
    fn new(generation: u64, budget: usize) -> Self {
        Self {
            generation,
            budget,
            current: Self::empty(generation),
            len: 0,
        }
    }

    fn empty(generation: u64) -> pb::DesiredState {
        pb::DesiredState {
            generation,
            more: true,
            ..Default::default()
        }
    }

    /// Makes room for `len` more bytes, flushing the current part into
    /// `out` when it would grow past the budget.
    fn room(&mut self, len: usize, out: &mut Vec<pb::HubMessage>) {
        if self.len > 0 && self.len + len > self.budget {
            let part = std::mem::replace(&mut self.current, Self::empty(self.generation));
            out.push(hub_message(pb::hub_message::Kind::Desired(part)));
            self.len = 0;
        }
        self.len += len;
    }
}

fn plan_parts(
    desired: pb::DesiredState,
    peer: PeerWire,
    held: &mut HeldChunks,
    limits: PlanLimits,
    chunked: &mut dyn FnMut(&pb::AppBundle, usize) -> Arc<ChunkedForm>,
) -> Plan {
    let chunk_size = chunk_size_for(peer, limits);
    let mut plan = Plan::default();
    let mut parts = Parts::new(desired.generation, chunk_size);
    // What the agent holds before this state: it assembles the whole state
    // before it replaces any bundle, so all of it can be reused.
    let mut have = held.all();
    for bundle in desired.bundles {
        let len = field_len(bundle.encoded_len());
        if len <= chunk_size {
            held.per_app.remove(&bundle.name);
            parts.room(len, &mut plan.messages);
            parts.current.bundles.push(bundle);
            continue;
        }
        let form = chunked(&bundle, chunk_size);
        for c in &form.chunks {
            if !have.insert(c.digest.clone()) {
                continue;
            }
            plan.chunks += 1;
            plan.chunk_bytes += c.data.len();
            plan.messages
                .push(hub_message(pb::hub_message::Kind::Chunk(pb::BundleChunk {
                    digest: c.digest.clone(),
                    data: c.data.clone(),
                })));
        }
        let mut header = form.header.clone();
        // The revision of the index entry it is sent for.
        header.revision.clone_from(&bundle.revision);
        let entry = pb::ChunkedBundle {
            bundle: Some(header),
            chunks: form.refs(),
        };
        parts.room(field_len(entry.encoded_len()), &mut plan.messages);
        parts.current.chunked_bundles.push(entry);
        held.per_app.insert(
            bundle.name.clone(),
            form.chunks.iter().map(|c| c.digest.clone()).collect(),
        );
    }
    for r in desired.index {
        plan.index.insert(r.name.clone(), r.digest.clone());
        parts.room(field_len(r.encoded_len()), &mut plan.messages);
        parts.current.index.push(r);
    }
    for d in desired.deletions {
        parts.room(field_len(d.encoded_len()), &mut plan.messages);
        parts.current.deletions.push(d);
    }
    let mut last = parts.current;
    last.more = false;
    last.trace_context = desired.trace_context;
    plan.messages
        .push(hub_message(pb::hub_message::Kind::Desired(last)));
    // The agent keeps what the bundles use; the rest of what it staged goes.
    held.staged.clear();
    held.per_app.retain(|name, _| plan.index.contains_key(name));
    plan
}

/// One message per state for an agent that does not assemble parts: as
/// before, when it fits. Otherwise bundles that cannot fit in any message
/// are withheld (the agent keeps what it holds of them), and the others go
/// in several complete states of the same generation, each naming only the
/// bundles the agent has by then.
fn plan_legacy(desired: pb::DesiredState, has: &HashMap<String, String>, limit: usize) -> Plan {
    let mut plan = Plan::default();
    let total = desired.encoded_len();
    if total <= limit {
        plan.index = desired
            .index
            .iter()
            .map(|r| (r.name.clone(), r.digest.clone()))
            .collect();
        plan.messages
            .push(hub_message(pb::hub_message::Kind::Desired(desired)));
        return plan;
    }
    let pb::DesiredState {
        generation,
        index,
        bundles,
        trace_context,
        deletions,
        ..
    } = desired;
    let base = pb::DesiredState {
        generation,
        index: index.clone(),
        deletions: deletions.clone(),
        trace_context: trace_context.clone(),
        ..Default::default()
    }
    .encoded_len();
    let room = limit.saturating_sub(base + ENVELOPE);
    // Batches of bundles that fit next to the index.
    let mut batches: Vec<Vec<pb::AppBundle>> = Vec::new();
    let mut batch_len = 0;
    for b in bundles {
        let len = field_len(b.encoded_len());
        if len > room {
            plan.withheld.push(Withheld {
                app: b.name.clone(),
                size: len,
                message: format!(
                    "bundle is {}; agent too old to receive chunked bundles (it decodes at most {}): upgrade the agent",
                    format_size(len),
                    format_size(limit)
                ),
            });
            continue;
        }
        match batches.last_mut() {
            Some(batch) if batch_len + len <= room => {
                batch.push(b);
                batch_len += len;
            }
            _ => {
                batches.push(vec![b]);
                batch_len = len;
            }
        }
    }
    let withheld: HashSet<&str> = plan.withheld.iter().map(|w| w.app.as_str()).collect();
    // An entry the agent does not have yet names what it holds (nothing
    // changes for it) or is left out (nothing of it can be on the cluster).
    let held_entry = |r: &pb::AppRef| {
        has.get(&r.name).map(|digest| pb::AppRef {
            name: r.name.clone(),
            digest: digest.clone(),
            revision: String::new(),
        })
    };
    let mut pending: HashSet<String> = batches.iter().flatten().map(|b| b.name.clone()).collect();
    if batches.is_empty() {
        batches.push(Vec::new());
    }
    for batch in batches {
        for b in &batch {
            pending.remove(&b.name);
        }
        let index_now: Vec<pb::AppRef> = index
            .iter()
            .filter_map(|r| {
                if withheld.contains(r.name.as_str()) || pending.contains(&r.name) {
                    held_entry(r)
                } else {
                    Some(r.clone())
                }
            })
            .collect();
        plan.index = index_now
            .iter()
            .map(|r| (r.name.clone(), r.digest.clone()))
            .collect();
        plan.messages
            .push(hub_message(pb::hub_message::Kind::Desired(
                pb::DesiredState {
                    generation,
                    index: index_now,
                    bundles: batch,
                    trace_context: trace_context.clone(),
                    deletions: deletions.clone(),
                    ..Default::default()
                },
            )));
    }
    plan
}

// ---------------------------------------------------------------------------
// Assembling a desired state (agent)
// ---------------------------------------------------------------------------

/// A chunked bundle the agent holds: its digest and chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBundle {
    /// Bundle digest.
    pub digest: String,
    /// Its chunks, in order.
    pub chunks: Vec<pb::ChunkRef>,
}

/// What one assembly produced.
#[derive(Debug, Default)]
pub struct Assembled {
    /// The complete state: every bundle whole, no chunked bundles, `more`
    /// false.
    pub desired: pb::DesiredState,
    /// To [`Assembler::committed`] once the state is stored.
    pub receipt: Receipt,
}

/// What [`Assembler::committed`] needs to know of an assembled state.
#[derive(Debug, Default)]
pub struct Receipt {
    /// The applications of the index.
    pub index: Vec<String>,
    /// Applications with a bundle in the state.
    pub bundles: Vec<String>,
    /// Applications whose bundle came in chunks, with them.
    pub chunked: Vec<(String, HeldBundle)>,
    /// Parts the state came in.
    pub parts: usize,
}

/// The agent's side: collects the parts and chunks of a desired state and
/// turns them into one complete state. Lives as long as the agent, across
/// streams, so a transfer that broke off resumes with the chunks received.
#[derive(Debug, Default)]
pub struct Assembler {
    staged: HashMap<String, Bytes>,
    held: BTreeMap<String, HeldBundle>,
    pending: Option<pb::DesiredState>,
    parts: usize,
}

impl Assembler {
    /// Keeps a chunk after checking it is what its name says.
    ///
    /// # Errors
    /// The data does not match the digest.
    pub fn chunk(&mut self, chunk: pb::BundleChunk) -> Result<(), WireError> {
        let actual = sha256_digest(&chunk.data);
        if actual != chunk.digest {
            return Err(WireError::ChunkDigest {
                expected: chunk.digest,
                actual,
            });
        }
        self.staged.insert(chunk.digest, chunk.data);
        Ok(())
    }

    /// Adds a part; the whole state once its last part arrived (chunked
    /// bundles not assembled yet: see [`Assembler::assemble`]).
    pub fn part(&mut self, part: pb::DesiredState) -> Option<pb::DesiredState> {
        let mut acc = match self.pending.take() {
            // A part of another generation: the previous one broke off.
            Some(p) if p.generation == part.generation => p,
            _ => {
                self.parts = 0;
                pb::DesiredState {
                    generation: part.generation,
                    ..Default::default()
                }
            }
        };
        self.parts += 1;
        acc.index.extend(part.index);
        acc.bundles.extend(part.bundles);
        acc.deletions.extend(part.deletions);
        acc.chunked_bundles.extend(part.chunked_bundles);
        acc.trace_context.extend(part.trace_context);
        if part.more {
            self.pending = Some(acc);
            None
        } else {
            acc.more = false;
            Some(acc)
        }
    }

    /// Turns the chunked bundles of a complete state into whole bundles:
    /// chunks received, or rebuilt from the bundle the agent holds for an
    /// application (`stream_of(name, digest)`: that bundle's manifest
    /// stream, when the agent still has it at that digest). Every bundle
    /// is checked against its digest.
    ///
    /// # Errors
    /// A chunk is missing or wrong, or a bundle does not match its digest;
    /// the chunks received are kept for the next attempt.
    pub fn assemble(
        &mut self,
        mut desired: pb::DesiredState,
        stream_of: &dyn Fn(&str, &str) -> Option<Vec<u8>>,
    ) -> Result<Assembled, WireError> {
        let mut streams: HashMap<String, Option<Bytes>> = HashMap::new();
        let locations = self.locations();
        let mut chunked = Vec::new();
        for cb in std::mem::take(&mut desired.chunked_bundles) {
            let mut bundle = cb.bundle.ok_or(WireError::NoHeader)?;
            let app = bundle.name.clone();
            let total: u64 = cb.chunks.iter().map(|c| c.size).sum();
            // Sizes come from the hub: reserve no more than a sane amount
            // up front.
            let mut data = Vec::with_capacity(usize::try_from(total).unwrap_or(0).min(256 * MIB));
            for r in &cb.chunks {
                let piece = match self.staged.get(&r.digest) {
                    Some(p) => p.clone(),
                    None => self
                        .rebuild(&r.digest, &locations, &mut streams, stream_of)
                        .ok_or_else(|| WireError::MissingChunk {
                            app: app.clone(),
                            chunk: r.digest.clone(),
                        })?,
                };
                if piece.len() as u64 != r.size {
                    return Err(WireError::ChunkSize {
                        app,
                        chunk: r.digest.clone(),
                        expected: r.size,
                        actual: piece.len() as u64,
                    });
                }
                data.extend_from_slice(&piece);
            }
            let list =
                pb::ManifestList::decode(data.as_slice()).map_err(|e| WireError::Decode {
                    app: app.clone(),
                    message: e.to_string(),
                })?;
            bundle.manifests = list.manifests;
            let actual = bundle_digest(&bundle);
            if actual != bundle.digest {
                return Err(WireError::BundleDigest {
                    app,
                    expected: bundle.digest,
                    actual,
                });
            }
            chunked.push((
                app,
                HeldBundle {
                    digest: bundle.digest.clone(),
                    chunks: cb.chunks,
                },
            ));
            desired.bundles.push(bundle);
        }
        let receipt = Receipt {
            index: desired.index.iter().map(|r| r.name.clone()).collect(),
            bundles: desired.bundles.iter().map(|b| b.name.clone()).collect(),
            chunked,
            parts: self.parts,
        };
        Ok(Assembled { desired, receipt })
    }

    /// Where each chunk of the bundles held lies: chunk → (application,
    /// offset in its manifest stream, size).
    fn locations(&self) -> HashMap<&str, (&str, usize, usize)> {
        let mut out = HashMap::new();
        for (app, held) in &self.held {
            let mut offset = 0usize;
            for r in &held.chunks {
                let size = usize::try_from(r.size).unwrap_or(usize::MAX);
                out.entry(r.digest.as_str())
                    .or_insert((app.as_str(), offset, size));
                offset = offset.saturating_add(size);
            }
        }
        out
    }

    /// A chunk of a bundle the agent holds, cut out of its manifest stream.
    fn rebuild(
        &self,
        digest: &str,
        locations: &HashMap<&str, (&str, usize, usize)>,
        streams: &mut HashMap<String, Option<Bytes>>,
        stream_of: &dyn Fn(&str, &str) -> Option<Vec<u8>>,
    ) -> Option<Bytes> {
        let &(app, offset, size) = locations.get(digest)?;
        let held = self.held.get(app)?;
        let stream = streams
            .entry(app.to_owned())
            .or_insert_with(|| stream_of(app, &held.digest).map(Bytes::from))
            .as_ref()?;
        let piece = stream.get(offset..offset.checked_add(size)?)?;
        // The cached bundle may have changed under the list.
        (sha256_digest(piece) == digest).then(|| stream.slice(offset..offset + size))
    }

    /// Records that `assembled` was stored: its chunked bundles are held
    /// (their chunks can be rebuilt from now on), applications that came
    /// whole or left the index are not, and the chunks received go.
    pub fn committed(&mut self, receipt: Receipt) {
        let index: HashSet<&str> = receipt.index.iter().map(String::as_str).collect();
        for name in &receipt.bundles {
            self.held.remove(name);
        }
        for (app, held) in receipt.chunked {
            self.held.insert(app, held);
        }
        self.held.retain(|app, _| index.contains(app.as_str()));
        self.staged.clear();
        self.pending = None;
        self.parts = 0;
    }

    /// What a `Hello` says about chunks: per application, the chunks of the
    /// bundle held (only those still cached at that digest, per
    /// `cached_digest`), and the chunks received but not used yet.
    #[must_use]
    pub fn hello(
        &self,
        cached_digest: &dyn Fn(&str) -> Option<String>,
    ) -> (Vec<pb::BundleChunks>, Vec<String>) {
        let bundles = self
            .held
            .iter()
            .filter(|(app, held)| cached_digest(app).as_deref() == Some(held.digest.as_str()))
            .map(|(app, held)| pb::BundleChunks {
                name: app.clone(),
                digest: held.digest.clone(),
                chunks: held.chunks.iter().map(|c| c.digest.clone()).collect(),
            })
            .collect();
        let mut staged: Vec<String> = self.staged.keys().cloned().collect();
        staged.sort();
        (bundles, staged)
    }

    /// Bytes of chunk data received and not yet used.
    #[must_use]
    pub fn staged_bytes(&self) -> usize {
        self.staged.values().map(Bytes::len).sum()
    }
}

// ---------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------

/// How much of a status is kept.
#[derive(Debug, Clone, Copy)]
pub struct StatusLimits {
    /// Drift lines per resource.
    pub drift_lines: usize,
    /// Bytes per drift line.
    pub line_bytes: usize,
    /// Bytes of a message (application, resource, operation, hook,
    /// condition).
    pub message_bytes: usize,
    /// Encoded bytes of one application's status; past it, resources are
    /// left out.
    pub app_bytes: usize,
}

impl Default for StatusLimits {
    fn default() -> Self {
        Self {
            drift_lines: 20,
            line_bytes: 512,
            message_bytes: 4096,
            app_bytes: 512 * 1024,
        }
    }
}

/// The marker ending text cut at a limit.
#[must_use]
pub fn truncated_marker(more: usize, what: &str) -> String {
    format!("… (truncated, {more} more {what})")
}

/// Cuts `s` to at most `max` bytes (on a character boundary) followed by a
/// marker saying how many bytes were left out. Returns whether it cut.
pub fn truncate_text(s: &mut String, max: usize) -> bool {
    if s.len() <= max || s.contains("… (truncated, ") && s.len() <= max + 64 {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let more = s.len() - end;
    s.truncate(end);
    s.push_str(&truncated_marker(more, "bytes"));
    true
}

/// Condition type of a status whose resource list was cut.
pub const TRUNCATED_CONDITION: &str = "StatusTruncated";

/// Bounds one application's status: drift lines and messages cut with a
/// marker, and resources left out past `app_bytes` (a `StatusTruncated`
/// condition says how many). Idempotent.
pub fn bound_status(st: &mut pb::AppStatus, limits: StatusLimits) {
    truncate_text(&mut st.message, limits.message_bytes);
    for op in [st.operation.as_mut(), st.requested_operation.as_mut()]
        .into_iter()
        .flatten()
    {
        truncate_text(&mut op.message, limits.message_bytes);
        for h in &mut op.hooks {
            truncate_text(&mut h.message, limits.message_bytes);
        }
    }
    for c in &mut st.conditions {
        truncate_text(&mut c.message, limits.message_bytes);
    }
    for r in &mut st.resources {
        truncate_text(&mut r.message, limits.message_bytes);
        let marked = r
            .drift
            .last()
            .is_some_and(|l| l.starts_with("… (truncated, "));
        let keep = if marked {
            limits.drift_lines + 1
        } else {
            limits.drift_lines
        };
        if r.drift.len() > keep {
            let more = r.drift.len() - limits.drift_lines;
            r.drift.truncate(limits.drift_lines);
            r.drift.push(truncated_marker(more, "lines"));
        }
        for line in &mut r.drift {
            truncate_text(line, limits.line_bytes);
        }
    }
    if st.encoded_len() <= limits.app_bytes {
        return;
    }
    // Keep the resources that fit; out-of-sync and unhealthy ones first.
    let mut resources = std::mem::take(&mut st.resources);
    let synced = pb::SyncStatus::Synced as i32;
    let healthy = pb::HealthStatus::Healthy as i32;
    resources.sort_by_key(|r| (r.sync == synced && r.health == healthy) as u8);
    let room = limits.app_bytes.saturating_sub(st.encoded_len() + 256);
    let mut used = 0;
    let total = resources.len();
    for r in resources {
        let len = field_len(r.encoded_len());
        if used + len > room {
            break;
        }
        used += len;
        st.resources.push(r);
    }
    let left_out = total - st.resources.len();
    st.conditions.retain(|c| c.r#type != TRUNCATED_CONDITION);
    st.conditions.push(pb::AppCondition {
        r#type: TRUNCATED_CONDITION.to_owned(),
        message: format!(
            "{} of {total} resources shown {}",
            st.resources.len(),
            truncated_marker(left_out, "resources")
        ),
    });
}

/// Bounds the objects of a diff to about `budget` encoded bytes: the live
/// and desired text of each object is cut to its share of the budget with a
/// marker, and objects that still do not fit are left out, `error` saying
/// how many. Returns whether anything was cut.
pub fn bound_diff(
    resources: &mut Vec<pb::ResourceDiff>,
    error: &mut String,
    budget: usize,
) -> bool {
    let total_len =
        |rs: &[pb::ResourceDiff]| -> usize { rs.iter().map(|r| field_len(r.encoded_len())).sum() };
    if total_len(resources) <= budget {
        return false;
    }
    // Room for the markers and the keys too.
    let share = (budget / resources.len().max(1) / 2)
        .saturating_sub(256)
        .max(1024);
    for r in resources.iter_mut() {
        truncate_text(&mut r.live, share);
        truncate_text(&mut r.desired, share);
    }
    let total = resources.len();
    let mut used = 0;
    let keep = resources
        .iter()
        .take_while(|r| {
            used += field_len(r.encoded_len());
            used <= budget
        })
        .count()
        .max(1);
    if keep < total {
        resources.truncate(keep);
        if !error.is_empty() {
            error.push_str("; ");
        }
        error.push_str(&format!(
            "{keep} of {total} differing objects shown {}",
            truncated_marker(total - keep, "objects")
        ));
    }
    true
}

/// Splits a status report into reports of at most `max_bytes` each (one
/// application per report at least), bounding every status first.
#[must_use]
pub fn split_report(
    report: pb::StatusReport,
    max_bytes: usize,
    limits: StatusLimits,
) -> Vec<pb::StatusReport> {
    // One application alone fits too.
    let limits = StatusLimits {
        app_bytes: limits.app_bytes.min(max_bytes.saturating_sub(128)),
        ..limits
    };
    let mut out = Vec::new();
    let mut current = pb::StatusReport {
        generation: report.generation,
        apps: Vec::new(),
    };
    let mut len = 0;
    for mut st in report.apps {
        bound_status(&mut st, limits);
        let l = field_len(st.encoded_len());
        if len > 0 && len + l > max_bytes.saturating_sub(64) {
            out.push(std::mem::replace(
                &mut current,
                pb::StatusReport {
                    generation: report.generation,
                    apps: Vec::new(),
                },
            ));
            len = 0;
        }
        len += l;
        current.apps.push(st);
    }
    out.push(current);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn manifest(i: usize, size: usize) -> String {
        let filler: String = (0..size)
            .map(|j| char::from(b'a' + ((i * 7 + j * 13) % 26) as u8))
            .collect();
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i}"}},"data":{{"x":"{filler}"}}}}"#
        )
    }

    fn bundle(name: &str, manifests: Vec<String>) -> pb::AppBundle {
        let mut b = pb::AppBundle {
            name: name.into(),
            revision: "r1".into(),
            namespace: "default".into(),
            manifests,
            ..Default::default()
        };
        b.digest = bundle_digest(&b);
        b
    }

    fn index_of(bundles: &[&pb::AppBundle]) -> Vec<pb::AppRef> {
        bundles
            .iter()
            .map(|b| pb::AppRef {
                name: b.name.clone(),
                digest: b.digest.clone(),
                revision: b.revision.clone(),
            })
            .collect()
    }

    fn splitter() -> impl FnMut(&pb::AppBundle, usize) -> Arc<ChunkedForm> {
        |b, size| Arc::new(split(b, size))
    }

    /// Feeds a plan to an assembler as the agent's link does.
    fn deliver(
        asm: &mut Assembler,
        plan: &Plan,
        stream_of: &dyn Fn(&str, &str) -> Option<Vec<u8>>,
    ) -> Result<Assembled, WireError> {
        let mut done = None;
        for m in &plan.messages {
            match m.kind.clone().unwrap() {
                pb::hub_message::Kind::Chunk(c) => asm.chunk(c)?,
                pb::hub_message::Kind::Desired(d) => {
                    if let Some(whole) = asm.part(d) {
                        done = Some(asm.assemble(whole, stream_of)?);
                    }
                }
                pb::hub_message::Kind::Command(_) | pb::hub_message::Kind::Removed(_) => {}
            }
        }
        let done: Assembled = done.unwrap();
        let receipt = Receipt {
            index: done.receipt.index.clone(),
            bundles: done.receipt.bundles.clone(),
            chunked: done.receipt.chunked.clone(),
            parts: done.receipt.parts,
        };
        asm.committed(receipt);
        Ok(done)
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MiB"), Ok(16 * MIB));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1048576"), Ok(MIB));
        assert_eq!(parse_size("4M"), Ok(4 * MIB));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(format_size(5_767_168), "5.5 MiB");
    }

    #[test]
    fn split_respects_the_chunk_size_and_joins_back() {
        // Small manifests, and one far larger than a chunk.
        let mut manifests: Vec<String> = (0..200).map(|i| manifest(i, 3000)).collect();
        manifests.insert(50, manifest(9999, 300_000));
        let b = bundle("big", manifests.clone());
        let form = split(&b, 64 * 1024);
        assert!(form.chunks.len() > 10);
        assert!(form.chunks.iter().all(|c| c.data.len() <= 64 * 1024));
        assert!(form.header.manifests.is_empty());
        let joined: Vec<u8> = form.chunks.iter().flat_map(|c| c.data.to_vec()).collect();
        assert_eq!(joined, manifest_stream(&manifests));
        // Deterministic.
        assert_eq!(split(&b, 64 * 1024).refs(), form.refs());
    }

    #[test]
    fn one_changed_manifest_changes_few_chunks() {
        let manifests: Vec<String> = (0..400).map(|i| manifest(i, 2500)).collect();
        let a = split(&bundle("big", manifests.clone()), 64 * 1024);
        let mut changed = manifests;
        changed[200] = manifest(200, 2600);
        let b = split(&bundle("big", changed), 64 * 1024);
        let old: HashSet<&String> = a.chunks.iter().map(|c| &c.digest).collect();
        let new = b.chunks.iter().filter(|c| !old.contains(&c.digest)).count();
        assert!(a.chunks.len() >= 10, "{}", a.chunks.len());
        assert!(new <= 2, "{new} of {} chunks changed", b.chunks.len());
    }

    #[test]
    fn small_states_to_old_agents_are_one_message_as_before() {
        let b = bundle("web", vec![manifest(1, 100)]);
        let desired = pb::DesiredState {
            generation: 3,
            index: index_of(&[&b]),
            bundles: vec![b],
            ..Default::default()
        };
        let legacy = PeerWire::of(&pb::Hello::default());
        assert_eq!(legacy.max_message_size, LEGACY_MAX_MESSAGE_SIZE);
        let plan = plan(
            desired.clone(),
            &HashMap::new(),
            legacy,
            &mut HeldChunks::default(),
            PlanLimits {
                chunk_size: DEFAULT_CHUNK_SIZE,
            },
            &mut splitter(),
        );
        assert_eq!(plan.messages.len(), 1);
        assert_eq!(
            plan.messages[0].kind,
            Some(pb::hub_message::Kind::Desired(desired))
        );
        assert!(plan.withheld.is_empty());
    }

    #[test]
    fn old_agents_never_get_a_message_over_their_limit() {
        let limit = 64 * 1024;
        let small: Vec<pb::AppBundle> = (0..30)
            .map(|i| bundle(&format!("app-{i}"), vec![manifest(i, 5000)]))
            .collect();
        let big = bundle("big", (0..40).map(|i| manifest(i, 5000)).collect());
        let mut all: Vec<&pb::AppBundle> = small.iter().collect();
        all.push(&big);
        let index = index_of(&all);
        // The agent holds an older `big`.
        let has: HashMap<String, String> = [("big".to_owned(), "sha256:old".to_owned())].into();
        let mut bundles = small.clone();
        bundles.push(big.clone());
        let desired = pb::DesiredState {
            generation: 7,
            index,
            bundles,
            ..Default::default()
        };
        let peer = PeerWire {
            chunked: false,
            max_message_size: limit,
        };
        let plan = plan(
            desired,
            &has,
            peer,
            &mut HeldChunks::default(),
            PlanLimits { chunk_size: limit },
            &mut splitter(),
        );
        assert!(plan.messages.len() > 1);
        assert!(plan.messages.iter().all(|m| m.encoded_len() <= limit));
        assert_eq!(plan.withheld.len(), 1);
        assert_eq!(plan.withheld[0].app, "big");
        assert!(
            plan.withheld[0]
                .message
                .contains("agent too old to receive chunked bundles"),
            "{}",
            plan.withheld[0].message
        );
        // Each message is a complete state by itself: every index entry is
        // either held already or comes in that message or an earlier one.
        let mut holds = has.clone();
        for m in &plan.messages {
            let Some(pb::hub_message::Kind::Desired(d)) = &m.kind else {
                panic!("only whole states to an old agent");
            };
            assert!(!d.more);
            for b in &d.bundles {
                holds.insert(b.name.clone(), b.digest.clone());
            }
            for r in &d.index {
                assert_eq!(holds.get(&r.name), Some(&r.digest), "{}", r.name);
            }
        }
        // In the end: everything but `big`, which stays what the agent has.
        assert_eq!(plan.index.len(), 31);
        assert_eq!(plan.index["big"], "sha256:old");
    }

    #[test]
    fn parts_and_chunks_stay_under_the_limit_and_assemble() {
        let chunk = 32 * 1024;
        let small: Vec<pb::AppBundle> = (0..100)
            .map(|i| bundle(&format!("app-{i:03}"), vec![manifest(i, 1500)]))
            .collect();
        let big = bundle("big", (0..100).map(|i| manifest(i, 4000)).collect());
        let mut all: Vec<&pb::AppBundle> = small.iter().collect();
        all.push(&big);
        let mut bundles = small.clone();
        bundles.push(big.clone());
        let desired = pb::DesiredState {
            generation: 9,
            index: index_of(&all),
            bundles,
            deletions: vec![pb::AppDeletion {
                name: "gone".into(),
                propagation_policy: "foreground".into(),
            }],
            ..Default::default()
        };
        let peer = PeerWire {
            chunked: true,
            max_message_size: 16 * MIB,
        };
        let mut held = HeldChunks::default();
        let p = plan(
            desired,
            &HashMap::new(),
            peer,
            &mut held,
            PlanLimits { chunk_size: chunk },
            &mut splitter(),
        );
        assert!(p.chunks >= 10, "{}", p.chunks);
        assert!(
            p.messages
                .iter()
                .all(|m| m.encoded_len() <= chunk + ENVELOPE),
            "{:?}",
            p.messages.iter().map(Message::encoded_len).max()
        );
        let mut asm = Assembler::default();
        let done = deliver(&mut asm, &p, &|_, _| None).unwrap();
        assert_eq!(done.desired.generation, 9);
        assert_eq!(done.desired.index.len(), 101);
        assert_eq!(done.desired.bundles.len(), 101);
        assert_eq!(done.desired.deletions.len(), 1);
        let got = done
            .desired
            .bundles
            .iter()
            .find(|b| b.name == "big")
            .unwrap();
        assert_eq!(got, &big);
        assert_eq!(held.per_app["big"].len(), p.chunks);

        // The same bundle again to an agent that holds it: no chunk.
        let (chunks, staged) = asm.hello(&|app| (app == "big").then(|| big.digest.clone()));
        let hello = pb::Hello {
            apps: index_of(&[&big]),
            bundle_chunks: chunks,
            staged_chunks: staged,
            ..Default::default()
        };
        let mut held = HeldChunks::of(&hello);
        assert_eq!(held.per_app["big"].len(), p.chunks);
        let mut changed = big.manifests.clone();
        changed[60] = manifest(60, 4100);
        let big2 = bundle("big", changed);
        let p2 = plan(
            pb::DesiredState {
                generation: 10,
                index: index_of(&[&big2]),
                bundles: vec![big2.clone()],
                ..Default::default()
            },
            &HashMap::new(),
            peer,
            &mut held,
            PlanLimits { chunk_size: chunk },
            &mut splitter(),
        );
        assert!(
            p2.chunks <= 2,
            "{} chunks sent for one changed manifest",
            p2.chunks
        );
        // The agent rebuilds the others from the bundle it holds.
        let stream = manifest_stream(&big.manifests);
        let digest = big.digest.clone();
        let done = deliver(&mut asm, &p2, &move |app, d| {
            (app == "big" && d == digest).then(|| stream.clone())
        })
        .unwrap();
        assert_eq!(done.desired.bundles, vec![big2]);
    }

    #[test]
    fn a_transfer_that_broke_off_resumes_with_the_chunks_received() {
        let chunk = 16 * 1024;
        let big = bundle("big", (0..60).map(|i| manifest(i, 3000)).collect());
        let desired = pb::DesiredState {
            generation: 2,
            index: index_of(&[&big]),
            bundles: vec![big.clone()],
            ..Default::default()
        };
        let peer = PeerWire {
            chunked: true,
            max_message_size: 16 * MIB,
        };
        let p = plan(
            desired.clone(),
            &HashMap::new(),
            peer,
            &mut HeldChunks::default(),
            PlanLimits { chunk_size: chunk },
            &mut splitter(),
        );
        let mut asm = Assembler::default();
        // Half the chunks arrive, then the stream breaks.
        let half = p.chunks / 2;
        for m in p.messages.iter().take(half) {
            let Some(pb::hub_message::Kind::Chunk(c)) = m.kind.clone() else {
                panic!("chunks come first");
            };
            asm.chunk(c).unwrap();
        }
        let (_, staged) = asm.hello(&|_| None);
        assert_eq!(staged.len(), half);
        let mut held = HeldChunks::of(&pb::Hello {
            staged_chunks: staged,
            ..Default::default()
        });
        let p2 = plan(
            desired,
            &HashMap::new(),
            peer,
            &mut held,
            PlanLimits { chunk_size: chunk },
            &mut splitter(),
        );
        assert_eq!(p2.chunks, p.chunks - half);
        let done = deliver(&mut asm, &p2, &|_, _| None).unwrap();
        assert_eq!(done.desired.bundles, vec![big]);
        assert_eq!(asm.staged_bytes(), 0);
    }

    #[test]
    fn corrupt_or_missing_chunks_are_refused() {
        let mut asm = Assembler::default();
        let err = asm
            .chunk(pb::BundleChunk {
                digest: sha256_digest(b"abc"),
                data: Bytes::from_static(b"abd"),
            })
            .unwrap_err();
        assert!(matches!(err, WireError::ChunkDigest { .. }), "{err}");
        let big = bundle("big", vec![manifest(1, 10)]);
        let whole = asm
            .part(pb::DesiredState {
                generation: 1,
                chunked_bundles: vec![pb::ChunkedBundle {
                    bundle: Some(big.clone_without_manifests()),
                    chunks: vec![pb::ChunkRef {
                        digest: "sha256:nope".into(),
                        size: 3,
                    }],
                }],
                ..Default::default()
            })
            .unwrap();
        let err = asm.assemble(whole, &|_, _| None).unwrap_err();
        assert!(
            err.to_string()
                .contains("application big: chunk sha256:nope"),
            "{err}"
        );
        // Chunks that decode but are not the named bundle.
        let other = manifest_stream(&[manifest(2, 10)]);
        let digest = sha256_digest(&other);
        asm.chunk(pb::BundleChunk {
            digest: digest.clone(),
            data: Bytes::from(other.clone()),
        })
        .unwrap();
        let whole = asm
            .part(pb::DesiredState {
                generation: 1,
                chunked_bundles: vec![pb::ChunkedBundle {
                    bundle: Some(big.clone_without_manifests()),
                    chunks: vec![pb::ChunkRef {
                        digest,
                        size: other.len() as u64,
                    }],
                }],
                ..Default::default()
            })
            .unwrap();
        let err = asm.assemble(whole, &|_, _| None).unwrap_err();
        assert!(matches!(err, WireError::BundleDigest { .. }), "{err}");
    }

    #[test]
    fn status_details_are_cut_with_a_marker() {
        let mut st = pb::AppStatus {
            name: "web".into(),
            message: "x".repeat(10_000),
            resources: vec![pb::ResourceStatus {
                drift: (0..100)
                    .map(|i| format!("data.k{i}: {}", "v".repeat(1000)))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let limits = StatusLimits::default();
        bound_status(&mut st, limits);
        assert!(st.message.len() < 4200);
        assert!(
            st.message.ends_with("… (truncated, 5904 more bytes)"),
            "{}",
            &st.message[4000..]
        );
        let drift = &st.resources[0].drift;
        assert_eq!(drift.len(), 21);
        assert_eq!(drift[20], "… (truncated, 80 more lines)");
        assert!(drift[0].len() < 600 && drift[0].contains("… (truncated, "));
        // Idempotent: the hub bounds again what an agent bounded.
        let before = st.clone();
        bound_status(&mut st, limits);
        assert_eq!(st, before);
    }

    #[test]
    fn large_diffs_are_cut_with_a_marker() {
        let object = |i: usize, size: usize| pb::ResourceDiff {
            key: Some(pb::ResourceKey {
                name: format!("blob-{i}"),
                ..Default::default()
            }),
            live: "l".repeat(size),
            desired: "d".repeat(size),
        };
        let mut resources: Vec<pb::ResourceDiff> = (0..60).map(|i| object(i, 800_000)).collect();
        let mut error = String::new();
        assert!(bound_diff(&mut resources, &mut error, 4 * MIB));
        let len: usize = resources.iter().map(Message::encoded_len).sum();
        assert!(len <= 4 * MIB + 4096, "{len}");
        assert_eq!(resources.len(), 60);
        assert!(resources[0].live.contains("… (truncated, "), "no marker");
        assert!(error.is_empty(), "{error}");
        // Far more objects than fit, even cut: some are left out, said so.
        let mut many: Vec<pb::ResourceDiff> = (0..10_000).map(|i| object(i, 2000)).collect();
        bound_diff(&mut many, &mut error, 4 * MIB);
        assert!(many.len() < 10_000);
        assert!(error.contains("more objects)"), "{error}");
        // Small diffs are left alone.
        let mut small = vec![pb::ResourceDiff {
            live: "a".into(),
            desired: "b".into(),
            ..Default::default()
        }];
        let mut error = String::new();
        assert!(!bound_diff(&mut small, &mut error, 4 * MIB));
        assert_eq!(small[0].live, "a");
    }

    #[test]
    fn a_huge_status_keeps_the_resources_that_fit() {
        let resources: Vec<pb::ResourceStatus> = (0..20_000)
            .map(|i| pb::ResourceStatus {
                key: Some(pb::ResourceKey {
                    kind: "ConfigMap".into(),
                    name: format!("cm-{i}"),
                    namespace: "default".into(),
                    version: "v1".into(),
                    ..Default::default()
                }),
                sync: if i == 19_999 {
                    pb::SyncStatus::OutOfSync as i32
                } else {
                    pb::SyncStatus::Synced as i32
                },
                health: pb::HealthStatus::Healthy as i32,
                ..Default::default()
            })
            .collect();
        let report = pb::StatusReport {
            generation: 1,
            apps: vec![
                pb::AppStatus {
                    name: "big".into(),
                    resources,
                    ..Default::default()
                },
                pb::AppStatus {
                    name: "small".into(),
                    ..Default::default()
                },
            ],
        };
        let parts = split_report(report, 256 * 1024, StatusLimits::default());
        assert!(parts.iter().all(|r| r.encoded_len() <= 256 * 1024 + 64));
        let big = &parts[0].apps[0];
        assert!(big.encoded_len() <= 256 * 1024);
        assert!(big.resources.len() < 20_000);
        // The one out of sync is kept.
        assert_eq!(big.resources[0].sync, pb::SyncStatus::OutOfSync as i32);
        let c = big
            .conditions
            .iter()
            .find(|c| c.r#type == TRUNCATED_CONDITION)
            .unwrap();
        assert!(c.message.contains("more resources)"), "{}", c.message);
        let names: Vec<&str> = parts
            .iter()
            .flat_map(|r| &r.apps)
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["big", "small"]);
    }
}
