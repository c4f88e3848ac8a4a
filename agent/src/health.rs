//! Health assessment per kind, compatible with Argo CD's statuses and rules.
//!
//! Every rule is a pure function from a live object (as JSON) to a
//! [`Health`]. An object that does not exist is [`HealthStatus::Missing`];
//! an object of a kind without a rule is Healthy, unless it carries `Ready`
//! or `Available` conditions, which then decide.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    fn new(status: HealthStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn healthy() -> Self {
        Self::new(HealthStatus::Healthy, "")
    }

    /// The health of an object that does not exist.
    #[must_use]
    pub fn missing() -> Self {
        Self::new(HealthStatus::Missing, "")
    }
}

/// Assesses a live object's health with the rule for its kind.
#[must_use]
pub fn assess(obj: &Value) -> Health {
    let group = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(|v| v.rsplit_once('/').map_or("", |(g, _)| g))
        .unwrap_or("");
    let kind = str_at(obj, &["kind"]).unwrap_or("");
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Health::new(HealthStatus::Progressing, "Pending deletion");
    }
    match (group, kind) {
        ("apps" | "extensions", "Deployment") => deployment(obj),
        ("apps", "StatefulSet") => stateful_set(obj),
        ("apps" | "extensions", "DaemonSet") => daemon_set(obj),
        ("apps" | "extensions", "ReplicaSet") => replica_set(obj),
        ("", "Pod") => pod(obj),
        ("", "Service") => service(obj),
        ("", "PersistentVolumeClaim") => pvc(obj),
        ("networking.k8s.io" | "extensions", "Ingress") => ingress(obj),
        ("batch", "Job") => job(obj),
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(obj),
        ("apiregistration.k8s.io", "APIService") => api_service(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj),
        _ => generic(obj),
    }
}

/// The application's health: the worst of its objects' health.
#[must_use]
pub fn aggregate<'a>(items: impl IntoIterator<Item = &'a Health>) -> HealthStatus {
    items
        .into_iter()
        .fold(HealthStatus::Healthy, |acc, h| acc.worst(h.status))
}

fn str_at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(obj, path).and_then(Value::as_str)
}

fn at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| v.get(k))
}

fn int_at(obj: &Value, path: &[&str]) -> Option<i64> {
    at(obj, path).and_then(Value::as_i64)
}

fn bool_at(obj: &Value, path: &[&str]) -> bool {
    at(obj, path).and_then(Value::as_bool).unwrap_or(false)
}

fn name_of(obj: &Value) -> &str {
    str_at(obj, &["metadata", "name"]).unwrap_or("")
}

/// A condition from `status.conditions` by type.
fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    at(obj, &["status", "conditions"])?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

fn cond_str<'a>(c: &'a Value, field: &str) -> &'a str {
    c.get(field).and_then(Value::as_str).unwrap_or("")
}

/// Whether the controller has seen the latest spec.
fn generation_observed(obj: &Value) -> bool {
    let generation = int_at(obj, &["metadata", "generation"]).unwrap_or(0);
    let observed = int_at(obj, &["status", "observedGeneration"]).unwrap_or(0);
    generation <= observed
}

fn deployment(obj: &Value) -> Health {
    use HealthStatus::{Degraded, Healthy, Progressing, Suspended};
    if bool_at(obj, &["spec", "paused"]) {
        return Health::new(Suspended, "Deployment is paused");
    }
    if !generation_observed(obj) {
        return Health::new(
            Progressing,
            "Waiting for rollout to finish: observed deployment generation less than desired generation",
        );
    }
    if let Some(c) = condition(obj, "Progressing")
        && cond_str(c, "reason") == "ProgressDeadlineExceeded"
    {
        let message = match cond_str(c, "message") {
            "" => format!(
                "Deployment {:?} exceeded its progress deadline",
                name_of(obj)
            ),
            m => m.to_owned(),
        };
        return Health::new(Degraded, message);
    }
    let replicas = int_at(obj, &["spec", "replicas"]).unwrap_or(1);
    let updated = int_at(obj, &["status", "updatedReplicas"]).unwrap_or(0);
    let total = int_at(obj, &["status", "replicas"]).unwrap_or(0);
    let available = int_at(obj, &["status", "availableReplicas"]).unwrap_or(0);
    if updated < replicas {
        return Health::new(
            Progressing,
            format!(
                "Waiting for rollout to finish: {updated} out of {replicas} new replicas have been updated..."
            ),
        );
    }
    if total > updated {
        return Health::new(
            Progressing,
            format!(
                "Waiting for rollout to finish: {} old replicas are pending termination...",
                total - updated
            ),
        );
    }
    if available < updated {
        return Health::new(
            Progressing,
            format!(
                "Waiting for rollout to finish: {available} of {updated} updated replicas are available..."
            ),
        );
    }
    Health::new(Healthy, "")
}

fn stateful_set(obj: &Value) -> Health {
    use HealthStatus::{Healthy, Progressing};
    let observed = int_at(obj, &["status", "observedGeneration"]).unwrap_or(0);
    if observed == 0 || !generation_observed(obj) {
        return Health::new(
            Progressing,
            "Waiting for statefulset spec update to be observed...",
        );
    }
    let replicas = int_at(obj, &["spec", "replicas"]).unwrap_or(1);
    let ready = int_at(obj, &["status", "readyReplicas"]).unwrap_or(0);
    let updated = int_at(obj, &["status", "updatedReplicas"]).unwrap_or(0);
    let strategy = str_at(obj, &["spec", "updateStrategy", "type"]).unwrap_or("RollingUpdate");
    if strategy == "OnDelete" {
        return Health::new(Healthy, format!("statefulset has {ready} ready pods"));
    }
    if let Some(partition) = int_at(
        obj,
        &["spec", "updateStrategy", "rollingUpdate", "partition"],
    ) && partition > 0
    {
        if updated < replicas - partition {
            return Health::new(
                Progressing,
                format!(
                    "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                    replicas - partition
                ),
            );
        }
        return Health::new(
            Healthy,
            format!("partitioned roll out complete: {updated} new pods have been updated..."),
        );
    }
    if ready < replicas {
        return Health::new(
            Progressing,
            format!("Waiting for {} pods to be ready...", replicas - ready),
        );
    }
    if updated < replicas {
        return Health::new(
            Progressing,
            format!(
                "Waiting for rolling update to complete: {updated} out of {replicas} pods updated..."
            ),
        );
    }
    let current = str_at(obj, &["status", "currentRevision"]).unwrap_or("");
    let update = str_at(obj, &["status", "updateRevision"]).unwrap_or("");
    if current != update {
        return Health::new(
            Progressing,
            format!(
                "waiting for statefulset rolling update to complete {updated} pods at revision {update}..."
            ),
        );
    }
    Health::new(
        Healthy,
        format!("statefulset rolling update complete {ready} pods at revision {current}..."),
    )
}

fn daemon_set(obj: &Value) -> Health {
    use HealthStatus::{Healthy, Progressing};
    if !generation_observed(obj) {
        return Health::new(
            Progressing,
            "Waiting for rollout to finish: observed daemon set generation less than desired generation",
        );
    }
    let desired = int_at(obj, &["status", "desiredNumberScheduled"]).unwrap_or(0);
    let updated = int_at(obj, &["status", "updatedNumberScheduled"]).unwrap_or(0);
    let available = int_at(obj, &["status", "numberAvailable"]).unwrap_or(0);
    let name = name_of(obj);
    if str_at(obj, &["spec", "updateStrategy", "type"]) == Some("OnDelete") {
        return Health::new(
            Healthy,
            format!("daemon set {updated} out of {desired} new pods have been updated"),
        );
    }
    if updated < desired {
        return Health::new(
            Progressing,
            format!(
                "Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."
            ),
        );
    }
    if available < desired {
        return Health::new(
            Progressing,
            format!(
                "Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available..."
            ),
        );
    }
    Health::healthy()
}

fn replica_set(obj: &Value) -> Health {
    use HealthStatus::{Degraded, Progressing};
    if !generation_observed(obj) {
        return Health::new(
            Progressing,
            "Waiting for rollout to finish: observed replica set generation less than desired generation",
        );
    }
    if let Some(c) = condition(obj, "ReplicaFailure")
        && cond_str(c, "status") == "True"
    {
        return Health::new(Degraded, cond_str(c, "message"));
    }
    let replicas = int_at(obj, &["spec", "replicas"]).unwrap_or(1);
    let available = int_at(obj, &["status", "availableReplicas"]).unwrap_or(0);
    if available < replicas {
        return Health::new(
            Progressing,
            format!(
                "Waiting for rollout to finish: {available} out of {replicas} new replicas are available..."
            ),
        );
    }
    Health::healthy()
}

/// Container waiting reasons that will not resolve without a change.
const POD_ERROR_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

fn pod(obj: &Value) -> Health {
    use HealthStatus::{Degraded, Healthy, Progressing, Unknown};
    let message = str_at(obj, &["status", "message"]).unwrap_or("").to_owned();
    let waiting_error = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|f| at(obj, &["status", f]).and_then(Value::as_array))
        .flatten()
        .filter_map(|s| at(s, &["state", "waiting"]))
        .find(|w| {
            w.get("reason")
                .and_then(Value::as_str)
                .is_some_and(|r| POD_ERROR_REASONS.contains(&r) || r.starts_with("Err"))
        })
        .map(|w| {
            let reason = cond_str(w, "reason");
            match cond_str(w, "message") {
                "" => reason.to_owned(),
                m => format!("{reason}: {m}"),
            }
        });
    match str_at(obj, &["status", "phase"]).unwrap_or("Pending") {
        "Pending" => match waiting_error {
            Some(m) => Health::new(Degraded, m),
            None => Health::new(Progressing, message),
        },
        "Succeeded" => Health::new(Healthy, message),
        "Failed" => Health::new(Degraded, message),
        "Running" => {
            let restart = str_at(obj, &["spec", "restartPolicy"]).unwrap_or("Always");
            if restart != "Always" {
                return Health::new(Progressing, message);
            }
            if let Some(m) = waiting_error {
                return Health::new(Degraded, m);
            }
            match condition(obj, "Ready") {
                Some(c) if cond_str(c, "status") == "True" => Health::new(Healthy, message),
                _ => Health::new(Progressing, message),
            }
        }
        _ => Health::new(Unknown, message),
    }
}

fn has_lb_ingress(obj: &Value) -> bool {
    at(obj, &["status", "loadBalancer", "ingress"])
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn service(obj: &Value) -> Health {
    if str_at(obj, &["spec", "type"]) == Some("LoadBalancer") && !has_lb_ingress(obj) {
        return Health::new(
            HealthStatus::Progressing,
            "Waiting for a load balancer address",
        );
    }
    Health::healthy()
}

fn ingress(obj: &Value) -> Health {
    if has_lb_ingress(obj) {
        Health::healthy()
    } else {
        Health::new(
            HealthStatus::Progressing,
            "Waiting for a load balancer address",
        )
    }
}

fn pvc(obj: &Value) -> Health {
    use HealthStatus::{Degraded, Healthy, Progressing, Unknown};
    match str_at(obj, &["status", "phase"]) {
        Some("Bound") => Health::new(Healthy, ""),
        Some("Pending") => Health::new(Progressing, ""),
        Some("Lost") => Health::new(Degraded, ""),
        _ => Health::new(Unknown, ""),
    }
}

fn job(obj: &Value) -> Health {
    use HealthStatus::{Degraded, Healthy, Progressing, Suspended};
    for ty in ["Failed", "FailureTarget"] {
        if let Some(c) = condition(obj, ty)
            && cond_str(c, "status") == "True"
        {
            return Health::new(Degraded, cond_str(c, "message"));
        }
    }
    if let Some(c) = condition(obj, "Complete")
        && cond_str(c, "status") == "True"
    {
        return Health::new(Healthy, cond_str(c, "message"));
    }
    if bool_at(obj, &["spec", "suspend"]) {
        return Health::new(Suspended, "Job is suspended");
    }
    Health::new(Progressing, "Job is running")
}

fn hpa(obj: &Value) -> Health {
    use HealthStatus::{Degraded, Healthy, Progressing};
    let Some(conditions) = at(obj, &["status", "conditions"]).and_then(Value::as_array) else {
        return Health::new(Progressing, "Waiting to Autoscale");
    };
    for c in conditions {
        let failing = cond_str(c, "status") == "False"
            && matches!(cond_str(c, "type"), "AbleToScale" | "ScalingActive")
            && cond_str(c, "reason").starts_with("Failed");
        if failing {
            return Health::new(Degraded, cond_str(c, "message"));
        }
    }
    match condition(obj, "AbleToScale") {
        Some(c) if cond_str(c, "status") == "True" => Health::new(Healthy, cond_str(c, "message")),
        _ => Health::new(Progressing, "Waiting to Autoscale"),
    }
}

fn api_service(obj: &Value) -> Health {
    match condition(obj, "Available") {
        Some(c) if cond_str(c, "status") == "True" => {
            Health::new(HealthStatus::Healthy, cond_str(c, "message"))
        }
        Some(c) => Health::new(HealthStatus::Progressing, cond_str(c, "message")),
        None => Health::new(HealthStatus::Progressing, "Waiting to be processed"),
    }
}

fn crd(obj: &Value) -> Health {
    match condition(obj, "Established") {
        Some(c) if cond_str(c, "status") == "True" => Health::healthy(),
        Some(c) => Health::new(HealthStatus::Progressing, cond_str(c, "message")),
        None => Health::new(HealthStatus::Progressing, "Waiting to be established"),
    }
}

/// Objects without a kind rule: `Ready` or `Available` conditions decide
/// when present (False is Degraded, Unknown is Progressing); otherwise an
/// existing object is Healthy.
fn generic(obj: &Value) -> Health {
    let Some(c) = condition(obj, "Ready").or_else(|| condition(obj, "Available")) else {
        return Health::healthy();
    };
    let message = cond_str(c, "message");
    match cond_str(c, "status") {
        "True" => Health::new(HealthStatus::Healthy, message),
        "False" => Health::new(HealthStatus::Degraded, message),
        _ => Health::new(HealthStatus::Progressing, message),
    }
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
    fn aggregate_of_nothing_is_healthy() {
        assert_eq!(aggregate([]), HealthStatus::Healthy);
        let items = [Health::healthy(), Health::missing()];
        assert_eq!(aggregate(&items), HealthStatus::Missing);
    }

    #[test]
    fn deployment_without_status_is_progressing() {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "a", "generation": 1}, "spec": {"replicas": 1}});
        assert_eq!(assess(&obj).status, HealthStatus::Progressing);
    }
}
