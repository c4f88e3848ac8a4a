//! Implementation of Git access and directory rendering.

use std::path::Path;

use super::{RenderError, SourceError, SourceFile};
use crate::model::DirectorySource;

mod git;
mod redact;
mod render;

pub use redact::redact_url;

pub(super) fn fetch(root: &Path, url: &str, revision: &str) -> Result<String, SourceError> {
    git::fetch(root, url, revision)
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

pub(super) fn render_directory(
    files: &[SourceFile],
    options: &DirectorySource,
) -> Result<Vec<serde_json::Value>, RenderError> {
    render::render_directory(files, options)
}
