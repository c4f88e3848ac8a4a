//! Records the store keeps whose meaning belongs to other modules
//! ([`crate::deletion`], [`crate::history`], [`crate::rbac`]): defined here so that the store
//! depends on nothing above it; those modules re-export them.

use serde::{Deserialize, Serialize};

/// What happens to an application's objects when it is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Delete each object with `propagationPolicy: Foreground`: it goes
    /// after the objects it owns.
    Foreground,
    /// Delete each object with `propagationPolicy: Background`: it goes at
    /// once, the garbage collector deletes what it owned.
    Background,
    /// Leave the objects (not cascading).
    Orphan,
}

impl Propagation {
    /// The wire and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Foreground => "foreground",
            Self::Background => "background",
            Self::Orphan => "orphan",
        }
    }

    /// Whether the objects are deleted.
    pub fn cascades(self) -> bool {
        self != Self::Orphan
    }
}

impl std::fmt::Display for Propagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deletion a cluster's agent has yet to acknowledge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingDeletion {
    /// The cluster's first generation without the application.
    pub generation: u64,
    pub propagation: Propagation,
}

/// One dispatched deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: u64,
    pub revision: String,
    pub deployed_ms: i64,
    /// `automated`, `user:<token name>` or `rollback`.
    pub initiated_by: String,
    pub clusters: Vec<String>,
}

/// What the store keeps per application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppOps {
    #[serde(default)]
    pub history: Vec<Deployment>,
    /// Last id handed out; ids never repeat even when old entries go.
    #[serde(default)]
    pub last_id: u64,
    /// Commit the application is pinned to, if any.
    #[serde(default)]
    pub pinned: Option<String>,
    /// What pinned it: `rollback` or `sync --revision` (empty for pins
    /// from hubs before this field).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pinned_by: String,
    /// The target revision's commit in Git when the hub last rendered the
    /// pinned application.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub git_revision: String,
}

impl AppOps {
    /// Appends an entry (with the next id) and keeps the last `limit`.
    /// A limit of 0 keeps one entry, so a rollback target always exists
    /// for the current revision.
    pub fn record(&mut self, mut entry: Deployment, limit: usize) -> u64 {
        self.last_id += 1;
        entry.id = self.last_id;
        self.history.push(entry);
        let keep = limit.max(1);
        if self.history.len() > keep {
            let drop = self.history.len() - keep;
            self.history.drain(..drop);
        }
        self.last_id
    }

    /// The entry with `id`.
    pub fn entry(&self, id: u64) -> Option<&Deployment> {
        self.history.iter().find(|d| d.id == id)
    }

    /// The revision of the newest entry.
    pub fn last_revision(&self) -> Option<&str> {
        self.history.last().map(|d| d.revision.as_str())
    }

    /// Why the application is OutOfSync with Git while pinned: it is
    /// pinned to another commit than the one Git is at (as last fetched).
    pub fn pin_message(&self) -> Option<String> {
        let pin = self.pinned.as_deref()?;
        if self.git_revision.is_empty() || self.git_revision == pin {
            return None;
        }
        let by = if self.pinned_by.is_empty() {
            String::new()
        } else {
            format!(" by {}", self.pinned_by)
        };
        Some(format!(
            "pinned to {}{by}; Git is at {}",
            short(pin),
            short(&self.git_revision)
        ))
    }
}

/// A commit's first 8 characters; anything else (a chart version) whole.
fn short(revision: &str) -> &str {
    if revision.len() >= 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        &revision[..8]
    } else {
        revision
    }
}

/// The RBAC settings an operator edits: Argo CD's `policy.csv` and
/// `policy.default`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbacConfig {
    /// The operator's policy (the built-in one is always added).
    #[serde(default)]
    pub policy_csv: String,
    /// The role of every authenticated caller, on top of its own (empty:
    /// none).
    #[serde(default)]
    pub default_role: String,
}

/// Built-in role: read everything.
pub const ROLE_READONLY: &str = "role:readonly";
/// Built-in role: everything.
pub const ROLE_ADMIN: &str = "role:admin";

/// The subject of a project role's rules (and of its tokens).
pub fn project_subject(project: &str, role: &str) -> String {
    format!("proj:{project}:{role}")
}
