//! PodDisruptionBudget (`policy`), with the rule and messages of Argo CD's
//! built-in `health.lua` for it: a False condition is Degraded, except
//! `InsufficientPods` (a budget can legitimately have too few pods).

use serde::Deserialize;
use serde_json::Value;

use super::{Condition, Gvk, Health, HealthError, HealthStatus, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pdb {
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status {
    conditions: Vec<Condition>,
}

pub(super) fn health(obj: &Value, _gvk: Gvk<'_>) -> Result<Health, HealthError> {
    let pdb: Pdb = typed(obj, "PodDisruptionBudget")?;
    let mut health = Health::new(HealthStatus::Progressing, "Waiting for status");
    for c in &pdb.status.conditions {
        let message = format!("PodDisruptionBudget has {}", c.reason);
        if c.status == "False" && c.reason != "InsufficientPods" {
            return Ok(Health::new(HealthStatus::Degraded, message));
        }
        health = Health::new(HealthStatus::Healthy, message);
    }
    Ok(health)
}
