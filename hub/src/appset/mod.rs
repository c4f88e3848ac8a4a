//! Argo CD-compatible `ApplicationSet`: parsing, generators and templating.
//!
//! Everything here is a pure function from (ApplicationSet, cluster
//! inventory, repository files) to Applications; the hub's lifecycle code
//! decides what to create, update or delete.

pub mod api;
pub mod cli;
pub mod generators;
pub mod lifecycle;
pub mod selector;
pub mod sprig;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::model::{self, ARGO_API_VERSION, Application};
use generators::Inputs;
use template::{Params, TemplateMode, render_string, render_value};

/// A cluster as generators see it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    #[serde(default)]
    pub server: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Read access to repository files for the `git` generator.
pub trait GitFiles {
    /// Every file path (relative, `/`-separated) at `revision`.
    ///
    /// # Errors
    /// The repository or revision cannot be read.
    fn list(&self, repo_url: &str, revision: &str) -> Result<Vec<String>, String>;
    /// One file's content.
    ///
    /// # Errors
    /// The file cannot be read.
    fn read(&self, repo_url: &str, revision: &str, path: &str) -> Result<Vec<u8>, String>;
}

/// Files of a local checkout, for offline `appset generate --repo-root`:
/// every repoURL and revision maps to the same directory.
pub struct LocalCheckout {
    root: PathBuf,
}

impl LocalCheckout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl GitFiles for LocalCheckout {
    fn list(&self, _repo_url: &str, _revision: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&self.root)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| e.file_name() != ".git")
        {
            let entry = entry.map_err(|e| e.to_string())?;
            if entry.file_type().is_file()
                && let Ok(rel) = entry.path().strip_prefix(&self.root)
            {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&self, _repo_url: &str, _revision: &str, path: &str) -> Result<Vec<u8>, String> {
        let rel = Path::new(path);
        if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
            return Err(format!("{path}: outside the repository"));
        }
        std::fs::read(self.root.join(rel)).map_err(|e| format!("{path}: {e}"))
    }
}

/// Errors that stop a whole ApplicationSet (nothing is created or deleted).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppSetError {
    #[error("{origin}: invalid YAML{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Yaml {
        origin: String,
        line: Option<usize>,
        message: String,
    },
    #[error("ApplicationSet {name:?}: {field}: {message}")]
    Invalid {
        name: String,
        field: String,
        message: String,
    },
    #[error("ApplicationSet {name:?}: generator error: {message}")]
    Generator { name: String, message: String },
    #[error("ApplicationSet {name:?}: generated applications with duplicate name {app:?}")]
    Duplicate { name: String, app: String },
}

/// One generated application that could not be rendered or validated; the
/// others are still produced.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedAppError {
    /// The rendered name when known, else `#<index>`.
    pub application: String,
    pub message: String,
}

/// The result of running an ApplicationSet's generators and template.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub applications: Vec<Application>,
    pub errors: Vec<GeneratedAppError>,
}

/// `spec.syncPolicy.applicationsSync` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ApplicationsSync {
    #[serde(rename = "create-only")]
    CreateOnly,
    #[serde(rename = "create-update")]
    CreateUpdate,
    #[serde(rename = "create-delete")]
    CreateDelete,
    #[default]
    #[serde(rename = "sync")]
    Sync,
}

impl ApplicationsSync {
    pub fn allows_update(self) -> bool {
        matches!(self, Self::CreateUpdate | Self::Sync)
    }
    pub fn allows_delete(self) -> bool {
        matches!(self, Self::CreateDelete | Self::Sync)
    }
}

/// A parsed and validated ApplicationSet.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplicationSet {
    pub name: String,
    pub namespace: Option<String>,
    pub mode: TemplateMode,
    pub generators: Vec<Value>,
    /// `spec.template` as written (metadata + spec).
    pub template: Value,
    pub template_patch: Option<String>,
    pub applications_sync: ApplicationsSync,
    pub preserve_resources_on_deletion: bool,
    /// The whole document as written.
    pub raw: Value,
}

/// Parses every `ApplicationSet` in a YAML stream (other kinds skipped).
///
/// # Errors
/// YAML errors with the line; invalid sets naming the field.
pub fn parse_application_sets(
    text: &str,
    origin: &str,
) -> Result<Vec<ApplicationSet>, AppSetError> {
    let docs = crate::yaml::parse_documents(text).map_err(|e| AppSetError::Yaml {
        origin: origin.to_owned(),
        line: e.line,
        message: e.message,
    })?;
    docs.into_iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("ApplicationSet"))
        .map(ApplicationSet::from_value)
        .collect()
}

impl ApplicationSet {
    /// Validates one parsed document.
    ///
    /// # Errors
    /// [`AppSetError::Invalid`] naming the field.
    pub fn from_value(doc: Value) -> Result<Self, AppSetError> {
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let invalid = |field: &str, message: String| AppSetError::Invalid {
            name: name.clone(),
            field: field.to_owned(),
            message,
        };
        let api = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if api != ARGO_API_VERSION {
            return Err(invalid(
                "apiVersion",
                format!("must be {ARGO_API_VERSION}, got {api:?}"),
            ));
        }
        if name.is_empty() || !model::is_dns_subdomain(&name) {
            return Err(invalid(
                "metadata.name",
                format!("{name:?} must be a lowercase RFC 1123 subdomain"),
            ));
        }
        let spec = doc
            .get("spec")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("spec", "is required".into()))?;
        let go_template = match spec.get("goTemplate") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("spec.goTemplate", "must be a boolean".into())),
        };
        let mut missing_key_error = false;
        if let Some(opts) = spec.get("goTemplateOptions").filter(|v| !v.is_null()) {
            let opts = opts
                .as_array()
                .ok_or_else(|| invalid("spec.goTemplateOptions", "must be a list".into()))?;
            for o in opts {
                match o.as_str() {
                    Some("missingkey=error") | Some("missingkey=zero") if !go_template => {
                        return Err(invalid(
                            "spec.goTemplateOptions",
                            "only applies with goTemplate: true".into(),
                        ));
                    }
                    Some("missingkey=error") => missing_key_error = true,
                    Some("missingkey=default" | "missingkey=invalid" | "missingkey=zero") => {
                        missing_key_error = false
                    }
                    other => {
                        let shown = match other {
                            Some(text) => format!("{text:?}"),
                            None => o.to_string(),
                        };
                        return Err(invalid(
                            "spec.goTemplateOptions",
                            format!(
                                "unsupported option {shown} (supported: missingkey=default|invalid|zero|error)"
                            ),
                        ));
                    }
                }
            }
        }
        let generators = spec
            .get("generators")
            .and_then(Value::as_array)
            .filter(|g| !g.is_empty())
            .ok_or_else(|| {
                invalid(
                    "spec.generators",
                    "at least one generator is required".into(),
                )
            })?
            .clone();
        let template = spec
            .get("template")
            .filter(|t| t.is_object())
            .cloned()
            .ok_or_else(|| invalid("spec.template", "is required".into()))?;
        let template_patch = match spec.get("templatePatch") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if go_template => Some(s.clone()),
            Some(Value::String(_)) => {
                return Err(invalid(
                    "spec.templatePatch",
                    "requires goTemplate: true".into(),
                ));
            }
            Some(_) => return Err(invalid("spec.templatePatch", "must be a string".into())),
        };
        let policy = spec.get("syncPolicy");
        let applications_sync = match policy.and_then(|p| p.get("applicationsSync")) {
            None | Some(Value::Null) => ApplicationsSync::Sync,
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                invalid(
                    "spec.syncPolicy.applicationsSync",
                    format!("{v} is not one of create-only, create-update, create-delete, sync"),
                )
            })?,
        };
        let preserve_resources_on_deletion = policy
            .and_then(|p| p.get("preserveResourcesOnDeletion"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            name: name.clone(),
            namespace: doc
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
            mode: TemplateMode {
                go_template,
                missing_key_error,
            },
            generators,
            template,
            template_patch,
            applications_sync,
            preserve_resources_on_deletion,
            raw: doc,
        })
    }

    /// Runs the generators and renders the template for each parameter set.
    ///
    /// # Errors
    /// A generator failure or duplicate generated names stop the whole set
    /// (so the caller keeps its last good result); a single application
    /// that fails to render or validate is reported in
    /// [`Generated::errors`] and skipped.
    pub fn generate(
        &self,
        clusters: &[ClusterInfo],
        git: Option<&dyn GitFiles>,
    ) -> Result<Generated, AppSetError> {
        let inputs = Inputs { clusters, git };
        let mut out = Generated::default();
        let mut seen = BTreeSet::new();
        let mut index = 0usize;
        for (i, g) in self.generators.iter().enumerate() {
            let at = format!("spec.generators[{i}]");
            let params =
                generators::generate(g, &inputs, self.mode, &at, 0).map_err(|message| {
                    AppSetError::Generator {
                        name: self.name.clone(),
                        message,
                    }
                })?;
            // Argo CD keeps a generator's template override inside the
            // generator body (`clusters: {selector, template}`).
            let over = g
                .as_object()
                .and_then(|o| o.values().find_map(|body| body.get("template")))
                .filter(|t| t.is_object());
            let template = match over {
                Some(over) => {
                    let mut base = self.template.clone();
                    override_fields(&mut base, over);
                    base
                }
                None => self.template.clone(),
            };
            for p in params {
                index += 1;
                match self.render_one(&template, &p) {
                    Ok(app) => {
                        if !seen.insert(app.metadata.name.clone()) {
                            return Err(AppSetError::Duplicate {
                                name: self.name.clone(),
                                app: app.metadata.name,
                            });
                        }
                        out.applications.push(app);
                    }
                    Err((application, message)) => out.errors.push(GeneratedAppError {
                        application: application.unwrap_or_else(|| format!("#{index}")),
                        message,
                    }),
                }
            }
        }
        Ok(out)
    }

    fn render_one(
        &self,
        template: &Value,
        p: &Params,
    ) -> Result<Application, (Option<String>, String)> {
        let mut rendered = render_value(template, p, self.mode).map_err(|e| (None, e))?;
        let name_hint = rendered
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(patch) = &self.template_patch {
            let text = render_string(patch, p, self.mode, None)
                .map_err(|e| (name_hint.clone(), format!("templatePatch: {e}")))?;
            let patch: Value = serde_saphyr::from_str(&text).map_err(|e| {
                (
                    name_hint.clone(),
                    format!("templatePatch: invalid YAML: {e}"),
                )
            })?;
            if patch.is_object() {
                merge_patch(&mut rendered, &patch);
            } else if !patch.is_null() {
                return Err((
                    name_hint,
                    "templatePatch: must render to a YAML object".into(),
                ));
            }
        }
        let metadata = rendered
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let spec = rendered.get("spec").cloned().unwrap_or_else(|| json!({}));
        let name = metadata
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(name_hint);
        let doc = json!({
            "apiVersion": ARGO_API_VERSION,
            "kind": "Application",
            "metadata": metadata,
            "spec": spec,
        });
        model::application_from_value(doc, &format!("ApplicationSet {}", self.name))
            .map_err(|e| (name, e.to_string()))
    }
}

/// A generator-level `template` overrides `spec.template` field by field:
/// objects merge recursively, and any other non-empty value replaces.
fn override_fields(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if is_empty(v) {
                    continue;
                }
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        override_fields(existing, v)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => {
            if !is_empty(o) {
                *b = o.clone();
            }
        }
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// JSON merge patch (RFC 7386): objects merge, `null` deletes, anything
/// else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests;
