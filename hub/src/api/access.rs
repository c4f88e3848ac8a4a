//! `HubApi` tokens, RBAC settings and the audit log.

use tonic::{Request, Response, Status};

use super::auth::{self, View, authorize};
use super::{HubContext, create_token_with};
use crate::model::is_dns_subdomain;
use crate::rbac::{Enforcer, Principal, RbacConfig};
use crate::store::TokenRecord;
use flotilla_proto as pb;

/// The wire form of a token record.
pub fn token_to_pb(t: &TokenRecord) -> pb::ApiToken {
    pb::ApiToken {
        name: t.name.clone(),
        read_only: t.read_only,
        created_ms: t.created_ms,
        subject: t.subject(),
        groups: t.effective_groups(),
        project: t.project.clone(),
        role: t.role.clone(),
        expires_ms: t.expires_ms,
    }
}

/// The stored name of a project token: `proj:PROJECT:ROLE:ID`.
pub fn project_token_name(project: &str, role: &str, id: &str) -> String {
    format!("proj:{project}:{role}:{id}")
}

/// Who must allow a token's creation or revocation: `projects, update,
/// PROJECT` for a project token, `accounts, update, NAME` otherwise.
fn token_permission(rec: &TokenRecord) -> (&'static str, String) {
    if rec.project.is_empty() {
        ("accounts", rec.name.clone())
    } else {
        ("projects", rec.project.clone())
    }
}

pub async fn create_token(
    ctx: &HubContext,
    request: Request<pb::CreateTokenRequest>,
) -> Result<Response<pb::CreateTokenResponse>, Status> {
    let req = request.get_ref();
    if !is_dns_subdomain(&req.name) {
        return Err(Status::invalid_argument(format!(
            "token name {:?} must be a lowercase RFC 1123 subdomain",
            req.name
        )));
    }
    let rec = if req.project.is_empty() {
        if !req.role.is_empty() {
            return Err(Status::invalid_argument(
                "a token role (--role) names a project role: give its project too",
            ));
        }
        if let Some(bad) = req
            .groups
            .iter()
            .find(|g| g.trim().is_empty() || g.contains(','))
        {
            return Err(Status::invalid_argument(format!(
                "token {:?}: group {bad:?} must be non-empty and without commas",
                req.name
            )));
        }
        if req.read_only && !req.groups.is_empty() {
            return Err(Status::invalid_argument(format!(
                "token {:?}: --read-only is role:readonly; give groups or --read-only, not both",
                req.name
            )));
        }
        TokenRecord {
            name: req.name.clone(),
            read_only: req.read_only,
            groups: req.groups.clone(),
            ..TokenRecord::default()
        }
    } else {
        if req.role.is_empty() || req.read_only || !req.groups.is_empty() {
            return Err(Status::invalid_argument(format!(
                "a project token carries one role of its project: give --role, and no groups or --read-only (token {:?})",
                req.name
            )));
        }
        TokenRecord {
            name: project_token_name(&req.project, &req.role, &req.name),
            project: req.project.clone(),
            role: req.role.clone(),
            ..TokenRecord::default()
        }
    };
    if req.expires_in_secs < 0 {
        return Err(Status::invalid_argument(format!(
            "token {:?}: the expiry must be positive",
            req.name
        )));
    }
    let rec = TokenRecord {
        expires_ms: if req.expires_in_secs > 0 {
            crate::clock::now_ms().saturating_add(req.expires_in_secs.saturating_mul(1000))
        } else {
            0
        },
        ..rec
    };
    let (resource, object) = token_permission(&rec);
    let caller = authorize(ctx, &request, resource, "update", &object, "create-token")?;
    let outcome = issue(ctx, &caller, rec);
    auth::audit(ctx, &caller, resource, "create-token", &object, &outcome);
    outcome
}

fn issue(
    ctx: &HubContext,
    caller: &auth::Caller,
    rec: TokenRecord,
) -> Result<Response<pb::CreateTokenResponse>, Status> {
    if rec.project.is_empty() {
        // Groups are powers: only a caller who may edit RBAC hands out one
        // it does not hold itself.
        let foreign: Vec<String> = rec
            .effective_groups()
            .into_iter()
            .filter(|g| !caller.groups.contains(g))
            .collect();
        if !foreign.is_empty() && !View::of_caller(&ctx.store, caller)?.can("rbac", "update", "*") {
            return Err(Status::permission_denied(format!(
                "permission denied: token {:?} would have group(s) {} that subject {:?} does not have (needs rbac, update, *)",
                rec.name,
                foreign.join(", "),
                caller.subject
            )));
        }
    } else {
        let has_role = ctx
            .store
            .project(&rec.project)?
            .is_some_and(|p| p.project.spec.roles.iter().any(|r| r.name == rec.role));
        if !has_role {
            return Err(Status::not_found(format!(
                "project {:?} has no role {:?} (spec.roles)",
                rec.project, rec.role
            )));
        }
    }
    if ctx.store.tokens()?.iter().any(|(_, t)| t.name == rec.name) {
        return Err(Status::already_exists(format!(
            "a token named {:?} exists (revoke it first)",
            rec.name
        )));
    }
    let (token, rec) = create_token_with(&ctx.store, rec)?;
    tracing::info!(name = %rec.name, subject = %rec.subject(), groups = ?rec.effective_groups(), "API token created");
    Ok(Response::new(pb::CreateTokenResponse {
        token,
        info: Some(token_to_pb(&rec)),
    }))
}

pub fn list_tokens(
    ctx: &HubContext,
    request: Request<pb::ListTokensRequest>,
) -> Result<Response<pb::ListTokensResponse>, Status> {
    let view = View::of(ctx, &request)?;
    let mut tokens: Vec<_> = ctx
        .store
        .tokens()?
        .iter()
        .filter(|(_, t)| {
            if t.project.is_empty() {
                view.can_get("accounts", &t.name)
            } else {
                view.can_get("projects", &t.project)
            }
        })
        .map(|(_, t)| token_to_pb(t))
        .collect();
    tokens.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Response::new(pb::ListTokensResponse { tokens }))
}

pub async fn revoke_token(
    ctx: &HubContext,
    request: Request<pb::RevokeTokenRequest>,
) -> Result<Response<pb::RevokeTokenResponse>, Status> {
    let name = request.get_ref().name.clone();
    let tokens = ctx.store.tokens()?;
    let Some(rec) = tokens.iter().map(|(_, t)| t).find(|t| t.name == name) else {
        // Nothing to reveal to a caller who could not revoke it anyway.
        authorize(ctx, &request, "accounts", "update", &name, "revoke-token")?;
        return Err(Status::not_found(format!("token {name:?} not found")));
    };
    let (resource, object) = token_permission(rec);
    let caller = authorize(ctx, &request, resource, "update", &object, "revoke-token")?;
    let admins_left = tokens
        .iter()
        .filter(|(_, t)| {
            t.name != name
                && t.effective_groups()
                    .iter()
                    .any(|g| g == crate::rbac::ROLE_ADMIN)
        })
        .count();
    let outcome = if admins_left == 0
        && rec
            .effective_groups()
            .iter()
            .any(|g| g == crate::rbac::ROLE_ADMIN)
    {
        Err(Status::failed_precondition(
            "refusing to revoke the last token that is not read-only (the last with role:admin)",
        ))
    } else {
        ctx.store.remove_tokens_named(&name).map_err(Status::from)
    };
    let outcome = match outcome {
        Ok(_) => ctx
            .store
            .flush_async()
            .await
            .map_err(Status::from)
            .map(|_| Response::new(pb::RevokeTokenResponse {})),
        Err(e) => Err(e),
    };
    if outcome.is_ok() {
        tracing::info!(name = %name, "API token revoked");
    }
    auth::audit(ctx, &caller, resource, "revoke-token", &object, &outcome);
    outcome
}

pub fn get_rbac_policy(
    ctx: &HubContext,
    request: Request<pb::GetRbacPolicyRequest>,
) -> Result<Response<pb::RbacPolicy>, Status> {
    authorize(ctx, &request, "rbac", "get", "*", "get")?;
    let c = ctx.store.rbac_config()?;
    Ok(Response::new(pb::RbacPolicy {
        policy_csv: c.policy_csv,
        default_role: c.default_role,
    }))
}

fn config_of(p: &pb::RbacPolicy) -> RbacConfig {
    RbacConfig {
        policy_csv: p.policy_csv.clone(),
        default_role: p.default_role.trim().to_owned(),
    }
}

pub async fn set_rbac_policy(
    ctx: &HubContext,
    request: Request<pb::RbacPolicy>,
) -> Result<Response<pb::RbacPolicy>, Status> {
    let caller = authorize(ctx, &request, "rbac", "update", "*", "update")?;
    let config = config_of(request.get_ref());
    let outcome = async {
        Enforcer::new(&config, &[]).map_err(|e| Status::invalid_argument(e.to_string()))?;
        ctx.store.put_rbac_config(&config)?;
        ctx.store.flush_async().await?;
        tracing::info!(lines = config.policy_csv.lines().count(), default_role = %config.default_role, "RBAC policy replaced");
        Ok(Response::new(pb::RbacPolicy {
            policy_csv: config.policy_csv.clone(),
            default_role: config.default_role.clone(),
        }))
    }
    .await;
    auth::audit(ctx, &caller, "rbac", "update", "policy.csv", &outcome);
    outcome
}

pub fn check_rbac(
    ctx: &HubContext,
    request: Request<pb::CheckRbacRequest>,
) -> Result<Response<pb::CheckRbacResponse>, Status> {
    authorize(ctx, &request, "rbac", "get", "*", "get")?;
    let req = request.into_inner();
    let config = match &req.policy {
        Some(p) => config_of(p),
        None => ctx.store.rbac_config()?,
    };
    let projects = ctx.store.projects()?;
    let projects: Vec<_> = projects.iter().map(|p| p.project.rbac_roles()).collect();
    let e =
        Enforcer::new(&config, &projects).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let who = Principal {
        subject: req.subject,
        groups: req.groups,
    };
    Ok(Response::new(pb::CheckRbacResponse {
        allowed: e.allows(&who, &req.resource, &req.action, &req.object),
    }))
}

pub fn list_audit(
    ctx: &HubContext,
    request: Request<pb::ListAuditRequest>,
) -> Result<Response<pb::ListAuditResponse>, Status> {
    authorize(ctx, &request, "audit", "get", "*", "get")?;
    let req = request.into_inner();
    let entries = ctx
        .store
        .audit_entries(req.since_ms)?
        .into_iter()
        .filter(|e| req.subject.is_empty() || e.subject == req.subject)
        .map(|e| pb::AuditEntry {
            time_ms: e.time_ms,
            subject: e.subject,
            peer: e.peer,
            resource: e.resource,
            action: e.action,
            object: e.object,
            result: e.result,
            message: e.message,
        })
        .collect();
    Ok(Response::new(pb::ListAuditResponse { entries }))
}
