//! Implementation of Git access and directory rendering (in progress).

use std::path::Path;

use super::{RenderError, SourceError, SourceFile};
use crate::model::DirectorySource;

pub(super) fn fetch(_root: &Path, url: &str, _revision: &str) -> Result<String, SourceError> {
    Err(SourceError::Fetch {
        url: url.to_owned(),
        message: "not implemented yet".into(),
    })
}

pub(super) fn read_dir(
    _root: &Path,
    url: &str,
    _commit: &str,
    _path: &str,
    _recurse: bool,
) -> Result<Vec<SourceFile>, SourceError> {
    Err(SourceError::Fetch {
        url: url.to_owned(),
        message: "not implemented yet".into(),
    })
}

pub(super) fn render_directory(
    _files: &[SourceFile],
    _options: &DirectorySource,
) -> Result<Vec<serde_json::Value>, RenderError> {
    Ok(Vec::new())
}
