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

use flotilla_jqpath::{self as jq, Step};
use serde_json::Value;

use super::{DEFAULT_PRESERVED_ANNOTATIONS, IgnoreRule, PreservedFields};
use crate::model::Application;

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
            // `.` (the whole Application) is not a field to keep.
            paths.extend(jq::paths(&cur, e)?.into_iter().filter(|p| !p.is_empty()));
            paths.extend(
                jq::paths(&gen_doc, e)?
                    .into_iter()
                    .filter(|p| !p.is_empty()),
            );
        }
    }
    // Deepest and highest indices first, so that removing one element
    // does not move what another path names.
    jq::sort_for_removal(&mut paths);
    for path in &paths {
        match jq::get(&cur, path) {
            Some(v) => jq::set(&mut gen_doc, path, v.clone()),
            None => jq::remove(&mut gen_doc, path),
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

/// An RFC 6901 pointer as steps; a numeric token is an index where either
/// document has an array at that point.
fn pointer_steps(pointer: &str, a: &Value, b: &Value) -> Vec<Step> {
    let mut steps = Vec::new();
    let (mut na, mut nb) = (Some(a), Some(b));
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        let is_array = na.is_some_and(Value::is_array) || nb.is_some_and(Value::is_array);
        let step = match token.parse::<u32>() {
            Ok(i) if is_array => Step::Index(i64::from(i)),
            _ => Step::Key(token),
        };
        na = na.and_then(|v| jq::get(v, std::slice::from_ref(&step)));
        nb = nb.and_then(|v| jq::get(v, std::slice::from_ref(&step)));
        steps.push(step);
    }
    steps
}

/// Checks that a `jqPathExpressions` entry compiles.
///
/// # Errors
/// The expression does not parse or names an undefined function.
pub fn check_jq_path(expr: &str) -> Result<(), String> {
    jq::check(expr)
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
