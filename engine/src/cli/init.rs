//! `acct init DIR`: the development PKI.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::pki;

/// Arguments of `acct init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The folder to create the PKI in (created if missing).
    pub dir: PathBuf,
    /// How many provider identities to issue (provider-0001, …).
    #[arg(long, default_value_t = 4)]
    pub providers: usize,
    /// How many user identities to issue (user-0001, …).
    #[arg(long, default_value_t = 4)]
    pub users: usize,
}

/// Upper bound on identities per run: each costs a key and a certificate
/// file pair; loadgen mints its own beyond this.
const IDENTITIES_MAX: usize = 100_000;

/// Make the PKI and print what was made.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.providers <= IDENTITIES_MAX && args.users <= IDENTITIES_MAX,
        "at most {IDENTITIES_MAX} providers and {IDENTITIES_MAX} users per run"
    );
    let summary = pki::init(&args.dir, args.providers, args.users)
        .with_context(|| format!("creating the development PKI in {}", args.dir.display()))?;
    println!("created a development PKI in {}", summary.folder.display());
    println!(
        "  CA:        {}",
        summary.folder.join(pki::CA_CERTIFICATE_FILE).display()
    );
    println!(
        "  issued:    {} identities (am-1, storage-1, {} providers, {} users)",
        summary.issued.len(),
        args.providers,
        args.users
    );
    println!("  config:    {}", summary.config.display());
    println!("keep {} secret: it can issue certificates for anyone", pki::CA_KEY_FILE);
    Ok(())
}
