//! Per-cluster desired state: which applications target which cluster, with
//! which bundle; generation counters; change notification to open streams.
//!
//! A bundle is per application and shared by every cluster it targets. Each
//! cluster's desired state is its *index* (application → digest and
//! revision); the cluster's generation is bumped only when the content of
//! that index changes (an application added or removed, or a digest). A
//! commit that leaves every application's content alone moves only the
//! hub's revision of each application: nothing is sent to any cluster, and
//! a status reported for the same digest is shown at the new commit (as
//! Argo CD shows every application at the commit it compared against). The
//! revisions in an index are those of its last generation; the next one
//! carries the current ones.
//!
//! An application deleted from a cluster's index leaves a
//! [`PendingDeletion`] saying what happens to its objects (cascade with a
//! propagation, or orphan), sent with the index until the agent
//! acknowledges a generation at or after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::deletion::{PendingDeletion, Propagation};
use crate::model::{self, Application};
use crate::store::{AppRecord, ClusterRecord, Store, StoreError};
use flotilla_proto as pb;

/// One application in a cluster's index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexEntry {
    /// Its bundle's content digest.
    pub digest: String,
    /// The commit the hub compared it against (may be newer than the
    /// bundle's own revision when the content did not change).
    pub revision: String,
}

/// A cluster's index: application → entry.
pub type Index = BTreeMap<String, IndexEntry>;

/// Whether two indexes hold the same applications at the same digests (the
/// revisions may differ: a new revision of the same content is not sent).
fn same_content(a: &Index, b: &Index) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((an, ae), (bn, be))| an == bn && ae.digest == be.digest)
}

fn index_of(rec: &ClusterRecord) -> Index {
    rec.desired_index
        .iter()
        .map(|(name, digest)| {
            let revision = rec.desired_revisions.get(name).cloned().unwrap_or_default();
            (
                name.clone(),
                IndexEntry {
                    digest: digest.clone(),
                    revision,
                },
            )
        })
        .collect()
}

/// Name → digest, as the store, the stream and older agents know an index.
pub fn digests(index: &Index) -> BTreeMap<String, String> {
    index
        .iter()
        .map(|(name, e)| (name.clone(), e.digest.clone()))
        .collect()
}

/// What an open stream of a cluster is told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterSignal {
    pub generation: u64,
    /// The cluster was removed: close the stream.
    pub revoked: bool,
}

/// Live connection facts (not persisted beyond last_seen/agent_version).
#[derive(Clone, Debug, Default)]
struct Link {
    streams: usize,
}

#[derive(Default)]
struct State {
    bundles: HashMap<String, Arc<pb::AppBundle>>,
    /// Application → the commit its current bundle stands for: the commit
    /// of the last render, also when the content (and so the bundle) did
    /// not change. Moves only with `set_bundles`, so an index never names a
    /// commit whose content is not in its bundle yet.
    revisions: HashMap<String, String>,
    /// cluster → (generation, index), mirrored in the store.
    desired: HashMap<String, (u64, Index)>,
    /// cluster → deleted application → what happens to its objects; until
    /// the agent acknowledges, mirrored in the store.
    deletions: HashMap<String, BTreeMap<String, PendingDeletion>>,
    /// Applications being deleted, with the propagation their clusters are
    /// told. Set before the application leaves the store, consumed by the
    /// first recomputation that no longer sees it.
    deleting: HashMap<String, Propagation>,
    signals: HashMap<String, watch::Sender<ClusterSignal>>,
    links: HashMap<String, Link>,
    /// cluster → when and in which trace its current generation was computed.
    origins: HashMap<String, crate::fleet_origin::Origin>,
    /// cluster → application → why its bundle was not sent to the agent
    /// (an agent too old for chunked bundles); set by the agent's stream.
    withheld: HashMap<String, BTreeMap<String, String>>,
    /// application → clusters whose index holds it (the reverse of
    /// `desired`), so a change to one application finds its clusters
    /// without a scan of the fleet.
    app_clusters: HashMap<String, BTreeSet<String>>,
    /// How many times a cluster's index gained or lost an application
    /// ([`Fleet::membership_changes`]).
    membership_changes: u64,
}

impl State {
    /// Sets a cluster's generation and index, keeping `app_clusters` in step.
    fn set_desired(&mut self, cluster: &str, generation: u64, index: Index) {
        let same_apps = self
            .desired
            .get(cluster)
            .is_some_and(|(_, old)| old.len() == index.len() && old.keys().eq(index.keys()));
        self.drop_index(cluster);
        if !same_apps {
            self.membership_changes += 1;
        }
        for app in index.keys() {
            self.app_clusters
                .entry(app.clone())
                .or_default()
                .insert(cluster.to_owned());
        }
        self.desired.insert(cluster.to_owned(), (generation, index));
    }

    /// Drops a cluster's index, keeping `app_clusters` in step.
    fn forget_desired(&mut self, cluster: &str) {
        if self.drop_index(cluster) {
            self.membership_changes += 1;
        }
    }

    /// [`State::forget_desired`] without counting it; whether there was an
    /// index.
    fn drop_index(&mut self, cluster: &str) -> bool {
        if let Some((_, old)) = self.desired.remove(cluster) {
            for app in old.keys() {
                if let Some(set) = self.app_clusters.get_mut(app) {
                    set.remove(cluster);
                    if set.is_empty() {
                        self.app_clusters.remove(app);
                    }
                }
            }
            true
        } else {
            false
        }
    }
}

/// The fleet's desired state, shared by the Git loop, the APIs and every
/// agent stream.
pub struct Fleet {
    store: Store,
    state: Mutex<State>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

/// sha256 over a bundle's canonical content: manifests, policy, namespace,
/// ignoreDifferences and render error. The revision is deliberately left out:
/// a commit that does not change an application's content does not make its
/// clusters re-apply it. Shared with the agent, which checks every bundle it
/// assembles from chunks against it.
pub fn bundle_digest(b: &pb::AppBundle) -> String {
    pb::wire::bundle_digest(b)
}

/// The wire form of an application's sync policy.
pub fn sync_policy(app: &Application) -> pb::SyncPolicy {
    let Some(p) = &app.spec.sync_policy else {
        return pb::SyncPolicy::default();
    };
    pb::SyncPolicy {
        automated: p.automated.is_some(),
        prune: p.automated.as_ref().is_some_and(|a| a.prune),
        self_heal: p.automated.as_ref().is_some_and(|a| a.self_heal),
        allow_empty: p.automated.as_ref().is_some_and(|a| a.allow_empty),
        sync_options: p.sync_options.clone(),
        retry: p.retry.as_ref().map(|r| pb::RetryPolicy {
            limit: r.limit,
            backoff_duration: r
                .backoff
                .as_ref()
                .and_then(|b| b.duration.clone())
                .unwrap_or_default(),
            backoff_factor: r
                .backoff
                .as_ref()
                .and_then(|b| b.factor)
                .unwrap_or_default(),
            backoff_max_duration: r
                .backoff
                .as_ref()
                .and_then(|b| b.max_duration.clone())
                .unwrap_or_default(),
        }),
    }
}

/// Builds an application's bundle from its render result at `revision`.
/// A render error yields a bundle with the error and no manifests.
pub fn build_bundle(
    app: &Application,
    revision: &str,
    rendered: Result<&[String], &str>,
) -> pb::AppBundle {
    let (manifests, render_error) = match rendered {
        Ok(m) => (m.to_vec(), String::new()),
        Err(e) => (Vec::new(), e.to_owned()),
    };
    // A multi-source application is described by its first source.
    let source = app
        .spec
        .effective_sources()
        .first()
        .unwrap_or(&app.spec.source);
    let mut b = pb::AppBundle {
        name: app.metadata.name.clone(),
        digest: String::new(),
        revision: revision.to_owned(),
        repo_url: source.repo_url.clone(),
        path: source.path.clone(),
        namespace: app.spec.destination.namespace.clone().unwrap_or_default(),
        policy: Some(sync_policy(app)),
        manifests,
        render_error,
        ignore_differences: app
            .spec
            .ignore_differences
            .iter()
            .map(|v| v.to_string())
            .collect(),
        project_rules: None,
    };
    b.digest = bundle_digest(&b);
    b
}

/// Whether `app` targets `cluster`: `destination.name` equals the cluster
/// name, or (without a name) `destination.server` equals its server URL.
pub fn targets(app: &Application, cluster: &ClusterRecord) -> bool {
    match (&app.spec.destination.name, &app.spec.destination.server) {
        (Some(n), _) if !n.is_empty() => *n == cluster.name,
        (_, Some(s)) => !cluster.server.is_empty() && *s == cluster.server,
        _ => false,
    }
}

/// The index a cluster should hold: every application targeting it that has
/// a bundle, with that bundle's digest and the application's current
/// revision (`revisions`, else the bundle's). Applications not rendered yet
/// are left out (nothing of theirs can be on the cluster yet).
pub fn plan_index<'a>(
    cluster: &ClusterRecord,
    apps: impl IntoIterator<Item = &'a AppRecord>,
    bundles: &HashMap<String, Arc<pb::AppBundle>>,
    revisions: &HashMap<String, String>,
) -> Index {
    plan_index_of(
        apps.into_iter()
            .filter(|a| targets(&a.app, cluster))
            .map(|a| &a.app.metadata.name),
        bundles,
        revisions,
    )
}

/// The index of a cluster targeted by the applications `apps` (names):
/// those with a bundle, as [`plan_index`] computes it.
pub fn plan_index_of<'a>(
    apps: impl IntoIterator<Item = &'a String>,
    bundles: &HashMap<String, Arc<pb::AppBundle>>,
    revisions: &HashMap<String, String>,
) -> Index {
    apps.into_iter()
        .filter_map(|name| {
            bundles.get(name).map(|b| {
                let revision = revisions
                    .get(name)
                    .filter(|r| !r.is_empty())
                    .unwrap_or(&b.revision)
                    .clone();
                (
                    name.clone(),
                    IndexEntry {
                        digest: b.digest.clone(),
                        revision,
                    },
                )
            })
        })
        .collect()
}

/// Bundles of `index` entries whose digest differs from what the agent
/// holds (`has`: name → digest), each with the revision of its entry.
pub fn changed_bundles(
    index: &Index,
    has: &HashMap<String, String>,
    bundles: &HashMap<String, Arc<pb::AppBundle>>,
) -> Vec<pb::AppBundle> {
    index
        .iter()
        .filter(|(name, e)| has.get(*name) != Some(&e.digest))
        .filter_map(|(name, e)| {
            bundles.get(name).map(|b| {
                let mut b = (**b).clone();
                b.revision.clone_from(&e.revision);
                b
            })
        })
        .collect()
}

/// Deletions from `old` to `new` (applications in `deleting` that left the
/// index), added to `pending`, which also drops what the agent has
/// acknowledged and what is back in the index. Returns whether `pending`
/// changed.
fn note_deletions(
    pending: &mut BTreeMap<String, PendingDeletion>,
    old: &Index,
    new: &Index,
    deleting: &HashMap<String, Propagation>,
    generation: u64,
    acked: u64,
) -> bool {
    let before = pending.clone();
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        if let Some(propagation) = deleting.get(name) {
            pending.insert(
                name.clone(),
                PendingDeletion {
                    generation,
                    propagation: *propagation,
                },
            );
        }
    }
    pending.retain(|name, d| !new.contains_key(name) && d.generation > acked);
    *pending != before
}

impl Fleet {
    /// Loads bundles and per-cluster generations from the store and brings
    /// every cluster's index up to date.
    ///
    /// # Errors
    /// The store cannot be read.
    pub fn load(store: Store) -> Result<Arc<Self>, StoreError> {
        let mut st = State::default();
        for b in store.bundles()? {
            st.bundles.insert(b.name.clone(), Arc::new(b));
        }
        let clusters = store.clusters()?;
        // What the indexes last named, else the last render's commit.
        for c in &clusters {
            for (name, revision) in &c.desired_revisions {
                st.revisions
                    .entry(name.clone())
                    .or_insert_with(|| revision.clone());
            }
        }
        for a in store.apps()? {
            if st.bundles.contains_key(&a.app.metadata.name) && !a.revision.is_empty() {
                st.revisions
                    .entry(a.app.metadata.name.clone())
                    .or_insert(a.revision);
            }
        }
        for c in clusters {
            st.set_desired(&c.name, c.generation, index_of(&c));
            if !c.deletions.is_empty() {
                st.deletions.insert(c.name.clone(), c.deletions.clone());
            }
            st.signals.insert(
                c.name.clone(),
                watch::channel(ClusterSignal {
                    generation: c.generation,
                    revoked: false,
                })
                .0,
            );
        }
        let fleet = Arc::new(Self {
            store,
            state: Mutex::new(st),
        });
        fleet.recompute()?;
        Ok(fleet)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store the fleet persists to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Recomputes every cluster's index; bumps and announces the generation
    /// of each cluster whose index changed. Returns the clusters bumped.
    /// Reads every cluster record once and no application record (the
    /// store's targeting index says which applications name a cluster).
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub fn recompute(&self) -> Result<Vec<String>, StoreError> {
        let clusters = self.store.clusters_shared()?;
        let bumped = self.recompute_among(clusters)?;
        // Every cluster has seen the applications that left the store
        // leave: their deletion decisions are done. (Only a recomputation of
        // every cluster may drop another caller's decision.)
        let deleting: Vec<String> = self.lock().deleting.keys().cloned().collect();
        let mut gone = Vec::new();
        for name in deleting {
            if !self.store.has_app(&name)? {
                gone.push(name);
            }
        }
        if !gone.is_empty() {
            let mut st = self.lock();
            for name in gone {
                st.deleting.remove(&name);
            }
        }
        Ok(bumped)
    }

    /// Recomputes the clusters `apps` affect: those whose index holds one
    /// of them and those their destination names now. The work grows with
    /// those clusters, not with the fleet. Returns the clusters bumped.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub fn recompute_apps(&self, apps: &[String]) -> Result<Vec<String>, StoreError> {
        let mut names: BTreeSet<String> = {
            let st = self.lock();
            apps.iter()
                .filter_map(|a| st.app_clusters.get(a))
                .flatten()
                .cloned()
                .collect()
        };
        for a in apps {
            if let Some(dest) = self.store.app_destination(a)? {
                names.extend(self.store.clusters_targeted(&dest)?);
            }
        }
        self.recompute_clusters(&names.into_iter().collect::<Vec<_>>())
    }

    /// Recomputes the index of each of `clusters` (names of clusters that
    /// are gone are skipped). Returns the clusters bumped.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub fn recompute_clusters(&self, clusters: &[String]) -> Result<Vec<String>, StoreError> {
        let mut records = Vec::with_capacity(clusters.len());
        for name in clusters {
            if let Some(c) = self.store.cluster_shared(name)? {
                records.push(c);
            }
        }
        self.recompute_among(records)
    }

    /// Recomputes each of `clusters` from its record, shared with the
    /// store's cache (not copied: a commit can recompute every cluster).
    fn recompute_among(
        &self,
        clusters: Vec<Arc<ClusterRecord>>,
    ) -> Result<Vec<String>, StoreError> {
        let mut candidates = Vec::with_capacity(clusters.len());
        for c in &clusters {
            candidates.push(self.store.apps_targeting(&c.name)?);
        }
        let trace_context = crate::telemetry::current_trace_context();
        let mut st = self.lock();
        let mut bumped = Vec::new();
        for (c, apps) in clusters.into_iter().zip(candidates) {
            let index = plan_index_of(
                apps.iter().map(|(name, _)| name),
                &st.bundles,
                &st.revisions,
            );
            let (generation, current) = st
                .desired
                .get(&c.name)
                .cloned()
                .unwrap_or_else(|| (c.generation, index_of(&c)));
            let mut pending = st.deletions.get(&c.name).cloned().unwrap_or_default();
            let deletions_changed = note_deletions(
                &mut pending,
                &current,
                &index,
                &st.deleting,
                generation + 1,
                c.acked_generation,
            );
            if same_content(&index, &current) && generation > 0 {
                if deletions_changed {
                    // Only acknowledged ones went: nothing new to send.
                    let kept = pending.clone();
                    self.store
                        .update_cluster(&c.name, move |r| r.deletions = kept)?;
                    st.deletions.insert(c.name.clone(), pending);
                }
                continue;
            }
            let generation = generation + 1;
            let (digests, revisions) = (
                digests(&index),
                index
                    .iter()
                    .map(|(n, e)| (n.clone(), e.revision.clone()))
                    .collect(),
            );
            let kept = pending.clone();
            self.store.update_cluster(&c.name, move |r| {
                r.generation = generation;
                r.desired_index = digests;
                r.desired_revisions = revisions;
                r.deletions = kept;
            })?;
            if !pending.is_empty() {
                tracing::info!(cluster = %c.name, generation, deletions = ?pending.keys().collect::<Vec<_>>(), "applications deleted from the desired state");
            }
            st.deletions.insert(c.name.clone(), pending);
            st.set_desired(&c.name, generation, index);
            st.origins.insert(
                c.name.clone(),
                crate::fleet_origin::Origin::new(generation, trace_context.clone()),
            );
            let signal = ClusterSignal {
                generation,
                revoked: false,
            };
            st.signals
                .entry(c.name.clone())
                .or_insert_with(|| watch::channel(signal).0)
                .send_replace(signal);
            tracing::info!(cluster = %c.name, generation, "desired state changed");
            bumped.push(c.name.clone());
        }
        drop(st);
        if !bumped.is_empty() {
            self.store.flush()?;
        }
        Ok(bumped)
    }

    /// Replaces an application's bundle (after a render) and updates the
    /// clusters it targets.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn set_bundle(&self, bundle: pb::AppBundle) -> Result<(), StoreError> {
        self.set_bundles(vec![bundle])
    }

    /// Moves applications whose content did not change to a new commit
    /// (name, commit): as [`Fleet::set_bundles`] does for a bundle of the
    /// same digest, only the revision the clusters' indexes carry moves;
    /// nothing is recomputed or sent. An application without a bundle is
    /// left alone.
    pub fn move_revisions(&self, moves: &[(String, String)]) {
        let mut st = self.lock();
        for (name, commit) in moves {
            if st.bundles.contains_key(name) && st.revisions.get(name) != Some(commit) {
                st.revisions.insert(name.clone(), commit.clone());
            }
        }
    }

    /// Replaces several bundles and updates the clusters once.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn set_bundles(&self, bundles: Vec<pb::AppBundle>) -> Result<(), StoreError> {
        // Each bundle with the commit it stands for (the application's
        // record holds it; the bundle passed back after a failed render
        // keeps the revision of its content, and so does the record) and
        // whether its content is new.
        let mut planned = Vec::with_capacity(bundles.len());
        for bundle in bundles {
            let revision = self
                .store
                .app_shared(&bundle.name)?
                .map(|r| r.revision.clone())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| bundle.revision.clone());
            planned.push((bundle, revision));
        }
        let news: Vec<bool> = {
            let st = self.lock();
            // Same content (digest) from the same source: the bundle stays
            // as it is (nothing is sent or applied again); only the
            // revision in the index moves.
            planned
                .iter()
                .map(|(bundle, _)| {
                    !st.bundles.get(&bundle.name).is_some_and(|b| {
                        b.digest == bundle.digest
                            && b.repo_url == bundle.repo_url
                            && b.path == bundle.path
                    })
                })
                .collect()
        };
        // Written, in one batch, before any revision moves: until the new
        // content is in place, the old bundle keeps the old revision, so a
        // status the agent reported for the old content is never shown at
        // the new commit (writing large bundles takes a while).
        self.store.put_bundles(
            planned
                .iter()
                .zip(&news)
                .filter(|(_, new)| **new)
                .map(|((bundle, _), _)| bundle),
        )?;
        let mut changed = Vec::new();
        let mut st = self.lock();
        for ((bundle, revision), new) in planned.into_iter().zip(news) {
            let name = bundle.name.clone();
            if st.revisions.get(&name) != Some(&revision) {
                // Only the revision: no cluster's content changes, so no
                // cluster is recomputed (see `same_content`).
                st.revisions.insert(name.clone(), revision);
            }
            if new {
                st.bundles.insert(name.clone(), Arc::new(bundle));
                changed.push(name);
            }
        }
        drop(st);
        if !changed.is_empty() {
            changed.dedup();
            self.recompute_apps(&changed)?;
        }
        Ok(())
    }

    /// The current bundle of an application.
    pub fn bundle(&self, app: &str) -> Option<Arc<pb::AppBundle>> {
        self.lock().bundles.get(app).cloned()
    }

    /// Removes an application everywhere because its declaration went away
    /// (a repository's apps path, an app of apps): its finalizers decide
    /// what happens to its objects ([`crate::deletion::from_finalizers`]).
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn remove_app(&self, name: &str) -> Result<bool, StoreError> {
        let Some(rec) = self.store.app_shared(name)? else {
            return Ok(false);
        };
        let propagation = crate::deletion::from_finalizers(&rec.app);
        Ok(self.remove_app_with(name, propagation)?.is_some())
    }

    /// Removes an application everywhere; every cluster that had it is
    /// told `propagation` with its next desired state. Returns those
    /// clusters, `None` when there was no such application.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn remove_app_with(
        &self,
        name: &str,
        propagation: Propagation,
    ) -> Result<Option<Vec<String>>, StoreError> {
        if self.store.app_shared(name)?.is_none() {
            return Ok(None);
        }
        let clusters: Vec<String> = {
            let mut st = self.lock();
            // Before it leaves the store: any recomputation that no longer
            // sees it must find the decision.
            st.deleting.insert(name.to_owned(), propagation);
            st.app_clusters
                .get(name)
                .into_iter()
                .flatten()
                .cloned()
                .collect()
        };
        let existed = self.store.remove_app(name)?;
        {
            let mut st = self.lock();
            st.bundles.remove(name);
            st.revisions.remove(name);
        }
        self.recompute_apps(&[name.to_owned()])?;
        // Every cluster has seen it leave now; an application created
        // again under this name must not inherit the decision.
        self.lock().deleting.remove(name);
        self.store.flush()?;
        tracing::info!(app = %name, propagation = %propagation, clusters = ?clusters, "application removed");
        Ok(existed.then_some(clusters))
    }

    /// Creates or replaces a cluster record and computes its desired state.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn put_cluster(&self, rec: ClusterRecord) -> Result<(), StoreError> {
        {
            let mut st = self.lock();
            let signal = ClusterSignal {
                generation: rec.generation,
                revoked: false,
            };
            st.set_desired(&rec.name, rec.generation, index_of(&rec));
            st.signals
                .insert(rec.name.clone(), watch::channel(signal).0);
        }
        self.store.put_cluster(&rec)?;
        // Only this cluster's index can change.
        self.recompute_clusters(std::slice::from_ref(&rec.name))?;
        self.store.flush()?;
        Ok(())
    }

    /// Removes a cluster: its open streams are told to close and its record
    /// (with the certificate serial) is gone, so later connections fail.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn remove_cluster(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.store.remove_cluster(name)?;
        self.store.flush()?;
        let mut st = self.lock();
        st.forget_desired(name);
        st.deletions.remove(name);
        st.links.remove(name);
        st.withheld.remove(name);
        if let Some(tx) = st.signals.remove(name) {
            tx.send_replace(ClusterSignal {
                generation: 0,
                revoked: true,
            });
        }
        Ok(existed)
    }

    /// Watches a cluster's generation (and revocation).
    pub fn subscribe(&self, cluster: &str) -> Option<watch::Receiver<ClusterSignal>> {
        self.lock()
            .signals
            .get(cluster)
            .map(watch::Sender::subscribe)
    }

    /// The cluster's current desired state, with bundles only for the
    /// applications whose digest differs from `has`, and the deletions the
    /// agent has not acknowledged. Also returns the index (name → digest).
    pub fn desired_state(
        &self,
        cluster: &str,
        has: &HashMap<String, String>,
    ) -> Option<(pb::DesiredState, BTreeMap<String, String>)> {
        let acked = self
            .store
            .cluster(cluster)
            .ok()
            .flatten()
            .map_or(0, |c| c.acked_generation);
        let st = self.lock();
        let (generation, index) = st.desired.get(cluster)?;
        let bundles = changed_bundles(index, has, &st.bundles);
        let deletions = st
            .deletions
            .get(cluster)
            .into_iter()
            .flatten()
            .filter(|(_, d)| d.generation > acked)
            .map(|(name, d)| pb::AppDeletion {
                name: name.clone(),
                propagation_policy: d.propagation.as_str().to_owned(),
            })
            .collect();
        Some((
            pb::DesiredState {
                generation: *generation,
                index: index
                    .iter()
                    .map(|(name, e)| pb::AppRef {
                        name: name.clone(),
                        digest: e.digest.clone(),
                        revision: e.revision.clone(),
                    })
                    .collect(),
                deletions,
                bundles,
                trace_context: st
                    .origins
                    .get(cluster)
                    .filter(|o| o.generation == *generation)
                    .map(|o| o.trace_context.clone())
                    .unwrap_or_default(),
                ..Default::default()
            },
            digests(index),
        ))
    }

    /// Time since `generation` of `cluster` was computed, the first time it
    /// is asked for (so a resend after a reconnect is not counted as lag).
    pub fn take_send_lag(&self, cluster: &str, generation: u64) -> Option<std::time::Duration> {
        self.lock()
            .origins
            .get_mut(cluster)
            .and_then(|o| o.take_lag(generation))
    }

    /// Records that a stream of `cluster` opened.
    pub fn link_opened(&self, cluster: &str) {
        self.lock()
            .links
            .entry(cluster.to_owned())
            .or_default()
            .streams += 1;
        // Connected is shown with the cluster's record.
        self.store.changed(crate::store::ChangeKind::Clusters);
    }

    /// Records that a stream of `cluster` closed.
    pub fn link_closed(&self, cluster: &str) {
        let mut st = self.lock();
        if let Some(l) = st.links.get_mut(cluster) {
            l.streams = l.streams.saturating_sub(1);
        }
        drop(st);
        self.store.changed(crate::store::ChangeKind::Clusters);
    }

    /// How many times any cluster's index gained or lost an application
    /// (a new generation that only changes digests does not count): what
    /// is computed from which applications each cluster runs is computed
    /// again only when this moved.
    pub fn membership_changes(&self) -> u64 {
        self.lock().membership_changes
    }

    /// Calls `f` with a test of whether a cluster's current index holds an
    /// application, under one lock of the fleet for all the calls.
    pub fn with_index_holds<R>(&self, f: impl FnOnce(&dyn Fn(&str, &str) -> bool) -> R) -> R {
        let state = self.lock();
        let holds = |cluster: &str, app: &str| {
            state
                .desired
                .get(cluster)
                .is_some_and(|(_, index)| index.contains_key(app))
        };
        f(&holds)
    }

    /// Whether `cluster`'s current index holds application `app`.
    pub fn index_holds(&self, cluster: &str, app: &str) -> bool {
        self.lock()
            .desired
            .get(cluster)
            .is_some_and(|(_, index)| index.contains_key(app))
    }

    /// Whether `cluster` has an open stream.
    pub fn is_connected(&self, cluster: &str) -> bool {
        self.lock()
            .links
            .get(cluster)
            .is_some_and(|l| l.streams > 0)
    }

    /// Revision the hub wants for `app`: the commit of its last render
    /// (newer than its bundle's when the content did not change).
    pub fn desired_revision(&self, app: &str) -> String {
        self.desired_of(app).1
    }

    /// An application's current bundle and the commit it stands for, read
    /// together: a status for the bundle's digest is current at that commit.
    pub fn desired_of(&self, app: &str) -> (Option<Arc<pb::AppBundle>>, String) {
        let st = self.lock();
        let bundle = st.bundles.get(app).cloned();
        let revision = st
            .revisions
            .get(app)
            .filter(|r| !r.is_empty())
            .cloned()
            .or_else(|| bundle.as_ref().map(|b| b.revision.clone()))
            .unwrap_or_default();
        (bundle, revision)
    }

    /// Records which bundles the last desired state sent to `cluster` left
    /// out, and why (replacing what the previous one left out).
    pub fn set_withheld(&self, cluster: &str, withheld: BTreeMap<String, String>) {
        let mut st = self.lock();
        if withheld.is_empty() {
            st.withheld.remove(cluster);
        } else {
            st.withheld.insert(cluster.to_owned(), withheld);
        }
    }

    /// Why the bundle of `app` was not sent to `cluster`, if it was not.
    pub fn withheld(&self, cluster: &str, app: &str) -> Option<String> {
        self.lock()
            .withheld
            .get(cluster)
            .and_then(|w| w.get(app))
            .cloned()
    }

    /// Applications deleted from `cluster` that its agent has not
    /// acknowledged yet (name → propagation).
    pub fn pending_deletions(&self, cluster: &str) -> BTreeMap<String, Propagation> {
        self.lock()
            .deletions
            .get(cluster)
            .into_iter()
            .flatten()
            .map(|(name, d)| (name.clone(), d.propagation))
            .collect()
    }
}

/// The status of `rec` on one cluster as users see it: when the hub cannot
/// fetch or render the application's source (`rec.error`), what the agent
/// reports describes an older desired state, so the sync status is
/// `Unknown` and the message says why (Argo CD's ComparisonError). Health
/// stays what the agent observes, and nothing is applied or deleted.
pub fn comparison_status(rec: &AppRecord, mut status: pb::AppStatus) -> pb::AppStatus {
    if !rec.error.is_empty() && status.sync != pb::SyncStatus::Unknown as i32 {
        status.sync = pb::SyncStatus::Unknown as i32;
        status.message = format!("ComparisonError: {}", rec.error);
    }
    status
}

/// A status reported for the content the application still has (the same
/// digest as its current bundle) stands for the current revision too: a
/// commit that leaves the content alone is never sent to the agents, which
/// keep reporting the commit of their last generation; the hub shows the
/// commit it compared against. A status for other content (an older
/// digest) keeps the commit the agent reports.
pub fn at_current_revision(
    mut status: pb::AppStatus,
    bundle: Option<&pb::AppBundle>,
    revision: &str,
) -> pb::AppStatus {
    if !revision.is_empty() && bundle.is_some_and(|b| b.digest == status.digest) {
        status.revision = revision.to_owned();
    }
    status
}

/// Parses a single Application for the API (YAML or JSON).
///
/// # Errors
/// The text holds no Application, more than one, or an invalid one.
pub fn parse_single_application(text: &str, origin: &str) -> Result<Application, String> {
    let mut apps = model::parse_applications(text, origin).map_err(|e| e.to_string())?;
    match apps.len() {
        1 => {
            let app = apps.remove(0);
            for (i, src) in app.spec.effective_sources().iter().enumerate() {
                let field = if app.spec.has_multiple_sources() {
                    format!("spec.sources[{i}]")
                } else {
                    "spec.source".to_owned()
                };
                crate::render::check_app_path(&src.path).map_err(|e| {
                    format!("{origin}: Application {:?}: {field}.{e}", app.metadata.name)
                })?;
            }
            Ok(app)
        }
        0 => Err("no Application (apiVersion argoproj.io/v1alpha1, kind Application) found".into()),
        n => Err(format!("expected one Application, found {n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, dest: &str) -> AppRecord {
        let yaml = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: file:///r\n    path: {name}\n  destination:\n    name: {dest}\n    namespace: default\n  syncPolicy:\n    automated:\n      prune: true\n"
        );
        AppRecord {
            app: parse_single_application(&yaml, "t").unwrap().into(),
            origin: "api".into(),
            revision: String::new(),
            error: String::new(),
        }
    }

    fn manifests(n: u32) -> Vec<String> {
        vec![format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c"}},"data":{{"n":"{n}"}}}}"#
        )]
    }

    #[test]
    fn source_error_makes_sync_unknown_but_keeps_health() {
        let mut rec = app("web", "c1");
        let reported = pb::AppStatus {
            sync: pb::SyncStatus::Synced as i32,
            health: pb::HealthStatus::Healthy as i32,
            message: "ok".into(),
            ..Default::default()
        };
        assert_eq!(comparison_status(&rec, reported.clone()), reported);
        rec.error = "repository https://git.example/r.git: connection refused".into();
        let shown = comparison_status(&rec, reported);
        assert_eq!(shown.sync, pb::SyncStatus::Unknown as i32);
        assert_eq!(shown.health, pb::HealthStatus::Healthy as i32);
        assert!(
            shown.message.contains("connection refused"),
            "{}",
            shown.message
        );
    }

    #[test]
    fn api_refuses_a_path_outside_the_repository() {
        for path in ["../etc", "a/../../b", "/abs"] {
            let yaml = format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: esc\nspec:\n  source:\n    repoURL: file:///r\n    path: {path}\n  destination:\n    name: c1\n"
            );
            let err = parse_single_application(&yaml, "request").unwrap_err();
            assert!(
                err.contains("\"esc\"") && err.contains("spec.source.path"),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn digest_is_stable_and_ignores_revision() {
        let a = app("web", "c1");
        let b1 = build_bundle(&a.app, "aaa", Ok(&manifests(1)));
        let b2 = build_bundle(&a.app, "bbb", Ok(&manifests(1)));
        let b3 = build_bundle(&a.app, "bbb", Ok(&manifests(2)));
        let err = build_bundle(&a.app, "bbb", Err("x.yaml: invalid YAML at line 3"));
        assert_eq!(b1.digest, b2.digest);
        assert_ne!(b1.digest, b3.digest);
        assert_ne!(b1.digest, err.digest);
        assert!(err.manifests.is_empty());
        assert!(b1.digest.starts_with("sha256:") && b1.digest.len() == 7 + 64);
        // Pinned: the digest must not change between hub versions by accident.
        assert_eq!(bundle_digest(&b1), b1.digest);
    }

    #[test]
    fn only_changed_bundles_are_sent() {
        let a = app("web", "c1");
        let b = app("db", "c1");
        let mut bundles = HashMap::new();
        bundles.insert(
            "web".into(),
            Arc::new(build_bundle(&a.app, "r", Ok(&manifests(1)))),
        );
        bundles.insert(
            "db".into(),
            Arc::new(build_bundle(&b.app, "r", Ok(&manifests(1)))),
        );
        let cluster = ClusterRecord {
            name: "c1".into(),
            ..Default::default()
        };
        let other = ClusterRecord {
            name: "c2".into(),
            ..Default::default()
        };
        let mut revisions = HashMap::new();
        revisions.insert("db".to_owned(), "r2".to_owned());
        let index = plan_index(&cluster, &[a.clone(), b.clone()], &bundles, &revisions);
        assert_eq!(index.len(), 2);
        assert_eq!(index["web"].revision, "r");
        assert_eq!(index["db"].revision, "r2");
        assert!(plan_index(&other, &[a, b], &bundles, &revisions).is_empty());

        let mut has = HashMap::new();
        assert_eq!(changed_bundles(&index, &has, &bundles).len(), 2);
        has.insert("web".to_owned(), index["web"].digest.clone());
        has.insert("db".to_owned(), "sha256:old".to_owned());
        let sent = changed_bundles(&index, &has, &bundles);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].name, "db");
        // A bundle goes out with its entry's revision.
        assert_eq!(sent[0].revision, "r2");
    }

    #[test]
    fn deletions_are_kept_until_acknowledged() {
        let entry = |d: &str| IndexEntry {
            digest: d.into(),
            revision: "r".into(),
        };
        let old: Index = [
            ("web".to_owned(), entry("d1")),
            ("db".to_owned(), entry("d2")),
        ]
        .into();
        let new: Index = [("db".to_owned(), entry("d2"))].into();
        let mut deleting = HashMap::new();
        deleting.insert("web".to_owned(), Propagation::Background);
        let mut pending = BTreeMap::new();
        assert!(note_deletions(&mut pending, &old, &new, &deleting, 5, 4));
        assert_eq!(
            pending["web"],
            PendingDeletion {
                generation: 5,
                propagation: Propagation::Background
            }
        );
        // Not acknowledged yet: kept; acknowledged: dropped.
        assert!(!note_deletions(&mut pending, &new, &new, &deleting, 6, 4));
        assert!(note_deletions(&mut pending, &new, &new, &deleting, 6, 5));
        assert!(pending.is_empty());
        // Back in the index before the agent saw it: dropped.
        note_deletions(&mut pending, &old, &new, &deleting, 7, 4);
        assert!(note_deletions(&mut pending, &new, &old, &deleting, 8, 4));
        assert!(pending.is_empty());
        // An application that only stops targeting the cluster is not a
        // deletion (the agent's own rule applies).
        assert!(!note_deletions(
            &mut pending,
            &old,
            &new,
            &HashMap::new(),
            9,
            4
        ));
    }

    /// A reader never sees a commit with a bundle that is not its content:
    /// the hub shows a status reported for the old content at the new
    /// commit (Synced before the agent applied anything) otherwise.
    #[test]
    fn a_bundle_and_its_revision_are_read_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let web = app("web", "c1");
        store.put_app(&web).unwrap();
        let fleet = Arc::new(Fleet::load(store).unwrap());
        fleet
            .put_cluster(ClusterRecord {
                name: "c1".into(),
                ..Default::default()
            })
            .unwrap();
        // Large enough that writing the bundle takes a while.
        let big = |k: u32| {
            vec![format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c"}},"data":{{"n":"{k}","pad":"{}"}}}}"#,
                "x".repeat(2 << 20)
            )]
        };
        fleet
            .set_bundle(build_bundle(&web.app, "r0", Ok(&big(0))))
            .unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (fleet, done) = (fleet.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let (bundle, revision) = fleet.desired_of("web");
                    let bundle = bundle.expect("a bundle");
                    assert_eq!(
                        bundle.revision, revision,
                        "the bundle of {} shown at {revision}",
                        bundle.revision
                    );
                    reads += 1;
                }
                reads
            })
        };
        for k in 1..=12 {
            fleet
                .set_bundle(build_bundle(&web.app, &format!("r{k}"), Ok(&big(k))))
                .unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("the reader saw no mismatch");
        assert!(reads > 0);
        assert_eq!(fleet.desired_revision("web"), "r12");
    }

    #[tokio::test]
    async fn generation_bumps_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let web = app("web", "c1");
        store.put_app(&web).unwrap();
        let fleet = Fleet::load(store.clone()).unwrap();
        fleet
            .put_cluster(ClusterRecord {
                name: "c1".into(),
                ..Default::default()
            })
            .unwrap();
        fleet
            .put_cluster(ClusterRecord {
                name: "c2".into(),
                ..Default::default()
            })
            .unwrap();
        let g0 = store.cluster("c1").unwrap().unwrap().generation;
        let g2 = store.cluster("c2").unwrap().unwrap().generation;
        let mut rx = fleet.subscribe("c1").unwrap();
        rx.borrow_and_update();

        fleet
            .set_bundle(build_bundle(&web.app, "r1", Ok(&manifests(1))))
            .unwrap();
        let g1 = store.cluster("c1").unwrap().unwrap().generation;
        assert_eq!(g1, g0 + 1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().generation, g1);

        // The same content again (a pass that found nothing new): no bump.
        fleet
            .set_bundle(build_bundle(&web.app, "r1", Ok(&manifests(1))))
            .unwrap();
        assert_eq!(store.cluster("c1").unwrap().unwrap().generation, g1);
        assert!(!rx.has_changed().unwrap());

        // A new commit with the same content: no cluster gets a new
        // generation (nothing is sent); the hub's revision moves, and a
        // status for the same digest is shown at it.
        let digest = {
            let (ds, _) = fleet.desired_state("c1", &HashMap::new()).unwrap();
            ds.index[0].digest.clone()
        };
        fleet
            .set_bundle(build_bundle(&web.app, "r2", Ok(&manifests(1))))
            .unwrap();
        assert_eq!(store.cluster("c1").unwrap().unwrap().generation, g1);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(fleet.desired_revision("web"), "r2");
        assert_eq!(fleet.bundle("web").unwrap().revision, "r1");
        let has: HashMap<String, String> = [("web".to_owned(), digest.clone())].into();
        let (ds, _) = fleet.desired_state("c1", &has).unwrap();
        assert!(ds.bundles.is_empty());
        assert_eq!(ds.index[0].digest, digest);
        assert_eq!(ds.index[0].revision, "r1");
        let (bundle, revision) = fleet.desired_of("web");
        let reported = pb::AppStatus {
            name: "web".into(),
            digest: digest.clone(),
            revision: "r1".into(),
            ..Default::default()
        };
        let shown = at_current_revision(reported.clone(), bundle.as_deref(), &revision);
        assert_eq!(shown.revision, "r2");
        // A status for other content keeps the commit the agent reports.
        let older = pb::AppStatus {
            digest: "sha256:other".into(),
            ..reported
        };
        let shown = at_current_revision(older, bundle.as_deref(), &revision);
        assert_eq!(shown.revision, "r1");
        // c2 is not targeted: never bumped.
        assert_eq!(store.cluster("c2").unwrap().unwrap().generation, g2);

        // New content at a later commit: a new generation, carrying it.
        fleet
            .set_bundle(build_bundle(&web.app, "r3", Ok(&manifests(2))))
            .unwrap();
        let g1 = store.cluster("c1").unwrap().unwrap().generation;
        assert!(rx.has_changed().unwrap());
        let (ds, _) = fleet.desired_state("c1", &has).unwrap();
        assert_eq!(ds.bundles.len(), 1);
        assert_eq!(ds.index[0].revision, "r3");

        // The state survives a restart without a bump.
        drop(fleet);
        let fleet = Fleet::load(store.clone()).unwrap();
        assert_eq!(store.cluster("c1").unwrap().unwrap().generation, g1);
        let (ds, _) = fleet.desired_state("c1", &HashMap::new()).unwrap();
        assert_eq!(ds.generation, g1);
        assert_eq!(ds.bundles.len(), 1);
        assert_eq!(ds.index[0].revision, "r3");
        assert_eq!(ds.bundles[0].revision, "r3");

        // A deletion is sent with the index until it is acknowledged.
        fleet
            .remove_app_with("web", Propagation::Foreground)
            .unwrap()
            .unwrap();
        let (ds, _) = fleet.desired_state("c1", &HashMap::new()).unwrap();
        assert!(ds.index.is_empty());
        assert_eq!(
            ds.deletions,
            [pb::AppDeletion {
                name: "web".into(),
                propagation_policy: "foreground".into()
            }]
        );
        store
            .update_cluster("c1", |r| r.acked_generation = ds.generation)
            .unwrap();
        let (ds, _) = fleet.desired_state("c1", &HashMap::new()).unwrap();
        assert!(ds.deletions.is_empty());

        // Removing the cluster revokes its watchers.
        let mut rx = fleet.subscribe("c1").unwrap();
        fleet.remove_cluster("c1").unwrap();
        assert!(rx.borrow_and_update().revoked);
    }
}
