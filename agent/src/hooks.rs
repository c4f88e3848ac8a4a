//! Argo CD resource hooks, purely: which manifests are hooks, in which
//! phases they run, in which wave, with which delete policies, and when a
//! running hook has finished. No I/O; the engine's shell creates, watches
//! and deletes the hooks.
//!
//! The rules follow gitops-engine (`pkg/sync/hook`, `pkg/sync/hook/helm`,
//! `pkg/sync/syncwaves`) and Argo CD's controller for the deletion hooks:
//!
//! - `argocd.argoproj.io/hook` holds a comma-separated list of `PreSync`,
//!   `Sync`, `PostSync`, `SyncFail`, `PreDelete`, `PostDelete` and `Skip`.
//!   `Skip` alone means "do not apply this object"; with other types it is
//!   ignored. Where Argo CD silently drops a value it does not know, this
//!   is an error naming the object and the value.
//! - Without that annotation, `helm.sh/hook` maps Helm's hooks:
//!   `pre-install`/`pre-upgrade` → PreSync, `post-install`/`post-upgrade` →
//!   PostSync, `pre-delete` → PreDelete, `post-delete` → PostDelete;
//!   `crd-install` is not a hook at all (the object is applied normally);
//!   the others (`test`, `test-success`, `test-failure`, `pre-rollback`,
//!   `post-rollback`) have no equivalent, and an object carrying only such
//!   hooks is not applied, as in Argo CD.
//! - The wave is `argocd.argoproj.io/sync-wave`, else `helm.sh/hook-weight`,
//!   else 0.
//! - Delete policies come from `argocd.argoproj.io/hook-delete-policy` and
//!   `helm.sh/hook-delete-policy` (`before-hook-creation`, `hook-succeeded`,
//!   `hook-failed`); `BeforeHookCreation` when neither names one.
//! - `metadata.generateName` is allowed for hooks only; any other object
//!   gets kubectl's "cannot use generate name with apply".

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::health::{Health, HealthStatus};
use crate::object::ObjectKey;

/// Argo CD's hook annotation.
pub const HOOK_ANNOTATION: &str = "argocd.argoproj.io/hook";
/// Argo CD's hook delete policy annotation.
pub const DELETE_POLICY_ANNOTATION: &str = "argocd.argoproj.io/hook-delete-policy";
/// Helm's hook annotation.
pub const HELM_HOOK_ANNOTATION: &str = "helm.sh/hook";
/// Helm's hook delete policy annotation.
pub const HELM_DELETE_POLICY_ANNOTATION: &str = "helm.sh/hook-delete-policy";
/// Helm's hook weight; an object's wave; its name or generateName.
pub use crate::object::{HELM_WEIGHT_ANNOTATION, sync_wave as wave, template_name};
/// On every hook the agent creates: the hook's identity,
/// `<app>:<group>/<Kind>:<namespace>/<name or generateName>`. It is not the
/// tracking annotation, so a hook is never pruned or counted as a resource.
pub const HOOK_ID_ANNOTATION: &str = "flotilla.dev/hook";
/// Label on every hook the agent creates: `<operation id>-<phase>`, the run
/// that created it (found again after a restart).
pub const HOOK_RUN_LABEL: &str = "flotilla.dev/hook-run";

/// A sync phase, in the order a sync runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SyncPhase {
    /// Before anything is applied.
    PreSync,
    /// With the application's resources.
    Sync,
    /// After every resource is applied and healthy.
    PostSync,
    /// Only when the sync fails.
    SyncFail,
}

impl SyncPhase {
    /// The phase's name, as Argo CD writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreSync => "PreSync",
            Self::Sync => "Sync",
            Self::PostSync => "PostSync",
            Self::SyncFail => "SyncFail",
        }
    }
}

impl std::fmt::Display for SyncPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phase of an application's removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeletionPhase {
    /// Before the application's resources are deleted.
    PreDelete,
    /// After the application's resources are gone.
    PostDelete,
}

impl DeletionPhase {
    /// The phase's name, as Argo CD writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreDelete => "PreDelete",
            Self::PostDelete => "PostDelete",
        }
    }
}

impl std::fmt::Display for DeletionPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a hook is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeletePolicy {
    /// An existing hook is deleted before the new one is created.
    BeforeHookCreation,
    /// Deleted when the operation succeeds.
    HookSucceeded,
    /// Deleted when the operation fails.
    HookFailed,
}

impl DeletePolicy {
    /// The policy's name, as Argo CD writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeforeHookCreation => "BeforeHookCreation",
            Self::HookSucceeded => "HookSucceeded",
            Self::HookFailed => "HookFailed",
        }
    }
}

/// What a hook of a finished operation becomes: whether its policies
/// delete it, given the operation's outcome.
#[must_use]
pub fn deleted_after(policies: &[DeletePolicy], operation_succeeded: bool) -> bool {
    policies.iter().any(|p| match p {
        DeletePolicy::HookSucceeded => operation_succeeded,
        DeletePolicy::HookFailed => !operation_succeeded,
        DeletePolicy::BeforeHookCreation => false,
    })
}

/// A manifest that is a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    /// Sync phases it runs in, in order (may be empty for a deletion-only
    /// hook).
    pub sync_phases: Vec<SyncPhase>,
    /// Removal phases it runs in.
    pub deletion_phases: Vec<DeletionPhase>,
    /// Its wave within each phase.
    pub wave: i64,
    /// Delete policies, never empty.
    pub policies: Vec<DeletePolicy>,
    /// Whether it is named by `metadata.generateName` (a new name each run).
    pub generate_name: bool,
}

/// What one manifest is to a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An ordinary resource: applied, tracked, pruned, part of sync status.
    Resource,
    /// A hook: created in its phases, never tracked.
    Hook(HookSpec),
    /// `argocd.argoproj.io/hook: Skip`: not applied (and not pruned).
    Skip,
    /// A Helm hook Argo CD has no equivalent for (e.g. `test`): not
    /// applied. The string says which.
    Unsupported(String),
}

/// A manifest that cannot take part in a sync.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// A hook annotation names a type that does not exist.
    #[error(
        "{object}: unknown hook type {value:?} in {annotation} (one of PreSync, Sync, PostSync, SyncFail, PreDelete, PostDelete, Skip)"
    )]
    UnknownType {
        /// The object.
        object: String,
        /// The annotation.
        annotation: &'static str,
        /// The value.
        value: String,
    },
    /// A delete policy annotation names a policy that does not exist.
    #[error(
        "{object}: unknown hook delete policy {value:?} in {annotation} (one of BeforeHookCreation, HookSucceeded, HookFailed)"
    )]
    UnknownPolicy {
        /// The object.
        object: String,
        /// The annotation.
        annotation: &'static str,
        /// The value.
        value: String,
    },
    /// `argocd.argoproj.io/hook` is present but empty.
    #[error("{object}: {HOOK_ANNOTATION} is empty")]
    EmptyHook {
        /// The object.
        object: String,
    },
    /// A non-hook object has only `metadata.generateName`.
    #[error(
        "{object}: from {generate_name}: cannot use generate name with apply (metadata.generateName is only supported for hooks)"
    )]
    GenerateName {
        /// The object.
        object: String,
        /// Its `metadata.generateName`.
        generate_name: String,
    },
}

fn annotation<'a>(obj: &'a Value, name: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
}

/// The values of a comma-separated annotation: trimmed, without empty
/// ones and duplicates, in order.
fn csv(value: &str) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty() && seen.insert(*v))
        .collect()
}

/// How an object is named in messages: `group/Kind namespace/name` (the
/// generateName prefix when it has no name).
#[must_use]
pub fn describe(obj: &Value) -> String {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let (group, _) = crate::object::split_api_version(api_version);
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = template_name(obj).unwrap_or("");
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{group}/{kind} {ns}/{name}"),
        _ => format!("{group}/{kind} {name}"),
    }
}

fn has_name(obj: &Value) -> bool {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

enum Types {
    Argo {
        sync: Vec<SyncPhase>,
        deletion: Vec<DeletionPhase>,
        skip_only: bool,
    },
    Helm {
        sync: Vec<SyncPhase>,
        deletion: Vec<DeletionPhase>,
        unsupported: Vec<String>,
    },
    None,
}

fn types(obj: &Value) -> Result<Types, HookError> {
    if let Some(value) = annotation(obj, HOOK_ANNOTATION) {
        let values = csv(value);
        if values.is_empty() {
            return Err(HookError::EmptyHook {
                object: describe(obj),
            });
        }
        let mut sync = BTreeSet::new();
        let mut deletion = BTreeSet::new();
        let mut skip = false;
        for v in &values {
            match *v {
                "PreSync" => drop(sync.insert(SyncPhase::PreSync)),
                "Sync" => drop(sync.insert(SyncPhase::Sync)),
                "PostSync" => drop(sync.insert(SyncPhase::PostSync)),
                "SyncFail" => drop(sync.insert(SyncPhase::SyncFail)),
                "PreDelete" => drop(deletion.insert(DeletionPhase::PreDelete)),
                "PostDelete" => drop(deletion.insert(DeletionPhase::PostDelete)),
                "Skip" => skip = true,
                other => {
                    return Err(HookError::UnknownType {
                        object: describe(obj),
                        annotation: HOOK_ANNOTATION,
                        value: other.to_owned(),
                    });
                }
            }
        }
        return Ok(Types::Argo {
            skip_only: skip && values.len() == 1,
            sync: sync.into_iter().collect(),
            deletion: deletion.into_iter().collect(),
        });
    }
    match annotation(obj, HELM_HOOK_ANNOTATION) {
        // Helm 2's CRD hook: Argo CD applies the object like any other.
        Some(value) if value != "crd-install" => {
            let mut sync = BTreeSet::new();
            let mut deletion = BTreeSet::new();
            let mut unsupported = Vec::new();
            for v in csv(value) {
                match v {
                    "pre-install" | "pre-upgrade" => drop(sync.insert(SyncPhase::PreSync)),
                    "post-install" | "post-upgrade" => drop(sync.insert(SyncPhase::PostSync)),
                    "pre-delete" => drop(deletion.insert(DeletionPhase::PreDelete)),
                    "post-delete" => drop(deletion.insert(DeletionPhase::PostDelete)),
                    other => unsupported.push(other.to_owned()),
                }
            }
            Ok(Types::Helm {
                sync: sync.into_iter().collect(),
                deletion: deletion.into_iter().collect(),
                unsupported,
            })
        }
        _ => Ok(Types::None),
    }
}

/// The delete policies of a hook; `BeforeHookCreation` when none is named.
///
/// # Errors
/// A policy annotation names an unknown policy.
pub fn delete_policies(obj: &Value) -> Result<Vec<DeletePolicy>, HookError> {
    let mut policies = BTreeSet::new();
    if let Some(value) = annotation(obj, DELETE_POLICY_ANNOTATION) {
        for v in csv(value) {
            policies.insert(match v {
                "BeforeHookCreation" => DeletePolicy::BeforeHookCreation,
                "HookSucceeded" => DeletePolicy::HookSucceeded,
                "HookFailed" => DeletePolicy::HookFailed,
                other => {
                    return Err(HookError::UnknownPolicy {
                        object: describe(obj),
                        annotation: DELETE_POLICY_ANNOTATION,
                        value: other.to_owned(),
                    });
                }
            });
        }
    }
    if let Some(value) = annotation(obj, HELM_DELETE_POLICY_ANNOTATION) {
        for v in csv(value) {
            policies.insert(match v {
                "before-hook-creation" => DeletePolicy::BeforeHookCreation,
                "hook-succeeded" => DeletePolicy::HookSucceeded,
                "hook-failed" => DeletePolicy::HookFailed,
                other => {
                    return Err(HookError::UnknownPolicy {
                        object: describe(obj),
                        annotation: HELM_DELETE_POLICY_ANNOTATION,
                        value: other.to_owned(),
                    });
                }
            });
        }
    }
    if policies.is_empty() {
        policies.insert(DeletePolicy::BeforeHookCreation);
    }
    Ok(policies.into_iter().collect())
}

/// What a manifest is to a sync.
///
/// # Errors
/// An unknown hook type or delete policy, an empty hook annotation, or
/// `generateName` on an object that is not a hook.
pub fn role(obj: &Value) -> Result<Role, HookError> {
    let role = match types(obj)? {
        Types::None => Role::Resource,
        Types::Argo {
            skip_only: true, ..
        } => Role::Skip,
        Types::Argo { sync, deletion, .. } => Role::Hook(HookSpec {
            sync_phases: sync,
            deletion_phases: deletion,
            wave: wave(obj),
            policies: delete_policies(obj)?,
            generate_name: !has_name(obj),
        }),
        Types::Helm {
            sync,
            deletion,
            unsupported,
        } if sync.is_empty() && deletion.is_empty() => {
            Role::Unsupported(format!("Helm hook {}", unsupported.join(",")))
        }
        Types::Helm { sync, deletion, .. } => Role::Hook(HookSpec {
            sync_phases: sync,
            deletion_phases: deletion,
            wave: wave(obj),
            policies: delete_policies(obj)?,
            generate_name: !has_name(obj),
        }),
    };
    if role == Role::Resource && !has_name(obj) {
        let generate_name = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !generate_name.is_empty() {
            return Err(HookError::GenerateName {
                object: describe(obj),
                generate_name: generate_name.to_owned(),
            });
        }
    }
    Ok(role)
}

/// The manifests among `manifests` that are hooks (kept when an
/// application is removed: its PreDelete and PostDelete hooks run then,
/// and what its other hooks left behind is deleted with it).
#[must_use]
pub fn hook_manifests(manifests: &[String]) -> Vec<String> {
    manifests
        .iter()
        .filter(|m| {
            serde_json::from_str::<Value>(m)
                .ok()
                .and_then(|o| role(&o).ok())
                .is_some_and(|r| matches!(r, Role::Hook(_)))
        })
        .cloned()
        .collect()
}

/// Where the removal of an application stands: its PreDelete hooks, the
/// prune of its objects, its PostDelete hooks, then the cleanup of those
/// hooks. Persisted with the removed application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// A random id, on the hooks it creates.
    pub id: String,
    /// The stage it is in.
    #[serde(default)]
    pub stage: RemovalStage,
    /// Unix milliseconds since when it waits on the current stage's hooks.
    #[serde(default)]
    pub since_ms: i64,
    /// The deletion hooks it started.
    #[serde(default)]
    pub hooks: Vec<HookRun>,
}

/// A stage of an application's removal, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RemovalStage {
    /// PreDelete hooks run; nothing is deleted before they succeed.
    #[default]
    PreDelete,
    /// The application's objects are pruned (when its policy prunes).
    Prune,
    /// PostDelete hooks run once the objects are gone.
    PostDelete,
    /// Deletion hooks are deleted per their policies.
    Cleanup,
}

/// Where a hook stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HookStatus {
    /// Not created yet.
    #[default]
    Pending,
    /// Created, not finished.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully (or could not be created).
    Failed,
    /// Deleted before it finished (its operation ended without it).
    Terminating,
}

impl HookStatus {
    /// The status's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Terminating => "Terminating",
        }
    }

    /// Whether the hook has finished, one way or another.
    #[must_use]
    pub fn finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Terminating)
    }
}

fn condition<'a>(live: &'a Value, ty: &str) -> Option<&'a Value> {
    live.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter().find(|c| {
                c.get("type").and_then(Value::as_str) == Some(ty)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or("").to_owned()
}

/// Whether a live hook has finished: Jobs by their `Complete`/`Failed`
/// conditions, Pods by `status.phase` (Pods that restart forever by their
/// health), Argo Workflows by `status.phase`, every other kind by its
/// health (Healthy is done, Degraded or Unknown failed, anything else
/// still running). `health` is the object's health by the agent's rules.
#[must_use]
pub fn live_status(live: &Value, health: &Health) -> (HookStatus, String) {
    let api_version = live.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let (group, _) = crate::object::split_api_version(api_version);
    let kind = live.get("kind").and_then(Value::as_str).unwrap_or("");
    let phase = text(live.pointer("/status/phase"));
    match (group, kind) {
        ("batch", "Job") => {
            if let Some(c) = condition(live, "Failed") {
                (HookStatus::Failed, text(c.get("message")))
            } else if let Some(c) = condition(live, "Complete") {
                (HookStatus::Succeeded, text(c.get("message")))
            } else {
                (HookStatus::Running, "job is running".to_owned())
            }
        }
        ("", "Pod")
            if live.pointer("/spec/restartPolicy").and_then(Value::as_str) != Some("Always") =>
        {
            match phase.as_str() {
                "Succeeded" => (HookStatus::Succeeded, text(live.pointer("/status/message"))),
                "Failed" => {
                    let message = text(live.pointer("/status/message"));
                    let reason = text(live.pointer("/status/reason"));
                    let why = if message.is_empty() { reason } else { message };
                    (HookStatus::Failed, why)
                }
                "" => (HookStatus::Running, "pod is pending".to_owned()),
                other => (HookStatus::Running, format!("pod is {other}")),
            }
        }
        ("argoproj.io", "Workflow") => {
            let message = text(live.pointer("/status/message"));
            match phase.as_str() {
                "Succeeded" => (HookStatus::Succeeded, message),
                "Failed" | "Error" => (HookStatus::Failed, message),
                "" => (HookStatus::Running, "workflow is pending".to_owned()),
                other => (HookStatus::Running, format!("workflow is {other}")),
            }
        }
        _ => match health.status {
            HealthStatus::Healthy => {
                let name = text(live.pointer("/metadata/name"));
                let message = if health.message.is_empty() {
                    format!("{name} created")
                } else {
                    health.message.clone()
                };
                (HookStatus::Succeeded, message)
            }
            HealthStatus::Degraded | HealthStatus::Unknown => {
                (HookStatus::Failed, health.message.clone())
            }
            HealthStatus::Missing => (HookStatus::Failed, "missing".to_owned()),
            HealthStatus::Progressing | HealthStatus::Suspended => {
                (HookStatus::Running, health.message.clone())
            }
        },
    }
}

/// One hook of an operation: which manifest, in which phase, under which
/// name, and how it went. Persisted with the operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRun {
    /// `PreSync`, `Sync`, `PostSync`, `SyncFail`, `PreDelete` or
    /// `PostDelete`.
    pub phase: String,
    /// The hook's manifest identity: its namespace as created, and its name
    /// or (with `generateName`) its name prefix.
    pub template: ObjectKey,
    /// The live object's name once created; empty before.
    #[serde(default)]
    pub name: String,
    /// Where it stands.
    #[serde(default)]
    pub status: HookStatus,
    /// The last thing worth saying about it.
    #[serde(default)]
    pub message: String,
    /// Its delete policies.
    #[serde(default)]
    pub policies: Vec<DeletePolicy>,
    /// Whether the agent deleted it per its policies.
    #[serde(default)]
    pub deleted: bool,
}

impl HookRun {
    /// The hook as it exists in the cluster (its generated name once it has
    /// one).
    #[must_use]
    pub fn live_key(&self) -> ObjectKey {
        let mut key = self.template.clone();
        if !self.name.is_empty() {
            key.name.clone_from(&self.name);
        }
        key
    }

    /// The wire form.
    #[must_use]
    pub fn to_proto(&self) -> flotilla_proto::HookResult {
        flotilla_proto::HookResult {
            key: Some(self.live_key().to_proto()),
            phase: self.phase.clone(),
            status: self.status.as_str().to_owned(),
            message: self.message.clone(),
            deleted: self.deleted,
        }
    }
}

/// A sync operation that has not finished, persisted with its application
/// in the agent's cache so a restarted agent resumes it: no completed phase
/// runs twice and no hook is created twice or forgotten.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOperation {
    /// A random id, on the hooks it creates (label `flotilla.dev/hook-run`).
    pub id: String,
    /// The bundle digest it syncs.
    pub digest: String,
    /// Unix milliseconds when it started.
    pub started_ms: i64,
    /// The hub command that started it, if any.
    #[serde(default)]
    pub command_id: String,
    /// Whether it prunes.
    #[serde(default)]
    pub prune: bool,
    /// How many steps (waves of phases) have been applied.
    #[serde(default)]
    pub applied: usize,
    /// Unix milliseconds since when it waits on the current step.
    #[serde(default)]
    pub waiting_since_ms: i64,
    /// Whether the objects no longer desired were pruned.
    #[serde(default)]
    pub pruned: bool,
    /// Set once the sync failed: why. Its SyncFail hooks then run.
    #[serde(default)]
    pub failure: Option<String>,
    /// Every hook it started, in order.
    #[serde(default)]
    pub hooks: Vec<HookRun>,
    /// The hub asked to terminate it (`app terminate-op`): the next pass
    /// ends it instead of continuing it.
    #[serde(default)]
    pub terminating: bool,
}

/// The hook label value of a run: `<operation id>-<phase>`.
#[must_use]
pub fn run_label(operation_id: &str, phase: &str) -> String {
    format!("{operation_id}-{phase}")
}

/// The message of a step waiting for hooks, as Argo CD words it:
/// `waiting for completion of hook batch/Job/name and 2 more hooks`.
#[must_use]
pub fn waiting_for_hooks(pending: &[&HookRun]) -> String {
    let Some(first) = pending.first() else {
        return String::new();
    };
    let key = first.live_key();
    let mut message = format!(
        "waiting for completion of hook {}/{}/{}",
        key.group, key.kind, key.name
    );
    if pending.len() > 1 {
        message.push_str(&format!(" and {} more hooks", pending.len() - 1));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(annotations: Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "migrate", "namespace": "web", "annotations": annotations}})
    }

    fn hook(sync: &[SyncPhase], deletion: &[DeletionPhase], wave: i64, p: &[DeletePolicy]) -> Role {
        Role::Hook(HookSpec {
            sync_phases: sync.to_vec(),
            deletion_phases: deletion.to_vec(),
            wave,
            policies: p.to_vec(),
            generate_name: false,
        })
    }

    use DeletePolicy::{BeforeHookCreation as Bhc, HookFailed as Hf, HookSucceeded as Hs};
    use DeletionPhase::{PostDelete, PreDelete};
    use SyncPhase::{PostSync, PreSync, Sync, SyncFail};

    #[test]
    fn roles_of_annotations() {
        let cases: Vec<(Value, Role)> = vec![
            (json!({}), Role::Resource),
            (
                json!({"argocd.argoproj.io/hook": "PreSync"}),
                hook(&[PreSync], &[], 0, &[Bhc]),
            ),
            (
                json!({"argocd.argoproj.io/hook": " PostSync, PreSync ,PreSync"}),
                hook(&[PreSync, PostSync], &[], 0, &[Bhc]),
            ),
            (
                json!({"argocd.argoproj.io/hook": "Sync"}),
                hook(&[Sync], &[], 0, &[Bhc]),
            ),
            (
                json!({"argocd.argoproj.io/hook": "SyncFail"}),
                hook(&[SyncFail], &[], 0, &[Bhc]),
            ),
            (
                json!({"argocd.argoproj.io/hook": "PostDelete"}),
                hook(&[], &[PostDelete], 0, &[Bhc]),
            ),
            (
                json!({"argocd.argoproj.io/hook": "PreDelete,PostSync"}),
                hook(&[PostSync], &[PreDelete], 0, &[Bhc]),
            ),
            (json!({"argocd.argoproj.io/hook": "Skip"}), Role::Skip),
            // Skip with another type is that type (gitops-engine's Skip()).
            (
                json!({"argocd.argoproj.io/hook": "Skip,PreSync"}),
                hook(&[PreSync], &[], 0, &[Bhc]),
            ),
            (
                json!({"argocd.argoproj.io/hook": "PostSync", "argocd.argoproj.io/sync-wave": "-2",
                       "argocd.argoproj.io/hook-delete-policy": "HookSucceeded,HookFailed"}),
                hook(&[PostSync], &[], -2, &[Hs, Hf]),
            ),
            // Argo CD's annotation wins over Helm's.
            (
                json!({"argocd.argoproj.io/hook": "Sync", "helm.sh/hook": "post-install"}),
                hook(&[Sync], &[], 0, &[Bhc]),
            ),
        ];
        for (annotations, want) in cases {
            assert_eq!(role(&job(annotations.clone())), Ok(want), "{annotations}");
        }
    }

    #[test]
    fn helm_hooks_map_as_argo_cd_maps_them() {
        let cases: Vec<(Value, Role)> = vec![
            (
                json!({"helm.sh/hook": "pre-install"}),
                hook(&[PreSync], &[], 0, &[Bhc]),
            ),
            (
                json!({"helm.sh/hook": "pre-upgrade"}),
                hook(&[PreSync], &[], 0, &[Bhc]),
            ),
            (
                json!({"helm.sh/hook": "pre-install,pre-upgrade"}),
                hook(&[PreSync], &[], 0, &[Bhc]),
            ),
            (
                json!({"helm.sh/hook": "post-install"}),
                hook(&[PostSync], &[], 0, &[Bhc]),
            ),
            (
                json!({"helm.sh/hook": "post-upgrade"}),
                hook(&[PostSync], &[], 0, &[Bhc]),
            ),
            (
                json!({"helm.sh/hook": "pre-delete"}),
                hook(&[], &[PreDelete], 0, &[Bhc]),
            ),
            (
                json!({"helm.sh/hook": "post-delete"}),
                hook(&[], &[PostDelete], 0, &[Bhc]),
            ),
            (json!({"helm.sh/hook": "crd-install"}), Role::Resource),
            (
                json!({"helm.sh/hook": "test"}),
                Role::Unsupported("Helm hook test".into()),
            ),
            (
                json!({"helm.sh/hook": "test-success,pre-rollback"}),
                Role::Unsupported("Helm hook test-success,pre-rollback".into()),
            ),
            // A supported type among unsupported ones makes a hook.
            (
                json!({"helm.sh/hook": "post-install,test"}),
                hook(&[PostSync], &[], 0, &[Bhc]),
            ),
            (
                json!({"helm.sh/hook": "pre-install", "helm.sh/hook-weight": "-5",
                       "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}),
                hook(&[PreSync], &[], -5, &[Bhc, Hs]),
            ),
            // The sync wave wins over the hook weight.
            (
                json!({"helm.sh/hook": "pre-install", "helm.sh/hook-weight": "-5",
                       "argocd.argoproj.io/sync-wave": "3"}),
                hook(&[PreSync], &[], 3, &[Bhc]),
            ),
            (
                json!({"helm.sh/hook": "post-upgrade", "helm.sh/hook-delete-policy": "hook-failed",
                       "argocd.argoproj.io/hook-delete-policy": "HookSucceeded"}),
                hook(&[PostSync], &[], 0, &[Hs, Hf]),
            ),
        ];
        for (annotations, want) in cases {
            assert_eq!(role(&job(annotations.clone())), Ok(want), "{annotations}");
        }
    }

    #[test]
    fn bad_annotations_are_errors_naming_the_object() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"argocd.argoproj.io/hook": "Presync"}),
                "batch/Job web/migrate: unknown hook type \"Presync\" in argocd.argoproj.io/hook",
            ),
            (
                json!({"argocd.argoproj.io/hook": " , "}),
                "batch/Job web/migrate: argocd.argoproj.io/hook is empty",
            ),
            (
                json!({"argocd.argoproj.io/hook": "PreSync",
                       "argocd.argoproj.io/hook-delete-policy": "HookSucceed"}),
                "unknown hook delete policy \"HookSucceed\" in argocd.argoproj.io/hook-delete-policy",
            ),
            (
                json!({"helm.sh/hook": "pre-install", "helm.sh/hook-delete-policy": "always"}),
                "unknown hook delete policy \"always\" in helm.sh/hook-delete-policy",
            ),
        ];
        for (annotations, want) in cases {
            let err = role(&job(annotations.clone()))
                .expect_err("an error")
                .to_string();
            assert!(err.contains(want), "{annotations}: {err}");
        }
    }

    #[test]
    fn generate_name_only_for_hooks() {
        let generated = |annotations: Value| {
            json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"generateName": "migrate-", "namespace": "web", "annotations": annotations}})
        };
        let Ok(Role::Hook(h)) = role(&generated(json!({"argocd.argoproj.io/hook": "PreSync"})))
        else {
            panic!("a hook");
        };
        assert!(h.generate_name);
        let err = role(&generated(json!({})))
            .expect_err("refused")
            .to_string();
        assert_eq!(
            err,
            "batch/Job web/migrate-: from migrate-: cannot use generate name with apply (metadata.generateName is only supported for hooks)"
        );
        assert_eq!(
            role(&generated(json!({"argocd.argoproj.io/hook": "Skip"}))),
            Ok(Role::Skip)
        );
        // A name wins: the object is an ordinary resource.
        let named = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "generateName": "c-"}});
        assert_eq!(role(&named), Ok(Role::Resource));
        assert_eq!(template_name(&generated(json!({}))), Some("migrate-"));
    }

    #[test]
    fn delete_policies_decide_by_the_operation_outcome() {
        let cases: &[(&[DeletePolicy], bool, bool)] = &[
            (&[Bhc], true, false),
            (&[Bhc], false, false),
            (&[Hs], true, true),
            (&[Hs], false, false),
            (&[Hf], true, false),
            (&[Hf], false, true),
            (&[Hs, Hf], true, true),
            (&[Hs, Hf], false, true),
            (&[Bhc, Hs], true, true),
        ];
        for (policies, succeeded, want) in cases {
            assert_eq!(
                deleted_after(policies, *succeeded),
                *want,
                "{policies:?} {succeeded}"
            );
        }
    }

    #[test]
    fn waves_fall_back_to_helm_weights() {
        let obj = |a: Value| json!({"metadata": {"annotations": a}});
        assert_eq!(wave(&obj(json!({}))), 0);
        assert_eq!(
            wave(&obj(json!({"argocd.argoproj.io/sync-wave": "-1"}))),
            -1
        );
        assert_eq!(wave(&obj(json!({"helm.sh/hook-weight": "7"}))), 7);
        assert_eq!(
            wave(&obj(
                json!({"argocd.argoproj.io/sync-wave": "x", "helm.sh/hook-weight": "7"})
            )),
            7
        );
    }

    fn healthy() -> Health {
        Health {
            status: HealthStatus::Healthy,
            message: String::new(),
        }
    }

    #[test]
    fn live_hooks_finish_by_kind() {
        let progressing = Health {
            status: HealthStatus::Progressing,
            message: "waiting".into(),
        };
        let degraded = Health {
            status: HealthStatus::Degraded,
            message: "broken".into(),
        };
        let cases: Vec<(Value, Health, HookStatus, &str)> = vec![
            (
                json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"active": 1}}),
                healthy(),
                HookStatus::Running,
                "job is running",
            ),
            (
                json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "True", "message": "Reached expected number of succeeded pods"}]}}),
                progressing.clone(),
                HookStatus::Succeeded,
                "Reached expected number of succeeded pods",
            ),
            (
                json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": [
                    {"type": "Failed", "status": "True", "message": "Job has reached the specified backoff limit"}]}}),
                healthy(),
                HookStatus::Failed,
                "Job has reached the specified backoff limit",
            ),
            (
                json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": [
                    {"type": "Failed", "status": "False"}]}}),
                healthy(),
                HookStatus::Running,
                "job is running",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "spec": {"restartPolicy": "Never"}, "status": {"phase": "Running"}}),
                healthy(),
                HookStatus::Running,
                "pod is Running",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "spec": {"restartPolicy": "OnFailure"}, "status": {"phase": "Succeeded"}}),
                progressing.clone(),
                HookStatus::Succeeded,
                "",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "spec": {"restartPolicy": "Never"},
                       "status": {"phase": "Failed", "reason": "Error"}}),
                healthy(),
                HookStatus::Failed,
                "Error",
            ),
            // A Pod that restarts forever finishes when it is healthy.
            (
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"restartPolicy": "Always"}, "status": {"phase": "Running"}}),
                healthy(),
                HookStatus::Succeeded,
                "p created",
            ),
            (
                json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "status": {"phase": "Running"}}),
                healthy(),
                HookStatus::Running,
                "workflow is Running",
            ),
            (
                json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "status": {"phase": "Error", "message": "oops"}}),
                healthy(),
                HookStatus::Failed,
                "oops",
            ),
            (
                json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "status": {"phase": "Succeeded"}}),
                degraded.clone(),
                HookStatus::Succeeded,
                "",
            ),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
                healthy(),
                HookStatus::Succeeded,
                "c created",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
                progressing,
                HookStatus::Running,
                "waiting",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
                degraded,
                HookStatus::Failed,
                "broken",
            ),
        ];
        for (live, health, status, message) in cases {
            assert_eq!(
                live_status(&live, &health),
                (status, message.to_owned()),
                "{live}"
            );
        }
    }

    #[test]
    fn hooks_are_kept_from_a_bundle() {
        let manifests: Vec<String> = [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}),
            job(json!({"argocd.argoproj.io/hook": "PostDelete"})),
            job(json!({"helm.sh/hook": "pre-delete"})),
            job(json!({"argocd.argoproj.io/hook": "PreSync"})),
        ]
        .iter()
        .map(Value::to_string)
        .collect();
        let kept = hook_manifests(&manifests);
        assert_eq!(kept, manifests[1..].to_vec());
    }
}
