//! Helm repositories as an application source (`source.chart`): the
//! repository's `index.yaml` over HTTP(S), picking a chart version for a
//! `targetRevision` (exact or a semver constraint), and downloading,
//! verifying and unpacking the chart archive into a local cache.
//!
//! The pure parts (index parsing, constraints, archive checks) are
//! functions over data; [`HelmRepos`] does the blocking I/O: call it from
//! `tokio::task::spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::fetch_hosts::FetchHosts;
use crate::source::redact_url;
use crate::store::RepoCredentials;

/// Largest `index.yaml` accepted (big public repositories publish tens of
/// megabytes).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Largest chart archive accepted, compressed.
pub const MAX_ARCHIVE_BYTES: u64 = 20 << 20;
/// Largest chart accepted, unpacked (all files together).
pub const MAX_UNPACKED_BYTES: u64 = 100 << 20;
/// Most entries (files and directories) a chart archive may hold.
pub const MAX_ARCHIVE_ENTRIES: usize = 10_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Most redirects followed for one request (as reqwest's default).
const MAX_REDIRECTS: usize = 10;
/// How many versions an error lists when none matches.
const LISTED_VERSIONS: usize = 8;

/// Errors from a Helm repository. Every message names the repository
/// (credentials redacted) and, where one is involved, the chart.
#[derive(Debug, thiserror::Error)]
pub enum HelmRepoError {
    /// The repository URL is of a kind not handled.
    #[error("Helm repository {repo}: {message}")]
    Unsupported { repo: String, message: String },
    /// An HTTP request failed.
    #[error("Helm repository {repo}: {what}: {message}")]
    Fetch {
        repo: String,
        what: String,
        message: String,
    },
    /// `index.yaml` is not a Helm repository index.
    #[error("Helm repository {repo}: index.yaml: {message}")]
    Index { repo: String, message: String },
    /// The index has no entry for the chart.
    #[error("Helm repository {repo}: chart {chart:?} not found in index.yaml")]
    ChartNotFound { repo: String, chart: String },
    /// No version of the chart matches `targetRevision`.
    #[error(
        "Helm repository {repo}: chart {chart:?}: no version matches {constraint:?} (available: {available})"
    )]
    NoMatch {
        repo: String,
        chart: String,
        constraint: String,
        available: String,
    },
    /// `targetRevision` is neither a version nor a constraint.
    #[error("Helm repository {repo}: chart {chart:?}: targetRevision {constraint:?}: {message}")]
    Constraint {
        repo: String,
        chart: String,
        constraint: String,
        message: String,
    },
    /// The archive's sha256 differs from the index's `digest`.
    #[error(
        "Helm repository {repo}: chart {chart:?} {version}: digest mismatch: index.yaml says sha256 {expected}, the archive is {actual}"
    )]
    Digest {
        repo: String,
        chart: String,
        version: String,
        expected: String,
        actual: String,
    },
    /// The archive is malformed or unsafe to unpack.
    #[error("Helm repository {repo}: chart {chart:?} {version}: archive refused: {message}")]
    Archive {
        repo: String,
        chart: String,
        version: String,
        message: String,
    },
    /// The local chart cache cannot be written.
    #[error("chart cache {path}: {message}")]
    Cache { path: String, message: String },
}

/// A parsed `index.yaml`: chart name → its versions as published.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Index {
    pub entries: BTreeMap<String, Vec<IndexEntry>>,
}

/// One chart version in an index.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct IndexEntry {
    #[serde(default, deserialize_with = "string_or_number")]
    pub version: String,
    #[serde(default)]
    pub urls: Vec<String>,
    /// sha256 of the archive, hex.
    #[serde(default)]
    pub digest: Option<String>,
}

#[derive(Deserialize)]
struct IndexFile {
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    entries: Option<BTreeMap<String, Option<Vec<IndexEntry>>>>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        I(i64),
        F(f64),
    }
    Ok(match V::deserialize(d)? {
        V::S(s) => s,
        V::I(i) => i.to_string(),
        V::F(f) => f.to_string(),
    })
}

/// The version picked for an application, and where its archive is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChartVersion {
    pub chart: String,
    pub version: String,
    /// Absolute archive URL.
    pub url: String,
    /// Expected sha256 (lowercase hex), when the index has one.
    pub digest: Option<String>,
}

/// Refuses repository URLs that are not HTTP(S) Helm repositories.
///
/// # Errors
/// `oci://` (not supported yet) or another scheme.
pub fn check_repo_url(repo_url: &str) -> Result<(), HelmRepoError> {
    let lower = repo_url.to_ascii_lowercase();
    let message = if lower.starts_with("oci://") {
        "OCI registries (oci://) are not supported yet as a chart source; use an HTTP(S) Helm repository"
    } else if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(());
    } else {
        "a Helm repository URL must start with https:// or http:// (OCI registries are not supported yet)"
    };
    Err(HelmRepoError::Unsupported {
        repo: redact_url(repo_url),
        message: message.to_owned(),
    })
}

/// `<repo>/index.yaml`.
pub fn index_url(repo_url: &str) -> String {
    format!("{}/index.yaml", repo_url.trim_end_matches('/'))
}

/// Parses an `index.yaml`.
///
/// # Errors
/// Invalid YAML, or a document that is not a repository index.
pub fn parse_index(text: &str, repo_url: &str) -> Result<Index, HelmRepoError> {
    let invalid = |message: String| HelmRepoError::Index {
        repo: redact_url(repo_url),
        message,
    };
    // Public indexes are large: allow far more nodes than a config file.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 50_000_000,
            max_nodes: 20_000_000,
            max_reader_input_bytes: Some(MAX_INDEX_BYTES as usize),
            max_total_scalar_bytes: MAX_INDEX_BYTES as usize,
        },
    };
    let file: IndexFile = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let message = e.to_string();
        invalid(message.lines().next().unwrap_or_default().to_owned())
    })?;
    let (Some(_), Some(entries)) = (file.api_version, file.entries) else {
        return Err(invalid(
            "not a Helm repository index (apiVersion and entries are required)".into(),
        ));
    };
    Ok(Index {
        entries: entries
            .into_iter()
            .map(|(name, versions)| (name, versions.unwrap_or_default()))
            .collect(),
    })
}

/// A chart version as semver, leniently: a leading `v` and missing minor
/// or patch numbers are accepted (`v1.2` is 1.2.0).
fn lenient_version(text: &str) -> Option<semver::Version> {
    let t = text.trim();
    let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
    if let Ok(v) = semver::Version::parse(t) {
        return Some(v);
    }
    let (core, rest) = match t.find(['-', '+']) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let padded = match core.split('.').count() {
        1 => format!("{core}.0.0{rest}"),
        2 => format!("{core}.0{rest}"),
        _ => return None,
    };
    semver::Version::parse(&padded).ok()
}

/// What a `targetRevision` asks of a chart version.
#[derive(Clone, Debug, PartialEq)]
pub enum VersionConstraint {
    /// Empty, `*` or `HEAD`: the highest version that is not a prerelease.
    Latest,
    /// One version, written out.
    Exact(String),
    /// Alternatives (`||`); each is a semver requirement and versions it
    /// excludes (`!=`).
    Ranges(Vec<(semver::VersionReq, Vec<semver::VersionReq>)>),
}

fn is_operator(token: &str) -> bool {
    !token.is_empty() && token.chars().all(|c| "=<>!~^".contains(c))
}

fn is_wildcard(part: &str) -> bool {
    matches!(part, "*" | "x" | "X")
}

/// One comparator in Helm's (Masterminds) syntax as a comparator of the
/// `semver` crate; `None` for a comparator that matches anything. The
/// second value says whether it is an exclusion (`!=`).
fn comparator(op: &str, version: &str) -> Result<Option<(String, bool)>, String> {
    let version = version.strip_prefix(['v', 'V']).unwrap_or(version);
    // `1.2.x` / `1.2.*`: a partial version; the semver crate treats a
    // partial version after an operator the same way.
    let (core, rest) = match version.find(['-', '+']) {
        Some(i) => version.split_at(i),
        None => (version, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let kept: Vec<&str> = parts
        .iter()
        .copied()
        .take_while(|p| !is_wildcard(p))
        .collect();
    if kept.len() < parts.len() && !rest.is_empty() {
        return Err(format!("{version:?}: a wildcard version has no prerelease"));
    }
    if kept.is_empty() {
        return match op {
            "" | "=" | ">=" | "<=" | "~" | "^" => Ok(None),
            _ => Err(format!("{op}{version}: compares with a wildcard")),
        };
    }
    let version = format!("{}{rest}", kept.join("."));
    let (op, exclude) = match op {
        "" | "=" | "==" => ("=", false),
        "!=" => ("=", true),
        "=<" | "<=" => ("<=", false),
        "=>" | ">=" => (">=", false),
        "~>" | "~" => ("~", false),
        ">" | "<" | "^" => (op, false),
        other => return Err(format!("unknown operator {other:?}")),
    };
    Ok(Some((format!("{op}{version}"), exclude)))
}

impl VersionConstraint {
    /// Parses a `targetRevision` for a chart. Helm's syntax: comparators
    /// separated by spaces or commas (all must hold), alternatives by
    /// `||`; operators `= != > < >= <= ~ ~> ^`, wildcards `1.2.x`,
    /// `1.2.*`, `*`, and ranges `1.2 - 1.4.5`. A bare version is exact.
    ///
    /// # Errors
    /// A constraint that cannot be read, with the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() || t == "*" || t == "HEAD" {
            return Ok(Self::Latest);
        }
        let unprefixed = t.strip_prefix(['v', 'V']).unwrap_or(t);
        if semver::Version::parse(unprefixed).is_ok() {
            return Ok(Self::Exact(t.to_owned()));
        }
        let mut alternatives = Vec::new();
        for alt in t.split("||") {
            let tokens: Vec<&str> = alt
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .collect();
            if tokens.is_empty() {
                return Err("an empty alternative around \"||\"".into());
            }
            let mut comparators = Vec::new();
            let mut i = 0;
            while i < tokens.len() {
                let mut token = tokens[i].to_owned();
                if is_operator(&token) {
                    i += 1;
                    let Some(next) = tokens.get(i) else {
                        return Err(format!("operator {token:?} without a version"));
                    };
                    token.push_str(next);
                }
                if tokens.get(i + 1) == Some(&"-") {
                    let Some(upper) = tokens.get(i + 2) else {
                        return Err(format!("range {token:?} - without an upper bound"));
                    };
                    comparators.push(comparator(">=", &token)?);
                    comparators.push(comparator("<=", upper)?);
                    i += 3;
                    continue;
                }
                let split = token
                    .find(|c: char| !"=<>!~^".contains(c))
                    .unwrap_or(token.len());
                let (op, version) = token.split_at(split);
                if version.is_empty() {
                    return Err(format!("operator {op:?} without a version"));
                }
                comparators.push(comparator(op, version)?);
                i += 1;
            }
            let (mut require, mut exclude) = (Vec::new(), Vec::new());
            for (c, excluded) in comparators.into_iter().flatten() {
                if excluded {
                    exclude.push(c);
                } else {
                    require.push(c);
                }
            }
            let req =
                |text: &str| semver::VersionReq::parse(text).map_err(|e| format!("{text:?}: {e}"));
            let require = if require.is_empty() {
                semver::VersionReq::STAR
            } else {
                req(&require.join(", "))?
            };
            let exclude = exclude.iter().map(|e| req(e)).collect::<Result<_, _>>()?;
            alternatives.push((require, exclude));
        }
        Ok(Self::Ranges(alternatives))
    }

    /// Whether `version` (as written in the index) satisfies the constraint.
    pub fn matches(&self, version: &str) -> bool {
        let parsed = lenient_version(version);
        match self {
            Self::Latest => parsed.is_some_and(|v| v.pre.is_empty()),
            Self::Exact(want) => {
                version == want || parsed.is_some_and(|v| lenient_version(want) == Some(v))
            }
            Self::Ranges(alternatives) => parsed.is_some_and(|v| {
                alternatives.iter().any(|(require, exclude)| {
                    require.matches(&v) && !exclude.iter().any(|e| e.matches(&v))
                })
            }),
        }
    }
}

/// Picks the highest version of `chart` in `index` that satisfies
/// `target_revision`, with its absolute archive URL.
///
/// # Errors
/// The chart is not in the index, the constraint cannot be read, or no
/// version matches (the error lists the highest available versions).
pub fn select(
    index: &Index,
    repo_url: &str,
    chart: &str,
    target_revision: &str,
) -> Result<ChartVersion, HelmRepoError> {
    let repo = redact_url(repo_url);
    let versions = index
        .entries
        .get(chart)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| HelmRepoError::ChartNotFound {
            repo: repo.clone(),
            chart: chart.to_owned(),
        })?;
    let constraint =
        VersionConstraint::parse(target_revision).map_err(|message| HelmRepoError::Constraint {
            repo: repo.clone(),
            chart: chart.to_owned(),
            constraint: target_revision.to_owned(),
            message,
        })?;
    let mut sorted: Vec<&IndexEntry> = versions.iter().collect();
    // Highest first; versions that are not semver last, as written.
    sorted.sort_by(|a, b| {
        lenient_version(&b.version)
            .cmp(&lenient_version(&a.version))
            .then_with(|| a.version.cmp(&b.version))
    });
    let Some(entry) = sorted.iter().find(|e| constraint.matches(&e.version)) else {
        let mut available: Vec<&str> = sorted
            .iter()
            .take(LISTED_VERSIONS)
            .map(|e| e.version.as_str())
            .collect();
        let more = sorted.len().saturating_sub(LISTED_VERSIONS);
        let more = if more > 0 {
            format!(", … {more} more")
        } else {
            String::new()
        };
        available.dedup();
        return Err(HelmRepoError::NoMatch {
            repo,
            chart: chart.to_owned(),
            constraint: target_revision.trim().to_owned(),
            available: format!("{}{more}", available.join(", ")),
        });
    };
    let Some(first) = entry.urls.first() else {
        return Err(HelmRepoError::Index {
            repo,
            message: format!("chart {chart:?} {} has no urls", entry.version),
        });
    };
    let url = archive_url(repo_url, first).map_err(|message| HelmRepoError::Index {
        repo: repo.clone(),
        message: format!(
            "chart {chart:?} {}: url {first:?}: {message}",
            entry.version
        ),
    })?;
    Ok(ChartVersion {
        chart: chart.to_owned(),
        version: entry.version.clone(),
        url,
        digest: entry
            .digest
            .as_deref()
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty()),
    })
}

/// An archive URL from the index, resolved against the repository URL
/// when it is relative (as Helm resolves it).
fn archive_url(repo_url: &str, url: &str) -> Result<String, String> {
    let base = reqwest::Url::parse(&format!("{}/", repo_url.trim_end_matches('/')))
        .map_err(|e| e.to_string())?;
    let joined = base.join(url).map_err(|e| e.to_string())?;
    match joined.scheme() {
        "http" | "https" => Ok(joined.to_string()),
        other => Err(format!("scheme {other:?} is not supported")),
    }
}

/// Whether two URLs have the same scheme, host and port: credentials of a
/// repository go only to the repository's own server.
fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// A relative path inside a chart archive, checked: no absolute path, no
/// `..`, nothing but plain names.
fn safe_relative(raw: &[u8]) -> Result<PathBuf, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "a path is not UTF-8".to_owned())?;
    if text.contains('\0') || text.contains('\\') {
        return Err(format!("path {text:?} has a forbidden character"));
    }
    let path = Path::new(text);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("path {text:?} contains \"..\"")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("path {text:?} is absolute"));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("path {text:?} is empty"));
    }
    Ok(out)
}

/// Unpacks a gzip-compressed chart archive into `dest` (an empty
/// directory). Only regular files and directories are written, with
/// fixed permissions; symlinks, hard links, devices and FIFOs, absolute
/// paths and `..` are refused, and so is an archive larger than
/// `max_bytes` unpacked or with more than [`MAX_ARCHIVE_ENTRIES`] entries.
///
/// # Errors
/// The first problem, as one line.
pub fn unpack_archive(archive: &[u8], dest: &Path, max_bytes: u64) -> Result<(), String> {
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(gz);
    let mut total: u64 = 0;
    let entries = tar
        .entries()
        .map_err(|e| format!("not a gzip-compressed tar archive: {e}"))?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ARCHIVE_ENTRIES {
            return Err(format!("more than {MAX_ARCHIVE_ENTRIES} entries"));
        }
        let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
        let raw = entry.path_bytes().into_owned();
        let rel = safe_relative(&raw)?;
        let shown = rel.display().to_string();
        let target = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(|e| format!("{shown}: {e}"))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(|e| format!("{shown}: {e}"))?;
                if total.saturating_add(size) > max_bytes {
                    return Err(format!(
                        "unpacks to more than {} MiB",
                        max_bytes.div_ceil(1 << 20)
                    ));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("{shown}: {e}"))?;
                }
                // create_new: a path that appears twice is refused rather
                // than written through.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| format!("{shown}: {e}"))?;
                let written = std::io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(|e| format!("{shown}: {e}"))?;
                total += written;
            }
            other => {
                let kind = match other {
                    tar::EntryType::Symlink => "a symlink",
                    tar::EntryType::Link => "a hard link",
                    tar::EntryType::Char | tar::EntryType::Block => "a device file",
                    tar::EntryType::Fifo => "a FIFO",
                    _ => "not a regular file or directory",
                };
                return Err(format!("{shown} is {kind}"));
            }
        }
    }
    Ok(())
}

/// The directory holding the chart in an unpacked archive: the top-level
/// directory named like the chart, else the only one with a `Chart.yaml`.
fn chart_root(unpacked: &Path, chart: &str) -> Result<PathBuf, String> {
    let named = unpacked.join(chart);
    if named.join("Chart.yaml").is_file() {
        return Ok(named);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(unpacked).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.join("Chart.yaml").is_file() {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err("no Chart.yaml in a top-level directory".into()),
        _ => Err("more than one chart in the archive".into()),
    }
}

fn http_error(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// The redirect policy of every Helm request: each hop is checked against
/// `hosts` before it is followed, so an allowed repository cannot bounce
/// the hub to a host the list refuses.
fn redirect_policy(hosts: &FetchHosts) -> reqwest::redirect::Policy {
    let hosts = hosts.clone();
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        match hosts.check(attempt.url().as_str()) {
            Ok(()) => attempt.follow(),
            Err(message) => {
                let to = redact_url(attempt.url().as_str());
                attempt.error(format!("redirect to {to} not followed: {message}"))
            }
        }
    })
}

/// GETs `url` with a size limit, after checking it (and every redirect)
/// against `hosts`. Credentials go only to `repo_url`'s own server; they
/// and any userinfo never appear in the error.
fn http_get(
    hosts: &FetchHosts,
    repo_url: &str,
    url: &str,
    what: &str,
    credentials: Option<&RepoCredentials>,
    limit: u64,
) -> Result<Vec<u8>, HelmRepoError> {
    let fail = |message: String| HelmRepoError::Fetch {
        repo: redact_url(repo_url),
        what: what.to_owned(),
        message,
    };
    hosts.check(url).map_err(fail)?;
    // A client per request: the blocking client owns a runtime that must
    // not be dropped on an async thread, and fetches are rare.
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(redirect_policy(hosts))
        .user_agent(concat!("flotilla-hub/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fail(format!("HTTP client: {}", http_error(&e.without_url()))))?;
    let mut request = client.get(url);
    if let Some(c) = credentials.filter(|_| same_origin(repo_url, url)) {
        request = request.basic_auth(&c.username, Some(&c.password));
    }
    let response = request
        .send()
        .map_err(|e| fail(http_error(&e.without_url())))?;
    let status = response.status();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => " (check the repository credentials)",
            404 => " (not found)",
            _ => "",
        };
        return Err(fail(format!("HTTP {status}{hint}")));
    }
    let too_large = || fail(format!("larger than {} MiB", limit.div_ceil(1 << 20)));
    if response.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    response
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| fail(format!("reading the response: {e}")))?;
    if body.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(body)
}

/// Helm repository indexes and unpacked charts, shared by every
/// application that uses them.
#[derive(Debug)]
pub struct HelmRepos {
    root: PathBuf,
    /// repository URL → its last good index.
    indexes: Mutex<HashMap<String, Arc<Index>>>,
    /// Archive cache key → when a download or unpack failed and why, so a
    /// bad archive is not downloaded on every pass.
    failures: Mutex<HashMap<String, (Instant, String)>>,
    /// The hosts requests may reach (`--allowed-fetch-hosts`).
    allowed_hosts: RwLock<FetchHosts>,
}

impl HelmRepos {
    /// Unpacked charts live under `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            indexes: Mutex::default(),
            failures: Mutex::default(),
            allowed_hosts: RwLock::default(),
        }
    }

    /// Sets the hosts index and archive requests (and their redirects) may
    /// reach; any other is refused before a connection is made.
    pub fn set_allowed_hosts(&self, hosts: FetchHosts) {
        *self
            .allowed_hosts
            .write()
            .unwrap_or_else(|p| p.into_inner()) = hosts;
    }

    fn allowed_hosts(&self) -> FetchHosts {
        self.allowed_hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Downloads and parses `<repo_url>/index.yaml`, and keeps it as the
    /// repository's current index. Blocking.
    ///
    /// # Errors
    /// Unsupported URL, the repository cannot be reached, or the index is
    /// invalid.
    pub fn fetch_index(
        &self,
        repo_url: &str,
        credentials: Option<&RepoCredentials>,
    ) -> Result<Arc<Index>, HelmRepoError> {
        let hosts = self.allowed_hosts();
        // The host first: a refused host is named as such whatever its
        // scheme.
        hosts
            .check(repo_url)
            .map_err(|message| HelmRepoError::Fetch {
                repo: redact_url(repo_url),
                what: "index.yaml".into(),
                message,
            })?;
        check_repo_url(repo_url)?;
        let body = http_get(
            &hosts,
            repo_url,
            &index_url(repo_url),
            "index.yaml",
            credentials,
            MAX_INDEX_BYTES,
        )?;
        let text = String::from_utf8(body).map_err(|_| HelmRepoError::Index {
            repo: redact_url(repo_url),
            message: "not UTF-8".into(),
        })?;
        let index = Arc::new(parse_index(&text, repo_url)?);
        self.indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(repo_url.to_owned(), index.clone());
        Ok(index)
    }

    /// The index last fetched from `repo_url`.
    pub fn cached_index(&self, repo_url: &str) -> Option<Arc<Index>> {
        self.indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(repo_url)
            .cloned()
    }

    fn cache_key(repo_url: &str, v: &ChartVersion) -> String {
        let mut h = Sha256::new();
        for part in [
            repo_url,
            &v.chart,
            &v.version,
            &v.url,
            v.digest.as_deref().unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..16])
    }

    /// The directory of the unpacked chart `v` (its `Chart.yaml` is
    /// directly inside): from the cache, else downloaded, checked against
    /// the index's digest and unpacked. A failure is remembered for
    /// `retry_after`, so a bad archive is not fetched on every pass.
    /// Blocking.
    ///
    /// # Errors
    /// Download failure, digest mismatch, or an archive refused.
    pub fn chart_dir(
        &self,
        repo_url: &str,
        v: &ChartVersion,
        credentials: Option<&RepoCredentials>,
        retry_after: Duration,
    ) -> Result<PathBuf, String> {
        let key = Self::cache_key(repo_url, v);
        let dir = self.root.join(&key);
        if dir.is_dir() {
            return chart_root(&dir, &v.chart).map_err(|message| {
                HelmRepoError::Archive {
                    repo: redact_url(repo_url),
                    chart: v.chart.clone(),
                    version: v.version.clone(),
                    message,
                }
                .to_string()
            });
        }
        if let Some((at, e)) = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && at.elapsed() < retry_after
        {
            return Err(e.clone());
        }
        let result = self
            .download(repo_url, v, credentials, &dir)
            .map_err(|e| e.to_string());
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                failures.remove(&key);
            }
            Err(e) => {
                failures.insert(key, (Instant::now(), e.clone()));
            }
        }
        result
    }

    fn download(
        &self,
        repo_url: &str,
        v: &ChartVersion,
        credentials: Option<&RepoCredentials>,
        dir: &Path,
    ) -> Result<PathBuf, HelmRepoError> {
        let archive_error = |message: String| HelmRepoError::Archive {
            repo: redact_url(repo_url),
            chart: v.chart.clone(),
            version: v.version.clone(),
            message,
        };
        let what = format!(
            "chart {:?} {} archive {}",
            v.chart,
            v.version,
            redact_url(&v.url)
        );
        let body = http_get(
            &self.allowed_hosts(),
            repo_url,
            &v.url,
            &what,
            credentials,
            MAX_ARCHIVE_BYTES,
        )?;
        let actual = hex::encode(Sha256::digest(&body));
        if let Some(expected) = &v.digest
            && *expected != actual
        {
            return Err(HelmRepoError::Digest {
                repo: redact_url(repo_url),
                chart: v.chart.clone(),
                version: v.version.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        let cache_error = |e: std::io::Error| HelmRepoError::Cache {
            path: self.root.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&self.root).map_err(cache_error)?;
        // Unpack beside the final directory, then rename: the cache never
        // holds a half-written chart.
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.root)
            .map_err(cache_error)?;
        unpack_archive(&body, tmp.path(), MAX_UNPACKED_BYTES).map_err(archive_error)?;
        chart_root(tmp.path(), &v.chart).map_err(archive_error)?;
        let staged = tmp.keep();
        if let Err(e) = std::fs::rename(&staged, dir) {
            let _ = std::fs::remove_dir_all(&staged);
            // Another pass unpacked the same chart first.
            if !dir.is_dir() {
                return Err(cache_error(e));
            }
        }
        tracing::info!(repo = %redact_url(repo_url), chart = %v.chart, version = %v.version, "chart downloaded");
        chart_root(dir, &v.chart).map_err(archive_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(versions: &[&str]) -> Index {
        let mut entries = BTreeMap::new();
        entries.insert(
            "podinfo".to_owned(),
            versions
                .iter()
                .map(|v| IndexEntry {
                    version: (*v).to_owned(),
                    urls: vec![format!("podinfo-{v}.tgz")],
                    digest: None,
                })
                .collect(),
        );
        Index { entries }
    }

    #[test]
    fn constraint_table() {
        let versions = [
            "6.4.0",
            "6.5.0",
            "6.5.3",
            "6.5.10",
            "6.6.0-rc.1",
            "6.6.0",
            "7.0.0-beta.2",
            "1.2.0",
            "1.9.9",
            "2.0.0",
            "v3.1.0",
        ];
        let idx = index(&versions);
        let cases: &[(&str, Option<&str>)] = &[
            ("", Some("6.6.0")),
            ("*", Some("6.6.0")),
            ("HEAD", Some("6.6.0")),
            ("6.5.3", Some("6.5.3")),
            ("v6.5.3", Some("6.5.3")),
            ("3.1.0", Some("v3.1.0")),
            ("6.6.0-rc.1", Some("6.6.0-rc.1")),
            ("6.5.*", Some("6.5.10")),
            ("6.5.x", Some("6.5.10")),
            ("6.x", Some("6.6.0")),
            ("~6.5.0", Some("6.5.10")),
            ("~> 6.5", Some("6.5.10")),
            ("^1.2", Some("1.9.9")),
            ("^6.5.0", Some("6.6.0")),
            (">=1.0.0 <2.0.0", Some("1.9.9")),
            (">=1.0.0, <2.0.0", Some("1.9.9")),
            (">= 1.0.0, < 2.0.0", Some("1.9.9")),
            ("=< 2.0.0", Some("2.0.0")),
            ("> 6.5.3 < 6.6.0", Some("6.5.10")),
            ("1.2 - 1.9.9", Some("1.9.9")),
            (">=6.5.0 != 6.6.0 <7.0.0", Some("6.5.10")),
            ("^1.2 || ^2", Some("2.0.0")),
            ("<1 || 6.4.x", Some("6.4.0")),
            ("7.0.0-beta.2", Some("7.0.0-beta.2")),
            (">=7.0.0-beta.1", Some("7.0.0-beta.2")),
            ("9.9.9", None),
            ("^8", None),
            (">=6.5.0 <6.5.0", None),
        ];
        for (constraint, want) in cases {
            let got = select(&idx, "https://charts.example", "podinfo", constraint);
            match (want, got) {
                (Some(w), Ok(v)) => assert_eq!(v.version, *w, "{constraint:?}"),
                (None, Err(HelmRepoError::NoMatch { available, .. })) => {
                    assert!(available.contains("6.6.0"), "{constraint:?}: {available}");
                }
                (w, g) => panic!("{constraint:?}: want {w:?}, got {g:?}"),
            }
        }
        for bad in [">", "1.2 -", "!!1", "1.x-rc.1", "^1.2 ||"] {
            let err = select(&idx, "https://charts.example", "podinfo", bad).unwrap_err();
            assert!(
                matches!(err, HelmRepoError::Constraint { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn no_match_lists_available_versions_briefly() {
        let many: Vec<String> = (0..20).map(|i| format!("1.{i}.0")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = select(
            &index(&many),
            "https://u:secret@charts.example",
            "podinfo",
            "^2",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("1.19.0, 1.18.0"), "{err}");
        assert!(err.contains("12 more"), "{err}");
        assert!(!err.contains("1.0.0,"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = select(&index(&many), "https://charts.example", "nginx", "*")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chart \"nginx\" not found"), "{err}");
    }

    #[test]
    fn archive_urls_resolve_against_the_repository() {
        let cases = [
            (
                "https://c.example/charts",
                "a-1.tgz",
                "https://c.example/charts/a-1.tgz",
            ),
            (
                "https://c.example/charts/",
                "sub/a-1.tgz",
                "https://c.example/charts/sub/a-1.tgz",
            ),
            (
                "https://c.example/charts",
                "/dl/a-1.tgz",
                "https://c.example/dl/a-1.tgz",
            ),
            (
                "https://c.example",
                "https://cdn.example/a-1.tgz",
                "https://cdn.example/a-1.tgz",
            ),
        ];
        for (repo, url, want) in cases {
            assert_eq!(archive_url(repo, url).unwrap(), want, "{repo} {url}");
        }
        assert!(archive_url("https://c.example", "file:///etc/passwd").is_err());
        assert!(same_origin(
            "https://c.example/x",
            "https://c.example/y/z.tgz"
        ));
        assert!(!same_origin(
            "https://c.example/x",
            "https://cdn.example/z.tgz"
        ));
        assert!(!same_origin(
            "https://c.example/x",
            "http://c.example/z.tgz"
        ));
    }

    #[test]
    fn index_parsing() {
        let text = "apiVersion: v1\nentries:\n  podinfo:\n  - name: podinfo\n    version: 6.5.1\n    urls: [podinfo-6.5.1.tgz]\n    digest: ABC\n    created: 2024-01-01T00:00:00Z\n  empty:\ngenerated: 2024-01-01T00:00:00Z\n";
        let idx = parse_index(text, "https://c.example").unwrap();
        assert_eq!(idx.entries["podinfo"][0].version, "6.5.1");
        assert!(idx.entries["empty"].is_empty());
        let v = select(&idx, "https://c.example", "podinfo", "6.5.1").unwrap();
        assert_eq!(v.digest.as_deref(), Some("abc"));
        assert_eq!(v.url, "https://c.example/podinfo-6.5.1.tgz");
        for bad in ["<html>not yaml: [", "kind: ConfigMap\n"] {
            let err = parse_index(bad, "https://c.example")
                .unwrap_err()
                .to_string();
            assert!(err.contains("index.yaml"), "{err}");
        }
    }

    #[test]
    fn oci_and_other_schemes_are_refused_clearly() {
        let err = check_repo_url("oci://registry.example/charts")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported yet"), "{err}");
        assert!(check_repo_url("git@github.com:a/b.git").is_err());
        assert!(check_repo_url("https://charts.example").is_ok());
    }

    enum Item<'a> {
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Device(&'a str),
    }

    /// A .tgz written entry by entry, with raw header names so hostile
    /// paths can be built (the tar crate refuses them when appending).
    fn tgz(items: &[Item]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for item in items {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            let (name, data): (&str, &[u8]) = match item {
                Item::File(n, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    (n, d)
                }
                Item::Symlink(n, t) | Item::HardLink(n, t) => {
                    h.set_entry_type(if matches!(item, Item::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_size(0);
                    h.set_link_name(t).unwrap();
                    (n, b"")
                }
                Item::Device(n) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_size(0);
                    (n, b"")
                }
            };
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn archive_safety() {
        let ok = tgz(&[
            Item::File("podinfo/Chart.yaml", b"name: podinfo\n"),
            Item::File("podinfo/templates/cm.yaml", b"kind: ConfigMap\n"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        unpack_archive(&ok, dir.path(), 1 << 20).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("podinfo/templates/cm.yaml")).unwrap(),
            "kind: ConfigMap\n"
        );
        assert_eq!(
            chart_root(dir.path(), "podinfo").unwrap(),
            dir.path().join("podinfo")
        );

        let big = vec![b'x'; 4096];
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "parent",
                tgz(&[Item::File("podinfo/../../escape.yaml", b"x")]),
                "\"..\"",
            ),
            (
                "absolute",
                tgz(&[Item::File("/tmp/escape.yaml", b"x")]),
                "absolute",
            ),
            (
                "symlink",
                tgz(&[Item::Symlink("podinfo/values.yaml", "/etc/passwd")]),
                "symlink",
            ),
            (
                "hard link",
                tgz(&[Item::HardLink("podinfo/values.yaml", "/etc/passwd")]),
                "hard link",
            ),
            ("device", tgz(&[Item::Device("podinfo/tty")]), "device"),
            (
                "oversized",
                tgz(&[Item::File("podinfo/a", &big), Item::File("podinfo/b", &big)]),
                "more than",
            ),
            (
                "duplicate",
                tgz(&[Item::File("podinfo/a", b"1"), Item::File("podinfo/a", b"2")]),
                "podinfo/a",
            ),
            ("not gzip", b"plain text".to_vec(), "archive"),
        ];
        for (name, archive, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let err = unpack_archive(&archive, dir.path(), 6000).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }

        let dir = tempfile::tempdir().unwrap();
        unpack_archive(
            &tgz(&[Item::File("other/x.yaml", b"x")]),
            dir.path(),
            1 << 20,
        )
        .unwrap();
        assert!(chart_root(dir.path(), "podinfo").is_err());
    }
}
