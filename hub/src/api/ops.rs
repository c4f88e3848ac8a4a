//! `HubApi` sync, history and rollback.
//!
//! A sync renders the application (at its target revision, or at the
//! revision asked for, which pins it) through the Git loop, then sends
//! `SyncNow` on the open stream of every targeted cluster: the agent
//! applies the bundle it holds even when the application is not
//! automated. The stream carries the new desired state before the command.

use tonic::{Request, Response, Status};

use super::{Caller, HubContext, require_write};
use crate::history;
use crate::model::Application;
use flotilla_proto as pb;

fn caller_name<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<Caller>()
        .map(|c| format!("user:{}", c.token_name))
        .unwrap_or_else(|| "user:unknown".to_owned())
}

fn load_app(ctx: &HubContext, name: &str) -> Result<Application, Status> {
    ctx.store
        .app(name)?
        .map(|r| r.app)
        .ok_or_else(|| Status::not_found(format!("application {name:?} not found")))
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
    let name = &app.metadata.name;
    ctx.git.poll(false).await;
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
    if !bundle.render_error.is_empty() {
        return Err(Status::failed_precondition(format!(
            "application {name:?} cannot be rendered: {}",
            bundle.render_error
        )));
    }
    let mut sent = Vec::new();
    let mut not_connected = Vec::new();
    for cluster in clusters {
        let command = pb::Command {
            id: crate::commands::command_id(),
            kind: Some(pb::command::Kind::Sync(pb::SyncNow {
                app: name.clone(),
                prune,
                dry_run,
            })),
        };
        if ctx.fleet.is_connected(&cluster) && ctx.commands.send(&cluster, command) {
            sent.push(cluster);
        } else {
            not_connected.push(cluster);
        }
    }
    let history_id = if dry_run {
        0
    } else {
        let mut all = sent.clone();
        all.extend(not_connected.iter().cloned());
        history::record(&ctx.store, app, &bundle.revision, initiated_by, all)?
    };
    ctx.store.flush_async().await?;
    tracing::info!(app = %name, revision = %bundle.revision, clusters = ?sent, ?not_connected, prune, dry_run, initiated_by, "sync sent");
    Ok(pb::SyncApplicationResponse {
        revision: bundle.revision.clone(),
        clusters: sent,
        not_connected,
        history_id,
    })
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
    let mut clusters = history::targeted_clusters(&ctx.store, &app)?;
    if !req.cluster.is_empty() {
        if !clusters.contains(&req.cluster) {
            return Err(Status::invalid_argument(format!(
                "application {:?} does not target cluster {:?} (it targets: {})",
                req.name,
                req.cluster,
                clusters.join(", ")
            )));
        }
        clusters = vec![req.cluster.clone()];
    }
    if clusters.is_empty() {
        return Err(Status::failed_precondition(format!(
            "application {:?} targets no registered cluster",
            req.name
        )));
    }
    let src = &app.spec.source;
    let target = ctx
        .git
        .resolve(&src.repo_url, &src.target_revision)
        .await
        .map_err(Status::unavailable)?;
    let commit = if req.revision.trim().is_empty() {
        target.clone()
    } else {
        ctx.git
            .resolve(&src.repo_url, &req.revision)
            .await
            .map_err(Status::invalid_argument)?
    };
    let pin = (commit != target).then(|| commit.clone());
    if pin.is_some() {
        if history::is_automated(&app) {
            return Err(Status::failed_precondition(
                "cannot sync to a revision other than the target revision while automated sync is enabled",
            ));
        }
        if req.dry_run {
            return Err(Status::invalid_argument(
                "--dry-run with --revision is not supported: a dry run checks the rendered state the agents hold",
            ));
        }
    }
    if !req.dry_run {
        history::set_pin(&ctx.store, &req.name, pin)?;
    }
    let out = render_and_sync(ctx, &app, clusters, req.prune, req.dry_run, &by).await?;
    Ok(Response::new(out))
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
    if !req.dry_run {
        history::set_pin(&ctx.store, &req.name, Some(entry.revision.clone()))?;
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
    let mut clusters = history::targeted_clusters(&ctx.store, &app)?;
    if !req.cluster.is_empty() {
        if !clusters.contains(&req.cluster) {
            return Err(Status::invalid_argument(format!(
                "application {:?} does not target cluster {:?}",
                req.name, req.cluster
            )));
        }
        clusters = vec![req.cluster.clone()];
    }
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
    Ok(Response::new(pb::DiffApplicationResponse { clusters: out }))
}
