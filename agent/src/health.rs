//! Health assessment per kind, with Argo CD's statuses, rules and messages.
//!
//! The rules are gitops-engine's `pkg/health` (one module per kind here,
//! as there) plus the few Argo CD ships as built-in Lua scripts for core
//! Kubernetes kinds (CustomResourceDefinition, CronJob,
//! PodDisruptionBudget). Every rule is a pure function from a live object
//! (as JSON) to a [`Health`]:
//!
//! - an object with a `deletionTimestamp` is Progressing, "Pending
//!   deletion" (unless it holds Argo CD's hook finalizer);
//! - a kind with a rule is assessed by it; an object the rule cannot read
//!   (a field of the wrong type, a version the rule does not know) is
//!   Unknown with the reason, as in gitops-engine;
//! - a kind without a rule has no health in Argo CD and does not count
//!   towards its application's; here it is Healthy with an empty message,
//!   which aggregates the same way.
//!
//! [`aggregate`] is Argo CD's application health: the worst of the
//! objects' health, where missing objects count only when every object is
//! missing.

mod apiservice;
mod argo;
mod crd;
mod cronjob;
mod daemonset;
mod deployment;
mod hpa;
mod ingress;
mod job;
mod pdb;
mod pod;
mod pvc;
mod replicaset;
mod service;
mod statefulset;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Annotation that leaves an object out of its application's health
/// (Argo CD's `AnnotationIgnoreHealthCheck`; only the value `"true"`).
pub const IGNORE_HEALTHCHECK: &str = "argocd.argoproj.io/ignore-healthcheck";
/// Annotation that makes a running Pod with `restartPolicy` OnFailure or
/// Never assessed like a long-running one (not honoured on hook Pods).
pub const IGNORE_RESTART_POLICY: &str = "argocd.argoproj.io/ignore-restart-policy";
/// Argo CD's resource hook annotation.
pub const HOOK: &str = "argocd.argoproj.io/hook";
/// Helm's hook annotation, which Argo CD also reads.
pub const HELM_HOOK: &str = "helm.sh/hook";
/// Finalizer Argo CD puts on hooks; a deleted object holding it is still
/// assessed by its rule (a hook's outcome is read before it goes).
pub const HOOK_FINALIZER: &str = "argocd.argoproj.io/hook-finalizer";

/// Argo CD-compatible health status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    /// The object is present and doing its job.
    Healthy,
    /// The object is paused or suspended on purpose.
    Suspended,
    /// The object is converging.
    Progressing,
    /// The object does not exist.
    Missing,
    /// The object failed, or cannot converge without a change.
    Degraded,
    /// The health could not be assessed.
    Unknown,
}

impl HealthStatus {
    /// Position in Argo CD's health order: a larger rank is worse.
    fn rank(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::Suspended => 1,
            Self::Progressing => 2,
            Self::Missing => 3,
            Self::Degraded => 4,
            Self::Unknown => 5,
        }
    }

    /// Whether `other` is worse than `self` (Argo CD's `IsWorse`).
    #[must_use]
    pub fn is_worse(self, other: Self) -> bool {
        other.rank() > self.rank()
    }

    /// The worse of two statuses.
    #[must_use]
    pub fn worst(self, other: Self) -> Self {
        if self.is_worse(other) { other } else { self }
    }

    /// The name Argo CD uses.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "Healthy",
            Self::Suspended => "Suspended",
            Self::Progressing => "Progressing",
            Self::Missing => "Missing",
            Self::Degraded => "Degraded",
            Self::Unknown => "Unknown",
        }
    }

    /// Parses the name Argo CD uses.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Healthy" => Self::Healthy,
            "Suspended" => Self::Suspended,
            "Progressing" => Self::Progressing,
            "Missing" => Self::Missing,
            "Degraded" => Self::Degraded,
            "Unknown" => Self::Unknown,
            _ => return None,
        })
    }

    /// The wire value.
    #[must_use]
    pub fn to_proto(self) -> flotilla_proto::HealthStatus {
        use flotilla_proto::HealthStatus as P;
        match self {
            Self::Healthy => P::Healthy,
            Self::Suspended => P::Suspended,
            Self::Progressing => P::Progressing,
            Self::Missing => P::Missing,
            Self::Degraded => P::Degraded,
            Self::Unknown => P::Unknown,
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A health status with a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// Why, when it is not obvious; empty otherwise.
    pub message: String,
}

impl Health {
    /// A status with a message.
    #[must_use]
    pub fn new(status: HealthStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// Healthy, without a message.
    #[must_use]
    pub fn healthy() -> Self {
        Self::new(HealthStatus::Healthy, "")
    }

    /// The health of an object that does not exist.
    #[must_use]
    pub fn missing() -> Self {
        Self::new(HealthStatus::Missing, "")
    }
}

/// Why a rule could not assess an object: the object is then Unknown with
/// this message (gitops-engine's wording).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A field the rule reads has the wrong type.
    #[error("failed to convert unstructured {kind} to typed: {error}")]
    Convert {
        /// The kind the rule is for.
        kind: &'static str,
        /// What did not fit.
        error: serde_json::Error,
    },
    /// The rule knows the kind's group but not this version.
    #[error("unsupported {kind} GVK: {gvk}")]
    UnsupportedVersion {
        /// The short kind name the rule uses in its messages.
        kind: &'static str,
        /// The object's group/version and kind, as Go prints them.
        gvk: String,
    },
    /// `autoscaling/v1` HPA conditions annotation that is not a JSON list
    /// of conditions.
    #[error("failed to convert conditions annotation to typed: {error}")]
    ConditionsAnnotation {
        /// What did not parse.
        error: serde_json::Error,
    },
}

/// An object's group, version and kind, read from `apiVersion` and `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gvk<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
}

impl<'a> Gvk<'a> {
    fn of(obj: &'a Value) -> Self {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Self {
            group,
            version,
            kind: obj.get("kind").and_then(Value::as_str).unwrap_or(""),
        }
    }

    /// The error for a version of a known kind that the rule does not read.
    fn unsupported(self, kind: &'static str) -> HealthError {
        HealthError::UnsupportedVersion {
            kind,
            gvk: self.to_string(),
        }
    }
}

/// Go's `GroupVersionKind.String()`: `apps/v1, Kind=Deployment`,
/// `/v1, Kind=Pod`.
impl std::fmt::Display for Gvk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}, Kind={}", self.group, self.version, self.kind)
    }
}

type Rule = fn(&Value, Gvk<'_>) -> Result<Health, HealthError>;

/// The built-in rule for a group and kind (any version: a rule that reads
/// only some versions refuses the others itself, as gitops-engine does).
fn rule_for(gvk: Gvk<'_>) -> Option<Rule> {
    Some(match (gvk.group, gvk.kind) {
        ("apps", "Deployment") => deployment::health,
        ("apps", "StatefulSet") => statefulset::health,
        ("apps", "ReplicaSet") => replicaset::health,
        ("apps", "DaemonSet") => daemonset::health,
        ("extensions" | "networking.k8s.io", "Ingress") => ingress::health,
        ("argoproj.io", "Workflow") => argo::workflow_health,
        ("apiregistration.k8s.io", "APIService") => apiservice::health,
        ("", "Service") => service::health,
        ("", "PersistentVolumeClaim") => pvc::health,
        ("", "Pod") => pod::health,
        ("batch", "Job") => job::health,
        ("autoscaling", "HorizontalPodAutoscaler") => hpa::health,
        // Argo CD's built-in Lua health checks for core kinds.
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd::health,
        ("batch", "CronJob") => cronjob::health,
        ("policy", "PodDisruptionBudget") => pdb::health,
        _ => return None,
    })
}

/// The built-in rule's health of a live object, or `None` when no rule
/// covers its kind (Argo CD then shows no health). Does not look at
/// `deletionTimestamp`; see [`assess`].
#[must_use]
pub fn builtin(obj: &Value) -> Option<Health> {
    let gvk = Gvk::of(obj);
    let rule = rule_for(gvk)?;
    Some(rule(obj, gvk).unwrap_or_else(|e| Health::new(HealthStatus::Unknown, e.to_string())))
}

/// Progressing "Pending deletion" for an object being deleted, unless it
/// holds the hook finalizer (Argo CD then reads the hook's outcome).
#[must_use]
pub fn pending_deletion(obj: &Value) -> Option<Health> {
    let deleting = obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let hook_finalizer = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|f| f.as_str() == Some(HOOK_FINALIZER)));
    (deleting && !hook_finalizer)
        .then(|| Health::new(HealthStatus::Progressing, "Pending deletion"))
}

/// Assesses a live object's health with the rule for its kind.
#[must_use]
pub fn assess(obj: &Value) -> Health {
    pending_deletion(obj)
        .or_else(|| builtin(obj))
        .unwrap_or_else(Health::healthy)
}

/// Whether the object asks to be left out of its application's health
/// (`argocd.argoproj.io/ignore-healthcheck: "true"`).
#[must_use]
pub fn ignores_health_check(obj: &Value) -> bool {
    annotation(obj, IGNORE_HEALTHCHECK) == Some("true")
}

/// Whether the object is a resource hook, as gitops-engine's `hook.IsHook`
/// decides: an `argocd.argoproj.io/hook` annotation other than `Skip`
/// alone, or a Helm hook annotation other than `crd-install`.
#[must_use]
pub fn is_hook(obj: &Value) -> bool {
    if let Some(value) = annotation(obj, HOOK) {
        let types = hook_types(value);
        return !(types.len() == 1 && types[0] == "Skip");
    }
    annotation(obj, HELM_HOOK).is_some_and(|v| v != "crd-install")
}

/// The known hook types of a comma-separated hook annotation, deduplicated.
fn hook_types(value: &str) -> Vec<&str> {
    const TYPES: &[&str] = &[
        "PreSync",
        "Sync",
        "PostSync",
        "SyncFail",
        "PostDelete",
        "Skip",
    ];
    let mut out: Vec<&str> = Vec::new();
    for t in value.split(',').map(str::trim) {
        if TYPES.contains(&t) && !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")?.get(key)?.as_str()
}

/// The application's health, as Argo CD aggregates it: the worst of its
/// objects' health, where a missing object does not count (the sync status
/// already says it is missing) unless every object is missing. An
/// application without objects is Healthy.
#[must_use]
pub fn aggregate<'a>(items: impl IntoIterator<Item = &'a Health>) -> HealthStatus {
    let mut any = false;
    let mut present = false;
    let mut worst = HealthStatus::Healthy;
    for h in items {
        any = true;
        if h.status == HealthStatus::Missing {
            continue;
        }
        present = true;
        worst = worst.worst(h.status);
    }
    if any && !present {
        HealthStatus::Missing
    } else {
        worst
    }
}

/// Reads an object into a rule's typed view of it (gitops-engine converts
/// unstructured objects to typed ones the same way: unknown fields are
/// ignored, wrong types are an error).
fn typed<T: DeserializeOwned>(obj: &Value, kind: &'static str) -> Result<T, HealthError> {
    T::deserialize(obj).map_err(|error| HealthError::Convert { kind, error })
}

/// The metadata the rules read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Meta {
    name: String,
    generation: i64,
    annotations: Option<BTreeMap<String, String>>,
}

impl Meta {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// A status condition, of any kind's status.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct Condition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    reason: String,
    message: String,
}

fn find<'a>(conditions: &'a [Condition], ty: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_follows_argo() {
        use HealthStatus::*;
        let order = [Healthy, Suspended, Progressing, Missing, Degraded, Unknown];
        for pair in order.windows(2) {
            assert!(pair[0].is_worse(pair[1]));
            assert!(!pair[1].is_worse(pair[0]));
        }
        assert_eq!(Healthy.worst(Degraded), Degraded);
        assert_eq!(Unknown.worst(Degraded), Unknown);
    }

    #[test]
    fn missing_objects_count_only_when_all_are_missing() {
        use HealthStatus::*;
        assert_eq!(aggregate([]), Healthy);
        let h = |s| Health::new(s, "");
        assert_eq!(aggregate(&[h(Healthy), h(Missing)]), Healthy);
        assert_eq!(aggregate(&[h(Progressing), h(Missing)]), Progressing);
        assert_eq!(aggregate(&[h(Missing), h(Missing)]), Missing);
        assert_eq!(
            aggregate(&[h(Missing), h(Degraded), h(Suspended)]),
            Degraded
        );
    }

    #[test]
    fn kinds_without_a_rule_have_no_builtin_health() {
        for obj in [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                "status": {"health": {"status": "Degraded"}}}),
            // Argo CD has no generic condition rule.
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            // Only apps/* Deployments have a rule.
            json!({"apiVersion": "extensions/v1beta1", "kind": "Deployment"}),
        ] {
            assert_eq!(builtin(&obj), None, "{obj}");
            assert_eq!(assess(&obj), Health::healthy(), "{obj}");
        }
    }

    #[test]
    fn deletion_is_pending_unless_the_hook_finalizer_holds_it() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"restartPolicy": "Never"}, "status": {"phase": "Succeeded"}});
        assert_eq!(
            assess(&pod),
            Health::new(HealthStatus::Progressing, "Pending deletion")
        );
        pod["metadata"]["finalizers"] = json!([HOOK_FINALIZER]);
        assert_eq!(assess(&pod).status, HealthStatus::Healthy);
    }

    #[test]
    fn hooks_are_recognised_as_gitops_engine_does() {
        let with = |annotations: Value| json!({"metadata": {"annotations": annotations}});
        assert!(is_hook(&with(json!({HOOK: "PreSync"}))));
        assert!(is_hook(&with(json!({HOOK: "PreSync,Skip"}))));
        assert!(is_hook(&with(json!({HOOK: "bogus"}))));
        assert!(!is_hook(&with(json!({HOOK: "Skip"}))));
        assert!(!is_hook(&with(json!({HOOK: " Skip , Skip"}))));
        assert!(is_hook(&with(json!({HELM_HOOK: "pre-install"}))));
        assert!(!is_hook(&with(json!({HELM_HOOK: "crd-install"}))));
        assert!(!is_hook(&json!({"metadata": {}})));
    }

    #[test]
    fn gvk_prints_as_go_does() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod"});
        assert_eq!(Gvk::of(&obj).to_string(), "/v1, Kind=Pod");
        let obj = json!({"apiVersion": "apps/v1beta2", "kind": "Deployment"});
        assert_eq!(Gvk::of(&obj).to_string(), "apps/v1beta2, Kind=Deployment");
    }

    #[test]
    fn a_field_of_the_wrong_type_is_unknown_with_the_reason() {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d"}, "spec": {"replicas": "two"}});
        let h = assess(&obj);
        assert_eq!(h.status, HealthStatus::Unknown);
        assert!(
            h.message
                .starts_with("failed to convert unstructured Deployment to typed: "),
            "{}",
            h.message
        );
    }
}
