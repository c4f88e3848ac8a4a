//! `flotilla-agent`: see [`flotilla_agent::cli`].

// Two workers are plenty for one cluster's objects and keep the idle
// footprint small (each worker thread brings its own allocator arena).
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    flotilla_agent::cli::main().await
}
