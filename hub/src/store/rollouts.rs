//! RollingSync progress records (`crate::rollout`), by ApplicationSet name.
//! Written only by the rollout reconciler; what it needs to decide the
//! next step after a restart.

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
