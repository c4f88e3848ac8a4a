//! Persistent hub state in sled, behind a typed interface.
//!
//! Nothing else in the hub touches sled. Every record is serde JSON except
//! wire messages (rendered bundles, agent statuses), which are stored
//! prost-encoded so they round-trip exactly.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::Application;
use flotilla_proto as pb;

/// Version of the on-disk layout; bumped when a migration is needed.
pub const SCHEMA_VERSION: u32 = 1;
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
    /// `generation` (it moves with commits that leave the digest alone).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub desired_revisions: BTreeMap<String, String>,
    /// Applications deleted from `desired_index` with what happens to their
    /// objects, sent to the agent until it acknowledges the generation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deletions: BTreeMap<String, crate::deletion::PendingDeletion>,
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
}

/// An application definition and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub app: Application,
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
}

impl std::fmt::Debug for RepoCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "***" };
        f.debug_struct("RepoCredentials")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("ssh_private_key", &hidden(&self.ssh_private_key))
            .field("insecure_ignore_host_key", &self.insecure_ignore_host_key)
            .finish()
    }
}

/// A user API token (only its SHA-256 is stored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub created_ms: i64,
    /// May only read (List/Get/Version).
    #[serde(default)]
    pub read_only: bool,
}

/// A one-time bootstrap token for `AgentLink.Enroll` (stored by the hash
/// of its secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    /// The cluster the token may enroll, and only that one.
    pub cluster: String,
    pub expires_ms: i64,
}

/// Typed access to the hub's sled database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    clusters: sled::Tree,
    apps: sled::Tree,
    bundles: sled::Tree,
    statuses: sled::Tree,
    repos: sled::Tree,
    tokens: sled::Tree,
    /// Per-application deployment history and pin (crate::history).
    app_ops: sled::Tree,
    /// https credentials and ssh keys by repository URL.
    repo_credentials: sled::Tree,
    bootstrap: sled::Tree,
    appsets: sled::Tree,
    /// Parent application → [`ChildrenRecord`].
    app_children: sled::Tree,
    /// Serialises read-modify-write of cluster records, which the agent
    /// link and the fleet both update.
    cluster_lock: Arc<Mutex<()>>,
    /// Application records written since open (see [`Store::app_writes`]).
    app_writes: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn decode<T: DeserializeOwned>(what: &'static str, key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
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
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// sled cannot open the directory, or it was written by a newer hub.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir)?;
        match db.get(SCHEMA_KEY)? {
            Some(v) => {
                let found = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .unwrap_or(0);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew { found });
                }
            }
            None => {
                db.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
            }
        }
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
            db,
            cluster_lock: Arc::new(Mutex::new(())),
            app_writes: Arc::default(),
        })
    }

    /// Schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .db
            .get(SCHEMA_KEY)?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0))
    }

    /// Makes every write so far durable. Call after writes acknowledged to a
    /// user or an agent.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Async flush, for use on the runtime.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    // ---- clusters ----

    pub fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        self.clusters
            .get(name.as_bytes())?
            .map(|v| decode("cluster", name.as_bytes(), &v))
            .transpose()
    }

    pub fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        self.clusters
            .iter()
            .map(|r| {
                let (k, v) = r?;
                decode("cluster", &k, &v)
            })
            .collect()
    }

    pub fn put_cluster(&self, rec: &ClusterRecord) -> Result<(), StoreError> {
        let _g = self.cluster_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.clusters.insert(rec.name.as_bytes(), encode(rec))?;
        Ok(())
    }

    /// Applies `f` to the stored record of `name`; returns the updated record,
    /// or `None` when the cluster does not exist.
    pub fn update_cluster(
        &self,
        name: &str,
        f: impl FnOnce(&mut ClusterRecord),
    ) -> Result<Option<ClusterRecord>, StoreError> {
        let _g = self.cluster_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(v) = self.clusters.get(name.as_bytes())? else {
            return Ok(None);
        };
        let mut rec: ClusterRecord = decode("cluster", name.as_bytes(), &v)?;
        f(&mut rec);
        self.clusters.insert(name.as_bytes(), encode(&rec))?;
        Ok(Some(rec))
    }

    /// Removes a cluster and every status it reported.
    pub fn remove_cluster(&self, name: &str) -> Result<bool, StoreError> {
        let _g = self.cluster_lock.lock().unwrap_or_else(|p| p.into_inner());
        let existed = self.clusters.remove(name.as_bytes())?.is_some();
        self.remove_bootstraps_of(name)?;
        let keys: Vec<_> = self
            .statuses
            .iter()
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.split(|b| *b == 0).nth(1) == Some(name.as_bytes()))
            .collect();
        for k in keys {
            self.statuses.remove(k)?;
        }
        Ok(existed)
    }

    // ---- repository credentials ----

    /// The credentials (https or ssh) stored for `url`.
    pub fn repo_credentials(&self, url: &str) -> Result<Option<RepoCredentials>, StoreError> {
        self.repo_credentials
            .get(url.as_bytes())?
            .map(|v| decode("repo_credentials", url.as_bytes(), &v))
            .transpose()
    }

    /// Stores (or with `None` removes) the credentials of `url`.
    pub fn put_repo_credentials(
        &self,
        url: &str,
        credentials: Option<&RepoCredentials>,
    ) -> Result<(), StoreError> {
        match credentials {
            Some(c) => {
                self.repo_credentials.insert(url.as_bytes(), encode(c))?;
            }
            None => {
                self.repo_credentials.remove(url.as_bytes())?;
            }
        }
        Ok(())
    }

    // ---- application history and pins ----

    /// The deployment history and pin of an application.
    pub fn app_ops(&self, name: &str) -> Result<crate::history::AppOps, StoreError> {
        self.app_ops
            .get(name.as_bytes())?
            .map(|v| decode("app_ops", name.as_bytes(), &v))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    pub fn put_app_ops(&self, name: &str, ops: &crate::history::AppOps) -> Result<(), StoreError> {
        self.app_ops.insert(name.as_bytes(), encode(ops))?;
        Ok(())
    }

    // ---- applications ----

    pub fn app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        self.apps
            .get(name.as_bytes())?
            .map(|v| decode("application", name.as_bytes(), &v))
            .transpose()
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        self.apps
            .iter()
            .map(|r| {
                let (k, v) = r?;
                decode("application", &k, &v)
            })
            .collect()
    }

    pub fn put_app(&self, rec: &AppRecord) -> Result<(), StoreError> {
        self.apps
            .insert(rec.app.metadata.name.as_bytes(), encode(rec))?;
        self.app_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// How many application records this handle (and its clones) wrote since
    /// the store was opened: lets a test see that an unchanged generated
    /// application is not rewritten.
    pub fn app_writes(&self) -> u64 {
        self.app_writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Removes an application, its bundle and its statuses.
    pub fn remove_app(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.apps.remove(name.as_bytes())?.is_some();
        self.bundles.remove(name.as_bytes())?;
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        let keys: Vec<_> = self
            .statuses
            .scan_prefix(&prefix)
            .keys()
            .filter_map(Result::ok)
            .collect();
        for k in keys {
            self.statuses.remove(k)?;
        }
        Ok(existed)
    }

    // ---- rendered bundles ----

    pub fn bundle(&self, app: &str) -> Result<Option<pb::AppBundle>, StoreError> {
        self.bundles
            .get(app.as_bytes())?
            .map(|v| {
                pb::AppBundle::decode(v.as_ref()).map_err(|e| StoreError::Corrupt {
                    what: "bundle",
                    key: app.to_owned(),
                    message: e.to_string(),
                })
            })
            .transpose()
    }

    pub fn bundles(&self) -> Result<Vec<pb::AppBundle>, StoreError> {
        self.bundles
            .iter()
            .map(|r| {
                let (k, v) = r?;
                pb::AppBundle::decode(v.as_ref()).map_err(|e| StoreError::Corrupt {
                    what: "bundle",
                    key: String::from_utf8_lossy(&k).into_owned(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    pub fn put_bundle(&self, bundle: &pb::AppBundle) -> Result<(), StoreError> {
        self.bundles
            .insert(bundle.name.as_bytes(), bundle.encode_to_vec())?;
        Ok(())
    }

    // ---- statuses ----

    pub fn put_status(&self, cluster: &str, status: &pb::AppStatus) -> Result<(), StoreError> {
        self.statuses
            .insert(status_key(&status.name, cluster), status.encode_to_vec())?;
        Ok(())
    }

    /// Every reported status of `app`, keyed by cluster.
    pub fn statuses_of_app(
        &self,
        app: &str,
    ) -> Result<BTreeMap<String, pb::AppStatus>, StoreError> {
        let mut prefix = app.as_bytes().to_vec();
        prefix.push(0);
        let mut out = BTreeMap::new();
        for r in self.statuses.scan_prefix(&prefix) {
            let (k, v) = r?;
            let cluster = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let st = pb::AppStatus::decode(v.as_ref()).map_err(|e| StoreError::Corrupt {
                what: "status",
                key: format!("{app}/{cluster}"),
                message: e.to_string(),
            })?;
            out.insert(cluster, st);
        }
        Ok(out)
    }

    // ---- repositories ----

    pub fn repo(&self, url: &str) -> Result<Option<RepoRecord>, StoreError> {
        self.repos
            .get(url.as_bytes())?
            .map(|v| decode("repository", url.as_bytes(), &v))
            .transpose()
    }

    pub fn repos(&self) -> Result<Vec<RepoRecord>, StoreError> {
        self.repos
            .iter()
            .map(|r| {
                let (k, v) = r?;
                decode("repository", &k, &v)
            })
            .collect()
    }

    pub fn put_repo(&self, rec: &RepoRecord) -> Result<(), StoreError> {
        self.repos.insert(rec.url.as_bytes(), encode(rec))?;
        Ok(())
    }

    // ---- application sets ----

    pub fn appset(&self, name: &str) -> Result<Option<AppSetRecord>, StoreError> {
        self.appsets
            .get(name.as_bytes())?
            .map(|v| decode("application set", name.as_bytes(), &v))
            .transpose()
    }

    pub fn appsets(&self) -> Result<Vec<AppSetRecord>, StoreError> {
        self.appsets
            .iter()
            .map(|r| {
                let (k, v) = r?;
                decode("application set", &k, &v)
            })
            .collect()
    }

    pub fn put_appset(&self, rec: &AppSetRecord) -> Result<(), StoreError> {
        self.appsets.insert(rec.name.as_bytes(), encode(rec))?;
        Ok(())
    }

    pub fn remove_appset(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.appsets.remove(name.as_bytes())?.is_some())
    }

    // ---- children of in-hub applications ----

    pub fn app_children(&self, parent: &str) -> Result<Option<ChildrenRecord>, StoreError> {
        self.app_children
            .get(parent.as_bytes())?
            .map(|v| decode("app children", parent.as_bytes(), &v))
            .transpose()
    }

    /// Every parent with its record.
    pub fn all_app_children(&self) -> Result<Vec<(String, ChildrenRecord)>, StoreError> {
        self.app_children
            .iter()
            .map(|r| {
                let (k, v) = r?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    decode("app children", &k, &v)?,
                ))
            })
            .collect()
    }

    /// Stores the record; an empty one is removed.
    pub fn put_app_children(&self, parent: &str, rec: &ChildrenRecord) -> Result<(), StoreError> {
        if *rec == ChildrenRecord::default() {
            self.app_children.remove(parent.as_bytes())?;
        } else {
            self.app_children.insert(parent.as_bytes(), encode(rec))?;
        }
        Ok(())
    }

    // ---- bootstrap tokens ----

    pub fn put_bootstrap(&self, sha256_hex: &str, rec: &BootstrapRecord) -> Result<(), StoreError> {
        self.bootstrap.insert(sha256_hex.as_bytes(), encode(rec))?;
        Ok(())
    }

    pub fn bootstrap(&self, sha256_hex: &str) -> Result<Option<BootstrapRecord>, StoreError> {
        self.bootstrap
            .get(sha256_hex.as_bytes())?
            .map(|v| decode("bootstrap token", b"<hash>", &v))
            .transpose()
    }

    /// Removes a bootstrap token and returns it; of concurrent callers with
    /// the same token only one gets it (single use).
    pub fn take_bootstrap(&self, sha256_hex: &str) -> Result<Option<BootstrapRecord>, StoreError> {
        self.bootstrap
            .remove(sha256_hex.as_bytes())?
            .map(|v| decode("bootstrap token", b"<hash>", &v))
            .transpose()
    }

    /// Removes every bootstrap token of a cluster.
    pub fn remove_bootstraps_of(&self, cluster: &str) -> Result<(), StoreError> {
        let keys: Vec<_> = self
            .bootstrap
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| {
                serde_json::from_slice::<BootstrapRecord>(v).is_ok_and(|r| r.cluster == cluster)
            })
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.bootstrap.remove(k)?;
        }
        Ok(())
    }

    // ---- tokens ----

    /// Stores a token by the hex SHA-256 of its secret.
    pub fn put_token(&self, sha256_hex: &str, rec: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(sha256_hex.as_bytes(), encode(rec))?;
        Ok(())
    }

    /// Removes every token named `name`; returns how many.
    pub fn remove_tokens_named(&self, name: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for (hash, rec) in self.tokens()? {
            if rec.name == name {
                self.tokens.remove(hash.as_bytes())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every stored token hash with its record.
    pub fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        self.tokens
            .iter()
            .map(|r| {
                let (k, v) = r?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    decode("token", &k, &v)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_credentials_read_old_records_and_hide_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // Written before ssh keys existed.
        s.repo_credentials
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

    fn app(name: &str) -> Application {
        let yaml = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: file:///r\n    path: p\n  destination:\n    name: c1\n"
        );
        crate::model::parse_applications(&yaml, "t")
            .unwrap()
            .remove(0)
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
                app: app("guestbook"),
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
}
