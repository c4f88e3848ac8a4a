//! `HubApi`: the user API behind the CLI. Every call is authenticated by
//! the bearer-token interceptor before it reaches these handlers.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{self, View, app_object, authorize};
use super::{HubContext, now_ms};
use crate::fleet::{self, parse_single_application};
use crate::model::is_dns_subdomain;
use crate::pki;
use crate::store::credential_templates::CredentialsSource;
use crate::store::{AppRecord, BootstrapRecord, ClusterRecord, RepoCredentials, RepoRecord};

/// Lifetime of a bootstrap token when the request gives none.
const DEFAULT_BOOTSTRAP_TTL_MS: i64 = 24 * 3600 * 1000;
use flotilla_proto as pb;

/// The `HubApi` service.
#[derive(Clone, Debug)]
pub struct HubApiService {
    ctx: HubContext,
}

impl HubApiService {
    pub fn new(ctx: HubContext) -> Self {
        Self { ctx }
    }

    fn app_to_pb(
        &self,
        rec: &AppRecord,
        clusters: &[Arc<ClusterRecord>],
    ) -> Result<pb::Application, Status> {
        let app = &rec.app;
        let name = &app.metadata.name;
        let (bundle, revision) = self.ctx.fleet.desired_of(name);
        let ops = self.ctx.store.app_ops(name)?;
        let cluster_rows = self.cluster_rows(rec, clusters)?;
        let error = if !rec.error.is_empty() {
            rec.error.clone()
        } else {
            bundle
                .as_ref()
                .map(|b| b.render_error.clone())
                .unwrap_or_default()
        };
        let revision = if revision.is_empty() {
            rec.revision.clone()
        } else {
            revision
        };
        // A multi-source application is described by its first source, and
        // lists them all with their revisions.
        let first = app
            .spec
            .effective_sources()
            .first()
            .unwrap_or(&app.spec.source);
        let (sources, revisions) = if app.spec.has_multiple_sources() {
            (
                app.spec
                    .sources
                    .iter()
                    .map(|s| pb::ApplicationSource {
                        repo_url: crate::source::display_repo_url(&s.repo_url),
                        path: s.path.clone(),
                        chart: s.chart.clone(),
                        target_revision: s.target_revision.clone(),
                        r#ref: s.ref_name.clone(),
                        name: s.name.clone(),
                    })
                    .collect(),
                if revision.is_empty() {
                    Vec::new()
                } else {
                    crate::gitsync::split_revisions(&revision)
                },
            )
        } else {
            (Vec::new(), Vec::new())
        };
        // Credentials in a source URL are never shown.
        let mut manifest = serde_saphyr::to_string(app).unwrap_or_default();
        for source in app.spec.effective_sources() {
            let shown = crate::source::display_repo_url(&source.repo_url);
            if shown != source.repo_url {
                manifest = manifest.replace(source.repo_url.as_str(), &shown);
            }
        }
        Ok(pb::Application {
            name: name.clone(),
            origin: crate::source::redact_url(&rec.origin),
            repo_url: crate::source::display_repo_url(&first.repo_url),
            path: first.path.clone(),
            chart: first.chart.clone(),
            target_revision: first.target_revision.clone(),
            revision,
            sources,
            revisions,
            destination: app.destination_key().unwrap_or_default().to_owned(),
            namespace: app.spec.destination.namespace.clone().unwrap_or_default(),
            policy: Some(fleet::sync_policy(app)),
            error,
            clusters: cluster_rows,
            manifest,
            pinned_revision: ops.pinned.clone().unwrap_or_default(),
            pinned_by: ops.pinned_by.clone(),
            git_revision: if ops.pinned.is_some() {
                ops.git_revision.clone()
            } else {
                String::new()
            },
            finalizers: app.metadata.finalizers.clone(),
        })
    }

    /// The RBAC object of application `name` (`PROJECT/NAME`); `*/NAME`
    /// when there is none, so a caller who may not act on every project is
    /// refused rather than told it does not exist (as Argo CD).
    fn app_object_of(&self, name: &str) -> Result<String, Status> {
        Ok(self
            .ctx
            .store
            .app(name)?
            .map_or_else(|| format!("*/{name}"), |r| app_object(&r.app)))
    }

    /// The RBAC object of application set `name`, as [`Self::app_object_of`].
    fn appset_object_of(&self, name: &str) -> Result<String, Status> {
        Ok(self
            .ctx
            .store
            .appset(name)?
            .map_or_else(|| format!("*/{name}"), |r| auth::appset_object(&r.raw)))
    }

    /// The status of `rec` on each of `clusters` it targets, as
    /// `GetApplication` shows it (the web UI's overview reads this too).
    ///
    /// # Errors
    /// The store cannot be read.
    pub(crate) fn cluster_rows(
        &self,
        rec: &AppRecord,
        clusters: &[Arc<ClusterRecord>],
    ) -> Result<Vec<pb::ClusterAppStatus>, Status> {
        let app = &rec.app;
        let name = &app.metadata.name;
        let (bundle, revision) = self.ctx.fleet.desired_of(name);
        let statuses = self.ctx.store.statuses_of_app(name)?;
        let pin_message = self.ctx.store.app_ops(name)?.pin_message();
        let windows = crate::project::window::windows_of(&self.ctx.store, app)?;
        Ok(clusters
            .iter()
            .filter(|c| fleet::targets(app, c))
            .map(|c| {
                let window =
                    crate::project::window::status_message(&windows, app, &c.name, &c.server);
                let reported = statuses.get(&c.name).cloned().map(|st| {
                    let st = fleet::at_current_revision(st, bundle.as_deref(), &revision);
                    let st = fleet::comparison_status(rec, st);
                    let st = match &pin_message {
                        Some(m) => crate::history::show_pin(st, m),
                        None => st,
                    };
                    crate::project::window::show_block(st, window.as_deref())
                });
                pb::ClusterAppStatus {
                    cluster: c.name.clone(),
                    desired_revision: revision.clone(),
                    status: match self.ctx.fleet.withheld(&c.name, name) {
                        Some(why) => Some(withheld_status(name, reported, why)),
                        None => reported,
                    },
                }
            })
            .collect())
    }

    /// After an app of apps `parent` was deleted: with cascade, the
    /// Applications and ApplicationSets it declared are deleted too, as
    /// Argo CD deletes a parent's Application resources (each child's own
    /// finalizers then decide about its objects; a set's
    /// `preserveResourcesOnDeletion` about its applications'); without,
    /// they stay. Inventory records it declared stay either way (a cluster
    /// is never unenrolled by a deletion). Its record of what it wrote is
    /// dropped, so a parent created again under that name starts afresh.
    fn delete_children(
        &self,
        parent: &str,
        propagation: crate::deletion::Propagation,
    ) -> Result<(), Status> {
        let origin = format!("app:{parent}");
        if propagation.cascades() {
            for child in self.ctx.store.apps()? {
                if child.origin == origin {
                    let name = &child.app.metadata.name;
                    tracing::info!(parent, app = %name, "child application deleted with its parent");
                    self.ctx.fleet.remove_app(name)?;
                }
            }
            for set in self.ctx.store.appsets()? {
                if set.origin == origin {
                    tracing::info!(parent, appset = %set.name, "child application set deleted with its parent");
                    self.ctx.appsets.remove_set(&set.name)?;
                }
            }
        }
        self.ctx
            .store
            .put_app_children(parent, &crate::store::ChildrenRecord::default())?;
        Ok(())
    }

    /// The records of the clusters `app` targets, found by the store's
    /// targeting index rather than a scan of the inventory.
    fn targeted_clusters(
        &self,
        app: &crate::model::Application,
    ) -> Result<Vec<Arc<ClusterRecord>>, Status> {
        let dest = crate::store::Destination::of(app);
        let mut out = Vec::new();
        for name in self.ctx.store.clusters_targeted(&dest)? {
            out.extend(self.ctx.store.cluster_shared(&name)?);
        }
        Ok(out)
    }

    fn cluster_to_pb(&self, c: &ClusterRecord) -> pb::Cluster {
        let connected = self.ctx.fleet.is_connected(&c.name);
        pb::Cluster {
            name: c.name.clone(),
            labels: c.labels.clone().into_iter().collect(),
            annotations: c.annotations.clone().into_iter().collect(),
            connected,
            // An open stream is proof of life (keepalives), even between
            // messages.
            last_seen_ms: if connected { now_ms() } else { c.last_seen_ms },
            agent_version: c.agent_version.clone(),
            generation: c.generation,
            acked_generation: c.acked_generation,
            server: c.server.clone(),
            cert_not_after_ms: c.cert_not_after_ms,
        }
    }
}

/// The status of an application whose bundle the hub could not send to the
/// cluster's agent: Unknown, saying why (what the agent reports is about
/// the state it still has).
fn withheld_status(app: &str, reported: Option<pb::AppStatus>, why: String) -> pb::AppStatus {
    let mut st = reported.unwrap_or_else(|| pb::AppStatus {
        name: app.to_owned(),
        health: pb::HealthStatus::Unknown as i32,
        ..Default::default()
    });
    st.sync = pb::SyncStatus::Unknown as i32;
    st.conditions.push(pb::AppCondition {
        r#type: "SyncError".to_owned(),
        message: why.clone(),
    });
    st.message = why;
    st
}

/// Cuts the per-cluster resource lists of an application that alone does
/// not fit in `budget` bytes (a `StatusTruncated` condition on each status
/// says how many resources are left out).
fn bound_application(app: &mut pb::Application, budget: usize) {
    use prost::Message as _;
    if app.encoded_len() <= budget || app.clusters.is_empty() {
        return;
    }
    let statuses: usize = app
        .clusters
        .iter()
        .map(|c| c.status.as_ref().map_or(0, |s| s.encoded_len()))
        .sum();
    let others = app.encoded_len().saturating_sub(statuses);
    let per_cluster = budget.saturating_sub(others + 1024) / app.clusters.len();
    let limits = pb::wire::StatusLimits {
        app_bytes: per_cluster,
        ..Default::default()
    };
    for c in &mut app.clusters {
        if let Some(st) = c.status.as_mut() {
            pb::wire::bound_status(st, limits);
        }
    }
}

fn repo_to_pb(r: &RepoRecord) -> pb::Repository {
    pb::Repository {
        // Registered before `repo add` moved credentials out of URLs.
        url: crate::source::display_repo_url(&r.url),
        revision: r.revision.clone(),
        apps_path: r.apps_path.clone(),
        poll_interval_secs: r.poll_interval_secs,
        last_commit: r.last_commit.clone(),
        last_error: r.last_error.clone(),
        last_fetch_ms: r.last_fetch_ms,
        has_credentials: false,
        insecure_ignore_host_key: false,
        r#type: if r.kind.is_empty() {
            "git".to_owned()
        } else {
            r.kind.clone()
        },
        credentials_template: String::new(),
        project: String::new(),
    }
}

/// `Repository` with what is stored about its credentials (never the
/// credentials themselves).
fn repo_with_credentials(
    r: &RepoRecord,
    credentials: Option<&CredentialsSource>,
) -> pb::Repository {
    let mut p = repo_to_pb(r);
    p.has_credentials = credentials.is_some();
    p.insecure_ignore_host_key =
        credentials.is_some_and(|c| c.credentials().insecure_ignore_host_key);
    p.credentials_template = credentials
        .and_then(CredentialsSource::template_url)
        .unwrap_or_default()
        .to_owned();
    p.project = credentials
        .map(|c| c.credentials().project.clone())
        .unwrap_or_default();
    p
}

/// The project a request scopes `url`'s credentials to: empty for none
/// (or `default`, which every application may use anyway), else a project
/// that exists.
fn credentials_project(
    store: &crate::store::Store,
    url: &str,
    project: &str,
) -> Result<String, Status> {
    let project = project.trim();
    if project.is_empty() || project == "default" {
        return Ok(String::new());
    }
    if store.project(project)?.is_none() {
        return Err(Status::invalid_argument(format!(
            "repository {}: project {project:?} does not exist, so its credentials cannot be scoped to it",
            crate::source::redact_url(url)
        )));
    }
    Ok(project.to_owned())
}

/// The credentials `url` uses (its own or a template's), for showing.
fn effective_credentials(store: &crate::store::Store, url: &str) -> Option<CredentialsSource> {
    store.effective_repo_credentials(url).ok().flatten()
}

/// The credentials a `SetRepositoryCredentials` request stores (`None`:
/// remove them). The messages never quote the password or the key.
fn credentials_from_request(
    req: &pb::SetRepositoryCredentialsRequest,
) -> Result<Option<RepoCredentials>, Status> {
    let ssh_url = crate::source::is_ssh_url(&req.url);
    let key = req.ssh_private_key.trim();
    if !key.is_empty() {
        if !req.password.is_empty() {
            return Err(Status::invalid_argument(
                "give either a password or an ssh private key, not both",
            ));
        }
        if !ssh_url {
            return Err(Status::invalid_argument(
                "an ssh private key needs an ssh URL (ssh://user@host/path or user@host:path)",
            ));
        }
        if !(key.starts_with("-----BEGIN ") && key.contains("PRIVATE KEY-----")) {
            return Err(Status::invalid_argument(
                "the ssh private key is not an OpenSSH or PEM private key",
            ));
        }
        return Ok(Some(RepoCredentials {
            ssh_private_key: key.to_owned(),
            insecure_ignore_host_key: req.insecure_ignore_host_key,
            ..Default::default()
        }));
    }
    if req.insecure_ignore_host_key {
        return Err(Status::invalid_argument(
            "insecure_ignore_host_key applies to an ssh private key",
        ));
    }
    if req.password.is_empty() {
        return Ok(None);
    }
    if ssh_url {
        return Err(Status::invalid_argument(
            "ssh URLs authenticate with an ssh private key (--ssh-private-key-path), not a password",
        ));
    }
    Ok(Some(RepoCredentials {
        username: req.username.clone(),
        password: req.password.clone(),
        ..Default::default()
    }))
}

#[tonic::async_trait]
impl pb::hub_api_server::HubApi for HubApiService {
    async fn version(
        &self,
        _request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn list_applications(
        &self,
        request: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        use prost::Message as _;
        let view = View::of(&self.ctx, &request)?;
        let req = request.into_inner();
        let clusters = self.ctx.store.clusters_shared()?;
        let mut apps = self.ctx.store.apps()?;
        apps.retain(|a| view.can_get("applications", &app_object(&a.app)));
        apps.sort_by(|a, b| a.app.metadata.name.cmp(&b.app.metadata.name));
        // Pages continue after the last name returned.
        let start = if req.page_token.is_empty() {
            0
        } else {
            apps.partition_point(|a| a.app.metadata.name.as_str() <= req.page_token.as_str())
        };
        let limit = match usize::try_from(req.max_response_size) {
            Ok(n) if n > 0 => n.min(self.ctx.wire.max_message_size),
            _ => self.ctx.wire.max_message_size,
        };
        let budget = limit.saturating_sub(1024);
        let page_size = match req.page_size {
            0 => usize::MAX,
            n => n as usize,
        };
        let mut applications: Vec<pb::Application> = Vec::new();
        let mut used = 0usize;
        let mut next_page_token = String::new();
        for a in &apps[start..] {
            let last = applications.last().map(|a| a.name.clone());
            if applications.len() >= page_size {
                next_page_token = last.unwrap_or_default();
                break;
            }
            let mut p = self.app_to_pb(a, &clusters)?;
            bound_application(&mut p, budget);
            let len = p.encoded_len() + 8;
            if used + len > budget && !applications.is_empty() {
                if req.page_size == 0 {
                    return Err(Status::resource_exhausted(format!(
                        "{} applications do not fit in one response of at most {} (--max-message-size); use a client that pages (page_size)",
                        apps.len(),
                        pb::wire::format_size(limit)
                    )));
                }
                next_page_token = last.unwrap_or_default();
                break;
            }
            used += len;
            applications.push(p);
        }
        Ok(Response::new(pb::ListApplicationsResponse {
            applications,
            next_page_token,
        }))
    }

    async fn get_application(
        &self,
        request: Request<pb::GetApplicationRequest>,
    ) -> Result<Response<pb::Application>, Status> {
        let object = self.app_object_of(&request.get_ref().name)?;
        authorize(&self.ctx, &request, "applications", "get", &object, "get")?;
        let name = request.into_inner().name;
        let rec = self
            .ctx
            .store
            .app(&name)?
            .ok_or_else(|| Status::not_found(format!("application {name:?} not found")))?;
        let clusters = self.targeted_clusters(&rec.app)?;
        let mut app = self.app_to_pb(&rec, &clusters)?;
        bound_application(
            &mut app,
            self.ctx.wire.max_message_size.saturating_sub(1024),
        );
        Ok(Response::new(app))
    }

    async fn create_application(
        &self,
        request: Request<pb::CreateApplicationRequest>,
    ) -> Result<Response<pb::Application>, Status> {
        let req = request.get_ref();
        let app =
            parse_single_application(&req.manifest, "request").map_err(Status::invalid_argument)?;
        let name = app.metadata.name.clone();
        let existing = self.ctx.store.app(&name)?;
        let object = app_object(&app);
        let action = if existing.is_some() {
            "update"
        } else {
            "create"
        };
        // An update must be allowed in the project the application leaves
        // as well as in the one it enters.
        if let Some(old) = &existing {
            authorize(
                &self.ctx,
                &request,
                "applications",
                "update",
                &app_object(&old.app),
                action,
            )?;
        }
        let caller = authorize(&self.ctx, &request, "applications", action, &object, action)?;
        let upsert = req.upsert;
        let outcome: Result<Response<pb::Application>, Status> = async {
            if existing.is_some() && !upsert {
                return Err(Status::already_exists(format!(
                    "application {name:?} already exists (use upsert to replace it)"
                )));
            }
            let rec = AppRecord {
                app: app.into(),
                // An edit of an application an in-hub application manages keeps
                // it managed (its parent's selfHeal decides whether it stays).
                origin: crate::model::origin_after_api_edit(
                    existing.as_ref().map(|e| e.origin.as_str()),
                ),
                revision: existing
                    .as_ref()
                    .map(|e| e.revision.clone())
                    .unwrap_or_default(),
                error: String::new(),
            };
            self.ctx.store.put_app(&rec)?;
            self.ctx.store.flush_async().await?;
            tracing::info!(app = %name, "application created through the API");
            // Only the clusters this application names (or named) change.
            self.ctx.fleet.recompute_apps(std::slice::from_ref(&name))?;
            self.ctx.git.render_soon(&name);
            let clusters = self.targeted_clusters(&rec.app)?;
            Ok(Response::new(self.app_to_pb(&rec, &clusters)?))
        }
        .await;
        auth::audit(
            &self.ctx,
            &caller,
            "applications",
            action,
            &object,
            &outcome,
        );
        outcome
    }

    async fn delete_application(
        &self,
        request: Request<pb::DeleteApplicationRequest>,
    ) -> Result<Response<pb::DeleteApplicationResponse>, Status> {
        let object = self.app_object_of(&request.get_ref().name)?;
        let caller = authorize(
            &self.ctx,
            &request,
            "applications",
            "delete",
            &object,
            "delete",
        )?;
        let outcome: Result<Response<pb::DeleteApplicationResponse>, Status> = async {
        let req = request.into_inner();
        let name = req.name;
        let rec = self
            .ctx
            .store
            .app(&name)?
            .ok_or_else(|| Status::not_found(format!("application {name:?} not found")))?;
        if let Some(why) = crate::deletion::refusal(&rec) {
            return Err(Status::failed_precondition(why));
        }
        let propagation =
            crate::deletion::for_request(&rec.app, req.cascade, &req.propagation_policy)
                .map_err(|e| Status::invalid_argument(format!("application {name:?}: {e}")))?;
        let clusters = self
            .ctx
            .fleet
            .remove_app_with(&name, propagation)?
            .ok_or_else(|| Status::not_found(format!("application {name:?} not found")))?;
        if crate::appofapps::is_in_hub(&rec.app) {
            self.delete_children(&name, propagation)?;
        }
        let not_connected = clusters
            .iter()
            .filter(|c| !self.ctx.fleet.is_connected(c))
            .cloned()
            .collect();
        tracing::info!(app = %name, origin = %rec.origin, propagation = %propagation, clusters = ?clusters, "application deleted");
        Ok(Response::new(pb::DeleteApplicationResponse {
            clusters,
            not_connected,
            propagation_policy: propagation.as_str().to_owned(),
        }))
        }
        .await;
        auth::audit(
            &self.ctx,
            &caller,
            "applications",
            "delete",
            &object,
            &outcome,
        );
        outcome
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let view = View::of(&self.ctx, &request)?;
        let clusters = self
            .ctx
            .store
            .clusters_shared()?
            .iter()
            .filter(|c| view.can_get("clusters", &c.name))
            .map(|c| self.cluster_to_pb(c))
            .collect();
        Ok(Response::new(pb::ListClustersResponse { clusters }))
    }

    async fn add_cluster(
        &self,
        request: Request<pb::AddClusterRequest>,
    ) -> Result<Response<pb::AddClusterResponse>, Status> {
        let cluster = request.get_ref().name.clone();
        let caller = authorize(&self.ctx, &request, "clusters", "create", &cluster, "add")?;
        let outcome: Result<Response<pb::AddClusterResponse>, Status> = async {
            let req = request.into_inner();
            let name = req.name;
            if !is_dns_subdomain(&name) {
                return Err(Status::invalid_argument(format!(
                    "cluster name {name:?} must be a lowercase RFC 1123 subdomain"
                )));
            }
            if name == crate::appofapps::IN_HUB {
                return Err(Status::invalid_argument(format!(
                    "cluster name {name:?} is reserved for applications managed in the hub"
                )));
            }
            if self.ctx.store.cluster(&name)?.is_some() {
                return Err(Status::already_exists(format!(
                    "cluster {name:?} already exists"
                )));
            }
            let issued = if req.issue_certificate {
                Some(
                    self.ctx
                        .pki
                        .issue_client(&name)
                        .map_err(|e| Status::internal(e.to_string()))?,
                )
            } else {
                None
            };
            let bootstrap = if req.create_bootstrap_token {
                let ttl_ms = if req.token_ttl_secs > 0 {
                    req.token_ttl_secs.saturating_mul(1000)
                } else {
                    DEFAULT_BOOTSTRAP_TTL_MS
                };
                let (token, hash) = pki::new_bootstrap_token(&self.ctx.pki.ca_pin());
                let expires_ms = now_ms().saturating_add(ttl_ms);
                self.ctx.store.put_bootstrap(
                    &hash,
                    &BootstrapRecord {
                        cluster: name.clone(),
                        expires_ms,
                    },
                )?;
                Some((token, expires_ms))
            } else {
                None
            };
            let rec = ClusterRecord {
                name: name.clone(),
                labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
                cert_serial: issued.as_ref().map(|i| i.serial.clone()),
                created_ms: now_ms(),
                ..Default::default()
            };
            self.ctx.fleet.put_cluster(rec)?;
            // ApplicationSets with a clusters generator see it at once.
            self.ctx.git.inventory_changed();
            tracing::info!(
                cluster = %name,
                certificate = issued.is_some(),
                bootstrap_token = bootstrap.is_some(),
                "cluster added"
            );
            let rec = self
                .ctx
                .store
                .cluster(&name)?
                .ok_or_else(|| Status::internal("cluster vanished"))?;
            let (certificate_pem, key_pem) =
                issued.map(|i| (i.cert_pem, i.key_pem)).unwrap_or_default();
            Ok(Response::new(pb::AddClusterResponse {
                cluster: Some(self.cluster_to_pb(&rec)),
                certificate_pem,
                key_pem,
                ca_pem: self.ctx.pki.ca_pem().to_owned(),
                ca_pin: self.ctx.pki.ca_pin(),
                token_expires_ms: bootstrap.as_ref().map(|b| b.1).unwrap_or_default(),
                bootstrap_token: bootstrap.map(|b| b.0).unwrap_or_default(),
            }))
        }
        .await;
        auth::audit(&self.ctx, &caller, "clusters", "add", &cluster, &outcome);
        outcome
    }

    async fn remove_cluster(
        &self,
        request: Request<pb::RemoveClusterRequest>,
    ) -> Result<Response<pb::RemoveClusterResponse>, Status> {
        let cluster = request.get_ref().name.clone();
        let caller = authorize(
            &self.ctx, &request, "clusters", "delete", &cluster, "remove",
        )?;
        let outcome: Result<Response<pb::RemoveClusterResponse>, Status> = async {
        let pb::RemoveClusterRequest { name, cascade } = request.into_inner();
        let connected = self.ctx.fleet.is_connected(&name);
        // Before the streams close: they tell their agent how.
        self.ctx.commands.note_removal(&name, cascade);
        if !self.ctx.fleet.remove_cluster(&name)? {
            return Err(Status::not_found(format!("cluster {name:?} not found")));
        }
        tracing::info!(cluster = %name, cascade, agent_connected = connected, "cluster removed; its certificate is revoked");
        // Its desired state is gone with it; sets with cluster generators
        // see the inventory change on the next pass. Nothing is rendered
        // again for it.
        self.ctx.git.wake();
        Ok(Response::new(pb::RemoveClusterResponse { connected }))
        }
        .await;
        auth::audit(&self.ctx, &caller, "clusters", "remove", &cluster, &outcome);
        outcome
    }

    async fn list_repositories(
        &self,
        request: Request<pb::ListRepositoriesRequest>,
    ) -> Result<Response<pb::ListRepositoriesResponse>, Status> {
        let view = View::of(&self.ctx, &request)?;
        let repositories = self
            .ctx
            .store
            .repos()?
            .iter()
            .filter(|r| view.can_get("repositories", &auth::repo_object(&r.url)))
            .map(|r| {
                let credentials = effective_credentials(&self.ctx.store, &r.url);
                repo_with_credentials(r, credentials.as_ref())
            })
            .collect();
        Ok(Response::new(pb::ListRepositoriesResponse { repositories }))
    }

    async fn add_repository(
        &self,
        request: Request<pb::AddRepositoryRequest>,
    ) -> Result<Response<pb::Repository>, Status> {
        let url = auth::repo_object(&request.get_ref().url);
        let caller = authorize(&self.ctx, &request, "repositories", "create", &url, "add")?;
        let outcome: Result<Response<pb::Repository>, Status> = async {
        let mut req = request.into_inner();
        if req.url.trim().is_empty() {
            return Err(Status::invalid_argument("repository url is required"));
        }
        // Credentials in the URL become stored (sealed) credentials; the
        // URL is registered, shown and logged without them.
        let (url, embedded) =
            crate::source::split_credentials(req.url.trim()).map_err(Status::invalid_argument)?;
        req.url = url;
        let project = credentials_project(&self.ctx.store, &req.url, &req.project)?;
        if !project.is_empty() && embedded.is_none() {
            return Err(Status::invalid_argument(format!(
                "repository {}: project {project:?} scopes the repository's credentials, and none are given in the URL (set them with their project through SetRepositoryCredentials)",
                crate::source::redact_url(&req.url)
            )));
        }
        let kind =
            crate::gitsync::RepoKind::parse(&req.r#type).map_err(Status::invalid_argument)?;
        if kind == crate::gitsync::RepoKind::Helm {
            if !req.apps_path.trim_matches('/').is_empty() {
                return Err(Status::invalid_argument(
                    "a Helm repository holds charts, not Applications: it has no apps path",
                ));
            }
            if !(req.url.starts_with("https://") || req.url.starts_with("http://")) {
                return Err(Status::invalid_argument(
                    "a Helm repository URL must be http:// or https:// (oci:// is not supported yet)",
                ));
            }
        }
        let rec = self.ctx.git.add_repository(
            &req.url,
            &req.revision,
            &req.apps_path,
            req.poll_interval_secs,
            kind,
        )?;
        let credentials = embedded.map(|c| RepoCredentials {
            username: c.username,
            password: c.password,
            project,
            ..Default::default()
        });
        if let Some(c) = &credentials {
            self.ctx.store.put_repo_credentials(&req.url, Some(c))?;
            tracing::info!(url = %crate::source::SafeUrl(&req.url), "credentials in the repository URL moved to the stored credentials");
            self.ctx.git.refresh_urls(std::slice::from_ref(&req.url));
        }
        self.ctx.store.flush_async().await?;
        Ok(Response::new(repo_with_credentials(
            &rec,
            effective_credentials(&self.ctx.store, &req.url).as_ref(),
        )))
        }
        .await;
        auth::audit(&self.ctx, &caller, "repositories", "add", &url, &outcome);
        outcome
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        // One application: get, as Argo CD; every repository: update on
        // every application.
        let app = request.get_ref().app.clone();
        if app.is_empty() {
            authorize(
                &self.ctx,
                &request,
                "applications",
                "update",
                "*/*",
                "refresh",
            )?;
        } else {
            let object = self.app_object_of(&app)?;
            authorize(
                &self.ctx,
                &request,
                "applications",
                "get",
                &object,
                "refresh",
            )?;
        }
        let req = request.into_inner();
        if req.app.is_empty() {
            // A hard refresh renders everything again; a plain one fetches
            // everything and renders only what moved.
            tracing::info!(hard = req.hard, "refresh of every repository requested");
            if req.hard {
                self.ctx.git.kick();
            } else {
                self.ctx.git.refresh_all();
            }
        } else {
            let rec =
                self.ctx.store.app(&req.app)?.ok_or_else(|| {
                    Status::not_found(format!("application {:?} not found", req.app))
                })?;
            tracing::info!(app = %req.app, hard = req.hard, "application refresh requested");
            self.ctx.git.refresh_app(&rec.app, req.hard);
        }
        Ok(Response::new(pb::RefreshResponse {}))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        super::access::create_token(&self.ctx, request).await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        super::access::list_tokens(&self.ctx, request)
    }

    async fn create_application_set(
        &self,
        request: Request<pb::CreateApplicationSetRequest>,
    ) -> Result<Response<pb::ApplicationSet>, Status> {
        let doc = crate::yaml::parse_documents(&request.get_ref().manifest)
            .ok()
            .and_then(|d| d.into_iter().next())
            .unwrap_or_default();
        let set = auth::appset_object(&doc);
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let action = if self.ctx.store.appset(name)?.is_some() {
            "update"
        } else {
            "create"
        };
        let caller = authorize(&self.ctx, &request, "applicationsets", action, &set, action)?;
        let outcome = crate::appset::api::create(&self.ctx, request).await;
        auth::audit(
            &self.ctx,
            &caller,
            "applicationsets",
            action,
            &set,
            &outcome,
        );
        outcome
    }

    async fn list_application_sets(
        &self,
        request: Request<pb::ListApplicationSetsRequest>,
    ) -> Result<Response<pb::ListApplicationSetsResponse>, Status> {
        let view = View::of(&self.ctx, &request)?;
        let visible: std::collections::HashSet<String> = self
            .ctx
            .store
            .appsets()?
            .iter()
            .filter(|r| view.can_get("applicationsets", &auth::appset_object(&r.raw)))
            .map(|r| r.name.clone())
            .collect();
        let mut resp = crate::appset::api::list(&self.ctx, request).await?;
        resp.get_mut()
            .application_sets
            .retain(|s| visible.contains(&s.name));
        Ok(resp)
    }

    async fn get_application_set(
        &self,
        request: Request<pb::GetApplicationSetRequest>,
    ) -> Result<Response<pb::ApplicationSet>, Status> {
        let set = self.appset_object_of(&request.get_ref().name)?;
        authorize(&self.ctx, &request, "applicationsets", "get", &set, "get")?;
        crate::appset::api::get_one(&self.ctx, request).await
    }

    async fn delete_application_set(
        &self,
        request: Request<pb::DeleteApplicationSetRequest>,
    ) -> Result<Response<pb::DeleteApplicationSetResponse>, Status> {
        let set = self.appset_object_of(&request.get_ref().name)?;
        let caller = authorize(
            &self.ctx,
            &request,
            "applicationsets",
            "delete",
            &set,
            "delete",
        )?;
        let outcome: Result<Response<pb::DeleteApplicationSetResponse>, Status> =
            async { crate::appset::api::delete(&self.ctx, request).await }.await;
        auth::audit(
            &self.ctx,
            &caller,
            "applicationsets",
            "delete",
            &set,
            &outcome,
        );
        outcome
    }

    async fn confirm_application_set(
        &self,
        request: Request<pb::ConfirmApplicationSetRequest>,
    ) -> Result<Response<pb::ApplicationSet>, Status> {
        let set = self.appset_object_of(&request.get_ref().name)?;
        let caller = authorize(
            &self.ctx,
            &request,
            "applicationsets",
            "update",
            &set,
            "confirm",
        )?;
        let outcome: Result<Response<pb::ApplicationSet>, Status> =
            async { crate::appset::api::confirm(&self.ctx, request).await }.await;
        auth::audit(
            &self.ctx,
            &caller,
            "applicationsets",
            "confirm",
            &set,
            &outcome,
        );
        outcome
    }

    async fn update_cluster(
        &self,
        request: Request<pb::UpdateClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        let cluster = request.get_ref().name.clone();
        let caller = authorize(&self.ctx, &request, "clusters", "update", &cluster, "label")?;
        let outcome: Result<Response<pb::Cluster>, Status> = async {
            let rec = crate::appset::api::update_cluster(&self.ctx, request).await?;
            Ok(Response::new(self.cluster_to_pb(&rec)))
        }
        .await;
        auth::audit(&self.ctx, &caller, "clusters", "label", &cluster, &outcome);
        outcome
    }

    async fn apply_clusters(
        &self,
        request: Request<pb::ApplyClustersRequest>,
    ) -> Result<Response<pb::ApplyClustersResponse>, Status> {
        // Every declared cluster must be allowed; a manifest that does not
        // parse needs the right on every cluster to see its error.
        let names: Vec<String> =
            crate::inventory::parse_clusters(&request.get_ref().manifest, "request")
                .map(|d| d.into_iter().map(|c| c.name).collect())
                .unwrap_or_else(|_| vec!["*".to_owned()]);
        let mut caller = None;
        for name in &names {
            let action = if self.ctx.store.cluster(name)?.is_some() {
                "update"
            } else {
                "create"
            };
            caller = Some(authorize(
                &self.ctx, &request, "clusters", action, name, "apply",
            )?);
        }
        let caller = match caller {
            Some(c) => c,
            None => auth::caller(&request)?,
        };
        let outcome = crate::appset::api::apply_clusters(&self.ctx, request).await;
        for name in &names {
            auth::audit(&self.ctx, &caller, "clusters", "apply", name, &outcome);
        }
        let recs = outcome?;
        Ok(Response::new(pb::ApplyClustersResponse {
            clusters: recs.iter().map(|c| self.cluster_to_pb(c)).collect(),
        }))
    }

    async fn sync_application(
        &self,
        request: Request<pb::SyncApplicationRequest>,
    ) -> Result<Response<pb::SyncApplicationResponse>, Status> {
        let object = self.app_object_of(&request.get_ref().name)?;
        let caller = authorize(&self.ctx, &request, "applications", "sync", &object, "sync")?;
        let outcome: Result<Response<pb::SyncApplicationResponse>, Status> =
            async { super::ops::sync(&self.ctx, request).await }.await;
        auth::audit(
            &self.ctx,
            &caller,
            "applications",
            "sync",
            &object,
            &outcome,
        );
        outcome
    }

    async fn terminate_operation(
        &self,
        request: Request<pb::TerminateOperationRequest>,
    ) -> Result<Response<pb::TerminateOperationResponse>, Status> {
        let object = self.app_object_of(&request.get_ref().name)?;
        let caller = authorize(
            &self.ctx,
            &request,
            "applications",
            "sync",
            &object,
            "terminate-op",
        )?;
        let outcome: Result<Response<pb::TerminateOperationResponse>, Status> =
            async { super::ops::terminate(&self.ctx, request).await }.await;
        auth::audit(
            &self.ctx,
            &caller,
            "applications",
            "terminate-op",
            &object,
            &outcome,
        );
        outcome
    }

    // ---- tenancy: projects ----

    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        super::projects::create(&self.ctx, request).await
    }

    async fn get_project(
        &self,
        request: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        super::projects::get(&self.ctx, request)
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        super::projects::list(&self.ctx, request)
    }

    async fn delete_project(
        &self,
        request: Request<pb::DeleteProjectRequest>,
    ) -> Result<Response<pb::DeleteProjectResponse>, Status> {
        super::projects::delete(&self.ctx, request).await
    }

    async fn rollback_application(
        &self,
        request: Request<pb::RollbackApplicationRequest>,
    ) -> Result<Response<pb::SyncApplicationResponse>, Status> {
        let object = self.app_object_of(&request.get_ref().name)?;
        let caller = authorize(
            &self.ctx,
            &request,
            "applications",
            "sync",
            &object,
            "rollback",
        )?;
        let outcome: Result<Response<pb::SyncApplicationResponse>, Status> =
            async { super::ops::rollback(&self.ctx, request).await }.await;
        auth::audit(
            &self.ctx,
            &caller,
            "applications",
            "rollback",
            &object,
            &outcome,
        );
        outcome
    }

    async fn set_repository_credentials(
        &self,
        request: Request<pb::SetRepositoryCredentialsRequest>,
    ) -> Result<Response<pb::Repository>, Status> {
        let url = auth::repo_object(&request.get_ref().url);
        let caller = authorize(
            &self.ctx,
            &request,
            "repositories",
            "update",
            &url,
            "set-credentials",
        )?;
        let outcome: Result<Response<pb::Repository>, Status> = async {
        let mut req = request.into_inner();
        // The repository is registered without the credentials a URL may
        // carry (see add_repository).
        if let Ok((url, _)) = crate::source::split_credentials(req.url.trim()) {
            req.url = url;
        }
        let rec = self.ctx.store.repo(&req.url)?.ok_or_else(|| {
            Status::not_found(format!(
                "repository {:?} is not registered",
                crate::source::redact_url(&req.url)
            ))
        })?;
        let mut creds = credentials_from_request(&req)?;
        let project = credentials_project(&self.ctx.store, &req.url, &req.project)?;
        match &mut creds {
            Some(c) => c.project = project,
            None if !project.is_empty() => {
                return Err(Status::invalid_argument(format!(
                    "repository {}: project {project:?} scopes credentials, and none are given (an empty password removes them)",
                    crate::source::redact_url(&req.url)
                )));
            }
            None => {}
        }
        self.ctx
            .store
            .put_repo_credentials(&req.url, creds.as_ref())?;
        self.ctx.store.flush_async().await?;
        let kind = match &creds {
            Some(c) if !c.ssh_private_key.is_empty() => "ssh key",
            Some(_) => "https",
            None => "none",
        };
        tracing::info!(url = %crate::source::redact_url(&req.url), stored = kind, "repository credentials updated");
        self.ctx.git.refresh_urls(std::slice::from_ref(&req.url));
        Ok(Response::new(repo_with_credentials(
            &rec,
            effective_credentials(&self.ctx.store, &req.url).as_ref(),
        )))
        }
        .await;
        auth::audit(
            &self.ctx,
            &caller,
            "repositories",
            "set-credentials",
            &url,
            &outcome,
        );
        outcome
    }

    async fn diff_application(
        &self,
        request: Request<pb::DiffApplicationRequest>,
    ) -> Result<Response<pb::DiffApplicationResponse>, Status> {
        let object = self.app_object_of(&request.get_ref().name)?;
        authorize(&self.ctx, &request, "applications", "get", &object, "get")?;
        super::ops::diff(&self.ctx, request).await
    }

    async fn get_application_history(
        &self,
        request: Request<pb::GetApplicationHistoryRequest>,
    ) -> Result<Response<pb::ApplicationHistory>, Status> {
        let object = self.app_object_of(&request.get_ref().name)?;
        authorize(&self.ctx, &request, "applications", "get", &object, "get")?;
        super::ops::history(&self.ctx, request).await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        super::access::revoke_token(&self.ctx, request).await
    }

    // operate: CLI

    async fn get_application_manifests(
        &self,
        request: Request<pb::GetApplicationManifestsRequest>,
    ) -> Result<Response<pb::ApplicationManifests>, Status> {
        let object = self.app_object_of(&request.get_ref().name)?;
        authorize(&self.ctx, &request, "applications", "get", &object, "get")?;
        let name = request.into_inner().name;
        let rec = self
            .ctx
            .store
            .app(&name)?
            .ok_or_else(|| Status::not_found(format!("application {name:?} not found")))?;
        let bundle = self.ctx.fleet.bundle(&name);
        Ok(Response::new(pb::ApplicationManifests {
            name,
            revision: bundle
                .as_ref()
                .map_or_else(|| rec.revision.clone(), |b| b.revision.clone()),
            manifests: bundle
                .as_ref()
                .map(|b| b.manifests.clone())
                .unwrap_or_default(),
            render_error: bundle
                .as_ref()
                .map(|b| b.render_error.clone())
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| rec.error.clone()),
        }))
    }

    // ---- operate: removal and repos ----

    async fn remove_repository(
        &self,
        request: Request<pb::RemoveRepositoryRequest>,
    ) -> Result<Response<pb::RemoveRepositoryResponse>, Status> {
        let url = auth::repo_object(&request.get_ref().url);
        let caller = authorize(
            &self.ctx,
            &request,
            "repositories",
            "delete",
            &url,
            "remove",
        )?;
        let outcome: Result<Response<pb::RemoveRepositoryResponse>, Status> = async {
        let req = request.into_inner();
        let url = crate::source::split_credentials(req.url.trim())
            .map_or_else(|_| req.url.trim().to_owned(), |(bare, _)| bare);
        if self.ctx.store.repo(&url)?.is_none() {
            return Err(Status::not_found(format!(
                "repository {} is not registered",
                crate::source::SafeUrl(&url)
            )));
        }
        let applications = crate::store::applications_of_repo(&self.ctx.store.apps()?, &url);
        if !applications.is_empty() && !req.force {
            return Err(Status::failed_precondition(format!(
                "repository {} is used by (or declared) application(s) {}: delete them first, or remove it anyway with --force",
                crate::source::SafeUrl(&url),
                applications.join(", ")
            )));
        }
        self.ctx.store.remove_repo(&url)?;
        self.ctx.store.put_repo_credentials(&url, None)?;
        self.ctx.store.flush_async().await?;
        tracing::info!(url = %crate::source::SafeUrl(&url), force = req.force, applications = ?applications, "repository removed");
        self.ctx.git.kick();
        Ok(Response::new(pb::RemoveRepositoryResponse { applications }))
        }
        .await;
        auth::audit(&self.ctx, &caller, "repositories", "remove", &url, &outcome);
        outcome
    }

    async fn check_repository(
        &self,
        request: Request<pb::CheckRepositoryRequest>,
    ) -> Result<Response<pb::CheckRepositoryResponse>, Status> {
        let url = auth::repo_object(&request.get_ref().url);
        authorize(&self.ctx, &request, "repositories", "create", &url, "check")?;
        let req = request.into_inner();
        let (url, embedded) =
            crate::source::split_credentials(req.url.trim()).map_err(Status::invalid_argument)?;
        if url.is_empty() {
            return Err(Status::invalid_argument("repository url is required"));
        }
        let kind =
            crate::gitsync::RepoKind::parse(&req.r#type).map_err(Status::invalid_argument)?;
        let given = if !req.ssh_private_key.is_empty() {
            Some(RepoCredentials {
                ssh_private_key: req.ssh_private_key,
                insecure_ignore_host_key: req.insecure_ignore_host_key,
                ..Default::default()
            })
        } else if !req.password.is_empty() {
            Some(RepoCredentials {
                username: if req.username.is_empty() {
                    "git".to_owned()
                } else {
                    req.username
                },
                password: req.password,
                ..Default::default()
            })
        } else {
            embedded.map(|c| RepoCredentials {
                username: c.username,
                password: c.password,
                ..Default::default()
            })
        };
        let shown = crate::source::SafeUrl(&url).to_string();
        let resolved = match kind {
            crate::gitsync::RepoKind::Git => {
                let git = self.ctx.git.clone();
                let revision = req.revision.clone();
                let target = url.clone();
                tokio::task::spawn_blocking(move || {
                    git.check_reachable(&target, &revision, given.as_ref())
                })
                .await
                .map_err(|e| Status::internal(format!("checking {shown}: {e}")))?
                .map_err(|e| {
                    // The cause without the URL the error starts with.
                    let e = e.to_string();
                    let cause = e
                        .strip_prefix(&format!("repository {shown}: "))
                        .unwrap_or(&e);
                    Status::failed_precondition(format!(
                        "repository {shown} is not reachable: {cause}"
                    ))
                })?
            }
            crate::gitsync::RepoKind::Helm => {
                let stored = self
                    .ctx
                    .store
                    .effective_repo_credentials(&url)
                    .ok()
                    .flatten()
                    .map(crate::store::credential_templates::CredentialsSource::into_credentials);
                let credentials = given.or(stored);
                let target = url.clone();
                let hosts = self.ctx.git.allowed_fetch_hosts();
                let index = tokio::task::spawn_blocking(move || {
                    let dir = std::env::temp_dir().join("flotilla-helm-check");
                    let repos = crate::helmrepo::HelmRepos::new(dir);
                    repos.set_allowed_hosts(hosts);
                    repos.fetch_index(&target, credentials.as_ref())
                })
                .await
                .map_err(|e| Status::internal(format!("checking {shown}: {e}")))?
                .map_err(|e| {
                    Status::failed_precondition(format!("repository {shown} is not reachable: {e}"))
                })?;
                format!("{} charts", index.entries.len())
            }
        };
        Ok(Response::new(pb::CheckRepositoryResponse { resolved }))
    }

    // ---- tenancy: RBAC and audit ----

    async fn get_rbac_policy(
        &self,
        request: Request<pb::GetRbacPolicyRequest>,
    ) -> Result<Response<pb::RbacPolicy>, Status> {
        super::access::get_rbac_policy(&self.ctx, request)
    }

    async fn set_rbac_policy(
        &self,
        request: Request<pb::RbacPolicy>,
    ) -> Result<Response<pb::RbacPolicy>, Status> {
        super::access::set_rbac_policy(&self.ctx, request).await
    }

    async fn check_rbac(
        &self,
        request: Request<pb::CheckRbacRequest>,
    ) -> Result<Response<pb::CheckRbacResponse>, Status> {
        super::access::check_rbac(&self.ctx, request)
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        super::access::list_audit(&self.ctx, request)
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        let view = View::of(&self.ctx, &request)?;
        super::rollouts::list(&self.ctx, |set| {
            self.appset_object_of(set)
                .is_ok_and(|o| view.can_get("applicationsets", &o))
        })
        .map(Response::new)
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let set = self.appset_object_of(&request.get_ref().name)?;
        authorize(&self.ctx, &request, "applicationsets", "get", &set, "get")?;
        super::rollouts::get(&self.ctx, &request.get_ref().name).map(Response::new)
    }

    async fn control_rollout(
        &self,
        request: Request<pb::ControlRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let set = self.appset_object_of(&request.get_ref().name)?;
        let op = format!("rollout-{}", request.get_ref().action);
        // Moving a rollout changes what the set deploys: as updating it.
        let caller = authorize(&self.ctx, &request, "applicationsets", "update", &set, &op)?;
        let by = format!("user:{}", caller.subject);
        let req = request.into_inner();
        let outcome = super::rollouts::control(&self.ctx, &req.name, &req.action, &by)
            .await
            .map(Response::new);
        auth::audit(&self.ctx, &caller, "applicationsets", &op, &set, &outcome);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn status(resources: usize) -> pb::AppStatus {
        pb::AppStatus {
            name: "web".into(),
            sync: pb::SyncStatus::Synced as i32,
            resources: (0..resources)
                .map(|i| pb::ResourceStatus {
                    key: Some(pb::ResourceKey {
                        kind: "ConfigMap".into(),
                        name: format!("cm-{i:05}"),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_application_too_large_for_a_response_is_cut_with_a_marker() {
        let mut app = pb::Application {
            name: "web".into(),
            clusters: (0..4)
                .map(|i| pb::ClusterAppStatus {
                    cluster: format!("c{i}"),
                    status: Some(status(5_000)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let budget = 64 * 1024;
        assert!(app.encoded_len() > budget);
        bound_application(&mut app, budget);
        assert!(app.encoded_len() <= budget, "{}", app.encoded_len());
        for c in &app.clusters {
            let st = c.status.as_ref().unwrap();
            let marker = st
                .conditions
                .iter()
                .find(|c| c.r#type == pb::wire::TRUNCATED_CONDITION)
                .unwrap();
            assert!(
                marker.message.contains("more resources)"),
                "{}",
                marker.message
            );
        }
        // Small ones are left alone.
        let mut small = pb::Application {
            clusters: vec![pb::ClusterAppStatus {
                status: Some(status(3)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let before = small.clone();
        bound_application(&mut small, budget);
        assert_eq!(small, before);
    }

    #[test]
    fn a_withheld_bundle_makes_the_status_unknown_with_the_reason() {
        let why = "bundle is 5.5 MiB; agent too old to receive chunked bundles".to_owned();
        let st = withheld_status("big", Some(status(1)), why.clone());
        assert_eq!(st.sync, pb::SyncStatus::Unknown as i32);
        assert_eq!(st.message, why);
        assert_eq!(st.resources.len(), 1);
        let fresh = withheld_status("big", None, why);
        assert_eq!(fresh.name, "big");
        assert_eq!(fresh.health, pb::HealthStatus::Unknown as i32);
        assert_eq!(fresh.conditions[0].r#type, "SyncError");
    }
}
