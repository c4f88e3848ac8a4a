//! RollingSync progress records (`crate::rollout`), by ApplicationSet name.
//! Written only by the rollout reconciler; what it needs to decide the
//! next step after a restart.

use serde::{Deserialize, Serialize};

use super::records::RolloutRecord;
use super::{ChangeKind, Store, StoreError, encode};

impl Store {
    /// The rollout progress of set `name`, if any.
    ///
    /// # Errors
    /// The store failed or the record is corrupt.
    pub fn rollout(&self, name: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.read(|t| {
            t.rollouts
                .get(name.as_bytes())?
                .map(|v| self.decode("rollout", name.as_bytes(), &v))
                .transpose()
        })
    }

    /// Every rollout record (at start: reverse deletions to carry on).
    ///
    /// # Errors
    /// As [`Store::rollout`].
    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.read(|t| self.decode_all(&t.rollouts, "rollout"))
    }

    /// Stores (or replaces) the progress of a set.
    ///
    /// # Errors
    /// The store failed.
    pub fn put_rollout(&self, rec: &RolloutRecord) -> Result<(), StoreError> {
        self.with(|t| {
            t.rollouts.insert(rec.set.as_bytes(), encode(rec))?;
            Ok(())
        })
        // Shown with its set (`appset get`, the web UI's set page).
        .inspect(|()| self.changed(ChangeKind::AppSets))
    }

    /// Removes the progress of a set; whether it was there.
    ///
    /// # Errors
    /// The store failed.
    pub fn remove_rollout(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|t| Ok(t.rollouts.remove(name.as_bytes())?.is_some()))
            .inspect(|_| self.changed(ChangeKind::AppSets))
    }
}

/// Where a waves rollout (`spec.strategy.flotillaWaves`) of a set stands.
/// Plain data, written only by the rollout reconciler
/// (`crate::rollout::waves` decides it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WavesRecord {
    /// The revision being rolled out (or rolled out last).
    pub target: String,
    /// 0-based index of the wave being rolled out.
    pub wave: usize,
    pub phase: WavePhase,
    /// Who paused it by hand (`user:<name>`); empty when not paused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub paused_by: String,
    /// When the current wave started.
    pub wave_started_ms: i64,
    /// Since when every cluster of the current wave is Healthy at the
    /// target (0: not yet).
    #[serde(default)]
    pub healthy_since_ms: i64,
    /// The current wave's approval gate was approved (`promote`).
    #[serde(default)]
    pub approved: bool,
    /// The current wave's bake time is skipped (`promote`).
    #[serde(default)]
    pub skip_bake: bool,
    /// Why it is where it is, for people.
    #[serde(default)]
    pub message: String,
    /// Milliseconds each finished wave took, from start to Healthy.
    #[serde(default)]
    pub wave_ms: Vec<i64>,
    pub clusters: Vec<ClusterWave>,
    /// The W3C trace context of the rollout's root span (one trace per
    /// set and target revision): each pass's work for it is a child.
    /// Empty when traces are not exported.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub trace_context: std::collections::BTreeMap<String, String>,
}

/// The phase of a waves rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WavePhase {
    /// Clusters of the current wave are being updated.
    #[default]
    Progressing,
    /// Every cluster of the current wave is Healthy; waiting for the bake
    /// time.
    Baking,
    /// The next wave waits for `flotilla rollout promote`.
    AwaitingApproval,
    /// A cluster of the current wave went Degraded or missed the
    /// progress deadline: paused until `resume` (or `abort`).
    Failed,
    /// Rolled back by `abort`.
    Aborted,
    /// Every wave is Healthy at the target.
    Completed,
}

impl WavePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "Progressing",
            Self::Baking => "Baking",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::Failed => "Failed",
            Self::Aborted => "Aborted",
            Self::Completed => "Completed",
        }
    }
}

/// One (application, cluster) of a waves rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterWave {
    pub app: String,
    pub cluster: String,
    /// 0-based wave index.
    pub wave: usize,
    pub state: ClusterState,
    /// The revision the rollout holds the application at (its pin).
    pub revision: String,
    /// The last revision that was Healthy there (rollback target).
    #[serde(default)]
    pub last_healthy: String,
    /// When it entered its state.
    #[serde(default)]
    pub since_ms: i64,
    /// While a deploy window blocks its sync: when the window lets it go
    /// (`i64::MAX`: not known); 0 when no window holds it. A held cluster
    /// is not started, and its progress deadline does not run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_until_ms: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The state of one cluster in a waves rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterState {
    /// Not reached yet: held at its previous revision.
    #[default]
    Waiting,
    /// Sent the target; not Healthy at it yet.
    Updating,
    /// Healthy at the target.
    Updated,
    /// Degraded, or not Healthy within the progress deadline.
    Failed,
    /// Put back to its last Healthy revision.
    RolledBack,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "Waiting",
            Self::Updating => "Updating",
            Self::Updated => "Updated",
            Self::Failed => "Failed",
            Self::RolledBack => "RolledBack",
        }
    }
}
