//! Fetching a repository with the credentials the store holds for it, for
//! every module that fetches (Git passes, ApplicationSet git generators):
//! a leaf over `source` and `store`, so those modules need not call each
//! other.

use crate::source::{FetchAuth, FetchLimits, GitCache, SourceError, SshKey};
use crate::store::Store;

/// Fetches `url` and resolves `revision` with the credentials the hub
/// stores for `url` (an ssh key, https user and password, or none), else
/// those of the credential template with the longest prefix of `url`
/// ([`Store::effective_repo_credentials`]), within
/// the cache's fetch timeout. Used by ApplicationSet git generators.
/// Blocking.
///
/// # Errors
/// The repository cannot be reached, the credentials are refused, the
/// revision does not exist, or the fetch timed out.
pub(crate) fn fetch_with_stored_credentials(
    cache: &GitCache,
    store: &Store,
    url: &str,
    revision: &str,
) -> Result<String, SourceError> {
    let limits = FetchLimits::starting_now(cache.fetch_timeout());
    fetch_with_stored_credentials_within(cache, store, url, revision, &limits)
}

/// [`fetch_with_stored_credentials`] within `limits`. Blocking.
///
/// # Errors
/// As [`fetch_with_stored_credentials`].
pub(crate) fn fetch_with_stored_credentials_within(
    cache: &GitCache,
    store: &Store,
    url: &str,
    revision: &str,
    limits: &FetchLimits,
) -> Result<String, SourceError> {
    let credentials = store
        .effective_repo_credentials(url)
        .ok()
        .flatten()
        .map(crate::store::credential_templates::CredentialsSource::into_credentials);
    match credentials {
        Some(c) if !c.ssh_private_key.is_empty() => {
            let key = SshKey {
                private_key: c.ssh_private_key,
                insecure_ignore_host_key: c.insecure_ignore_host_key,
            };
            cache.fetch_bounded(url, revision, FetchAuth::SshKey(&key), limits)
        }
        Some(c) => cache.fetch_bounded(
            url,
            revision,
            FetchAuth::Password {
                username: &c.username,
                password: &c.password,
            },
            limits,
        ),
        None => cache.fetch_bounded(url, revision, FetchAuth::Anonymous, limits),
    }
}

/// Whether `app` may use the credentials stored for each of its sources'
/// repositories: credentials scoped to a project (a project-scoped
/// repository, `project:` in its Secret) serve only that project's
/// applications.
///
/// # Errors
/// The refusal, naming the repository, the credentials' project and the
/// application's. An application of another project is refused rather
/// than fetched anonymously: the repository's mirror is shared, so an
/// anonymous "success" could serve what the scoped credentials fetched.
pub(crate) fn credential_scope(
    store: &Store,
    app: &crate::model::Application,
) -> Result<(), String> {
    let project = if app.spec.project.is_empty() {
        "default"
    } else {
        app.spec.project.as_str()
    };
    let urls = std::iter::once(app.spec.source.repo_url.as_str())
        .chain(app.spec.sources.iter().map(|s| s.repo_url.as_str()))
        .filter(|u| !u.is_empty());
    let holder = format!(
        "application {:?} is in project {project:?}",
        app.metadata.name
    );
    for url in urls {
        scope_allows(store, url, Some(project), &holder)?;
    }
    Ok(())
}

/// Whether `project` may use the credentials stored for `url` (its own or
/// a template's): unscoped ones serve every project, scoped ones only
/// theirs. `None` is a project not known before generating (a templated
/// ApplicationSet project): it gets unscoped credentials only, as Argo CD
/// resolves a templated project to none.
///
/// # Errors
/// The refusal, naming the repository, the credentials' project and
/// `holder` (who asked, and in which project).
pub(crate) fn scope_allows(
    store: &Store,
    url: &str,
    project: Option<&str>,
    holder: &str,
) -> Result<(), String> {
    let Some(found) = store.effective_repo_credentials(url).ok().flatten() else {
        return Ok(());
    };
    let scope = &found.credentials().project;
    if scope.is_empty() || project == Some(scope.as_str()) {
        return Ok(());
    }
    let from = found
        .template_url()
        .map(|t| {
            format!(
                " by the credential template {}",
                crate::source::redact_url(t)
            )
        })
        .unwrap_or_default();
    Err(format!(
        "repository {}: its credentials are scoped to project {scope:?}{from}; {holder} and gets none (refused, not fetched anonymously)",
        crate::source::redact_url(url),
    ))
}

/// The project an ApplicationSet's git generators fetch for: its
/// `spec.template.spec.project` (empty: `default`). A templated project
/// (`{{…}}`) is known only after generating, so, as in Argo CD, the set
/// then gets unscoped credentials only.
#[derive(Clone, Debug, Default)]
pub(crate) struct SetProject {
    set: String,
    /// `None`: templated.
    project: Option<String>,
    written: String,
}

impl SetProject {
    /// The set's name and template project, from the set as written.
    pub(crate) fn of(raw: &serde_json::Value) -> Self {
        let set = raw["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let written = raw["spec"]["template"]["spec"]["project"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let project = if written.contains("{{") {
            None
        } else if written.is_empty() {
            Some("default".to_owned())
        } else {
            Some(written.clone())
        };
        Self {
            set,
            project,
            written,
        }
    }

    /// Whether the set's generators may fetch `url` with the credentials
    /// stored for it ([`scope_allows`]).
    ///
    /// # Errors
    /// The refusal, naming the repository, the set and both projects.
    pub(crate) fn allows(&self, store: &Store, url: &str) -> Result<(), String> {
        let holder = match &self.project {
            Some(p) => format!(
                "ApplicationSet {:?} is in project {p:?} (spec.template.spec.project)",
                self.set
            ),
            None => format!(
                "ApplicationSet {:?} has a templated project {:?} (spec.template.spec.project), so its git generators get unscoped credentials only",
                self.set, self.written
            ),
        };
        scope_allows(store, url, self.project.as_deref(), &holder)
    }
}
