//! The sync engine: keeps every cached application applied, checks drift and
//! health, prunes, and publishes status.
//!
//! One pass looks at every application: it reads the live objects, decides
//! (apply on a new digest when automated; re-apply on drift with selfHeal;
//! retries with backoff), applies in the planned order, and publishes a
//! [`Report`]. Passes run when the link delivers a new desired state, when a
//! watched object changes, and periodically: every second while anything is
//! not Synced and Healthy, otherwise every 30 seconds with watches (five
//! without).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::{AppStatus, OperationState, ResourceStatus, SyncResult, SyncStatus};
use rand::Rng;
use tokio::sync::{Notify, oneshot, watch};
use tracing::{info, warn};

use crate::bundle::Bundle;
use crate::cache::{Cache, CachedApp};
use crate::cluster::Cluster;
use crate::custom_health::HealthRules;
use crate::health::{self, Health, HealthStatus};
use crate::inventory::Inventory;
use crate::object::ObjectKey;
use crate::report::{Report, now_ms};

mod apply;
mod dry_run;
mod live;

pub use live::diff_app;

const PASS_SETTLED: Duration = Duration::from_secs(5);
const PASS_SETTLED_WATCHED: Duration = Duration::from_secs(30);
const PASS_BUSY: Duration = Duration::from_secs(1);
const CRD_DEADLINE: Duration = Duration::from_secs(30);
/// How long a sync may wait for a wave to become healthy.
const WAVE_DEADLINE: Duration = Duration::from_secs(120);
const COALESCE: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(180);

/// What one object looks like now.
#[derive(Debug, Clone)]
struct ResourceCheck {
    key: ObjectKey,
    sync: SyncStatus,
    health: Health,
    message: String,
    drift: Vec<String>,
    /// Another application whose tracking identity the live object carries.
    shared_with: Option<String>,
}

/// Per-application memory that does not need to survive a restart.
#[derive(Debug, Default)]
struct AppRuntime {
    /// Object errors of the last apply.
    errors: BTreeMap<ObjectKey, String>,
    /// Application-level message of the last apply (manifest or prune).
    message: String,
    /// Consecutive apply attempts that did not settle (errors or heals).
    attempts: u32,
    /// The digest the attempts were about.
    attempt_digest: String,
    /// No new attempt before this instant.
    retry_at: Option<Instant>,
    /// The last operation.
    operation: Option<OperationState>,
    /// The last operation a hub command started (it has a command id);
    /// automatic syncs do not replace it.
    requested: Option<OperationState>,
    /// A sync of `digest` waiting before wave index `next` since `since`.
    waves: Option<WaveProgress>,
    /// Drifted at the last pass (drift events count transitions).
    drifted: bool,
}

impl AppRuntime {
    /// Records `op` as the last operation, and as the last requested one
    /// when a hub command started it.
    fn record(&mut self, op: OperationState) {
        if !op.command_id.is_empty() {
            self.requested = Some(op.clone());
        }
        self.operation = Some(op);
    }
}

#[derive(Debug, Clone)]
struct WaveProgress {
    digest: String,
    next: usize,
    since: Instant,
}

/// A sync asked for by the hub (`SyncNow`), applied even without
/// `automated` and regardless of retry backoff.
#[derive(Debug, Default)]
pub struct SyncRequest {
    /// Prune even if the policy does not.
    pub prune: bool,
    /// Only report; change nothing.
    pub dry_run: bool,
    /// The hub's command id, recorded in the `OperationState` of the sync
    /// it starts.
    pub command_id: String,
    /// Where the answer to a dry run goes. Dropped unanswered when the
    /// request is replaced or the application is no longer desired.
    pub reply: Option<oneshot::Sender<SyncResult>>,
}

/// Pending sync requests by application, shared with the link.
pub type SyncRequests = Arc<std::sync::Mutex<HashMap<String, SyncRequest>>>;

/// Runs passes over the cached desired state.
pub struct Engine {
    cluster: Arc<Cluster>,
    cache: Arc<Cache>,
    trigger: Arc<Notify>,
    reports: watch::Sender<Option<Report>>,
    apps: HashMap<String, AppRuntime>,
    requests: SyncRequests,
    inventory: Option<Inventory>,
    orphans_checked: bool,
    health: HealthRules,
}

impl Engine {
    /// An engine over a cluster and a cache. `trigger` wakes it early;
    /// status goes to `reports`.
    #[must_use]
    pub fn new(
        cluster: Arc<Cluster>,
        cache: Arc<Cache>,
        trigger: Arc<Notify>,
        reports: watch::Sender<Option<Report>>,
    ) -> Self {
        Self {
            cluster,
            cache,
            trigger,
            reports,
            apps: HashMap::new(),
            requests: SyncRequests::default(),
            inventory: None,
            orphans_checked: false,
            health: HealthRules::builtin(),
        }
    }

    /// Uses custom (Lua) health checks before the built-in rules.
    #[must_use]
    pub fn with_health_rules(mut self, rules: HealthRules) -> Self {
        self.health = rules;
        self
    }

    /// Also keeps each application's inventory in the cluster.
    #[must_use]
    pub fn with_inventory(mut self, inventory: Inventory) -> Self {
        self.inventory = Some(inventory);
        self
    }

    /// The handle through which the link queues `SyncNow` requests.
    #[must_use]
    pub fn sync_requests(&self) -> SyncRequests {
        self.requests.clone()
    }

    fn take_request(&self, app: &str) -> Option<SyncRequest> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(app)
    }

    /// Runs passes forever.
    pub async fn run(mut self) {
        loop {
            let settled = self.pass().await;
            let wait = match (settled, self.cluster.watches_enabled()) {
                (false, _) => PASS_BUSY,
                // Watches wake the engine on any change to a tracked object;
                // the periodic pass is only a safety net then.
                (true, true) => PASS_SETTLED_WATCHED,
                (true, false) => PASS_SETTLED,
            };
            tokio::select! {
                () = self.trigger.notified() => {
                    // Let a burst of events (an apply touches many objects)
                    // settle into one pass.
                    tokio::time::sleep(COALESCE).await;
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass over every application; true when all are Synced and Healthy.
    pub async fn pass(&mut self) -> bool {
        let mut snapshot = self.cache.snapshot();
        if !self.orphans_checked && snapshot.generation > 0 {
            self.adopt_orphans(&snapshot).await;
            snapshot = self.cache.snapshot();
        }
        self.prune_removed(&snapshot).await;
        let mut statuses = Vec::with_capacity(snapshot.apps.len());
        for app in snapshot.apps.values() {
            statuses.push(self.reconcile(app).await);
        }
        self.apps.retain(|name, _| snapshot.apps.contains_key(name));
        // A request for an application this cluster does not run is
        // dropped; a dry run waiting on it learns so from its closed reply.
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|name, _| snapshot.apps.contains_key(name));
        let settled = statuses.iter().all(|s| {
            s.sync == SyncStatus::Synced as i32
                && s.health == HealthStatus::Healthy.to_proto() as i32
        });
        let report = Report {
            generation: snapshot.generation,
            apps: statuses,
        };
        crate::metrics::metrics().set_statuses(&report.apps);
        crate::metrics::metrics().set_generation(report.generation);
        // Observation times refresh silently; only a real change wakes the
        // reporter.
        self.reports.send_if_modified(|current| {
            let changed = current.as_ref().is_none_or(|c| !c.same_as(&report));
            *current = Some(report);
            changed
        });
        settled
    }

    async fn reconcile(&mut self, app: &CachedApp) -> AppStatus {
        let b = &app.bundle;
        // A render error, or an ignoreDifferences jq expression that does
        // not compile (every comparison would be meaningless): report it,
        // apply nothing.
        let invalid = crate::jq::invalid_expressions(&b.ignore_differences);
        let refusal = if !b.render_error.is_empty() {
            Some(format!("render error: {}", b.render_error))
        } else if !invalid.is_empty() {
            Some(format!("ignoreDifferences: {}", invalid.join("; ")))
        } else {
            None
        };
        if let Some(message) = refusal {
            let operation = self.refuse_request(&b.name, &message);
            return AppStatus {
                name: b.name.clone(),
                revision: b.revision.clone(),
                digest: b.digest.clone(),
                sync: SyncStatus::Unknown as i32,
                health: HealthStatus::Unknown.to_proto() as i32,
                message,
                last_applied_ms: app.last_applied_ms,
                observed_ms: now_ms(),
                operation,
                requested_operation: self.apps.get(&b.name).and_then(|rt| rt.requested.clone()),
                ..AppStatus::default()
            };
        }
        let (mut checks, mut parse_errors) = self.check(b).await;
        let in_sync =
            parse_errors.is_empty() && checks.iter().all(|c| c.sync == SyncStatus::Synced);
        let digest_changed = app.applied_digest.as_deref() != Some(b.digest.as_str());
        let now = Instant::now();
        let requested = self.take_request(&b.name);
        let rt = self.apps.entry(b.name.clone()).or_default();
        if rt.attempt_digest != b.digest {
            rt.attempts = 0;
            rt.retry_at = None;
            rt.attempt_digest.clone_from(&b.digest);
        }
        if in_sync && !digest_changed {
            rt.attempts = 0;
            rt.retry_at = None;
        }
        let drifted = !in_sync && !digest_changed;
        if drifted && !rt.drifted {
            crate::metrics::metrics().drift(&b.name);
        }
        rt.drifted = drifted;
        // Healing an object another application tracks would make the two
        // take it from each other forever; only a new digest or a sync
        // request applies it.
        let healable = checks
            .iter()
            .any(|c| c.sync != SyncStatus::Synced && c.shared_with.is_none());
        // A sync stopped at a wave that was not healthy yet continues, even
        // without `automated` (it was started by a sync request).
        let resuming = digest_changed && rt.waves.as_ref().is_some_and(|w| w.digest == b.digest);
        let wanted = requested.is_some()
            || resuming
            || (b.policy.automated
                && (digest_changed || (drifted && healable && b.policy.self_heal)));
        let limit_reached = requested.is_none()
            && b.policy.retry_limit > 0
            && i64::from(rt.attempts) > b.policy.retry_limit;
        let due = requested.is_some() || rt.retry_at.is_none_or(|t| now >= t);
        let prune = b.policy.prune || requested.as_ref().is_some_and(|r| r.prune);
        // The hub command this pass answers; a wave sync resumed by a later
        // pass keeps the id of the command that started it.
        let command_id = requested.as_ref().map_or_else(
            || {
                rt.operation
                    .as_ref()
                    .filter(|o| resuming && o.phase == "Running")
                    .map(|o| o.command_id.clone())
                    .unwrap_or_default()
            },
            |r| r.command_id.clone(),
        );
        let mut last_applied_ms = app.last_applied_ms;
        if let Some(request) = requested.filter(|r| r.dry_run) {
            let result = self.dry_run(app, prune, &request.command_id).await;
            let changes = result
                .resources
                .iter()
                .filter(|r| r.action != dry_run::action::UNCHANGED)
                .count();
            let failures = result
                .resources
                .iter()
                .filter(|r| !r.error.is_empty())
                .count();
            info!(app = %b.name, id = %request.command_id, changes, failures, "dry run: nothing applied");
            if let Some(reply) = request.reply {
                let _ = reply.send(result);
            }
        } else if wanted && due && !limit_reached {
            if drifted {
                let fields: Vec<String> = checks
                    .iter()
                    .filter(|c| c.sync != SyncStatus::Synced)
                    .map(|c| {
                        format!(
                            "{}: {}",
                            c.key,
                            c.drift.first().map_or("missing", String::as_str)
                        )
                    })
                    .collect();
                info!(app = %b.name, drift = ?fields, "self-healing drift");
            }
            let started = now_ms();
            // ApplyOutOfSyncOnly: objects already in sync are left alone.
            let skip: BTreeSet<ObjectKey> =
                if b.policy.option("ApplyOutOfSyncOnly") && !digest_changed {
                    checks
                        .iter()
                        .filter(|c| c.sync == SyncStatus::Synced)
                        .map(|c| c.key.clone())
                        .collect()
                } else {
                    BTreeSet::new()
                };
            let resume_from = self
                .apps
                .get(&b.name)
                .and_then(|rt| rt.waves.as_ref())
                .filter(|w| w.digest == b.digest && digest_changed)
                .map_or(0, |w| w.next);
            // Continues the hub's trace of the commit that brought this
            // bundle (the first apply of it).
            let span = tracing::info_span!("apply", app = %b.name, revision = %b.revision);
            crate::telemetry::adopt_parent(&span, &b.name);
            let apply_started = Instant::now();
            let mut outcome = tracing::Instrument::instrument(
                self.apply(app, prune, &skip, resume_from),
                span.clone(),
            )
            .await;
            crate::metrics::metrics().apply(&b.name, apply_started.elapsed());
            let finished = now_ms();
            let rt = self.apps.entry(b.name.clone()).or_default();
            if let Some((next, wave, why)) = outcome.waiting.take() {
                let since = match &rt.waves {
                    Some(w) if w.digest == b.digest && w.next == next => w.since,
                    _ => Instant::now(),
                };
                if since.elapsed() < WAVE_DEADLINE {
                    rt.waves = Some(WaveProgress {
                        digest: b.digest.clone(),
                        next,
                        since,
                    });
                    let started = rt
                        .operation
                        .as_ref()
                        .filter(|o| o.phase == "Running")
                        .map_or(started, |o| o.started_ms);
                    rt.record(OperationState {
                        phase: "Running".to_owned(),
                        started_ms: started,
                        finished_ms: 0,
                        message: format!("waiting for sync wave {wave} to become healthy: {why}"),
                        command_id: command_id.clone(),
                    });
                    rt.errors.clone_from(&outcome.errors);
                    rt.message = format!("waiting for sync wave {wave} to become healthy: {why}");
                    let (name, digest, inventory) =
                        (b.name.clone(), b.digest.clone(), outcome.inventory);
                    let persisted = self.cache.update(|s| {
                        if let Some(cached) = s.apps.get_mut(&name)
                            && cached.bundle.digest == digest
                        {
                            cached.inventory = inventory;
                        }
                    });
                    if let Err(e) = persisted {
                        warn!(error = %e, "could not persist the cache");
                    }
                    let (checks, parse_errors) = self.check(b).await;
                    let rt = self.apps.entry(b.name.clone()).or_default();
                    return status_of(b, &checks, &parse_errors, rt, last_applied_ms);
                }
                rt.waves = None;
                outcome.message = format!(
                    "sync wave {wave} did not become healthy within {}s: {why}",
                    WAVE_DEADLINE.as_secs()
                );
            } else {
                rt.waves = None;
            }
            let ok = outcome.ok();
            rt.record(OperationState {
                phase: if ok { "Succeeded" } else { "Failed" }.to_owned(),
                started_ms: started,
                finished_ms: finished,
                message: if ok || !outcome.message.is_empty() {
                    outcome.message.clone()
                } else {
                    failure_summary(&outcome.errors)
                },
                command_id,
            });
            rt.errors.clone_from(&outcome.errors);
            rt.message.clone_from(&outcome.message);
            if ok && digest_changed {
                rt.attempts = 0;
                rt.retry_at = None;
            } else {
                // A failed apply retries per syncPolicy.retry; a heal that
                // keeps being undone (another controller owns the field)
                // backs off instead of fighting in a hot loop.
                rt.attempts = rt.attempts.saturating_add(1);
                crate::metrics::metrics().retry();
                let delay = if ok {
                    backoff(rt.attempts)
                } else {
                    jitter(b.policy.retry_backoff.delay(rt.attempts))
                };
                rt.retry_at = Some(Instant::now() + delay);
            }
            if ok {
                info!(app = %b.name, revision = %b.revision, objects = outcome.inventory.len(), "applied");
            } else {
                warn!(app = %b.name, errors = outcome.errors.len(), message = %outcome.message, "apply finished with errors");
            }
            let digest = b.digest.clone();
            let name = b.name.clone();
            let inventory = outcome.inventory;
            if let Some(store) = &self.inventory
                && let Err(e) = store
                    .store(&self.cluster, &name, b.policy.prune, &inventory)
                    .await
            {
                warn!(app = %name, error = %e, "could not store the inventory in the cluster");
            }
            let persisted = self.cache.update(|s| {
                if let Some(cached) = s.apps.get_mut(&name)
                    && cached.bundle.digest == digest
                {
                    cached.inventory = inventory;
                    cached.last_applied_ms = finished;
                    if ok {
                        cached.applied_digest = Some(digest);
                    }
                }
            });
            if let Err(e) = persisted {
                warn!(error = %e, "could not persist the cache");
            }
            last_applied_ms = finished;
            (checks, parse_errors) = tracing::Instrument::instrument(
                self.check(b),
                tracing::info_span!(parent: &span, "health", app = %b.name),
            )
            .await;
        } else if wanted && limit_reached {
            let rt = self.apps.entry(b.name.clone()).or_default();
            if rt.message.is_empty() {
                rt.message = format!("retry limit {} reached", b.policy.retry_limit);
            }
        }
        let rt = self.apps.entry(b.name.clone()).or_default();
        status_of(b, &checks, &parse_errors, rt, last_applied_ms)
    }
}

impl Engine {
    /// Answers a sync request for an application that cannot be synced
    /// (`why`): a dry run gets the error, a real sync a Failed operation
    /// carrying its command id (returned, and kept for later passes).
    fn refuse_request(&mut self, app: &str, why: &str) -> Option<OperationState> {
        let rt = self.apps.entry(app.to_owned()).or_default();
        let request = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(app);
        match request {
            Some(SyncRequest {
                dry_run: true,
                reply: Some(reply),
                command_id,
                ..
            }) => {
                let _ = reply.send(SyncResult {
                    command_id,
                    app: app.to_owned(),
                    dry_run: true,
                    error: why.to_owned(),
                    ..SyncResult::default()
                });
            }
            Some(SyncRequest { dry_run: true, .. }) | None => {}
            Some(request) => {
                let now = now_ms();
                rt.record(OperationState {
                    phase: "Failed".to_owned(),
                    started_ms: now,
                    finished_ms: now,
                    message: why.to_owned(),
                    command_id: request.command_id,
                });
            }
        }
        rt.operation.clone()
    }
}

/// The first object errors of a failed apply, for the operation message.
fn failure_summary(errors: &BTreeMap<ObjectKey, String>) -> String {
    let mut parts: Vec<String> = errors
        .iter()
        .take(3)
        .map(|(key, e)| format!("{key}: {e}"))
        .collect();
    if errors.len() > 3 {
        parts.push(format!("and {} more", errors.len() - 3));
    }
    parts.join("; ")
}

/// Exponential backoff with ±20 % jitter: 1 s, 2 s, 4 s … up to 3 min.
fn backoff(attempts: u32) -> Duration {
    jitter(
        Duration::from_secs(1)
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(8))
            .min(BACKOFF_MAX),
    )
}

/// ±20 % jitter, so agents and applications do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

fn status_of(
    b: &Bundle,
    checks: &[ResourceCheck],
    parse_errors: &[String],
    rt: &AppRuntime,
    last_applied_ms: i64,
) -> AppStatus {
    let resources: Vec<ResourceStatus> = checks
        .iter()
        .map(|c| ResourceStatus {
            key: Some(c.key.to_proto()),
            sync: c.sync as i32,
            health: c.health.status.to_proto() as i32,
            message: rt
                .errors
                .get(&c.key)
                .cloned()
                .unwrap_or_else(|| c.message.clone()),
            drift: c.drift.clone(),
        })
        .collect();
    let sync = if !parse_errors.is_empty() || checks.iter().any(|c| c.sync == SyncStatus::OutOfSync)
    {
        SyncStatus::OutOfSync
    } else if checks.iter().any(|c| c.sync == SyncStatus::Unknown) {
        // The cluster could not be read: say so rather than guess.
        SyncStatus::Unknown
    } else {
        SyncStatus::Synced
    };
    let health = health::aggregate(checks.iter().map(|c| &c.health));
    let message = if let Some(e) = parse_errors.first() {
        e.clone()
    } else if !rt.message.is_empty() {
        rt.message.clone()
    } else if let Some((key, e)) = rt.errors.iter().next() {
        format!("{key}: {e}")
    } else if let Some(c) = checks.iter().find(|c| c.sync != SyncStatus::Synced) {
        match c.drift.first() {
            Some(d) => format!("{}: drift {d}", c.key),
            None if !c.message.is_empty() => format!("{}: {}", c.key, c.message),
            None => format!("{}: missing", c.key),
        }
    } else {
        String::new()
    };
    AppStatus {
        name: b.name.clone(),
        revision: b.revision.clone(),
        digest: b.digest.clone(),
        sync: sync as i32,
        health: health.to_proto() as i32,
        message,
        resources,
        last_applied_ms,
        observed_ms: now_ms(),
        operation: rt.operation.clone(),
        requested_operation: rt.requested.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let first = backoff(1);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let fifth = backoff(5);
        assert!(fifth >= Duration::from_millis(12_800) && fifth <= Duration::from_millis(19_200));
        assert!(backoff(40) <= BACKOFF_MAX.mul_f64(1.2));
    }

    #[test]
    fn an_automatic_sync_keeps_the_requested_operation() {
        let op = |id: &str, phase: &str| OperationState {
            phase: phase.into(),
            command_id: id.into(),
            ..Default::default()
        };
        let mut rt = AppRuntime::default();
        rt.record(op("c1", "Failed"));
        rt.record(op("", "Succeeded"));
        assert_eq!(rt.operation, Some(op("", "Succeeded")));
        assert_eq!(rt.requested, Some(op("c1", "Failed")));
        rt.record(op("c2", "Running"));
        assert_eq!(rt.requested, Some(op("c2", "Running")));
    }
}
