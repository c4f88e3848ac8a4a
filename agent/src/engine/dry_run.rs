//! A sync's dry run: what a sync of one application would do to each object,
//! found the way the sync itself would go (same manifests, same prepared
//! objects, same plan order, same prune candidates) but with every write
//! sent as `dryRun=All`, so the API server validates, defaults and merges
//! and the cluster is left as it was.
//!
//! Nothing waits: there is no health to wait for when nothing is applied,
//! so sync waves are reported one after the other. An object the API server
//! refuses is reported with its error and the others still run. Objects in a
//! namespace the sync would create, and custom resources whose CRD the sync
//! would create, cannot be checked by the server yet; they are reported as
//! created with a note.

use std::collections::BTreeSet;

use flotilla_proto::{ResourceResult, SyncResult};
use serde_json::{Value, json};

use super::Engine;
use super::live::namespace_of;
use crate::cache::CachedApp;
use crate::object::{self, ObjectKey};
use crate::plan;

/// What the sync would do to one object.
pub mod action {
    /// The object does not exist and would be created.
    pub const CREATED: &str = "created";
    /// The object exists and the apply would change it.
    pub const CONFIGURED: &str = "configured";
    /// The apply would leave the object as it is.
    pub const UNCHANGED: &str = "unchanged";
    /// The object is no longer desired and would be deleted.
    pub const PRUNED: &str = "pruned";
    /// The object is no longer desired but would be left (see the message).
    pub const PRUNE_SKIPPED: &str = "prune-skipped";
    /// The API server refused the object (see the error).
    pub const FAILED: &str = "failed";
}

fn result(key: &ObjectKey, action: &str, message: impl Into<String>) -> ResourceResult {
    ResourceResult {
        key: Some(key.to_proto()),
        action: action.to_owned(),
        message: message.into(),
        error: String::new(),
    }
}

fn failed(key: &ObjectKey, error: impl Into<String>) -> ResourceResult {
    ResourceResult {
        key: Some(key.to_proto()),
        action: action::FAILED.to_owned(),
        message: String::new(),
        error: error.into(),
    }
}

/// An object as far as a change is concerned: without the bookkeeping a
/// write touches even when nothing else changes.
fn comparable(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["resourceVersion", "managedFields", "generation"] {
            m.remove(field);
        }
    }
    obj
}

/// Whether the object the server would store differs from the live one.
#[must_use]
pub fn would_change(live: &Value, dry_run: &Value) -> bool {
    comparable(live) != comparable(dry_run)
}

/// `(group, kind)` of every CustomResourceDefinition among `objects`.
fn defined_kinds(objects: &[Value]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .filter(|o| {
            o.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition")
                && o.get("apiVersion")
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.starts_with("apiextensions.k8s.io/"))
        })
        .filter_map(|o| {
            let group = o.pointer("/spec/group")?.as_str()?;
            let kind = o.pointer("/spec/names/kind")?.as_str()?;
            Some((group.to_owned(), kind.to_owned()))
        })
        .collect()
}

impl Engine {
    /// The dry run of a sync of `app` (pruning when `prune`), answered as
    /// the `SyncResult` of command `command_id`.
    pub(super) async fn dry_run(
        &self,
        app: &CachedApp,
        prune: bool,
        command_id: &str,
    ) -> SyncResult {
        let b = &app.bundle;
        let mut out = SyncResult {
            command_id: command_id.to_owned(),
            app: b.name.clone(),
            revision: b.revision.clone(),
            dry_run: true,
            ..SyncResult::default()
        };
        let (objects, errors) = self.bundle_objects(&b.manifests).await;
        let parsed_objects: Vec<Value> = objects.iter().map(|(_, o, _)| o.clone()).collect();
        let crd_kinds = defined_kinds(&parsed_objects);
        // Namespaces this sync would create: what is in them cannot be
        // checked by the server yet.
        let mut new_namespaces = BTreeSet::new();
        if b.policy.option("CreateNamespace") && !b.namespace.is_empty() {
            let key = ObjectKey {
                group: String::new(),
                version: "v1".to_owned(),
                kind: "Namespace".to_owned(),
                namespace: String::new(),
                name: b.namespace.clone(),
            };
            let obj =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": b.namespace}});
            let row = self.dry_run_apply(&key, &obj).await;
            if row.action == action::CREATED {
                new_namespaces.insert(b.namespace.clone());
                out.resources.push(ResourceResult {
                    message: "CreateNamespace".to_owned(),
                    ..row
                });
            } else if row.action == action::FAILED {
                out.resources.push(row);
            }
        }
        let mut desired_keys = BTreeSet::new();
        let mut failures = 0usize;
        for wave in plan::plan(objects, |k| self.cluster.known_scope(k)) {
            for step in wave.steps {
                let mut key = step.key;
                let resolved = match self.cluster.resolve(&key).await {
                    Ok(r) => r,
                    Err(e) => {
                        if key.namespace.is_empty() {
                            key.namespace.clone_from(&b.namespace);
                        }
                        desired_keys.insert(key.clone());
                        if crd_kinds.contains(&(key.group.clone(), key.kind.clone())) {
                            out.resources.push(result(
                                &key,
                                action::CREATED,
                                "its CustomResourceDefinition is created by this sync; not checked by the API server",
                            ));
                        } else {
                            failures += 1;
                            out.resources.push(failed(&key, e.to_string()));
                        }
                        continue;
                    }
                };
                let desired =
                    object::prepare(step.item, &b.name, &b.namespace, resolved.namespaced);
                key.namespace = namespace_of(&desired);
                desired_keys.insert(key.clone());
                let row = if resolved.namespaced && new_namespaces.contains(&key.namespace) {
                    result(
                        &key,
                        action::CREATED,
                        format!(
                            "namespace {} is created by this sync; not checked by the API server",
                            key.namespace
                        ),
                    )
                } else {
                    self.dry_run_apply(&key, &desired).await
                };
                if row.action == action::FAILED {
                    failures += 1;
                } else if key.group.is_empty()
                    && key.kind == "Namespace"
                    && row.action == action::CREATED
                {
                    new_namespaces.insert(key.name.clone());
                }
                out.resources.push(row);
            }
        }
        // Hooks are created (never applied) when the sync runs: checked
        // with a dry-run create.
        let desired = self.desired(b).await;
        for hook in &desired.hooks {
            let phases: Vec<&str> = hook.spec.sync_phases.iter().map(|p| p.as_str()).collect();
            if phases.is_empty() {
                continue;
            }
            let resolved = match &hook.resolved {
                Ok(r) => r,
                Err(e) => {
                    failures += 1;
                    out.resources.push(failed(&hook.key, e.clone()));
                    continue;
                }
            };
            let mut obj = hook.manifest.clone();
            if resolved.namespaced {
                obj["metadata"]["namespace"] = Value::from(hook.key.namespace.clone());
            }
            let when = if phases == ["SyncFail"] {
                "created if the sync fails"
            } else {
                "created when the sync runs"
            };
            let row = if resolved.namespaced && new_namespaces.contains(&hook.key.namespace) {
                result(
                    &hook.key,
                    action::CREATED,
                    format!("{} hook, {when}", phases.join(",")),
                )
            } else {
                match self.cluster.create_dry_run(resolved, &hook.key, &obj).await {
                    Ok(_) => result(
                        &hook.key,
                        action::CREATED,
                        format!("{} hook, {when}", phases.join(",")),
                    ),
                    // A named hook that exists: BeforeHookCreation replaces it.
                    Err(crate::cluster::ClusterError::AlreadyExists { .. }) => result(
                        &hook.key,
                        action::CREATED,
                        format!(
                            "{} hook, {when} (replacing the existing one per its delete policy)",
                            phases.join(",")
                        ),
                    ),
                    Err(e) => {
                        failures += 1;
                        failed(&hook.key, e.to_string())
                    }
                }
            };
            out.resources.push(row);
        }
        let blocked = if failures > 0 || !errors.is_empty() {
            Some("not pruned: the sync would fail")
        } else {
            None
        };
        self.dry_run_prune(app, prune, &desired_keys, blocked, &mut out.resources)
            .await;
        out.error = errors.join("; ");
        out
    }

    /// One object: its live state, then a server-side dry-run apply.
    async fn dry_run_apply(&self, key: &ObjectKey, desired: &Value) -> ResourceResult {
        let resolved = match self.cluster.resolve(key).await {
            Ok(r) => r,
            Err(e) => return failed(key, e.to_string()),
        };
        let live = match self.cluster.get(&resolved, key).await {
            Ok(live) => live,
            Err(e) => return failed(key, e.to_string()),
        };
        match self.cluster.apply_dry_run(&resolved, key, desired).await {
            Err(e) => failed(key, e.to_string()),
            Ok(_) if live.is_none() => result(key, action::CREATED, ""),
            Ok(after) => match live {
                Some(live) if would_change(&live, &after) => result(key, action::CONFIGURED, ""),
                _ => result(key, action::UNCHANGED, ""),
            },
        }
    }

    /// The objects a sync would prune (or leave, and why), in prune order.
    async fn dry_run_prune(
        &self,
        app: &CachedApp,
        prune: bool,
        desired_keys: &BTreeSet<ObjectKey>,
        blocked: Option<&str>,
        out: &mut Vec<ResourceResult>,
    ) {
        let b = &app.bundle;
        // What earlier agents recorded in the cluster was read into it.
        let known = self.inventory_of(&b.name);
        let stale: Vec<ObjectKey> = known
            .into_iter()
            .filter(|k| !desired_keys.contains(k))
            .collect();
        let empty = desired_keys.is_empty() && !b.policy.allow_empty;
        for key in plan::prune_order(stale, |k| self.cluster.known_scope(k)) {
            let Ok(resolved) = self.cluster.resolve(&key).await else {
                // The kind is gone, and with it every object of it.
                continue;
            };
            let live = match self.cluster.get(&resolved, &key).await {
                Ok(Some(live)) => live,
                Ok(None) => continue,
                Err(e) => {
                    out.push(failed(&key, e.to_string()));
                    continue;
                }
            };
            let skipped = if !object::is_tracked_by(&live, &b.name, &key) {
                Some("ignored (not tracked by this application)")
            } else if object::prune_disabled(&live) {
                Some("ignored (no prune)")
            } else if !prune {
                Some("ignored (requires pruning)")
            } else if empty {
                Some("ignored (desired state is empty; not pruning without allowEmpty)")
            } else {
                blocked
            };
            if let Some(why) = skipped {
                out.push(result(&key, action::PRUNE_SKIPPED, why));
                continue;
            }
            out.push(match self.cluster.delete_dry_run(&resolved, &key).await {
                Ok(()) => result(&key, action::PRUNED, ""),
                Err(e) => failed(&key, format!("prune: {e}")),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_alone_is_no_change() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "5", "generation": 1,
            "managedFields": [{"manager": "x"}]}, "spec": {"replicas": 2}});
        let same = json!({"metadata": {"name": "a", "resourceVersion": "6", "generation": 1,
            "managedFields": [{"manager": "flotilla"}]}, "spec": {"replicas": 2}});
        assert!(!would_change(&live, &same));
        let scaled = json!({"metadata": {"name": "a", "resourceVersion": "5", "generation": 2},
            "spec": {"replicas": 3}});
        assert!(would_change(&live, &scaled));
    }

    #[test]
    fn kinds_of_crds_in_the_sync() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "spec": {"group": "example.com", "names": {"kind": "Gadget"}}});
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap"});
        let kinds = defined_kinds(&[crd, other]);
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            [("example.com".to_owned(), "Gadget".to_owned())]
        );
    }
}
