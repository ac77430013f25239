//! The command line: one module per subcommand; `main.rs` only dispatches.

pub mod init;
pub mod serve;

use clap::{Parser, Subcommand};

/// acct: the billing backend for peer-to-peer services.
#[derive(Debug, Parser)]
#[command(name = "acct", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a development PKI (operator CA; AM, AS, provider and user
    /// certificates with Ed25519 keys) and a commented config file.
    Init(init::InitArgs),
    /// Run the Accounting Manager (with no arguments: the embedded default).
    Serve(serve::ServeArgs),
}

impl Cli {
    /// Run the chosen subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Init(args) => init::run(args),
            Command::Serve(args) => serve::run(args),
        }
    }
}
