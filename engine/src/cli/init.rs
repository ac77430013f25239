//! `acct init DIR`: the development PKI.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

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
    let (summary, config) = init_folder(&args.dir, args.providers, args.users)?;
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
    println!("  config:    {}", config.display());
    println!("keep {} secret: it can issue certificates for anyone", pki::CA_KEY_FILE);
    Ok(())
}

/// Make the development PKI in `folder` (`pki::init`) and a commented
/// config file beside it (`acct.toml`, synced); returns both.
pub fn init_folder(folder: &Path, providers: usize, users: usize) -> anyhow::Result<(pki::InitSummary, PathBuf)> {
    let summary = pki::init(folder, providers, users)
        .with_context(|| format!("creating the development PKI in {}", folder.display()))?;
    let config = folder.join("acct.toml");
    std::fs::File::create(&config)
        .and_then(|mut file| {
            file.write_all(crate::config::commented_default().as_bytes())?;
            file.sync_all()
        })
        .with_context(|| format!("writing {}", config.display()))?;
    Ok((summary, config))
}
