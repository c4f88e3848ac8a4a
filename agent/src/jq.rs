//! `ignoreDifferences[].jqPathExpressions`, as Argo CD does it: each
//! expression is evaluated against an object and the paths it selects
//! (`path(EXPR)`) are removed from both the desired and the live object
//! before they are compared.
//!
//! Expressions are compiled with jaq (a jq implementation) once per thread
//! and cached. An expression that does not parse or compile is an error
//! naming it; an expression that fails at run time on one object (for
//! example `.spec.containers[]` on an object without containers) selects
//! nothing in that object, as with Argo CD.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde_json::Value;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// Compiled expressions kept per thread; a handful per application.
const CACHE_LIMIT: usize = 512;

thread_local! {
    static CACHE: RefCell<HashMap<String, Rc<Result<Filter, String>>>> =
        RefCell::new(HashMap::new());
}

/// The `jqPathExpressions` of the `ignoreDifferences` entries (JSON
/// objects) that apply to an object of the given group, kind, namespace
/// and name; matched as `jsonPointers` are.
#[must_use]
pub fn ignored_expressions(
    entries: &[String],
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Vec<String> {
    crate::drift::ignored_list(entries, "jqPathExpressions", group, kind, namespace, name)
}

/// Every `jqPathExpressions` entry of `ignoreDifferences` that does not
/// compile, with the reason; whatever object it would apply to.
#[must_use]
pub fn invalid_expressions(entries: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in entries {
        let Ok(v) = serde_json::from_str::<Value>(entry) else {
            continue;
        };
        if let Some(e) = v.get("jqPathExpressions").and_then(Value::as_array) {
            for expr in e.iter().filter_map(Value::as_str) {
                if let Err(e) = with_filter(expr, |_| ()) {
                    out.push(e);
                }
            }
        }
    }
    out
}

/// Removes from `obj` every path the expressions select in it.
///
/// # Errors
/// An expression that does not compile, naming it.
pub fn strip(obj: &mut Value, expressions: &[String]) -> Result<(), String> {
    let mut paths = Vec::new();
    for expr in expressions {
        paths.extend(select_paths(obj, expr)?);
    }
    // Deepest and highest indices first, so removing one path does not
    // move the elements another one names.
    paths.sort_by(|a, b| cmp_path(b, a));
    paths.dedup();
    for path in &paths {
        remove(obj, path);
    }
    Ok(())
}

/// One step of a path: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(i64),
}

fn cmp_path(a: &[Step], b: &[Step]) -> std::cmp::Ordering {
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

/// The paths `path(EXPR)` yields on `obj`. A run-time error ends the
/// selection for this object (what was selected before it stays).
fn select_paths(obj: &Value, expr: &str) -> Result<Vec<Vec<Step>>, String> {
    let input = jaq_json::read::parse_single(obj.to_string().as_bytes())
        .map_err(|e| format!("jq input: {e:?}"))?;
    with_filter(expr, |filter| {
        let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
        let mut out = Vec::new();
        for item in filter.id.run((ctx, input)).map(unwrap_valr) {
            let Ok(path) = item else {
                break;
            };
            let Ok(Value::Array(steps)) = serde_json::from_str::<Value>(&path.to_string()) else {
                continue;
            };
            let steps: Option<Vec<Step>> = steps
                .into_iter()
                .map(|s| match s {
                    Value::String(k) => Some(Step::Key(k)),
                    Value::Number(n) => n.as_i64().map(Step::Index),
                    // Slices and other path components select nothing here.
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

/// Runs `f` with the compiled `path(EXPR)`, compiling it on first use.
fn with_filter<T>(expr: &str, f: impl FnOnce(&Filter) -> T) -> Result<T, String> {
    let compiled = CACHE.with(|c| {
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
    let defs = jaq_core::defs();
    let funs = jaq_core::funs().chain(jaq_std::base_funs());
    let arena = Arena::default();
    let modules = Loader::new(defs)
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
                        .map(|(exp, at)| format!("expected {} at `{}`", exp.as_str(), short(at)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    jaq_core::load::Error::Parse(p) => p
                        .iter()
                        .map(|(exp, at)| format!("expected {} at `{}`", exp.as_str(), short(at)))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
                .collect();
            invalid(format!("syntax error: {}", why.join("; ")))
        })?;
    Compiler::default()
        .with_funs(funs)
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

/// The start of the unparsed rest of an expression, for messages.
fn short(rest: &str) -> String {
    let s: String = rest.chars().take(20).collect();
    if s.is_empty() { "end".to_owned() } else { s }
}

fn remove(obj: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else {
        // `.` itself: nothing of the object is compared.
        *obj = Value::Null;
        return;
    };
    let mut node = obj;
    for step in parents {
        let next = match (step, node) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k),
            (Step::Index(i), Value::Array(a)) => index(*i, a.len()).and_then(|i| a.get_mut(i)),
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
        (Step::Index(i), Value::Array(a)) => {
            if let Some(i) = index(*i, a.len()) {
                a.remove(i);
            }
        }
        _ => {}
    }
}

fn index(i: i64, len: usize) -> Option<usize> {
    let i = if i < 0 {
        i64::try_from(len).ok()? + i
    } else {
        i
    };
    usize::try_from(i).ok().filter(|i| *i < len)
}

/// `desired` and `live` with what the matching `jqPathExpressions` select
/// removed from each; `None` when no expression applies to the object.
///
/// # Errors
/// An expression that does not compile, naming it.
pub fn normalized(
    entries: &[String],
    key: &crate::object::ObjectKey,
    desired: &Value,
    live: &Value,
) -> Result<Option<(Value, Value)>, String> {
    let exprs = ignored_expressions(entries, &key.group, &key.kind, &key.namespace, &key.name);
    if exprs.is_empty() {
        return Ok(None);
    }
    let (mut d, mut l) = (desired.clone(), live.clone());
    strip(&mut d, &exprs)?;
    strip(&mut l, &exprs)?;
    Ok(Some((d, l)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop",
                         "annotations": {"x": "1", "y": "2"}},
            "spec": {
                "replicas": 3,
                "template": {"spec": {"containers": [
                    {"name": "app", "image": "app:1"},
                    {"name": "sidecar", "image": "proxy:1"}
                ]}}
            }
        })
    }

    fn config_map() -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "cfg"}, "data": {"a": "1"}})
    }

    #[test]
    fn expressions_remove_what_they_select() {
        let cases: &[(&str, Value, Value)] = &[
            (".spec.replicas", deployment(), {
                let mut d = deployment();
                d["spec"].as_object_mut().unwrap().remove("replicas");
                d
            }),
            (
                r#".spec.template.spec.containers[] | select(.name == "sidecar") | .image"#,
                deployment(),
                {
                    let mut d = deployment();
                    d["spec"]["template"]["spec"]["containers"][1]
                        .as_object_mut()
                        .unwrap()
                        .remove("image");
                    d
                },
            ),
            (r#".metadata.annotations["x"]"#, deployment(), {
                let mut d = deployment();
                d["metadata"]["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove("x");
                d
            }),
            (".data", config_map(), {
                let mut c = config_map();
                c.as_object_mut().unwrap().remove("data");
                c
            }),
            // Selects nothing on an object without that field.
            (".data", deployment(), deployment()),
            // A run-time error (iterating null) selects nothing.
            (".spec.containers[] | .image", config_map(), config_map()),
        ];
        for (expr, input, want) in cases {
            let mut got = input.clone();
            strip(&mut got, &[(*expr).to_owned()]).unwrap();
            assert_eq!(&got, want, "{expr}");
        }
    }

    #[test]
    fn invalid_expression_is_an_error_naming_it() {
        for expr in [".spec.replicas[", ".spec | nosuchfunction", "..[]]"] {
            let err = strip(&mut deployment(), &[expr.to_owned()]).unwrap_err();
            assert!(err.contains(expr), "{err}");
            assert!(err.starts_with("invalid jqPathExpressions"), "{err}");
            let entry = json!({"kind": "Deployment", "jqPathExpressions": [expr]}).to_string();
            assert_eq!(invalid_expressions(&[entry]).len(), 1);
        }
    }

    #[test]
    fn entries_match_like_json_pointers() {
        let entries = vec![
            json!({"group": "apps", "kind": "Deployment", "jqPathExpressions": [".spec.replicas"]})
                .to_string(),
            json!({"kind": "ConfigMap", "name": "other", "jqPathExpressions": [".data"]})
                .to_string(),
            json!({"kind": "Deployment", "namespace": "prod", "jqPathExpressions": [".a"]})
                .to_string(),
        ];
        assert_eq!(
            ignored_expressions(&entries, "apps", "Deployment", "shop", "web"),
            vec![".spec.replicas"]
        );
        assert!(ignored_expressions(&entries, "", "ConfigMap", "shop", "cfg").is_empty());
        assert_eq!(
            ignored_expressions(&entries, "", "ConfigMap", "shop", "other"),
            vec![".data"]
        );
        assert!(ignored_expressions(&entries, "", "Deployment", "shop", "web").is_empty());
    }

    #[test]
    fn stripped_objects_do_not_drift() {
        let desired = deployment();
        let mut live = deployment();
        live["spec"]["replicas"] = json!(7);
        live["spec"]["template"]["spec"]["containers"][1]["image"] = json!("proxy:2");
        assert_eq!(crate::drift::diff(&desired, &live, &[]).len(), 2);
        let exprs = vec![
            ".spec.replicas".to_owned(),
            r#".spec.template.spec.containers[] | select(.name == "sidecar") | .image"#.to_owned(),
        ];
        let (mut d, mut l) = (desired, live);
        strip(&mut d, &exprs).unwrap();
        strip(&mut l, &exprs).unwrap();
        assert!(crate::drift::diff(&d, &l, &[]).is_empty());
    }
}
