//! `acct serve`: run the Accounting Manager.
//!
//! With no arguments it runs on an embedded default: the data directory
//! `./acct-data`, a development PKI made there on first start, listening on
//! 127.0.0.1:4433, exporting to an in-process Accounting Storage that writes
//! Parquet to `./acct-data/cold`. Once ready it prints
//! `acct serve: listening on ADDR`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wire::{Name, Role};

use crate::am::credentials::ServiceDirectory;
use crate::am::server::{self, AmSettings, ExportPlan, StorageTarget};
use crate::config::{Config, ExportConfig, IngestConfig, StorageConfig};
use storage::server::StorageSettings;

/// Arguments of `acct serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file (see `acct init`). Without it, the embedded default.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The data directory (RocksDB in DIR/db; the embedded default's PKI in
    /// DIR/pki). Overrides the config file.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The QUIC address to listen on. Overrides the config file.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Serve Prometheus metrics over HTTP on this address (`/metrics`).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Export to the `acct storage` at this address instead of the
    /// embedded one. Overrides the config file.
    #[arg(long, conflicts_with = "no_export")]
    pub storage: Option<SocketAddr>,
    /// Cut an export batch at least this often, ms. Overrides the config file.
    #[arg(long)]
    pub export_interval_ms: Option<u64>,
    /// Or as soon as this many records wait. Overrides the config file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub export_records_max: Option<u64>,
    /// Do not export: records stay in RocksDB. For benchmarks of ingest alone.
    #[arg(long)]
    pub no_export: bool,
}

/// The embedded default's data directory.
pub const DEFAULT_DATA_DIR: &str = "acct-data";
/// The embedded storage's folder inside the data directory (no config file).
pub const DEFAULT_COLD_DIR: &str = "cold";
/// The embedded default's listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4433";

/// Resolve the settings and run until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    run_with(args, |_| {})
}

/// [`run`], with the resolved settings changed by `adjust` first (the
/// bench crate's `echo_floor` binary turns on [`AmSettings::echo_floor`]).
pub fn run_with(args: ServeArgs, adjust: impl FnOnce(&mut AmSettings)) -> anyhow::Result<()> {
    let mut settings = settings(&args)?;
    adjust(&mut settings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(settings.ingest.io_thread_count())
        .thread_name("acct-io")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        if let Some(address) = args.metrics {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(address)
                .install()
                .with_context(|| format!("serving metrics on {address}"))?;
        }
        server::run(settings, shutdown, |address| {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "acct serve: listening on {address}");
            let _ = stdout.flush();
            tracing::info!(%address, "listening");
        })
        .await
    })
}

pub(crate) fn settings(args: &ServeArgs) -> anyhow::Result<AmSettings> {
    let (node, ca, certificate, key, data, listen, ingest, export, storage, services, denied, cluster) =
        match &args.config {
            Some(path) => {
                let config = Config::load(path)?;
                (
                    config.node.name,
                    config.pki.ca_certificate,
                    config.pki.certificate,
                    config.pki.key,
                    config.am.data,
                    config.am.listen,
                    config.ingest,
                    config.export,
                    config.storage,
                    config.services,
                    config.security.denied,
                    config.cluster,
                )
            }
            None => {
                let data = args.data.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
                let pki_folder = data.join("pki");
                if !pki_folder.join(pki::CA_KEY_FILE).exists() {
                    let (summary, _config) = super::init::init_folder(&pki_folder, 4, 4)?;
                    tracing::info!(folder = %summary.folder.display(), "created a development PKI");
                }
                let name = "am-1";
                let (certificate, key) = pki::identity_paths(Role::AccountingManager, &Name::new(name)?);
                let (storage_certificate, storage_key) =
                    pki::identity_paths(Role::AccountingStorage, &Name::new("storage-1")?);
                let storage = StorageConfig {
                    folder: data.join(DEFAULT_COLD_DIR),
                    certificate: pki_folder.join(storage_certificate),
                    key: pki_folder.join(storage_key),
                    ..StorageConfig::default()
                };
                (
                    name.to_owned(),
                    pki_folder.join(pki::CA_CERTIFICATE_FILE),
                    pki_folder.join(certificate),
                    pki_folder.join(key),
                    data,
                    DEFAULT_LISTEN.parse()?,
                    IngestConfig::default(),
                    ExportConfig::default(),
                    storage,
                    Vec::new(),
                    Vec::new(),
                    None,
                )
            }
        };
    let data = args.data.clone().unwrap_or(data);
    let ca_der = pki::read_certificate_der(&ca)?;
    // One deny list for the AM and its embedded storage; the AM re-reads it.
    let deny = std::sync::Arc::new(serving::deny::DenyList::new(&denied));
    let target = if args.no_export {
        StorageTarget::Disabled
    } else if let Some(address) = args.storage {
        StorageTarget::Remote(address)
    } else if export.storage == "embedded" {
        StorageTarget::Embedded(Box::new(StorageSettings {
            // The embedded AS listens on a free loopback port.
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            target: storage.target(),
            ca_der: ca_der.clone(),
            certificate_der: pki::read_certificate_der(&storage.certificate)?,
            signing_key: pki::read_signing_key(&storage.key)?,
            connections_max: storage.connections_max,
            receiving_max: storage.receiving_max,
            deny: deny.clone(),
            deny_source: None,
        }))
    } else {
        StorageTarget::Remote(export.storage.parse().with_context(|| {
            format!(
                "[export] storage = {:?}: neither \"embedded\" nor an address",
                export.storage
            )
        })?)
    };
    let export = ExportPlan {
        storage: target,
        interval: Duration::from_millis(args.export_interval_ms.unwrap_or(export.interval_ms).max(1)),
        records_max: args
            .export_records_max
            .map_or(export.records_max, |value| value as usize)
            .clamp(1, crate::am::export::BATCH_RECORDS_MAX),
        shutdown_deadline: Duration::from_secs(export.shutdown_deadline_s),
    };
    let node = Name::new(&node).map_err(|error| anyhow::anyhow!("node name {node:?}: {error}"))?;
    let certificate_der = pki::read_certificate_der(&certificate)?;
    // The name is the node's partition and its archive's `node=`: it must be
    // the one its certificate carries, which providers and the storage see.
    let certified = wire::TrustedCa::from_der(ca_der.clone())?
        .verify(
            &certificate_der,
            wire::Role::AccountingManager,
            crate::clock::now_ms() / 1000,
        )
        .with_context(|| format!("the AM certificate {}", certificate.display()))?;
    anyhow::ensure!(
        certified.name == node,
        "[node] name is {node} but the certificate {} is {}'s",
        certificate.display(),
        certified.name
    );
    let placement = match cluster {
        Some(cluster) => crate::am::cluster::Placement::in_cluster(cluster.map()?, &node)?,
        None => crate::am::cluster::Placement::single(),
    };
    Ok(AmSettings {
        node,
        listen: args.listen.unwrap_or(listen),
        data: database_folder(&data),
        ca_der,
        certificate_der,
        signing_key: pki::read_signing_key(&key)?,
        ingest,
        export,
        services: ServiceDirectory::from_config(&services)?,
        deny,
        deny_source: args.config.clone().map(crate::config::deny_source),
        placement,
        echo_floor: false,
    })
}

/// Where RocksDB lives inside a data directory.
pub fn database_folder(data: &Path) -> PathBuf {
    data.join("db")
}

/// SIGTERM or SIGINT. The handlers are installed here, before the caller
/// announces that it is listening: a signal that arrives after the
/// announcement drains instead of killing the process (the default action).
/// Call inside the runtime.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM"),
            _ = interrupt.recv() => tracing::info!("SIGINT"),
        }
    })
}
