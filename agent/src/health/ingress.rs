//! Ingress (`networking.k8s.io` and `extensions`, any version): Healthy
//! once it has a load balancer address.

use serde_json::Value;

use super::{Gvk, Health, HealthError, HealthStatus};

pub(super) fn health(obj: &Value, _gvk: Gvk<'_>) -> Result<Health, HealthError> {
    // Read leniently, as gitops-engine does: anything but a non-empty list
    // is no address.
    let assigned = obj
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let status = if assigned {
        HealthStatus::Healthy
    } else {
        HealthStatus::Progressing
    };
    Ok(Health::new(status, ""))
}
