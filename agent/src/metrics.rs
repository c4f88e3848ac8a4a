//! Prometheus metrics of the agent, served on `--health-listen` (see
//! [`crate::health_http`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use flotilla_proto::{AppStatus, HealthStatus, SyncStatus};

/// Label of per-application series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub application: String,
}

/// Labels of `flotilla_agent_applications`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub sync_status: String,
    pub health_status: String,
}

/// Label of `flotilla_agent_cluster_cache_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheOpLabels {
    /// `read` (at start) or `write`.
    pub operation: String,
}

/// Label of the desired-state wire metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WireLabels {
    /// `desired` (a desired-state part) or `chunk` (a bundle chunk).
    pub kind: String,
}

fn histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ])
}

/// The agent's metrics.
pub struct AgentMetrics {
    registry: Registry,
    apply_duration: Family<AppLabels, Histogram, fn() -> Histogram>,
    drift_events: Family<AppLabels, Counter>,
    sync_retries: Counter,
    applications: Family<StatusLabels, Gauge>,
    connected: Gauge,
    desired_generation: Gauge,
    connected_once: AtomicBool,
    wire_messages: Family<WireLabels, Counter>,
    wire_bytes: Family<WireLabels, Counter>,
    cluster_cache_generation: Gauge,
    cluster_cache_errors: Family<CacheOpLabels, Counter>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla_agent");
        let apply_duration =
            Family::<AppLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register_with_unit(
            "apply_duration",
            "Time to apply one application (server-side apply of its objects, prune included)",
            Unit::Seconds,
            apply_duration.clone(),
        );
        let drift_events = Family::<AppLabels, Counter>::default();
        registry.register(
            "drift_events",
            "Times an application that was in sync was found drifted on the cluster",
            drift_events.clone(),
        );
        let sync_retries = Counter::default();
        registry.register(
            "sync_retries",
            "Applies that did not settle and were scheduled to be retried",
            sync_retries.clone(),
        );
        let applications = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "applications",
            "Applications by sync and health status",
            applications.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "connected",
            "1 while the stream to the hub is open",
            connected.clone(),
        );
        let desired_generation = Gauge::default();
        registry.register(
            "desired_generation",
            "Generation of the desired state the agent holds",
            desired_generation.clone(),
        );
        let wire_messages = Family::<WireLabels, Counter>::default();
        registry.register(
            "desired_state_messages_received",
            "Messages received from the hub carrying desired state, by kind (desired: a desired-state part; chunk: a bundle chunk)",
            wire_messages.clone(),
        );
        let wire_bytes = Family::<WireLabels, Counter>::default();
        registry.register_with_unit(
            "desired_state_received",
            "Encoded bytes of those messages, by kind",
            Unit::Bytes,
            wire_bytes.clone(),
        );
        let cluster_cache_generation = Gauge::default();
        registry.register(
            "cluster_cache_generation",
            "Generation of the desired state in the cluster copy of the cache, as last read or written (0: none)",
            cluster_cache_generation.clone(),
        );
        let cluster_cache_errors = Family::<CacheOpLabels, Counter>::default();
        registry.register(
            "cluster_cache_errors",
            "Failed reads (at start: corrupt, refused, unreachable) and writes of the cluster copy of the cache",
            cluster_cache_errors.clone(),
        );
        Self {
            registry,
            cluster_cache_generation,
            cluster_cache_errors,
            wire_messages,
            wire_bytes,
            apply_duration,
            drift_events,
            sync_retries,
            applications,
            connected,
            desired_generation,
            connected_once: AtomicBool::new(false),
        }
    }

    fn app(name: &str) -> AppLabels {
        AppLabels {
            application: name.to_owned(),
        }
    }

    /// Records one apply of `app`.
    pub fn apply(&self, app: &str, took: Duration) {
        self.apply_duration
            .get_or_create(&Self::app(app))
            .observe(took.as_secs_f64());
    }

    /// Records that `app` drifted.
    pub fn drift(&self, app: &str) {
        self.drift_events.get_or_create(&Self::app(app)).inc();
    }

    /// Records a scheduled retry.
    pub fn retry(&self) {
        self.sync_retries.inc();
    }

    /// Counts one message of desired state received (`kind`: `desired` or
    /// `chunk`) of `bytes` encoded bytes.
    pub fn wire_received(&self, kind: &str, bytes: usize) {
        let labels = WireLabels {
            kind: kind.to_owned(),
        };
        self.wire_messages.get_or_create(&labels).inc();
        self.wire_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// The cluster copy of the cache holds `generation`.
    pub fn set_cluster_cache_generation(&self, generation: u64) {
        self.cluster_cache_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Counts a failed `read` or `write` of the cluster copy.
    pub fn cluster_cache_error(&self, operation: &str) {
        self.cluster_cache_errors
            .get_or_create(&CacheOpLabels {
                operation: operation.to_owned(),
            })
            .inc();
    }

    /// The stream to the hub opened (true) or closed (false).
    pub fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
        if up {
            self.connected_once.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the agent has been connected to the hub at least once.
    pub fn connected_once(&self) -> bool {
        self.connected_once.load(Ordering::Relaxed)
    }

    /// The generation the engine last enforced (0 before its first pass).
    pub fn generation(&self) -> i64 {
        self.desired_generation.get()
    }

    /// The generation now held.
    pub fn set_generation(&self, generation: u64) {
        self.desired_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Replaces the application counts with those of a pass.
    pub fn set_statuses(&self, statuses: &[AppStatus]) {
        let mut counts: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
        for s in statuses {
            let sync = SyncStatus::try_from(s.sync).map_or("Unknown", sync_name);
            let health = HealthStatus::try_from(s.health).map_or("Unknown", health_name);
            *counts.entry((sync, health)).or_default() += 1;
        }
        self.applications.clear();
        for ((sync, health), n) in counts {
            self.applications
                .get_or_create(&StatusLabels {
                    sync_status: sync.to_owned(),
                    health_status: health.to_owned(),
                })
                .set(n);
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn sync_name(s: SyncStatus) -> &'static str {
    match s {
        SyncStatus::Synced => "Synced",
        SyncStatus::OutOfSync => "OutOfSync",
        _ => "Unknown",
    }
}

fn health_name(h: HealthStatus) -> &'static str {
    match h {
        HealthStatus::Healthy => "Healthy",
        HealthStatus::Progressing => "Progressing",
        HealthStatus::Degraded => "Degraded",
        HealthStatus::Suspended => "Suspended",
        HealthStatus::Missing => "Missing",
        _ => "Unknown",
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static AgentMetrics {
    static METRICS: OnceLock<AgentMetrics> = OnceLock::new();
    METRICS.get_or_init(AgentMetrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_names() {
        let m = AgentMetrics::new();
        m.apply("web", Duration::from_millis(20));
        m.drift("web");
        m.retry();
        m.set_connected(true);
        m.set_generation(7);
        m.set_cluster_cache_generation(6);
        m.cluster_cache_error("read");
        m.set_statuses(&[AppStatus {
            name: "web".into(),
            sync: SyncStatus::Synced as i32,
            health: HealthStatus::Healthy as i32,
            ..AppStatus::default()
        }]);
        let text = m.encode();
        for needle in [
            "flotilla_agent_apply_duration_seconds_count{application=\"web\"} 1",
            "flotilla_agent_drift_events_total{application=\"web\"} 1",
            "flotilla_agent_sync_retries_total 1",
            "flotilla_agent_applications{sync_status=\"Synced\",health_status=\"Healthy\"} 1",
            "flotilla_agent_connected 1",
            "flotilla_agent_desired_generation 7",
            "flotilla_agent_cluster_cache_generation 6",
            "flotilla_agent_cluster_cache_errors_total{operation=\"read\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(m.connected_once());
    }
}
