//! The Git loop: poll registered repositories, load the Applications they
//! declare, fetch every application's source and render it into a bundle.
//!
//! A render is keyed by (repository, commit, path, directory options) and
//! shared by every application and cluster that uses it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::fleet::{Fleet, build_bundle};
use crate::model::{self, Application};
use crate::source::{GitCache, SourceFile};
use crate::store::{AppRecord, RepoRecord, Store, StoreError};

mod charts;
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

/// (repository, commit, path, parameters): see [`crate::render::RenderRequest`].
type RenderKey = crate::render::RenderRequest;

type Rendered = Arc<Result<Vec<String>, String>>;

#[derive(Clone, Debug)]
struct Known {
    commit: Result<String, String>,
    /// The pass that fetched it ([`GitSync::pass`]).
    pass: u64,
    next_due: Instant,
}

/// The Git loop and its caches.
pub struct GitSync {
    store: Store,
    fleet: Arc<Fleet>,
    cache: GitCache,
    kick: Notify,
    /// Wakes the loop without forcing every fetch (webhooks, app refresh).
    wake: Notify,
    default_interval: Duration,
    /// (url, revision) → last fetch result and when to fetch again.
    known: Mutex<HashMap<(String, String), Known>>,
    /// url → commit whose Applications are loaded (this process).
    loaded: Mutex<HashMap<String, String>>,
    renders: Mutex<HashMap<RenderKey, Rendered>>,
    /// One poll at a time.
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

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.85..1.15))
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

impl GitSync {
    /// Creates the loop; mirrors live under `cache_dir`.
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        cache_dir: std::path::PathBuf,
        default_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            fleet,
            helm_repos: Arc::new(crate::helmrepo::HelmRepos::new(
                cache_dir.join("helm-charts"),
            )),
            cache: GitCache::new(cache_dir),
            kick: Notify::new(),
            wake: Notify::new(),
            default_interval,
            known: Mutex::default(),
            loaded: Mutex::default(),
            renders: Mutex::default(),
            polling: tokio::sync::Mutex::new(()),
            pass: std::sync::atomic::AtomicU64::new(0),
            appsets: std::sync::OnceLock::new(),
            tools: Mutex::default(),
        })
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

    /// Fetches `url` and resolves `revision` (branch, tag, commit, HEAD)
    /// to a commit, now.
    ///
    /// # Errors
    /// The repository cannot be reached or the revision does not exist.
    pub async fn resolve(&self, url: &str, revision: &str) -> Result<String, String> {
        let revision = revision_or_head(revision);
        // A user asking now means now: not a fetch shared a moment ago.
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(url.to_owned(), revision.clone()));
        // The next poll of this (url, revision) is due after the
        // repository's own interval, as after any other fetch of it.
        let interval = self.interval_of(url, &revision);
        let commit = self.fetch(url, &revision, interval, true).await;
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

    /// Asks for an immediate poll of everything.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Fetches these repository URLs on the next pass, now (a webhook
    /// push): their remembered fetch results are dropped and the loop woken.
    pub fn refresh_urls(&self, urls: &[String]) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(url, _), _| !urls.contains(url));
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

    /// Runs the loop until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut force = true;
        loop {
            self.poll(force).await;
            let wait = self.next_wait();
            tokio::select! {
                () = tokio::time::sleep(wait) => force = false,
                () = self.kick.notified() => force = true,
                () = self.wake.notified() => force = false,
            }
        }
    }

    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|k| k.next_due.saturating_duration_since(now))
            .min()
            .unwrap_or(self.default_interval)
            .clamp(
                Duration::from_millis(500),
                self.default_interval.max(Duration::from_secs(1)),
            )
    }

    /// The remembered result of fetching `key` when it need not be fetched
    /// again: fetched in this pass (a forced pass still fetches each
    /// repository once), or, unless `force`, not due yet. A later pass
    /// fetches again however soon it comes: a refresh right after a push
    /// must see the push.
    fn remembered(&self, key: &(String, String), force: bool) -> Option<Result<String, String>> {
        let pass = self.pass.load(std::sync::atomic::Ordering::SeqCst);
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(key)
            .filter(|k| k.pass == pass || (!force && Instant::now() < k.next_due))
            .map(|k| k.commit.clone())
    }

    /// Remembers the result of fetching `key` in this pass; due again after
    /// `interval` (jittered).
    fn remember(&self, key: (String, String), commit: Result<String, String>, interval: Duration) {
        let pass = self.pass.load(std::sync::atomic::Ordering::SeqCst);
        self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key,
            Known {
                commit,
                pass,
                next_due: Instant::now() + jittered(interval),
            },
        );
    }

    async fn fetch(
        &self,
        url: &str,
        revision: &str,
        interval: Duration,
        force: bool,
    ) -> Result<String, String> {
        let key = (url.to_owned(), revision.to_owned());
        let fetch_started = Instant::now();
        if let Some(commit) = self.remembered(&key, force) {
            return commit;
        }
        let cache = self.cache.clone();
        let store = self.store.clone();
        let (u, r) = key.clone();
        let result = tokio::task::spawn_blocking(move || {
            fetch_with_stored_credentials(&cache, &store, &u, &r)
        })
        .await
        .map_err(|e| format!("fetch task failed: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
        match &result {
            Ok(commit) => tracing::debug!(url = %redact(url), revision, commit, "fetched"),
            Err(e) => tracing::warn!(url = %redact(url), revision, error = %e, "fetch failed"),
        }
        self.remember(key, result.clone(), interval);
        crate::metrics::metrics().git_fetch(url, fetch_started.elapsed(), result.is_ok());
        result
    }

    /// One pass: fetch what is due (everything when `force`), reload
    /// Applications from repositories that moved, re-render what changed.
    pub async fn poll(&self, force: bool) {
        let _one = self.polling.lock().await;
        self.pass.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let span = tracing::info_span!("git.pass", force);
        if let Err(e) = self.poll_inner(force).instrument(span).await {
            tracing::error!(error = %e, "git poll failed");
        }
    }

    async fn poll_inner(&self, force: bool) -> Result<(), StoreError> {
        let mut changed_apps = false;
        let helm_urls = self.helm_repository_urls()?;
        for repo in self.store.repos()? {
            if repo.kind == HELM_KIND {
                self.poll_helm_repository(&repo, force).await?;
                continue;
            }
            if repo.apps_path.is_empty() && helm_urls.contains(&repo.url) {
                self.skip_helm_repository(&repo)?;
                continue;
            }
            let interval = Duration::from_secs(repo.poll_interval_secs.max(1) as u64);
            let revision = revision_or_head(&repo.revision);
            let fetched = self
                .fetch(&repo.url, &revision, interval, force)
                .instrument(tracing::info_span!("git.fetch", repo = %redact(&repo.url), revision = %revision))
                .await;
            let mut rec = self.store.repo(&repo.url)?.unwrap_or(repo.clone());
            match fetched {
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
            rec.last_fetch_ms = crate::api::now_ms();
            if Some(&rec) != self.store.repo(&repo.url)?.as_ref() {
                self.store.put_repo(&rec)?;
            }
        }
        if let Some(appsets) = self.appsets.get() {
            changed_apps |= appsets.reconcile_all(&self.cache, force).await?;
        }
        if changed_apps {
            self.fleet.recompute()?;
        }
        self.render_all(force).await?;
        self.store.flush_async().await?;
        Ok(())
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
            self.store.put_app(&AppRecord {
                app,
                origin,
                revision: current.map(|e| e.revision.clone()).unwrap_or_default(),
                error: current.map(|e| e.error.clone()).unwrap_or_default(),
            })?;
        }
        for e in &plan.errors {
            tracing::warn!(error = %e, "cannot load applications");
        }
        Ok(plan.errors.into_iter().chain(from_sets).collect())
    }

    async fn render(&self, key: &RenderKey) -> Rendered {
        if let Some(r) = self
            .renders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return r.clone();
        }
        let cache = self.cache.clone();
        let k = key.clone();
        let tools = self.render_tools();
        let render_started = Instant::now();
        let span = tracing::info_span!("render", repo = %redact(&key.url), commit = %key.commit, path = %key.path);
        let result =
            tokio::task::spawn_blocking(move || crate::render::render_source(&cache, &tools, &k))
                .instrument(span)
                .await
                .unwrap_or_else(|e| Err(format!("render task failed: {e}")));
        crate::metrics::metrics().render(render_started.elapsed());
        let rendered = Arc::new(result);
        self.renders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), rendered.clone());
        rendered
    }

    async fn render_all(&self, force: bool) -> Result<(), StoreError> {
        let mut used = HashSet::new();
        let mut bundles = Vec::new();
        // A source that is also a registered repository keeps that
        // repository's poll interval.
        let intervals: HashMap<(String, String), Duration> = self
            .store
            .repos()?
            .into_iter()
            .map(|r| {
                let interval = Duration::from_secs(r.poll_interval_secs.max(1) as u64);
                ((r.url, revision_or_head(&r.revision)), interval)
            })
            .collect();
        let apps = self.store.apps()?;
        let clusters = self.store.clusters()?;
        for rec in apps {
            let app = &rec.app;
            if app.spec.has_multiple_sources() {
                self.render_sources_app(app, &intervals, force, &clusters, &mut used, &mut bundles)
                    .await?;
                continue;
            }
            let src = &app.spec.source;
            let name = app.metadata.name.clone();
            let key = (src.repo_url.clone(), revision_or_head(&src.target_revision));
            let interval = intervals
                .get(&key)
                .copied()
                .unwrap_or(self.default_interval);
            if !src.chart.is_empty() {
                self.render_chart_app(app, interval, force, &clusters, &mut used, &mut bundles)
                    .await?;
                continue;
            }
            let commit = self.fetch(&key.0, &key.1, interval, force).await;
            let commit = match commit {
                Ok(c) => c,
                Err(e) => {
                    // Keep the last good bundle; only a first render becomes
                    // an error the agent reports.
                    if self.fleet.bundle(&name).is_none() {
                        bundles.push(build_bundle(app, "", Err(&e)));
                    }
                    self.set_app_result(&name, None, &e)?;
                    continue;
                }
            };
            let commit = crate::history::effective_commit(&self.store, app, commit)?;
            let key = crate::render::request_for(app, &commit);
            used.insert(key.clone());
            let mut rendered = self.render(&key).await;
            // A chart found by its Chart.yaml: Helm output depends on the
            // release name and namespace, so the key must carry them.
            if crate::render::needs_release(&rendered) {
                let key = crate::render::with_release(key, app);
                used.insert(key.clone());
                rendered = self.render(&key).await;
            }
            let bundle = match rendered.as_ref() {
                Ok(m) => build_bundle(app, &commit, Ok(m)),
                Err(e) => {
                    tracing::warn!(app = %name, error = %e, "render failed");
                    // Keep the last good bundle, as for a failed fetch or
                    // chart: the agents go on enforcing it (self-heal
                    // included) while the app shows Unknown with the error.
                    // Only a first render, or one that already failed,
                    // carries the error to the agents.
                    if let Some(last) = self
                        .fleet
                        .bundle(&name)
                        .filter(|b| b.render_error.is_empty())
                    {
                        bundles.push((*last).clone());
                        self.set_app_result(&name, None, e)?;
                        continue;
                    }
                    build_bundle(app, &commit, Err(e))
                }
            };
            let bundle = crate::appofapps::reconcile(
                &self.store,
                &self.fleet,
                self.appsets.get().map(Arc::as_ref),
                app,
                bundle,
            )?;
            let error = bundle.render_error.clone();
            crate::history::note_automated(&self.store, &self.fleet, app, &bundle, &clusters)?;
            bundles.push(bundle);
            self.set_app_result(&name, Some(&commit), &error)?;
        }
        // One recomputation of the fleet for the whole pass.
        self.fleet.set_bundles(bundles)?;
        self.renders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| used.contains(k));
        Ok(())
    }

    fn set_app_result(
        &self,
        name: &str,
        commit: Option<&str>,
        error: &str,
    ) -> Result<(), StoreError> {
        let Some(mut rec) = self.store.app(name)? else {
            return Ok(());
        };
        let revision = commit.map_or_else(|| rec.revision.clone(), str::to_owned);
        if rec.revision != revision || rec.error != error {
            rec.revision = revision;
            rec.error = error.to_owned();
            self.store.put_app(&rec)?;
        }
        Ok(())
    }
}

/// Fetches `url` and resolves `revision` with the credentials the hub
/// stores for `url` (an ssh key, https user and password, or none). Used
/// by the Git loop and by ApplicationSet git generators alike. Blocking.
///
/// # Errors
/// The repository cannot be reached, the credentials are refused, or the
/// revision does not exist.
pub(crate) fn fetch_with_stored_credentials(
    cache: &GitCache,
    store: &Store,
    url: &str,
    revision: &str,
) -> Result<String, crate::source::SourceError> {
    match store.repo_credentials(url).ok().flatten() {
        Some(c) if !c.ssh_private_key.is_empty() => {
            let key = crate::source::SshKey {
                private_key: c.ssh_private_key,
                insecure_ignore_host_key: c.insecure_ignore_host_key,
            };
            cache.fetch_with_ssh_key(url, revision, &key)
        }
        Some(c) => cache.fetch_with_credentials(url, revision, &c.username, &c.password),
        None => cache.fetch(url, revision),
    }
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
            .any(|e| e.app.metadata.name == name && e.app == app && e.origin == origin);
        if !unchanged {
            plan.upserts.push((app, origin));
        }
    }
    plan
}

/// A URL with any userinfo (credentials) removed, for logs.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains('/') => format!("{scheme}://***@{host}"),
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                .remove(0),
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
