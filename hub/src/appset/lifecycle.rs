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

use super::{
    ApplicationSet, ApplicationsSync, GenerateOptions, GitFiles, IgnoreRule, PreservedFields,
};
use crate::fleet::Fleet;
use crate::model::{Application, AutomatedSync};
use crate::source::{GitCache, SourceFile};
use crate::store::{
    AppRecord, AppSetCondition, AppSetRecord, DeletionRecord, SizeSample, StoreError,
};

/// Annotation naming the owning ApplicationSet on a generated Application.
pub const OWNER_ANNOTATION: &str = "flotilla.dev/application-set";
/// Annotation on a generated Application being deleted without pruning:
/// it stays (with prune off) until every cluster acknowledged that.
pub const DELETING_ANNOTATION: &str = "flotilla.dev/deleting";
/// Default share of a set's applications that may be deleted within one
/// window without confirmation.
pub const DEFAULT_DELETION_BUDGET: f64 = 0.5;
/// Default window over which the deletion budget is judged.
pub const DEFAULT_DELETION_WINDOW: Duration = Duration::from_secs(3600);

pub const ERROR_OCCURRED: &str = "ErrorOccurred";
pub const RENDER_ERROR: &str = "ApplicationRenderError";
pub const DELETION_HELD: &str = "DeletionHeld";
pub const CONFLICT: &str = "ApplicationConflict";
pub const UP_TO_DATE: &str = "ResourcesUpToDate";
pub use super::{NOTICE_EXTENSION, NOTICE_PROJECT_REFUSED, NOTICE_UNSUPPORTED};

/// Whether deleting the set (as written in `raw`) leaves its applications:
/// as Argo CD, when its policy does not delete (`create-only`,
/// `create-update`) and the set carries the resources finalizer, which
/// makes Argo CD remove the applications' owner references before the set
/// goes (Controlling-Resource-Modification.md, "How to prevent Application
/// controller from deleting Applications when deleting ApplicationSet").
pub fn keeps_applications_on_deletion(raw: &Value) -> bool {
    let keeps_policy = matches!(
        raw.pointer("/spec/syncPolicy/applicationsSync")
            .and_then(Value::as_str),
        Some("create-only" | "create-update")
    );
    let finalizer = raw
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| {
            f.iter()
                .any(|f| f.as_str() == Some(super::RESOURCES_FINALIZER))
        });
    keeps_policy && finalizer
}

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

/// The stored applications, read once per pass and looked up by name and
/// by origin (a search of a list per generated application made a set's
/// plan quadratic in the fleet).
#[derive(Clone, Debug, Default)]
pub struct AppTable {
    by_name: HashMap<String, AppRecord>,
    /// Origin → names, sorted.
    by_origin: HashMap<String, BTreeSet<String>>,
}

impl AppTable {
    /// A table of `records`.
    pub fn from_records(records: impl IntoIterator<Item = AppRecord>) -> Self {
        let mut t = Self::default();
        for r in records {
            t.put(r);
        }
        t
    }

    /// The application `name`.
    pub fn get(&self, name: &str) -> Option<&AppRecord> {
        self.by_name.get(name)
    }

    /// The applications with `origin`, by name.
    pub fn with_origin<'a>(&'a self, origin: &str) -> impl Iterator<Item = &'a AppRecord> + 'a {
        self.by_origin
            .get(origin)
            .into_iter()
            .flatten()
            .filter_map(|n| self.by_name.get(n))
    }

    /// Adds or replaces a record.
    pub fn put(&mut self, rec: AppRecord) {
        let name = rec.app.metadata.name.clone();
        self.remove(&name);
        self.by_origin
            .entry(rec.origin.clone())
            .or_default()
            .insert(name.clone());
        self.by_name.insert(name, rec);
    }

    /// Drops a record.
    pub fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name)
            && let Some(names) = self.by_origin.get_mut(&old.origin)
        {
            names.remove(name);
            if names.is_empty() {
                self.by_origin.remove(&old.origin);
            }
        }
    }
}

/// The deletion budget: at most `share` of a set may be deleted within
/// `window_ms` without `flotilla appset confirm`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub share: f64,
    pub window_ms: i64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            share: DEFAULT_DELETION_BUDGET,
            window_ms: i64::try_from(DEFAULT_DELETION_WINDOW.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// What [`plan_set`] knows about the set besides its evaluation.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub set: &'a str,
    pub policy: ApplicationsSync,
    pub preserved: &'a PreservedFields,
    pub ignore: &'a [IgnoreRule],
    pub budget: Budget,
    pub now_ms: i64,
    /// The deletions the user confirmed.
    pub confirmed: &'a [String],
    /// The set's deletions and sizes so far (from its record).
    pub deletion_log: &'a [DeletionRecord],
    pub size_log: &'a [SizeSample],
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
    /// The budget window's deletions and sizes after this plan.
    pub deletion_log: Vec<DeletionRecord>,
    pub size_log: Vec<SizeSample>,
}

/// Plans one set's changes from its evaluation `result` (pure).
///
/// `apps` is every stored application. Deletions are judged over the
/// budget's window, so that deleting a few at a time cannot get around
/// it: if the deletions of the window plus those of this evaluation exceed
/// the budget's share of the set's size (the larger of its size at the
/// start of the window and its size now), this evaluation's deletions are
/// held until the user confirms exactly them. Applying a confirmation
/// starts a new window.
pub fn plan_set(
    input: &PlanInput<'_>,
    result: Result<super::Generated, String>,
    apps: &AppTable,
) -> SetPlan {
    let set = input.set;
    let origin = origin_of(set);
    let generated = match result {
        Ok(g) => g,
        Err(message) => {
            return SetPlan {
                conditions: vec![condition(ERROR_OCCURRED, message, "")],
                deletion_log: input.deletion_log.to_vec(),
                size_log: input.size_log.to_vec(),
                ..Default::default()
            };
        }
    };
    let mut plan = SetPlan::default();
    let owned: Vec<&AppRecord> = apps
        .with_origin(&origin)
        .filter(|a| !is_deleting(a))
        .collect();
    let mut names = Vec::new();
    let mut generated_names = std::collections::HashSet::new();
    let mut created = 0usize;
    let mut failed: BTreeSet<String> = generated
        .errors
        .iter()
        .map(|e| e.application.clone())
        .collect();
    for e in &generated.errors {
        plan.conditions.push(condition(
            RENDER_ERROR,
            format!("application {:?}: {}", e.application, e.message),
            &e.application,
        ));
    }
    for mut app in generated.applications {
        app.metadata
            .annotations
            .insert(OWNER_ANNOTATION.to_owned(), set.to_owned());
        let name = app.metadata.name.clone();
        names.push(name.clone());
        generated_names.insert(name.clone());
        match apps.get(&name) {
            None => {
                created += 1;
                plan.upserts.push(app);
            }
            Some(e) if e.origin != origin => plan.conditions.push(condition(
                CONFLICT,
                format!(
                    "application {name:?} already exists with origin {:?}; it is left alone",
                    e.origin
                ),
                &name,
            )),
            Some(e) if is_deleting(e) => {
                created += 1;
                plan.upserts.push(app);
            }
            Some(e) => {
                let app = if input.preserved == &PreservedFields::default()
                    && input.ignore.is_empty()
                {
                    Ok(app)
                } else {
                    super::ignore::keep_current_fields(&app, &e.app, input.preserved, input.ignore)
                };
                match app {
                    Ok(app) => {
                        if *e.app != app && input.policy.allows_update() {
                            plan.upserts.push(app);
                        }
                    }
                    Err(message) => {
                        failed.insert(name.clone());
                        plan.conditions.push(condition(
                            RENDER_ERROR,
                            format!("application {name:?}: {message}"),
                            &name,
                        ));
                    }
                }
            }
        }
    }
    let window_start = input.now_ms.saturating_sub(input.budget.window_ms);
    let mut deletion_log: Vec<DeletionRecord> = input
        .deletion_log
        .iter()
        .filter(|d| d.at_ms > window_start)
        .cloned()
        .collect();
    // The last sample at or before the window's start, and those after.
    let from = input
        .size_log
        .iter()
        .rposition(|s| s.at_ms <= window_start)
        .unwrap_or(0);
    let mut size_log: Vec<SizeSample> = input.size_log[from.min(input.size_log.len())..].to_vec();
    if input.policy.allows_delete() {
        let mut gone: Vec<String> = owned
            .iter()
            .map(|a| a.app.metadata.name.clone())
            .filter(|n| !generated_names.contains(n) && !failed.contains(n.as_str()))
            .collect();
        gone.sort();
        let mut confirmed = input.confirmed.to_vec();
        confirmed.sort();
        let base = size_log
            .first()
            .map_or(owned.len(), |s| s.size)
            .max(owned.len());
        let in_window = deletion_log.len() + gone.len();
        let over_budget = in_window as f64 > input.budget.share * base as f64;
        if !gone.is_empty() && over_budget && gone != confirmed {
            let earlier = if deletion_log.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} already deleted in the last {})",
                    deletion_log.len(),
                    window_text(input.budget.window_ms)
                )
            };
            plan.conditions.push(condition(
                DELETION_HELD,
                format!(
                    "holding {} of {} applications for deletion ({}){earlier}: more than the deletion budget of {:.0}% of {base} within {}; run `flotilla appset confirm {set}` to delete them",
                    gone.len(),
                    owned.len(),
                    gone.join(", "),
                    input.budget.share * 100.0,
                    window_text(input.budget.window_ms),
                ),
                "",
            ));
            plan.held = gone;
        } else if !gone.is_empty() {
            if over_budget {
                // Confirmed: the deletions go and a new window starts.
                deletion_log.clear();
                size_log.clear();
            } else {
                deletion_log.extend(gone.iter().map(|app| DeletionRecord {
                    app: app.clone(),
                    at_ms: input.now_ms,
                }));
            }
            plan.deletions = gone;
        }
    }
    let size = owned.len() - plan.deletions.len() + created;
    if size_log.last().is_none_or(|s| s.size != size) {
        size_log.push(SizeSample {
            at_ms: input.now_ms,
            size,
        });
    }
    plan.deletion_log = deletion_log;
    plan.size_log = size_log;
    if plan.conditions.is_empty() {
        plan.conditions.push(condition(
            UP_TO_DATE,
            "all applications have been generated successfully".into(),
            "",
        ));
    }
    // Conditions that do not stop the set come last.
    for n in generated.notices {
        plan.conditions
            .push(condition(n.kind, n.message, &n.application));
    }
    names.sort();
    plan.generated = Some(names);
    plan
}

/// RollingSync: the set syncs its applications itself, step by step, so
/// as Argo CD it removes automated sync from every generated application
/// (before comparing with the stored one, or every pass would rewrite it).
/// Whether the set's syncs prune is kept in an annotation.
fn disable_automated_sync(set: &str, mut generated: super::Generated) -> super::Generated {
    for app in &mut generated.applications {
        let Some(policy) = app.spec.sync_policy.as_mut() else {
            continue;
        };
        let Some(automated) = policy.automated.take() else {
            continue;
        };
        tracing::debug!(appset = %set, app = %app.metadata.name, "RollingSync: automated sync disabled on the generated application");
        if automated.prune {
            app.metadata.annotations.insert(
                crate::rollout::PRUNE_ANNOTATION.to_owned(),
                "true".to_owned(),
            );
        }
    }
    generated
}

fn window_text(ms: i64) -> String {
    let secs = ms / 1000;
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
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
    /// (url, revision, requeueAfterSeconds) → commit (or error) read by
    /// the set being evaluated.
    refs: Mutex<Vec<GitRef>>,
    /// tenancy: the project of the set being evaluated, whose credentials
    /// its generators fetch with.
    project: Mutex<crate::repo_fetch::SetProject>,
}

type GitRef = ((String, String, Option<u64>), Result<String, String>);

/// The output of evaluating one stored set.
type Evaluation = Result<(ApplicationSet, Result<super::Generated, super::AppSetError>), String>;

/// A set's last evaluation and the inputs it was computed from.
#[derive(Clone)]
struct Memo {
    raw: Value,
    clusters: u64,
    refs: Vec<GitRef>,
    /// Shared with the pass that reuses it: a set of thousands of
    /// applications is not copied on each pass.
    result: Arc<Evaluation>,
}

fn clusters_fingerprint(clusters: &[super::ClusterInfo]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in clusters {
        c.name.hash(&mut h);
        c.server.hash(&mut h);
        c.labels.hash(&mut h);
        c.annotations.hash(&mut h);
        c.project.hash(&mut h);
    }
    h.finish()
}

impl HubGit {
    /// The files of `revision`, resolved (and fetched when due) for a
    /// generator with `requeue`.
    fn tree(
        &self,
        url: &str,
        revision: &str,
        requeue: Option<Duration>,
    ) -> Result<Arc<Vec<SourceFile>>, String> {
        let resolved = self.resolve(url, revision, requeue);
        {
            let mut refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
            let key = (
                url.to_owned(),
                revision.to_owned(),
                requeue.map(|d| d.as_secs()),
            );
            if !refs.iter().any(|(k, _)| *k == key) {
                refs.push((key, resolved.clone()));
            }
        }
        self.tree_at(url, &resolved?)
    }

    /// `revision` of `url` resolved for the set being evaluated: refused
    /// when the credentials stored for `url` are another project's.
    fn resolve(
        &self,
        url: &str,
        revision: &str,
        requeue: Option<Duration>,
    ) -> Result<String, String> {
        let project = self
            .project
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        project.allows(&self.store, url)?;
        self.resolver
            .resolve(&self.cache, &self.store, url, revision, self.force, requeue)
    }

    fn tree_at(&self, url: &str, commit: &str) -> Result<Arc<Vec<SourceFile>>, String> {
        let key = (url.to_owned(), commit.to_owned());
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
                .read_dir(url, commit, "", true)
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
        self.list_for_generator(repo_url, revision, None)
    }

    fn list_for_generator(
        &self,
        repo_url: &str,
        revision: &str,
        requeue: Option<Duration>,
    ) -> Result<Vec<String>, String> {
        Ok(self
            .tree(repo_url, revision, requeue)?
            .iter()
            .map(|f| f.path.clone())
            .collect())
    }

    fn read(&self, repo_url: &str, revision: &str, path: &str) -> Result<Vec<u8>, String> {
        // The commit the generator listed, whatever its requeue.
        let listed = self
            .refs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|((u, r, _), _)| u == repo_url && r == revision)
            .map(|(_, c)| c.clone());
        let tree = match listed {
            Some(commit) => self.tree_at(repo_url, &commit?)?,
            None => self.tree(repo_url, revision, None)?,
        };
        tree.iter()
            .find(|f| f.path == path)
            .map(|f| f.content.clone())
            .ok_or_else(|| format!("{path}: no such file"))
    }
}

/// The pass that resolved it, when, and the commit (or error).
type Resolved = (u64, Instant, Result<String, String>);

/// Resolves (url, revision) to a commit, fetching at most once per
/// interval (a generator's `requeueAfterSeconds`, else the poll interval)
/// unless forced. Holds nothing of the hub's state, so an evaluation still
/// running after shutdown keeps no store open.
struct Resolver {
    interval: Duration,
    commits: Mutex<HashMap<(String, String), Resolved>>,
    /// Number of the current pass: a forced pass fetches each repository
    /// once, and the next pass fetches again however soon it comes.
    pass: std::sync::atomic::AtomicU64,
}

impl Resolver {
    /// Forgets the commits resolved for these URLs (all of them with
    /// `None`): the next evaluation that reads one fetches it, whatever its
    /// `requeueAfterSeconds`.
    fn forget(&self, urls: Option<&[String]>) {
        let mut commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        match urls {
            Some(urls) => commits.retain(|(url, _), _| !urls.contains(url)),
            None => commits.clear(),
        }
    }

    fn resolve(
        &self,
        cache: &GitCache,
        store: &crate::store::Store,
        url: &str,
        revision: &str,
        force: bool,
        requeue: Option<Duration>,
    ) -> Result<String, String> {
        let key = (url.to_owned(), revision.to_owned());
        let pass = self.pass.load(std::sync::atomic::Ordering::SeqCst);
        if let Some((fetched_in, at, r)) = self
            .commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            // requeueAfterSeconds: 0 fetches again only when asked to.
            let fresh = match requeue {
                Some(d) if d.is_zero() => true,
                Some(d) => at.elapsed() < d,
                None => at.elapsed() < self.interval,
            };
            if *fetched_in == pass || (!force && fresh) {
                return r.clone();
            }
        }
        let r = crate::repo_fetch::fetch_with_stored_credentials(cache, store, url, revision)
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

/// Hub-wide settings of the ApplicationSet controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AppSetConfig {
    /// Share (0..=1) of a set's applications that may be deleted within
    /// `deletion_window` without confirmation.
    pub deletion_budget: f64,
    pub deletion_window: Duration,
    /// doublestar globbing for `git` file generators (Argo CD's
    /// `--enable-new-git-file-globbing`).
    pub new_git_file_globbing: bool,
}

impl Default for AppSetConfig {
    fn default() -> Self {
        Self {
            deletion_budget: DEFAULT_DELETION_BUDGET,
            deletion_window: DEFAULT_DELETION_WINDOW,
            new_git_file_globbing: false,
        }
    }
}

/// The ApplicationSet controller.
pub struct AppSets {
    fleet: Arc<Fleet>,
    budget: Budget,
    options: GenerateOptions,
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
    /// Set name → the set and the store's application change count right
    /// after its last plan was applied: while both hold and its
    /// evaluation came from the memo, planning again would change nothing.
    planned: Mutex<HashMap<String, Planned>>,
    /// Applications marked for a preserving deletion (a superset: each is
    /// checked against its record), `None` until the first pass reads them.
    deleting: Mutex<Option<BTreeSet<String>>>,
    /// Plans not made again because nothing they read changed.
    skipped: std::sync::atomic::AtomicU64,
    /// The RollingSync reconciler's watch list (see [`crate::rollout`]).
    rollouts: Arc<crate::rollout::Rollouts>,
}

/// What a set's last applied plan saw.
#[derive(Clone, Debug, PartialEq)]
struct Planned {
    raw: Value,
    app_changes: u64,
}

impl std::fmt::Debug for AppSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppSets")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl AppSets {
    /// `budget`: share (0..=1) of a set's applications that may be
    /// deleted within the default window without confirmation; `interval`:
    /// how often a Git generator's repository is fetched at most (unless
    /// forced).
    pub fn new(fleet: Arc<Fleet>, budget: f64, interval: Duration) -> Arc<Self> {
        Self::with_config(
            fleet,
            AppSetConfig {
                deletion_budget: budget,
                ..AppSetConfig::default()
            },
            interval,
        )
    }

    /// [`AppSets::new`] with every setting.
    pub fn with_config(fleet: Arc<Fleet>, config: AppSetConfig, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            fleet,
            budget: Budget {
                share: config.deletion_budget.clamp(0.0, 1.0),
                window_ms: i64::try_from(config.deletion_window.as_millis()).unwrap_or(i64::MAX),
            },
            options: GenerateOptions {
                new_git_file_globbing: config.new_git_file_globbing,
            },
            resolver: Arc::new(Resolver {
                interval,
                commits: Mutex::default(),
                pass: std::sync::atomic::AtomicU64::new(0),
            }),
            trees: Mutex::default(),
            writes: Mutex::default(),
            memo: Mutex::default(),
            planned: Mutex::default(),
            deleting: Mutex::default(),
            skipped: std::sync::atomic::AtomicU64::new(0),
            pass: tokio::sync::Mutex::default(),
            counts: Mutex::default(),
            rollouts: crate::rollout::Rollouts::new(),
        })
    }

    /// The RollingSync reconciler's watch list: sets evaluated here are
    /// handed to it, status reports wake it.
    pub fn rollouts(&self) -> &Arc<crate::rollout::Rollouts> {
        &self.rollouts
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

    /// Git generators read these repositories (every repository with
    /// `None`) again on the next evaluation: a webhook push or a refresh.
    pub fn refresh_git(&self, urls: Option<&[String]>) {
        self.resolver.forget(urls);
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
        // Applications whose objects were preserved may have gone.
        self.rollouts.deletions_may_have_progressed();
        let sets = store.appsets()?;
        if sets.is_empty() {
            return Ok(changed);
        }
        let clusters = crate::inventory::infos(store.clusters_shared()?.iter().map(|c| &**c));
        let previous = self.trees.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let git = HubGit {
            cache: cache.clone(),
            store: store.clone(),
            resolver: self.resolver.clone(),
            force,
            trees: Mutex::new(previous),
            used: Mutex::default(),
            refs: Mutex::default(),
            project: Mutex::default(),
        };
        let items: Vec<(String, Value)> = sets
            .iter()
            .map(|s| (s.name.clone(), s.raw.clone()))
            .collect();
        // Taken, not copied: this pass puts back what it uses.
        let mut memo = std::mem::take(&mut *self.memo.lock().unwrap_or_else(|p| p.into_inner()));
        let fingerprint = clusters_fingerprint(&clusters);
        let options = self.options;
        let joined = tokio::task::spawn_blocking(move || {
            let mut next = HashMap::new();
            let mut evaluated = Vec::new();
            for (name, raw) in items {
                *git.project.lock().unwrap_or_else(|p| p.into_inner()) =
                    crate::repo_fetch::SetProject::of(&raw);
                // Same set, same inventory, same commits: same result.
                if let Some(m) = memo.remove(&name)
                    && m.raw == raw
                    && m.clusters == fingerprint
                    && m.refs.iter().all(|((url, rev, requeue), c)| {
                        git.resolve(url, rev, requeue.map(Duration::from_secs)) == *c
                    })
                {
                    evaluated.push((m.result.clone(), true));
                    next.insert(name, m);
                    continue;
                }
                git.refs.lock().unwrap_or_else(|p| p.into_inner()).clear();
                let result: Arc<Evaluation> = Arc::new(
                    ApplicationSet::from_value(raw.clone())
                        .map_err(|e| e.to_string())
                        .map(|set| {
                            let generated = set.generate_with(&clusters, Some(&git), options);
                            (set, generated)
                        }),
                );
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
                evaluated.push((result, false));
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
        // Every application, read at most once for the whole pass (when a
        // set needs a plan) and kept up to date with what each plan writes.
        let mut table: Option<AppTable> = None;
        for (evaluated_rec, (evaluation, reused)) in sets.into_iter().zip(evaluated) {
            let _w = self.write_lock();
            // The set may have been replaced or deleted meanwhile: then this
            // result is stale and the next pass evaluates the new one.
            let Some(mut rec) = store.appset(&evaluated_rec.name)? else {
                continue;
            };
            if rec.raw != evaluated_rec.raw {
                continue;
            }
            // Same evaluation, same set, no application written since its
            // last plan, nothing held or confirmed: the plan would be the
            // same, so it is not made again (an idle pass costs no
            // application reads).
            let unchanged = reused
                && rec.pending_deletions.is_empty()
                && rec.confirmed_deletions.is_empty()
                && self
                    .planned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&rec.name)
                    == Some(&Planned {
                        raw: rec.raw.clone(),
                        app_changes: store.app_changes(),
                    });
            if unchanged {
                self.skipped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
                let count = counts.entry(rec.name.clone()).or_default();
                count.evaluations += 1;
                count.last_evaluated_ms = crate::clock::now_ms();
                continue;
            }
            let apps = match &mut table {
                Some(t) => t,
                None => table.insert(AppTable::from_records(store.apps()?)),
            };
            let mut watched = false;
            let (policy, preserve, preserved, ignore, result) =
                match Arc::unwrap_or_clone(evaluation) {
                    Ok((set, generated)) => {
                        let rolling = set.strategy.rolling_sync.is_some();
                        watched = rolling || set.strategy.waves;
                        let generated = if rolling {
                            generated.map(|g| disable_automated_sync(&rec.name, g))
                        } else {
                            generated
                        };
                        (
                            set.applications_sync,
                            set.preserve_resources_on_deletion,
                            set.preserved_fields,
                            set.ignore_differences,
                            generated.map_err(|e| e.to_string()),
                        )
                    }
                    Err(message) => (
                        ApplicationsSync::CreateOnly,
                        true,
                        PreservedFields::default(),
                        Vec::new(),
                        Err(message),
                    ),
                };
            let now = crate::clock::now_ms();
            let mut plan = plan_set(
                &PlanInput {
                    set: &rec.name,
                    policy,
                    preserved: &preserved,
                    ignore: &ignore,
                    budget: self.budget,
                    now_ms: now,
                    confirmed: &rec.confirmed_deletions,
                    deletion_log: &rec.deletion_log,
                    size_log: &rec.size_log,
                },
                result,
                apps,
            );
            let origin = origin_of(&rec.name);
            for app in std::mem::take(&mut plan.upserts) {
                let app = Arc::new(app);
                let name = &app.metadata.name;
                let current = apps.get(name);
                tracing::info!(appset = %rec.name, app = %name, created = current.is_none(), "generated application");
                let written = AppRecord {
                    app: app.clone(),
                    origin: origin.clone(),
                    revision: current.map(|a| a.revision.clone()).unwrap_or_default(),
                    error: current.map(|a| a.error.clone()).unwrap_or_default(),
                };
                store.put_app_definition(&written)?;
                apps.put(written);
                changed = true;
            }
            for name in &plan.deletions {
                tracing::info!(appset = %rec.name, app = %name, preserve, "deleting generated application");
                self.delete_app(name, preserve)?;
                // Removed, or kept with prune off until its clusters ack.
                match store.app(name)? {
                    Some(kept) => apps.put(kept),
                    None => apps.remove(name),
                }
                changed = true;
            }
            for c in &plan.conditions {
                if c.kind != UP_TO_DATE {
                    tracing::warn!(appset = %rec.name, condition = %c.kind, message = %c.message, "application set condition");
                }
            }
            let before = rec.clone();
            if let Some(g) = plan.generated {
                rec.generated = g;
                rec.last_good_ms = now;
            }
            rec.conditions = plan.conditions;
            rec.pending_deletions = plan.held;
            rec.confirmed_deletions.clear();
            rec.deletion_log = plan.deletion_log;
            rec.size_log = plan.size_log;
            rec.last_result_ms = now;
            let mut cmp = before.clone();
            cmp.last_result_ms = now;
            cmp.last_good_ms = rec.last_good_ms;
            // Rewrite only when something besides the timestamps changed.
            if cmp != rec || before.last_good_ms == 0 {
                store.put_appset(&rec)?;
            }
            self.planned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    rec.name.clone(),
                    Planned {
                        raw: rec.raw.clone(),
                        app_changes: store.app_changes(),
                    },
                );
            if watched {
                self.rollouts.watch_set(&rec.name, &rec.generated);
            } else {
                self.rollouts.unwatch_set(&rec.name);
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

    /// Deletes a generated application. When its objects must stay (the
    /// set's `preserveResourcesOnDeletion`, or finalizers without Argo CD's
    /// resources finalizer: see [`super::keeps_objects_on_deletion`]) and
    /// its policy prunes, it is first re-sent with prune off and deleted
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
        let preserve = super::keeps_objects_on_deletion(&rec.app, preserve);
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
        let app = Arc::make_mut(&mut rec.app);
        if let Some(p) = app.spec.sync_policy.as_mut() {
            p.automated = Some(AutomatedSync {
                prune: false,
                ..p.automated.clone().unwrap_or_default()
            });
        }
        app.metadata.annotations.insert(
            DELETING_ANNOTATION.to_owned(),
            "preserve-resources".to_owned(),
        );
        store.put_app_definition(&rec)?;
        if let Some(d) = self
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            d.insert(name.to_owned());
        }
        Ok(())
    }

    /// How many set plans passes skipped because nothing they read had
    /// changed (the set, its evaluation, the stored applications).
    pub fn plans_skipped(&self) -> u64 {
        self.skipped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Removes applications marked for a preserving deletion once every
    /// cluster they target has acknowledged their prune-off bundle. Reads
    /// only the marked applications and their clusters (every application
    /// once, on the first pass, to find the marks of an earlier run).
    fn finish_preserving_deletions(&self) -> Result<bool, StoreError> {
        let store = self.fleet.store();
        let candidates: Vec<String> = {
            let mut deleting = self.deleting.lock().unwrap_or_else(|p| p.into_inner());
            match deleting.as_ref() {
                Some(d) => d.iter().cloned().collect(),
                None => {
                    let found: BTreeSet<String> = store
                        .apps()?
                        .into_iter()
                        .filter(is_deleting)
                        .map(|a| a.app.metadata.name.clone())
                        .collect();
                    let out = found.iter().cloned().collect();
                    *deleting = Some(found);
                    out
                }
            }
        };
        let mut changed = false;
        for name in candidates {
            let a = match store.app(&name)? {
                Some(a) if is_deleting(&a) => a,
                _ => {
                    self.unmark_deleting(&name);
                    continue;
                }
            };
            let Some(bundle) = self.fleet.bundle(&name) else {
                continue;
            };
            if bundle.policy.as_ref().is_some_and(|p| p.prune) {
                continue;
            }
            let mut done = true;
            for c in store.clusters_targeted(&crate::store::Destination::of(&a.app))? {
                let Some(c) = store.cluster_shared(&c)? else {
                    continue;
                };
                if !(c.desired_index.get(&name) == Some(&bundle.digest)
                    && c.acked_generation >= c.generation)
                {
                    done = false;
                    break;
                }
            }
            if done {
                tracing::info!(app = %name, "generated application deleted; its objects are preserved");
                self.fleet
                    .remove_app_with(&name, crate::deletion::Propagation::Orphan)?;
                self.unmark_deleting(&name);
                changed = true;
            }
        }
        Ok(changed)
    }

    fn unmark_deleting(&self, name: &str) {
        if let Some(d) = self
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            d.remove(name);
        }
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
        self.rollouts.unwatch_set(name);
        store.remove_rollout(name)?;
        // A set created again under this name counts from zero.
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let origin = origin_of(name);
        let keep = keeps_applications_on_deletion(&rec.raw);
        // deletionOrder Reverse: the last step's applications now, the
        // others group by group as their clusters let the previous go
        // (carried on by the rollout reconciler).
        let reverse_steps = ApplicationSet::from_value(rec.raw.clone())
            .ok()
            .filter(|s| !keep && s.strategy.reverse_deletion())
            .and_then(|s| s.strategy.rolling_sync);
        let owned: Vec<AppRecord> = store
            .apps()?
            .into_iter()
            .filter(|a| a.origin == origin && !is_deleting(a))
            .collect();
        let mut now: Option<BTreeSet<String>> = None;
        if let Some(steps) = reverse_steps {
            let groups = crate::rollout::reverse_deletion_groups(
                &steps,
                owned
                    .iter()
                    .map(|a| (a.app.metadata.name.as_str(), &a.app.metadata.labels)),
            );
            let by_name: HashMap<&str, &AppRecord> = owned
                .iter()
                .map(|a| (a.app.metadata.name.as_str(), a))
                .collect();
            let mut deleting = Vec::with_capacity(groups.len());
            for g in &groups {
                let mut group = Vec::with_capacity(g.len());
                for app in g {
                    let clusters = match by_name.get(app.as_str()) {
                        Some(a) => {
                            store.clusters_targeted(&crate::store::Destination::of(&a.app))?
                        }
                        None => Vec::new(),
                    };
                    group.push(crate::rollout::DeletingApp {
                        app: app.clone(),
                        clusters,
                    });
                }
                deleting.push(group);
            }
            now = Some(
                groups
                    .first()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            );
            if groups.len() > 1 {
                tracing::info!(appset = %name, steps = ?groups, "deletionOrder Reverse: deleting step by step, last step first");
            }
            store.put_rollout(&crate::rollout::RolloutRecord {
                set: name.to_owned(),
                deleting,
                preserve,
                ..Default::default()
            })?;
            self.rollouts.deleting_in_reverse(name);
        }
        for mut a in owned {
            if now
                .as_ref()
                .is_some_and(|n| !n.contains(&a.app.metadata.name))
            {
                continue;
            }
            if keep {
                // Orphaned, as Kubernetes leaves them once Argo CD removed
                // the set's owner references: plain applications now.
                a.origin = "api".to_owned();
                Arc::make_mut(&mut a.app)
                    .metadata
                    .annotations
                    .remove(OWNER_ANNOTATION);
                tracing::info!(appset = %name, app = %a.app.metadata.name, "application kept: the set's policy does not delete");
                store.put_app_definition(&a)?;
                // A waves rollout's pin goes with the set (recorded in
                // the application's history): the kept application is an
                // ordinary one now, rendered at Git's revision.
                let clusters = store.clusters_targeted(&crate::store::Destination::of(&a.app))?;
                crate::history::release_rollout_pin(
                    store,
                    &a.app.metadata.name,
                    "the set was deleted, the application kept",
                    clusters,
                )?;
            } else {
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
            crate::model::origin_after_api_edit(existing.as_ref().map(|e| e.origin.as_str()));
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
            app: a.into(),
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
            ..Default::default()
        })
    }

    const HOUR_MS: i64 = 3_600_000;
    const T0: i64 = 1_000 * HOUR_MS;

    /// `plan_set` of set "s" at `now` with a 50% budget over an hour.
    fn plan_at(
        policy: ApplicationsSync,
        result: Result<Generated, String>,
        existing: &[AppRecord],
        confirmed: &[String],
        now_ms: i64,
        deletion_log: &[DeletionRecord],
        size_log: &[SizeSample],
    ) -> SetPlan {
        plan_set(
            &PlanInput {
                set: "s",
                policy,
                preserved: &PreservedFields::default(),
                ignore: &[],
                budget: Budget {
                    share: 0.5,
                    window_ms: HOUR_MS,
                },
                now_ms,
                confirmed,
                deletion_log,
                size_log,
            },
            result,
            &AppTable::from_records(existing.iter().cloned()),
        )
    }

    fn plan(
        policy: ApplicationsSync,
        result: Result<Generated, String>,
        existing: &[AppRecord],
        confirmed: &[String],
    ) -> SetPlan {
        plan_at(policy, result, existing, confirmed, T0, &[], &[])
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
            let plan = plan(c.policy, c.result, &c.existing, &confirmed);
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

    /// A set over time: its applications and budget window records.
    struct History {
        apps: Vec<AppRecord>,
        deletion_log: Vec<DeletionRecord>,
        size_log: Vec<SizeSample>,
    }

    impl History {
        fn new() -> Self {
            Self {
                apps: Vec::new(),
                deletion_log: Vec::new(),
                size_log: Vec::new(),
            }
        }

        /// One evaluation generating `names` at `now`; applies the plan.
        fn step(&mut self, names: &[String], now: i64, confirmed: &[String]) -> SetPlan {
            let apps: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "p")).collect();
            let plan = plan_at(
                ApplicationsSync::Sync,
                generated(&apps, &[]),
                &self.apps,
                confirmed,
                now,
                &self.deletion_log,
                &self.size_log,
            );
            for a in &plan.upserts {
                self.apps.retain(|r| r.app.metadata.name != a.metadata.name);
                self.apps.push(owned(&a.metadata.name, "p"));
            }
            self.apps
                .retain(|r| !plan.deletions.contains(&r.app.metadata.name));
            self.deletion_log = plan.deletion_log.clone();
            self.size_log = plan.size_log.clone();
            plan
        }
    }

    fn numbered(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("a{i}")).collect()
    }

    const MINUTE_MS: i64 = 60_000;

    /// Issue 14 point 10: removing clusters one at a time must not walk
    /// around the budget; it is judged over a window.
    #[test]
    fn budget_is_judged_over_a_window() {
        let mut h = History::new();
        h.step(&numbered(10), T0, &[]);
        assert_eq!(h.apps.len(), 10);
        // One more application gone per minute: five (50% of 10) go.
        for i in 1..=5 {
            let plan = h.step(&numbered(10)[i..], T0 + i as i64 * MINUTE_MS, &[]);
            assert_eq!(plan.deletions, vec![format!("a{}", i - 1)], "step {i}");
            assert!(plan.held.is_empty(), "step {i}");
        }
        // The sixth within the hour is held, and says what happened before.
        let plan = h.step(&numbered(10)[6..], T0 + 6 * MINUTE_MS, &[]);
        assert!(plan.deletions.is_empty());
        assert_eq!(plan.held, ["a5"]);
        assert_eq!(plan.conditions[0].kind, DELETION_HELD);
        let m = &plan.conditions[0].message;
        assert!(m.contains("5 already deleted in the last 1h"), "{m}");
        assert!(m.contains("of 10 within 1h"), "{m}");
        // Still held a bit later.
        let plan = h.step(&numbered(10)[6..], T0 + 30 * MINUTE_MS, &[]);
        assert_eq!(plan.held, ["a5"]);
        // Once the first deletions leave the window, it goes: the window
        // (from T0+2m) holds 3 earlier deletions, + 1 is 4 of the 8 the
        // set had at its start.
        let plan = h.step(&numbered(10)[6..], T0 + 62 * MINUTE_MS, &[]);
        assert_eq!(plan.deletions, ["a5"]);
        assert_eq!(plan.deletion_log.len(), 4);
    }

    #[test]
    fn confirming_starts_a_new_window() {
        let mut h = History::new();
        h.step(&numbered(4), T0, &[]);
        let plan = h.step(&numbered(1), T0 + MINUTE_MS, &[]);
        assert_eq!(plan.held, ["a1", "a2", "a3"]);
        let confirmed: Vec<String> = plan.held.clone();
        let plan = h.step(&numbered(1), T0 + 2 * MINUTE_MS, &confirmed);
        assert_eq!(plan.deletions, ["a1", "a2", "a3"]);
        assert!(plan.deletion_log.is_empty());
        assert_eq!(
            plan.size_log,
            [SizeSample {
                at_ms: T0 + 2 * MINUTE_MS,
                size: 1
            }]
        );
        // Judged afresh against the new size: adding two then removing one
        // of three is within the budget.
        h.step(&numbered(3), T0 + 3 * MINUTE_MS, &[]);
        let plan = h.step(&numbered(2), T0 + 4 * MINUTE_MS, &[]);
        assert_eq!(plan.deletions, ["a2"]);
    }

    #[test]
    fn a_set_that_grew_in_the_window_is_judged_by_its_size_now() {
        let mut h = History::new();
        h.step(&numbered(2), T0, &[]);
        h.step(&numbered(10), T0 + MINUTE_MS, &[]);
        // 3 of 10 (the start of the window had 2).
        let plan = h.step(&numbered(7), T0 + 2 * MINUTE_MS, &[]);
        assert_eq!(plan.deletions, ["a7", "a8", "a9"]);
    }

    #[test]
    fn the_window_survives_in_the_record() {
        // What a restarted hub reads back from the store is what decides.
        let mut h = History::new();
        h.step(&numbered(4), T0, &[]);
        h.step(&numbered(4)[1..], T0 + MINUTE_MS, &[]);
        h.step(&numbered(4)[2..], T0 + 2 * MINUTE_MS, &[]);
        let rec = AppSetRecord {
            deletion_log: h.deletion_log.clone(),
            size_log: h.size_log.clone(),
            ..Default::default()
        };
        let back: AppSetRecord =
            serde_json::from_slice(&serde_json::to_vec(&rec).unwrap()).unwrap();
        assert_eq!(back.deletion_log.len(), 2);
        let mut restarted = History {
            apps: h.apps.clone(),
            deletion_log: back.deletion_log,
            size_log: back.size_log,
        };
        let plan = restarted.step(&numbered(4)[3..], T0 + 3 * MINUTE_MS, &[]);
        assert_eq!(plan.held, ["a2"]);
    }

    #[test]
    fn notices_do_not_hide_up_to_date() {
        let mut g = generated(&[("a", "a")], &[]).unwrap();
        g.notices.push(crate::appset::Notice {
            kind: NOTICE_EXTENSION,
            message: "n-ary matrix".into(),
            application: String::new(),
        });
        let plan = plan(ApplicationsSync::Sync, Ok(g), &[], &[]);
        assert_eq!(kinds(&plan), [UP_TO_DATE, NOTICE_EXTENSION]);
    }

    #[test]
    fn preserved_and_ignored_fields_are_not_rewritten() {
        let mut current = owned("a", "edited");
        Arc::make_mut(&mut current.app)
            .metadata
            .labels
            .insert("team".into(), "blue".into());
        let ignore = vec![IgnoreRule {
            name: None,
            json_pointers: vec!["/spec/source/path".into()],
            jq_path_expressions: vec![],
        }];
        let preserved = PreservedFields {
            annotations: vec![],
            labels: vec!["team".into()],
        };
        let input = PlanInput {
            set: "s",
            policy: ApplicationsSync::Sync,
            preserved: &preserved,
            ignore: &ignore,
            budget: Budget::default(),
            now_ms: T0,
            confirmed: &[],
            deletion_log: &[],
            size_log: &[],
        };
        let plan = plan_set(
            &input,
            generated(&[("a", "generated")], &[]),
            &AppTable::from_records([current.clone()]),
        );
        assert!(plan.upserts.is_empty(), "{:?}", plan.upserts);
        // Without them, the generated version replaces the edit.
        let plain = plan_set(
            &PlanInput {
                preserved: &PreservedFields::default(),
                ignore: &[],
                ..input
            },
            generated(&[("a", "generated")], &[]),
            &AppTable::from_records([current]),
        );
        assert_eq!(plain.upserts[0].spec.source.path, "generated");
        assert!(plain.upserts[0].metadata.labels.is_empty());
    }

    #[test]
    fn held_condition_names_the_applications_and_the_command() {
        let existing = vec![owned("a", "a"), owned("b", "b")];
        let plan = plan(ApplicationsSync::Sync, generated(&[], &[]), &existing, &[]);
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

    /// A pass where nothing a set reads changed (same set, same inventory,
    /// same commits, no application written) does not plan it again and
    /// reads no application record; a change to any of them plans again.
    #[tokio::test]
    async fn an_idle_pass_plans_nothing_and_reads_no_application() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("db")).unwrap();
        let fleet = Fleet::load(store.clone()).unwrap();
        let sets = AppSets::new(
            fleet.clone(),
            DEFAULT_DELETION_BUDGET,
            Duration::from_secs(3600),
        );
        let cache = GitCache::new(dir.path().join("git"));
        let clusters = "  - clusters: {}\n";
        for i in 0..5 {
            sets.put_from_api(&set_manifest(&format!("s{i}"), clusters, "name"), false)
                .unwrap();
        }
        for name in ["c1", "c2"] {
            fleet
                .put_cluster(crate::store::ClusterRecord {
                    name: name.into(),
                    ..Default::default()
                })
                .unwrap();
        }
        sets.reconcile_all(&cache, false).await.unwrap();
        assert_eq!(
            store.appset("s0").unwrap().unwrap().generated,
            ["s0-c1", "s0-c2"]
        );
        // The first pass after the plans wrote applications plans once more.
        sets.reconcile_all(&cache, false).await.unwrap();

        let skipped = sets.plans_skipped();
        let before = store.counters();
        sets.reconcile_all(&cache, false).await.unwrap();
        let after = store.counters();
        assert_eq!(sets.plans_skipped(), skipped + 5, "all five sets skipped");
        // The sets themselves and the inventory fingerprint are read; no
        // application is.
        let decoded = after.decoded - before.decoded;
        assert!(
            decoded <= 5 + 5 + 2,
            "an idle pass decoded {decoded} records (5 sets read twice, 2 clusters)"
        );

        // A new cluster is a new input: every set plans again.
        fleet
            .put_cluster(crate::store::ClusterRecord {
                name: "c3".into(),
                ..Default::default()
            })
            .unwrap();
        let skipped = sets.plans_skipped();
        let before = store.counters();
        sets.reconcile_all(&cache, false).await.unwrap();
        let decoded = store.counters().decoded - before.decoded;
        assert_eq!(sets.plans_skipped(), skipped);
        // The ten applications are read once for the pass, not once per
        // set (5 × 10), beside the sets (twice) and the three clusters.
        assert!(
            decoded <= 10 + 10 + 3 + 5,
            "a pass planning five sets decoded {decoded} records"
        );
        assert_eq!(
            store.appset("s4").unwrap().unwrap().generated,
            ["s4-c1", "s4-c2", "s4-c3"]
        );
    }

    /// Controlling-Resource-Modification.md: with create-only or
    /// create-update, the set's resources finalizer keeps its applications
    /// when the set is deleted; otherwise they go with it.
    #[tokio::test]
    async fn deleting_a_set_keeps_its_applications_only_when_argo_cd_would() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("db")).unwrap();
        let sets = AppSets::new(
            Fleet::load(store.clone()).unwrap(),
            DEFAULT_DELETION_BUDGET,
            Duration::from_secs(3600),
        );
        let cache = GitCache::new(dir.path().join("git"));
        let rows = [
            ("keep", "create-only", true, true),
            ("keep2", "create-update", true, true),
            ("nofin", "create-only", false, false),
            ("syncs", "sync", true, false),
        ];
        for (name, policy, finalizer, _) in rows {
            let list = "  - list:\n      elements:\n      - app: a\n";
            let mut manifest = set_manifest(name, list, "app").replace(
                "spec:\n  generators:",
                &format!("spec:\n  syncPolicy:\n    applicationsSync: {policy}\n  generators:"),
            );
            if finalizer {
                manifest = manifest.replace(
                    &format!("  name: {name}\n"),
                    &format!(
                        "  name: {name}\n  finalizers: [resources-finalizer.argocd.argoproj.io]\n"
                    ),
                );
            }
            sets.put_from_api(&manifest, false).unwrap();
        }
        sets.reconcile_all(&cache, false).await.unwrap();
        for (name, _, _, kept) in rows {
            let app = format!("{name}-a");
            assert!(store.app(&app).unwrap().is_some(), "{app} generated");
            // As a waves rollout of the set leaves it.
            crate::history::set_pin_by(
                &store,
                &app,
                Some("old".into()),
                &format!("rollout:{name}"),
            )
            .unwrap();
            assert!(sets.remove_set(name).unwrap());
            let after = store.app(&app).unwrap();
            assert_eq!(after.is_some(), kept, "{name}");
            if let Some(a) = after {
                assert_eq!(a.origin, "api", "{name}");
                assert!(!a.app.metadata.annotations.contains_key(OWNER_ANNOTATION));
            }
            // Kept or not, no rollout pin is left; a kept application's
            // history says where it went.
            assert_eq!(store.app_pin(&app).unwrap(), None, "{name}");
            let ops = store.app_ops(&app).unwrap();
            assert_eq!(
                ops.events
                    .iter()
                    .any(|e| e.event.contains("rollout pin released")),
                kept,
                "{name}: {ops:?}"
            );
        }
    }

    /// A git generator's requeueAfterSeconds decides how long a fetched
    /// revision is used (0: until a refresh); without it, the poll interval.
    #[tokio::test]
    async fn requeue_after_seconds_decides_when_the_repository_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("apps/one")).unwrap();
        std::fs::write(repo.join("apps/one/x.yaml"), "a: 1\n").unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(&repo)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
        };
        git(&["init", "-q", "-b", "main"]);
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "one"]);
        let store = crate::store::Store::open(&dir.path().join("db")).unwrap();
        // A poll interval of zero: without requeueAfterSeconds every pass
        // fetches.
        let sets = AppSets::new(
            Fleet::load(store.clone()).unwrap(),
            DEFAULT_DELETION_BUDGET,
            Duration::ZERO,
        );
        let cache = GitCache::new(dir.path().join("git"));
        // Each set its own revision: a (repository, revision) fetched for
        // one set is fresh for every set in that pass.
        let generator = |revision: &str, requeue: &str| {
            format!(
                "  - git:\n      repoURL: file://{}\n      revision: {revision}\n{requeue}      directories:\n      - path: 'apps/*'\n",
                repo.display()
            )
        };
        sets.put_from_api(
            &set_manifest("polled", &generator("main", ""), "path.basename"),
            false,
        )
        .unwrap();
        sets.put_from_api(
            &set_manifest(
                "onrefresh",
                &generator("HEAD", "      requeueAfterSeconds: 0\n"),
                "path.basename",
            ),
            false,
        )
        .unwrap();
        sets.reconcile_all(&cache, false).await.unwrap();
        let generated = |name: &str| store.appset(name).unwrap().unwrap().generated;
        assert_eq!(generated("polled"), ["polled-one"]);
        assert_eq!(generated("onrefresh"), ["onrefresh-one"]);

        std::fs::create_dir_all(repo.join("apps/two")).unwrap();
        std::fs::write(repo.join("apps/two/x.yaml"), "a: 2\n").unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "two"]);
        sets.reconcile_all(&cache, false).await.unwrap();
        assert_eq!(generated("polled"), ["polled-one", "polled-two"]);
        assert_eq!(generated("onrefresh"), ["onrefresh-one"]);
        // A refresh (forced pass) fetches it.
        sets.reconcile_all(&cache, true).await.unwrap();
        assert_eq!(generated("onrefresh"), ["onrefresh-one", "onrefresh-two"]);
    }
}
