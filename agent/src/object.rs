//! Kubernetes objects as the agent sees them: identity, tracking, defaults.
//!
//! # Tracking
//!
//! Every object the agent applies for an application carries:
//!
//! - the label `flotilla.dev/app: <application>`, which selects an
//!   application's objects (watches, prune candidates);
//! - the annotation `flotilla.dev/tracking-id:
//!   <application>:<group>/<Kind>:<namespace>/<name>`, which proves that this
//!   exact object was created for this application (a copied label alone is
//!   not enough to be pruned).
//!
//! Objects are applied with server-side apply under the field manager
//! `flotilla`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The field manager of every server-side apply the agent makes.
pub const FIELD_MANAGER: &str = "flotilla";
/// Label naming the application an object belongs to.
pub const APP_LABEL: &str = "flotilla.dev/app";
/// Annotation holding the object's full tracking identity.
pub const TRACKING_ANNOTATION: &str = "flotilla.dev/tracking-id";
/// Argo CD's sync wave annotation.
pub const SYNC_WAVE_ANNOTATION: &str = "argocd.argoproj.io/sync-wave";
/// Helm's hook weight, the wave of an object without a sync wave.
pub const HELM_WEIGHT_ANNOTATION: &str = "helm.sh/hook-weight";
/// Argo CD's per-object sync options annotation (`Prune=false`).
pub const SYNC_OPTIONS_ANNOTATION: &str = "argocd.argoproj.io/sync-options";

/// A manifest that is not a usable Kubernetes object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    /// The manifest is not JSON.
    #[error("manifest {index} is not valid JSON: {message}")]
    Json {
        /// Position of the manifest in its bundle.
        index: usize,
        /// The parser's message.
        message: String,
    },
    /// A required field is missing.
    #[error("manifest {index} has no {field}")]
    MissingField {
        /// Position of the manifest in its bundle.
        index: usize,
        /// The missing field.
        field: &'static str,
    },
}

/// The identity of one object in a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    /// API group, empty for the core group.
    pub group: String,
    /// API version within the group.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Reads the identity of an object.
    ///
    /// # Errors
    /// When apiVersion, kind or metadata.name is missing.
    pub fn of(obj: &Value, index: usize) -> Result<Self, ObjectError> {
        let field = |path: &str, field: &'static str| {
            obj.pointer(path)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or(ObjectError::MissingField { index, field })
        };
        let api_version = field("/apiVersion", "apiVersion")?;
        let kind = field("/kind", "kind")?;
        let name = field("/metadata/name", "metadata.name")?;
        let (group, version) = split_api_version(api_version);
        Ok(Self {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            namespace: obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            name: name.to_owned(),
        })
    }

    /// The identity written in the tracking annotation.
    #[must_use]
    pub fn tracking_id(&self, app: &str) -> String {
        format!(
            "{app}:{}/{}:{}/{}",
            self.group, self.kind, self.namespace, self.name
        )
    }

    /// The wire form.
    #[must_use]
    pub fn to_proto(&self) -> flotilla_proto::ResourceKey {
        flotilla_proto::ResourceKey {
            group: self.group.clone(),
            version: self.version.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{} {}", self.group, self.kind, self.name)
        } else {
            write!(
                f,
                "{}/{} {}/{}",
                self.group, self.kind, self.namespace, self.name
            )
        }
    }
}

/// Splits `group/version` (or the core group's bare `version`).
#[must_use]
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// Parses a bundle's manifests; a broken manifest yields an error in its
/// place so the others still apply.
#[must_use]
pub fn parse_manifests(manifests: &[String]) -> Vec<Result<Value, ObjectError>> {
    manifests
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let value: Value = serde_json::from_str(text).map_err(|e| ObjectError::Json {
                index,
                message: e.to_string(),
            })?;
            if !value.is_object() {
                return Err(ObjectError::Json {
                    index,
                    message: "not a JSON object".to_owned(),
                });
            }
            // A hook may be named by `metadata.generateName` alone; whether
            // that is allowed is the hook model's call (`hooks::role`).
            if template_name(&value).is_some() {
                let mut named = value.clone();
                named["metadata"]["name"] = Value::from("x");
                ObjectKey::of(&named, index)?;
            } else {
                ObjectKey::of(&value, index)?;
            }
            Ok(value)
        })
        .collect()
}

/// Makes the object the agent applies: the default namespace set on a
/// namespaced object without one, and the tracking label and annotation.
#[must_use]
pub fn prepare(mut obj: Value, app: &str, default_namespace: &str, namespaced: bool) -> Value {
    let key_namespace;
    {
        let Some(root) = obj.as_object_mut() else {
            return obj;
        };
        let metadata = object_entry(root, "metadata");
        if namespaced {
            let has_ns = metadata
                .get("namespace")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if !has_ns && !default_namespace.is_empty() {
                metadata.insert("namespace".to_owned(), Value::from(default_namespace));
            }
        } else {
            metadata.remove("namespace");
        }
        key_namespace = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        object_entry(metadata, "labels").insert(APP_LABEL.to_owned(), Value::from(app));
    }
    if let Ok(mut key) = ObjectKey::of(&obj, 0) {
        key.namespace = key_namespace;
        let id = key.tracking_id(app);
        if let Some(metadata) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            object_entry(metadata, "annotations")
                .insert(TRACKING_ANNOTATION.to_owned(), Value::from(id));
        }
    }
    obj
}

/// Whether a live object was created by the agent for `app` as `key`.
#[must_use]
pub fn is_tracked_by(live: &Value, app: &str, key: &ObjectKey) -> bool {
    let label = live
        .pointer("/metadata/labels")
        .and_then(|l| l.get(APP_LABEL))
        .and_then(Value::as_str);
    let id = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(TRACKING_ANNOTATION))
        .and_then(Value::as_str);
    label == Some(app) && id == Some(key.tracking_id(app).as_str())
}

/// The application named by a live object's tracking annotation.
#[must_use]
pub fn tracking_app(live: &Value) -> Option<&str> {
    live.pointer("/metadata/annotations")
        .and_then(|a| a.get(TRACKING_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|id| id.split_once(':'))
        .map(|(app, _)| app)
}

/// The object's sync wave: `argocd.argoproj.io/sync-wave`, else
/// `helm.sh/hook-weight` (as Argo CD), 0 when absent or not an integer.
#[must_use]
pub fn sync_wave(obj: &Value) -> i64 {
    let int = |name: &str| annotation(obj, name).and_then(|s| s.trim().parse().ok());
    int(SYNC_WAVE_ANNOTATION)
        .or_else(|| int(HELM_WEIGHT_ANNOTATION))
        .unwrap_or(0)
}

/// `metadata.name`, or `metadata.generateName` when the object has no name.
#[must_use]
pub fn template_name(obj: &Value) -> Option<&str> {
    let nonempty = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    nonempty("/metadata/name").or_else(|| nonempty("/metadata/generateName"))
}

/// `desired` as it must be applied over `live` when `live` carries another
/// application's tracking: with that application's tracking label and
/// annotation, so the object stays the other application's (it is never
/// pruned by this one) while this one still applies its fields.
#[must_use]
pub fn keep_tracking_of(mut desired: Value, live: &Value) -> Value {
    let label = live
        .pointer("/metadata/labels")
        .and_then(|l| l.get(APP_LABEL))
        .cloned();
    let id = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(TRACKING_ANNOTATION))
        .cloned();
    if let Some(metadata) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        match label {
            Some(l) => drop(object_entry(metadata, "labels").insert(APP_LABEL.to_owned(), l)),
            None => drop(object_entry(metadata, "labels").remove(APP_LABEL)),
        }
        match id {
            Some(i) => drop(
                object_entry(metadata, "annotations").insert(TRACKING_ANNOTATION.to_owned(), i),
            ),
            None => drop(object_entry(metadata, "annotations").remove(TRACKING_ANNOTATION)),
        }
    }
    desired
}

/// Whether the object opts out of pruning (`Prune=false`).
#[must_use]
pub fn prune_disabled(obj: &Value) -> bool {
    annotation(obj, SYNC_OPTIONS_ANNOTATION)
        .is_some_and(|s| s.split(',').any(|o| o.trim() == "Prune=false"))
}

fn annotation<'a>(obj: &'a Value, name: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
}

fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(m) => m,
        // Just made an object above.
        _ => unreachable!("entry was replaced by an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prepare_defaults_namespace_and_tracks() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let out = prepare(obj, "guestbook", "web", true);
        assert_eq!(out.pointer("/metadata/namespace"), Some(&json!("web")));
        assert_eq!(
            out.pointer("/metadata/labels/flotilla.dev~1app"),
            Some(&json!("guestbook"))
        );
        assert_eq!(
            out.pointer("/metadata/annotations/flotilla.dev~1tracking-id"),
            Some(&json!("guestbook:/ConfigMap:web/c"))
        );
        let key = ObjectKey::of(&out, 0).expect("key");
        assert_eq!(tracking_app(&out), Some("guestbook"));
        assert!(is_tracked_by(&out, "guestbook", &key));
        assert!(!is_tracked_by(&out, "other", &key));
    }

    #[test]
    fn prepare_keeps_explicit_namespace_and_strips_cluster_scoped() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "own"}});
        let out = prepare(obj, "a", "web", true);
        assert_eq!(out.pointer("/metadata/namespace"), Some(&json!("own")));
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "web", "namespace": "x"}});
        let out = prepare(ns, "a", "web", false);
        assert_eq!(out.pointer("/metadata/namespace"), None);
        assert_eq!(
            out.pointer("/metadata/annotations/flotilla.dev~1tracking-id"),
            Some(&json!("a:/Namespace:/web"))
        );
    }

    #[test]
    fn parse_reports_each_broken_manifest() {
        let manifests = vec![
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}"#.to_owned(),
            "{not json".to_owned(),
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#.to_owned(),
        ];
        let parsed = parse_manifests(&manifests);
        assert!(parsed[0].is_ok());
        assert!(matches!(parsed[1], Err(ObjectError::Json { index: 1, .. })));
        assert_eq!(
            parsed[2],
            Err(ObjectError::MissingField {
                index: 2,
                field: "metadata.name"
            })
        );
    }

    #[test]
    fn generate_name_passes_parsing_and_a_shared_object_keeps_its_owner() {
        let manifests = vec![
            r#"{"apiVersion":"batch/v1","kind":"Job","metadata":{"generateName":"m-"}}"#.to_owned(),
        ];
        assert!(parse_manifests(&manifests)[0].is_ok());
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shared"}});
        let owner = prepare(obj.clone(), "team-a", "", false);
        let mine = prepare(obj, "team-b", "", false);
        let kept = keep_tracking_of(mine, &owner);
        let key = ObjectKey::of(&kept, 0).expect("key");
        assert!(is_tracked_by(&kept, "team-a", &key));
        assert_eq!(tracking_app(&kept), Some("team-a"));
    }

    #[test]
    fn waves_and_prune_options() {
        let obj = json!({"metadata": {"annotations": {
            SYNC_WAVE_ANNOTATION: " -2", SYNC_OPTIONS_ANNOTATION: "Validate=false,Prune=false"}}});
        assert_eq!(sync_wave(&obj), -2);
        assert!(prune_disabled(&obj));
        assert_eq!(sync_wave(&json!({})), 0);
        let helm = json!({"metadata": {"annotations": {"helm.sh/hook-weight": "4"}}});
        assert_eq!(sync_wave(&helm), 4);
    }
}
