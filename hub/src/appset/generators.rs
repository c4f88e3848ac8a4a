//! Generators: pure functions from a generator spec and the inputs
//! (cluster inventory, repository files) to parameter sets, following Argo
//! CD's `applicationset/generators` (each rule below says which behaviour
//! of Argo CD it follows; the table tests in `tests.rs` hold them).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::pathmatch;
use super::selector::LabelSelector;
use super::template::{Params, TemplateMode, normalize, render_string, render_value};
use super::{ClusterInfo, GenerateOptions, GitFiles, Notice};

/// Label every Argo CD cluster Secret carries; Flotilla offers it on every
/// registered cluster so that selectors written for Argo CD select the same
/// clusters.
pub const SECRET_TYPE_LABEL: &str = "argocd.argoproj.io/secret-type";

/// Everything a generator may read, and the notices it leaves.
pub struct Inputs<'a> {
    pub clusters: &'a [ClusterInfo],
    pub git: Option<&'a dyn GitFiles>,
    pub options: GenerateOptions,
    /// Conditions worth reporting that do not stop the set (extensions
    /// used, fields not applied).
    pub notices: RefCell<Vec<Notice>>,
}

impl<'a> Inputs<'a> {
    pub fn new(
        clusters: &'a [ClusterInfo],
        git: Option<&'a dyn GitFiles>,
        options: GenerateOptions,
    ) -> Self {
        Self {
            clusters,
            git,
            options,
            notices: RefCell::default(),
        }
    }

    fn notice(&self, kind: &'static str, message: String) {
        let n = Notice {
            kind,
            message,
            application: String::new(),
        };
        let mut notices = self.notices.borrow_mut();
        if !notices.contains(&n) {
            notices.push(n);
        }
    }
}

/// The generators Argo CD has that Flotilla does not implement.
const NOT_SUPPORTED: [&str; 4] = [
    "scmProvider",
    "pullRequest",
    "clusterDecisionResource",
    "plugin",
];
const SUPPORTED: &str = "list, clusters, git, matrix, merge";

/// Runs one generator (`spec.generators[i]`, or a child of matrix/merge).
/// `at` is the field path for errors; `depth` is 0 for `spec.generators`,
/// 1 for a child of a combination generator, and so on.
///
/// # Errors
/// A message naming the field and the cause.
pub fn generate(
    spec: &Value,
    inputs: &Inputs<'_>,
    mode: TemplateMode,
    at: &str,
    depth: usize,
) -> Result<Vec<Params>, String> {
    let obj = spec
        .as_object()
        .ok_or_else(|| format!("{at}: must be an object"))?;
    let kinds: Vec<&String> = obj.keys().filter(|k| *k != "selector").collect();
    let [kind] = kinds.as_slice() else {
        return Err(if kinds.is_empty() {
            format!("{at}: no generator (one of {SUPPORTED})")
        } else {
            format!(
                "{at}: exactly one generator per entry, found {}",
                kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
    };
    let body = &obj[kind.as_str()];
    let at_kind = format!("{at}.{kind}");
    let mut params = match kind.as_str() {
        "list" => list(body, mode, &at_kind)?,
        "clusters" => clusters(body, inputs, mode, &at_kind)?,
        "git" => git(body, inputs, mode, &at_kind)?,
        "matrix" => matrix(body, inputs, mode, &at_kind, depth)?,
        "merge" => merge(body, inputs, mode, &at_kind, depth)?,
        other if NOT_SUPPORTED.contains(&other) => {
            return Err(format!(
                "{at}: generator {other:?} is not supported by Flotilla (supported: {SUPPORTED})"
            ));
        }
        "template" | "values" => {
            return Err(format!(
                "{at}.{kind}: belongs inside the generator (e.g. clusters: {{{kind}: ...}}), not beside it"
            ));
        }
        other => {
            return Err(format!(
                "{at}: unknown generator {other:?} (supported: {SUPPORTED})"
            ));
        }
    };
    // Argo CD's post-selector: a label selector over the flattened
    // parameters (Generators-Post-Selector.md).
    if let Some(sel) = obj.get("selector").filter(|v| !v.is_null()) {
        let selector = LabelSelector::parse(sel, &format!("{at}.selector"))?;
        params.retain(|p| selector.matches(&flat_strings(p)));
    }
    Ok(params)
}

/// Refuses fields a generator does not have (a typo would otherwise be
/// ignored without a word).
fn known_fields(body: &Value, at: &str, known: &[&str]) -> Result<(), String> {
    let obj = body
        .as_object()
        .ok_or_else(|| format!("{at}: must be an object"))?;
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            return Err(format!(
                "{at}.{k}: unknown field (known: {})",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

fn list(body: &Value, mode: TemplateMode, at: &str) -> Result<Vec<Params>, String> {
    known_fields(body, at, &["elements", "elementsYaml", "template"])?;
    let mut elements: Vec<Value> = match body.get("elements") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(format!("{at}.elements: must be a list")),
    };
    if let Some(yaml) = body.get("elementsYaml").and_then(Value::as_str)
        && !yaml.trim().is_empty()
    {
        match serde_saphyr::from_str::<Value>(yaml) {
            Ok(Value::Array(items)) => elements.extend(items),
            Ok(_) => return Err(format!("{at}.elementsYaml: must be a YAML list")),
            Err(e) => return Err(format!("{at}.elementsYaml: {e}")),
        }
    }
    let mut out = Vec::new();
    for (i, el) in elements.iter().enumerate() {
        let el_at = format!("{at}.elements[{i}]");
        let obj = el
            .as_object()
            .ok_or_else(|| format!("{el_at}: must be an object"))?;
        if mode.go_template {
            out.push(obj.clone());
            continue;
        }
        let mut p = Params::new();
        for (k, v) in obj {
            if k == "values" {
                let values = v
                    .as_object()
                    .ok_or_else(|| format!("{el_at}.values: must be an object"))?;
                for (vk, vv) in values {
                    p.insert(format!("values.{vk}"), Value::String(scalar_string(vv)));
                }
            } else {
                let s = v.as_str().ok_or_else(|| {
                    format!("{el_at}.{k}: must be a string unless goTemplate is enabled")
                })?;
                p.insert(k.clone(), Value::String(s.to_owned()));
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// A generator's `values`: strings only (Argo CD's `map[string]string`).
fn string_values(body: &Value, at: &str) -> Result<Vec<(String, String)>, String> {
    match body.get("values") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(format!(
                    "{at}.values.{k}: must be a string, got {other} (quote it)"
                )),
            })
            .collect(),
        Some(_) => Err(format!("{at}.values: must be an object of strings")),
    }
}

/// Adds a generator's `values` to one parameter set, each rendered with
/// that set's parameters (Argo CD's `appendTemplatedValues`): `values.<k>`
/// for fasttemplate, a `values` object for goTemplate.
fn append_values(
    values: &[(String, String)],
    p: &mut Params,
    mode: TemplateMode,
    at: &str,
) -> Result<(), String> {
    if values.is_empty() {
        return Ok(());
    }
    let mut rendered = Map::new();
    for (k, v) in values {
        let s = render_string(v, p, mode, None).map_err(|e| format!("{at}.values.{k}: {e}"))?;
        rendered.insert(k.clone(), Value::String(s));
    }
    if mode.go_template {
        p.insert("values".into(), Value::Object(rendered));
    } else {
        for (k, v) in rendered {
            p.insert(format!("values.{k}"), v);
        }
    }
    Ok(())
}

fn clusters(
    body: &Value,
    inputs: &Inputs<'_>,
    mode: TemplateMode,
    at: &str,
) -> Result<Vec<Params>, String> {
    known_fields(body, at, &["selector", "values", "template", "flatList"])?;
    let selector = LabelSelector::parse(
        body.get("selector").unwrap_or(&Value::Null),
        &format!("{at}.selector"),
    )?;
    let values = string_values(body, at)?;
    let flat_list = match body.get("flatList") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(format!("{at}.flatList: must be a boolean")),
    };
    let mut out = Vec::new();
    for cluster in inputs.clusters {
        // Every registered cluster is an Argo CD cluster Secret here, so it
        // carries that Secret's type label. There is no implicit local
        // cluster: the one registered under https://kubernetes.default.svc
        // (if any) is selected like the others (docs/applicationsets.md).
        let mut labels = cluster.labels.clone();
        labels
            .entry(SECRET_TYPE_LABEL.to_owned())
            .or_insert_with(|| "cluster".to_owned());
        if !selector.matches(&labels) {
            continue;
        }
        let mut p = Params::new();
        p.insert("name".into(), json!(cluster.name));
        p.insert("nameNormalized".into(), json!(normalize(&cluster.name)));
        p.insert("server".into(), json!(cluster.server));
        // The Secret's `project` (data.project), empty when not set.
        p.insert("project".into(), json!(cluster.project));
        if mode.go_template {
            // Argo CD leaves `annotations` out for a cluster without any
            // (a template reading them then fails); Flotilla always sets
            // both, which only makes more templates work.
            p.insert(
                "metadata".into(),
                json!({"labels": labels, "annotations": cluster.annotations}),
            );
        } else {
            for (k, v) in &cluster.annotations {
                p.insert(format!("metadata.annotations.{k}"), json!(v));
            }
            for (k, v) in &labels {
                p.insert(format!("metadata.labels.{k}"), json!(v));
            }
        }
        append_values(&values, &mut p, mode, at)?;
        out.push(p);
    }
    if flat_list {
        // Generators-Cluster.md "flatList": one parameter set whose
        // `clusters` lists every selected cluster's parameters.
        let mut p = Params::new();
        p.insert(
            "clusters".into(),
            Value::Array(out.into_iter().map(Value::Object).collect()),
        );
        return Ok(vec![p]);
    }
    Ok(out)
}

fn git(
    body: &Value,
    inputs: &Inputs<'_>,
    mode: TemplateMode,
    at: &str,
) -> Result<Vec<Params>, String> {
    known_fields(
        body,
        at,
        &[
            "repoURL",
            "revision",
            "directories",
            "files",
            "requeueAfterSeconds",
            "template",
            "pathParamPrefix",
            "values",
        ],
    )?;
    let repo = body
        .get("repoURL")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{at}.repoURL: is required"))?;
    let revision = match body.get("revision") {
        None | Some(Value::Null) => "HEAD",
        Some(Value::String(s)) if s.is_empty() => "HEAD",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(format!("{at}.revision: must be a string")),
    };
    let requeue = match body.get("requeueAfterSeconds") {
        None | Some(Value::Null) => None,
        Some(v) => Some(Duration::from_secs(v.as_u64().ok_or_else(|| {
            format!("{at}.requeueAfterSeconds: must be a non-negative integer, got {v}")
        })?)),
    };
    let prefix = match body.get("pathParamPrefix") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(format!("{at}.pathParamPrefix: must be a string")),
    };
    let values = string_values(body, at)?;
    let files = inputs
        .git
        .ok_or_else(|| format!("{at}: no Git access here (offline generate needs --repo-root)"))?;
    let has_dirs = body.get("directories").is_some_and(|v| !v.is_null());
    let has_files = body.get("files").is_some_and(|v| !v.is_null());
    if has_dirs == has_files {
        return Err(format!(
            "{at}: exactly one of directories or files is required"
        ));
    }
    let all = files
        .list_for_generator(repo, revision, requeue)
        .map_err(|e| format!("{at}: {e}"))?;
    let path = PathParams { prefix, mode };
    let mut out = if has_dirs {
        git_directories(body, &all, path, at)?
    } else {
        let globbing = if inputs.options.new_git_file_globbing {
            Globbing::Doublestar
        } else {
            Globbing::LsFiles
        };
        git_files(body, files, repo, revision, &all, path, globbing, at)?
    };
    for p in &mut out {
        append_values(&values, p, mode, at)?;
    }
    Ok(out)
}

/// `directories` / `files` entries: (path pattern, exclude).
fn path_entries(body: &Value, key: &str, at: &str) -> Result<Vec<(String, bool)>, String> {
    let items = body
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{at}.{key}: must be a list"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let item_at = format!("{at}.{key}[{i}]");
            known_fields(it, &item_at, &["path", "exclude"])?;
            let path = it
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{item_at}.path: is required"))?;
            let exclude = match it.get("exclude") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(format!("{item_at}.exclude: must be a boolean")),
            };
            Ok((path.to_owned(), exclude))
        })
        .collect()
}

/// Whether a directory is hidden: Argo CD's repo server skips directories
/// whose name starts with `.` and everything below them.
fn is_hidden(dir: &str) -> bool {
    dir.split('/').any(|c| c.starts_with('.'))
}

fn git_directories(
    body: &Value,
    all_files: &[String],
    path: PathParams<'_>,
    at: &str,
) -> Result<Vec<Params>, String> {
    // Git records no empty directories, so the directories of a commit are
    // the parents of its files.
    let mut dirs = BTreeSet::new();
    for f in all_files {
        let mut parts: Vec<&str> = f.split('/').collect();
        parts.pop();
        for i in 1..=parts.len() {
            dirs.insert(parts[..i].join("/"));
        }
    }
    let entries = path_entries(body, "directories", at)?;
    for (i, (p, _)) in entries.iter().enumerate() {
        pathmatch::check_go_pattern(p)
            .map_err(|e| format!("{at}.directories[{i}].path: {p:?}: {e}"))?;
    }
    let mut out = Vec::new();
    for dir in dirs.iter().filter(|d| !is_hidden(d)) {
        let mut include = false;
        let mut exclude = false;
        for (p, ex) in &entries {
            // Checked above: matching cannot fail.
            if pathmatch::go_path_match(p, dir).unwrap_or(false) {
                if *ex {
                    exclude = true;
                } else {
                    include = true;
                }
            }
        }
        // An exclude wins over any include (Generators-Git.md).
        if include && !exclude {
            out.push(path.params(dir, None));
        }
    }
    Ok(out)
}

/// How file patterns are matched (Generators-Git-File-Globbing.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Globbing {
    /// Default: `git ls-files` pathspecs.
    LsFiles,
    /// Opt-in: doublestar.
    Doublestar,
}

#[allow(clippy::too_many_arguments)]
fn git_files(
    body: &Value,
    files: &dyn GitFiles,
    repo: &str,
    revision: &str,
    all_files: &[String],
    path: PathParams<'_>,
    globbing: Globbing,
    at: &str,
) -> Result<Vec<Params>, String> {
    let entries = path_entries(body, "files", at)?;
    let matcher = |pattern: &str, file: &str| match globbing {
        Globbing::LsFiles => pathmatch::git_pathspec_match(pattern, file),
        Globbing::Doublestar => pathmatch::doublestar_match(pattern, file),
    };
    // The union of what the include patterns list, minus what any exclude
    // pattern lists; processed in sorted order.
    let mut matched = BTreeSet::new();
    for (i, (p, ex)) in entries.iter().enumerate() {
        if *ex {
            continue;
        }
        for f in all_files {
            if matcher(p, f).map_err(|e| format!("{at}.files[{i}].path: {p:?}: {e}"))? {
                matched.insert(f.clone());
            }
        }
    }
    for (i, (p, ex)) in entries.iter().enumerate() {
        if !*ex {
            continue;
        }
        let mut keep = BTreeSet::new();
        for f in matched {
            if !matcher(p, &f).map_err(|e| format!("{at}.files[{i}].path: {p:?}: {e}"))? {
                keep.insert(f);
            }
        }
        matched = keep;
    }
    let mut out = Vec::new();
    for file in matched {
        let bytes = files
            .read(repo, revision, &file)
            .map_err(|e| format!("{at}: {file}: {e}"))?;
        for obj in file_objects(&bytes).map_err(|e| format!("{at}: {file}: {e}"))? {
            let mut p = if path.mode.go_template {
                obj
            } else {
                let mut flat = Params::new();
                flatten_into(&Value::Object(obj), "", &mut flat);
                flat
            };
            for (k, v) in path.params(&file, Some(())) {
                p.insert(k, v);
            }
            out.push(p);
        }
    }
    Ok(out)
}

/// The parameter objects of one generator file, as Argo CD reads it: one
/// YAML/JSON object (an empty file is one empty object) or a list of
/// objects.
fn file_objects(bytes: &[u8]) -> Result<Vec<Map<String, Value>>, String> {
    let text = String::from_utf8_lossy(bytes);
    let docs = crate::yaml::parse_documents(&text).map_err(|e| e.to_string())?;
    let doc = match docs.len() {
        0 => return Ok(vec![Map::new()]),
        1 => docs.into_iter().next().unwrap_or(Value::Null),
        n => {
            // Argo CD would read only the first document; refusing says so
            // instead of silently dropping the rest.
            return Err(format!(
                "holds {n} YAML documents; a generator file is one object or one list of objects"
            ));
        }
    };
    match doc {
        Value::Null => Ok(vec![Map::new()]),
        Value::Object(o) => Ok(vec![o]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, it)| match it {
                Value::Object(o) => Ok(o),
                other => Err(format!("entry {i} must be an object, got {other}")),
            })
            .collect(),
        other => Err(format!(
            "must be an object or a list of objects, got {other}"
        )),
    }
}

/// The path parameters of the git generator, under `pathParamPrefix`.
#[derive(Clone, Copy)]
struct PathParams<'a> {
    prefix: &'a str,
    mode: TemplateMode,
}

impl PathParams<'_> {
    /// With `file`, `path` is the file's directory and `path.filename` its
    /// name (Generators-Git.md).
    fn params(&self, path: &str, file: Option<()>) -> Params {
        let (dir, filename) = match file {
            Some(()) => match path.rsplit_once('/') {
                Some((d, f)) => (d.to_owned(), Some(f.to_owned())),
                None => (".".to_owned(), Some(path.to_owned())),
            },
            None => (path.to_owned(), None),
        };
        let basename = dir.rsplit('/').next().unwrap_or(&dir).to_owned();
        let segments: Vec<String> = dir.split('/').map(str::to_owned).collect();
        let mut p = Params::new();
        if self.mode.go_template {
            let mut inner = Map::new();
            inner.insert("path".into(), json!(dir));
            inner.insert("basename".into(), json!(basename));
            inner.insert("basenameNormalized".into(), json!(normalize(&basename)));
            inner.insert("segments".into(), json!(segments));
            if let Some(f) = &filename {
                inner.insert("filename".into(), json!(f));
                inner.insert("filenameNormalized".into(), json!(normalize(f)));
            }
            if self.prefix.is_empty() {
                p.insert("path".into(), Value::Object(inner));
            } else {
                p.insert(
                    self.prefix.to_owned(),
                    json!({ "path": Value::Object(inner) }),
                );
            }
        } else {
            let name = if self.prefix.is_empty() {
                "path".to_owned()
            } else {
                format!("{}.path", self.prefix)
            };
            p.insert(name.clone(), json!(dir));
            p.insert(format!("{name}.basename"), json!(basename));
            p.insert(
                format!("{name}.basenameNormalized"),
                json!(normalize(&basename)),
            );
            // Argo CD keeps the index of each segment but skips empty ones.
            for (i, s) in segments.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
                p.insert(format!("{name}[{i}]"), json!(s));
            }
            if let Some(f) = &filename {
                p.insert(format!("{name}.filename"), json!(f));
                p.insert(format!("{name}.filenameNormalized"), json!(normalize(f)));
            }
        }
        p
    }
}

/// The child generators of a matrix or merge. Combination generators
/// nest once, as in Argo CD (Generators-Matrix.md "Restrictions"): a
/// matrix or merge whose parent is itself a child of one is refused.
fn children<'a>(body: &'a Value, at: &str, depth: usize) -> Result<&'a Vec<Value>, String> {
    if depth >= MAX_COMBINATION_DEPTH {
        return Err(format!(
            "{at}: nested too deeply: matrix and merge generators nest only once (Argo CD refuses a third level)"
        ));
    }
    body.get("generators")
        .and_then(Value::as_array)
        .filter(|g| !g.is_empty())
        .ok_or_else(|| format!("{at}.generators: must be a non-empty list"))
}

/// Depth (0 = `spec.generators`) at which a matrix or merge is refused.
const MAX_COMBINATION_DEPTH: usize = 2;

/// Argo CD does not apply a `template` given on a child of a matrix or
/// merge; say so rather than ignore it silently.
fn note_child_templates(gens: &[Value], at: &str, inputs: &Inputs<'_>) {
    for (i, g) in gens.iter().enumerate() {
        let Some(obj) = g.as_object() else { continue };
        for (kind, body) in obj.iter().filter(|(k, _)| *k != "selector") {
            if body
                .get("template")
                .is_some_and(|t| t.as_object().is_some_and(|o| !o.is_empty()))
            {
                inputs.notice(
                    super::NOTICE_UNSUPPORTED,
                    format!(
                        "{at}.generators[{i}].{kind}.template: a template on a child of a matrix or merge generator is not applied (as in Argo CD); put it on the matrix/merge or in spec.template"
                    ),
                );
            }
        }
    }
}

fn matrix(
    body: &Value,
    inputs: &Inputs<'_>,
    mode: TemplateMode,
    at: &str,
    depth: usize,
) -> Result<Vec<Params>, String> {
    known_fields(body, at, &["generators", "template"])?;
    let gens = children(body, at, depth)?;
    if gens.len() < 2 {
        return Err(format!(
            "{at}.generators: a matrix needs two generators, found {}",
            gens.len()
        ));
    }
    if gens.len() > 2 {
        inputs.notice(
            super::NOTICE_EXTENSION,
            format!(
                "{at}.generators: a matrix of {} generators (Argo CD combines exactly two); Flotilla combines them left to right",
                gens.len()
            ),
        );
    }
    note_child_templates(gens, at, inputs);
    let mut acc: Vec<Params> = vec![Params::new()];
    for (i, g) in gens.iter().enumerate() {
        let child_at = format!("{at}.generators[{i}]");
        let mut next = Vec::new();
        // A later child may use the parameters of earlier ones (Argo CD
        // renders the child generator with them), so it is generated once
        // per distinct rendering.
        let mut cache: HashMap<String, Vec<Params>> = HashMap::new();
        for left in &acc {
            let spec = if i == 0 || !mentions_template(g) {
                g.clone()
            } else {
                interpolate_generator(g, left, mode).map_err(|e| format!("{child_at}: {e}"))?
            };
            let key = spec.to_string();
            if !cache.contains_key(&key) {
                let generated = generate(&spec, inputs, mode, &child_at, depth + 1)?;
                cache.insert(key.clone(), generated);
            }
            for right in cache.get(&key).into_iter().flatten() {
                next.push(combine(left, right, mode, &child_at)?);
            }
        }
        acc = next;
    }
    Ok(acc)
}

fn mentions_template(v: &Value) -> bool {
    v.to_string().contains("{{")
}

/// A matrix child rendered with the parameters of the children before it
/// (Argo CD's `InterpolateGenerator`). A generator's own `values` may also
/// refer to parameters it produces itself, so a reference the earlier
/// parameters cannot resolve is left for the generator to resolve.
fn interpolate_generator(g: &Value, params: &Params, mode: TemplateMode) -> Result<Value, String> {
    let Value::Object(entry) = g else {
        return render_value(g, params, mode);
    };
    let mut out = Map::new();
    for (kind, body) in entry {
        let Some(body_obj) = body.as_object().filter(|_| kind != "selector") else {
            out.insert(kind.clone(), render_value(body, params, mode)?);
            continue;
        };
        let mut rendered = Map::new();
        for (field, v) in body_obj {
            if field == "values"
                && let Value::Object(values) = v
            {
                let strict = TemplateMode {
                    missing_key_error: true,
                    ..mode
                };
                let mut vals = Map::new();
                for (k, v) in values {
                    let resolved = match v {
                        Value::String(s) => render_string(s, params, strict, None)
                            .map(Value::String)
                            .unwrap_or_else(|_| v.clone()),
                        other => other.clone(),
                    };
                    vals.insert(k.clone(), resolved);
                }
                rendered.insert(field.clone(), Value::Object(vals));
            } else {
                rendered.insert(
                    field.clone(),
                    render_value(v, params, mode).map_err(|e| format!("{kind}.{field}: {e}"))?,
                );
            }
        }
        out.insert(kind.clone(), Value::Object(rendered));
    }
    Ok(Value::Object(out))
}

/// One combination of a matrix: `earlier` (the children before) and
/// `later` (this child). fasttemplate refuses a parameter both set to
/// different values (Argo CD's `CombineStringMaps`); goTemplate merges
/// objects deeply and the earlier child's value wins (Generators-Matrix.md
/// "Overriding parameters").
fn combine(
    earlier: &Params,
    later: &Params,
    mode: TemplateMode,
    at: &str,
) -> Result<Params, String> {
    if mode.go_template {
        let mut out = later.clone();
        deep_merge(&mut out, earlier);
        return Ok(out);
    }
    let mut out = earlier.clone();
    for (k, v) in later {
        match out.get(k) {
            Some(existing) if scalar_string(existing) != scalar_string(v) => {
                return Err(format!(
                    "{at}: parameter {k:?} has different values in matrix children ({} and {}); use pathParamPrefix or goTemplate",
                    scalar_string(existing),
                    scalar_string(v)
                ));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

/// `base` with `over` merged in: objects recursively, anything else
/// replaced by `over`'s value (mergo with override, as Argo CD merges).
fn deep_merge(base: &mut Params, over: &Params) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => deep_merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn merge(
    body: &Value,
    inputs: &Inputs<'_>,
    mode: TemplateMode,
    at: &str,
    depth: usize,
) -> Result<Vec<Params>, String> {
    known_fields(body, at, &["generators", "mergeKeys", "template"])?;
    let gens = children(body, at, depth)?;
    if gens.len() < 2 {
        return Err(format!(
            "{at}.generators: a merge needs at least two generators, found {}",
            gens.len()
        ));
    }
    let mut keys: Vec<String> = Vec::new();
    match body.get("mergeKeys") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, k) in a.iter().enumerate() {
                let k = k
                    .as_str()
                    .ok_or_else(|| format!("{at}.mergeKeys[{i}]: must be a string"))?;
                if !keys.iter().any(|x| x == k) {
                    keys.push(k.to_owned());
                }
            }
        }
        Some(_) => return Err(format!("{at}.mergeKeys: must be a list")),
    }
    if keys.is_empty() {
        return Err(format!("{at}.mergeKeys: at least one key is required"));
    }
    keys.sort();
    note_child_templates(gens, at, inputs);
    let mut base = Vec::new();
    let mut base_index: HashMap<String, usize> = HashMap::new();
    for (i, g) in gens.iter().enumerate() {
        let child_at = format!("{at}.generators[{i}]");
        let sets = generate(g, inputs, mode, &child_at, depth + 1)?;
        // Every child's sets must be unique by the merge keys
        // (Argo CD's ErrNonUniqueParamSets).
        let mut by_key: Vec<(String, Params)> = Vec::with_capacity(sets.len());
        let mut seen = BTreeSet::new();
        for set in sets {
            let key = merge_key(&set, &keys, mode, at, inputs);
            if !seen.insert(key.clone()) {
                return Err(format!(
                    "{child_at}: parameter sets are not unique by mergeKeys: {key} appears more than once (Argo CD refuses this)"
                ));
            }
            by_key.push((key, set));
        }
        if i == 0 {
            for (j, (key, set)) in by_key.into_iter().enumerate() {
                base_index.insert(key, j);
                base.push(set);
            }
            continue;
        }
        for (key, over) in by_key {
            let Some(&j) = base_index.get(&key) else {
                continue;
            };
            let b = &mut base[j];
            if mode.go_template {
                deep_merge(b, &over);
            } else {
                for (k, v) in over {
                    b.insert(k, v);
                }
            }
        }
    }
    Ok(base)
}

/// The merge key of a parameter set: the JSON of each key's value (null
/// when missing), as Argo CD compares them. A key is a top-level
/// parameter; with goTemplate Flotilla also follows a dotted key into
/// nested parameters (an extension, reported as such).
fn merge_key(
    p: &Params,
    keys: &[String],
    mode: TemplateMode,
    at: &str,
    inputs: &Inputs<'_>,
) -> String {
    let mut out = BTreeMap::new();
    for k in keys {
        let v = match p.get(k) {
            Some(v) => v.clone(),
            None if mode.go_template && k.contains('.') => {
                let mut cur: Option<&Value> = None;
                for (i, part) in k.split('.').enumerate() {
                    cur = if i == 0 {
                        p.get(part)
                    } else {
                        cur.and_then(|c| c.get(part))
                    };
                }
                match cur {
                    Some(v) => {
                        inputs.notice(
                            super::NOTICE_EXTENSION,
                            format!(
                                "{at}.mergeKeys: {k:?} names a nested goTemplate parameter (Argo CD only matches top-level parameters)"
                            ),
                        );
                        v.clone()
                    }
                    None => Value::Null,
                }
            }
            None => Value::Null,
        };
        out.insert(k.clone(), v);
    }
    serde_json::to_string(&out).unwrap_or_default()
}

fn scalar_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Flattens nested JSON into dotted keys (`a.b`, `list.0`) with string values.
pub fn flatten_into(v: &Value, prefix: &str, out: &mut Params) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(v, &key, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten_into(v, &format!("{prefix}.{i}"), out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), Value::String(scalar_string(other)));
        }
    }
}

fn flat_strings(p: &Params) -> BTreeMap<String, String> {
    let mut flat = Params::new();
    flatten_into(&Value::Object(p.clone()), "", &mut flat);
    flat.into_iter()
        .map(|(k, v)| (k, scalar_string(&v)))
        .collect()
}
