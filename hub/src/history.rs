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
//! automated sync is turned on. While the pinned commit is not the one Git
//! is at, every cluster shows the application OutOfSync, as Argo CD compares
//! a rolled-back application with Git ([`show_pin`]).

pub use crate::store::records::{AppOps, Deployment, HistoryEvent};
use crate::store::{Store, StoreError};

/// Entries kept when `spec.revisionHistoryLimit` is not set (Argo CD's
/// default).
pub const DEFAULT_HISTORY_LIMIT: usize = 10;

/// One cluster's status as shown while the application is pinned away from
/// Git (`pin_message`): OutOfSync, the message saying why first. A status
/// the hub cannot compare (Unknown) stays as it is.
pub fn show_pin(
    mut status: flotilla_proto::AppStatus,
    pin_message: &str,
) -> flotilla_proto::AppStatus {
    use flotilla_proto::SyncStatus;
    if status.sync == SyncStatus::Unknown as i32 {
        return status;
    }
    status.sync = SyncStatus::OutOfSync as i32;
    status.message = if status.message.is_empty() {
        pin_message.to_owned()
    } else {
        format!("{pin_message}; {}", status.message)
    };
    status
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
    let mut id = 0;
    store.update_app_ops(name, |ops| {
        id = ops.record(
            Deployment {
                id: 0,
                revision: revision.to_owned(),
                deployed_ms: crate::clock::now_ms(),
                initiated_by: initiated_by.to_owned(),
                clusters,
            },
            limit_of(app),
        );
        true
    })?;
    tracing::info!(app = %name, id, revision, initiated_by, "deployment recorded");
    Ok(id)
}

/// Records a rollout transition in the history of application `app`.
///
/// # Errors
/// The store cannot be read or written.
pub fn record_event(store: &Store, app: &str, event: HistoryEvent) -> Result<(), StoreError> {
    store
        .update_app_ops(app, |ops| {
            ops.note_event(event);
            true
        })
        .map(|_| ())
}

/// Sets or clears the pin of `app`.
///
/// # Errors
/// The store cannot be read or written.
pub fn set_pin(store: &Store, app: &str, pinned: Option<String>) -> Result<(), StoreError> {
    set_pin_by(store, app, pinned, "")
}

/// Sets the pin of `app`, saying what set it (`rollback`, `sync
/// --revision`), or clears it.
///
/// # Errors
/// The store cannot be read or written.
pub fn set_pin_by(
    store: &Store,
    app: &str,
    pinned: Option<String>,
    by: &str,
) -> Result<(), StoreError> {
    let by = if pinned.is_some() { by } else { "" };
    store.update_app_ops(app, |ops| {
        if ops.pinned == pinned && ops.pinned_by == by {
            return false;
        }
        ops.pinned = pinned;
        ops.pinned_by = by.to_owned();
        if ops.pinned.is_none() {
            ops.git_revision.clear();
        }
        true
    })?;
    Ok(())
}

/// Drops the pin a waves rollout put on `app` (`pinned_by` is
/// `rollout:<set>`) and records why in its history (`why`, followed by
/// "rollout pin released"), in one update: the Git loop (a render that
/// finds the rollout gone) and the rollout reconciler (the set lost its
/// waves) may both get there, and the release is recorded once. Returns
/// whether there was such a pin.
///
/// # Errors
/// The store cannot be read or written.
pub fn release_rollout_pin(
    store: &Store,
    app: &str,
    why: &str,
    clusters: Vec<String>,
) -> Result<bool, StoreError> {
    let released = store.update_app_ops(app, |ops| {
        let Some(pin) = ops
            .pinned
            .take_if(|_| ops.pinned_by.starts_with("rollout:"))
        else {
            return false;
        };
        let by = std::mem::take(&mut ops.pinned_by);
        ops.git_revision.clear();
        ops.note_event(HistoryEvent {
            at_ms: crate::clock::now_ms(),
            event: format!("{why}: rollout pin released"),
            initiated_by: by,
            revision: pin,
            clusters,
        });
        true
    })?;
    if released {
        tracing::info!(app, why, "rollout pin released");
    }
    Ok(released)
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
    // Most applications are not pinned: that is known without reading
    // their history.
    let Some((_, pinned_by)) = store.app_pin(name)? else {
        return Ok(target);
    };
    if !rollout_pin_holds(store, name, &pinned_by)? {
        release_rollout_pin(
            store,
            name,
            "the rollout that pinned the application is gone",
            targeted_clusters(store, app)?,
        )?;
        return Ok(target);
    }
    let ops = store.app_ops(name)?;
    match ops.pinned.clone() {
        // A waves rollout's pin holds an automated application at the
        // revision its wave is at (self-heal keeps working on it).
        Some(pin) if !is_automated(app) || ops.pinned_by.starts_with("rollout:") => {
            // Remembered to show the application OutOfSync with Git.
            if ops.git_revision != target {
                store.update_app_ops(name, |ops| {
                    let same_pin = ops.pinned.as_ref() == Some(&pin);
                    if same_pin {
                        ops.git_revision = target;
                    }
                    same_pin
                })?;
            }
            Ok(pin)
        }
        Some(_) => {
            tracing::info!(app = %name, "automated sync is on: revision pin dropped");
            set_pin(store, name, None)?;
            Ok(target)
        }
        None => Ok(target),
    }
}

/// Whether a pin set by `pinned_by` still holds application `app`: any
/// pin but a waves rollout's does; a `rollout:<set>` pin only while the
/// set exists, still has `spec.strategy.flotillaWaves`, and generates the
/// application (removing the waves, deleting the set or orphaning the
/// application returns it to ordinary sync at Git's revision).
///
/// # Errors
/// The store cannot be read.
pub fn rollout_pin_holds(store: &Store, app: &str, pinned_by: &str) -> Result<bool, StoreError> {
    let Some(set) = pinned_by.strip_prefix("rollout:") else {
        return Ok(true);
    };
    Ok(store.appset(set)?.is_some_and(|rec| {
        rec.raw
            .pointer("/spec/strategy/flotillaWaves")
            .is_some_and(|w| !w.is_null())
            && rec.generated.iter().any(|g| g == app)
    }))
}

/// The names of the clusters `app` targets, from the store's targeting
/// index (no scan of the inventory).
///
/// # Errors
/// The store cannot be read.
pub fn targeted_clusters(
    store: &Store,
    app: &crate::model::Application,
) -> Result<Vec<String>, StoreError> {
    store.clusters_targeted(&crate::store::Destination::of(app))
}

/// Records an `automated` deployment when an automated application's
/// content changes (a new bundle digest that rendered). The clusters it
/// names come from the store's targeting index: a scan of the inventory
/// per application made a pass over N applications and N clusters
/// quadratic.
///
/// # Errors
/// The store cannot be read or written.
pub fn note_automated(
    store: &Store,
    fleet: &crate::fleet::Fleet,
    app: &crate::model::Application,
    bundle: &flotilla_proto::AppBundle,
) -> Result<(), StoreError> {
    if !is_automated(app) || !bundle.render_error.is_empty() {
        return Ok(());
    }
    // A sync window holds it: nothing is deployed until the window lets
    // the application go ([`crate::project::window::hold`]).
    if bundle.policy.as_ref().is_some_and(|p| !p.automated) {
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
        targeted_clusters(store, app)?,
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
    fn a_pin_away_from_git_shows_out_of_sync() {
        use flotilla_proto::{AppStatus, HealthStatus, SyncStatus};
        let mut ops = AppOps::default();
        assert_eq!(ops.pin_message(), None);
        ops.pinned = Some("0123456789abcdef0123456789abcdef01234567".into());
        ops.pinned_by = "rollback".into();
        // Git not fetched yet, or at the pinned commit: nothing to show.
        assert_eq!(ops.pin_message(), None);
        ops.git_revision = "0123456789abcdef0123456789abcdef01234567".into();
        assert_eq!(ops.pin_message(), None);
        ops.git_revision = "fedcba9876543210fedcba9876543210fedcba98".into();
        let message = ops.pin_message().unwrap();
        assert_eq!(
            message,
            "pinned to 01234567 by rollback; Git is at fedcba98"
        );

        let synced = AppStatus {
            sync: SyncStatus::Synced as i32,
            health: HealthStatus::Healthy as i32,
            ..Default::default()
        };
        let shown = show_pin(synced, &message);
        assert_eq!(shown.sync, SyncStatus::OutOfSync as i32);
        assert_eq!(shown.health, HealthStatus::Healthy as i32);
        assert_eq!(shown.message, message);
        let drifted = AppStatus {
            sync: SyncStatus::OutOfSync as i32,
            message: "ConfigMap/c: drift".into(),
            ..Default::default()
        };
        assert_eq!(
            show_pin(drifted, &message).message,
            format!("{message}; ConfigMap/c: drift")
        );
        let unknown = AppStatus {
            sync: SyncStatus::Unknown as i32,
            message: "ComparisonError: x".into(),
            ..Default::default()
        };
        assert_eq!(show_pin(unknown.clone(), &message), unknown);
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
