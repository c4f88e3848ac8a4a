//! Argo CD-style directory rendering: manifest files to Kubernetes objects,
//! with the semantics of Argo CD's repo server (`findManifests`):
//!
//! * files are visited in `filepath.Walk` order (lexical per directory,
//!   subdirectories only with `recurse`); only `.yaml`, `.yml`, `.json` and
//!   `.jsonnet` names are read unless `disableExtensionFilter` is set;
//!   `exclude` then `include` globs filter the path relative to the
//!   application's directory; a file containing `+argocd:skip-file-rendering`
//!   is skipped;
//! * a YAML file is split into documents on `---` lines; empty documents are
//!   skipped; a document must be a mapping with a `kind`. When the *first*
//!   document is not one (or does not parse) and the file does not contain
//!   all of `apiVersion:`, `kind:` and `metadata:`, the file is not a
//!   manifest and is ignored (a Helm values file, a CI config); otherwise it
//!   is an error naming the file;
//! * a `.json` file holds exactly one object;
//! * a `.jsonnet` file is evaluated (by the caller) and must give an object
//!   or a list of objects (`null` entries are skipped);
//! * an object whose `items` is a list is a list: its items are the objects
//!   (`items: null` gives none).
//!
//! Where Argo CD would accept a document at render time and fail the sync
//! later (no `metadata.name`, a Kustomize `Kustomization` document), the hub
//! refuses it here, naming the file and the document.

use std::collections::HashMap;

use serde_json::Value;

use super::glob::Pattern;
use crate::model::DirectorySource;
use crate::source::{RenderError, SourceFile};

/// File names Argo CD reads in a directory source (case-sensitive).
const MANIFEST_EXTENSIONS: [&str; 4] = [".yaml", ".yml", ".json", ".jsonnet"];

/// A file containing this is left out of a directory source.
pub(crate) const SKIP_MARKER: &str = "+argocd:skip-file-rendering";

/// Evaluates the selected `.jsonnet` files (paths relative to the
/// application's directory), returning each one's JSON output in order.
pub(crate) type JsonnetEvaluator<'a> =
    &'a mut dyn FnMut(&[&SourceFile]) -> Result<Vec<String>, RenderError>;

/// The files of `files` a directory source reads, in Argo CD's order.
///
/// # Errors
/// A bad include/exclude pattern.
pub(crate) fn select_files<'a>(
    files: &'a [SourceFile],
    options: &DirectorySource,
) -> Result<Vec<&'a SourceFile>, RenderError> {
    let include = pattern("include", options.include.as_deref())?;
    let exclude = pattern("exclude", options.exclude.as_deref())?;
    let mut selected: Vec<&SourceFile> = files
        .iter()
        .filter(|f| {
            selected(
                &f.path,
                options.recurse,
                options.disable_extension_filter,
                include.as_ref(),
                exclude.as_ref(),
            )
        })
        .filter(|f| !contains(&f.content, SKIP_MARKER.as_bytes()))
        .collect();
    // filepath.Walk order: lexical by path component, so `b/x.yaml` comes
    // before `b.yaml` (the directory `b` sorts before the file `b.yaml`).
    selected.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    Ok(selected)
}

/// Renders a directory source. `jsonnet` is called once, with every
/// selected `.jsonnet` file, when there is at least one.
///
/// # Errors
/// The first file that fails, naming the file (and document, line).
pub(crate) fn render_directory(
    files: &[SourceFile],
    options: &DirectorySource,
    jsonnet: JsonnetEvaluator<'_>,
) -> Result<Vec<Value>, RenderError> {
    let selected = select_files(files, options)?;
    let jsonnet_files: Vec<&SourceFile> = selected
        .iter()
        .copied()
        .filter(|f| f.path.ends_with(".jsonnet"))
        .collect();
    let mut outputs = if jsonnet_files.is_empty() {
        Vec::new()
    } else {
        jsonnet(&jsonnet_files)?
    }
    .into_iter();

    let mut objects = Vec::new();
    let mut seen = Duplicates::default();
    for file in selected {
        let found = if file.path.ends_with(".jsonnet") {
            let output = outputs.next().ok_or_else(|| RenderError::Jsonnet {
                file: file.path.clone(),
                message: "no output from the evaluator".to_owned(),
            })?;
            jsonnet_objects(&output, &file.path)?
        } else if file.path.ends_with(".json") {
            json_file_objects(file)?
        } else {
            yaml_file_objects(file)?
        };
        for (index, object) in found {
            seen.check(&object, &file.path, index)?;
            objects.push(object);
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

fn pattern(field: &'static str, glob: Option<&str>) -> Result<Option<Pattern>, RenderError> {
    let Some(glob) = glob.map(str::trim).filter(|g| !g.is_empty()) else {
        return Ok(None);
    };
    Pattern::new(glob)
        .map(Some)
        .map_err(|message| RenderError::Pattern {
            field,
            pattern: glob.to_owned(),
            message,
        })
}

fn selected(
    path: &str,
    recurse: bool,
    any_extension: bool,
    include: Option<&Pattern>,
    exclude: Option<&Pattern>,
) -> bool {
    if !recurse && path.contains('/') {
        return false;
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    if !any_extension && !MANIFEST_EXTENSIONS.iter().any(|ext| name.ends_with(ext)) {
        return false;
    }
    if exclude.is_some_and(|g| g.is_match(path)) {
        return false;
    }
    include.is_none_or(|g| g.is_match(path))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The objects of a YAML manifest file, each with its document index.
fn yaml_file_objects(file: &SourceFile) -> Result<Vec<(usize, Value)>, RenderError> {
    let text = String::from_utf8_lossy(&file.content);
    let mut found: Vec<(usize, Value)> = Vec::new();
    // Index of the document among the non-empty ones, as errors count them.
    let mut index = 0;
    let chunks = match split_documents(&text, &file.path) {
        Ok(chunks) => chunks,
        Err(e) => return not_a_manifest(&text, e).map(|()| Vec::new()),
    };
    for (start_line, chunk) in chunks {
        let documents = match crate::yaml::parse_documents(chunk) {
            Ok(d) => d,
            Err(e) => {
                let err = RenderError::Yaml {
                    file: file.path.clone(),
                    line: e.line.map(|l| l + start_line - 1),
                    message: e.message,
                };
                if index == 0 {
                    return not_a_manifest(&text, err).map(|()| Vec::new());
                }
                return Err(err);
            }
        };
        for document in documents {
            if let Err(message) = has_kind(&document) {
                let err = RenderError::Object {
                    file: file.path.clone(),
                    index,
                    message,
                };
                if index == 0 {
                    return not_a_manifest(&text, err).map(|()| Vec::new());
                }
                return Err(err);
            }
            for object in flatten(document, &file.path, index)? {
                found.push((index, object));
            }
            index += 1;
        }
    }
    Ok(found)
}

/// Argo CD's rule for a YAML file whose first document is not an object:
/// ignored unless it looks like a manifest.
fn not_a_manifest(text: &str, err: RenderError) -> Result<(), RenderError> {
    if ["apiVersion:", "kind:", "metadata:"]
        .iter()
        .all(|m| text.contains(m))
    {
        Err(err)
    } else {
        Ok(())
    }
}

/// Splits a YAML stream on document separators as Kubernetes' YAML reader
/// does: a line starting with `---` followed by nothing but spaces or a
/// comment. Returns each non-empty chunk with its first line (1-based).
fn split_documents<'t>(text: &'t str, file: &str) -> Result<Vec<(usize, &'t str)>, RenderError> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if let Some(rest) = line.strip_prefix("---") {
            let rest = rest.trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                return Err(RenderError::Yaml {
                    file: file.to_owned(),
                    line: Some(n + 1),
                    message: format!("invalid YAML document separator: {rest}"),
                });
            }
            if !text[start..offset].trim().is_empty() {
                chunks.push((start_line, &text[start..offset]));
            }
            start = offset + line.len();
            start_line = n + 2;
        }
        offset += line.len();
    }
    if !text[start..].trim().is_empty() {
        chunks.push((start_line, &text[start..]));
    }
    Ok(chunks)
}

/// A `.json` file: exactly one object.
fn json_file_objects(file: &SourceFile) -> Result<Vec<(usize, Value)>, RenderError> {
    let json_err = |e: serde_json::Error| RenderError::Json {
        file: file.path.clone(),
        line: Some(e.line()).filter(|l| *l > 0),
        message: e.to_string(),
    };
    let mut values = serde_json::Deserializer::from_slice(&file.content).into_iter::<Value>();
    let document = match values.next() {
        Some(v) => v.map_err(json_err)?,
        None => {
            return Err(RenderError::Json {
                file: file.path.clone(),
                line: None,
                message: "the file is empty".to_owned(),
            });
        }
    };
    if values.next().is_some() {
        return Err(RenderError::Json {
            file: file.path.clone(),
            line: None,
            message: "found multiple objects; only single objects are allowed in JSON files"
                .to_owned(),
        });
    }
    has_kind(&document).map_err(|message| RenderError::Object {
        file: file.path.clone(),
        index: 0,
        message,
    })?;
    Ok(flatten(document, &file.path, 0)?
        .into_iter()
        .map(|o| (0, o))
        .collect())
}

/// The objects of a Jsonnet file's output: an object, or a list whose
/// entries are objects or `null`.
pub(crate) fn jsonnet_objects(
    output: &str,
    file: &str,
) -> Result<Vec<(usize, Value)>, RenderError> {
    let err = |message: String| RenderError::Jsonnet {
        file: file.to_owned(),
        message,
    };
    let value: Value =
        serde_json::from_str(output).map_err(|e| err(format!("output is not JSON: {e}")))?;
    let documents = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        other => {
            return Err(err(format!(
                "output must be an object or a list of objects, found {}",
                type_name(&other)
            )));
        }
    };
    let mut found = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        has_kind(&document).map_err(|m| err(format!("output[{index}]: {m}")))?;
        for object in flatten(document, file, index)? {
            found.push((index, object));
        }
    }
    Ok(found)
}

/// What Kubernetes' decoder requires of a document: a mapping with a
/// string `kind`.
fn has_kind(document: &Value) -> Result<(), String> {
    match document {
        Value::Object(map) => match map.get("kind") {
            Some(Value::String(k)) if !k.is_empty() => Ok(()),
            _ => Err("missing kind: not a Kubernetes object".to_owned()),
        },
        other => Err(format!("expected an object, found {}", type_name(other))),
    }
}

/// Checks one document and expands lists (an `items` list) into their
/// items; `items: null` (with no `spec` or `status`) is an empty list.
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
    let is_list = matches!(map.get("items"), Some(Value::Array(_)));
    let is_null_list = matches!(map.get("items"), Some(Value::Null))
        && !map.contains_key("spec")
        && !map.contains_key("status");
    if is_null_list {
        return Ok(Vec::new());
    }
    if !is_list {
        let object = Value::Object(map);
        check_object(&object).map_err(err)?;
        return Ok(vec![object]);
    }
    let items = match map.remove("items") {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
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
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    if api_version.starts_with("kustomize.config.k8s.io/") {
        return Err(format!(
            "{api_version} {kind} is a Kustomize file, not a Kubernetes object: a directory source \
             applies every document it reads (Argo CD fails the sync on it too); name the file \
             kustomization.yaml to build the directory with Kustomize, or leave it out with \
             directory.exclude"
        ));
    }
    // A generateName object (a hook) has no name until it is created.
    let generate_name = object["metadata"]["generateName"]
        .as_str()
        .is_some_and(|g| !g.is_empty());
    let fields: &[(&str, &Value)] = if generate_name && object["metadata"]["name"].is_null() {
        &[
            ("apiVersion", &object["apiVersion"]),
            ("kind", &object["kind"]),
        ]
    } else {
        &[
            ("apiVersion", &object["apiVersion"]),
            ("kind", &object["kind"]),
            ("metadata.name", &object["metadata"]["name"]),
        ]
    };
    for (field, value) in fields {
        match value {
            Value::String(s) if !s.is_empty() => {}
            Value::Null if *field == "metadata.name" => {
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

/// (group, kind, namespace, name) → where each object was first seen.
#[derive(Default)]
struct Duplicates(HashMap<(String, String, String, String), (String, usize)>);

impl Duplicates {
    fn check(&mut self, object: &Value, file: &str, index: usize) -> Result<(), RenderError> {
        let key = identity(object);
        // generateName objects get a new name each time they are created.
        if key.3.is_empty() {
            return Ok(());
        }
        if let Some((first_file, first_index)) = self.0.get(&key) {
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
                first: location(first_file, *first_index, file),
                second: location(file, index, first_file),
            });
        }
        self.0.insert(key, (file.to_owned(), index));
        Ok(())
    }
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
            ..Default::default()
        }
    }

    /// Renders without Jsonnet: a `.jsonnet` file is an error.
    fn render_directory(
        files: &[SourceFile],
        options: &DirectorySource,
    ) -> Result<Vec<Value>, RenderError> {
        super::render_directory(files, options, &mut |f: &[&SourceFile]| {
            Err(RenderError::Jsonnet {
                file: f[0].path.clone(),
                message: "no evaluator in this test".into(),
            })
        })
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
        // Walk order: the directory `sub` sorts before `top.yaml`.
        assert_eq!(names(&out), ["x", "top"]);
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
            (
                "apiVersion: v1\nmetadata:\n  name: x\nspec:\n  kind: x\n",
                0,
                "missing kind",
            ),
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
                "missing kind",
            ),
            (
                &*format!("{}---\n- a\n- b\n", cm("x")),
                1,
                "expected an object, found a list",
            ),
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

    #[test]
    fn files_in_walk_order_with_skip_marker() {
        let files = [
            file("b.yaml", &cm("b-file")),
            file("b/x.yaml", &cm("b-dir")),
            file("a.yaml", &cm("a")),
            file(
                "skip.yaml",
                &format!("# +argocd:skip-file-rendering\n{}", cm("skipped")),
            ),
            file(".hidden.yaml", &cm("hidden")),
        ];
        let out = render_directory(&files, &opts(true, None, None)).unwrap();
        // Argo CD walks the directory `b` before the file `b.yaml`;
        // hidden files are read like any other.
        assert_eq!(names(&out), ["hidden", "a", "b-dir", "b-file"]);
    }

    #[test]
    fn extension_filter_can_be_disabled() {
        let files = [
            file("a.yaml", &cm("a")),
            file("b.yaml.tmpl", &cm("tmpl")),
            file("README.md", "# readme\n"),
        ];
        let mut options = opts(false, None, None);
        let out = render_directory(&files, &options).unwrap();
        assert_eq!(names(&out), ["a"]);
        options.disable_extension_filter = true;
        options.exclude = Some("*.md".into());
        let out = render_directory(&files, &options).unwrap();
        assert_eq!(names(&out), ["a", "tmpl"]);
    }

    #[test]
    fn yaml_that_is_not_a_manifest() {
        // (content, Ok(names) | Err(fragment))
        let table: &[(&str, Result<&[&str], &str>)] = &[
            // A Helm values file, a CI config: ignored.
            ("replicaCount: 2\nimage:\n  tag: v1\n", Ok(&[])),
            ("- a\n- b\n", Ok(&[])),
            ("just a string\n", Ok(&[])),
            ("on: [push]\njobs:\n  build: {}\n", Ok(&[])),
            // Unparsable, but not manifest-looking: ignored.
            ("key: [unclosed\n", Ok(&[])),
            // Looks like a manifest (all three markers): an error.
            (
                "apiVersion: v1\nmetadata:\n  name: x\nspec:\n  kind: foo\n",
                Err("document 0: missing kind"),
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n",
                Err("invalid YAML at line 3"),
            ),
            // A later document that is not an object: always an error.
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n---\nfoo: bar\n",
                Err("document 1: missing kind"),
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n---\nkey: [\n",
                Err("invalid YAML at line 6"),
            ),
            // Empty documents and comments are skipped.
            (
                "---\n# only a comment\n---\n\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n---\n",
                Ok(&["one"]),
            ),
            // Kubernetes' separator rule.
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n--- # next\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: two\n",
                Ok(&["one", "two"]),
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n--- !tag\n",
                Err("invalid YAML document separator: !tag"),
            ),
            // A JSON document in a .yaml file.
            (
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j"}}"#,
                Ok(&["j"]),
            ),
        ];
        for (content, want) in table {
            let got = render_directory(&[file("f.yaml", content)], &DirectorySource::default());
            match (got, want) {
                (Ok(out), Ok(want)) => assert_eq!(names(&out), *want, "{content}"),
                (Err(e), Err(want)) => {
                    assert!(e.to_string().contains(want), "{content}: {e}")
                }
                (got, want) => panic!("{content}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn kustomization_document_in_a_directory() {
        // Not named kustomization.yaml, so the source is a directory; the
        // document is refused by name (Argo CD would send it to the cluster
        // and fail the sync).
        let files = [
            file("app.yaml", &cm("app")),
            file(
                "kustomize.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- app.yaml\n",
            ),
        ];
        let err = render_directory(&files, &DirectorySource::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("kustomize.yaml: document 0: kustomize.config.k8s.io/v1beta1 Kustomization is a Kustomize file"),
            "{text}"
        );
        assert!(text.contains("directory.exclude"), "{text}");
        // Excluded, the rest renders.
        let out = render_directory(&files, &opts(false, None, Some("kustomize.yaml"))).unwrap();
        assert_eq!(names(&out), ["app"]);
        // A kustomization without apiVersion/kind (the common form) does
        // not look like a manifest: ignored.
        let files = [
            file("app.yaml", &cm("app")),
            file("overlay.yaml", "resources:\n- app.yaml\nnamePrefix: x-\n"),
        ];
        let out = render_directory(&files, &DirectorySource::default()).unwrap();
        assert_eq!(names(&out), ["app"]);
    }

    #[test]
    fn generate_name_objects() {
        let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  generateName: migrate-\n  annotations:\n    argocd.argoproj.io/hook: PreSync\n";
        let files = [file("a.yaml", &format!("{job}---\n{job}"))];
        let out = render_directory(&files, &DirectorySource::default()).unwrap();
        assert_eq!(out.len(), 2, "generateName objects are never duplicates");
        assert_eq!(out[0]["metadata"]["generateName"], "migrate-");
        let files = [file(
            "a.yaml",
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  generateName: \"\"\n",
        )];
        let err = render_directory(&files, &DirectorySource::default()).unwrap_err();
        assert!(err.to_string().contains("missing metadata.name"), "{err}");
    }

    #[test]
    fn json_files() {
        let obj = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j"}}"#;
        let table: &[(&str, Result<&[&str], &str>)] = &[
            (obj, Ok(&["j"])),
            (
                &*format!("{obj}\n{obj}"),
                Err("only single objects are allowed in JSON files"),
            ),
            (
                r#"{"name": "my-package", "version": "1.0.0"}"#,
                Err("missing kind"),
            ),
            ("[1, 2]", Err("expected an object, found a list")),
            ("{ not json", Err("x.json: invalid JSON at line 1")),
            ("", Err("the file is empty")),
        ];
        for (content, want) in table {
            let got = render_directory(&[file("x.json", content)], &DirectorySource::default());
            match (got, want) {
                (Ok(out), Ok(want)) => assert_eq!(names(&out), *want, "{content}"),
                (Err(e), Err(want)) => {
                    assert!(e.to_string().contains(want), "{content}: {e}")
                }
                (got, want) => panic!("{content}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn jsonnet_files_are_evaluated_in_place() {
        let files = [
            file("a.yaml", &cm("a")),
            file("b.jsonnet", "ignored: the evaluator is a stub"),
            file("b.libsonnet", "{}"),
            file("c.yaml", &cm("c")),
        ];
        let mut calls = Vec::new();
        let out = super::render_directory(
            &files,
            &DirectorySource::default(),
            &mut |f: &[&SourceFile]| {
                calls.extend(f.iter().map(|f| f.path.clone()));
                Ok(vec![
                    r#"[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j1"}},null,{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j2"}}]}]"#.to_owned(),
                ])
            },
        )
        .unwrap();
        assert_eq!(
            calls,
            ["b.jsonnet"],
            ".libsonnet files are never evaluated directly"
        );
        assert_eq!(names(&out), ["a", "j1", "j2", "c"]);
    }

    #[test]
    fn jsonnet_output_shapes() {
        let cmj = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#;
        let table: &[(&str, Result<usize, &str>)] = &[
            (cmj, Ok(1)),
            (&*format!("[{cmj}]"), Ok(1)),
            ("[]", Ok(0)),
            ("[null]", Ok(0)),
            (r#"{"apiVersion":"v1","kind":"List","items":[]}"#, Ok(0)),
            (
                "\"text\"",
                Err("output must be an object or a list of objects, found a string"),
            ),
            ("3", Err("found a number")),
            (r#"{"a": 1}"#, Err("missing kind")),
            (
                &*format!("[{cmj}, [1]]"),
                Err("output[1]: expected an object, found a list"),
            ),
            (
                &*format!("[{cmj}, {{\"a\": 1}}]"),
                Err("output[1]: missing kind"),
            ),
        ];
        for (output, want) in table {
            match (jsonnet_objects(output, "f.jsonnet"), want) {
                (Ok(out), Ok(n)) => assert_eq!(out.len(), *n, "{output}"),
                (Err(e), Err(want)) => {
                    let e = e.to_string();
                    assert!(
                        e.starts_with("f.jsonnet: jsonnet: ") && e.contains(want),
                        "{output}: {e}"
                    )
                }
                (got, want) => panic!("{output}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn null_lists_and_item_lists() {
        let null_list = "apiVersion: v1\nkind: ConfigMapList\nitems: null\n";
        let out =
            render_directory(&[file("l.yaml", null_list)], &DirectorySource::default()).unwrap();
        assert!(out.is_empty());
        // Any object whose items is a list is a list (Kubernetes' IsList).
        let items = "apiVersion: example.com/v1\nkind: Bundle\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: inner}\n";
        let out = render_directory(&[file("l.yaml", items)], &DirectorySource::default()).unwrap();
        assert_eq!(names(&out), ["inner"]);
    }
}
