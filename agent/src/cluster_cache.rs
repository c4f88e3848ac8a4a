//! The cluster copy of the agent's desired-state cache: Secrets in the
//! agent's own namespace, next to the identity Secret, so a pod rescheduled
//! onto another node (a new, empty state directory) during a hub outage
//! still has the last desired state to enforce.
//!
//! Layout: the cache is serialized (JSON), compressed (deflate) and cut into
//! chunks of at most [`CHUNK_BYTES`]; each chunk is a Secret named after the
//! digest of the whole compressed blob and its position
//! (`flotilla-agent-cache-<digest>-<i>`), so a new state never overwrites
//! the chunks of the one the index points at. One index Secret
//! ([`INDEX_NAME`]) names the chunks with their SHA-256 digests, the
//! digest of the whole blob and the generation. A write creates the new
//! chunks, then replaces the index (the one switch from old to new), then
//! deletes the chunks no index names; a reader follows the index and checks
//! every digest, so a half-written set is never taken for a whole one.
//!
//! Secrets rather than ConfigMaps: bundles hold the manifests of the
//! applications, Secrets among them.
//!
//! The local file ([`crate::cache`]) stays the fast path; the cluster copy
//! is written behind it by [`mirror`], coalescing bursts of changes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::cache::{Cache, CachedState};

/// Name of the index Secret.
pub const INDEX_NAME: &str = "flotilla-agent-cache";
/// Largest chunk payload: 384 KiB of bytes is 512 KiB once base64-encoded
/// in the Secret, well below the API server's 1 MiB object limit.
pub const CHUNK_BYTES: usize = 384 * 1024;
/// Most chunks one cache may take (24 MiB compressed): a bound on what the
/// agent writes into its namespace.
pub const MAX_CHUNKS: usize = 64;
/// Label telling the cache's Secrets apart: `index` or `chunk`.
pub const ROLE_LABEL: &str = "flotilla.io/agent-cache";
/// Label of a chunk: the digest prefix of the set it belongs to.
pub const SET_LABEL: &str = "flotilla.io/agent-cache-set";
/// Annotation on the index: the cached generation (for people).
pub const GENERATION_ANNOTATION: &str = "flotilla.io/cache-generation";
const INDEX_KEY: &str = "index.json";
const CHUNK_KEY: &str = "chunk";
const FIELD_MANAGER: &str = "flotilla-agent";
const FORMAT: u32 = 1;
/// Hex digits of the blob digest in chunk names.
const SET_ID_LEN: usize = 16;
/// Largest decompressed cache a reader accepts (a corrupt or hostile blob
/// must not exhaust memory).
const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Errors reading or writing the cluster copy. Each names the Secret.
#[derive(Debug, thiserror::Error)]
pub enum ClusterCacheError {
    /// An API call failed.
    #[error("{action} Secret {namespace}/{name}: {source}{hint}")]
    Api {
        /// What was attempted (`reading`, `writing`, ...).
        action: &'static str,
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What to check, for errors a person must fix.
        hint: &'static str,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// A Secret of the cache does not hold what the index says.
    #[error("cache Secret {namespace}/{name} is corrupt: {reason}")]
    Corrupt {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The compressed cache needs more chunks than [`MAX_CHUNKS`].
    #[error(
        "the desired-state cache is {bytes} bytes compressed: more than {MAX_CHUNKS} Secrets of {CHUNK_BYTES} bytes; it stays on local disk only"
    )]
    TooLarge {
        /// Compressed size.
        bytes: usize,
    },
    /// The state could not be serialized or compressed.
    #[error("encoding the desired-state cache: {0}")]
    Encode(String),
}

impl ClusterCacheError {
    fn api(action: &'static str, namespace: &str, name: &str, source: kube::Error) -> Self {
        let hint = match &source {
            kube::Error::Api(s) if s.code == 403 => {
                " (the agent's Role must allow get, list, create, update, patch and delete on secrets in its namespace)"
            }
            kube::Error::Api(s) if s.code == 413 => " (object too large)",
            _ => "",
        };
        Self::Api {
            action,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            hint,
            source: Box::new(source),
        }
    }

    /// Whether trying again can help (the API was unreachable or busy);
    /// false for refusals and corrupt data, which need a person.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(s) => s.code == 429 || s.code >= 500 || s.code == 409,
                _ => true,
            },
            Self::Corrupt { .. } | Self::TooLarge { .. } | Self::Encode(_) => false,
        }
    }
}

/// The index Secret's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Layout version.
    pub format: u32,
    /// Generation of the cached desired state.
    pub generation: u64,
    /// `sha256:<hex>` of the whole compressed blob.
    pub digest: String,
    /// Size of the compressed blob.
    pub size: u64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// One chunk named by the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Name of the chunk Secret.
    pub name: String,
    /// `sha256:<hex>` of its payload.
    pub digest: String,
    /// Payload size.
    pub size: u64,
}

/// A cache cut into chunks, ready to write.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The index to write last.
    pub index: Index,
    /// Chunk payloads, in the index's order.
    pub chunks: Vec<Vec<u8>>,
}

impl Encoded {
    /// The label value of this set's chunks.
    #[must_use]
    pub fn set_id(&self) -> &str {
        set_id(&self.index.digest)
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn set_id(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..SET_ID_LEN).unwrap_or(hex)
}

/// Name of chunk `i` of the set `set`.
#[must_use]
pub fn chunk_name(set: &str, i: usize) -> String {
    format!("{INDEX_NAME}-{set}-{i}")
}

/// Serializes, compresses and cuts `state` into chunks of at most
/// `chunk_bytes` (a parameter so tests can cut small states).
///
/// # Errors
/// Serialization fails, or the result needs more than [`MAX_CHUNKS`].
pub fn encode(state: &CachedState, chunk_bytes: usize) -> Result<Encoded, ClusterCacheError> {
    let json = serde_json::to_vec(state).map_err(|e| ClusterCacheError::Encode(e.to_string()))?;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&json)
        .map_err(|e| ClusterCacheError::Encode(e.to_string()))?;
    let blob = z
        .finish()
        .map_err(|e| ClusterCacheError::Encode(e.to_string()))?;
    let chunk_bytes = chunk_bytes.max(1);
    if blob.len().div_ceil(chunk_bytes) > MAX_CHUNKS {
        return Err(ClusterCacheError::TooLarge { bytes: blob.len() });
    }
    let digest = sha256(&blob);
    let set = set_id(&digest).to_owned();
    let chunks: Vec<Vec<u8>> = blob.chunks(chunk_bytes).map(<[u8]>::to_vec).collect();
    let refs = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| ChunkRef {
            name: chunk_name(&set, i),
            digest: sha256(c),
            size: c.len() as u64,
        })
        .collect();
    Ok(Encoded {
        index: Index {
            format: FORMAT,
            generation: state.generation,
            digest,
            size: blob.len() as u64,
            chunks: refs,
        },
        chunks,
    })
}

/// Rebuilds the state from the index and the chunk payloads the index
/// names (`None` for a chunk Secret that is missing or has no payload),
/// checking every digest. Nothing partial comes out: any fault is an
/// error naming the Secret.
///
/// # Errors
/// A missing or corrupt chunk, a blob that does not match the index, or
/// one that does not decompress or parse.
pub fn decode(
    namespace: &str,
    index: &Index,
    chunks: &[Option<Vec<u8>>],
) -> Result<CachedState, ClusterCacheError> {
    let corrupt = |name: &str, reason: String| ClusterCacheError::Corrupt {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        reason,
    };
    if index.format != FORMAT {
        return Err(corrupt(
            INDEX_NAME,
            format!("layout {} (this agent reads {FORMAT})", index.format),
        ));
    }
    if index.chunks.len() != chunks.len() || index.chunks.len() > MAX_CHUNKS {
        return Err(corrupt(
            INDEX_NAME,
            format!("{} chunks listed", index.chunks.len()),
        ));
    }
    let mut blob = Vec::with_capacity(
        usize::try_from(index.size)
            .unwrap_or(0)
            .min(MAX_CHUNKS * CHUNK_BYTES),
    );
    for (r, payload) in index.chunks.iter().zip(chunks) {
        let Some(payload) = payload else {
            return Err(corrupt(
                &r.name,
                format!("missing (listed in {INDEX_NAME})"),
            ));
        };
        let digest = sha256(payload);
        if digest != r.digest {
            return Err(corrupt(
                &r.name,
                format!("digest {digest}, the index says {}", r.digest),
            ));
        }
        blob.extend_from_slice(payload);
    }
    let digest = sha256(&blob);
    if digest != index.digest {
        return Err(corrupt(
            INDEX_NAME,
            format!(
                "the chunks assemble to {digest}, the index says {}",
                index.digest
            ),
        ));
    }
    let mut json = Vec::new();
    flate2::read::DeflateDecoder::new(blob.as_slice())
        .take(MAX_DECOMPRESSED)
        .read_to_end(&mut json)
        .map_err(|e| corrupt(INDEX_NAME, format!("does not decompress: {e}")))?;
    let state: CachedState = serde_json::from_slice(&json)
        .map_err(|e| corrupt(INDEX_NAME, format!("not a desired-state cache: {e}")))?;
    if state.generation != index.generation {
        return Err(corrupt(
            INDEX_NAME,
            format!(
                "holds generation {}, the index says {}",
                state.generation, index.generation
            ),
        ));
    }
    Ok(state)
}

/// A cache read back from the cluster.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The state.
    pub state: CachedState,
    /// Its blob digest (what the index names).
    pub digest: String,
}

/// The cache Secrets in one namespace.
#[derive(Clone)]
pub struct ClusterCache {
    api: Api<Secret>,
    namespace: String,
    chunk_bytes: usize,
}

impl std::fmt::Debug for ClusterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCache")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn labels(role: &str, set: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        ),
        (ROLE_LABEL.to_owned(), role.to_owned()),
    ]);
    if let Some(set) = set {
        l.insert(SET_LABEL.to_owned(), set.to_owned());
    }
    l
}

impl ClusterCache {
    /// The cache Secrets in `namespace`.
    #[must_use]
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            chunk_bytes: CHUNK_BYTES,
        }
    }

    /// Cuts chunks of `bytes` instead of [`CHUNK_BYTES`] (tests).
    #[must_use]
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.clamp(1, CHUNK_BYTES);
        self
    }

    /// The namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Reads the cache; `None` when there is no index yet.
    ///
    /// # Errors
    /// An API call fails, or a Secret is missing or corrupt (named).
    pub async fn load(&self) -> Result<Option<Loaded>, ClusterCacheError> {
        let ns = &self.namespace;
        let Some(index) = self
            .api
            .get_opt(INDEX_NAME)
            .await
            .map_err(|e| ClusterCacheError::api("reading", ns, INDEX_NAME, e))?
        else {
            return Ok(None);
        };
        let raw = index
            .data
            .as_ref()
            .and_then(|d| d.get(INDEX_KEY))
            .ok_or_else(|| ClusterCacheError::Corrupt {
                namespace: ns.clone(),
                name: INDEX_NAME.to_owned(),
                reason: format!("no {INDEX_KEY} key"),
            })?;
        let index: Index =
            serde_json::from_slice(&raw.0).map_err(|e| ClusterCacheError::Corrupt {
                namespace: ns.clone(),
                name: INDEX_NAME.to_owned(),
                reason: format!("{INDEX_KEY}: {e}"),
            })?;
        let mut chunks = Vec::with_capacity(index.chunks.len().min(MAX_CHUNKS));
        for r in index.chunks.iter().take(MAX_CHUNKS + 1) {
            let secret = self
                .api
                .get_opt(&r.name)
                .await
                .map_err(|e| ClusterCacheError::api("reading", ns, &r.name, e))?;
            chunks.push(
                secret
                    .and_then(|s| s.data)
                    .and_then(|mut d| d.remove(CHUNK_KEY))
                    .map(|b| b.0),
            );
        }
        let state = decode(ns, &index, &chunks)?;
        Ok(Some(Loaded {
            state,
            digest: index.digest,
        }))
    }

    /// Writes `encoded`: its chunks, then the index, then deletes the
    /// chunks of other sets.
    ///
    /// # Errors
    /// An API call fails (named); the index then still names a whole set
    /// (the old one when the new chunks or the index could not be written).
    pub async fn store(&self, encoded: &Encoded) -> Result<(), ClusterCacheError> {
        let ns = &self.namespace;
        let set = encoded.set_id().to_owned();
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        for (r, payload) in encoded.index.chunks.iter().zip(&encoded.chunks) {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(r.name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels("chunk", Some(&set))),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".to_owned()),
                data: Some(BTreeMap::from([(
                    CHUNK_KEY.to_owned(),
                    ByteString(payload.clone()),
                )])),
                ..Secret::default()
            };
            self.api
                .patch(&r.name, &apply, &Patch::Apply(&secret))
                .await
                .map_err(|e| ClusterCacheError::api("writing", ns, &r.name, e))?;
        }
        let index_json = serde_json::to_vec(&encoded.index)
            .map_err(|e| ClusterCacheError::Encode(e.to_string()))?;
        let index = Secret {
            metadata: ObjectMeta {
                name: Some(INDEX_NAME.to_owned()),
                namespace: Some(ns.clone()),
                labels: Some(labels("index", None)),
                annotations: Some(BTreeMap::from([(
                    GENERATION_ANNOTATION.to_owned(),
                    encoded.index.generation.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([(
                INDEX_KEY.to_owned(),
                ByteString(index_json),
            )])),
            ..Secret::default()
        };
        self.api
            .patch(INDEX_NAME, &apply, &Patch::Apply(&index))
            .await
            .map_err(|e| ClusterCacheError::api("writing", ns, INDEX_NAME, e))?;
        self.delete_other_sets(&set).await
    }

    /// Deletes the chunks that do not belong to `keep`.
    async fn delete_other_sets(&self, keep: &str) -> Result<(), ClusterCacheError> {
        let ns = &self.namespace;
        let listed = self
            .api
            .list_metadata(&ListParams::default().labels(&format!("{ROLE_LABEL}=chunk")))
            .await
            .map_err(|e| {
                ClusterCacheError::api("listing", ns, &format!("{ROLE_LABEL}=chunk"), e)
            })?;
        for old in listed.items {
            let Some(name) = old.metadata.name else {
                continue;
            };
            let set = old
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SET_LABEL))
                .map(String::as_str);
            if set == Some(keep) {
                continue;
            }
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => debug!(namespace = %ns, secret = %name, "old cache chunk deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(ClusterCacheError::api("deleting", ns, &name, e)),
            }
        }
        Ok(())
    }
}

/// Whether `state` holds anything worth keeping (a fresh agent's empty
/// state is never written over a cluster copy).
fn is_empty(state: &CachedState) -> bool {
    state.generation == 0 && state.apps.is_empty() && state.removed.is_empty()
}

/// At start: reads the cluster copy and adopts it when it is newer than the
/// local cache (or the local cache is empty: a new pod). Returns the digest
/// of the cluster copy when it was read. Errors are logged, naming the
/// Secret, and the local cache is kept as it is: nothing of a corrupt copy
/// is applied. API errors that may pass are retried a few times.
pub async fn restore(cache: &Cache, store: &ClusterCache) -> Option<String> {
    let mut pause = Duration::from_millis(500);
    let mut attempt = 1;
    let loaded = loop {
        match store.load().await {
            Ok(l) => break l,
            Err(e) if e.is_transient() && attempt < 5 => {
                warn!(error = %e, attempt, "cannot read the cluster copy of the desired-state cache yet; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(e) => {
                crate::metrics::metrics().cluster_cache_error("read");
                error!(
                    error = %e,
                    namespace = %store.namespace(),
                    "the cluster copy of the desired-state cache cannot be used; keeping the local cache (nothing of the cluster copy is applied)"
                );
                return None;
            }
        }
    };
    let Some(loaded) = loaded else {
        info!(namespace = %store.namespace(), secret = INDEX_NAME, "no cluster copy of the desired-state cache yet");
        return None;
    };
    crate::metrics::metrics().set_cluster_cache_generation(loaded.state.generation);
    let (local_generation, local_empty) = cache.read(|s| (s.generation, is_empty(s)));
    if loaded.state.generation > local_generation || (local_empty && !is_empty(&loaded.state)) {
        let generation = loaded.state.generation;
        let apps = loaded.state.apps.len();
        if let Err(e) = cache.update(|s| *s = loaded.state) {
            warn!(error = %e, "the restored desired-state cache is not on local disk yet (retrying in the background)");
        }
        info!(
            namespace = %store.namespace(),
            secret = INDEX_NAME,
            generation,
            apps,
            local_generation,
            "desired-state cache restored from the cluster"
        );
    } else {
        info!(
            namespace = %store.namespace(),
            cluster_generation = loaded.state.generation,
            local_generation,
            "local desired-state cache is as new as the cluster copy; keeping it"
        );
    }
    Some(loaded.digest)
}

/// First and longest pause between two attempts to write the cluster copy.
const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Changes within this window are written together.
const COALESCE: Duration = Duration::from_millis(300);
/// Shortest time between two writes of the cluster copy: an application
/// whose applies keep being undone must not turn into a stream of Secret
/// writes (each of which rewrites the whole cache).
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps the cluster copy at the cache's state: writes it after each change
/// (bursts coalesced), skips states it already holds (`written`, the digest
/// read at start), and retries failures with backoff and jitter, logging
/// each cause with the Secret it concerns. Runs until the cache is dropped.
pub async fn mirror(cache: Arc<Cache>, store: ClusterCache, written: Option<String>) {
    let mut changes = cache.changes();
    let mut written = written;
    // A local state newer than the cluster copy (e.g. a disk-only agent
    // upgraded) is written at once.
    let mut pending = true;
    let mut last_write: Option<tokio::time::Instant> = None;
    loop {
        if !pending {
            if changes.changed().await.is_err() {
                return;
            }
            tokio::time::sleep(COALESCE).await;
        }
        if let Some(at) = last_write {
            tokio::time::sleep_until(at + MIN_INTERVAL).await;
        }
        changes.mark_unchanged();
        pending = false;
        let state = cache.snapshot();
        if is_empty(&state) {
            continue;
        }
        let encoded = match encode(&state, store.chunk_bytes) {
            Ok(e) => e,
            Err(e) => {
                error!(error = %e, namespace = %store.namespace(), "the desired-state cache is not written to the cluster");
                continue;
            }
        };
        if written.as_deref() == Some(encoded.index.digest.as_str()) {
            continue;
        }
        last_write = Some(tokio::time::Instant::now());
        if write_with_retry(&store, &encoded, &mut changes).await {
            crate::metrics::metrics().set_cluster_cache_generation(encoded.index.generation);
            info!(
                namespace = %store.namespace(),
                secret = INDEX_NAME,
                generation = encoded.index.generation,
                apps = state.apps.len(),
                chunks = encoded.chunks.len(),
                bytes = encoded.index.size,
                "desired-state cache stored in the cluster"
            );
            written = Some(encoded.index.digest.clone());
        } else {
            // A newer state arrived while retrying: write that one.
            pending = true;
        }
    }
}

/// Writes `encoded` until it succeeds (true) or a newer state is waiting
/// (false).
async fn write_with_retry(
    store: &ClusterCache,
    encoded: &Encoded,
    changes: &mut watch::Receiver<u64>,
) -> bool {
    let mut pause = RETRY_START;
    let mut attempts = 0u32;
    loop {
        match store.store(encoded).await {
            Ok(()) => {
                if attempts > 0 {
                    info!(
                        attempts,
                        "cluster copy of the desired-state cache written after earlier failures"
                    );
                }
                return true;
            }
            Err(e) => {
                crate::metrics::metrics().cluster_cache_error("write");
                attempts = attempts.saturating_add(1);
                let jitter = rand::random_range(0..=pause.as_millis() as u64 / 4);
                let wait = pause + Duration::from_millis(jitter);
                warn!(error = %e, attempts, retry_in_ms = wait.as_millis() as u64, "cannot write the cluster copy of the desired-state cache");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = changes.changed() => {
                        if changed.is_ok() {
                            return false;
                        }
                    }
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Bundle;
    use crate::cache::CachedApp;

    fn state(manifests: usize) -> CachedState {
        let mut apps = BTreeMap::new();
        apps.insert(
            "guestbook".to_owned(),
            CachedApp {
                bundle: Bundle {
                    name: "guestbook".into(),
                    digest: "sha256:abc".into(),
                    // Distinct, poorly compressible payloads so a small
                    // chunk size gives several chunks.
                    manifests: (0..manifests)
                        .map(|i| {
                            format!(
                                "{{\"kind\":\"ConfigMap\",\"n\":\"{}\"}}",
                                sha256(&i.to_le_bytes())
                            )
                        })
                        .collect(),
                    ..Bundle::default()
                },
                ..CachedApp::default()
            },
        );
        CachedState {
            format: 1,
            generation: 7,
            apps,
            removed: BTreeMap::new(),
        }
    }

    fn payloads(e: &Encoded) -> Vec<Option<Vec<u8>>> {
        e.chunks.iter().cloned().map(Some).collect()
    }

    #[test]
    fn round_trip_through_several_chunks() {
        let s = state(200);
        let e = encode(&s, 1024).expect("encode");
        assert!(e.chunks.len() > 3, "{} chunks", e.chunks.len());
        assert!(e.chunks.iter().all(|c| c.len() <= 1024));
        assert_eq!(e.index.generation, 7);
        let names: Vec<&str> = e.index.chunks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names[0], format!("{INDEX_NAME}-{}-0", e.set_id()));
        assert_eq!(decode("ns", &e.index, &payloads(&e)).expect("decode"), s);
    }

    #[test]
    fn encoding_is_deterministic_and_content_addressed() {
        let a = encode(&state(10), 1024).expect("encode");
        let b = encode(&state(10), 1024).expect("encode");
        assert_eq!(a.index, b.index);
        let mut other = state(10);
        other.generation = 8;
        let c = encode(&other, 1024).expect("encode");
        assert_ne!(a.set_id(), c.set_id());
    }

    #[test]
    fn default_chunks_stay_below_half_a_mebibyte_encoded() {
        // base64 in the Secret: 4 bytes per 3.
        assert!(CHUNK_BYTES.div_ceil(3) * 4 <= 512 * 1024);
    }

    #[test]
    fn a_changed_chunk_is_named_and_nothing_is_returned() {
        let e = encode(&state(200), 1024).expect("encode");
        let mut chunks = payloads(&e);
        if let Some(Some(c)) = chunks.get_mut(1) {
            c[0] ^= 0xff;
        }
        let err = decode("flotilla-system", &e.index, &chunks).expect_err("corrupt");
        let text = err.to_string();
        assert!(
            text.contains(&format!("flotilla-system/{}", e.index.chunks[1].name)),
            "{text}"
        );
        assert!(text.contains("corrupt"), "{text}");
    }

    #[test]
    fn a_missing_chunk_is_named() {
        let e = encode(&state(200), 1024).expect("encode");
        let mut chunks = payloads(&e);
        chunks[2] = None;
        let text = decode("ns", &e.index, &chunks)
            .expect_err("missing")
            .to_string();
        assert!(text.contains(&e.index.chunks[2].name), "{text}");
        assert!(text.contains("missing"), "{text}");
    }

    #[test]
    fn chunks_of_another_set_are_refused() {
        // A half-written new set cannot be read through the old index:
        // its chunks have other digests.
        let old = encode(&state(200), 1024).expect("encode");
        let mut newer = state(200);
        newer.generation = 9;
        let new = encode(&newer, 1024).expect("encode");
        let mut mixed = payloads(&old);
        mixed[0] = Some(new.chunks[0].clone());
        assert!(matches!(
            decode("ns", &old.index, &mixed),
            Err(ClusterCacheError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_index_that_lies_about_the_generation_is_refused() {
        let mut e = encode(&state(3), 1024).expect("encode");
        e.index.generation = 99;
        let text = decode("ns", &e.index, &payloads(&e))
            .expect_err("mismatch")
            .to_string();
        assert!(text.contains(INDEX_NAME), "{text}");
    }

    #[test]
    fn too_large_is_an_error() {
        let e = encode(&state(2000), 16);
        assert!(
            matches!(e, Err(ClusterCacheError::TooLarge { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn refusals_are_not_retried_and_outages_are() {
        let api = |code: u16| {
            ClusterCacheError::api(
                "reading",
                "ns",
                INDEX_NAME,
                kube::Error::Api(
                    kube::core::Status::failure("no", "Forbidden")
                        .with_code(code)
                        .boxed(),
                ),
            )
        };
        let forbidden = api(403);
        assert!(!forbidden.is_transient());
        assert!(forbidden.to_string().contains("Role"), "{forbidden}");
        assert!(api(503).is_transient());
    }
}
