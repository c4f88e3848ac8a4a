//! `apps/v1` ReplicaSet: a `ReplicaFailure` condition is Degraded; fewer
//! available replicas than desired is Progressing.

use serde::Deserialize;
use serde_json::Value;

use super::{Condition, Gvk, Health, HealthError, HealthStatus, Meta, find, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReplicaSet {
    metadata: Meta,
    spec: Spec,
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec {
    replicas: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    observed_generation: i64,
    available_replicas: i64,
    conditions: Vec<Condition>,
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    use HealthStatus::{Degraded, Healthy, Progressing};
    if gvk.version != "v1" {
        return Err(gvk.unsupported("ReplicaSet"));
    }
    let rs: ReplicaSet = typed(obj, "ReplicaSet")?;
    let s = &rs.status;
    if rs.metadata.generation > s.observed_generation {
        return Ok(Health::new(
            Progressing,
            "Waiting for rollout to finish: observed replica set generation less than desired generation",
        ));
    }
    if let Some(c) = find(&s.conditions, "ReplicaFailure")
        && c.status == "True"
    {
        return Ok(Health::new(Degraded, c.message.clone()));
    }
    if let Some(replicas) = rs.spec.replicas
        && s.available_replicas < replicas
    {
        return Ok(Health::new(
            Progressing,
            format!(
                "Waiting for rollout to finish: {} out of {replicas} new replicas are available...",
                s.available_replicas
            ),
        ));
    }
    Ok(Health::new(Healthy, ""))
}
