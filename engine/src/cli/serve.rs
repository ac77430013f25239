//! `acct serve`: run the Accounting Manager.
//!
//! With no arguments it runs on an embedded default: the data directory
//! `./acct-data`, a development PKI made there on first start, listening on
//! 127.0.0.1:4433. Once ready it prints `acct serve: listening on ADDR`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use wire::{Name, Role};

use crate::am::server::{self, AmSettings};
use crate::config::{Config, IngestConfig};
use crate::pki;

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
}

/// The embedded default's data directory.
pub const DEFAULT_DATA_DIR: &str = "acct-data";
/// The embedded default's listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4433";

/// Resolve the settings and run until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = settings(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("acct-io")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        if let Some(address) = args.metrics {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(address)
                .install()
                .with_context(|| format!("serving metrics on {address}"))?;
        }
        server::run(settings, shutdown_signal(), |address| {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "acct serve: listening on {address}");
            let _ = stdout.flush();
            tracing::info!(%address, "listening");
        })
        .await
    })
}

fn settings(args: &ServeArgs) -> anyhow::Result<AmSettings> {
    let (node, ca, certificate, key, data, listen, ingest) = match &args.config {
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
            )
        }
        None => {
            let data = args.data.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
            let pki_folder = data.join("pki");
            if !pki_folder.join(pki::CA_KEY_FILE).exists() {
                let summary = pki::init(&pki_folder, 4, 4)
                    .with_context(|| format!("creating the development PKI in {}", pki_folder.display()))?;
                tracing::info!(folder = %summary.folder.display(), "created a development PKI");
            }
            let name = "am-1";
            let (certificate, key) = pki::identity_paths(Role::AccountingManager, &Name::new(name)?);
            (
                name.to_owned(),
                pki_folder.join(pki::CA_CERTIFICATE_FILE),
                pki_folder.join(certificate),
                pki_folder.join(key),
                data,
                DEFAULT_LISTEN.parse()?,
                IngestConfig::default(),
            )
        }
    };
    let data = args.data.clone().unwrap_or(data);
    Ok(AmSettings {
        node: Name::new(&node).map_err(|error| anyhow::anyhow!("node name {node:?}: {error}"))?,
        listen: args.listen.unwrap_or(listen),
        data: database_folder(&data),
        ca_der: pki::read_certificate_der(&ca)?,
        certificate_der: pki::read_certificate_der(&certificate)?,
        signing_key: pki::read_signing_key(&key)?,
        ingest,
    })
}

/// Where RocksDB lives inside a data directory.
pub fn database_folder(data: &Path) -> PathBuf {
    data.join("db")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL only");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        _ = interrupt.recv() => tracing::info!("SIGINT"),
    }
}
