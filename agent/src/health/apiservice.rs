//! APIService (`apiregistration.k8s.io` v1 and v1beta1): by its
//! `Available` condition, with "REASON: MESSAGE".

use serde::Deserialize;
use serde_json::Value;

use super::{Condition, Gvk, Health, HealthError, HealthStatus, find, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApiService {
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status {
    conditions: Vec<Condition>,
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    if !matches!(gvk.version, "v1" | "v1beta1") {
        return Err(gvk.unsupported("APIService"));
    }
    let svc: ApiService = typed(obj, "APIService")?;
    Ok(match find(&svc.status.conditions, "Available") {
        Some(c) => {
            let status = if c.status == "True" {
                HealthStatus::Healthy
            } else {
                HealthStatus::Progressing
            };
            Health::new(status, format!("{}: {}", c.reason, c.message))
        }
        None => Health::new(HealthStatus::Progressing, "Waiting to be processed"),
    })
}
