//! `apps/v1` DaemonSet: kubectl's rollout status; OnDelete is Healthy.

use serde::Deserialize;
use serde_json::Value;

use super::{Gvk, Health, HealthError, HealthStatus, Meta, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DaemonSet {
    metadata: Meta,
    spec: Spec,
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    update_strategy: UpdateStrategy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateStrategy {
    #[serde(rename = "type")]
    type_: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    observed_generation: i64,
    desired_number_scheduled: i64,
    updated_number_scheduled: i64,
    number_available: i64,
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    use HealthStatus::{Healthy, Progressing};
    if gvk.version != "v1" {
        return Err(gvk.unsupported("DaemonSet"));
    }
    let ds: DaemonSet = typed(obj, "DaemonSet")?;
    let s = &ds.status;
    let name = &ds.metadata.name;
    if ds.metadata.generation > s.observed_generation {
        return Ok(Health::new(
            Progressing,
            "Waiting for rollout to finish: observed daemon set generation less than desired generation",
        ));
    }
    if ds.spec.update_strategy.type_ == "OnDelete" {
        return Ok(Health::new(
            Healthy,
            format!(
                "daemon set {} out of {} new pods have been updated",
                s.updated_number_scheduled, s.desired_number_scheduled
            ),
        ));
    }
    if s.updated_number_scheduled < s.desired_number_scheduled {
        return Ok(Health::new(
            Progressing,
            format!(
                "Waiting for daemon set {name:?} rollout to finish: {} out of {} new pods have been updated...",
                s.updated_number_scheduled, s.desired_number_scheduled
            ),
        ));
    }
    if s.number_available < s.desired_number_scheduled {
        return Ok(Health::new(
            Progressing,
            format!(
                "Waiting for daemon set {name:?} rollout to finish: {} of {} updated pods are available...",
                s.number_available, s.desired_number_scheduled
            ),
        ));
    }
    Ok(Health::new(Healthy, ""))
}
