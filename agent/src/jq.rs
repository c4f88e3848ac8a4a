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

use flotilla_jqpath as jq;
pub use flotilla_jqpath::strip;
use serde_json::Value;

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
                if let Err(e) = jq::check(expr) {
                    out.push(e);
                }
            }
        }
    }
    out
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
    jq::strip(&mut d, &exprs)?;
    jq::strip(&mut l, &exprs)?;
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
