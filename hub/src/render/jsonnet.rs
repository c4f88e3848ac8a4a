//! Jsonnet in directory sources, as Argo CD's repo server evaluates it
//! (`makeJsonnetVM`): every selected `.jsonnet` file is evaluated on its
//! own with `directory.jsonnet.extVars` (`std.extVar`), `tlas` (arguments
//! of a file that evaluates to a function) and `libs` (import search
//! directories, relative to the repository root). Values may use
//! `$ARGOCD_APP_NAME`-style variables, substituted as Argo CD does.
//!
//! The evaluator is jrsonnet, sandboxed:
//!
//! * imports are read from the Git tree of the commit, never from the hub's
//!   file system: a path is looked up next to the importing file, then in
//!   the `libs` (last first), then in the application's directory, as
//!   go-jsonnet does; absolute paths and paths leaving the repository are
//!   errors, symlinks are followed only inside the repository;
//! * there is no network, no environment and no file access otherwise;
//! * the hub binary evaluates in a child process (`flotilla-hub
//!   jsonnet-eval`, [`evaluate_in_child`]) with an empty environment, killed
//!   at the render timeout; without that command (the library's default,
//!   e.g. in tests) evaluation runs on a thread and the render gives up at
//!   the timeout, the thread running on (it cannot be killed); at most
//!   [`MAX_RUNNING`] evaluations run at once, counting such threads;
//! * the call depth is limited to [`MAX_STACK`] and each file's output to
//!   [`MAX_OUTPUT_BYTES`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use jrsonnet_evaluator::async_import::{AsyncImportResolver, ResolvedImportResolver, async_import};
use jrsonnet_evaluator::manifest::JsonFormat;
use jrsonnet_evaluator::tla::TlaArg;
use jrsonnet_evaluator::trace::{CompactFormat, PathResolver, TraceFormat};
use jrsonnet_evaluator::{AsPathLike, IStr, ResolvePath, SourcePath, State, apply_tla};
use jrsonnet_ir::SourceFile;

use crate::model::{JsonnetSource, JsonnetVar};
use crate::source::{RenderError, RepoEntry};

/// Evaluations allowed at once, counting ones that timed out but have not
/// finished.
pub const MAX_RUNNING: usize = 4;
/// Jsonnet call depth (go-jsonnet's default).
pub const MAX_STACK: usize = 500;
/// Largest output of one file.
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;

/// Read access to one commit of a repository.
pub trait RepoFiles: Send + Sync {
    /// What is at `path` (repository-relative).
    ///
    /// # Errors
    /// The path cannot be read (a symlink leaving the repository, a Git
    /// error).
    fn read(&self, path: &str) -> Result<RepoEntry, String>;
}

/// The Git tree of a fetched commit.
pub struct GitFiles {
    pub cache: crate::source::GitCache,
    pub url: String,
    pub commit: String,
}

impl RepoFiles for GitFiles {
    fn read(&self, path: &str) -> Result<RepoEntry, String> {
        self.cache
            .read_path(&self.url, &self.commit, path)
            .map_err(|e| match e {
                crate::source::SourceError::Path { message, .. } => message,
                other => other.to_string(),
            })
    }
}

/// What to evaluate.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonnetJob {
    /// The application's directory (repository-relative).
    pub app_dir: String,
    /// The `.jsonnet` files, repository-relative, in order.
    pub files: Vec<String>,
    pub options: JsonnetSource,
    /// Variables substituted in extVar and TLA values
    /// (`ARGOCD_APP_NAME`, …).
    pub env: Vec<(String, String)>,
}

/// Evaluates every file of `job`, returning each one's output as JSON,
/// within `timeout` for all of them.
///
/// # Errors
/// The first file that fails, with the evaluator's message (file, line and
/// column); an import outside the repository; the timeout; too many
/// evaluations running.
pub fn evaluate(
    files: Arc<dyn RepoFiles>,
    job: JsonnetJob,
    timeout: Duration,
) -> Result<Vec<String>, RenderError> {
    let first = job.files.first().cloned().unwrap_or_default();
    let fail = |file: &str, message: String| RenderError::Jsonnet {
        file: file.to_owned(),
        message,
    };
    let settings = Settings::new(&job).map_err(|m| fail(&first, m))?;
    let deadline = Instant::now() + timeout;
    let slot = Slot::acquire(deadline).ok_or_else(|| {
        fail(
            &first,
            format!(
                "{MAX_RUNNING} Jsonnet evaluations are already running (some may have timed out); try again later"
            ),
        )
    })?;
    let (tx, rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("flotilla-jsonnet".to_owned())
        .stack_size(16 << 20)
        .spawn(move || {
            let _slot = slot;
            let result = evaluate_all(files.as_ref(), &job, &settings);
            let _ = tx.send(result);
        })
        .map_err(|e| fail(&first, format!("cannot start the evaluator: {e}")))?;
    let wait = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(wait) {
        Ok(result) => {
            let _ = thread.join();
            result
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(fail(
            &first,
            format!(
                "evaluation timed out after {}s",
                timeout.as_secs_f64().round()
            ),
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(fail(
            &first,
            "the evaluator stopped unexpectedly (a bug in the evaluator)".to_owned(),
        )),
    }
}

/// What the hub sends `flotilla-hub jsonnet-eval` on stdin.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChildRequest {
    /// The hub's Git mirrors ([`crate::source::GitCache::root`]).
    mirrors: PathBuf,
    url: String,
    commit: String,
    job: JsonnetJob,
    timeout_ms: u64,
}

/// What it answers on stdout.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
enum ChildResponse {
    Outputs(Vec<String>),
    Error { file: String, message: String },
}

/// [`evaluate`] in a separate process started with `argv` (the hub's
/// `flotilla-hub jsonnet-eval`), which reads the repository from the same
/// mirrors, with an empty environment, and is killed at the timeout.
///
/// # Errors
/// As [`evaluate`]; also the process failing to start or crashing.
pub fn evaluate_in_child(
    argv: &[String],
    cache: &crate::source::GitCache,
    url: &str,
    commit: &str,
    job: JsonnetJob,
    timeout: Duration,
) -> Result<Vec<String>, RenderError> {
    let first = job.files.first().cloned().unwrap_or_default();
    let fail = |message: String| RenderError::Jsonnet {
        file: first.clone(),
        message,
    };
    let deadline = Instant::now() + timeout;
    let _slot = Slot::acquire(deadline).ok_or_else(|| {
        fail(format!(
            "{MAX_RUNNING} Jsonnet evaluations are already running; try again later"
        ))
    })?;
    let request = ChildRequest {
        mirrors: cache.root().to_path_buf(),
        url: url.to_owned(),
        commit: commit.to_owned(),
        job,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let input = serde_json::to_vec(&request).map_err(|e| fail(e.to_string()))?;
    let home = tempfile::Builder::new()
        .prefix("flotilla-jsonnet-")
        .tempdir()
        .map_err(|e| fail(format!("creating a temporary directory: {e}")))?;
    let left = deadline.saturating_duration_since(Instant::now());
    let out = crate::render::exec::run_tool_with_input(
        "jsonnet",
        argv,
        home.path(),
        left,
        home.path(),
        Some(input),
    )
    .map_err(|e| match e.strip_prefix("jsonnet: timed out") {
        Some(_) => fail(format!(
            "evaluation timed out after {}s",
            timeout.as_secs_f64().round()
        )),
        None => fail(e),
    })?;
    match serde_json::from_slice::<ChildResponse>(&out) {
        Ok(ChildResponse::Outputs(outputs)) => Ok(outputs),
        Ok(ChildResponse::Error { file, message }) => Err(RenderError::Jsonnet { file, message }),
        Err(e) => Err(fail(format!("unreadable answer from the evaluator: {e}"))),
    }
}

/// The evaluator process (`flotilla-hub jsonnet-eval`): a request from
/// [`evaluate_in_child`] in, the response out (both JSON).
pub fn run_child(input: &[u8]) -> Vec<u8> {
    let response = match serde_json::from_slice::<ChildRequest>(input) {
        Ok(request) => {
            let files = Arc::new(GitFiles {
                cache: crate::source::GitCache::new(request.mirrors),
                url: request.url,
                commit: request.commit,
            });
            match evaluate(
                files,
                request.job,
                Duration::from_millis(request.timeout_ms),
            ) {
                Ok(outputs) => ChildResponse::Outputs(outputs),
                Err(RenderError::Jsonnet { file, message }) => {
                    ChildResponse::Error { file, message }
                }
                Err(other) => ChildResponse::Error {
                    file: String::new(),
                    message: other.to_string(),
                },
            }
        }
        Err(e) => ChildResponse::Error {
            file: String::new(),
            message: format!("bad request: {e}"),
        },
    };
    serde_json::to_vec(&response).unwrap_or_default()
}

/// A place among the [`MAX_RUNNING`] evaluations, given back when the
/// evaluation thread ends.
struct Slot;

static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

impl Slot {
    fn acquire(deadline: Instant) -> Option<Self> {
        let (lock, cond) = &RUNNING;
        let mut running = lock.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= MAX_RUNNING {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return None;
            }
            running = cond
                .wait_timeout(running, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *running += 1;
        Some(Self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cond) = &RUNNING;
        let mut running = lock.lock().unwrap_or_else(|p| p.into_inner());
        *running = running.saturating_sub(1);
        cond.notify_one();
    }
}

/// The options of a job, checked and with variables substituted.
struct Settings {
    ext_vars: Vec<JsonnetVar>,
    tlas: Vec<JsonnetVar>,
    /// Import search directories, in search order.
    search: Vec<String>,
}

impl Settings {
    fn new(job: &JsonnetJob) -> Result<Self, String> {
        let subst = |vars: &[JsonnetVar], what: &str| -> Result<Vec<JsonnetVar>, String> {
            vars.iter()
                .map(|v| {
                    if v.name.is_empty() {
                        return Err(format!("directory.jsonnet.{what}: an entry has no name"));
                    }
                    let value = envsubst(&v.value, &job.env);
                    if v.code && mentions_import(&value) {
                        return Err(format!(
                            "directory.jsonnet.{what} {:?}: import in code values is not supported",
                            v.name
                        ));
                    }
                    Ok(JsonnetVar {
                        name: v.name.clone(),
                        value,
                        code: v.code,
                    })
                })
                .collect()
        };
        let ext_vars = subst(&job.options.ext_vars, "extVars")?;
        let tlas = subst(&job.options.tlas, "tlas")?;
        // go-jsonnet tries the library paths from the last to the first,
        // the application's directory (the first path) last.
        let mut search = Vec::new();
        for lib in job.options.libs.iter().rev() {
            let dir = crate::render::kustomize::resolve_inside("", lib)
                .filter(|_| !lib.starts_with('/'))
                .ok_or_else(|| {
                    format!("directory.jsonnet.libs {lib:?} is outside the repository")
                })?;
            search.push(dir);
        }
        search.push(job.app_dir.trim_matches('/').to_owned());
        Ok(Self {
            ext_vars,
            tlas,
            search,
        })
    }
}

fn evaluate_all(
    files: &dyn RepoFiles,
    job: &JsonnetJob,
    settings: &Settings,
) -> Result<Vec<String>, RenderError> {
    let _depth = jrsonnet_evaluator::stack::limit_stack_depth(MAX_STACK);
    let mut out = Vec::new();
    for file in &job.files {
        let json =
            evaluate_file(files, file, settings).map_err(|message| RenderError::Jsonnet {
                file: file.clone(),
                message,
            })?;
        out.push(json);
    }
    Ok(out)
}

/// One file, in a fresh evaluator (as Argo CD makes a VM per file).
fn evaluate_file(files: &dyn RepoFiles, file: &str, settings: &Settings) -> Result<String, String> {
    let context = jrsonnet_stdlib::ContextInitializer::new(PathResolver::Absolute);
    let mut builder = State::builder();
    builder
        .import_resolver(ResolvedImportResolver::new())
        .context_initializer(context.clone());
    let state = builder.build();
    let _entered = state.enter();
    let format = format_error;
    for var in &settings.ext_vars {
        if var.code {
            let value = state
                .evaluate_snippet(format!("<extVar {}>", var.name), var.value.as_str())
                .map_err(|e| format!("extVar {:?}: {}", var.name, format(&e)))?;
            context.add_ext_var(IStr::from(var.name.as_str()), value);
        } else {
            context.add_ext_str(
                IStr::from(var.name.as_str()),
                IStr::from(var.value.as_str()),
            );
        }
    }
    // jrsonnet's own API takes this map; interned strings hash by identity.
    #[allow(clippy::mutable_key_type)]
    let mut tlas: HashMap<IStr, TlaArg> = HashMap::new();
    for var in &settings.tlas {
        let arg = if var.code {
            TlaArg::Val(
                state
                    .evaluate_snippet(format!("<tla {}>", var.name), var.value.as_str())
                    .map_err(|e| format!("tla {:?}: {}", var.name, format(&e)))?,
            )
        } else {
            TlaArg::String(IStr::from(var.value.as_str()))
        };
        tlas.insert(IStr::from(var.name.as_str()), arg);
    }
    let importer = RepoImporter {
        files,
        search: &settings.search,
    };
    let entry = futures::executor::block_on(async_import(state.clone(), &importer, &file))
        .map_err(|e| format(&e))?;
    let value = state.import_resolved(entry).map_err(|e| format(&e))?;
    let value = apply_tla(&tlas, value).map_err(|e| format(&e))?;
    let json = value
        .manifest(JsonFormat::minify())
        .map_err(|e| format(&e))?;
    if json.len() > MAX_OUTPUT_BYTES {
        return Err(format!(
            "output is {} bytes, more than the limit of {MAX_OUTPUT_BYTES}",
            json.len()
        ));
    }
    Ok(json)
}

/// The evaluator's message on one line, with file, line and column: the
/// static checks' errors (not their warnings), or the error and its
/// trace.
fn format_error(e: &jrsonnet_evaluator::Error) -> String {
    use jrsonnet_evaluator::analyze::DiagLevel;
    use jrsonnet_evaluator::error::ErrorKind;
    if let ErrorKind::StaticAnalysisError(diagnostics) = e.error() {
        let errors: Vec<String> = diagnostics
            .iter()
            .filter(|d| matches!(d.level, DiagLevel::Error))
            .map(|d| match &d.span {
                Some(span) => {
                    let [at] = span.0.map_source_locations(&[span.1]);
                    let path = span.0.source_path();
                    let file = path
                        .path()
                        .map_or_else(|| path.to_string(), |p| p.display().to_string());
                    format!("{file}:{}:{}: {}", at.line, at.column, d.message)
                }
                None => d.message.clone(),
            })
            .collect();
        if !errors.is_empty() {
            return errors.join("; ");
        }
    }
    let trace = CompactFormat {
        resolver: PathResolver::Absolute,
        max_trace: 5,
        padding: 0,
    };
    let text = trace.format(e).unwrap_or_else(|_| e.to_string());
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether Jsonnet code could import a file (imports in code values are
/// not resolved ahead of evaluation, so they are refused).
fn mentions_import(code: &str) -> bool {
    code.match_indices("import")
        .any(|(i, _)| !code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// Resolves imports against the repository tree.
struct RepoImporter<'a> {
    files: &'a dyn RepoFiles,
    search: &'a [String],
}

fn jsonnet_error(message: String) -> jrsonnet_evaluator::Error {
    jrsonnet_evaluator::Error::from(jrsonnet_evaluator::RuntimeError(IStr::from(
        message.as_str(),
    )))
}

impl AsyncImportResolver for &RepoImporter<'_> {
    type Error = jrsonnet_evaluator::Error;

    async fn resolve_from(
        &self,
        from: &SourcePath,
        path: &dyn AsPathLike,
    ) -> Result<SourcePath, Self::Error> {
        let import = match path.as_path() {
            ResolvePath::Str(s) => s.to_owned(),
            ResolvePath::Path(p) => p.to_string_lossy().into_owned(),
        };
        let from_file = from
            .downcast_ref::<SourceFile>()
            .map(|f| f.path().to_string_lossy().into_owned());
        if import.starts_with('/') || import.starts_with('\\') {
            return Err(jsonnet_error(format!(
                "import {import:?}: absolute paths are not allowed (imports are read from the repository)"
            )));
        }
        let here = match &from_file {
            // The file being evaluated is named by its repository path.
            None => String::new(),
            Some(f) => f
                .rsplit_once('/')
                .map(|(d, _)| d.to_owned())
                .unwrap_or_default(),
        };
        let dirs = std::iter::once(&here).chain(self.search.iter());
        for dir in dirs {
            let Some(candidate) = crate::render::kustomize::resolve_inside(dir, &import) else {
                return Err(jsonnet_error(format!(
                    "import {import:?}{}: leaves the repository",
                    from_file
                        .as_deref()
                        .map(|f| format!(" from {f}"))
                        .unwrap_or_default()
                )));
            };
            match self.files.read(&candidate) {
                Ok(RepoEntry::File(_)) => {
                    return Ok(SourcePath::new(SourceFile::new(PathBuf::from(candidate))));
                }
                Ok(RepoEntry::Directory) => {
                    return Err(jsonnet_error(format!(
                        "import {import:?}: {candidate} is a directory"
                    )));
                }
                Ok(RepoEntry::Missing) => {}
                Err(e) => return Err(jsonnet_error(format!("import {import:?}: {e}"))),
            }
        }
        Err(jsonnet_error(format!(
            "couldn't open import {import:?}: no match locally or in the Jsonnet library paths"
        )))
    }

    async fn load_file_contents(&self, resolved: &SourcePath) -> Result<Vec<u8>, Self::Error> {
        let path = resolved
            .downcast_ref::<SourceFile>()
            .map(|f| f.path().to_string_lossy().into_owned())
            .ok_or_else(|| jsonnet_error(format!("cannot read {resolved}")))?;
        match self.files.read(&path) {
            Ok(RepoEntry::File(content)) => Ok(content),
            Ok(_) => Err(jsonnet_error(format!("{path}: not a file"))),
            Err(e) => Err(jsonnet_error(format!("{path}: {e}"))),
        }
    }
}

/// Argo CD's variable substitution in Jsonnet values (Go's `os.Expand`):
/// `$NAME` and `${NAME}` become the variable's value (empty when unknown),
/// `$$` a single `$`.
pub fn envsubst(text: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| -> String {
        if name == "$" {
            return "$".to_owned();
        }
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            out.push_str(&text[copied..i]);
            let (name, width) = shell_name(&text[i + 1..]);
            match name {
                Some(n) => out.push_str(&lookup(n)),
                // `$` not followed by a name stays.
                None if width == 0 => out.push('$'),
                // Bad syntax (`${}`, unclosed `${`): dropped, as Go does.
                None => {}
            }
            i += 1 + width;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Go's `getShellName`: the variable name after a `$` and how many bytes
/// it takes; `None` with a width for bad syntax that is eaten.
fn shell_name(s: &str) -> (Option<&str>, usize) {
    let b = s.as_bytes();
    let special = |c: u8| b"*#$@!?-0123456789".contains(&c);
    if b[0] == b'{' {
        if b.len() > 2 && special(b[1]) && b[2] == b'}' {
            return (Some(&s[1..2]), 3);
        }
        return match s[1..].find('}') {
            Some(0) => (None, 2),
            Some(end) => (Some(&s[1..=end]), end + 2),
            None => (None, 1),
        };
    }
    if special(b[0]) {
        return (Some(&s[0..1]), 1);
    }
    let end = b
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
        .unwrap_or(b.len());
    if end == 0 {
        (None, 0)
    } else {
        (Some(&s[..end]), end)
    }
}

/// The variables Argo CD's repo server offers for substitution, for an
/// application's source at `revision`.
pub fn build_env(
    app: &crate::model::Application,
    source: &crate::model::ApplicationSource,
    revision: &str,
) -> Vec<(String, String)> {
    let short = |n: usize| revision.chars().take(n).collect::<String>();
    [
        ("ARGOCD_APP_NAME", app.metadata.name.clone()),
        (
            "ARGOCD_APP_NAMESPACE",
            app.spec.destination.namespace.clone().unwrap_or_default(),
        ),
        ("ARGOCD_APP_PROJECT_NAME", app.spec.project.clone()),
        ("ARGOCD_APP_REVISION", revision.to_owned()),
        ("ARGOCD_APP_REVISION_SHORT", short(7)),
        ("ARGOCD_APP_REVISION_SHORT_8", short(8)),
        ("ARGOCD_APP_SOURCE_REPO_URL", source.repo_url.clone()),
        ("ARGOCD_APP_SOURCE_PATH", source.path.clone()),
        (
            "ARGOCD_APP_SOURCE_TARGET_REVISION",
            source.target_revision.clone(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files in memory.
    struct Files(HashMap<String, String>);

    impl RepoFiles for Files {
        fn read(&self, path: &str) -> Result<RepoEntry, String> {
            if let Some(c) = self.0.get(path) {
                return Ok(RepoEntry::File(c.clone().into_bytes()));
            }
            let prefix = format!("{path}/");
            if path.is_empty() || self.0.keys().any(|k| k.starts_with(&prefix)) {
                return Ok(RepoEntry::Directory);
            }
            Ok(RepoEntry::Missing)
        }
    }

    fn files(list: &[(&str, &str)]) -> Arc<dyn RepoFiles> {
        Arc::new(Files(
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ))
    }

    fn var(name: &str, value: &str, code: bool) -> JsonnetVar {
        JsonnetVar {
            name: name.into(),
            value: value.into(),
            code,
        }
    }

    fn run(
        repo: &[(&str, &str)],
        file: &str,
        options: JsonnetSource,
    ) -> Result<serde_json::Value, String> {
        let job = JsonnetJob {
            app_dir: "app".into(),
            files: vec![file.into()],
            options,
            env: vec![("ARGOCD_APP_NAME".into(), "guestbook".into())],
        };
        evaluate(files(repo), job, Duration::from_secs(30))
            .map(|mut out| serde_json::from_str(&out.remove(0)).expect("json"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn ext_vars_tlas_and_imports() {
        let repo = [
            (
                "app/main.jsonnet",
                "local p = import 'params.libsonnet';\nlocal lib = import 'shared.libsonnet';\nfunction(replicas=1, tag) { name: p.name, replicas: replicas, tag: tag, env: std.extVar('env'), n: std.extVar('n'), lib: lib.x }",
            ),
            ("app/params.libsonnet", "{ name: 'guestbook' }"),
            ("lib/shared.libsonnet", "{ x: 'from-lib' }"),
        ];
        let options = JsonnetSource {
            ext_vars: vec![
                var("env", "prod-$ARGOCD_APP_NAME", false),
                var("n", "1 + 2", true),
            ],
            tlas: vec![var("replicas", "3", true), var("tag", "v1", false)],
            libs: vec!["lib".into()],
        };
        let out = run(&repo, "app/main.jsonnet", options).expect("evaluates");
        assert_eq!(
            out,
            serde_json::json!({"name": "guestbook", "replicas": 3, "tag": "v1", "env": "prod-guestbook", "n": 3, "lib": "from-lib"})
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let repo = [("app/bad.jsonnet", "{\n  a: 1,\n  b: error 'boom',\n}")];
        let err = run(&repo, "app/bad.jsonnet", JsonnetSource::default()).unwrap_err();
        assert!(err.starts_with("app/bad.jsonnet: jsonnet: "), "{err}");
        assert!(
            err.contains("boom") && err.contains("app/bad.jsonnet:3"),
            "{err}"
        );

        let repo = [("app/syntax.jsonnet", "{\n  a: ,\n}")];
        let err = run(&repo, "app/syntax.jsonnet", JsonnetSource::default()).unwrap_err();
        assert!(err.contains("app/syntax.jsonnet:2"), "{err}");
    }

    #[test]
    fn static_errors_have_locations_and_warnings_pass() {
        let repo = [(
            "app/x.jsonnet",
            "local unused = 1;\n{\n  a: undefined_name,\n}",
        )];
        let err = run(&repo, "app/x.jsonnet", JsonnetSource::default()).unwrap_err();
        assert!(
            err.contains("app/x.jsonnet:3:") && err.contains("undefined_name"),
            "{err}"
        );
        assert!(!err.contains("unused"), "warnings are not errors: {err}");
        let repo = [("app/x.jsonnet", "local unused = 1;\n{ a: 1 }")];
        assert_eq!(
            run(&repo, "app/x.jsonnet", JsonnetSource::default()).expect("an unused local is fine"),
            serde_json::json!({"a": 1})
        );
    }

    #[test]
    fn imports_stay_in_the_repository() {
        let table = [
            ("import '../../etc/passwd'", "leaves the repository"),
            ("import '/etc/passwd'", "absolute paths are not allowed"),
            ("importstr 'missing.txt'", "no match locally"),
        ];
        for (code, want) in table {
            let repo = [("app/x.jsonnet", code)];
            let err = run(&repo, "app/x.jsonnet", JsonnetSource::default()).unwrap_err();
            assert!(err.contains(want), "{code}: {err}");
        }
        let options = JsonnetSource {
            libs: vec!["../outside".into()],
            ..Default::default()
        };
        let err = run(&[("app/x.jsonnet", "{}")], "app/x.jsonnet", options).unwrap_err();
        assert!(err.contains("outside the repository"), "{err}");
        let options = JsonnetSource {
            tlas: vec![var("t", "import 'x.libsonnet'", true)],
            ..Default::default()
        };
        let err = run(&[("app/x.jsonnet", "{}")], "app/x.jsonnet", options).unwrap_err();
        assert!(
            err.contains("import in code values is not supported"),
            "{err}"
        );
    }

    #[test]
    fn runaway_evaluation_times_out() {
        let job = JsonnetJob {
            app_dir: "app".into(),
            files: vec!["app/slow.jsonnet".into()],
            options: JsonnetSource::default(),
            env: Vec::new(),
        };
        let repo = files(&[(
            "app/slow.jsonnet",
            "std.foldl(function(a, b) a + b, std.range(1, 100000000), 0)",
        )]);
        let started = Instant::now();
        let err = evaluate(repo, job, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn deep_recursion_is_an_error() {
        let repo = [(
            "app/r.jsonnet",
            "local f(n) = if n == 0 then 0 else 1 + f(n - 1); f(100000)",
        )];
        let err = run(&repo, "app/r.jsonnet", JsonnetSource::default()).unwrap_err();
        assert!(err.to_lowercase().contains("stack"), "{err}");
    }

    #[test]
    fn substitution_follows_go() {
        let env = vec![
            ("A".to_owned(), "x".to_owned()),
            ("ARGOCD_APP_NAME".to_owned(), "app".to_owned()),
        ];
        for (input, want) in [
            ("$A", "x"),
            ("${A}-$ARGOCD_APP_NAME", "x-app"),
            ("$$A", "$A"),
            ("$UNKNOWN.", "."),
            ("a$", "a$"),
            ("$ a", "$ a"),
            ("${}b", "b"),
            ("${A", "A"),
            ("$1x", "x"),
            ("no vars", "no vars"),
        ] {
            assert_eq!(envsubst(input, &env), want, "{input}");
        }
    }
}
