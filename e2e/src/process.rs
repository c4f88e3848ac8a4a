//! Child processes whose output is captured line by line, so a test can
//! wait for a line and show the log when something fails. Killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running process with captured output.
pub struct Proc {
    name: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    log_path: PathBuf,
}

impl Proc {
    /// Spawns `program args`, capturing stdout and stderr (both also
    /// appended to `log_path`).
    ///
    /// # Errors
    /// The program cannot be started.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log_path: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        // Plain log lines: tests match on them.
        cmd.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() && !envs.iter().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)?,
        ));
        let echo = std::env::var_os("FLOTILLA_E2E_ECHO").is_some();
        let readers: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(
                child
                    .stdout
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
            ),
            Box::new(
                child
                    .stderr
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("no stderr"))?,
            ),
        ];
        for reader in readers {
            let lines = Arc::clone(&lines);
            let log = Arc::clone(&log);
            let tag = name.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("[{tag}] {line}");
                    }
                    if let Ok(mut f) = log.lock() {
                        use std::io::Write;
                        let _ = writeln!(f, "{line}");
                    }
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            lines,
            log_path,
        })
    }

    /// Waits until a captured line satisfies `pred`, returning it.
    ///
    /// # Errors
    /// The process exited or the deadline passed; the error carries the
    /// tail of the log.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self.lines.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                if let Some(l) = lines[seen..].iter().find(|l| pred(l)) {
                    return Ok(l.clone());
                }
                seen = lines.len();
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                anyhow::bail!("{} exited ({status}) early:\n{}", self.name, self.tail(40));
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{}: no expected line within {timeout:?}:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether any captured line so far satisfies `pred`.
    pub fn has_line(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.lines
            .lock()
            .map(|l| l.iter().any(|x| pred(x)))
            .unwrap_or(false)
    }

    /// All lines captured so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last `n` captured lines, joined.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where the full log is.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Sends SIGTERM and waits for exit (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
