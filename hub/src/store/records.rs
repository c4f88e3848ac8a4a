//! Records the store keeps whose meaning belongs to other modules
//! ([`crate::deletion`], [`crate::history`], [`crate::rbac`], [`crate::rollout`]): defined here so that the store
//! depends on nothing above it; those modules re-export them.

use std::collections::BTreeMap;

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
    /// Rollout transitions that touched the application (wave started or
    /// finished, paused, resumed, promoted, failed, rolled back, aborted),
    /// oldest first, the last [`AppOps::EVENTS_KEPT`]. Kept apart from the
    /// deployments: they are no rollback target and do not push
    /// deployments out of `revisionHistoryLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<HistoryEvent>,
}

/// One rollout transition in an application's history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    pub at_ms: i64,
    /// What happened (`wave eu started`, `rollout paused by user:ops`).
    pub event: String,
    /// Who did it: `user:<name>` for a control, `rollout:<set>` for the
    /// rollout's own transitions.
    pub initiated_by: String,
    /// The revision the rollout was rolling out.
    pub revision: String,
    pub clusters: Vec<String>,
}

impl AppOps {
    /// Rollout events kept per application.
    pub const EVENTS_KEPT: usize = 50;

    /// Appends a rollout event, keeping the last [`AppOps::EVENTS_KEPT`].
    pub fn note_event(&mut self, event: HistoryEvent) {
        self.events.push(event);
        if self.events.len() > Self::EVENTS_KEPT {
            let drop = self.events.len() - Self::EVENTS_KEPT;
            self.events.drain(..drop);
        }
    }

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

// RollingSync progress (`crate::rollout`), kept by `store::rollouts`.

/// `applicationStatus[].status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// Has changes; its step has not reached it yet.
    Waiting,
    /// The set asked for a sync; waiting for it to start.
    Pending,
    /// Its sync started; waiting for Healthy and Synced.
    Progressing,
    /// Synced and Healthy at its current target.
    Healthy,
}

impl Progress {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "Waiting",
            Self::Pending => "Pending",
            Self::Progressing => "Progressing",
            Self::Healthy => "Healthy",
        }
    }
}

/// One `applicationStatus` entry, with what the driver needs to carry on
/// after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProgress {
    pub application: String,
    pub status: Progress,
    /// 1-based; "-1" when no step selects the application.
    pub step: String,
    pub message: String,
    pub last_transition_ms: i64,
    pub target_revisions: Vec<String>,
    /// The desired content (bundle digest) the status is about: a new one
    /// with the same revision is a spec change.
    #[serde(default)]
    pub digest: String,
    /// Cluster → id of the sync command the set sent while Pending.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sync_commands: BTreeMap<String, String>,
}

/// What the rollout reconciler keeps of one set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    pub set: String,
    /// Argo CD's `status.applicationStatus`, by application name.
    #[serde(default)]
    pub applications: Vec<AppProgress>,
    /// The `ApplicationSetRolloutProgressing` condition's message.
    #[serde(default)]
    pub progressing: String,
    /// The `InvalidRolloutConfig` condition's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// `deletionOrder: Reverse` of a deleted set: the groups of
    /// applications still to delete, the first one being deleted now
    /// (last step first, applications of no step last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleting: Vec<Vec<DeletingApp>>,
    /// The set's `preserveResourcesOnDeletion`, for the later groups.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve: bool,
    /// A waves rollout (`spec.strategy.flotillaWaves`), when the set has
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<super::WavesRecord>,
}

/// An application a reverse deletion waits for, and the clusters that must
/// have let it go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletingApp {
    pub app: String,
    pub clusters: Vec<String>,
}

impl RolloutRecord {
    /// The step being rolled out (1-based), 0 when done.
    pub fn current_step(&self) -> u64 {
        self.progressing
            .rsplit(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|_| self.progressing.contains("performing rollout"))
            .unwrap_or(0)
    }
}
