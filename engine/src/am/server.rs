//! `acct serve`'s lifecycle: open the store and recover, start the
//! pipeline threads, the QUIC endpoint, the export and the embedded storage;
//! accept connections under the connection and handshake bounds (each is
//! then served by `connection`); on shutdown, drain and stop in order.
//!
//! Shutdown: stop accepting; every stream stops reading new frames and
//! waits (under the drain deadline) until each admitted message is answered;
//! then the verifiers and the committer drain their queues and stop, and
//! what is committed is exported.
//!
//! The rest of the driver, by concept: `connection` (one connection, from
//! handshake to close), `handshakes` (their bounds), `provider_stream`
//! (accounting in, acks out), `user` (user connections and requests),
//! `admin` (the operator's requests), `issue` (opening sessions), `slots`
//! (places held while something is in progress), `frames` (the one frame
//! reader), `abuse` (the rules, their precedence and close codes), `codes`
//! (every failure's wire code), `context` (the shared state), `udp_watch`
//! (the socket's kernel counters).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use wire::{Name, SigningKey, TrustedCa};

use super::abuse::close_code;
use super::connection::handle_connection;
use super::context::Context;
use super::credentials::{ProviderRegistry, REPLAY_WINDOW_MS, ReplayCache, ServiceDirectory};
use super::export::{ExportSettings, Exporter};
use super::gate::{GateHooks, InitialGate};
use super::handshakes::{Handshakes, HandshakesFull};
use super::ingest::Ingest;
use super::penalty::Penalties;
use super::slots::{SessionSlots, UserSlots};
use super::store::Store;
use super::udp_watch::watch_udp_socket;
use super::user::{USER_CONNECTIONS_MAX, USER_CONNECTIONS_PER_ADDRESS_MAX, encode_service_list};
use crate::clock::now_ms;
use crate::config::IngestConfig;
use serving::deny::{DenyList, DenySource};
use serving::tls;
use storage::server::StorageSettings;

/// What the AM needs to run.
#[derive(Debug, Clone)]
pub struct AmSettings {
    /// This node's name.
    pub node: Name,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// RocksDB folder.
    pub data: PathBuf,
    /// The operator CA, DER.
    pub ca_der: Vec<u8>,
    /// The AM's certificate, DER.
    pub certificate_der: Vec<u8>,
    /// The AM's key (signs User Credentials; serves TLS).
    pub signing_key: SigningKey,
    /// Bounds and policies.
    pub ingest: IngestConfig,
    /// Where and when committed records are exported.
    pub export: ExportPlan,
    /// The services users may request credentials for.
    pub services: ServiceDirectory,
    /// Revoked certificates.
    pub deny: Arc<DenyList>,
    /// Where the deny list is re-read from while the AM runs (the config
    /// file's `[security] denied`).
    pub deny_source: Option<DenySource>,
    /// This node's partition among the others (a lone node: partition 1).
    pub placement: super::cluster::Placement,
    /// The echo floor, for the benchmark harness only: every accounting
    /// message the AM admits (read, decoded, its session found) is answered
    /// STORED at once, and neither verified nor stored. It measures what
    /// the same QUIC stack, socket setup and ack path cost without the
    /// work, so that acct's latency can be judged against it (issue 30).
    /// Never set by `acct`: only the bench crate's `echo_floor` binary sets
    /// it, and it says so when it starts.
    pub echo_floor: bool,
}

/// Where and when the AM exports.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    /// The Accounting Storage.
    pub storage: StorageTarget,
    /// Cut a batch at least this often while records wait.
    pub interval: Duration,
    /// Or as soon as this many records wait.
    pub records_max: usize,
    /// SIGTERM exports what is committed for at most this long.
    pub shutdown_deadline: Duration,
}

/// Which Accounting Storage the AM exports to.
#[derive(Debug, Clone)]
pub enum StorageTarget {
    /// An in-process AS on a free loopback port, reached over QUIC like a
    /// remote one.
    Embedded(Box<StorageSettings>),
    /// An `acct storage` at this address.
    Remote(SocketAddr),
    /// No export: records stay in RocksDB (benchmarks of ingest alone).
    Disabled,
}

/// Bounds of `ingest.udp_buffer_bytes` (a value outside is clamped).
pub const UDP_BUFFER_BYTES_MIN: usize = 64 * 1024;
/// See [`UDP_BUFFER_BYTES_MIN`].
pub const UDP_BUFFER_BYTES_MAX: usize = 1 << 30;

/// Run the AM until `shutdown` completes, then drain and stop. `ready` is
/// called once with the bound address, after recovery, when accepting.
pub async fn run(
    settings: AmSettings,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let config = settings.ingest.clone();
    let store = open_store(&settings.data)?;
    store
        .claim(&settings.node, settings.placement.me())
        .with_context(|| format!("opening {}", settings.data.display()))?;
    let pipeline = Ingest::start(store.clone(), &config)?;
    tracing::info!(sessions = pipeline.table.len(), "recovered");
    let (endpoint, gate) = endpoint(&settings)?;
    let local_addr = endpoint.local_addr().context("reading the bound address")?;
    let replay = recover_replay_cache(&store).await?;
    let context = Arc::new(Context {
        ca: TrustedCa::from_der(settings.ca_der.clone()).context("loading the CA")?,
        store: store.clone(),
        pipeline,
        signing_key: settings.signing_key.clone(),
        node: settings.node.clone(),
        receipt_queries: tokio::sync::Semaphore::new(super::receipts::QUERIES_MAX),
        config: config.clone(),
        connections: AtomicUsize::new(0),
        directory: settings.services.clone(),
        replay: std::sync::Mutex::new(replay),
        providers: ProviderRegistry::default(),
        deny: settings.deny.clone(),
        penalties: Penalties::default(),
        address_penalties: Penalties::default(),
        handshakes: Handshakes::new(gate.clone()),
        gate,
        service_list: encode_service_list(&settings.services),
        user_slots: UserSlots::new(USER_CONNECTIONS_MAX, USER_CONNECTIONS_PER_ADDRESS_MAX),
        session_slots: SessionSlots::default(),
        placement: settings.placement.clone(),
        echo_floor: settings.echo_floor,
    });
    let socket_watcher = tokio::spawn(watch_udp_socket(local_addr.port()));
    let receipt_pusher = context
        .pipeline
        .closed_sessions()
        .map(|closed| tokio::spawn(super::receipts::push_closed(closed, Arc::downgrade(&context))));
    let deny_watcher = settings
        .deny_source
        .clone()
        .map(|source| serving::deny::watch_config(source, settings.deny.clone()));
    let storage = start_storage(&settings.export.storage).await?;
    let exporter = storage
        .address()
        .map(|address| start_exporter(&settings, store.clone(), address));

    let (stop_sender, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    ready(local_addr);
    accept(&endpoint, &context, &stop, &mut connections, shutdown).await;

    if let Some(watcher) = deny_watcher {
        watcher.abort();
    }
    socket_watcher.abort();
    tracing::info!("shutting down: draining in-flight messages");
    endpoint.set_server_config(None);
    let _ = stop_sender.send(true);
    drain(&mut connections, Duration::from_secs(config.drain_deadline_s)).await;
    if let Some(pusher) = receipt_pusher {
        pusher.abort();
    }
    endpoint.close(close_code::SHUTTING_DOWN.into(), b"shutting down");
    // The stream tasks of aborted connections (and the aborted watchers)
    // still hold the context until the runtime drops them, at its next poll
    // of each. Wait for that, bounded; whatever happens, the export below
    // still runs: what is committed is durable and exportable.
    let leaked = match release(context, CONTEXT_RELEASE_TIMEOUT).await {
        Ok(context) => {
            tokio::task::spawn_blocking(move || context.pipeline.shutdown())
                .await
                .context("joining the pipeline threads")?;
            None
        }
        Err(references) => {
            tracing::error!(
                references,
                "tasks still hold the AM's state after the drain; exporting what is committed anyway"
            );
            Some(references)
        }
    };
    if let Some(exporter) = exporter {
        tracing::info!("exporting what is committed before stopping");
        if exporter.finish().await {
            tracing::info!("every committed record is exported");
        } else {
            tracing::warn!("export deadline passed; the rest is exported on the next start");
        }
    }
    storage.stop().await;
    drop(store);
    endpoint.wait_idle().await;
    if let Some(references) = leaked {
        anyhow::bail!("{references} references to the AM's state outlived the drain");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Open (creating) the store in `data`, readable by the AM's user only: it
/// holds every session's User Credential, session key included.
fn open_store(data: &std::path::Path) -> anyhow::Result<Arc<Store>> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", data.display()))?;
    let store = Store::open(data).with_context(|| format!("opening {}", data.display()))?;
    Ok(Arc::new(store))
}

/// The QUIC endpoint with the `[ingest]` transport bounds, its UDP socket
/// sized by `udp_buffer_bytes`, and its Initial gate.
fn endpoint(settings: &AmSettings) -> anyhow::Result<(quinn::Endpoint, Arc<InitialGate>)> {
    let config = &settings.ingest;
    let udp_buffer_bytes = config
        .udp_buffer_bytes
        .clamp(UDP_BUFFER_BYTES_MIN, UDP_BUFFER_BYTES_MAX);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(config.streams_per_connection_max.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(config.stream_receive_window_bytes.into())
        .receive_window(config.connection_receive_window_bytes.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(60)).context("idle timeout")?,
        ))
        .keep_alive_interval(Some(Duration::from_secs(15)));
    let (socket, buffer) = peer::quic::quic_socket_sized(settings.listen, udp_buffer_bytes)
        .with_context(|| format!("listening on {}", settings.listen))?;
    let gate = Arc::new(InitialGate::new());
    let endpoint = tls::server_endpoint(
        socket,
        &settings.ca_der,
        settings.certificate_der.clone(),
        &settings.signing_key,
        transport,
        tls::ClientAuth::Optional,
        Some(Arc::new(GateHooks(gate.clone()))),
    )?;
    if buffer < udp_buffer_bytes {
        // The kernel's cap (net.core.rmem_max) cut the request, and this
        // process may not exceed it.
        tracing::warn!(
            receive_buffer_bytes = buffer,
            requested = udp_buffer_bytes,
            "UDP receive buffer below ingest.udp_buffer_bytes: bursts may drop datagrams; raise \
             net.core.rmem_max / wmem_max or grant CAP_NET_ADMIN (docs/operating.md)"
        );
    } else {
        tracing::info!(receive_buffer_bytes = buffer, "UDP socket");
    }
    Ok((endpoint, gate))
}

/// The replay cache as it was: the requests of the sessions issued within
/// the replay window, stored with them.
async fn recover_replay_cache(store: &Arc<Store>) -> anyhow::Result<ReplayCache> {
    let mut replay = ReplayCache::default();
    let now = now_ms();
    let recent = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.requests_since(now.saturating_sub(REPLAY_WINDOW_MS)))
            .await
            .context("reading the recent requests")?
            .context("reading the recent requests")?
    };
    replay.remember(recent, now);
    tracing::info!(requests = replay.len(), "replay cache recovered");
    Ok(replay)
}

/// Accept connections until `shutdown` completes (or the endpoint closes).
/// A connection attempt beyond `connections_max` is refused; from an
/// address in its backoff, or beyond the handshake bounds, it is refused or
/// dropped before any cryptography (`handshakes`).
async fn accept(
    endpoint: &quinn::Endpoint,
    context: &Arc<Context>,
    stop: &watch::Receiver<bool>,
    connections: &mut JoinSet<()>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if context.connections.load(Ordering::Relaxed) >= context.config.connections_max {
                    metrics::counter!("acct_connections_refused_total", "reason" => "connections").increment(1);
                    incoming.refuse();
                    continue;
                }
                let address = incoming.remote_address().ip();
                if context.address_penalties.remaining(&address, Instant::now()).is_some() {
                    metrics::counter!("acct_connections_refused_total", "reason" => "address_backoff").increment(1);
                    incoming.ignore();
                    continue;
                }
                if let Err(full) = context.handshakes.enter(address, incoming.orig_dst_cid()) {
                    metrics::counter!("acct_connections_refused_total", "reason" => full.reason()).increment(1);
                    match full {
                        HandshakesFull::All => incoming.refuse(),
                        HandshakesFull::Address => incoming.ignore(),
                    }
                    continue;
                }
                context.connections.fetch_add(1, Ordering::Relaxed);
                let context = context.clone();
                let stop = stop.clone();
                connections.spawn(async move {
                    handle_connection(incoming, &context, stop).await;
                    context.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Wait for every connection to finish its streams, at most `deadline`;
/// then close the rest.
async fn drain(connections: &mut JoinSet<()>, deadline: Duration) {
    if tokio::time::timeout(deadline, async { while connections.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing the remaining connections");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// The Accounting Storage the AM exports to, as started.
enum Storage {
    /// An in-process `acct storage`: its task and what stops it.
    Embedded {
        address: SocketAddr,
        task: JoinHandle<anyhow::Result<()>>,
        stop: oneshot::Sender<()>,
    },
    /// An `acct storage` elsewhere.
    Remote(SocketAddr),
    /// No export.
    Disabled,
}

impl Storage {
    fn address(&self) -> Option<SocketAddr> {
        match self {
            Self::Embedded { address, .. } | Self::Remote(address) => Some(*address),
            Self::Disabled => None,
        }
    }

    /// Stop an embedded storage (after the last export) and wait for it.
    async fn stop(self) {
        if let Self::Embedded { task, stop, .. } = self {
            let _ = stop.send(());
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "embedded storage failed"),
                Err(error) => tracing::error!(%error, "embedded storage task failed"),
            }
        }
    }
}

/// Start the embedded storage (and wait until it listens), or name the
/// remote one.
async fn start_storage(target: &StorageTarget) -> anyhow::Result<Storage> {
    match target {
        StorageTarget::Embedded(storage_settings) => {
            let (address_sender, address) = oneshot::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let mut task = tokio::spawn(storage::server::run(
                (**storage_settings).clone(),
                async move {
                    let _ = stopped.await;
                },
                move |address| {
                    let _ = address_sender.send(address);
                },
            ));
            let address = match address.await {
                Ok(address) => address,
                Err(_) => {
                    let error = match (&mut task).await {
                        Ok(Err(error)) => error,
                        _ => anyhow::anyhow!("stopped before it listened"),
                    };
                    return Err(error.context("starting the embedded storage"));
                }
            };
            tracing::info!(%address, target = %storage_settings.target, "embedded storage");
            Ok(Storage::Embedded { address, task, stop })
        }
        StorageTarget::Remote(address) => Ok(Storage::Remote(*address)),
        StorageTarget::Disabled => {
            tracing::warn!("export disabled: records stay in RocksDB");
            Ok(Storage::Disabled)
        }
    }
}

fn start_exporter(settings: &AmSettings, store: Arc<Store>, storage: SocketAddr) -> Exporter {
    Exporter::start(
        store,
        ExportSettings {
            node: settings.node.clone(),
            storage,
            identity: peer::quic::ClientIdentity {
                ca_der: settings.ca_der.clone(),
                certificate_der: settings.certificate_der.clone(),
                signing_key: settings.signing_key.clone(),
            },
            interval: settings.export.interval,
            records_max: settings.export.records_max,
            shutdown_deadline: settings.export.shutdown_deadline,
        },
    )
}

/// How long aborted tasks get to drop the context they hold. The runtime
/// drops an aborted task at its next poll: milliseconds unless a worker
/// thread is stuck, which this bound then reports instead of hanging.
const CONTEXT_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// The context, once every other reference is gone; or, after `timeout`,
/// the number of references left.
async fn release(mut context: Arc<Context>, timeout: Duration) -> Result<Context, usize> {
    /// Time between checks.
    const POLL: Duration = Duration::from_millis(5);
    let deadline = Instant::now() + timeout;
    loop {
        match Arc::try_unwrap(context) {
            Ok(context) => return Ok(context),
            Err(shared) if Instant::now() >= deadline => return Err(Arc::strong_count(&shared) - 1),
            Err(shared) => {
                context = shared;
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
