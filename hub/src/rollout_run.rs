//! The rollout reconciler, wired by the server: it drives what
//! [`crate::rollout`] decides (the RollingSync and waves cores and the
//! state the ApplicationSet controller shares with it) through the same
//! sync path as `flotilla app sync` ([`crate::api::ops::sync_clusters`]).
//! Kept out of `rollout` so that `rollout` depends on nothing above the
//! store and the ApplicationSet controller can use it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::Instrument;

use crate::api::HubContext;
use crate::rollout::*;
use crate::store::StoreError;
use flotilla_proto as pb;
use rolling_sync::{AppProgress, Observed};

/// How often a set rolling out by waves is looked at with nothing
/// reported (bake time, progress deadline, a new commit held by the pins).
const WAVES_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs the rollout reconciler until the hub closes: a first pass over
/// every RollingSync set (progress after a restart), then a pass over each
/// set that is marked.
pub async fn run(ctx: HubContext) {
    let rollouts = ctx.appsets.rollouts().clone();
    match ctx.store.appsets() {
        Ok(sets) => {
            for rec in sets {
                if strategy_of(&rec.raw).is_ok_and(|s| s.rolling_sync.is_some() || s.waves) {
                    rollouts.watch_set(&rec.name, &rec.generated);
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "rollouts: cannot read the application sets"),
    }
    match ctx.store.rollouts() {
        Ok(records) => {
            for r in records.into_iter().filter(|r| !r.deleting.is_empty()) {
                rollouts.deleting_in_reverse(&r.set);
            }
        }
        Err(e) => tracing::error!(error = %e, "rollouts: cannot read the rollout records"),
    }
    let mut closing = ctx.closing.clone();
    loop {
        let dirty = rollouts.take_dirty();
        for set in dirty {
            // A pass that changed something can open a further transition
            // with nothing new to report (a sync that started and finished
            // within one report): go again, a few times at most.
            for _ in 0..4 {
                match reconcile_set(&ctx, &rollouts, &set).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(appset = %set, error = %e, "rollout pass failed");
                        break;
                    }
                }
            }
        }
        let ticking = !rollouts
            .waves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        tokio::select! {
            _ = rollouts.wake.notified() => {}
            () = tokio::time::sleep(WAVES_TICK), if ticking => {
                rollouts.tick();
            }
            _ = closing.wait_for(|c| *c) => return,
        }
    }
}

/// Whether every cluster `a` targeted has acknowledged a desired state
/// without it (so its objects are pruned, or left when preserved).
fn let_go(ctx: &HubContext, a: &DeletingApp) -> Result<bool, StoreError> {
    if ctx.store.app(&a.app)?.is_some() {
        return Ok(false);
    }
    for c in &a.clusters {
        let Some(c) = ctx.store.cluster(c)? else {
            continue;
        };
        if c.desired_index.contains_key(&a.app) || c.acked_generation < c.generation {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `deletionOrder: Reverse` of deleted set `name`: once every application
/// of the group being deleted is gone from the store and from what its
/// clusters acknowledged, deletes the next group.
fn continue_reverse_deletion(
    ctx: &HubContext,
    rollouts: &Rollouts,
    name: &str,
) -> Result<bool, StoreError> {
    let store = &ctx.store;
    let Some(mut rec) = store.rollout(name)? else {
        rollouts
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        return Ok(false);
    };
    let mut changed = false;
    while let Some(group) = rec.deleting.first() {
        let mut done = true;
        for a in group {
            if !let_go(ctx, a)? {
                done = false;
                break;
            }
        }
        if !done {
            break;
        }
        rec.deleting.remove(0);
        changed = true;
        let Some(next) = rec.deleting.first() else {
            break;
        };
        let names: Vec<String> = next.iter().map(|a| a.app.clone()).collect();
        tracing::info!(appset = %name, apps = ?names, "deletionOrder Reverse: deleting the next step's applications");
        for a in &names {
            ctx.appsets.delete_app(a, rec.preserve)?;
        }
        ctx.fleet.recompute_apps(&names)?;
    }
    if rec.deleting.is_empty() {
        tracing::info!(appset = %name, "deletionOrder Reverse: every application deleted");
        store.remove_rollout(name)?;
        rollouts
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    } else if changed {
        store.put_rollout(&rec)?;
    }
    if changed {
        store.flush()?;
    }
    Ok(false)
}

/// One pass over set `name`. Returns whether its progress changed.
///
/// # Errors
/// The store cannot be read or written.
pub async fn reconcile_set(
    ctx: &HubContext,
    rollouts: &Rollouts,
    name: &str,
) -> Result<bool, StoreError> {
    rollouts.counters.passes.fetch_add(1, Ordering::Relaxed);
    let store = &ctx.store;
    let Some(rec) = store.appset(name)? else {
        rollouts.set_waves(name, false);
        rollouts.unwatch_set(name);
        return continue_reverse_deletion(ctx, rollouts, name);
    };
    let strategy = match strategy_of(&rec.raw) {
        Ok(s) => s,
        // The lifecycle reports it; the rollout stays where it is.
        Err(_) => return Ok(false),
    };
    rollouts.set_waves(name, strategy.waves);
    if strategy.waves {
        return waves_pass(ctx, rollouts, name, &rec).await;
    }
    release_waves_pins(ctx, name)?;
    let Some(steps) = strategy.rolling_sync else {
        // As Argo CD: no RollingSync, no applicationStatus.
        rollouts.unwatch_set(name);
        store.remove_rollout(name)?;
        return Ok(false);
    };
    let origin = crate::appset::lifecycle::origin_of(name);
    let previous = store.rollout(name)?.unwrap_or_else(|| RolloutRecord {
        set: name.to_owned(),
        ..Default::default()
    });
    let prev_by_app: HashMap<&str, &AppProgress> = previous
        .applications
        .iter()
        .map(|p| (p.application.as_str(), p))
        .collect();
    let mut observed = Vec::with_capacity(rec.generated.len());
    let mut targets: HashMap<String, (Arc<crate::model::Application>, Vec<String>)> =
        HashMap::new();
    for app_name in &rec.generated {
        let Some(app) = store.app(app_name)? else {
            continue;
        };
        if app.origin != origin {
            continue;
        }
        let bundle = ctx.fleet.bundle(app_name);
        let revision = ctx.fleet.desired_revision(app_name);
        let clusters = crate::history::targeted_clusters(store, &app.app)?;
        let statuses = store.statuses_of_app(app_name)?;
        let digest = bundle
            .as_ref()
            .map(|b| b.digest.clone())
            .unwrap_or_default();
        let synced = !clusters.is_empty()
            && bundle.is_some()
            && clusters.iter().all(|c| {
                statuses
                    .get(c)
                    .is_some_and(|s| s.sync == pb::SyncStatus::Synced as i32 && s.digest == digest)
            });
        let healthy = !clusters.is_empty()
            && clusters.iter().all(|c| {
                statuses
                    .get(c)
                    .is_some_and(|s| s.health == pb::HealthStatus::Healthy as i32)
            });
        let sent = prev_by_app.get(app_name.as_str()).map(|p| &p.sync_commands);
        let sync_started = sent.is_some_and(|sent| {
            !sent.is_empty()
                && sent.iter().all(|(cluster, id)| {
                    statuses.get(cluster).is_some_and(|s| {
                        [&s.requested_operation, &s.operation]
                            .into_iter()
                            .flatten()
                            .any(|op| &op.command_id == id)
                    })
                })
        });
        let error =
            !app.error.is_empty() || bundle.as_ref().is_some_and(|b| !b.render_error.is_empty());
        observed.push(Observed {
            name: app_name.clone(),
            labels: app.app.metadata.labels.clone(),
            revision,
            digest,
            synced,
            healthy,
            sync_started,
            error,
        });
        targets.insert(app_name.clone(), (app.app, clusters));
    }
    let now = crate::clock::now_ms();
    let pass = rolling_sync::progress(&steps, &previous.applications, &observed, now);
    let mut next = RolloutRecord {
        set: name.to_owned(),
        applications: pass.statuses,
        progressing: pass.progressing,
        invalid: pass.invalid,
        ..Default::default()
    };
    // The step's syncs go as one batch: renders at once, one flush.
    let mut batch = Vec::new();
    let mut sending = Vec::new();
    for app_name in &pass.to_sync {
        let Some((app, clusters)) = targets.get(app_name) else {
            continue;
        };
        let Some(status) = next
            .applications
            .iter()
            .find(|s| &s.application == app_name)
        else {
            continue;
        };
        // Each cluster once per Pending period; one not reached is asked
        // again on a later pass (its agent's next report wakes the set).
        let missing: Vec<String> = clusters
            .iter()
            .filter(|c| !status.sync_commands.contains_key(*c))
            .cloned()
            .collect();
        if missing.is_empty() {
            continue;
        }
        let prune = app
            .metadata
            .annotations
            .get(PRUNE_ANNOTATION)
            .is_some_and(|v| v == "true");
        batch.push((&**app, missing, prune, format!("appset:{name}")));
        sending.push(app_name);
    }
    let answers = crate::api::ops::sync_clusters(ctx, batch).await;
    for (app_name, answer) in sending.into_iter().zip(answers) {
        let Some(status) = next
            .applications
            .iter_mut()
            .find(|s| &s.application == app_name)
        else {
            continue;
        };
        match answer {
            Ok(resp) => {
                for r in resp.results {
                    if r.error.is_empty() && !r.command_id.is_empty() {
                        rollouts.counters.syncs.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::metrics().rollout_syncs(1);
                        status.sync_commands.insert(r.cluster, r.command_id);
                    }
                }
                tracing::info!(appset = %name, app = %app_name, step = %status.step, clusters = ?resp.clusters, not_connected = ?resp.not_connected, "rolling sync: sync sent");
            }
            Err(e) => {
                tracing::warn!(appset = %name, app = %app_name, error = %e.message(), "rolling sync: sync not sent");
            }
        }
    }
    let by_status = STATUSES.map(|st| {
        (
            st.as_str(),
            next.applications.iter().filter(|s| s.status == st).count(),
        )
    });
    crate::metrics::metrics().rollout(name, next.current_step(), &by_status);
    if next == previous {
        return Ok(false);
    }
    for s in &next.applications {
        let before = prev_by_app.get(s.application.as_str());
        if before.is_none_or(|b| b.status != s.status) {
            tracing::info!(appset = %name, app = %s.application, step = %s.step, status = s.status.as_str(), message = %s.message, "rolling sync: application status");
        }
    }
    store.put_rollout(&next)?;
    store.flush_async().await?;
    Ok(true)
}

/// `flotillaWaves` was removed from set `name` (it may now be
/// RollingSync or nothing): the pins its rollout put on its applications
/// go, and each application renders again at Git's revision, back to
/// ordinary (automated) sync. [`crate::history::effective_commit`] would
/// drop them at the next render anyway; this makes that render now.
///
/// # Errors
/// The store cannot be read or written.
fn release_waves_pins(ctx: &HubContext, name: &str) -> Result<(), StoreError> {
    let Some(rec) = ctx.store.rollout(name)? else {
        return Ok(());
    };
    let Some(w) = rec.waves else {
        return Ok(());
    };
    let by = pinned_by(name);
    let mut released = Vec::new();
    for c in &w.clusters {
        // A render may have found the waves gone first and released the
        // pin itself (recording it); it is released and recorded once.
        if ctx.store.app_pin(&c.app)?.is_some_and(|(_, b)| b == by)
            && crate::history::release_rollout_pin(
                &ctx.store,
                &c.app,
                "flotillaWaves removed from the set",
                vec![c.cluster.clone()],
            )?
        {
            ctx.git.render_soon(&c.app);
            released.push(c.app.clone());
        }
    }
    tracing::info!(appset = %name, apps = ?released, "flotillaWaves removed: rollout pins released");
    let next = crate::store::records::RolloutRecord { waves: None, ..rec };
    if next.deleting.is_empty() && next.applications.is_empty() {
        ctx.store.remove_rollout(name)?;
    } else {
        ctx.store.put_rollout(&next)?;
    }
    Ok(())
}

/// The pin a waves rollout puts on its applications says so.
fn pinned_by(set: &str) -> String {
    format!("rollout:{set}")
}

/// One pass of a waves rollout over set `name`: gathers each generated
/// application's cluster, revisions and health, lets [`waves::plan`]
/// decide, pins every application to the revision the rollout holds it
/// at, and sends the syncs through [`crate::api::ops::sync_clusters`]
/// (history: `rollout:<set>`; the path every sync window check sits on).
///
/// # Errors
/// The store cannot be read or written.
async fn waves_pass(
    ctx: &HubContext,
    rollouts: &Rollouts,
    name: &str,
    rec: &crate::store::AppSetRecord,
) -> Result<bool, StoreError> {
    let store = &ctx.store;
    let spec = match waves::WavesSpec::parse(rec.raw.pointer("/spec/strategy/flotillaWaves")) {
        Ok(Some(s)) => s,
        // The lifecycle refuses the set and reports why.
        Ok(None) | Err(_) => return Ok(false),
    };
    let origin = crate::appset::lifecycle::origin_of(name);
    let previous = store.rollout(name)?.unwrap_or_else(|| RolloutRecord {
        set: name.to_owned(),
        ..Default::default()
    });
    let window_now = crate::project::window::now();
    let mut targets = Vec::with_capacity(rec.generated.len());
    let mut apps = HashMap::new();
    let mut problems = Vec::new();
    for app_name in &rec.generated {
        let Some(app) = store.app(app_name)? else {
            continue;
        };
        if app.origin != origin {
            continue;
        }
        let clusters = crate::history::targeted_clusters(store, &app.app)?;
        let [cluster] = clusters.as_slice() else {
            problems.push(format!(
                "application {app_name:?} targets {} clusters; waves stage one cluster per application (generate one application per cluster)",
                clusters.len()
            ));
            continue;
        };
        let labels = store
            .cluster(cluster)?
            .map(|c| c.labels)
            .unwrap_or_default();
        let ops = store.app_ops(app_name)?;
        let current = ctx.fleet.desired_revision(app_name);
        let git = if ops.git_revision.is_empty() {
            current.clone()
        } else {
            ops.git_revision.clone()
        };
        // A deploy window that blocks this cluster's sync holds it where
        // it is; the core neither starts it nor counts the time held
        // towards the progress deadline.
        let held_until_ms = crate::project::window::blocked_clusters(
            store,
            &app.app,
            std::slice::from_ref(cluster),
            false,
            window_now,
        )?
        .into_iter()
        .next()
        .map(|(_, block)| block.until.map_or(i64::MAX, |t| t.as_millisecond()));
        let status = store.statuses_of_app(app_name)?.remove(cluster);
        let synced_at = status
            .as_ref()
            .filter(|s| s.sync == pb::SyncStatus::Synced as i32)
            .map(|s| s.revision.clone())
            .unwrap_or_default();
        targets.push(waves::Target {
            app: app_name.clone(),
            cluster: cluster.clone(),
            labels,
            git,
            current,
            synced_at,
            healthy: status
                .as_ref()
                .is_some_and(|s| s.health == pb::HealthStatus::Healthy as i32),
            degraded: status
                .as_ref()
                .is_some_and(|s| s.health == pb::HealthStatus::Degraded as i32),
            held_until_ms,
        });
        apps.insert(app_name.clone(), (app.app, ops.pinned));
    }
    for p in &problems {
        tracing::warn!(appset = %name, "{p}");
    }
    if targets.iter().all(|t| t.git.is_empty()) {
        // Nothing rendered yet: nothing to stage.
        return Ok(false);
    }
    let controls = rollouts.take_controls(name);
    let now = crate::clock::now_ms();
    let pass = waves::plan(&spec, previous.waves.as_ref(), &targets, &controls, now);
    let mut next = previous.clone();
    let mut record = pass.record;
    if !problems.is_empty() {
        record.message = format!("{}; {}", record.message, problems.join("; "));
    }
    // Every application held at the revision the rollout gives it: a
    // cluster not reached keeps its previous revision, enforced as usual.
    // A deploy window that blocks a cluster's sync holds its pin too (a
    // rollback the core asked for while a window opened): the cluster
    // keeps its revision until the window lets the rollout on.
    let mut held = std::collections::BTreeSet::new();
    for t in targets.iter().filter(|t| t.held_until_ms.is_some()) {
        held.insert((t.app.clone(), t.cluster.clone()));
    }
    for c in &record.clusters {
        let Some((_, pinned)) = apps.get(&c.app) else {
            continue;
        };
        if !c.revision.is_empty() && pinned.as_deref() != Some(c.revision.as_str()) {
            if held.contains(&(c.app.clone(), c.cluster.clone())) {
                continue;
            }
            crate::history::set_pin_by(store, &c.app, Some(c.revision.clone()), &pinned_by(name))?;
        }
    }
    // One trace per rollout (set, target revision; the attribute is
    // `revision`: exporters already put the module in `target`): its root
    // span is made
    // when the rollout starts and its context kept with the record; each
    // pass that does something for it (syncs, transitions) is a child, and
    // the desired state it dispatches carries that trace to the agents.
    if record.trace_context.is_empty() {
        let from = previous
            .waves
            .as_ref()
            .map(|w| w.target.as_str())
            .unwrap_or_default();
        let root = tracing::info_span!(parent: None, "rollout", appset = %name, revision = %record.target, from = %from, waves = spec.waves.len());
        record.trace_context = crate::telemetry::trace_context_of(&root)
            .into_iter()
            .collect();
    }
    if !pass.syncs.is_empty() || !pass.events.is_empty() {
        let step = tracing::info_span!(
            "rollout.step",
            appset = %name,
            revision = %record.target,
            wave = record.wave + 1,
            phase = record.phase.as_str(),
            syncs = pass.syncs.len(),
            events = %pass.events.iter().map(|e| e.text.as_str()).collect::<Vec<_>>().join("; "),
        );
        crate::telemetry::set_parent(&step, &record.trace_context.clone().into_iter().collect());
        waves_step(ctx, rollouts, name, &apps, &held, &controls, &pass.syncs)
            .instrument(step.clone())
            .await;
        let _in_step = step.enter();
        record_events(store, name, &record, &pass.events)?;
    }
    let count = |st: waves::ClusterState| record.clusters.iter().filter(|c| c.state == st).count();
    crate::metrics::metrics().waves(
        name,
        record.wave,
        &[
            ("updated", count(waves::ClusterState::Updated)),
            ("updating", count(waves::ClusterState::Updating)),
            ("pending", count(waves::ClusterState::Waiting)),
            (
                "failed",
                count(waves::ClusterState::Failed) + count(waves::ClusterState::RolledBack),
            ),
        ],
        &record.wave_ms,
    );
    next.waves = Some(record);
    if next == previous {
        return Ok(false);
    }
    store.put_rollout(&next)?;
    store.flush_async().await?;
    Ok(!pass.syncs.is_empty())
}

/// The syncs of one waves pass over set `name`, through
/// [`crate::api::ops::sync_clusters`] (history: `rollout:<set>`), skipping
/// clusters a deploy window holds.
async fn waves_step(
    ctx: &HubContext,
    rollouts: &Rollouts,
    name: &str,
    apps: &HashMap<String, (Arc<crate::model::Application>, Option<String>)>,
    held: &std::collections::BTreeSet<(String, String)>,
    controls: &[(waves::Control, String)],
    syncs: &[waves::Sync],
) {
    let abort_by = controls
        .iter()
        .find(|(c, _)| *c == waves::Control::Abort)
        .map(|(_, by)| by.clone());
    let mut batch = Vec::with_capacity(syncs.len());
    let mut sending = Vec::with_capacity(syncs.len());
    for sync in syncs {
        let Some((app, _)) = apps.get(&sync.app) else {
            continue;
        };
        if held.contains(&(sync.app.clone(), sync.cluster.clone())) {
            continue;
        }
        let prune = app
            .spec
            .sync_policy
            .as_ref()
            .and_then(|p| p.automated.as_ref())
            .is_some_and(|a| a.prune);
        let by = match (&abort_by, sync.rollback) {
            (Some(who), true) => format!("{} (abort by {who})", pinned_by(name)),
            (None, true) => format!("{} (autoRollback)", pinned_by(name)),
            _ => pinned_by(name),
        };
        batch.push((&**app, vec![sync.cluster.clone()], prune, by));
        sending.push(sync);
    }
    // The wave's renders at once and one flush for the pass.
    let answers = crate::api::ops::sync_clusters(ctx, batch).await;
    for (sync, answer) in sending.into_iter().zip(answers) {
        match answer {
            Ok(_) => {
                rollouts.counters.syncs.fetch_add(1, Ordering::Relaxed);
                tracing::info!(appset = %name, app = %sync.app, cluster = %sync.cluster, revision = %sync.revision, rollback = sync.rollback, "waves: sync sent");
            }
            Err(e) => {
                tracing::warn!(appset = %name, app = %sync.app, cluster = %sync.cluster, error = %e.message(), "waves: sync not sent");
            }
        }
    }
}

/// Logs each transition of a pass over set `name` and records it in the
/// history of every application it touched, with who did it (the person
/// behind a control, else `rollout:<set>`).
///
/// # Errors
/// The store cannot be read or written.
fn record_events(
    store: &crate::store::Store,
    name: &str,
    record: &waves::WavesRecord,
    events: &[waves::Event],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let cluster_of: HashMap<&str, &str> = record
        .clusters
        .iter()
        .map(|c| (c.app.as_str(), c.cluster.as_str()))
        .collect();
    let at_ms = crate::clock::now_ms();
    for e in events {
        let by = if e.by.is_empty() {
            pinned_by(name)
        } else {
            e.by.clone()
        };
        tracing::info!(appset = %name, wave = record.wave, phase = record.phase.as_str(), by = %by, apps = e.apps.len(), "waves: {}", e.text);
        for app in &e.apps {
            let clusters = cluster_of
                .get(app.as_str())
                .map(|c| vec![(*c).to_owned()])
                .unwrap_or_default();
            crate::history::record_event(
                store,
                app,
                crate::history::HistoryEvent {
                    at_ms,
                    event: e.text.clone(),
                    initiated_by: by.clone(),
                    revision: record.target.clone(),
                    clusters,
                },
            )?;
        }
    }
    Ok(())
}
