//! jq path expressions, as Argo CD evaluates `jqPathExpressions`
//! (`ignoreDifferences` on resources, `ignoreApplicationDifferences` on
//! ApplicationSets): an expression `EXPR` selects the paths `path(EXPR)`
//! yields on a document; callers then read, set or remove what is there.
//!
//! Expressions are compiled with jaq (a jq implementation) once per thread
//! and cached. An expression that does not parse or compile is an error
//! naming it; a run-time error on one document (for example iterating a
//! missing list) ends the selection for that document, keeping what was
//! selected before it, as Argo CD does.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::rc::Rc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde_json::Value;

/// One step of a path into a JSON document: an object key or an array
/// index (negative counts from the end, as in jq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(i64),
}

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// Compiled expressions kept per thread; a handful per application.
const CACHE_LIMIT: usize = 512;

thread_local! {
    static COMPILED: RefCell<HashMap<String, Rc<Result<Filter, String>>>> =
        RefCell::new(HashMap::new());
}

/// Checks that an expression compiles.
///
/// # Errors
/// The expression does not parse or names an undefined function; the
/// message names the expression.
pub fn check(expr: &str) -> Result<(), String> {
    with_filter(expr, |_| ())
}

/// The paths `path(EXPR)` yields on `doc`, in the order jq yields them.
/// `.` yields the empty path. Paths through slices or other non-key,
/// non-index components are left out.
///
/// # Errors
/// The expression does not compile.
pub fn paths(doc: &Value, expr: &str) -> Result<Vec<Vec<Step>>, String> {
    let input = jaq_json::read::parse_single(doc.to_string().as_bytes())
        .map_err(|e| format!("jq input: {e:?}"))?;
    with_filter(expr, |filter| {
        let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
        let mut out = Vec::new();
        for item in filter.id.run((ctx, input)).map(unwrap_valr) {
            let Ok(path) = item else {
                break;
            };
            let Ok(Value::Array(raw)) = serde_json::from_str::<Value>(&path.to_string()) else {
                continue;
            };
            let steps: Option<Vec<Step>> = raw
                .into_iter()
                .map(|s| match s {
                    Value::String(k) => Some(Step::Key(k)),
                    Value::Number(n) => n.as_i64().map(Step::Index),
                    _ => None,
                })
                .collect();
            if let Some(steps) = steps {
                out.push(steps);
            }
        }
        out
    })
}

/// Orders paths so that editing them one after another in this order never
/// moves what a later one names: deepest first within a subtree, highest
/// index first within an array. Duplicates are removed.
pub fn sort_for_removal(paths: &mut Vec<Vec<Step>>) {
    paths.sort_by(|a, b| compare(b, a));
    paths.dedup();
}

fn compare(a: &[Step], b: &[Step]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (Step::Key(x), Step::Key(y)) => x.cmp(y),
            (Step::Index(x), Step::Index(y)) => x.cmp(y),
            (Step::Key(_), Step::Index(_)) => Ordering::Less,
            (Step::Index(_), Step::Key(_)) => Ordering::Greater,
        };
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

fn index(i: i64, len: usize) -> Option<usize> {
    let i = if i < 0 {
        i64::try_from(len).ok()? + i
    } else {
        i
    };
    usize::try_from(i).ok().filter(|i| *i < len)
}

fn child<'a>(v: &'a Value, step: &Step) -> Option<&'a Value> {
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => m.get(k),
        (Step::Index(i), Value::Array(a)) => index(*i, a.len()).and_then(|i| a.get(i)),
        _ => None,
    }
}

fn child_mut<'a>(v: &'a mut Value, step: &Step) -> Option<&'a mut Value> {
    match (step, v) {
        (Step::Key(k), Value::Object(m)) => m.get_mut(k),
        (Step::Index(i), Value::Array(a)) => index(*i, a.len()).and_then(|i| a.get_mut(i)),
        _ => None,
    }
}

/// What `doc` holds at `path`.
#[must_use]
pub fn get<'a>(doc: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(doc, child)
}

/// Sets `path` in `doc` to `value`, creating objects on the way; a path
/// through a missing array element is left alone.
pub fn set(doc: &mut Value, path: &[Step], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *doc = value;
        return;
    };
    let mut node = doc;
    for step in parents {
        if matches!(step, Step::Key(_)) && !node.is_object() {
            *node = Value::Object(serde_json::Map::new());
        }
        let next = match (step, node) {
            (Step::Key(k), Value::Object(m)) => Some(m.entry(k.clone()).or_insert(Value::Null)),
            (step, node) => child_mut(node, step),
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
            if let Value::Object(m) = node {
                m.insert(k.clone(), value);
            }
        }
        Step::Index(_) => {
            if let Some(slot) = child_mut(node, last) {
                *slot = value;
            }
        }
    }
}

/// Removes what `doc` holds at `path`; the empty path (`.`) leaves `null`.
pub fn remove(doc: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else {
        *doc = Value::Null;
        return;
    };
    let mut node = doc;
    for step in parents {
        match child_mut(node, step) {
            Some(n) => node = n,
            None => return,
        }
    }
    match (last, node) {
        (Step::Key(k), Value::Object(m)) => {
            m.remove(k);
        }
        (Step::Index(i), Value::Array(a)) => {
            if let Some(i) = index(*i, a.len()) {
                a.remove(i);
            }
        }
        _ => {}
    }
}

/// Removes from `doc` every path the expressions select in it.
///
/// # Errors
/// An expression that does not compile, naming it.
pub fn strip(doc: &mut Value, expressions: &[String]) -> Result<(), String> {
    let mut all = Vec::new();
    for expr in expressions {
        all.extend(paths(doc, expr)?);
    }
    sort_for_removal(&mut all);
    for path in &all {
        remove(doc, path);
    }
    Ok(())
}

/// Runs `f` with the compiled `path(EXPR)`, compiling it on first use.
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
    let invalid = |why: String| format!("invalid jqPathExpressions `{expr}`: {why}");
    // Parenthesised so that `a | b` is one argument of `path`.
    let code = format!("path({expr})");
    // The core definitions (`select`, `map`, `recurse`, ...) and the
    // standard native filters; the rest of jaq-std needs its optional
    // features (regex, time, math, ...), which paths do not.
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
                    jaq_core::load::Error::Lex(l) => {
                        expected(l.iter().map(|(exp, at)| (exp.as_str(), *at)))
                    }
                    jaq_core::load::Error::Parse(p) => {
                        expected(p.iter().map(|(exp, at)| (exp.as_str(), *at)))
                    }
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

/// What the lexer or the parser expected, and where.
fn expected<'s>(errs: impl Iterator<Item = (&'s str, &'s str)>) -> String {
    errs.map(|(what, at)| format!("expected {what} near `{}`", near(at)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The start of the unparsed rest of an expression, for messages.
fn near(rest: &str) -> String {
    let s: String = rest.chars().take(20).collect();
    if s.is_empty() { "end".to_owned() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"spec": {"replicas": 3, "containers": [
            {"name": "app", "image": "app:1"},
            {"name": "sidecar", "image": "proxy:1"}
        ]}, "data": {"a": "1"}})
    }

    #[test]
    fn paths_are_what_path_yields() {
        let k = |s: &str| Step::Key(s.to_owned());
        let cases: &[(&str, Vec<Vec<Step>>)] = &[
            (".spec.replicas", vec![vec![k("spec"), k("replicas")]]),
            (
                r#".spec.containers[] | select(.name == "sidecar") | .image"#,
                vec![vec![k("spec"), k("containers"), Step::Index(1), k("image")]],
            ),
            (
                ".spec.containers[-1]",
                vec![vec![k("spec"), k("containers"), Step::Index(-1)]],
            ),
            (".", vec![vec![]]),
            // Iterating null is a run-time error: nothing selected.
            (".nothing[] | .image", vec![]),
            (".missing", vec![vec![k("missing")]]),
        ];
        for (expr, want) in cases {
            assert_eq!(&paths(&doc(), expr).unwrap(), want, "{expr}");
        }
    }

    #[test]
    fn edits_follow_paths_and_negative_indices() {
        let mut d = doc();
        strip(
            &mut d,
            &[".spec.containers[-1].image".to_owned(), ".data".to_owned()],
        )
        .unwrap();
        assert_eq!(d["spec"]["containers"][1], json!({"name": "sidecar"}));
        assert!(d.get("data").is_none());

        let mut d = doc();
        // Both elements removed: the higher index goes first.
        strip(&mut d, &[".spec.containers[]".to_owned()]).unwrap();
        assert_eq!(d["spec"]["containers"], json!([]));

        let mut d = json!({});
        set(
            &mut d,
            &[Step::Key("a".into()), Step::Key("b".into())],
            json!(1),
        );
        assert_eq!(d, json!({"a": {"b": 1}}));
        set(&mut d, &[Step::Key("x".into()), Step::Index(0)], json!(1));
        assert_eq!(get(&d, &[Step::Key("x".into())]), Some(&Value::Null));
        let mut e = doc();
        set(
            &mut e,
            &[
                Step::Key("spec".into()),
                Step::Key("containers".into()),
                Step::Index(-2),
                Step::Key("image".into()),
            ],
            json!("app:2"),
        );
        assert_eq!(e["spec"]["containers"][0]["image"], "app:2");
    }

    #[test]
    fn a_bad_expression_is_an_error_naming_it() {
        for expr in [".spec.replicas[", ".spec | nosuchfunction", "..[]]"] {
            let err = check(expr).unwrap_err();
            assert!(err.starts_with("invalid jqPathExpressions"), "{err}");
            assert!(err.contains(expr), "{err}");
            assert_eq!(paths(&doc(), expr).unwrap_err(), err);
        }
    }
}
