//! The pieces of applying an application (the order and the waiting are
//! [`super::operation`]'s): waves' health, CRDs that wait until
//! Established, `CreateNamespace`, pruning by tracking identity, and the
//! removal of applications the hub no longer lists.

use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use super::{Engine, POLL};
use crate::cache::{CachedState, RemovedApp};
use crate::cluster::Resolved;
use crate::health::{Health, HealthStatus};
use crate::object::{self, ObjectKey};
use crate::plan;

/// Where a sync wave stands.
pub(super) enum WaveHealth {
    Healthy,
    Pending(String),
    Degraded(String),
}

/// What became of an object a prune was asked to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pruned {
    /// The API server accepted its deletion.
    Deleted,
    /// It does not exist (or its kind is no longer served).
    Absent,
    /// It does not carry this application's tracking identity.
    NotOurs,
    /// It opts out of pruning (`Prune=false`) and stays.
    Kept,
}

/// An object to plan: its key, and its manifest twice (to apply and to
/// keep as desired).
pub(super) type PlanObject = (ObjectKey, serde_json::Value, serde_json::Value);

impl Engine {
    /// The objects of a bundle's manifests, ready to plan, and one message
    /// per manifest that is not an object. The scope of each known kind is
    /// learned from the cluster first.
    pub(super) async fn bundle_objects(
        &self,
        manifests: &[String],
    ) -> (Vec<PlanObject>, Vec<String>) {
        let mut objects = Vec::new();
        let mut errors = Vec::new();
        for parsed in object::parse_manifests(manifests) {
            match parsed {
                // Hooks and skipped objects are not applied.
                Ok(obj)
                    if !matches!(crate::hooks::role(&obj), Ok(crate::hooks::Role::Resource)) => {}
                Ok(obj) => {
                    if let Ok(key) = ObjectKey::of(&obj, 0) {
                        let _ = self.cluster.resolve(&key).await;
                        objects.push((key, obj.clone(), obj));
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        (objects, errors)
    }

    /// With PruneLast (the application's sync option, or the annotation
    /// `argocd.argoproj.io/sync-options: PruneLast=true` on an object to
    /// prune), the last wave must be healthy before anything is pruned:
    /// the wave number and its state when it is not.
    pub(super) async fn prune_last_pending(
        &self,
        b: &crate::bundle::Bundle,
        stale: &[ObjectKey],
        last_wave: Option<&(i64, Vec<(ObjectKey, Resolved)>)>,
    ) -> Option<(i64, WaveHealth)> {
        let (wave, applied) = last_wave?;
        if stale.is_empty() || applied.is_empty() {
            return None;
        }
        let mut prune_last = b.policy.option("PruneLast");
        for key in stale {
            if prune_last {
                break;
            }
            if let Ok(r) = self.cluster.resolve(key).await
                && let Ok(Some(live)) = self.cluster.get(&r, key).await
            {
                prune_last = live
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get("argocd.argoproj.io/sync-options"))
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|s| s.split(',').any(|o| o.trim() == "PruneLast=true"));
            }
        }
        if !prune_last {
            return None;
        }
        match self.wave_health(applied).await {
            WaveHealth::Healthy => None,
            other => Some((*wave, other)),
        }
    }

    /// Prune runs the apply order backwards: namespaced objects first,
    /// Namespaces last.
    pub(super) fn prune_order(&self, keys: Vec<ObjectKey>) -> Vec<ObjectKey> {
        plan::prune_order(keys, |k| self.cluster.known_scope(k))
    }

    /// Deletes `key` if it carries this application's tracking identity and
    /// no `Prune=false`.
    ///
    /// # Errors
    /// When the API server cannot be asked or refuses the deletion: then
    /// nothing is known about the object.
    pub(super) async fn prune_one(&self, app: &str, key: &ObjectKey) -> Result<Pruned, String> {
        let resolved = match self.cluster.resolve(key).await {
            Ok(r) => r,
            // The kind is gone, and with it every object of it.
            Err(e) if e.is_unknown_kind() => return Ok(Pruned::Absent),
            Err(e) => return Err(e.to_string()),
        };
        let Some(live) = self
            .cluster
            .get(&resolved, key)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(Pruned::Absent);
        };
        if !object::is_tracked_by(&live, app, key) {
            info!(app, object = %key, "not pruning an object this application does not track");
            return Ok(Pruned::NotOurs);
        }
        if object::prune_disabled(&live) {
            info!(app, object = %key, "not pruning: Prune=false");
            return Ok(Pruned::Kept);
        }
        info!(app, object = %key, "pruning");
        self.cluster
            .delete(&resolved, key)
            .await
            .map(|()| Pruned::Deleted)
            .map_err(|e| e.to_string())
    }

    /// Removes the applications the hub no longer lists, a stage at a time
    /// (see [`super::removal`]); each is forgotten once its removal is done.
    /// False while one waits for deletion hooks to finish.
    pub(super) async fn prune_removed(&self, snapshot: &CachedState) -> bool {
        let mut settled = true;
        for (name, removed) in &snapshot.removed {
            let mut removed = removed.clone();
            let done = self.remove_app(name, &mut removed).await;
            let mut failed = !done;
            settled &= done
                || !removed
                    .removal
                    .as_ref()
                    .is_some_and(|r| r.hooks.iter().any(|h| !h.status.finished()));
            if done && let Some(store) = &self.inventory {
                self.forget_recorded(name);
                if let Err(e) = store.remove(&self.cluster, name).await {
                    warn!(app = %name, error = %e, "could not delete the inventory");
                    failed = true;
                }
            }
            let result = self.cache.update(|s| {
                if failed {
                    if let Some(entry) = s.removed.get_mut(name) {
                        entry.removal.clone_from(&removed.removal);
                        entry.operation = None;
                    }
                } else {
                    s.removed.remove(name);
                }
            });
            if let Err(e) = result {
                warn!(error = %e, "could not persist the cache");
            }
        }
        settled
    }

    /// Reads the inventories kept in the cluster into the cache, once: an
    /// application the cache knows gets what the cluster recorded added to
    /// its inventory (a fresh disk, or a cache write that did not reach
    /// the disk before a restart); applications the hub no longer lists
    /// (removed while this agent, or its disk, was away) are queued for
    /// pruning like any removed application.
    pub(super) async fn adopt_orphans(&mut self, snapshot: &CachedState) {
        let Some(store) = &self.inventory else {
            self.orphans_checked = true;
            return;
        };
        let stored = match store.list(&self.cluster).await {
            Ok(s) => s,
            Err(e) => {
                if e.is_unavailable() {
                    self.note_api_failure();
                }
                warn!(error = %e, "could not list inventories");
                self.orphans_failure = Some((e.to_string(), e.is_unavailable()));
                return;
            }
        };
        self.orphans_checked = true;
        self.orphans_failure = None;
        {
            let mut recorded = self
                .recorded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for s in &stored {
                recorded.insert(s.app.clone(), s.objects.iter().cloned().collect());
            }
        }
        let result = self.cache.update(|s| {
            for found in stored {
                let policy = crate::bundle::Policy {
                    prune: found.prune,
                    ..Default::default()
                };
                if s.apps.contains_key(&found.app) || s.removed.contains_key(&found.app) {
                    s.add_to_inventory(&found.app, &found.objects, &policy);
                    continue;
                }
                if snapshot.apps.contains_key(&found.app) {
                    // Removed and forgotten meanwhile: nothing to adopt.
                    continue;
                }
                info!(app = %found.app, objects = found.objects.len(), "application no longer desired; found its inventory in the cluster");
                s.removed.insert(
                    found.app,
                    RemovedApp {
                        policy,
                        inventory: found.objects,
                        ..RemovedApp::default()
                    },
                );
            }
        });
        if let Err(e) = result {
            warn!(error = %e, "could not persist the cache");
        }
    }

    pub(super) async fn ensure_namespace(&self, namespace: &str) -> Result<(), String> {
        let key = ObjectKey {
            group: String::new(),
            version: "v1".to_owned(),
            kind: "Namespace".to_owned(),
            namespace: String::new(),
            name: namespace.to_owned(),
        };
        let resolved = self
            .cluster
            .resolve(&key)
            .await
            .map_err(|e| e.to_string())?;
        if self
            .cluster
            .get(&resolved, &key)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(());
        }
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        self.cluster
            .apply(&resolved, &key, &obj)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The health of the objects of one wave, read once.
    pub(super) async fn wave_health(&self, objects: &[(ObjectKey, Resolved)]) -> WaveHealth {
        for (key, r) in objects {
            let health = match self.cluster.get(r, key).await {
                Ok(Some(live)) => self.health.assess(&live),
                Ok(None) => Health::missing(),
                Err(e) => Health {
                    status: HealthStatus::Unknown,
                    message: e.to_string(),
                },
            };
            match health.status {
                HealthStatus::Healthy | HealthStatus::Suspended => {}
                HealthStatus::Degraded => {
                    return WaveHealth::Degraded(format!("{key} is Degraded: {}", health.message));
                }
                other => return WaveHealth::Pending(format!("{key} is {other}")),
            }
        }
        WaveHealth::Healthy
    }

    /// Polls an object until it is Healthy (or Suspended), with a deadline.
    pub(super) async fn wait_healthy(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        deadline: Duration,
    ) -> Result<(), String> {
        let until = Instant::now() + deadline;
        loop {
            let health = match self.cluster.get(r, key).await {
                Ok(Some(live)) => self.health.assess(&live),
                Ok(None) => Health::missing(),
                Err(e) => Health {
                    status: HealthStatus::Unknown,
                    message: e.to_string(),
                },
            };
            match health.status {
                HealthStatus::Healthy | HealthStatus::Suspended => return Ok(()),
                HealthStatus::Degraded => {
                    return Err(format!("{key} is Degraded: {}", health.message));
                }
                _ if Instant::now() >= until => {
                    return Err(format!(
                        "{key} is still {} after {deadline:?}",
                        health.status
                    ));
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }
}
