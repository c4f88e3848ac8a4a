//! CustomResourceDefinition (`apiextensions.k8s.io`), with the rule and
//! messages of Argo CD's built-in `health.lua` for it.
//!
//! Differences from the script: an object without `status` is "Status
//! conditions not found" (the script fails on it, which Argo CD shows as
//! Unknown), and a condition without a message reads as an empty message.

use serde::Deserialize;
use serde_json::Value;

use super::{Condition, Gvk, Health, HealthError, HealthStatus, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Crd {
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status {
    conditions: Vec<Condition>,
}

pub(super) fn health(obj: &Value, _gvk: Gvk<'_>) -> Result<Health, HealthError> {
    use HealthStatus::{Degraded, Healthy, Progressing};
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Ok(Health::new(Progressing, "CRD is terminating"));
    }
    let crd: Crd = typed(obj, "CustomResourceDefinition")?;
    if crd.status.conditions.is_empty() {
        return Ok(Health::new(Progressing, "Status conditions not found"));
    }
    let mut established = false;
    for c in &crd.status.conditions {
        match (c.type_.as_str(), c.status.as_str()) {
            ("Terminating", "True") => {
                return Ok(Health::new(
                    Progressing,
                    format!("CRD is terminating: {}", c.message),
                ));
            }
            ("NamesAccepted", "False") => {
                return Ok(Health::new(
                    Degraded,
                    format!("CRD names have not been accepted: {}", c.message),
                ));
            }
            ("NonStructuralSchema", "True") => {
                return Ok(Health::new(
                    Degraded,
                    format!("Schema violations found: {}", c.message),
                ));
            }
            ("Established", "True") => established = true,
            ("Established", _) if c.reason == "Installing" => {
                return Ok(Health::new(Progressing, "CRD is being installed"));
            }
            _ => {}
        }
    }
    if established {
        Ok(Health::new(Healthy, "CRD is healthy"))
    } else {
        Ok(Health::new(Degraded, "CRD is not established"))
    }
}
