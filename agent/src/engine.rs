//! The sync engine: keeps every cached application applied, checks drift and
//! health, prunes, and publishes status.
//!
//! One pass looks at every application: it reads the live objects, decides
//! (apply on a new digest when automated; re-apply on drift with selfHeal;
//! retries with backoff), applies in the planned order, and publishes a
//! [`Report`]. Passes run when the link delivers a new desired state, when a
//! watched object changes, and periodically: every second while anything is
//! not Synced and Healthy (an application whose live state cannot be read
//! aside), otherwise every 30 seconds with watches (five without). While
//! the API server fails (unreachable, 5xx, 429), passes back off instead:
//! one second, doubling up to 30 seconds, reset by the first pass that
//! reads again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::{
    AppCondition, AppStatus, OperationState, ResourceStatus, SyncResult, SyncStatus,
};
use rand::Rng;
use tokio::sync::{Notify, oneshot, watch};
use tracing::{info, warn};

use crate::bundle::Bundle;
use crate::cache::{Cache, CachedApp};
use crate::cluster::Cluster;
use crate::custom_health::HealthRules;
use crate::health::{self, Health, HealthStatus};
use crate::hooks::SyncOperation;
use crate::inventory::Inventory;
use crate::object::ObjectKey;
use crate::report::{Report, now_ms};

mod apply;
mod claims;
mod dry_run;
mod hooks;
mod live;
mod operation;
mod removal;
mod tenancy;

use live::Observed;
pub use live::diff_app;

const PASS_SETTLED: Duration = Duration::from_secs(5);
const PASS_SETTLED_WATCHED: Duration = Duration::from_secs(30);
const PASS_BUSY: Duration = Duration::from_secs(1);
const CRD_DEADLINE: Duration = Duration::from_secs(30);
/// How long a sync may wait for a wave to become healthy.
const WAVE_DEADLINE: Duration = Duration::from_secs(120);
/// How long a sync waits for the hooks of one step by default.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(3600);
const COALESCE: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(180);
/// Longest pause between passes while the API server fails (the first is
/// one second, doubling, ±20 % jitter).
pub const API_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often an inventory ConfigMap is looked for (a wiped cluster gets its
/// inventories back).
const INVENTORY_CHECK: Duration = Duration::from_secs(30);

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
    /// Drifted at the last pass (drift events count transitions).
    drifted: bool,
    /// The id of the last operation that ended.
    ended: String,
    /// Objects the last prune left because they opt out of it
    /// (`Prune=false`): they stay in the inventory, but do not start a
    /// sync of their own.
    kept: BTreeSet<ObjectKey>,
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

/// Applications whose running operation the hub asked to terminate
/// (`TerminateOperation`), shared with the link.
pub type Terminations = Arc<std::sync::Mutex<BTreeSet<String>>>;

/// The message of an operation ended by `app terminate-op` (Argo CD's).
pub const OPERATION_TERMINATED: &str = "Operation terminated";

/// Runs passes over the cached desired state.
pub struct Engine {
    cluster: Arc<Cluster>,
    cache: Arc<Cache>,
    trigger: Arc<Notify>,
    reports: watch::Sender<Option<Report>>,
    apps: HashMap<String, AppRuntime>,
    requests: SyncRequests,
    terminations: Terminations,
    inventory: Option<Inventory>,
    /// The inventories in the cluster have been read into the cache (and
    /// those of applications no longer desired adopted).
    orphans_checked: bool,
    /// Why they could not be read, and whether the API server was failing.
    orphans_failure: Option<(String, bool)>,
    /// What each application's inventory ConfigMap holds, as far as this
    /// engine wrote or read it.
    recorded: std::sync::Mutex<HashMap<String, BTreeSet<ObjectKey>>>,
    /// The current pass could not read from the API server.
    api_failed: std::sync::atomic::AtomicBool,
    /// Consecutive passes that could not.
    api_failures: u32,
    /// When the inventory ConfigMaps were checked last.
    inventory_checked: Option<Instant>,
    /// Which application's inventory the next check looks for.
    probes: usize,
    health: HealthRules,
    hook_timeout: Duration,
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
            terminations: Terminations::default(),
            inventory: None,
            orphans_checked: false,
            orphans_failure: None,
            recorded: std::sync::Mutex::default(),
            api_failed: std::sync::atomic::AtomicBool::new(false),
            api_failures: 0,
            inventory_checked: None,
            probes: 0,
            health: HealthRules::builtin(),
            hook_timeout: HOOK_TIMEOUT,
        }
    }

    /// How long a sync waits for the hooks of one step (a wave of a phase)
    /// before it deletes them and fails; [`HOOK_TIMEOUT`] by default.
    #[must_use]
    pub fn with_hook_timeout(mut self, timeout: Duration) -> Self {
        self.hook_timeout = timeout;
        self
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

    /// The handle through which the link queues `TerminateOperation`
    /// commands.
    #[must_use]
    pub fn terminations(&self) -> Terminations {
        self.terminations.clone()
    }

    /// Whether the hub asked to terminate `app`'s operation (the request is
    /// consumed).
    fn take_termination(&self, app: &str) -> bool {
        self.terminations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(app)
    }

    fn take_request(&self, app: &str) -> Option<SyncRequest> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(app)
    }

    /// Runs passes forever. While the API server fails, passes back off
    /// (one second, doubling up to [`API_BACKOFF_MAX`], with jitter; reset
    /// by a pass that reads it again), and only a new desired state or a
    /// sync request ends the pause early.
    pub async fn run(mut self) {
        loop {
            let settled = self.pass().await;
            if self.api_failures > 0 {
                self.wait_for_api(api_backoff(self.api_failures)).await;
                continue;
            }
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

    /// Waits `wait` after a pass the API server failed; a new generation
    /// or a sync request from the hub ends the wait early.
    async fn wait_for_api(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let generation = self.cache.read(|s| s.generation);
        loop {
            tokio::select! {
                () = self.trigger.notified() => {
                    let pending = !self
                        .requests
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .is_empty()
                        || !self
                            .terminations
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .is_empty();
                    if pending || self.cache.read(|s| s.generation) != generation {
                        tokio::time::sleep(COALESCE).await;
                        return;
                    }
                }
                () = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// Notes that the current pass could not read from the API server.
    fn note_api_failure(&self) {
        self.api_failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Consecutive passes that could not read from the API server (0 when
    /// the last one could).
    #[must_use]
    pub fn api_failures(&self) -> u32 {
        self.api_failures
    }

    /// One pass over every application; true when all are Synced and
    /// Healthy (or cannot be read: another pass soon would not help) and no
    /// sync is running. [`Engine::api_failures`] says whether the API server
    /// failed it.
    pub async fn pass(&mut self) -> bool {
        self.api_failed
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let settled = self.pass_inner().await;
        if self.api_failed.load(std::sync::atomic::Ordering::Relaxed) {
            self.api_failures = self.api_failures.saturating_add(1);
        } else {
            self.api_failures = 0;
        }
        settled
    }

    async fn pass_inner(&mut self) -> bool {
        let mut snapshot = self.cache.snapshot();
        if self
            .inventory_checked
            .is_none_or(|t| t.elapsed() >= INVENTORY_CHECK)
            || self.inventory.as_ref().is_some_and(Inventory::lost)
        {
            self.inventory_checked = Some(Instant::now());
            self.check_inventories().await;
        }
        if !self.orphans_checked && snapshot.generation > 0 {
            self.adopt_orphans(&snapshot).await;
            snapshot = self.cache.snapshot();
        }
        // A removal waiting for its deletion hooks keeps passes frequent.
        let removals_done = self.prune_removed(&snapshot).await;
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
        self.terminations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|name| snapshot.apps.contains_key(name));
        // An application whose live state cannot be read does not keep
        // passes frequent: another pass a second later would not read it
        // either (a failing API server backs passes off on its own).
        let settled = removals_done
            && statuses.iter().all(|s| {
                let synced = s.sync == SyncStatus::Synced as i32
                    && s.health == HealthStatus::Healthy.to_proto() as i32;
                let running = s
                    .operation
                    .as_ref()
                    .is_some_and(|o| o.phase == "Running" || o.phase == "Terminating");
                !running && (synced || s.conditions.iter().any(|c| c.r#type == "ComparisonError"))
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
        // An operation of an earlier desired state ends here: its hooks
        // that still run are deleted.
        if let Some(old) = app.operation.as_ref().filter(|o| o.digest != b.digest) {
            self.supersede(&b.name, old.clone()).await;
        }
        let running_op = app
            .operation
            .clone()
            .filter(|o| o.digest == b.digest && o.id != self.ended_operation(&b.name));
        // Taken whatever happens below: a request that finds nothing
        // running changes nothing (the hub raced the operation's end).
        let terminate = self.take_termination(&b.name);
        if terminate && running_op.is_none() {
            info!(app = %b.name, "terminate requested, but no operation is running; nothing to do");
        }
        // A render error, an ignoreDifferences jq expression that does not
        // compile (every comparison would be meaningless) or a manifest the
        // hook model refuses (Argo CD: "one or more synchronization tasks
        // are not valid"): report it, apply nothing.
        let invalid = crate::jq::invalid_expressions(&b.ignore_differences);
        let hook_errors = manifest_errors(b);
        let refusal = if !b.render_error.is_empty() {
            Some(format!("render error: {}", b.render_error))
        } else if !invalid.is_empty() {
            Some(format!("ignoreDifferences: {}", invalid.join("; ")))
        } else if !hook_errors.is_empty() {
            Some(hook_errors.join("; "))
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
        // tenancy: nothing is applied or pruned for an application with
        // an object its project does not allow.
        if let Some(refused) = self.refused_by_project(app).await {
            return refused;
        }
        let Observed {
            mut checks,
            mut parse_errors,
            mut read_error,
            unavailable,
            mut extraneous,
        } = self.check(b).await;
        // Without the live state there is nothing to compare: no drift, no
        // automated sync, until the API server answers again.
        let comparable = read_error.is_none();
        if unavailable {
            self.note_api_failure();
        }
        // `app terminate-op`: the operation is marked Terminating (reported
        // by this pass), and the next pass ends it instead of continuing it,
        // so no further step is applied.
        if let Some(op) = running_op.as_ref().filter(|o| terminate || o.terminating) {
            let op = op.clone();
            if op.terminating {
                self.terminate_operation(&b.name, op).await;
            } else {
                self.mark_terminating(&b.name, op);
            }
            let rt = self.apps.entry(b.name.clone()).or_default();
            return status_of(
                b,
                &Compared {
                    checks: &checks,
                    extraneous: &extraneous,
                    parse_errors: &parse_errors,
                    read_error: read_error.as_deref(),
                },
                rt,
                app.last_applied_ms,
            );
        }
        // A sync the hub terminated is not tried again automatically for
        // the same desired state (Argo CD skips an automated sync to a
        // revision whose last attempt failed).
        let terminated = app.terminated.as_deref() == Some(b.digest.as_str());
        let in_sync = comparable
            && parse_errors.is_empty()
            && checks.iter().all(|c| c.sync == SyncStatus::Synced);
        let digest_changed = app.applied_digest.as_deref() != Some(b.digest.as_str());
        // Objects in the inventory the desired state no longer has: a
        // desired state that came back to an earlier digest (or a sync that
        // ended before its prune) still has them to prune.
        let kept = self
            .apps
            .get(&b.name)
            .map(|rt| rt.kept.clone())
            .unwrap_or_default();
        let stale = if comparable && b.policy.automated && b.policy.prune {
            self.stale_objects(b, &checks, &kept).await
        } else {
            Vec::new()
        };
        let now = Instant::now();
        let mut requested = self.take_request(&b.name);
        // A desired state that arrived during this pass is what the hub
        // asked to sync (it may send the command before the state): the
        // request waits for the next pass, which has it.
        if requested.is_some()
            && self.cache.read(|s| {
                s.apps
                    .get(&b.name)
                    .is_some_and(|a| a.bundle.digest != b.digest)
            })
            && let Some(request) = requested.take()
        {
            self.requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(b.name.clone())
                .or_insert(request);
            self.trigger.notify_one();
        }
        let rt = self.apps.entry(b.name.clone()).or_default();
        if rt.attempt_digest != b.digest {
            rt.attempts = 0;
            rt.retry_at = None;
            rt.attempt_digest.clone_from(&b.digest);
        }
        if in_sync && !digest_changed && stale.is_empty() {
            rt.attempts = 0;
            rt.retry_at = None;
        }
        let drifted = comparable && !in_sync && !digest_changed;
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
        // A sync that has not finished (waiting for hooks or a wave to
        // become healthy) continues, even without `automated`.
        let running = running_op.is_some();
        let wanted = requested.is_some()
            || running
            || (b.policy.automated
                && comparable
                && !terminated
                && (digest_changed
                    || !stale.is_empty()
                    || (drifted && healable && b.policy.self_heal)));
        let limit_reached = requested.is_none()
            && !running
            && b.policy.retry_limit > 0
            && i64::from(rt.attempts) > b.policy.retry_limit;
        let due = requested.is_some() || running || rt.retry_at.is_none_or(|t| now >= t);
        let mut last_applied_ms = app.last_applied_ms;
        if let Some(request) = requested.as_ref().filter(|r| r.dry_run) {
            let prune = b.policy.prune || request.prune;
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
            if let Some(request) = requested
                && let Some(reply) = request.reply
            {
                let _ = reply.send(result);
            }
        } else if wanted && due && !limit_reached {
            if drifted && !running {
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
            if !stale.is_empty() && !digest_changed && !running && requested.is_none() {
                info!(app = %b.name, objects = stale.len(), "the inventory holds objects the desired state no longer has; syncing to prune them");
            }
            let mut op = running_op.unwrap_or_else(|| SyncOperation {
                id: format!("{:08x}", rand::rng().random::<u32>()),
                digest: b.digest.clone(),
                started_ms: now_ms(),
                prune: b.policy.prune,
                ..SyncOperation::default()
            });
            if let Some(r) = &requested {
                // A sync request while this one runs waits for it.
                op.command_id.clone_from(&r.command_id);
                op.prune |= r.prune;
            }
            let shared: BTreeSet<ObjectKey> = checks
                .iter()
                .filter(|c| c.shared_with.is_some())
                .map(|c| c.key.clone())
                .collect();
            if !running
                && b.policy.option("FailOnSharedResource")
                && let Some(warning) = shared_resource_conditions(b, &checks).into_iter().next()
            {
                let message = format!("Shared resource found: {}", warning.message);
                let rt = self.apps.entry(b.name.clone()).or_default();
                let now = now_ms();
                rt.record(OperationState {
                    phase: "Failed".to_owned(),
                    started_ms: now,
                    finished_ms: now,
                    message: message.clone(),
                    command_id: op.command_id.clone(),
                    ..OperationState::default()
                });
                rt.message = message;
                rt.errors.clear();
                rt.attempts = rt.attempts.saturating_add(1);
                rt.retry_at =
                    Some(Instant::now() + jitter(b.policy.retry_backoff.delay(rt.attempts)));
                warn!(app = %b.name, message = %rt.message, "sync refused");
                return status_of(
                    b,
                    &Compared {
                        checks: &checks,
                        extraneous: &extraneous,
                        parse_errors: &parse_errors,
                        read_error: read_error.as_deref(),
                    },
                    rt,
                    last_applied_ms,
                );
            }
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
            // Continues the hub's trace of the commit that brought this
            // bundle (the first apply of it).
            let span = tracing::info_span!("apply", app = %b.name, revision = %b.revision);
            crate::telemetry::adopt_parent(&span, &b.name);
            let apply_started = Instant::now();
            let outcome = tracing::Instrument::instrument(
                self.run_operation(app, &mut op, &skip, &shared),
                span.clone(),
            )
            .await;
            crate::metrics::metrics().apply(&b.name, apply_started.elapsed());
            let finished = now_ms();
            let (name, digest) = (b.name.clone(), b.digest.clone());
            if let Some(why) = outcome.running {
                let rt = self.apps.entry(b.name.clone()).or_default();
                rt.record(operation_state(&op, "Running", 0, &why, outcome.sync_phase));
                rt.errors.clone_from(&outcome.errors);
                rt.message = why;
                let persisted = self.cache.update(|s| {
                    if let Some(cached) = s.apps.get_mut(&name)
                        && cached.bundle.digest == digest
                    {
                        cached.operation = Some(op);
                    }
                });
                if let Err(e) = persisted {
                    warn!(error = %e, "could not persist the cache");
                }
                let observed = self.check(b).await;
                if observed.unavailable {
                    self.note_api_failure();
                }
                let rt = self.apps.entry(b.name.clone()).or_default();
                return status_of(
                    b,
                    &Compared {
                        checks: &observed.checks,
                        extraneous: &observed.extraneous,
                        parse_errors: &observed.parse_errors,
                        read_error: observed.read_error.as_deref(),
                    },
                    rt,
                    last_applied_ms,
                );
            }
            let ok = outcome.failure.is_none() && outcome.errors.is_empty();
            let message = outcome.failure.clone().unwrap_or_default();
            let rt = self.apps.entry(b.name.clone()).or_default();
            rt.record(operation_state(
                &op,
                if ok { "Succeeded" } else { "Failed" },
                finished,
                &message,
                outcome.sync_phase,
            ));
            rt.ended = op.id.clone();
            rt.errors.clone_from(&outcome.errors);
            if op.pruned {
                rt.kept.clone_from(&outcome.kept);
            }
            // Object errors show per object; the application's message is
            // for what is not about one object.
            rt.message = if message == failure_summary(&outcome.errors) {
                String::new()
            } else {
                message
            };
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
                info!(app = %b.name, revision = %b.revision, objects = outcome.objects, "applied");
            } else {
                warn!(app = %b.name, errors = outcome.errors.len(), message = %rt.message, "apply finished with errors");
            }
            // The inventory is not set here: objects were claimed before
            // they were applied and released as their deletion was
            // confirmed, whatever the desired state is by now.
            let persisted = self.cache.update(|s| {
                if let Some(cached) = s.apps.get_mut(&name)
                    && cached.bundle.digest == digest
                {
                    cached.last_applied_ms = finished;
                    cached.operation = None;
                    cached.terminated = None;
                    if ok {
                        cached.applied_digest = Some(digest);
                    }
                }
            });
            if let Err(e) = persisted {
                warn!(error = %e, "could not persist the cache");
            }
            last_applied_ms = finished;
            let observed = tracing::Instrument::instrument(
                self.check(b),
                tracing::info_span!(parent: &span, "health", app = %b.name),
            )
            .await;
            if observed.unavailable {
                self.note_api_failure();
            }
            Observed {
                checks,
                parse_errors,
                read_error,
                extraneous,
                ..
            } = observed;
        } else if wanted && limit_reached {
            let rt = self.apps.entry(b.name.clone()).or_default();
            let limit = format!("retry limit {} reached", b.policy.retry_limit);
            if rt.message.is_empty() {
                rt.message = limit;
            } else if !rt.message.starts_with(&limit) {
                rt.message = format!("{limit}: {}", rt.message);
            }
        }
        let rt = self.apps.entry(b.name.clone()).or_default();
        status_of(
            b,
            &Compared {
                checks: &checks,
                extraneous: &extraneous,
                parse_errors: &parse_errors,
                read_error: read_error.as_deref(),
            },
            rt,
            last_applied_ms,
        )
    }

    /// The id of the operation this agent ended last for `app` (its cache
    /// entry may still be on its way out).
    fn ended_operation(&self, app: &str) -> String {
        self.apps
            .get(app)
            .map(|rt| rt.ended.clone())
            .unwrap_or_default()
    }

    /// Marks `app`'s running operation Terminating (persisted, so a
    /// restarted agent still ends it) and asks for the pass that ends it.
    fn mark_terminating(&mut self, app: &str, mut op: SyncOperation) {
        op.terminating = true;
        info!(app, operation = %op.id, "terminating the operation (requested by the hub)");
        let rt = self.apps.entry(app.to_owned()).or_default();
        let (message, sync_phase) = rt
            .operation
            .as_ref()
            .map(|o| (o.message.clone(), o.sync_phase.clone()))
            .unwrap_or_default();
        rt.record(operation_state(
            &op,
            "Terminating",
            0,
            &message,
            &sync_phase,
        ));
        let persisted = self.cache.update(|s| {
            if let Some(cached) = s.apps.get_mut(app)
                && cached.operation.as_ref().is_some_and(|o| o.id == op.id)
            {
                cached.operation = Some(op);
            }
        });
        if let Err(e) = persisted {
            warn!(error = %e, "could not persist the cache");
        }
        self.trigger.notify_one();
    }

    /// Ends an operation the hub terminated, as Argo CD does: hooks still
    /// running are deleted (whatever their policy), finished hooks go per
    /// their policies for a failed operation, no SyncFail hook runs, and
    /// the operation is Failed with [`OPERATION_TERMINATED`]. Its digest is
    /// not synced again automatically.
    async fn terminate_operation(&mut self, app: &str, mut op: SyncOperation) {
        for run in &mut op.hooks {
            if run.status == crate::hooks::HookStatus::Running {
                // It may have finished since the last pass.
                self.observe_hook(run).await;
            }
            if run.status.finished() {
                if crate::hooks::deleted_after(&run.policies, false) {
                    self.delete_hook(app, run).await;
                }
            } else {
                self.terminate_hook(app, run, "terminated: the operation was terminated")
                    .await;
            }
        }
        info!(app, operation = %op.id, "{OPERATION_TERMINATED}");
        let rt = self.apps.entry(app.to_owned()).or_default();
        let sync_phase = rt
            .operation
            .as_ref()
            .map(|o| o.sync_phase.clone())
            .unwrap_or_default();
        rt.record(operation_state(
            &op,
            "Failed",
            now_ms(),
            OPERATION_TERMINATED,
            &sync_phase,
        ));
        rt.ended = op.id.clone();
        rt.message = OPERATION_TERMINATED.to_owned();
        let id = op.id.clone();
        let persisted = self.cache.update(|s| {
            if let Some(cached) = s.apps.get_mut(app)
                && cached.operation.as_ref().is_some_and(|o| o.id == id)
            {
                cached.operation = None;
                cached.terminated = Some(op.digest.clone());
            }
        });
        if let Err(e) = persisted {
            warn!(error = %e, "could not persist the cache");
        }
    }

    /// Ends an operation whose desired state was replaced before it
    /// finished: its hooks that still run are deleted.
    async fn supersede(&mut self, app: &str, mut op: SyncOperation) {
        let why = "terminated: the desired state changed before the sync finished";
        for run in &mut op.hooks {
            self.terminate_hook(app, run, why).await;
        }
        info!(app, operation = %op.id, "{why}");
        let rt = self.apps.entry(app.to_owned()).or_default();
        rt.record(operation_state(&op, "Failed", now_ms(), why, "Sync"));
        let id = op.id.clone();
        let persisted = self.cache.update(|s| {
            if let Some(cached) = s.apps.get_mut(app)
                && cached.operation.as_ref().is_some_and(|o| o.id == id)
            {
                cached.operation = None;
            }
        });
        if let Err(e) = persisted {
            warn!(error = %e, "could not persist the cache");
        }
    }
}

/// The wire form of an operation.
fn operation_state(
    op: &SyncOperation,
    phase: &str,
    finished_ms: i64,
    message: &str,
    sync_phase: &str,
) -> OperationState {
    OperationState {
        phase: phase.to_owned(),
        started_ms: op.started_ms,
        finished_ms,
        message: message.to_owned(),
        command_id: op.command_id.clone(),
        sync_phase: sync_phase.to_owned(),
        hooks: op
            .hooks
            .iter()
            .map(crate::hooks::HookRun::to_proto)
            .collect(),
    }
}

/// What the hook model refuses in a bundle's manifests (unknown hook
/// types or policies, `generateName` on a resource).
fn manifest_errors(b: &Bundle) -> Vec<String> {
    crate::object::parse_manifests(&b.manifests)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|o| crate::hooks::role(&o).err())
        .map(|e| e.to_string())
        .collect()
}

/// Argo CD's SharedResourceWarning for every desired object whose live
/// object another application tracks.
fn shared_resource_conditions(b: &Bundle, checks: &[ResourceCheck]) -> Vec<AppCondition> {
    checks
        .iter()
        .filter_map(|c| {
            c.shared_with.as_ref().map(|owner| AppCondition {
                r#type: "SharedResourceWarning".to_owned(),
                message: format!(
                    "{}/{} is part of applications {} and {owner}",
                    c.key.kind, c.key.name, b.name
                ),
            })
        })
        .collect()
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
                    ..OperationState::default()
                });
            }
        }
        rt.operation.clone()
    }
}

/// The first object errors of a failed apply, for the operation message.
pub(super) fn failure_summary(errors: &BTreeMap<ObjectKey, String>) -> String {
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

/// The pause after `failures` consecutive passes the API server failed:
/// 1 s, 2 s, 4 s … up to [`API_BACKOFF_MAX`], ±20 % jitter.
fn api_backoff(failures: u32) -> Duration {
    jitter(
        Duration::from_secs(1)
            .saturating_mul(1u32 << failures.saturating_sub(1).min(8))
            .min(API_BACKOFF_MAX),
    )
}

/// ±20 % jitter, so agents and applications do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// The status of one application. `read_error` says why its live state
/// could not be read: then sync and health are Unknown and the message and
/// a `ComparisonError` condition say why (never drift, never OutOfSync).
/// What one pass compared: the desired objects, the extraneous ones, and
/// what kept the comparison from being whole.
struct Compared<'a> {
    checks: &'a [ResourceCheck],
    extraneous: &'a [live::Extraneous],
    parse_errors: &'a [String],
    read_error: Option<&'a str>,
}

fn status_of(
    b: &Bundle,
    compared: &Compared<'_>,
    rt: &AppRuntime,
    last_applied_ms: i64,
) -> AppStatus {
    let Compared {
        checks,
        extraneous,
        parse_errors,
        read_error,
    } = *compared;
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
            requires_pruning: false,
        })
        .chain(extraneous.iter().map(|e| {
            ResourceStatus {
                key: Some(e.check.key.to_proto()),
                sync: e.check.sync as i32,
                health: e.check.health.status.to_proto() as i32,
                message: rt
                    .errors
                    .get(&e.check.key)
                    .cloned()
                    .unwrap_or_else(|| e.check.message.clone()),
                drift: Vec::new(),
                requires_pruning: true,
            }
        }))
        .collect();
    // An object left to prune makes the application OutOfSync (unless it
    // opts out with IgnoreExtraneous), as in Argo CD.
    let to_prune = extraneous.iter().find(|e| !e.ignored);
    let unreadable = read_error.map(|e| format!("cannot read live state: {e}"));
    let sync = if unreadable.is_some() {
        SyncStatus::Unknown
    } else if !parse_errors.is_empty()
        || checks.iter().any(|c| c.sync == SyncStatus::OutOfSync)
        || to_prune.is_some()
    {
        SyncStatus::OutOfSync
    } else if checks.iter().any(|c| c.sync == SyncStatus::Unknown) {
        // The cluster could not be read: say so rather than guess.
        SyncStatus::Unknown
    } else {
        SyncStatus::Synced
    };
    let health = if unreadable.is_some() {
        HealthStatus::Unknown
    } else {
        health::aggregate(
            checks
                .iter()
                .map(|c| &c.health)
                .chain(extraneous.iter().map(|e| &e.check.health)),
        )
    };
    let message = if let Some(e) = &unreadable {
        e.clone()
    } else if let Some(e) = parse_errors.first() {
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
    } else if let Some(e) = to_prune {
        format!("{}: requires pruning", e.check.key)
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
        conditions: unreadable
            .map(|message| AppCondition {
                r#type: "ComparisonError".to_owned(),
                message,
            })
            .into_iter()
            .chain(shared_resource_conditions(b, checks))
            .collect(),
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
