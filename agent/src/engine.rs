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

use flotilla_proto::{AppStatus, OperationState, ResourceDiff, ResourceStatus, SyncStatus};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::bundle::Bundle;
use crate::cache::{Cache, CachedApp, CachedState, RemovedApp};
use crate::cluster::{Cluster, Resolved};
use crate::custom_health::HealthRules;
use crate::drift;
use crate::health::{self, Health, HealthStatus};
use crate::inventory::Inventory;
use crate::object::{self, ObjectKey};
use crate::plan;
use crate::report::{Report, now_ms};

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
    /// A sync of `digest` waiting before wave index `next` since `since`.
    waves: Option<WaveProgress>,
}

#[derive(Debug, Clone)]
struct WaveProgress {
    digest: String,
    next: usize,
    since: Instant,
}

/// Result of applying one application.
#[derive(Debug, Default)]
struct ApplyOutcome {
    errors: BTreeMap<ObjectKey, String>,
    message: String,
    inventory: Vec<ObjectKey>,
    /// Stopped before wave index `.0` because wave number `.1` is not
    /// healthy yet (`.2` says why).
    waiting: Option<(usize, i64, String)>,
}

impl ApplyOutcome {
    fn ok(&self) -> bool {
        self.errors.is_empty() && self.message.is_empty()
    }
}

/// Where a sync wave stands.
enum WaveHealth {
    Healthy,
    Pending(String),
    Degraded(String),
}

/// A sync asked for by the hub (`SyncNow`), applied even without
/// `automated` and regardless of retry backoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncRequest {
    /// Prune even if the policy does not.
    pub prune: bool,
    /// Only report; change nothing.
    pub dry_run: bool,
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
        let settled = statuses.iter().all(|s| {
            s.sync == SyncStatus::Synced as i32
                && s.health == HealthStatus::Healthy.to_proto() as i32
        });
        let report = Report {
            generation: snapshot.generation,
            apps: statuses,
        };
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
        if !b.render_error.is_empty() {
            return AppStatus {
                name: b.name.clone(),
                revision: b.revision.clone(),
                digest: b.digest.clone(),
                sync: SyncStatus::Unknown as i32,
                health: HealthStatus::Unknown.to_proto() as i32,
                message: format!("render error: {}", b.render_error),
                last_applied_ms: app.last_applied_ms,
                observed_ms: now_ms(),
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
        // Healing an object another application tracks would make the two
        // take it from each other forever; only a new digest or a sync
        // request applies it.
        let healable = checks
            .iter()
            .any(|c| c.sync != SyncStatus::Synced && c.shared_with.is_none());
        let wanted = requested.is_some()
            || (b.policy.automated
                && (digest_changed || (drifted && healable && b.policy.self_heal)));
        let limit_reached = requested.is_none()
            && b.policy.retry_limit > 0
            && i64::from(rt.attempts) > b.policy.retry_limit;
        let due = requested.is_some() || rt.retry_at.is_none_or(|t| now >= t);
        let dry_run = requested.is_some_and(|r| r.dry_run);
        let prune = b.policy.prune || requested.is_some_and(|r| r.prune);
        let mut last_applied_ms = app.last_applied_ms;
        if wanted && dry_run {
            let out_of_sync = checks
                .iter()
                .filter(|c| c.sync != SyncStatus::Synced)
                .count();
            info!(app = %b.name, out_of_sync, "dry run: nothing applied");
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
            let mut outcome = self.apply(app, prune, &skip, resume_from).await;
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
                    rt.operation = Some(OperationState {
                        phase: "Running".to_owned(),
                        started_ms: started,
                        finished_ms: 0,
                        message: format!("waiting for sync wave {wave} to become healthy: {why}"),
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
            rt.operation = Some(OperationState {
                phase: if ok { "Succeeded" } else { "Failed" }.to_owned(),
                started_ms: started,
                finished_ms: finished,
                message: outcome.message.clone(),
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
            (checks, parse_errors) = self.check(b).await;
        } else if wanted && limit_reached {
            let rt = self.apps.entry(b.name.clone()).or_default();
            if rt.message.is_empty() {
                rt.message = format!("retry limit {} reached", b.policy.retry_limit);
            }
        }
        let rt = self.apps.entry(b.name.clone()).or_default();
        status_of(b, &checks, &parse_errors, rt, last_applied_ms)
    }

    /// Reads the live state of every desired object and compares it with
    /// what the agent applies.
    async fn check(&self, b: &Bundle) -> (Vec<ResourceCheck>, Vec<String>) {
        // Slots keep manifest order; resolved objects are read in groups.
        enum Slot {
            Done(ResourceCheck),
            Pending(ObjectKey, Resolved, Value),
        }
        let mut slots = Vec::new();
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for parsed in object::parse_manifests(&b.manifests) {
            let obj = match parsed {
                Ok(o) => o,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let Ok(mut key) = ObjectKey::of(&obj, 0) else {
                continue;
            };
            let resolved = match self.cluster.resolve(&key).await {
                Ok(r) => r,
                Err(e) => {
                    if key.namespace.is_empty() {
                        key.namespace.clone_from(&b.namespace);
                    }
                    // A kind the cluster does not serve means the object
                    // is missing; not reaching the cluster means we do not
                    // know.
                    let (sync, health) = if e.is_unknown_kind() {
                        (SyncStatus::OutOfSync, Health::missing())
                    } else {
                        (
                            SyncStatus::Unknown,
                            Health {
                                status: HealthStatus::Unknown,
                                message: String::new(),
                            },
                        )
                    };
                    slots.push(Slot::Done(ResourceCheck {
                        key,
                        sync,
                        health,
                        message: e.to_string(),
                        drift: Vec::new(),
                        shared_with: None,
                    }));
                    continue;
                }
            };
            self.cluster.watch_kind(&key, &resolved);
            let desired = object::prepare(obj, &b.name, &b.namespace, resolved.namespaced);
            key.namespace = namespace_of(&desired);
            if !seen.insert(key.clone()) {
                continue;
            }
            slots.push(Slot::Pending(key, resolved, desired));
        }
        // One LIST (by the application's label) per kind and namespace with
        // several objects instead of one GET each.
        let mut groups: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
        for slot in &slots {
            if let Slot::Pending(key, _, _) = slot {
                *groups.entry(group_of(key)).or_default() += 1;
            }
        }
        let mut listed: HashMap<(String, String, String, String), HashMap<String, Value>> =
            HashMap::new();
        let selector = format!("{}={}", object::APP_LABEL, b.name);
        for slot in &slots {
            let Slot::Pending(key, resolved, _) = slot else {
                continue;
            };
            let group = group_of(key);
            if groups.get(&group).copied().unwrap_or(0) < 2 || listed.contains_key(&group) {
                continue;
            }
            if let Ok(items) = self.cluster.list(resolved, &key.namespace, &selector).await {
                let by_name = items
                    .into_iter()
                    .filter_map(|o| {
                        let name = o.pointer("/metadata/name")?.as_str()?.to_owned();
                        Some((name, o))
                    })
                    .collect();
                listed.insert(group, by_name);
            }
        }
        let mut checks = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Slot::Done(c) => checks.push(c),
                Slot::Pending(key, resolved, desired) => {
                    let live = match listed
                        .get_mut(&group_of(&key))
                        .and_then(|m| m.remove(&key.name))
                    {
                        Some(live) => Ok(Some(live)),
                        // Not listed: absent, or without our label (another
                        // application's, or not yet adopted); read it.
                        None => self.cluster.get(&resolved, &key).await,
                    };
                    checks.push(self.check_one(b, key, live, &desired));
                }
            }
        }
        (checks, errors)
    }

    fn check_one(
        &self,
        b: &Bundle,
        key: ObjectKey,
        live: Result<Option<Value>, crate::cluster::ClusterError>,
        desired: &Value,
    ) -> ResourceCheck {
        match live {
            Ok(None) => ResourceCheck {
                key,
                sync: SyncStatus::OutOfSync,
                health: Health::missing(),
                message: String::new(),
                drift: Vec::new(),
                shared_with: None,
            },
            Ok(Some(live)) => {
                let ignore = ignored_paths(b, &key, &live);
                let drift: Vec<String> = drift::diff(desired, &live, &ignore)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let health = self.health.assess(&live);
                let shared_with = object::tracking_app(&live)
                    .filter(|owner| *owner != b.name)
                    .map(str::to_owned);
                let message = match &shared_with {
                    Some(owner) => format!("also managed by application {owner}"),
                    None => health.message.clone(),
                };
                ResourceCheck {
                    sync: if drift.is_empty() {
                        SyncStatus::Synced
                    } else {
                        SyncStatus::OutOfSync
                    },
                    message,
                    health,
                    key,
                    drift,
                    shared_with,
                }
            }
            Err(e) => ResourceCheck {
                key,
                sync: SyncStatus::Unknown,
                health: Health {
                    status: HealthStatus::Unknown,
                    message: String::new(),
                },
                message: e.to_string(),
                drift: Vec::new(),
                shared_with: None,
            },
        }
    }

    /// Applies one application in plan order, then prunes when the policy
    /// says so.
    async fn apply(
        &self,
        app: &CachedApp,
        prune: bool,
        skip: &BTreeSet<ObjectKey>,
        resume_from: usize,
    ) -> ApplyOutcome {
        let b = &app.bundle;
        let mut out = ApplyOutcome::default();
        let mut objects = Vec::new();
        let mut messages = Vec::new();
        for parsed in object::parse_manifests(&b.manifests) {
            match parsed {
                Ok(obj) => {
                    if let Ok(key) = ObjectKey::of(&obj, 0) {
                        // Learn the scope of known kinds before planning.
                        let _ = self.cluster.resolve(&key).await;
                        objects.push((key, obj.clone(), obj));
                    }
                }
                Err(e) => messages.push(e.to_string()),
            }
        }
        if b.policy.option("CreateNamespace")
            && !b.namespace.is_empty()
            && let Err(e) = self.ensure_namespace(&b.namespace).await
        {
            messages.push(format!("create namespace {}: {e}", b.namespace));
        }
        let waves = plan::plan(objects, |k| self.cluster.known_scope(k));
        let wave_count = waves.len();
        let mut desired_keys = BTreeSet::new();
        for (i, wave) in waves.into_iter().enumerate() {
            // Waves before `resume_from` were applied for this digest by an
            // earlier pass; only their identities are needed.
            let done_before = i < resume_from;
            let mut applied = Vec::new();
            for step in wave.steps {
                let mut key = step.key;
                let resolved = match self.cluster.resolve(&key).await {
                    Ok(r) => r,
                    Err(e) => {
                        if key.namespace.is_empty() {
                            key.namespace.clone_from(&b.namespace);
                        }
                        desired_keys.insert(key.clone());
                        out.errors.insert(key, e.to_string());
                        continue;
                    }
                };
                let desired =
                    object::prepare(step.item, &b.name, &b.namespace, resolved.namespaced);
                key.namespace = namespace_of(&desired);
                desired_keys.insert(key.clone());
                if done_before || skip.contains(&key) {
                    applied.push((key, resolved));
                    continue;
                }
                match self.cluster.apply(&resolved, &key, &desired).await {
                    Ok(_) => {
                        if step.phase == plan::Phase::Crds
                            && let Err(e) = self.wait_healthy(&resolved, &key, CRD_DEADLINE).await
                        {
                            out.errors.insert(key.clone(), e);
                        }
                        applied.push((key, resolved));
                    }
                    Err(e) => {
                        warn!(app = %b.name, object = %key, error = %e, "apply failed");
                        out.errors.insert(key, e.to_string());
                    }
                }
            }
            // The next wave waits for this one to be healthy. Rather than
            // block the engine, stop here; a later pass resumes.
            if i + 1 < wave_count && i + 1 >= resume_from {
                match self.wave_health(&applied).await {
                    WaveHealth::Healthy => {}
                    WaveHealth::Pending(why) => {
                        out.waiting = Some((i + 1, wave.wave, why));
                        break;
                    }
                    WaveHealth::Degraded(why) => {
                        messages.push(format!("sync wave {} is not healthy: {why}", wave.wave));
                        break;
                    }
                }
            }
        }
        // Objects not applied this time stay in the inventory until a
        // successful apply or prune accounts for them.
        let mut inventory: BTreeSet<ObjectKey> = desired_keys.clone();
        let complete = out.errors.is_empty() && messages.is_empty() && out.waiting.is_none();
        if !complete {
            inventory.extend(app.inventory.iter().cloned());
        } else if prune {
            let mut known: BTreeSet<ObjectKey> = app.inventory.iter().cloned().collect();
            if known.is_empty()
                && let Some(store) = &self.inventory
            {
                // A fresh cache: what earlier agents applied is in the cluster.
                match store.load(&self.cluster, &b.name).await {
                    Ok(Some(stored)) => known.extend(stored.objects),
                    Ok(None) => {}
                    Err(e) => warn!(app = %b.name, error = %e, "could not read the inventory"),
                }
            }
            let stale: Vec<ObjectKey> = known
                .into_iter()
                .filter(|k| !desired_keys.contains(k))
                .collect();
            if desired_keys.is_empty() && !stale.is_empty() && !b.policy.allow_empty {
                messages.push("desired state is empty; not pruning without allowEmpty".to_owned());
                inventory.extend(stale);
            } else {
                for key in self.prune_order(stale) {
                    if let Err(e) = self.prune_one(&b.name, &key).await {
                        warn!(app = %b.name, object = %key, error = %e, "prune failed");
                        out.errors.insert(key.clone(), format!("prune: {e}"));
                        inventory.insert(key);
                    }
                }
            }
        }
        out.message = messages.join("; ");
        out.inventory = inventory.into_iter().collect();
        out
    }

    /// Prune runs the apply order backwards: namespaced objects first,
    /// Namespaces last.
    fn prune_order(&self, keys: Vec<ObjectKey>) -> Vec<ObjectKey> {
        plan::prune_order(keys, |k| self.cluster.known_scope(k))
    }

    /// Deletes one object if it carries this application's tracking identity
    /// and does not opt out of pruning.
    async fn prune_one(&self, app: &str, key: &ObjectKey) -> Result<(), String> {
        let resolved = match self.cluster.resolve(key).await {
            Ok(r) => r,
            // The kind is gone, and with it every object of it.
            Err(_) => return Ok(()),
        };
        let Some(live) = self
            .cluster
            .get(&resolved, key)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        if !object::is_tracked_by(&live, app, key) {
            info!(app, object = %key, "not pruning an object this application does not track");
            return Ok(());
        }
        if object::prune_disabled(&live) {
            info!(app, object = %key, "not pruning: Prune=false");
            return Ok(());
        }
        info!(app, object = %key, "pruning");
        self.cluster
            .delete(&resolved, key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn prune_removed(&self, snapshot: &CachedState) {
        for (name, removed) in &snapshot.removed {
            let mut failed = false;
            if removed.policy.prune {
                for key in &self.prune_order(removed.inventory.clone()) {
                    if let Err(e) = self.prune_one(name, key).await {
                        warn!(app = %name, object = %key, error = %e, "prune of removed application failed");
                        failed = true;
                    }
                }
            } else if !removed.inventory.is_empty() {
                info!(app = %name, "application removed; prune is off, its objects stay");
            }
            if !failed
                && let Some(store) = &self.inventory
                && let Err(e) = store.remove(&self.cluster, name).await
            {
                warn!(app = %name, error = %e, "could not delete the inventory");
                failed = true;
            }
            if !failed {
                let result = self.cache.update(|s| {
                    s.removed.remove(name);
                });
                if let Err(e) = result {
                    warn!(error = %e, "could not persist the cache");
                }
            }
        }
    }

    /// Applications the cluster has inventories for but the hub no longer
    /// lists (removed while this agent, or its disk, was away) are queued
    /// for pruning like any removed application.
    async fn adopt_orphans(&mut self, snapshot: &CachedState) {
        let Some(store) = &self.inventory else {
            self.orphans_checked = true;
            return;
        };
        let stored = match store.list(&self.cluster).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "could not list inventories");
                return;
            }
        };
        self.orphans_checked = true;
        let orphans: Vec<_> = stored
            .into_iter()
            .filter(|s| {
                !snapshot.apps.contains_key(&s.app) && !snapshot.removed.contains_key(&s.app)
            })
            .collect();
        if orphans.is_empty() {
            return;
        }
        let result = self.cache.update(|s| {
            for orphan in orphans {
                info!(app = %orphan.app, objects = orphan.objects.len(), "application no longer desired; found its inventory in the cluster");
                s.removed.insert(
                    orphan.app,
                    RemovedApp {
                        policy: crate::bundle::Policy {
                            prune: orphan.prune,
                            ..Default::default()
                        },
                        inventory: orphan.objects,
                    },
                );
            }
        });
        if let Err(e) = result {
            warn!(error = %e, "could not persist the cache");
        }
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), String> {
        let key = ObjectKey {
            group: String::new(),
            version: "v1".to_owned(),
            kind: "Namespace".to_owned(),
            namespace: String::new(),
            name: namespace.to_owned(),
        };
        let resolved = self
            .cluster
            .resolve(&key)
            .await
            .map_err(|e| e.to_string())?;
        if self
            .cluster
            .get(&resolved, &key)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(());
        }
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        self.cluster
            .apply(&resolved, &key, &obj)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The health of the objects of one wave, read once.
    async fn wave_health(&self, objects: &[(ObjectKey, Resolved)]) -> WaveHealth {
        for (key, r) in objects {
            let health = match self.cluster.get(r, key).await {
                Ok(Some(live)) => self.health.assess(&live),
                Ok(None) => Health::missing(),
                Err(e) => Health {
                    status: HealthStatus::Unknown,
                    message: e.to_string(),
                },
            };
            match health.status {
                HealthStatus::Healthy | HealthStatus::Suspended => {}
                HealthStatus::Degraded => {
                    return WaveHealth::Degraded(format!("{key} is Degraded: {}", health.message));
                }
                other => return WaveHealth::Pending(format!("{key} is {other}")),
            }
        }
        WaveHealth::Healthy
    }

    /// Polls an object until it is Healthy (or Suspended), with a deadline.
    async fn wait_healthy(
        &self,
        r: &Resolved,
        key: &ObjectKey,
        deadline: Duration,
    ) -> Result<(), String> {
        let until = Instant::now() + deadline;
        loop {
            let health = match self.cluster.get(r, key).await {
                Ok(Some(live)) => self.health.assess(&live),
                Ok(None) => Health::missing(),
                Err(e) => Health {
                    status: HealthStatus::Unknown,
                    message: e.to_string(),
                },
            };
            match health.status {
                HealthStatus::Healthy | HealthStatus::Suspended => return Ok(()),
                HealthStatus::Degraded => {
                    return Err(format!("{key} is Degraded: {}", health.message));
                }
                _ if Instant::now() >= until => {
                    return Err(format!(
                        "{key} is still {} after {deadline:?}",
                        health.status
                    ));
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }
}

/// The objects of an application whose live state differs from what the
/// agent applies (missing ones with an empty `live`), for the hub's diff
/// request. Live objects are shown without `managedFields`.
pub async fn diff_app(cluster: &Cluster, b: &Bundle) -> Result<Vec<ResourceDiff>, String> {
    if !b.render_error.is_empty() {
        return Err(format!("render error: {}", b.render_error));
    }
    let mut out = Vec::new();
    for parsed in object::parse_manifests(&b.manifests) {
        let obj = parsed.map_err(|e| e.to_string())?;
        let Ok(mut key) = ObjectKey::of(&obj, 0) else {
            continue;
        };
        let (desired, live) = match cluster.resolve(&key).await {
            Ok(r) => {
                let desired = object::prepare(obj, &b.name, &b.namespace, r.namespaced);
                key.namespace = namespace_of(&desired);
                let live = cluster.get(&r, &key).await.map_err(|e| e.to_string())?;
                (desired, live)
            }
            Err(_) => (obj, None),
        };
        let differs = match &live {
            None => true,
            Some(live) => {
                let ignore = ignored_paths(b, &key, live);
                !drift::diff(&desired, live, &ignore).is_empty()
            }
        };
        if differs {
            let live = live.map(|mut l| {
                if let Some(m) = l.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("managedFields");
                }
                l
            });
            out.push(ResourceDiff {
                key: Some(key.to_proto()),
                live: live.map(|l| l.to_string()).unwrap_or_default(),
                desired: desired.to_string(),
            });
        }
    }
    Ok(out)
}

/// What `ignoreDifferences` excludes for one object: its JSON pointers and
/// the fields owned by its `managedFieldsManagers`.
fn ignored_paths(b: &Bundle, key: &ObjectKey, live: &Value) -> Vec<String> {
    let entries = &b.ignore_differences;
    let mut ignore =
        drift::ignored_pointers(entries, &key.group, &key.kind, &key.namespace, &key.name);
    let managers =
        drift::ignored_managers(entries, &key.group, &key.kind, &key.namespace, &key.name);
    if !managers.is_empty() {
        ignore.extend(drift::managed_paths(live, &managers));
    }
    ignore
}

/// Objects read together: same group, version, kind and namespace.
fn group_of(key: &ObjectKey) -> (String, String, String, String) {
    (
        key.group.clone(),
        key.version.clone(),
        key.kind.clone(),
        key.namespace.clone(),
    )
}

fn namespace_of(obj: &Value) -> String {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
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
}
