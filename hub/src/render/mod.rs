//! Rendering an application's source into manifests: a plain directory,
//! a Kustomize build or a Helm template, chosen as Argo CD chooses.
//!
//! Detection: `source.helm` set or a `Chart.yaml` in the path → Helm;
//! else `source.kustomize` set or a kustomization file
//! (`kustomization.yaml`, `kustomization.yml`, `Kustomization`) → Kustomize;
//! else a directory. External tools run on a copy of the repository tree
//! at the commit in a temporary directory, with a timeout, a cleared
//! environment and no network (see [`exec::run_tool`]).
//!
//! Everything here is blocking: call it from `spawn_blocking`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::model::DirectorySource;
use crate::source::{self, GitCache, SourceError};

pub mod exec;
pub mod helm;
pub mod jsonnet;
pub mod kustomize;

/// Default limit for one kustomize or helm run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the external renderers are, and how long they may run.
#[derive(Clone, Debug)]
pub struct RenderTools {
    /// Command prefix the build directory is appended to, e.g.
    /// `["kustomize", "build"]` or `["kubectl", "kustomize"]`. `None`:
    /// `kustomize build` when `kustomize` is on PATH, else
    /// `kubectl kustomize`.
    pub kustomize: Option<Vec<String>>,
    /// The helm program (`template …` is appended). `None`: `helm` on PATH.
    pub helm: Option<Vec<String>>,
    /// A command that evaluates Jsonnet in its own process
    /// (`flotilla-hub jsonnet-eval`, see [`jsonnet::run_child`]), killed at
    /// the timeout. `None`: in the hub's process, on a thread.
    pub jsonnet: Option<Vec<String>>,
    pub timeout: Duration,
}

impl Default for RenderTools {
    fn default() -> Self {
        Self {
            kustomize: None,
            helm: None,
            jsonnet: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl RenderTools {
    /// Parses a command line given as one string (split on whitespace).
    pub fn command(text: &str) -> Option<Vec<String>> {
        let parts: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        (!parts.is_empty()).then_some(parts)
    }

    fn kustomize_argv(&self) -> Result<Vec<String>, String> {
        let argv = match &self.kustomize {
            Some(c) => c.clone(),
            None => {
                if let Some(k) = exec::find_program("kustomize") {
                    vec![k.display().to_string(), "build".into()]
                } else if let Some(k) = exec::find_program("kubectl") {
                    vec![k.display().to_string(), "kustomize".into()]
                } else {
                    return Err("neither kustomize nor kubectl is installed on the hub (configure --kustomize-command)".into());
                }
            }
        };
        absolute(argv, "kustomize", "--kustomize-command")
    }

    fn helm_argv(&self) -> Result<Vec<String>, String> {
        let argv = match &self.helm {
            Some(c) => c.clone(),
            None => match exec::find_program("helm") {
                Some(h) => vec![h.display().to_string()],
                None => {
                    return Err(
                        "helm is not installed on the hub (configure --helm-command)".into(),
                    );
                }
            },
        };
        absolute(argv, "helm", "--helm-command")
    }
}

/// The tool runs with an empty PATH, so its program must be a full path.
fn absolute(mut argv: Vec<String>, tool: &str, flag: &str) -> Result<Vec<String>, String> {
    let Some(first) = argv.first_mut() else {
        return Err(format!("{flag} is empty"));
    };
    match exec::find_program(first) {
        Some(p) => {
            *first = p.display().to_string();
            Ok(argv)
        }
        None => Err(format!(
            "{tool} command {first:?} not found on the hub (configure {flag})"
        )),
    }
}

/// Everything a render depends on; equal requests give equal results, so
/// this is also the render cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RenderRequest {
    pub url: String,
    /// The commit; for a Helm repository chart, the chart version.
    pub commit: String,
    pub path: String,
    /// A chart in the Helm repository `url`, or empty (Git).
    pub chart: String,
    /// Canonical JSON of `source.directory`, or empty.
    pub directory: String,
    /// Canonical JSON of `source.kustomize`, or empty.
    pub kustomize: String,
    /// Canonical JSON of `source.helm`, or empty.
    pub helm: String,
    /// Canonical JSON of `source.plugin`, or empty (plugins are refused).
    pub plugin: String,
    /// Helm only: release name and namespace (they appear in the output).
    pub release: String,
    pub namespace: String,
    /// Variables substituted in Jsonnet values (`ARGOCD_APP_NAME`, …);
    /// only set when a value uses `$`, so that other renders stay shared
    /// between applications.
    pub env: Vec<(String, String)>,
    /// The `ref` sources of a multi-source application that this source's
    /// Helm `valueFiles` name as `$<ref>/…`.
    pub refs: Vec<RefSource>,
}

/// A source of `spec.sources` with a `ref`, resolved to a commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RefSource {
    /// The ref name, without `$`.
    pub name: String,
    pub url: String,
    pub commit: String,
}

/// Canonical JSON of an option block, or empty when unset.
fn canonical(v: &Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    }
}

/// The render request of `app`'s source at `commit`.
pub fn request_for(app: &crate::model::Application, commit: &str) -> RenderRequest {
    request_for_source(app, &app.spec.source, commit)
}

/// The render request of one of `app`'s sources at `commit`.
pub fn request_for_source(
    app: &crate::model::Application,
    src: &crate::model::ApplicationSource,
    commit: &str,
) -> RenderRequest {
    let helm = canonical(&src.helm);
    let directory = src
        .directory
        .as_ref()
        .and_then(|d| serde_json::to_value(d).ok())
        .map(|v| v.to_string())
        .unwrap_or_default();
    let uses_env = src.directory.as_ref().is_some_and(|d| {
        d.jsonnet
            .ext_vars
            .iter()
            .chain(&d.jsonnet.tlas)
            .any(|v| v.value.contains('$'))
    });
    RenderRequest {
        url: src.repo_url.clone(),
        commit: commit.to_owned(),
        path: src.path.clone(),
        chart: src.chart.clone(),
        directory,
        kustomize: canonical(&src.kustomize),
        plugin: canonical(&src.plugin),
        // The release name and namespace appear in Helm's output; for the
        // other renderers they must not split the cache.
        release: if helm.is_empty() {
            String::new()
        } else {
            app.metadata.name.clone()
        },
        namespace: if helm.is_empty() {
            String::new()
        } else {
            app.spec.destination.namespace.clone().unwrap_or_default()
        },
        helm,
        env: if uses_env {
            jsonnet::build_env(app, src, commit)
        } else {
            Vec::new()
        },
        refs: Vec::new(),
    }
}

/// What [`render_source`] answers for a chart whose request carries no
/// release name: render again with [`with_release`].
pub const NEEDS_RELEASE: &str = "internal: helm chart needs a release name";

/// Whether a render result asks for a release name.
pub fn needs_release(result: &Result<Vec<String>, String>) -> bool {
    matches!(result, Err(e) if e == NEEDS_RELEASE)
}

/// `req` with `app`'s release name and namespace.
pub fn with_release(mut req: RenderRequest, app: &crate::model::Application) -> RenderRequest {
    req.release = app.metadata.name.clone();
    req.namespace = app.spec.destination.namespace.clone().unwrap_or_default();
    req
}

/// Which renderer a source uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Directory,
    Kustomize,
    Helm,
}

/// The option blocks a source sets (after Argo CD's normalisation: a block
/// with only empty values is not set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExplicitTypes {
    pub kustomize: bool,
    pub helm: bool,
    pub directory: bool,
    pub plugin: bool,
}

/// Whether an option block (canonical JSON) sets anything: Argo CD drops
/// blocks whose fields are all empty before choosing the renderer.
pub fn option_block_set(json: &str) -> bool {
    fn set(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(_) => true,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => o.values().any(set),
        }
    }
    !json.is_empty() && serde_json::from_str::<Value>(json).is_ok_and(|v| set(&v))
}

impl ExplicitTypes {
    /// The blocks `req` sets.
    pub fn of(req: &RenderRequest) -> Self {
        Self {
            kustomize: option_block_set(&req.kustomize),
            helm: option_block_set(&req.helm),
            directory: serde_json::from_str::<DirectorySource>(&req.directory)
                .is_ok_and(|d| d.is_explicit()),
            plugin: !req.plugin.is_empty(),
        }
    }
}

/// Picks the renderer as Argo CD does: the one option block that is set
/// (`kustomize`, `helm`, `directory`); with none, a kustomization file
/// directly in the path makes it Kustomize, else a file whose name ends
/// in `Chart.yaml` makes it Helm (the later name in sorted order wins when
/// both are there, as Argo CD's walk does), else a directory.
///
/// # Errors
/// More than one option block, or a plugin.
pub fn detect(names: &[&str], explicit: ExplicitTypes) -> Result<SourceKind, String> {
    if explicit.plugin {
        return Err(
            "source.plugin: config management plugins are not supported by Flotilla".to_owned(),
        );
    }
    let mut set = Vec::new();
    if explicit.kustomize {
        set.push(("Kustomize", SourceKind::Kustomize));
    }
    if explicit.helm {
        set.push(("Helm", SourceKind::Helm));
    }
    if explicit.directory {
        set.push(("Directory", SourceKind::Directory));
    }
    match set.as_slice() {
        [(_, kind)] => return Ok(*kind),
        [] => {}
        many => {
            let names: Vec<&str> = many.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "multiple application sources defined: {}",
                names.join(",")
            ));
        }
    }
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    let mut kind = SourceKind::Directory;
    for name in sorted {
        if name.ends_with("Chart.yaml") {
            kind = SourceKind::Helm;
        }
        if kustomize::KUSTOMIZATION_FILES.contains(&name) {
            kind = SourceKind::Kustomize;
        }
    }
    Ok(kind)
}

/// Refuses application paths that could leave the repository: absolute
/// paths and `..` components.
///
/// # Errors
/// A message naming the path.
pub fn check_app_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(format!(
            "path {path:?} must be relative to the repository root"
        ));
    }
    if path.split(['/', '\\']).any(|c| c == "..") {
        return Err(format!("path {path:?} escapes the repository (\"..\")"));
    }
    Ok(())
}

fn source_error(e: SourceError) -> String {
    match e {
        SourceError::Path { path, message, .. } => format!("path {path:?}: {message}"),
        other => other.to_string(),
    }
}

fn parse_options(text: &str) -> Option<Value> {
    if text.is_empty() {
        None
    } else {
        serde_json::from_str(text).ok()
    }
}

/// Renders `req` into objects (JSON strings, one per object).
///
/// # Errors
/// One line for the application's error: which file, which tool, why.
pub fn render_source(
    cache: &GitCache,
    tools: &RenderTools,
    req: &RenderRequest,
) -> Result<Vec<String>, String> {
    check_app_path(&req.path)?;
    let options: DirectorySource = if req.directory.is_empty() {
        DirectorySource::default()
    } else {
        serde_json::from_str(&req.directory).map_err(|e| format!("source.directory: {e}"))?
    };
    let files = cache
        .read_dir(&req.url, &req.commit, &req.path, options.recurse)
        .map_err(source_error)?;
    let names: Vec<&str> = files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| !p.contains('/'))
        .collect();
    let kind = detect(&names, ExplicitTypes::of(req))?;
    if kind == SourceKind::Helm && req.release.is_empty() {
        return Err(NEEDS_RELEASE.to_owned());
    }
    let objects = match kind {
        SourceKind::Directory => {
            let app_dir = req.path.trim_matches('/').trim_start_matches("./");
            let app_dir = if app_dir == "." { "" } else { app_dir };
            let mut evaluate = |jsonnet_files: &[&source::SourceFile]| {
                let job = jsonnet::JsonnetJob {
                    app_dir: app_dir.to_owned(),
                    files: jsonnet_files
                        .iter()
                        .map(|f| {
                            if app_dir.is_empty() {
                                f.path.clone()
                            } else {
                                format!("{app_dir}/{}", f.path)
                            }
                        })
                        .collect(),
                    options: options.jsonnet.clone(),
                    env: req.env.clone(),
                };
                let result = match &tools.jsonnet {
                    Some(argv) => jsonnet::evaluate_in_child(
                        argv,
                        cache,
                        &req.url,
                        &req.commit,
                        job,
                        tools.timeout,
                    ),
                    None => {
                        let repo = std::sync::Arc::new(jsonnet::GitFiles {
                            cache: cache.clone(),
                            url: req.url.clone(),
                            commit: req.commit.clone(),
                        });
                        jsonnet::evaluate(repo, job, tools.timeout)
                    }
                };
                result.map_err(|e| {
                    // The renderer names files relative to the
                    // application's directory; jsonnet names them from the
                    // repository root already.
                    strip_dir(e, app_dir)
                })
            };
            source::render_directory(&files, &options, &mut evaluate)
                .map_err(|e| e.in_directory(app_dir).to_string())?
        }
        SourceKind::Kustomize | SourceKind::Helm => {
            let tmp = tempfile::Builder::new()
                .prefix("flotilla-render-")
                .tempdir()
                .map_err(|e| format!("creating a temporary directory: {e}"))?;
            let repo = tmp.path().join("repo");
            cache
                .export_tree(&req.url, &req.commit, &repo)
                .map_err(source_error)?;
            check_on_disk(&repo, &req.path)?;
            if kind == SourceKind::Kustomize {
                render_kustomize(tools, req, tmp.path(), &repo)?
            } else {
                render_helm(cache, tools, req, tmp.path(), &repo)?
            }
        }
    };
    Ok(objects.iter().map(Value::to_string).collect())
}

/// A Jsonnet error names its file from the repository root; the directory
/// renderer prefixes the application's directory to every file it names,
/// so take it off here first.
fn strip_dir(e: source::RenderError, app_dir: &str) -> source::RenderError {
    match e {
        source::RenderError::Jsonnet { file, message } if !app_dir.is_empty() => {
            let file = file
                .strip_prefix(&format!("{app_dir}/"))
                .map(str::to_owned)
                .unwrap_or(file);
            source::RenderError::Jsonnet { file, message }
        }
        other => other,
    }
}

/// The application's directory must be a real directory in the exported
/// tree, reached without following a symlink.
fn check_on_disk(repo: &Path, path: &str) -> Result<(), String> {
    let mut here = repo.to_path_buf();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        here.push(c);
        let meta = std::fs::symlink_metadata(&here)
            .map_err(|_| format!("path {path:?}: does not exist"))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "path {path:?}: {c:?} is a symlink; application paths must not go through symlinks"
            ));
        }
    }
    if !here.is_dir() {
        return Err(format!("path {path:?}: is not a directory"));
    }
    Ok(())
}

fn render_kustomize(
    tools: &RenderTools,
    req: &RenderRequest,
    tmp: &Path,
    repo: &Path,
) -> Result<Vec<Value>, String> {
    let app = req.path.trim_matches('/');
    let app = if app == "." { "" } else { app };
    kustomize::check_references(repo, app)?;
    let base = if app.is_empty() {
        "../repo".to_owned()
    } else {
        format!("../repo/{app}")
    };
    let options = parse_options(&req.kustomize);
    let build_dir = match kustomize::overlay(options.as_ref(), &base)? {
        Some(overlay) => {
            let dir = tmp.join("overlay");
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating the overlay: {e}"))?;
            std::fs::write(dir.join("kustomization.yaml"), overlay.to_string())
                .map_err(|e| format!("writing the overlay: {e}"))?;
            dir
        }
        None => {
            if kustomize::kustomization_in(&repo.join(app)).is_none() {
                return Err(format!("path {:?}: no kustomization file", req.path));
            }
            repo.join(app)
        }
    };
    let mut argv = tools.kustomize_argv()?;
    argv.push(build_dir.display().to_string());
    let out = exec::run_tool("kustomize build", &argv, tmp, tools.timeout, tmp)?;
    let origin = format!("kustomize build {}", req.path);
    source::parse_manifest_stream(&String::from_utf8_lossy(&out), &origin)
        .map_err(|e| e.to_string())
}

/// Writes the trees of the request's `ref` sources under `tmp/refs/`.
fn export_refs(cache: &GitCache, req: &RenderRequest, tmp: &Path) -> Result<helm::RefDirs, String> {
    let mut dirs = helm::RefDirs::new();
    for r in &req.refs {
        let dir = tmp.join("refs").join(&r.name);
        cache
            .export_tree(&r.url, &r.commit, &dir)
            .map_err(|e| format!("ref source ${}: {}", r.name, source_error(e)))?;
        dirs.insert(r.name.clone(), dir);
    }
    Ok(dirs)
}

fn render_helm(
    cache: &GitCache,
    tools: &RenderTools,
    req: &RenderRequest,
    tmp: &Path,
    repo: &Path,
) -> Result<Vec<Value>, String> {
    let mut argv = tools.helm_argv()?;
    let refs = export_refs(cache, req, tmp)?;
    let app = req.path.trim_matches('/');
    let chart_dir = repo.join(app);
    if !chart_dir.join("Chart.yaml").is_file() {
        return Err(format!("path {:?}: no Chart.yaml", req.path));
    }
    let options = parse_options(&req.helm);
    argv.extend(helm::template_args(
        options.as_ref(),
        &req.release,
        &req.namespace,
        &chart_dir,
        app,
        tmp,
        &refs,
    )?);
    let out = exec::run_tool("helm template", &argv, tmp, tools.timeout, tmp)?;
    let origin = format!("helm template {}", req.path);
    source::parse_manifest_stream(&String::from_utf8_lossy(&out), &origin)
        .map_err(|e| e.to_string())
}

/// Renders `req`, a chart from a Helm repository already unpacked in
/// `chart_dir`, with `helm template` and the request's `source.helm`
/// options (value files are relative to the chart). The chart is copied
/// into a temporary directory first, so the tool never sees the cache.
///
/// # Errors
/// One line for the application's error: no helm, a bad option, or
/// helm's own message.
pub fn render_chart(
    cache: &GitCache,
    tools: &RenderTools,
    req: &RenderRequest,
    chart_dir: &Path,
) -> Result<Vec<String>, String> {
    let mut argv = tools.helm_argv()?;
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-render-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let refs = export_refs(cache, req, tmp.path())?;
    let chart = tmp.path().join("repo").join(&req.chart);
    copy_dir(chart_dir, &chart).map_err(|e| format!("copying chart {:?}: {e}", req.chart))?;
    let options = parse_options(&req.helm);
    argv.extend(helm::template_args(
        options.as_ref(),
        &req.release,
        &req.namespace,
        &chart,
        "",
        tmp.path(),
        &refs,
    )?);
    let out = exec::run_tool(
        "helm template",
        &argv,
        tmp.path(),
        tools.timeout,
        tmp.path(),
    )?;
    let origin = format!("helm template {} {}", req.chart, req.commit);
    let objects = source::parse_manifest_stream(&String::from_utf8_lossy(&out), &origin)
        .map_err(|e| e.to_string())?;
    Ok(objects.iter().map(Value::to_string).collect())
}

/// Copies regular files and directories (an unpacked chart holds nothing
/// else).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry?;
        let rel = entry
            .path()
            .strip_prefix(from)
            .map_err(std::io::Error::other)?;
        let target = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if entry.file_type().is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        let none = ExplicitTypes::default();
        let only = |f: fn(&mut ExplicitTypes)| {
            let mut e = ExplicitTypes::default();
            f(&mut e);
            e
        };
        let table: [(&[&str], ExplicitTypes, Result<SourceKind, &str>); 10] = [
            (&["a.yaml"], none, Ok(SourceKind::Directory)),
            (&["kustomization.yaml"], none, Ok(SourceKind::Kustomize)),
            (&["Kustomization"], none, Ok(SourceKind::Kustomize)),
            (&["values.yaml", "Chart.yaml"], none, Ok(SourceKind::Helm)),
            // Argo CD's walk: the later name wins.
            (
                &["kustomization.yml", "Chart.yaml"],
                none,
                Ok(SourceKind::Kustomize),
            ),
            (&["MyChart.yaml"], none, Ok(SourceKind::Helm)),
            (&[], only(|e| e.kustomize = true), Ok(SourceKind::Kustomize)),
            (
                &["Chart.yaml"],
                only(|e| e.directory = true),
                Ok(SourceKind::Directory),
            ),
            (
                &[],
                ExplicitTypes {
                    kustomize: true,
                    helm: true,
                    ..none
                },
                Err("multiple application sources defined: Kustomize,Helm"),
            ),
            (
                &[],
                only(|e| e.plugin = true),
                Err("plugins are not supported"),
            ),
        ];
        for (names, explicit, want) in table {
            match (detect(names, explicit), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{names:?} {explicit:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{names:?} {explicit:?}: {got:?}, want {want:?}"),
            }
        }
        assert!(!option_block_set(""));
        assert!(!option_block_set("{}"));
        assert!(!option_block_set(r#"{"valueFiles":[],"releaseName":""}"#));
        assert!(option_block_set(r#"{"skipCrds":true}"#));
        assert!(option_block_set(r#"{"namePrefix":"p-"}"#));
    }

    #[test]
    fn app_paths() {
        for ok in ["", ".", "apps/web", "./apps/web/"] {
            assert!(check_app_path(ok).is_ok(), "{ok}");
        }
        for bad in ["/etc", "../x", "apps/../../x", "a/..", "\\x"] {
            assert!(check_app_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_helm_is_a_clear_error() {
        let tools = RenderTools {
            helm: Some(vec!["/nonexistent/helm".into()]),
            ..Default::default()
        };
        let err = tools.helm_argv().unwrap_err();
        assert!(
            err.contains("not found on the hub (configure --helm-command)"),
            "{err}"
        );
    }
}
