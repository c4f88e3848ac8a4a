//! Keeps the hub in step with the `--repository-secrets` directory while it
//! runs. Kubernetes updates a mounted Secret in place (it swaps the
//! `..data` link), so the hub reads the directory again every few seconds
//! and on SIGHUP, and applies what changed:
//!
//! - a repository Secret added: its repository is registered (a
//!   repository already registered keeps its revision and apps path);
//! - a repository Secret's own credentials added, changed or dropped: the
//!   stored credentials follow;
//! - the credential templates (`repo-creds`) are replaced as a whole; a
//!   repository without credentials of its own uses the template with the
//!   longest prefix of its URL at each fetch;
//! - a repository Secret removed: its repository is removed, unless an
//!   application uses it; then it is kept, and the error (naming the
//!   applications) is logged and counted until the applications are gone.
//!
//! A Secret that cannot be read is logged (file and cause) and counted in
//! `flotilla_hub_repository_secret_errors`; it does not disturb the
//! others. While any Secret cannot be read, nothing is removed and the
//! templates last read stay, since the broken file may be the one that
//! declared them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{DeclaredSecret, SecretKind, load_dir_all};
use crate::gitsync::GitSync;
use crate::store::credential_templates::{CredentialTemplate, matching_template};
use crate::store::{Store, StoreError};

/// How often the directory is read again by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// A repository a Secret declared.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Declared {
    secret: String,
    /// The Secret gave credentials of its own (stored for the URL).
    own_credentials: bool,
}

#[derive(Debug, Default)]
struct State {
    /// What the last read found, to skip a read that changed nothing.
    last: Option<(Vec<DeclaredSecret>, Vec<String>)>,
    /// Repositories declared by Secrets, by URL.
    repos: BTreeMap<String, Declared>,
    /// Errors of the last read (and repositories kept for applications).
    errors: Vec<String>,
    /// A removed Secret's repository is kept for applications: read again
    /// even if the directory did not change.
    pending: bool,
}

/// The repositories and credential templates declared in a directory.
pub struct DeclaredRepositories {
    store: Store,
    git: Arc<GitSync>,
    dir: PathBuf,
    poll_interval: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for DeclaredRepositories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclaredRepositories")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DeclaredRepositories {
    /// Repositories declared in `dir`; those registered get
    /// `poll_interval`.
    #[must_use]
    pub fn new(store: Store, git: Arc<GitSync>, dir: PathBuf, poll_interval: Duration) -> Self {
        Self {
            store,
            git,
            dir,
            poll_interval,
            state: Mutex::default(),
        }
    }

    /// The errors of the last read: Secrets that cannot be used (each
    /// naming its file and cause) and removed Secrets whose repository is
    /// kept for applications.
    #[must_use]
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the directory and applies what changed since the last read.
    /// Blocking.
    ///
    /// # Errors
    /// The store fails. A Secret that cannot be read is not an error here:
    /// it is in [`DeclaredRepositories::errors`].
    pub fn read_and_apply(&self) -> Result<(), StoreError> {
        let (found, read_errors) = match load_dir_all(&self.dir) {
            Ok(r) => r,
            Err(e) => (Vec::new(), e),
        };
        let error_texts: Vec<String> = read_errors.iter().map(ToString::to_string).collect();
        let mut state = self.lock();
        let seen = (found.clone(), error_texts.clone());
        if !state.pending && state.last.as_ref() == Some(&seen) {
            return Ok(());
        }
        // Logged when they appear, not at every read.
        for e in error_texts.iter().filter(|e| !state.errors.contains(e)) {
            tracing::error!(error = %e, "a repository Secret cannot be used; the others are applied");
        }
        let complete = error_texts.is_empty();
        let mut errors = error_texts;

        // Credential templates, replaced as a whole.
        let old_templates = self.store.credential_templates();
        let mut templates: Vec<CredentialTemplate> = found
            .iter()
            .filter(|s| s.kind == SecretKind::RepoCreds)
            .filter_map(|s| {
                s.credentials.as_ref().map(|c| CredentialTemplate {
                    url: s.url.clone(),
                    secret: s.secret.clone(),
                    credentials: c.to_store(),
                })
            })
            .collect();
        if !complete {
            for t in old_templates.iter() {
                if !templates.iter().any(|n| n.secret == t.secret) {
                    templates.push(t.clone());
                }
            }
        }
        let mut refresh = Vec::new();
        if *old_templates != templates {
            for r in self.store.repos()? {
                if matching_template(&old_templates, &r.url)
                    != matching_template(&templates, &r.url)
                {
                    refresh.push(r.url);
                }
            }
            let shown: Vec<String> = templates
                .iter()
                .map(|t| format!("{} ({})", t.url, t.secret))
                .collect();
            tracing::info!(templates = ?shown, repositories_affected = refresh.len(), "credential templates updated");
            self.store.set_credential_templates(templates.clone());
        }

        // Repositories.
        let first_read = state.last.is_none();
        let mut repos = BTreeMap::new();
        for r in found.iter().filter(|s| s.kind == SecretKind::Repository) {
            if self.store.repo(&r.url)?.is_none() {
                self.git.add_repository(
                    &r.url,
                    "HEAD",
                    "",
                    i64::try_from(self.poll_interval.as_secs().max(1)).unwrap_or(i64::MAX),
                    r.repo_kind,
                )?;
                tracing::info!(secret = %r.secret, name = %r.name, url = %crate::source::SafeUrl(&r.url), "repository declared by a Secret");
            }
            let stored = self.store.repo_credentials(&r.url)?;
            match &r.credentials {
                Some(c) => {
                    let want = c.to_store();
                    if stored.as_ref() != Some(&want) {
                        self.store.put_repo_credentials(&r.url, Some(&want))?;
                        tracing::info!(secret = %r.secret, url = %crate::source::SafeUrl(&r.url), "repository credentials set from its Secret");
                        refresh.push(r.url.clone());
                    }
                }
                None => {
                    let dropped = state.repos.get(&r.url).is_some_and(|d| d.own_credentials);
                    // A hub before credential templates were live stored
                    // a copy of the template's credentials: drop it, so
                    // the template applies as it changes.
                    let copied = first_read
                        && stored.as_ref().is_some_and(|s| {
                            matching_template(&templates, &r.url)
                                .is_some_and(|t| &t.credentials == s)
                        });
                    if stored.is_some() && (dropped || copied) {
                        self.store.put_repo_credentials(&r.url, None)?;
                        tracing::info!(secret = %r.secret, url = %crate::source::SafeUrl(&r.url), "repository credentials of its Secret removed");
                        refresh.push(r.url.clone());
                    }
                }
            }
            repos.insert(
                r.url.clone(),
                Declared {
                    secret: r.secret.clone(),
                    own_credentials: r.credentials.is_some(),
                },
            );
        }

        // Repositories whose Secret is gone.
        let mut pending = false;
        let apps = self.store.apps()?;
        for (url, d) in &state.repos {
            if repos.contains_key(url) {
                continue;
            }
            if !complete {
                repos.insert(url.clone(), d.clone());
                continue;
            }
            let users = crate::store::applications_of_repo(&apps, url);
            if users.is_empty() {
                self.store.remove_repo(url)?;
                if d.own_credentials {
                    self.store.put_repo_credentials(url, None)?;
                }
                tracing::info!(secret = %d.secret, url = %crate::source::SafeUrl(url), "repository removed: its Secret is gone");
                self.git.kick();
            } else {
                let e = format!(
                    "Secret {:?} is gone but repository {} is kept: application(s) {} use it (delete them, or remove the repository with `flotilla repo remove --force`)",
                    d.secret,
                    crate::source::SafeUrl(url),
                    users.join(", ")
                );
                if !state.errors.contains(&e) {
                    tracing::warn!(error = %e, "repository of a removed Secret kept");
                }
                errors.push(e);
                repos.insert(url.clone(), d.clone());
                pending = true;
            }
        }
        self.store.flush()?;
        if !refresh.is_empty() {
            self.git.refresh_urls(&refresh);
        }
        crate::metrics::metrics().repository_secret_errors(errors.len());
        *state = State {
            last: Some(seen),
            repos,
            errors,
            pending,
        };
        Ok(())
    }

    /// Reads the directory every `every` and on SIGHUP, until the task is
    /// aborted.
    pub fn spawn(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "no SIGHUP handler: repository Secrets are read every interval only");
                    })
                    .ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let hup = async {
                    match hangup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    () = hup => tracing::info!("SIGHUP: reading repository Secrets"),
                }
                let this = self.clone();
                match tokio::task::spawn_blocking(move || this.read_and_apply()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "applying repository Secrets failed; trying again at the next read");
                        // Read again next time even if nothing changed.
                        self.lock().last = None;
                    }
                    Err(e) => tracing::error!(error = %e, "reading repository Secrets panicked"),
                }
            }
        })
    }
}
