//! Pure sync planning: the order in which an application's objects apply.
//!
//! Objects are grouped by sync phase (PreSync, Sync, PostSync, SyncFail:
//! hooks run in their phases, resources in Sync), then by sync wave
//! (`argocd.argoproj.io/sync-wave`, else `helm.sh/hook-weight`, default 0,
//! ascending); within a wave Namespaces come first, then
//! CustomResourceDefinitions, then other cluster-scoped objects, then
//! namespaced ones (objects of kinds not yet known to the cluster, such as
//! custom resources of a CRD in the same bundle, count as namespaced), then
//! by a kind order close to Argo CD's and by namespace and name.

use serde_json::Value;

use crate::hooks::SyncPhase;
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

/// The objects of one sync wave of one sync phase, in apply order.
#[derive(Debug, Clone)]
pub struct Wave<T> {
    /// The sync phase.
    pub sync_phase: SyncPhase,
    /// The wave number.
    pub wave: i64,
    /// The steps, ordered.
    pub steps: Vec<Step<T>>,
}

/// Orders objects into waves of the Sync phase. `scope` tells where each
/// kind lives.
#[must_use]
pub fn plan<T>(
    objects: Vec<(ObjectKey, Value, T)>,
    scope: impl Fn(&ObjectKey) -> Scope,
) -> Vec<Wave<T>> {
    plan_phases(
        objects
            .into_iter()
            .map(|(key, obj, item)| (SyncPhase::Sync, key, sync_wave(&obj), item))
            .collect(),
        scope,
    )
}

/// Orders `(phase, key, wave, item)` into waves: by phase, then wave, then
/// Namespaces, CRDs, cluster-scoped and namespaced kinds, then kind order,
/// namespace and name (hooks are ordered by `metadata.generateName` when
/// they have no name).
#[must_use]
pub fn plan_phases<T>(
    objects: Vec<(SyncPhase, ObjectKey, i64, T)>,
    scope: impl Fn(&ObjectKey) -> Scope,
) -> Vec<Wave<T>> {
    let mut steps: Vec<(SyncPhase, Step<T>)> = objects
        .into_iter()
        .map(|(sync_phase, key, wave, item)| {
            let phase = phase_of(&key, scope(&key));
            (
                sync_phase,
                Step {
                    wave,
                    phase,
                    key,
                    item,
                },
            )
        })
        .collect();
    steps.sort_by(|(pa, a), (pb, b)| {
        (
            pa,
            a.wave,
            a.phase,
            kind_rank(&a.key.kind),
            &a.key.kind,
            &a.key.namespace,
            &a.key.name,
        )
            .cmp(&(
                pb,
                b.wave,
                b.phase,
                kind_rank(&b.key.kind),
                &b.key.kind,
                &b.key.namespace,
                &b.key.name,
            ))
    });
    let mut waves: Vec<Wave<T>> = Vec::new();
    for (sync_phase, step) in steps {
        match waves.last_mut() {
            Some(w) if w.sync_phase == sync_phase && w.wave == step.wave => w.steps.push(step),
            _ => waves.push(Wave {
                sync_phase,
                wave: step.wave,
                steps: vec![step],
            }),
        }
    }
    waves
}

/// Moves each Namespace into the first step (wave of a phase) that has
/// something in it, as Argo CD does: a PreSync hook in a Namespace the
/// sync creates gets that Namespace created before it.
#[must_use]
pub fn hoist_namespaces<T>(mut waves: Vec<Wave<T>>) -> Vec<Wave<T>> {
    let is_namespace = |k: &ObjectKey| k.group.is_empty() && k.kind == "Namespace";
    let mut moves = Vec::new();
    for (w, wave) in waves.iter().enumerate() {
        for (s, step) in wave.steps.iter().enumerate() {
            if !is_namespace(&step.key) {
                continue;
            }
            let first_user = waves.iter().take(w).position(|earlier| {
                earlier
                    .steps
                    .iter()
                    .any(|e| !is_namespace(&e.key) && e.key.namespace == step.key.name)
            });
            if let Some(f) = first_user {
                moves.push((w, s, f));
            }
        }
    }
    // Later steps first, so earlier indexes stay valid.
    for (w, s, f) in moves.into_iter().rev() {
        let step = waves[w].steps.remove(s);
        waves[f].steps.insert(0, step);
    }
    waves.retain(|w| !w.steps.is_empty());
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
    fn phases_then_waves_then_kinds_then_names() {
        let key = |kind: &str, name: &str| ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: "web".into(),
            name: name.into(),
        };
        // (phase, kind, name, wave) in a shuffled order.
        let rows = [
            (SyncPhase::PostSync, "Pod", "smoke-", 0),
            (SyncPhase::Sync, "Service", "web", 0),
            (SyncPhase::PreSync, "Job", "migrate", 0),
            (SyncPhase::SyncFail, "Job", "cleanup", -9),
            (SyncPhase::PreSync, "ConfigMap", "schema", 0),
            (SyncPhase::Sync, "Job", "sync-hook", 0),
            (SyncPhase::PreSync, "Job", "backup", -1),
            (SyncPhase::Sync, "Deployment", "web", 1),
            (SyncPhase::PostSync, "Job", "notify", -1),
            (SyncPhase::Sync, "ConfigMap", "b", 0),
            (SyncPhase::Sync, "ConfigMap", "a", 0),
        ];
        let objects = rows
            .iter()
            .map(|(p, kind, name, wave)| (*p, key(kind, name), *wave, format!("{p}/{kind}/{name}")))
            .collect();
        let waves = plan_phases(objects, scope);
        let groups: Vec<(SyncPhase, i64)> = waves.iter().map(|w| (w.sync_phase, w.wave)).collect();
        assert_eq!(
            groups,
            vec![
                (SyncPhase::PreSync, -1),
                (SyncPhase::PreSync, 0),
                (SyncPhase::Sync, 0),
                (SyncPhase::Sync, 1),
                (SyncPhase::PostSync, -1),
                (SyncPhase::PostSync, 0),
                (SyncPhase::SyncFail, -9),
            ]
        );
        assert_eq!(
            order(&waves),
            vec![
                "PreSync/Job/backup",
                "PreSync/ConfigMap/schema",
                "PreSync/Job/migrate",
                "Sync/ConfigMap/a",
                "Sync/ConfigMap/b",
                "Sync/Service/web",
                "Sync/Job/sync-hook",
                "Sync/Deployment/web",
                "PostSync/Job/notify",
                "PostSync/Pod/smoke-",
                "SyncFail/Job/cleanup",
            ]
        );
    }

    #[test]
    fn namespaces_move_to_the_first_step_that_needs_them() {
        let key = |kind: &str, ns: &str, name: &str| ObjectKey {
            group: String::new(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
        };
        let objects = vec![
            (SyncPhase::Sync, key("Namespace", "", "web"), 0, "ns/web"),
            (
                SyncPhase::Sync,
                key("Namespace", "", "other"),
                0,
                "ns/other",
            ),
            (SyncPhase::Sync, key("ConfigMap", "web", "c"), 0, "cm/c"),
            (
                SyncPhase::PreSync,
                key("Job", "web", "migrate"),
                0,
                "job/migrate",
            ),
        ];
        let waves = hoist_namespaces(plan_phases(objects, scope));
        let groups: Vec<(SyncPhase, Vec<&str>)> = waves
            .iter()
            .map(|w| (w.sync_phase, w.steps.iter().map(|s| s.item).collect()))
            .collect();
        assert_eq!(
            groups,
            vec![
                (SyncPhase::PreSync, vec!["ns/web", "job/migrate"]),
                (SyncPhase::Sync, vec!["ns/other", "cm/c"]),
            ]
        );
    }

    #[test]
    fn empty_plan_has_no_waves() {
        let waves = plan(Vec::<(ObjectKey, Value, ())>::new(), scope);
        assert!(waves.is_empty());
    }
}
