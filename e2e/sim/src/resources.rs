//! The resource registry: built-in kinds and the kinds that CRDs add.

use serde_json::{Value, json};

/// One servable resource (a group/version/plural).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group, "" for core.
    pub group: String,
    /// Served version.
    pub version: String,
    /// Plural resource name, e.g. `deployments`.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether a `/status` subresource exists.
    pub status: bool,
    /// Whether spec changes bump `metadata.generation`.
    pub generation: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
}

impl ResourceDef {
    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage key prefix, independent of version.
    pub fn group_resource(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }
}

struct B(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    bool,
    bool,
    &'static [&'static str],
);

const BUILTIN: &[B] = &[
    // group, version, plural, kind, namespaced, status, generation, short names
    B(
        "",
        "v1",
        "namespaces",
        "Namespace",
        false,
        true,
        false,
        &["ns"],
    ),
    B(
        "",
        "v1",
        "configmaps",
        "ConfigMap",
        true,
        false,
        false,
        &["cm"],
    ),
    B("", "v1", "secrets", "Secret", true, false, false, &[]),
    B("", "v1", "services", "Service", true, true, false, &["svc"]),
    B(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        false,
        false,
        &["sa"],
    ),
    B("", "v1", "pods", "Pod", true, true, false, &["po"]),
    B(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        true,
        false,
        &["pvc"],
    ),
    B("", "v1", "events", "Event", true, false, false, &["ev"]),
    B(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        true,
        true,
        &["deploy"],
    ),
    B(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        true,
        true,
        true,
        &["rs"],
    ),
    B(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        true,
        true,
        true,
        &["sts"],
    ),
    B(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        true,
        true,
        true,
        &["ds"],
    ),
    B("batch", "v1", "jobs", "Job", true, true, true, &[]),
    B(
        "batch",
        "v1",
        "cronjobs",
        "CronJob",
        true,
        true,
        true,
        &["cj"],
    ),
    B(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        true,
        true,
        true,
        &["ing"],
    ),
    B(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        false,
        true,
        &["netpol"],
    ),
    B(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        false,
        false,
        &[],
    ),
    B(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
        false,
        &[],
    ),
    B(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
        false,
        &[],
    ),
    B(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
        false,
        &[],
    ),
    B(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        true,
        true,
        true,
        &["hpa"],
    ),
    B(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        true,
        true,
        &["pdb"],
    ),
    B(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        false,
        false,
        &[],
    ),
    B(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
        false,
        false,
        &[],
    ),
    B(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
        false,
        false,
        &[],
    ),
    B(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
        true,
        &["crd", "crds"],
    ),
];

/// The built-in resources.
pub fn builtin() -> Vec<ResourceDef> {
    BUILTIN
        .iter()
        .map(|b| ResourceDef {
            group: b.0.to_string(),
            version: b.1.to_string(),
            plural: b.2.to_string(),
            singular: b.3.to_lowercase(),
            kind: b.3.to_string(),
            namespaced: b.4,
            status: b.5,
            generation: b.6,
            short_names: b.7.iter().map(|s| (*s).to_string()).collect(),
        })
        .collect()
}

/// Resources served by an Established CRD object (one per served version).
pub fn from_crd(crd: &Value) -> Vec<ResourceDef> {
    let spec = &crd["spec"];
    let established = crd["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    });
    if !established || crd["metadata"]["deletionTimestamp"].is_string() {
        return Vec::new();
    }
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let singular = names["singular"]
        .as_str()
        .map_or_else(|| kind.to_lowercase(), str::to_string);
    let short_names: Vec<String> = names["shortNames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let namespaced = spec["scope"] != "Cluster";
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"] == false {
            continue;
        }
        let Some(version) = v["name"].as_str() else {
            continue;
        };
        out.push(ResourceDef {
            group: group.clone(),
            version: version.to_string(),
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            status: v["subresources"]["status"].is_object(),
            generation: true,
            short_names: short_names.clone(),
        });
    }
    out
}

/// The openAPI schema of a CRD version, if any.
pub fn crd_schema(crd: &Value, version: &str) -> Option<Value> {
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == version)
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .filter(Value::is_object)
}

/// APIResource entry for discovery.
pub fn api_resource(r: &ResourceDef) -> Vec<Value> {
    let verbs = if is_review(r) {
        json!(["create"])
    } else {
        json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ])
    };
    let mut main = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": verbs,
        "shortNames": r.short_names,
    });
    let categories = categories(r);
    if !categories.is_empty() {
        main["categories"] = json!(categories);
    }
    let mut out = vec![main];
    if r.status {
        out.push(json!({
            "name": format!("{}/status", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    if has_scale(r) {
        out.push(json!({
            "name": format!("{}/scale", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "group": "autoscaling",
            "version": "v1",
            "kind": "Scale",
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

/// The discovery categories of a resource: `all` for the kinds
/// `kubectl get all` lists in Kubernetes.
pub fn categories(r: &ResourceDef) -> Vec<&'static str> {
    let all = matches!(
        (r.group.as_str(), r.plural.as_str()),
        ("", "pods" | "services" | "replicationcontrollers")
            | (
                "apps",
                "deployments" | "replicasets" | "statefulsets" | "daemonsets"
            )
            | ("batch", "jobs" | "cronjobs")
            | ("autoscaling", "horizontalpodautoscalers")
    );
    if all { vec!["all"] } else { Vec::new() }
}

/// Access reviews: create-only, answered and never stored.
pub fn is_review(r: &ResourceDef) -> bool {
    r.group == "authorization.k8s.io"
}

/// Whether the resource has a `/scale` subresource.
pub fn has_scale(r: &ResourceDef) -> bool {
    r.group == "apps" && matches!(r.kind.as_str(), "Deployment" | "ReplicaSet" | "StatefulSet")
}
