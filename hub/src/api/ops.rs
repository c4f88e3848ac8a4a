//! `HubApi` sync, history and rollback.
//!
//! A sync fetches the application's own sources now and renders the
//! application alone (at its target revision, or at the revision asked
//! for, which pins it) through the Git loop, then sends
//! `SyncNow` on the open stream of every targeted cluster: the agent
//! applies the bundle it holds even when the application is not
//! automated. The stream carries the new desired state before the command.
//! Each cluster's command has its own id: a real sync returns them, and the
//! agent records the id in the `OperationState` of the sync it starts; a
//! dry run waits (bounded) for every agent's `SyncResult` and returns them.

use tonic::{Request, Response, Status};

use super::{Caller, HubContext, require_write};
use crate::history;
use crate::model::Application;
use flotilla_proto as pb;

fn caller_name<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<Caller>()
        .map(|c| format!("user:{}", c.subject))
        .unwrap_or_else(|| "user:unknown".to_owned())
}

fn load_app(ctx: &HubContext, name: &str) -> Result<Application, Status> {
    ctx.store
        .app(name)?
        .map(|r| std::sync::Arc::unwrap_or_clone(r.app))
        .ok_or_else(|| Status::not_found(format!("application {name:?} not found")))
}

/// The clusters `app` targets, or only `only` when it is given (it must be
/// one of them).
fn selected_clusters(
    ctx: &HubContext,
    app: &Application,
    only: &str,
) -> Result<Vec<String>, Status> {
    let clusters = history::targeted_clusters(&ctx.store, app)?;
    if only.is_empty() {
        return Ok(clusters);
    }
    if !clusters.iter().any(|c| c == only) {
        return Err(Status::invalid_argument(format!(
            "application {:?} does not target cluster {only:?} (it targets: {})",
            app.metadata.name,
            clusters.join(", ")
        )));
    }
    Ok(vec![only.to_owned()])
}

/// Refuses a sync of `app` on `clusters` that a sync window of its project
/// blocks now: `manual` for a user's sync or rollback (a window with
/// `manualSync` lets it pass), automated for a rollout's.
///
/// # Errors
/// FAILED_PRECONDITION naming the window, the project and the clusters.
fn refuse_blocked(
    ctx: &HubContext,
    app: &Application,
    clusters: &[String],
    manual: bool,
) -> Result<(), Status> {
    let blocked = crate::project::window::blocked_clusters(
        &ctx.store,
        app,
        clusters,
        manual,
        crate::project::window::now(),
    )?;
    let Some((_, block)) = blocked.first() else {
        return Ok(());
    };
    let names: Vec<&str> = blocked.iter().map(|(c, _)| c.as_str()).collect();
    let project = crate::project::project_of(app);
    Err(Status::failed_precondition(format!(
        "application {:?}: sync on cluster {} {}{}",
        app.metadata.name,
        names.join(", "),
        block.message(project),
        if manual {
            " (the window does not allow manual sync: manualSync is false)"
        } else {
            ""
        }
    )))
}

/// Syncs each of `batch` (application, clusters, prune, initiated by) as
/// `flotilla app sync` does (render now, send `SyncNow`, record history as
/// initiated by), refused where a sync window blocks it, treated as
/// automated as Argo CD's ApplicationSet controller's syncs are: the path
/// the rollout reconciler ([`crate::rollout`]) sends a pass's syncs
/// through. The renders run at once and the history entries share one
/// store flush (a wave of 250 clusters sent one by one waited for 250
/// renders and 250 flushes in a row). Answers in the order of `batch`.
pub async fn sync_clusters(
    ctx: &HubContext,
    batch: Vec<(&Application, Vec<String>, bool, String)>,
) -> Vec<Result<pb::SyncApplicationResponse, Status>> {
    let refused: Vec<Result<(), Status>> = batch
        .iter()
        .map(|(app, clusters, _, _)| refuse_blocked(ctx, app, clusters, false))
        .collect();
    futures::future::join_all(
        batch
            .iter()
            .zip(&refused)
            .filter(|(_, r)| r.is_ok())
            .map(|((app, ..), _)| ctx.git.render_app(&app.metadata.name)),
    )
    .await;
    let mut sent = Vec::with_capacity(batch.len());
    for ((app, clusters, prune, by), refused) in batch.into_iter().zip(refused) {
        sent.push(refused.and_then(|()| send_sync(ctx, app, clusters, prune, false, &by)));
    }
    if let Err(e) = ctx.store.flush_async().await {
        let e = Status::from(e);
        return sent.into_iter().map(|_| Err(e.clone())).collect();
    }
    let mut out = Vec::with_capacity(sent.len());
    for s in sent {
        out.push(match s {
            Ok(s) => Ok(s.answered(ctx).await),
            Err(e) => Err(e),
        });
    }
    out
}

/// Renders now and sends `SyncNow` to `clusters`; records history unless
/// `dry_run`.
async fn render_and_sync(
    ctx: &HubContext,
    app: &Application,
    clusters: Vec<String>,
    prune: bool,
    dry_run: bool,
    initiated_by: &str,
) -> Result<pb::SyncApplicationResponse, Status> {
    // This application only: a slow repository of another one must not
    // hold up its sync.
    ctx.git.render_app(&app.metadata.name).await;
    let sent = send_sync(ctx, app, clusters, prune, dry_run, initiated_by)?;
    ctx.store.flush_async().await?;
    Ok(sent.answered(ctx).await)
}

/// A sync sent ([`send_sync`]), not yet flushed nor answered.
struct SentSync {
    app: String,
    revision: String,
    sent: Vec<String>,
    not_connected: Vec<String>,
    history_id: u64,
    results: Vec<pb::ClusterSyncResult>,
    /// Dry runs: the answers to wait for.
    waits: Vec<(
        String,
        String,
        tokio::sync::oneshot::Receiver<pb::SyncResult>,
    )>,
    prune: bool,
    dry_run: bool,
    initiated_by: String,
}

impl SentSync {
    /// Waits for the dry runs' answers (the slowest agent bounds the
    /// wait) and makes the response. Call after the store is flushed.
    async fn answered(self, ctx: &HubContext) -> pb::SyncApplicationResponse {
        let Self {
            app,
            revision,
            sent,
            not_connected,
            history_id,
            mut results,
            waits,
            prune,
            dry_run,
            initiated_by,
        } = self;
        tracing::info!(app = %app, revision = %revision, clusters = ?sent, ?not_connected, prune, dry_run, initiated_by, "sync sent");
        let name = &app;
        let answers =
            futures::future::join_all(waits.into_iter().map(|(cluster, id, rx)| async move {
                let answer = ctx.commands.syncs.wait(&id, rx, DRY_RUN_TIMEOUT).await;
                dry_run_result(name, cluster, id, answer)
            }))
            .await;
        results.extend(answers);
        results.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        pb::SyncApplicationResponse {
            revision,
            clusters: sent,
            not_connected,
            history_id,
            results,
        }
    }
}

/// Sends `SyncNow` for the rendered `app` to `clusters` and records the
/// deployment in its history unless `dry_run`.
///
/// # Errors
/// The application has no rendered state or its render failed, or the
/// store cannot be written.
fn send_sync(
    ctx: &HubContext,
    app: &Application,
    clusters: Vec<String>,
    prune: bool,
    dry_run: bool,
    initiated_by: &str,
) -> Result<SentSync, Status> {
    let name = &app.metadata.name;
    let bundle = ctx.fleet.bundle(name).ok_or_else(|| {
        let error = ctx
            .store
            .app(name)
            .ok()
            .flatten()
            .map(|r| r.error)
            .unwrap_or_default();
        Status::failed_precondition(format!(
            "application {name:?} has no rendered state: {error}"
        ))
    })?;
    // A failed render keeps the last good bundle for the agents; a sync
    // must not quietly apply that older state.
    let error = if bundle.render_error.is_empty() {
        ctx.store.app(name)?.map(|r| r.error).unwrap_or_default()
    } else {
        bundle.render_error.clone()
    };
    if !error.is_empty() {
        return Err(Status::failed_precondition(format!(
            "application {name:?} cannot be rendered: {error}"
        )));
    }
    let mut sent = Vec::new();
    let mut not_connected = Vec::new();
    let mut results = Vec::new();
    let mut waits = Vec::new();
    for cluster in clusters {
        let id = crate::commands::command_id();
        // Registered before sending, so a quick answer is not lost.
        let rx = dry_run.then(|| ctx.commands.syncs.expect(&id, &cluster));
        let command = pb::Command {
            id: id.clone(),
            kind: Some(pb::command::Kind::Sync(pb::SyncNow {
                app: name.clone(),
                prune,
                dry_run,
            })),
        };
        if ctx.fleet.is_connected(&cluster) && ctx.commands.send(&cluster, command) {
            match rx {
                Some(rx) => waits.push((cluster.clone(), id, rx)),
                None => results.push(pb::ClusterSyncResult {
                    cluster: cluster.clone(),
                    command_id: id,
                    ..Default::default()
                }),
            }
            sent.push(cluster);
        } else {
            ctx.commands.syncs.forget(&id);
            results.push(pb::ClusterSyncResult {
                cluster: cluster.clone(),
                error: "cluster not connected".to_owned(),
                ..Default::default()
            });
            not_connected.push(cluster);
        }
    }
    // The commit the application is at, newer than its bundle's when the
    // content did not change since (the agents report that commit too).
    let revision = ctx.fleet.desired_revision(name);
    let history_id = if dry_run {
        0
    } else {
        let mut all = sent.clone();
        all.extend(not_connected.iter().cloned());
        let _history = ctx.git.history_lock();
        history::record(&ctx.store, app, &revision, initiated_by, all)?
    };
    Ok(SentSync {
        app: name.clone(),
        revision,
        sent,
        not_connected,
        history_id,
        results,
        waits,
        prune,
        dry_run,
        initiated_by: initiated_by.to_owned(),
    })
}

/// `HubApi.TerminateOperation` (operate: terminate-op): sends
/// `TerminateOperation` to every targeted cluster whose reported operation
/// of the application is Running. A cluster that reports one but has no open
/// stream is answered as not reached.
///
/// # Errors
/// Unknown application, a read-only token, or no targeted cluster reports a
/// running operation (FAILED_PRECONDITION, as Argo CD refuses to terminate
/// when no operation is in progress).
pub async fn terminate(
    ctx: &HubContext,
    request: Request<pb::TerminateOperationRequest>,
) -> Result<Response<pb::TerminateOperationResponse>, Status> {
    require_write(&request)?;
    let by = caller_name(&request);
    let req = request.into_inner();
    let app = load_app(ctx, &req.name)?;
    let name = &app.metadata.name;
    let clusters = selected_clusters(ctx, &app, "")?;
    let statuses = ctx.store.statuses_of_app(name)?;
    let running: Vec<String> = clusters
        .into_iter()
        .filter(|c| {
            statuses
                .get(c)
                .and_then(|st| st.operation.as_ref())
                .is_some_and(|op| op.phase == "Running")
        })
        .collect();
    if running.is_empty() {
        return Err(Status::failed_precondition(format!(
            "no operation is in progress on application {name}"
        )));
    }
    let mut results = Vec::with_capacity(running.len());
    for cluster in running {
        let id = crate::commands::command_id();
        let command = pb::Command {
            id: id.clone(),
            kind: Some(pb::command::Kind::Terminate(pb::TerminateOperation {
                app: name.clone(),
            })),
        };
        if ctx.fleet.is_connected(&cluster) && ctx.commands.send(&cluster, command) {
            results.push(pb::ClusterTerminateResult {
                cluster,
                command_id: id,
                error: String::new(),
            });
        } else {
            results.push(pb::ClusterTerminateResult {
                cluster,
                command_id: String::new(),
                error: "cluster not connected".to_owned(),
            });
        }
    }
    tracing::info!(app = %name, results = ?results.iter().map(|r| (&r.cluster, &r.error)).collect::<Vec<_>>(), initiated_by = %by, "terminate operation sent");
    Ok(Response::new(pb::TerminateOperationResponse { results }))
}

/// How long the hub waits for an agent's dry run.
const DRY_RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// At most this many objects per cluster in a dry-run answer.
const MAX_RESULT_OBJECTS: usize = 10_000;
/// Longer messages from an agent are cut to this many characters.
const MAX_RESULT_TEXT: usize = 2_048;

fn clip(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(MAX_RESULT_TEXT) {
        text.truncate(at);
        text.push('…');
    }
    text
}

/// One cluster's row of a dry run from the agent's answer (already matched
/// to this cluster and command id), or an error when none came in time or
/// it is about something else.
fn dry_run_result(
    app: &str,
    cluster: String,
    command_id: String,
    answer: Option<pb::SyncResult>,
) -> pb::ClusterSyncResult {
    let mut row = pb::ClusterSyncResult {
        cluster,
        command_id,
        ..Default::default()
    };
    let Some(answer) = answer else {
        row.error = format!(
            "no answer from the agent within {}s",
            DRY_RUN_TIMEOUT.as_secs()
        );
        return row;
    };
    if answer.app != app || !answer.dry_run {
        tracing::warn!(cluster = %row.cluster, app, answered = %answer.app, "dry-run answer about another application or a real sync dropped");
        row.error = "the agent answered about something else".to_owned();
        return row;
    }
    row.revision = clip(answer.revision);
    row.error = clip(answer.error);
    let total = answer.resources.len();
    row.resources = answer
        .resources
        .into_iter()
        .take(MAX_RESULT_OBJECTS)
        .map(|r| pb::ResourceResult {
            key: r.key,
            action: clip(r.action),
            message: clip(r.message),
            error: clip(r.error),
        })
        .collect();
    if total > MAX_RESULT_OBJECTS && row.error.is_empty() {
        row.error = format!("only the first {MAX_RESULT_OBJECTS} of {total} objects are shown");
    }
    row
}

/// `HubApi.SyncApplication`.
///
/// # Errors
/// Unknown application or cluster, unreachable repository, unknown
/// revision, a render error, or another revision while automated.
pub async fn sync(
    ctx: &HubContext,
    request: Request<pb::SyncApplicationRequest>,
) -> Result<Response<pb::SyncApplicationResponse>, Status> {
    require_write(&request)?;
    let by = caller_name(&request);
    let req = request.into_inner();
    let app = load_app(ctx, &req.name)?;
    let clusters = selected_clusters(ctx, &app, &req.cluster)?;
    if clusters.is_empty() {
        return Err(Status::failed_precondition(format!(
            "application {:?} targets no registered cluster",
            req.name
        )));
    }
    if req.dry_run {
        refuse_dry_run_of_another_state(ctx, &req)?;
    }
    let src = &app.spec.source;
    let target = ctx
        .git
        .resolve_app(&app, &src.target_revision)
        .await
        .map_err(Status::unavailable)?;
    let commit = if req.revision.trim().is_empty() {
        target.clone()
    } else {
        ctx.git
            .resolve_app(&app, &req.revision)
            .await
            .map_err(Status::invalid_argument)?
    };
    let pin = (commit != target).then(|| commit.clone());
    if pin.is_some() && history::is_automated(&app) {
        return Err(Status::failed_precondition(
            "cannot sync to a revision other than the target revision while automated sync is enabled",
        ));
    }
    if !req.dry_run {
        refuse_blocked(ctx, &app, &clusters, true)?;
        let _history = ctx.git.history_lock();
        history::set_pin_by(&ctx.store, &req.name, pin, "sync --revision")?;
    }
    let out = render_and_sync(ctx, &app, clusters, req.prune, req.dry_run, &by).await?;
    Ok(Response::new(out))
}

/// A dry run checks the rendered state the agents hold, so it cannot
/// preview another one: any `--revision` is refused (also one naming the
/// target's current commit: a pinned application's agents hold the pinned
/// state), and so is a dry run of a pinned application, whose sync without
/// `--revision` would move it back to Git.
fn refuse_dry_run_of_another_state(
    ctx: &HubContext,
    req: &pb::SyncApplicationRequest,
) -> Result<(), Status> {
    if !req.revision.trim().is_empty() {
        return Err(Status::invalid_argument(
            "--dry-run with --revision is not supported: a dry run checks the rendered state the agents hold",
        ));
    }
    if let Some(pin) = ctx.store.app_ops(&req.name)?.pinned {
        return Err(Status::failed_precondition(format!(
            "application {:?} is pinned to {pin}: a dry run checks the pinned state the agents hold, not what a sync without --revision would apply (Git's target revision); use `app diff` to compare the pinned state",
            req.name
        )));
    }
    Ok(())
}

/// `HubApi.RollbackApplication`.
///
/// # Errors
/// Automated sync is on, the id is unknown, or the render fails.
pub async fn rollback(
    ctx: &HubContext,
    request: Request<pb::RollbackApplicationRequest>,
) -> Result<Response<pb::SyncApplicationResponse>, Status> {
    require_write(&request)?;
    let req = request.into_inner();
    let app = load_app(ctx, &req.name)?;
    if history::is_automated(&app) {
        return Err(Status::failed_precondition(
            "rollback cannot be initiated when auto-sync is enabled",
        ));
    }
    if app.spec.has_multiple_sources() {
        return Err(Status::failed_precondition(format!(
            "rollback is not supported for application {:?}: it has multiple sources (spec.sources)",
            req.name
        )));
    }
    if req.dry_run {
        // The agents would check the state they hold, not the entry's.
        return Err(Status::invalid_argument(
            "a dry run of a rollback is not supported: a dry run checks the rendered state the agents hold",
        ));
    }
    let ops = ctx.store.app_ops(&req.name)?;
    let entry = ops.entry(req.id).cloned().ok_or_else(|| {
        let ids: Vec<String> = ops.history.iter().map(|d| d.id.to_string()).collect();
        Status::not_found(format!(
            "application {:?} has no history id {} (ids: {})",
            req.name,
            req.id,
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            }
        ))
    })?;
    let clusters = history::targeted_clusters(&ctx.store, &app)?;
    if clusters.is_empty() {
        return Err(Status::failed_precondition(format!(
            "application {:?} targets no registered cluster",
            req.name
        )));
    }
    refuse_blocked(ctx, &app, &clusters, true)?;
    if !req.dry_run {
        let _history = ctx.git.history_lock();
        history::set_pin_by(
            &ctx.store,
            &req.name,
            Some(entry.revision.clone()),
            "rollback",
        )?;
    }
    tracing::info!(app = %req.name, id = req.id, revision = %entry.revision, "rollback");
    let out = render_and_sync(ctx, &app, clusters, req.prune, req.dry_run, "rollback").await?;
    Ok(Response::new(out))
}

/// `HubApi.GetApplicationHistory`.
///
/// # Errors
/// Unknown application.
pub async fn history(
    ctx: &HubContext,
    request: Request<pb::GetApplicationHistoryRequest>,
) -> Result<Response<pb::ApplicationHistory>, Status> {
    let name = request.into_inner().name;
    load_app(ctx, &name)?;
    let ops = ctx.store.app_ops(&name)?;
    Ok(Response::new(pb::ApplicationHistory {
        entries: ops
            .history
            .iter()
            .map(|d| pb::DeploymentRecord {
                id: d.id,
                revision: d.revision.clone(),
                deployed_ms: d.deployed_ms,
                initiated_by: d.initiated_by.clone(),
                clusters: d.clusters.clone(),
            })
            .collect(),
        pinned_revision: ops.pinned.unwrap_or_default(),
        events: ops
            .events
            .iter()
            .map(|e| pb::HistoryEvent {
                at_ms: e.at_ms,
                event: e.event.clone(),
                initiated_by: e.initiated_by.clone(),
                revision: e.revision.clone(),
                clusters: e.clusters.clone(),
            })
            .collect(),
    }))
}

/// How long the hub waits for an agent's diff.
const DIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `HubApi.DiffApplication`: one `DiffRequest` per targeted, connected
/// cluster, answered by the agents' server-side comparison. Read-only.
///
/// # Errors
/// Unknown application or cluster.
pub async fn diff(
    ctx: &HubContext,
    request: Request<pb::DiffApplicationRequest>,
) -> Result<Response<pb::DiffApplicationResponse>, Status> {
    let req = request.into_inner();
    let app = load_app(ctx, &req.name)?;
    let clusters = selected_clusters(ctx, &app, &req.cluster)?;
    let revision = ctx.fleet.desired_revision(&req.name);
    let mut waits = Vec::new();
    let mut out = Vec::new();
    for cluster in clusters {
        let id = crate::commands::command_id();
        let rx = ctx.commands.diffs.expect(&id, &cluster);
        let command = pb::Command {
            id: id.clone(),
            kind: Some(pb::command::Kind::Diff(pb::DiffRequest {
                app: req.name.clone(),
            })),
        };
        if ctx.fleet.is_connected(&cluster) && ctx.commands.send(&cluster, command) {
            waits.push((cluster, id, rx));
        } else {
            ctx.commands.diffs.forget(&id);
            out.push(pb::ClusterDiff {
                cluster,
                error: "cluster not connected".into(),
                ..Default::default()
            });
        }
    }
    // Every cluster at once: the slowest agent bounds the wait.
    let answers = futures::future::join_all(waits.into_iter().map(|(cluster, id, rx)| {
        let revision = revision.clone();
        async move {
            match tokio::time::timeout(DIFF_TIMEOUT, rx).await {
                Ok(Ok(result)) => (
                    None,
                    pb::ClusterDiff {
                        cluster,
                        error: result.error,
                        resources: result.resources,
                        revision,
                    },
                ),
                _ => (
                    Some(id),
                    pb::ClusterDiff {
                        cluster,
                        error: format!(
                            "no answer from the agent within {}s",
                            DIFF_TIMEOUT.as_secs()
                        ),
                        ..Default::default()
                    },
                ),
            }
        }
    }))
    .await;
    for (unanswered, row) in answers {
        if let Some(id) = unanswered {
            ctx.commands.diffs.forget(&id);
        }
        out.push(row);
    }
    out.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    // wire: the answer of every cluster together fits in one response.
    let share = ctx.wire.max_message_size.saturating_sub(64 * 1024) / out.len().max(1);
    for row in &mut out {
        pb::wire::bound_diff(&mut row.resources, &mut row.error, share);
    }
    Ok(Response::new(pb::DiffApplicationResponse { clusters: out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_rows_keep_only_answers_about_the_application() {
        let answer = |app: &str, dry_run: bool| pb::SyncResult {
            command_id: "c1".into(),
            app: app.into(),
            revision: "abc".into(),
            dry_run,
            resources: vec![pb::ResourceResult {
                action: "created".into(),
                message: "x".repeat(MAX_RESULT_TEXT + 10),
                ..Default::default()
            }],
            error: String::new(),
        };
        let row = dry_run_result("web", "east".into(), "c1".into(), Some(answer("web", true)));
        assert!(row.error.is_empty());
        assert_eq!(row.revision, "abc");
        assert_eq!(row.resources.len(), 1);
        assert_eq!(
            row.resources[0].message.chars().count(),
            MAX_RESULT_TEXT + 1
        );
        let other = dry_run_result("web", "east".into(), "c1".into(), Some(answer("db", true)));
        assert!(other.resources.is_empty() && !other.error.is_empty());
        let real = dry_run_result(
            "web",
            "east".into(),
            "c1".into(),
            Some(answer("web", false)),
        );
        assert!(real.resources.is_empty() && !real.error.is_empty());
        let late = dry_run_result("web", "east".into(), "c1".into(), None);
        assert!(late.error.contains("no answer"), "{}", late.error);
        assert_eq!(late.command_id, "c1");
    }
}
