//! Applications whose source is a chart in a Helm repository
//! (`source.chart`): the repository's index is fetched on the same
//! schedule as a Git repository (its entry in `known`, so webhooks, `app
//! refresh` and the loop's wake-ups treat it like one), the version is
//! picked from `targetRevision`, and the chart is rendered with helm.
//!
//! Any failure keeps the application's last good bundle: the clusters
//! keep what they run, and the error shows on the application.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{GitSync, RenderKey, Rendered, flight_of};
use crate::helmrepo::{self, ChartVersion, Index};
use crate::model::Application;
use crate::source::redact_url;
use crate::store::{RepoRecord, StoreError};

/// The `known` revision under which a Helm repository's index fetch is
/// tracked (never a Git revision: Git refs cannot hold a space).
pub(super) const INDEX_REVISION: &str = "helm index.yaml";

impl GitSync {
    /// The chart version and rendered objects of `app`, or the error for
    /// the application. `refs`: the `$ref` sources its value files name
    /// (multi-source applications).
    pub(super) async fn chart_manifests(
        &self,
        app: &Application,
        interval: Duration,
        force: bool,
        used: &mut super::UsedKeys,
        refs: Vec<crate::render::RefSource>,
    ) -> Result<Result<(String, Vec<String>), String>, StoreError> {
        let src = &app.spec.source;
        let url = src.repo_url.as_str();
        let index = match self.chart_index(url, interval, force, false).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let picked = match helmrepo::select(&index, url, &src.chart, &src.target_revision) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.to_string())),
        };
        // A rollback or `app sync --revision` pins a version.
        let version = {
            let _history = self.history_lock();
            crate::history::effective_commit(&self.store, app, picked.version.clone())?
        };
        let picked = if version == picked.version {
            picked
        } else {
            match helmrepo::select(&index, url, &src.chart, &version) {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("pinned version {version}: {e}"))),
            }
        };
        let mut key = crate::render::with_release(crate::render::request_for(app, &version), app);
        key.refs = refs;
        self.note_used(used, &key);
        let rendered = match self.render_chart(&key, &picked, interval, force).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        Ok(match rendered.as_ref() {
            Ok(m) => Ok((version, m.clone())),
            Err(e) => Err(format!(
                "chart {:?} {version} from {}: {e}",
                src.chart,
                redact_url(url)
            )),
        })
    }

    /// The repository URLs applications use as Helm repositories.
    pub(super) fn helm_repository_urls(&self) -> Result<HashSet<String>, StoreError> {
        Ok(self
            .store
            .apps_shared()?
            .iter()
            .flat_map(|r| r.app.spec.effective_sources())
            .filter(|s| !s.chart.is_empty())
            .map(|s| s.repo_url.clone())
            .collect())
    }

    /// A registered repository (without an apps path) that is a Helm
    /// repository, registered to hold its credentials: it is not polled as
    /// Git, and a Git error from before it was used as one is cleared (its
    /// fetch errors show on the applications).
    pub(super) fn skip_helm_repository(&self, repo: &RepoRecord) -> Result<(), StoreError> {
        if !repo.last_error.is_empty() {
            let mut rec = repo.clone();
            rec.last_error.clear();
            self.store.put_repo(&rec)?;
        }
        Ok(())
    }

    /// A repository registered as `--type helm`: its index is fetched when
    /// due (shared with the applications that use it), and the result shown
    /// on the repository: the number of charts, or why it cannot be read.
    pub(super) async fn poll_helm_repository(
        &self,
        repo: &RepoRecord,
        force: bool,
    ) -> Result<(), StoreError> {
        let interval = Duration::from_secs(repo.poll_interval_secs.max(1) as u64);
        let index = self.chart_index(&repo.url, interval, force, false).await;
        let mut rec = self.store.repo(&repo.url)?.unwrap_or_else(|| repo.clone());
        match index {
            Ok(_) => rec.last_error.clear(),
            Err(e) => rec.last_error = e,
        }
        rec.last_commit.clear();
        rec.last_fetch_ms = crate::clock::now_ms();
        if Some(&rec) != self.store.repo(&repo.url)?.as_ref() {
            self.store.put_repo(&rec)?;
        }
        Ok(())
    }

    /// Resolves `revision` for `app` now, as `app sync` needs it: a Git
    /// commit, or for a chart source the chart version it selects from the
    /// repository's index (fetched now).
    ///
    /// # Errors
    /// The source cannot be reached, or nothing matches `revision`.
    pub async fn resolve_app(&self, app: &Application, revision: &str) -> Result<String, String> {
        // tenancy: nothing is fetched for an application its project
        // refuses.
        crate::project::admit(&self.store, app).map_err(|e| e.to_string())??;
        if app.spec.has_multiple_sources() {
            return self.resolve_sources(app, revision).await;
        }
        let src = &app.spec.source;
        if src.chart.is_empty() {
            return self.resolve(&src.repo_url, revision).await;
        }
        let index = self
            .chart_index(&src.repo_url, self.default_interval, true, true)
            .await?;
        helmrepo::select(&index, &src.repo_url, &src.chart, revision)
            .map(|v| v.version)
            .map_err(|e| e.to_string())
    }

    /// The stored https credentials of `url`, its own or a credential
    /// template's (user name and password; other kinds do not apply to a
    /// Helm repository).
    fn helm_credentials(&self, url: &str) -> Option<crate::store::RepoCredentials> {
        self.store
            .effective_repo_credentials(url)
            .ok()
            .flatten()
            .map(crate::store::credential_templates::CredentialsSource::into_credentials)
            .filter(|c| !c.username.is_empty() || !c.password.is_empty())
    }

    /// The index of the Helm repository `url`, fetched when due (as a Git
    /// repository is fetched, in the same pool and with the same timeout),
    /// else the one fetched last. With `now`, fetched now whatever was
    /// fetched before (`app sync`).
    async fn chart_index(
        &self,
        url: &str,
        interval: Duration,
        force: bool,
        now: bool,
    ) -> Result<Arc<Index>, String> {
        let key = (url.to_owned(), INDEX_REVISION.to_owned());
        let pass = self.current_pass();
        if !now && let Some(fetched) = self.fetcher.remembered(&key, force, pass) {
            match (fetched, self.helm_repos.cached_index(url)) {
                (Err(e), _) => return Err(e),
                (Ok(_), Some(index)) => return Ok(index),
                (Ok(_), None) => {}
            }
        }
        if now {
            self.fetcher.forget(&key);
        }
        let credentials = self.helm_credentials(url);
        let repos = self.helm_repos.clone();
        let u = url.to_owned();
        let job = move || -> super::fetcher::Job {
            Box::new(move |_limits| {
                repos
                    .fetch_index(&u, credentials.as_ref())
                    .map(|index| {
                        tracing::debug!(repo = %redact_url(&u), charts = index.entries.len(), "helm index fetched");
                        String::new()
                    })
                    .map_err(|e| e.to_string())
            })
        };
        self.fetcher
            .flight(key.clone(), flight_of(&key), interval, pass, now, job)
            .await?;
        self.helm_repos.cached_index(url).ok_or_else(|| {
            format!(
                "helm repository {}: the index was fetched but is not cached",
                redact_url(url)
            )
        })
    }

    /// Downloads (or finds cached) and renders the chart version `v` for
    /// the request `key`; a render is cached like a Git render. The outer
    /// error is a download failure (not cached as a render: retried).
    async fn render_chart(
        &self,
        key: &RenderKey,
        v: &ChartVersion,
        interval: Duration,
        force: bool,
    ) -> Result<Rendered, String> {
        let cell = self.render_cell(key);
        cell.get_or_try_init(|| async {
            let slots = self.render_slots();
            let _slot = slots.acquire_owned().await;
            let credentials = self.helm_credentials(&key.url);
            let repos = self.helm_repos.clone();
            let tools = self.render_tools();
            let cache = self.cache.clone();
            let (k, v) = (key.clone(), v.clone());
            let retry_after = if force { Duration::ZERO } else { interval };
            let started = Instant::now();
            let span = tracing::info_span!("render", repo = %redact_url(&key.url), chart = %key.chart, version = %key.commit);
            let result = tokio::task::spawn_blocking(move || {
                let _span = span.entered();
                let dir = repos.chart_dir(&k.url, &v, credentials.as_ref(), retry_after)?;
                Ok::<_, String>(crate::render::render_chart(&cache, &tools, &k, &dir))
            })
            .await
            .unwrap_or_else(|e| Err(format!("render task failed: {e}")))?;
            crate::metrics::metrics().render(started.elapsed());
            Ok::<_, String>(Arc::new(result))
        })
        .await
        .cloned()
    }
}
