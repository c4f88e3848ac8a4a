//! Argo CD `AppProject`s: the model, where they come from (Git, the API),
//! and the hub's enforcement point.
//!
//! An application names a project (`spec.project`, `default` when unset).
//! The `default` project exists without being declared and allows
//! everything, as in Argo CD; declaring one named `default` replaces it.
//! Before anything of an application is fetched, [`admit`] checks that its
//! project exists, that it permits every source repository and the
//! destination (cluster and namespace); after rendering, [`check_objects`]
//! checks every object's group/kind and namespace. A refused application
//! gets an `InvalidSpecError` naming the rule, and its bundle carries no
//! object (nothing of it reaches a cluster). Every bundle carries its
//! project's rules ([`pb::ProjectRules`]) so that the agent checks again
//! before it applies or prunes anything.
//!
//! `syncWindows` are checked when a project is read and enforced by
//! [`window`] (automated sync, manual sync, rollouts). Parsed and stored
//! but not enforced here: `roles` (RBAC), `orphanedResources` (warn only
//! in Argo CD; not reported yet), `sourceNamespaces` (Flotilla's
//! applications all live in the hub, Argo CD's control-plane namespace,
//! which every project admits).

use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto as pb;
use pb::project_rules as rules;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{ARGO_API_VERSION, Application, ObjectMeta};
use crate::source::SourceFile;
use crate::store::{Store, StoreError};

/// The project every application without `spec.project` names.
pub const DEFAULT_PROJECT: &str = "default";

/// The condition type Argo CD gives an application its project refuses.
pub const INVALID_SPEC: &str = "InvalidSpecError";

/// Errors from reading AppProject resources.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("{origin}: invalid YAML{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Yaml {
        origin: String,
        line: Option<usize>,
        message: String,
    },
    #[error("{origin}: AppProject {name:?}: {field}: {message}")]
    Invalid {
        origin: String,
        name: String,
        field: String,
        message: String,
    },
}

/// An Argo CD `AppProject`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProject {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AppProjectSpec,
    /// Written by Argo CD (project token state); read and dropped.
    #[serde(default, skip_serializing)]
    pub status: Option<Value>,
}

/// `AppProject.spec`. Unknown fields are refused, naming the field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProjectSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_repos: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<Destination>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_resource_whitelist: Vec<GroupKind>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_resource_blacklist: Vec<GroupKind>,
    /// `None` (unset) allows every namespaced kind; an empty list none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_resource_whitelist: Option<Vec<GroupKind>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_resource_blacklist: Vec<GroupKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphaned_resources: Option<OrphanedResources>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_windows: Vec<SyncWindow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<ProjectRole>,
    /// Only clusters whose record names this project (a cluster Secret's
    /// `project`) are permitted destinations.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permit_only_project_scoped_clusters: bool,
    /// GPG commit verification: not supported (refused when not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signature_keys: Vec<Value>,
    /// Impersonation: not supported (refused when not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_service_accounts: Vec<Value>,
}

/// One entry of `spec.destinations` (globs; a leading `!` denies).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// A group/kind (globs), with an optional name glob in cluster lists.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupKind {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `spec.orphanedResources`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrphanedResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<GroupKind>,
}

/// `spec.syncWindows[]`, checked and enforced by [`window`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncWindow {
    pub kind: String,
    pub schedule: String,
    pub duration: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual_sync: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time_zone: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub and_operator: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

pub use crate::rbac::ProjectRole;

/// A stored project: the definition and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub project: AppProject,
    /// `api` or `git:<repo-url>:<file>`.
    pub origin: String,
}

impl AppProject {
    /// The project's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Its roles, as RBAC reads them.
    pub fn rbac_roles(&self) -> crate::rbac::ProjectRoles<'_> {
        crate::rbac::ProjectRoles {
            project: self.name(),
            roles: &self.spec.roles,
        }
    }

    /// The enforceable rules, in their wire form.
    pub fn rules(&self) -> pb::ProjectRules {
        let gk = |l: &[GroupKind]| {
            l.iter()
                .map(|g| pb::ProjectGroupKind {
                    group: g.group.clone(),
                    kind: g.kind.clone(),
                    name: g.name.clone(),
                })
                .collect()
        };
        let s = &self.spec;
        pb::ProjectRules {
            project: self.metadata.name.clone(),
            source_repos: s.source_repos.clone(),
            destinations: s
                .destinations
                .iter()
                .map(|d| pb::ProjectDestination {
                    server: d.server.clone(),
                    name: d.name.clone(),
                    namespace: d.namespace.clone(),
                })
                .collect(),
            cluster_resource_whitelist: gk(&s.cluster_resource_whitelist),
            cluster_resource_blacklist: gk(&s.cluster_resource_blacklist),
            namespace_resource_whitelist: gk(s
                .namespace_resource_whitelist
                .as_deref()
                .unwrap_or_default()),
            namespace_resource_blacklist: gk(&s.namespace_resource_blacklist),
            namespace_resource_whitelist_set: s.namespace_resource_whitelist.is_some(),
        }
    }
}

/// Parses one AppProject document.
///
/// # Errors
/// [`ProjectError::Invalid`] naming the field (an unknown field too).
pub fn project_from_value(doc: Value, origin: &str) -> Result<AppProject, ProjectError> {
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let invalid = |field: &str, message: String| ProjectError::Invalid {
        origin: origin.to_owned(),
        name: name.clone(),
        field: field.to_owned(),
        message,
    };
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version != ARGO_API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!("must be {ARGO_API_VERSION}, got {api_version:?}"),
        ));
    }
    if doc.get("kind").and_then(Value::as_str) != Some("AppProject") {
        return Err(invalid("kind", "must be AppProject".to_owned()));
    }
    let project: AppProject =
        serde_json::from_value(doc).map_err(|e| invalid("spec", e.to_string()))?;
    if project.metadata.name.is_empty() {
        return Err(invalid("metadata.name", "is required".to_owned()));
    }
    if !crate::model::is_dns_subdomain(&project.metadata.name) {
        return Err(invalid(
            "metadata.name",
            format!(
                "{:?} must be a lowercase RFC 1123 subdomain",
                project.metadata.name
            ),
        ));
    }
    let s = &project.spec;
    if !s.signature_keys.is_empty() {
        return Err(invalid(
            "spec.signatureKeys",
            "commit signature verification is not supported".to_owned(),
        ));
    }
    if !s.destination_service_accounts.is_empty() {
        return Err(invalid(
            "spec.destinationServiceAccounts",
            "impersonation is not supported (the agent applies with its own service account)"
                .to_owned(),
        ));
    }
    for (i, d) in s.destinations.iter().enumerate() {
        if d.server.is_empty() && d.name.is_empty() {
            return Err(invalid(
                &format!("spec.destinations[{i}]"),
                "one of server or name is required".to_owned(),
            ));
        }
    }
    let lists = [
        (
            "spec.clusterResourceWhitelist",
            &s.cluster_resource_whitelist,
        ),
        (
            "spec.clusterResourceBlacklist",
            &s.cluster_resource_blacklist,
        ),
        (
            "spec.namespaceResourceBlacklist",
            &s.namespace_resource_blacklist,
        ),
    ];
    for (field, list) in lists {
        for (i, g) in list.iter().enumerate() {
            if g.kind.is_empty() {
                return Err(invalid(
                    &format!("{field}[{i}].kind"),
                    "is required".to_owned(),
                ));
            }
        }
    }
    for (i, g) in s
        .namespace_resource_whitelist
        .iter()
        .flatten()
        .chain(&s.namespace_resource_blacklist)
        .enumerate()
    {
        if !g.name.is_empty() {
            return Err(invalid(
                &format!("spec.namespaceResource…[{i}].name"),
                "names are only matched in the cluster-scoped lists".to_owned(),
            ));
        }
    }
    // A window that cannot be evaluated is refused now, naming it, not
    // ignored at sync time.
    window::compile_all(&s.sync_windows).map_err(|(field, message)| invalid(&field, message))?;
    for (i, r) in s.roles.iter().enumerate() {
        if r.name.is_empty() {
            return Err(invalid(
                &format!("spec.roles[{i}].name"),
                "is required".to_owned(),
            ));
        }
        // RBAC: policies for the role itself, inside the project.
        crate::rbac::project_role_policy(project.rbac_roles(), i)
            .map_err(|e| invalid(&format!("spec.roles[{i}].policies"), e.to_string()))?;
    }
    Ok(project)
}

/// Parses every AppProject document in a YAML (or JSON) stream; other kinds
/// are skipped.
///
/// # Errors
/// Invalid YAML, or an invalid AppProject.
pub fn parse_projects(text: &str, origin: &str) -> Result<Vec<AppProject>, ProjectError> {
    let docs = crate::yaml::parse_documents(text).map_err(|e| ProjectError::Yaml {
        origin: origin.to_owned(),
        line: e.line,
        message: e.message,
    })?;
    docs.into_iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("AppProject"))
        .map(|d| project_from_value(d, origin))
        .collect()
}

/// Reads the AppProjects of `files` (the apps path of `repo_url`) and
/// reconciles the stored projects that came from this repository: new and
/// changed ones are stored, ones no longer there removed. A project the
/// API created is replaced by Git's (as Applications are). Returns the
/// errors, one per file or project.
///
/// # Errors
/// The store failed.
pub fn load_from_repo(
    store: &Store,
    repo_url: &str,
    apps_path: &str,
    files: &[SourceFile],
) -> Result<Vec<String>, StoreError> {
    let prefix = format!("git:{repo_url}:");
    let mut errors = Vec::new();
    let mut found: BTreeMap<String, ProjectRecord> = BTreeMap::new();
    let mut failed_files = BTreeSet::new();
    for f in files {
        let lower = f.path.to_ascii_lowercase();
        if !(lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")) {
            continue;
        }
        let file = if apps_path.is_empty() {
            f.path.clone()
        } else {
            format!("{}/{}", apps_path.trim_matches('/'), f.path)
        };
        let origin = format!("{prefix}{file}");
        let text = String::from_utf8_lossy(&f.content);
        match parse_projects(&text, &file) {
            // The Application loader reports YAML errors.
            Err(ProjectError::Yaml { .. }) => {
                failed_files.insert(origin);
            }
            Err(e) => {
                errors.push(e.to_string());
                failed_files.insert(origin);
            }
            Ok(projects) => {
                for p in projects {
                    let name = p.metadata.name.clone();
                    if found.contains_key(&name) {
                        errors.push(format!("AppProject {name:?} is defined twice ({file})"));
                        continue;
                    }
                    found.insert(
                        name,
                        ProjectRecord {
                            project: p,
                            origin: origin.clone(),
                        },
                    );
                }
            }
        }
    }
    for existing in store.projects()? {
        let name = existing.project.metadata.name.clone();
        // A project of a file that did not parse stays as it was.
        if existing.origin.starts_with(&prefix)
            && !found.contains_key(&name)
            && !failed_files.contains(&existing.origin)
        {
            tracing::info!(project = %name, "project removed from Git");
            store.remove_project(&name)?;
        }
    }
    for (name, rec) in found {
        if store.project(&name)?.as_ref() != Some(&rec) {
            tracing::info!(project = %name, origin = %rec.origin, "project loaded from Git");
            store.put_project(&rec)?;
        }
    }
    Ok(errors)
}

/// App of apps: stores the AppProjects an in-hub application `parent`
/// rendered (origin `app:<parent>`), removes the ones it stored before and
/// no longer renders (with `prune`), and returns the other objects (the
/// children app of apps plans) with the errors. A project defined
/// elsewhere is not taken over.
///
/// # Errors
/// The store failed.
pub fn from_parent(
    store: &Store,
    parent: &str,
    objects: Vec<Value>,
    prune: bool,
) -> Result<(Vec<Value>, Vec<String>), StoreError> {
    let origin = format!("app:{parent}");
    let (docs, others): (Vec<Value>, Vec<Value>) = objects.into_iter().partition(|o| {
        o.get("kind").and_then(Value::as_str) == Some("AppProject")
            && o.get("apiVersion").and_then(Value::as_str) == Some(ARGO_API_VERSION)
    });
    let mut errors = Vec::new();
    let mut declared = BTreeSet::new();
    for doc in docs {
        let p = match project_from_value(doc, &origin) {
            Ok(p) => p,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let name = p.metadata.name.clone();
        if !declared.insert(name.clone()) {
            errors.push(format!("AppProject {name:?} is declared twice"));
            continue;
        }
        let current = store.project(&name)?;
        if let Some(c) = current.as_ref().filter(|c| c.origin != origin) {
            errors.push(format!(
                "AppProject {name:?} is already defined by {}; not taken over",
                c.origin
            ));
            continue;
        }
        let rec = ProjectRecord {
            project: p,
            origin: origin.clone(),
        };
        if current.as_ref() != Some(&rec) {
            tracing::info!(parent = %parent, project = %name, "project managed in the hub");
            store.put_project(&rec)?;
        }
    }
    if prune && errors.is_empty() {
        for rec in store.projects()? {
            let name = &rec.project.metadata.name;
            if rec.origin == origin && !declared.contains(name) {
                tracing::info!(parent = %parent, project = %name, "project no longer in the hub's Git: removed (prune)");
                store.remove_project(name)?;
            }
        }
    }
    Ok((others, errors))
}

/// The rules of `name`: stored, or the implicit `default` (everything
/// allowed); `None` when there is no such project.
///
/// # Errors
/// The store failed.
pub fn rules_of(store: &Store, name: &str) -> Result<Option<pb::ProjectRules>, StoreError> {
    Ok(match store.project(name)? {
        Some(rec) => Some(rec.project.rules()),
        None if name == DEFAULT_PROJECT => Some(rules::allow_all(DEFAULT_PROJECT)),
        None => None,
    })
}

/// The project's name an application names (`default` when empty).
pub fn project_of(app: &Application) -> &str {
    if app.spec.project.is_empty() {
        DEFAULT_PROJECT
    } else {
        &app.spec.project
    }
}

/// The hub's first check, before anything of `app` is fetched: its project
/// exists, permits each source repository, and permits the destination
/// (each cluster the application targets, by name and server, with
/// `destination.namespace`). `Ok` carries the rules the bundle is sent
/// with; `Err` the condition message, Argo CD's words.
///
/// # Errors
/// The outer error: the store failed.
pub fn admit(
    store: &Store,
    app: &Application,
) -> Result<Result<pb::ProjectRules, String>, StoreError> {
    let project = project_of(app);
    let Some(rules) = rules_of(store, project)? else {
        return Ok(Err(format!(
            "{INVALID_SPEC}: Application referencing project {project} which does not exist"
        )));
    };
    for src in app.spec.effective_sources() {
        if !rules::is_source_permitted(&rules, &src.repo_url) {
            return Ok(Err(format!(
                "{INVALID_SPEC}: application repo {} is not permitted in project '{project}'",
                crate::source::display_repo_url(&src.repo_url)
            )));
        }
    }
    let namespace = app.spec.destination.namespace.clone().unwrap_or_default();
    let scoped_only = store
        .project(project)?
        .is_some_and(|r| r.project.spec.permit_only_project_scoped_clusters);
    let dest = crate::store::Destination::of(app);
    let mut clusters = Vec::new();
    for name in store.clusters_targeted(&dest)? {
        clusters.extend(store.cluster_shared(&name)?);
    }
    let wanted_name = app.spec.destination.name.clone().unwrap_or_default();
    let wanted_server = app.spec.destination.server.clone().unwrap_or_default();
    let refused = |server: &str, name: &str| {
        let what = if name.is_empty() {
            format!("server '{server}'")
        } else {
            format!("name '{name}'")
        };
        format!(
            "{INVALID_SPEC}: application destination {what} and namespace '{namespace}' do not match any of the allowed destinations in project '{project}'"
        )
    };
    if clusters.is_empty() {
        // No such cluster yet: judge what the application asks for.
        if !rules::is_destination_permitted(&rules, &wanted_server, &wanted_name, &namespace) {
            return Ok(Err(refused(&wanted_server, &wanted_name)));
        }
    }
    for c in &clusters {
        if !rules::is_destination_permitted(&rules, &c.server, &c.name, &namespace)
            || (scoped_only && c.project != project)
        {
            return Ok(Err(refused(&wanted_server, &wanted_name)));
        }
    }
    Ok(Ok(rules))
}

/// Cluster-scoped kinds of Kubernetes itself, by (group, kind). The hub has
/// no discovery: any other kind counts as namespaced unless written
/// without a namespace and listed here; the agent, which has discovery,
/// checks the scope again.
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("networking.k8s.io", "IngressClass"),
    ("policy", "PodSecurityPolicy"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
];

/// Whether an object of (group, kind) is cluster-scoped, as far as the hub
/// knows (see [`CLUSTER_SCOPED`]).
pub fn is_cluster_scoped(group: &str, kind: &str) -> bool {
    CLUSTER_SCOPED
        .iter()
        .any(|(g, k)| *g == group && *k == kind)
}

/// The hub's second check, on the rendered objects: each object's
/// group/kind against the project's lists (cluster-scoped or namespaced),
/// and a namespaced object's namespace (`destination.namespace` when it
/// has none) against the destinations. `Err` lists every refused object.
pub fn check_objects(
    rules: &pb::ProjectRules,
    app: &Application,
    manifests: &[String],
) -> Result<(), String> {
    let default_ns = app.spec.destination.namespace.clone().unwrap_or_default();
    let mut refused = Vec::new();
    for m in manifests {
        // Only the type and the name are read: decoding each manifest into
        // a `Value` cost more than the rest of a render's bookkeeping.
        let head = match serde_json::from_str::<ObjectHead<'_>>(m) {
            Ok(head) => head,
            // A field of another type (`kind: null`): read it as before,
            // a missing or non-string field counting as empty.
            Err(_) => match serde_json::from_str::<Value>(m) {
                Ok(obj) => ObjectHead::of_value(&obj),
                Err(_) => continue,
            },
        };
        let api_version: &str = &head.api_version;
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let kind: &str = &head.kind;
        let name: &str = &head.metadata.name;
        let own_ns: &str = &head.metadata.namespace;
        let namespaced = !own_ns.is_empty() || !is_cluster_scoped(group, kind);
        let namespace = if own_ns.is_empty() {
            default_ns.as_str()
        } else {
            own_ns
        };
        if let Some(why) = rules::object_refusal(rules, group, kind, name, namespace, namespaced) {
            refused.push(format!("{kind}/{name}: {why}"));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!("{INVALID_SPEC}: {}", refused.join("; ")))
    }
}

/// What [`check_objects`] reads of a manifest; everything else is skipped
/// without being decoded. Strings are borrowed unless they hold escapes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectHead<'a> {
    #[serde(default, borrow)]
    api_version: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    metadata: HeadMeta<'a>,
}

impl ObjectHead<'static> {
    fn of_value(obj: &Value) -> Self {
        let text = |v: Option<&Value>| {
            std::borrow::Cow::Owned(v.and_then(Value::as_str).unwrap_or("").to_owned())
        };
        Self {
            api_version: text(obj.get("apiVersion")),
            kind: text(obj.get("kind")),
            metadata: HeadMeta {
                name: text(obj.pointer("/metadata/name")),
                namespace: text(obj.pointer("/metadata/namespace")),
            },
        }
    }
}

#[derive(Default, Deserialize)]
struct HeadMeta<'a> {
    #[serde(default, borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    namespace: std::borrow::Cow<'a, str>,
}

/// `bundle` with the project's rules, its digest recomputed.
pub fn with_rules(mut bundle: pb::AppBundle, rules: pb::ProjectRules) -> pb::AppBundle {
    bundle.project_rules = Some(rules);
    bundle.digest = pb::wire::bundle_digest(&bundle);
    bundle
}

pub mod window;

#[cfg(test)]
mod tests;
