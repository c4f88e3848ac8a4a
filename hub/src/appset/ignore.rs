//! `spec.preservedFields` and `spec.ignoreApplicationDifferences`: fields
//! of a generated Application that keep their current value when the set
//! updates it (Argo CD's Controlling-Resource-Modification.md).
//!
//! Argo CD removes the ignored fields from both the live and the generated
//! Application before it computes its patch, so an ignored field keeps its
//! live value, or stays absent if the live Application has none. Here the
//! generated Application takes the current one's value at every ignored
//! path, which gives the same result; when the Application is created,
//! nothing is ignored.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde_json::Value;

use super::{DEFAULT_PRESERVED_ANNOTATIONS, IgnoreRule, PreservedFields};
use crate::model::Application;

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `generated` with the values `current` has for the preserved annotations
/// and labels and for every path `rules` ignore (for this application).
///
/// # Errors
/// A jq expression that does not compile, or a result that is no longer a
/// valid Application; the message names the cause.
pub fn keep_current_fields(
    generated: &Application,
    current: &Application,
    preserved: &PreservedFields,
    rules: &[IgnoreRule],
) -> Result<Application, String> {
    let mut out = generated.clone();
    let keys = preserved
        .annotations
        .iter()
        .map(String::as_str)
        .chain(DEFAULT_PRESERVED_ANNOTATIONS);
    for key in keys {
        if let Some(v) = current.metadata.annotations.get(key) {
            out.metadata.annotations.insert(key.to_owned(), v.clone());
        }
    }
    for key in &preserved.labels {
        if let Some(v) = current.metadata.labels.get(key) {
            out.metadata.labels.insert(key.clone(), v.clone());
        }
    }
    let name = &generated.metadata.name;
    let rules: Vec<&IgnoreRule> = rules
        .iter()
        .filter(|r| r.name.as_deref().is_none_or(|n| n == name))
        .collect();
    if rules.is_empty() {
        return Ok(out);
    }
    let cur = serde_json::to_value(current).map_err(|e| e.to_string())?;
    let mut gen_doc = serde_json::to_value(&out).map_err(|e| e.to_string())?;
    let mut paths: Vec<Vec<Step>> = Vec::new();
    for r in &rules {
        for p in r.json_pointers.iter().filter(|p| !p.is_empty()) {
            paths.push(pointer_steps(p, &gen_doc, &cur));
        }
        for e in &r.jq_path_expressions {
            // What the expression selects in either document is ignored.
            paths.extend(jq_paths(&cur, e)?);
            paths.extend(jq_paths(&gen_doc, e)?);
        }
    }
    // Deepest and highest indices first, so that removing one element
    // does not move what another path names.
    paths.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| cmp_steps(b, a)));
    paths.dedup();
    for path in &paths {
        match get(&cur, path) {
            Some(v) => set(&mut gen_doc, path, v.clone()),
            None => remove(&mut gen_doc, path),
        }
    }
    let mut kept: Application = serde_json::from_value(gen_doc).map_err(|e| {
        format!("ignoreApplicationDifferences: the result is not an Application: {e}")
    })?;
    // What identifies the application is never taken from elsewhere.
    kept.metadata.name = generated.metadata.name.clone();
    kept.metadata.namespace = generated.metadata.namespace.clone();
    kept.api_version = generated.api_version.clone();
    kept.kind = generated.kind.clone();
    Ok(kept)
}

fn cmp_steps(a: &[Step], b: &[Step]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (Step::Key(x), Step::Key(y)) => x.cmp(y),
            (Step::Index(x), Step::Index(y)) => x.cmp(y),
            (Step::Key(_), Step::Index(_)) => std::cmp::Ordering::Less,
            (Step::Index(_), Step::Key(_)) => std::cmp::Ordering::Greater,
        };
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// An RFC 6901 pointer as steps; a numeric token is an index where either
/// document has an array at that point.
fn pointer_steps(pointer: &str, a: &Value, b: &Value) -> Vec<Step> {
    let mut steps = Vec::new();
    let (mut na, mut nb) = (Some(a), Some(b));
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        let is_array = na.is_some_and(Value::is_array) || nb.is_some_and(Value::is_array);
        let step = match token.parse::<usize>() {
            Ok(i) if is_array => Step::Index(i),
            _ => Step::Key(token),
        };
        na = na.and_then(|v| child(v, &step));
        nb = nb.and_then(|v| child(v, &step));
        steps.push(step);
    }
    steps
}

fn child<'a>(v: &'a Value, step: &Step) -> Option<&'a Value> {
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => m.get(k),
        (Step::Index(i), Value::Array(a)) => a.get(*i),
        _ => None,
    }
}

fn get<'a>(v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(v, |node, step| child(node, step))
}

/// Sets `path` in `doc` to `value`, creating objects on the way; a path
/// through a missing array element is left alone.
fn set(doc: &mut Value, path: &[Step], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *doc = value;
        return;
    };
    let mut node = doc;
    for step in parents {
        let next = match step {
            Step::Key(k) => {
                if !node.is_object() {
                    *node = Value::Object(serde_json::Map::new());
                }
                node.as_object_mut()
                    .map(|m| m.entry(k.clone()).or_insert(Value::Null))
            }
            Step::Index(i) => node.as_array_mut().and_then(|a| a.get_mut(*i)),
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    match last {
        Step::Key(k) => {
            if !node.is_object() {
                *node = Value::Object(serde_json::Map::new());
            }
            if let Some(m) = node.as_object_mut() {
                m.insert(k.clone(), value);
            }
        }
        Step::Index(i) => {
            if let Some(slot) = node.as_array_mut().and_then(|a| a.get_mut(*i)) {
                *slot = value;
            }
        }
    }
}

fn remove(doc: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = doc;
    for step in parents {
        let next = match (step, node) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k),
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    match (last, node) {
        (Step::Key(k), Value::Object(m)) => {
            m.remove(k);
        }
        (Step::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// Compiled `path(EXPR)` filters, per thread.
const CACHE_LIMIT: usize = 256;

thread_local! {
    static COMPILED: RefCell<HashMap<String, Rc<Result<Filter, String>>>> =
        RefCell::new(HashMap::new());
}

/// Checks that a `jqPathExpressions` entry compiles.
///
/// # Errors
/// The expression does not parse or names an undefined function.
pub fn check_jq_path(expr: &str) -> Result<(), String> {
    with_filter(expr, |_| ())
}

/// The paths `path(EXPR)` yields on `doc`. A run-time error (for example
/// iterating a missing list) ends the selection, as in Argo CD.
fn jq_paths(doc: &Value, expr: &str) -> Result<Vec<Vec<Step>>, String> {
    let input = jaq_json::read::parse_single(doc.to_string().as_bytes())
        .map_err(|e| format!("jq input: {e:?}"))?;
    with_filter(expr, |filter| {
        let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
        let mut out = Vec::new();
        for item in filter.id.run((ctx, input)).map(unwrap_valr) {
            let Ok(path) = item else { break };
            let Ok(Value::Array(raw)) = serde_json::from_str::<Value>(&path.to_string()) else {
                continue;
            };
            let steps: Option<Vec<Step>> = raw
                .into_iter()
                .map(|s| match s {
                    Value::String(k) => Some(Step::Key(k)),
                    Value::Number(n) => n
                        .as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .map(Step::Index),
                    _ => None,
                })
                .collect();
            if let Some(steps) = steps.filter(|s| !s.is_empty()) {
                out.push(steps);
            }
        }
        out
    })
}

fn with_filter<T>(expr: &str, f: impl FnOnce(&Filter) -> T) -> Result<T, String> {
    let compiled = COMPILED.with(|c| {
        let mut cache = c.borrow_mut();
        if let Some(found) = cache.get(expr) {
            return Rc::clone(found);
        }
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        let made = Rc::new(compile(expr));
        cache.insert(expr.to_owned(), Rc::clone(&made));
        made
    });
    match compiled.as_ref() {
        Ok(filter) => Ok(f(filter)),
        Err(e) => Err(e.clone()),
    }
}

fn compile(expr: &str) -> Result<Filter, String> {
    let invalid = |why: String| format!("invalid jq path expression `{expr}`: {why}");
    let code = format!("path({expr})");
    let arena = Arena::default();
    let modules = Loader::new(jaq_core::defs())
        .load(
            &arena,
            File {
                code: &*code,
                path: (),
            },
        )
        .map_err(|errs| {
            let why: Vec<String> = errs
                .iter()
                .map(|(_, e)| match e {
                    jaq_core::load::Error::Io(_) => "cannot load".to_owned(),
                    jaq_core::load::Error::Lex(l) => l
                        .iter()
                        .map(|(exp, at)| format!("expected {} near `{}`", exp.as_str(), near(at)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    jaq_core::load::Error::Parse(p) => p
                        .iter()
                        .map(|(exp, at)| format!("expected {} near `{}`", exp.as_str(), near(at)))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
                .collect();
            invalid(format!("syntax error: {}", why.join("; ")))
        })?;
    Compiler::default()
        .with_funs(jaq_core::funs().chain(jaq_std::base_funs()))
        .compile(modules)
        .map_err(|errs| {
            let why: Vec<String> = errs
                .iter()
                .flat_map(|(_, es)| es.iter())
                .map(|(name, what)| format!("undefined {what:?} `{name}`"))
                .collect();
            invalid(why.join("; "))
        })
}

fn near(rest: &str) -> String {
    let s: String = rest.chars().take(20).collect();
    if s.is_empty() { "end".to_owned() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(yaml: &str) -> Application {
        crate::model::parse_applications(yaml, "t")
            .unwrap()
            .remove(0)
    }

    fn base(revision: &str, automated: bool, labels: &str) -> Application {
        let policy = if automated {
            "  syncPolicy:\n    automated:\n      prune: true\n"
        } else {
            ""
        };
        app(&format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: a\n  labels: {labels}\n  annotations:\n    owner: set\nspec:\n  source:\n    repoURL: r\n    path: p\n    targetRevision: {revision}\n    helm:\n      values: 'x: 1'\n  destination:\n    name: c1\n{policy}"
        ))
    }

    /// Rows after Argo CD's Controlling-Resource-Modification.md examples.
    #[test]
    fn ignored_fields_keep_their_current_value() {
        struct Row {
            name: &'static str,
            rules: Vec<IgnoreRule>,
            preserved: PreservedFields,
            generated: Application,
            current: Application,
            want: Application,
        }
        let rule = |name: Option<&str>, pointers: &[&str], jq: &[&str]| IgnoreRule {
            name: name.map(str::to_owned),
            json_pointers: pointers.iter().map(|s| (*s).to_owned()).collect(),
            jq_path_expressions: jq.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut edited = base("fix/bug-123", true, "{}");
        edited
            .metadata
            .annotations
            .insert("my-custom-annotation".into(), "kept".into());
        edited
            .metadata
            .labels
            .insert("my-custom-label".into(), "kept".into());
        let mut with_custom = base("main", true, "{}");
        with_custom
            .metadata
            .annotations
            .insert("my-custom-annotation".into(), "kept".into());
        with_custom
            .metadata
            .labels
            .insert("my-custom-label".into(), "kept".into());
        let rows = vec![
            Row {
                name: "jsonPointers /spec/source/targetRevision keeps the edited revision",
                rules: vec![rule(None, &["/spec/source/targetRevision"], &[])],
                preserved: PreservedFields::default(),
                generated: base("main", true, "{}"),
                current: base("fix/bug-123", true, "{}"),
                want: base("fix/bug-123", true, "{}"),
            },
            Row {
                name: "a rule for another application does not apply",
                rules: vec![rule(Some("other"), &["/spec/source/targetRevision"], &[])],
                preserved: PreservedFields::default(),
                generated: base("main", true, "{}"),
                current: base("fix/bug-123", true, "{}"),
                want: base("main", true, "{}"),
            },
            Row {
                name: "toggling auto-sync off: /spec/syncPolicy absent on the current one stays absent",
                rules: vec![rule(None, &["/spec/syncPolicy"], &[])],
                preserved: PreservedFields::default(),
                generated: base("main", true, "{}"),
                current: base("main", false, "{}"),
                want: base("main", false, "{}"),
            },
            Row {
                name: "jqPathExpressions for the named application",
                rules: vec![rule(Some("a"), &[], &[".spec.source.targetRevision"])],
                preserved: PreservedFields::default(),
                generated: base("main", true, "{}"),
                current: base("v2", true, "{}"),
                want: base("v2", true, "{}"),
            },
            Row {
                name: "preservedFields keep an annotation and a label the template lacks",
                rules: vec![],
                preserved: PreservedFields {
                    annotations: vec!["my-custom-annotation".into()],
                    labels: vec!["my-custom-label".into()],
                },
                generated: base("main", true, "{}"),
                current: edited.clone(),
                want: with_custom,
            },
            Row {
                name: "without preservedFields they go",
                rules: vec![],
                preserved: PreservedFields::default(),
                generated: base("main", true, "{}"),
                current: edited,
                want: base("main", true, "{}"),
            },
        ];
        for row in rows {
            let got = keep_current_fields(&row.generated, &row.current, &row.preserved, &row.rules)
                .unwrap();
            assert_eq!(got, row.want, "{}", row.name);
        }
    }

    #[test]
    fn refresh_annotation_is_always_preserved() {
        let mut current = base("main", true, "{}");
        current
            .metadata
            .annotations
            .insert("argocd.argoproj.io/refresh".into(), "hard".into());
        let got = keep_current_fields(
            &base("main", true, "{}"),
            &current,
            &PreservedFields::default(),
            &[],
        )
        .unwrap();
        assert_eq!(got, current);
    }

    #[test]
    fn bad_jq_expression_is_named() {
        let err = check_jq_path(".spec.source[").unwrap_err();
        assert!(err.contains(".spec.source["), "{err}");
        assert!(
            check_jq_path(".spec.sources[] | select(.repoURL == \"r\").targetRevision").is_ok()
        );
    }
}
