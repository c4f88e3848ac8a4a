//! Prometheus metrics of the hub, served in the text format on
//! `--metrics-listen` (see [`crate::health_http`]).
//!
//! Event metrics (durations, errors) live in one process-wide set recorded
//! where the events happen; state metrics (applications, clusters) are read
//! from the store and the fleet at scrape time.

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

/// Labels of `flotilla_applications`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub sync_status: String,
    pub health_status: String,
}

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
        Self {
            registry,
            wire_messages,
            wire_bytes,
            bundles_withheld,
            connections_rejected,
            connection_timeouts,
            connections,
            enrollments_refused,
            store_writable,
            store_reopens,
            applications,
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
            repo: crate::gitsync::redact(url),
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

    /// Records whether the store accepts writes.
    pub fn store_writable(&self, writable: bool) {
        self.store_writable.set(i64::from(writable));
    }

    /// Counts a reopen of the store.
    pub fn store_reopened(&self) {
        self.store_reopens.inc();
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

    /// Counts bundles withheld from an agent too old for chunks.
    pub fn bundles_withheld(&self, n: usize) {
        self.bundles_withheld.inc_by(n as u64);
    }

    /// Refreshes the state gauges from the store and the fleet.
    fn refresh(&self, store: &Store, fleet: &Fleet) {
        let clusters = store.clusters().unwrap_or_default();
        self.clusters.set(clusters.len() as i64);
        self.clusters_connected.set(
            clusters
                .iter()
                .filter(|c| fleet.is_connected(&c.name))
                .count() as i64,
        );
        let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for app in store.apps().unwrap_or_default() {
            let statuses = store
                .statuses_of_app(&app.app.metadata.name)
                .unwrap_or_default();
            for (cluster, st) in statuses {
                if !clusters.iter().any(|c| c.name == cluster) {
                    continue;
                }
                let st = crate::fleet::comparison_status(&app, st);
                let sync = flotilla_proto::SyncStatus::try_from(st.sync)
                    .map_or("Unknown", |s| sync_name(s));
                let health = flotilla_proto::HealthStatus::try_from(st.health)
                    .map_or("Unknown", |h| health_name(h));
                *counts
                    .entry((sync.to_owned(), health.to_owned()))
                    .or_default() += 1;
            }
        }
        self.applications.clear();
        for ((sync_status, health_status), n) in counts {
            self.applications
                .get_or_create(&StatusLabels {
                    sync_status,
                    health_status,
                })
                .set(n);
        }
    }

    /// The metrics in the Prometheus text format, state refreshed first.
    pub fn encode(&self, store: &Store, fleet: &Fleet) -> String {
        self.refresh(store, fleet);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
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
