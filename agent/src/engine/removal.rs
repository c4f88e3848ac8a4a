//! Removing an application the hub no longer lists, as Argo CD deletes an
//! Application: its PreDelete hooks run first (nothing is deleted until
//! they succeed), then its objects are deleted as the hub decided (cascade
//! with foreground or background propagation, or orphan; without a
//! decision from the hub, pruned when its last policy had prune) and what
//! its sync hooks left behind is deleted, then, once the deleted objects
//! are gone, its PostDelete hooks run; finally the deletion hooks
//! go per their delete policies. A failed deletion hook is deleted and
//! created again at a later pass (Argo CD retries the same way). Each stage
//! is persisted with the removed application, so a restart continues it.
//! Objects are deleted only when they carry this application's tracking
//! identity: another application's object is never touched.

use tracing::{info, warn};

use super::Engine;
use crate::bundle::Bundle;
use crate::cache::RemovedApp;
use crate::deletion::Removal as ObjectRemoval;
use crate::hooks::{self, DeletionPhase, HookStatus, Removal, RemovalStage};
use crate::object;
use crate::report::now_ms;

impl Engine {
    /// One pass of the removal of `name`; true once it is done.
    pub(super) async fn remove_app(&self, name: &str, removed: &mut RemovedApp) -> bool {
        if let Some(mut op) = removed.operation.take() {
            for run in &mut op.hooks {
                self.terminate_hook(name, run, "terminated: the application was removed")
                    .await;
            }
        }
        let templates = self
            .desired(&Bundle {
                name: name.to_owned(),
                namespace: removed.namespace.clone(),
                manifests: removed.hooks.clone(),
                ..Bundle::default()
            })
            .await
            .hooks;
        let mut removal = removed.removal.take().unwrap_or_else(|| Removal {
            id: format!("{:08x}", rand::random::<u32>()),
            since_ms: now_ms(),
            ..Removal::default()
        });
        let done = loop {
            match removal.stage {
                RemovalStage::PreDelete | RemovalStage::PostDelete => {
                    let (phase, next) = if removal.stage == RemovalStage::PreDelete {
                        (DeletionPhase::PreDelete, RemovalStage::Prune)
                    } else {
                        (DeletionPhase::PostDelete, RemovalStage::Cleanup)
                    };
                    if !self
                        .deletion_hooks(name, &mut removal, phase, &templates)
                        .await
                    {
                        break false;
                    }
                    removal.stage = next;
                    removal.since_ms = now_ms();
                }
                RemovalStage::Prune => {
                    if !self.prune_removed_objects(name, removed, &templates).await {
                        break false;
                    }
                    removal.stage = RemovalStage::PostDelete;
                    removal.since_ms = now_ms();
                }
                RemovalStage::Cleanup => {
                    // All deletion hooks succeeded: HookSucceeded ones go.
                    for run in &mut removal.hooks {
                        if hooks::deleted_after(&run.policies, true) {
                            self.delete_hook(name, run).await;
                        }
                    }
                    info!(app = name, "application removed");
                    break true;
                }
            }
        };
        removed.removal = Some(removal);
        done
    }

    /// Runs the deletion hooks of `phase`; true once all have succeeded.
    async fn deletion_hooks(
        &self,
        app: &str,
        removal: &mut Removal,
        phase: DeletionPhase,
        templates: &[super::hooks::HookTemplate],
    ) -> bool {
        let mine: Vec<&super::hooks::HookTemplate> = templates
            .iter()
            .filter(|t| t.spec.deletion_phases.contains(&phase))
            .collect();
        let phase_name = phase.as_str();
        for t in &mine {
            let pos = removal
                .hooks
                .iter()
                .position(|h| h.phase == phase_name && h.template == t.key);
            match pos {
                None => {
                    info!(app, hook = %t.key, "running {phase_name} hook");
                    let run = self.start_hook(app, &removal.id, phase_name, t).await;
                    removal.hooks.push(run);
                }
                Some(p) if removal.hooks[p].status == HookStatus::Pending => {
                    removal.hooks[p] = self.start_hook(app, &removal.id, phase_name, t).await;
                }
                Some(p) => self.observe_hook(&mut removal.hooks[p]).await,
            }
        }
        let runs = || removal.hooks.iter().filter(|h| h.phase == phase_name);
        if runs().any(|h| !h.status.finished()) {
            return false;
        }
        let failed: Vec<String> = runs()
            .filter(|h| h.status != HookStatus::Succeeded)
            .map(|h| format!("{}: {}", h.live_key(), h.message))
            .collect();
        if failed.is_empty() {
            return true;
        }
        // Deleted so a later pass creates them again.
        warn!(app, failed = ?failed, "{phase_name} hooks failed; retrying");
        let mut kept = Vec::new();
        for mut run in std::mem::take(&mut removal.hooks) {
            if run.phase == phase_name && run.status != HookStatus::Succeeded {
                self.delete_hook(app, &mut run).await;
            } else {
                kept.push(run);
            }
        }
        removal.hooks = kept;
        false
    }

    /// Deletes a removed application's objects as the hub decided (see
    /// [`RemovedApp::object_removal`]) and whatever its sync hooks left
    /// behind; true once the objects it deleted are gone.
    async fn prune_removed_objects(
        &self,
        app: &str,
        removed: &RemovedApp,
        templates: &[super::hooks::HookTemplate],
    ) -> bool {
        let how = removed.object_removal();
        if how.is_none() && !removed.inventory.is_empty() {
            info!(
                app,
                "application removed without cascade or prune; its objects stay"
            );
        }
        let mut done = true;
        let keys = match how {
            Some(_) => self.prune_order(removed.inventory.clone()),
            None => Vec::new(),
        };
        for key in &keys {
            let requested = match how {
                Some(ObjectRemoval::Cascade { foreground }) => {
                    crate::deletion::delete_object(
                        &self.cluster,
                        app,
                        key,
                        foreground,
                        &removed.policy.sync_options,
                    )
                    .await
                }
                _ => self
                    .prune_one(app, key)
                    .await
                    .map(|p| p == super::apply::Pruned::Deleted),
            };
            match requested {
                Err(e) => {
                    warn!(app, object = %key, error = %e, "deleting an object of the removed application failed");
                    done = false;
                    continue;
                }
                // Kept (Prune=false, Delete=false, another app's): nothing
                // to wait for.
                Ok(false) => continue,
                Ok(true) => {}
            }
            // PostDelete waits until the objects are gone (finalizers).
            if let Ok(r) = self.cluster.resolve(key).await
                && let Ok(Some(live)) = self.cluster.get(&r, key).await
                && object::is_tracked_by(&live, app, key)
            {
                done = false;
            }
        }
        for t in templates.iter().filter(|t| !t.spec.sync_phases.is_empty()) {
            let Ok(resolved) = &t.resolved else {
                continue;
            };
            match self.hook_instances(app, t, resolved, None).await {
                Ok(left) => {
                    for live in left {
                        let mut key = t.key.clone();
                        key.name = live
                            .pointer("/metadata/name")
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or("")
                            .to_owned();
                        info!(app, hook = %key, "deleting a hook of the removed application");
                        if let Err(e) = self.cluster.delete(resolved, &key).await {
                            warn!(app, hook = %key, error = %e, "could not delete hook");
                            done = false;
                        }
                    }
                }
                Err(e) => {
                    warn!(app, hook = %t.key, error = %e, "could not list hooks");
                    done = false;
                }
            }
        }
        done
    }
}
