//! Materializing a commit's tree into a directory, for external renderers
//! (kustomize, helm) that need real files.
//!
//! Regular files and directories are written as they are. A symlink is
//! recreated only when its target, resolved inside the tree, stays inside
//! it; any other symlink (absolute, or climbing out with `..`) is skipped,
//! so a renderer following it finds nothing rather than a host file.
//! Submodules are skipped.

use std::path::Path;

use gix::bstr::ByteSlice;

use super::git::mirror_dir;
use super::paths::symlink_stays_inside;
use super::redact::{redact_message, redact_url};
use crate::source::SourceError;

/// Writes the whole tree of `commit` of the mirror of `url` into `dest`
/// (created; must not exist or be empty). Returns the symlinks skipped
/// because they point outside the repository (repository paths).
pub(crate) fn export_tree(
    root: &Path,
    url: &str,
    commit: &str,
    dest: &Path,
) -> Result<Vec<String>, SourceError> {
    let fail = |message: String| SourceError::Fetch {
        url: redact_url(url),
        message: redact_message(&message, url),
    };
    let dir = mirror_dir(root, url);
    if !dir.join("HEAD").is_file() {
        return Err(fail("not fetched yet".to_owned()));
    }
    let repo = gix::open(&dir).map_err(|e| fail(e.to_string()))?;
    let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| SourceError::Revision {
        url: redact_url(url),
        revision: commit.to_owned(),
        message: format!("not a full commit id: {e}"),
    })?;
    let tree = repo
        .find_object(id)
        .map_err(|e| e.to_string())
        .and_then(|o| o.peel_to_commit().map_err(|e| e.to_string()))
        .and_then(|c| c.tree().map_err(|e| e.to_string()))
        .map_err(|message| SourceError::Revision {
            url: redact_url(url),
            revision: commit.to_owned(),
            message: redact_message(&message, url),
        })?;
    std::fs::create_dir_all(dest).map_err(|e| fail(format!("creating {}: {e}", dest.display())))?;
    let mut skipped = Vec::new();
    write_tree(&repo, tree.id, dest, "", &mut skipped).map_err(fail)?;
    remove_escaping_links(dest, &mut skipped).map_err(fail)?;
    Ok(skipped)
}

/// The lexical check cannot see through chains of links (`a -> b/c`,
/// `x -> a/../..`): after writing, resolve every link on disk and remove
/// the ones that end outside `dest` (or nowhere).
fn remove_escaping_links(dest: &Path, skipped: &mut Vec<String>) -> Result<(), String> {
    let root = dest
        .canonicalize()
        .map_err(|e| format!("resolving {}: {e}", dest.display()))?;
    let links: Vec<std::path::PathBuf> = walkdir::WalkDir::new(dest)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path_is_symlink())
        .map(|e| e.path().to_owned())
        .collect();
    for link in links {
        let inside = link.canonicalize().is_ok_and(|p| p.starts_with(&root));
        if !inside {
            std::fs::remove_file(&link).map_err(|e| format!("removing {}: {e}", link.display()))?;
            let rel = link.strip_prefix(dest).unwrap_or(&link);
            skipped.push(rel.display().to_string());
        }
    }
    Ok(())
}

fn write_tree(
    repo: &gix::Repository,
    id: gix::ObjectId,
    dest: &Path,
    prefix: &str,
    skipped: &mut Vec<String>,
) -> Result<(), String> {
    let tree = repo.find_tree(id).map_err(|e| e.to_string())?;
    let entries: Vec<(gix::objs::tree::EntryMode, String, gix::ObjectId)> = tree
        .decode()
        .map_err(|e| e.to_string())?
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
        // Git never stores these, but a crafted tree could.
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            skipped.push(format!("{prefix}{name}"));
            continue;
        }
        let repo_path = format!("{prefix}{name}");
        let target = dest.join(&name);
        if mode.is_tree() {
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("creating {}: {e}", target.display()))?;
            write_tree(repo, oid, &target, &format!("{repo_path}/"), skipped)?;
        } else if mode.is_link() {
            let blob = repo.find_blob(oid).map_err(|e| e.to_string())?;
            let link = blob.data.to_str_lossy().into_owned();
            if symlink_stays_inside(&repo_path, &link) {
                make_symlink(&link, &target)?;
            } else {
                tracing::warn!(path = %repo_path, target = %link, "symlink points outside the repository; skipped");
                skipped.push(repo_path);
            }
        } else if mode.is_blob() {
            let blob = repo.find_blob(oid).map_err(|e| e.to_string())?;
            std::fs::write(&target, &blob.data)
                .map_err(|e| format!("writing {}: {e}", target.display()))?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn make_symlink(link: &str, target: &Path) -> Result<(), String> {
    std::os::unix::fs::symlink(link, target)
        .map_err(|e| format!("creating symlink {}: {e}", target.display()))
}

#[cfg(not(unix))]
fn make_symlink(_link: &str, _target: &Path) -> Result<(), String> {
    Ok(())
}
