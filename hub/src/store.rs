//! Persistent hub state in sled, behind a typed interface.
//!
//! Nothing else in the hub touches sled. Every record is serde JSON except
//! wire messages (rendered bundles, agent statuses), which are stored
//! prost-encoded so they round-trip exactly. Repository credentials are
//! sealed with a key kept outside the database ([`credentials`]).
//!
//! sled latches its first IO error (a full disk): from then on every call
//! fails, even once space returns. The store notices an IO error on any
//! call, drops the latched instance and opens the database again in the
//! background, with backoff, until a write gets through ([`StoreHealth`]);
//! meanwhile calls fail fast with [`StoreError::Unavailable`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

pub mod audit;
mod changes;
pub mod credential_templates;
pub mod credentials;
mod projects;
mod rbac;
pub mod records;
mod rollouts;
mod targets;

pub use changes::{ChangeKind, Changes};
pub use credentials::CredentialsKey;
pub use rollouts::{ClusterState, ClusterWave, WavePhase, WavesRecord};
use targets::{ClusterFacts, Targets};
pub use targets::{Destination, StoreCounters};

use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::Application;
use flotilla_proto as pb;

/// Version of the on-disk layout; bumped when a migration is needed.
///
/// 2: repository credentials are sealed (AES-256-GCM) with the credentials
/// key; a store at 1 has them in clear and is migrated on open.
pub const SCHEMA_VERSION: u32 = 2;
const SCHEMA_KEY: &[u8] = b"schema_version";

/// Errors from the hub store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt {what} record {key:?}: {message}")]
    Corrupt {
        what: &'static str,
        key: String,
        message: String,
    },
    #[error("store: schema version {found} is newer than this hub supports ({SCHEMA_VERSION})")]
    SchemaTooNew { found: u32 },
    /// The database is being reopened after an IO error, or was closed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store: credentials of {url}: {message}")]
    Credentials { url: String, message: String },
    #[error("store: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the error comes from the disk (and latched the database), as
    /// opposed to a bad record.
    fn is_io(&self) -> bool {
        matches!(self, Self::Sled(sled::Error::Io(_)))
    }

    /// Whether the store is failing as a whole (IO, recovering): the caller
    /// may try again later.
    pub fn is_unavailable(&self) -> bool {
        self.is_io() || matches!(self, Self::Unavailable(_))
    }
}

/// Whether the store accepts writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    /// Working.
    Writable,
    /// An IO error latched the database; it is being reopened.
    Recovering { error: String },
    /// Reopening failed (still no space, or the files are gone); retried
    /// with backoff. A liveness probe should fail so the process restarts.
    Failed { error: String },
}

/// A registered cluster and its link state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Server URL applications may name in `destination.server`.
    #[serde(default)]
    pub server: String,
    /// Argo CD project the cluster is scoped to (a cluster Secret's
    /// `project`), offered to ApplicationSet `clusters` generators.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// Serial (hex) of the one client certificate currently valid for this
    /// cluster. A certificate with any other serial is refused.
    #[serde(default)]
    pub cert_serial: Option<String>,
    /// Serial of a renewed certificate not used yet; the first connection
    /// with it makes it current (and the previous one invalid).
    #[serde(default)]
    pub pending_serial: Option<String>,
    /// Generation of the desired state the hub computed for this cluster.
    #[serde(default)]
    pub generation: u64,
    /// Application name → digest at `generation`.
    #[serde(default)]
    pub desired_index: BTreeMap<String, String>,
    /// Application name → the commit its index entry names at
    /// `generation` (a commit that leaves every digest alone does not move
    /// it: nothing is sent for it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub desired_revisions: BTreeMap<String, String>,
    /// Applications deleted from `desired_index` with what happens to their
    /// objects, sent to the agent until it acknowledges the generation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deletions: BTreeMap<String, records::PendingDeletion>,
    /// Last generation the agent acknowledged.
    #[serde(default)]
    pub acked_generation: u64,
    #[serde(default)]
    pub last_hello_ms: i64,
    #[serde(default)]
    pub last_seen_ms: i64,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub created_ms: i64,
    /// notAfter (Unix ms) of the client certificate the agent last
    /// connected with; 0 before its first connection.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cert_not_after_ms: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// An application definition and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Shared: a record written for a new `revision` or `error` keeps the
    /// definition of the one it replaces, and the record cache and the Git
    /// loop hold it without a copy each. (The ApplicationSet memo still
    /// holds its own generated copy: docs/architecture.md#scale.)
    pub app: Arc<Application>,
    /// `api` or `git:<repo-url>:<file>`.
    pub origin: String,
    /// Commit the current bundle was rendered from (empty before the first
    /// render).
    #[serde(default)]
    pub revision: String,
    /// Last error rendering or fetching the source, if any.
    #[serde(default)]
    pub error: String,
}

/// A Git repository the hub polls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoRecord {
    pub url: String,
    #[serde(default)]
    pub revision: String,
    /// Directory scanned for Applications; empty: manifests only.
    #[serde(default)]
    pub apps_path: String,
    #[serde(default)]
    pub poll_interval_secs: i64,
    #[serde(default)]
    pub last_commit: String,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub last_fetch_ms: i64,
    /// Empty (Git) or `helm`: a Helm chart repository, whose index is
    /// fetched instead of Git.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// One condition reported on an ApplicationSet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppSetCondition {
    /// `ErrorOccurred`, `ApplicationRenderError`, `DeletionHeld`,
    /// `ApplicationConflict` or `ResourcesUpToDate`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// The generated application concerned, if any.
    #[serde(default)]
    pub application: String,
}

/// An ApplicationSet as written, and the result of its last evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppSetRecord {
    pub name: String,
    /// The document as written (JSON form).
    pub raw: serde_json::Value,
    /// `api` or `git:<repo-url>:<file>`.
    pub origin: String,
    /// Applications generated by the last good evaluation.
    #[serde(default)]
    pub generated: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<AppSetCondition>,
    /// Deletions held by the deletion budget.
    #[serde(default)]
    pub pending_deletions: Vec<String>,
    /// Deletions confirmed by `flotilla appset confirm` (applied once).
    #[serde(default)]
    pub confirmed_deletions: Vec<String>,
    #[serde(default)]
    pub last_result_ms: i64,
    #[serde(default)]
    pub last_good_ms: i64,
    /// Deletions of generated applications within the deletion budget's
    /// window (older ones are dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletion_log: Vec<DeletionRecord>,
    /// The set's size over the window: the last sample at or before its
    /// start, then one per change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub size_log: Vec<SizeSample>,
}

/// One generated application deleted by its set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRecord {
    pub app: String,
    pub at_ms: i64,
}

/// How many applications a set owned from `at_ms` on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeSample {
    pub at_ms: i64,
    pub size: usize,
}

/// What an in-hub Application (`crate::appofapps`) last wrote for its
/// children, so that it only touches what it declared.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildrenRecord {
    /// Application name → the declaration last written.
    #[serde(default)]
    pub applications: BTreeMap<String, Application>,
    /// ApplicationSet name → the document last written.
    #[serde(default)]
    pub application_sets: BTreeMap<String, serde_json::Value>,
    /// Cluster name → the declaration last applied to its inventory record.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterDeclaration>,
}

/// A cluster declaration an in-hub Application applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterDeclaration {
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `created_ms` of the inventory record when the declaration created
    /// it; 0 when the cluster existed before.
    #[serde(default)]
    pub created_ms: i64,
}

/// Credentials of a repository: https user name and password, or an ssh
/// private key. Never logged; `Debug` hides the password and the key.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoCredentials {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// ssh private key (OpenSSH or PEM text); set for ssh URLs instead of
    /// a password.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ssh_private_key: String,
    /// Do not verify the ssh server's host key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_ignore_host_key: bool,
    /// Only the applications of this project may use these credentials
    /// (a project-scoped repository); empty: every application.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
}

impl std::fmt::Debug for RepoCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "***" };
        f.debug_struct("RepoCredentials")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("ssh_private_key", &hidden(&self.ssh_private_key))
            .field("insecure_ignore_host_key", &self.insecure_ignore_host_key)
            .field("project", &self.project)
            .finish()
    }
}

/// A user API token (only its SHA-256 is stored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub created_ms: i64,
    /// May only read (List/Get/Version): a token from before RBAC, or one
    /// created with `--read-only`; it has `role:readonly`.
    #[serde(default)]
    pub read_only: bool,
    /// The RBAC groups (roles) of an account token. A token stored before
    /// RBAC has none, and has `role:admin` unless `read_only`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// A project token: the project and role whose policies it carries
    /// (its subject is `proj:PROJECT:ROLE`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// A session token made from an SSO login ([`crate::sso`]): the
    /// user's subject (email or `sub`); its groups are the identity
    /// provider's groups claim, exactly (none means none, never admin).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sso_subject: String,
    /// Unix ms after which the token is refused; 0: never.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expires_ms: i64,
}

impl TokenRecord {
    /// The RBAC subject of the token: its name, or `proj:PROJECT:ROLE`.
    pub fn subject(&self) -> String {
        if !self.sso_subject.is_empty() {
            self.sso_subject.clone()
        } else if self.project.is_empty() {
            self.name.clone()
        } else {
            records::project_subject(&self.project, &self.role)
        }
    }

    /// The RBAC groups of the token, built-in roles for tokens from before
    /// RBAC.
    pub fn effective_groups(&self) -> Vec<String> {
        if !self.project.is_empty() {
            Vec::new()
        } else if !self.sso_subject.is_empty() {
            self.groups.clone()
        } else if self.read_only {
            vec![records::ROLE_READONLY.to_owned()]
        } else if self.groups.is_empty() {
            vec![records::ROLE_ADMIN.to_owned()]
        } else {
            self.groups.clone()
        }
    }
}

/// A one-time bootstrap token for `AgentLink.Enroll` (stored by the hash
/// of its secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    /// The cluster the token may enroll, and only that one.
    pub cluster: String,
    pub expires_ms: i64,
}

/// Typed access to the hub's sled database. Cheap to clone: clones share
/// one database and its recovery.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    key: CredentialsKey,
    /// The open database; `None` while it is reopened or after
    /// [`Store::close`].
    current: RwLock<Option<Arc<Trees>>>,
    health: Mutex<StoreHealth>,
    /// A recovery thread runs.
    recovering: AtomicBool,
    closed: AtomicBool,
    /// Instances taken out of service after an IO error, never dropped:
    /// sled's drop flushes and, after some IO errors (a blob that could not
    /// be written), waits forever for a write that will not happen. Each
    /// keeps its memory and its log file's descriptor until the process
    /// ends.
    graveyard: Mutex<Vec<Arc<Trees>>>,
    /// When the write probe in progress started.
    probing: Mutex<Option<Instant>>,
    /// Last write probe, so readiness checks do not write every time.
    last_probe: Mutex<Option<(Instant, Result<(), String>)>>,
    /// Serialises read-modify-write of cluster records, which the agent
    /// link and the fleet both update.
    cluster_lock: Mutex<()>,
    /// Application records written since open (see [`Store::app_writes`]).
    app_writes: AtomicU64,
    /// Project records written or removed since open
    /// ([`Store::project_changes`]).
    project_changes: AtomicU64,
    /// Application records written or removed since open, not counting
    /// writes of only a render's outcome ([`Store::put_app_result`]).
    app_changes: AtomicU64,
    /// Writes that changed an application's last render error
    /// ([`Store::app_error_changes`]).
    app_error_changes: AtomicU64,
    /// How many times the database was reopened after an IO error.
    reopens: AtomicU64,
    /// Sync and health of every stored status, built on first use by
    /// [`Store::for_each_status_summary`] and kept up to date by the writes
    /// that change statuses, so metrics never scan the statuses tree.
    status_index: Mutex<Option<StatusIndex>>,
    /// Changes to what the status index holds ([`Store::status_changes`]).
    status_changes: AtomicU64,
    /// Applications by destination and clusters by server, built on first
    /// use (see [`targets`]).
    targets: Mutex<Option<Targets>>,
    /// Every cluster record, decoded, built on first use and kept in step
    /// by the writes (under `cluster_lock`); dropped when the database is
    /// reopened. Listing 10,000 clusters then decodes nothing.
    cluster_cache: Mutex<Option<ClusterCache>>,
    /// Every application record, decoded, as `cluster_cache` (writes under
    /// `app_lock`): a Git pass, the ApplicationSet controller and the
    /// fleet read applications without decoding JSON.
    app_cache: Mutex<Option<AppCache>>,
    /// application → (pinned revision, what pinned it), for every
    /// application whose operations record holds a pin: built on first use
    /// from `app_ops` and kept in step by [`Store::update_app_ops`], so a
    /// render or a move asks "is it pinned?" without reading and decoding
    /// its history. Built again after the database is reopened
    /// (`pins_stale`: set without the lock, which an IO error may find
    /// held by the write that failed).
    pins: Mutex<Option<HashMap<String, (String, String)>>>,
    pins_stale: AtomicBool,
    /// Serialises writes of application records with the building of
    /// `app_cache`.
    app_lock: Mutex<()>,
    /// Reads and records decoded since open ([`Store::counters`]).
    reads: AtomicU64,
    decoded: AtomicU64,
    /// Credential templates (`repo-creds` Secrets), held in memory: the
    /// directory they are read from is their source of truth.
    templates: RwLock<Arc<Vec<credential_templates::CredentialTemplate>>>,
    /// Write counters per kind of record ([`Store::changes`]).
    changes: changes::ChangeSignal,
}

/// (application, cluster) → (sync, health) as the agent reported them
/// (`pb::SyncStatus`, `pb::HealthStatus` values).
type StatusIndex = HashMap<(String, String), (i32, i32)>;

/// Cluster name → its record, as stored.
type ClusterCache = BTreeMap<String, Arc<ClusterRecord>>;

/// Application name → its record, as stored.
type AppCache = BTreeMap<String, Arc<AppRecord>>;

/// One open sled instance and its trees.
struct Trees {
    db: sled::Db,
    clusters: sled::Tree,
    apps: sled::Tree,
    bundles: sled::Tree,
    statuses: sled::Tree,
    repos: sled::Tree,
    tokens: sled::Tree,
    /// Per-application deployment history and pin (crate::history).
    app_ops: sled::Tree,
    /// https credentials and ssh keys by repository URL, sealed.
    repo_credentials: sled::Tree,
    bootstrap: sled::Tree,
    appsets: sled::Tree,
    /// Parent application → [`ChildrenRecord`].
    app_children: sled::Tree,
    /// tenancy: AppProjects by name (`projects`).
    projects: sled::Tree,
    /// RBAC settings (`rbac_settings`, one record).
    rbac: sled::Tree,
    /// Audit log by id, oldest first (`audit`).
    audit: sled::Tree,
    /// RollingSync progress by ApplicationSet name (`rollouts`).
    rollouts: sled::Tree,
}

impl Trees {
    fn open(db: sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            clusters: db.open_tree("clusters")?,
            apps: db.open_tree("applications")?,
            bundles: db.open_tree("bundles")?,
            statuses: db.open_tree("app_status")?,
            repos: db.open_tree("repositories")?,
            tokens: db.open_tree("tokens")?,
            app_ops: db.open_tree("app_ops")?,
            repo_credentials: db.open_tree("repo_credentials")?,
            bootstrap: db.open_tree("bootstrap_tokens")?,
            appsets: db.open_tree("application_sets")?,
            app_children: db.open_tree("app_children")?,
            projects: db.open_tree("projects")?,
            rbac: db.open_tree("rbac_settings")?,
            audit: db.open_tree("audit")?,
            rollouts: db.open_tree("rollouts")?,
            db,
        })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

const PROBE_KEY: &[u8] = b"write_probe";
/// A write probe that has not returned for this long counts as failed.
const PROBE_STUCK: Duration = Duration::from_secs(10);
/// Longest an async flush may take before the store counts it as failed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// First and longest pause between two attempts to reopen the database.
const REOPEN_START: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// Opens sled in `dir` and checks the schema version.
fn open_db(dir: &Path) -> Result<(sled::Db, u32), StoreError> {
    let db = open_locked(dir)?;
    let found = match db.get(SCHEMA_KEY)? {
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0),
        None => {
            // A new database (every layout wrote its version): at the
            // current layout from the start.
            db.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
            SCHEMA_VERSION
        }
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found });
    }
    Ok((db, found))
}

/// Moves credentials embedded in registered repository URLs (before `repo
/// add` split them off) into sealed credentials records, registers the
/// repositories under the URL without them, and renames the origin of the
/// applications and application sets they declared; returns how many
/// repositories moved.
fn move_url_credentials(db: &sled::Db, key: &CredentialsKey) -> Result<usize, StoreError> {
    let repos = db.open_tree("repositories")?;
    let creds = db.open_tree("repo_credentials")?;
    let mut moved = 0;
    for entry in repos.iter() {
        let (k, v) = entry?;
        let mut rec: RepoRecord = decode("repository", &k, &v)?;
        let Ok((bare, Some(c))) = crate::source::split_credentials(&rec.url) else {
            continue;
        };
        let old = std::mem::replace(&mut rec.url, bare.clone());
        if creds.get(bare.as_bytes())?.is_none() {
            let sealed = key.seal(
                &bare,
                &encode(&RepoCredentials {
                    username: c.username,
                    password: c.password,
                    ..Default::default()
                }),
            )?;
            creds.insert(bare.as_bytes(), sealed)?;
        }
        repos.insert(bare.as_bytes(), encode(&rec))?;
        repos.remove(&k)?;
        let (from, to) = (format!("git:{old}:"), format!("git:{bare}:"));
        for (tree, what) in [
            ("applications", "application"),
            ("application_sets", "application set"),
        ] {
            let tree = db.open_tree(tree)?;
            for entry in tree.iter() {
                let (k, v) = entry?;
                let mut doc: serde_json::Value = decode(what, &k, &v)?;
                let renamed = doc["origin"]
                    .as_str()
                    .and_then(|o| o.strip_prefix(&from))
                    .map(|file| format!("{to}{file}"));
                if let Some(origin) = renamed {
                    doc["origin"] = serde_json::Value::String(origin);
                    tree.insert(&k, encode(&doc))?;
                }
            }
        }
        tracing::info!(url = %crate::source::SafeUrl(&bare), "credentials in a registered repository URL moved to sealed credentials");
        moved += 1;
    }
    Ok(moved)
}

/// Puts a copy of the log file (`db`) in its place: the latched instance,
/// which is never dropped, keeps its exclusive lock on the original, and a
/// new instance locks the copy. The latched instance writes nothing more
/// (sled stops at its first IO error), so the copy holds what is on disk,
/// which sled recovers from as after a crash.
fn release_lock(dir: &Path) -> Result<(), StoreError> {
    let log = dir.join("db");
    let copy = dir.join("db.reopen");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    std::fs::copy(&log, &copy).map_err(io(&copy))?;
    std::fs::File::open(&copy)
        .and_then(|f| f.sync_all())
        .map_err(io(&copy))?;
    std::fs::rename(&copy, &log).map_err(io(&log))
}

/// Opens the database again after an IO error, with backoff,
/// until a write gets through or the store is closed or dropped.
fn recover(shared: &Weak<Shared>) {
    let mut pause = REOPEN_START;
    let mut attempts = 0u32;
    loop {
        // In-flight calls may still hold the old instance (and its file
        // lock) for a moment; the first attempt waits a little too.
        std::thread::sleep(pause);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::SeqCst) {
            shared.recovering.store(false, Ordering::SeqCst);
            return;
        }
        attempts = attempts.saturating_add(1);
        let reopened = release_lock(&shared.dir)
            .and_then(|()| open_db(&shared.dir))
            .and_then(|(db, _)| {
                db.insert(PROBE_KEY, probe_stamp().as_bytes())?;
                db.flush()?;
                Trees::open(db)
            });
        match reopened {
            Ok(trees) => {
                *shared.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(trees));
                *shared.health.lock().unwrap_or_else(|p| p.into_inner()) = StoreHealth::Writable;
                *shared.last_probe.lock().unwrap_or_else(|p| p.into_inner()) = None;
                // A probe stuck in the old instance does not count for the
                // new one.
                *shared.probing.lock().unwrap_or_else(|p| p.into_inner()) = None;
                shared.recovering.store(false, Ordering::SeqCst);
                shared.reopens.fetch_add(1, Ordering::SeqCst);
                tracing::info!(dir = %shared.dir.display(), attempts, "store reopened after an IO error; writes work again");
                return;
            }
            Err(e) => {
                if pause < REOPEN_MAX {
                    tracing::error!(dir = %shared.dir.display(), error = %e, attempts, retry_in_ms = (pause * 2).min(REOPEN_MAX).as_millis(), "store cannot be reopened yet");
                }
                *shared.health.lock().unwrap_or_else(|p| p.into_inner()) = StoreHealth::Failed {
                    error: e.to_string(),
                };
                pause = (pause * 2).min(REOPEN_MAX);
            }
        }
    }
}

fn decode<T: DeserializeOwned>(what: &'static str, key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

/// Every record of `tree`, decoded.
fn decode_all<T: DeserializeOwned>(
    tree: &sled::Tree,
    what: &'static str,
) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|r| {
            let (k, v) = r?;
            decode(what, &k, &v)
        })
        .collect()
}

/// Every record of `tree` with its key.
fn decode_entries<T: DeserializeOwned>(
    tree: &sled::Tree,
    what: &'static str,
) -> Result<Vec<(String, T)>, StoreError> {
    tree.iter()
        .map(|r| {
            let (k, v) = r?;
            Ok((
                String::from_utf8_lossy(&k).into_owned(),
                decode(what, &k, &v)?,
            ))
        })
        .collect()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (string keys only).
    serde_json::to_vec(v).unwrap_or_default()
}

fn status_key(app: &str, cluster: &str) -> Vec<u8> {
    // NUL cannot occur in Kubernetes names, so the key splits unambiguously.
    let mut k = Vec::with_capacity(app.len() + cluster.len() + 1);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(cluster.as_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store in `dir` with a credentials key made
    /// for this handle only: credentials written through it cannot be read
    /// after the store is closed. For tests and tools; a hub uses
    /// [`Store::open_with_key`].
    ///
    /// # Errors
    /// sled cannot open the directory, or it was written by a newer hub.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_key(dir, CredentialsKey::ephemeral()?)
    }

    /// Opens (or creates) the store in `dir`; repository credentials are
    /// sealed with `key`. A store written by an older hub is migrated: with
    /// a persistent key, credentials stored in clear are sealed and the
    /// database rewritten so no copy of them stays in its log.
    ///
    /// # Errors
    /// sled cannot open the directory, it was written by a newer hub, or the
    /// migration fails.
    pub fn open_with_key(dir: &Path, key: CredentialsKey) -> Result<Self, StoreError> {
        credentials::finish_interrupted_rewrite(dir)?;
        let (db, found) = open_db(dir)?;
        let db = if found < SCHEMA_VERSION && key.is_persistent() {
            let migrated =
                credentials::seal_plaintext(&db, &key)? + move_url_credentials(&db, &key)?;
            db.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
            db.flush()?;
            if migrated > 0 {
                drop(db);
                credentials::rewrite(dir)?;
                tracing::info!(dir = %dir.display(), records = migrated, "repository credentials sealed with the credentials key; database rewritten");
                open_db(dir)?.0
            } else {
                db
            }
        } else {
            db
        };
        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                key,
                current: RwLock::new(Some(Arc::new(Trees::open(db)?))),
                health: Mutex::new(StoreHealth::Writable),
                recovering: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                graveyard: Mutex::new(Vec::new()),
                probing: Mutex::new(None),
                last_probe: Mutex::new(None),
                cluster_lock: Mutex::new(()),
                app_writes: AtomicU64::new(0),
                app_changes: AtomicU64::new(0),
                app_error_changes: AtomicU64::new(0),
                project_changes: AtomicU64::new(0),
                reopens: AtomicU64::new(0),
                status_index: Mutex::new(None),
                status_changes: AtomicU64::new(0),
                targets: Mutex::new(None),
                cluster_cache: Mutex::new(None),
                app_cache: Mutex::new(None),
                pins: Mutex::new(None),
                pins_stale: AtomicBool::new(false),
                app_lock: Mutex::new(()),
                reads: AtomicU64::new(0),
                decoded: AtomicU64::new(0),
                templates: RwLock::default(),
                changes: changes::ChangeSignal::default(),
            }),
        })
    }

    /// The open database, or why there is none.
    fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        if let Some(t) = self
            .shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(t.clone());
        }
        Err(StoreError::Unavailable(
            if self.shared.closed.load(Ordering::SeqCst) {
                "the store is closed".to_owned()
            } else {
                match self.health() {
                    StoreHealth::Writable => "reopening".to_owned(),
                    StoreHealth::Recovering { error } | StoreHealth::Failed { error } => {
                        format!("recovering after an IO error ({error})")
                    }
                }
            },
        ))
    }

    /// [`Self::with`] for a read, counted in [`Self::counters`].
    fn read<R>(&self, f: impl FnOnce(&Trees) -> Result<R, StoreError>) -> Result<R, StoreError> {
        self.shared.reads.fetch_add(1, Ordering::Relaxed);
        self.with(f)
    }

    fn count_decoded(&self, n: u64) {
        self.shared.decoded.fetch_add(n, Ordering::Relaxed);
    }

    fn decode<T: DeserializeOwned>(
        &self,
        what: &'static str,
        key: &[u8],
        v: &[u8],
    ) -> Result<T, StoreError> {
        self.count_decoded(1);
        decode(what, key, v)
    }

    fn decode_all<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        what: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let all: Vec<T> = decode_all(tree, what)?;
        self.count_decoded(all.len() as u64);
        Ok(all)
    }

    fn decode_entries<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        what: &'static str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let all: Vec<(String, T)> = decode_entries(tree, what)?;
        self.count_decoded(all.len() as u64);
        Ok(all)
    }

    /// Store reads and records decoded since open, by this handle and its
    /// clones: lets a test hold a pass's work proportional to what changed.
    pub fn counters(&self) -> StoreCounters {
        StoreCounters {
            reads: self.shared.reads.load(Ordering::Relaxed),
            decoded: self.shared.decoded.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` on the targeting index, building it from the applications
    /// and clusters trees on first use.
    fn targets<R>(&self, f: impl FnOnce(&mut Targets) -> R) -> Result<R, StoreError> {
        let mut guard = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let (apps, clusters): (Vec<AppRecord>, Vec<ClusterRecord>) = self.read(|t| {
                Ok((
                    self.decode_all(&t.apps, "application")?,
                    self.decode_all(&t.clusters, "cluster")?,
                ))
            })?;
            let mut built = Targets::default();
            for a in &apps {
                built.put_app(&a.app.metadata.name, Destination::of(&a.app));
            }
            for c in &clusters {
                built.put_cluster(&c.name, ClusterFacts::of(c));
            }
            *guard = Some(built);
        }
        match guard.as_mut() {
            Some(t) => Ok(f(t)),
            None => Err(StoreError::Unavailable(
                "the targeting index was not built".to_owned(),
            )),
        }
    }

    /// Updates the targeting index after a write, when it is built (else
    /// the first use reads the write from the trees).
    fn note_targets(&self, f: impl FnOnce(&mut Targets)) {
        if let Some(t) = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            f(t);
        }
    }

    /// The applications whose destination names the cluster `name` (by
    /// name, or by its server URL), with their destination. Costs no
    /// store read once the index is built.
    ///
    /// # Errors
    /// Building the index on first use failed.
    pub fn apps_targeting(&self, cluster: &str) -> Result<Vec<(String, Destination)>, StoreError> {
        self.targets(|t| t.apps_targeting(cluster))
    }

    /// The clusters `dest` names (one by name, or every cluster with that
    /// server URL).
    ///
    /// # Errors
    /// Building the index on first use failed.
    pub fn clusters_targeted(&self, dest: &Destination) -> Result<Vec<String>, StoreError> {
        self.targets(|t| t.clusters_targeted(dest))
    }

    /// The applications added, removed or given another destination since
    /// the last call (only their clusters' indexes can have changed); `None`
    /// when the index was not built yet, so every cluster may have.
    pub fn take_moved_apps(&self) -> Option<Vec<String>> {
        self.shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(Targets::take_moved)
    }

    /// The destination of application `name`, `None` when there is none.
    ///
    /// # Errors
    /// Building the index on first use failed.
    pub fn app_destination(&self, name: &str) -> Result<Option<Destination>, StoreError> {
        self.targets(|t| t.destination(name).cloned())
    }

    /// Whether application `name` exists, from the index.
    ///
    /// # Errors
    /// Building the index on first use failed.
    pub fn has_app(&self, name: &str) -> Result<bool, StoreError> {
        self.targets(|t| t.has_app(name))
    }

    /// Every cluster name, from the index.
    ///
    /// # Errors
    /// Building the index on first use failed.
    pub fn cluster_names(&self) -> Result<Vec<String>, StoreError> {
        self.targets(|t| t.cluster_names().cloned().collect())
    }

    /// A counter that moves whenever a cluster is added or removed or its
    /// labels, annotations, server or project change (not with heartbeats
    /// or generations): what an ApplicationSet `clusters` generator reads.
    ///
    /// # Errors
    /// Building the index on first use failed.
    pub fn inventory_generation(&self) -> Result<u64, StoreError> {
        self.targets(|t| t.inventory_generation)
    }

    /// Runs `f` on the open database; an IO error starts the recovery.
    fn with<R>(&self, f: impl FnOnce(&Trees) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let trees = self.trees()?;
        let r = f(&trees);
        if let Err(e) = &r
            && e.is_io()
        {
            self.latched(&trees, e);
        }
        r
    }

    /// Takes the latched instance `trees` out of service and starts
    /// reopening the database (once).
    fn latched(&self, trees: &Arc<Trees>, error: &StoreError) {
        // What the reopened database holds may be older than what the
        // failed instance acknowledged.
        *self.cluster_cache() = None;
        *self.app_cache() = None;
        self.shared.pins_stale.store(true, Ordering::SeqCst);
        {
            let mut current = self
                .shared
                .current
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, trees))
                && let Some(old) = current.take()
            {
                self.shared
                    .graveyard
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(old);
            }
        }
        if self.shared.closed.load(Ordering::SeqCst)
            || self.shared.recovering.swap(true, Ordering::SeqCst)
        {
            return;
        }
        tracing::error!(dir = %self.shared.dir.display(), error = %error, "store IO error; reopening the database");
        *self.shared.health.lock().unwrap_or_else(|p| p.into_inner()) = StoreHealth::Recovering {
            error: error.to_string(),
        };
        let weak = Arc::downgrade(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("store-recovery".to_owned())
            .spawn(move || recover(&weak));
        if let Err(e) = spawned {
            self.shared.recovering.store(false, Ordering::SeqCst);
            tracing::error!(error = %e, "cannot start the store recovery thread");
        }
    }

    /// How many times the database was reopened after an IO error since
    /// it was opened.
    pub fn reopens(&self) -> u64 {
        self.shared.reopens.load(Ordering::SeqCst)
    }

    /// Whether the store accepts writes.
    pub fn health(&self) -> StoreHealth {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes and flushes a probe record, at most once per `max_age` (the
    /// last result is returned in between): a full disk shows up here even
    /// when nothing else writes.
    ///
    /// # Errors
    /// The write or the flush failed, or the store is recovering.
    pub fn probe_write(&self, max_age: Duration) -> Result<(), String> {
        if let Some((at, result)) = self
            .shared
            .last_probe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && at.elapsed() < max_age
        {
            return result.clone();
        }
        {
            let mut probing = self
                .shared
                .probing
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(started) = *probing {
                let waited = started.elapsed();
                if waited < PROBE_STUCK {
                    return Err("a write probe is in progress".to_owned());
                }
                // A flush that never returns is a disk that does not take
                // writes: recover as from an IO error.
                let error = StoreError::Sled(sled::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("a write probe has not returned for {}s", waited.as_secs()),
                )));
                let message = error.to_string();
                if let Ok(trees) = self.trees() {
                    self.latched(&trees, &error);
                }
                return Err(message);
            }
            *probing = Some(Instant::now());
        }
        let result = self
            .with(|t| {
                t.db.insert(PROBE_KEY, probe_stamp().as_bytes())?;
                t.db.flush()?;
                Ok(())
            })
            .map_err(|e| e.to_string());
        *self
            .shared
            .probing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        *self
            .shared
            .last_probe
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), result.clone()));
        result
    }

    /// Closes the database now, whatever clones are left: later calls on
    /// any clone fail with [`StoreError::Unavailable`], and the directory
    /// can be opened again as soon as calls in flight have returned.
    ///
    /// # Errors
    /// The final flush failed.
    pub fn close(&self) -> Result<(), StoreError> {
        self.shared.closed.store(true, Ordering::SeqCst);
        let current = self
            .shared
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(trees) = current else {
            return Ok(());
        };
        let flushed = trees.db.flush().map(|_| ());
        // Calls in flight hold the instance (and sled's file lock) for a
        // moment; wait for them, briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&trees) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(trees);
        flushed.map_err(StoreError::from)
    }

    /// Schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.with(|t| {
            Ok(t.db
                .get(SCHEMA_KEY)?
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
                .unwrap_or(0))
        })
    }

    /// Makes every write so far durable. Call after writes acknowledged to a
    /// user or an agent.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.with(|t| {
            t.db.flush()?;
            Ok(())
        })
    }

    /// Async flush, for use on the runtime. A flush that does not complete
    /// within 30 s counts as an IO error (sled can wait forever for a write
    /// that failed).
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let r = match tokio::time::timeout(FLUSH_TIMEOUT, trees.db.flush_async()).await {
            Ok(r) => r.map(|_| ()).map_err(StoreError::from),
            Err(_) => Err(StoreError::Sled(sled::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("flush did not complete within {}s", FLUSH_TIMEOUT.as_secs()),
            )))),
        };
        if let Err(e) = &r
            && e.is_io()
        {
            self.latched(&trees, e);
        }
        r
    }

    // ---- clusters ----

    fn cluster_cache(&self) -> std::sync::MutexGuard<'_, Option<ClusterCache>> {
        self.shared
            .cluster_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn cluster_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared
            .cluster_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Every cluster record, from the cache (built here on first use).
    fn cached_clusters(&self) -> Result<Vec<Arc<ClusterRecord>>, StoreError> {
        if let Some(cache) = self.cluster_cache().as_ref() {
            return Ok(cache.values().cloned().collect());
        }
        // Under the writers' lock: no write lands between the scan and the
        // cache taking over.
        let _g = self.cluster_lock();
        let all: Vec<ClusterRecord> = self.read(|t| self.decode_all(&t.clusters, "cluster"))?;
        let cache: ClusterCache = all
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(c)))
            .collect();
        let list = cache.values().cloned().collect();
        *self.cluster_cache() = Some(cache);
        Ok(list)
    }

    /// Keeps the cache (when built) in step with a write of `name`.
    fn cache_cluster(&self, name: &str, rec: Option<&ClusterRecord>) {
        if let Some(cache) = self.cluster_cache().as_mut() {
            match rec {
                Some(rec) => {
                    cache.insert(name.to_owned(), Arc::new(rec.clone()));
                }
                None => {
                    cache.remove(name);
                }
            }
        }
    }

    /// The record of `name`, shared with the store's cache (no copy).
    ///
    /// # Errors
    /// The store cannot be read, or the record is corrupt.
    pub fn cluster_shared(&self, name: &str) -> Result<Option<Arc<ClusterRecord>>, StoreError> {
        if let Some(cache) = self.cluster_cache().as_ref() {
            return Ok(cache.get(name).cloned());
        }
        Ok(self.cluster(name)?.map(Arc::new))
    }

    pub fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        if let Some(cache) = self.cluster_cache().as_ref() {
            return Ok(cache.get(name).map(|c| (**c).clone()));
        }
        self.read(|t| {
            t.clusters
                .get(name.as_bytes())?
                .map(|v| self.decode("cluster", name.as_bytes(), &v))
                .transpose()
        })
    }

    pub fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        Ok(self
            .cached_clusters()?
            .into_iter()
            .map(|c| (*c).clone())
            .collect())
    }

    /// Every cluster record, shared with the store's cache (no copy, no
    /// decoding): for listings of the whole fleet.
    pub fn clusters_shared(&self) -> Result<Vec<Arc<ClusterRecord>>, StoreError> {
        self.cached_clusters()
    }

    pub fn put_cluster(&self, rec: &ClusterRecord) -> Result<(), StoreError> {
        self.with(|t| {
            let _g = self.cluster_lock();
            t.clusters.insert(rec.name.as_bytes(), encode(rec))?;
            self.cache_cluster(&rec.name, Some(rec));
            Ok(())
        })?;
        self.note_targets(|t| t.put_cluster(&rec.name, ClusterFacts::of(rec)));
        self.changed(ChangeKind::Clusters);
        Ok(())
    }

    /// Applies `f` to the stored record of `name`; returns the updated record
    /// (shared with the cache), or `None` when the cluster does not exist.
    pub fn update_cluster(
        &self,
        name: &str,
        f: impl FnOnce(&mut ClusterRecord),
    ) -> Result<Option<Arc<ClusterRecord>>, StoreError> {
        self.with(|t| {
            let _g = self.cluster_lock();
            // Copied out of the cache (readers keep seeing the stored
            // record until the write lands): one copy per update.
            let cached = self
                .cluster_cache()
                .as_ref()
                .map(|cache| cache.get(name).map(|c| (**c).clone()));
            let mut rec: ClusterRecord = match cached {
                Some(Some(rec)) => rec,
                Some(None) => return Ok(None),
                None => {
                    let Some(v) = t.clusters.get(name.as_bytes())? else {
                        return Ok(None);
                    };
                    self.decode("cluster", name.as_bytes(), &v)?
                }
            };
            f(&mut rec);
            t.clusters.insert(name.as_bytes(), encode(&rec))?;
            let rec = Arc::new(rec);
            if let Some(cache) = self.cluster_cache().as_mut() {
                cache.insert(name.to_owned(), rec.clone());
            }
            Ok(Some(rec))
        })
        .inspect(|rec| {
            if let Some(rec) = rec {
                self.note_targets(|t| t.put_cluster(name, ClusterFacts::of(rec)));
                self.changed(ChangeKind::Clusters);
            }
        })
    }

    /// Removes a cluster and every status it reported.
    pub fn remove_cluster(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|t| {
            let _g = self.cluster_lock();
            let existed = t.clusters.remove(name.as_bytes())?.is_some();
            self.cache_cluster(name, None);
            self.remove_bootstraps_of(name)?;
            let keys: Vec<_> = t
                .statuses
                .iter()
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.split(|b| *b == 0).nth(1) == Some(name.as_bytes()))
                .collect();
            for k in keys {
                t.statuses.remove(k)?;
            }
            Ok(existed)
        })
        .inspect(|_| {
            if let Some(index) = self.status_index().as_mut() {
                index.retain(|(_, cluster), _| cluster != name);
            }
            self.note_status_change();
            self.note_targets(|t| t.remove_cluster(name));
            self.changed(ChangeKind::Clusters);
            self.changed(ChangeKind::Statuses);
        })
    }

    // ---- repository credentials ----

    /// The credentials (https or ssh) stored for `url`.
    ///
    /// # Errors
    /// The store fails, or the record cannot be unsealed with this store's
    /// key (a lost or replaced credentials key).
    pub fn repo_credentials(&self, url: &str) -> Result<Option<RepoCredentials>, StoreError> {
        let key = &self.shared.key;
        let found = self.with(|t| Ok(t.repo_credentials.get(url.as_bytes())?))?;
        let Some(v) = found else {
            return Ok(None);
        };
        let plain = key.open(url, &v).inspect_err(|e| {
            tracing::error!(error = %e, "stored repository credentials cannot be used");
        })?;
        self.decode("repo_credentials", url.as_bytes(), &plain)
            .map(Some)
    }

    /// Stores (or with `None` removes) the credentials of `url`, sealed.
    ///
    /// # Errors
    /// The store fails.
    pub fn put_repo_credentials(
        &self,
        url: &str,
        credentials: Option<&RepoCredentials>,
    ) -> Result<(), StoreError> {
        let sealed = credentials
            .map(|c| self.shared.key.seal(url, &encode(c)))
            .transpose()?;
        self.with(|t| {
            match &sealed {
                Some(v) => {
                    t.repo_credentials.insert(url.as_bytes(), v.as_slice())?;
                }
                None => {
                    t.repo_credentials.remove(url.as_bytes())?;
                }
            }
            Ok(())
        })
    }

    // ---- application history and pins ----

    /// The deployment history and pin of an application.
    pub fn app_ops(&self, name: &str) -> Result<records::AppOps, StoreError> {
        self.read(|t| {
            t.app_ops
                .get(name.as_bytes())?
                .map(|v| self.decode("app_ops", name.as_bytes(), &v))
                .transpose()
                .map(Option::unwrap_or_default)
        })
    }

    #[cfg(test)]
    pub fn put_app_ops(&self, name: &str, ops: &records::AppOps) -> Result<(), StoreError> {
        let ops = ops.clone();
        self.update_app_ops(name, |o| {
            *o = ops;
            true
        })
        .map(|_| ())
    }

    /// Reads the history and pin of application `name`, lets `f` change
    /// them, and writes them back when `f` returns `true`; returns what
    /// `f` returned. Read and write are one step against every other
    /// update: the Git loop (a render dropping a stale pin, an automated
    /// deployment), the rollout reconciler (pins, events) and the API
    /// (sync, rollback) write the same record, and a plain read then
    /// write lost one of two concurrent changes.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub fn update_app_ops(
        &self,
        name: &str,
        f: impl FnOnce(&mut records::AppOps) -> bool,
    ) -> Result<bool, StoreError> {
        // Under the pins lock: updates are serialised, and the index and
        // the record change together.
        let mut pins = self.shared.pins.lock().unwrap_or_else(|p| p.into_inner());
        let mut ops = self.app_ops(name)?;
        if !f(&mut ops) {
            return Ok(false);
        }
        self.with(|t| {
            t.app_ops.insert(name.as_bytes(), encode(&ops))?;
            Ok(())
        })?;
        if let Some(pins) = pins.as_mut() {
            match &ops.pinned {
                Some(pin) => {
                    pins.insert(name.to_owned(), (pin.clone(), ops.pinned_by.clone()));
                }
                None => {
                    pins.remove(name);
                }
            }
        }
        self.changed(ChangeKind::Apps);
        Ok(true)
    }

    /// The revision `name` is pinned to and what pinned it (`rollback`,
    /// `sync --revision`, `rollout:SET`), if any: [`Store::app_ops`]'s
    /// `pinned` and `pinned_by`, from an index instead of the record.
    ///
    /// # Errors
    /// The store cannot be read (building the index on first use).
    pub fn app_pin(&self, name: &str) -> Result<Option<(String, String)>, StoreError> {
        let mut pins = self.shared.pins.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.pins_stale.swap(false, Ordering::SeqCst) {
            *pins = None;
        }
        if pins.is_none() {
            let built = self.read(|t| {
                let mut built = HashMap::new();
                for kv in t.app_ops.iter() {
                    let (k, v) = kv?;
                    let ops: records::AppOps = self.decode("app_ops", &k, &v)?;
                    if let Some(pin) = ops.pinned {
                        built.insert(
                            String::from_utf8_lossy(&k).into_owned(),
                            (pin, ops.pinned_by),
                        );
                    }
                }
                Ok(built)
            })?;
            *pins = Some(built);
        }
        Ok(pins.as_ref().and_then(|p| p.get(name).cloned()))
    }

    // ---- applications ----

    fn app_cache(&self) -> std::sync::MutexGuard<'_, Option<AppCache>> {
        self.shared
            .app_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn app_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared
            .app_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Every application record, from the cache (built here on first use).
    /// Counted as read, and each record handed out as decoded, as when
    /// they came from the tree: the counters measure the work asked of
    /// the store.
    fn cached_apps(&self) -> Result<Vec<Arc<AppRecord>>, StoreError> {
        let cached = self
            .app_cache()
            .as_ref()
            .map(|cache| cache.values().cloned().collect::<Vec<_>>());
        let list = match cached {
            Some(list) => list,
            None => {
                // Under the writers' lock: no write lands between the scan
                // and the cache taking over.
                let _g = self.app_lock();
                let all: Vec<AppRecord> = self.with(|t| decode_all(&t.apps, "application"))?;
                let cache: AppCache = all
                    .into_iter()
                    .map(|a| (a.app.metadata.name.clone(), Arc::new(a)))
                    .collect();
                let list = cache.values().cloned().collect();
                *self.app_cache() = Some(cache);
                list
            }
        };
        self.shared.reads.fetch_add(1, Ordering::Relaxed);
        self.count_decoded(list.len() as u64);
        Ok(list)
    }

    /// Keeps the cache (when built) in step with a write of `name`.
    fn cache_app(&self, name: &str, rec: Option<&AppRecord>) {
        if let Some(cache) = self.app_cache().as_mut() {
            match rec {
                Some(rec) => {
                    cache.insert(name.to_owned(), Arc::new(rec.clone()));
                }
                None => {
                    cache.remove(name);
                }
            }
        }
    }

    /// The record of application `name`, shared with the store's cache.
    pub fn app_shared(&self, name: &str) -> Result<Option<Arc<AppRecord>>, StoreError> {
        let cached = self
            .app_cache()
            .as_ref()
            .map(|cache| cache.get(name).cloned());
        let found = match cached {
            Some(found) => {
                self.shared.reads.fetch_add(1, Ordering::Relaxed);
                found
            }
            None => self
                .read(|t| {
                    t.apps
                        .get(name.as_bytes())?
                        .map(|v| decode::<AppRecord>("application", name.as_bytes(), &v))
                        .transpose()
                })?
                .map(Arc::new),
        };
        if found.is_some() {
            self.count_decoded(1);
        }
        Ok(found)
    }

    pub fn app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.app_shared(name)?.map(|a| (*a).clone()))
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        Ok(self
            .cached_apps()?
            .into_iter()
            .map(|a| (*a).clone())
            .collect())
    }

    /// Every application record, shared with the store's cache (no copy,
    /// no decoding): for passes over all applications.
    pub fn apps_shared(&self) -> Result<Vec<Arc<AppRecord>>, StoreError> {
        self.cached_apps()
    }

    pub fn put_app(&self, rec: &AppRecord) -> Result<(), StoreError> {
        self.with(|t| {
            let _g = self.app_lock();
            t.apps
                .insert(rec.app.metadata.name.as_bytes(), encode(rec))?;
            self.cache_app(&rec.app.metadata.name, Some(rec));
            Ok(())
        })?;
        self.note_targets(|t| t.put_app(&rec.app.metadata.name, Destination::of(&rec.app)));
        self.shared.app_writes.fetch_add(1, Ordering::Relaxed);
        self.shared.app_changes.fetch_add(1, Ordering::Relaxed);
        self.changed(ChangeKind::Apps);
        Ok(())
    }

    /// Records what an application's last render left (`rec.revision` and
    /// `rec.error`), keeping the stored definition: the `Application` and
    /// origin in `rec` are ignored. Not an application change
    /// ([`Store::app_changes`]): what is planned from the applications'
    /// definitions (ApplicationSets) stays valid, so a commit that moves
    /// every application's revision does not make every set plan again.
    /// Returns whether the application still exists.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub fn put_app_result(
        &self,
        name: &str,
        revision: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        let error_changed = self.with(|t| {
            let _g = self.app_lock();
            let Some(current) = self.app_shared(name)? else {
                return Ok(None);
            };
            if current.revision == revision && current.error == error {
                return Ok(Some(false));
            }
            let mut rec = (*current).clone();
            rec.revision = revision.to_owned();
            let error_changed = rec.error != error;
            rec.error = error.to_owned();
            t.apps.insert(name.as_bytes(), encode(&rec))?;
            self.cache_app(name, Some(&rec));
            Ok(Some(error_changed))
        })?;
        let Some(error_changed) = error_changed else {
            return Ok(false);
        };
        self.shared.app_writes.fetch_add(1, Ordering::Relaxed);
        if error_changed {
            self.shared
                .app_error_changes
                .fetch_add(1, Ordering::Relaxed);
        }
        self.changed(ChangeKind::Apps);
        Ok(true)
    }

    /// [`Store::put_app_result`] for many applications that rendered
    /// without error at a new commit (name, revision), in one batch: the
    /// error is cleared and the definition kept. Applications gone
    /// meanwhile are skipped. Returns how many records were written.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub fn put_app_revisions(&self, moves: &[(String, String)]) -> Result<usize, StoreError> {
        let (written, errors_cleared) = self.with(|t| {
            let _g = self.app_lock();
            let mut batch = sled::Batch::default();
            let mut records = Vec::new();
            let mut errors_cleared = false;
            for (name, revision) in moves {
                let Some(current) = self.app_shared(name)? else {
                    continue;
                };
                if current.revision == *revision && current.error.is_empty() {
                    continue;
                }
                let mut rec = (*current).clone();
                errors_cleared |= !rec.error.is_empty();
                rec.revision = revision.clone();
                rec.error.clear();
                batch.insert(name.as_bytes(), encode(&rec));
                records.push(rec);
            }
            if records.is_empty() {
                return Ok((0, false));
            }
            t.apps.apply_batch(batch)?;
            let written = records.len();
            if let Some(cache) = self.app_cache().as_mut() {
                for rec in records {
                    cache.insert(rec.app.metadata.name.clone(), Arc::new(rec));
                }
            }
            Ok((written, errors_cleared))
        })?;
        if written == 0 {
            return Ok(0);
        }
        self.shared
            .app_writes
            .fetch_add(written as u64, Ordering::Relaxed);
        if errors_cleared {
            self.shared
                .app_error_changes
                .fetch_add(1, Ordering::Relaxed);
        }
        self.changed(ChangeKind::Apps);
        Ok(written)
    }

    /// Writes an application's definition (`rec.app`, `rec.origin`),
    /// keeping the outcome of its last render as stored when there is one:
    /// a reconciler that read the record before a render finished cannot
    /// put the older revision or error back.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub fn put_app_definition(&self, rec: &AppRecord) -> Result<(), StoreError> {
        self.with(|t| {
            let _g = self.app_lock();
            let mut rec = rec.clone();
            if let Some(current) = self.app_shared(&rec.app.metadata.name)? {
                rec.revision.clone_from(&current.revision);
                rec.error.clone_from(&current.error);
            }
            t.apps
                .insert(rec.app.metadata.name.as_bytes(), encode(&rec))?;
            self.cache_app(&rec.app.metadata.name, Some(&rec));
            Ok(())
        })?;
        self.note_targets(|t| t.put_app(&rec.app.metadata.name, Destination::of(&rec.app)));
        self.shared.app_writes.fetch_add(1, Ordering::Relaxed);
        self.shared.app_changes.fetch_add(1, Ordering::Relaxed);
        self.changed(ChangeKind::Apps);
        Ok(())
    }

    /// How many writes changed an application's last render error since
    /// open: what reads the errors (metrics' comparison error) reads them
    /// again when this or [`Store::app_changes`] moved.
    pub fn app_error_changes(&self) -> u64 {
        self.shared.app_error_changes.load(Ordering::Relaxed)
    }

    /// How many application records this handle (and its clones) wrote since
    /// the store was opened: lets a test see that an unchanged generated
    /// application is not rewritten.
    pub fn app_writes(&self) -> u64 {
        self.shared.app_writes.load(Ordering::Relaxed)
    }

    /// How many project records were written or removed since open: a
    /// render that stands while its inputs are the same is done again
    /// after any project changed.
    pub fn project_changes(&self) -> u64 {
        self.shared.project_changes.load(Ordering::Relaxed)
    }

    fn note_project_change(&self) {
        self.shared.project_changes.fetch_add(1, Ordering::Relaxed);
        self.changed(ChangeKind::Projects);
    }

    /// The write counters per kind of record, on a channel that wakes on
    /// every write: what a live view waits on instead of polling.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<Changes> {
        self.shared.changes.subscribe()
    }

    /// Counts a change of `kind` made outside a record write (a cluster's
    /// link opening or closing, held in memory by the fleet).
    pub fn changed(&self, kind: ChangeKind) {
        self.shared.changes.bump(kind);
    }

    /// How many application records were written or removed since open: a
    /// reconciler that planned against the applications can tell that
    /// none changed since.
    pub fn app_changes(&self) -> u64 {
        self.shared.app_changes.load(Ordering::Relaxed)
    }

    /// Removes an application, its bundle, its statuses, and its history
    /// and pin (as Argo CD's go with the Application's status: an
    /// application created again under the name starts without them, and
    /// does not render a revision a rollback pinned its predecessor to).
    pub fn remove_app(&self, name: &str) -> Result<bool, StoreError> {
        // Under the pins lock, as every history update.
        let mut pins = self.shared.pins.lock().unwrap_or_else(|p| p.into_inner());
        self.with(|t| {
            let _g = self.app_lock();
            let existed = t.apps.remove(name.as_bytes())?.is_some();
            self.cache_app(name, None);
            t.bundles.remove(name.as_bytes())?;
            t.app_ops.remove(name.as_bytes())?;
            let mut prefix = name.as_bytes().to_vec();
            prefix.push(0);
            let keys: Vec<_> = t
                .statuses
                .scan_prefix(&prefix)
                .keys()
                .filter_map(Result::ok)
                .collect();
            for k in keys {
                t.statuses.remove(k)?;
            }
            Ok(existed)
        })
        .inspect(|_| {
            if let Some(pins) = pins.as_mut() {
                pins.remove(name);
            }
            if let Some(index) = self.status_index().as_mut() {
                index.retain(|(app, _), _| app != name);
            }
            self.note_status_change();
            self.note_targets(|t| t.remove_app(name));
            self.shared.app_changes.fetch_add(1, Ordering::Relaxed);
            self.changed(ChangeKind::Apps);
            self.changed(ChangeKind::Statuses);
        })
    }

    // ---- rendered bundles ----

    pub fn bundle(&self, app: &str) -> Result<Option<pb::AppBundle>, StoreError> {
        self.read(|t| {
            t.bundles
                .get(app.as_bytes())?
                .map(|v| {
                    {
                        self.count_decoded(1);
                        pb::AppBundle::decode(v.as_ref())
                    }
                    .map_err(|e| StoreError::Corrupt {
                        what: "bundle",
                        key: app.to_owned(),
                        message: e.to_string(),
                    })
                })
                .transpose()
        })
    }

    pub fn bundles(&self) -> Result<Vec<pb::AppBundle>, StoreError> {
        self.read(|t| {
            t.bundles
                .iter()
                .map(|r| {
                    let (k, v) = r?;
                    {
                        self.count_decoded(1);
                        pb::AppBundle::decode(v.as_ref())
                    }
                    .map_err(|e| StoreError::Corrupt {
                        what: "bundle",
                        key: String::from_utf8_lossy(&k).into_owned(),
                        message: e.to_string(),
                    })
                })
                .collect()
        })
    }

    /// Writes `bundles` in one batch (one write to the log).
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn put_bundles<'a>(
        &self,
        bundles: impl IntoIterator<Item = &'a pb::AppBundle>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for bundle in bundles {
            batch.insert(bundle.name.as_bytes(), bundle.encode_to_vec());
            any = true;
        }
        if !any {
            return Ok(());
        }
        self.with(|t| {
            t.bundles.apply_batch(batch)?;
            Ok(())
        })
        .inspect(|_| self.changed(ChangeKind::Apps))
    }

    pub fn put_bundle(&self, bundle: &pb::AppBundle) -> Result<(), StoreError> {
        self.with(|t| {
            t.bundles
                .insert(bundle.name.as_bytes(), bundle.encode_to_vec())?;
            Ok(())
        })
        .inspect(|_| self.changed(ChangeKind::Apps))
    }

    // ---- statuses ----

    pub fn put_status(&self, cluster: &str, status: &pb::AppStatus) -> Result<(), StoreError> {
        self.with(|t| {
            t.statuses
                .insert(status_key(&status.name, cluster), status.encode_to_vec())?;
            Ok(())
        })?;
        if let Some(index) = self.status_index().as_mut() {
            let old = index.insert(
                (status.name.clone(), cluster.to_owned()),
                (status.sync, status.health),
            );
            if old != Some((status.sync, status.health)) {
                self.note_status_change();
            }
        }
        self.changed(ChangeKind::Statuses);
        Ok(())
    }

    /// Stores the statuses of one report of `cluster` in one batch (one
    /// write to the log, not one per application).
    pub fn put_statuses(
        &self,
        cluster: &str,
        statuses: &[pb::AppStatus],
    ) -> Result<(), StoreError> {
        if statuses.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for status in statuses {
            batch.insert(status_key(&status.name, cluster), status.encode_to_vec());
        }
        self.with(|t| {
            t.statuses.apply_batch(batch)?;
            Ok(())
        })?;
        if let Some(index) = self.status_index().as_mut() {
            let mut changed = false;
            for status in statuses {
                let old = index.insert(
                    (status.name.clone(), cluster.to_owned()),
                    (status.sync, status.health),
                );
                changed |= old != Some((status.sync, status.health));
            }
            if changed {
                self.note_status_change();
            }
        }
        self.changed(ChangeKind::Statuses);
        Ok(())
    }

    fn note_status_change(&self) {
        self.shared.status_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times what [`Store::for_each_status_summary`] shows
    /// changed (a sync or health status that differs from the one held, a
    /// status removed): a reader that summarised the statuses summarises
    /// them again only when this moved. A report that repeats the statuses
    /// held does not move it.
    pub fn status_changes(&self) -> u64 {
        self.shared.status_changes.load(Ordering::Relaxed)
    }

    fn status_index(&self) -> std::sync::MutexGuard<'_, Option<StatusIndex>> {
        self.shared
            .status_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `f(application, cluster, sync, health)` for every stored
    /// status, from an in-memory index: the statuses tree is read once,
    /// on the first call, and later calls cost no store reads.
    ///
    /// # Errors
    /// Building the index on the first call failed (the store cannot be
    /// read, or a status record is corrupt); the next call tries again.
    pub fn for_each_status_summary(
        &self,
        mut f: impl FnMut(&str, &str, i32, i32),
    ) -> Result<(), StoreError> {
        let mut guard = self.status_index();
        if guard.is_none() {
            // Under the lock: a status written meanwhile waits for it and
            // then lands in the finished index.
            let built = self.with(|t| {
                let mut index = StatusIndex::new();
                for r in t.statuses.iter() {
                    let (k, v) = r?;
                    let mut parts = k.splitn(2, |b| *b == 0);
                    let app = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    let cluster = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    let st = {
                        self.count_decoded(1);
                        pb::AppStatus::decode(v.as_ref())
                    }
                    .map_err(|e| StoreError::Corrupt {
                        what: "status",
                        key: format!("{app}/{cluster}"),
                        message: e.to_string(),
                    })?;
                    index.insert(
                        (app.into_owned(), cluster.into_owned()),
                        (st.sync, st.health),
                    );
                }
                Ok(index)
            })?;
            *guard = Some(built);
        }
        for ((app, cluster), (sync, health)) in guard.iter().flatten() {
            f(app, cluster, *sync, *health);
        }
        Ok(())
    }

    /// Every reported status of `app`, keyed by cluster.
    pub fn statuses_of_app(
        &self,
        app: &str,
    ) -> Result<BTreeMap<String, pb::AppStatus>, StoreError> {
        self.read(|t| {
            let mut prefix = app.as_bytes().to_vec();
            prefix.push(0);
            let mut out = BTreeMap::new();
            for r in t.statuses.scan_prefix(&prefix) {
                let (k, v) = r?;
                let cluster = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let st = {
                    self.count_decoded(1);
                    pb::AppStatus::decode(v.as_ref())
                }
                .map_err(|e| StoreError::Corrupt {
                    what: "status",
                    key: format!("{app}/{cluster}"),
                    message: e.to_string(),
                })?;
                out.insert(cluster, st);
            }
            Ok(out)
        })
    }

    // ---- repositories ----

    pub fn repo(&self, url: &str) -> Result<Option<RepoRecord>, StoreError> {
        self.read(|t| {
            t.repos
                .get(url.as_bytes())?
                .map(|v| self.decode("repository", url.as_bytes(), &v))
                .transpose()
        })
    }

    pub fn repos(&self) -> Result<Vec<RepoRecord>, StoreError> {
        self.read(|t| self.decode_all(&t.repos, "repository"))
    }

    /// operate: removes a repository record; whether there was one.
    pub fn remove_repo(&self, url: &str) -> Result<bool, StoreError> {
        self.with(|t| Ok(t.repos.remove(url.as_bytes())?.is_some()))
            .inspect(|_| self.changed(ChangeKind::Repos))
    }

    pub fn put_repo(&self, rec: &RepoRecord) -> Result<(), StoreError> {
        self.with(|t| {
            t.repos.insert(rec.url.as_bytes(), encode(rec))?;
            Ok(())
        })
        .inspect(|_| self.changed(ChangeKind::Repos))
    }

    // ---- application sets ----

    pub fn appset(&self, name: &str) -> Result<Option<AppSetRecord>, StoreError> {
        self.read(|t| {
            t.appsets
                .get(name.as_bytes())?
                .map(|v| self.decode("application set", name.as_bytes(), &v))
                .transpose()
        })
    }

    pub fn appsets(&self) -> Result<Vec<AppSetRecord>, StoreError> {
        self.read(|t| self.decode_all(&t.appsets, "application set"))
    }

    pub fn put_appset(&self, rec: &AppSetRecord) -> Result<(), StoreError> {
        self.with(|t| {
            t.appsets.insert(rec.name.as_bytes(), encode(rec))?;
            Ok(())
        })
        .inspect(|_| self.changed(ChangeKind::AppSets))
    }

    pub fn remove_appset(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|t| Ok(t.appsets.remove(name.as_bytes())?.is_some()))
            .inspect(|_| self.changed(ChangeKind::AppSets))
    }

    // ---- children of in-hub applications ----

    pub fn app_children(&self, parent: &str) -> Result<Option<ChildrenRecord>, StoreError> {
        self.read(|t| {
            t.app_children
                .get(parent.as_bytes())?
                .map(|v| self.decode("app children", parent.as_bytes(), &v))
                .transpose()
        })
    }

    /// Every parent with its record.
    pub fn all_app_children(&self) -> Result<Vec<(String, ChildrenRecord)>, StoreError> {
        self.read(|t| self.decode_entries(&t.app_children, "app children"))
    }

    /// Stores the record; an empty one is removed.
    pub fn put_app_children(&self, parent: &str, rec: &ChildrenRecord) -> Result<(), StoreError> {
        self.with(|t| {
            if *rec == ChildrenRecord::default() {
                t.app_children.remove(parent.as_bytes())?;
            } else {
                t.app_children.insert(parent.as_bytes(), encode(rec))?;
            }
            Ok(())
        })
    }

    // ---- bootstrap tokens ----

    pub fn put_bootstrap(&self, sha256_hex: &str, rec: &BootstrapRecord) -> Result<(), StoreError> {
        self.with(|t| {
            t.bootstrap.insert(sha256_hex.as_bytes(), encode(rec))?;
            Ok(())
        })
    }

    pub fn bootstrap(&self, sha256_hex: &str) -> Result<Option<BootstrapRecord>, StoreError> {
        self.read(|t| {
            t.bootstrap
                .get(sha256_hex.as_bytes())?
                .map(|v| self.decode("bootstrap token", b"<hash>", &v))
                .transpose()
        })
    }

    /// Removes a bootstrap token and returns it; of concurrent callers with
    /// the same token only one gets it (single use).
    pub fn take_bootstrap(&self, sha256_hex: &str) -> Result<Option<BootstrapRecord>, StoreError> {
        self.with(|t| {
            t.bootstrap
                .remove(sha256_hex.as_bytes())?
                .map(|v| self.decode("bootstrap token", b"<hash>", &v))
                .transpose()
        })
    }

    /// Removes every bootstrap token of a cluster.
    pub fn remove_bootstraps_of(&self, cluster: &str) -> Result<(), StoreError> {
        self.with(|t| {
            let keys: Vec<_> = t
                .bootstrap
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, v)| {
                    serde_json::from_slice::<BootstrapRecord>(v).is_ok_and(|r| r.cluster == cluster)
                })
                .map(|(k, _)| k)
                .collect();
            for k in keys {
                t.bootstrap.remove(k)?;
            }
            Ok(())
        })
    }

    // ---- tokens ----

    /// Stores a token by the hex SHA-256 of its secret.
    pub fn put_token(&self, sha256_hex: &str, rec: &TokenRecord) -> Result<(), StoreError> {
        self.with(|t| {
            t.tokens.insert(sha256_hex.as_bytes(), encode(rec))?;
            Ok(())
        })
    }

    /// Removes every token named `name`; returns how many.
    pub fn remove_tokens_named(&self, name: &str) -> Result<usize, StoreError> {
        self.with(|t| {
            let mut n = 0;
            for (hash, rec) in self.tokens()? {
                if rec.name == name {
                    t.tokens.remove(hash.as_bytes())?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Every stored token hash with its record.
    pub fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        self.read(|t| self.decode_entries(&t.tokens, "token"))
    }
}

/// Opens sled in `dir`, waiting up to ten seconds for its file lock: a hub
/// restarted in the same process (or right after the previous process
/// exited) may find the lock still held while the last handles of the
/// previous instance are dropped.
/// What the write probe writes: the time, so each probe changes the file.
fn probe_stamp() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
        .to_string()
}

/// Default of `--store-cache-mib`: sled's page cache, bounded well below
/// its own 1 GiB default.
pub const DEFAULT_CACHE_MIB: u64 = 96;

static CACHE_CAPACITY: AtomicU64 = AtomicU64::new(DEFAULT_CACHE_MIB * 1024 * 1024);

/// Sets the page cache sled gets in stores opened (or reopened) from now
/// on, in bytes.
pub fn set_cache_capacity(bytes: u64) {
    CACHE_CAPACITY.store(bytes, Ordering::Relaxed);
}

/// The page cache of stores opened from now on, in bytes.
pub fn cache_capacity() -> u64 {
    CACHE_CAPACITY.load(Ordering::Relaxed)
}

/// Opens sled at `dir`, waiting up to 10 s for a handle just dropped (its
/// flusher thread lets go of the directory lock a moment later).
fn open_locked(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity());
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other.map_err(StoreError::from),
        }
    }
}

/// The applications that render from `url` or were declared by it.
pub fn applications_of_repo(apps: &[AppRecord], url: &str) -> Vec<String> {
    let same = |u: &str| u.trim_end_matches('/') == url.trim_end_matches('/');
    let declared = format!("git:{url}:");
    let mut names: Vec<String> = apps
        .iter()
        .filter(|r| {
            r.origin.starts_with(&declared)
                || r.app
                    .spec
                    .effective_sources()
                    .iter()
                    .any(|s| same(&s.repo_url))
        })
        .map(|r| r.app.metadata.name.clone())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_credentials_read_old_records_and_hide_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // Written in clear, before ssh keys existed.
        s.trees()
            .unwrap()
            .repo_credentials
            .insert(
                "https://h/r",
                br#"{"username":"u","password":"p"}"#.to_vec(),
            )
            .unwrap();
        let https = s.repo_credentials("https://h/r").unwrap().unwrap();
        assert_eq!(
            (https.username.as_str(), https.password.as_str()),
            ("u", "p")
        );
        assert!(https.ssh_private_key.is_empty() && !https.insecure_ignore_host_key);

        let ssh = RepoCredentials {
            ssh_private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-body\n".into(),
            insecure_ignore_host_key: true,
            ..Default::default()
        };
        s.put_repo_credentials("git@h:r.git", Some(&ssh)).unwrap();
        assert_eq!(
            s.repo_credentials("git@h:r.git").unwrap(),
            Some(ssh.clone())
        );
        let shown = format!("{ssh:?} {https:?}");
        assert!(
            !shown.contains("secret-body") && !shown.contains("\"p\""),
            "{shown}"
        );
        s.put_repo_credentials("git@h:r.git", None).unwrap();
        assert_eq!(s.repo_credentials("git@h:r.git").unwrap(), None);
    }

    /// Every file under `dir`, read.
    fn raw_bytes(dir: &Path) -> Vec<u8> {
        let mut all = Vec::new();
        for e in walkdir::WalkDir::new(dir) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                all.extend(std::fs::read(e.path()).unwrap());
            }
        }
        all
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn credentials_are_sealed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let key = CredentialsKey::load_or_create(&dir.path().join("credentials.key")).unwrap();
        let db = dir.path().join("db");
        {
            let s = Store::open_with_key(&db, key.clone()).unwrap();
            s.put_repo_credentials(
                "https://git.example/r.git",
                Some(&RepoCredentials {
                    username: "deploy-user-x".into(),
                    password: "hunter2-password-zz".into(),
                    ..Default::default()
                }),
            )
            .unwrap();
            s.flush().unwrap();
            s.close().unwrap();
        }
        let raw = raw_bytes(&db);
        assert!(!contains(&raw, "hunter2-password-zz"));
        assert!(!contains(&raw, "deploy-user-x"));
        // The same key reads them back; another key cannot.
        let s = Store::open_with_key(&db, key).unwrap();
        let c = s
            .repo_credentials("https://git.example/r.git")
            .unwrap()
            .unwrap();
        assert_eq!(c.password, "hunter2-password-zz");
        s.close().unwrap();
        let other = Store::open(&db).unwrap();
        let err = other
            .repo_credentials("https://git.example/r.git")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--credentials-key-file"), "{err}");
    }

    #[test]
    fn plaintext_credentials_of_an_older_hub_are_sealed_and_scrubbed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        {
            // What a schema 1 hub left: credentials in clear, overwritten
            // once (sled keeps old values in its log for a while).
            let raw = sled::open(&db).unwrap();
            raw.insert(SCHEMA_KEY, b"1".to_vec()).unwrap();
            let t = raw.open_tree("repo_credentials").unwrap();
            t.insert(
                "https://h/r",
                br#"{"username":"u","password":"old-secret-0001"}"#.to_vec(),
            )
            .unwrap();
            t.insert(
                "https://h/r",
                br#"{"username":"u","password":"plain-secret-0002"}"#.to_vec(),
            )
            .unwrap();
            raw.open_tree("clusters")
                .unwrap()
                .insert("c1", br#"{"name":"c1"}"#.to_vec())
                .unwrap();
            raw.flush().unwrap();
        }
        assert!(contains(&raw_bytes(&db), "plain-secret-0002"));
        let key = CredentialsKey::load_or_create(&dir.path().join("credentials.key")).unwrap();
        let s = Store::open_with_key(&db, key).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            s.repo_credentials("https://h/r").unwrap().unwrap().password,
            "plain-secret-0002"
        );
        assert_eq!(s.clusters().unwrap().len(), 1);
        s.close().unwrap();
        let raw = raw_bytes(&db);
        assert!(!contains(&raw, "plain-secret-0002"));
        assert!(!contains(&raw, "old-secret-0001"));
        assert!(!dir.path().join("db.old").exists() && !dir.path().join("db.rewrite").exists());
    }

    #[test]
    fn credentials_in_registered_urls_move_to_sealed_records() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let old_url = "https://bot:url-secret-0003@git.example/cfg.git";
        {
            let raw = sled::open(&db).unwrap();
            raw.insert(SCHEMA_KEY, b"1".to_vec()).unwrap();
            raw.open_tree("repositories")
                .unwrap()
                .insert(
                    old_url,
                    encode(&RepoRecord {
                        url: old_url.into(),
                        apps_path: "apps".into(),
                        ..Default::default()
                    }),
                )
                .unwrap();
            let rec = AppRecord {
                app: app("guestbook").into(),
                origin: format!("git:{old_url}:apps/guestbook.yaml"),
                revision: String::new(),
                error: String::new(),
            };
            raw.open_tree("applications")
                .unwrap()
                .insert("guestbook", encode(&rec))
                .unwrap();
            raw.flush().unwrap();
        }
        let key = CredentialsKey::load_or_create(&dir.path().join("credentials.key")).unwrap();
        let s = Store::open_with_key(&db, key).unwrap();
        let bare = "https://git.example/cfg.git";
        let repos = s.repos().unwrap();
        assert_eq!(repos.len(), 1);
        assert_eq!(repos[0].url, bare);
        assert_eq!(repos[0].apps_path, "apps");
        let c = s.repo_credentials(bare).unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("bot", "url-secret-0003")
        );
        assert_eq!(
            s.app("guestbook").unwrap().unwrap().origin,
            format!("git:{bare}:apps/guestbook.yaml")
        );
        s.close().unwrap();
        assert!(!contains(&raw_bytes(&db), "url-secret-0003"));
    }

    #[test]
    fn close_releases_the_directory_whatever_clones_remain() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let clone = s.clone();
        s.put_token(
            "aa",
            &TokenRecord {
                name: "t".into(),
                created_ms: 1,
                read_only: false,
                ..Default::default()
            },
        )
        .unwrap();
        s.close().unwrap();
        assert!(matches!(clone.tokens(), Err(StoreError::Unavailable(_))));
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.tokens().unwrap().len(), 1);
    }

    fn app(name: &str) -> Application {
        let yaml = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: file:///r\n    path: p\n  destination:\n    name: c1\n"
        );
        crate::model::parse_applications(&yaml, "t")
            .unwrap()
            .remove(0)
    }

    /// A render's outcome is written without counting as a definition
    /// change, and a definition written by a reconciler that read the
    /// record earlier keeps the newer outcome.
    #[test]
    fn render_outcomes_and_definitions_are_written_apart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let rec = AppRecord {
            app: app("guestbook").into(),
            origin: "api".into(),
            revision: String::new(),
            error: String::new(),
        };
        s.put_app(&rec).unwrap();
        let (changes, errors) = (s.app_changes(), s.app_error_changes());
        assert!(s.put_app_result("guestbook", "c1", "").unwrap());
        assert_eq!(s.app_changes(), changes, "a revision is not a definition");
        assert_eq!(s.app_error_changes(), errors, "the error did not change");
        assert!(s.put_app_result("guestbook", "c1", "boom").unwrap());
        assert_eq!(s.app_error_changes(), errors + 1);
        assert!(!s.put_app_result("missing", "c1", "").unwrap());

        // `rec` was read before the render: its empty revision and error
        // are not written back.
        let mut edited = rec.clone();
        edited.origin = "git:file:///r:apps/a.yaml".into();
        s.put_app_definition(&edited).unwrap();
        assert_eq!(s.app_changes(), changes + 1);
        let stored = s.app("guestbook").unwrap().unwrap();
        assert_eq!(
            (
                stored.origin.as_str(),
                stored.revision.as_str(),
                stored.error.as_str()
            ),
            ("git:file:///r:apps/a.yaml", "c1", "boom")
        );
    }

    #[test]
    fn round_trip_and_persistence_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
            s.put_cluster(&ClusterRecord {
                name: "c1".into(),
                labels: [("env".to_owned(), "prod".to_owned())].into(),
                generation: 3,
                ..Default::default()
            })
            .unwrap();
            s.update_cluster("c1", |c| c.acked_generation = 2).unwrap();
            s.put_app(&AppRecord {
                app: app("guestbook").into(),
                origin: "api".into(),
                revision: "abc".into(),
                error: String::new(),
            })
            .unwrap();
            s.put_bundle(&pb::AppBundle {
                name: "guestbook".into(),
                digest: "d1".into(),
                manifests: vec!["{}".into()],
                ..Default::default()
            })
            .unwrap();
            s.put_status(
                "c1",
                &pb::AppStatus {
                    name: "guestbook".into(),
                    revision: "abc".into(),
                    sync: pb::SyncStatus::Synced as i32,
                    ..Default::default()
                },
            )
            .unwrap();
            s.put_repo(&RepoRecord {
                url: "file:///r".into(),
                apps_path: "apps".into(),
                ..Default::default()
            })
            .unwrap();
            s.put_token(
                "ff",
                &TokenRecord {
                    name: "admin".into(),
                    created_ms: 1,
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let c = s.cluster("c1").unwrap().unwrap();
        assert_eq!((c.generation, c.acked_generation), (3, 2));
        assert_eq!(c.labels["env"], "prod");
        assert_eq!(s.app("guestbook").unwrap().unwrap().revision, "abc");
        assert_eq!(s.bundle("guestbook").unwrap().unwrap().digest, "d1");
        let st = s.statuses_of_app("guestbook").unwrap();
        assert_eq!(st["c1"].revision, "abc");
        assert_eq!(s.repos().unwrap()[0].apps_path, "apps");
        assert_eq!(s.tokens().unwrap()[0].1.name, "admin");
        assert!(s.tokens().unwrap()[0].1.read_only);

        assert!(s.remove_cluster("c1").unwrap());
        assert!(s.statuses_of_app("guestbook").unwrap().is_empty());
        assert!(s.remove_app("guestbook").unwrap());
        assert!(s.bundle("guestbook").unwrap().is_none());
        assert!(s.update_cluster("c1", |_| {}).unwrap().is_none());
    }

    /// The pins index answers as the records do: pins written before it
    /// was built, pins set and cleared after, and a store opened again.
    #[test]
    fn the_pins_index_follows_the_operations_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let pinned = |rev: &str, by: &str| records::AppOps {
            pinned: Some(rev.into()),
            pinned_by: by.into(),
            ..Default::default()
        };
        s.put_app_ops("a", &pinned("c1", "rollback")).unwrap();
        s.put_app_ops("b", &records::AppOps::default()).unwrap();
        assert_eq!(
            s.app_pin("a").unwrap(),
            Some(("c1".to_owned(), "rollback".to_owned()))
        );
        assert_eq!(s.app_pin("b").unwrap(), None);
        s.put_app_ops("b", &pinned("c2", "rollout:web")).unwrap();
        s.put_app_ops("a", &records::AppOps::default()).unwrap();
        assert_eq!(s.app_pin("a").unwrap(), None, "cleared");
        assert_eq!(
            s.app_pin("b").unwrap(),
            Some(("c2".to_owned(), "rollout:web".to_owned()))
        );
        s.close().unwrap();
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.app_pin("a").unwrap(), None);
        assert_eq!(
            again.app_pin("b").unwrap().map(|p| p.0),
            Some("c2".to_owned()),
            "built from the records"
        );
        // The history and pin go with the application.
        again.remove_app("b").unwrap();
        assert_eq!(again.app_pin("b").unwrap(), None);
        assert_eq!(again.app_ops("b").unwrap(), records::AppOps::default());
    }

    /// Concurrent updates of one application's history each land: none
    /// reads the record another is about to write over.
    #[test]
    fn concurrent_history_updates_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..100 {
                        s.update_app_ops("a", |ops| {
                            ops.record(
                                records::Deployment {
                                    revision: format!("{t}-{i}"),
                                    ..Default::default()
                                },
                                1000,
                            );
                            true
                        })
                        .unwrap();
                    }
                });
            }
        });
        let ops = s.app_ops("a").unwrap();
        assert_eq!((ops.last_id, ops.history.len()), (400, 400));
    }
}
