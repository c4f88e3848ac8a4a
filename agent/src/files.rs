//! Files the agent keeps in its state directory.

use std::io::Write;
use std::path::Path;

/// Writes `content` to `path` through a temporary file and a rename, synced
/// to disk first, with mode 0600 when `private` (0644 otherwise), so a
/// reader never sees a half-written file.
///
/// # Errors
/// The file cannot be written.
pub fn write_atomic(path: &Path, content: &[u8], private: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mode = if private { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // The mode above only applies when the file is created.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(content)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}
