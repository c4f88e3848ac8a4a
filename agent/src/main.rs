//! `flotilla-agent`: see [`flotilla_agent::cli`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flotilla_agent::cli::main().await
}
