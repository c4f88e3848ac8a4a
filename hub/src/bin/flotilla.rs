//! `flotilla`: the user CLI.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = flotilla_hub::cli::Cli::parse();
    match flotilla_hub::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A command that chose its exit code (`app diff`: 1 when there
            // are differences, 2 on errors) prints its own output.
            let code = e
                .downcast_ref::<flotilla_hub::cli::ExitStatus>()
                .map(|s| s.0);
            match code {
                Some(1) => {}
                Some(_) => eprintln!("error: {e}"),
                None => eprintln!("error: {e:#}"),
            }
            code.map_or(
                std::process::ExitCode::FAILURE,
                std::process::ExitCode::from,
            )
        }
    }
}
