//! Applying one application: server-side apply in plan order, sync waves
//! that wait for health without blocking the engine, CRDs that wait until
//! Established, `CreateNamespace`, and pruning by tracking identity.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use super::live::namespace_of;
use super::{CRD_DEADLINE, Engine, POLL};
use crate::cache::{CachedApp, CachedState, RemovedApp};
use crate::cluster::Resolved;
use crate::deletion::Removal;
use crate::health::{Health, HealthStatus};
use crate::object::{self, ObjectKey};
use crate::plan;

/// Result of applying one application.
#[derive(Debug, Default)]
pub(super) struct ApplyOutcome {
    pub(super) errors: BTreeMap<ObjectKey, String>,
    pub(super) message: String,
    pub(super) inventory: Vec<ObjectKey>,
    /// Stopped before wave index `.0` because wave number `.1` is not
    /// healthy yet (`.2` says why).
    pub(super) waiting: Option<(usize, i64, String)>,
}

impl ApplyOutcome {
    pub(super) fn ok(&self) -> bool {
        self.errors.is_empty() && self.message.is_empty()
    }
}

/// Where a sync wave stands.
enum WaveHealth {
    Healthy,
    Pending(String),
    Degraded(String),
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

    /// Applies one application in plan order, then prunes when the policy
    /// says so.
    pub(super) async fn apply(
        &self,
        app: &CachedApp,
        prune: bool,
        skip: &BTreeSet<ObjectKey>,
        resume_from: usize,
    ) -> ApplyOutcome {
        let b = &app.bundle;
        let mut out = ApplyOutcome::default();
        let (objects, mut messages) = self.bundle_objects(&b.manifests).await;
        if b.policy.option("CreateNamespace")
            && !b.namespace.is_empty()
            && let Err(e) = self.ensure_namespace(&b.namespace).await
        {
            messages.push(format!("create namespace {}: {e}", b.namespace));
        }
        let waves = plan::plan(objects, |k| self.cluster.known_scope(k));
        let wave_count = waves.len();
        let mut desired_keys = BTreeSet::new();
        // The last wave reached, for PruneLast: its number and objects.
        let mut last_wave = None;
        for (i, wave) in waves.into_iter().enumerate() {
            // Waves before `resume_from` were applied for this digest by an
            // earlier pass; only their identities are needed.
            let done_before = i < resume_from;
            let mut applied = Vec::new();
            for step in wave.steps {
                let mut key = step.key;
                let resolved = match self.cluster.resolve(&key).await {
                    Ok(r) => r,
                    Err(e) => {
                        if key.namespace.is_empty() {
                            key.namespace.clone_from(&b.namespace);
                        }
                        desired_keys.insert(key.clone());
                        out.errors.insert(key, e.to_string());
                        continue;
                    }
                };
                let desired =
                    object::prepare(step.item, &b.name, &b.namespace, resolved.namespaced);
                key.namespace = namespace_of(&desired);
                desired_keys.insert(key.clone());
                if done_before || skip.contains(&key) {
                    applied.push((key, resolved));
                    continue;
                }
                match self.cluster.apply(&resolved, &key, &desired).await {
                    Ok(_) => {
                        if step.phase == plan::Phase::Crds
                            && let Err(e) = self.wait_healthy(&resolved, &key, CRD_DEADLINE).await
                        {
                            out.errors.insert(key.clone(), e);
                        }
                        applied.push((key, resolved));
                    }
                    Err(e) => {
                        warn!(app = %b.name, object = %key, error = %e, "apply failed");
                        out.errors.insert(key, e.to_string());
                    }
                }
            }
            // The next wave waits for this one to be healthy. Rather than
            // block the engine, stop here; a later pass resumes.
            if i + 1 == wave_count {
                last_wave = Some((wave.wave, applied));
            } else if i + 1 >= resume_from {
                match self.wave_health(&applied).await {
                    WaveHealth::Healthy => {}
                    WaveHealth::Pending(why) => {
                        out.waiting = Some((i + 1, wave.wave, why));
                        break;
                    }
                    WaveHealth::Degraded(why) => {
                        messages.push(format!("sync wave {} is not healthy: {why}", wave.wave));
                        break;
                    }
                }
            }
        }
        // Objects not applied this time stay in the inventory until a
        // successful apply or prune accounts for them.
        let mut inventory: BTreeSet<ObjectKey> = desired_keys.clone();
        let complete = out.errors.is_empty() && messages.is_empty() && out.waiting.is_none();
        if !complete {
            inventory.extend(app.inventory.iter().cloned());
        } else if prune {
            let mut known: BTreeSet<ObjectKey> = app.inventory.iter().cloned().collect();
            if known.is_empty()
                && let Some(store) = &self.inventory
            {
                // A fresh cache: what earlier agents applied is in the cluster.
                match store.load(&self.cluster, &b.name).await {
                    Ok(Some(stored)) => known.extend(stored.objects),
                    Ok(None) => {}
                    Err(e) => warn!(app = %b.name, error = %e, "could not read the inventory"),
                }
            }
            let stale: Vec<ObjectKey> = known
                .into_iter()
                .filter(|k| !desired_keys.contains(k))
                .collect();
            if desired_keys.is_empty() && !stale.is_empty() && !b.policy.allow_empty {
                messages.push("desired state is empty; not pruning without allowEmpty".to_owned());
                inventory.extend(stale);
            } else if let Some((wave, why)) =
                self.prune_last_pending(b, &stale, last_wave.as_ref()).await
            {
                // PruneLast: nothing is pruned before the last wave is
                // healthy too; a later pass resumes after every wave.
                match why {
                    WaveHealth::Pending(why) => out.waiting = Some((wave_count, wave, why)),
                    WaveHealth::Degraded(why) => messages.push(format!(
                        "not pruning (PruneLast): sync wave {wave} is not healthy: {why}"
                    )),
                    WaveHealth::Healthy => {}
                }
                inventory.extend(stale);
            } else {
                for key in self.prune_order(stale) {
                    if let Err(e) = self.prune_one(&b.name, &key).await {
                        warn!(app = %b.name, object = %key, error = %e, "prune failed");
                        out.errors.insert(key.clone(), format!("prune: {e}"));
                        inventory.insert(key);
                    }
                }
            }
        }
        out.message = messages.join("; ");
        out.inventory = inventory.into_iter().collect();
        out
    }

    /// With PruneLast (the application's sync option, or the annotation
    /// `argocd.argoproj.io/sync-options: PruneLast=true` on an object to
    /// prune), the last wave must be healthy before anything is pruned:
    /// the wave number and its state when it is not.
    async fn prune_last_pending(
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
    fn prune_order(&self, keys: Vec<ObjectKey>) -> Vec<ObjectKey> {
        plan::prune_order(keys, |k| self.cluster.known_scope(k))
    }

    /// Deletes one object if it carries this application's tracking identity
    /// and does not opt out of pruning.
    async fn prune_one(&self, app: &str, key: &ObjectKey) -> Result<(), String> {
        let resolved = match self.cluster.resolve(key).await {
            Ok(r) => r,
            // The kind is gone, and with it every object of it.
            Err(_) => return Ok(()),
        };
        let Some(live) = self
            .cluster
            .get(&resolved, key)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        if !object::is_tracked_by(&live, app, key) {
            info!(app, object = %key, "not pruning an object this application does not track");
            return Ok(());
        }
        if object::prune_disabled(&live) {
            info!(app, object = %key, "not pruning: Prune=false");
            return Ok(());
        }
        info!(app, object = %key, "pruning");
        self.cluster
            .delete(&resolved, key)
            .await
            .map_err(|e| e.to_string())
    }

    pub(super) async fn prune_removed(&self, snapshot: &CachedState) {
        for (name, removed) in &snapshot.removed {
            let mut failed = false;
            // The hub's deletion decision (cascade with a propagation, or
            // orphan) when it sent one; else the last policy's prune.
            if let Some(how) = removed.removal() {
                for key in &self.prune_order(removed.inventory.clone()) {
                    let done = match how {
                        Removal::Prune => self.prune_one(name, key).await,
                        Removal::Cascade { foreground } => {
                            let options = &removed.policy.sync_options;
                            crate::deletion::delete_object(
                                &self.cluster,
                                name,
                                key,
                                foreground,
                                options,
                            )
                            .await
                        }
                    };
                    if let Err(e) = done {
                        warn!(app = %name, object = %key, error = %e, "prune of removed application failed");
                        failed = true;
                    }
                }
            } else if !removed.inventory.is_empty() {
                info!(app = %name, "application removed without cascade or prune; its objects stay");
            }
            if !failed
                && let Some(store) = &self.inventory
                && let Err(e) = store.remove(&self.cluster, name).await
            {
                warn!(app = %name, error = %e, "could not delete the inventory");
                failed = true;
            }
            if !failed {
                let result = self.cache.update(|s| {
                    s.removed.remove(name);
                });
                if let Err(e) = result {
                    warn!(error = %e, "could not persist the cache");
                }
            }
        }
    }

    /// Applications the cluster has inventories for but the hub no longer
    /// lists (removed while this agent, or its disk, was away) are queued
    /// for pruning like any removed application.
    pub(super) async fn adopt_orphans(&mut self, snapshot: &CachedState) {
        let Some(store) = &self.inventory else {
            self.orphans_checked = true;
            return;
        };
        let stored = match store.list(&self.cluster).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "could not list inventories");
                return;
            }
        };
        self.orphans_checked = true;
        let orphans: Vec<_> = stored
            .into_iter()
            .filter(|s| {
                !snapshot.apps.contains_key(&s.app) && !snapshot.removed.contains_key(&s.app)
            })
            .collect();
        if orphans.is_empty() {
            return;
        }
        let result = self.cache.update(|s| {
            for orphan in orphans {
                info!(app = %orphan.app, objects = orphan.objects.len(), "application no longer desired; found its inventory in the cluster");
                s.removed.insert(
                    orphan.app,
                    RemovedApp {
                        policy: crate::bundle::Policy {
                            prune: orphan.prune,
                            ..Default::default()
                        },
                        inventory: orphan.objects,
                        deletion: None,
                    },
                );
            }
        });
        if let Err(e) = result {
            warn!(error = %e, "could not persist the cache");
        }
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), String> {
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
    async fn wave_health(&self, objects: &[(ObjectKey, Resolved)]) -> WaveHealth {
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
    async fn wait_healthy(
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
