//! The `acct` binary: parse the command line and dispatch.

use clap::Parser;

// mimalloc, not glibc's malloc: 3-4% more messages per second at 1,000
// providers in two paired runs, and 11% at 10,000 in one paired 40 s run
// (docs/performance.md). glibc spent about 4% of all profile samples in
// malloc and free. The price is memory that mimalloc keeps after a free;
// the memtable budget (MEMTABLES_BYTES_MAX) was halved to keep the AM's
// peak RSS at 10,000 providers under 1 GiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
