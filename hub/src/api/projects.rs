//! tenancy: `HubApi` AppProjects (`flotilla proj`).
//!
//! A project written through the API is stored with origin `api`; one
//! declared in Git is replaced by Git's on the next load of its file, as
//! Applications are. Every change re-renders the applications that name
//! the project, so a narrowed project takes effect at once.

use tonic::{Request, Response, Status};

use super::HubContext;
use super::auth::{self, View, authorize};
use crate::project::{self, DEFAULT_PROJECT, ProjectRecord};
use flotilla_proto as pb;

fn applications_of(ctx: &HubContext, name: &str) -> Result<Vec<String>, Status> {
    Ok(ctx
        .store
        .apps()?
        .into_iter()
        .filter(|a| project::project_of(&a.app) == name)
        .map(|a| a.app.metadata.name.clone())
        .collect())
}

fn to_pb(ctx: &HubContext, rec: &ProjectRecord) -> Result<pb::Project, Status> {
    let p = &rec.project;
    Ok(pb::Project {
        name: p.metadata.name.clone(),
        origin: rec.origin.clone(),
        manifest: serde_saphyr::to_string(p).unwrap_or_default(),
        source_repos: p.spec.source_repos.clone(),
        destinations: p.rules().destinations,
        applications: applications_of(ctx, &p.metadata.name)?,
        sync_windows: crate::project::window::states(&p.spec.sync_windows),
    })
}

/// The implicit `default` project, as shown when none is stored.
fn implicit_default() -> ProjectRecord {
    use crate::project::{AppProject, AppProjectSpec, Destination, GroupKind};
    let any = |s: &str| s.to_owned();
    ProjectRecord {
        project: AppProject {
            api_version: crate::model::ARGO_API_VERSION.to_owned(),
            kind: "AppProject".to_owned(),
            metadata: crate::model::ObjectMeta {
                name: DEFAULT_PROJECT.to_owned(),
                ..Default::default()
            },
            spec: AppProjectSpec {
                source_repos: vec![any("*")],
                destinations: vec![Destination {
                    server: any("*"),
                    name: any("*"),
                    namespace: any("*"),
                }],
                cluster_resource_whitelist: vec![GroupKind {
                    group: any("*"),
                    kind: any("*"),
                    name: String::new(),
                }],
                ..Default::default()
            },
            status: None,
        },
        origin: "built-in".to_owned(),
    }
}

fn rerender(ctx: &HubContext, name: &str) -> Result<(), Status> {
    for app in applications_of(ctx, name)? {
        ctx.git.render_soon(&app);
    }
    Ok(())
}

pub async fn create(
    ctx: &HubContext,
    request: Request<pb::CreateProjectRequest>,
) -> Result<Response<pb::Project>, Status> {
    let caller = auth::caller(&request)?;
    let req = request.get_ref();
    let mut docs = crate::yaml::parse_documents(&req.manifest).map_err(|e| {
        Status::invalid_argument(format!(
            "invalid YAML{}: {}",
            e.line.map(|l| format!(" at line {l}")).unwrap_or_default(),
            e.message
        ))
    })?;
    if docs.len() != 1 {
        return Err(Status::invalid_argument(format!(
            "expected one AppProject document, got {}",
            docs.len()
        )));
    }
    let p = project::project_from_value(docs.remove(0), "request")
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let name = p.metadata.name.clone();
    let existing = ctx.store.project(&name)?;
    let action = if existing.is_some() {
        "update"
    } else {
        "create"
    };
    authorize(ctx, &request, "projects", action, &name, action)?;
    let outcome = write_project(ctx, p, existing.is_some(), req.upsert).await;
    auth::audit(ctx, &caller, "projects", action, &name, &outcome);
    outcome
}

async fn write_project(
    ctx: &HubContext,
    p: project::AppProject,
    exists: bool,
    upsert: bool,
) -> Result<Response<pb::Project>, Status> {
    let name = p.metadata.name.clone();
    if exists && !upsert {
        return Err(Status::already_exists(format!(
            "project {name:?} already exists (use --upsert to replace it)"
        )));
    }
    let rec = ProjectRecord {
        project: p,
        origin: "api".to_owned(),
    };
    ctx.store.put_project(&rec)?;
    ctx.store.flush_async().await?;
    tracing::info!(project = %name, "project written");
    rerender(ctx, &name)?;
    Ok(Response::new(to_pb(ctx, &rec)?))
}

pub fn get(
    ctx: &HubContext,
    request: Request<pb::GetProjectRequest>,
) -> Result<Response<pb::Project>, Status> {
    let name = request.get_ref().name.clone();
    authorize(ctx, &request, "projects", "get", &name, "get")?;
    let rec = match ctx.store.project(&name)? {
        Some(r) => r,
        None if name == DEFAULT_PROJECT => implicit_default(),
        None => return Err(Status::not_found(format!("project {name:?} not found"))),
    };
    Ok(Response::new(to_pb(ctx, &rec)?))
}

pub fn list(
    ctx: &HubContext,
    request: Request<pb::ListProjectsRequest>,
) -> Result<Response<pb::ListProjectsResponse>, Status> {
    let view = View::of(ctx, &request)?;
    let mut stored = ctx.store.projects()?;
    if !stored
        .iter()
        .any(|r| r.project.metadata.name == DEFAULT_PROJECT)
    {
        stored.push(implicit_default());
    }
    stored.retain(|r| view.can_get("projects", &r.project.metadata.name));
    stored.sort_by(|a, b| a.project.metadata.name.cmp(&b.project.metadata.name));
    let projects = stored
        .iter()
        .map(|r| to_pb(ctx, r))
        .collect::<Result<_, _>>()?;
    Ok(Response::new(pb::ListProjectsResponse { projects }))
}

pub async fn delete(
    ctx: &HubContext,
    request: Request<pb::DeleteProjectRequest>,
) -> Result<Response<pb::DeleteProjectResponse>, Status> {
    let name = request.get_ref().name.clone();
    let caller = authorize(ctx, &request, "projects", "delete", &name, "delete")?;
    let outcome = remove_project(ctx, &name).await;
    auth::audit(ctx, &caller, "projects", "delete", &name, &outcome);
    outcome
}

async fn remove_project(
    ctx: &HubContext,
    name: &str,
) -> Result<Response<pb::DeleteProjectResponse>, Status> {
    let users = applications_of(ctx, name)?;
    if !users.is_empty() {
        // As Argo CD: a project in use is not deleted.
        return Err(Status::failed_precondition(format!(
            "project {name:?} is referenced by {} application(s): {}",
            users.len(),
            users.join(", ")
        )));
    }
    if !ctx.store.remove_project(name)? {
        return Err(Status::not_found(format!("project {name:?} not found")));
    }
    ctx.store.flush_async().await?;
    tracing::info!(project = %name, "project deleted");
    Ok(Response::new(pb::DeleteProjectResponse {}))
}
