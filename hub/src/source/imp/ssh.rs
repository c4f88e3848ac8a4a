//! The `ssh` program gix runs for ssh remotes: which key, which known
//! hosts, no prompts; and what ssh printed, as one line, when it failed.
//!
//! gix takes the ssh command from `core.sshCommand`, which is set on the
//! mirror's in-memory configuration only (never written to the mirror, and
//! no process environment is touched).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::source::{SshKey, SshSettings};

/// Prefix of the per-fetch directories inside the scratch directory.
const FETCH_DIR_PREFIX: &str = "fetch-";

/// What ssh printed that is worth showing is short; a whole banner is not.
const MAX_REASON_LEN: usize = 400;

/// One ssh fetch. Its private directory (the key file, ssh's stderr) is
/// removed when the session is dropped.
pub(crate) struct Session {
    dir: tempfile::TempDir,
    command: String,
    /// `host` or `[host]:port`, as ssh and known_hosts files name it.
    host: String,
    known_hosts: Option<PathBuf>,
}

impl Session {
    /// Checks that the host can be verified (or need not be), writes the
    /// key into a new private directory and builds the ssh command.
    ///
    /// # Errors
    /// The URL names no host, no known hosts file is configured for a
    /// verified host, or the scratch directory cannot be written.
    pub(crate) fn prepare(
        url: &str,
        settings: &SshSettings,
        key: Option<&SshKey>,
    ) -> Result<Self, String> {
        let parsed = gix::url::parse(url.trim()).map_err(|e| format!("invalid ssh URL: {e}"))?;
        let host = match (parsed.host(), parsed.port) {
            (Some(h), Some(port)) if port != 22 => format!("[{h}]:{port}"),
            (Some(h), _) => h.to_owned(),
            (None, _) => return Err("the ssh URL names no host".to_owned()),
        };
        let insecure = key.is_some_and(|k| k.insecure_ignore_host_key);
        let known_hosts = if insecure {
            None
        } else {
            let Some(file) = &settings.known_hosts else {
                return Err(format!(
                    "no known host key for {host}: give the hub --ssh-known-hosts FILE with \
                     its key (e.g. from ssh-keyscan), or add the repository with \
                     --insecure-ignore-host-key"
                ));
            };
            // ssh would only say "Host key verification failed".
            std::fs::metadata(file)
                .map_err(|e| format!("ssh known hosts file {}: {e}", file.display()))?;
            Some(file.clone())
        };

        let dir = private_dir(&settings.scratch_dir)?;
        let mut words: Vec<String> = ["ssh", "-F", "/dev/null"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut option = |o: &str| {
            words.push("-o".to_owned());
            words.push(o.to_owned());
        };
        // Never prompt (there is no one to answer), and do not hang on a
        // host that accepts the connection and then says nothing.
        option("BatchMode=yes");
        option("ConnectTimeout=30");
        option("ServerAliveInterval=15");
        option("ServerAliveCountMax=4");
        option("GlobalKnownHostsFile=/dev/null");
        match &known_hosts {
            Some(file) => {
                option("StrictHostKeyChecking=yes");
                option(&format!("UserKnownHostsFile=\"{}\"", file.display()));
            }
            None => {
                option("StrictHostKeyChecking=no");
                option("UserKnownHostsFile=/dev/null");
                // Silences "Permanently added … to the list of known hosts".
                option("LogLevel=ERROR");
            }
        }
        if let Some(key) = key {
            let path = dir.path().join("key");
            let text = key.private_key.replace("\r\n", "\n");
            // OpenSSH refuses a key file without its final newline.
            crate::pki::write_private(&path, format!("{}\n", text.trim()).as_bytes())
                .map_err(|e| format!("writing the ssh key file: {e}"))?;
            option("IdentitiesOnly=yes");
            words.push("-i".to_owned());
            words.push(path.display().to_string());
        }
        let mut command = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
        // gix appends the host and the remote command after this; ssh's
        // messages go to a file read only when the fetch fails.
        command.push_str(" 2>");
        command.push_str(&quote(&dir.path().join("stderr").display().to_string()));
        Ok(Self {
            dir,
            command,
            host,
            known_hosts,
        })
    }

    /// Ends ssh once `left` has passed (rounded up to whole seconds), when
    /// `timeout` (coreutils or busybox) is on PATH: ssh's keepalives only
    /// notice a dead server, not one that accepts the session and then
    /// stalls, and a fetch's deadline must end its thread too.
    pub(crate) fn limit_to(&mut self, left: Duration) {
        let Some(timeout) = timeout_program() else {
            return;
        };
        let secs = (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1);
        self.command = format!(
            "{} -k 5 {secs} {}",
            quote(&timeout.display().to_string()),
            self.command
        );
    }

    /// Makes gix run this session's ssh command for `repo` (in memory).
    ///
    /// # Errors
    /// gix refuses the configuration values.
    pub(crate) fn configure(&self, repo: &mut gix::Repository) -> Result<(), String> {
        use gix::config::tree::{Core, Ssh};
        let failed = |e: gix::Error| format!("configuring ssh: {e}");
        let mut config = repo.config_snapshot_mut();
        config
            .set_value(&Core::SSH_COMMAND, self.command.as_str())
            .map_err(failed)?;
        // Spares gix probing which ssh flavour the command is.
        config.set_value(&Ssh::VARIANT, "ssh").map_err(failed)?;
        config.commit().map_err(failed)?;
        Ok(())
    }

    /// After a failed fetch: ssh's reason, when it printed one.
    pub(crate) fn failure(&self) -> Option<String> {
        let stderr = std::fs::read(self.dir.path().join("stderr")).ok()?;
        explain(
            &String::from_utf8_lossy(&stderr),
            &self.host,
            self.known_hosts.as_deref(),
        )
    }
}

/// `timeout` on PATH, looked up once.
fn timeout_program() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|dir| dir.join("timeout"))
                .find(|f| f.is_file())
        })
        .as_deref()
}

/// Removes the per-fetch directories a previous run left behind (a crash
/// during a fetch would leave a key file).
pub(crate) fn clean_scratch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let leftover = entry
            .file_name()
            .to_string_lossy()
            .starts_with(FETCH_DIR_PREFIX);
        if leftover && let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a leftover ssh key directory");
        }
    }
}

/// A new directory only the hub's user can enter, inside `scratch` (also
/// made private).
fn private_dir(scratch: &Path) -> Result<tempfile::TempDir, String> {
    use std::os::unix::fs::PermissionsExt;
    let private = std::fs::Permissions::from_mode(0o700);
    let failed = |e: std::io::Error| format!("ssh scratch directory {}: {e}", scratch.display());
    std::fs::create_dir_all(scratch).map_err(failed)?;
    std::fs::set_permissions(scratch, private.clone()).map_err(failed)?;
    let dir = tempfile::Builder::new()
        .prefix(FETCH_DIR_PREFIX)
        .tempdir_in(scratch)
        .map_err(failed)?;
    std::fs::set_permissions(dir.path(), private).map_err(failed)?;
    Ok(dir)
}

/// `word` as one POSIX shell word.
fn quote(word: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./=,:@+".contains(&b);
    if !word.is_empty() && word.bytes().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// One line saying why ssh failed, from what it printed; `None` when it
/// printed nothing useful.
fn explain(stderr: &str, host: &str, known_hosts: Option<&Path>) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with("Warning: Permanently"))
        .collect();
    if lines
        .iter()
        .any(|l| l.contains("Host key verification failed"))
    {
        let file =
            known_hosts.map_or_else(|| "the known hosts".to_owned(), |f| f.display().to_string());
        let why = if lines.iter().any(|l| l.contains("has changed")) {
            format!(
                "the host key of {host} does not match the one in {file} (REMOTE HOST IDENTIFICATION HAS CHANGED)"
            )
        } else if lines.iter().any(|l| l.contains("host key is known for")) {
            format!("no host key for {host} in {file}")
        } else {
            format!("host {host}")
        };
        return Some(format!("Host key verification failed: {why}"));
    }
    let start = lines.len().saturating_sub(3);
    let mut text = lines[start..].join("; ");
    if text.len() > MAX_REASON_LEN {
        let mut end = MAX_REASON_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGED: &str = "\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
It is also possible that a host key has just been changed.
Offending ED25519 key in /etc/kh:1
Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.
Host key verification failed.
";

    #[test]
    fn explains_ssh_failures() {
        let kh = Some(Path::new("/etc/kh"));
        let cases: [(&str, &str, Option<&str>); 6] = [
            (
                "root@127.0.0.1: Permission denied (publickey).\n",
                "h",
                Some("root@127.0.0.1: Permission denied (publickey)."),
            ),
            (
                "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\nHost key verification failed.\n",
                "[127.0.0.1]:2222",
                Some("Host key verification failed: no host key for [127.0.0.1]:2222 in /etc/kh"),
            ),
            (
                CHANGED,
                "[127.0.0.1]:2222",
                Some(
                    "Host key verification failed: the host key of [127.0.0.1]:2222 does not match the one in /etc/kh (REMOTE HOST IDENTIFICATION HAS CHANGED)",
                ),
            ),
            (
                "ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n",
                "h",
                Some("ssh: connect to host 127.0.0.1 port 1: Connection refused"),
            ),
            ("\n\n", "h", None),
            (
                "Warning: Permanently added 'h' (ED25519) to the list of known hosts.\nfatal: '/x' does not appear to be a git repository\n",
                "h",
                Some("fatal: '/x' does not appear to be a git repository"),
            ),
        ];
        for (stderr, host, want) in cases {
            assert_eq!(explain(stderr, host, kh).as_deref(), want, "{stderr}");
        }
        let long = "x".repeat(1000);
        assert!(explain(&long, "h", kh).unwrap().len() < 500);
    }

    #[test]
    fn ssh_urls() {
        use crate::source::is_ssh_url;
        for url in [
            "git@github.com:org/repo.git",
            "ssh://git@host:2222/org/repo.git",
            "ssh://host/repo",
            "git+ssh://git@host/repo.git",
            "host:repo",
        ] {
            assert!(is_ssh_url(url), "{url}");
        }
        for url in [
            "https://github.com/org/repo.git",
            "file:///srv/repo",
            "/srv/repo",
            "",
        ] {
            assert!(!is_ssh_url(url), "{url}");
        }
    }

    #[test]
    fn quotes_shell_words() {
        assert_eq!(quote("BatchMode=yes"), "BatchMode=yes");
        assert_eq!(quote("/a b/c"), "'/a b/c'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("K=\"/x\""), "'K=\"/x\"'");
    }

    fn settings(dir: &Path, known_hosts: Option<PathBuf>) -> SshSettings {
        SshSettings {
            known_hosts,
            scratch_dir: dir.join("ssh"),
        }
    }

    #[test]
    fn unknown_hosts_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let key = SshKey {
            private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n".into(),
            insecure_ignore_host_key: false,
        };
        let err = Session::prepare(
            "ssh://git@git.example:2222/org/r.git",
            &settings(tmp.path(), None),
            Some(&key),
        )
        .err()
        .unwrap();
        assert!(err.contains("[git.example]:2222"), "{err}");
        assert!(err.contains("--ssh-known-hosts"), "{err}");
        let err = Session::prepare(
            "git@git.example:org/r.git",
            &settings(tmp.path(), Some(tmp.path().join("missing"))),
            Some(&key),
        )
        .err()
        .unwrap();
        assert!(err.contains("missing"), "{err}");
        assert!(!tmp.path().join("ssh").exists());
    }

    #[test]
    fn the_key_lives_in_a_private_file_for_the_session_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let kh = tmp.path().join("known hosts");
        std::fs::write(&kh, "").unwrap();
        let key = SshKey {
            private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\r\nsecret-body\r\n-----END OPENSSH PRIVATE KEY-----".into(),
            insecure_ignore_host_key: false,
        };
        let session = Session::prepare(
            "git@git.example:org/r.git",
            &settings(tmp.path(), Some(kh.clone())),
            Some(&key),
        )
        .unwrap();
        let file = session.dir.path().join("key");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(session.dir.path()), 0o700);
        assert_eq!(mode(&tmp.path().join("ssh")), 0o700);
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .ends_with("-----END OPENSSH PRIVATE KEY-----\n")
        );
        let cmd = &session.command;
        assert!(!cmd.contains("secret-body"), "{cmd}");
        for want in [
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=yes",
            &format!("'UserKnownHostsFile=\"{}\"'", kh.display()),
        ] {
            assert!(cmd.contains(want), "{want} not in {cmd}");
        }
        assert_eq!(session.host, "git.example");
        let dir = session.dir.path().to_owned();
        drop(session);
        assert!(!dir.exists());

        let insecure = SshKey {
            insecure_ignore_host_key: true,
            ..key
        };
        let session = Session::prepare(
            "ssh://git@git.example/r.git",
            &settings(tmp.path(), None),
            Some(&insecure),
        )
        .unwrap();
        assert!(session.command.contains("StrictHostKeyChecking=no"));
        assert!(session.command.contains("UserKnownHostsFile=/dev/null"));
        // A leftover of a crashed run goes at the next start.
        let leftover = tmp.path().join("ssh").join("fetch-old");
        std::fs::create_dir_all(&leftover).unwrap();
        clean_scratch(&tmp.path().join("ssh"));
        assert!(!leftover.exists());
    }
}
