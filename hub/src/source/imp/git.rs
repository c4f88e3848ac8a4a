//! Bare mirrors through gix: fetching, resolving revisions, reading trees.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gix::bstr::ByteSlice;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit};
use gix::remote::Direction;
use sha2::{Digest, Sha256};

use super::redact::{redact_message, redact_url};
use super::ssh::Session;
use crate::source::{FetchLimits, RepoEntry, SourceError, SourceFile, SshKey, SshSettings};

/// Every branch and tag, force-updated: the mirror follows the remote even
/// through force pushes and moved tags.
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// Branches tried, in order, when the remote does not say what its HEAD is.
const DEFAULT_BRANCHES: [&str; 2] = ["refs/heads/main", "refs/heads/master"];

/// Where the mirror of `url` lives under `root`.
pub(crate) fn mirror_dir(root: &Path, url: &str) -> PathBuf {
    root.join(hex::encode(Sha256::digest(url.as_bytes())))
}

/// One lock per mirror directory, held for a whole fetch: two fetches into
/// the same bare repository would race on refs and pack files.
fn mirror_lock(dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(dir.to_owned()).or_default().clone()
}

/// The message of an error and its causes on one line, with `url`'s
/// credentials removed.
fn describe(err: &(dyn std::error::Error + 'static), url: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        // gix errors often repeat their cause in their own message.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    redact_message(&parts.join(": "), url)
}

fn fetch_error(url: &str, message: impl std::fmt::Display) -> SourceError {
    SourceError::Fetch {
        url: redact_url(url),
        message: redact_message(&message.to_string(), url),
    }
}

/// Fetches into the mirror of `key` (the registered URL) from `remote`
/// (the same URL, possibly with credentials; only ever shown redacted).
pub(crate) fn fetch_as(
    root: &Path,
    key: &str,
    remote: &str,
    revision: &str,
    limits: &FetchLimits,
) -> Result<String, SourceError> {
    fetch_into(root, key, remote, revision, None, limits)
}

/// Fetches an ssh URL, running `ssh` as `settings` and `key` say.
pub(crate) fn fetch_ssh(
    root: &Path,
    url: &str,
    revision: &str,
    settings: &SshSettings,
    key: Option<&SshKey>,
    limits: &FetchLimits,
) -> Result<String, SourceError> {
    // Before the mirror exists: an unknown host must not leave one behind.
    let mut session = Session::prepare(url, settings, key).map_err(|m| fetch_error(url, m))?;
    session.limit_to(limits.deadline.saturating_duration_since(Instant::now()));
    fetch_into(root, url, url, revision, Some(&session), limits)
}

fn timed_out(url: &str, limits: &FetchLimits) -> SourceError {
    SourceError::TimedOut {
        url: redact_url(url),
        after: limits.timeout,
    }
}

/// Takes the lock of a mirror, waiting at most until the deadline: a
/// fetch of the same mirror by another caller (the ApplicationSet
/// controller, a user's `app sync`) may hold it until its own deadline.
fn lock_mirror<'a>(
    lock: &'a Mutex<()>,
    url: &str,
    limits: &FetchLimits,
) -> Result<std::sync::MutexGuard<'a, ()>, SourceError> {
    loop {
        match lock.try_lock() {
            Ok(guard) => return Ok(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        if limits.expired() {
            return Err(timed_out(url, limits));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fetch_into(
    root: &Path,
    key: &str,
    remote: &str,
    revision: &str,
    ssh: Option<&Session>,
    limits: &FetchLimits,
) -> Result<String, SourceError> {
    let url = remote;
    if url.trim().is_empty() {
        return Err(fetch_error(url, "empty repository URL"));
    }
    if limits.expired() {
        return Err(timed_out(url, limits));
    }
    let dir = mirror_dir(root, key);
    let lock = mirror_lock(&dir);
    let _guard = lock_mirror(&lock, url, limits)?;

    let existed = dir.join("HEAD").is_file();
    let mut repo = open_or_init(&dir).map_err(|m| fetch_error(url, m))?;
    let updated = match ssh {
        Some(session) => session
            .configure(&mut repo)
            .map_err(|m| fetch_error(url, m))
            .and_then(|()| update_mirror(&repo, url, limits))
            // ssh's own words ("Permission denied (publickey)", "Host key
            // verification failed") say more than the broken pipe gix saw.
            .map_err(|err| match session.failure() {
                Some(reason) => fetch_error(url, reason),
                None => err,
            }),
        None => update_mirror(&repo, url, limits),
    };
    // Whatever the transport made of being cut off (a timed-out request, an
    // interrupted pack), the cause is the deadline.
    let updated = updated.map_err(|err| {
        if limits.expired() {
            timed_out(url, limits)
        } else {
            err
        }
    });
    if let Err(err) = updated {
        // An empty mirror would only make a later read_dir report a missing
        // commit instead of the failed fetch; a mirror with earlier content
        // is kept, it still serves the commits fetched before.
        if !existed {
            drop(repo);
            // Best effort: a leftover directory is reinitialized next time.
            let _ = std::fs::remove_dir_all(&dir);
        }
        return Err(err);
    }
    match resolve(&repo, url, revision) {
        // A commit no branch or tag reaches (a pull request head, a
        // deleted branch): ask for it by id, as Argo CD does.
        Err(err @ SourceError::Revision { .. }) if is_full_id(revision.trim()) => {
            if fetch_commit(&repo, url, revision.trim(), limits).is_ok() {
                resolve(&repo, url, revision)
            } else {
                Err(err)
            }
        }
        result => result,
    }
}

fn open_or_init(dir: &Path) -> Result<gix::Repository, String> {
    if dir.join("HEAD").is_file() {
        return gix::open(dir).map_err(|e| format!("opening mirror {}: {e}", dir.display()));
    }
    // A directory without HEAD is a mirror whose creation was interrupted.
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| format!("removing incomplete mirror {}: {e}", dir.display()))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    gix::init_bare(dir).map_err(|e| format!("creating mirror {}: {e}", dir.display()))
}

/// Transport options for `url` that end every HTTP request at the
/// deadline of `limits`: reqwest's per-request timeout, which covers
/// connecting, the headers and the whole body, is set to the time left.
/// Other transports get gix's defaults.
fn transport_options(
    repo: &gix::Repository,
    url: &str,
    limits: &FetchLimits,
) -> Result<Option<Box<dyn std::any::Any>>, SourceError> {
    use gix::protocol::transport::client::blocking_io::http;
    let options = repo
        .transport_options(url, None)
        .map_err(|e| fetch_error(url, describe(&e, url)))?;
    let Some(mut options) = options else {
        return Ok(None);
    };
    if let Some(http_options) = options.downcast_mut::<http::Options>() {
        let deadline = limits.deadline;
        let backend = http::reqwest::Options {
            configure_client: None,
            configure_request: Some(Box::new(move |request| {
                let left = deadline.saturating_duration_since(Instant::now());
                *request.timeout_mut() = Some(left.max(Duration::from_millis(1)));
                Ok(())
            })),
        };
        http_options.backend = Some(Arc::new(Mutex::new(backend)));
    }
    Ok(Some(options))
}

/// Fetches every branch and tag of `url` into `repo` and points the
/// mirror's HEAD at the remote's default branch when the remote names it.
fn update_mirror(
    repo: &gix::Repository,
    url: &str,
    limits: &FetchLimits,
) -> Result<(), SourceError> {
    let err = |e: gix::Error| fetch_error(url, describe(&e, url));
    let remote = repo
        .remote_at(url)
        .map_err(err)?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(REFSPECS, Direction::Fetch)
        .map_err(err)?;
    let mut connection = remote.connect(Direction::Fetch).map_err(err)?;
    if let Some(options) = transport_options(repo, url, limits)? {
        connection = connection.with_transport_options(options);
    }
    let options = gix::remote::ref_map::Options {
        // Unfiltered, so the advertisement includes the HEAD symref that
        // names the default branch.
        prefix_from_spec_as_filter_on_remote: false,
        ..Default::default()
    };
    let outcome = connection
        .prepare_fetch(gix::progress::Discard, options)
        .map_err(err)?
        .receive(gix::progress::Discard, &limits.interrupt)
        .map_err(err)?;

    let head_target = outcome.ref_map.remote_refs.iter().find_map(|r| match r {
        gix::protocol::handshake::Ref::Symbolic {
            full_ref_name,
            target,
            ..
        } if full_ref_name == "HEAD" => Some(target.clone()),
        _ => None,
    });
    if let Some(target) = head_target
        && target.starts_with(b"refs/heads/")
    {
        set_head(repo, target.as_bstr()).map_err(|m| fetch_error(url, m))?;
    }
    Ok(())
}

/// Fetches one commit by id and pins it under `refs/flotilla/commits/`, so
/// that the mirror keeps it even though no branch or tag refers to it.
fn fetch_commit(
    repo: &gix::Repository,
    url: &str,
    id: &str,
    limits: &FetchLimits,
) -> Result<(), SourceError> {
    let err = |e: gix::Error| fetch_error(url, describe(&e, url));
    let spec = format!("+{id}:refs/flotilla/commits/{id}");
    let remote = repo
        .remote_at(url)
        .map_err(err)?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs([spec.as_str()], Direction::Fetch)
        .map_err(err)?;
    let mut connection = remote.connect(Direction::Fetch).map_err(err)?;
    if let Some(options) = transport_options(repo, url, limits)? {
        connection = connection.with_transport_options(options);
    }
    connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(err)?
        .receive(gix::progress::Discard, &limits.interrupt)
        .map_err(err)?;
    Ok(())
}

fn set_head(repo: &gix::Repository, target: &gix::bstr::BStr) -> Result<(), String> {
    let target: gix::refs::FullName = target
        .try_into()
        .map_err(|e| format!("remote HEAD {target:?}: {e}"))?;
    let current = repo
        .find_reference("HEAD")
        .ok()
        .and_then(|r| r.target().try_name().map(|n| n.to_owned()));
    if current.as_ref() == Some(&target) {
        return Ok(());
    }
    let head: gix::refs::FullName = "HEAD".try_into().map_err(|e| format!("HEAD: {e}"))?;
    repo.edit_reference(RefEdit {
        change: Change::Update {
            log: LogChange::default(),
            expected: PreviousValue::Any,
            new: gix::refs::Target::Symbolic(target),
        },
        name: head,
        deref: false,
    })
    .map_err(|e| format!("updating mirror HEAD: {e}"))?;
    Ok(())
}

fn resolve(repo: &gix::Repository, url: &str, revision: &str) -> Result<String, SourceError> {
    let revision = revision.trim();
    let not_found = |message: String| SourceError::Revision {
        url: redact_url(url),
        revision: revision.to_owned(),
        message: redact_message(&message, url),
    };

    let mut candidates: Vec<String> = Vec::new();
    if revision.is_empty() || revision == "HEAD" {
        let head = repo
            .find_reference("HEAD")
            .ok()
            .and_then(|r| r.target().try_name().map(|n| n.as_bstr().to_string()));
        candidates.extend(head);
        candidates.extend(DEFAULT_BRANCHES.map(str::to_owned));
    } else if revision.starts_with("refs/") {
        candidates.push(revision.to_owned());
    } else {
        candidates.push(format!("refs/heads/{revision}"));
        candidates.push(format!("refs/tags/{revision}"));
    }
    for name in &candidates {
        // Invalid names (`..`, spaces) simply do not match a reference.
        let Ok(Some(mut reference)) = repo.try_find_reference(name.as_str()) else {
            continue;
        };
        let commit = reference.peel_to_commit().map_err(|e| {
            not_found(format!(
                "{name} does not point to a commit: {}",
                describe(&e, url)
            ))
        })?;
        return Ok(commit.id.to_string());
    }

    if is_commit_id(revision) {
        let id = repo
            .rev_parse_single(revision)
            .map_err(|e| not_found(describe(&e, url)))?;
        let commit = id
            .object()
            .and_then(|o| o.peel_to_commit())
            .map_err(|e| not_found(format!("not a commit: {}", describe(&e, url))))?;
        return Ok(commit.id.to_string());
    }

    let message = if revision.is_empty() || revision == "HEAD" {
        "the repository has no default branch (no HEAD, main or master)".to_owned()
    } else {
        "no branch, tag or commit by that name".to_owned()
    };
    Err(not_found(message))
}

fn is_full_id(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_commit_id(revision: &str) -> bool {
    (4..=40).contains(&revision.len()) && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn read_dir(
    root: &Path,
    url: &str,
    commit: &str,
    path: &str,
    recurse: bool,
) -> Result<Vec<SourceFile>, SourceError> {
    let dir = mirror_dir(root, url);
    let path_error = |message: String| SourceError::Path {
        url: redact_url(url),
        commit: commit.to_owned(),
        path: path.to_owned(),
        message: redact_message(&message, url),
    };
    if !dir.join("HEAD").is_file() {
        return Err(fetch_error(url, "not fetched yet"));
    }
    let repo = gix::open(&dir).map_err(|e| fetch_error(url, describe(&e, url)))?;
    let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| SourceError::Revision {
        url: redact_url(url),
        revision: commit.to_owned(),
        message: format!("not a full commit id: {e}"),
    })?;
    let tree = repo
        .find_object(id)
        .and_then(|o| o.peel_to_commit())
        .and_then(|c| c.tree())
        .map_err(|e| SourceError::Revision {
            url: redact_url(url),
            revision: commit.to_owned(),
            message: describe(&e, url),
        })?;

    let components = normalize(path).map_err(path_error)?;
    let tree_id = if components.is_empty() {
        tree.id
    } else {
        let entry = tree
            .lookup_entry(components.iter().map(|c| c.as_bytes()))
            .map_err(|e| path_error(describe(&e, url)))?
            .ok_or_else(|| path_error("does not exist".to_owned()))?;
        if !entry.mode().is_tree() {
            return Err(path_error("is not a directory".to_owned()));
        }
        entry.object_id()
    };

    let mut files = Vec::new();
    collect(&repo, tree_id, "", recurse, &mut files).map_err(|e| path_error(describe(&e, url)))?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Splits `path` into tree components; `""`, `.` and `./x/` forms are
/// accepted, `..` is refused rather than resolved.
fn normalize(path: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("must not contain \"..\"".to_owned()),
            part => out.push(part),
        }
    }
    Ok(out)
}

/// Adds the blobs of tree `id` to `out`, prefixed with `prefix`. Symlinks
/// and submodules are skipped: following either could leave the repository.
fn collect(
    repo: &gix::Repository,
    id: gix::ObjectId,
    prefix: &str,
    recurse: bool,
    out: &mut Vec<SourceFile>,
) -> Result<(), gix::Error> {
    let tree = repo.find_tree(id)?;
    let entries: Vec<(gix::objs::tree::EntryMode, String, gix::ObjectId)> = tree
        .decode()?
        .entries
        .iter()
        .map(|e| {
            (
                e.mode,
                e.filename.to_str_lossy().into_owned(),
                e.oid.to_owned(),
            )
        })
        .collect();
    for (mode, name, oid) in entries {
        let path = format!("{prefix}{name}");
        if mode.is_tree() {
            if recurse {
                collect(repo, oid, &format!("{path}/"), recurse, out)?;
            }
        } else if mode.is_blob() {
            let blob = repo.find_blob(oid)?;
            out.push(SourceFile {
                path,
                content: blob.data.clone(),
            });
        }
    }
    Ok(())
}

/// Reads the file at `path` (repository-relative, `/`-separated) in
/// `commit`. Symlinks are followed when they resolve inside the repository
/// (at most 16 of them); one that leaves it is an error. `..` in `path` is
/// refused.
pub(crate) fn read_path(
    root: &Path,
    url: &str,
    commit: &str,
    path: &str,
) -> Result<RepoEntry, SourceError> {
    let dir = mirror_dir(root, url);
    let path_error = |message: String| SourceError::Path {
        url: redact_url(url),
        commit: commit.to_owned(),
        path: path.to_owned(),
        message: redact_message(&message, url),
    };
    if !dir.join("HEAD").is_file() {
        return Err(fetch_error(url, "not fetched yet"));
    }
    let repo = gix::open(&dir).map_err(|e| fetch_error(url, describe(&e, url)))?;
    let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| SourceError::Revision {
        url: redact_url(url),
        revision: commit.to_owned(),
        message: format!("not a full commit id: {e}"),
    })?;
    let tree = repo
        .find_object(id)
        .and_then(|o| o.peel_to_commit())
        .and_then(|c| c.tree())
        .map_err(|e| SourceError::Revision {
            url: redact_url(url),
            revision: commit.to_owned(),
            message: describe(&e, url),
        })?;
    let mut current: Vec<String> = normalize(path)
        .map_err(path_error)?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut hops = 0;
    'resolve: loop {
        if current.is_empty() {
            return Ok(RepoEntry::Directory);
        }
        // Walk component by component so a symlinked directory on the way
        // is seen (and resolved) too.
        for depth in 1..=current.len() {
            let entry = tree
                .lookup_entry(current[..depth].iter().map(|c| c.as_bytes()))
                .map_err(|e| path_error(describe(&e, url)))?;
            let Some(entry) = entry else {
                return Ok(RepoEntry::Missing);
            };
            let mode = entry.mode();
            if mode.is_link() {
                hops += 1;
                if hops > 16 {
                    return Err(path_error("too many levels of symbolic links".to_owned()));
                }
                let blob = repo
                    .find_blob(entry.object_id())
                    .map_err(|e| path_error(describe(&e, url)))?;
                let target = blob.data.to_str_lossy().into_owned();
                let link = current[..depth].join("/");
                if !super::paths::symlink_stays_inside(&link, &target) {
                    return Err(path_error(format!(
                        "symlink {link:?} points outside the repository"
                    )));
                }
                let mut next: Vec<String> = current[..depth - 1].to_vec();
                for part in target.split('/') {
                    match part {
                        "" | "." => {}
                        ".." => {
                            next.pop();
                        }
                        p => next.push(p.to_owned()),
                    }
                }
                next.extend(current[depth..].iter().cloned());
                current = next;
                continue 'resolve;
            }
            if depth < current.len() {
                if !mode.is_tree() {
                    return Ok(RepoEntry::Missing);
                }
                continue;
            }
            if mode.is_tree() {
                return Ok(RepoEntry::Directory);
            }
            if !mode.is_blob() {
                // A submodule: its files are not in this repository.
                return Ok(RepoEntry::Missing);
            }
            let blob = repo
                .find_blob(entry.object_id())
                .map_err(|e| path_error(describe(&e, url)))?;
            return Ok(RepoEntry::File(blob.data.clone()));
        }
    }
}
