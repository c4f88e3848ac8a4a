//! Pure sync planning: the order in which an application's objects apply.
//!
//! Objects are grouped by sync wave (`argocd.argoproj.io/sync-wave`, default
//! 0, ascending); within a wave Namespaces come first, then
//! CustomResourceDefinitions, then other cluster-scoped objects, then
//! namespaced ones (objects of kinds not yet known to the cluster, such as
//! custom resources of a CRD in the same bundle, count as namespaced), then
//! by a kind order close to Argo CD's and by namespace and name.

use serde_json::Value;

use crate::object::{ObjectKey, sync_wave};

/// Where an object's kind lives, as far as the cluster told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Cluster-scoped.
    Cluster,
    /// Namespaced.
    Namespaced,
    /// Not (yet) served by the cluster.
    Unknown,
}

/// The ordering phase of an object within its wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// `v1/Namespace`.
    Namespaces,
    /// `apiextensions.k8s.io/CustomResourceDefinition`.
    Crds,
    /// Every other cluster-scoped kind.
    ClusterScoped,
    /// Namespaced kinds and kinds the cluster does not serve yet.
    Namespaced,
}

/// The phase of an object of kind `key` with the given scope.
#[must_use]
pub fn phase_of(key: &ObjectKey, scope: Scope) -> Phase {
    match (key.group.as_str(), key.kind.as_str(), scope) {
        ("", "Namespace", _) => Phase::Namespaces,
        ("apiextensions.k8s.io", "CustomResourceDefinition", _) => Phase::Crds,
        (_, _, Scope::Cluster) => Phase::ClusterScoped,
        _ => Phase::Namespaced,
    }
}

/// Kinds that others depend on apply first (after Argo CD's kind order).
const KIND_ORDER: &[&str] = &[
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

fn kind_rank(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_ORDER.len())
}

/// One object to apply.
#[derive(Debug, Clone)]
pub struct Step<T> {
    /// The object's identity as written in its manifest.
    pub key: ObjectKey,
    /// Its sync wave.
    pub wave: i64,
    /// Its phase.
    pub phase: Phase,
    /// Whatever the caller carries along (the object itself, usually).
    pub item: T,
}

/// The objects of one sync wave, in apply order.
#[derive(Debug, Clone)]
pub struct Wave<T> {
    /// The wave number.
    pub wave: i64,
    /// The steps, ordered.
    pub steps: Vec<Step<T>>,
}

/// Orders objects into waves. `scope` tells where each kind lives.
#[must_use]
pub fn plan<T>(
    objects: Vec<(ObjectKey, Value, T)>,
    scope: impl Fn(&ObjectKey) -> Scope,
) -> Vec<Wave<T>> {
    let mut steps: Vec<Step<T>> = objects
        .into_iter()
        .map(|(key, obj, item)| {
            let phase = phase_of(&key, scope(&key));
            Step {
                wave: sync_wave(&obj),
                phase,
                key,
                item,
            }
        })
        .collect();
    steps.sort_by(|a, b| {
        (
            a.wave,
            a.phase,
            kind_rank(&a.key.kind),
            &a.key.kind,
            &a.key.namespace,
            &a.key.name,
        )
            .cmp(&(
                b.wave,
                b.phase,
                kind_rank(&b.key.kind),
                &b.key.kind,
                &b.key.namespace,
                &b.key.name,
            ))
    });
    let mut waves: Vec<Wave<T>> = Vec::new();
    for step in steps {
        match waves.last_mut() {
            Some(w) if w.wave == step.wave => w.steps.push(step),
            _ => waves.push(Wave {
                wave: step.wave,
                steps: vec![step],
            }),
        }
    }
    waves
}

/// The order in which stale objects are deleted: the apply order backwards
/// (namespaced objects first, then cluster-scoped ones, CRDs, Namespaces).
#[must_use]
pub fn prune_order(
    mut keys: Vec<ObjectKey>,
    scope: impl Fn(&ObjectKey) -> Scope,
) -> Vec<ObjectKey> {
    keys.sort_by_cached_key(|k| {
        (
            std::cmp::Reverse(phase_of(k, scope(k))),
            std::cmp::Reverse(kind_rank(&k.kind)),
            k.namespace.clone(),
            k.name.clone(),
        )
    });
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(
        api_version: &str,
        kind: &str,
        name: &str,
        wave: Option<&str>,
    ) -> (ObjectKey, Value, String) {
        let mut v = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
        if let Some(w) = wave {
            v["metadata"]["annotations"] = json!({"argocd.argoproj.io/sync-wave": w});
        }
        let key = ObjectKey::of(&v, 0).expect("key");
        (key, v, format!("{kind}/{name}"))
    }

    fn scope(key: &ObjectKey) -> Scope {
        match key.kind.as_str() {
            "Namespace" | "ClusterRole" | "CustomResourceDefinition" => Scope::Cluster,
            "Widget" => Scope::Unknown,
            _ => Scope::Namespaced,
        }
    }

    fn order<T: Clone>(waves: &[Wave<T>]) -> Vec<T> {
        waves
            .iter()
            .flat_map(|w| w.steps.iter().map(|s| s.item.clone()))
            .collect()
    }

    #[test]
    fn namespaces_then_crds_then_cluster_then_namespaced() {
        let objects = vec![
            obj("apps/v1", "Deployment", "web", None),
            obj("example.com/v1", "Widget", "w", None),
            obj(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "reader",
                None,
            ),
            obj("v1", "ConfigMap", "cfg", None),
            obj(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "widgets.example.com",
                None,
            ),
            obj("v1", "Namespace", "web", None),
            obj("v1", "Service", "web", None),
        ];
        let waves = plan(objects, scope);
        assert_eq!(waves.len(), 1);
        assert_eq!(
            order(&waves),
            vec![
                "Namespace/web",
                "CustomResourceDefinition/widgets.example.com",
                "ClusterRole/reader",
                "ConfigMap/cfg",
                "Service/web",
                "Deployment/web",
                "Widget/w",
            ]
        );
    }

    #[test]
    fn waves_ascend_and_phases_apply_within_each() {
        let objects = vec![
            obj("v1", "ConfigMap", "late", Some("2")),
            obj("v1", "ConfigMap", "early", Some("-1")),
            obj("v1", "Namespace", "late-ns", Some("2")),
            obj("v1", "ConfigMap", "default", None),
            obj("v1", "ConfigMap", "bad-wave", Some("x")),
        ];
        let waves = plan(objects, scope);
        let numbers: Vec<i64> = waves.iter().map(|w| w.wave).collect();
        assert_eq!(numbers, vec![-1, 0, 2]);
        assert_eq!(
            order(&waves),
            vec![
                "ConfigMap/early",
                "ConfigMap/bad-wave",
                "ConfigMap/default",
                "Namespace/late-ns",
                "ConfigMap/late",
            ]
        );
    }

    #[test]
    fn prune_runs_the_apply_order_backwards() {
        let keys: Vec<ObjectKey> = [
            obj("v1", "Namespace", "web", None),
            obj(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "widgets.example.com",
                None,
            ),
            obj("v1", "ConfigMap", "cfg", None),
            obj(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "reader",
                None,
            ),
            obj("apps/v1", "Deployment", "web", None),
        ]
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
        let order: Vec<String> = prune_order(keys, scope)
            .into_iter()
            .map(|k| format!("{}/{}", k.kind, k.name))
            .collect();
        assert_eq!(
            order,
            vec![
                "Deployment/web",
                "ConfigMap/cfg",
                "ClusterRole/reader",
                "CustomResourceDefinition/widgets.example.com",
                "Namespace/web",
            ]
        );
    }

    #[test]
    fn empty_plan_has_no_waves() {
        let waves = plan(Vec::<(ObjectKey, Value, ())>::new(), scope);
        assert!(waves.is_empty());
    }
}
