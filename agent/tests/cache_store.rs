//! `--cache-store`: what the agent refuses before it does anything.

#[test]
fn cluster_store_outside_a_cluster_is_refused_before_enrolling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args(["--hub", "https://127.0.0.1:9", "--state-dir"])
        .arg(&state)
        .args(["--kubeconfig", "/nonexistent/kubeconfig"])
        .args(["--cache-store", "cluster", "--token", "flt1.secret.pin"])
        .env("POD_NAMESPACE", "flotilla-system")
        .output()
        .expect("run flotilla-agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cache-store cluster needs the agent's namespace"),
        "{err}"
    );
    // Refused before anything: not even the state directory was made.
    assert!(!state.exists());
}
