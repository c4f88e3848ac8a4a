//! Each application's inventory as the union of everything ever applied
//! for it and not yet pruned.
//!
//! An object is *claimed* (added to the inventory, in the cluster's
//! inventory ConfigMap and in the local cache) before it is applied, and
//! *released* only once its deletion is confirmed or it turns out not to
//! be the application's. Neither depends on which desired state is current
//! when an apply ends: a commit that arrives while an older one is being
//! applied, a revert to an earlier digest, a crash or a restart cannot
//! leave an applied object outside the inventory, so the next prune (the
//! automated one, `app sync --prune`, or the removal of the application)
//! finds it.

use std::collections::BTreeSet;
use std::sync::PoisonError;

use tracing::{info, warn};

use super::Engine;
use crate::bundle::Policy;
use crate::object::ObjectKey;

/// Why objects could not be claimed.
#[derive(Debug)]
pub(super) struct ClaimError {
    /// What failed.
    pub(super) message: String,
    /// The API server is failing (rather than refusing): worth waiting
    /// for, not a failed sync.
    pub(super) unavailable: bool,
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Engine {
    /// The inventory of `app` as the cache holds it now.
    pub(super) fn inventory_of(&self, app: &str) -> BTreeSet<ObjectKey> {
        self.cache
            .read(|s| s.inventory_of(app).iter().cloned().collect())
    }

    /// Records `keys` in the inventory of `app` before they are applied:
    /// first in the cluster's inventory ConfigMap (the union of what it
    /// holds and the cache holds), then in the cache.
    ///
    /// # Errors
    /// When the ConfigMap cannot be written, or the inventories in the
    /// cluster have not been read yet (writing then could drop what only
    /// the cluster knows): nothing may be applied. A cache that cannot be
    /// written keeps the change in memory and writes it later (see
    /// [`crate::cache::Cache::update`]); that is logged, not refused, as
    /// the ConfigMap already holds it.
    pub(super) async fn claim<'a>(
        &self,
        app: &str,
        policy: &Policy,
        keys: impl IntoIterator<Item = &'a ObjectKey>,
    ) -> Result<(), ClaimError> {
        let keys: BTreeSet<ObjectKey> = keys.into_iter().cloned().collect();
        let current = self.inventory_of(app);
        if let Some(store) = &self.inventory {
            if !self.orphans_checked {
                let (why, unavailable) = self
                    .orphans_failure
                    .clone()
                    .unwrap_or_else(|| ("not yet".to_owned(), true));
                return Err(ClaimError {
                    message: format!("the inventories in the cluster could not be read: {why}"),
                    unavailable,
                });
            }
            let wanted: BTreeSet<ObjectKey> = current.union(&keys).cloned().collect();
            let stored = self
                .recorded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(app)
                .is_some_and(|r| r.is_superset(&wanted));
            if !stored {
                let objects: Vec<ObjectKey> = wanted.iter().cloned().collect();
                if let Err(e) = store
                    .store(&self.cluster, app, policy.prune, &objects)
                    .await
                {
                    self.forget_recorded(app);
                    if e.is_unavailable() {
                        self.note_api_failure();
                    }
                    return Err(ClaimError {
                        message: format!("recording the inventory before applying: {e}"),
                        unavailable: e.is_unavailable(),
                    });
                }
                self.recorded
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(app.to_owned(), wanted);
            }
        }
        if !keys.is_subset(&current)
            && let Err(e) = self
                .cache
                .update(|s| s.add_to_inventory(app, &keys, policy))
        {
            warn!(app, error = %e, "could not persist the inventory in the cache; the cluster's copy holds it");
        }
        Ok(())
    }

    /// Takes objects whose deletion was confirmed (or that are not the
    /// application's) out of its inventory, in the cache and then in the
    /// cluster. A ConfigMap that keeps them for now is harmless: a later
    /// prune finds them gone.
    pub(super) async fn release(&self, app: &str, prune: bool, gone: &BTreeSet<ObjectKey>) {
        if gone.is_empty() {
            return;
        }
        if let Err(e) = self.cache.update(|s| s.remove_from_inventory(app, gone)) {
            warn!(app, error = %e, "could not persist the cache");
        }
        let Some(store) = &self.inventory else {
            return;
        };
        let now = self.inventory_of(app);
        let objects: Vec<ObjectKey> = now.iter().cloned().collect();
        match store.store(&self.cluster, app, prune, &objects).await {
            Ok(()) => {
                self.recorded
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(app.to_owned(), now);
            }
            Err(e) => {
                // What the ConfigMap held before is still a superset.
                warn!(app, error = %e, "could not update the inventory in the cluster");
            }
        }
    }

    /// The ConfigMap of `app` may not hold what this engine wrote last
    /// (a write failed, or it was deleted): the next claim writes it.
    pub(super) fn forget_recorded(&self, app: &str) {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(app);
    }

    /// Every few passes: one application's inventory ConfigMap (in turn)
    /// is looked for; when it is gone (a wiped cluster: the inventory
    /// namespace deleted with everything in it), or a write had to create
    /// the namespace again, every inventory the cache holds is written
    /// back (creating the namespace).
    pub(super) async fn check_inventories(&mut self) {
        let Some(store) = &self.inventory else {
            return;
        };
        let probe = {
            let recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
            let written: Vec<&String> = recorded
                .iter()
                .filter(|(_, objects)| !objects.is_empty())
                .map(|(app, _)| app)
                .collect();
            (!written.is_empty()).then(|| written[self.probes % written.len()].clone())
        };
        if let Some(app) = probe {
            self.probes = self.probes.wrapping_add(1);
            match store.exists(&self.cluster, &app).await {
                Ok(true) => {}
                Ok(false) => {
                    info!(app, "the inventory ConfigMap is gone");
                    store.mark_lost();
                }
                Err(e) => {
                    if e.is_unavailable() {
                        self.note_api_failure();
                    }
                    warn!(app, error = %e, "could not look for the inventory");
                    return;
                }
            }
        }
        if !store.take_lost() {
            return;
        }
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let all: Vec<(String, bool, Vec<ObjectKey>)> = self.cache.read(|s| {
            let desired = s
                .apps
                .iter()
                .map(|(name, a)| (name.clone(), a.bundle.policy.prune, a.inventory.clone()));
            let removed = s
                .removed
                .iter()
                .map(|(name, r)| (name.clone(), r.policy.prune, r.inventory.clone()));
            desired
                .chain(removed)
                .filter(|(_, _, inventory)| !inventory.is_empty())
                .collect()
        });
        info!(
            namespace = store.namespace(),
            inventories = all.len(),
            "inventories are missing; writing them again"
        );
        let mut failed = false;
        for (app, prune, objects) in all {
            match store.store(&self.cluster, &app, prune, &objects).await {
                Ok(()) => {
                    self.recorded
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(app, objects.into_iter().collect());
                }
                Err(e) => {
                    warn!(app, error = %e, "could not write the inventory; trying again later");
                    failed = true;
                }
            }
        }
        // The first write above may have created the namespace again,
        // which says the inventories were lost: they were just written.
        let _ = store.take_lost();
        if failed {
            store.mark_lost();
        }
    }
}
