//! Per-cluster desired state: which applications target which cluster, with
//! which bundle; generation counters; change notification to open streams.
//!
//! A bundle is per application and shared by every cluster it targets. Each
//! cluster's desired state is its *index* (application → digest); the
//! cluster's generation is bumped only when that index changes, so a commit
//! that changes nothing for a cluster sends it nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::model::{self, Application};
use crate::store::{AppRecord, ClusterRecord, Store, StoreError};
use flotilla_proto as pb;

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
    /// cluster → (generation, index), mirrored in the store.
    desired: HashMap<String, (u64, BTreeMap<String, String>)>,
    signals: HashMap<String, watch::Sender<ClusterSignal>>,
    links: HashMap<String, Link>,
    /// cluster → when and in which trace its current generation was computed.
    origins: HashMap<String, crate::fleet_origin::Origin>,
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
/// clusters re-apply it.
pub fn bundle_digest(b: &pb::AppBundle) -> String {
    let mut h = Sha256::new();
    let mut field = |tag: &str, bytes: &[u8]| {
        h.update(tag.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field("namespace", b.namespace.as_bytes());
    field(
        "policy",
        &b.policy
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default(),
    );
    field("render_error", b.render_error.as_bytes());
    for m in &b.manifests {
        field("manifest", m.as_bytes());
    }
    for d in &b.ignore_differences {
        field("ignore", d.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
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
/// a bundle, with that bundle's digest. Applications not rendered yet are
/// left out (nothing of theirs can be on the cluster yet).
pub fn plan_index<'a>(
    cluster: &ClusterRecord,
    apps: impl IntoIterator<Item = &'a AppRecord>,
    bundles: &HashMap<String, Arc<pb::AppBundle>>,
) -> BTreeMap<String, String> {
    apps.into_iter()
        .filter(|a| targets(&a.app, cluster))
        .filter_map(|a| {
            let name = &a.app.metadata.name;
            bundles.get(name).map(|b| (name.clone(), b.digest.clone()))
        })
        .collect()
}

/// Bundles of `index` entries whose digest differs from what the agent
/// holds (`has`: name → digest).
pub fn changed_bundles(
    index: &BTreeMap<String, String>,
    has: &HashMap<String, String>,
    bundles: &HashMap<String, Arc<pb::AppBundle>>,
) -> Vec<pb::AppBundle> {
    index
        .iter()
        .filter(|(name, digest)| has.get(*name) != Some(*digest))
        .filter_map(|(name, _)| bundles.get(name).map(|b| (**b).clone()))
        .collect()
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
        for c in store.clusters()? {
            st.desired
                .insert(c.name.clone(), (c.generation, c.desired_index.clone()));
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
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub fn recompute(&self) -> Result<Vec<String>, StoreError> {
        let apps = self.store.apps()?;
        let clusters = self.store.clusters()?;
        // Group by destination so each cluster only looks at its candidates.
        let mut by_destination: HashMap<&str, Vec<&AppRecord>> = HashMap::new();
        for a in &apps {
            if let Some(key) = a.app.destination_key() {
                by_destination.entry(key).or_default().push(a);
            }
        }
        let none = Vec::new();
        let trace_context = crate::telemetry::current_trace_context();
        let mut st = self.lock();
        let mut bumped = Vec::new();
        for c in clusters {
            let by_name = by_destination.get(c.name.as_str()).unwrap_or(&none);
            let by_server = if c.server.is_empty() || c.server == c.name {
                &none
            } else {
                by_destination.get(c.server.as_str()).unwrap_or(&none)
            };
            let index = plan_index(&c, by_name.iter().chain(by_server).copied(), &st.bundles);
            let (generation, current) = st
                .desired
                .get(&c.name)
                .cloned()
                .unwrap_or((c.generation, c.desired_index.clone()));
            if index == current && generation > 0 {
                continue;
            }
            let generation = generation + 1;
            let idx = index.clone();
            self.store.update_cluster(&c.name, move |r| {
                r.generation = generation;
                r.desired_index = idx;
            })?;
            st.desired.insert(c.name.clone(), (generation, index));
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
            bumped.push(c.name);
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

    /// Replaces several bundles and updates the clusters once.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn set_bundles(&self, bundles: Vec<pb::AppBundle>) -> Result<(), StoreError> {
        let mut changed = false;
        for bundle in bundles {
            // Same content (digest) from the same source: keep the bundle as
            // it is, so its revision stays the commit the content was first
            // rendered at — what the agents applied and report.
            let unchanged = self.lock().bundles.get(&bundle.name).is_some_and(|b| {
                b.digest == bundle.digest && b.repo_url == bundle.repo_url && b.path == bundle.path
            });
            if unchanged {
                continue;
            }
            self.store.put_bundle(&bundle)?;
            self.lock()
                .bundles
                .insert(bundle.name.clone(), Arc::new(bundle));
            changed = true;
        }
        if changed {
            self.recompute()?;
        }
        Ok(())
    }

    /// The current bundle of an application.
    pub fn bundle(&self, app: &str) -> Option<Arc<pb::AppBundle>> {
        self.lock().bundles.get(app).cloned()
    }

    /// Removes an application everywhere.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn remove_app(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.store.remove_app(name)?;
        self.lock().bundles.remove(name);
        self.recompute()?;
        self.store.flush()?;
        Ok(existed)
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
            st.desired.insert(
                rec.name.clone(),
                (rec.generation, rec.desired_index.clone()),
            );
            st.signals
                .insert(rec.name.clone(), watch::channel(signal).0);
        }
        self.store.put_cluster(&rec)?;
        self.recompute()?;
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
        st.desired.remove(name);
        st.links.remove(name);
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
    /// applications whose digest differs from `has`. Also returns the index.
    pub fn desired_state(
        &self,
        cluster: &str,
        has: &HashMap<String, String>,
    ) -> Option<(pb::DesiredState, BTreeMap<String, String>)> {
        let st = self.lock();
        let (generation, index) = st.desired.get(cluster)?;
        let bundles = changed_bundles(index, has, &st.bundles);
        Some((
            pb::DesiredState {
                generation: *generation,
                index: index
                    .iter()
                    .map(|(name, digest)| pb::AppRef {
                        name: name.clone(),
                        digest: digest.clone(),
                    })
                    .collect(),
                bundles,
                trace_context: st
                    .origins
                    .get(cluster)
                    .filter(|o| o.generation == *generation)
                    .map(|o| o.trace_context.clone())
                    .unwrap_or_default(),
            },
            index.clone(),
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
    }

    /// Records that a stream of `cluster` closed.
    pub fn link_closed(&self, cluster: &str) {
        let mut st = self.lock();
        if let Some(l) = st.links.get_mut(cluster) {
            l.streams = l.streams.saturating_sub(1);
        }
    }

    /// Whether `cluster` has an open stream.
    pub fn is_connected(&self, cluster: &str) -> bool {
        self.lock()
            .links
            .get(cluster)
            .is_some_and(|l| l.streams > 0)
    }

    /// Revision the hub wants for `app` (the commit of its bundle).
    pub fn desired_revision(&self, app: &str) -> String {
        self.bundle(app)
            .map(|b| b.revision.clone())
            .unwrap_or_default()
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
            app: parse_single_application(&yaml, "t").unwrap(),
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
        let index = plan_index(&cluster, &[a.clone(), b.clone()], &bundles);
        assert_eq!(index.len(), 2);
        assert!(plan_index(&other, &[a, b], &bundles).is_empty());

        let mut has = HashMap::new();
        assert_eq!(changed_bundles(&index, &has, &bundles).len(), 2);
        has.insert("web".to_owned(), index["web"].clone());
        has.insert("db".to_owned(), "sha256:old".to_owned());
        let sent = changed_bundles(&index, &has, &bundles);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].name, "db");
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

        // A new commit with the same content: no bump.
        fleet
            .set_bundle(build_bundle(&web.app, "r2", Ok(&manifests(1))))
            .unwrap();
        assert_eq!(store.cluster("c1").unwrap().unwrap().generation, g1);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(fleet.desired_revision("web"), "r1");
        // c2 is not targeted: never bumped.
        assert_eq!(store.cluster("c2").unwrap().unwrap().generation, g2);

        // The state survives a restart without a bump.
        drop(fleet);
        let fleet = Fleet::load(store.clone()).unwrap();
        assert_eq!(store.cluster("c1").unwrap().unwrap().generation, g1);
        let (ds, _) = fleet.desired_state("c1", &HashMap::new()).unwrap();
        assert_eq!(ds.generation, g1);
        assert_eq!(ds.bundles.len(), 1);

        // Removing the cluster revokes its watchers.
        let mut rx = fleet.subscribe("c1").unwrap();
        fleet.remove_cluster("c1").unwrap();
        assert!(rx.borrow_and_update().revoked);
    }
}
