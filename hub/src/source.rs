//! Git sources through gix, and rendering a source path into manifests.
//!
//! Everything here is blocking (gix's network client is blocking): call it
//! from `tokio::task::spawn_blocking`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::model::DirectorySource;

/// Errors from fetching or reading a Git repository.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("repository {url}: {message}")]
    Fetch { url: String, message: String },
    /// The fetch did not finish before its deadline ([`FetchLimits`]).
    #[error("repository {url}: fetch timed out after {}", format_duration(*.after))]
    TimedOut { url: String, after: Duration },
    #[error("repository {url}: revision {revision:?} not found: {message}")]
    Revision {
        url: String,
        revision: String,
        message: String,
    },
    #[error("repository {url} at {commit}: path {path:?}: {message}")]
    Path {
        url: String,
        commit: String,
        path: String,
        message: String,
    },
}

/// Errors from turning files into Kubernetes objects.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A file is not valid YAML/JSON.
    #[error("{file}: invalid YAML{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Yaml {
        file: String,
        line: Option<usize>,
        message: String,
    },
    /// A document is not a Kubernetes object.
    #[error("{file}: document {index}: {message}")]
    Object {
        file: String,
        index: usize,
        message: String,
    },
    /// The same object appears twice.
    #[error("{kind}/{name} is defined twice ({first} and {second})")]
    Duplicate {
        kind: String,
        name: String,
        first: String,
        second: String,
    },
    /// A `.json` file that is not one JSON object.
    #[error("{file}: invalid JSON{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Json {
        file: String,
        line: Option<usize>,
        message: String,
    },
    /// A `.jsonnet` file that does not evaluate, or whose output is not
    /// Kubernetes objects.
    #[error("{file}: jsonnet: {message}")]
    Jsonnet { file: String, message: String },
    /// A bad include/exclude pattern.
    #[error("directory {field} {pattern:?}: {message}")]
    Pattern {
        field: &'static str,
        pattern: String,
        message: String,
    },
}

/// What is at a path of a repository tree ([`GitCache::read_path`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoEntry {
    File(Vec<u8>),
    Directory,
    Missing,
}

/// One file read from a repository tree.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the directory that was read.
    pub path: String,
    pub content: Vec<u8>,
}

/// How the hub runs `ssh` for ssh remotes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshSettings {
    /// OpenSSH known_hosts file that host keys are verified against (read
    /// at every fetch). `None`: no host is known, so only repositories with
    /// `insecure_ignore_host_key` can be fetched over ssh.
    pub known_hosts: Option<PathBuf>,
    /// Private directory (created 0700) holding the key file of each
    /// running ssh fetch; never inside a mirror.
    pub scratch_dir: PathBuf,
}

/// The ssh identity of one repository. `Debug` hides the key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SshKey {
    /// Private key text (OpenSSH or PEM), without a passphrase.
    pub private_key: String,
    /// Accept any host key (Argo CD's `insecureIgnoreHostKey`).
    pub insecure_ignore_host_key: bool,
}

impl std::fmt::Debug for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshKey")
            .field("private_key", &"***")
            .field("insecure_ignore_host_key", &self.insecure_ignore_host_key)
            .finish()
    }
}

/// Default longest time one fetch may take ([`GitCache::set_fetch_timeout`]).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// `90s`, `1.5s`, `250ms`: how timeouts are shown in errors.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Bounds on one fetch.
///
/// Over HTTP(S), every request made for the fetch ends at the deadline at
/// the latest, so a server that stalls or drips bytes cannot hold the
/// fetch (nor the thread running it) beyond it. For every transport,
/// receiving the pack stops once `interrupt` is set. A fetch that fails
/// after its deadline (or interrupted) returns [`SourceError::TimedOut`].
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// When the fetch is given up.
    pub deadline: Instant,
    /// The timeout the deadline was computed from, for the error.
    pub timeout: Duration,
    /// Set by the caller that stopped waiting, to stop the fetch.
    pub interrupt: Arc<AtomicBool>,
}

impl FetchLimits {
    /// A fetch starting now that may take `timeout`.
    pub fn starting_now(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            timeout,
            interrupt: Arc::default(),
        }
    }

    /// Whether the fetch is past its deadline or was interrupted.
    pub fn expired(&self) -> bool {
        self.interrupt.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// How a fetch authenticates ([`GitCache::fetch_bounded`]).
#[derive(Debug, Clone, Copy, Default)]
pub enum FetchAuth<'a> {
    /// No stored credentials (ssh remotes use the hub user's identities).
    #[default]
    Anonymous,
    /// https user name and password or token.
    Password {
        username: &'a str,
        password: &'a str,
    },
    /// An ssh key.
    SshKey(&'a SshKey),
}

/// Local bare mirrors of Git repositories, one per URL, shared by every
/// application that uses that URL.
#[derive(Debug, Clone)]
pub struct GitCache {
    root: PathBuf,
    /// Shared by every clone, so settings given after start reach them all.
    ssh: Arc<RwLock<SshSettings>>,
    /// Timeout of fetches made without explicit [`FetchLimits`].
    fetch_timeout: Arc<RwLock<Duration>>,
    /// The hosts any fetch may reach (`--allowed-fetch-hosts`).
    allowed_hosts: Arc<RwLock<crate::fetch_hosts::FetchHosts>>,
}

impl GitCache {
    /// Mirrors live under `root` (created on first fetch). ssh fetches use
    /// `<root>/ssh` as scratch directory and know no host until
    /// [`GitCache::set_ssh`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let ssh = SshSettings {
            known_hosts: None,
            scratch_dir: root.join("ssh"),
        };
        Self {
            root,
            ssh: Arc::new(RwLock::new(ssh)),
            fetch_timeout: Arc::new(RwLock::new(DEFAULT_FETCH_TIMEOUT)),
            allowed_hosts: Arc::default(),
        }
    }

    /// Sets the hosts fetches may reach, for this cache and its clones;
    /// any other is refused before a connection is made.
    pub fn set_allowed_hosts(&self, hosts: crate::fetch_hosts::FetchHosts) {
        *self
            .allowed_hosts
            .write()
            .unwrap_or_else(|p| p.into_inner()) = hosts;
    }

    /// The hosts fetches may reach.
    pub fn allowed_hosts(&self) -> crate::fetch_hosts::FetchHosts {
        self.allowed_hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the timeout of fetches made without explicit limits
    /// ([`GitCache::fetch`] and its variants), for this cache and its clones.
    pub fn set_fetch_timeout(&self, timeout: Duration) {
        *self
            .fetch_timeout
            .write()
            .unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    /// The timeout of fetches made without explicit limits.
    pub fn fetch_timeout(&self) -> Duration {
        *self.fetch_timeout.read().unwrap_or_else(|p| p.into_inner())
    }

    fn default_limits(&self) -> FetchLimits {
        FetchLimits::starting_now(self.fetch_timeout())
    }

    /// Fetches `url` as [`GitCache::fetch`] does, authenticated as `auth`
    /// says, within `limits`.
    ///
    /// # Errors
    /// The repository cannot be reached, the credentials are refused, the
    /// revision does not exist, or the deadline passed
    /// ([`SourceError::TimedOut`]).
    pub fn fetch_bounded(
        &self,
        url: &str,
        revision: &str,
        auth: FetchAuth<'_>,
        limits: &FetchLimits,
    ) -> Result<String, SourceError> {
        self.allowed_hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .check(url)
            .map_err(|message| SourceError::Fetch {
                url: redact_url(url),
                message,
            })?;
        match auth {
            FetchAuth::SshKey(key) => imp::fetch_ssh(
                &self.root,
                url,
                revision,
                &self.ssh_settings(),
                Some(key),
                limits,
            ),
            FetchAuth::Anonymous if is_ssh_url(url) => imp::fetch_ssh(
                &self.root,
                url,
                revision,
                &self.ssh_settings(),
                None,
                limits,
            ),
            FetchAuth::Anonymous => imp::fetch_as(&self.root, url, url, revision, limits),
            FetchAuth::Password { username, password } => {
                let remote = with_credentials(url, username, password);
                imp::fetch_as(&self.root, url, &remote, revision, limits)
            }
        }
    }

    /// The directory holding the mirrors.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Sets how ssh remotes are reached (for this cache and its clones),
    /// and removes key files a previous run left in the scratch directory.
    pub fn set_ssh(&self, settings: SshSettings) {
        imp::clean_ssh_scratch(&settings.scratch_dir);
        *self.ssh.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    fn ssh_settings(&self) -> SshSettings {
        self.ssh.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fetches `url` (`file://`, `https://`, `ssh://`, `user@host:path`, or
    /// a local path) and resolves `revision` (branch, tag, commit, or
    /// `HEAD`) to a full commit id. ssh remotes are reached without a
    /// stored key (the hub user's default identities) but with the same
    /// host key checks as [`GitCache::fetch_with_ssh_key`].
    ///
    /// # Errors
    /// The repository cannot be reached or the revision does not exist.
    pub fn fetch(&self, url: &str, revision: &str) -> Result<String, SourceError> {
        self.fetch_bounded(url, revision, FetchAuth::Anonymous, &self.default_limits())
    }

    /// [`GitCache::fetch`] of an ssh URL with `key`. The key is written to
    /// a 0600 file in the scratch directory for the duration of the fetch
    /// only; `ssh` runs in batch mode with that key alone and checks the
    /// host key against the known hosts file unless the key says not to.
    ///
    /// # Errors
    /// The host is unknown or unreachable, the key is refused, or the
    /// revision does not exist; the message gives ssh's reason.
    pub fn fetch_with_ssh_key(
        &self,
        url: &str,
        revision: &str,
        key: &SshKey,
    ) -> Result<String, SourceError> {
        self.fetch_bounded(
            url,
            revision,
            FetchAuth::SshKey(key),
            &self.default_limits(),
        )
    }

    /// Reads the files below `path` at `commit` (fetched before). With
    /// `recurse`, subdirectories too. Paths in the result are relative to
    /// `path`, sorted.
    ///
    /// # Errors
    /// The commit or the path does not exist, or the path is not a directory.
    pub fn read_dir(
        &self,
        url: &str,
        commit: &str,
        path: &str,
        recurse: bool,
    ) -> Result<Vec<SourceFile>, SourceError> {
        imp::read_dir(&self.root, url, commit, path, recurse)
    }

    /// Reads one path at `commit` (fetched before): a file's content, or
    /// whether it is a directory or missing. Symlinks are followed while
    /// they stay inside the repository; `..` is refused.
    ///
    /// # Errors
    /// The commit does not exist, the path has `..`, or a symlink on the
    /// way leaves the repository.
    pub fn read_path(&self, url: &str, commit: &str, path: &str) -> Result<RepoEntry, SourceError> {
        imp::read_path(&self.root, url, commit, path)
    }

    /// [`GitCache::fetch`] with https credentials (user name and password
    /// or token), kept out of the mirror's key and redacted from errors.
    ///
    /// # Errors
    /// The repository cannot be reached or the revision does not exist.
    pub fn fetch_with_credentials(
        &self,
        url: &str,
        revision: &str,
        username: &str,
        password: &str,
    ) -> Result<String, SourceError> {
        self.fetch_bounded(
            url,
            revision,
            FetchAuth::Password { username, password },
            &self.default_limits(),
        )
    }

    /// Writes the whole tree of `commit` (fetched before) into `dest`, for
    /// renderers that need files on disk. Symlinks are kept only when they
    /// resolve inside the repository; submodules are skipped. Returns the
    /// repository paths of the symlinks skipped.
    ///
    /// # Errors
    /// The commit does not exist or `dest` cannot be written.
    pub fn export_tree(
        &self,
        url: &str,
        commit: &str,
        dest: &std::path::Path,
    ) -> Result<Vec<String>, SourceError> {
        imp::export_tree(&self.root, url, commit, dest)
    }
}

/// Whether `url` is fetched over ssh: `ssh://…` (also `git+ssh://`) or
/// scp-like `[user@]host:path`.
pub fn is_ssh_url(url: &str) -> bool {
    gix::url::parse(url.trim()).is_ok_and(|u| u.scheme == gix::url::Scheme::Ssh)
}

/// `url` with `username:password@` as its userinfo (percent-encoded);
/// URLs without a `scheme://` authority are returned as they are.
pub fn with_credentials(url: &str, username: &str, password: &str) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Drop any userinfo already there.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let user = if username.is_empty() { "git" } else { username };
    format!("{scheme}://{}:{}@{rest}", enc(user), enc(password))
}

/// Evaluates `.jsonnet` files for [`render_directory`]: their JSON output
/// in order.
pub type JsonnetEvaluator<'a> = dyn FnMut(&[&SourceFile]) -> Result<Vec<String>, RenderError> + 'a;

/// Renders a plain directory as Argo CD's directory source does: every
/// `.yaml`, `.yml`, `.json` and `.jsonnet` file (after recurse,
/// include/exclude and the skip marker) parsed into Kubernetes objects.
/// `jsonnet` evaluates the selected `.jsonnet` files (paths relative to the
/// directory) and returns their JSON output, in order; it is only called
/// when there is one.
///
/// # Errors
/// The first file that fails, naming the file and line.
pub fn render_directory(
    files: &[SourceFile],
    options: &DirectorySource,
    jsonnet: &mut JsonnetEvaluator<'_>,
) -> Result<Vec<serde_json::Value>, RenderError> {
    imp::render_directory(files, options, jsonnet)
}

impl RenderError {
    /// The error with file paths (relative to the directory that was
    /// rendered) made relative to the repository, `base` being that
    /// directory.
    pub fn in_directory(self, base: &str) -> Self {
        let join = |file: String| {
            let dir = base.trim_matches('/');
            if dir.is_empty() || dir == "." {
                file
            } else {
                format!("{dir}/{file}")
            }
        };
        match self {
            Self::Yaml {
                file,
                line,
                message,
            } => Self::Yaml {
                file: join(file),
                line,
                message,
            },
            Self::Json {
                file,
                line,
                message,
            } => Self::Json {
                file: join(file),
                line,
                message,
            },
            Self::Jsonnet { file, message } => Self::Jsonnet {
                file: join(file),
                message,
            },
            Self::Object {
                file,
                index,
                message,
            } => Self::Object {
                file: join(file),
                index,
                message,
            },
            Self::Duplicate {
                kind,
                name,
                first,
                second,
            } => Self::Duplicate {
                kind,
                name,
                first: join(first),
                second: join(second),
            },
            other @ Self::Pattern { .. } => other,
        }
    }
}

/// Parses a YAML stream produced by a renderer (kustomize, helm) into
/// Kubernetes objects; `…List` kinds are expanded. `origin` names the
/// stream in errors.
///
/// # Errors
/// Invalid YAML, or a document that is not a Kubernetes object.
pub fn parse_manifest_stream(
    text: &str,
    origin: &str,
) -> Result<Vec<serde_json::Value>, RenderError> {
    imp::parse_stream(text, origin)
}

mod imp;

pub use imp::{SafeUrl, UrlCredentials, display_repo_url, redact_url, split_credentials};
