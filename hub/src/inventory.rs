//! Cluster inventory: labels and annotations that `clusters` generators
//! select on, declared by `flotilla cluster label|annotate`, by `Cluster`
//! resources (`flotilla.dev/v1alpha1`) or by Argo CD cluster Secrets.
//!
//! Declaring a cluster upserts its inventory record (labels, annotations,
//! server); it never issues credentials.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::Value;

use crate::appset::ClusterInfo;
use crate::fleet::Fleet;
use crate::model::is_dns_subdomain;
use crate::store::{ClusterRecord, StoreError};

/// apiVersion of a `Cluster` resource.
pub const CLUSTER_API_VERSION: &str = "flotilla.dev/v1alpha1";
/// Label that marks an Argo CD cluster Secret.
pub const ARGO_SECRET_TYPE_LABEL: &str = "argocd.argoproj.io/secret-type";

/// A cluster declared as a resource.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeclaredCluster {
    pub name: String,
    pub server: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// A Secret's `project` (a Cluster's `spec.project`), when given.
    pub project: Option<String>,
}

impl DeclaredCluster {
    /// As the generators see it.
    pub fn info(&self) -> ClusterInfo {
        ClusterInfo {
            name: self.name.clone(),
            server: self.server.clone().unwrap_or_default(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            project: self.project.clone().unwrap_or_default(),
        }
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a document declares a cluster (a `Cluster` or an Argo CD
/// cluster Secret).
pub fn is_cluster_document(doc: &Value) -> bool {
    match doc.get("kind").and_then(Value::as_str) {
        Some("Cluster") => {
            doc.get("apiVersion").and_then(Value::as_str) == Some(CLUSTER_API_VERSION)
        }
        Some("Secret") => {
            doc.pointer("/metadata/labels")
                .and_then(|l| l.get(ARGO_SECRET_TYPE_LABEL))
                .and_then(Value::as_str)
                == Some("cluster")
        }
        _ => false,
    }
}

/// Reads one cluster document (see [`is_cluster_document`]).
///
/// # Errors
/// A message naming the document and the field.
pub fn cluster_from_value(doc: &Value, origin: &str) -> Result<DeclaredCluster, String> {
    let meta = doc.get("metadata");
    let labels = string_map(meta.and_then(|m| m.get("labels")));
    let annotations = string_map(meta.and_then(|m| m.get("annotations")));
    let meta_name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (name, server, project) = if doc.get("kind").and_then(Value::as_str) == Some("Secret") {
        let mut fields = string_map(doc.get("stringData"));
        for (k, v) in string_map(doc.get("data")) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .map_err(|e| {
                    format!("{origin}: Secret {meta_name:?}: data.{k}: invalid base64: {e}")
                })?;
            fields
                .entry(k)
                .or_insert_with(|| String::from_utf8_lossy(&bytes).into_owned());
        }
        let name = fields
            .get("name")
            .cloned()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                format!("{origin}: cluster Secret {meta_name:?}: data.name is required")
            })?;
        (
            name,
            fields.get("server").cloned().filter(|s| !s.is_empty()),
            fields.get("project").cloned().filter(|s| !s.is_empty()),
        )
    } else {
        let spec_string = |field: &str| {
            doc.pointer(&format!("/spec/{field}"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .filter(|s| !s.is_empty())
        };
        (
            meta_name.to_owned(),
            spec_string("server"),
            spec_string("project"),
        )
    };
    if name.is_empty() {
        return Err(format!("{origin}: cluster without a name"));
    }
    Ok(DeclaredCluster {
        name,
        server,
        labels,
        annotations,
        project,
    })
}

/// Checks that a declared cluster can be registered in the hub (Argo CD
/// allows any name; hub clusters need a DNS subdomain).
///
/// # Errors
/// The name is not a lowercase RFC 1123 subdomain.
pub fn check_registrable(c: &DeclaredCluster, origin: &str) -> Result<(), String> {
    if is_dns_subdomain(&c.name) {
        Ok(())
    } else {
        Err(format!(
            "{origin}: cluster name {:?} must be a lowercase RFC 1123 subdomain to be registered",
            c.name
        ))
    }
}

/// Every cluster declared in a YAML stream (other kinds are skipped).
///
/// # Errors
/// Invalid YAML (with the line) or an invalid cluster document.
pub fn parse_clusters(text: &str, origin: &str) -> Result<Vec<DeclaredCluster>, String> {
    let docs = crate::yaml::parse_documents(text).map_err(|e| {
        format!(
            "{origin}: invalid YAML{}: {}",
            e.line.map(|l| format!(" at line {l}")).unwrap_or_default(),
            e.message
        )
    })?;
    docs.iter()
        .filter(|d| is_cluster_document(d))
        .map(|d| cluster_from_value(d, origin))
        .collect()
}

/// Upserts declared clusters into the inventory: a new cluster is
/// registered without credentials; an existing one gets the declared
/// labels, annotations and (if given) server. Returns the records.
///
/// # Errors
/// The store cannot be written.
pub fn apply_declared(
    fleet: &Fleet,
    declared: &[DeclaredCluster],
) -> Result<Vec<ClusterRecord>, StoreError> {
    let store = fleet.store();
    let mut out = Vec::new();
    let mut changed = Vec::new();
    for d in declared {
        match store.cluster(&d.name)? {
            Some(current) => {
                let server = d.server.clone().unwrap_or_else(|| current.server.clone());
                let project = d.project.clone().unwrap_or_default();
                if current.labels != d.labels
                    || current.annotations != d.annotations
                    || current.server != server
                    || current.project != project
                {
                    store.update_cluster(&d.name, |c| {
                        c.labels = d.labels.clone();
                        c.annotations = d.annotations.clone();
                        c.server = server;
                        c.project = project;
                    })?;
                    changed.push(d.name.clone());
                    tracing::info!(cluster = %d.name, "cluster inventory updated from a declaration");
                }
            }
            None => {
                fleet.put_cluster(ClusterRecord {
                    name: d.name.clone(),
                    labels: d.labels.clone(),
                    annotations: d.annotations.clone(),
                    server: d.server.clone().unwrap_or_default(),
                    project: d.project.clone().unwrap_or_default(),
                    created_ms: crate::clock::now_ms(),
                    ..Default::default()
                })?;
                tracing::info!(cluster = %d.name, "cluster declared");
            }
        }
        if let Some(rec) = store.cluster(&d.name)? {
            out.push(rec);
        }
    }
    if !changed.is_empty() {
        // A changed server URL changes which applications name the
        // cluster; nothing else does, and only these clusters.
        fleet.recompute_clusters(&changed)?;
        store.flush()?;
    }
    Ok(out)
}

/// Applies `set` then removes `remove` keys.
pub fn edit_map(
    map: &mut BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    remove: &[String],
) {
    for (k, v) in set {
        map.insert(k.clone(), v.clone());
    }
    for k in remove {
        map.remove(k);
    }
}

/// Parses `k=v` (set) and `k-` (remove) arguments.
///
/// # Errors
/// An argument that is neither, or an empty key.
pub fn parse_edits(args: &[String]) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for a in args {
        if let Some((k, v)) = a.split_once('=') {
            if k.is_empty() {
                return Err(format!("{a:?} has an empty key"));
            }
            set.insert(k.to_owned(), v.to_owned());
        } else if let Some(k) = a.strip_suffix('-').filter(|k| !k.is_empty()) {
            remove.push(k.to_owned());
        } else {
            return Err(format!("{a:?} must be KEY=VALUE (set) or KEY- (remove)"));
        }
    }
    Ok((set, remove))
}

/// Cluster records as the generators see them.
pub fn infos<'a>(records: impl IntoIterator<Item = &'a ClusterRecord>) -> Vec<ClusterInfo> {
    records
        .into_iter()
        .map(|c| ClusterInfo {
            name: c.name.clone(),
            server: c.server.clone(),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            project: c.project.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_resources_and_argo_secrets() {
        let text = r#"
apiVersion: flotilla.dev/v1alpha1
kind: Cluster
metadata:
  name: prod-eu
  labels: {env: prod}
  annotations: {owner: team-a}
spec:
  server: https://10.0.0.1
---
apiVersion: v1
kind: Secret
metadata:
  name: s1
  labels:
    argocd.argoproj.io/secret-type: cluster
    env: dev
data:
  name: ZGV2LTE=
stringData:
  server: https://dev-1
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#;
        let c = parse_clusters(text, "t").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "prod-eu");
        assert_eq!(c[0].server.as_deref(), Some("https://10.0.0.1"));
        assert_eq!(c[0].labels["env"], "prod");
        assert_eq!(c[0].annotations["owner"], "team-a");
        assert_eq!(c[1].name, "dev-1");
        assert_eq!(c[1].server.as_deref(), Some("https://dev-1"));
        assert_eq!(c[1].labels["env"], "dev");
        let bad = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  labels:\n    argocd.argoproj.io/secret-type: cluster\n";
        assert!(
            parse_clusters(bad, "f.yaml")
                .unwrap_err()
                .contains("data.name")
        );
    }

    #[test]
    fn edits_parse() {
        let (set, remove) = parse_edits(&["env=prod".into(), "tier-".into()]).unwrap();
        assert_eq!(set["env"], "prod");
        assert_eq!(remove, vec!["tier".to_owned()]);
        assert!(parse_edits(&["nope".into()]).is_err());
        assert!(parse_edits(&["=x".into()]).is_err());
        let mut m: BTreeMap<String, String> = [("tier".to_owned(), "1".to_owned())].into();
        edit_map(&mut m, &set, &remove);
        assert_eq!(m, [("env".to_owned(), "prod".to_owned())].into());
    }
}
