//! `apps/v1` StatefulSet: kubectl's rollout status, including partitioned
//! rolling updates and OnDelete.

use serde::Deserialize;
use serde_json::Value;

use super::{Gvk, Health, HealthError, HealthStatus, Meta, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatefulSet {
    metadata: Meta,
    spec: Spec,
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    replicas: Option<i64>,
    update_strategy: UpdateStrategy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct UpdateStrategy {
    #[serde(rename = "type")]
    type_: String,
    rolling_update: Option<RollingUpdate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RollingUpdate {
    partition: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    observed_generation: i64,
    ready_replicas: i64,
    updated_replicas: i64,
    current_replicas: i64,
    current_revision: String,
    update_revision: String,
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    use HealthStatus::{Healthy, Progressing};
    if gvk.version != "v1" {
        return Err(gvk.unsupported("StatefulSet"));
    }
    let sts: StatefulSet = typed(obj, "StatefulSet")?;
    let s = &sts.status;
    if s.observed_generation == 0 || sts.metadata.generation > s.observed_generation {
        return Ok(Health::new(
            Progressing,
            "Waiting for statefulset spec update to be observed...",
        ));
    }
    if let Some(replicas) = sts.spec.replicas
        && s.ready_replicas < replicas
    {
        return Ok(Health::new(
            Progressing,
            format!(
                "Waiting for {} pods to be ready...",
                replicas - s.ready_replicas
            ),
        ));
    }
    let strategy = &sts.spec.update_strategy;
    if strategy.type_ == "RollingUpdate"
        && let Some(rolling) = &strategy.rolling_update
    {
        if let (Some(replicas), Some(partition)) = (sts.spec.replicas, rolling.partition)
            && s.updated_replicas < replicas - partition
        {
            return Ok(Health::new(
                Progressing,
                format!(
                    "Waiting for partitioned roll out to finish: {} out of {} new pods have been updated...",
                    s.updated_replicas,
                    replicas - partition
                ),
            ));
        }
        return Ok(Health::new(
            Healthy,
            format!(
                "partitioned roll out complete: {} new pods have been updated...",
                s.updated_replicas
            ),
        ));
    }
    if strategy.type_ == "OnDelete" {
        return Ok(Health::new(
            Healthy,
            format!("statefulset has {} ready pods", s.ready_replicas),
        ));
    }
    if s.update_revision != s.current_revision {
        return Ok(Health::new(
            Progressing,
            format!(
                "waiting for statefulset rolling update to complete {} pods at revision {}...",
                s.updated_replicas, s.update_revision
            ),
        ));
    }
    Ok(Health::new(
        Healthy,
        format!(
            "statefulset rolling update complete {} pods at revision {}...",
            s.current_replicas, s.current_revision
        ),
    ))
}
