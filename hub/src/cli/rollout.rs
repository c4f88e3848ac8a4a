//! `flotilla rollout …`: waves rollouts of ApplicationSets
//! (`spec.strategy.flotillaWaves`).

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Client, Global, print_out, status_err, table};
use flotilla_proto as pb;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// List the waves rollouts.
    List,
    /// Show one rollout: its waves and each cluster's state.
    Get {
        /// The ApplicationSet.
        name: String,
    },
    /// Stop starting clusters (those updating finish).
    Pause {
        /// The ApplicationSet.
        name: String,
    },
    /// Carry on after a pause or a failed wave (which is tried again).
    Resume {
        /// The ApplicationSet.
        name: String,
    },
    /// Skip the current wave's bake time or approval gate.
    Promote {
        /// The ApplicationSet.
        name: String,
    },
    /// Roll back every cluster the rollout touched, and stop.
    Abort {
        /// The ApplicationSet.
        name: String,
    },
}

fn short(rev: &str) -> &str {
    crate::rollout::waves::short(rev)
}

fn rollout_json(r: &pb::Rollout) -> Value {
    json!({
        "name": r.name,
        "target": r.target,
        "wave": r.wave,
        "phase": r.phase,
        "pausedBy": r.paused_by,
        "message": r.message,
        "waves": r.waves.iter().map(|w| json!({
            "name": w.name, "clusters": w.clusters, "seconds": w.seconds,
        })).collect::<Vec<_>>(),
        "clusters": r.clusters.iter().map(|c| json!({
            "application": c.application, "cluster": c.cluster, "wave": c.wave,
            "state": c.state, "revision": c.revision, "lastHealthy": c.last_healthy,
            "sinceMs": c.since_ms,
            "heldUntil": held_until(c),
        })).collect::<Vec<_>>(),
    })
}

/// When a deploy window lets a held cluster go (RFC 3339, or `further
/// notice`); `None` when no window holds it.
fn held_until(c: &pb::RolloutCluster) -> Option<String> {
    match c.held_until_ms {
        0 => None,
        i64::MAX => Some("further notice".into()),
        ms => Some(
            jiff::Timestamp::from_millisecond(ms)
                .map_or_else(|_| ms.to_string(), |t| t.to_string()),
        ),
    }
}

fn wave_word(r: &pb::Rollout) -> String {
    match r
        .wave
        .checked_sub(1)
        .and_then(|i| r.waves.get(usize::try_from(i).ok()?))
    {
        Some(w) => format!("{}/{} {}", r.wave, r.waves.len(), w.name),
        None => "done".into(),
    }
}

fn phase_word(r: &pb::Rollout) -> String {
    if r.paused_by.is_empty() {
        r.phase.clone()
    } else {
        format!("{} (paused by {})", r.phase, r.paused_by)
    }
}

/// The readable form of one rollout (also used by `appset get`).
pub fn describe(r: &pb::Rollout) -> String {
    let mut out = format!(
        "rollout {}: {} at wave {}, target {}\n{}\n\n",
        r.name,
        phase_word(r),
        wave_word(r),
        short(&r.target),
        r.message
    );
    out.push_str(&table(
        &["WAVE", "NAME", "CLUSTERS", "SECONDS"],
        r.waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                vec![
                    (i + 1).to_string(),
                    w.name.clone(),
                    w.clusters.to_string(),
                    if w.seconds > 0.0 {
                        format!("{:.1}", w.seconds)
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect(),
    ));
    out.push('\n');
    out.push_str(&table(
        &[
            "CLUSTER",
            "APPLICATION",
            "WAVE",
            "STATE",
            "REVISION",
            "LAST HEALTHY",
        ],
        r.clusters
            .iter()
            .map(|c| {
                vec![
                    c.cluster.clone(),
                    c.application.clone(),
                    c.wave.to_string(),
                    match held_until(c) {
                        Some(until) => format!("{} (window until {until})", c.state),
                        None => c.state.clone(),
                    },
                    short(&c.revision).to_owned(),
                    short(&c.last_healthy).to_owned(),
                ]
            })
            .collect(),
    ));
    out
}

pub async fn run(g: &Global, c: &mut Client, cmd: RolloutCommand) -> Result<()> {
    let (name, action) = match cmd {
        RolloutCommand::List => {
            let list = c
                .list_rollouts(pb::ListRolloutsRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .rollouts;
            print_out(
                g.output,
                Value::Array(list.iter().map(rollout_json).collect()),
                || {
                    table(
                        &["NAME", "PHASE", "WAVE", "TARGET", "UPDATED", "MESSAGE"],
                        list.iter()
                            .map(|r| {
                                let updated =
                                    r.clusters.iter().filter(|c| c.state == "Updated").count();
                                vec![
                                    r.name.clone(),
                                    phase_word(r),
                                    wave_word(r),
                                    short(&r.target).to_owned(),
                                    format!("{updated}/{}", r.clusters.len()),
                                    r.message.clone(),
                                ]
                            })
                            .collect(),
                    )
                },
            );
            return Ok(());
        }
        RolloutCommand::Get { name } => {
            let r = c
                .get_rollout(pb::GetRolloutRequest { name })
                .await
                .map_err(status_err)?
                .into_inner();
            print_out(g.output, rollout_json(&r), || describe(&r));
            return Ok(());
        }
        RolloutCommand::Pause { name } => (name, "pause"),
        RolloutCommand::Resume { name } => (name, "resume"),
        RolloutCommand::Promote { name } => (name, "promote"),
        RolloutCommand::Abort { name } => (name, "abort"),
    };
    let r = c
        .control_rollout(pb::ControlRolloutRequest {
            name,
            action: action.to_owned(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    print_out(g.output, rollout_json(&r), || {
        format!(
            "rollout {}: {action} applied; {} at wave {}: {}\n",
            r.name,
            phase_word(&r),
            wave_word(&r),
            r.message
        )
    });
    Ok(())
}
