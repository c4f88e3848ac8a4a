//! The agent's local cache: the last desired state received from the hub and
//! what the agent applied from it, persisted atomically in the state
//! directory, so a restart or a hub outage never leaves the cluster
//! unmanaged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, Policy};
use crate::deletion::{Propagation, Removal};
use crate::object::ObjectKey;

/// File name of the cache inside the state directory.
pub const CACHE_FILE: &str = "desired-state.json";
/// Format version written into the cache file.
const FORMAT: u32 = 1;

/// Errors reading or writing the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be read or written.
    #[error("cache {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a cache the agent understands.
    #[error("cache {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// What the agent knows and did about one application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedApp {
    /// The desired state.
    pub bundle: Bundle,
    /// Digest of the bundle last applied without errors.
    #[serde(default)]
    pub applied_digest: Option<String>,
    /// Every object ever applied for this application and not yet pruned
    /// (the prune candidates): an object is added before it is applied,
    /// whatever the desired state is by then, and leaves only once its
    /// deletion is confirmed (or it turns out not to be this
    /// application's).
    #[serde(default)]
    pub inventory: Vec<ObjectKey>,
    /// Unix milliseconds of the last completed apply.
    #[serde(default)]
    pub last_applied_ms: i64,
    /// A sync operation that has not finished (waiting for hooks or a
    /// wave), resumed by the next pass, also after a restart.
    #[serde(default)]
    pub operation: Option<crate::hooks::SyncOperation>,
    /// The digest whose sync the hub terminated (`app terminate-op`): as
    /// in Argo CD, automated sync does not try it again; a new digest or a
    /// sync request does.
    #[serde(default)]
    pub terminated: Option<String>,
}

/// An application removed from the desired state whose objects may still
/// need pruning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedApp {
    /// The last policy the application had.
    pub policy: Policy,
    /// Objects applied for it and not yet pruned (see
    /// [`CachedApp::inventory`]).
    pub inventory: Vec<ObjectKey>,
    /// Its hooks (manifests): PreDelete and PostDelete hooks run now, and
    /// what the others left behind is deleted with the application.
    #[serde(default)]
    pub hooks: Vec<String>,
    /// Its default namespace (of the hooks).
    #[serde(default)]
    pub namespace: String,
    /// A sync that was running when it was removed (its hooks end).
    #[serde(default)]
    pub operation: Option<crate::hooks::SyncOperation>,
    /// Where its removal stands.
    #[serde(default)]
    pub removal: Option<crate::hooks::Removal>,
    /// The hub's decision about the objects (`DesiredState.deletions`), if
    /// it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<Propagation>,
}

impl RemovedApp {
    /// How its objects go, `None` when they stay: the hub's decision when
    /// there is one, else prune when the last policy pruned.
    #[must_use]
    pub fn object_removal(&self) -> Option<Removal> {
        match self.deletion {
            Some(Propagation::Foreground) => Some(Removal::Cascade { foreground: true }),
            Some(Propagation::Background) => Some(Removal::Cascade { foreground: false }),
            Some(Propagation::Orphan) => None,
            None => self.policy.prune.then_some(Removal::Prune),
        }
    }
}

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedState {
    /// Format version.
    #[serde(default)]
    pub format: u32,
    /// Generation of the last desired state fully received.
    pub generation: u64,
    /// Desired applications by name.
    pub apps: BTreeMap<String, CachedApp>,
    /// Applications no longer desired, pending prune.
    #[serde(default)]
    pub removed: BTreeMap<String, RemovedApp>,
}

impl CachedState {
    /// Merges a desired state from the hub: bundles replace cached ones
    /// (what the agent applied is kept), applications missing from the index
    /// move to `removed`, with the hub's deletion decision when it sent one
    /// (an application that comes back before the engine carried it out
    /// keeps its objects), and each indexed application takes the revision
    /// the index gives it (a new commit with the same content: nothing to
    /// apply, the status reports the new commit). Returns the removed names,
    /// or the applications whose bundle the agent still lacks at the indexed
    /// digest (then the generation is not advanced).
    ///
    /// # Errors
    /// The names of applications in the index without a matching bundle.
    pub fn merge(
        &mut self,
        desired: flotilla_proto::DesiredState,
    ) -> Result<Vec<String>, Vec<String>> {
        let deletions: BTreeMap<String, Propagation> = desired
            .deletions
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    Propagation::from_wire(&d.propagation_policy),
                )
            })
            .collect();
        for bundle in desired.bundles {
            let bundle = Bundle::from(bundle);
            let name = bundle.name.clone();
            let revived = self.removed.remove(&name);
            let app = self.apps.entry(name).or_default();
            app.bundle = bundle;
            if let Some(r) = revived {
                app.inventory.extend(r.inventory);
                app.inventory.sort();
                app.inventory.dedup();
            }
        }
        let index: BTreeMap<String, (String, String)> = desired
            .index
            .into_iter()
            .map(|r| (r.name, (r.digest, r.revision)))
            .collect();
        let gone: Vec<String> = self
            .apps
            .keys()
            .filter(|name| !index.contains_key(*name))
            .cloned()
            .collect();
        for name in &gone {
            if let Some(app) = self.apps.remove(name) {
                let entry = self.removed.entry(name.clone()).or_default();
                entry.hooks = crate::hooks::hook_manifests(&app.bundle.manifests);
                entry.namespace = app.bundle.namespace;
                entry.operation = app.operation;
                entry.policy = app.bundle.policy;
                entry.inventory.extend(app.inventory);
            }
        }
        // Also for an application removed by an earlier state (the
        // deletion decision can come later, e.g. after a reconnect).
        for (name, propagation) in deletions {
            if !index.contains_key(&name)
                && let Some(entry) = self.removed.get_mut(&name)
            {
                entry.deletion = Some(propagation);
            }
        }
        for (name, (digest, revision)) in &index {
            if let Some(app) = self.apps.get_mut(name)
                && app.bundle.digest == *digest
                && !revision.is_empty()
            {
                app.bundle.revision.clone_from(revision);
            }
        }
        let missing: Vec<String> = index
            .iter()
            .filter(|(name, (digest, _))| {
                self.apps
                    .get(*name)
                    .is_none_or(|a| &a.bundle.digest != digest)
            })
            .map(|(name, _)| name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        self.generation = desired.generation;
        Ok(gone)
    }
}

impl CachedState {
    /// The inventory of `app`, desired or removed; empty when the cache
    /// does not know it.
    #[must_use]
    pub fn inventory_of(&self, app: &str) -> &[ObjectKey] {
        match (self.apps.get(app), self.removed.get(app)) {
            (Some(a), _) => &a.inventory,
            (None, Some(r)) => &r.inventory,
            (None, None) => &[],
        }
    }

    /// Adds `keys` to the inventory of `app` wherever it is now: desired,
    /// or removed meanwhile (then its removal prunes them). An application
    /// the cache no longer knows at all is recorded as removed with
    /// `policy`, so the objects are not forgotten. True when the inventory
    /// grew.
    pub fn add_to_inventory<'a>(
        &mut self,
        app: &str,
        keys: impl IntoIterator<Item = &'a ObjectKey>,
        policy: &Policy,
    ) -> bool {
        let inventory = if let Some(a) = self.apps.get_mut(app) {
            &mut a.inventory
        } else {
            &mut self
                .removed
                .entry(app.to_owned())
                .or_insert_with(|| RemovedApp {
                    policy: policy.clone(),
                    ..RemovedApp::default()
                })
                .inventory
        };
        let before = inventory.len();
        inventory.extend(keys.into_iter().cloned());
        inventory.sort();
        inventory.dedup();
        inventory.len() != before
    }

    /// Takes `keys` out of the inventory of `app` (their deletion was
    /// confirmed).
    pub fn remove_from_inventory(
        &mut self,
        app: &str,
        keys: &std::collections::BTreeSet<ObjectKey>,
    ) {
        let inventory = match (self.apps.get_mut(app), self.removed.get_mut(app)) {
            (Some(a), _) => &mut a.inventory,
            (None, Some(r)) => &mut r.inventory,
            (None, None) => return,
        };
        inventory.retain(|k| !keys.contains(k));
    }
}

/// The cache file and its in-memory copy.
///
/// A write that fails (a full disk) leaves the newer state in memory only;
/// a background thread then writes it again with backoff until it is on
/// disk, so a restart during a hub outage does not bring back an older
/// generation.
#[derive(Debug)]
pub struct Cache {
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    path: PathBuf,
    slot: Mutex<Slot>,
    /// Bumped after every change, for writers behind the file (the
    /// cluster copy, [`crate::cluster_cache::mirror`]).
    changes: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Slot {
    state: CachedState,
    /// The state in memory is newer than the file: a write failed.
    dirty: bool,
    /// A retry thread runs.
    retrying: bool,
}

/// First and longest pause between two attempts to write a cache that
/// could not be written.
const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

impl Cache {
    /// Opens the cache in `state_dir`, loading what a previous run left.
    ///
    /// # Errors
    /// When an existing file cannot be read or parsed.
    pub fn open(state_dir: &Path) -> Result<Self, CacheError> {
        let path = state_dir.join(CACHE_FILE);
        let state = load(&path)?.unwrap_or_default();
        Ok(Self {
            inner: Arc::new(CacheInner {
                path,
                slot: Mutex::new(Slot {
                    state,
                    ..Slot::default()
                }),
                changes: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    /// A copy of the current state.
    #[must_use]
    pub fn snapshot(&self) -> CachedState {
        self.inner.lock().state.clone()
    }

    /// Reads the current state without copying it.
    pub fn read<R>(&self, f: impl FnOnce(&CachedState) -> R) -> R {
        f(&self.inner.lock().state)
    }

    /// Signals every later change of the state (a counter; the value
    /// itself carries nothing).
    #[must_use]
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Whether the state in memory has not reached the file yet (a write
    /// failed and is being retried).
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        self.inner.lock().dirty
    }

    /// Changes the state and persists it. The change is kept in memory even
    /// when persisting fails; the error is returned so the caller can say
    /// so, and the write is retried in the background until it succeeds.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn update<R>(&self, f: impl FnOnce(&mut CachedState) -> R) -> Result<R, CacheError> {
        let mut slot = self.inner.lock();
        let r = f(&mut slot.state);
        slot.state.format = FORMAT;
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
        match store(&self.inner.path, &slot.state) {
            Ok(()) => {
                slot.dirty = false;
                Ok(r)
            }
            Err(e) => {
                slot.dirty = true;
                if !slot.retrying {
                    slot.retrying = true;
                    let inner = Arc::downgrade(&self.inner);
                    let spawned = std::thread::Builder::new()
                        .name("cache-retry".to_owned())
                        .spawn(move || retry_writes(&inner));
                    if let Err(spawn) = spawned {
                        slot.retrying = false;
                        tracing::warn!(error = %spawn, "cannot start the cache retry thread; the next change writes the cache again");
                    }
                }
                Err(e)
            }
        }
    }
}

impl CacheInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes the cache again, with backoff, until the state in memory is on
/// disk (or the cache is gone).
fn retry_writes(inner: &std::sync::Weak<CacheInner>) {
    let mut pause = RETRY_START;
    let mut attempts = 0u32;
    loop {
        std::thread::sleep(pause);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut slot = inner.lock();
        if !slot.dirty {
            slot.retrying = false;
            return;
        }
        attempts = attempts.saturating_add(1);
        match store(&inner.path, &slot.state) {
            Ok(()) => {
                slot.dirty = false;
                slot.retrying = false;
                tracing::info!(
                    path = %inner.path.display(),
                    generation = slot.state.generation,
                    attempts,
                    "desired-state cache written after earlier failures"
                );
                return;
            }
            Err(e) => {
                // One line per doubling, not one per attempt.
                if pause < RETRY_MAX {
                    tracing::warn!(error = %e, retry_in_ms = (pause * 2).min(RETRY_MAX).as_millis(), "desired-state cache still cannot be written; retrying");
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Reads a cache file; `None` when there is none.
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub fn load(path: &Path) -> Result<Option<CachedState>, CacheError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| CacheError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Writes a cache file atomically: a temporary file in the same directory,
/// flushed to disk, then renamed over the old one.
///
/// # Errors
/// When any step fails; the old file is then left intact.
pub fn store(path: &Path, state: &CachedState) -> Result<(), CacheError> {
    let io = |source| CacheError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec(state).map_err(|e| io(std::io::Error::other(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    let result = (|| {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // Rendered Secrets are in here: owner only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CachedState {
        let mut apps = BTreeMap::new();
        apps.insert(
            "guestbook".to_owned(),
            CachedApp {
                bundle: Bundle {
                    name: "guestbook".into(),
                    digest: "sha256:abc".into(),
                    revision: "0123".into(),
                    namespace: "web".into(),
                    manifests: vec![
                        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#.into(),
                    ],
                    ..Bundle::default()
                },
                applied_digest: Some("sha256:abc".into()),
                inventory: vec![ObjectKey {
                    group: String::new(),
                    version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: "web".into(),
                    name: "c".into(),
                }],
                last_applied_ms: 7,
                operation: None,
                terminated: None,
            },
        );
        CachedState {
            format: FORMAT,
            generation: 3,
            apps,
            removed: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path()).expect("open");
        assert_eq!(cache.snapshot(), CachedState::default());
        let state = sample();
        cache.update(|s| *s = state.clone()).expect("update");
        let reopened = Cache::open(dir.path()).expect("reopen");
        assert_eq!(reopened.snapshot(), state);
    }

    #[test]
    fn write_is_atomic_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CACHE_FILE);
        store(&path, &sample()).expect("store");
        let mut second = sample();
        second.generation = 4;
        store(&path, &second).expect("store again");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![CACHE_FILE.to_owned()]);
        assert_eq!(load(&path).expect("load").map(|s| s.generation), Some(4));
    }

    #[test]
    fn cache_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path()).expect("open");
        cache.update(|s| *s = sample()).expect("update");
        let mode = std::fs::metadata(dir.path().join(CACHE_FILE))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_write_is_retried_until_it_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path()).expect("open");
        cache.update(|s| *s = sample()).expect("update");
        // The temporary file's name taken by a directory: writes fail.
        let tmp = dir
            .path()
            .join(format!(".{CACHE_FILE}.tmp-{}", std::process::id()));
        std::fs::create_dir(&tmp).expect("mkdir");
        assert!(cache.update(|s| s.generation = 8).is_err());
        assert!(cache.is_dirty());
        assert_eq!(cache.snapshot().generation, 8);
        let path = dir.path().join(CACHE_FILE);
        assert_eq!(load(&path).expect("load").map(|s| s.generation), Some(3));
        // The cause goes away: the retry writes the newer state.
        std::fs::remove_dir(&tmp).expect("rmdir");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while cache.is_dirty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(load(&path).expect("load").map(|s| s.generation), Some(8));
    }

    #[test]
    fn failed_write_keeps_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CACHE_FILE);
        store(&path, &sample()).expect("store");
        // A directory where the temporary file would go makes the write fail.
        let tmp = dir
            .path()
            .join(format!(".{CACHE_FILE}.tmp-{}", std::process::id()));
        std::fs::create_dir(&tmp).expect("mkdir");
        let mut second = sample();
        second.generation = 9;
        assert!(store(&path, &second).is_err());
        assert_eq!(load(&path).expect("load").map(|s| s.generation), Some(3));
    }

    fn proto_bundle(name: &str, digest: &str) -> flotilla_proto::AppBundle {
        flotilla_proto::AppBundle {
            name: name.into(),
            digest: digest.into(),
            revision: "r1".into(),
            ..flotilla_proto::AppBundle::default()
        }
    }

    fn app_ref(name: &str, digest: &str) -> flotilla_proto::AppRef {
        flotilla_proto::AppRef {
            name: name.into(),
            digest: digest.into(),
            revision: String::new(),
        }
    }

    #[test]
    fn merge_keeps_unsent_bundles_and_removes_unindexed_apps() {
        let mut state = sample();
        let removed = state
            .merge(flotilla_proto::DesiredState {
                generation: 4,
                index: vec![app_ref("guestbook", "sha256:abc"), app_ref("podinfo", "d1")],
                bundles: vec![proto_bundle("podinfo", "d1")],
                ..Default::default()
            })
            .expect("complete");
        assert!(removed.is_empty());
        assert_eq!(state.generation, 4);
        assert_eq!(
            state.apps["guestbook"].applied_digest.as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(state.apps["podinfo"].bundle.revision, "r1");

        let removed = state
            .merge(flotilla_proto::DesiredState {
                generation: 5,
                index: vec![app_ref("podinfo", "d1")],
                ..Default::default()
            })
            .expect("complete");
        assert_eq!(removed, vec!["guestbook".to_owned()]);
        assert_eq!(state.removed["guestbook"].inventory.len(), 1);
        assert!(!state.apps.contains_key("guestbook"));
    }

    #[test]
    fn merge_moves_the_revision_without_a_bundle() {
        let mut state = sample();
        let mut moved = app_ref("guestbook", "sha256:abc");
        moved.revision = "4567".into();
        state
            .merge(flotilla_proto::DesiredState {
                generation: 4,
                index: vec![moved],
                ..Default::default()
            })
            .expect("complete");
        let app = &state.apps["guestbook"];
        assert_eq!(app.bundle.revision, "4567");
        // Nothing to apply: the applied content is the same.
        assert_eq!(app.applied_digest.as_deref(), Some("sha256:abc"));
        // An index from an older hub (no revision) keeps the bundle's.
        state
            .merge(flotilla_proto::DesiredState {
                generation: 5,
                index: vec![app_ref("guestbook", "sha256:abc")],
                ..Default::default()
            })
            .expect("complete");
        assert_eq!(state.apps["guestbook"].bundle.revision, "4567");
    }

    #[test]
    fn merge_keeps_the_hubs_deletion_decision() {
        let deletion = |name: &str, policy: &str| flotilla_proto::AppDeletion {
            name: name.into(),
            propagation_policy: policy.into(),
        };
        // Deleted without cascade: the objects stay even though the policy
        // prunes.
        let mut state = sample();
        state
            .apps
            .get_mut("guestbook")
            .expect("app")
            .bundle
            .policy
            .prune = true;
        state
            .merge(flotilla_proto::DesiredState {
                generation: 4,
                deletions: vec![deletion("guestbook", "orphan")],
                ..Default::default()
            })
            .expect("complete");
        assert_eq!(state.removed["guestbook"].object_removal(), None);

        // Deleted with cascade: deleted even without prune.
        let mut state = sample();
        state
            .merge(flotilla_proto::DesiredState {
                generation: 4,
                deletions: vec![deletion("guestbook", "background")],
                ..Default::default()
            })
            .expect("complete");
        assert_eq!(
            state.removed["guestbook"].object_removal(),
            Some(Removal::Cascade { foreground: false })
        );

        // No decision (an older hub): the last policy's prune decides; a
        // decision sent with a later state still counts.
        let mut state = sample();
        state
            .merge(flotilla_proto::DesiredState {
                generation: 4,
                ..Default::default()
            })
            .expect("complete");
        assert_eq!(state.removed["guestbook"].object_removal(), None);
        state
            .merge(flotilla_proto::DesiredState {
                generation: 5,
                deletions: vec![deletion("guestbook", "foreground")],
                ..Default::default()
            })
            .expect("complete");
        assert_eq!(
            state.removed["guestbook"].object_removal(),
            Some(Removal::Cascade { foreground: true })
        );
        let mut pruning = RemovedApp::default();
        pruning.policy.prune = true;
        assert_eq!(pruning.object_removal(), Some(Removal::Prune));
    }

    #[test]
    fn merge_reports_missing_bundles_without_advancing() {
        let mut state = sample();
        let missing = state
            .merge(flotilla_proto::DesiredState {
                generation: 9,
                index: vec![app_ref("guestbook", "sha256:new")],
                ..Default::default()
            })
            .expect_err("incomplete");
        assert_eq!(missing, vec!["guestbook".to_owned()]);
        assert_eq!(state.generation, 3);
    }

    #[test]
    fn the_inventory_grows_wherever_the_application_is_and_shrinks_by_confirmation() {
        let key = |name: &str| ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: "web".into(),
            name: name.into(),
        };
        let mut state = sample();
        let policy = Policy::default();
        assert!(state.add_to_inventory("guestbook", &[key("c"), key("d")], &policy));
        assert!(!state.add_to_inventory("guestbook", &[key("d")], &policy));
        assert_eq!(state.inventory_of("guestbook"), &[key("c"), key("d")]);
        // Removed meanwhile: the claim follows it, so its removal prunes.
        state
            .merge(flotilla_proto::DesiredState {
                generation: 4,
                ..Default::default()
            })
            .expect("complete");
        assert!(state.add_to_inventory("guestbook", &[key("e")], &policy));
        assert_eq!(
            state.removed["guestbook"].inventory,
            vec![key("c"), key("d"), key("e")]
        );
        state.remove_from_inventory("guestbook", &[key("d")].into_iter().collect());
        assert_eq!(state.inventory_of("guestbook"), &[key("c"), key("e")]);
        // Unknown altogether: recorded as removed, not forgotten.
        assert!(state.add_to_inventory("ghost", &[key("g")], &policy));
        assert_eq!(state.removed["ghost"].inventory, vec![key("g")]);
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CACHE_FILE), b"{nope").expect("write");
        assert!(matches!(
            Cache::open(dir.path()),
            Err(CacheError::Corrupt { .. })
        ));
    }
}
