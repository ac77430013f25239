//! The echo floor: `acct serve` with the work taken out, for the harness.
//!
//! The same binary code as `acct serve` (the same quinn, rustls and tokio
//! stack, socket setup, connection handling, frame decoding, session lookup
//! and ack writing, the same allocator), except that every accounting
//! message admitted is answered STORED at once: no signature is checked and
//! nothing is stored (`AmSettings::echo_floor`). Driven by the same loadgen
//! at the same rate, connections and linger as acct, its latency is the
//! floor acct's is judged against: what this machine, this stack and a
//! co-located loadgen cost with no verification and no storage.
//!
//! Takes `acct serve`'s arguments and prints the same
//! `acct serve: listening on ADDR` line. Never a billing backend: it says so
//! on stderr when it starts.

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: acct::cli::serve::ServeArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    eprintln!(
        "echo_floor: accounting is answered STORED and NOT stored or verified (a benchmark floor, never a backend)"
    );
    match acct::cli::serve::run_with(args.serve, |settings| settings.echo_floor = true) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo_floor: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
