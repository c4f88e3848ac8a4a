//! HorizontalPodAutoscaler, `autoscaling/v2` from `status.conditions` and
//! `autoscaling/v1` from the conditions it keeps in the
//! `autoscaling.alpha.kubernetes.io/conditions` annotation (a JSON list).
//!
//! A condition whose type and reason say the autoscaler cannot read its
//! target or metrics is Degraded (whatever its status); else `AbleToScale`
//! or `ScalingLimited` True is Healthy; else "Waiting to Autoscale".

use serde::Deserialize;
use serde_json::Value;

use super::{Gvk, Health, HealthError, HealthStatus, Meta, typed};

/// The annotation `autoscaling/v1` objects carry their conditions in.
pub const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";

const WAITING: &str = "Waiting to Autoscale";

/// `(type, reason)` pairs that mean the autoscaler is broken.
const DEGRADED: &[(&str, &str)] = &[
    ("AbleToScale", "FailedGetScale"),
    ("AbleToScale", "FailedUpdateScale"),
    ("ScalingActive", "FailedGetResourceMetric"),
    ("ScalingActive", "FailedGetObjectMetric"),
    ("ScalingActive", "FailedGetPodsMetric"),
    ("ScalingActive", "FailedGetExternalMetric"),
    ("ScalingActive", "FailedComputeMetricsReplicas"),
    ("ScalingActive", "InvalidSelector"),
];

/// One condition; the annotation's JSON may spell the keys capitalised
/// (Go's decoder matches them case-insensitively).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HpaCondition {
    #[serde(rename = "type", alias = "Type")]
    type_: String,
    #[serde(alias = "Status")]
    status: String,
    #[serde(alias = "Reason")]
    reason: String,
    #[serde(alias = "Message")]
    message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct V2 {
    status: V2Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct V2Status {
    conditions: Vec<HpaCondition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct V1 {
    metadata: Meta,
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    let conditions = match gvk.version {
        "v1" => {
            let hpa: V1 = typed(obj, "HPA")?;
            let Some(annotation) = hpa.metadata.annotation(CONDITIONS_ANNOTATION) else {
                return Ok(Health::new(HealthStatus::Progressing, WAITING));
            };
            serde_json::from_str::<Vec<HpaCondition>>(annotation)
                .map_err(|error| HealthError::ConditionsAnnotation { error })?
        }
        "v2" => typed::<V2>(obj, "HPA")?.status.conditions,
        _ => return Err(gvk.unsupported("HPA")),
    };
    Ok(check(&conditions))
}

fn check(conditions: &[HpaCondition]) -> Health {
    if let Some(c) = conditions
        .iter()
        .find(|c| DEGRADED.contains(&(c.type_.as_str(), c.reason.as_str())))
    {
        return Health::new(HealthStatus::Degraded, c.message.clone());
    }
    if let Some(c) = conditions.iter().find(|c| {
        matches!(c.type_.as_str(), "AbleToScale" | "ScalingLimited") && c.status == "True"
    }) {
        return Health::new(HealthStatus::Healthy, c.message.clone());
    }
    Health::new(HealthStatus::Progressing, WAITING)
}
