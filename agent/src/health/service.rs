//! `v1` Service: a LoadBalancer is Progressing until it has an address.

use serde::Deserialize;
use serde_json::Value;

use super::{Gvk, Health, HealthError, HealthStatus, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Service {
    spec: Spec,
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec {
    #[serde(rename = "type")]
    type_: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    load_balancer: LoadBalancer,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoadBalancer {
    ingress: Vec<Value>,
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    if gvk.version != "v1" {
        return Err(gvk.unsupported("Service"));
    }
    let svc: Service = typed(obj, "Service")?;
    if svc.spec.type_ == "LoadBalancer" && svc.status.load_balancer.ingress.is_empty() {
        return Ok(Health::new(HealthStatus::Progressing, ""));
    }
    Ok(Health::new(HealthStatus::Healthy, ""))
}
