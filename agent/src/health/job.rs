//! `batch/v1` Job: by its `Failed`, `Complete` and `Suspended` conditions.
//!
//! As in gitops-engine, a condition counts by its type (its status is read
//! only for `Suspended`), and the last condition of a type gives the
//! message.

use serde::Deserialize;
use serde_json::Value;

use super::{Condition, Gvk, Health, HealthError, HealthStatus, typed};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Job {
    status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status {
    conditions: Vec<Condition>,
}

pub(super) fn health(obj: &Value, gvk: Gvk<'_>) -> Result<Health, HealthError> {
    use HealthStatus::{Degraded, Healthy, Progressing, Suspended};
    if gvk.version != "v1" {
        return Err(gvk.unsupported("Job"));
    }
    let job: Job = typed(obj, "Job")?;
    let mut failed = false;
    let mut fail_message = String::new();
    let mut complete = false;
    let mut message = String::new();
    let mut suspended = false;
    for c in &job.status.conditions {
        match c.type_.as_str() {
            "Failed" => {
                failed = true;
                complete = true;
                fail_message.clone_from(&c.message);
            }
            "Complete" => {
                complete = true;
                message.clone_from(&c.message);
            }
            "Suspended" => {
                complete = true;
                message.clone_from(&c.message);
                if c.status == "True" {
                    suspended = true;
                }
            }
            _ => {}
        }
    }
    Ok(if !complete {
        Health::new(Progressing, message)
    } else if failed {
        Health::new(Degraded, fail_message)
    } else if suspended {
        Health::new(Suspended, message)
    } else {
        Health::new(Healthy, message)
    })
}
