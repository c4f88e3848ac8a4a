//! Kustomize: the Argo CD `source.kustomize` options as a generated overlay,
//! checks that a kustomization cannot reach outside the repository, and
//! running `kustomize build`.
//!
//! Supported `source.kustomize` options (Argo CD names): `namePrefix`,
//! `nameSuffix`, `namespace`, `commonLabels`, `commonAnnotations`,
//! `images` (`[old=]new[:tag|@digest]` strings), `replicas`
//! (`[{name, count}]`). Any of them makes the hub build a generated
//! kustomization whose only resource is the application's path, carrying
//! those fields; the application's own kustomization is never edited.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value, json};

/// File names that make a directory a kustomization, in kustomize's order.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Options Flotilla applies; anything else under `source.kustomize` is an
/// error, so a user never believes an option took effect when it did not.
const SUPPORTED: [&str; 7] = [
    "namePrefix",
    "nameSuffix",
    "namespace",
    "commonLabels",
    "commonAnnotations",
    "images",
    "replicas",
];

/// Fields of a kustomization that name other directories (or files).
const REFERENCE_FIELDS: [&str; 5] = [
    "resources",
    "bases",
    "components",
    "generators",
    "transformers",
];

/// Builds the generated overlay kustomization for `options` (the
/// `source.kustomize` object) around `base` (path of the application's
/// directory relative to the overlay). `None` when no option is set.
///
/// # Errors
/// An unsupported option or a malformed value, naming the field.
pub fn overlay(options: Option<&Value>, base: &str) -> Result<Option<Value>, String> {
    let Some(options) = options else {
        return Ok(None);
    };
    let Some(map) = options.as_object() else {
        if options.is_null() {
            return Ok(None);
        }
        return Err("source.kustomize: expected an object".to_owned());
    };
    let mut k = Map::new();
    for (field, value) in map {
        if value.is_null() {
            continue;
        }
        if !SUPPORTED.contains(&field.as_str()) {
            return Err(format!(
                "source.kustomize.{field} is not supported (supported: {})",
                SUPPORTED.join(", ")
            ));
        }
        let err = |m: &str| format!("source.kustomize.{field}: {m}");
        match field.as_str() {
            "namePrefix" | "nameSuffix" | "namespace" => {
                let s = value.as_str().ok_or_else(|| err("expected a string"))?;
                if !s.is_empty() {
                    k.insert(field.clone(), json!(s));
                }
            }
            "commonLabels" | "commonAnnotations" => {
                let m = value.as_object().ok_or_else(|| err("expected a map"))?;
                let mut out = Map::new();
                for (key, v) in m {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return Err(err(&format!("{key}: expected a string"))),
                    };
                    out.insert(key.clone(), Value::String(v));
                }
                if !out.is_empty() {
                    k.insert(field.clone(), Value::Object(out));
                }
            }
            "images" => {
                let list = value.as_array().ok_or_else(|| err("expected a list"))?;
                let images = list
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .ok_or_else(|| err("expected a list of strings"))
                            .and_then(|s| image(s).map_err(|m| err(&m)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if !images.is_empty() {
                    k.insert("images".into(), Value::Array(images));
                }
            }
            "replicas" => {
                let list = value.as_array().ok_or_else(|| err("expected a list"))?;
                let mut out = Vec::new();
                for r in list {
                    let name = r["name"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| err("each entry needs a name"))?;
                    let count = match &r["count"] {
                        Value::Number(n) => n.as_i64(),
                        Value::String(s) => s.trim().parse::<i64>().ok(),
                        _ => None,
                    }
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| err(&format!("{name}: count must be a non-negative integer")))?;
                    out.push(json!({"name": name, "count": count}));
                }
                if !out.is_empty() {
                    k.insert("replicas".into(), Value::Array(out));
                }
            }
            _ => {}
        }
    }
    if k.is_empty() {
        return Ok(None);
    }
    let mut doc = Map::new();
    doc.insert(
        "apiVersion".into(),
        json!("kustomize.config.k8s.io/v1beta1"),
    );
    doc.insert("kind".into(), json!("Kustomization"));
    doc.insert("resources".into(), json!([base]));
    doc.extend(k);
    Ok(Some(Value::Object(doc)))
}

/// Parses an Argo CD image override: `[old=]new[:tag][@digest]`.
///
/// # Errors
/// An empty name.
pub fn image(spec: &str) -> Result<Value, String> {
    let spec = spec.trim();
    let (old, new) = match spec.split_once('=') {
        Some((old, new)) => (Some(old.trim()), new.trim()),
        None => (None, spec),
    };
    let (rest, digest) = match new.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (new, None),
    };
    // A tag is after the last ':' that follows the last '/' (a registry
    // port is not a tag).
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
        None => (rest, None),
    };
    if name.is_empty() && old.is_none_or(str::is_empty) {
        return Err(format!("image {spec:?}: no image name"));
    }
    let mut m = Map::new();
    match old {
        Some(old) if !old.is_empty() => {
            m.insert("name".into(), json!(old));
            if !name.is_empty() && name != old {
                m.insert("newName".into(), json!(name));
            }
        }
        _ => {
            m.insert("name".into(), json!(name));
        }
    }
    if let Some(t) = tag.filter(|t| !t.is_empty()) {
        m.insert("newTag".into(), json!(t));
    }
    if let Some(d) = digest.filter(|d| !d.is_empty()) {
        m.insert("digest".into(), json!(d));
    }
    Ok(Value::Object(m))
}

/// Whether `dir` (on disk) holds a kustomization file.
pub fn kustomization_in(dir: &Path) -> Option<std::path::PathBuf> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// How a kustomization reference is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reference {
    /// Certainly remote: a URL (`https://`, `ssh://`, `file://`, …),
    /// `git::…`, `gh:org/repo`, or scp-like `user@host:path`.
    Remote,
    /// Remote unless a local file or directory of that name exists
    /// (Kustomize tries the local path first): a host-like first segment
    /// (`github.com/org/repo`, `git.example/org/repo.git//path`), a
    /// `.git` repository, a `//` repository root or a `?ref=` query.
    MaybeRemote,
    Local,
}

/// Classifies a reference by Kustomize's remote-target forms (see
/// `examples/remoteBuild.md` in Kustomize).
fn classify(reference: &str) -> Reference {
    let r = reference.trim();
    if r.contains("://") || r.starts_with("git::") || r.starts_with("gh:") {
        return Reference::Remote;
    }
    // scp-like `[user@]host:path`: the user part is required by Kustomize
    // (`git@github.com:org/repo`), and a `:` before any `/`.
    if let Some((user, rest)) = r.split_once('@')
        && !user.is_empty()
        && !user.contains('/')
        && rest
            .split_once(':')
            .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'))
    {
        return Reference::Remote;
    }
    let first = r.split('/').next().unwrap_or_default();
    // host/org/repo at least.
    let host_like = r.split('/').filter(|c| !c.is_empty()).count() >= 3
        && first.contains('.')
        && !first.starts_with('.')
        && first
            .rsplit('.')
            .next()
            .is_some_and(|tld| !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_alphabetic()))
        && !first.ends_with(".yaml")
        && !first.ends_with(".yml")
        && !first.ends_with(".json");
    let git_repo = r.split(['/', '?']).any(|c| c.ends_with(".git"))
        || r.contains("/_git/")
        || r.contains("//")
        || r.contains("?ref=")
        || r.contains("&ref=")
        || r.contains("?version=");
    if host_like || git_repo {
        Reference::MaybeRemote
    } else {
        Reference::Local
    }
}

/// Resolves `reference` relative to repository directory `dir` (both
/// `/`-separated, repository-relative) lexically; `None` when it leaves
/// the repository.
pub fn resolve_inside(dir: &str, reference: &str) -> Option<String> {
    if reference.starts_with('/') {
        return None;
    }
    let mut stack: Vec<&str> = dir
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for part in reference.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                stack.pop()?;
            }
            p => stack.push(p),
        }
    }
    Some(stack.join("/"))
}

/// Walks the kustomizations reachable from `app_dir` in the exported tree
/// at `repo_root` and refuses remote references and references that leave
/// the repository. Kustomize itself confines plain files to the
/// kustomization's root; directories (bases) are what could escape.
///
/// # Errors
/// The first bad reference, naming the kustomization file.
pub fn check_references(repo_root: &Path, app_dir: &str) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![app_dir.trim_matches('/').to_owned()];
    while let Some(dir) = todo.pop() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        let Some(file) = kustomization_in(&repo_root.join(&dir)) else {
            continue;
        };
        let rel_file = file
            .strip_prefix(repo_root)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{rel_file}: {e}"))?;
        let docs = crate::yaml::parse_documents(&text)
            .map_err(|e| format!("{rel_file}: invalid YAML: {e}"))?;
        let Some(doc) = docs.into_iter().next() else {
            continue;
        };
        for field in REFERENCE_FIELDS {
            let Some(list) = doc.get(field).and_then(Value::as_array) else {
                continue;
            };
            for r in list.iter().filter_map(Value::as_str) {
                let remote = match classify(r) {
                    Reference::Remote => true,
                    Reference::MaybeRemote => {
                        resolve_inside(&dir, r).is_none_or(|t| !repo_root.join(t).exists())
                    }
                    Reference::Local => false,
                };
                if remote {
                    return Err(format!(
                        "{rel_file}: {field} {r:?}: remote bases are not allowed (the hub renders without network access)"
                    ));
                }
                let Some(target) = resolve_inside(&dir, r) else {
                    return Err(format!(
                        "{rel_file}: {field} {r:?} points outside the repository"
                    ));
                };
                if repo_root.join(&target).is_dir() {
                    todo.push(target);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_options_no_overlay() {
        assert_eq!(overlay(None, "../repo/app").unwrap(), None);
        assert_eq!(overlay(Some(&json!({})), "../repo/app").unwrap(), None);
        assert_eq!(
            overlay(Some(&json!({"namePrefix": ""})), "b").unwrap(),
            None
        );
    }

    #[test]
    fn overlay_carries_every_supported_option() {
        let options = json!({
            "namePrefix": "p-",
            "nameSuffix": "-s",
            "namespace": "team",
            "commonLabels": {"env": "prod", "tier": 3},
            "commonAnnotations": {"owner": "me"},
            "images": ["nginx:1.25", "busybox=registry:5000/tools/busybox:2@sha256:abc"],
            "replicas": [{"name": "web", "count": 3}, {"name": "db", "count": "2"}],
        });
        let got = overlay(Some(&options), "../repo/app").unwrap().unwrap();
        let want = json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": ["../repo/app"],
            "namePrefix": "p-",
            "nameSuffix": "-s",
            "namespace": "team",
            "commonLabels": {"env": "prod", "tier": "3"},
            "commonAnnotations": {"owner": "me"},
            "images": [
                {"name": "nginx", "newTag": "1.25"},
                {"name": "busybox", "newName": "registry:5000/tools/busybox", "newTag": "2", "digest": "sha256:abc"}
            ],
            "replicas": [{"name": "web", "count": 3}, {"name": "db", "count": 2}],
        });
        assert_eq!(got, want);
    }

    #[test]
    fn bad_options_are_named() {
        let table = [
            (
                json!({"patches": []}),
                "source.kustomize.patches is not supported",
            ),
            (json!({"namePrefix": 1}), "namePrefix: expected a string"),
            (json!({"images": "nginx"}), "images: expected a list"),
            (
                json!({"replicas": [{"count": 1}]}),
                "each entry needs a name",
            ),
            (
                json!({"replicas": [{"name": "w", "count": -1}]}),
                "w: count must be",
            ),
            (
                json!({"commonLabels": {"a": [1]}}),
                "commonLabels: a: expected a string",
            ),
            (json!("x"), "expected an object"),
        ];
        for (options, want) in table {
            let err = overlay(Some(&options), "b").unwrap_err();
            assert!(err.contains(want), "{options}: {err}");
        }
    }

    #[test]
    fn images() {
        let table = [
            ("nginx", json!({"name": "nginx"})),
            ("nginx:1.2", json!({"name": "nginx", "newTag": "1.2"})),
            (
                "localhost:5000/nginx",
                json!({"name": "localhost:5000/nginx"}),
            ),
            (
                "nginx=my/nginx",
                json!({"name": "nginx", "newName": "my/nginx"}),
            ),
            (
                "nginx@sha256:1",
                json!({"name": "nginx", "digest": "sha256:1"}),
            ),
            ("nginx=nginx:2", json!({"name": "nginx", "newTag": "2"})),
        ];
        for (spec, want) in table {
            assert_eq!(image(spec).unwrap(), want, "{spec}");
        }
        assert!(image("").is_err());
    }

    #[test]
    fn references_resolve_inside() {
        assert_eq!(
            resolve_inside("overlays/prod", "../../base").as_deref(),
            Some("base")
        );
        assert_eq!(resolve_inside("a", "./b/../c").as_deref(), Some("a/c"));
        assert_eq!(resolve_inside("a", "../../x"), None);
        assert_eq!(resolve_inside("a", "/etc"), None);
    }

    #[test]
    fn remote_reference_forms() {
        use Reference::*;
        let table = [
            ("https://github.com/x/y//base?ref=v1", Remote),
            ("http://example.com/deploy.yaml", Remote),
            ("ssh://git@github.com/org/repo//base", Remote),
            ("file:///srv/repo//base?ref=main", Remote),
            ("git::https://github.com/org/repo//base", Remote),
            ("git::git@github.com:org/repo.git", Remote),
            ("gh:org/repo", Remote),
            ("gh:org/repo//base?ref=v2", Remote),
            ("git@github.com:org/repo.git//base", Remote),
            ("org-12345@ssh.dev.azure.com:v3/org/project/repo", Remote),
            ("github.com/org/repo", MaybeRemote),
            ("github.com/org/repo//path?ref=v1.0.0", MaybeRemote),
            ("gitlab.example.org/org/repo.git//path", MaybeRemote),
            (
                "git.example/org/repo.git//overlays/prod?ref=main",
                MaybeRemote,
            ),
            ("example.com/org/repo?ref=v1", MaybeRemote),
            ("dev.azure.com/org/project/_git/repo", MaybeRemote),
            ("vendor/upstream.git", MaybeRemote),
            ("../base", Local),
            ("base", Local),
            ("deployment.yaml", Local),
            ("./overlays/prod", Local),
            ("config.d/extra", Local),
            ("../common/v1.2/base", Local),
            ("crds/certs.k8s.yaml", Local),
        ];
        for (reference, want) in table {
            assert_eq!(classify(reference), want, "{reference}");
        }
    }

    #[test]
    fn maybe_remote_forms_are_local_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, c: &str| {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        };
        // A vendored directory whose name looks like a host.
        w(
            "app/github.com/org/repo/kustomization.yaml",
            "resources: []\n",
        );
        w(
            "app/kustomization.yaml",
            "resources:\n- github.com/org/repo\n",
        );
        assert!(check_references(dir.path(), "app").is_ok());
        for remote in [
            "gh:org/repo",
            "github.com/org/other",
            "git.example/org/repo.git//path",
            "github.com/org/repo//base?ref=v1",
        ] {
            w(
                "remote/kustomization.yaml",
                &format!("resources:\n- {remote}\n"),
            );
            let err = check_references(dir.path(), "remote").unwrap_err();
            assert!(
                err.contains("remote bases are not allowed"),
                "{remote}: {err}"
            );
        }
    }

    #[test]
    fn check_references_walks_bases() {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, c: &str| {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        };
        w("base/kustomization.yaml", "resources:\n- deploy.yaml\n");
        w("base/deploy.yaml", "");
        w("good/kustomization.yaml", "resources:\n- ../base\n");
        w("escape/kustomization.yaml", "resources:\n- ../../outside\n");
        w("deep/kustomization.yml", "bases:\n- ../escape\n");
        w(
            "remote/Kustomization",
            "resources:\n- https://example.com/x.yaml\n",
        );
        assert!(check_references(dir.path(), "good").is_ok());
        let err = check_references(dir.path(), "escape").unwrap_err();
        assert!(
            err.contains("escape/kustomization.yaml") && err.contains("outside the repository"),
            "{err}"
        );
        let err = check_references(dir.path(), "deep").unwrap_err();
        assert!(err.contains("escape/kustomization.yaml"), "{err}");
        let err = check_references(dir.path(), "remote").unwrap_err();
        assert!(err.contains("remote bases are not allowed"), "{err}");
    }
}
