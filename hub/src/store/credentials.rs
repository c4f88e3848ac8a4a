//! Repository credentials at rest: sealed with AES-256-GCM under a key
//! kept apart from the database (`--credentials-key-file`, by default
//! `DATA/credentials.key`; in the chart a Secret mounted as a file), so a
//! copy of the database alone yields no password or ssh key.
//!
//! A sealed value is `MAGIC || nonce (12 bytes) || ciphertext || tag`; the
//! nonce is fresh for every value and the record's key (the repository
//! URL) is the associated data, so a sealed value moved to another record
//! does not open. Values without the magic prefix are records written in
//! clear by an older hub; [`seal_plaintext`] migrates them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use super::StoreError;

/// Prefix of a sealed value (format version 1).
const MAGIC: &[u8] = b"flt-sealed-v1:";
/// Tree name of the credentials, part of the associated data.
const TREE: &str = "repo_credentials";

/// The key repository credentials are sealed with. Cheap to clone; `Debug`
/// shows where it came from, never the key.
#[derive(Clone)]
pub struct CredentialsKey {
    key: Arc<LessSafeKey>,
    /// The file it was read from; `None`: made for one process only.
    file: Option<PathBuf>,
}

impl std::fmt::Debug for CredentialsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsKey")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn key_error(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Credentials {
        url: format!("key file {}", path.display()),
        message: message.into(),
    }
}

impl CredentialsKey {
    fn from_bytes(bytes: &[u8], file: Option<PathBuf>) -> Result<Self, StoreError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| StoreError::Credentials {
                url: String::new(),
                message: "the credentials key must be 32 bytes".to_owned(),
            })?;
        Ok(Self {
            key: Arc::new(LessSafeKey::new(unbound)),
            file,
        })
    }

    /// A random key for this process only.
    ///
    /// # Errors
    /// The system random generator failed.
    pub fn ephemeral() -> Result<Self, StoreError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| StoreError::Credentials {
            url: String::new(),
            message: "no random bytes for a key".to_owned(),
        })?;
        Self::from_bytes(&bytes, None)
    }

    /// Reads the key from `path` (64 hex digits), creating the file (0600,
    /// with a new random key) when it does not exist.
    ///
    /// # Errors
    /// The file cannot be read or created, or does not hold a key.
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).map_err(|_| {
                    key_error(
                        path,
                        "expected 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`",
                    )
                })?;
                if bytes.len() != 32 {
                    return Err(key_error(
                        path,
                        format!("expected 32 bytes (64 hex digits), found {}", bytes.len()),
                    ));
                }
                Self::from_bytes(&bytes, Some(path.to_owned()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                aws_lc_rs::rand::fill(&mut bytes)
                    .map_err(|_| key_error(path, "no random bytes for a key"))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                crate::pki::write_private(path, format!("{}\n", hex::encode(bytes)).as_bytes())
                    .map_err(|source| StoreError::Io {
                        path: path.to_owned(),
                        source,
                    })?;
                tracing::info!(path = %path.display(), "created the credentials key; back it up apart from the database");
                Self::from_bytes(&bytes, Some(path.to_owned()))
            }
            Err(source) => Err(StoreError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Whether the key outlives this process (read from a file).
    pub fn is_persistent(&self) -> bool {
        self.file.is_some()
    }

    fn aad(url: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(TREE.len() + 1 + url.len());
        aad.extend_from_slice(TREE.as_bytes());
        aad.push(0);
        aad.extend_from_slice(url.as_bytes());
        aad
    }

    /// Seals `plain`, the credentials record of `url`.
    ///
    /// # Errors
    /// No random nonce could be made.
    pub fn seal(&self, url: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| StoreError::Credentials {
            url: crate::source::redact_url(url),
            message: "no random bytes for a nonce".to_owned(),
        })?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(url)),
                &mut buf,
            )
            .map_err(|_| StoreError::Credentials {
                url: crate::source::redact_url(url),
                message: "sealing failed".to_owned(),
            })?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens a value stored for `url`; a value without the magic prefix
    /// (written in clear by an older hub) is returned as it is.
    ///
    /// # Errors
    /// The value is sealed under another key or for another URL, or cut.
    pub fn open(&self, url: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            return Ok(stored.to_vec());
        };
        let fail = |message: &str| StoreError::Credentials {
            url: crate::source::redact_url(url),
            message: message.to_owned(),
        };
        if rest.len() < NONCE_LEN {
            return Err(fail("sealed record is truncated"));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| fail("sealed record is truncated"))?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(Self::aad(url)), &mut buf)
            .map_err(|_| {
                fail("cannot be unsealed: the credentials key (--credentials-key-file) is not the one they were stored with")
            })?;
        Ok(plain.to_vec())
    }
}

/// Seals every credentials record still in clear; returns how many.
///
/// # Errors
/// The database fails.
pub(super) fn seal_plaintext(db: &sled::Db, key: &CredentialsKey) -> Result<usize, StoreError> {
    let tree = db.open_tree(TREE)?;
    let mut n = 0;
    for entry in tree.iter() {
        let (k, v) = entry?;
        if v.starts_with(MAGIC) {
            continue;
        }
        let url = String::from_utf8_lossy(&k).into_owned();
        tree.insert(k, key.seal(&url, &v)?)?;
        n += 1;
    }
    Ok(n)
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Copies the database in `dir` into a fresh one and puts it in its place:
/// sled's log keeps overwritten values until it reclaims their segments,
/// and after a migration those are credentials in clear.
///
/// # Errors
/// A step fails; [`finish_interrupted_rewrite`] completes or undoes it at
/// the next open.
pub(super) fn rewrite(dir: &Path) -> Result<(), StoreError> {
    let fresh = sibling(dir, ".rewrite");
    let old = sibling(dir, ".old");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(io(&fresh))?;
    }
    {
        // The handle that found the clear credentials was just dropped;
        // sled's flusher may still hold the directory's lock a moment.
        let from = super::open_locked(dir)?;
        let to = sled::open(&fresh)?;
        for name in from.tree_names() {
            let src = from.open_tree(&name)?;
            let dst = to.open_tree(&name)?;
            for entry in src.iter() {
                let (k, v) = entry?;
                dst.insert(k, v)?;
            }
        }
        to.flush()?;
    }
    std::fs::rename(dir, &old).map_err(io(dir))?;
    std::fs::rename(&fresh, dir).map_err(io(&fresh))?;
    std::fs::remove_dir_all(&old).map_err(io(&old))
}

/// Completes or undoes a [`rewrite`] that a crash interrupted.
///
/// # Errors
/// The directories cannot be renamed or removed.
pub(super) fn finish_interrupted_rewrite(dir: &Path) -> Result<(), StoreError> {
    let fresh = sibling(dir, ".rewrite");
    let old = sibling(dir, ".old");
    if !dir.exists() && old.exists() {
        // Crashed between the two renames: the copy may be incomplete,
        // start from the original again.
        std::fs::rename(&old, dir).map_err(io(&old))?;
    }
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(io(&fresh))?;
    }
    if dir.exists() && old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key_and_url() {
        let k = CredentialsKey::ephemeral().unwrap();
        let other = CredentialsKey::ephemeral().unwrap();
        let a = k.seal("https://h/a", b"secret").unwrap();
        let b = k.seal("https://h/a", b"secret").unwrap();
        assert_ne!(a, b, "a fresh nonce per value");
        assert!(!a.windows(6).any(|w| w == b"secret"));
        assert_eq!(k.open("https://h/a", &a).unwrap(), b"secret");
        assert!(k.open("https://h/b", &a).is_err());
        assert!(other.open("https://h/a", &a).is_err());
        assert!(k.open("https://h/a", &a[..a.len() - 1]).is_err());
        // Records in clear (older hubs) read as they are.
        assert_eq!(k.open("https://h/a", b"{}").unwrap(), b"{}");
    }

    #[test]
    fn key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/credentials.key");
        let k = CredentialsKey::load_or_create(&path).unwrap();
        assert!(k.is_persistent());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = k.seal("u", b"x").unwrap();
        let again = CredentialsKey::load_or_create(&path).unwrap();
        assert_eq!(again.open("u", &sealed).unwrap(), b"x");
        std::fs::write(&path, "nothex").unwrap();
        let err = CredentialsKey::load_or_create(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
