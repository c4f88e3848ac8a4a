//! CronJob (`batch`), with the rule and messages of Argo CD's built-in
//! `health.lua` for it: Healthy unless its last run is known to have
//! failed; a suspended CronJob is Healthy too (Argo CD's choice, so that a
//! suspended CronJob does not make its application Suspended).

use serde::Deserialize;
use serde_json::Value;

use super::{Gvk, Health, HealthError, HealthStatus, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CronJob {
    spec: Spec,
    status: Option<Status>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec {
    suspend: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    last_schedule_time: Option<String>,
    last_successful_time: Option<String>,
    active: Vec<Value>,
}

pub(super) fn health(obj: &Value, _gvk: Gvk<'_>) -> Result<Health, HealthError> {
    use HealthStatus::{Degraded, Healthy, Progressing};
    let cron: CronJob = typed(obj, "CronJob")?;
    if cron.spec.suspend == Some(true) {
        return Ok(Health::new(Healthy, "CronJob is Suspended"));
    }
    let Some(status) = cron.status else {
        return Ok(Health::new(Progressing, "Waiting for CronJob"));
    };
    let Some(scheduled) = status.last_schedule_time else {
        return Ok(Health::new(Healthy, "CronJob has not been scheduled yet"));
    };
    let Some(succeeded) = status.last_successful_time else {
        return Ok(Health::new(
            Healthy,
            "The CronJob never completed successfully. It may not be healthy",
        ));
    };
    if !status.active.is_empty() {
        return Ok(Health::new(
            Healthy,
            "The job is running. Its last execution may not have been successful",
        ));
    }
    // RFC 3339 times in UTC, as the API server writes them, order as text.
    if succeeded < scheduled {
        return Ok(Health::new(
            Degraded,
            "CronJob has not completed its last execution successfully",
        ));
    }
    Ok(Health::new(
        Healthy,
        "CronJob has completed its last execution successfully",
    ))
}
