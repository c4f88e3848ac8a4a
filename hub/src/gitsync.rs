//! The Git loop: poll registered repositories, load the Applications they
//! declare, fetch every application's source and render it into a bundle.
//!
//! A render is keyed by (repository, commit, path, directory options) and
//! shared by every application and cluster that uses it.
//!
//! Nothing waits for an unrelated repository. Fetches run on a bounded pool
//! with a deadline each, one in flight per repository ([`fetcher`]); the
//! loop starts the fetches that are due without waiting for them, and is
//! woken when one brings something new. Every application is rendered by
//! its own task (one at a time per application, at most
//! `render_concurrency` renders at once), which waits only for its own
//! sources and hands its bundle to the fleet as soon as it is ready
//! (bundles that are ready together are handed over together).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tracing::Instrument as _;

use crate::fleet::{Fleet, build_bundle};
use crate::model::{self, Application};
use crate::source::{FetchAuth, FetchLimits, GitCache, SourceFile};
use crate::store::{AppRecord, RepoRecord, Store, StoreError};

mod charts;
mod fetcher;
mod sources;

pub use sources::{REVISION_SEPARATOR, source_label, split_revisions};

/// `RepoRecord::kind` of a Helm chart repository.
pub const HELM_KIND: &str = "helm";

/// What a registered repository is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    /// Fetched with gix; may hold Applications under an apps path.
    Git,
    /// A Helm chart repository (`index.yaml`) for `source.chart`.
    Helm,
}

impl RepoKind {
    /// Parses the API's and CLI's `type`: empty or `git`, or `helm`.
    ///
    /// # Errors
    /// Any other value.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "git" => Ok(Self::Git),
            "helm" => Ok(Self::Helm),
            other => Err(format!("repository type {other:?}: expected git or helm")),
        }
    }
}

/// Default poll interval of a repository.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(15);

/// Default number of fetches running at once.
pub const DEFAULT_FETCH_CONCURRENCY: usize = 4;

/// How much Git and render work runs at once, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GitLimits {
    /// Longest one fetch (Git or Helm index) may take.
    pub fetch_timeout: Duration,
    /// Fetches running at once.
    pub fetch_concurrency: usize,
    /// Renders running at once.
    pub render_concurrency: usize,
}

impl Default for GitLimits {
    fn default() -> Self {
        Self {
            fetch_timeout: crate::source::DEFAULT_FETCH_TIMEOUT,
            fetch_concurrency: DEFAULT_FETCH_CONCURRENCY,
            render_concurrency: default_render_concurrency(),
        }
    }
}

/// Default number of renders at once: the CPUs the hub may use (renders
/// are CPU work), at least 2.
pub fn default_render_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// (repository, commit, path, parameters): see [`crate::render::RenderRequest`].
type RenderKey = crate::render::RenderRequest;

type Rendered = Arc<Result<Vec<String>, String>>;

/// A render shared by every application that asks for the same key at the
/// same time.
type RenderCell = Arc<tokio::sync::OnceCell<Rendered>>;
/// The render keys one application's render used, each shared with the
/// render cache (1,000 applications generated from one path hold one key,
/// not 1,000 copies of its strings).
pub(crate) type UsedKeys = HashSet<Arc<RenderKey>>;

/// An application's revision and objects, or what went wrong: the error
/// and the revision it is about (empty when unknown).
type Outcome = Result<(String, Vec<String>), (String, String)>;

/// What a pass read once for every application it renders.
#[derive(Debug, Default)]
struct PassInputs {
    /// A source that is also a registered repository keeps that
    /// repository's poll interval.
    intervals: HashMap<(String, String), Duration>,
}

/// The render task of one application.
struct AppSlot {
    /// Renders asked for; the task renders until it has done the last one.
    requested: u64,
    running: bool,
    force: bool,
    inputs: Option<Arc<PassInputs>>,
    /// The span of the last request (a pass, `app sync`): the render's
    /// trace continues it.
    parent: tracing::Span,
    /// The last request a finished render started after.
    done: watch::Sender<u64>,
}

/// What the last good render of a single-source Git application read: a
/// pass does not render it again while the application record (its
/// `Application`), the commit its source resolves to and its bundle in the
/// fleet are the same, and its source is not due for a fetch. A forced
/// pass, `app sync`, `app refresh`, a webhook and an API edit render it
/// whatever this says.
struct Settled {
    app: Arc<AppRecord>,
    key: (String, String),
    commit: String,
    digest: String,
    /// [`Store::project_changes`] when it was rendered: a project edited
    /// since (in Git or by API) may admit or refuse it now.
    projects: u64,
}

/// A bundle handed to the fleet, and who waits for it to be there.
struct Publish {
    bundle: pb::AppBundle,
    /// The render's span: the desired state it leads to continues its trace.
    span: tracing::Span,
    done: oneshot::Sender<Result<(), String>>,
}

/// How long the publisher holds rendered bundles for renders still under
/// way while none hands a bundle over: a pass's bundles reach the fleet together
/// (one new generation per cluster), and a stuck render (a slow fetch, a
/// large chart) delays the others by no more than this.
const PUBLISH_HOLD: Duration = Duration::from_secs(2);

/// How long the publisher holds a batch at most, however steadily renders
/// end.
const PUBLISH_HOLD_MAX: Duration = Duration::from_secs(30);

/// A render task, or a pass asking for renders ([`GitSync::rendering`]).
struct Rendering(Arc<GitSync>);

impl Rendering {
    fn enter(sync: &Arc<GitSync>) -> Self {
        sync.rendering
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(sync.clone())
    }
}

impl Drop for Rendering {
    fn drop(&mut self) {
        self.0
            .rendering
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.render_ended.notify_one();
    }
}

/// Applications handed to a task of their own ([`GitSync::moving`]): given
/// back when the task ends, or is aborted.
struct Moving(Arc<GitSync>, Vec<String>);

impl Drop for Moving {
    fn drop(&mut self) {
        let mut moving = self.0.moving.lock().unwrap_or_else(|p| p.into_inner());
        for name in &self.1 {
            moving.remove(name);
        }
    }
}

/// The Git loop and its caches.
pub struct GitSync {
    store: Store,
    fleet: Arc<Fleet>,
    cache: GitCache,
    kick: Notify,
    /// Wakes the loop without forcing every fetch (webhooks, app refresh,
    /// a fetch that brought something new).
    wake: Arc<Notify>,
    /// Makes the loop plan its sleep again (a fetch ended without news).
    replan: Arc<Notify>,
    default_interval: Duration,
    fetcher: Arc<fetcher::Fetcher>,
    /// url → commit whose Applications are loaded (this process).
    loaded: Mutex<HashMap<String, String>>,
    /// Cached renders, keyed by their request; every application's used
    /// keys ([`UsedKeys`]) share the key held here.
    renders: Mutex<HashMap<Arc<RenderKey>, RenderCell>>,
    render_slots: RwLock<Arc<Semaphore>>,
    /// application → the render keys its last render used.
    used_by: Mutex<HashMap<String, UsedKeys>>,
    apps: Mutex<HashMap<String, AppSlot>>,
    /// application → what its last good render read, when that is all it
    /// depends on: a pass leaves it alone while its record and the commit
    /// of its source are the same ([`Settled`]).
    settled: Mutex<HashMap<String, Settled>>,
    /// (application definition changes, cached renders) when the last
    /// pass dropped what no application uses: while both are the same,
    /// there is nothing to drop.
    forgot_at: Mutex<Option<(u64, usize)>>,
    /// Applications a loop pass left to a task of their own (their source
    /// is being fetched, then they are moved or rendered): later passes
    /// leave them alone until it is done.
    moving: Mutex<HashSet<String>>,
    /// Application renders started ([`GitSync::app_renders`]).
    app_renders: std::sync::atomic::AtomicU64,
    /// Application-of-applications and history bookkeeping after a render,
    /// one application at a time (as when renders ran in one loop); also
    /// held by everything that reads and writes an application's history
    /// and pin ([`GitSync::history_lock`]), so no update is lost.
    post: Mutex<()>,
    publisher: Mutex<Option<mpsc::UnboundedSender<Publish>>>,
    /// Render tasks running (rendering, concluding, or waiting for the
    /// publisher), and passes asking for renders: the publisher holds a
    /// batch until each of them has either handed its bundle over or
    /// ended, so a pass that changes many applications gives each cluster
    /// one new generation, not one per application.
    rendering: std::sync::atomic::AtomicUsize,
    /// Signalled when a render task leaves a render.
    render_ended: Notify,
    /// Render tasks, fetches started by the loop and the publisher: aborted
    /// when the loop stops.
    tasks: Mutex<tokio::task::JoinSet<()>>,
    /// Signalled as each of `tasks` ends: the loop reaps them. A finished
    /// task keeps its allocation (~1.3 KiB for a render task) until it is
    /// joined, and a commit that renders 50,000 applications left 50,000
    /// of them until the next spawn.
    task_ended: Arc<Notify>,
    /// One pass at a time.
    polling: tokio::sync::Mutex<()>,
    /// Number of the current (or last) pass: a forced pass fetches each
    /// repository once, however many applications use it.
    pass: std::sync::atomic::AtomicU64,
    /// The ApplicationSet controller, evaluated on every pass.
    appsets: std::sync::OnceLock<Arc<crate::appset::lifecycle::AppSets>>,
    /// Kustomize and helm commands and their timeout.
    tools: Mutex<crate::render::RenderTools>,
    /// Helm repository indexes and unpacked charts (`source.chart`).
    helm_repos: Arc<crate::helmrepo::HelmRepos>,
}

impl std::fmt::Debug for GitSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSync").finish_non_exhaustive()
    }
}

fn revision_or_head(r: &str) -> String {
    if r.trim().is_empty() {
        "HEAD".to_owned()
    } else {
        r.trim().to_owned()
    }
}

fn join_path(dir: &str, file: &str) -> String {
    let dir = dir.trim_matches('/');
    if dir.is_empty() || dir == "." {
        file.to_owned()
    } else {
        format!("{dir}/{file}")
    }
}

fn is_manifest_file(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    p.ends_with(".yaml") || p.ends_with(".yml") || p.ends_with(".json")
}

/// The repository a fetch of `key` writes to: one fetch at a time each.
fn flight_of(key: &(String, String)) -> String {
    if key.1 == charts::INDEX_REVISION {
        format!("helm index of {}", key.0)
    } else {
        key.0.clone()
    }
}

/// Aborts the loop's tasks when the loop stops.
struct StopTasks<'a>(&'a GitSync);

impl Drop for StopTasks<'_> {
    fn drop(&mut self) {
        self.0
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }
}

impl GitSync {
    /// Creates the loop; mirrors live under `cache_dir`.
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        cache_dir: std::path::PathBuf,
        default_interval: Duration,
    ) -> Arc<Self> {
        let limits = GitLimits::default();
        let wake = Arc::new(Notify::new());
        let replan = Arc::new(Notify::new());
        let cache = GitCache::new(cache_dir.clone());
        cache.set_fetch_timeout(limits.fetch_timeout);
        Arc::new(Self {
            store,
            fleet,
            helm_repos: Arc::new(crate::helmrepo::HelmRepos::new(
                cache_dir.join("helm-charts"),
            )),
            cache,
            kick: Notify::new(),
            fetcher: fetcher::Fetcher::new(
                limits.fetch_concurrency,
                limits.fetch_timeout,
                wake.clone(),
                replan.clone(),
            ),
            wake,
            replan,
            default_interval,
            loaded: Mutex::default(),
            renders: Mutex::default(),
            render_slots: RwLock::new(Arc::new(Semaphore::new(limits.render_concurrency))),
            used_by: Mutex::default(),
            apps: Mutex::default(),
            settled: Mutex::default(),
            forgot_at: Mutex::default(),
            moving: Mutex::default(),
            app_renders: std::sync::atomic::AtomicU64::new(0),
            post: Mutex::default(),
            publisher: Mutex::default(),
            rendering: std::sync::atomic::AtomicUsize::new(0),
            render_ended: Notify::new(),
            tasks: Mutex::default(),
            task_ended: Arc::new(Notify::new()),
            polling: tokio::sync::Mutex::new(()),
            pass: std::sync::atomic::AtomicU64::new(0),
            appsets: std::sync::OnceLock::new(),
            tools: Mutex::default(),
        })
    }

    /// Sets the fetch pool, the fetch timeout (also of the ApplicationSet
    /// controller's fetches) and the render pool. Call before the loop
    /// runs.
    pub fn set_limits(&self, limits: GitLimits) {
        self.fetcher
            .set_limits(limits.fetch_concurrency, limits.fetch_timeout);
        self.cache.set_fetch_timeout(limits.fetch_timeout);
        *self.render_slots.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Semaphore::new(limits.render_concurrency.max(1)));
    }

    /// Sets the hosts Git and Helm repository fetches may reach
    /// (`--allowed-fetch-hosts`).
    pub fn set_allowed_fetch_hosts(&self, hosts: crate::fetch_hosts::FetchHosts) {
        self.helm_repos.set_allowed_hosts(hosts.clone());
        self.cache.set_allowed_hosts(hosts);
    }

    /// The hosts fetches may reach.
    pub fn allowed_fetch_hosts(&self) -> crate::fetch_hosts::FetchHosts {
        self.cache.allowed_hosts()
    }

    /// Sets how ssh remotes are reached (known hosts, key scratch
    /// directory). Call before the loop runs.
    pub fn set_ssh(&self, settings: crate::source::SshSettings) {
        self.cache.set_ssh(settings);
    }

    /// Sets the kustomize/helm commands and their timeout.
    pub fn set_render_tools(&self, tools: crate::render::RenderTools) {
        *self.tools.lock().unwrap_or_else(|p| p.into_inner()) = tools;
    }

    fn render_tools(&self) -> crate::render::RenderTools {
        self.tools.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Hooks the ApplicationSet controller into every pass (once).
    pub fn set_appsets(&self, appsets: Arc<crate::appset::lifecycle::AppSets>) {
        let _ = self.appsets.set(appsets);
    }

    /// Held while reading and writing applications' history and pins
    /// (`crate::history`): render tasks run concurrently with each other
    /// and with `app sync`, and those records are read, changed and
    /// written back whole. Hold it for no more than that (no `.await`).
    pub fn history_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.post.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches running now, including timed-out ones whose thread has not
    /// ended yet.
    pub fn fetches_in_flight(&self) -> usize {
        self.fetcher.in_flight()
    }

    /// Registers (or updates) a repository and triggers a poll.
    ///
    /// # Errors
    /// The store cannot be written.
    pub fn add_repository(
        &self,
        url: &str,
        revision: &str,
        apps_path: &str,
        poll_interval_secs: i64,
        kind: RepoKind,
    ) -> Result<RepoRecord, StoreError> {
        let mut rec = self.store.repo(url)?.unwrap_or_else(|| RepoRecord {
            url: url.to_owned(),
            ..Default::default()
        });
        rec.revision = revision_or_head(revision);
        rec.apps_path = apps_path.trim_matches('/').to_owned();
        rec.kind = match kind {
            RepoKind::Git => String::new(),
            RepoKind::Helm => HELM_KIND.to_owned(),
        };
        rec.poll_interval_secs = if poll_interval_secs > 0 {
            poll_interval_secs
        } else {
            self.default_interval.as_secs() as i64
        };
        self.store.put_repo(&rec)?;
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(url);
        tracing::info!(url = %redact(url), apps_path = %rec.apps_path, revision = %rec.revision, "repository registered");
        self.kick();
        Ok(rec)
    }

    fn current_pass(&self) -> u64 {
        self.pass.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fetches `url` and resolves `revision` (branch, tag, commit, HEAD)
    /// to a commit, now: a fetch of the repository already running is
    /// waited for, then a new one made (bounded by the fetch timeout).
    ///
    /// # Errors
    /// The repository cannot be reached, the revision does not exist, or
    /// the fetch timed out.
    pub async fn resolve(&self, url: &str, revision: &str) -> Result<String, String> {
        let key = (url.to_owned(), revision_or_head(revision));
        // A user asking now means now: not a fetch shared a moment ago.
        self.fetcher.forget(&key);
        // The next poll of this (url, revision) is due after the
        // repository's own interval, as after any other fetch of it.
        let interval = self.interval_of(url, &key.1);
        let commit = self
            .fetcher
            .flight(
                key.clone(),
                flight_of(&key),
                interval,
                self.current_pass(),
                true,
                || self.git_job(&key),
            )
            .await;
        // The loop may have planned its sleep while the entry was missing
        // (then it sleeps the default interval): let it plan again.
        self.wake.notify_one();
        commit
    }

    /// The poll interval of a registered repository at `revision`, else
    /// the hub's default (as the Git loop polls application sources).
    fn interval_of(&self, url: &str, revision: &str) -> Duration {
        self.store
            .repo(url)
            .ok()
            .flatten()
            .filter(|r| revision_or_head(&r.revision) == revision)
            .map_or(self.default_interval, |r| {
                Duration::from_secs(r.poll_interval_secs.max(1) as u64)
            })
    }

    /// How many application renders started since the loop was made (one
    /// per application a pass or a request renders, cached or not): lets a
    /// test see that a pass leaves settled applications alone.
    pub fn app_renders(&self) -> u64 {
        self.app_renders.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Renders the application `name` soon, alone (an application created
    /// or replaced by the API): no pass over the other applications.
    pub fn render_soon(self: &Arc<Self>, name: &str) {
        let _ = self.request_render(name, false, None);
    }

    /// The cluster inventory changed: wakes the loop for a pass that
    /// fetches only what is due, so ApplicationSet generators see the
    /// change at once. Many changes in a row share one pass.
    pub fn inventory_changed(&self) {
        self.wake.notify_one();
    }

    /// Asks for an immediate poll of everything.
    /// operate: fetches `revision` of `url` with `credentials` (none: those
    /// stored for the URL) into the mirror, as the Git loop will; the
    /// commit it resolves to. Blocking.
    ///
    /// # Errors
    /// The repository cannot be reached or read, or has no such revision.
    pub fn check_reachable(
        &self,
        url: &str,
        revision: &str,
        credentials: Option<&crate::store::RepoCredentials>,
    ) -> Result<String, crate::source::SourceError> {
        let limits = FetchLimits::starting_now(self.cache.fetch_timeout());
        let revision = revision_or_head(revision);
        match credentials {
            None => crate::repo_fetch::fetch_with_stored_credentials_within(
                &self.cache,
                &self.store,
                url,
                &revision,
                &limits,
            ),
            Some(c) if !c.ssh_private_key.is_empty() => {
                let key = crate::source::SshKey {
                    private_key: c.ssh_private_key.clone(),
                    insecure_ignore_host_key: c.insecure_ignore_host_key,
                };
                self.cache
                    .fetch_bounded(url, &revision, FetchAuth::SshKey(&key), &limits)
            }
            Some(c) => self.cache.fetch_bounded(
                url,
                &revision,
                FetchAuth::Password {
                    username: &c.username,
                    password: &c.password,
                },
                &limits,
            ),
        }
    }

    /// Starts a forced pass now: every repository is fetched and every
    /// application rendered again, even where nothing changed (a hard
    /// refresh of everything, or a change the renders cannot see).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Fetches these repository URLs on the next pass, now (a webhook
    /// push): their remembered fetch results are dropped, ApplicationSet
    /// Git generators read them again, and the loop is woken.
    pub fn refresh_urls(&self, urls: &[String]) {
        self.fetcher.forget_urls(urls);
        if let Some(appsets) = self.appsets.get() {
            appsets.refresh_git(Some(urls));
        }
        self.wake.notify_one();
    }

    /// `flotilla refresh` without an application: every repository is
    /// fetched on the next pass, now, as if each had had a webhook push.
    /// Applications whose objects did not change are moved to their new
    /// commit or left alone, as in any pass; only a hard refresh
    /// ([`GitSync::kick`]) renders them all again.
    pub fn refresh_all(&self) {
        self.fetcher.forget_all();
        if let Some(appsets) = self.appsets.get() {
            appsets.refresh_git(None);
        }
        self.wake.notify_one();
    }

    /// Wakes the loop for a pass that fetches only what is due: the
    /// inventory changed (application sets with cluster generators see it
    /// in their inputs) and nothing needs fetching or rendering again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// `flotilla app refresh`: fetches the application's repository now;
    /// with `hard`, its cached renders are dropped too, so it is rendered
    /// again even at the same commit.
    pub fn refresh_app(&self, app: &Application, hard: bool) {
        let sources = app.spec.effective_sources();
        if hard {
            self.renders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|k, _| {
                    !sources
                        .iter()
                        .any(|src| k.url == src.repo_url && k.path == src.path)
                });
        }
        let urls: Vec<String> = sources.iter().map(|s| s.repo_url.clone()).collect();
        self.refresh_urls(&urls);
    }

    /// Runs the loop until the task is dropped; the render tasks and
    /// fetches it started are aborted then (a fetch thread already running
    /// ends at its deadline).
    pub async fn run(self: Arc<Self>) {
        let _stop = StopTasks(&self);
        let mut force = true;
        loop {
            self.pass(force, false).await;
            let mut until = tokio::time::Instant::now() + self.next_wait();
            force = loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break false,
                    () = self.kick.notified() => break true,
                    () = self.wake.notified() => break false,
                    // A fetch ended: its next poll counts from now on.
                    () = self.replan.notified() => {
                        until = tokio::time::Instant::now() + self.next_wait();
                    }
                    // Reaping keeps the deadline: tasks end all the time
                    // while a commit renders.
                    () = self.task_ended.notified() => self.reap_tasks(),
                }
            };
        }
    }

    fn next_wait(&self) -> Duration {
        self.fetcher
            .next_due_in(flight_of)
            .unwrap_or(self.default_interval)
            .clamp(
                Duration::from_millis(500),
                self.default_interval.max(Duration::from_secs(1)),
            )
    }

    /// The work of fetching `key` with the credentials stored for it.
    fn git_job(&self, key: &(String, String)) -> fetcher::Job {
        let cache = self.cache.clone();
        let store = self.store.clone();
        let (url, revision) = key.clone();
        Box::new(move |limits: &FetchLimits| {
            crate::repo_fetch::fetch_with_stored_credentials_within(
                &cache, &store, &url, &revision, limits,
            )
            .map_err(|e| e.to_string())
        })
    }

    /// The commit of (url, revision): remembered when not due (and, when
    /// `force`, fetched in this pass), else fetched, joining a fetch of the
    /// repository in flight.
    async fn fetch(
        &self,
        url: &str,
        revision: &str,
        interval: Duration,
        force: bool,
    ) -> Result<String, String> {
        let key = (url.to_owned(), revision.to_owned());
        self.fetcher
            .fetch(
                key.clone(),
                flight_of(&key),
                interval,
                force,
                self.current_pass(),
                || self.git_job(&key),
            )
            .instrument(tracing::info_span!("git.fetch", repo = %redact(url), revision = %revision))
            .await
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let ended = self.task_ended.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        reap(&mut tasks);
        tasks.spawn(async move {
            task.await;
            ended.notify_one();
        });
    }

    /// Joins the tasks that finished (the loop does, as they end).
    fn reap_tasks(&self) {
        reap(&mut self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Tasks started by the loop and not joined yet (running, or finished
    /// since the loop last reaped).
    pub fn tasks_held(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// One pass, waiting for everything it starts: the fetches of
    /// registered repositories that are due (all of them when `force`),
    /// loading Applications from repositories that moved, the
    /// ApplicationSets, and rendering every application (each fetching its
    /// own sources when due). Every fetch is bounded by the fetch timeout.
    pub async fn poll(self: &Arc<Self>, force: bool) {
        self.pass(force, true).await;
    }

    /// Renders one application now (its sources fetched when due, or
    /// fetched already by [`GitSync::resolve_app`]) and hands its bundle to
    /// the fleet; waits for that, and for nothing else.
    pub async fn render_app(self: &Arc<Self>, name: &str) {
        let (mut done, ticket) = self.request_render(name, false, None);
        let _ = done.wait_for(|d| *d >= ticket).await;
    }

    async fn pass(self: &Arc<Self>, force: bool, wait: bool) {
        let _one = self.polling.lock().await;
        let pass = self.pass.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let span = tracing::info_span!("git.pass", force, pass);
        if let Err(e) = self.pass_inner(force, wait).instrument(span).await {
            tracing::error!(error = %e, "git poll failed");
        }
    }

    async fn pass_inner(self: &Arc<Self>, force: bool, wait: bool) -> Result<(), StoreError> {
        let helm_urls = self.helm_repository_urls()?;
        let repos = self.store.repos()?;
        let mut git_repos = Vec::new();
        let mut fetches: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
        for repo in &repos {
            let interval = Duration::from_secs(repo.poll_interval_secs.max(1) as u64);
            if repo.kind == HELM_KIND {
                let key = (repo.url.clone(), charts::INDEX_REVISION.to_owned());
                if wait || force || self.fetcher.due(&key, &flight_of(&key)) {
                    let (this, repo) = (self.clone(), repo.clone());
                    fetches.push(Box::pin(async move {
                        if let Err(e) = this.poll_helm_repository(&repo, force).await {
                            tracing::error!(error = %e, "helm repository poll failed");
                        }
                    }));
                }
                continue;
            }
            if repo.apps_path.is_empty() && helm_urls.contains(&repo.url) {
                self.skip_helm_repository(repo)?;
                continue;
            }
            let key = (repo.url.clone(), revision_or_head(&repo.revision));
            if wait || force || self.fetcher.due(&key, &flight_of(&key)) {
                let this = self.clone();
                let key = key.clone();
                fetches.push(Box::pin(async move {
                    let _ = this.fetch(&key.0, &key.1, interval, force).await;
                }));
            }
            git_repos.push((repo.clone(), key));
        }
        if wait {
            futures::future::join_all(fetches).await;
        } else {
            // Their results wake the loop when they bring something new.
            for f in fetches {
                self.spawn(f.in_current_span());
            }
        }

        let mut changed_apps = false;
        for (repo, key) in git_repos {
            changed_apps |= self.take_fetch_result(&repo, &key).await?;
        }
        if let Some(appsets) = self.appsets.get() {
            changed_apps |= appsets.reconcile_all(&self.cache, force).await?;
        }
        // Only applications that came, went or changed destination can
        // change an index before they are rendered: recompute their
        // clusters, not the fleet.
        match self.store.take_moved_apps() {
            Some(moved) if !moved.is_empty() => {
                self.fleet.recompute_apps(&moved)?;
            }
            Some(_) => {}
            None if changed_apps => {
                self.fleet.recompute()?;
            }
            None => {}
        }

        let inputs = Arc::new(PassInputs {
            intervals: repos
                .iter()
                .map(|r| {
                    let interval = Duration::from_secs(r.poll_interval_secs.max(1) as u64);
                    ((r.url.clone(), revision_or_head(&r.revision)), interval)
                })
                .collect(),
        });
        // Read before the applications: a change after it makes the next
        // pass look again.
        let definitions = self.store.app_changes();
        let apps = self.store.apps_shared()?;
        // Bundles published while this pass is still asking for renders
        // wait for the renders it asks for.
        let asking = Rendering::enter(self);
        let unsettled: Vec<Arc<AppRecord>> = {
            let moving = self
                .moving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            apps.iter()
                .filter(|rec| force || !self.is_settled(rec))
                .filter(|rec| force || !moving.contains(&rec.app.metadata.name))
                .cloned()
                .collect()
        };
        let unsettled = if force {
            unsettled
        } else {
            self.move_unchanged(unsettled, &inputs, wait).await?
        };
        let waits: Vec<_> = unsettled
            .into_iter()
            .map(|rec| self.request_render(&rec.app.metadata.name, force, Some(inputs.clone())))
            .collect();
        if waits.len() < apps.len() {
            tracing::debug!(
                rendered = waits.len(),
                settled = apps.len() - waits.len(),
                "applications whose inputs did not change are not rendered again"
            );
        }
        drop(asking);
        self.forget_renders_of_others(&apps, definitions);
        if wait {
            for (mut done, ticket) in waits {
                let _ = done.wait_for(|d| *d >= ticket).await;
            }
        }
        self.store.flush_async().await?;
        Ok(())
    }

    /// Records the last fetch of a registered repository on its record and
    /// loads its Applications when it moved. Returns whether applications
    /// changed.
    async fn take_fetch_result(
        &self,
        repo: &RepoRecord,
        key: &(String, String),
    ) -> Result<bool, StoreError> {
        let Some(known) = self.fetcher.last(key) else {
            // Never fetched yet (its first fetch is running).
            return Ok(false);
        };
        let mut changed_apps = false;
        let mut rec = self.store.repo(&repo.url)?.unwrap_or(repo.clone());
        match known.commit {
            Ok(commit) => {
                let loaded = self
                    .loaded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&repo.url)
                    .cloned();
                if !rec.apps_path.is_empty() && loaded.as_deref() != Some(commit.as_str()) {
                    let errors = self.load_applications(&rec, &commit).await?;
                    changed_apps = true;
                    rec.last_error = errors.join("; ");
                    self.loaded
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(repo.url.clone(), commit.clone());
                } else if rec.apps_path.is_empty() {
                    rec.last_error.clear();
                }
                if rec.last_commit != commit {
                    tracing::info!(url = %redact(&repo.url), commit = %commit, "repository at new commit");
                }
                rec.last_commit = commit;
            }
            Err(e) => {
                // Loaded again once the fetch works, which also replaces
                // this error (a recovery at the same commit would keep it).
                self.loaded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&repo.url);
                rec.last_error = e;
            }
        }
        rec.last_fetch_ms = known.fetched_ms;
        if Some(&rec) != self.store.repo(&repo.url)?.as_ref() {
            self.store.put_repo(&rec)?;
        }
        Ok(changed_apps)
    }

    /// Asks the render task of `name` for a render that starts after this
    /// call (starting the task when idle). Returns what to wait on: the
    /// render is done once the receiver holds at least the ticket.
    fn request_render(
        self: &Arc<Self>,
        name: &str,
        force: bool,
        inputs: Option<Arc<PassInputs>>,
    ) -> (watch::Receiver<u64>, u64) {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        let slot = apps.entry(name.to_owned()).or_insert_with(|| AppSlot {
            requested: 0,
            running: false,
            force: false,
            inputs: None,
            parent: tracing::Span::none(),
            done: watch::channel(0).0,
        });
        slot.requested += 1;
        slot.parent = tracing::Span::current();
        slot.force |= force;
        if inputs.is_some() {
            slot.inputs = inputs;
        }
        let ticket = slot.requested;
        let done = slot.done.subscribe();
        if !slot.running {
            slot.running = true;
            let (this, name) = (self.clone(), name.to_owned());
            drop(apps);
            let rendering = Rendering::enter(self);
            self.spawn(async move {
                let _rendering = rendering;
                this.render_task(name).await;
            });
        }
        (done, ticket)
    }

    /// Renders `name` until every render asked for is done.
    async fn render_task(self: Arc<Self>, name: String) {
        loop {
            let (ticket, force, inputs, parent) = {
                let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
                let Some(slot) = apps.get_mut(&name) else {
                    return;
                };
                (
                    slot.requested,
                    std::mem::take(&mut slot.force),
                    slot.inputs.clone(),
                    // Taken, not copied: a span stays open (and unexported)
                    // while anything holds it, so a slot that kept its last
                    // request's span would hold that trace open until the
                    // application's next render.
                    std::mem::replace(&mut slot.parent, tracing::Span::none()),
                )
            };
            let span = tracing::info_span!(parent: &parent, "git.render_app", app = %name);
            if let Err(e) = self.render_one(&name, force, inputs).instrument(span).await {
                tracing::error!(app = %name, error = %e, "rendering the application failed");
            }
            let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            let Some(slot) = apps.get_mut(&name) else {
                return;
            };
            slot.done.send_replace(ticket);
            if slot.requested == ticket {
                slot.running = false;
                return;
            }
        }
    }

    /// Whether the last render of `rec` still stands: nothing it read
    /// changed ([`Settled`]).
    fn is_settled(&self, rec: &Arc<AppRecord>) -> bool {
        let name = &rec.app.metadata.name;
        let settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = settled.get(name) else {
            return false;
        };
        if s.projects != self.store.project_changes() {
            return false;
        }
        if !same_definition(&s.app, rec) {
            return false;
        }
        if self.fetcher.due(&s.key, &flight_of(&s.key)) {
            return false;
        }
        let same_commit = self
            .fetcher
            .last(&s.key)
            .is_some_and(|k| k.commit.as_deref() == Ok(s.commit.as_str()));
        same_commit
            && self
                .fleet
                .bundle(name)
                .is_some_and(|b| b.digest == s.digest)
    }

    /// The store's record of `rec`'s application when it has the same
    /// definition (the render's conclusion wrote a new record with the
    /// revision), else `rec`: what [`Settled`] keeps, so that it shares the
    /// store's cached record instead of holding a second decoded copy.
    fn current_record(&self, rec: &Arc<AppRecord>) -> Result<Arc<AppRecord>, StoreError> {
        Ok(match self.store.app_shared(&rec.app.metadata.name)? {
            Some(current) if same_definition(&current, rec) => current,
            _ => rec.clone(),
        })
    }

    /// Moves to its source's new commit, without rendering it, every
    /// application of `apps` whose last render stands but for the commit,
    /// when the new commit renders the same objects: its record and its
    /// clusters' index name the new commit, and its bundle (same digest)
    /// stays. One render per (repository, commit, path, options) decides for
    /// every application that renders it, so a commit costs work in
    /// proportion to what it changed, not to the number of applications
    /// (50,000 applications of 50 paths: 50 renders and one batch of record
    /// writes, where each application was rendered, checked, bundled and
    /// published). Returns the applications that must be rendered.
    async fn move_unchanged(
        self: &Arc<Self>,
        apps: Vec<Arc<AppRecord>>,
        inputs: &Arc<PassInputs>,
        wait: bool,
    ) -> Result<Vec<Arc<AppRecord>>, StoreError> {
        // The sources of settled applications that are due (or were
        // refreshed; a fetch in flight is joined) are fetched first, once
        // each, as their renders would fetch them. In a pass that waits for
        // everything, now; in the loop's pass, in a task of its own that
        // then moves or renders those applications, in the pass's trace (a
        // stalled repository must not hold the pass).
        let mut due: HashMap<(String, String), Vec<Arc<AppRecord>>> = HashMap::new();
        let mut now = Vec::with_capacity(apps.len());
        {
            let settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
            for rec in apps {
                match settled.get(&rec.app.metadata.name) {
                    Some(s)
                        if self.fetcher.due(&s.key, &flight_of(&s.key))
                            || self.fetcher.last(&s.key).is_none() =>
                    {
                        due.entry(s.key.clone()).or_default().push(rec);
                    }
                    _ => now.push(rec),
                }
            }
        }
        if wait {
            self.fetch_all(due.keys().cloned().collect(), inputs).await;
            now.extend(due.into_values().flatten());
        } else {
            // One task per source: a stalled repository holds only its own
            // applications.
            for (key, recs) in due {
                let (this, inputs) = (self.clone(), inputs.clone());
                let rendering = Rendering::enter(self);
                let names: Vec<String> = recs.iter().map(|r| r.app.metadata.name.clone()).collect();
                self.moving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(names.iter().cloned());
                let moving = Moving(self.clone(), names);
                self.spawn(
                    async move {
                        let _rendering = rendering;
                        let _moving = moving;
                        this.fetch_all(HashSet::from([key]), &inputs).await;
                        match this.move_fetched(recs).await {
                            Ok(rest) => {
                                for rec in rest {
                                    this.request_render(
                                        &rec.app.metadata.name,
                                        false,
                                        Some(inputs.clone()),
                                    );
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "moving unchanged applications failed");
                            }
                        }
                    }
                    .in_current_span(),
                );
            }
        }
        self.move_fetched(now).await
    }

    /// Fetches each of `keys` (joining a fetch in flight).
    async fn fetch_all(&self, keys: HashSet<(String, String)>, inputs: &PassInputs) {
        futures::future::join_all(keys.iter().map(|key| {
            let interval = inputs
                .intervals
                .get(key)
                .copied()
                .unwrap_or(self.default_interval);
            self.fetch(&key.0, &key.1, interval, false)
        }))
        .await;
    }

    /// [`GitSync::move_unchanged`] for applications whose sources are
    /// fetched: moves those it can, returns the others.
    async fn move_fetched(
        self: &Arc<Self>,
        apps: Vec<Arc<AppRecord>>,
    ) -> Result<Vec<Arc<AppRecord>>, StoreError> {
        // new render key → (old render key, applications, new commit)
        let mut groups: HashMap<RenderKey, (RenderKey, Vec<Arc<AppRecord>>, String)> =
            HashMap::new();
        let mut rest = Vec::new();
        for rec in apps {
            match self.moved_commit(&rec)? {
                Some((old, new, commit)) => {
                    groups
                        .entry(new)
                        .or_insert_with(|| (old, Vec::new(), commit))
                        .1
                        .push(rec);
                }
                None => rest.push(rec),
            }
        }
        if groups.is_empty() {
            return Ok(rest);
        }
        let keys: Vec<RenderKey> = groups.keys().cloned().collect();
        let rendered = futures::future::join_all(keys.iter().map(|k| self.render(k))).await;
        let mut candidates: Vec<(Arc<AppRecord>, Arc<RenderKey>, String)> = Vec::new();
        for (new_key, new) in keys.into_iter().zip(rendered) {
            let Some((old_key, recs, commit)) = groups.remove(&new_key) else {
                continue;
            };
            let new_key = self.cached(&new_key).0;
            let old = self
                .renders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&old_key)
                .and_then(|cell| cell.get().cloned());
            let same = match (&old, new.as_ref()) {
                (Some(old), Ok(new)) => old.as_ref().as_ref().is_ok_and(|old| old == new),
                _ => false,
            };
            if same {
                candidates.extend(
                    recs.into_iter()
                        .map(|r| (r, new_key.clone(), commit.clone())),
                );
            } else {
                // Their renders use the new key: it counts as used until
                // they say what they used, so the pass does not drop the
                // render it just made (they would render it again, or
                // leave their key without its render).
                let mut used_by = self.used_by.lock().unwrap_or_else(|p| p.into_inner());
                for rec in &recs {
                    used_by
                        .entry(rec.app.metadata.name.clone())
                        .or_default()
                        .insert(new_key.clone());
                }
                drop(used_by);
                rest.extend(recs);
            }
        }
        if candidates.is_empty() {
            return Ok(rest);
        }
        let mut moves: Vec<(String, String)> = Vec::with_capacity(candidates.len());
        let mut keys = Vec::with_capacity(candidates.len());
        {
            // As a render's conclusion: under the history lock, so a
            // rollback or pin made meanwhile is not overwritten. A pinned
            // application stays at its pin: the ordinary render knows what
            // to do with it.
            let _history = self.history_lock();
            for (rec, key, commit) in candidates {
                let name = &rec.app.metadata.name;
                if self.store.app_pin(name)?.is_some() {
                    rest.push(rec);
                    continue;
                }
                moves.push((name.clone(), commit));
                keys.push(key);
            }
            self.store.put_app_revisions(&moves)?;
            self.fleet.move_revisions(&moves);
        }
        {
            let mut settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
            let mut used_by = self.used_by.lock().unwrap_or_else(|p| p.into_inner());
            for ((name, commit), key) in moves.iter().zip(keys) {
                if let Some(s) = settled.get_mut(name) {
                    s.commit = commit.clone();
                    s.app = self.current_record(&s.app)?;
                }
                used_by.insert(name.clone(), HashSet::from([key]));
            }
        }
        crate::metrics::metrics().revisions_moved(moves.len() as u64);
        tracing::info!(
            moved = moves.len(),
            rendered = rest.len(),
            "applications whose objects did not change moved to the new commit without a render"
        );
        Ok(rest)
    }

    /// For an application whose last render stands in every way but the
    /// commit of its source (same record, same project rules, same bundle,
    /// one plain render key), the render keys at the old and at the new
    /// commit, and the new commit.
    fn moved_commit(
        &self,
        rec: &Arc<AppRecord>,
    ) -> Result<Option<(RenderKey, RenderKey, String)>, StoreError> {
        let name = &rec.app.metadata.name;
        let (key, old_commit, digest) = {
            let settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
            let Some(s) = settled.get(name) else {
                return Ok(None);
            };
            if s.projects != self.store.project_changes() || !same_definition(&s.app, rec) {
                return Ok(None);
            }
            (s.key.clone(), s.commit.clone(), s.digest.clone())
        };
        if self.fetcher.due(&key, &flight_of(&key)) {
            return Ok(None);
        }
        let Some(Ok(commit)) = self.fetcher.last(&key).map(|k| k.commit) else {
            return Ok(None);
        };
        if commit == old_commit
            || !self
                .fleet
                .bundle(name)
                .is_some_and(|b| b.digest == digest && b.render_error.is_empty())
        {
            return Ok(None);
        }
        let old = crate::render::request_for(&rec.app, &old_commit);
        let plain = self
            .used_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|used| used.len() == 1 && used.contains(&old));
        if !plain {
            return Ok(None);
        }
        let new = crate::render::request_for(&rec.app, &commit);
        Ok(Some((old, new, commit)))
    }

    /// Drops the render tasks, used render keys and cached renders of
    /// applications that are gone, and cached renders no application uses.
    /// `definitions` is the store's count of application changes read
    /// before `apps`: while no application came or went and no render was
    /// added since the last time, this is skipped (it costs a hash lookup
    /// per application, every pass).
    fn forget_renders_of_others(&self, apps: &[Arc<AppRecord>], definitions: u64) {
        let cached = self.renders.lock().unwrap_or_else(|p| p.into_inner()).len();
        let mut forgot_at = self.forgot_at.lock().unwrap_or_else(|p| p.into_inner());
        if *forgot_at == Some((definitions, cached)) {
            return;
        }
        let names: HashSet<&str> = apps.iter().map(|a| a.app.metadata.name.as_str()).collect();
        self.apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, slot| slot.running || names.contains(name.as_str()));
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| names.contains(name.as_str()));
        let mut used_by = self.used_by.lock().unwrap_or_else(|p| p.into_inner());
        used_by.retain(|name, _| names.contains(name.as_str()));
        let used: HashSet<&RenderKey> = used_by.values().flatten().map(|k| &**k).collect();
        let mut renders = self.renders.lock().unwrap_or_else(|p| p.into_inner());
        renders.retain(|k, cell| used.contains(&**k) || !cell.initialized());
        *forgot_at = Some((definitions, renders.len()));
        crate::metrics::metrics().render_cache_entries(renders.len());
    }

    /// Reads `apps_path` of `repo` at `commit` and reconciles the stored
    /// Applications that came from this repository. Returns per-file errors.
    async fn load_applications(
        &self,
        repo: &RepoRecord,
        commit: &str,
    ) -> Result<Vec<String>, StoreError> {
        let cache = self.cache.clone();
        let (url, c, path) = (repo.url.clone(), commit.to_owned(), repo.apps_path.clone());
        let files =
            tokio::task::spawn_blocking(move || cache.read_dir(&url, &c, &path, true)).await;
        let files = match files {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Ok(vec![e.to_string()]),
            Err(e) => return Ok(vec![format!("reading applications failed: {e}")]),
        };
        let from_sets = match self.appsets.get() {
            Some(a) => a.load_from_repo(&repo.url, &repo.apps_path, &files)?,
            None => Vec::new(),
        };
        let existing = self.store.apps()?;
        let projects =
            crate::project::load_from_repo(&self.store, &repo.url, &repo.apps_path, &files)?;
        let plan = plan_applications(&repo.url, &repo.apps_path, &files, &existing);
        for name in &plan.removals {
            tracing::info!(app = %name, "application removed from Git");
            self.fleet.remove_app(name)?;
        }
        for (app, origin) in plan.upserts {
            let name = app.metadata.name.clone();
            let current = existing.iter().find(|e| e.app.metadata.name == name);
            if let Some(e) = current
                && !e.origin.starts_with(&origin_prefix(&repo.url))
            {
                tracing::warn!(app = %name, from = %e.origin, to = %origin, "application now defined in Git; replacing");
            }
            tracing::info!(app = %name, origin = %origin, "application loaded from Git");
            self.store.put_app_definition(&AppRecord {
                app: app.into(),
                origin,
                revision: current.map(|e| e.revision.clone()).unwrap_or_default(),
                error: current.map(|e| e.error.clone()).unwrap_or_default(),
            })?;
        }
        for e in &plan.errors {
            tracing::warn!(error = %e, "cannot load applications");
        }
        Ok(plan
            .errors
            .into_iter()
            .chain(from_sets)
            .chain(projects)
            .collect())
    }

    /// The render of `key`: cached, or shared with a render of the same
    /// key running now, or made now on the render pool.
    async fn render(&self, key: &RenderKey) -> Rendered {
        let cell = self.render_cell(key);
        cell.get_or_init(|| async {
            let slots = self.render_slots();
            let _slot = slots.acquire_owned().await;
            let cache = self.cache.clone();
            let k = key.clone();
            let tools = self.render_tools();
            let render_started = Instant::now();
            let span = tracing::info_span!("render", repo = %redact(&key.url), commit = %key.commit, path = %key.path);
            let result = tokio::task::spawn_blocking(move || {
                crate::render::render_source(&cache, &tools, &k)
            })
            .instrument(span)
            .await
            .unwrap_or_else(|e| Err(format!("render task failed: {e}")));
            crate::metrics::metrics().render(render_started.elapsed());
            Arc::new(result)
        })
        .await
        .clone()
    }

    fn render_cell(&self, key: &RenderKey) -> RenderCell {
        self.cached(key).1
    }

    /// The render cache's entry for `key` (made empty when there is none):
    /// its shared key and its cell.
    fn cached(&self, key: &RenderKey) -> (Arc<RenderKey>, RenderCell) {
        let mut renders = self.renders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, cell)) = renders.get_key_value(key) {
            return (k.clone(), cell.clone());
        }
        let (k, cell) = (Arc::new(key.clone()), RenderCell::default());
        renders.insert(k.clone(), cell.clone());
        (k, cell)
    }

    /// Notes that a render used `key`, sharing the cache's copy of it.
    pub(crate) fn note_used(&self, used: &mut UsedKeys, key: &RenderKey) {
        if !used.contains(key) {
            used.insert(self.cached(key).0);
        }
    }

    fn render_slots(&self) -> Arc<Semaphore> {
        self.render_slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Renders the application `name` as it is in the store now and hands
    /// the result to the fleet.
    async fn render_one(
        self: &Arc<Self>,
        name: &str,
        force: bool,
        inputs: Option<Arc<PassInputs>>,
    ) -> Result<(), StoreError> {
        let Some(rec) = self.store.app_shared(name)? else {
            return Ok(());
        };
        self.app_renders
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inputs = match inputs {
            Some(i) => i,
            None => Arc::new(PassInputs {
                intervals: self
                    .store
                    .repos()?
                    .into_iter()
                    .map(|r| {
                        let interval = Duration::from_secs(r.poll_interval_secs.max(1) as u64);
                        ((r.url, revision_or_head(&r.revision)), interval)
                    })
                    .collect(),
            }),
        };
        let app = &rec.app;
        // Whatever this render finds, the last one no longer stands.
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let projects = self.store.project_changes();
        // tenancy: nothing is fetched for an application its project
        // refuses, and nothing of it is sent.
        let rules = match crate::project::admit(&self.store, app)? {
            Ok(rules) => rules,
            Err(refusal) => return self.refuse(app, refusal).await,
        };
        if let Err(refusal) = crate::repo_fetch::credential_scope(&self.store, app) {
            return self.refuse(app, refusal).await;
        }
        let mut used = HashSet::new();
        let mut fetched = None;
        let outcome = if app.spec.has_multiple_sources() {
            self.sources_manifests(app, &inputs.intervals, force, &mut used)
                .await?
                .map_err(|e| (String::new(), e))
        } else if !app.spec.source.chart.is_empty() {
            let src = &app.spec.source;
            let key = (src.repo_url.clone(), revision_or_head(&src.target_revision));
            let interval = inputs
                .intervals
                .get(&key)
                .copied()
                .unwrap_or(self.default_interval);
            self.chart_manifests(app, interval, force, &mut used, Vec::new())
                .await?
                .map_err(|e| (String::new(), e))
        } else {
            self.single_manifests(app, &inputs.intervals, force, &mut used, &mut fetched)
                .await?
        };
        self.used_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), used);
        if let Ok((_, manifests)) = &outcome
            && let Err(refusal) = crate::project::check_objects(&rules, app, manifests)
        {
            return self.refuse(app, refusal).await;
        }
        let good = outcome.is_ok();
        self.conclude(app, outcome, rules).await?;
        // Settled only when the render depends on nothing else: an
        // application of applications reconciles its children on each
        // render, so it is rendered on every pass.
        if good
            && let Some((key, commit)) = fetched
            && self.store.app_children(name)?.is_none()
            && let Some(bundle) = self.fleet.bundle(name)
        {
            self.settled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    name.to_owned(),
                    Settled {
                        app: self.current_record(&rec)?,
                        key,
                        commit,
                        digest: bundle.digest.clone(),
                        projects,
                    },
                );
        }
        Ok(())
    }

    /// tenancy: records why the project refuses `app` and sends a bundle
    /// without objects (the agents change nothing, and show why).
    async fn refuse(
        self: &Arc<Self>,
        app: &Application,
        refusal: String,
    ) -> Result<(), StoreError> {
        tracing::warn!(app = %app.metadata.name, error = %refusal, "application refused by its project");
        self.set_app_result(&app.metadata.name, None, &refusal)?;
        self.publish(build_bundle(app, "", Err(&refusal))).await
    }

    /// The commit and objects of a single-source Git application.
    async fn single_manifests(
        &self,
        app: &Application,
        intervals: &HashMap<(String, String), Duration>,
        force: bool,
        used: &mut UsedKeys,
        fetched: &mut Option<((String, String), String)>,
    ) -> Result<Outcome, StoreError> {
        let src = &app.spec.source;
        let key = (src.repo_url.clone(), revision_or_head(&src.target_revision));
        let interval = intervals
            .get(&key)
            .copied()
            .unwrap_or(self.default_interval);
        let commit = match self.fetch(&key.0, &key.1, interval, force).await {
            Ok(c) => c,
            Err(e) => return Ok(Err((String::new(), e))),
        };
        *fetched = Some((key.clone(), commit.clone()));
        let commit = {
            let _history = self.history_lock();
            crate::history::effective_commit(&self.store, app, commit)?
        };
        let key = crate::render::request_for(app, &commit);
        self.note_used(used, &key);
        let mut rendered = self.render(&key).await;
        // A chart found by its Chart.yaml: Helm output depends on the
        // release name and namespace, so the key must carry them.
        if crate::render::needs_release(&rendered) {
            let key = crate::render::with_release(key, app);
            self.note_used(used, &key);
            rendered = self.render(&key).await;
        }
        Ok(match rendered.as_ref() {
            Ok(m) => Ok((commit, m.clone())),
            Err(e) => Err((commit, e.clone())),
        })
    }

    /// Records the outcome of rendering `app` and hands its bundle to the
    /// fleet. A failure (fetch, chart or render) keeps the last good
    /// bundle: the agents go on enforcing it (self-heal included) while
    /// the application shows the error. Only a first render, or one that
    /// already failed, carries the error to the agents.
    async fn conclude(
        self: &Arc<Self>,
        app: &Application,
        outcome: Outcome,
        rules: pb::ProjectRules,
    ) -> Result<(), StoreError> {
        let name = &app.metadata.name;
        let bundle = {
            let _one = self.history_lock();
            match outcome {
                Ok((revision, manifests)) => {
                    let bundle = build_bundle(app, &revision, Ok(&manifests));
                    let bundle = crate::project::with_rules(bundle, rules);
                    let bundle = crate::appofapps::reconcile(
                        &self.store,
                        &self.fleet,
                        self.appsets.get().map(Arc::as_ref),
                        app,
                        bundle,
                    )?;
                    let error = bundle.render_error.clone();
                    let bundle = crate::project::window::hold(&self.store, app, bundle)?;
                    crate::history::note_automated(&self.store, &self.fleet, app, &bundle)?;
                    self.set_app_result(name, Some(&revision), &error)?;
                    Some(bundle)
                }
                Err((revision, error)) => {
                    tracing::warn!(app = %name, error = %error, "application not rendered");
                    let keep = self
                        .fleet
                        .bundle(name)
                        .is_some_and(|b| b.render_error.is_empty());
                    self.set_app_result(name, None, &error)?;
                    (!keep).then(|| build_bundle(app, &revision, Err(&error)))
                }
            }
        };
        if let Some(bundle) = bundle {
            self.publish(bundle).await?;
        }
        Ok(())
    }

    /// Hands `bundle` to the fleet with the bundles of other applications
    /// that are ready at the same time (one recomputation for them all),
    /// and waits until it is there.
    async fn publish(self: &Arc<Self>, bundle: pb::AppBundle) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let mut item = Publish {
            bundle,
            span: tracing::Span::current(),
            done: tx,
        };
        loop {
            let (sender, fresh) = {
                let mut publisher = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
                match publisher.as_ref().filter(|s| !s.is_closed()) {
                    Some(s) => (s.clone(), false),
                    None => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        *publisher = Some(tx.clone());
                        let this = self.clone();
                        drop(publisher);
                        self.spawn(async move { this.publish_loop(rx).await });
                        (tx, true)
                    }
                }
            };
            match sender.send(item) {
                Ok(()) => break,
                // A publisher just started is gone already: the runtime is
                // shutting down and drops every task spawned. Starting
                // another, and another, never yielded, and held the
                // runtime's shutdown (a hub's exit) at 100 % CPU.
                Err(_) if fresh => {
                    return Err(StoreError::Unavailable(
                        "the Git loop is shutting down: the bundle was not handed over".to_owned(),
                    ));
                }
                // The publisher stopped meanwhile: start another.
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(e)),
            Err(_) => Err(StoreError::Unavailable(
                "the Git loop stopped before the bundle was handed over".to_owned(),
            )),
        }
    }

    async fn publish_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Publish>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            // Hold the batch while other renders are still under way and
            // handing bundles over (which join it): until PUBLISH_HOLD
            // passes with no bundle, or PUBLISH_HOLD_MAX in all.
            let started = tokio::time::Instant::now();
            let mut hold = started + PUBLISH_HOLD;
            loop {
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let rendering = self.rendering.load(std::sync::atomic::Ordering::SeqCst);
                if rendering <= batch.len() {
                    break;
                }
                tokio::select! {
                    more = rx.recv() => match more {
                        Some(more) => {
                            batch.push(more);
                            // Renders are still handing bundles over.
                            hold = (tokio::time::Instant::now() + PUBLISH_HOLD)
                                .min(started + PUBLISH_HOLD_MAX);
                        }
                        None => break,
                    },
                    // Maybe the last render running ended: check again.
                    () = self.render_ended.notified() => {}
                    () = tokio::time::sleep_until(hold) => break,
                }
            }
            // One recomputation for the batch, in the first render's trace.
            let span = batch[0].span.clone();
            let (bundles, waiting): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.bundle, p.done)).unzip();
            // An application deleted while it was rendered gets no bundle.
            let mut bundles = bundles;
            let mut result = Ok(());
            bundles.retain(|b| match self.store.app_shared(&b.name) {
                Ok(found) => found.is_some(),
                Err(e) => {
                    result = Err(e);
                    false
                }
            });
            if result.is_ok() {
                result = span.in_scope(|| self.fleet.set_bundles(bundles));
            }
            if result.is_ok() {
                result = self.store.flush_async().await;
            }
            let result = result.map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, "handing rendered bundles to the fleet failed");
            }
            for w in waiting {
                let _ = w.send(result.clone());
            }
        }
    }

    fn set_app_result(
        &self,
        name: &str,
        commit: Option<&str>,
        error: &str,
    ) -> Result<(), StoreError> {
        let Some(rec) = self.store.app_shared(name)? else {
            return Ok(());
        };
        let revision = commit.unwrap_or(&rec.revision);
        if rec.revision != revision || rec.error != error {
            self.store.put_app_result(name, revision, error)?;
        }
        Ok(())
    }
}

/// Whether two records hold the same application definition: the same
/// shared `Application` (a record written for a new revision keeps its
/// definition's), else an equal one.
fn same_definition(a: &AppRecord, b: &AppRecord) -> bool {
    Arc::ptr_eq(&a.app, &b.app) || a.app == b.app
}

/// Joins the tasks of `tasks` that finished.
fn reap(tasks: &mut tokio::task::JoinSet<()>) {
    while tasks.try_join_next().is_some() {}
}

fn origin_prefix(repo_url: &str) -> String {
    format!("git:{repo_url}:")
}

/// What loading a repository's Application files changes in the store.
#[derive(Debug, Default, PartialEq)]
pub struct AppsPlan {
    /// New or changed Applications with their origin (`git:<url>:<file>`).
    pub upserts: Vec<(Application, String)>,
    /// Applications this repository declared before and no longer does.
    pub removals: Vec<String>,
    /// Per-file problems, each naming the file.
    pub errors: Vec<String>,
}

/// Plans the store changes for the Application files of `repo_url` read
/// from `apps_path`, given every stored application. A file that fails to
/// parse keeps the applications it defined before; applications of other
/// origins are never removed.
pub fn plan_applications(
    repo_url: &str,
    apps_path: &str,
    files: &[SourceFile],
    existing: &[AppRecord],
) -> AppsPlan {
    let prefix = origin_prefix(repo_url);
    let mut plan = AppsPlan::default();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut found: BTreeMap<String, (Application, String)> = BTreeMap::new();
    for f in files.iter().filter(|f| is_manifest_file(&f.path)) {
        let file = join_path(apps_path, &f.path);
        let origin = format!("{prefix}{file}");
        let text = String::from_utf8_lossy(&f.content);
        match model::parse_applications(&text, &file) {
            Ok(apps) => {
                for app in apps {
                    let name = app.metadata.name.clone();
                    if let Some((_, other)) = found.get(&name) {
                        let other = other.strip_prefix(&prefix).unwrap_or(other);
                        plan.errors.push(format!(
                            "Application {name:?} is defined twice ({other} and {file})"
                        ));
                        continue;
                    }
                    found.insert(name, (app, origin.clone()));
                }
            }
            Err(e) => {
                plan.errors.push(e.to_string());
                failed.insert(origin);
            }
        }
    }
    for e in existing {
        let name = &e.app.metadata.name;
        if e.origin.starts_with(&prefix) && !failed.contains(&e.origin) && !found.contains_key(name)
        {
            plan.removals.push(name.clone());
        }
    }
    for (name, (app, origin)) in found {
        let unchanged = existing
            .iter()
            .any(|e| e.app.metadata.name == name && *e.app == app && e.origin == origin);
        if !unchanged {
            plan.upserts.push((app, origin));
        }
    }
    plan
}

/// A URL with any userinfo (credentials) masked, for logs: one
/// implementation, [`crate::source::SafeUrl`].
pub fn redact(url: &str) -> String {
    crate::source::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A render that hands its bundle over while the runtime shuts down
    /// (every task spawned then is dropped at once) gets an error, instead
    /// of starting publishers forever and holding the shutdown at 100 %
    /// CPU, as the hub's sso test binary once hung at exit.
    #[test]
    fn a_bundle_handed_over_during_shutdown_ends_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let fleet = Fleet::load(store.clone()).unwrap();
        let sync = GitSync::new(
            store,
            fleet,
            dir.path().join("git"),
            Duration::from_secs(3600),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            started_tx.send(()).unwrap();
            // Held on this worker until the runtime is shutting down: a
            // task that never ends is reported finished (dropped) then.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let probe = handle.spawn(std::future::pending::<()>());
                std::thread::yield_now();
                if probe.is_finished() || std::time::Instant::now() > deadline {
                    break;
                }
                probe.abort();
            }
            let bundle = pb::AppBundle {
                name: "guestbook".into(),
                ..Default::default()
            };
            done_tx.send(sync.publish(bundle).await).unwrap();
        });
        started_rx.recv().unwrap();
        let stopping = std::thread::spawn(move || drop(rt));
        let published = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("publish returned");
        assert!(published.unwrap_err().to_string().contains("shutting down"),);
        stopping.join().unwrap();
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("https://u:p@git.example/r.git"),
            "https://***@git.example/r.git"
        );
        assert_eq!(
            redact("https://git.example/r.git"),
            "https://git.example/r.git"
        );
        assert_eq!(redact("file:///tmp/a@b"), "file:///tmp/a@b");
    }

    const URL: &str = "file:///cfg";

    fn app_doc(name: &str, path: &str) -> String {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\nspec:\n  source:\n    repoURL: {URL}\n    path: {path}\n  destination:\n    name: c1\n"
        )
    }

    fn file(path: &str, content: &str) -> SourceFile {
        SourceFile {
            path: path.to_owned(),
            content: content.as_bytes().to_vec(),
        }
    }

    fn stored(name: &str, path: &str, origin: &str) -> AppRecord {
        AppRecord {
            app: model::parse_applications(&app_doc(name, path), "t")
                .unwrap()
                .remove(0)
                .into(),
            origin: origin.to_owned(),
            revision: String::new(),
            error: String::new(),
        }
    }

    fn names(plan: &AppsPlan) -> Vec<&str> {
        plan.upserts
            .iter()
            .map(|(a, _)| a.metadata.name.as_str())
            .collect()
    }

    #[test]
    fn plan_applications_table() {
        let origin = |f: &str| format!("git:{URL}:apps/{f}");
        struct Case {
            name: &'static str,
            files: Vec<SourceFile>,
            existing: Vec<AppRecord>,
            upserts: Vec<&'static str>,
            removals: Vec<&'static str>,
            error_mentions: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "new files are loaded, other files ignored",
                files: vec![
                    file("a.yaml", &app_doc("a", "a")),
                    file("README.md", "# not yaml"),
                ],
                existing: vec![],
                upserts: vec!["a"],
                removals: vec![],
                error_mentions: vec![],
            },
            Case {
                name: "unchanged is not rewritten",
                files: vec![file("a.yaml", &app_doc("a", "a"))],
                existing: vec![stored("a", "a", &origin("a.yaml"))],
                upserts: vec![],
                removals: vec![],
                error_mentions: vec![],
            },
            Case {
                name: "changed spec is rewritten",
                files: vec![file("a.yaml", &app_doc("a", "other"))],
                existing: vec![stored("a", "a", &origin("a.yaml"))],
                upserts: vec!["a"],
                removals: vec![],
                error_mentions: vec![],
            },
            Case {
                name: "deleted file removes its apps, not apps of others",
                files: vec![],
                existing: vec![
                    stored("a", "a", &origin("a.yaml")),
                    stored("b", "b", "api"),
                    stored("c", "c", "git:file:///other:apps/c.yaml"),
                ],
                upserts: vec![],
                removals: vec!["a"],
                error_mentions: vec![],
            },
            Case {
                name: "broken file keeps its apps and is named",
                files: vec![file("a.yaml", "kind: [\n")],
                existing: vec![stored("a", "a", &origin("a.yaml"))],
                upserts: vec![],
                removals: vec![],
                error_mentions: vec!["apps/a.yaml"],
            },
            Case {
                name: "invalid Application is an error naming the file",
                files: vec![file(
                    "bad.yaml",
                    "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: bad\nspec: {}\n",
                )],
                existing: vec![],
                upserts: vec![],
                removals: vec![],
                error_mentions: vec!["apps/bad.yaml", "repoURL"],
            },
            Case {
                name: "a name defined twice keeps the first",
                files: vec![
                    file("a.yaml", &app_doc("a", "a")),
                    file("b.yaml", &app_doc("a", "b")),
                ],
                existing: vec![],
                upserts: vec!["a"],
                removals: vec![],
                error_mentions: vec!["defined twice", "apps/a.yaml", "apps/b.yaml"],
            },
            Case {
                name: "an app moved to another file is kept",
                files: vec![file("b.yaml", &app_doc("a", "a"))],
                existing: vec![stored("a", "a", &origin("a.yaml"))],
                upserts: vec!["a"],
                removals: vec![],
                error_mentions: vec![],
            },
        ];
        for c in cases {
            let plan = plan_applications(URL, "apps", &c.files, &c.existing);
            assert_eq!(names(&plan), c.upserts, "{}", c.name);
            assert_eq!(plan.removals, c.removals, "{}", c.name);
            let errors = plan.errors.join("\n");
            for m in &c.error_mentions {
                assert!(errors.contains(m), "{}: {m:?} not in {errors:?}", c.name);
            }
            if c.error_mentions.is_empty() {
                assert!(plan.errors.is_empty(), "{}: {errors}", c.name);
            }
        }
    }

    #[test]
    fn repository_types() {
        assert_eq!(RepoKind::parse(""), Ok(RepoKind::Git));
        assert_eq!(RepoKind::parse("git"), Ok(RepoKind::Git));
        assert_eq!(RepoKind::parse(" helm "), Ok(RepoKind::Helm));
        let err = RepoKind::parse("oci").unwrap_err();
        assert!(
            err.contains("\"oci\"") && err.contains("git or helm"),
            "{err}"
        );
    }

    #[test]
    fn paths_join() {
        assert_eq!(join_path("apps/", "a.yaml"), "apps/a.yaml");
        assert_eq!(join_path("", "a.yaml"), "a.yaml");
        assert!(is_manifest_file("x/A.YML"));
        assert!(!is_manifest_file("README.md"));
    }
}
