//! The `acct` binary: parse the command line and dispatch.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = acct::cli::Cli::parse();
    // The demo prints its own story on stdout; its servers' logs stay quiet
    // unless RUST_LOG asks for them.
    let default_level = if matches!(cli.command, acct::cli::Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("acct: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
