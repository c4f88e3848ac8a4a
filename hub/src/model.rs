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
    /// Argo CD's multi-source Applications: when not empty, `source` is
    /// ignored (as Argo CD ignores it) and these are rendered in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<ApplicationSource>,
}

impl ApplicationSpec {
    /// Whether `spec.sources` is used (Argo CD's `HasMultipleSources`).
    pub fn has_multiple_sources(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The sources that are rendered: `spec.sources`, or `spec.source`.
    pub fn effective_sources(&self) -> &[ApplicationSource] {
        if self.has_multiple_sources() {
            &self.sources
        } else {
            std::slice::from_ref(&self.source)
        }
    }
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
    /// Config management plugins are not supported; kept so that an
    /// application using one gets an error instead of a plain render.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<serde_json::Value>,
    /// In `spec.sources`: this source's files are `$<ref>/…` in the other
    /// sources' Helm `valueFiles`.
    #[serde(default, rename = "ref", skip_serializing_if = "String::is_empty")]
    pub ref_name: String,
    /// In `spec.sources`: a name for this source, used in messages.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
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
            plugin: None,
            ref_name: String::new(),
            name: String::new(),
        }
    }
}

impl ApplicationSource {
    /// A source of `spec.sources` that only provides files to the others
    /// (a `ref` without `path` or `chart`): it is fetched, not rendered.
    pub fn is_ref_only(&self) -> bool {
        !self.ref_name.is_empty() && self.path.is_empty() && self.chart.is_empty()
    }
}

/// `spec.source.directory`. Unknown fields are refused, so a misspelt
/// option is an error rather than silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectorySource {
    #[serde(default)]
    pub recurse: bool,
    /// Glob (or `{a,b}` list) of file paths to include, relative to `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
    /// Glob of file paths to exclude, relative to `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
    /// Options of `.jsonnet` files.
    #[serde(default, skip_serializing_if = "JsonnetSource::is_empty")]
    pub jsonnet: JsonnetSource,
    /// Read every file, not only `.yaml`/`.yml`/`.json`/`.jsonnet` ones
    /// (include/exclude then choose).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_extension_filter: bool,
}

impl DirectorySource {
    /// Argo CD's `IsZero` plus its normalisation: options that make the
    /// source explicitly a directory (then Kustomize and Helm files in the
    /// path are not looked at).
    pub fn is_explicit(&self) -> bool {
        self.recurse
            || !self.jsonnet.is_empty()
            || self.disable_extension_filter
            || self.include.as_deref().is_some_and(|s| !s.is_empty())
            || self.exclude.as_deref().is_some_and(|s| !s.is_empty())
    }
}

/// `spec.source.directory.jsonnet`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonnetSource {
    /// `std.extVar` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ext_vars: Vec<JsonnetVar>,
    /// Top-level arguments (when a file evaluates to a function).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tlas: Vec<JsonnetVar>,
    /// Library directories (relative to the repository root) searched by
    /// `import`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub libs: Vec<String>,
}

impl JsonnetSource {
    /// No option set.
    pub fn is_empty(&self) -> bool {
        self.ext_vars.is_empty() && self.tlas.is_empty() && self.libs.is_empty()
    }
}

/// A Jsonnet external variable or top-level argument.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonnetVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
    /// `value` is Jsonnet code rather than a string.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub code: bool,
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
    validate(&app).map_err(|(field, message)| invalid(&field, message))?;
    Ok(app)
}

fn validate(app: &Application) -> Result<(), (String, String)> {
    let name = &app.metadata.name;
    if name.is_empty() {
        return Err(("metadata.name".into(), "is required".into()));
    }
    if !is_dns_subdomain(name) {
        return Err((
            "metadata.name".into(),
            format!("{name:?} must be a lowercase RFC 1123 subdomain"),
        ));
    }
    if app.spec.has_multiple_sources() {
        validate_sources(&app.spec.sources)?;
    } else if app.spec.source.repo_url.is_empty() {
        return Err(("spec.source.repoURL".into(), "is required".into()));
    }
    if app.destination_key().is_none() {
        return Err((
            "spec.destination".into(),
            "one of name or server is required".into(),
        ));
    }
    if !app.spec.has_multiple_sources()
        && !app.spec.source.chart.is_empty()
        && !app.spec.source.path.is_empty()
    {
        return Err((
            "spec.source.chart".into(),
            "a Helm repository chart has no path: set either chart or path".into(),
        ));
    }
    // A path that escapes the repository is not refused here: an
    // Application loaded from Git must still appear, with the error on it
    // (the renderer refuses the path, see `render::check_app_path`). The
    // API refuses it up front (`fleet::parse_single_application`).
    Ok(())
}

/// Checks `spec.sources` as Argo CD does: each source has a `repoURL` and
/// one of `path`, `chart` or `ref`; `chart` excludes `path`; `ref` names
/// are unique, made of letters, digits, `_` and `-`, and a `ref` source
/// is not a Helm repository chart. Used for Applications and for
/// ApplicationSet templates alike.
///
/// # Errors
/// The field (`spec.sources[i].…`) and what is wrong with it.
pub fn validate_sources(sources: &[ApplicationSource]) -> Result<(), (String, String)> {
    let mut refs = std::collections::BTreeMap::new();
    for (i, s) in sources.iter().enumerate() {
        let field = |f: &str| format!("spec.sources[{i}]{f}");
        if s.repo_url.trim().is_empty() {
            return Err((field(".repoURL"), "is required".into()));
        }
        if s.path.is_empty() && s.chart.is_empty() && s.ref_name.is_empty() {
            return Err((field(""), "one of path, chart or ref is required".into()));
        }
        if !s.chart.is_empty() && !s.path.is_empty() {
            return Err((
                field(".chart"),
                "a Helm repository chart has no path: set either chart or path".into(),
            ));
        }
        if s.ref_name.is_empty() {
            continue;
        }
        if !s
            .ref_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err((
                field(".ref"),
                format!(
                    "{:?} may only contain letters, digits, '_' and '-'",
                    s.ref_name
                ),
            ));
        }
        if !s.chart.is_empty() {
            return Err((
                field(".ref"),
                "a ref source cannot be a Helm repository chart (chart is set); as in Argo CD, \
                 only Git sources provide $ref value files"
                    .into(),
            ));
        }
        if let Some(first) = refs.insert(s.ref_name.clone(), i) {
            return Err((
                field(".ref"),
                format!(
                    "{:?} is also the ref of spec.sources[{first}]; refs must be unique",
                    s.ref_name
                ),
            ));
        }
    }
    Ok(())
}

/// Parses and checks a `spec.sources` list (as JSON), e.g. from an
/// ApplicationSet template.
///
/// # Errors
/// A source that does not parse or fails [`validate_sources`], as
/// `field: message`.
pub fn sources_from_value(value: &serde_json::Value) -> Result<Vec<ApplicationSource>, String> {
    let sources: Vec<ApplicationSource> =
        serde_json::from_value(value.clone()).map_err(|e| format!("spec.sources: {e}"))?;
    validate_sources(&sources).map_err(|(field, message)| format!("{field}: {message}"))?;
    Ok(sources)
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

/// The origin of an application or set written through the API over one
/// with origin `existing`: a child of an in-hub application stays its
/// child (an edit, which the parent's `selfHeal` undoes), an application an
/// ApplicationSet generated stays the set's, anything else becomes `api`.
pub fn origin_after_api_edit(existing: Option<&str>) -> String {
    match existing {
        // An edit of an application an ApplicationSet generated stays the
        // set's (undone at its next evaluation except for the fields it
        // preserves or ignores, as in Argo CD).
        Some(o) if o.starts_with("app:") || o.starts_with("appset:") => o.to_owned(),
        _ => "api".to_owned(),
    }
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
