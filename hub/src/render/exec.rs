//! Running an external renderer (kustomize, helm) with a timeout and an
//! environment that gives it no network and nothing of the hub's.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An address nothing listens on: every HTTP(S) request a renderer makes
/// through the proxy variables fails at once.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// Finds `program` on `PATH` (or returns it when it already is a path).
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// Runs `argv` in `home` with a cleared environment (`HOME` and the XDG
/// directories set to `home`, `PATH` empty, proxies pointing nowhere) and
/// returns its stdout. `tool` names it in errors; `scrub` is removed from
/// its messages (the temporary directory, so paths read as repository
/// paths).
///
/// # Errors
/// The program cannot start, exits non-zero (the message is its stderr), or
/// runs longer than `timeout` (it is killed).
pub fn run_tool(
    tool: &str,
    argv: &[String],
    home: &Path,
    timeout: Duration,
    scrub: &Path,
) -> Result<Vec<u8>, String> {
    run_tool_with_input(tool, argv, home, timeout, scrub, None)
}

/// [`run_tool`] with `input` written to the program's stdin (closed
/// after it); without input, stdin is empty.
///
/// # Errors
/// As [`run_tool`].
pub fn run_tool_with_input(
    tool: &str,
    argv: &[String],
    home: &Path,
    timeout: Duration,
    scrub: &Path,
    input: Option<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err(format!("{tool}: empty command"));
    };
    let home_s = home.display().to_string();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(home)
        .env_clear()
        .env("HOME", &home_s)
        .env("PATH", "")
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_DATA_HOME", home.join(".local"))
        .env("HELM_CACHE_HOME", home.join(".cache/helm"))
        .env("HELM_CONFIG_HOME", home.join(".config/helm"))
        .env("HELM_DATA_HOME", home.join(".local/helm"))
        .env(
            "KUSTOMIZE_PLUGIN_HOME",
            home.join(".config/kustomize/plugin"),
        )
        .env("KUBECONFIG", home.join(".kube/none"))
        .env("HTTP_PROXY", DEAD_PROXY)
        .env("HTTPS_PROXY", DEAD_PROXY)
        .env("http_proxy", DEAD_PROXY)
        .env("https_proxy", DEAD_PROXY)
        .env("NO_PROXY", "")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{tool}: cannot run {program}: {e}"))?;
    // Write stdin on a thread too: a tool that does not read it must not
    // block us.
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&input);
        });
    }
    // Read both pipes on threads so a chatty tool cannot block on a full
    // pipe while we wait for it.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{tool}: timed out after {}s",
                    timeout.as_secs_f64().round()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("{tool}: waiting for {program}: {e}")),
        }
    };
    let out = out_thread.join().unwrap_or_default();
    let err = err_thread.join().unwrap_or_default();
    if !status.success() {
        let text = String::from_utf8_lossy(&err);
        let text = scrub_paths(text.trim(), scrub);
        let text = if text.is_empty() {
            format!("exited with {status}")
        } else {
            text
        };
        return Err(format!("{tool}: {text}"));
    }
    Ok(out)
}

/// Removes `dir/` (and its `repo/` child) from `text`.
pub fn scrub_paths(text: &str, dir: &Path) -> String {
    let d = dir.display().to_string();
    let mut out = text.replace(&format!("{d}/repo/"), "");
    out = out.replace(&format!("{d}/"), "");
    // Keep messages on a few lines: tables show the first.
    out.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
