//! `HubApi` waves rollouts: `ListRollouts`, `GetRollout`, `ControlRollout`
//! (`flotilla rollout list|get|pause|resume|promote|abort`). The record is
//! the rollout reconciler's; a control is queued for its next pass (it
//! stays the record's only writer), and the call waits, bounded, until the
//! pass has applied it.

use std::time::Duration;

use tonic::Status;

use super::HubContext;
use crate::rollout::waves::{self, Control, WavesSpec};
use crate::store::records::RolloutRecord;
use flotilla_proto as pb;

/// How long a control waits for the reconciler's pass to show it.
const APPLIED_WITHIN: Duration = Duration::from_secs(10);

/// A waves rollout as the API shows it.
pub fn to_pb(rec: &RolloutRecord, spec: Option<&WavesSpec>) -> Option<pb::Rollout> {
    let w = rec.waves.as_ref()?;
    let count = w.clusters.iter().map(|c| c.wave).max().map_or(0, |m| m + 1);
    let n = spec.map_or(count, |s| s.waves.len().max(count));
    let waves = (0..n)
        .map(|i| pb::RolloutWave {
            name: spec.map_or_else(|| format!("wave-{}", i + 1), |s| s.wave_name(i).to_owned()),
            clusters: u32::try_from(w.clusters.iter().filter(|c| c.wave == i).count())
                .unwrap_or(u32::MAX),
            #[allow(clippy::cast_precision_loss)]
            seconds: w.wave_ms.get(i).map_or(0.0, |ms| *ms as f64 / 1000.0),
        })
        .collect();
    Some(pb::Rollout {
        name: rec.set.clone(),
        target: w.target.clone(),
        wave: u32::try_from(w.wave.min(n) + 1).unwrap_or(u32::MAX),
        phase: w.phase.as_str().to_owned(),
        paused_by: w.paused_by.clone(),
        message: w.message.clone(),
        waves,
        clusters: w
            .clusters
            .iter()
            .map(|c| pb::RolloutCluster {
                application: c.app.clone(),
                cluster: c.cluster.clone(),
                wave: u32::try_from(c.wave + 1).unwrap_or(u32::MAX),
                state: c.state.as_str().to_owned(),
                revision: c.revision.clone(),
                last_healthy: c.last_healthy.clone(),
                since_ms: c.since_ms,
                held_until_ms: c.held_until_ms,
            })
            .collect(),
    })
}

fn spec_of(ctx: &HubContext, name: &str) -> Result<Option<WavesSpec>, Status> {
    Ok(ctx.store.appset(name)?.and_then(|r| {
        WavesSpec::parse(r.raw.pointer("/spec/strategy/flotillaWaves"))
            .ok()
            .flatten()
    }))
}

/// Every waves rollout whose set `visible` says the caller may see.
///
/// # Errors
/// The store cannot be read.
pub fn list(
    ctx: &HubContext,
    visible: impl Fn(&str) -> bool,
) -> Result<pb::ListRolloutsResponse, Status> {
    let mut rollouts = Vec::new();
    for rec in ctx.store.rollouts()? {
        if !visible(&rec.set) {
            continue;
        }
        let spec = spec_of(ctx, &rec.set)?;
        rollouts.extend(to_pb(&rec, spec.as_ref()));
    }
    rollouts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pb::ListRolloutsResponse { rollouts })
}

/// The waves rollout of set `name`.
///
/// # Errors
/// NOT_FOUND when the set has no waves rollout (naming it).
pub fn get(ctx: &HubContext, name: &str) -> Result<pb::Rollout, Status> {
    let spec = spec_of(ctx, name)?;
    ctx.store
        .rollout(name)?
        .and_then(|r| to_pb(&r, spec.as_ref()))
        .ok_or_else(|| {
            Status::not_found(format!(
                "application set {name:?} has no waves rollout (spec.strategy.flotillaWaves)"
            ))
        })
}

/// The control named `action`.
///
/// # Errors
/// INVALID_ARGUMENT for an unknown action.
pub fn parse_action(action: &str) -> Result<Control, Status> {
    match action {
        "pause" => Ok(Control::Pause),
        "resume" => Ok(Control::Resume),
        "promote" => Ok(Control::Promote),
        "abort" => Ok(Control::Abort),
        other => Err(Status::invalid_argument(format!(
            "rollout action {other:?} is not one of pause, resume, promote, abort"
        ))),
    }
}

/// Applies `action` to the rollout of set `name`, asked by `by`
/// (`user:<subject>`), and returns the rollout once the reconciler's pass
/// shows it.
///
/// # Errors
/// NOT_FOUND without a waves rollout; FAILED_PRECONDITION when the
/// rollout's phase does not allow the action (the message says why);
/// DEADLINE_EXCEEDED when the reconciler did not apply it in time.
pub async fn control(
    ctx: &HubContext,
    name: &str,
    action: &str,
    by: &str,
) -> Result<pb::Rollout, Status> {
    let control = parse_action(action)?;
    let before = ctx.store.rollout(name)?;
    let waves_before = before.as_ref().and_then(|r| r.waves.clone());
    if waves_before.is_none() {
        return Err(get(ctx, name).err().unwrap_or_else(|| {
            Status::not_found(format!("application set {name:?} has no waves rollout"))
        }));
    }
    waves::check_control(name, waves_before.as_ref(), &control)
        .map_err(Status::failed_precondition)?;
    ctx.appsets.rollouts().control(name, control.clone(), by);
    let deadline = tokio::time::Instant::now() + APPLIED_WITHIN;
    loop {
        let now = ctx.store.rollout(name)?.and_then(|r| r.waves);
        let applied = now.as_ref().is_some_and(|w| match control {
            Control::Pause => w.paused_by == by,
            Control::Resume => w.paused_by.is_empty() && w.phase != crate::store::WavePhase::Failed,
            Control::Abort => w.phase == crate::store::WavePhase::Aborted,
            Control::Promote => now != waves_before,
        });
        if applied {
            tracing::info!(appset = %name, action, by, "rollout control applied");
            return get(ctx, name);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "rollout {name:?}: {action} was queued but the rollout reconciler did not apply it within {} s",
                APPLIED_WITHIN.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
