//! How `flotilla` ends: its exit codes (docs/cli.md#exit-codes), the
//! errors that choose them, and writing to stdout so that a closed pipe
//! (`flotilla app list | head -1`) ends the command quietly.

use std::io::Write as _;

/// Exit codes, distinct per cause so scripts can tell them apart.
pub mod code {
    /// The command did what it was asked.
    pub const SUCCESS: u8 = 0;
    /// It failed: refused, timed out, saw a failed sync or Degraded
    /// health. `app diff`: there are differences.
    pub const FAILURE: u8 = 1;
    /// The command line or the connection settings are wrong (clap's
    /// usage errors exit 2 too). `app diff`: the diff could not be
    /// computed.
    pub const USAGE: u8 = 2;
    /// The named application, cluster, repository, set or token does not
    /// exist.
    pub const NOT_FOUND: u8 = 3;
    /// The hub cannot be reached: connection refused, name not resolved,
    /// TLS handshake failed, connection lost.
    pub const UNREACHABLE: u8 = 4;
    /// The hub refused the token: missing, unknown or revoked
    /// (Unauthenticated), or read-only for a write (PermissionDenied).
    pub const DENIED: u8 = 5;
}

/// A command outcome that is not an error but needs a non-zero exit code
/// (`app diff` with differences: 1). The binary exits with it; it prints
/// nothing more unless context was added to it.
#[derive(Debug)]
pub struct ExitStatus(pub u8);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

/// Why a command failed, where the cause decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Wrong arguments or settings that clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// A name the hub (or the CLI, looking through a list) does not know.
    #[error("{0}")]
    NotFound(String),
    /// The connection to the hub could not be made.
    #[error("cannot connect to hub {hub}: {cause}")]
    Unreachable { hub: String, cause: String },
    /// The hub answered a call with an error.
    #[error("{} ({:?})", .0.message(), .0.code())]
    Hub(tonic::Status),
}

/// A usage error (exit 2) with `message`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    CliError::Usage(message.into()).into()
}

/// The exit code for `e`: the first cause in its chain that decides one,
/// else [`code::FAILURE`].
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<ExitStatus>() {
            return s.0;
        }
        if let Some(c) = cause.downcast_ref::<CliError>() {
            return match c {
                CliError::Usage(_) => code::USAGE,
                CliError::NotFound(_) => code::NOT_FOUND,
                CliError::Unreachable { .. } => code::UNREACHABLE,
                CliError::Hub(s) => status_code(s),
            };
        }
    }
    code::FAILURE
}

/// The exit code of a failed call.
pub fn status_code(s: &tonic::Status) -> u8 {
    use std::error::Error as _;
    match s.code() {
        tonic::Code::NotFound => code::NOT_FOUND,
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => code::DENIED,
        // Made by the client's transport (it carries the I/O error as its
        // source): the hub went away. The hub's own Unavailable (a Git
        // host it cannot fetch from, a full disk) is a failure.
        tonic::Code::Unavailable if s.source().is_some() => code::UNREACHABLE,
        _ => code::FAILURE,
    }
}

/// What to print on stderr for `e` (after `error: `), or `None` when the
/// command already said everything (a bare [`ExitStatus`]).
pub fn message(e: &anyhow::Error) -> Option<String> {
    let parts: Vec<String> = e
        .chain()
        .filter(|c| c.downcast_ref::<ExitStatus>().is_none())
        .map(ToString::to_string)
        .collect();
    (!parts.is_empty()).then(|| parts.join(": "))
}

/// Writes `text` to stdout. A closed pipe (the reader went away, as
/// `head` does) ends the process at once with exit 0: the reader took
/// what it wanted. Any other write error ends it with exit 1.
pub fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        drop(out);
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(i32::from(code::SUCCESS));
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(i32::from(code::FAILURE));
    }
}

/// `print!` through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::exit::write_stdout(&format!($($arg)*))
    };
}

/// `println!` through [`write_stdout`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::exit::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_cause() {
        let hub = |c: tonic::Code| anyhow::Error::from(CliError::Hub(tonic::Status::new(c, "x")));
        assert_eq!(exit_code(&hub(tonic::Code::NotFound)), code::NOT_FOUND);
        assert_eq!(exit_code(&hub(tonic::Code::Unauthenticated)), code::DENIED);
        assert_eq!(exit_code(&hub(tonic::Code::PermissionDenied)), code::DENIED);
        assert_eq!(
            exit_code(&hub(tonic::Code::FailedPrecondition)),
            code::FAILURE
        );
        // The hub's own Unavailable (no transport error inside) is not an
        // unreachable hub.
        assert_eq!(exit_code(&hub(tonic::Code::Unavailable)), code::FAILURE);
        // As the client's transport makes it: the status found in the
        // error's chain, with that error as its source.
        #[derive(Debug)]
        struct Transport(tonic::Status);
        impl std::fmt::Display for Transport {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Transport {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let transport = tonic::Status::from_error(Box::new(Transport(tonic::Status::unavailable(
            "connection reset",
        ))));
        assert_eq!(transport.code(), tonic::Code::Unavailable);
        assert_eq!(status_code(&transport), code::UNREACHABLE);
        assert_eq!(exit_code(&usage("bad")), code::USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), code::FAILURE);
        // Context keeps the code.
        assert_eq!(
            exit_code(&hub(tonic::Code::NotFound).context("getting app web")),
            code::NOT_FOUND
        );
        assert_eq!(
            exit_code(&anyhow::Error::new(ExitStatus(1)).context("differs")),
            1
        );
    }

    #[test]
    fn messages_skip_bare_exit_statuses() {
        assert_eq!(message(&ExitStatus(1).into()), None);
        assert_eq!(
            message(&anyhow::Error::new(ExitStatus(2)).context("c1: not connected")),
            Some("c1: not connected".to_owned())
        );
        let e = anyhow::Error::from(CliError::Hub(tonic::Status::not_found(
            "application \"x\" not found",
        )));
        assert_eq!(
            message(&e),
            Some("application \"x\" not found (NotFound)".to_owned())
        );
    }
}
