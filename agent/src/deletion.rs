//! What happens to the objects of an application the hub no longer
//! desires on this cluster.
//!
//! The hub says it in the desired state (`DesiredState.deletions`): an
//! application deleted with cascade (Argo CD's
//! `resources-finalizer.argocd.argoproj.io`) has its objects deleted with
//! foreground or background propagation; one deleted without cascade
//! (`orphan`) leaves them exactly as they are, tracking label and
//! annotation included, as Argo CD does, so an application created later
//! under the same name adopts them. Only the agent's inventory record of
//! the application goes. Without a word from the hub (an older hub, or an
//! application that merely stopped targeting this cluster) the last policy
//! decides, as before: its objects are pruned when it had prune.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;

use crate::cluster::Cluster;
use crate::object::{self, ObjectKey};

/// The hub's decision about a deleted application's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Delete, each object after what it owns.
    Foreground,
    /// Delete, each object at once; the garbage collector takes what it
    /// owned.
    Background,
    /// Leave the objects.
    Orphan,
}

impl Propagation {
    /// Reads the wire value. Anything but `foreground` or `background`
    /// (a value from a newer hub included) deletes nothing: leaving
    /// objects can be undone, deleting them cannot.
    #[must_use]
    pub fn from_wire(policy: &str) -> Self {
        match policy.trim().to_ascii_lowercase().as_str() {
            "foreground" => Self::Foreground,
            "background" => Self::Background,
            _ => Self::Orphan,
        }
    }
}

/// How the objects of a removed application go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Deleted by the hub with cascade: every object the application
    /// tracks goes with this propagation, except (as in Argo CD)
    /// CustomResourceDefinitions and objects marked `Delete=false` or
    /// `helm.sh/resource-policy: keep`.
    Cascade {
        /// Foreground (true) or background propagation.
        foreground: bool,
    },
    /// No decision from the hub and the last policy prunes: pruned like a
    /// sync prunes (`Prune=false` keeps an object).
    Prune,
}

const DELETE_FALSE: &str = "Delete=false";
const HELM_RESOURCE_POLICY: &str = "helm.sh/resource-policy";

fn annotation<'a>(obj: &'a Value, name: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
}

/// Why a cascading deletion leaves `live` in place, if it does (Argo CD's
/// `shouldBeDeleted`): a CRD (deleting it would delete every custom
/// resource of its kind), `Delete=false` on the object or, when the object
/// does not say, in the application's sync options, or Helm's `keep`.
#[must_use]
pub fn kept_by_cascade(live: &Value, app_sync_options: &[String]) -> Option<&'static str> {
    let kind = live["kind"].as_str().unwrap_or_default();
    let api_version = live["apiVersion"].as_str().unwrap_or_default();
    if kind == "CustomResourceDefinition" && api_version.starts_with("apiextensions.k8s.io/") {
        return Some("a CustomResourceDefinition is never deleted with its application");
    }
    let delete_option = |options: &str| {
        options
            .split(',')
            .map(str::trim)
            .find_map(|o| o.strip_prefix("Delete="))
            .map(|v| v.trim().eq_ignore_ascii_case("false"))
    };
    let refused = annotation(live, object::SYNC_OPTIONS_ANNOTATION)
        .and_then(delete_option)
        .or_else(|| app_sync_options.iter().find_map(|o| delete_option(o)))
        .unwrap_or(false);
    if refused {
        return Some(DELETE_FALSE);
    }
    if annotation(live, HELM_RESOURCE_POLICY)
        .is_some_and(|v| v.split(',').any(|p| p.trim() == "keep"))
    {
        return Some("helm.sh/resource-policy: keep");
    }
    None
}

/// Deletes one object of a deleted application with cascade, if it still
/// carries this application's tracking identity and nothing keeps it; true
/// when a deletion was requested.
///
/// # Errors
/// The API server refuses to read or delete it.
pub async fn delete_object(
    cluster: &Cluster,
    app: &str,
    key: &ObjectKey,
    foreground: bool,
    app_sync_options: &[String],
) -> Result<bool, String> {
    let resolved = match cluster.resolve(key).await {
        Ok(r) => r,
        // The kind is gone, and with it every object of it.
        Err(_) => return Ok(false),
    };
    let Some(live) = cluster
        .get(&resolved, key)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(false);
    };
    if !object::is_tracked_by(&live, app, key) {
        info!(app, object = %key, "not deleting an object this application does not track");
        return Ok(false);
    }
    if let Some(why) = kept_by_cascade(&live, app_sync_options) {
        info!(app, object = %key, why, "not deleting with the application");
        return Ok(false);
    }
    info!(
        app,
        object = %key,
        propagation = if foreground { "foreground" } else { "background" },
        "deleting with the application"
    );
    cluster
        .delete_propagating(&resolved, key, foreground)
        .await
        .map(|()| true)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_values() {
        assert_eq!(
            Propagation::from_wire("foreground"),
            Propagation::Foreground
        );
        assert_eq!(
            Propagation::from_wire("Background"),
            Propagation::Background
        );
        assert_eq!(Propagation::from_wire("orphan"), Propagation::Orphan);
        assert_eq!(Propagation::from_wire("something-new"), Propagation::Orphan);
        assert_eq!(Propagation::from_wire(""), Propagation::Orphan);
    }

    #[test]
    fn what_a_cascade_keeps() {
        let cm = |annotations: Value| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c", "annotations": annotations}})
        };
        let none: Vec<String> = Vec::new();
        assert_eq!(kept_by_cascade(&cm(json!({})), &none), None);
        assert_eq!(
            kept_by_cascade(
                &cm(json!({"argocd.argoproj.io/sync-options": "Prune=false"})),
                &none
            ),
            None,
            "Prune=false stops a prune, not a deletion (as in Argo CD)"
        );
        assert_eq!(
            kept_by_cascade(
                &cm(
                    json!({"argocd.argoproj.io/sync-options": "ServerSideApply=true, Delete=false"})
                ),
                &none
            ),
            Some(DELETE_FALSE)
        );
        let app_level = vec!["Delete=false".to_owned()];
        assert_eq!(
            kept_by_cascade(&cm(json!({})), &app_level),
            Some(DELETE_FALSE)
        );
        // The object's own option wins over the application's.
        assert_eq!(
            kept_by_cascade(
                &cm(json!({"argocd.argoproj.io/sync-options": "Delete=true"})),
                &app_level
            ),
            None
        );
        assert!(kept_by_cascade(&cm(json!({"helm.sh/resource-policy": "keep"})), &none).is_some());
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1",
                         "kind": "CustomResourceDefinition", "metadata": {"name": "x.example.com"}});
        assert!(kept_by_cascade(&crd, &none).is_some());
    }
}
