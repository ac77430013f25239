//! The command line: one module per subcommand; `main.rs` only dispatches.

pub mod audit;
pub mod demo;
pub mod init;
pub mod report;
pub mod serve;
pub mod storage;

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
    /// Run the Accounting Manager (with no arguments: the embedded default,
    /// exporting to an in-process Accounting Storage).
    Serve(serve::ServeArgs),
    /// Run the whole flow on 127.0.0.1 (AM, storage, one provider, one
    /// user, a session with interim and final accounting) and print it.
    Demo(demo::DemoArgs),
    /// Run the Accounting Storage as its own service.
    Storage(storage::StorageArgs),
    /// Billing totals from the cold storage's Parquet files.
    Report(report::ReportArgs),
    /// Re-verify every exported record's signature and check that no
    /// message is stored twice; exits 1 with a list of what is wrong.
    Audit(audit::AuditArgs),
}

impl Cli {
    /// Run the chosen subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Init(args) => init::run(args),
            Command::Serve(args) => serve::run(args),
            Command::Storage(args) => storage::run(args),
            Command::Demo(args) => demo::run(args),
            Command::Report(args) => report::run(args),
            Command::Audit(args) => audit::run(args),
        }
    }
}

/// How `acct report` and `acct audit` reach a bucket given as
/// `s3://bucket/prefix` (credentials from the standard AWS credential
/// variables or the shared profile, as for the storage).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BucketArgs {
    /// The bucket's endpoint (an S3-compatible store other than AWS).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The bucket's region.
    #[arg(long)]
    pub region: Option<String>,
    /// Allow an http:// endpoint (a local test server only).
    #[arg(long)]
    pub allow_http: bool,
}

impl BucketArgs {
    /// The settings for the reader (the URL comes from the location).
    pub fn settings(&self) -> ::storage::bucket::BucketSettings {
        ::storage::bucket::BucketSettings {
            url: String::new(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            part_bytes: ::storage::bucket::PART_BYTES_DEFAULT,
        }
    }
}
