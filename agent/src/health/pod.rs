//! `v1` Pod.
//!
//! Long-running Pods (`restartPolicy: Always`, or any policy with
//! `argocd.argoproj.io/ignore-restart-policy: "true"` on a Pod that is not
//! a hook) are Degraded while a container waits with an error reason
//! (`Err…`, `…Error`, `…BackOff`: ErrImagePull, ImagePullBackOff,
//! CrashLoopBackOff, CreateContainerConfigError, …), with the containers'
//! messages. Otherwise the phase decides; a Running Pod with
//! `restartPolicy` OnFailure or Never is Progressing (it is expected to
//! finish; hooks rely on it).

use serde::Deserialize;
use serde_json::Value;

use super::{Condition, Gvk, Health, HealthError, HealthStatus, IGNORE_RESTART_POLICY, Meta, find};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pod {
    metadata: Meta,
    spec: Spec,
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    restart_policy: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    phase: String,
    message: String,
    conditions: Vec<Condition>,
    init_container_statuses: Vec<ContainerStatus>,
    container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    state: ContainerState,
    last_state: ContainerState,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContainerState {
    waiting: Option<Waiting>,
    terminated: Option<Terminated>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Waiting {
    reason: String,
    message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Terminated {
    reason: String,
    message: String,
    exit_code: i64,
}

/// A waiting reason that will not clear by itself.
fn is_error_reason(reason: &str) -> bool {
    reason.starts_with("Err") || reason.ends_with("Error") || reason.ends_with("BackOff")
}

/// Why a container of a failed Pod failed, when it says.
fn fail_message(c: &ContainerStatus) -> Option<String> {
    let t = c.state.terminated.as_ref()?;
    if !t.message.is_empty() {
        Some(t.message.clone())
    } else if t.reason == "OOMKilled" {
        Some(t.reason.clone())
    } else if t.exit_code != 0 {
        Some(format!(
            "container {:?} failed with exit code {}",
            c.name, t.exit_code
        ))
    } else {
        None
    }
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    use HealthStatus::{Degraded, Healthy, Progressing, Unknown};
    if gvk.version != "v1" {
        return Err(gvk.unsupported("Pod"));
    }
    let pod: Pod = super::typed(obj, "Pod")?;
    let is_hook = super::is_hook(obj);
    let ignore_restart_policy = pod.metadata.annotation(IGNORE_RESTART_POLICY) == Some("true");
    let long_running = pod.spec.restart_policy == "Always" || (ignore_restart_policy && !is_hook);
    let s = &pod.status;
    // Not for Pods that are expected to finish: a hook Pod waiting for its
    // image would fail its sync phase early, then run after the sync.
    if long_running {
        let messages: Vec<&str> = s
            .container_statuses
            .iter()
            .filter_map(|c| c.state.waiting.as_ref())
            .filter(|w| is_error_reason(&w.reason))
            .map(|w| w.message.as_str())
            .collect();
        if !messages.is_empty() {
            return Ok(Health::new(Degraded, messages.join(", ")));
        }
    }
    let message = s.message.clone();
    Ok(match s.phase.as_str() {
        "Pending" => Health::new(Progressing, message),
        "Succeeded" => Health::new(Healthy, message),
        "Failed" => {
            if !message.is_empty() {
                return Ok(Health::new(Degraded, message));
            }
            let why = s
                .init_container_statuses
                .iter()
                .chain(&s.container_statuses)
                .find_map(fail_message)
                .unwrap_or_default();
            Health::new(Degraded, why)
        }
        "Running" if long_running => {
            if find(&s.conditions, "Ready").is_some_and(|c| c.status == "True") {
                Health::new(Healthy, message)
            } else if s
                .container_statuses
                .iter()
                .any(|c| c.last_state.terminated.is_some())
            {
                Health::new(Degraded, message)
            } else {
                Health::new(Progressing, message)
            }
        }
        "Running" if matches!(pod.spec.restart_policy.as_str(), "OnFailure" | "Never") => {
            Health::new(Progressing, message)
        }
        _ => Health::new(Unknown, message),
    })
}
