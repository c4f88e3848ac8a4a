//! Implementation of Git access and directory rendering.

use std::path::Path;

use super::{FetchLimits, RenderError, RepoEntry, SourceError, SourceFile, SshKey, SshSettings};
use crate::model::DirectorySource;

mod export;
mod git;
mod glob;
mod paths;
mod redact;
mod render;
mod ssh;

pub use redact::{SafeUrl, UrlCredentials, display_repo_url, redact_url, split_credentials};

pub(super) fn fetch_as(
    root: &Path,
    key: &str,
    remote: &str,
    revision: &str,
    limits: &FetchLimits,
) -> Result<String, SourceError> {
    git::fetch_as(root, key, remote, revision, limits)
}

pub(super) fn fetch_ssh(
    root: &Path,
    url: &str,
    revision: &str,
    settings: &SshSettings,
    key: Option<&SshKey>,
    limits: &FetchLimits,
) -> Result<String, SourceError> {
    git::fetch_ssh(root, url, revision, settings, key, limits)
}

pub(super) fn clean_ssh_scratch(dir: &Path) {
    ssh::clean_scratch(dir);
}

pub(super) fn export_tree(
    root: &Path,
    url: &str,
    commit: &str,
    dest: &Path,
) -> Result<Vec<String>, SourceError> {
    export::export_tree(root, url, commit, dest)
}

pub(super) fn read_dir(
    root: &Path,
    url: &str,
    commit: &str,
    path: &str,
    recurse: bool,
) -> Result<Vec<SourceFile>, SourceError> {
    git::read_dir(root, url, commit, path, recurse)
}

pub(super) fn read_path(
    root: &Path,
    url: &str,
    commit: &str,
    path: &str,
) -> Result<RepoEntry, SourceError> {
    git::read_path(root, url, commit, path)
}

pub(super) fn render_directory(
    files: &[SourceFile],
    options: &DirectorySource,
    jsonnet: render::JsonnetEvaluator<'_>,
) -> Result<Vec<serde_json::Value>, RenderError> {
    render::render_directory(files, options, jsonnet)
}

pub(super) fn parse_stream(
    text: &str,
    origin: &str,
) -> Result<Vec<serde_json::Value>, RenderError> {
    render::parse_stream(text, origin)
}
