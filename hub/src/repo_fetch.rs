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
    for url in urls {
        let Some(found) = store.effective_repo_credentials(url).ok().flatten() else {
            continue;
        };
        let scope = &found.credentials().project;
        if !scope.is_empty() && scope != project {
            return Err(format!(
                "repository {}: its credentials are scoped to project {scope:?}; application {:?} is in project {project:?} and gets none (refused, not fetched anonymously)",
                crate::source::redact_url(url),
                app.metadata.name
            ));
        }
    }
    Ok(())
}
