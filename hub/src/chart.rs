//! Renders a Helm chart directory the way `helm template` does, without a
//! `helm` binary: `flotilla cluster add` renders the agent chart (embedded,
//! see [`agent_chart`]) into the manifest it prints, and the e2e tests check
//! the charts in `charts/` and apply them to the simulator.
//!
//! The templates run on gtmpl-ng (Go's text/template in Rust) with its
//! Helm function set. What this adds on top, and where it differs from Helm:
//!
//! - `include` and `tpl`. gtmpl-ng functions are plain `fn` pointers with no
//!   handle on the template being run, so both are implemented by rendering
//!   again: the chart's template sources are kept in a thread-local for the
//!   duration of a render, and `include "name" ctx` parses them into a fresh
//!   template and runs `{{ template "name" . }}` with `ctx`. That re-parses
//!   the chart's templates on every call, which is fine for charts of a few
//!   files. Nesting is capped (see [`MAX_INCLUDE_DEPTH`]) like Helm's.
//! - `nindent`, which gtmpl-ng lacks.
//! - `required` is replaced by one that fails only on a missing value or
//!   the empty string, as Helm's does (gtmpl-ng's also refuses an empty
//!   list).
//! - `has` (and `mustHas`) take the needle first, as Helm's do.
//! - `quote` escapes as Go's `%q` (gtmpl-ng's does not escape at all).
//! - `merge` and `mergeOverwrite` merge deeply, the first map winning in
//!   `merge` and the last in `mergeOverwrite`, as Helm's (gtmpl-ng's are
//!   shallow and let the last win in both). Values are immutable here, so
//!   only the result counts: `{{ $_ := merge $a $b }}` leaves `$a` as it
//!   was, where Helm's changes it.
//! - `kindOf`/`kindIs` are replaced by ones that name Go's kinds as Helm
//!   does (`invalid` for a missing value or `null`, `map`, `slice`,
//!   `string`, `bool`, and `float64` for every number, as values files
//!   give); gtmpl-ng's say `nil`, `object`, `array`, `number`.
//! - `toYaml` is replaced: gtmpl-ng's keeps a map's hash order, Helm's sorts
//!   keys (Go's YAML encoder does). Ours sorts keys and, like Helm's, drops
//!   the trailing newline. Sequences come out flush under their key, as
//!   Helm writes them.
//! - `<no value>` (a missing key) renders as the empty string, as in Helm.
//! - `.Capabilities.APIVersions` is a list of strings, not an object with a
//!   `Has` method; `.Files`, `lookup` and subcharts are not supported.
//! - Values are checked against `values.schema.json` before rendering, as
//!   Helm does, with the subset of JSON Schema in [`crate::chart_schema`]
//!   (a schema using more is refused when the chart is loaded). `NOTES.txt`, files starting with `_` and files that are
//!   not `.yaml`/`.yml` produce no output, as in Helm.
//! - Documents come out in Helm's install order by kind (Namespace,
//!   ServiceAccount, Secret, RBAC, Service, workloads, Ingress, …), then by
//!   template file name, each with a `# Source:` comment.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gtmpl_ng::helm_functions::HELM_FUNCTIONS;
use gtmpl_ng::{Context, Func, FuncError, Template, Value as GoValue};
use serde_json::{Map, Value};

/// How deep `include`/`tpl` may nest before the render is refused; a
/// template that includes itself would otherwise never end.
pub const MAX_INCLUDE_DEPTH: usize = 100;

/// Kubernetes version reported in `.Capabilities`.
pub const KUBE_VERSION: &str = "v1.33.0";

/// Why a chart could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path} as YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("template {file}: {message}")]
    Template { file: String, message: String },
    #[error(
        "values don't meet the schema of chart {chart} (values.schema.json): {}",
        problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Values {
        chart: String,
        problems: Vec<crate::chart_schema::Violation>,
    },
}

/// The release a chart is rendered for (`.Release`).
#[derive(Debug, Clone)]
pub struct Release {
    pub name: String,
    pub namespace: String,
}

impl Release {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
        }
    }
}

/// A chart loaded from a directory: its metadata, default values and
/// template sources.
#[derive(Debug, Clone)]
pub struct Chart {
    pub dir: PathBuf,
    /// `Chart.yaml` as read.
    pub metadata: Map<String, Value>,
    /// `values.yaml` (empty when the chart has none).
    pub values: Value,
    /// Template files by path relative to the chart's parent, e.g.
    /// `flotilla-hub/templates/service.yaml`, in name order.
    pub templates: BTreeMap<String, String>,
    /// `values.schema.json`, which values must meet before rendering.
    pub schema: Option<Value>,
}

impl Chart {
    /// Loads `Chart.yaml`, `values.yaml` and every file under `templates/`.
    ///
    /// # Errors
    /// A file cannot be read or parsed, or `Chart.yaml` lacks a name or
    /// version or is not `apiVersion: v2`.
    pub fn load(dir: &Path) -> Result<Self, HelmError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| HelmError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let chart_yaml = read(&dir.join("Chart.yaml"))?;
        let values_path = dir.join("values.yaml");
        let values = if values_path.exists() {
            Some(read(&values_path)?)
        } else {
            None
        };
        let mut templates = BTreeMap::new();
        let tdir = dir.join("templates");
        if tdir.is_dir() {
            collect_templates(&tdir, "templates", &mut templates)?;
        }
        let schema_path = dir.join("values.schema.json");
        let schema = if schema_path.exists() {
            Some(read(&schema_path)?)
        } else {
            None
        };
        Self::from_sources(dir, &chart_yaml, values.as_deref(), templates)?
            .with_schema(schema.as_deref())
    }

    /// Sets the chart's `values.schema.json` from its text (`None`: no
    /// schema).
    ///
    /// # Errors
    /// The text is not JSON, or the schema uses more of JSON Schema than
    /// [`crate::chart_schema`] implements.
    pub fn with_schema(mut self, schema_json: Option<&str>) -> Result<Self, HelmError> {
        let path = self.dir.join("values.schema.json");
        self.schema = match schema_json {
            None => None,
            Some(text) => {
                let schema: Value = serde_json::from_str(text).map_err(|e| HelmError::Invalid {
                    path: path.clone(),
                    message: format!("not JSON: {e}"),
                })?;
                crate::chart_schema::check_schema(&schema)
                    .map_err(|message| HelmError::Invalid { path, message })?;
                Some(schema)
            }
        };
        Ok(self)
    }

    /// Builds a chart from its sources: `Chart.yaml`, `values.yaml` and the
    /// templates by path relative to the chart directory
    /// (`templates/service.yaml`). `dir` only names the chart in errors.
    ///
    /// # Errors
    /// As [`Chart::load`].
    pub fn from_sources(
        dir: &Path,
        chart_yaml: &str,
        values_yaml: Option<&str>,
        templates: BTreeMap<String, String>,
    ) -> Result<Self, HelmError> {
        let chart_path = dir.join("Chart.yaml");
        let metadata = match parse_yaml(&chart_path, chart_yaml)? {
            Value::Object(map) => map,
            _ => {
                return Err(HelmError::Invalid {
                    path: chart_path,
                    message: "not a mapping".into(),
                });
            }
        };
        for key in ["name", "version"] {
            if !metadata.get(key).is_some_and(Value::is_string) {
                return Err(HelmError::Invalid {
                    path: chart_path,
                    message: format!("{key} must be a string"),
                });
            }
        }
        if metadata.get("apiVersion").and_then(Value::as_str) != Some("v2") {
            return Err(HelmError::Invalid {
                path: chart_path,
                message: "apiVersion must be v2".into(),
            });
        }
        let values = match values_yaml {
            Some(text) => parse_yaml(&dir.join("values.yaml"), text)?,
            None => Value::Object(Map::new()),
        };
        let name = metadata
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let templates = templates
            .into_iter()
            .map(|(path, text)| (format!("{name}/{path}"), text))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            metadata,
            values,
            templates,
            schema: None,
        })
    }

    pub fn name(&self) -> &str {
        self.metadata
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `.Chart` as Helm exposes it: Chart.yaml's keys with the first letter
    /// capitalised (`Name`, `Version`, `AppVersion`, `APIVersion`, …).
    fn chart_object(&self) -> Value {
        let mut out = Map::new();
        for (key, value) in &self.metadata {
            let key = match key.as_str() {
                "apiVersion" => "APIVersion".to_owned(),
                "kubeVersion" => "KubeVersion".to_owned(),
                other => {
                    let mut chars = other.chars();
                    chars
                        .next()
                        .map(|c| c.to_uppercase().chain(chars).collect())
                        .unwrap_or_default()
                }
            };
            out.insert(key, value.clone());
        }
        for key in ["AppVersion", "Description", "Type"] {
            out.entry(key).or_insert(Value::String(String::new()));
        }
        Value::Object(out)
    }
}

/// Renders `chart_dir` for `release` with the chart's values overridden by
/// each of `values_files` in turn (like `helm template -f a.yaml -f b.yaml`).
/// Returns the multi-document YAML, empty documents dropped.
///
/// # Errors
/// The chart or a values file cannot be read, or a template fails; the
/// error names the template file.
pub fn template(
    chart_dir: &Path,
    release: &Release,
    values_files: &[PathBuf],
) -> Result<String, HelmError> {
    let chart = Chart::load(chart_dir)?;
    let mut values = chart.values.clone();
    for file in values_files {
        merge_values(&mut values, read_yaml(file)?);
    }
    render(&chart, release, values)
}

/// Renders a loaded chart with the given, already merged, values.
///
/// # Errors
/// A template fails to parse or execute; the error names the file.
pub fn render(chart: &Chart, release: &Release, values: Value) -> Result<String, HelmError> {
    let values = match values {
        Value::Null => Value::Object(Map::new()),
        v => v,
    };
    if let Some(schema) = &chart.schema {
        let problems = crate::chart_schema::validate(schema, &values);
        if !problems.is_empty() {
            return Err(HelmError::Values {
                chart: chart.name().to_owned(),
                problems,
            });
        }
    }
    let mut top = Map::new();
    top.insert("Values".into(), values);
    top.insert(
        "Release".into(),
        serde_json::json!({
            "Name": release.name,
            "Namespace": release.namespace,
            "Service": "Helm",
            "IsInstall": true,
            "IsUpgrade": false,
            "Revision": 1,
        }),
    );
    top.insert("Chart".into(), chart.chart_object());
    top.insert("Capabilities".into(), capabilities());

    let sources: Vec<(String, String)> = chart
        .templates
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let _guard = SourcesGuard::install(sources);

    let mut docs: Vec<(&str, String)> = Vec::new();
    for (file, text) in &chart.templates {
        let base = file.rsplit('/').next().unwrap_or(file);
        if base.starts_with('_') || !(base.ends_with(".yaml") || base.ends_with(".yml")) {
            continue;
        }
        let mut ctx = top.clone();
        ctx.insert(
            "Template".into(),
            serde_json::json!({
                "Name": file,
                "BasePath": format!("{}/templates", chart.name()),
            }),
        );
        let rendered = render_file(file, text, Value::Object(ctx))?;
        for doc in split_documents(&rendered) {
            docs.push((file, doc.trim_start_matches('\n').trim_end().to_owned()));
        }
    }
    // Stable: within one kind, documents keep file-name order.
    docs.sort_by_key(|(_, doc)| install_rank(doc));
    let mut out = String::new();
    for (file, doc) in docs {
        out.push_str("---\n# Source: ");
        out.push_str(file);
        out.push('\n');
        out.push_str(&doc);
        out.push('\n');
    }
    Ok(out)
}

/// Kinds in the order Helm installs them (and `helm template` prints them):
/// what others depend on comes first. Other kinds follow, by kind name.
const INSTALL_ORDER: &[&str] = &[
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

/// Where a rendered document goes in install order, read from its top-level
/// `kind:` line.
fn install_rank(doc: &str) -> (usize, String) {
    let kind = doc
        .lines()
        .find_map(|l| l.strip_prefix("kind:"))
        .map(|k| k.trim().trim_matches(['"', '\'']).to_owned())
        .unwrap_or_default();
    match INSTALL_ORDER.iter().position(|k| *k == kind) {
        Some(i) => (i, String::new()),
        None => (INSTALL_ORDER.len(), kind),
    }
}

/// Deep-merges `overlay` into `base` as Helm merges values files: maps merge
/// key by key, anything else in the overlay replaces what was there, and a
/// `null` in the overlay deletes the key.
pub fn merge_values(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(&key);
                    continue;
                }
                match base.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge_values(existing, value);
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (_, Value::Null) => {}
        (base, overlay) => *base = overlay,
    }
}

fn capabilities() -> Value {
    let api_versions = [
        "v1",
        "apps/v1",
        "batch/v1",
        "policy/v1",
        "networking.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
        "apiextensions.k8s.io/v1",
        "coordination.k8s.io/v1",
        "autoscaling/v2",
    ];
    serde_json::json!({
        "KubeVersion": {
            "Version": KUBE_VERSION,
            "GitVersion": KUBE_VERSION,
            "Major": "1",
            "Minor": "33",
        },
        "APIVersions": api_versions,
        "HelmVersion": { "Version": "v3.17.0" },
    })
}

fn read_yaml(path: &Path) -> Result<Value, HelmError> {
    let text = std::fs::read_to_string(path).map_err(|source| HelmError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml(path, &text)
}

fn parse_yaml(path: &Path, text: &str) -> Result<Value, HelmError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_saphyr::from_str::<Value>(text).map_err(|e| HelmError::Yaml {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn collect_templates(
    dir: &Path,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
) -> Result<(), HelmError> {
    let read_err = |source| HelmError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = format!("{prefix}/{name}");
        if path.is_dir() {
            collect_templates(&path, &key, out)?;
        } else {
            let text = std::fs::read_to_string(&path).map_err(|source| HelmError::Read {
                path: path.clone(),
                source,
            })?;
            out.insert(key, text);
        }
    }
    Ok(())
}

/// Splits rendered text on `---` lines and keeps the documents that hold
/// more than whitespace and comments.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, docs: &mut Vec<String>| {
        let has_content = current.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        });
        if has_content {
            docs.push(std::mem::take(current));
        } else {
            current.clear();
        }
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut current, &mut docs);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current, &mut docs);
    docs
}

// ---------------------------------------------------------------------------
// Template execution

thread_local! {
    /// The chart's template sources while a render runs on this thread, for
    /// `include` and `tpl`.
    static SOURCES: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
    /// Current `include`/`tpl` nesting.
    static DEPTH: RefCell<usize> = const { RefCell::new(0) };
}

/// Installs the chart's sources for the duration of one render and restores
/// what was there afterwards.
struct SourcesGuard {
    previous: Vec<(String, String)>,
}

impl SourcesGuard {
    fn install(sources: Vec<(String, String)>) -> Self {
        let previous = SOURCES.with(|s| std::mem::replace(&mut *s.borrow_mut(), sources));
        Self { previous }
    }
}

impl Drop for SourcesGuard {
    fn drop(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        SOURCES.with(|s| *s.borrow_mut() = previous);
    }
}

fn functions() -> Vec<(&'static str, Func)> {
    let mut funcs: Vec<(&'static str, Func)> = HELM_FUNCTIONS
        .iter()
        .filter(|(name, _)| {
            !matches!(
                *name,
                "toYaml"
                    | "required"
                    | "kindOf"
                    | "kindIs"
                    | "has"
                    | "mustHas"
                    | "quote"
                    | "merge"
                    | "mustMerge"
                    | "mergeOverwrite"
                    | "mustMergeOverwrite"
            )
        })
        .copied()
        .collect();
    funcs.push(("include", include_fn as Func));
    funcs.push(("tpl", tpl_fn as Func));
    funcs.push(("nindent", nindent_fn as Func));
    funcs.push(("toYaml", to_yaml_fn as Func));
    funcs.push(("required", required_fn as Func));
    funcs.push(("kindOf", kind_of_fn as Func));
    funcs.push(("kindIs", kind_is_fn as Func));
    funcs.push(("has", has_fn as Func));
    funcs.push(("mustHas", has_fn as Func));
    funcs.push(("quote", quote_fn as Func));
    funcs.push(("merge", merge_fn as Func));
    funcs.push(("mustMerge", merge_fn as Func));
    funcs.push(("mergeOverwrite", merge_overwrite_fn as Func));
    funcs.push(("mustMergeOverwrite", merge_overwrite_fn as Func));
    funcs
}

/// Deep-merges `src` into `dst`: a key only `src` has is added, two maps
/// under one key merge recursively; otherwise `dst`'s value stays, unless
/// `overwrite`.
fn deep_merge(
    dst: &mut std::collections::HashMap<String, GoValue>,
    src: &std::collections::HashMap<String, GoValue>,
    overwrite: bool,
) {
    for (key, value) in src {
        match (dst.get_mut(key), value) {
            (Some(GoValue::Map(d) | GoValue::Object(d)), GoValue::Map(s) | GoValue::Object(s)) => {
                deep_merge(d, s, overwrite)
            }
            (Some(existing), _) => {
                if overwrite {
                    *existing = value.clone();
                }
            }
            (None, _) => {
                dst.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_with(args: &[GoValue], overwrite: bool, name: &str) -> Result<GoValue, FuncError> {
    let mut out = std::collections::HashMap::new();
    for arg in args {
        match arg {
            GoValue::Map(m) | GoValue::Object(m) => deep_merge(&mut out, m, overwrite),
            GoValue::Nil | GoValue::NoValue => {}
            other => {
                return Err(FuncError::Generic(format!(
                    "{name}: every argument must be a map, not a {}",
                    go_kind(other)
                )));
            }
        }
    }
    Ok(GoValue::Map(out))
}

/// `merge DST SRC…` as Helm's: deep, and what comes first wins.
fn merge_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    merge_with(args, false, "merge")
}

/// `mergeOverwrite DST SRC…` as Helm's: deep, and what comes last wins.
fn merge_overwrite_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    merge_with(args, true, "mergeOverwrite")
}

/// `quote A B …`: each argument as a Go string literal (`%q`), joined by
/// spaces, a missing one left out, as Helm's. gtmpl-ng's wraps the text in
/// quotes without escaping, so a `"` or a newline in a value broke the
/// YAML (a multi-line value was folded into one line).
fn quote_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let quoted: Vec<String> = args
        .iter()
        .filter(|a| !matches!(a, GoValue::Nil | GoValue::NoValue))
        .map(|a| go_quote(&a.to_string()))
        .collect();
    Ok(GoValue::String(quoted.join(" ")))
}

/// `s` as Go's `%q` writes it: `"`, `\` and control characters escaped.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `has NEEDLE LIST`, in Helm's argument order (gtmpl-ng's takes the list
/// first); a missing list holds nothing.
fn has_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let [needle, list] = args else {
        return Err(FuncError::ExactlyXArgs("has".into(), 2));
    };
    match list {
        GoValue::Nil | GoValue::NoValue => Ok(GoValue::Bool(false)),
        GoValue::Array(items) => Ok(GoValue::Bool(items.contains(needle))),
        other => Err(FuncError::Generic(format!(
            "has: the second argument must be a list, not a {}",
            go_kind(other)
        ))),
    }
}

/// Go's `reflect.Kind` name of a value as Helm's templates see it: a
/// missing value or `null` is `invalid`, numbers are `float64` (Helm reads
/// values files through JSON), lists are `slice`, mappings `map`.
fn go_kind(value: &GoValue) -> &'static str {
    match value {
        GoValue::Nil | GoValue::NoValue => "invalid",
        GoValue::Bool(_) => "bool",
        GoValue::Number(_) => "float64",
        GoValue::String(_) => "string",
        GoValue::Array(_) => "slice",
        GoValue::Object(_) | GoValue::Map(_) => "map",
        GoValue::Function(_) => "func",
    }
}

fn kind_of_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let [value] = args else {
        return Err(FuncError::ExactlyXArgs("kindOf".into(), 1));
    };
    Ok(GoValue::String(go_kind(value).into()))
}

fn kind_is_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let [kind, value] = args else {
        return Err(FuncError::ExactlyXArgs("kindIs".into(), 2));
    };
    Ok(GoValue::Bool(kind.to_string() == go_kind(value)))
}

/// A template with the helm functions and every chart source registered
/// (so every `define` in the chart is visible), named `name`.
fn template_with_sources(name: &str) -> Result<Template, HelmError> {
    let mut tmpl = Template::with_name(name);
    tmpl.add_funcs(&functions());
    let sources = SOURCES.with(|s| s.borrow().clone());
    for (file, text) in sources {
        tmpl.add_template(file.clone(), text)
            .map_err(|e| HelmError::Template {
                file,
                message: e.to_string(),
            })?;
    }
    Ok(tmpl)
}

fn render_file(file: &str, text: &str, ctx: Value) -> Result<String, HelmError> {
    let err = |message: String| HelmError::Template {
        file: file.to_owned(),
        message,
    };
    let mut tmpl = template_with_sources(file)?;
    // Re-parse the file under its own name last, so its tree is the one run.
    tmpl.add_template(file, text.to_owned())
        .map_err(|e| err(e.to_string()))?;
    let out = tmpl
        .render(&Context::from(to_go_value(ctx)))
        .map_err(|e| err(e.to_string()))?;
    Ok(out.replace("<no value>", ""))
}

/// Runs `body` (a template source) against `data` with the chart's defines
/// visible, one nesting level deeper.
fn render_nested(what: &str, body: &str, data: &GoValue) -> Result<String, FuncError> {
    let depth = DEPTH.with(|d| *d.borrow());
    if depth >= MAX_INCLUDE_DEPTH {
        return Err(FuncError::Generic(format!(
            "{what}: nesting deeper than {MAX_INCLUDE_DEPTH} (a template including itself?)"
        )));
    }
    let name = format!("__nested_{depth}");
    let mut tmpl = template_with_sources(&name).map_err(|e| FuncError::Generic(e.to_string()))?;
    tmpl.add_template(name.clone(), body.to_owned())
        .map_err(|e| FuncError::Generic(format!("{what}: {e}")))?;
    DEPTH.with(|d| *d.borrow_mut() += 1);
    let result = tmpl.render(&Context::from(data.clone()));
    DEPTH.with(|d| *d.borrow_mut() -= 1);
    result
        .map(|s| s.replace("<no value>", ""))
        .map_err(|e| FuncError::Generic(format!("{what}: {e}")))
}

/// `include NAME DATA`: the output of the named template as a string, so it
/// can be piped (`include "x" . | nindent 4`), unlike `template`.
fn include_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let [name, rest @ ..] = args else {
        return Err(FuncError::AtLeastXArgs("include".into(), 1));
    };
    let GoValue::String(name) = name else {
        return Err(FuncError::Generic(
            "include: the template name must be a string".into(),
        ));
    };
    if name.contains('"') || name.contains('\\') || name.contains('`') {
        return Err(FuncError::Generic(format!(
            "include: unsupported template name {name:?}"
        )));
    }
    let data = rest.first().cloned().unwrap_or(GoValue::Nil);
    let body = format!("{{{{ template \"{name}\" . }}}}");
    render_nested(&format!("include {name:?}"), &body, &data).map(GoValue::String)
}

/// `tpl TEXT DATA`: renders a string from values as a template.
fn tpl_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let [text, data] = args else {
        return Err(FuncError::ExactlyXArgs("tpl".into(), 2));
    };
    render_nested("tpl", &text.to_string(), data).map(GoValue::String)
}

/// `nindent N TEXT`: a newline, then TEXT with every line indented by N.
fn nindent_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let [n, text] = args else {
        return Err(FuncError::ExactlyXArgs("nindent".into(), 2));
    };
    let n: usize = n
        .to_string()
        .parse()
        .map_err(|_| FuncError::Generic(format!("nindent: {n} is not a count")))?;
    let pad = " ".repeat(n);
    let text = text.to_string();
    Ok(GoValue::String(format!(
        "\n{pad}{}",
        text.replace('\n', &format!("\n{pad}"))
    )))
}

/// JSON to a template value. Objects become maps, not structs, so a missing
/// key is `<no value>` (then empty) rather than an error, as in Helm, where
/// values are `map[string]interface{}`.
fn to_go_value(value: Value) -> GoValue {
    match value {
        Value::Null => GoValue::Nil,
        Value::Bool(b) => GoValue::Bool(b),
        Value::String(s) => GoValue::String(s),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                GoValue::from(u)
            } else if let Some(i) = n.as_i64() {
                GoValue::from(i)
            } else {
                GoValue::from(n.as_f64().unwrap_or_default())
            }
        }
        Value::Array(items) => GoValue::Array(items.into_iter().map(to_go_value).collect()),
        Value::Object(map) => {
            GoValue::Map(map.into_iter().map(|(k, v)| (k, to_go_value(v))).collect())
        }
    }
}

/// `required MESSAGE VALUE` as Helm has it: fails only on a missing value or
/// the empty string. gtmpl-ng's also fails on an empty list, which would let
/// a chart pass our tests and then render silently under Helm.
fn required_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let [message, value] = args else {
        return Err(FuncError::ExactlyXArgs("required".into(), 2));
    };
    match value {
        GoValue::Nil | GoValue::NoValue => Err(FuncError::Generic(message.to_string())),
        GoValue::String(s) if s.is_empty() => Err(FuncError::Generic(message.to_string())),
        _ => Ok(value.clone()),
    }
}

/// `toYaml VALUE` with sorted keys and no trailing newline, as Helm's.
fn to_yaml_fn(args: &[GoValue]) -> Result<GoValue, FuncError> {
    let [value] = args else {
        return Err(FuncError::ExactlyXArgs("toYaml".into(), 1));
    };
    let json = sorted_json(value);
    let text =
        serde_saphyr::to_string(&json).map_err(|e| FuncError::Generic(format!("toYaml: {e}")))?;
    Ok(GoValue::String(text.trim_end_matches('\n').to_owned()))
}

/// Converts a template value to JSON with map keys in sorted order (the
/// workspace's serde_json keeps insertion order).
fn sorted_json(value: &GoValue) -> Value {
    match value {
        GoValue::NoValue | GoValue::Nil | GoValue::Function(_) => Value::Null,
        GoValue::Bool(b) => Value::Bool(*b),
        GoValue::String(s) => Value::String(s.clone()),
        GoValue::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        GoValue::Array(items) => Value::Array(items.iter().map(sorted_json).collect()),
        GoValue::Map(entries) | GoValue::Object(entries) => {
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            let mut map = Map::new();
            for key in keys {
                if let Some(v) = entries.get(key) {
                    map.insert(key.clone(), sorted_json(v));
                }
            }
            Value::Object(map)
        }
    }
}

/// Namespace the agent is installed into by `flotilla cluster add`.
pub const AGENT_NAMESPACE: &str = "flotilla-system";
/// Release name of the agent chart in the `cluster add` manifest.
pub const AGENT_RELEASE: &str = "flotilla-agent";

/// The agent chart's templates, embedded at build time; the one source of
/// the agent's install manifest (a test checks none is missing).
pub const AGENT_CHART_TEMPLATES: &[(&str, &str)] = &[
    (
        "templates/_helpers.tpl",
        include_str!("../../charts/flotilla-agent/templates/_helpers.tpl"),
    ),
    (
        "templates/deployment.yaml",
        include_str!("../../charts/flotilla-agent/templates/deployment.yaml"),
    ),
    (
        "templates/networkpolicy.yaml",
        include_str!("../../charts/flotilla-agent/templates/networkpolicy.yaml"),
    ),
    (
        "templates/poddisruptionbudget.yaml",
        include_str!("../../charts/flotilla-agent/templates/poddisruptionbudget.yaml"),
    ),
    (
        "templates/podmonitor.yaml",
        include_str!("../../charts/flotilla-agent/templates/podmonitor.yaml"),
    ),
    (
        "templates/prometheusrule.yaml",
        include_str!("../../charts/flotilla-agent/templates/prometheusrule.yaml"),
    ),
    (
        "templates/pvc.yaml",
        include_str!("../../charts/flotilla-agent/templates/pvc.yaml"),
    ),
    (
        "templates/rbac.yaml",
        include_str!("../../charts/flotilla-agent/templates/rbac.yaml"),
    ),
    (
        "templates/secret.yaml",
        include_str!("../../charts/flotilla-agent/templates/secret.yaml"),
    ),
    (
        "templates/serviceaccount.yaml",
        include_str!("../../charts/flotilla-agent/templates/serviceaccount.yaml"),
    ),
];

/// The `charts/flotilla-agent` chart as embedded in this binary.
///
/// # Errors
/// The embedded chart does not parse (a build from a broken tree).
pub fn agent_chart() -> Result<Chart, HelmError> {
    Chart::from_sources(
        Path::new("charts/flotilla-agent"),
        include_str!("../../charts/flotilla-agent/Chart.yaml"),
        Some(include_str!("../../charts/flotilla-agent/values.yaml")),
        AGENT_CHART_TEMPLATES
            .iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect(),
    )?
    .with_schema(Some(include_str!(
        "../../charts/flotilla-agent/values.schema.json"
    )))
}

/// What `flotilla cluster add` puts into the agent's install manifest.
#[derive(Clone)]
pub struct AgentInstall {
    /// URL of the hub's agent port as the agent's cluster reaches it.
    pub hub_url: String,
    /// The one-time bootstrap token.
    pub token: String,
    /// The hub CA pin (hex, without `sha256:`).
    pub ca_pin: String,
    /// `cluster` or `namespace`.
    pub rbac_scope: String,
    /// Namespaces the agent may manage when the scope is `namespace`.
    pub namespaces: Vec<String>,
}

impl std::fmt::Debug for AgentInstall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("AgentInstall")
            .field("hub_url", &self.hub_url)
            .field("ca_pin", &self.ca_pin)
            .field("rbac_scope", &self.rbac_scope)
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl AgentInstall {
    /// A warning when the agent would dial a loopback (or unspecified)
    /// address: inside the agent's cluster that is the agent's own pod,
    /// so it could never enroll. `None` for any other address.
    #[must_use]
    pub fn hub_url_warning(&self) -> Option<String> {
        let host = url_host(&self.hub_url)?;
        let local = host.eq_ignore_ascii_case("localhost")
            || host.to_ascii_lowercase().ends_with(".localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        local.then(|| {
            format!(
                "the agent would dial {url}, a loopback address: inside its cluster that is the agent's own pod. \
                 Pass --hub-url with the hub's address as that cluster reaches it (a LoadBalancer, Ingress or DNS name on the hub's certificate)",
                url = self.hub_url
            )
        })
    }

    /// The chart values (`helm install -f`) equivalent to this install.
    #[must_use]
    pub fn values(&self) -> Value {
        serde_json::json!({
            "hub": { "url": self.hub_url },
            "bootstrap": { "token": self.token, "caPin": format!("sha256:{}", self.ca_pin) },
            "rbac": { "scope": self.rbac_scope, "namespaces": self.namespaces },
        })
    }
}

/// The host of `url` (`scheme://[user@]host[:port][/path]`, IPv6 in
/// brackets), without brackets; `None` when there is none.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        hostport.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// The agent's install manifest: its Namespace, then the agent chart
/// rendered as release [`AGENT_RELEASE`] in [`AGENT_NAMESPACE`] with
/// [`AgentInstall::values`].
///
/// # Errors
/// The chart refuses the values (e.g. namespace scope without namespaces).
pub fn agent_manifest(install: &AgentInstall) -> Result<String, HelmError> {
    let chart = agent_chart()?;
    let mut values = chart.values.clone();
    merge_values(&mut values, install.values());
    let rendered = render(
        &chart,
        &Release::new(AGENT_RELEASE, AGENT_NAMESPACE),
        values,
    )?;
    Ok(format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {AGENT_NAMESPACE}\n{}{rendered}",
        if rendered.starts_with("---") {
            ""
        } else {
            "---\n"
        }
    ))
}

#[cfg(test)]
mod agent_chart_tests {
    use super::*;

    #[test]
    fn every_agent_template_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/flotilla-agent");
        let on_disk = Chart::load(&dir).unwrap();
        let embedded = agent_chart().unwrap();
        assert_eq!(on_disk.templates, embedded.templates);
        assert_eq!(on_disk.values, embedded.values);
        assert_eq!(on_disk.metadata, embedded.metadata);
        assert_eq!(on_disk.schema, embedded.schema);
        assert!(embedded.schema.is_some());
    }

    #[test]
    fn a_loopback_hub_url_gets_a_warning() {
        let install = |url: &str| AgentInstall {
            hub_url: url.into(),
            token: "flt1.secret.pin".into(),
            ca_pin: "ab".repeat(32),
            rbac_scope: "cluster".into(),
            namespaces: vec![],
        };
        for url in [
            "https://127.0.0.1:7443",
            "https://127.3.0.1",
            "https://localhost:7443/",
            "https://LOCALHOST",
            "https://hub.localhost:7443",
            "https://[::1]:7443",
            "https://0.0.0.0:7443",
            "https://user@127.0.0.1:7443",
            "127.0.0.1:7443",
        ] {
            let w = install(url).hub_url_warning();
            assert!(
                w.as_deref()
                    .is_some_and(|w| w.contains(url) && w.contains("--hub-url")),
                "{url}: {w:?}"
            );
        }
        for url in [
            "https://hub.example.com:7443",
            "https://10.0.0.5:7443",
            "https://[2001:db8::1]:7443",
            "https://localhost.example.com",
            "https://flotilla-hub.flotilla-system.svc:7443",
        ] {
            assert_eq!(install(url).hub_url_warning(), None, "{url}");
        }
    }

    #[test]
    fn manifest_carries_the_bootstrap_values() {
        let m = agent_manifest(&AgentInstall {
            hub_url: "https://hub.example.com:7443".into(),
            token: "flt1.secret.pin".into(),
            ca_pin: "ab".repeat(32),
            rbac_scope: "namespace".into(),
            namespaces: vec!["apps".into()],
        })
        .unwrap();
        assert!(m.starts_with("---\napiVersion: v1\nkind: Namespace\n"));
        assert!(m.contains("flt1.secret.pin"));
        assert!(m.contains(&format!("sha256:{}", "ab".repeat(32))));
        assert!(m.contains("namespace: apps"));
        assert!(!m.contains("kind: ClusterRole\n"));
    }
}

#[cfg(test)]
mod renderer_tests {
    use super::*;

    #[test]
    fn kind_of_names_go_kinds_as_helm_does() {
        let chart = Chart::from_sources(
            Path::new("k"),
            "apiVersion: v2\nname: k\nversion: 1.0.0\n",
            Some("n: null\ni: 0\nf: 1.5\ns: x\nb: false\nl: []\nm: {}\n"),
            [(
                "templates/k.yaml".to_owned(),
                "kinds: {{ kindOf .Values.n }} {{ kindOf .Values.missing }} {{ kindOf .Values.i }} {{ kindOf .Values.f }} {{ kindOf .Values.s }} {{ kindOf .Values.b }} {{ kindOf .Values.l }} {{ kindOf .Values.m }}\nzeroIsSet: {{ not (kindIs \"invalid\" .Values.i) }}\nnullIsUnset: {{ kindIs \"invalid\" .Values.n }}\nhas: {{ has \"x\" (list \"a\" \"x\") }} {{ has \"y\" (list \"a\") }} {{ has \"x\" .Values.missing }} {{ has 0 (list 0) }}\n".to_owned(),
            )]
            .into_iter()
            .collect(),
        )
        .unwrap();
        let out = render(&chart, &Release::new("r", "ns"), chart.values.clone()).unwrap();
        assert!(
            out.contains("kinds: invalid invalid float64 float64 string bool slice map\n"),
            "{out}"
        );
        assert!(out.contains("zeroIsSet: true\n"), "{out}");
        assert!(out.contains("nullIsUnset: true\n"), "{out}");
        assert!(out.contains("has: true false false true\n"), "{out}");
    }

    #[test]
    fn merge_is_deep_and_the_first_map_wins() {
        let chart = Chart::from_sources(
            Path::new("m"),
            "apiVersion: v2\nname: m\nversion: 1.0.0\n",
            Some("a: {x: 1, n: {p: 1}}\nb: {x: 2, y: 2, n: {p: 2, q: 2}}\n"),
            [(
                "templates/m.yaml".to_owned(),
                "merge: {{ merge (dict) .Values.a .Values.b | toJson }}\nover: {{ mergeOverwrite (dict) .Values.a .Values.b | toJson }}\n".to_owned(),
            )]
            .into_iter()
            .collect(),
        )
        .unwrap();
        let out = render(&chart, &Release::new("r", "ns"), chart.values.clone()).unwrap();
        let doc: Value = serde_saphyr::from_str(&out).unwrap();
        assert_eq!(
            doc["merge"],
            serde_json::json!({"x": 1, "y": 2, "n": {"p": 1, "q": 2}}),
            "{out}"
        );
        assert_eq!(
            doc["over"],
            serde_json::json!({"x": 2, "y": 2, "n": {"p": 2, "q": 2}}),
            "{out}"
        );
    }

    #[test]
    fn quote_escapes_as_go_does() {
        let chart = Chart::from_sources(
            Path::new("q"),
            "apiVersion: v2\nname: q\nversion: 1.0.0\n",
            Some("s: \"say \\\"hi\\\"\\nback\\\\slash\\tend\\u0001\"\nn: 3\n"),
            [(
                "templates/q.yaml".to_owned(),
                "q: {{ .Values.s | quote }}\n# many: {{ quote \"a\" .Values.n .Values.missing \"b\" }}\n".to_owned(),
            )]
            .into_iter()
            .collect(),
        )
        .unwrap();
        let out = render(&chart, &Release::new("r", "ns"), chart.values.clone()).unwrap();
        assert!(
            out.contains(r#"q: "say \"hi\"\nback\\slash\tend\x01""#),
            "{out}"
        );
        assert!(out.contains(r#"# many: "a" "3" "b""#), "{out}");
        // And the YAML reads back the original text.
        let doc: Value = serde_saphyr::from_str(out.split("\n---").last().unwrap_or(&out)).unwrap();
        assert_eq!(doc["q"], "say \"hi\"\nback\\slash\tend\u{1}");
    }

    #[test]
    fn values_are_checked_against_the_schema_before_rendering() {
        let chart = Chart::from_sources(
            Path::new("s"),
            "apiVersion: v2\nname: s\nversion: 1.0.0\n",
            Some("port: 80\n"),
            [(
                "templates/s.yaml".to_owned(),
                "port: {{ .Values.port }}\n".to_owned(),
            )]
            .into_iter()
            .collect(),
        )
        .unwrap()
        .with_schema(Some(
            r#"{"type": "object", "additionalProperties": false, "properties": {"port": {"type": "integer"}}}"#,
        ))
        .unwrap();
        assert!(render(&chart, &Release::new("r", "ns"), chart.values.clone()).is_ok());
        let err = render(
            &chart,
            &Release::new("r", "ns"),
            serde_json::json!({"port": "80", "prot": 1}),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "values don't meet the schema of chart s (values.schema.json): port: got string, want integer; prot: is not a value of this chart (known here: port)"
        );
        let bad = Chart::from_sources(
            Path::new("s"),
            "apiVersion: v2\nname: s\nversion: 1.0.0\n",
            None,
            BTreeMap::new(),
        )
        .unwrap()
        .with_schema(Some(r#"{"anyOf": []}"#))
        .unwrap_err()
        .to_string();
        assert!(
            bad.starts_with("s/values.schema.json: #: unsupported JSON Schema keyword `anyOf`"),
            "{bad}"
        );
    }
}
