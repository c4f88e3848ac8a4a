//! tenancy: the agent's own check of an application's AppProject.
//!
//! The hub refuses an application whose objects its project does not
//! allow; the agent checks again, before it applies or prunes anything,
//! with the rules that came with the bundle. So a compromised or buggy hub
//! render path that sends, say, a ClusterRoleBinding in a team's bundle
//! still cannot get it applied. A bundle without rules (an older hub) is
//! not checked, as before.
//!
//! The agent checks kinds (its discovery knows which are cluster-scoped)
//! and namespaces against every destination of the project; it does not
//! know the names the hub gives clusters, so which cluster an application
//! may target is the hub's check alone.

use flotilla_proto as pb;
use pb::project_rules as shared;
use serde::{Deserialize, Serialize};

use crate::object::ObjectKey;

/// The rules of the application's project, as received and cached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRules {
    pub project: String,
    pub destination_namespaces: Vec<String>,
    pub cluster_resource_whitelist: Vec<GroupKind>,
    pub cluster_resource_blacklist: Vec<GroupKind>,
    pub namespace_resource_whitelist: Vec<GroupKind>,
    pub namespace_resource_blacklist: Vec<GroupKind>,
    /// An unset namespaced whitelist allows every namespaced kind.
    pub namespace_resource_whitelist_set: bool,
}

/// A group/kind (globs) and, in cluster lists, a name glob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
    pub name: String,
}

fn gk_in(l: Vec<pb::ProjectGroupKind>) -> Vec<GroupKind> {
    l.into_iter()
        .map(|g| GroupKind {
            group: g.group,
            kind: g.kind,
            name: g.name,
        })
        .collect()
}

fn gk_out(l: &[GroupKind]) -> Vec<pb::ProjectGroupKind> {
    l.iter()
        .map(|g| pb::ProjectGroupKind {
            group: g.group.clone(),
            kind: g.kind.clone(),
            name: g.name.clone(),
        })
        .collect()
}

impl From<pb::ProjectRules> for ProjectRules {
    fn from(r: pb::ProjectRules) -> Self {
        Self {
            project: r.project,
            destination_namespaces: r.destinations.into_iter().map(|d| d.namespace).collect(),
            cluster_resource_whitelist: gk_in(r.cluster_resource_whitelist),
            cluster_resource_blacklist: gk_in(r.cluster_resource_blacklist),
            namespace_resource_whitelist: gk_in(r.namespace_resource_whitelist),
            namespace_resource_blacklist: gk_in(r.namespace_resource_blacklist),
            namespace_resource_whitelist_set: r.namespace_resource_whitelist_set,
        }
    }
}

impl ProjectRules {
    /// Whether these rules refuse nothing (the `default` project, or one as
    /// open): every namespace, every cluster-scoped and namespaced kind,
    /// nothing denied. Such an application needs no per-object check.
    #[must_use]
    pub fn allows_everything(&self) -> bool {
        let any = |l: &[GroupKind]| {
            l.iter()
                .any(|g| g.group == "*" && g.kind == "*" && (g.name.is_empty() || g.name == "*"))
        };
        self.destination_namespaces.iter().any(|ns| ns == "*")
            && !self
                .destination_namespaces
                .iter()
                .any(|ns| ns.starts_with('!'))
            && any(&self.cluster_resource_whitelist)
            && self.cluster_resource_blacklist.is_empty()
            && !self.namespace_resource_whitelist_set
            && self.namespace_resource_blacklist.is_empty()
    }

    fn to_proto(&self) -> pb::ProjectRules {
        pb::ProjectRules {
            project: self.project.clone(),
            source_repos: Vec::new(),
            destinations: self
                .destination_namespaces
                .iter()
                .map(|ns| pb::ProjectDestination {
                    namespace: ns.clone(),
                    ..Default::default()
                })
                .collect(),
            cluster_resource_whitelist: gk_out(&self.cluster_resource_whitelist),
            cluster_resource_blacklist: gk_out(&self.cluster_resource_blacklist),
            namespace_resource_whitelist: gk_out(&self.namespace_resource_whitelist),
            namespace_resource_blacklist: gk_out(&self.namespace_resource_blacklist),
            namespace_resource_whitelist_set: self.namespace_resource_whitelist_set,
        }
    }

    /// Why the project does not let its application own `key` (`None`:
    /// it does). `namespaced` is the object's scope as discovery knows it.
    #[must_use]
    pub fn refusal(&self, key: &ObjectKey, namespaced: bool) -> Option<String> {
        shared::object_refusal(
            &self.to_proto(),
            &key.group,
            &key.kind,
            &key.name,
            &key.namespace,
            namespaced,
        )
    }

    /// Every object of `objects` (key, namespaced) the project refuses,
    /// with why.
    #[must_use]
    pub fn refusals<'a>(
        &self,
        objects: impl IntoIterator<Item = (&'a ObjectKey, bool)>,
    ) -> Vec<(ObjectKey, String)> {
        let rules = self.to_proto();
        objects
            .into_iter()
            .filter_map(|(key, namespaced)| {
                shared::object_refusal(
                    &rules,
                    &key.group,
                    &key.kind,
                    &key.name,
                    &key.namespace,
                    namespaced,
                )
                .map(|why| (key.clone(), why))
            })
            .collect()
    }
}

/// Why prune must leave `key` alone (`None`: it may go): the project does
/// not allow the application to own it. An object recorded without a
/// namespace is cluster-scoped.
#[must_use]
pub fn prune_refusal(rules: Option<&ProjectRules>, key: &ObjectKey) -> Option<String> {
    rules
        .filter(|r| !r.allows_everything())?
        .refusal(key, !key.namespace.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: &str, kind: &str, ns: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn refuses_outside_kinds_and_namespaces() {
        let rules = ProjectRules::from(pb::ProjectRules {
            project: "team-a".into(),
            destinations: vec![pb::ProjectDestination {
                name: "*".into(),
                namespace: "team-a".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let crb = key(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            "",
            "root",
        );
        let cm = key("", "ConfigMap", "team-a", "ok");
        let other = key("", "ConfigMap", "team-b", "x");
        let refused = rules.refusals([(&crb, false), (&cm, true), (&other, true)]);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert_eq!(
            refused[0].1,
            "resource rbac.authorization.k8s.io:ClusterRoleBinding is not permitted in project team-a"
        );
        assert_eq!(
            refused[1].1,
            "namespace team-b is not permitted in project 'team-a'"
        );
        assert!(prune_refusal(Some(&rules), &crb).is_some());
        assert!(prune_refusal(Some(&rules), &cm).is_none());
        assert!(prune_refusal(None, &crb).is_none());
        assert!(!rules.allows_everything());
    }

    #[test]
    fn the_default_project_allows_everything_and_a_deny_does_not() {
        let open = ProjectRules::from(pb::project_rules::allow_all("default"));
        assert!(open.allows_everything());
        let crb = key(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            "",
            "root",
        );
        let cm = key("", "ConfigMap", "kube-system", "x");
        assert!(open.refusals([(&crb, false), (&cm, true)]).is_empty());
        assert!(prune_refusal(Some(&open), &crb).is_none());
        let mut denied = open.clone();
        denied.destination_namespaces.push("!kube-system".into());
        assert!(!denied.allows_everything());
        let mut blacklisted = open.clone();
        blacklisted.cluster_resource_blacklist.push(GroupKind {
            group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRoleBinding".into(),
            name: String::new(),
        });
        assert!(!blacklisted.allows_everything());
        assert!(prune_refusal(Some(&blacklisted), &crb).is_some());
    }
}
