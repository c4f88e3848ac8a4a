//! Argo CD-style directory rendering: manifest files to Kubernetes objects.

use std::collections::HashMap;

use globset::{Glob, GlobMatcher};
use serde_json::Value;

use crate::model::DirectorySource;
use crate::source::{RenderError, SourceFile};

/// Extensions Argo CD treats as plain manifests (case-sensitive, as Argo).
const MANIFEST_EXTENSIONS: [&str; 3] = [".yaml", ".yml", ".json"];

pub(crate) fn render_directory(
    files: &[SourceFile],
    options: &DirectorySource,
) -> Result<Vec<Value>, RenderError> {
    let include = pattern("include", options.include.as_deref())?;
    let exclude = pattern("exclude", options.exclude.as_deref())?;

    let mut objects = Vec::new();
    // (group, kind, namespace, name) → where it was first seen.
    let mut seen: HashMap<(String, String, String, String), (String, usize)> = HashMap::new();
    for file in files {
        if !selected(
            &file.path,
            options.recurse,
            include.as_ref(),
            exclude.as_ref(),
        ) {
            continue;
        }
        let text = String::from_utf8_lossy(&file.content);
        let documents = crate::yaml::parse_documents(&text).map_err(|e| RenderError::Yaml {
            file: file.path.clone(),
            line: e.line,
            message: e.message,
        })?;
        for (index, document) in documents.into_iter().enumerate() {
            for object in flatten(document, &file.path, index)? {
                let key = identity(&object);
                // Named by generateName (a hook): each is created under a
                // name of its own, so two alike are no duplicate.
                if key.3.is_empty() {
                    objects.push(object);
                    continue;
                }
                if let Some((first_file, first_index)) = seen.get(&key) {
                    let (group, kind, namespace, name) = key;
                    return Err(RenderError::Duplicate {
                        kind: if group.is_empty() {
                            kind
                        } else {
                            format!("{kind}.{group}")
                        },
                        name: if namespace.is_empty() {
                            name
                        } else {
                            format!("{namespace}/{name}")
                        },
                        first: location(first_file, *first_index, &file.path),
                        second: location(&file.path, index, first_file),
                    });
                }
                seen.insert(key, (file.path.clone(), index));
                objects.push(object);
            }
        }
    }
    Ok(objects)
}

/// Parses a renderer's output stream (kustomize, helm) into checked
/// objects; `origin` names the output in errors.
pub(crate) fn parse_stream(text: &str, origin: &str) -> Result<Vec<Value>, RenderError> {
    let documents = crate::yaml::parse_documents(text).map_err(|e| RenderError::Yaml {
        file: origin.to_owned(),
        line: e.line,
        message: e.message,
    })?;
    let mut objects = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        objects.extend(flatten(document, origin, index)?);
    }
    Ok(objects)
}

fn pattern(field: &'static str, glob: Option<&str>) -> Result<Option<GlobMatcher>, RenderError> {
    let Some(glob) = glob.map(str::trim).filter(|g| !g.is_empty()) else {
        return Ok(None);
    };
    // Argo CD matches without path separators: `*` crosses `/`, which
    // globset's default (literal_separator off) also does.
    Glob::new(glob)
        .map(|g| Some(g.compile_matcher()))
        .map_err(|e| RenderError::Pattern {
            field,
            pattern: glob.to_owned(),
            message: e.kind().to_string(),
        })
}

fn selected(
    path: &str,
    recurse: bool,
    include: Option<&GlobMatcher>,
    exclude: Option<&GlobMatcher>,
) -> bool {
    if !MANIFEST_EXTENSIONS.iter().any(|ext| path.ends_with(ext)) {
        return false;
    }
    if !recurse && path.contains('/') {
        return false;
    }
    if exclude.is_some_and(|g| g.is_match(path)) {
        return false;
    }
    include.is_none_or(|g| g.is_match(path))
}

/// Checks one document and expands `…List` kinds into their items.
fn flatten(document: Value, file: &str, index: usize) -> Result<Vec<Value>, RenderError> {
    let err = |message: String| RenderError::Object {
        file: file.to_owned(),
        index,
        message,
    };
    let Value::Object(mut map) = document else {
        return Err(err(format!(
            "expected an object, found {}",
            type_name(&document)
        )));
    };
    let is_list = map
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && map.contains_key("items");
    if !is_list {
        let object = Value::Object(map);
        check_object(&object).map_err(err)?;
        return Ok(vec![object]);
    }
    let items = match map.remove("items") {
        Some(Value::Array(items)) => items,
        Some(Value::Null) => Vec::new(),
        Some(other) => {
            return Err(err(format!(
                "items: expected a list, found {}",
                type_name(&other)
            )));
        }
        None => Vec::new(),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if !item.is_object() {
                return Err(err(format!(
                    "items[{i}]: expected an object, found {}",
                    type_name(&item)
                )));
            }
            check_object(&item).map_err(|m| err(format!("items[{i}]: {m}")))?;
            Ok(item)
        })
        .collect()
}

fn check_object(object: &Value) -> Result<(), String> {
    // A hook may be named by metadata.generateName alone; whether the
    // object is a hook is the agent's call (Argo CD refuses generateName on
    // anything else when it applies).
    let generated = object["metadata"]["name"].is_null()
        && object["metadata"]["generateName"]
            .as_str()
            .is_some_and(|g| !g.is_empty());
    for (field, value) in [
        ("apiVersion", &object["apiVersion"]),
        ("kind", &object["kind"]),
        ("metadata.name", &object["metadata"]["name"]),
    ] {
        match value {
            Value::String(s) if !s.is_empty() => {}
            Value::Null if field == "metadata.name" && generated => {}
            Value::Null if field == "metadata.name" => {
                return Err(format!("missing {field} (or metadata.generateName)"));
            }
            Value::Null => return Err(format!("missing {field}")),
            Value::String(_) => return Err(format!("empty {field}")),
            other => {
                return Err(format!(
                    "{field}: expected a string, found {}",
                    type_name(other)
                ));
            }
        }
    }
    Ok(())
}

fn identity(object: &Value) -> (String, String, String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let api_version = text(&object["apiVersion"]);
    let group = api_version
        .rsplit_once('/')
        .map(|(group, _)| group.to_owned())
        .unwrap_or_default();
    (
        group,
        text(&object["kind"]),
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"]),
    )
}

/// Names where a duplicate sits; the document index only when both copies
/// are in the same file.
fn location(file: &str, index: usize, other_file: &str) -> String {
    if file == other_file {
        format!("{file} document {index}")
    } else {
        file.to_owned()
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> SourceFile {
        SourceFile {
            path: path.to_owned(),
            content: content.as_bytes().to_vec(),
        }
    }

    fn cm(name: &str) -> String {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
    }

    fn names(objects: &[Value]) -> Vec<&str> {
        objects
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect()
    }

    fn opts(recurse: bool, include: Option<&str>, exclude: Option<&str>) -> DirectorySource {
        DirectorySource {
            recurse,
            include: include.map(str::to_owned),
            exclude: exclude.map(str::to_owned),
        }
    }

    #[test]
    fn renders_manifest_files_in_order() {
        let files = [
            file("a.yaml", &format!("{}---\n{}", cm("a1"), cm("a2"))),
            file(
                "b.json",
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"b"}}"#,
            ),
            file("c.yml", &cm("c")),
            file("README.md", "# not yaml: ["),
            file("d.YAML", &cm("upper")),
            file("e.txt", &cm("e")),
        ];
        let out = render_directory(&files, &DirectorySource::default()).unwrap();
        assert_eq!(names(&out), ["a1", "a2", "b", "c"]);
    }

    #[test]
    fn subdirectories_only_with_recurse() {
        let files = [file("top.yaml", &cm("top")), file("sub/x.yaml", &cm("x"))];
        let out = render_directory(&files, &opts(false, None, None)).unwrap();
        assert_eq!(names(&out), ["top"]);
        let out = render_directory(&files, &opts(true, None, None)).unwrap();
        assert_eq!(names(&out), ["top", "x"]);
    }

    #[test]
    fn include_and_exclude() {
        let files = [
            file("app.yaml", &cm("app")),
            file("db.yaml", &cm("db")),
            file(
                "extra.json",
                r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}"#,
            ),
            file("sub/deep.yaml", &cm("deep")),
            file("sub/skip.yaml", &cm("skip")),
        ];
        let table: [(Option<&str>, Option<&str>, &[&str]); 6] = [
            (Some("*.yaml"), None, &["app", "db", "deep", "skip"]),
            (Some("{app.yaml,*.json}"), None, &["app", "s"]),
            (None, Some("*skip*"), &["app", "db", "s", "deep"]),
            (Some("sub/*"), Some("sub/skip.yaml"), &["deep"]),
            (
                Some("{db.yaml,sub/*}"),
                Some("{*skip*,nothing}"),
                &["db", "deep"],
            ),
            (Some(""), Some(""), &["app", "db", "s", "deep", "skip"]),
        ];
        for (include, exclude, want) in table {
            let out = render_directory(&files, &opts(true, include, exclude)).unwrap();
            assert_eq!(names(&out), want, "include {include:?} exclude {exclude:?}");
        }
    }

    #[test]
    fn bad_pattern() {
        let err = render_directory(&[], &opts(false, Some("{a,b"), None)).unwrap_err();
        assert!(
            matches!(
                err,
                RenderError::Pattern {
                    field: "include",
                    ..
                }
            ),
            "{err}"
        );
        let err = render_directory(&[], &opts(false, None, Some("[z-a]"))).unwrap_err();
        assert!(
            matches!(
                err,
                RenderError::Pattern {
                    field: "exclude",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let files = [
            file("good.yaml", &cm("good")),
            file(
                "bad.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n",
            ),
        ];
        let err = render_directory(&files, &DirectorySource::default()).unwrap_err();
        let RenderError::Yaml { file, line, .. } = &err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(file, "bad.yaml");
        assert!(line.is_some(), "{err}");
        assert!(
            err.to_string()
                .starts_with("bad.yaml: invalid YAML at line "),
            "{err}"
        );
    }

    #[test]
    fn documents_must_be_objects() {
        let cases = [
            ("apiVersion: v1\nmetadata:\n  name: x\n", 0, "missing kind"),
            (
                &*format!("{}---\nkind: ConfigMap\nmetadata:\n  name: y\n", cm("x")),
                1,
                "missing apiVersion",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
                0,
                "missing metadata.name",
            ),
            (
                "apiVersion: v1\nkind: \"\"\nmetadata:\n  name: x\n",
                0,
                "empty kind",
            ),
            ("- a\n- b\n", 0, "expected an object, found a list"),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: 3\n",
                0,
                "metadata.name: expected a string",
            ),
        ];
        for (content, want_index, want) in cases {
            let err = render_directory(&[file("f.yaml", content)], &DirectorySource::default())
                .unwrap_err();
            let RenderError::Object {
                file,
                index,
                message,
            } = &err
            else {
                panic!("unexpected {err:?}");
            };
            assert_eq!((file.as_str(), *index), ("f.yaml", want_index), "{err}");
            assert!(message.starts_with(want), "{err}");
        }
    }

    #[test]
    fn hooks_named_by_generate_name_render() {
        let hook = |prefix: &str| {
            format!(
                "apiVersion: batch/v1\nkind: Job\nmetadata:\n  generateName: {prefix}\n  annotations:\n    argocd.argoproj.io/hook: PostSync\n"
            )
        };
        let files = [
            file("a.yaml", &hook("notify-")),
            file("b.yaml", &hook("notify-")),
            file("c.yaml", &cm("c")),
        ];
        let out = render_directory(&files, &DirectorySource::default()).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["metadata"]["generateName"], "notify-");
        let err = render_directory(
            &[file(
                "d.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: \"\"\n",
            )],
            &DirectorySource::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing metadata.name"), "{err}");
    }

    #[test]
    fn lists_are_flattened() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: one}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: two}\n";
        let files = [file("list.yaml", list), file("z.yaml", &cm("z"))];
        let out = render_directory(&files, &DirectorySource::default()).unwrap();
        assert_eq!(names(&out), ["one", "two", "z"]);

        let cm_list = "apiVersion: v1\nkind: ConfigMapList\nitems: []\n";
        let out =
            render_directory(&[file("l.yaml", cm_list)], &DirectorySource::default()).unwrap();
        assert!(out.is_empty());

        let bad = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {}\n";
        let err =
            render_directory(&[file("l.yaml", bad)], &DirectorySource::default()).unwrap_err();
        assert!(
            err.to_string().contains("items[0]: missing metadata.name"),
            "{err}"
        );

        // A kind ending in List without items is an ordinary object.
        let odd = "apiVersion: example.com/v1\nkind: AllowList\nmetadata: {name: allow}\n";
        let out = render_directory(&[file("a.yaml", odd)], &DirectorySource::default()).unwrap();
        assert_eq!(names(&out), ["allow"]);
    }

    #[test]
    fn duplicates() {
        let deploy = |ns: &str| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\n"
            )
        };
        let files = [
            file("a.yaml", &deploy("prod")),
            file("b.yaml", &deploy("prod")),
        ];
        let err = render_directory(&files, &DirectorySource::default()).unwrap_err();
        let RenderError::Duplicate {
            kind,
            name,
            first,
            second,
        } = &err
        else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(
            (
                kind.as_str(),
                name.as_str(),
                first.as_str(),
                second.as_str()
            ),
            ("Deployment.apps", "prod/web", "a.yaml", "b.yaml")
        );

        // Same file: the document indexes tell them apart.
        let err = render_directory(
            &[file("a.yaml", &format!("{}---\n{}", cm("x"), cm("x")))],
            &DirectorySource::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("(a.yaml document 0 and a.yaml document 1)"),
            "{err}"
        );

        // Different namespace, group or kind: not duplicates. Version is
        // not part of the identity.
        let files = [
            file("a.yaml", &deploy("prod")),
            file("b.yaml", &deploy("staging")),
            file(
                "c.yaml",
                "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: prod\n",
            ),
            file("d.yaml", &cm("web")),
        ];
        assert_eq!(
            render_directory(&files, &DirectorySource::default())
                .unwrap()
                .len(),
            4
        );
        let files = [
            file("a.yaml", &deploy("prod")),
            file(
                "b.yaml",
                "apiVersion: apps/v1beta2\nkind: Deployment\nmetadata:\n  name: web\n  namespace: prod\n",
            ),
        ];
        assert!(render_directory(&files, &DirectorySource::default()).is_err());
    }
}
