//! The shell of resource hooks: creating them (POST, never server-side
//! applied), finding an instance this run already created (after a
//! restart), deleting earlier instances (`BeforeHookCreation`), watching
//! them finish and deleting them per policy.
//!
//! A hook carries the application label (so the engine's watches wake on
//! its changes), the annotation `flotilla.dev/hook` naming the hook
//! (`<app>:<group>/<Kind>:<namespace>/<name or generateName>`) and the label
//! `flotilla.dev/hook-run` naming the operation and phase that created it.
//! It never carries the tracking annotation: a hook is never part of the
//! application's inventory, sync status or prune.

use serde_json::{Map, Value};
use tracing::{info, warn};

use super::Engine;
use crate::cluster::{ClusterError, Resolved};
use crate::hooks::{
    DeletePolicy, HOOK_ID_ANNOTATION, HOOK_RUN_LABEL, HookRun, HookSpec, HookStatus, run_label,
};
use crate::object::{self, APP_LABEL, ObjectKey, TRACKING_ANNOTATION};

/// A hook manifest ready to run: its identity (namespace as created, name
/// or generateName) and its kind resolved.
#[derive(Debug, Clone)]
pub(super) struct HookTemplate {
    pub(super) key: ObjectKey,
    pub(super) resolved: Result<Resolved, String>,
    pub(super) manifest: Value,
    pub(super) spec: HookSpec,
}

fn annotation<'a>(obj: &'a Value, name: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
}

fn label<'a>(obj: &'a Value, name: &str) -> Option<&'a str> {
    obj.pointer("/metadata/labels")
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let e = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !e.is_object() {
        *e = Value::Object(Map::new());
    }
    match e {
        Value::Object(m) => m,
        _ => unreachable!("replaced by an object above"),
    }
}

/// The object to create for a hook of `app`, run `run`.
fn hook_object(template: &HookTemplate, app: &str, run: &str) -> Value {
    let mut obj = template.manifest.clone();
    if let Some(metadata) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if template.key.namespace.is_empty() {
            metadata.remove("namespace");
        } else {
            metadata.insert(
                "namespace".to_owned(),
                Value::from(template.key.namespace.clone()),
            );
        }
        let labels = entry(metadata, "labels");
        labels.insert(APP_LABEL.to_owned(), Value::from(app));
        labels.insert(HOOK_RUN_LABEL.to_owned(), Value::from(run));
        let annotations = entry(metadata, "annotations");
        annotations.remove(TRACKING_ANNOTATION);
        annotations.insert(
            HOOK_ID_ANNOTATION.to_owned(),
            Value::from(template.key.tracking_id(app)),
        );
    }
    obj
}

/// Whether `live` is this hook of `app`: created as the hook, or applied
/// as this very object before it became a hook.
fn is_this_hook(live: &Value, app: &str, template: &ObjectKey) -> bool {
    annotation(live, HOOK_ID_ANNOTATION) == Some(template.tracking_id(app).as_str())
        || object::is_tracked_by(live, app, template)
}

impl Engine {
    /// Instances of a hook in the cluster; with `run`, only those this run
    /// created.
    pub(super) async fn hook_instances(
        &self,
        app: &str,
        template: &HookTemplate,
        resolved: &Resolved,
        run: Option<&str>,
    ) -> Result<Vec<Value>, ClusterError> {
        let found: Vec<Value> = if template.spec.generate_name {
            let mut selector = format!("{APP_LABEL}={app}");
            if let Some(run) = run {
                selector.push_str(&format!(",{HOOK_RUN_LABEL}={run}"));
            }
            self.cluster
                .list(resolved, &template.key.namespace, &selector)
                .await?
                .into_iter()
                .filter(|o| {
                    annotation(o, HOOK_ID_ANNOTATION)
                        == Some(template.key.tracking_id(app).as_str())
                })
                .collect()
        } else {
            self.cluster
                .get(resolved, &template.key)
                .await?
                .filter(|o| is_this_hook(o, app, &template.key))
                .into_iter()
                .collect()
        };
        Ok(found
            .into_iter()
            .filter(|o| run.is_none_or(|r| label(o, HOOK_RUN_LABEL) == Some(r)))
            .collect())
    }

    /// Starts one hook of operation `operation_id` in `phase`: adopts the
    /// instance this run created already (a restart in the middle of a
    /// step), deletes earlier instances when the hook has
    /// `BeforeHookCreation`, then creates it. A hook whose earlier instance
    /// is still being deleted stays Pending; the next pass tries again.
    pub(super) async fn start_hook(
        &self,
        app: &str,
        operation_id: &str,
        phase: &str,
        template: &HookTemplate,
    ) -> HookRun {
        let mut run = HookRun {
            phase: phase.to_owned(),
            template: template.key.clone(),
            name: String::new(),
            status: HookStatus::Pending,
            message: String::new(),
            policies: template.spec.policies.clone(),
            deleted: false,
        };
        // A kind the sync itself adds (a CRD of an earlier step) resolves
        // now.
        let resolved = match &template.resolved {
            Ok(r) => r.clone(),
            Err(e) => match self.cluster.resolve(&template.key).await {
                Ok(r) => r,
                Err(_) => {
                    run.status = HookStatus::Failed;
                    run.message.clone_from(e);
                    return run;
                }
            },
        };
        let run_id = run_label(operation_id, phase);
        let fail = |mut run: HookRun, e: String| {
            run.status = HookStatus::Failed;
            run.message = e;
            run
        };
        match self
            .hook_instances(app, template, &resolved, Some(&run_id))
            .await
        {
            Ok(mine) => {
                if let Some(live) = mine.first() {
                    run.name = name_of(live);
                    run.status = HookStatus::Running;
                    run.message = "created".to_owned();
                    return run;
                }
            }
            Err(e) => return fail(run, e.to_string()),
        }
        if template
            .spec
            .policies
            .contains(&DeletePolicy::BeforeHookCreation)
        {
            let earlier = match self.hook_instances(app, template, &resolved, None).await {
                Ok(e) => e,
                Err(e) => return fail(run, e.to_string()),
            };
            for live in earlier {
                let mut key = template.key.clone();
                key.name = name_of(&live);
                if live.pointer("/metadata/deletionTimestamp").is_none() {
                    info!(app, hook = %key, "deleting the earlier hook (BeforeHookCreation)");
                    if let Err(e) = self.cluster.delete(&resolved, &key).await {
                        return fail(run, format!("deleting the earlier hook {key}: {e}"));
                    }
                }
                // Gone at once unless finalizers hold it.
                if let Ok(Some(still)) = self.cluster.get(&resolved, &key).await
                    && still.pointer("/metadata/deletionTimestamp").is_some()
                {
                    run.message = format!("waiting for deletion of the earlier hook {key}");
                    return run;
                }
            }
        }
        let obj = hook_object(template, app, &run_id);
        match self.cluster.create(&resolved, &template.key, &obj).await {
            Ok(created) => {
                run.name = name_of(&created);
                run.status = HookStatus::Running;
                run.message = "created".to_owned();
                info!(app, phase, hook = %run.live_key(), "hook created");
                run
            }
            Err(ClusterError::AlreadyExists { .. }) => {
                // A named hook that exists: Argo CD creates named hooks only
                // once; without BeforeHookCreation the existing one is this
                // run's (its state decides), unless it is not ours at all.
                match self.cluster.get(&resolved, &template.key).await {
                    Ok(Some(live)) if live.pointer("/metadata/deletionTimestamp").is_some() => {
                        run.message =
                            format!("waiting for deletion of the earlier hook {}", template.key);
                        run
                    }
                    Ok(Some(live)) if is_this_hook(&live, app, &template.key) => {
                        run.name = name_of(&live);
                        run.status = HookStatus::Running;
                        run.message = "exists already".to_owned();
                        run
                    }
                    Ok(Some(live)) => {
                        let owner = object::tracking_app(&live)
                            .map(|a| format!(" (it belongs to application {a})"))
                            .unwrap_or_default();
                        fail(
                            run,
                            format!(
                                "{} exists and is not a hook of application {app}{owner}",
                                template.key
                            ),
                        )
                    }
                    // Deleted in between: the next pass creates it.
                    Ok(None) => run,
                    Err(e) => fail(run, e.to_string()),
                }
            }
            Err(e) => fail(run, e.to_string()),
        }
    }

    /// Refreshes a running hook from the cluster.
    pub(super) async fn observe_hook(&self, run: &mut HookRun) {
        if run.status != HookStatus::Running {
            return;
        }
        let resolved = match self.cluster.resolve(&run.live_key()).await {
            Ok(r) => r,
            Err(e) => {
                run.status = HookStatus::Failed;
                run.message = e.to_string();
                return;
            }
        };
        match self.cluster.get(&resolved, &run.live_key()).await {
            Ok(Some(live)) => {
                let health = self.health.assess(&live);
                let (status, message) = crate::hooks::live_status(&live, &health);
                if !status.finished() && live.pointer("/metadata/deletionTimestamp").is_some() {
                    run.status = HookStatus::Terminating;
                    run.message = "deleted before it finished".to_owned();
                } else {
                    run.status = status;
                    run.message = message;
                }
            }
            Ok(None) => {
                run.status = HookStatus::Failed;
                run.message = "the hook was deleted before it finished".to_owned();
            }
            // Not reachable now: still running as far as we know.
            Err(e) => warn!(hook = %run.live_key(), error = %e, "could not read hook"),
        }
    }

    /// Deletes a hook that exists; `deleted` on success.
    pub(super) async fn delete_hook(&self, app: &str, run: &mut HookRun) {
        if run.name.is_empty() || run.deleted {
            return;
        }
        let key = run.live_key();
        let resolved = match self.cluster.resolve(&key).await {
            Ok(r) => r,
            Err(e) => {
                warn!(app, hook = %key, error = %e, "could not delete hook");
                return;
            }
        };
        match self.cluster.delete(&resolved, &key).await {
            Ok(()) => {
                info!(app, hook = %key, "hook deleted");
                run.deleted = true;
            }
            Err(e) => {
                warn!(app, hook = %key, error = %e, "could not delete hook");
                run.message = format!("{}; delete failed: {e}", run.message);
            }
        }
    }

    /// Deletes a hook that has not finished (its operation ended without
    /// it), marking it Terminating.
    pub(super) async fn terminate_hook(&self, app: &str, run: &mut HookRun, why: &str) {
        if run.status.finished() {
            return;
        }
        if run.status == HookStatus::Running {
            self.delete_hook(app, run).await;
        }
        run.status = HookStatus::Terminating;
        run.message = why.to_owned();
    }
}
