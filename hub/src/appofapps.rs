//! App of apps: an Application whose destination is the hub itself
//! (`destination.name: in-hub`) manages Applications, ApplicationSets and
//! cluster inventory records declared in Git.
//!
//! Its source is rendered like any other; at every render the hub plans
//! the children from the output ([`plan_children`], pure) and applies the
//! plan:
//!
//! - `Application` and `ApplicationSet` (`argoproj.io/v1alpha1`) are
//!   created or updated with origin `app:<parent>`; sets then go through
//!   the ApplicationSet controller like any other.
//! - `AppProject` (`argoproj.io/v1alpha1`) is stored with origin
//!   `app:<parent>` by `crate::project::from_parent`.
//! - `Cluster` (`flotilla.dev/v1alpha1`) and Argo CD cluster Secrets
//!   upsert the inventory record: the declared labels and annotations are
//!   set (others are left alone) and `server` when given. No credentials
//!   are ever issued.
//!
//! What the parent wrote is remembered per parent ([`ChildrenRecord`]).
//! Without `selfHeal`, a child is written only when its declaration is new
//! or changed since the last write, so a change made through the API
//! (`app create --upsert`, `appset create --upsert`, `cluster label`, a
//! deletion) stands until the declaration changes in Git; with `selfHeal`,
//! every render sets the children back to their declaration.
//!
//! With `syncPolicy.automated.prune`, a child the parent wrote that is no
//! longer rendered is removed: an Application with `Fleet::remove_app`, a
//! set with `AppSets::remove_set` (its own `preserveResourcesOnDeletion`
//! applies to its applications). A declared cluster is never unenrolled:
//! its record is removed only if this parent created it and no agent ever
//! held a certificate for it; otherwise only the labels and annotations
//! still holding the declared value are removed.
//!
//! A child defined elsewhere (API, a repository's apps path, another
//! parent) is never taken over; a cluster another parent declares is left
//! to it. An invalid or conflicting child is an error on the parent, the
//! others still apply, and a child whose declaration is invalid is kept.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::appset::ApplicationSet;
use crate::appset::lifecycle::AppSets;
use crate::fleet::Fleet;
use crate::inventory::DeclaredCluster;
use crate::model::{self, Application};
use crate::store::{
    AppRecord, AppSetRecord, ChildrenRecord, ClusterDeclaration, ClusterRecord, Store, StoreError,
};
use flotilla_proto as pb;

/// The destination name that means "this hub".
pub const IN_HUB: &str = "in-hub";

/// Whether `app` targets the hub itself.
pub fn is_in_hub(app: &Application) -> bool {
    app.spec.destination.name.as_deref() == Some(IN_HUB)
}

fn origin(parent: &str) -> String {
    format!("app:{parent}")
}

pub use crate::model::origin_after_api_edit;

/// The parent's `syncPolicy.automated` flags that apply to its children.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub prune: bool,
    pub self_heal: bool,
}

impl Policy {
    /// The policy of `app`.
    pub fn of(app: &Application) -> Self {
        let automated = app
            .spec
            .sync_policy
            .as_ref()
            .and_then(|p| p.automated.as_ref());
        Self {
            prune: automated.is_some_and(|a| a.prune),
            self_heal: automated.is_some_and(|a| a.self_heal),
        }
    }
}

/// The hub's state as a plan reads it.
#[derive(Clone, Copy, Debug)]
pub struct Live<'a> {
    pub apps: &'a [AppRecord],
    pub sets: &'a [AppSetRecord],
    pub clusters: &'a [ClusterRecord],
    /// What this parent last wrote.
    pub owned: &'a ChildrenRecord,
    /// Cluster name → the other parent whose record holds it.
    pub cluster_owners: &'a BTreeMap<String, String>,
}

/// An edit of one cluster's inventory record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterPatch {
    pub name: String,
    pub set_labels: BTreeMap<String, String>,
    /// Label keys removed if they still hold this value.
    pub drop_labels: BTreeMap<String, String>,
    pub set_annotations: BTreeMap<String, String>,
    /// Annotation keys removed if they still hold this value.
    pub drop_annotations: BTreeMap<String, String>,
    pub server: Option<String>,
}

fn drop_if_same(map: &mut BTreeMap<String, String>, drop: &BTreeMap<String, String>) {
    map.retain(|k, v| drop.get(k) != Some(v));
}

impl ClusterPatch {
    fn is_empty(&self) -> bool {
        self.set_labels.is_empty()
            && self.drop_labels.is_empty()
            && self.set_annotations.is_empty()
            && self.drop_annotations.is_empty()
            && self.server.is_none()
    }

    /// Applies the edit to a record (as it is when written).
    pub fn apply(&self, c: &mut ClusterRecord) {
        drop_if_same(&mut c.labels, &self.drop_labels);
        drop_if_same(&mut c.annotations, &self.drop_annotations);
        c.labels.extend(self.set_labels.clone());
        c.annotations.extend(self.set_annotations.clone());
        if let Some(s) = &self.server {
            c.server.clone_from(s);
        }
    }
}

/// A change to the cluster inventory.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterWrite {
    /// Registers the declared cluster, without credentials.
    Create(DeclaredCluster),
    Patch(ClusterPatch),
    /// Removes a record this parent created that no agent ever used.
    Remove(String),
}

/// What one render of a parent changes.
#[derive(Debug, Default, PartialEq)]
pub struct ChildPlan {
    /// Applications to create or replace.
    pub apps: Vec<Application>,
    pub app_removals: Vec<String>,
    /// (name, document) of sets to create or replace.
    pub sets: Vec<(String, Value)>,
    pub set_removals: Vec<String>,
    pub clusters: Vec<ClusterWrite>,
    pub errors: Vec<String>,
    /// The parent's record once the plan is applied (a cluster it creates
    /// gets its `created_ms` then).
    pub owned: ChildrenRecord,
}

/// Whether to write a declared child: not when the live one already
/// matches; else when the declaration is new or changed since the last
/// write, or always with `self_heal`.
fn should_write<T: PartialEq>(
    declared: &T,
    last: Option<&T>,
    live: Option<&T>,
    self_heal: bool,
) -> bool {
    if live == Some(declared) {
        return false;
    }
    last.is_none_or(|l| l != declared || self_heal)
}

/// What the parent's output declares, by kind and name; `None` for a
/// declaration that is invalid (it keeps the current child).
#[derive(Default)]
struct Declared {
    apps: BTreeMap<String, Option<Application>>,
    sets: BTreeMap<String, Option<Value>>,
    /// (A cluster that fails to read has no reliable name.)
    clusters: BTreeMap<String, DeclaredCluster>,
}

fn unnamed_or_twice(kind: &str, name: &str, seen: bool) -> Option<String> {
    if name.is_empty() {
        Some(format!("{kind} without metadata.name"))
    } else if seen {
        Some(format!("{kind} {name:?} is declared twice"))
    } else {
        None
    }
}

fn read_declarations(parent: &str, objects: &[Value], live: Live<'_>) -> (Declared, Vec<String>) {
    let origin = origin(parent);
    let mut d = Declared::default();
    let mut errors = Vec::new();
    for o in objects {
        let api = o["apiVersion"].as_str().unwrap_or_default();
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let argo = api == model::ARGO_API_VERSION;
        if argo && kind == "Application" {
            if name == parent {
                errors.push(format!("Application {name:?} cannot manage itself"));
                continue;
            }
            if let Some(e) = unnamed_or_twice("Application", name, d.apps.contains_key(name)) {
                errors.push(e);
                continue;
            }
            if let Some(e) = live.apps.iter().find(|e| e.app.metadata.name == name)
                && e.origin != origin
            {
                errors.push(format!(
                    "Application {name:?} is already defined by {}; not taken over",
                    e.origin
                ));
                continue;
            }
            let app = model::application_from_value(o.clone(), &origin)
                .map_err(|e| errors.push(e.to_string()))
                .ok();
            d.apps.insert(name.to_owned(), app);
        } else if argo && kind == "ApplicationSet" {
            if let Some(e) = unnamed_or_twice("ApplicationSet", name, d.sets.contains_key(name)) {
                errors.push(e);
                continue;
            }
            if let Some(e) = live.sets.iter().find(|e| e.name == name)
                && e.origin != origin
            {
                errors.push(format!(
                    "ApplicationSet {name:?} is already defined by {}; not taken over",
                    e.origin
                ));
                continue;
            }
            let set = ApplicationSet::from_value(o.clone())
                .map(|_| o.clone())
                .map_err(|e| errors.push(e.to_string()))
                .ok();
            d.sets.insert(name.to_owned(), set);
        } else if crate::inventory::is_cluster_document(o) {
            let c = match crate::inventory::cluster_from_value(o, &origin)
                .and_then(|c| crate::inventory::check_registrable(&c, &origin).map(|()| c))
            {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let name = c.name.clone();
            if name == IN_HUB {
                errors.push(format!("cluster name {IN_HUB:?} is reserved for the hub"));
                continue;
            }
            if let Some(e) = unnamed_or_twice("cluster", &name, d.clusters.contains_key(&name)) {
                errors.push(e);
                continue;
            }
            if let Some(other) = live.cluster_owners.get(&name) {
                errors.push(format!(
                    "cluster {name:?} is already declared by {}; not taken over",
                    self::origin(other)
                ));
                continue;
            }
            d.clusters.insert(name, c);
        } else {
            errors.push(format!(
                "{kind}/{name}: only Application, ApplicationSet, Cluster and Argo CD cluster Secret resources can be managed in the hub"
            ));
        }
    }
    (d, errors)
}

fn declaration(c: &DeclaredCluster, created_ms: i64) -> ClusterDeclaration {
    ClusterDeclaration {
        server: c.server.clone(),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        created_ms,
    }
}

/// Whether an agent ever held (or was issued) a certificate for it.
fn enrolled(c: &ClusterRecord) -> bool {
    c.cert_serial.is_some() || c.pending_serial.is_some() || c.last_hello_ms != 0
}

fn changed_values(
    want: &BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    want.iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn no_longer_declared(
    last: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    last.iter()
        .filter(|(k, v)| !now.contains_key(*k) && have.get(*k) == Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Plans the children of `parent` from its rendered `objects` (pure).
pub fn plan_children(parent: &str, objects: &[Value], live: Live<'_>, policy: Policy) -> ChildPlan {
    let origin = origin(parent);
    let (declared, errors) = read_declarations(parent, objects, live);
    let mut plan = ChildPlan {
        errors,
        ..Default::default()
    };
    let owned = live.owned;

    // Applications.
    for (name, app) in &declared.apps {
        let last = owned.applications.get(name);
        let Some(app) = app else {
            if let Some(l) = last {
                plan.owned.applications.insert(name.clone(), l.clone());
            }
            continue;
        };
        let current = live.apps.iter().find(|e| e.app.metadata.name == *name);
        if should_write(app, last, current.map(|e| &*e.app), policy.self_heal) {
            plan.apps.push(app.clone());
        }
        plan.owned.applications.insert(name.clone(), app.clone());
    }
    for e in live.apps.iter().filter(|e| e.origin == origin) {
        let name = &e.app.metadata.name;
        if declared.apps.contains_key(name) {
            continue;
        }
        if policy.prune {
            plan.app_removals.push(name.clone());
        } else if let Some(l) = owned.applications.get(name) {
            plan.owned.applications.insert(name.clone(), l.clone());
        }
    }

    // ApplicationSets.
    for (name, raw) in &declared.sets {
        let last = owned.application_sets.get(name);
        let Some(raw) = raw else {
            if let Some(l) = last {
                plan.owned.application_sets.insert(name.clone(), l.clone());
            }
            continue;
        };
        let current = live.sets.iter().find(|e| e.name == *name);
        if should_write(raw, last, current.map(|e| &e.raw), policy.self_heal) {
            plan.sets.push((name.clone(), raw.clone()));
        }
        plan.owned
            .application_sets
            .insert(name.clone(), raw.clone());
    }
    for e in live.sets.iter().filter(|e| e.origin == origin) {
        if declared.sets.contains_key(&e.name) {
            continue;
        }
        if policy.prune {
            plan.set_removals.push(e.name.clone());
        } else if let Some(l) = owned.application_sets.get(&e.name) {
            plan.owned
                .application_sets
                .insert(e.name.clone(), l.clone());
        }
    }

    // Clusters.
    let empty = ClusterDeclaration::default();
    for (name, c) in &declared.clusters {
        let last = owned.clusters.get(name);
        let current = live.clusters.iter().find(|r| r.name == *name);
        let Some(current) = current else {
            let write = last.is_none_or(|l| *l != declaration(c, l.created_ms) || policy.self_heal);
            if write {
                plan.clusters.push(ClusterWrite::Create(c.clone()));
                plan.owned.clusters.insert(name.clone(), declaration(c, 0));
            } else if let Some(l) = last {
                plan.owned.clusters.insert(name.clone(), l.clone());
            }
            continue;
        };
        // Still the record this parent created, or one that existed
        // before (or was made again by someone else).
        let created_ms = last
            .map(|l| l.created_ms)
            .filter(|ms| *ms == current.created_ms)
            .unwrap_or(0);
        let now = declaration(c, created_ms);
        let changed = last.is_none_or(|l| *l != declaration(c, l.created_ms));
        // A changed declaration is applied whole; with self-heal, an
        // unchanged one too (an empty patch when nothing drifted).
        if changed || policy.self_heal {
            let before = last.unwrap_or(&empty);
            let patch = ClusterPatch {
                name: name.clone(),
                set_labels: changed_values(&now.labels, &current.labels),
                drop_labels: no_longer_declared(&before.labels, &now.labels, &current.labels),
                set_annotations: changed_values(&now.annotations, &current.annotations),
                drop_annotations: no_longer_declared(
                    &before.annotations,
                    &now.annotations,
                    &current.annotations,
                ),
                server: now.server.clone().filter(|s| *s != current.server),
            };
            if !patch.is_empty() {
                plan.clusters.push(ClusterWrite::Patch(patch));
            }
        }
        plan.owned.clusters.insert(name.clone(), now);
    }
    for (name, last) in &owned.clusters {
        if declared.clusters.contains_key(name) {
            continue;
        }
        let Some(current) = live.clusters.iter().find(|r| r.name == *name) else {
            continue;
        };
        if !policy.prune {
            plan.owned.clusters.insert(name.clone(), last.clone());
            continue;
        }
        if last.created_ms != 0 && last.created_ms == current.created_ms && !enrolled(current) {
            plan.clusters.push(ClusterWrite::Remove(name.clone()));
            continue;
        }
        let patch = ClusterPatch {
            name: name.clone(),
            drop_labels: no_longer_declared(&last.labels, &BTreeMap::new(), &current.labels),
            drop_annotations: no_longer_declared(
                &last.annotations,
                &BTreeMap::new(),
                &current.annotations,
            ),
            ..Default::default()
        };
        if !patch.is_empty() {
            plan.clusters.push(ClusterWrite::Patch(patch));
        }
    }
    plan
}

/// For an in-hub application, creates/updates/deletes its children from
/// the rendered bundle and returns the bundle with any problem as its
/// error; other applications' bundles are returned as they are.
/// `appsets` is the ApplicationSet controller (without it, declared sets
/// are an error).
///
/// # Errors
/// The store cannot be read or written.
pub fn reconcile(
    store: &Store,
    fleet: &Fleet,
    appsets: Option<&AppSets>,
    app: &Application,
    bundle: pb::AppBundle,
) -> Result<pb::AppBundle, StoreError> {
    if !is_in_hub(app) || !bundle.render_error.is_empty() {
        return Ok(bundle);
    }
    let parent = &app.metadata.name;
    let origin = origin(parent);
    let objects: Vec<Value> = bundle
        .manifests
        .iter()
        .filter_map(|m| serde_json::from_str(m).ok())
        .collect();
    // tenancy: AppProjects are the project module's children.
    let (objects, project_errors) =
        crate::project::from_parent(store, parent, objects, Policy::of(app).prune)?;
    let owned = store.app_children(parent)?.unwrap_or_default();
    let cluster_owners: BTreeMap<String, String> = store
        .all_app_children()?
        .into_iter()
        .filter(|(p, _)| p != parent)
        .flat_map(|(p, r)| r.clusters.into_keys().map(move |c| (c, p.clone())))
        .collect();
    let (apps, sets, clusters) = (store.apps()?, store.appsets()?, store.clusters()?);
    let live = Live {
        apps: &apps,
        sets: &sets,
        clusters: &clusters,
        owned: &owned,
        cluster_owners: &cluster_owners,
    };
    let mut plan = plan_children(parent, &objects, live, Policy::of(app));
    plan.errors.extend(project_errors);

    for child in plan.apps {
        let name = child.metadata.name.clone();
        let current = apps.iter().find(|e| e.app.metadata.name == name);
        tracing::info!(parent = %parent, app = %name, "application managed in the hub");
        store.put_app_definition(&AppRecord {
            app: child.into(),
            origin: origin.clone(),
            revision: current.map(|e| e.revision.clone()).unwrap_or_default(),
            error: current.map(|e| e.error.clone()).unwrap_or_default(),
        })?;
    }
    for name in plan.app_removals {
        tracing::info!(parent = %parent, app = %name, "application no longer in the hub's Git: removed (prune)");
        fleet.remove_app(&name)?;
    }

    match appsets {
        Some(appsets) => {
            for (name, raw) in plan.sets {
                if appsets.put_declared(&name, raw, &origin)? {
                    tracing::info!(parent = %parent, appset = %name, "application set managed in the hub");
                } else {
                    plan.owned.application_sets.remove(&name);
                    plan.errors.push(format!(
                        "ApplicationSet {name:?} is already defined elsewhere; not taken over"
                    ));
                }
            }
            for name in plan.set_removals {
                tracing::info!(parent = %parent, appset = %name, "application set no longer in the hub's Git: removed (prune)");
                appsets.remove_set(&name)?;
            }
        }
        None if !plan.sets.is_empty() || !plan.set_removals.is_empty() => {
            plan.owned.application_sets.clear();
            plan.errors.push(
                "ApplicationSets cannot be managed: the ApplicationSet controller is not running"
                    .into(),
            );
        }
        None => {}
    }

    let mut inventory_changed = false;
    for w in plan.clusters {
        match w {
            ClusterWrite::Create(d) => {
                if store.cluster(&d.name)?.is_some() {
                    // Registered meanwhile: not this parent's record.
                    store.update_cluster(&d.name, |c| {
                        c.labels.extend(d.labels.clone());
                        c.annotations.extend(d.annotations.clone());
                        if let Some(s) = &d.server {
                            c.server.clone_from(s);
                        }
                    })?;
                    inventory_changed = true;
                    continue;
                }
                let created_ms = crate::clock::now_ms();
                fleet.put_cluster(ClusterRecord {
                    name: d.name.clone(),
                    labels: d.labels.clone(),
                    annotations: d.annotations.clone(),
                    server: d.server.clone().unwrap_or_default(),
                    created_ms,
                    ..Default::default()
                })?;
                if let Some(o) = plan.owned.clusters.get_mut(&d.name) {
                    o.created_ms = created_ms;
                }
                tracing::info!(parent = %parent, cluster = %d.name, "cluster declared in the hub");
            }
            ClusterWrite::Patch(p) => {
                store.update_cluster(&p.name, |c| p.apply(c))?;
                inventory_changed = true;
                tracing::info!(parent = %parent, cluster = %p.name, labels = ?p.set_labels, removed = ?p.drop_labels.keys().collect::<Vec<_>>(), "cluster inventory updated from the hub's Git");
            }
            ClusterWrite::Remove(name) => {
                // Checked again as stored now: never an enrolled cluster.
                if store.cluster(&name)?.is_some_and(|c| !enrolled(&c)) {
                    fleet.remove_cluster(&name)?;
                    tracing::info!(parent = %parent, cluster = %name, "declared cluster no longer in the hub's Git: removed (prune)");
                }
            }
        }
    }
    if inventory_changed {
        fleet.recompute()?;
    }
    if plan.owned != owned {
        store.put_app_children(parent, &plan.owned)?;
    }
    if plan.errors.is_empty() {
        return Ok(bundle);
    }
    let mut b = bundle;
    b.render_error = plan.errors.join("; ");
    b.digest = crate::fleet::bundle_digest(&b);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn child(name: &str, path: &str) -> Value {
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"name": name},
            "spec": {"source": {"repoURL": "file:///r", "path": path},
                     "destination": {"name": "c1", "namespace": "default"}}})
    }

    fn app_rec(v: Value, origin: &str) -> AppRecord {
        AppRecord {
            app: model::application_from_value(v, "t").unwrap().into(),
            origin: origin.into(),
            revision: String::new(),
            error: String::new(),
        }
    }

    fn set(name: &str, env: &str) -> Value {
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
            "metadata": {"name": name},
            "spec": {"generators": [{"clusters": {"selector": {"matchLabels": {"env": env}}}}],
                     "template": {"metadata": {"name": "{{name}}-web"},
                                  "spec": {"source": {"repoURL": "file:///r", "path": "web"},
                                           "destination": {"name": "{{name}}"}}}}})
    }

    fn set_rec(raw: Value, origin: &str) -> AppSetRecord {
        AppSetRecord {
            name: raw["metadata"]["name"].as_str().unwrap().into(),
            raw,
            origin: origin.into(),
            ..Default::default()
        }
    }

    fn cluster_doc(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name, "labels": labels}})
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn cluster(name: &str, l: &[(&str, &str)], created_ms: i64, enrolled: bool) -> ClusterRecord {
        ClusterRecord {
            name: name.into(),
            labels: labels(l),
            created_ms,
            cert_serial: enrolled.then(|| "01".to_owned()),
            ..Default::default()
        }
    }

    fn declared(l: &[(&str, &str)], created_ms: i64) -> ClusterDeclaration {
        ClusterDeclaration {
            labels: labels(l),
            created_ms,
            ..Default::default()
        }
    }

    #[derive(Default)]
    struct World {
        apps: Vec<AppRecord>,
        sets: Vec<AppSetRecord>,
        clusters: Vec<ClusterRecord>,
        owned: ChildrenRecord,
        owners: BTreeMap<String, String>,
    }

    impl World {
        fn plan(&self, objects: &[Value], prune: bool, self_heal: bool) -> ChildPlan {
            let live = Live {
                apps: &self.apps,
                sets: &self.sets,
                clusters: &self.clusters,
                owned: &self.owned,
                cluster_owners: &self.owners,
            };
            plan_children("root", objects, live, Policy { prune, self_heal })
        }
    }

    fn app_names(plan: &ChildPlan) -> Vec<&str> {
        plan.apps.iter().map(|a| a.metadata.name.as_str()).collect()
    }

    fn set_names(plan: &ChildPlan) -> Vec<&str> {
        plan.sets.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn applications_are_planned() {
        let w = World {
            apps: vec![
                app_rec(child("kept", "k"), "app:root"),
                app_rec(child("gone", "g"), "app:root"),
                app_rec(child("broken", "b"), "app:root"),
                app_rec(child("api-owned", "a"), "api"),
            ],
            ..Default::default()
        };
        let mut broken = child("broken", "b");
        broken["spec"]["source"]["repoURL"] = json!("");
        let objects = vec![
            child("kept", "k"),
            child("new", "n"),
            child("new", "twice"),
            child("api-owned", "x"),
            child("root", "r"),
            broken,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}),
        ];
        let plan = w.plan(&objects, true, false);
        // "kept" is unchanged; it is only recorded.
        assert_eq!(app_names(&plan), ["new"]);
        // An invalid declaration keeps its application.
        assert_eq!(plan.app_removals, ["gone"]);
        assert_eq!(
            plan.owned.applications.keys().collect::<Vec<_>>(),
            ["kept", "new"]
        );
        let errors = plan.errors.join("\n");
        for want in [
            "already defined by api",
            "cannot manage itself",
            "\"new\" is declared twice",
            "spec.source.repoURL",
            "ConfigMap/cm",
        ] {
            assert!(errors.contains(want), "{want}: {errors}");
        }

        // Without prune nothing is removed.
        let plan = w.plan(&objects, false, false);
        assert!(plan.app_removals.is_empty());
    }

    #[test]
    fn self_heal_decides_whether_api_edits_stand() {
        let mut w = World {
            // Edited through the API ("e"), deleted through the API ("d").
            apps: vec![app_rec(child("e", "edited"), "app:root")],
            ..Default::default()
        };
        for (name, path) in [("e", "e"), ("d", "d")] {
            w.owned.applications.insert(
                name.into(),
                model::application_from_value(child(name, path), "t").unwrap(),
            );
        }
        let objects = vec![child("e", "e"), child("d", "d")];
        assert!(app_names(&w.plan(&objects, true, false)).is_empty());
        assert_eq!(app_names(&w.plan(&objects, true, true)), ["d", "e"]);
        // A changed declaration is written either way.
        let objects = vec![child("e", "e2"), child("d", "d")];
        assert_eq!(app_names(&w.plan(&objects, true, false)), ["e"]);
        // The same holds for sets.
        let mut w = World {
            sets: vec![set_rec(set("s", "edited"), "app:root")],
            ..Default::default()
        };
        w.owned.application_sets.insert("s".into(), set("s", "dev"));
        assert!(set_names(&w.plan(&[set("s", "dev")], false, false)).is_empty());
        assert_eq!(set_names(&w.plan(&[set("s", "dev")], false, true)), ["s"]);
    }

    #[test]
    fn application_sets_are_planned() {
        let w = World {
            sets: vec![
                set_rec(set("kept", "dev"), "app:root"),
                set_rec(set("gone", "dev"), "app:root"),
                set_rec(set("broken", "dev"), "app:root"),
                set_rec(set("api-set", "dev"), "api"),
                set_rec(set("repo-set", "dev"), "git:file:///r:apps/s.yaml"),
            ],
            ..Default::default()
        };
        let mut broken = set("broken", "dev");
        broken["spec"]["generators"] = json!([]);
        let objects = vec![
            set("kept", "dev"),
            set("new", "prod"),
            set("api-set", "prod"),
            set("repo-set", "prod"),
            broken,
        ];
        let plan = w.plan(&objects, true, false);
        // "kept" had no record yet but is unchanged: nothing to write.
        assert_eq!(set_names(&plan), ["new"]);
        assert_eq!(plan.set_removals, ["gone"]);
        let errors = plan.errors.join("\n");
        assert!(
            errors.contains("ApplicationSet \"api-set\" is already defined by api"),
            "{errors}"
        );
        assert!(errors.contains("already defined by git:file:///r:apps/s.yaml"));
        assert!(
            errors.contains("ApplicationSet \"broken\": spec.generators"),
            "{errors}"
        );
        assert!(w.plan(&objects, false, false).set_removals.is_empty());
    }

    #[test]
    fn clusters_merge_and_prune_safely() {
        let mut w = World {
            clusters: vec![
                // Enrolled with `cluster add --label env=dev`.
                cluster("sim-2", &[("env", "dev")], 5, true),
                // Created by this parent, never enrolled.
                cluster("edge-1", &[("tier", "edge")], 7, false),
                // Created by this parent, enrolled since.
                cluster("edge-2", &[("tier", "edge")], 8, true),
            ],
            ..Default::default()
        };
        w.owned
            .clusters
            .insert("edge-1".into(), declared(&[("tier", "edge")], 7));
        w.owned
            .clusters
            .insert("edge-2".into(), declared(&[("tier", "edge")], 8));
        w.owners.insert("other-1".into(), "other".into());
        let objects = vec![
            cluster_doc("sim-2", json!({"tier": "edge"})),
            cluster_doc("new-1", json!({"tier": "edge"})),
            cluster_doc("other-1", json!({})),
            cluster_doc("in-hub", json!({})),
            cluster_doc("edge-1", json!({"tier": "edge"})),
            cluster_doc("edge-2", json!({"tier": "edge"})),
        ];
        let plan = w.plan(&objects, true, false);
        let patch = ClusterPatch {
            name: "sim-2".into(),
            set_labels: labels(&[("tier", "edge")]),
            ..Default::default()
        };
        assert_eq!(
            plan.clusters,
            [
                ClusterWrite::Create(DeclaredCluster {
                    name: "new-1".into(),
                    labels: labels(&[("tier", "edge")]),
                    ..Default::default()
                }),
                ClusterWrite::Patch(patch.clone()),
            ]
        );
        let mut rec = w.clusters[0].clone();
        patch.apply(&mut rec);
        assert_eq!(rec.labels, labels(&[("env", "dev"), ("tier", "edge")]));
        assert_eq!(
            plan.owned.clusters["sim-2"],
            declared(&[("tier", "edge")], 0)
        );
        assert_eq!(plan.owned.clusters["edge-1"].created_ms, 7);
        let errors = plan.errors.join("\n");
        assert!(errors.contains("\"other-1\" is already declared by app:other"));
        assert!(errors.contains("\"in-hub\" is reserved"));

        // Dropped from Git with prune: sim-2 and edge-2 (enrolled) lose only
        // the declared label; edge-1 (declared only) goes.
        w.owned = plan.owned;
        w.clusters[0].labels = rec.labels;
        let plan = w.plan(&[], true, false);
        let drop = |name: &str| {
            ClusterWrite::Patch(ClusterPatch {
                name: name.into(),
                drop_labels: labels(&[("tier", "edge")]),
                ..Default::default()
            })
        };
        assert_eq!(
            plan.clusters,
            [
                ClusterWrite::Remove("edge-1".into()),
                drop("edge-2"),
                drop("sim-2"),
            ]
        );
        assert!(plan.owned.clusters.is_empty());
        // Without prune nothing changes and the parent keeps them.
        let plan = w.plan(&[], false, false);
        assert!(plan.clusters.is_empty());
        // (new-1's record was never made in this test: it is forgotten.)
        assert_eq!(
            plan.owned.clusters.keys().collect::<Vec<_>>(),
            ["edge-1", "edge-2", "sim-2"]
        );

        // A label changed through the API (`cluster label sim-2 tier=core`)
        // stands without self-heal, is set back with it, and is not
        // removed by a prune (it is no longer the declared value).
        w.clusters[0].labels = labels(&[("env", "dev"), ("tier", "core")]);
        let objects = vec![cluster_doc("sim-2", json!({"tier": "edge"}))];
        assert!(w.plan(&objects, false, false).clusters.is_empty());
        assert_eq!(
            w.plan(&objects, false, true).clusters,
            [ClusterWrite::Patch(patch)]
        );
        assert!(
            !w.plan(&[], true, false)
                .clusters
                .iter()
                .any(|c| matches!(c, ClusterWrite::Patch(p) if p.name == "sim-2"))
        );
    }

    #[test]
    fn api_edits_keep_a_child_with_its_parent() {
        assert_eq!(origin_after_api_edit(Some("app:root")), "app:root");
        assert_eq!(origin_after_api_edit(Some("appset:s")), "appset:s");
        assert_eq!(origin_after_api_edit(Some("git:file:///r:a.yaml")), "api");
        assert_eq!(origin_after_api_edit(None), "api");
    }
}
