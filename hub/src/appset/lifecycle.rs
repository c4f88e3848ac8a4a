//! ApplicationSet lifecycle in the hub: evaluate every stored set against
//! the cluster inventory and Git, then create, update and delete the
//! Applications it owns according to `syncPolicy.applicationsSync`, the
//! deletion budget and `preserveResourcesOnDeletion`.
//!
//! Safety rules: a set-level error (invalid spec, generator error,
//! duplicate names) changes nothing and keeps the last good result; one
//! generated Application that fails to render is a condition and never
//! blocks the others (and is never deleted because of its error).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ApplicationSet, ApplicationsSync, GitFiles};
use crate::fleet::Fleet;
use crate::model::{Application, AutomatedSync};
use crate::source::{GitCache, SourceFile};
use crate::store::{AppRecord, AppSetCondition, AppSetRecord, StoreError};

/// Annotation naming the owning ApplicationSet on a generated Application.
pub const OWNER_ANNOTATION: &str = "flotilla.dev/application-set";
/// Annotation on a generated Application being deleted without pruning:
/// it stays (with prune off) until every cluster acknowledged that.
pub const DELETING_ANNOTATION: &str = "flotilla.dev/deleting";
/// Default share of a set's applications one evaluation may delete.
pub const DEFAULT_DELETION_BUDGET: f64 = 0.5;

pub const ERROR_OCCURRED: &str = "ErrorOccurred";
pub const RENDER_ERROR: &str = "ApplicationRenderError";
pub const DELETION_HELD: &str = "DeletionHeld";
pub const CONFLICT: &str = "ApplicationConflict";
pub const UP_TO_DATE: &str = "ResourcesUpToDate";

/// Origin of the applications a set owns.
pub fn origin_of(set: &str) -> String {
    format!("appset:{set}")
}

fn condition(kind: &str, message: String, application: &str) -> AppSetCondition {
    AppSetCondition {
        kind: kind.to_owned(),
        message,
        application: application.to_owned(),
    }
}

fn is_deleting(a: &AppRecord) -> bool {
    a.app.metadata.annotations.contains_key(DELETING_ANNOTATION)
}

/// What one evaluation of a set changes.
#[derive(Debug, Default, PartialEq)]
pub struct SetPlan {
    /// Applications to create or replace (with the owner annotation).
    pub upserts: Vec<Application>,
    /// Owned applications to delete now.
    pub deletions: Vec<String>,
    /// Deletions held by the budget until confirmed.
    pub held: Vec<String>,
    pub conditions: Vec<AppSetCondition>,
    /// The generated names, or `None` to keep the last good result.
    pub generated: Option<Vec<String>>,
}

/// Plans one set's changes from its evaluation `result` (pure).
///
/// `apps` is every stored application; `confirmed` the deletions the user
/// confirmed; `budget` the share of the set's current applications one
/// evaluation may delete without confirmation.
pub fn plan_set(
    set: &str,
    policy: ApplicationsSync,
    result: Result<super::Generated, String>,
    apps: &[AppRecord],
    budget: f64,
    confirmed: &[String],
) -> SetPlan {
    let origin = origin_of(set);
    let generated = match result {
        Ok(g) => g,
        Err(message) => {
            return SetPlan {
                conditions: vec![condition(ERROR_OCCURRED, message, "")],
                ..Default::default()
            };
        }
    };
    let mut plan = SetPlan::default();
    let owned: Vec<&AppRecord> = apps
        .iter()
        .filter(|a| a.origin == origin && !is_deleting(a))
        .collect();
    let mut names = Vec::new();
    for mut app in generated.applications {
        app.metadata
            .annotations
            .insert(OWNER_ANNOTATION.to_owned(), set.to_owned());
        let name = app.metadata.name.clone();
        names.push(name.clone());
        match apps.iter().find(|a| a.app.metadata.name == name) {
            None => plan.upserts.push(app),
            Some(e) if e.origin != origin => plan.conditions.push(condition(
                CONFLICT,
                format!(
                    "application {name:?} already exists with origin {:?}; it is left alone",
                    e.origin
                ),
                &name,
            )),
            Some(e) if is_deleting(e) => plan.upserts.push(app),
            Some(e) => {
                if e.app != app && policy.allows_update() {
                    plan.upserts.push(app);
                }
            }
        }
    }
    let failed: BTreeSet<&str> = generated
        .errors
        .iter()
        .map(|e| e.application.as_str())
        .collect();
    for e in &generated.errors {
        plan.conditions.push(condition(
            RENDER_ERROR,
            format!("application {:?}: {}", e.application, e.message),
            &e.application,
        ));
    }
    if policy.allows_delete() {
        let mut gone: Vec<String> = owned
            .iter()
            .map(|a| a.app.metadata.name.clone())
            .filter(|n| !names.contains(n) && !failed.contains(n.as_str()))
            .collect();
        gone.sort();
        let mut confirmed = confirmed.to_vec();
        confirmed.sort();
        let over_budget = gone.len() as f64 > budget * owned.len() as f64;
        if !gone.is_empty() && over_budget && gone != confirmed {
            plan.conditions.push(condition(
                DELETION_HELD,
                format!(
                    "holding {} of {} applications for deletion ({}): more than the deletion budget of {:.0}%; run `flotilla appset confirm {set}` to delete them",
                    gone.len(),
                    owned.len(),
                    gone.join(", "),
                    budget * 100.0
                ),
                "",
            ));
            plan.held = gone;
        } else {
            plan.deletions = gone;
        }
    }
    if plan.conditions.is_empty() {
        plan.conditions.push(condition(
            UP_TO_DATE,
            "all applications have been generated successfully".into(),
            "",
        ));
    }
    names.sort();
    plan.generated = Some(names);
    plan
}

type Tree = Arc<Vec<SourceFile>>;

/// Git access for generators over the hub's mirrors; each (URL, revision)
/// is fetched at most once per poll interval, and each commit's tree read
/// once while it is in use.
struct HubGit {
    cache: GitCache,
    /// For the credentials of private repositories.
    store: crate::store::Store,
    resolver: Arc<Resolver>,
    force: bool,
    /// (url, commit) → files; seeded with the previous pass's trees.
    trees: Mutex<HashMap<(String, String), Tree>>,
    used: Mutex<std::collections::HashSet<(String, String)>>,
    /// (url, revision) → commit (or error) read by the set being evaluated.
    refs: Mutex<Vec<GitRef>>,
}

type GitRef = ((String, String), Result<String, String>);

/// The output of evaluating one stored set.
type Evaluation = Result<(ApplicationSet, Result<super::Generated, super::AppSetError>), String>;

/// A set's last evaluation and the inputs it was computed from.
#[derive(Clone)]
struct Memo {
    raw: Value,
    clusters: u64,
    refs: Vec<GitRef>,
    result: Evaluation,
}

fn clusters_fingerprint(clusters: &[super::ClusterInfo]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in clusters {
        c.name.hash(&mut h);
        c.server.hash(&mut h);
        c.labels.hash(&mut h);
        c.annotations.hash(&mut h);
    }
    h.finish()
}

impl HubGit {
    fn tree(&self, url: &str, revision: &str) -> Result<Arc<Vec<SourceFile>>, String> {
        let resolved = self
            .resolver
            .resolve(&self.cache, &self.store, url, revision, self.force);
        {
            let mut refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
            let key = (url.to_owned(), revision.to_owned());
            if !refs.iter().any(|(k, _)| *k == key) {
                refs.push((key, resolved.clone()));
            }
        }
        let commit = resolved?;
        let key = (url.to_owned(), commit.clone());
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        if let Some(t) = self
            .trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(t.clone());
        }
        let files = Arc::new(
            self.cache
                .read_dir(url, &commit, "", true)
                .map_err(|e| e.to_string())?,
        );
        self.trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, files.clone());
        Ok(files)
    }
}

impl GitFiles for HubGit {
    fn list(&self, repo_url: &str, revision: &str) -> Result<Vec<String>, String> {
        Ok(self
            .tree(repo_url, revision)?
            .iter()
            .map(|f| f.path.clone())
            .collect())
    }

    fn read(&self, repo_url: &str, revision: &str, path: &str) -> Result<Vec<u8>, String> {
        self.tree(repo_url, revision)?
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.content.clone())
            .ok_or_else(|| format!("{path}: no such file"))
    }
}

/// The pass that resolved it, when, and the commit (or error).
type Resolved = (u64, Instant, Result<String, String>);

/// Resolves (url, revision) to a commit, fetching at most once per
/// interval unless forced. Holds nothing of the hub's state, so an
/// evaluation still running after shutdown keeps no store open.
struct Resolver {
    interval: Duration,
    commits: Mutex<HashMap<(String, String), Resolved>>,
    /// Number of the current pass: a forced pass fetches each repository
    /// once, and the next pass fetches again however soon it comes.
    pass: std::sync::atomic::AtomicU64,
}

impl Resolver {
    fn resolve(
        &self,
        cache: &GitCache,
        store: &crate::store::Store,
        url: &str,
        revision: &str,
        force: bool,
    ) -> Result<String, String> {
        let key = (url.to_owned(), revision.to_owned());
        let pass = self.pass.load(std::sync::atomic::Ordering::SeqCst);
        if let Some((fetched_in, at, r)) = self
            .commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && (*fetched_in == pass || (!force && at.elapsed() < self.interval))
        {
            return r.clone();
        }
        let r = crate::gitsync::fetch_with_stored_credentials(cache, store, url, revision)
            .map_err(|e| e.to_string());
        self.commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (pass, Instant::now(), r.clone()));
        r
    }
}

/// How often the controller has looked at one set, kept in memory: it
/// starts at zero when the hub starts or the set is created (again).
///
/// `evaluations` counts every evaluation whose plan was applied, whether
/// its result was computed or reused from the previous pass (inputs
/// unchanged) and whether it succeeded or failed (`ErrorOccurred`). An
/// evaluation is counted only after its plan has been applied (applications
/// created, updated and deleted in the store, the set's status written;
/// the Git loop hands changed applications to the agents right after), and
/// passes run one at a time. So if a client reads `n` after making a
/// change, the pass that brings the count to `n + 1` may have read its
/// inputs before the change, but the one that brings it to `n + 2` started
/// after `n + 1` was counted, hence after the change: seeing `n + 2` means
/// a complete pass has seen the current set, inventory and Git (as last
/// fetched) and applied what it decided. An evaluation discarded because
/// the set was replaced or deleted while it ran is not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvaluationCount {
    /// Completed evaluations (monotonic while the set exists).
    pub evaluations: u64,
    /// Unix milliseconds of the last completed evaluation; 0 before it.
    pub last_evaluated_ms: i64,
}

/// The ApplicationSet controller.
pub struct AppSets {
    fleet: Arc<Fleet>,
    budget: f64,
    resolver: Arc<Resolver>,
    /// Trees read by the last pass, reused while their commit is current.
    trees: Mutex<HashMap<(String, String), Tree>>,
    /// Serialises every read-modify-write of set records and the
    /// applications they own (the evaluation applies its plan under it,
    /// against the record as stored at that moment).
    writes: Mutex<()>,
    /// Set name → last evaluation, reused while its inputs are unchanged.
    memo: Mutex<HashMap<String, Memo>>,
    /// Held for a whole pass: passes never overlap, which the memo and the
    /// meaning of [`EvaluationCount`] rely on.
    pass: tokio::sync::Mutex<()>,
    /// Set name → evaluations so far.
    counts: Mutex<HashMap<String, EvaluationCount>>,
}

impl std::fmt::Debug for AppSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppSets")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl AppSets {
    /// `budget`: share (0..=1) of a set's applications one evaluation may
    /// delete without confirmation; `interval`: how often a Git
    /// generator's repository is fetched at most (unless forced).
    pub fn new(fleet: Arc<Fleet>, budget: f64, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            fleet,
            budget: budget.clamp(0.0, 1.0),
            resolver: Arc::new(Resolver {
                interval,
                commits: Mutex::default(),
                pass: std::sync::atomic::AtomicU64::new(0),
            }),
            trees: Mutex::default(),
            writes: Mutex::default(),
            memo: Mutex::default(),
            pass: tokio::sync::Mutex::default(),
            counts: Mutex::default(),
        })
    }

    /// How often `set` has been evaluated (see [`EvaluationCount`]); zero
    /// for a set not evaluated yet or unknown.
    pub fn evaluations(&self, set: &str) -> EvaluationCount {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(set)
            .copied()
            .unwrap_or_default()
    }

    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Evaluates every set and applies the plans. Returns whether any
    /// application changed.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub async fn reconcile_all(
        self: &Arc<Self>,
        cache: &GitCache,
        force: bool,
    ) -> Result<bool, StoreError> {
        let _pass = self.pass.lock().await;
        self.resolver
            .pass
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let store = self.fleet.store().clone();
        let mut changed = self.finish_preserving_deletions()?;
        let sets = store.appsets()?;
        if sets.is_empty() {
            return Ok(changed);
        }
        let clusters = crate::inventory::infos(&store.clusters()?);
        let previous = self.trees.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let git = HubGit {
            cache: cache.clone(),
            store: store.clone(),
            resolver: self.resolver.clone(),
            force,
            trees: Mutex::new(previous),
            used: Mutex::default(),
            refs: Mutex::default(),
        };
        let items: Vec<(String, Value)> = sets
            .iter()
            .map(|s| (s.name.clone(), s.raw.clone()))
            .collect();
        let memo = self.memo.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let fingerprint = clusters_fingerprint(&clusters);
        let joined = tokio::task::spawn_blocking(move || {
            let mut next = HashMap::new();
            let mut evaluated = Vec::new();
            for (name, raw) in items {
                // Same set, same inventory, same commits: same result.
                if let Some(m) = memo.get(&name)
                    && m.raw == raw
                    && m.clusters == fingerprint
                    && m.refs.iter().all(|((url, rev), c)| {
                        git.resolver
                            .resolve(&git.cache, &git.store, url, rev, git.force)
                            == *c
                    })
                {
                    evaluated.push(m.result.clone());
                    next.insert(name, m.clone());
                    continue;
                }
                git.refs.lock().unwrap_or_else(|p| p.into_inner()).clear();
                let result: Evaluation = ApplicationSet::from_value(raw.clone())
                    .map_err(|e| e.to_string())
                    .map(|set| {
                        let generated = set.generate(&clusters, Some(&git));
                        (set, generated)
                    });
                let refs = git.refs.lock().unwrap_or_else(|p| p.into_inner()).clone();
                next.insert(
                    name,
                    Memo {
                        raw,
                        clusters: fingerprint,
                        refs,
                        result: result.clone(),
                    },
                );
                evaluated.push(result);
            }
            (evaluated, git, next)
        })
        .await;
        let evaluated = match joined {
            Ok((evaluated, git, next)) => {
                *self.memo.lock().unwrap_or_else(|p| p.into_inner()) = next;
                let used = git.used.into_inner().unwrap_or_else(|p| p.into_inner());
                let mut trees = git.trees.into_inner().unwrap_or_else(|p| p.into_inner());
                trees.retain(|k, _| used.contains(k));
                *self.trees.lock().unwrap_or_else(|p| p.into_inner()) = trees;
                evaluated
            }
            Err(e) => {
                tracing::error!(error = %e, "application set evaluation failed");
                return Ok(changed);
            }
        };
        for (evaluated_rec, evaluation) in sets.into_iter().zip(evaluated) {
            let _w = self.write_lock();
            // The set may have been replaced or deleted meanwhile: then this
            // result is stale and the next pass evaluates the new one.
            let Some(mut rec) = store.appset(&evaluated_rec.name)? else {
                continue;
            };
            if rec.raw != evaluated_rec.raw {
                continue;
            }
            let (policy, preserve, result) = match evaluation {
                Ok((set, generated)) => (
                    set.applications_sync,
                    set.preserve_resources_on_deletion,
                    generated.map_err(|e| e.to_string()),
                ),
                Err(message) => (ApplicationsSync::CreateOnly, true, Err(message)),
            };
            let apps = store.apps()?;
            let plan = plan_set(
                &rec.name,
                policy,
                result,
                &apps,
                self.budget,
                &rec.confirmed_deletions,
            );
            let origin = origin_of(&rec.name);
            for app in &plan.upserts {
                let name = &app.metadata.name;
                let current = apps.iter().find(|a| a.app.metadata.name == *name);
                tracing::info!(appset = %rec.name, app = %name, created = current.is_none(), "generated application");
                store.put_app(&AppRecord {
                    app: app.clone(),
                    origin: origin.clone(),
                    revision: current.map(|a| a.revision.clone()).unwrap_or_default(),
                    error: current.map(|a| a.error.clone()).unwrap_or_default(),
                })?;
                changed = true;
            }
            for name in &plan.deletions {
                tracing::info!(appset = %rec.name, app = %name, preserve, "deleting generated application");
                self.delete_app(name, preserve)?;
                changed = true;
            }
            for c in &plan.conditions {
                if c.kind != UP_TO_DATE {
                    tracing::warn!(appset = %rec.name, condition = %c.kind, message = %c.message, "application set condition");
                }
            }
            let before = rec.clone();
            let now = crate::api::now_ms();
            if let Some(g) = plan.generated {
                rec.generated = g;
                rec.last_good_ms = now;
            }
            rec.conditions = plan.conditions;
            rec.pending_deletions = plan.held;
            rec.confirmed_deletions.clear();
            rec.last_result_ms = now;
            let mut cmp = before.clone();
            cmp.last_result_ms = now;
            cmp.last_good_ms = rec.last_good_ms;
            // Rewrite only when something besides the timestamps changed.
            if cmp != rec || before.last_good_ms == 0 {
                store.put_appset(&rec)?;
            }
            // Only now, with the plan applied (see `EvaluationCount`).
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let count = counts.entry(rec.name.clone()).or_default();
            count.evaluations += 1;
            count.last_evaluated_ms = now;
        }
        if changed {
            store.flush()?;
        }
        Ok(changed)
    }

    /// Deletes a generated application. With `preserve` and an application
    /// whose policy prunes, it is first re-sent with prune off and deleted
    /// once every cluster acknowledged that (the agent prunes a removed
    /// application only when its last policy had prune).
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn delete_app(&self, name: &str, preserve: bool) -> Result<(), StoreError> {
        let store = self.fleet.store();
        let Some(mut rec) = store.app(name)? else {
            return Ok(());
        };
        let prunes = rec
            .app
            .spec
            .sync_policy
            .as_ref()
            .and_then(|p| p.automated.as_ref())
            .is_some_and(|a| a.prune);
        if !preserve || !prunes {
            // Argo CD: the set's resources finalizer (unless preserved).
            let propagation = crate::deletion::for_generated(&rec.app, preserve);
            self.fleet.remove_app_with(name, propagation)?;
            return Ok(());
        }
        if let Some(p) = rec.app.spec.sync_policy.as_mut() {
            p.automated = Some(AutomatedSync {
                prune: false,
                ..p.automated.clone().unwrap_or_default()
            });
        }
        rec.app.metadata.annotations.insert(
            DELETING_ANNOTATION.to_owned(),
            "preserve-resources".to_owned(),
        );
        store.put_app(&rec)?;
        Ok(())
    }

    /// Removes applications marked for a preserving deletion once every
    /// cluster they target has acknowledged their prune-off bundle.
    fn finish_preserving_deletions(&self) -> Result<bool, StoreError> {
        let store = self.fleet.store();
        let clusters = store.clusters()?;
        let mut changed = false;
        for a in store.apps()?.into_iter().filter(is_deleting) {
            let name = &a.app.metadata.name;
            let Some(bundle) = self.fleet.bundle(name) else {
                continue;
            };
            if bundle.policy.as_ref().is_some_and(|p| p.prune) {
                continue;
            }
            let done = clusters
                .iter()
                .filter(|c| crate::fleet::targets(&a.app, c))
                .all(|c| {
                    c.desired_index.get(name) == Some(&bundle.digest)
                        && c.acked_generation >= c.generation
                });
            if done {
                tracing::info!(app = %name, "generated application deleted; its objects are preserved");
                self.fleet
                    .remove_app_with(name, crate::deletion::Propagation::Orphan)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Removes a set and deletes the applications it owns (honouring its
    /// `preserveResourcesOnDeletion`). Returns whether it existed.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn remove_set(&self, name: &str) -> Result<bool, StoreError> {
        let _w = self.write_lock();
        self.remove_set_locked(name)
    }

    fn remove_set_locked(&self, name: &str) -> Result<bool, StoreError> {
        let store = self.fleet.store();
        let Some(rec) = store.appset(name)? else {
            return Ok(false);
        };
        let preserve = rec
            .raw
            .pointer("/spec/syncPolicy/preserveResourcesOnDeletion")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        store.remove_appset(name)?;
        // A set created again under this name counts from zero.
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let origin = origin_of(name);
        for a in store.apps()? {
            if a.origin == origin && !is_deleting(&a) {
                self.delete_app(&a.app.metadata.name, preserve)?;
            }
        }
        self.fleet.recompute()?;
        store.flush()?;
        tracing::info!(appset = %name, "application set deleted");
        Ok(true)
    }

    /// Marks the currently held deletions of a set as confirmed (applied
    /// by the next evaluation). Returns the record, `None` if unknown.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn confirm(&self, name: &str) -> Result<Option<AppSetRecord>, StoreError> {
        let _w = self.write_lock();
        let store = self.fleet.store();
        let Some(mut rec) = store.appset(name)? else {
            return Ok(None);
        };
        rec.confirmed_deletions = rec.pending_deletions.clone();
        store.put_appset(&rec)?;
        store.flush()?;
        Ok(Some(rec))
    }

    /// Stores a set given by the API (`origin` `api`).
    ///
    /// # Errors
    /// `Err(Ok(message))` for invalid input or a conflict,
    /// `Err(Err(store error))` otherwise.
    pub fn put_from_api(
        &self,
        manifest: &str,
        upsert: bool,
    ) -> Result<AppSetRecord, Result<String, StoreError>> {
        let sets =
            super::parse_application_sets(manifest, "request").map_err(|e| Ok(e.to_string()))?;
        let [set] = sets.as_slice() else {
            return Err(Ok(format!(
                "expected exactly one ApplicationSet, found {}",
                sets.len()
            )));
        };
        let store = self.fleet.store();
        let _w = self.write_lock();
        let existing = store.appset(&set.name).map_err(Err)?;
        if existing.is_some() && !upsert {
            return Err(Ok(format!(
                "application set {:?} already exists (use --upsert to replace it)",
                set.name
            )));
        }
        // An edit of a set an in-hub application manages keeps it managed.
        let origin =
            crate::appofapps::origin_after_api_edit(existing.as_ref().map(|e| e.origin.as_str()));
        let mut rec = existing.unwrap_or_else(|| AppSetRecord {
            name: set.name.clone(),
            ..Default::default()
        });
        rec.raw = set.raw.clone();
        rec.origin = origin;
        store.put_appset(&rec).map_err(Err)?;
        store.flush().map_err(Err)?;
        tracing::info!(appset = %set.name, "application set stored through the API");
        Ok(rec)
    }

    /// Stores a set declared by an in-hub application (`origin`
    /// `app:<parent>`), keeping its evaluation state. A set that now exists
    /// with another origin is left alone. Returns whether it was written.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn put_declared(&self, name: &str, raw: Value, origin: &str) -> Result<bool, StoreError> {
        let store = self.fleet.store();
        let _w = self.write_lock();
        let existing = store.appset(name)?;
        if existing.as_ref().is_some_and(|e| e.origin != origin) {
            return Ok(false);
        }
        let mut rec = existing.unwrap_or_else(|| AppSetRecord {
            name: name.to_owned(),
            ..Default::default()
        });
        rec.raw = raw;
        rec.origin = origin.to_owned();
        store.put_appset(&rec)?;
        Ok(true)
    }

    /// Loads the ApplicationSets and cluster declarations of a repository's
    /// apps path. Sets this repository declared before and no longer does
    /// are deleted; a file that fails to parse keeps its sets. Returns
    /// per-file errors.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn load_from_repo(
        &self,
        repo_url: &str,
        apps_path: &str,
        files: &[SourceFile],
    ) -> Result<Vec<String>, StoreError> {
        let store = self.fleet.store();
        let prefix = format!("git:{repo_url}:");
        let mut errors = Vec::new();
        let mut failed = BTreeSet::new();
        let mut found: HashMap<String, (Value, String)> = HashMap::new();
        let mut clusters = Vec::new();
        for f in files {
            let lower = f.path.to_ascii_lowercase();
            if !(lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")) {
                continue;
            }
            let file = if apps_path.is_empty() {
                f.path.clone()
            } else {
                format!("{}/{}", apps_path.trim_matches('/'), f.path)
            };
            let origin = format!("{prefix}{file}");
            let text = String::from_utf8_lossy(&f.content);
            let docs = match crate::yaml::parse_documents(&text) {
                Ok(d) => d,
                Err(_) => {
                    // The Application loader reports the YAML error.
                    failed.insert(origin);
                    continue;
                }
            };
            for doc in docs {
                if crate::inventory::is_cluster_document(&doc) {
                    match crate::inventory::cluster_from_value(&doc, &file)
                        .and_then(|c| crate::inventory::check_registrable(&c, &file).map(|()| c))
                    {
                        Ok(c) => clusters.push(c),
                        Err(e) => errors.push(e),
                    }
                    continue;
                }
                if doc.get("kind").and_then(Value::as_str) != Some("ApplicationSet") {
                    continue;
                }
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if name.is_empty() {
                    errors.push(format!("{file}: ApplicationSet without metadata.name"));
                    continue;
                }
                if found.contains_key(&name) {
                    errors.push(format!("ApplicationSet {name:?} is defined twice ({file})"));
                    continue;
                }
                found.insert(name, (doc, origin.clone()));
            }
        }
        if !clusters.is_empty() {
            crate::inventory::apply_declared(&self.fleet, &clusters)?;
        }
        let _w = self.write_lock();
        for rec in store.appsets()? {
            if rec.origin.starts_with(&prefix)
                && !failed.contains(&rec.origin)
                && !found.contains_key(&rec.name)
            {
                tracing::info!(appset = %rec.name, "application set removed from Git");
                self.remove_set_locked(&rec.name)?;
            }
        }
        for (name, (raw, origin)) in found {
            let existing = store.appset(&name)?;
            if existing
                .as_ref()
                .is_some_and(|e| e.raw == raw && e.origin == origin)
            {
                continue;
            }
            let mut rec = existing.unwrap_or_else(|| AppSetRecord {
                name: name.clone(),
                ..Default::default()
            });
            rec.raw = raw;
            rec.origin = origin;
            tracing::info!(appset = %name, "application set loaded from Git");
            store.put_appset(&rec)?;
        }
        Ok(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appset::{Generated, GeneratedAppError};

    fn app(name: &str, path: &str) -> Application {
        let yaml = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: file:///r\n    path: {path}\n  destination:\n    name: c1\n"
        );
        crate::model::parse_applications(&yaml, "t")
            .unwrap()
            .remove(0)
    }

    fn owned(name: &str, path: &str) -> AppRecord {
        let mut a = app(name, path);
        a.metadata
            .annotations
            .insert(OWNER_ANNOTATION.to_owned(), "s".to_owned());
        AppRecord {
            app: a,
            origin: origin_of("s"),
            revision: String::new(),
            error: String::new(),
        }
    }

    fn generated(apps: &[(&str, &str)], errors: &[&str]) -> Result<Generated, String> {
        Ok(Generated {
            applications: apps.iter().map(|(n, p)| app(n, p)).collect(),
            errors: errors
                .iter()
                .map(|n| GeneratedAppError {
                    application: (*n).to_owned(),
                    message: "boom".into(),
                })
                .collect(),
        })
    }

    fn names(plan: &SetPlan) -> Vec<&str> {
        plan.upserts
            .iter()
            .map(|a| a.metadata.name.as_str())
            .collect()
    }

    fn kinds(plan: &SetPlan) -> Vec<&str> {
        plan.conditions.iter().map(|c| c.kind.as_str()).collect()
    }

    #[test]
    fn plan_set_table() {
        use ApplicationsSync::*;
        struct Case {
            name: &'static str,
            policy: ApplicationsSync,
            result: Result<Generated, String>,
            existing: Vec<AppRecord>,
            confirmed: Vec<&'static str>,
            upserts: Vec<&'static str>,
            deletions: Vec<&'static str>,
            held: Vec<&'static str>,
            conditions: Vec<&'static str>,
        }
        let four = || {
            vec![
                owned("a", "a"),
                owned("b", "b"),
                owned("c", "c"),
                owned("d", "d"),
            ]
        };
        let cases = vec![
            Case {
                name: "new applications are created with the owner annotation",
                policy: Sync,
                result: generated(&[("a", "a"), ("b", "b")], &[]),
                existing: vec![],
                confirmed: vec![],
                upserts: vec!["a", "b"],
                deletions: vec![],
                held: vec![],
                conditions: vec![UP_TO_DATE],
            },
            Case {
                name: "unchanged applications are not rewritten",
                policy: Sync,
                result: generated(&[("a", "a")], &[]),
                existing: vec![owned("a", "a")],
                confirmed: vec![],
                upserts: vec![],
                deletions: vec![],
                held: vec![],
                conditions: vec![UP_TO_DATE],
            },
            Case {
                name: "create-update updates",
                policy: CreateUpdate,
                result: generated(&[("a", "new")], &[]),
                existing: vec![owned("a", "a")],
                confirmed: vec![],
                upserts: vec!["a"],
                deletions: vec![],
                held: vec![],
                conditions: vec![UP_TO_DATE],
            },
            Case {
                name: "create-only neither updates nor deletes",
                policy: CreateOnly,
                result: generated(&[("a", "new"), ("z", "z")], &[]),
                existing: vec![owned("a", "a"), owned("b", "b")],
                confirmed: vec![],
                upserts: vec!["z"],
                deletions: vec![],
                held: vec![],
                conditions: vec![UP_TO_DATE],
            },
            Case {
                name: "create-delete deletes but does not update",
                policy: CreateDelete,
                result: generated(&[("a", "new"), ("b", "b")], &[]),
                existing: vec![owned("a", "a"), owned("b", "b"), owned("c", "c")],
                confirmed: vec![],
                upserts: vec![],
                deletions: vec!["c"],
                held: vec![],
                conditions: vec![UP_TO_DATE],
            },
            Case {
                name: "create-update keeps what is no longer generated",
                policy: CreateUpdate,
                result: generated(&[], &[]),
                existing: vec![owned("a", "a")],
                confirmed: vec![],
                upserts: vec![],
                deletions: vec![],
                held: vec![],
                conditions: vec![UP_TO_DATE],
            },
            Case {
                name: "exactly half is within the budget",
                policy: Sync,
                result: generated(&[("a", "a"), ("b", "b")], &[]),
                existing: four(),
                confirmed: vec![],
                upserts: vec![],
                deletions: vec!["c", "d"],
                held: vec![],
                conditions: vec![UP_TO_DATE],
            },
            Case {
                name: "more than the budget is held, creations proceed",
                policy: Sync,
                result: generated(&[("a", "a"), ("e", "e")], &[]),
                existing: four(),
                confirmed: vec![],
                upserts: vec!["e"],
                deletions: vec![],
                held: vec!["b", "c", "d"],
                conditions: vec![DELETION_HELD],
            },
            Case {
                name: "confirmed deletions go",
                policy: Sync,
                result: generated(&[("a", "a")], &[]),
                existing: four(),
                confirmed: vec!["d", "b", "c"],
                upserts: vec![],
                deletions: vec!["b", "c", "d"],
                held: vec![],
                conditions: vec![UP_TO_DATE],
            },
            Case {
                name: "a confirmation of another deletion set does not count",
                policy: Sync,
                result: generated(&[], &[]),
                existing: four(),
                confirmed: vec!["b", "c", "d"],
                upserts: vec![],
                deletions: vec![],
                held: vec!["a", "b", "c", "d"],
                conditions: vec![DELETION_HELD],
            },
            Case {
                name: "a generator error changes nothing",
                policy: Sync,
                result: Err("git: unreachable".into()),
                existing: four(),
                confirmed: vec![],
                upserts: vec![],
                deletions: vec![],
                held: vec![],
                conditions: vec![ERROR_OCCURRED],
            },
            Case {
                name: "an application that fails to render is reported and kept",
                policy: Sync,
                result: generated(&[("a", "a"), ("b", "b2")], &["c"]),
                existing: vec![owned("a", "a"), owned("b", "b"), owned("c", "c")],
                confirmed: vec![],
                upserts: vec!["b"],
                deletions: vec![],
                held: vec![],
                conditions: vec![RENDER_ERROR],
            },
            Case {
                name: "an application of another origin is not taken over",
                policy: Sync,
                result: generated(&[("a", "a")], &[]),
                existing: vec![AppRecord {
                    origin: "api".into(),
                    ..owned("a", "other")
                }],
                confirmed: vec![],
                upserts: vec![],
                deletions: vec![],
                held: vec![],
                conditions: vec![CONFLICT],
            },
        ];
        for c in cases {
            let confirmed: Vec<String> = c.confirmed.iter().map(|s| (*s).to_owned()).collect();
            let plan = plan_set("s", c.policy, c.result, &c.existing, 0.5, &confirmed);
            assert_eq!(names(&plan), c.upserts, "{}", c.name);
            assert_eq!(plan.deletions, c.deletions, "{}", c.name);
            assert_eq!(plan.held, c.held, "{}", c.name);
            assert_eq!(kinds(&plan), c.conditions, "{}", c.name);
            for a in &plan.upserts {
                assert_eq!(
                    a.metadata
                        .annotations
                        .get(OWNER_ANNOTATION)
                        .map(String::as_str),
                    Some("s"),
                    "{}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn held_condition_names_the_applications_and_the_command() {
        let existing = vec![owned("a", "a"), owned("b", "b")];
        let plan = plan_set(
            "s",
            ApplicationsSync::Sync,
            generated(&[], &[]),
            &existing,
            0.5,
            &[],
        );
        let m = &plan.conditions[0].message;
        assert!(m.contains("2 of 2"), "{m}");
        assert!(m.contains("a, b"), "{m}");
        assert!(m.contains("flotilla appset confirm s"), "{m}");
        assert_eq!(plan.generated, Some(vec![]));
    }

    /// A set named `name` generating `{name}-{param}` from `generator`.
    fn set_manifest(name: &str, generator: &str, param: &str) -> String {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: {name}\nspec:\n  generators:\n{generator}  template:\n    metadata:\n      name: '{name}-{{{{{param}}}}}'\n    spec:\n      source:\n        repoURL: file:///r\n        path: p\n      destination:\n        name: c1\n"
        )
    }

    #[tokio::test]
    async fn evaluations_count_cached_and_failing_evaluations() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("db")).unwrap();
        let sets = AppSets::new(
            Fleet::load(store.clone()).unwrap(),
            DEFAULT_DELETION_BUDGET,
            Duration::from_secs(3600),
        );
        let cache = GitCache::new(dir.path().join("git"));
        let list = "  - list:\n      elements:\n      - app: a\n";
        let missing = format!(
            "  - git:\n      repoURL: file://{}/missing\n      directories:\n      - path: '*'\n",
            dir.path().display()
        );
        sets.put_from_api(&set_manifest("ok", list, "app"), false)
            .unwrap();
        sets.put_from_api(&set_manifest("bad", &missing, "path.basename"), false)
            .unwrap();
        assert_eq!(sets.evaluations("ok"), EvaluationCount::default());

        sets.reconcile_all(&cache, false).await.unwrap();
        let first = sets.evaluations("ok");
        assert_eq!(first.evaluations, 1);
        assert!(first.last_evaluated_ms > 0);
        assert_eq!(store.appset("ok").unwrap().unwrap().generated, ["ok-a"]);
        assert_eq!(sets.evaluations("bad").evaluations, 1);

        // Nothing changed: the results are reused, and still counted.
        for pass in 2..=3 {
            sets.reconcile_all(&cache, false).await.unwrap();
            assert_eq!(sets.evaluations("ok").evaluations, pass);
            assert_eq!(sets.evaluations("bad").evaluations, pass);
        }
        assert!(sets.evaluations("ok").last_evaluated_ms >= first.last_evaluated_ms);
        let bad = store.appset("bad").unwrap().unwrap();
        assert_eq!(bad.conditions[0].kind, ERROR_OCCURRED, "{bad:?}");

        // A failing evaluation computed afresh (the set changed) counts too.
        let other = missing.replace("missing", "gone");
        sets.put_from_api(&set_manifest("bad", &other, "path.basename"), true)
            .unwrap();
        sets.reconcile_all(&cache, true).await.unwrap();
        assert_eq!(sets.evaluations("bad").evaluations, 4);
        let bad = store.appset("bad").unwrap().unwrap();
        assert!(bad.conditions[0].message.contains("gone"), "{bad:?}");

        // A set deleted and created again counts from zero.
        assert!(sets.remove_set("ok").unwrap());
        assert_eq!(sets.evaluations("ok"), EvaluationCount::default());
        sets.put_from_api(&set_manifest("ok", list, "app"), false)
            .unwrap();
        sets.reconcile_all(&cache, false).await.unwrap();
        assert_eq!(sets.evaluations("ok").evaluations, 1);
    }
}
