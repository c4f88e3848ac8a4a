//! Generators: pure functions from a generator spec and the inputs
//! (cluster inventory, repository files) to parameter sets.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::selector::LabelSelector;
use super::template::{Params, TemplateMode, normalize, render_value};
use super::{ClusterInfo, GitFiles};

/// Everything a generator may read.
pub struct Inputs<'a> {
    pub clusters: &'a [ClusterInfo],
    pub git: Option<&'a dyn GitFiles>,
}

/// Runs one generator (`spec.generators[i]`, or a child of matrix/merge).
/// `at` is the field path for errors.
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
    let kinds: Vec<&String> = obj
        .keys()
        .filter(|k| *k != "selector" && *k != "template" && *k != "values")
        .collect();
    let [kind] = kinds.as_slice() else {
        return Err(if kinds.is_empty() {
            format!("{at}: no generator (one of list, clusters, git, matrix, merge)")
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
        "clusters" => clusters(body, inputs.clusters, mode, &at_kind)?,
        "git" => git(body, inputs.git, mode, &at_kind)?,
        "matrix" => matrix(body, inputs, mode, &at_kind, depth)?,
        "merge" => merge(body, inputs, mode, &at_kind, depth)?,
        other => {
            return Err(format!(
                "{at}: unknown generator {other:?} (supported: list, clusters, git, matrix, merge)"
            ));
        }
    };
    if let Some(sel) = obj.get("selector").filter(|v| !v.is_null()) {
        let selector = LabelSelector::parse(sel, &format!("{at}.selector"))?;
        params.retain(|p| selector.matches(&flat_strings(p)));
    }
    Ok(params)
}

fn list(body: &Value, mode: TemplateMode, at: &str) -> Result<Vec<Params>, String> {
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

fn clusters(
    body: &Value,
    inventory: &[ClusterInfo],
    mode: TemplateMode,
    at: &str,
) -> Result<Vec<Params>, String> {
    let selector = LabelSelector::parse(
        body.get("selector").unwrap_or(&Value::Null),
        &format!("{at}.selector"),
    )?;
    let values: Map<String, Value> = match body.get("values") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(format!("{at}.values: must be an object")),
    };
    let mut out = Vec::new();
    for cluster in inventory.iter().filter(|c| selector.matches(&c.labels)) {
        let mut p = Params::new();
        p.insert("name".into(), json!(cluster.name));
        p.insert("nameNormalized".into(), json!(normalize(&cluster.name)));
        p.insert("server".into(), json!(cluster.server));
        p.insert("project".into(), json!(""));
        if mode.go_template {
            p.insert(
                "metadata".into(),
                json!({"labels": cluster.labels, "annotations": cluster.annotations}),
            );
        } else {
            for (k, v) in &cluster.labels {
                p.insert(format!("metadata.labels.{k}"), json!(v));
            }
            for (k, v) in &cluster.annotations {
                p.insert(format!("metadata.annotations.{k}"), json!(v));
            }
        }
        // values may interpolate the cluster's own parameters.
        let rendered = render_value(&Value::Object(values.clone()), &p, mode)
            .map_err(|e| format!("{at}.values: {e}"))?;
        if let Value::Object(rendered) = rendered {
            if mode.go_template {
                p.insert("values".into(), Value::Object(rendered));
            } else {
                for (k, v) in rendered {
                    p.insert(format!("values.{k}"), Value::String(scalar_string(&v)));
                }
            }
        }
        out.push(p);
    }
    Ok(out)
}

fn git(
    body: &Value,
    files: Option<&dyn GitFiles>,
    mode: TemplateMode,
    at: &str,
) -> Result<Vec<Params>, String> {
    let repo = body
        .get("repoURL")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{at}.repoURL: is required"))?;
    let revision = body
        .get("revision")
        .and_then(Value::as_str)
        .unwrap_or("HEAD");
    let files = files
        .ok_or_else(|| format!("{at}: no Git access here (offline generate needs --repo-root)"))?;
    let all = files
        .list(repo, revision)
        .map_err(|e| format!("{at}: {e}"))?;
    let has_dirs = body.get("directories").is_some_and(|v| !v.is_null());
    let has_files = body.get("files").is_some_and(|v| !v.is_null());
    match (has_dirs, has_files) {
        (true, false) => git_directories(body, &all, mode, at),
        (false, true) => git_files(body, files, repo, revision, &all, mode, at),
        _ => Err(format!(
            "{at}: exactly one of directories or files is required"
        )),
    }
}

fn glob(pattern: &str, at: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("{at}: {pattern:?}: {e}"))
}

fn path_entries(body: &Value, key: &str, at: &str) -> Result<Vec<(String, bool)>, String> {
    let items = body
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{at}.{key}: must be a list"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let path = it
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{at}.{key}[{i}].path: is required"))?;
            let exclude = it.get("exclude").and_then(Value::as_bool).unwrap_or(false);
            Ok((path.to_owned(), exclude))
        })
        .collect()
}

fn git_directories(
    body: &Value,
    all_files: &[String],
    mode: TemplateMode,
    at: &str,
) -> Result<Vec<Params>, String> {
    let mut dirs = BTreeSet::new();
    for f in all_files {
        let mut parts: Vec<&str> = f.split('/').collect();
        parts.pop();
        for i in 1..=parts.len() {
            dirs.insert(parts[..i].join("/"));
        }
    }
    let entries = path_entries(body, "directories", at)?;
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    for (i, (p, ex)) in entries.iter().enumerate() {
        let m = glob(p, &format!("{at}.directories[{i}].path"))?;
        if *ex {
            exclude.push(m);
        } else {
            include.push(m);
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        if include.iter().any(|m| m.is_match(&dir)) && !exclude.iter().any(|m| m.is_match(&dir)) {
            out.push(path_params(&dir, None, mode));
        }
    }
    Ok(out)
}

fn git_files(
    body: &Value,
    files: &dyn GitFiles,
    repo: &str,
    revision: &str,
    all_files: &[String],
    mode: TemplateMode,
    at: &str,
) -> Result<Vec<Params>, String> {
    let entries = path_entries(body, "files", at)?;
    let mut matched = BTreeSet::new();
    let mut excluded = Vec::new();
    let mut included = Vec::new();
    for (i, (p, ex)) in entries.iter().enumerate() {
        let m = glob(p, &format!("{at}.files[{i}].path"))?;
        if *ex {
            excluded.push(m);
        } else {
            included.push(m);
        }
    }
    for f in all_files {
        if included.iter().any(|m| m.is_match(f)) && !excluded.iter().any(|m| m.is_match(f)) {
            matched.insert(f.clone());
        }
    }
    let mut out = Vec::new();
    for path in matched {
        let bytes = files
            .read(repo, revision, &path)
            .map_err(|e| format!("{at}: {path}: {e}"))?;
        let text = String::from_utf8_lossy(&bytes);
        let docs: Vec<Value> =
            crate::yaml::parse_documents(&text).map_err(|e| format!("{at}: {path}: {e}"))?;
        let mut items = Vec::new();
        for doc in docs {
            match doc {
                Value::Array(a) => items.extend(a),
                other => items.push(other),
            }
        }
        for item in items {
            let Value::Object(obj) = item else {
                return Err(format!("{at}: {path}: each entry must be an object"));
            };
            let mut p = if mode.go_template {
                obj
            } else {
                let mut flat = Params::new();
                flatten_into(&Value::Object(obj), "", &mut flat);
                flat
            };
            for (k, v) in path_params(&path, Some(()), mode) {
                p.insert(k, v);
            }
            out.push(p);
        }
    }
    Ok(out)
}

/// Path parameters of the git generator. With `file`, `path` is the file's
/// directory and `path.filename` its name.
fn path_params(path: &str, file: Option<()>, mode: TemplateMode) -> Params {
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
    if mode.go_template {
        let mut inner = Map::new();
        inner.insert("path".into(), json!(dir));
        inner.insert("basename".into(), json!(basename));
        inner.insert("basenameNormalized".into(), json!(normalize(&basename)));
        inner.insert("segments".into(), json!(segments));
        if let Some(f) = &filename {
            inner.insert("filename".into(), json!(f));
            inner.insert("filenameNormalized".into(), json!(normalize(f)));
        }
        p.insert("path".into(), Value::Object(inner));
    } else {
        p.insert("path".into(), json!(dir));
        p.insert("path.basename".into(), json!(basename));
        p.insert(
            "path.basenameNormalized".into(),
            json!(normalize(&basename)),
        );
        for (i, s) in segments.iter().enumerate() {
            p.insert(format!("path[{i}]"), json!(s));
        }
        if let Some(f) = &filename {
            p.insert("path.filename".into(), json!(f));
            p.insert("path.filenameNormalized".into(), json!(normalize(f)));
        }
    }
    p
}

/// The child generators of a matrix or merge, refusing nesting deeper than
/// [`MAX_NESTING`].
fn children<'a>(body: &'a Value, at: &str, depth: usize) -> Result<&'a Vec<Value>, String> {
    if depth >= MAX_NESTING {
        return Err(format!(
            "{at}: nested too deeply (at most {MAX_NESTING} levels)"
        ));
    }
    body.get("generators")
        .and_then(Value::as_array)
        .filter(|g| !g.is_empty())
        .ok_or_else(|| format!("{at}.generators: must be a non-empty list"))
}

const MAX_NESTING: usize = 3;

fn matrix(
    body: &Value,
    inputs: &Inputs<'_>,
    mode: TemplateMode,
    at: &str,
    depth: usize,
) -> Result<Vec<Params>, String> {
    let gens = children(body, at, depth)?;
    if gens.len() < 2 {
        return Err(format!(
            "{at}.generators: a matrix needs at least two generators"
        ));
    }
    let mut acc: Vec<Params> = vec![Params::new()];
    for (i, g) in gens.iter().enumerate() {
        let child_at = format!("{at}.generators[{i}]");
        let mut next = Vec::new();
        // A later child may reference the parameters of earlier ones, so it
        // is generated once per combination so far.
        let mut cache: BTreeMap<String, Vec<Params>> = BTreeMap::new();
        for left in &acc {
            let spec = if i == 0 || !mentions_template(g) {
                g.clone()
            } else {
                render_value(g, left, mode).map_err(|e| format!("{child_at}: {e}"))?
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

fn combine(left: &Params, right: &Params, mode: TemplateMode, at: &str) -> Result<Params, String> {
    let mut out = left.clone();
    for (k, v) in right {
        match out.get(k) {
            Some(existing) if !mode.go_template && existing != v => {
                return Err(format!(
                    "{at}: parameter {k:?} has different values in matrix children ({existing} and {v})"
                ));
            }
            Some(Value::Object(a)) if mode.go_template => {
                if let Value::Object(b) = v {
                    let mut merged = a.clone();
                    deep_merge(&mut merged, b);
                    out.insert(k.clone(), Value::Object(merged));
                } else {
                    out.insert(k.clone(), v.clone());
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

fn deep_merge(base: &mut Map<String, Value>, over: &Map<String, Value>) {
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
    let gens = children(body, at, depth)?;
    let keys: Vec<String> = body
        .get("mergeKeys")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if keys.is_empty() {
        return Err(format!("{at}.mergeKeys: at least one key is required"));
    }
    let mut base = generate(
        &gens[0],
        inputs,
        mode,
        &format!("{at}.generators[0]"),
        depth + 1,
    )?;
    for (i, g) in gens.iter().enumerate().skip(1) {
        let child_at = format!("{at}.generators[{i}]");
        let sets = generate(g, inputs, mode, &child_at, depth + 1)?;
        let mut by_key: BTreeMap<Vec<String>, Params> = BTreeMap::new();
        for set in sets {
            let key: Vec<String> = keys.iter().map(|k| lookup(&set, k)).collect();
            // The first set with a key wins when a child repeats it.
            by_key.entry(key).or_insert(set);
        }
        for b in &mut base {
            let key: Vec<String> = keys.iter().map(|k| lookup(b, k)).collect();
            if let Some(over) = by_key.get(&key) {
                if mode.go_template {
                    deep_merge(b, over);
                } else {
                    for (k, v) in over {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    Ok(base)
}

/// A parameter by key: the flat key first, then a dotted path into nested
/// (goTemplate) parameters.
fn lookup(p: &Params, key: &str) -> String {
    if let Some(v) = p.get(key) {
        return scalar_string(v);
    }
    let mut cur: Option<&Value> = None;
    for (i, part) in key.split('.').enumerate() {
        cur = if i == 0 {
            p.get(part)
        } else {
            cur.and_then(|c| c.get(part))
        };
    }
    cur.map(scalar_string).unwrap_or_default()
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
