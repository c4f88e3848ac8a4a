//! Progressive rollouts: what moves an ApplicationSet with `strategy:
//! RollingSync` (or Flotilla waves) through its steps.
//!
//! [`rolling_sync`] is the pure core (steps, `maxUpdate`, transitions);
//! its shell, [`crate::rollout_run`], reacts to what changes (a status report of
//! a watched application that differs from the last one seen, a set
//! evaluated by [`crate::appset::lifecycle`]) and never scans the fleet:
//! one pass over a set reads that set's applications and their statuses
//! only. Syncs go through the same path as `flotilla app sync`
//! ([`crate::api::ops::sync_clusters`]), so they are recorded in the
//! application's history as initiated by `appset:<set>`. Progress is kept
//! in the store ([`RolloutRecord`]), so a restarted hub carries on where it
//! stopped.
//!
//! The waves extension (cluster-label waves, bake time, failure policy)
//! grows here, beside RollingSync.

pub mod rolling_sync;
pub mod waves;

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_proto as pb;
use rolling_sync::Progress;

/// Annotation on a generated application of a RollingSync set: whether the
/// set's syncs prune (the template's `automated.prune`, kept because the
/// set removes `automated`, as Argo CD does).
pub const PRUNE_ANNOTATION: &str = "flotilla.dev/rolling-sync-prune";

pub use crate::store::records::{DeletingApp, RolloutRecord};

/// Groups of a set's applications in reverse deletion order: the last
/// step's first, then the step before, …, then those no step selects
/// (Argo CD deletes them last, with the set). Empty groups are left out.
pub fn reverse_deletion_groups<'a>(
    steps: &[rolling_sync::Step],
    apps: impl IntoIterator<Item = (&'a str, &'a std::collections::BTreeMap<String, String>)>,
) -> Vec<Vec<String>> {
    let apps: Vec<_> = apps.into_iter().collect();
    let assignment = rolling_sync::assign_steps(steps, apps.iter().copied());
    let mut groups: Vec<Vec<String>> = vec![Vec::new(); steps.len() + 1];
    for (name, _) in &apps {
        match assignment.step_of.get(*name) {
            Some(i) => groups[steps.len() - 1 - i].push((*name).to_owned()),
            None => groups[steps.len()].push((*name).to_owned()),
        }
    }
    groups.retain(|g| !g.is_empty());
    for g in &mut groups {
        g.sort();
    }
    groups
}

/// An application the reconciler watches.
#[derive(Debug, Default)]
struct Watched {
    set: String,
    /// Cluster → digest of the last status of it that mattered.
    seen: HashMap<String, u64>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct RolloutCounters {
    /// Set passes made.
    pub passes: AtomicU64,
    /// Sync commands sent to clusters.
    pub syncs: AtomicU64,
    /// Status reports of watched applications that woke a set.
    pub wakeups: AtomicU64,
}

/// The rollout reconciler's shared state: which applications belong to a
/// RollingSync set, and which sets need a pass.
#[derive(Debug, Default)]
pub struct Rollouts {
    watched: Mutex<HashMap<String, Watched>>,
    /// Set → its watched applications.
    members: Mutex<HashMap<String, BTreeSet<String>>>,
    dirty: Mutex<BTreeSet<String>>,
    /// Deleted sets whose applications go in reverse order.
    pub(crate) deleting: Mutex<BTreeSet<String>>,
    pub(crate) wake: tokio::sync::Notify,
    pub counters: RolloutCounters,
    /// Sets rolling out by waves: passed over on every tick (bake time and
    /// progress deadlines move with the clock, not with reports).
    pub(crate) waves: Mutex<BTreeSet<String>>,
    /// Controls asked for (`flotilla rollout pause` ...), with who asked,
    /// applied by the set's next pass.
    controls: Mutex<HashMap<String, Vec<(waves::Control, String)>>>,
}

/// What of a status decides progress: a report that changes none of it
/// wakes nothing.
fn fingerprint(st: &pb::AppStatus) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    st.sync.hash(&mut h);
    st.health.hash(&mut h);
    st.digest.hash(&mut h);
    st.revision.hash(&mut h);
    for op in [&st.requested_operation, &st.operation]
        .into_iter()
        .flatten()
    {
        op.command_id.hash(&mut h);
        op.phase.hash(&mut h);
    }
    h.finish()
}

impl Rollouts {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Watches `apps` as the applications of RollingSync set `set` (and
    /// only them) and asks for a pass over it.
    pub fn watch_set(&self, set: &str, apps: &[String]) {
        {
            let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            let now: BTreeSet<String> = apps.iter().cloned().collect();
            let before = members.remove(set).unwrap_or_default();
            for gone in before.difference(&now) {
                if watched.get(gone).is_some_and(|w| w.set == set) {
                    watched.remove(gone);
                }
            }
            for a in &now {
                let w = watched.entry(a.clone()).or_default();
                if w.set != set {
                    *w = Watched {
                        set: set.to_owned(),
                        seen: HashMap::new(),
                    };
                }
            }
            members.insert(set.to_owned(), now);
        }
        self.mark(set);
    }

    /// Stops watching a set (deleted, or no longer RollingSync).
    pub fn unwatch_set(&self, set: &str) {
        let Some(apps) = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(set)
        else {
            // Not watched: nothing to forget (every other set's plan ends
            // here).
            return;
        };
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        for a in apps {
            if watched.get(&a).is_some_and(|w| w.set == set) {
                watched.remove(&a);
            }
        }
        crate::metrics::metrics().rollout_removed(set, &STATUSES.map(Progress::as_str));
    }

    /// Asks for a pass over `set`.
    pub fn mark(&self, set: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(set.to_owned());
        self.wake.notify_one();
    }

    /// Called with every status report a cluster sends: a set is woken
    /// when a status of one of its applications changed in a way that can
    /// move its rollout. Costs one map lookup per reported application.
    pub fn statuses_reported(&self, cluster: &str, statuses: &[pb::AppStatus]) {
        let mut woken = Vec::new();
        {
            let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            if watched.is_empty() {
                return;
            }
            for st in statuses {
                let Some(w) = watched.get_mut(&st.name) else {
                    continue;
                };
                let f = fingerprint(st);
                if w.seen.insert(cluster.to_owned(), f) != Some(f) {
                    woken.push(w.set.clone());
                }
            }
        }
        for set in woken {
            self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
            self.mark(&set);
        }
    }

    /// Notes a deleted set whose applications go in reverse order and asks
    /// for a pass over it.
    pub fn deleting_in_reverse(&self, set: &str) {
        self.deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(set.to_owned());
        self.mark(set);
    }

    /// A cluster acknowledged a desired state, or the set controller made a
    /// pass (which removes applications whose objects are preserved): a
    /// reverse deletion may go on. Nothing to do when none runs.
    pub fn deletions_may_have_progressed(&self) {
        let sets = self
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for set in sets {
            self.mark(&set);
        }
    }

    /// Queues `control` of set `set`, asked by `by`, and asks for a pass.
    pub fn control(&self, set: &str, control: waves::Control, by: &str) {
        self.controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(set.to_owned())
            .or_default()
            .push((control, by.to_owned()));
        self.mark(set);
    }

    pub(crate) fn take_controls(&self, set: &str) -> Vec<(waves::Control, String)> {
        self.controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(set)
            .unwrap_or_default()
    }

    pub(crate) fn set_waves(&self, set: &str, on: bool) {
        let mut w = self.waves.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            w.insert(set.to_owned());
        } else {
            w.remove(set);
        }
    }

    /// Marks every waves set; whether there is one.
    pub(crate) fn tick(&self) -> bool {
        let sets = self.waves.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for set in &sets {
            self.mark(set);
        }
        !sets.is_empty()
    }

    pub(crate) fn take_dirty(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

pub(crate) const STATUSES: [Progress; 4] = [
    Progress::Waiting,
    Progress::Pending,
    Progress::Progressing,
    Progress::Healthy,
];

/// `spec.strategy` of a stored set, read from its raw document: the
/// reconciler needs the strategy only, not the whole validated set.
pub(crate) fn strategy_of(
    raw: &serde_json::Value,
) -> Result<rolling_sync::Strategy, (String, String)> {
    rolling_sync::Strategy::parse(raw.pointer("/spec/strategy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(app: &str, sync: pb::SyncStatus, digest: &str) -> pb::AppStatus {
        pb::AppStatus {
            name: app.into(),
            sync: sync as i32,
            health: pb::HealthStatus::Healthy as i32,
            digest: digest.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_changed_status_of_a_watched_application_wakes_its_set() {
        let r = Rollouts::new();
        r.watch_set("web", &["web-a".into(), "web-b".into()]);
        assert_eq!(r.take_dirty(), BTreeSet::from(["web".to_owned()]));
        // Applications of no RollingSync set: nothing to do.
        r.statuses_reported("c1", &[status("other", pb::SyncStatus::Synced, "d1")]);
        assert!(r.take_dirty().is_empty());
        // A first report of a watched one wakes it ...
        let a = status("web-a", pb::SyncStatus::OutOfSync, "d1");
        r.statuses_reported("c1", std::slice::from_ref(&a));
        assert_eq!(r.take_dirty(), BTreeSet::from(["web".to_owned()]));
        // ... the same report again does not (agents report periodically) ...
        let mut again = a.clone();
        again.observed_ms = 42;
        again.message = "compared again".into();
        r.statuses_reported("c1", &[again]);
        assert!(r.take_dirty().is_empty());
        // ... the same status from another cluster does, once.
        r.statuses_reported("c2", std::slice::from_ref(&a));
        assert_eq!(r.take_dirty().len(), 1);
        // A change of what progress depends on does.
        r.statuses_reported("c1", &[status("web-a", pb::SyncStatus::Synced, "d1")]);
        assert_eq!(r.take_dirty().len(), 1);
        // An application that left the set no longer wakes it.
        r.watch_set("web", &["web-a".into()]);
        r.take_dirty();
        r.statuses_reported("c1", &[status("web-b", pb::SyncStatus::Synced, "d2")]);
        assert!(r.take_dirty().is_empty());
        r.unwatch_set("web");
        r.statuses_reported("c1", &[status("web-a", pb::SyncStatus::OutOfSync, "d3")]);
        assert!(r.take_dirty().is_empty());
    }

    #[test]
    fn a_rollout_pin_holds_only_while_its_set_stages_the_application_by_waves() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let app: crate::model::Application = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sim-1-web"},
            "spec": {"syncPolicy": {"automated": {"prune": true}}}
        }))
        .unwrap();
        let waves = serde_json::json!({"spec": {"strategy": {"flotillaWaves": {
            "waves": [{"name": "all", "clusterSelector": {"matchLabels": {}}}]
        }}}});
        let set = |raw: serde_json::Value, generated: &[&str]| crate::store::AppSetRecord {
            name: "web".into(),
            raw,
            generated: generated.iter().map(|g| (*g).to_owned()).collect(),
            ..Default::default()
        };
        let pin = |store: &crate::store::Store| {
            crate::history::set_pin_by(store, "sim-1-web", Some("old".into()), "rollout:web")
                .unwrap();
        };
        let commit = |store: &crate::store::Store| {
            crate::history::effective_commit(store, &app, "git".into()).unwrap()
        };
        store
            .put_appset(&set(waves.clone(), &["sim-1-web"]))
            .unwrap();
        pin(&store);
        assert_eq!(commit(&store), "old", "held by its waves rollout");
        // flotillaWaves removed: back to Git's revision, the pin gone.
        store
            .put_appset(&set(serde_json::json!({"spec": {}}), &["sim-1-web"]))
            .unwrap();
        assert_eq!(commit(&store), "git");
        assert_eq!(store.app_ops("sim-1-web").unwrap().pinned, None);
        // The set no longer generates the application (orphaned).
        store.put_appset(&set(waves.clone(), &[])).unwrap();
        pin(&store);
        assert_eq!(commit(&store), "git");
        // The set deleted.
        store.put_appset(&set(waves, &["sim-1-web"])).unwrap();
        pin(&store);
        assert_eq!(commit(&store), "old");
        store.remove_appset("web").unwrap();
        assert_eq!(commit(&store), "git");
        // A pin of another kind is not the rollout's to drop.
        crate::history::set_pin_by(&store, "sim-1-web", Some("old".into()), "rollback").unwrap();
        let manual: crate::model::Application = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sim-1-web"}, "spec": {}
        }))
        .unwrap();
        assert_eq!(
            crate::history::effective_commit(&store, &manual, "git".into()).unwrap(),
            "old"
        );
    }

    #[test]
    fn current_step_comes_from_the_progressing_message() {
        let mut r = RolloutRecord {
            progressing: "ApplicationSet is performing rollout of step 3".into(),
            ..Default::default()
        };
        assert_eq!(r.current_step(), 3);
        r.progressing = "ApplicationSet Rollout has completed".into();
        assert_eq!(r.current_step(), 0);
    }
}
