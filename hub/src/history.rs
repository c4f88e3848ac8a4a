//! Deployment history and revision pins of applications.
//!
//! An entry is recorded when the hub dispatches a revision to be applied:
//! for an automated application when its rendered content changes, for any
//! application on `flotilla app sync` and `flotilla app rollback`. It is
//! the hub's record of what it asked for; whether each cluster applied it
//! is in the cluster's status.
//!
//! A pin (from `rollback`, or `sync --revision` naming another commit than
//! the target's current one) makes the hub render that commit instead of
//! the target revision, until the next `sync` without `--revision` or until
//! automated sync is turned on.

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Entries kept when `spec.revisionHistoryLimit` is not set (Argo CD's
/// default).
pub const DEFAULT_HISTORY_LIMIT: usize = 10;

/// One dispatched deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: u64,
    pub revision: String,
    pub deployed_ms: i64,
    /// `automated`, `user:<token name>` or `rollback`.
    pub initiated_by: String,
    pub clusters: Vec<String>,
}

/// What the store keeps per application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppOps {
    #[serde(default)]
    pub history: Vec<Deployment>,
    /// Last id handed out; ids never repeat even when old entries go.
    #[serde(default)]
    pub last_id: u64,
    /// Commit the application is pinned to, if any.
    #[serde(default)]
    pub pinned: Option<String>,
}

impl AppOps {
    /// Appends an entry (with the next id) and keeps the last `limit`.
    /// A limit of 0 keeps one entry, so a rollback target always exists
    /// for the current revision.
    pub fn record(&mut self, mut entry: Deployment, limit: usize) -> u64 {
        self.last_id += 1;
        entry.id = self.last_id;
        self.history.push(entry);
        let keep = limit.max(1);
        if self.history.len() > keep {
            let drop = self.history.len() - keep;
            self.history.drain(..drop);
        }
        self.last_id
    }

    /// The entry with `id`.
    pub fn entry(&self, id: u64) -> Option<&Deployment> {
        self.history.iter().find(|d| d.id == id)
    }

    /// The revision of the newest entry.
    pub fn last_revision(&self) -> Option<&str> {
        self.history.last().map(|d| d.revision.as_str())
    }
}

/// `spec.revisionHistoryLimit`, or the default.
pub fn limit_of(app: &crate::model::Application) -> usize {
    app.spec
        .revision_history_limit
        .map_or(DEFAULT_HISTORY_LIMIT, |l| usize::try_from(l).unwrap_or(0))
}

/// Records a deployment of `app` in the store; returns its id.
///
/// # Errors
/// The store cannot be read or written.
pub fn record(
    store: &Store,
    app: &crate::model::Application,
    revision: &str,
    initiated_by: &str,
    clusters: Vec<String>,
) -> Result<u64, StoreError> {
    let name = &app.metadata.name;
    let mut ops = store.app_ops(name)?;
    let id = ops.record(
        Deployment {
            id: 0,
            revision: revision.to_owned(),
            deployed_ms: crate::api::now_ms(),
            initiated_by: initiated_by.to_owned(),
            clusters,
        },
        limit_of(app),
    );
    store.put_app_ops(name, &ops)?;
    tracing::info!(app = %name, id, revision, initiated_by, "deployment recorded");
    Ok(id)
}

/// Sets or clears the pin of `app`.
///
/// # Errors
/// The store cannot be read or written.
pub fn set_pin(store: &Store, app: &str, pinned: Option<String>) -> Result<(), StoreError> {
    let mut ops = store.app_ops(app)?;
    if ops.pinned != pinned {
        ops.pinned = pinned;
        store.put_app_ops(app, &ops)?;
    }
    Ok(())
}

/// Whether `app` has `syncPolicy.automated`.
pub fn is_automated(app: &crate::model::Application) -> bool {
    app.spec
        .sync_policy
        .as_ref()
        .is_some_and(|p| p.automated.is_some())
}

/// The commit the hub renders for `app`: its pin when it has one and is
/// not automated, else `target` (the target revision's commit). Turning
/// automated sync on drops the pin.
///
/// # Errors
/// The store cannot be read or written.
pub fn effective_commit(
    store: &Store,
    app: &crate::model::Application,
    target: String,
) -> Result<String, StoreError> {
    let name = &app.metadata.name;
    let ops = store.app_ops(name)?;
    match ops.pinned {
        Some(pin) if !is_automated(app) => Ok(pin),
        Some(_) => {
            tracing::info!(app = %name, "automated sync is on: revision pin dropped");
            set_pin(store, name, None)?;
            Ok(target)
        }
        None => Ok(target),
    }
}

/// The names of the clusters `app` targets.
///
/// # Errors
/// The store cannot be read.
pub fn targeted_clusters(
    store: &Store,
    app: &crate::model::Application,
) -> Result<Vec<String>, StoreError> {
    Ok(targeted_among(app, &store.clusters()?))
}

/// The names of the clusters in `clusters` that `app` targets.
pub fn targeted_among(
    app: &crate::model::Application,
    clusters: &[crate::store::ClusterRecord],
) -> Vec<String> {
    clusters
        .iter()
        .filter(|c| crate::fleet::targets(app, c))
        .map(|c| c.name.clone())
        .collect()
}

/// Records an `automated` deployment when an automated application's
/// content changes (a new bundle digest that rendered). `clusters` is the
/// inventory, read once per pass by the caller: reading it per application
/// made a pass over N applications and N clusters quadratic.
///
/// # Errors
/// The store cannot be read or written.
pub fn note_automated(
    store: &Store,
    fleet: &crate::fleet::Fleet,
    app: &crate::model::Application,
    bundle: &flotilla_proto::AppBundle,
    clusters: &[crate::store::ClusterRecord],
) -> Result<(), StoreError> {
    if !is_automated(app) || !bundle.render_error.is_empty() {
        return Ok(());
    }
    let name = &app.metadata.name;
    if fleet
        .bundle(name)
        .is_some_and(|b| b.digest == bundle.digest)
    {
        return Ok(());
    }
    record(
        store,
        app,
        &bundle.revision,
        "automated",
        targeted_among(app, clusters),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(rev: &str) -> Deployment {
        Deployment {
            revision: rev.to_owned(),
            initiated_by: "automated".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_are_monotonic_and_history_is_trimmed() {
        let mut ops = AppOps::default();
        for (i, rev) in ["a", "b", "c", "d"].iter().enumerate() {
            assert_eq!(ops.record(d(rev), 3), i as u64 + 1);
        }
        let ids: Vec<u64> = ops.history.iter().map(|d| d.id).collect();
        assert_eq!(ids, [2, 3, 4]);
        assert_eq!(ops.last_revision(), Some("d"));
        assert!(ops.entry(1).is_none());
        assert_eq!(ops.entry(2).map(|d| d.revision.as_str()), Some("b"));

        // A smaller limit later trims on the next record; ids continue.
        assert_eq!(ops.record(d("e"), 1), 5);
        assert_eq!(ops.history.len(), 1);
        // Zero keeps the newest.
        ops.record(d("f"), 0);
        assert_eq!(ops.history.len(), 1);
        assert_eq!(ops.last_revision(), Some("f"));
    }

    #[test]
    fn limit_defaults_to_ten() {
        let mut app: crate::model::Application = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a"}, "spec": {}
        }))
        .unwrap();
        assert_eq!(limit_of(&app), DEFAULT_HISTORY_LIMIT);
        app.spec.revision_history_limit = Some(3);
        assert_eq!(limit_of(&app), 3);
        app.spec.revision_history_limit = Some(-1);
        assert_eq!(limit_of(&app), 0);
    }
}
