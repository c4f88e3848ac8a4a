//! An application's desired state as the agent keeps it, free of wire types.

use serde::{Deserialize, Serialize};

/// Argo CD-compatible sync policy of one application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Apply automatically when the desired state changes.
    pub automated: bool,
    /// Delete tracked objects that are no longer desired.
    pub prune: bool,
    /// Re-apply when the live state drifts.
    pub self_heal: bool,
    /// Allow pruning every object when the desired set is empty.
    pub allow_empty: bool,
    /// `syncOptions`, e.g. `CreateNamespace=true`.
    pub sync_options: Vec<String>,
    /// `retry.limit`; 0 means no limit on automated retries.
    pub retry_limit: i64,
}

impl Policy {
    /// Whether a `Name=true` sync option is set.
    #[must_use]
    pub fn option(&self, name: &str) -> bool {
        self.sync_options.iter().any(|o| {
            o.split_once('=')
                .is_some_and(|(k, v)| k.trim() == name && v.trim().eq_ignore_ascii_case("true"))
        })
    }
}

/// One application's rendered desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Application name.
    pub name: String,
    /// Content digest (manifests, policy, namespace).
    pub digest: String,
    /// Git commit the manifests were rendered from.
    pub revision: String,
    /// Source repository.
    pub repo_url: String,
    /// Path in the repository.
    pub path: String,
    /// Default namespace for namespaced objects without one.
    pub namespace: String,
    /// Sync policy.
    pub policy: Policy,
    /// One JSON object per manifest.
    pub manifests: Vec<String>,
    /// Set when rendering failed; nothing is changed for the application.
    pub render_error: String,
    /// `ignoreDifferences` entries as JSON objects.
    pub ignore_differences: Vec<String>,
}

impl From<flotilla_proto::AppBundle> for Bundle {
    fn from(b: flotilla_proto::AppBundle) -> Self {
        let policy = b.policy.unwrap_or_default();
        Self {
            name: b.name,
            digest: b.digest,
            revision: b.revision,
            repo_url: b.repo_url,
            path: b.path,
            namespace: b.namespace,
            policy: Policy {
                automated: policy.automated,
                prune: policy.prune,
                self_heal: policy.self_heal,
                allow_empty: policy.allow_empty,
                sync_options: policy.sync_options,
                retry_limit: policy.retry.map_or(0, |r| r.limit),
            },
            manifests: b.manifests,
            render_error: b.render_error,
            ignore_differences: b.ignore_differences,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_options_parse() {
        let p = Policy {
            sync_options: vec!["CreateNamespace=true".into(), "PruneLast = TRUE".into()],
            ..Policy::default()
        };
        assert!(p.option("CreateNamespace"));
        assert!(p.option("PruneLast"));
        assert!(!p.option("ApplyOutOfSyncOnly"));
    }
}
