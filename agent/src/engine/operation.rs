//! A sync operation as a pass-based state machine, after Argo CD's
//! (gitops-engine `sync_context.go`): the application's resources and hooks
//! are planned into steps (one per wave of each phase: PreSync, Sync,
//! PostSync); each pass checks the step applied last (its hooks finished,
//! its resources healthy unless it is the very last step) and then applies
//! the next ones, until it has to wait. Waiting never blocks the engine:
//! the operation stays `Running` and a later pass continues it, also after
//! an agent restart (the operation is persisted in the cache).
//!
//! A step that fails (a hook fails, an object is refused, a wave turns
//! Degraded or does not finish in time) fails the operation before any
//! later step is touched; the SyncFail hooks then run, and the operation is
//! Failed once they have finished. Objects no longer desired are pruned at
//! the end of the Sync phase, before PostSync. Hooks are deleted per their
//! policies when the operation ends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tracing::{info, warn};

use super::hooks::HookTemplate;
use super::live::namespace_of;
use super::{CRD_DEADLINE, Engine, WAVE_DEADLINE};
use crate::cache::CachedApp;
use crate::cluster::Resolved;
use crate::hooks::{self, HookRun, HookStatus, Role, SyncOperation, SyncPhase};
use crate::object::{self, ObjectKey};
use crate::plan::{self, Wave};
use crate::report::now_ms;

/// How many server-side applies of one batch (objects of one kind in one
/// wave) are in flight at once.
const APPLY_CONCURRENCY: usize = 8;

/// An application's desired state split for a sync.
#[derive(Debug, Default)]
pub(super) struct Desired {
    /// Resources: identity (with the namespace they get), kind, the object
    /// as applied (prepared with tracking), or why the kind did not resolve.
    pub(super) resources: Vec<DesiredResource>,
    /// Hooks with their identity (namespace as created).
    pub(super) hooks: Vec<HookTemplate>,
    /// Objects not applied (`Skip`) that still count as desired, so they
    /// are not pruned.
    pub(super) skipped: Vec<ObjectKey>,
    /// Manifests that are not objects.
    pub(super) errors: Vec<String>,
}

/// One resource of the desired state.
#[derive(Debug, Clone)]
pub(super) struct DesiredResource {
    pub(super) key: ObjectKey,
    pub(super) resolved: Result<Resolved, String>,
    /// The object as applied (with tracking) once its kind resolved.
    pub(super) object: Value,
    /// The manifest as rendered.
    pub(super) manifest: Value,
}

/// What the planner orders.
#[derive(Debug, Clone, Copy)]
enum Item {
    Resource(usize),
    Hook(usize),
}

/// Where an operation stands after a pass.
#[derive(Debug, Default)]
pub(super) struct RunOutcome {
    /// Waiting (why); a later pass continues.
    pub(super) running: Option<String>,
    /// Set when the operation ended unsuccessfully: why.
    pub(super) failure: Option<String>,
    /// Objects the API server refused.
    pub(super) errors: BTreeMap<ObjectKey, String>,
    /// How many objects the desired state has.
    pub(super) objects: usize,
    /// Objects the prune left because they opt out of it (`Prune=false`).
    pub(super) kept: BTreeSet<ObjectKey>,
    /// The sync phase it is in or ended in.
    pub(super) sync_phase: &'static str,
}

enum StepState {
    Done,
    /// Waiting: why, and whether for hooks (or for health).
    Pending(String, bool),
    Failed(String),
}

enum PruneResult {
    /// Pruned: the objects that could not be (why), and those kept
    /// (`Prune=false`).
    Done(BTreeMap<ObjectKey, String>, BTreeSet<ObjectKey>),
    Waiting(String),
    Refused(String),
}

impl Engine {
    /// Splits a bundle into resources, hooks and skipped objects, resolving
    /// each kind (unknown kinds keep their error) and giving namespaced
    /// objects the application's namespace.
    pub(super) async fn desired(&self, b: &crate::bundle::Bundle) -> Desired {
        let mut out = Desired::default();
        let mut seen = BTreeSet::new();
        for parsed in object::parse_manifests(&b.manifests) {
            let obj = match parsed {
                Ok(o) => o,
                Err(e) => {
                    out.errors.push(e.to_string());
                    continue;
                }
            };
            // Errors of the hook model refuse the whole sync earlier.
            let Ok(role) = hooks::role(&obj) else {
                continue;
            };
            let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let (group, version) = object::split_api_version(api_version);
            let mut key = ObjectKey {
                group: group.to_owned(),
                version: version.to_owned(),
                kind: obj
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                namespace: namespace_of(&obj),
                name: hooks::template_name(&obj).unwrap_or("").to_owned(),
            };
            let resolved = self.cluster.resolve(&key).await.map_err(|e| e.to_string());
            match &resolved {
                Ok(r) if !r.namespaced => key.namespace.clear(),
                _ if key.namespace.is_empty() => key.namespace.clone_from(&b.namespace),
                _ => {}
            }
            match role {
                Role::Resource => {
                    if !seen.insert(key.clone()) {
                        continue;
                    }
                    let object = match &resolved {
                        Ok(r) => object::prepare(obj.clone(), &b.name, &b.namespace, r.namespaced),
                        Err(_) => obj.clone(),
                    };
                    out.resources.push(DesiredResource {
                        key,
                        resolved,
                        object,
                        manifest: obj,
                    });
                }
                Role::Hook(spec) => out.hooks.push(HookTemplate {
                    key,
                    resolved,
                    manifest: obj,
                    spec,
                }),
                Role::Skip => out.skipped.push(key),
                Role::Unsupported(what) => {
                    info!(app = %b.name, object = %key, "{what} has no Argo CD equivalent; not applied");
                }
            }
        }
        out
    }

    /// Runs (or continues) `op` for `app` as far as it can go in this pass.
    /// `skip` lists resources left alone (ApplyOutOfSyncOnly); `shared`
    /// those whose live object another application tracks.
    pub(super) async fn run_operation(
        &self,
        app: &CachedApp,
        op: &mut SyncOperation,
        skip: &BTreeSet<ObjectKey>,
        shared: &BTreeSet<ObjectKey>,
    ) -> RunOutcome {
        let b = &app.bundle;
        let mut desired = self.desired(b).await;
        let mut out = RunOutcome {
            objects: desired.resources.len(),
            ..RunOutcome::default()
        };
        // Whatever this pass may apply is in the inventory first, so no
        // desired state that arrives meanwhile, crash or restart can leave
        // an applied object where no prune finds it.
        if op.failure.is_none() {
            let keys = desired
                .resources
                .iter()
                .filter(|r| r.resolved.is_ok())
                .map(|r| &r.key);
            match self.claim(&b.name, &b.policy, keys).await {
                Ok(()) => {}
                // The API server fails: the sync waits for it (passes back
                // off meanwhile).
                Err(e) if e.unavailable => {
                    out.running = Some(format!("waiting to record the inventory: {e}"));
                    out.sync_phase = SyncPhase::Sync.as_str();
                    return out;
                }
                // It refuses (RBAC): the sync fails and is retried per its
                // policy.
                Err(e) => op.failure = Some(e.to_string()),
            }
        }
        let mut messages = desired.errors.clone();
        if b.policy.option("CreateNamespace")
            && !b.namespace.is_empty()
            && op.applied == 0
            && op.failure.is_none()
            && let Err(e) = self.ensure_namespace(&b.namespace).await
        {
            messages.push(format!("create namespace {}: {e}", b.namespace));
        }
        let steps = plan_steps(&desired);
        let desired_keys = |d: &Desired| -> BTreeSet<ObjectKey> {
            d.resources
                .iter()
                .map(|r| r.key.clone())
                .chain(d.skipped.iter().cloned())
                .collect()
        };
        if op.failure.is_none() && !messages.is_empty() {
            op.failure = Some(messages.join("; "));
        }
        // Check the step applied last, apply the next; stop at the first
        // that has to wait or fails.
        let mut i = op.applied;
        while op.failure.is_none() {
            if let Some(step) = i.checked_sub(1).and_then(|j| steps.get(j)) {
                let last = i == steps.len();
                match self.step_state(b, op, &desired, step, last).await {
                    StepState::Done => {}
                    StepState::Pending(why, for_hooks) => {
                        let limit = if for_hooks {
                            self.hook_timeout
                        } else {
                            WAVE_DEADLINE
                        };
                        if !expired(op.waiting_since_ms, limit) {
                            out.running = Some(why);
                            break;
                        }
                        op.failure = Some(if for_hooks {
                            self.terminate_step_hooks(&b.name, op, step).await;
                            format!("{why}: not finished within {}", human(limit))
                        } else {
                            let prefix =
                                format!("waiting for sync wave {} to become healthy: ", step.wave);
                            format!(
                                "sync wave {} did not become healthy within {}s: {}",
                                step.wave,
                                limit.as_secs(),
                                why.trim_start_matches(prefix.as_str())
                            )
                        });
                        break;
                    }
                    StepState::Failed(why) => {
                        op.failure = Some(why);
                        break;
                    }
                }
            }
            // The Sync phase is over: prune before PostSync.
            let sync_done = steps.get(i).is_none_or(|s| s.sync_phase > SyncPhase::Sync);
            if sync_done && !op.pruned {
                let last_sync = steps
                    .get(..i)
                    .unwrap_or_default()
                    .iter()
                    .rev()
                    .find(|s| s.sync_phase == SyncPhase::Sync);
                match self
                    .prune_stale(app, op.prune, &desired_keys(&desired), last_sync, &desired)
                    .await
                {
                    PruneResult::Done(errors, kept) => {
                        op.pruned = true;
                        out.kept = kept;
                        if !errors.is_empty() {
                            out.errors.extend(errors);
                            op.failure = Some(String::new());
                            break;
                        }
                    }
                    PruneResult::Waiting(why) => {
                        out.running = Some(why);
                        break;
                    }
                    PruneResult::Refused(why) => {
                        op.pruned = true;
                        op.failure = Some(why);
                        break;
                    }
                }
            }
            let Some(step) = steps.get(i) else {
                break;
            };
            let errors = self
                .apply_step(b, op, &mut desired, step, skip, shared)
                .await;
            i += 1;
            op.applied = i;
            op.waiting_since_ms = now_ms();
            self.persist_operation(&b.name, op);
            if !errors.is_empty() {
                out.errors.extend(errors);
                op.failure = Some(String::new());
            }
        }
        if op.failure.is_some() && out.running.is_none() {
            if op.failure.as_deref() == Some("") {
                op.failure = Some(super::failure_summary(&out.errors));
            }
            out.running = self.run_sync_fail(b, op, &desired).await;
            if out.running.is_none() {
                out.failure.clone_from(&op.failure);
            }
        }
        if out.running.is_none() {
            // Ended: hooks go per their policies.
            let succeeded = op.failure.is_none();
            for run in &mut op.hooks {
                if hooks::deleted_after(&run.policies, succeeded)
                    && run.status != HookStatus::Running
                {
                    self.delete_hook(&b.name, run).await;
                }
            }
        }
        out.sync_phase = if op.failure.is_some() {
            SyncPhase::SyncFail.as_str()
        } else {
            i.checked_sub(1)
                .and_then(|j| steps.get(j))
                .or_else(|| steps.first())
                .map_or(SyncPhase::Sync.as_str(), |s| s.sync_phase.as_str())
        };
        out
    }

    /// Applies one step: its resources (server-side apply, CRDs waiting
    /// until Established) and its hooks (created). Returns the objects the
    /// API server refused.
    async fn apply_step(
        &self,
        b: &crate::bundle::Bundle,
        op: &mut SyncOperation,
        desired: &mut Desired,
        step: &Wave<Item>,
        skip: &BTreeSet<ObjectKey>,
        shared: &BTreeSet<ObjectKey>,
    ) -> BTreeMap<ObjectKey, String> {
        let mut errors = BTreeMap::new();
        // Consecutive objects of one kind, prepared, applied together.
        let mut batch: Vec<(ObjectKey, Resolved, Value)> = Vec::new();
        for s in &step.steps {
            match s.item {
                Item::Resource(idx) => {
                    let Some(r) = desired.resources.get_mut(idx) else {
                        continue;
                    };
                    if batch
                        .first()
                        .is_some_and(|(k, _, _)| k.group != r.key.group || k.kind != r.key.kind)
                    {
                        self.apply_batch(&b.name, std::mem::take(&mut batch), &mut errors)
                            .await;
                    }
                    if r.resolved.is_err() {
                        // A kind of a CRD applied by an earlier step.
                        let mut key = r.key.clone();
                        key.namespace = namespace_of(&r.manifest);
                        if let Ok(resolved) = self.cluster.resolve(&key).await {
                            r.object = object::prepare(
                                r.manifest.clone(),
                                &b.name,
                                &b.namespace,
                                resolved.namespaced,
                            );
                            key.namespace = namespace_of(&r.object);
                            // Its identity is known only now: claimed
                            // before it is applied, like the others.
                            if let Err(e) = self.claim(&b.name, &b.policy, [&key]).await {
                                errors.insert(key, e.to_string());
                                continue;
                            }
                            r.key = key;
                            r.resolved = Ok(resolved);
                        }
                    }
                    let r = &*r;
                    let resolved = match &r.resolved {
                        Ok(resolved) => resolved,
                        Err(e) => {
                            errors.insert(r.key.clone(), e.clone());
                            continue;
                        }
                    };
                    if skip.contains(&r.key) {
                        continue;
                    }
                    let mut object = r.object.clone();
                    if shared.contains(&r.key)
                        && let Ok(Some(live)) = self.cluster.get(resolved, &r.key).await
                        && object::tracking_app(&live).is_some_and(|owner| owner != b.name)
                    {
                        // Another application's object stays its own.
                        object = object::keep_tracking_of(object, &live);
                    }
                    if s.phase != plan::Phase::Crds {
                        batch.push((r.key.clone(), resolved.clone(), object));
                        continue;
                    }
                    // A CRD is applied and established before anything
                    // after it (which may be of its kind).
                    self.apply_batch(&b.name, std::mem::take(&mut batch), &mut errors)
                        .await;
                    match self.cluster.apply(resolved, &r.key, &object).await {
                        Ok(_) => {
                            if let Err(e) = self.wait_healthy(resolved, &r.key, CRD_DEADLINE).await
                            {
                                errors.insert(r.key.clone(), e);
                            }
                        }
                        Err(e) => {
                            warn!(app = %b.name, object = %r.key, error = %e, "apply failed");
                            errors.insert(r.key.clone(), e.to_string());
                        }
                    }
                }
                Item::Hook(idx) => {
                    self.apply_batch(&b.name, std::mem::take(&mut batch), &mut errors)
                        .await;
                    let Some(t) = desired.hooks.get(idx) else {
                        continue;
                    };
                    let phase = step.sync_phase.as_str();
                    if op
                        .hooks
                        .iter()
                        .any(|h| h.phase == phase && h.template == t.key)
                    {
                        continue;
                    }
                    let run = self.start_hook(&b.name, &op.id, phase, t).await;
                    op.hooks.push(run);
                }
            }
        }
        self.apply_batch(&b.name, batch, &mut errors).await;
        errors
    }

    /// Server-side applies `batch` (objects of one kind, of one wave),
    /// [`APPLY_CONCURRENCY`] at a time, as gitops-engine applies the
    /// objects of one kind in a wave concurrently; each failure is recorded
    /// under its object.
    async fn apply_batch(
        &self,
        app: &str,
        batch: Vec<(ObjectKey, Resolved, Value)>,
        errors: &mut BTreeMap<ObjectKey, String>,
    ) {
        use futures::StreamExt as _;
        let mut items = batch.iter();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            while in_flight.len() < APPLY_CONCURRENCY {
                let Some((key, resolved, object)) = items.next() else {
                    break;
                };
                in_flight.push(self.apply_keyed(key, resolved, object));
            }
            let Some((key, result)) = in_flight.next().await else {
                break;
            };
            if let Err(e) = result {
                warn!(app = %app, object = %key, error = %e, "apply failed");
                errors.insert(key.clone(), e.to_string());
            }
        }
    }

    /// [`crate::cluster::Cluster::apply`], with the key it applied.
    async fn apply_keyed<'a>(
        &'a self,
        key: &'a ObjectKey,
        resolved: &'a Resolved,
        object: &'a Value,
    ) -> (&'a ObjectKey, Result<Value, crate::cluster::ClusterError>) {
        (key, self.cluster.apply(resolved, key, object).await)
    }

    /// Whether the step applied last has finished: its hooks done and, if
    /// it is not the last step, its resources healthy.
    async fn step_state(
        &self,
        b: &crate::bundle::Bundle,
        op: &mut SyncOperation,
        desired: &Desired,
        step: &Wave<Item>,
        last: bool,
    ) -> StepState {
        let phase = step.sync_phase.as_str();
        let mut resources = Vec::new();
        let mut templates = Vec::new();
        for s in &step.steps {
            match s.item {
                Item::Resource(idx) => {
                    if let Some(r) = desired.resources.get(idx)
                        && let Ok(resolved) = &r.resolved
                    {
                        resources.push((r.key.clone(), resolved.clone()));
                    }
                }
                Item::Hook(idx) => {
                    if let Some(t) = desired.hooks.get(idx) {
                        templates.push(t);
                    }
                }
            }
        }
        for t in &templates {
            let pos = op
                .hooks
                .iter()
                .position(|h| h.phase == phase && h.template == t.key);
            match pos {
                None => {
                    let run = self.start_hook(&b.name, &op.id, phase, t).await;
                    op.hooks.push(run);
                }
                Some(p) if op.hooks[p].status == HookStatus::Pending => {
                    op.hooks[p] = self.start_hook(&b.name, &op.id, phase, t).await;
                }
                Some(p) => self.observe_hook(&mut op.hooks[p]).await,
            }
        }
        let ours: Vec<&HookRun> = op
            .hooks
            .iter()
            .filter(|h| h.phase == phase && templates.iter().any(|t| t.key == h.template))
            .collect();
        let pending: Vec<&HookRun> = ours
            .iter()
            .copied()
            .filter(|h| !h.status.finished())
            .collect();
        if !pending.is_empty() {
            return StepState::Pending(hooks::waiting_for_hooks(&pending), true);
        }
        let failed: Vec<&HookRun> = ours
            .iter()
            .copied()
            .filter(|h| h.status != HookStatus::Succeeded)
            .collect();
        if let Some(first) = failed.first() {
            let mut why = format!(
                "{phase} hook {} failed: {}",
                first.live_key(),
                first.message
            );
            if failed.len() > 1 {
                why.push_str(&format!(" (and {} more hooks failed)", failed.len() - 1));
            }
            return StepState::Failed(why);
        }
        if last {
            return StepState::Done;
        }
        match self.wave_health(&resources).await {
            super::apply::WaveHealth::Healthy => StepState::Done,
            super::apply::WaveHealth::Pending(why) => StepState::Pending(
                format!(
                    "waiting for sync wave {} to become healthy: {why}",
                    step.wave
                ),
                false,
            ),
            super::apply::WaveHealth::Degraded(why) => {
                StepState::Failed(format!("sync wave {} is not healthy: {why}", step.wave))
            }
        }
    }

    /// Deletes the hooks of `step` that have not finished.
    async fn terminate_step_hooks(&self, app: &str, op: &mut SyncOperation, step: &Wave<Item>) {
        let phase = step.sync_phase.as_str();
        for run in op.hooks.iter_mut().filter(|h| h.phase == phase) {
            self.terminate_hook(app, run, "did not finish in time; deleted")
                .await;
        }
    }

    /// The SyncFail phase of a failed operation: its hooks are created
    /// once, then waited for. Returns why it is still running, if it is.
    async fn run_sync_fail(
        &self,
        b: &crate::bundle::Bundle,
        op: &mut SyncOperation,
        desired: &Desired,
    ) -> Option<String> {
        let phase = SyncPhase::SyncFail.as_str();
        let mut templates: Vec<&HookTemplate> = desired
            .hooks
            .iter()
            .filter(|h| h.spec.sync_phases.contains(&SyncPhase::SyncFail))
            .collect();
        if templates.is_empty() {
            return None;
        }
        templates.sort_by_key(|t| (t.spec.wave, t.key.kind.clone(), t.key.name.clone()));
        let started = op.hooks.iter().any(|h| h.phase == phase);
        if started {
            for t in &templates {
                if let Some(run) = op
                    .hooks
                    .iter_mut()
                    .find(|h| h.phase == phase && h.template == t.key)
                {
                    if run.status == HookStatus::Pending {
                        *run = self.start_hook(&b.name, &op.id, phase, t).await;
                    } else {
                        self.observe_hook(run).await;
                    }
                }
            }
        } else {
            info!(app = %b.name, failure = ?op.failure, "sync failed; running SyncFail hooks");
            for t in &templates {
                let run = self.start_hook(&b.name, &op.id, phase, t).await;
                op.hooks.push(run);
            }
            op.waiting_since_ms = now_ms();
            self.persist_operation(&b.name, op);
        }
        let pending: Vec<&HookRun> = op
            .hooks
            .iter()
            .filter(|h| h.phase == phase && !h.status.finished())
            .collect();
        if !pending.is_empty() {
            if !expired(op.waiting_since_ms, self.hook_timeout) {
                return Some(hooks::waiting_for_hooks(&pending));
            }
            for run in op.hooks.iter_mut().filter(|h| h.phase == phase) {
                self.terminate_hook(&b.name, run, "did not finish in time; deleted")
                    .await;
            }
        }
        let failed: Vec<String> = op
            .hooks
            .iter()
            .filter(|h| h.phase == phase && h.status != HookStatus::Succeeded)
            .map(|h| format!("{}: {}", h.live_key(), h.message))
            .collect();
        if !failed.is_empty() {
            let failure = op.failure.clone().unwrap_or_default();
            op.failure = Some(format!(
                "{failure}; one or more SyncFail hooks failed: {}",
                failed.join(", ")
            ));
        }
        None
    }

    /// Prunes what the application applied before and no longer desires
    /// (`prune` on), with PruneLast waiting for the last Sync wave.
    async fn prune_stale(
        &self,
        app: &CachedApp,
        prune: bool,
        desired_keys: &BTreeSet<ObjectKey>,
        last_sync: Option<&Wave<Item>>,
        desired: &Desired,
    ) -> PruneResult {
        let b = &app.bundle;
        if !prune {
            return PruneResult::Done(BTreeMap::new(), BTreeSet::new());
        }
        // The inventory as it is now (claims of this pass included; what
        // earlier agents recorded in the cluster was read into it).
        let inventory = self.inventory_of(&b.name);
        // A named hook applied as a resource before it became a hook is not
        // stale: it is the hook now, and no longer in the inventory.
        let hooks: BTreeSet<ObjectKey> = inventory
            .iter()
            .filter(|k| named_hook(desired, k))
            .cloned()
            .collect();
        self.release(&b.name, b.policy.prune, &hooks).await;
        let mut stale = stale_keys(&inventory, desired_keys, desired);
        // tenancy: never delete an object the project does not let the
        // application own.
        let mut errors = BTreeMap::new();
        stale.retain(
            |key| match crate::project::prune_refusal(b.project_rules.as_ref(), key) {
                Some(why) => {
                    warn!(app = %b.name, object = %key, "not pruned: {why}");
                    errors.insert(key.clone(), format!("prune: {why}"));
                    false
                }
                None => true,
            },
        );
        if stale.is_empty() {
            return PruneResult::Done(errors, BTreeSet::new());
        }
        if desired_keys.is_empty() && !b.policy.allow_empty {
            return PruneResult::Refused(
                "desired state is empty; not pruning without allowEmpty".to_owned(),
            );
        }
        let last_wave = last_sync.map(|step| {
            let objects: Vec<(ObjectKey, Resolved)> = step
                .steps
                .iter()
                .filter_map(|s| match s.item {
                    Item::Resource(idx) => desired.resources.get(idx),
                    Item::Hook(_) => None,
                })
                .filter_map(|r| r.resolved.as_ref().ok().map(|x| (r.key.clone(), x.clone())))
                .collect();
            (step.wave, objects)
        });
        if let Some((wave, health)) = self.prune_last_pending(b, &stale, last_wave.as_ref()).await {
            // PruneLast: nothing is pruned before the last wave is healthy.
            return match health {
                super::apply::WaveHealth::Pending(why) => PruneResult::Waiting(format!(
                    "waiting for sync wave {wave} to become healthy: {why}"
                )),
                super::apply::WaveHealth::Degraded(why) => PruneResult::Refused(format!(
                    "not pruning (PruneLast): sync wave {wave} is not healthy: {why}"
                )),
                super::apply::WaveHealth::Healthy => {
                    PruneResult::Done(BTreeMap::new(), BTreeSet::new())
                }
            };
        }
        let mut kept = BTreeSet::new();
        let mut gone = BTreeSet::new();
        for key in self.prune_order(stale) {
            match self.prune_one(&b.name, &key).await {
                Ok(super::apply::Pruned::Kept) => {
                    kept.insert(key);
                }
                Ok(_) => {
                    gone.insert(key);
                }
                Err(e) => {
                    warn!(app = %b.name, object = %key, error = %e, "prune failed");
                    errors.insert(key, format!("prune: {e}"));
                }
            }
        }
        self.release(&b.name, b.policy.prune, &gone).await;
        PruneResult::Done(errors, kept)
    }

    /// Objects in the inventory of `b` that its desired state no longer
    /// has, less those a prune keeps (`kept`): what an automated sync with
    /// prune still has to delete. Cheap when the inventory holds only
    /// objects of `checks`.
    pub(super) async fn stale_objects(
        &self,
        b: &crate::bundle::Bundle,
        checks: &[super::ResourceCheck],
        kept: &BTreeSet<ObjectKey>,
    ) -> Vec<ObjectKey> {
        let inventory = self.inventory_of(&b.name);
        let checked: BTreeSet<&ObjectKey> = checks.iter().map(|c| &c.key).collect();
        if inventory
            .iter()
            .all(|k| checked.contains(k) || kept.contains(k))
        {
            return Vec::new();
        }
        let desired = self.desired(b).await;
        let keys: BTreeSet<ObjectKey> = desired
            .resources
            .iter()
            .map(|r| r.key.clone())
            .chain(desired.skipped.iter().cloned())
            .collect();
        stale_keys(&inventory, &keys, &desired)
            .into_iter()
            .filter(|k| !kept.contains(k) && !named_hook(&desired, k))
            // tenancy: an object the project does not allow is never
            // pruned, so it is not waiting to be.
            .filter(|k| crate::project::prune_refusal(b.project_rules.as_ref(), k).is_none())
            .collect()
    }

    /// Saves `op` with its application (when the application still has the
    /// digest the operation syncs).
    pub(super) fn persist_operation(&self, app: &str, op: &SyncOperation) {
        let persisted = self.cache.update(|s| {
            if let Some(cached) = s.apps.get_mut(app)
                && cached.bundle.digest == op.digest
            {
                cached.operation = Some(op.clone());
            }
        });
        if let Err(e) = persisted {
            warn!(error = %e, "could not persist the cache");
        }
    }
}

/// Whether `key` is a named hook of the desired state.
fn named_hook(desired: &Desired, key: &ObjectKey) -> bool {
    desired
        .hooks
        .iter()
        .any(|h| !h.spec.generate_name && h.key == *key)
}

/// What the inventory holds and the desired state does not (hooks aside).
fn stale_keys(
    inventory: &BTreeSet<ObjectKey>,
    desired_keys: &BTreeSet<ObjectKey>,
    desired: &Desired,
) -> Vec<ObjectKey> {
    inventory
        .iter()
        .filter(|k| !desired_keys.contains(k) && !named_hook(desired, k))
        .cloned()
        .collect()
}

/// Whether `limit` has passed since `since_ms`.
fn expired(since_ms: i64, limit: Duration) -> bool {
    let waited = now_ms().saturating_sub(since_ms);
    u128::try_from(waited).unwrap_or(0) >= limit.as_millis()
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The steps of a sync: resources in the Sync phase and hooks in theirs
/// (SyncFail hooks are not steps: they run only on failure), with
/// Namespaces moved to the first step that needs them.
fn plan_steps(desired: &Desired) -> Vec<Wave<Item>> {
    let mut items = Vec::new();
    for (i, r) in desired.resources.iter().enumerate() {
        items.push((
            SyncPhase::Sync,
            r.key.clone(),
            object::sync_wave(&r.object),
            Item::Resource(i),
        ));
    }
    for (i, h) in desired.hooks.iter().enumerate() {
        for phase in &h.spec.sync_phases {
            if *phase != SyncPhase::SyncFail {
                items.push((*phase, h.key.clone(), h.spec.wave, Item::Hook(i)));
            }
        }
    }
    let scope = |k: &ObjectKey| {
        let found = desired
            .resources
            .iter()
            .map(|r| (&r.key, &r.resolved))
            .chain(desired.hooks.iter().map(|h| (&h.key, &h.resolved)))
            .find(|(key, _)| key.group == k.group && key.kind == k.kind);
        match found {
            Some((_, Ok(r))) if r.namespaced => plan::Scope::Namespaced,
            Some((_, Ok(_))) => plan::Scope::Cluster,
            _ => plan::Scope::Unknown,
        }
    };
    plan::hoist_namespaces(plan::plan_phases(items, scope))
}
