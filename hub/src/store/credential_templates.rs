//! Credential templates: credentials for every repository whose URL starts
//! with a prefix (Argo CD's `repo-creds` Secrets). A repository's own
//! stored credentials win over any template; among templates the longest
//! matching prefix wins.
//!
//! Templates are held in memory, not in sled: they are read from the
//! `--repository-secrets` directory at start and whenever it changes
//! (`crate::repo_secrets`), which stays their only source.

use std::sync::Arc;

use super::{RepoCredentials, Store, StoreError};

/// One credential template. `Debug` hides the secret values (see
/// [`RepoCredentials`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CredentialTemplate {
    /// The URL prefix, as declared.
    pub url: String,
    /// The Secret that declared it (for messages).
    pub secret: String,
    pub credentials: RepoCredentials,
}

/// Where a repository's credentials come from.
#[derive(Clone, Debug, PartialEq)]
pub enum CredentialsSource {
    /// Stored for the repository itself.
    Own(RepoCredentials),
    /// From the template with this URL prefix.
    Template {
        url: String,
        credentials: RepoCredentials,
    },
}

impl CredentialsSource {
    /// The credentials, wherever they come from.
    #[must_use]
    pub fn credentials(&self) -> &RepoCredentials {
        match self {
            Self::Own(c) | Self::Template { credentials: c, .. } => c,
        }
    }

    /// The template's URL prefix, when they come from one.
    #[must_use]
    pub fn template_url(&self) -> Option<&str> {
        match self {
            Self::Own(_) => None,
            Self::Template { url, .. } => Some(url),
        }
    }

    /// Into the credentials.
    #[must_use]
    pub fn into_credentials(self) -> RepoCredentials {
        match self {
            Self::Own(c) | Self::Template { credentials: c, .. } => c,
        }
    }
}

/// A URL as templates are matched: without a trailing `/` or `.git`, lower
/// case (as Argo CD normalises repository URLs).
#[must_use]
pub fn normalized_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    url.strip_suffix(".git").unwrap_or(url).to_ascii_lowercase()
}

/// The template with the longest URL prefix of `url`, if any.
#[must_use]
pub fn matching_template<'a>(
    templates: &'a [CredentialTemplate],
    url: &str,
) -> Option<&'a CredentialTemplate> {
    let url = normalized_url(url);
    templates
        .iter()
        .filter(|t| url.starts_with(&normalized_url(&t.url)))
        .max_by_key(|t| normalized_url(&t.url).len())
}

impl Store {
    /// Replaces every credential template.
    pub fn set_credential_templates(&self, templates: Vec<CredentialTemplate>) {
        *self
            .shared
            .templates
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(templates);
    }

    /// The credential templates in use.
    #[must_use]
    pub fn credential_templates(&self) -> Arc<Vec<CredentialTemplate>> {
        self.shared
            .templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The credentials to use for `url`: its own, else those of the
    /// template with the longest matching prefix.
    ///
    /// # Errors
    /// As [`Store::repo_credentials`].
    pub fn effective_repo_credentials(
        &self,
        url: &str,
    ) -> Result<Option<CredentialsSource>, StoreError> {
        if let Some(own) = self.repo_credentials(url)? {
            return Ok(Some(CredentialsSource::Own(own)));
        }
        let templates = self.credential_templates();
        Ok(
            matching_template(&templates, url).map(|t| CredentialsSource::Template {
                url: t.url.clone(),
                credentials: t.credentials.clone(),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(url: &str, password: &str) -> CredentialTemplate {
        CredentialTemplate {
            url: url.into(),
            secret: password.into(),
            credentials: RepoCredentials {
                username: "git".into(),
                password: password.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_longest_prefix_wins_after_normalising() {
        let templates = [
            template("https://git.example.com/org", "org"),
            template("https://git.example.com/org/team/", "team"),
            template("https://GIT.example.com/org/team/deep.git", "deep"),
        ];
        let find = |url: &str| matching_template(&templates, url).map(|t| t.secret.as_str());
        assert_eq!(find("https://git.example.com/org/team/a.git"), Some("team"));
        assert_eq!(find("https://git.example.com/org/b"), Some("org"));
        assert_eq!(find("https://git.example.com/org/team/deep"), Some("deep"));
        assert_eq!(find("https://other.example.com/org/x"), None);
    }

    #[test]
    fn own_credentials_win_over_a_template() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_credential_templates(vec![template("https://h/org", "tpl")]);
        let got = store
            .effective_repo_credentials("https://h/org/a")
            .unwrap()
            .unwrap();
        assert_eq!(got.template_url(), Some("https://h/org"));
        assert_eq!(got.credentials().password, "tpl");
        store
            .put_repo_credentials(
                "https://h/org/a",
                Some(&RepoCredentials {
                    username: "me".into(),
                    password: "own".into(),
                    ..Default::default()
                }),
            )
            .unwrap();
        let got = store
            .effective_repo_credentials("https://h/org/a")
            .unwrap()
            .unwrap();
        assert_eq!(got.template_url(), None);
        assert_eq!(got.credentials().password, "own");
        assert_eq!(
            store.effective_repo_credentials("https://h/x").unwrap(),
            None
        );
    }
}
