//! Argo CD-compatible `Application` resources: types, parsing, validation.
//!
//! Only the fields Flotilla acts on are typed; the full document is kept in
//! `raw` so nothing a user wrote is lost when it is shown back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// apiVersion of Argo CD resources.
pub const ARGO_API_VERSION: &str = "argoproj.io/v1alpha1";

/// Errors from reading Application resources.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The text is not valid YAML/JSON.
    #[error("{origin}: invalid YAML{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Yaml {
        origin: String,
        line: Option<usize>,
        message: String,
    },
    /// The document parsed but a field is missing or wrong.
    #[error("{origin}: Application {name:?}: {field}: {message}")]
    Invalid {
        origin: String,
        name: String,
        field: String,
        message: String,
    },
}

/// Object metadata (the subset Flotilla uses).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `resources-finalizer.argocd.argoproj.io` (or its `/foreground`,
    /// `/background` forms) makes deleting the Application delete its
    /// objects: see [`crate::deletion`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

/// An Argo CD `Application`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ApplicationSpec,
}

/// `Application.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    #[serde(default = "default_project")]
    pub project: String,
    #[serde(default)]
    pub source: ApplicationSource,
    #[serde(default)]
    pub destination: ApplicationDestination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_policy: Option<SyncPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_differences: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i64>,
}

fn default_project() -> String {
    "default".to_owned()
}

fn default_revision() -> String {
    "HEAD".to_owned()
}

/// `spec.source`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSource {
    #[serde(default, rename = "repoURL")]
    pub repo_url: String,
    #[serde(default)]
    pub path: String,
    /// A chart in the Helm repository at `repo_url` (then `repo_url` is
    /// not Git, `target_revision` is a chart version or constraint, and
    /// `path` must be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chart: String,
    #[serde(default = "default_revision")]
    pub target_revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectorySource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomize: Option<serde_json::Value>,
}

impl Default for ApplicationSource {
    fn default() -> Self {
        Self {
            repo_url: String::new(),
            path: String::new(),
            chart: String::new(),
            target_revision: default_revision(),
            directory: None,
            helm: None,
            kustomize: None,
        }
    }
}

/// `spec.source.directory`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectorySource {
    #[serde(default)]
    pub recurse: bool,
    /// Glob (or `{a,b}` list) of file paths to include, relative to `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
    /// Glob of file paths to exclude, relative to `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
}

/// `spec.destination`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `spec.syncPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automated: Option<AutomatedSync>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_options: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryStrategy>,
}

/// `spec.syncPolicy.automated`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutomatedSync {
    #[serde(default)]
    pub prune: bool,
    #[serde(default)]
    pub self_heal: bool,
    #[serde(default)]
    pub allow_empty: bool,
}

/// `spec.syncPolicy.retry`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryStrategy {
    #[serde(default)]
    pub limit: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// `spec.syncPolicy.retry.backoff`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<String>,
}

impl Application {
    /// The cluster this application targets: `destination.name`, else
    /// `destination.server` (matched against a cluster's server URL).
    pub fn destination_key(&self) -> Option<&str> {
        self.spec
            .destination
            .name
            .as_deref()
            .or(self.spec.destination.server.as_deref())
    }
}

/// Parses every `Application` document in a YAML (or JSON) stream.
///
/// Documents of other kinds are skipped (a directory of Applications may
/// hold other resources too). `origin` names the file in error messages.
///
/// # Errors
/// Invalid YAML (with the line), or an Application missing a required field.
pub fn parse_applications(text: &str, origin: &str) -> Result<Vec<Application>, ModelError> {
    let docs = crate::yaml::parse_documents(text).map_err(|e| ModelError::Yaml {
        origin: origin.to_owned(),
        line: e.line,
        message: e.message,
    })?;
    let mut apps = Vec::new();
    for doc in docs {
        if doc.get("kind").and_then(|k| k.as_str()) != Some("Application") {
            continue;
        }
        apps.push(application_from_value(doc, origin)?);
    }
    Ok(apps)
}

/// Converts one parsed document into a validated Application.
///
/// # Errors
/// [`ModelError::Invalid`] naming the field.
pub fn application_from_value(
    doc: serde_json::Value,
    origin: &str,
) -> Result<Application, ModelError> {
    let name = doc
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let invalid = |field: &str, message: String| ModelError::Invalid {
        origin: origin.to_owned(),
        name: name.clone(),
        field: field.to_owned(),
        message,
    };
    let api_version = doc
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if api_version != ARGO_API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!("must be {ARGO_API_VERSION}, got {api_version:?}"),
        ));
    }
    let app: Application =
        serde_json::from_value(doc.clone()).map_err(|e| invalid("spec", e.to_string()))?;
    validate(&app).map_err(|(field, message)| invalid(field, message))?;
    Ok(app)
}

fn validate(app: &Application) -> Result<(), (&'static str, String)> {
    let name = &app.metadata.name;
    if name.is_empty() {
        return Err(("metadata.name", "is required".into()));
    }
    if !is_dns_subdomain(name) {
        return Err((
            "metadata.name",
            format!("{name:?} must be a lowercase RFC 1123 subdomain"),
        ));
    }
    if app.spec.source.repo_url.is_empty() {
        return Err(("spec.source.repoURL", "is required".into()));
    }
    if app.destination_key().is_none() {
        return Err((
            "spec.destination",
            "one of name or server is required".into(),
        ));
    }
    if !app.spec.source.chart.is_empty() && !app.spec.source.path.is_empty() {
        return Err((
            "spec.source.chart",
            "a Helm repository chart has no path: set either chart or path".into(),
        ));
    }
    // A path that escapes the repository is not refused here: an
    // Application loaded from Git must still appear, with the error on it
    // (the renderer refuses the path, see `render::check_app_path`). The
    // API refuses it up front (`fleet::parse_single_application`).
    Ok(())
}

/// RFC 1123 subdomain check, as Kubernetes applies to object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUESTBOOK: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: guestbook
  namespace: argocd
spec:
  project: default
  source:
    repoURL: https://github.com/argoproj/argocd-example-apps.git
    targetRevision: HEAD
    path: guestbook
    directory:
      recurse: true
  destination:
    name: sim-1
    namespace: guestbook
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
    - CreateNamespace=true
"#;

    #[test]
    fn parses_argo_application() {
        let apps = parse_applications(GUESTBOOK, "apps/guestbook.yaml").unwrap();
        assert_eq!(apps.len(), 1);
        let app = &apps[0];
        assert_eq!(app.metadata.name, "guestbook");
        assert!(app.spec.source.directory.as_ref().unwrap().recurse);
        assert_eq!(app.destination_key(), Some("sim-1"));
        let auto = app
            .spec
            .sync_policy
            .as_ref()
            .unwrap()
            .automated
            .as_ref()
            .unwrap();
        assert!(auto.prune && auto.self_heal && !auto.allow_empty);
    }

    #[test]
    fn missing_repo_url_names_the_field() {
        let text = GUESTBOOK.replace(
            "    repoURL: https://github.com/argoproj/argocd-example-apps.git\n",
            "",
        );
        let err = parse_applications(&text, "a.yaml").unwrap_err().to_string();
        assert!(err.contains("spec.source.repoURL"), "{err}");
        assert!(err.contains("guestbook"), "{err}");
    }

    #[test]
    fn path_escaping_repository_still_loads() {
        // The error belongs on the application (at render), not on the
        // file that declares it.
        let text = GUESTBOOK.replace("path: guestbook", "path: ../etc");
        let apps = parse_applications(&text, "a.yaml").unwrap();
        assert_eq!(apps[0].spec.source.path, "../etc");
    }

    #[test]
    fn chart_source_parses_and_excludes_path() {
        let text = GUESTBOOK.replace("    path: guestbook\n", "    chart: podinfo\n");
        let apps = parse_applications(&text, "a.yaml").unwrap();
        assert_eq!(apps[0].spec.source.chart, "podinfo");
        assert!(apps[0].spec.source.path.is_empty());

        let text = GUESTBOOK.replace("path: guestbook", "path: guestbook\n    chart: podinfo");
        let err = parse_applications(&text, "a.yaml").unwrap_err().to_string();
        assert!(err.contains("spec.source.chart"), "{err}");
    }

    #[test]
    fn yaml_error_has_line() {
        let err = parse_applications("a: b\n  c: : d\n", "bad.yaml").unwrap_err();
        match err {
            ModelError::Yaml { line, origin, .. } => {
                assert_eq!(origin, "bad.yaml");
                assert!(line.is_some());
            }
            other => panic!("unexpected {other}"),
        }
    }
}
