//! Argo CD-compatible `ApplicationSet`: parsing, generators and templating.
//!
//! Everything here is a pure function from (ApplicationSet, cluster
//! inventory, repository files) to Applications; the hub's lifecycle code
//! decides what to create, update or delete.

pub mod api;
pub mod generators;
pub mod ignore;
pub mod lifecycle;
pub mod pathmatch;
pub mod selector;
pub mod sprig;
pub mod template;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// The Argo CD project the cluster is scoped to (a cluster Secret's
    /// `project`), offered as the `project` parameter; empty when none.
    #[serde(default)]
    pub project: String,
}

/// Read access to repository files for the `git` generator.
pub trait GitFiles {
    /// Every file path (relative, `/`-separated) at `revision`.
    ///
    /// # Errors
    /// The repository or revision cannot be read.
    fn list(&self, repo_url: &str, revision: &str) -> Result<Vec<String>, String>;
    /// [`GitFiles::list`] for a generator with `requeueAfterSeconds`: how
    /// long a fetched revision may be reused before fetching again (zero:
    /// only when a refresh is asked for). The default ignores it.
    ///
    /// # Errors
    /// The repository or revision cannot be read.
    fn list_for_generator(
        &self,
        repo_url: &str,
        revision: &str,
        requeue: Option<Duration>,
    ) -> Result<Vec<String>, String> {
        let _ = requeue;
        self.list(repo_url, revision)
    }
    /// One file's content.
    ///
    /// # Errors
    /// The file cannot be read.
    fn read(&self, repo_url: &str, revision: &str, path: &str) -> Result<Vec<u8>, String>;
}

/// Files of a local checkout, for offline `appset generate --repo-root`:
/// every repoURL maps to the same directory. Revision `HEAD` (the
/// default) reads the files as they are on disk, so changes can be tried
/// before they are committed; any other revision (branch, tag, commit)
/// reads the tree of that revision from the checkout's own Git.
pub struct LocalCheckout {
    root: PathBuf,
    /// Revision → files of its tree, read once.
    trees: Mutex<HashMap<String, Arc<Vec<crate::source::SourceFile>>>>,
    /// A scratch mirror of the checkout's Git, made on first use.
    mirror: Mutex<Option<(tempfile::TempDir, crate::source::GitCache)>>,
}

impl LocalCheckout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            trees: Mutex::default(),
            mirror: Mutex::default(),
        }
    }

    /// Whether `revision` means the files on disk.
    fn is_working_tree(revision: &str) -> bool {
        revision.is_empty() || revision == "HEAD"
    }

    /// The files of `revision` in the checkout's Git.
    fn tree(&self, revision: &str) -> Result<Arc<Vec<crate::source::SourceFile>>, String> {
        if let Some(t) = self
            .trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(revision)
        {
            return Ok(t.clone());
        }
        let root = self.root.to_string_lossy().into_owned();
        let not_git = |e: String| {
            format!(
                "revision {revision:?}: cannot read it from the Git of {root} ({e}); revision HEAD reads the files on disk"
            )
        };
        let mut mirror = self.mirror.lock().unwrap_or_else(|p| p.into_inner());
        if mirror.is_none() {
            let dir = tempfile::tempdir().map_err(|e| not_git(e.to_string()))?;
            let cache = crate::source::GitCache::new(dir.path().join("git"));
            *mirror = Some((dir, cache));
        }
        let Some((_, cache)) = mirror.as_ref() else {
            return Err(not_git("no scratch directory".into()));
        };
        let commit = cache
            .fetch(&root, revision)
            .map_err(|e| not_git(e.to_string()))?;
        let files = Arc::new(
            cache
                .read_dir(&root, &commit, "", true)
                .map_err(|e| not_git(e.to_string()))?,
        );
        self.trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(revision.to_owned(), files.clone());
        Ok(files)
    }
}

impl GitFiles for LocalCheckout {
    fn list(&self, _repo_url: &str, revision: &str) -> Result<Vec<String>, String> {
        if !Self::is_working_tree(revision) {
            return Ok(self
                .tree(revision)?
                .iter()
                .map(|f| f.path.clone())
                .collect());
        }
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

    fn read(&self, _repo_url: &str, revision: &str, path: &str) -> Result<Vec<u8>, String> {
        if !Self::is_working_tree(revision) {
            return self
                .tree(revision)?
                .iter()
                .find(|f| f.path == path)
                .map(|f| f.content.clone())
                .ok_or_else(|| format!("{path}: no such file at {revision}"));
        }
        let rel = Path::new(path);
        if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
            return Err(format!("{path}: outside the repository"));
        }
        std::fs::read(self.root.join(rel)).map_err(|e| format!("{path}: {e}"))
    }
}

/// A generator or template option that applies to every set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Match `git` file patterns with doublestar instead of `git ls-files`
    /// pathspecs (Argo CD's `--enable-new-git-file-globbing`).
    pub new_git_file_globbing: bool,
}

/// Condition type: the set uses something Flotilla accepts beyond Argo CD.
pub const NOTICE_EXTENSION: &str = "FlotillaExtension";
/// Condition type: a field the set gives is not applied (not implemented
/// yet, or not applied by Argo CD either); the message names it.
pub const NOTICE_UNSUPPORTED: &str = "UnsupportedField";
/// Condition type: a `templatePatch` tried to change `spec.project`; the
/// template's project was kept, as Argo CD keeps it.
pub const NOTICE_PROJECT_REFUSED: &str = "ProjectChangeRefused";

/// Something worth a condition on the set that does not stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// One of the `NOTICE_*` condition types.
    pub kind: &'static str,
    pub message: String,
    /// The generated application concerned, if any.
    pub application: String,
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
    /// Conditions that do not stop the set (see [`Notice`]).
    pub notices: Vec<Notice>,
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
    /// `spec.preservedFields`.
    pub preserved_fields: PreservedFields,
    /// `spec.ignoreApplicationDifferences`.
    pub ignore_differences: Vec<IgnoreRule>,
    /// `spec.strategy` (RollingSync steps, deletion order).
    pub strategy: crate::rollout::rolling_sync::Strategy,
    /// Set-level conditions found while reading the spec (fields not
    /// applied, extensions).
    pub notices: Vec<Notice>,
    /// The whole document as written.
    pub raw: Value,
}

/// `spec.preservedFields`: annotation and label keys whose current value
/// on a generated Application is kept when the set updates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreservedFields {
    pub annotations: Vec<String>,
    pub labels: Vec<String>,
}

/// Annotations Argo CD always preserves (notifications state, refresh and
/// hydrate requests).
pub const DEFAULT_PRESERVED_ANNOTATIONS: [&str; 3] = [
    "notified.notifications.argoproj.io",
    "argocd.argoproj.io/refresh",
    "argocd.argoproj.io/hydrate",
];

/// One `spec.ignoreApplicationDifferences` entry: fields of a generated
/// Application (of the one named, or of every one) that keep their
/// current value when the set updates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreRule {
    pub name: Option<String>,
    pub json_pointers: Vec<String>,
    pub jq_path_expressions: Vec<String>,
}

/// Argo CD's resources finalizer: deleting the Application deletes its
/// objects (with `/foreground` or `/background` propagation).
pub const RESOURCES_FINALIZER: &str = "resources-finalizer.argocd.argoproj.io";

fn is_resources_finalizer(f: &str) -> bool {
    f == RESOURCES_FINALIZER
        || f.strip_prefix(RESOURCES_FINALIZER)
            .is_some_and(|rest| rest == "/foreground" || rest == "/background")
}

/// Whether deleting a generated Application must leave its objects in the
/// clusters. As Argo CD: an Application whose template lists finalizers
/// cascades exactly when one of them is the resources finalizer; one
/// without finalizers gets the resources finalizer unless the set has
/// `preserveResourcesOnDeletion`.
pub fn keeps_objects_on_deletion(app: &Application, preserve_resources_on_deletion: bool) -> bool {
    if app.metadata.finalizers.is_empty() {
        preserve_resources_on_deletion
    } else {
        !app.metadata
            .finalizers
            .iter()
            .any(|f| is_resources_finalizer(f))
    }
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
        let namespace = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let lifecycle = LifecycleFields::parse(spec, namespace.as_deref())
            .map_err(|(field, message)| invalid(&field, message))?;
        Ok(Self {
            name: name.clone(),
            namespace,
            mode: TemplateMode {
                go_template,
                missing_key_error,
            },
            generators,
            template,
            template_patch,
            applications_sync,
            preserve_resources_on_deletion,
            preserved_fields: lifecycle.preserved_fields,
            ignore_differences: lifecycle.ignore_differences,
            strategy: lifecycle.strategy,
            notices: lifecycle.notices,
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
        self.generate_with(clusters, git, GenerateOptions::default())
    }

    /// [`ApplicationSet::generate`] with hub-wide options.
    ///
    /// # Errors
    /// As [`ApplicationSet::generate`].
    pub fn generate_with(
        &self,
        clusters: &[ClusterInfo],
        git: Option<&dyn GitFiles>,
        options: GenerateOptions,
    ) -> Result<Generated, AppSetError> {
        let inputs = Inputs::new(clusters, git, options);
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
                .and_then(|o| {
                    o.iter()
                        .filter(|(k, _)| *k != "selector")
                        .find_map(|(_, body)| body.get("template"))
                })
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
                match self.render_one(&template, &p, &mut out.notices) {
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
        let mut notices = self.notices.clone();
        notices.extend(inputs.notices.into_inner());
        notices.append(&mut out.notices);
        for n in notices {
            if !out.notices.contains(&n) {
                out.notices.push(n);
            }
        }
        Ok(out)
    }

    fn render_one(
        &self,
        template: &Value,
        p: &Params,
        notices: &mut Vec<Notice>,
    ) -> Result<Application, (Option<String>, String)> {
        let mut rendered = render_value(template, p, self.mode).map_err(|e| (None, e))?;
        let name_hint = rendered
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(patch) = &self.template_patch {
            let project = rendered.pointer("/spec/project").cloned();
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
            // As Argo CD: a templatePatch never changes the project (the
            // project is the boundary of what the application may do).
            let patched = rendered.pointer("/spec/project").cloned();
            if patched != project {
                let shown = |v: &Option<Value>| match v {
                    Some(Value::String(s)) => format!("{s:?}"),
                    Some(other) => other.to_string(),
                    None => "unset".to_owned(),
                };
                let app = rendered
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .or(name_hint.as_deref())
                    .unwrap_or_default()
                    .to_owned();
                notices.push(Notice {
                    kind: NOTICE_PROJECT_REFUSED,
                    message: format!(
                        "application {app:?}: templatePatch may not change spec.project (from {} to {}); the template's project is kept",
                        shown(&project),
                        shown(&patched)
                    ),
                    application: app,
                });
                if let Some(spec) = rendered.get_mut("spec").and_then(Value::as_object_mut) {
                    match project {
                        Some(v) => spec.insert("project".into(), v),
                        None => spec.remove("project"),
                    };
                }
            }
        }
        let mut metadata = rendered
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| json!({}));
        // As Argo CD: an application lives in its set's namespace.
        if let Some(meta) = metadata.as_object_mut() {
            match &self.namespace {
                Some(ns) => meta.insert("namespace".into(), json!(ns)),
                None => meta.remove("namespace"),
            };
        }
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
        let app = model::application_from_value(doc, &format!("ApplicationSet {}", self.name))
            .map_err(|e| (name, e.to_string()))?;
        finalizer_notices(&app, notices);
        Ok(app)
    }
}

/// Conditions for finalizers whose meaning Flotilla does not carry out.
fn finalizer_notices(app: &Application, notices: &mut Vec<Notice>) {
    let mut push = |message: String| {
        let n = Notice {
            kind: NOTICE_UNSUPPORTED,
            message,
            application: String::new(),
        };
        if !notices.contains(&n) {
            notices.push(n);
        }
    };
    // The resources finalizer is carried out: the hub sends its deletion
    // decision (with the propagation the finalizer names) to the agents.
    for f in app
        .metadata
        .finalizers
        .iter()
        .filter(|f| !is_resources_finalizer(f))
    {
        push(format!(
            "spec.template.metadata.finalizers: {f:?} is not supported (Flotilla knows {RESOURCES_FINALIZER}[/foreground|/background]); it has no effect"
        ));
    }
}

/// The fields of a set the hub's lifecycle uses, read from `spec`.
struct LifecycleFields {
    strategy: crate::rollout::rolling_sync::Strategy,
    preserved_fields: PreservedFields,
    ignore_differences: Vec<IgnoreRule>,
    notices: Vec<Notice>,
}

/// Every field of an Argo CD `ApplicationSet.spec`.
const SPEC_FIELDS: [&str; 10] = [
    "goTemplate",
    "goTemplateOptions",
    "generators",
    "template",
    "templatePatch",
    "syncPolicy",
    "strategy",
    "preservedFields",
    "applyNestedSelectors",
    "ignoreApplicationDifferences",
];

impl LifecycleFields {
    /// # Errors
    /// (field, message) for invalid values.
    fn parse(spec: &Map<String, Value>, namespace: Option<&str>) -> Result<Self, (String, String)> {
        let mut notices = Vec::new();
        let mut unsupported = |message: String| {
            notices.push(Notice {
                kind: NOTICE_UNSUPPORTED,
                message,
                application: String::new(),
            })
        };
        for k in spec.keys() {
            if !SPEC_FIELDS.contains(&k.as_str()) {
                unsupported(format!(
                    "spec.{k}: not an ApplicationSet field Flotilla knows; ignored"
                ));
            }
        }
        let strings = |v: Option<&Value>, field: &str| -> Result<Vec<String>, (String, String)> {
            match v {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| (field.to_owned(), "must be a list of strings".into()))
                    })
                    .collect(),
                Some(_) => Err((field.to_owned(), "must be a list of strings".into())),
            }
        };
        let preserved = spec.get("preservedFields").filter(|v| !v.is_null());
        let preserved_fields = PreservedFields {
            annotations: strings(
                preserved.and_then(|p| p.get("annotations")),
                "spec.preservedFields.annotations",
            )?,
            labels: strings(
                preserved.and_then(|p| p.get("labels")),
                "spec.preservedFields.labels",
            )?,
        };
        let mut ignore_differences = Vec::new();
        match spec.get("ignoreApplicationDifferences") {
            None | Some(Value::Null) => {}
            Some(Value::Array(rules)) => {
                for (i, r) in rules.iter().enumerate() {
                    let at = format!("spec.ignoreApplicationDifferences[{i}]");
                    let name = match r.get("name") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) if s.is_empty() => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(_) => return Err((format!("{at}.name"), "must be a string".into())),
                    };
                    let json_pointers =
                        strings(r.get("jsonPointers"), &format!("{at}.jsonPointers"))?;
                    for p in &json_pointers {
                        if !p.is_empty() && !p.starts_with('/') {
                            return Err((
                                format!("{at}.jsonPointers"),
                                format!("{p:?} is not a JSON pointer (it starts with /)"),
                            ));
                        }
                    }
                    let jq_path_expressions = strings(
                        r.get("jqPathExpressions"),
                        &format!("{at}.jqPathExpressions"),
                    )?;
                    for e in &jq_path_expressions {
                        ignore::check_jq_path(e)
                            .map_err(|m| (format!("{at}.jqPathExpressions"), m))?;
                    }
                    ignore_differences.push(IgnoreRule {
                        name,
                        json_pointers,
                        jq_path_expressions,
                    });
                }
            }
            Some(_) => {
                return Err((
                    "spec.ignoreApplicationDifferences".into(),
                    "must be a list".into(),
                ));
            }
        }
        let strategy = crate::rollout::rolling_sync::Strategy::parse(spec.get("strategy"))?;
        for message in strategy.unused(spec.get("strategy")) {
            unsupported(message);
        }
        if let Some(ns) = spec
            .get("template")
            .and_then(|t| t.pointer("/metadata/namespace"))
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty() && Some(*ns) != namespace)
        {
            unsupported(format!(
                "spec.template.metadata.namespace: {ns:?} is replaced by the set's namespace ({}), as Argo CD does",
                namespace.map_or_else(|| "none".to_owned(), |n| format!("{n:?}"))
            ));
        }
        Ok(Self {
            strategy,
            preserved_fields,
            ignore_differences,
            notices,
        })
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
mod conformance_tests;
#[cfg(test)]
mod tests;
