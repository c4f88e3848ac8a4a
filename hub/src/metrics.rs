//! Prometheus metrics of the hub, served in the text format on
//! `--metrics-listen` (see [`crate::health_http`]).
//!
//! Event metrics (durations, errors) live in one process-wide set recorded
//! where the events happen; state metrics (applications, clusters) are read
//! from the store and the fleet at scrape time. Statuses come from the
//! store's in-memory summary ([`Store::for_each_status_summary`]), so a
//! scrape reads the cluster and application records once and no status
//! record at all.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::fleet::Fleet;
use crate::store::Store;

/// Label of a repository (URL with credentials removed).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepoLabels {
    pub repo: String,
}

/// Label of an ApplicationSet.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppSetLabels {
    pub appset: String,
}

/// Labels of `flotilla_hub_appset_rollout_applications`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppSetStatusLabels {
    pub appset: String,
    pub status: String,
}

/// Labels of `flotilla_hub_rollout_wave_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaveLabels {
    pub appset: String,
    /// 1-based wave number.
    pub wave: String,
}

/// Labels of `flotilla_applications`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub sync_status: String,
    pub health_status: String,
}

/// `flotilla_app_info`: one series per application and cluster, as Argo
/// CD's `argocd_app_info` has one per application, with the labels name,
/// project, cluster, sync_status, health_status and repo (the application's
/// first source repository, credentials removed). Encoded by the hub itself
/// ([`HubMetrics::refresh`]), not through the registry: its text is kept
/// between scrapes and made again only when a status, an application or a
/// cluster's applications changed.
const APP_INFO_HELP: &str = "Information about each application on each cluster: always 1, with its project, repository and last reported sync and health status as labels";

/// Labels of the connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `grpc` (agent link and API), `metrics` or `webhook`.
    pub listener: String,
    /// Why it was refused, the phase that timed out, or the class.
    pub reason: String,
}

/// Labels of the open connections gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionClassLabels {
    pub listener: String,
    /// `pending` (in the TLS handshake), `authenticated` (client
    /// certificate) or `unauthenticated`.
    pub class: String,
}

/// Label of refused enrollments.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Label of the desired-state wire metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WireLabels {
    /// `desired` (a desired-state part) or `chunk` (a bundle chunk).
    pub kind: String,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ]
    .into_iter()
}

fn histogram() -> Histogram {
    Histogram::new(seconds_buckets())
}

/// The hub's metrics.
pub struct HubMetrics {
    registry: Registry,
    applications: Family<StatusLabels, Gauge>,
    clusters: Gauge,
    clusters_connected: Gauge,
    stream_send_lag: Histogram,
    render_duration: Histogram,
    git_fetch_duration: Family<RepoLabels, Histogram, fn() -> Histogram>,
    git_fetch_errors: Family<RepoLabels, Counter>,
    connections_rejected: Family<ConnectionLabels, Counter>,
    connection_timeouts: Family<ConnectionLabels, Counter>,
    connections: Family<ConnectionClassLabels, Gauge>,
    enrollments_refused: Family<ReasonLabels, Counter>,
    store_writable: Gauge,
    store_reopens: Counter,
    wire_messages: Family<WireLabels, Counter>,
    wire_bytes: Family<WireLabels, Counter>,
    bundles_withheld: Counter,
    revisions_moved: Counter,
    open_files_limit: Gauge,
    store_cache_bytes: Gauge,
    repository_secret_errors: Gauge,
    rollout_step: Family<AppSetLabels, Gauge>,
    apps_blocked_by_window: Gauge,
    render_cache_entries: Gauge,
    rollout_applications: Family<AppSetStatusLabels, Gauge>,
    rollout_syncs: Counter,
    waves_wave: Family<AppSetLabels, Gauge>,
    waves_clusters: Family<AppSetStatusLabels, Gauge>,
    waves_seconds: Family<WaveLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// One scrape at a time: a refresh clears and refills the state
    /// families, which a concurrent scrape must not see half done.
    scrape: std::sync::Mutex<()>,
    /// What a scrape needs of each application, read again only when an
    /// application was written or removed, or its render error changed
    /// (`Store::app_changes`, `Store::app_error_changes`).
    app_meta: std::sync::Mutex<Option<((u64, u64), AppMetas)>>,
    /// The per application and cluster state, as last made, and what it
    /// was made from.
    pairs: std::sync::Mutex<Option<Pairs>>,
    /// How many times the per-pair state was made ([`HubMetrics::pair_makes`]).
    pair_makes: std::sync::atomic::AtomicU64,
}

/// What `flotilla_app_info` and `flotilla_applications` were last made
/// from: the store's status, application and render error change counts
/// and the fleet's membership change count. While all four hold, a scrape
/// makes neither again.
type PairsKey = (u64, u64, u64, u64);

/// The state made from every (application, cluster) pair.
struct Pairs {
    key: PairsKey,
    /// `flotilla_app_info`'s lines, HELP and TYPE first.
    app_info: std::sync::Arc<String>,
}

/// Every application's [`AppMeta`], shared by the scrapes that use it.
type AppMetas = std::sync::Arc<HashMap<String, AppMeta>>;

/// What the state gauges need of an application.
#[derive(Debug)]
struct AppMeta {
    project: String,
    repo: String,
    comparison_error: bool,
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubMetrics").finish_non_exhaustive()
    }
}

impl HubMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        let applications = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "applications",
            "Applications per cluster by sync and health status, as last reported by the agents",
            applications.clone(),
        );
        let clusters = Gauge::default();
        registry.register("clusters", "Registered clusters", clusters.clone());
        let clusters_connected = Gauge::default();
        registry.register(
            "clusters_connected",
            "Clusters with an open agent stream",
            clusters_connected.clone(),
        );
        let stream_send_lag = histogram();
        registry.register_with_unit(
            "stream_send_lag",
            "Time from a cluster's desired-state generation being computed to it being sent on the agent stream",
            prometheus_client::registry::Unit::Seconds,
            stream_send_lag.clone(),
        );
        let render_duration = histogram();
        registry.register_with_unit(
            "render_duration",
            "Time to render one application source (plain YAML, Kustomize or Helm)",
            prometheus_client::registry::Unit::Seconds,
            render_duration.clone(),
        );
        let git_fetch_duration =
            Family::<RepoLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register_with_unit(
            "git_fetch_duration",
            "Time to fetch a Git repository",
            prometheus_client::registry::Unit::Seconds,
            git_fetch_duration.clone(),
        );
        let git_fetch_errors = Family::<RepoLabels, Counter>::default();
        registry.register(
            "git_fetch_errors",
            "Failed Git fetches",
            git_fetch_errors.clone(),
        );
        let connections_rejected = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "hub_connections_rejected",
            "Connections refused or dropped by a connection cap, by listener and reason",
            connections_rejected.clone(),
        );
        let connection_timeouts = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "hub_connection_timeouts",
            "Connections closed by a deadline (handshake, first request, idle, request), by listener",
            connection_timeouts.clone(),
        );
        let connections = Family::<ConnectionClassLabels, Gauge>::default();
        registry.register(
            "hub_connections",
            "Open connections by listener and class",
            connections.clone(),
        );
        let enrollments_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "hub_enrollments_refused",
            "Enrollment requests refused by a limit (too large, too slow, too many in flight, too many failures)",
            enrollments_refused.clone(),
        );
        let store_writable = Gauge::default();
        registry.register(
            "hub_store_writable",
            "1 while the store accepts writes, 0 while it is being recovered after an IO error",
            store_writable.clone(),
        );
        let store_reopens = Counter::default();
        registry.register(
            "hub_store_reopens",
            "Times the store was reopened after an IO error (a full disk)",
            store_reopens.clone(),
        );
        let wire_messages = Family::<WireLabels, Counter>::default();
        registry.register(
            "hub_desired_state_messages",
            "Messages sent on agent streams carrying desired state, by kind (desired: a desired-state part; chunk: a bundle chunk)",
            wire_messages.clone(),
        );
        let wire_bytes = Family::<WireLabels, Counter>::default();
        registry.register_with_unit(
            "hub_desired_state",
            "Encoded bytes of those messages, by kind",
            prometheus_client::registry::Unit::Bytes,
            wire_bytes.clone(),
        );
        let bundles_withheld = Counter::default();
        registry.register(
            "hub_bundles_withheld",
            "Bundles not sent because the agent is too old to receive them in chunks",
            bundles_withheld.clone(),
        );
        let revisions_moved = Counter::default();
        registry.register(
            "hub_revisions_moved",
            "Applications moved to a new commit without a render of their own, because the commit renders the same objects for them",
            revisions_moved.clone(),
        );
        let open_files_limit = Gauge::default();
        registry.register(
            "hub_open_files_limit",
            "The open files limit in force (raised to the hard limit at start); each connected cluster holds one descriptor",
            open_files_limit.clone(),
        );
        let store_cache_bytes = Gauge::default();
        registry.register(
            "hub_store_cache_capacity_bytes",
            "Bound of the store's page cache (--store-cache-mib)",
            store_cache_bytes.clone(),
        );
        let repository_secret_errors = Gauge::default();
        registry.register(
            "hub_repository_secret_errors",
            "Repository and repo-creds Secrets the last read of the declared repositories directory could not use, and removed ones whose repository applications keep (the log names each file and cause)",
            repository_secret_errors.clone(),
        );
        let apps_blocked_by_window = Gauge::default();
        registry.register(
            "hub_applications_blocked_by_sync_window",
            "Applications whose automated sync a project's sync window blocks now (on at least one of their clusters)",
            apps_blocked_by_window.clone(),
        );
        let render_cache_entries = Gauge::default();
        registry.register(
            "hub_render_cache_entries",
            "Rendered (repository, commit, path, options) results the Git loop keeps: those some application's last render or move used, and renders still running",
            render_cache_entries.clone(),
        );
        let rollout_step = Family::<AppSetLabels, Gauge>::default();
        registry.register(
            "hub_appset_rollout_step",
            "RollingSync: the step an ApplicationSet is rolling out (1-based), 0 when its rollout is complete",
            rollout_step.clone(),
        );
        let rollout_applications = Family::<AppSetStatusLabels, Gauge>::default();
        registry.register(
            "hub_appset_rollout_applications",
            "RollingSync: generated applications by applicationStatus (Waiting, Pending, Progressing, Healthy)",
            rollout_applications.clone(),
        );
        let rollout_syncs = Counter::default();
        registry.register(
            "hub_appset_rollout_syncs",
            "RollingSync: syncs sent to clusters by ApplicationSets stepping through their rollouts",
            rollout_syncs.clone(),
        );
        let waves_wave = Family::<AppSetLabels, Gauge>::default();
        registry.register(
            "hub_rollout_wave",
            "Waves (flotillaWaves): the wave an ApplicationSet is rolling out (1-based), the number of waves plus one when complete",
            waves_wave.clone(),
        );
        let waves_clusters = Family::<AppSetStatusLabels, Gauge>::default();
        registry.register(
            "hub_rollout_clusters",
            "Waves (flotillaWaves): clusters of a rollout by state (updated, updating, pending, failed)",
            waves_clusters.clone(),
        );
        let waves_seconds =
            Family::<WaveLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "hub_rollout_wave_seconds",
            "Waves (flotillaWaves): seconds each finished wave of the current rollout took from its start to every cluster Healthy",
            waves_seconds.clone(),
        );
        Self {
            registry,
            waves_wave,
            waves_clusters,
            waves_seconds,
            rollout_step,
            apps_blocked_by_window,
            render_cache_entries,
            rollout_applications,
            rollout_syncs,
            open_files_limit,
            store_cache_bytes,
            repository_secret_errors,
            wire_messages,
            wire_bytes,
            bundles_withheld,
            revisions_moved,
            connections_rejected,
            connection_timeouts,
            connections,
            enrollments_refused,
            store_writable,
            store_reopens,
            scrape: std::sync::Mutex::new(()),
            app_meta: std::sync::Mutex::new(None),
            applications,
            pairs: std::sync::Mutex::new(None),
            pair_makes: std::sync::atomic::AtomicU64::new(0),
            clusters,
            clusters_connected,
            stream_send_lag,
            render_duration,
            git_fetch_duration,
            git_fetch_errors,
        }
    }

    /// Records one Git fetch of `url` (redacted here).
    pub fn git_fetch(&self, url: &str, took: Duration, ok: bool) {
        let labels = RepoLabels {
            repo: crate::source::redact_url(url),
        };
        self.git_fetch_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.git_fetch_errors.get_or_create(&labels).inc();
        } else {
            // Make the series exist at zero so alerts on rate() work.
            let _ = self.git_fetch_errors.get_or_create(&labels);
        }
    }

    /// Counts a connection refused by a cap of `listener`.
    pub fn connection_rejected(&self, listener: &str, reason: &str) {
        self.connections_rejected
            .get_or_create(&ConnectionLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a connection closed by a deadline of `listener`.
    pub fn connection_timed_out(&self, listener: &str, phase: &str) {
        self.connection_timeouts
            .get_or_create(&ConnectionLabels {
                listener: listener.to_owned(),
                reason: phase.to_owned(),
            })
            .inc();
    }

    /// Sets the number of open connections of a class.
    pub fn connections_open(&self, listener: &str, class: &str, n: usize) {
        self.connections
            .get_or_create(&ConnectionClassLabels {
                listener: listener.to_owned(),
                class: class.to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts an enrollment refused by a limit.
    pub fn enrollment_refused(&self, reason: &str) {
        self.enrollments_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Reads the store's health and reopen count (the store does not
    /// report to metrics: it is read at each scrape).
    fn store_state(&self, store: &Store) {
        let writable = matches!(store.health(), crate::store::StoreHealth::Writable);
        self.store_writable.set(i64::from(writable));
        let reopens = store.reopens();
        let counted = self.store_reopens.get();
        if reopens > counted {
            self.store_reopens.inc_by(reopens - counted);
        }
    }

    /// Records one render.
    pub fn render(&self, took: Duration) {
        self.render_duration.observe(took.as_secs_f64());
    }

    /// Records the lag of one desired-state send.
    pub fn send_lag(&self, lag: Duration) {
        self.stream_send_lag.observe(lag.as_secs_f64());
    }

    /// Counts one message sent on an agent stream (`kind`: `desired` or
    /// `chunk`) of `bytes` encoded bytes.
    pub fn wire_sent(&self, kind: &str, bytes: usize) {
        let labels = WireLabels {
            kind: kind.to_owned(),
        };
        self.wire_messages.get_or_create(&labels).inc();
        self.wire_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// Records the open files limit in force (0 when unknown).
    pub fn open_files_limit(&self, limit: Option<u64>) {
        self.open_files_limit
            .set(i64::try_from(limit.unwrap_or(0)).unwrap_or(i64::MAX));
    }

    /// Records the bound of the store's page cache.
    pub fn store_cache_capacity(&self, bytes: u64) {
        self.store_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Records how many renders the Git loop keeps.
    pub fn render_cache_entries(&self, n: usize) {
        self.render_cache_entries
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records how many applications a sync window blocks now.
    pub fn apps_blocked_by_window(&self, n: usize) {
        self.apps_blocked_by_window
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records how many repository Secrets the last read could not use.
    pub fn repository_secret_errors(&self, n: usize) {
        self.repository_secret_errors
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records where a RollingSync set's rollout is (`step` 0: complete)
    /// and how many of its applications are in each status.
    pub fn rollout(&self, appset: &str, step: u64, by_status: &[(&str, usize)]) {
        self.rollout_step
            .get_or_create(&AppSetLabels {
                appset: appset.to_owned(),
            })
            .set(i64::try_from(step).unwrap_or(i64::MAX));
        for (status, n) in by_status {
            self.rollout_applications
                .get_or_create(&AppSetStatusLabels {
                    appset: appset.to_owned(),
                    status: (*status).to_owned(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Forgets a set that no longer rolls out with RollingSync.
    pub fn rollout_removed(&self, appset: &str, statuses: &[&str]) {
        self.rollout_step.remove(&AppSetLabels {
            appset: appset.to_owned(),
        });
        for status in statuses {
            self.rollout_applications.remove(&AppSetStatusLabels {
                appset: appset.to_owned(),
                status: (*status).to_owned(),
            });
        }
    }

    /// A waves rollout's state: current wave (0-based in, 1-based out),
    /// clusters by state, and how long each finished wave took.
    pub fn waves(&self, appset: &str, wave: usize, by_state: &[(&str, usize)], wave_ms: &[i64]) {
        self.waves_wave
            .get_or_create(&AppSetLabels {
                appset: appset.to_owned(),
            })
            .set(i64::try_from(wave + 1).unwrap_or(i64::MAX));
        for (state, n) in by_state {
            self.waves_clusters
                .get_or_create(&AppSetStatusLabels {
                    appset: appset.to_owned(),
                    status: (*state).to_owned(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        for (i, ms) in wave_ms.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            self.waves_seconds
                .get_or_create(&WaveLabels {
                    appset: appset.to_owned(),
                    wave: (i + 1).to_string(),
                })
                .set(*ms as f64 / 1000.0);
        }
    }

    /// Counts syncs sent by RollingSync sets.
    pub fn rollout_syncs(&self, n: u64) {
        self.rollout_syncs.inc_by(n);
    }

    /// Counts applications moved to a new commit without a render.
    pub fn revisions_moved(&self, n: u64) {
        self.revisions_moved.inc_by(n);
    }

    /// Applications moved to a new commit without a render, so far.
    pub fn revisions_moved_total(&self) -> u64 {
        self.revisions_moved.get()
    }

    /// Counts bundles withheld from an agent too old for chunks.
    pub fn bundles_withheld(&self, n: usize) {
        self.bundles_withheld.inc_by(n as u64);
    }

    /// The applications' metadata, decoded again only when an application
    /// changed since the last scrape.
    fn app_meta(&self, store: &Store) -> AppMetas {
        let changes = (store.app_changes(), store.app_error_changes());
        let mut cached = self.app_meta.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, meta)) = cached.as_ref()
            && *at == changes
        {
            return meta.clone();
        }
        let meta: HashMap<String, AppMeta> = store
            .apps()
            .unwrap_or_default()
            .into_iter()
            .map(|rec| {
                let spec = &rec.app.spec;
                let repo = spec
                    .effective_sources()
                    .first()
                    .unwrap_or(&spec.source)
                    .repo_url
                    .clone();
                (
                    rec.app.metadata.name.clone(),
                    AppMeta {
                        project: spec.project.clone(),
                        repo: crate::source::redact_url(&repo),
                        comparison_error: !rec.error.is_empty(),
                    },
                )
            })
            .collect();
        let meta = std::sync::Arc::new(meta);
        *cached = Some((changes, meta.clone()));
        meta
    }

    /// How many times `flotilla_app_info` and `flotilla_applications` were
    /// made since start: a scrape while no status, application or cluster's
    /// applications changed makes them not again.
    pub fn pair_makes(&self) -> u64 {
        self.pair_makes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refreshes the store and cluster gauges: cluster counts from the
    /// store's index and the fleet. The per-pair state is
    /// [`HubMetrics::refresh_pairs`].
    fn refresh(&self, store: &Store, fleet: &Fleet) {
        self.store_state(store);

        let clusters = store.cluster_names().unwrap_or_default();
        self.clusters.set(clusters.len() as i64);
        self.clusters_connected
            .set(clusters.iter().filter(|c| fleet.is_connected(c)).count() as i64);
    }

    /// Makes `flotilla_app_info` and `flotilla_applications` again when a
    /// status, an application or a cluster's applications changed since
    /// they were last made; returns `flotilla_app_info`'s text. Made in one
    /// aggregation: which pairs count from the fleet's in-memory indexes
    /// (under one lock), statuses from the store's in-memory summary,
    /// application metadata cached until an application changes; no record
    /// is decoded while nothing changed. A pair counts while its cluster is
    /// registered and the application is in that cluster's desired state (a
    /// status left from an application that no longer targets the cluster
    /// does not).
    fn refresh_pairs(&self, store: &Store, fleet: &Fleet) -> std::sync::Arc<String> {
        use std::collections::BTreeMap;
        use std::fmt::Write as _;

        // Read before the statuses: a change made while they are read moves
        // a count past this key, and the next scrape makes them again.
        let key: PairsKey = (
            store.status_changes(),
            store.app_changes(),
            store.app_error_changes(),
            fleet.membership_changes(),
        );
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pairs.as_ref()
            && p.key == key
        {
            return p.app_info.clone();
        }
        self.pair_makes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let apps = self.app_meta(store);
        let mut counts: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
        let mut text = String::new();
        let _ = write!(
            text,
            "# HELP flotilla_app_info {APP_INFO_HELP}.\n# TYPE flotilla_app_info gauge\n"
        );
        let summary = fleet.with_index_holds(|targeted| {
            store.for_each_status_summary(|app, cluster, sync, health| {
                let Some(meta) = apps.get(app) else { return };
                if !targeted(cluster, app) {
                    return;
                }
                // As `fleet::comparison_status`: while the hub cannot fetch
                // or render the source, the reported sync is about an older
                // state.
                let sync = if meta.comparison_error {
                    "Unknown"
                } else {
                    flotilla_proto::SyncStatus::try_from(sync).map_or("Unknown", sync_name)
                };
                let health =
                    flotilla_proto::HealthStatus::try_from(health).map_or("Unknown", health_name);
                *counts.entry((sync, health)).or_default() += 1;
                text.push_str("flotilla_app_info{name=\"");
                push_label_value(&mut text, app);
                text.push_str("\",project=\"");
                push_label_value(&mut text, &meta.project);
                text.push_str("\",cluster=\"");
                push_label_value(&mut text, cluster);
                text.push_str("\",sync_status=\"");
                text.push_str(sync);
                text.push_str("\",health_status=\"");
                text.push_str(health);
                text.push_str("\",repo=\"");
                push_label_value(&mut text, &meta.repo);
                text.push_str("\"} 1\n");
            })
        });
        if let Err(e) = summary {
            tracing::warn!(error = %e, "metrics: cannot read the application statuses");
        }
        self.applications.clear();
        for ((sync_status, health_status), n) in counts {
            self.applications
                .get_or_create(&StatusLabels {
                    sync_status: sync_status.to_owned(),
                    health_status: health_status.to_owned(),
                })
                .set(n);
        }
        let app_info = std::sync::Arc::new(text);
        *pairs = Some(Pairs {
            key,
            app_info: app_info.clone(),
        });
        app_info
    }

    /// The metrics in the Prometheus text format, state refreshed first.
    pub fn encode(&self, store: &Store, fleet: &Fleet) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};

        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(store, fleet);
        let app_info = self.refresh_pairs(store, fleet);
        let mut out = String::with_capacity(app_info.len() + 64 * 1024);
        if encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
            return out;
        }
        out.push_str(&app_info);
        if encode_eof(&mut out).is_err() {
            out.clear();
        }
        out
    }
}

/// Appends `value` as the text format's label value: backslash, double
/// quote and line feed escaped.
fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn sync_name(s: flotilla_proto::SyncStatus) -> &'static str {
    match s {
        flotilla_proto::SyncStatus::Synced => "Synced",
        flotilla_proto::SyncStatus::OutOfSync => "OutOfSync",
        _ => "Unknown",
    }
}

fn health_name(h: flotilla_proto::HealthStatus) -> &'static str {
    match h {
        flotilla_proto::HealthStatus::Healthy => "Healthy",
        flotilla_proto::HealthStatus::Progressing => "Progressing",
        flotilla_proto::HealthStatus::Degraded => "Degraded",
        flotilla_proto::HealthStatus::Suspended => "Suspended",
        flotilla_proto::HealthStatus::Missing => "Missing",
        _ => "Unknown",
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static HubMetrics {
    static METRICS: OnceLock<HubMetrics> = OnceLock::new();
    METRICS.get_or_init(HubMetrics::new)
}

#[cfg(test)]
mod tests {
    use flotilla_proto as pb;

    use super::*;
    use crate::fleet::{build_bundle, parse_single_application};
    use crate::store::{AppRecord, ClusterRecord};

    fn app(name: &str, dest: &str, project: &str) -> AppRecord {
        let yaml = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  project: {project}\n  source:\n    repoURL: https://user:secret@git.example.com/{name}.git\n    path: .\n  destination:\n    name: {dest}\n    namespace: default\n"
        );
        AppRecord {
            app: parse_single_application(&yaml, "t").unwrap().into(),
            origin: "api".into(),
            revision: "r1".into(),
            error: String::new(),
        }
    }

    fn status(name: &str, sync: pb::SyncStatus, health: pb::HealthStatus) -> pb::AppStatus {
        pb::AppStatus {
            name: name.into(),
            sync: sync as i32,
            health: health as i32,
            ..Default::default()
        }
    }

    /// The `flotilla_app_info` lines, sorted.
    fn app_info(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("flotilla_app_info{"))
            .collect();
        lines.sort_unstable();
        lines
    }

    /// A scrape aggregates from in-memory indexes: once the first scrape
    /// read the applications, the next decodes no record however many
    /// clusters there are, until an application changes.
    #[test]
    fn a_scrape_decodes_nothing_while_nothing_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fleet = Fleet::load(store.clone()).unwrap();
        for i in 0..200 {
            fleet
                .put_cluster(ClusterRecord {
                    name: format!("c{i}"),
                    ..Default::default()
                })
                .unwrap();
        }
        let web = app("web", "c0", "shop");
        store.put_app(&web).unwrap();
        fleet
            .set_bundle(build_bundle(&web.app, "r1", Ok(&[])))
            .unwrap();
        store
            .put_status(
                "c0",
                &status("web", pb::SyncStatus::Synced, pb::HealthStatus::Healthy),
            )
            .unwrap();
        let m = HubMetrics::new();
        let first = m.encode(&store, &fleet);
        let before = store.counters();
        let second = m.encode(&store, &fleet);
        assert_eq!(
            store.counters().decoded,
            before.decoded,
            "second scrape decoded records"
        );
        assert_eq!(first, second);
        assert!(second.contains("flotilla_clusters 200"), "{second}");
        // An application written is read again.
        let mut failed = web.clone();
        failed.error = "fetch failed".into();
        store.put_app(&failed).unwrap();
        let third = m.encode(&store, &fleet);
        assert!(third.contains(r#"sync_status="Unknown""#), "{third}");

        // A report that repeats the statuses held, or a render that only
        // moves the revision, makes nothing again.
        let made = m.pair_makes();
        store
            .put_statuses(
                "c0",
                &[status(
                    "web",
                    pb::SyncStatus::Synced,
                    pb::HealthStatus::Healthy,
                )],
            )
            .unwrap();
        store.put_app_result("web", "r2", "fetch failed").unwrap();
        assert_eq!(m.encode(&store, &fleet), third);
        assert_eq!(m.pair_makes(), made, "nothing shown changed");
        // A render error that clears, or a status that changes, is shown.
        store.put_app_result("web", "r2", "").unwrap();
        let fourth = m.encode(&store, &fleet);
        assert!(
            fourth.contains(r#"sync_status="Synced",health_status="Healthy""#),
            "{fourth}"
        );
        store
            .put_statuses(
                "c0",
                &[status(
                    "web",
                    pb::SyncStatus::Synced,
                    pb::HealthStatus::Degraded,
                )],
            )
            .unwrap();
        let fifth = m.encode(&store, &fleet);
        assert!(fifth.contains(r#"health_status="Degraded""#), "{fifth}");
        assert_eq!(m.pair_makes(), made + 2);

        // An application that moves to another cluster whose status was
        // already there (left from before): shown once the fleet's index
        // holds it, with no status written.
        store
            .put_status(
                "c1",
                &status("web", pb::SyncStatus::OutOfSync, pb::HealthStatus::Missing),
            )
            .unwrap();
        let moved = app("web", "c1", "shop");
        store.put_app(&moved).unwrap();
        let sixth = m.encode(&store, &fleet);
        assert!(
            !sixth.contains(r#"cluster="c1""#),
            "not in c1's index yet: {sixth}"
        );
        fleet
            .set_bundle(build_bundle(&moved.app, "r3", Ok(&["{}".to_owned()])))
            .unwrap();
        assert!(fleet.index_holds("c1", "web"), "the fleet moved web to c1");
        let seventh = m.encode(&store, &fleet);
        assert!(
            seventh.contains(r#"cluster="c1",sync_status="OutOfSync""#),
            "{seventh}"
        );
        assert!(!seventh.contains(r#"cluster="c0""#), "{seventh}");
    }

    /// Label values are escaped as the text format asks.
    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        push_label_value(&mut out, "a\\b\"c\nd");
        assert_eq!(out, r#"a\\b\"c\nd"#);
    }

    #[test]
    fn app_info_has_one_series_per_application_and_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fleet = Fleet::load(store.clone()).unwrap();
        for c in ["east", "west"] {
            fleet
                .put_cluster(ClusterRecord {
                    name: c.into(),
                    ..Default::default()
                })
                .unwrap();
        }
        let web = app("web", "east", "shop");
        let api = app("api", "west", "default");
        for rec in [&web, &api] {
            store.put_app(rec).unwrap();
            fleet
                .set_bundle(build_bundle(&rec.app, "r1", Ok(&[])))
                .unwrap();
        }
        use pb::HealthStatus as H;
        use pb::SyncStatus as S;
        store
            .put_status("east", &status("web", S::Synced, H::Healthy))
            .unwrap();
        store
            .put_status("west", &status("api", S::OutOfSync, H::Degraded))
            .unwrap();
        // Left over from an application that does not target west: no series.
        store
            .put_status("west", &status("web", S::Synced, H::Healthy))
            .unwrap();

        let m = HubMetrics::new();
        let text = m.encode(&store, &fleet);
        assert_eq!(
            app_info(&text),
            [
                r#"flotilla_app_info{name="api",project="default",cluster="west",sync_status="OutOfSync",health_status="Degraded",repo="https://***@git.example.com/api.git"} 1"#,
                r#"flotilla_app_info{name="web",project="shop",cluster="east",sync_status="Synced",health_status="Healthy",repo="https://***@git.example.com/web.git"} 1"#,
            ],
            "{text}"
        );
        assert!(text.contains(
            "flotilla_applications{sync_status=\"OutOfSync\",health_status=\"Degraded\"} 1"
        ));
        // The password of the URLs above (`secret` alone is in metric names).
        assert!(
            !text.contains(":secret@"),
            "credentials are redacted: {text}"
        );

        // Later writes reach the next scrape without a rescan: a new report,
        // a comparison error, a removed application.
        store
            .put_status("west", &status("api", S::Synced, H::Progressing))
            .unwrap();
        let mut broken = web.clone();
        broken.error = "repository unreachable".into();
        store.put_app(&broken).unwrap();
        let text = m.encode(&store, &fleet);
        assert_eq!(
            app_info(&text),
            [
                r#"flotilla_app_info{name="api",project="default",cluster="west",sync_status="Synced",health_status="Progressing",repo="https://***@git.example.com/api.git"} 1"#,
                r#"flotilla_app_info{name="web",project="shop",cluster="east",sync_status="Unknown",health_status="Healthy",repo="https://***@git.example.com/web.git"} 1"#,
            ],
            "{text}"
        );
        assert!(!text.contains("OutOfSync"), "old series are gone: {text}");
        fleet.remove_app("api").unwrap();
        fleet.remove_cluster("east").unwrap();
        let text = m.encode(&store, &fleet);
        assert!(app_info(&text).is_empty(), "{text}");
        assert!(!text.contains("flotilla_applications{"), "{text}");
    }

    /// Metric names queried by the Grafana dashboard in charts/.
    fn dashboard_metrics() -> std::collections::BTreeSet<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/flotilla-hub/dashboards/flotilla.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("expr" | "definition" | "query", serde_json::Value::String(s)) => {
                                out.push(s.clone());
                            }
                            _ => exprs(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        exprs(&dashboard, &mut all);
        let re = regex::Regex::new("flotilla_[a-z_]+").unwrap();
        all.iter()
            .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_owned()))
            .collect()
    }

    /// Every hub metric the dashboard queries is exported by the hub (a
    /// histogram's `_bucket`/`_sum`/`_count` and a counter's `_total`
    /// count as their metric) and listed in docs/operations.md. Every
    /// family gets a series first: an empty one is not exported at all.
    #[test]
    fn dashboard_queries_only_exported_and_documented_hub_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fleet = Fleet::load(store.clone()).unwrap();
        fleet
            .put_cluster(ClusterRecord {
                name: "east".into(),
                ..Default::default()
            })
            .unwrap();
        let web = app("web", "east", "default");
        store.put_app(&web).unwrap();
        fleet
            .set_bundle(build_bundle(&web.app, "r1", Ok(&[])))
            .unwrap();
        store
            .put_status(
                "east",
                &status("web", pb::SyncStatus::Synced, pb::HealthStatus::Healthy),
            )
            .unwrap();
        let m = HubMetrics::new();
        m.git_fetch(
            "https://git.example.com/r.git",
            Duration::from_millis(5),
            false,
        );
        m.connection_rejected("grpc", "unauthenticated_cap");
        m.connection_timed_out("grpc", "handshake");
        m.connections_open("grpc", "authenticated", 1);
        m.enrollment_refused("deadline");
        m.render(Duration::from_millis(5));
        m.send_lag(Duration::from_millis(5));
        let text = m.encode(&store, &fleet);
        let exported: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
        )
        .unwrap();
        let used = dashboard_metrics();
        assert!(used.contains("flotilla_app_info"), "{used:?}");
        for name in used.iter().filter(|n| !n.starts_with("flotilla_agent_")) {
            let base = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .chain([name.as_str()])
                .find(|b| exported.contains(b));
            assert!(
                base.is_some(),
                "the dashboard queries {name}, which the hub does not export: {exported:?}"
            );
            let base = base.unwrap_or_default();
            assert!(
                docs.contains(&format!("| `{base}` |")) || docs.contains(&format!("| `{name}` |")),
                "{name} is not in the metric tables of docs/operations.md"
            );
        }
    }

    /// The summary the metrics read is built once from the store, then
    /// follows writes: a store reopened from disk gives the same answer.
    #[test]
    fn status_summary_matches_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let collect = |store: &Store| {
            let mut out = Vec::new();
            store
                .for_each_status_summary(|a, c, s, h| out.push((a.to_owned(), c.to_owned(), s, h)))
                .unwrap();
            out.sort();
            out
        };
        let store = Store::open(dir.path()).unwrap();
        use pb::HealthStatus as H;
        use pb::SyncStatus as S;
        store
            .put_status("c1", &status("a", S::Synced, H::Healthy))
            .unwrap();
        let first = collect(&store);
        assert_eq!(first, [("a".into(), "c1".into(), 1, 1)]);
        store
            .put_status("c1", &status("a", S::OutOfSync, H::Degraded))
            .unwrap();
        store
            .put_status("c2", &status("b", S::Synced, H::Missing))
            .unwrap();
        store.remove_cluster("c1").unwrap();
        let live = collect(&store);
        store.close().unwrap();
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(live, collect(&reopened));
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0, "b");
    }
}
