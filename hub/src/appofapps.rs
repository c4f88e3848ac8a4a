//! App of apps: an Application whose destination is the hub itself
//! (`destination.name: in-hub`) manages Application resources from Git.
//!
//! Its source is rendered like any other; the hub then creates or updates
//! every `Application` in the output (origin `app:<parent>`), and, when the
//! parent has `syncPolicy.automated.prune`, deletes the applications it
//! created before that are no longer rendered. The children are
//! reconciled at every render of the parent, automated or not.
//! Other kinds (ApplicationSet, Cluster) are reported as errors on the
//! parent and ignored. An application defined elsewhere (API, another
//! repository, another parent) is never taken over.

use serde_json::Value;

use crate::fleet::Fleet;
use crate::model::{self, Application};
use crate::store::{AppRecord, Store, StoreError};
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

/// What one render of a parent changes.
#[derive(Debug, Default, PartialEq)]
pub struct ChildPlan {
    pub upserts: Vec<Application>,
    pub removals: Vec<String>,
    pub errors: Vec<String>,
}

/// Plans the children of `parent` from its rendered `objects`.
pub fn plan_children(
    parent: &str,
    objects: &[Value],
    existing: &[AppRecord],
    prune: bool,
) -> ChildPlan {
    let origin = origin(parent);
    let mut plan = ChildPlan::default();
    let mut found = std::collections::BTreeSet::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        if o["apiVersion"].as_str() != Some(model::ARGO_API_VERSION) || kind != "Application" {
            plan.errors.push(format!(
                "{kind}/{name}: only Application resources can be managed in the hub"
            ));
            continue;
        }
        if name == parent {
            plan.errors
                .push(format!("Application {name:?} cannot manage itself"));
            continue;
        }
        let app = match model::application_from_value(o.clone(), &origin) {
            Ok(a) => a,
            Err(e) => {
                plan.errors.push(e.to_string());
                continue;
            }
        };
        let current = existing.iter().find(|e| e.app.metadata.name == name);
        if let Some(e) = current
            && e.origin != origin
        {
            plan.errors.push(format!(
                "Application {name:?} is already defined by {}; not taken over",
                e.origin
            ));
            continue;
        }
        found.insert(name.to_owned());
        if current.is_none_or(|e| e.app != app) {
            plan.upserts.push(app);
        }
    }
    if prune {
        plan.removals = existing
            .iter()
            .filter(|e| e.origin == origin && !found.contains(&e.app.metadata.name))
            .map(|e| e.app.metadata.name.clone())
            .collect();
    }
    plan
}

/// For an in-hub application, creates/updates/deletes its children from
/// the rendered bundle and returns the bundle with any problem as its
/// error; other applications' bundles are returned as they are.
///
/// # Errors
/// The store cannot be read or written.
pub fn reconcile(
    store: &Store,
    fleet: &Fleet,
    app: &Application,
    bundle: pb::AppBundle,
) -> Result<pb::AppBundle, StoreError> {
    if !is_in_hub(app) || !bundle.render_error.is_empty() {
        return Ok(bundle);
    }
    let parent = &app.metadata.name;
    let objects: Vec<Value> = bundle
        .manifests
        .iter()
        .filter_map(|m| serde_json::from_str(m).ok())
        .collect();
    let prune = app
        .spec
        .sync_policy
        .as_ref()
        .and_then(|p| p.automated.as_ref())
        .is_some_and(|a| a.prune);
    let existing = store.apps()?;
    let plan = plan_children(parent, &objects, &existing, prune);
    for child in plan.upserts {
        let name = child.metadata.name.clone();
        let current = existing.iter().find(|e| e.app.metadata.name == name);
        tracing::info!(parent = %parent, app = %name, "application managed in the hub");
        store.put_app(&AppRecord {
            app: child,
            origin: origin(parent),
            revision: current.map(|e| e.revision.clone()).unwrap_or_default(),
            error: current.map(|e| e.error.clone()).unwrap_or_default(),
        })?;
    }
    for name in plan.removals {
        tracing::info!(parent = %parent, app = %name, "application no longer in the hub's Git: removed (prune)");
        fleet.remove_app(&name)?;
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

    fn rec(v: Value, origin: &str) -> AppRecord {
        AppRecord {
            app: model::application_from_value(v, "t").unwrap(),
            origin: origin.into(),
            revision: String::new(),
            error: String::new(),
        }
    }

    #[test]
    fn children_are_planned() {
        let existing = vec![
            rec(child("kept", "k"), "app:root"),
            rec(child("gone", "g"), "app:root"),
            rec(child("api-owned", "a"), "api"),
        ];
        let objects = vec![
            child("kept", "k"),
            child("new", "n"),
            child("api-owned", "x"),
            child("root", "r"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}),
        ];
        let plan = plan_children("root", &objects, &existing, true);
        let upserts: Vec<&str> = plan
            .upserts
            .iter()
            .map(|a| a.metadata.name.as_str())
            .collect();
        assert_eq!(upserts, ["new"]);
        assert_eq!(plan.removals, ["gone"]);
        let errors = plan.errors.join("\n");
        assert!(errors.contains("already defined by api"), "{errors}");
        assert!(errors.contains("cannot manage itself"), "{errors}");
        assert!(errors.contains("ConfigMap/cm"), "{errors}");

        // Without prune nothing is removed.
        let plan = plan_children("root", &objects, &existing, false);
        assert!(plan.removals.is_empty());
    }
}
