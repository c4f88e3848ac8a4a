//! `flotilla`: the user CLI. Exit codes: docs/cli.md#exit-codes.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // Usage errors exit 2 (clap); `--help` and `--version` exit 0.
    let cli = flotilla_hub::cli::Cli::parse();
    match flotilla_hub::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A command that chose its exit code and printed its own
            // output (`app diff` with differences) has nothing to add.
            if let Some(message) = flotilla_hub::cli::exit::message(&e) {
                eprintln!("error: {message}");
            }
            std::process::ExitCode::from(flotilla_hub::cli::exit_code(&e))
        }
    }
}
