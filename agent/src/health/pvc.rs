//! `v1` PersistentVolumeClaim: by phase.

use serde::Deserialize;
use serde_json::Value;

use super::{Gvk, Health, HealthError, HealthStatus, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Claim {
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status {
    phase: String,
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    use HealthStatus::{Degraded, Healthy, Progressing, Unknown};
    if gvk.version != "v1" {
        return Err(gvk.unsupported("PersistentVolumeClaim"));
    }
    let claim: Claim = typed(obj, "PersistentVolumeClaim")?;
    let status = match claim.status.phase.as_str() {
        "Lost" => Degraded,
        "Pending" => Progressing,
        "Bound" => Healthy,
        _ => Unknown,
    };
    Ok(Health::new(status, ""))
}
