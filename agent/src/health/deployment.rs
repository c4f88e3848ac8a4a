//! `apps/v1` Deployment: kubectl's rollout status, plus Argo CD's paused and
//! progress-deadline cases.

use serde::Deserialize;
use serde_json::Value;

use super::{Condition, Gvk, Health, HealthError, HealthStatus, Meta, find, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Deployment {
    metadata: Meta,
    spec: Spec,
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec {
    replicas: Option<i64>,
    paused: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    observed_generation: i64,
    replicas: i64,
    updated_replicas: i64,
    available_replicas: i64,
    conditions: Vec<Condition>,
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    use HealthStatus::{Degraded, Healthy, Progressing, Suspended};
    if gvk.version != "v1" {
        return Err(gvk.unsupported("Deployment"));
    }
    let d: Deployment = typed(obj, "Deployment")?;
    if d.spec.paused {
        return Ok(Health::new(Suspended, "Deployment is paused"));
    }
    let s = &d.status;
    if d.metadata.generation > s.observed_generation {
        return Ok(Health::new(
            Progressing,
            "Waiting for rollout to finish: observed deployment generation less than desired generation",
        ));
    }
    if find(&s.conditions, "Progressing").is_some_and(|c| c.reason == "ProgressDeadlineExceeded") {
        return Ok(Health::new(
            Degraded,
            format!(
                "Deployment {:?} exceeded its progress deadline",
                d.metadata.name
            ),
        ));
    }
    if let Some(replicas) = d.spec.replicas
        && s.updated_replicas < replicas
    {
        return Ok(Health::new(
            Progressing,
            format!(
                "Waiting for rollout to finish: {} out of {replicas} new replicas have been updated...",
                s.updated_replicas
            ),
        ));
    }
    if s.replicas > s.updated_replicas {
        return Ok(Health::new(
            Progressing,
            format!(
                "Waiting for rollout to finish: {} old replicas are pending termination...",
                s.replicas - s.updated_replicas
            ),
        ));
    }
    if s.available_replicas < s.updated_replicas {
        return Ok(Health::new(
            Progressing,
            format!(
                "Waiting for rollout to finish: {} of {} updated replicas are available...",
                s.available_replicas, s.updated_replicas
            ),
        ));
    }
    Ok(Health::new(Healthy, ""))
}
