//! Argo Workflows' `Workflow` (`argoproj.io`, any version): by
//! `status.phase`, with `status.message`.
//!
//! Argo CD's `Application` has no built-in health (as in Argo CD since
//! 1.8): an app-of-apps child does not make its parent Degraded.

use serde_json::Value;

use super::{Gvk, Health, HealthError, HealthStatus};

pub(super) fn workflow_health(obj: &Value, _gvk: Gvk<'_>) -> Result<Health, HealthError> {
    let field = |name: &str| {
        obj.pointer(&format!("/status/{name}"))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let status = match field("phase") {
        "" | "Pending" | "Running" => HealthStatus::Progressing,
        "Succeeded" => HealthStatus::Healthy,
        "Failed" | "Error" => HealthStatus::Degraded,
        _ => HealthStatus::Unknown,
    };
    Ok(Health::new(status, field("message")))
}
