//! `HubApi` handlers for ApplicationSets and the cluster inventory; the
//! service in `api::hub_api` delegates to these.

use tonic::{Request, Response, Status};

use super::lifecycle::EvaluationCount;
use crate::api::{HubContext, require_write};
use crate::store::{AppSetRecord, ClusterRecord};
use flotilla_proto as pb;

fn to_pb(
    rec: &AppSetRecord,
    count: EvaluationCount,
    rollout: Option<&crate::rollout::RolloutRecord>,
) -> pb::ApplicationSet {
    let policy = rec.raw.pointer("/spec/syncPolicy");
    // An application held for deletion still exists and still belongs to
    // the set: it stays listed until it is deleted.
    let mut applications = rec.generated.clone();
    for held in &rec.pending_deletions {
        if !applications.contains(held) {
            applications.push(held.clone());
        }
    }
    applications.sort();
    pb::ApplicationSet {
        name: rec.name.clone(),
        origin: rec.origin.clone(),
        applications,
        conditions: rec
            .conditions
            .iter()
            .map(|c| pb::ApplicationSetCondition {
                r#type: c.kind.clone(),
                message: c.message.clone(),
                application: c.application.clone(),
            })
            .chain(rollout.into_iter().flat_map(rollout_conditions))
            .collect(),
        application_status: rollout
            .map(|r| {
                r.applications
                    .iter()
                    .map(|a| pb::ApplicationSetApplicationStatus {
                        application: a.application.clone(),
                        status: a.status.as_str().to_owned(),
                        step: a.step.clone(),
                        message: a.message.clone(),
                        last_transition_ms: a.last_transition_ms,
                        target_revisions: a.target_revisions.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        pending_deletions: rec.pending_deletions.clone(),
        last_result_ms: rec.last_result_ms,
        last_good_ms: rec.last_good_ms,
        manifest: serde_saphyr::to_string(&rec.raw).unwrap_or_default(),
        applications_sync: policy
            .and_then(|p| p.get("applicationsSync"))
            .and_then(|v| v.as_str())
            .unwrap_or("sync")
            .to_owned(),
        preserve_resources_on_deletion: policy
            .and_then(|p| p.get("preserveResourcesOnDeletion"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        evaluations: count.evaluations,
        last_evaluated_ms: count.last_evaluated_ms,
    }
}

/// The conditions the rollout reconciler (the only writer of the rollout
/// record) adds to a RollingSync set.
fn rollout_conditions(
    r: &crate::rollout::RolloutRecord,
) -> impl Iterator<Item = pb::ApplicationSetCondition> + '_ {
    use crate::rollout::rolling_sync::{INVALID_ROLLOUT_CONFIG, ROLLOUT_PROGRESSING};
    let progressing = (!r.progressing.is_empty()).then(|| pb::ApplicationSetCondition {
        r#type: ROLLOUT_PROGRESSING.to_owned(),
        message: r.progressing.clone(),
        application: String::new(),
    });
    let invalid = r.invalid.as_ref().map(|m| pb::ApplicationSetCondition {
        r#type: INVALID_ROLLOUT_CONFIG.to_owned(),
        message: m.clone(),
        application: String::new(),
    });
    // A waves rollout (`flotilla rollout get` has the detail).
    let waves = r.waves.as_ref().map(|w| pb::ApplicationSetCondition {
        r#type: "FlotillaRollout".to_owned(),
        message: format!(
            "{}{} at wave {}: {}",
            w.phase.as_str(),
            if w.paused_by.is_empty() {
                String::new()
            } else {
                format!(" (paused by {})", w.paused_by)
            },
            w.wave + 1,
            w.message
        ),
        application: String::new(),
    });
    progressing.into_iter().chain(invalid).chain(waves)
}

/// Re-evaluates every set now (through one Git-loop pass, which also
/// renders the generated applications).
async fn evaluate(ctx: &HubContext) {
    ctx.git.poll(false).await;
}

fn get(ctx: &HubContext, name: &str) -> Result<pb::ApplicationSet, Status> {
    let rollout = ctx.store.rollout(name)?;
    ctx.store
        .appset(name)?
        .map(|r| to_pb(&r, ctx.appsets.evaluations(name), rollout.as_ref()))
        .ok_or_else(|| Status::not_found(format!("application set {name:?} not found")))
}

pub async fn create(
    ctx: &HubContext,
    request: Request<pb::CreateApplicationSetRequest>,
) -> Result<Response<pb::ApplicationSet>, Status> {
    require_write(&request)?;
    let req = request.into_inner();
    let rec = ctx
        .appsets
        .put_from_api(&req.manifest, req.upsert)
        .map_err(|e| match e {
            Ok(m) if m.contains("already exists") => Status::already_exists(m),
            Ok(m) => Status::invalid_argument(m),
            Err(e) => Status::from(e),
        })?;
    evaluate(ctx).await;
    Ok(Response::new(get(ctx, &rec.name)?))
}

pub async fn list(
    ctx: &HubContext,
    _request: Request<pb::ListApplicationSetsRequest>,
) -> Result<Response<pb::ListApplicationSetsResponse>, Status> {
    let application_sets = ctx
        .store
        .appsets()?
        .iter()
        .map(|r| {
            let rollout = ctx.store.rollout(&r.name)?;
            Ok(to_pb(r, ctx.appsets.evaluations(&r.name), rollout.as_ref()))
        })
        .collect::<Result<_, crate::store::StoreError>>()?;
    Ok(Response::new(pb::ListApplicationSetsResponse {
        application_sets,
    }))
}

pub async fn get_one(
    ctx: &HubContext,
    request: Request<pb::GetApplicationSetRequest>,
) -> Result<Response<pb::ApplicationSet>, Status> {
    Ok(Response::new(get(ctx, &request.into_inner().name)?))
}

pub async fn delete(
    ctx: &HubContext,
    request: Request<pb::DeleteApplicationSetRequest>,
) -> Result<Response<pb::DeleteApplicationSetResponse>, Status> {
    require_write(&request)?;
    let name = request.into_inner().name;
    if !ctx.appsets.remove_set(&name)? {
        return Err(Status::not_found(format!(
            "application set {name:?} not found"
        )));
    }
    evaluate(ctx).await;
    Ok(Response::new(pb::DeleteApplicationSetResponse {}))
}

pub async fn confirm(
    ctx: &HubContext,
    request: Request<pb::ConfirmApplicationSetRequest>,
) -> Result<Response<pb::ApplicationSet>, Status> {
    require_write(&request)?;
    let name = request.into_inner().name;
    let rec = ctx
        .appsets
        .confirm(&name)?
        .ok_or_else(|| Status::not_found(format!("application set {name:?} not found")))?;
    if rec.confirmed_deletions.is_empty() {
        return Err(Status::failed_precondition(format!(
            "application set {name:?} has no held deletions"
        )));
    }
    tracing::info!(appset = %name, deletions = ?rec.confirmed_deletions, "held deletions confirmed");
    evaluate(ctx).await;
    Ok(Response::new(get(ctx, &name)?))
}

/// Updates labels/annotations of a cluster; returns the record.
pub async fn update_cluster(
    ctx: &HubContext,
    request: Request<pb::UpdateClusterRequest>,
) -> Result<ClusterRecord, Status> {
    require_write(&request)?;
    let req = request.into_inner();
    let set_labels = req.set_labels.into_iter().collect();
    let set_annotations = req.set_annotations.into_iter().collect();
    let rec = ctx
        .store
        .update_cluster(&req.name, |c| {
            crate::inventory::edit_map(&mut c.labels, &set_labels, &req.remove_labels);
            crate::inventory::edit_map(
                &mut c.annotations,
                &set_annotations,
                &req.remove_annotations,
            );
        })?
        .ok_or_else(|| Status::not_found(format!("cluster {:?} not found", req.name)))?;
    ctx.store.flush_async().await?;
    tracing::info!(cluster = %rec.name, labels = ?rec.labels, annotations = ?rec.annotations, "cluster inventory updated");
    evaluate(ctx).await;
    Ok((*rec).clone())
}

/// Upserts declared clusters; returns the records.
pub async fn apply_clusters(
    ctx: &HubContext,
    request: Request<pb::ApplyClustersRequest>,
) -> Result<Vec<ClusterRecord>, Status> {
    require_write(&request)?;
    let req = request.into_inner();
    let declared = crate::inventory::parse_clusters(&req.manifest, "request")
        .map_err(Status::invalid_argument)?;
    for c in &declared {
        crate::inventory::check_registrable(c, "request").map_err(Status::invalid_argument)?;
    }
    if declared.is_empty() {
        return Err(Status::invalid_argument(
            "no Cluster (flotilla.dev/v1alpha1) or Argo CD cluster Secret in the input",
        ));
    }
    let recs = crate::inventory::apply_declared(&ctx.fleet, &declared)?;
    evaluate(ctx).await;
    Ok(recs)
}
