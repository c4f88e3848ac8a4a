//! kubectl as the independent client of the tests: one call against a
//! kubeconfig, optionally fed on stdin.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::io::AsyncWriteExt;

/// Runs kubectl against `kubeconfig` with `stdin`, returning stdout, or an
/// error with stderr (and stdout) on a non-zero exit.
///
/// # Errors
/// kubectl cannot be started or exits unsuccessfully.
pub async fn run(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = tokio::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running kubectl")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
        drop(pipe);
    }
    let out = child.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
    }
    Ok(stdout)
}
