//! `acct storage`: run the Accounting Storage as its own service.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wire::{Name, Role};

use crate::config::{Config, StorageConfig};
use storage::server::{self, StorageSettings};

/// Arguments of `acct storage`.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// The config file (its `[pki]` CA and its `[storage]` section).
    #[arg(long, required_unless_present = "pki")]
    pub config: Option<PathBuf>,
    /// Instead of a config file: a development PKI folder (from `acct init`,
    /// or an AM data directory's `pki/`); the AS uses its CA and `storage-1`.
    #[arg(long, conflicts_with = "config")]
    pub pki: Option<PathBuf>,
    /// Where the Parquet files go. Overrides the config file.
    #[arg(long, conflicts_with = "bucket")]
    pub folder: Option<PathBuf>,
    /// An S3-compatible bucket instead of a folder: s3://bucket[/prefix].
    /// Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and the
    /// other standard AWS variables), else the shared profile (AWS_PROFILE,
    /// ~/.aws). Overrides the config file.
    #[arg(long)]
    pub bucket: Option<String>,
    /// How to reach the bucket (`--bucket` or the config file's).
    #[command(flatten)]
    pub reach: super::BucketArgs,
    /// A batch larger than this many MiB goes up to the bucket as a
    /// multipart upload in parts of this size (at least 5). Overrides the
    /// config file's `part_mib`.
    #[arg(long)]
    pub part_mib: Option<usize>,
    /// The QUIC address to listen on. Overrides the config file.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// Run until SIGTERM or SIGINT. Prints `acct storage: listening on ADDR`
/// once ready.
pub fn run(args: StorageArgs) -> anyhow::Result<()> {
    let (ca, storage, denied) = match (&args.config, &args.pki) {
        (Some(path), _) => {
            let config = Config::load(path)?;
            (config.pki.ca_certificate, config.storage, config.security.denied)
        }
        (None, Some(folder)) => {
            let (certificate, key) = pki::identity_paths(Role::AccountingStorage, &Name::new("storage-1")?);
            (
                folder.join(pki::CA_CERTIFICATE_FILE),
                StorageConfig {
                    certificate: folder.join(certificate),
                    key: folder.join(key),
                    folder: PathBuf::from("acct-cold"),
                    ..StorageConfig::default()
                },
                Vec::new(),
            )
        }
        (None, None) => anyhow::bail!("give --config FILE or --pki DIR"),
    };
    let settings = StorageSettings {
        listen: args.listen.unwrap_or(storage.listen),
        target: target(&args, storage.clone())?,
        ca_der: pki::read_certificate_der(&ca)?,
        certificate_der: pki::read_certificate_der(&storage.certificate)?,
        signing_key: pki::read_signing_key(&storage.key)?,
        connections_max: storage.connections_max.max(1),
        receiving_max: storage.receiving_max.max(1),
        // `[security] denied`, re-read when the config file changes.
        deny: std::sync::Arc::new(serving::deny::DenyList::new(&denied)),
        deny_source: args.config.clone().map(crate::config::deny_source),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("acct-storage")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let shutdown = super::serve::shutdown_signal()?;
        server::run(settings, shutdown, |address| {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "acct storage: listening on {address}");
            let _ = stdout.flush();
            tracing::info!(%address, "listening");
        })
        .await
    })
}

/// Where the batches go: the config file's `[storage]`, with the command
/// line's choices over it.
fn target(args: &StorageArgs, mut storage: StorageConfig) -> anyhow::Result<storage::server::Target> {
    if let Some(folder) = &args.folder {
        storage.folder = folder.clone();
        storage.bucket = None;
    }
    if let Some(bucket) = &args.bucket {
        storage.bucket = Some(bucket.clone());
    }
    let reach = &args.reach;
    let adjusts_bucket =
        reach.endpoint.is_some() || reach.region.is_some() || reach.allow_http || args.part_mib.is_some();
    anyhow::ensure!(
        storage.bucket.is_some() || !adjusts_bucket,
        "--endpoint, --region, --allow-http and --part-mib apply to a bucket: give --bucket s3://… or `bucket` in \
         [storage]"
    );
    if let Some(part_mib) = args.part_mib {
        storage.part_mib = part_mib;
    }
    if let Some(endpoint) = &reach.endpoint {
        storage.endpoint = Some(endpoint.clone());
    }
    if let Some(region) = &reach.region {
        storage.region = Some(region.clone());
    }
    storage.allow_http |= reach.allow_http;
    Ok(storage.target())
}
