//! The AM's QUIC driver: accepts connections, runs one task per stream,
//! feeds the verifier threads and writes acks. It makes no protocol
//! decisions itself (see `session`); it moves bytes and enforces bounds.
//!
//! Shutdown: stop accepting; every stream stops reading new frames and
//! waits (under the drain deadline) until each admitted message is answered;
//! then the verifiers and the committer drain their queues and stop.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;
use wire::limits::SMALL_FRAME_BODY_BYTES_MAX;
use wire::{
    AccountingAck, AckEntry, AckStatus, AdminOpenSession, ErrorCode, ErrorMessage, FrameDecoder, Message, Name, Role,
    SessionId, SessionKey, Signed, SigningKey, TrustedCa, UserCredential,
};

use super::credentials::{Issuer, ProviderRegistry, REPLAY_WINDOW_MS, ReplayCache, ServiceDirectory};
use super::export::{ExportSettings, Exporter};
use super::ingest::{Ingest, SUBMIT_BATCH_MESSAGES_MAX};
use super::pipeline::{AckSender, Answers, Pending, ProviderConnection};
use super::session::SessionInfo;
use super::store::Store;
use crate::clock::{now_ms, now_s};
use crate::config::IngestConfig;
use crate::deny::DenyList;
use crate::storage::server::StorageSettings;
use crate::tls;

/// Application close codes on QUIC connections.
pub mod close_code {
    /// Normal close (shutdown or the peer is done).
    pub const DONE: u32 = 0;
    /// The certificate names no role that may connect.
    pub const ROLE_REFUSED: u32 = 1;
    /// The provider sent mostly bad signatures.
    pub const BAD_SIGNATURES: u32 = 2;
    /// The AM is shutting down.
    pub const SHUTTING_DOWN: u32 = 3;
    /// The peer's certificate is denied (`[security] denied`).
    pub const DENIED: u32 = 4;
    /// The provider had more than `MALFORMED_STREAMS_MAX` streams closed for
    /// protocol errors.
    pub const PROTOCOL_ERRORS: u32 = 5;
    /// The provider was disconnected for abuse and its backoff has not ended.
    pub const BACKOFF: u32 = 6;
    /// The provider's datagrams carried almost no accounting each (the
    /// tiny-packet rule, `pipeline::TINY_PACKET_BYTES`).
    pub const TINY_PACKETS: u32 = 7;
    /// The provider already holds `connections_per_provider_max`
    /// connections.
    pub const TOO_MANY_CONNECTIONS: u32 = 8;
    /// The provider sent mostly messages for unknown sessions or other
    /// providers' sessions (`pipeline::FOREIGN_SESSIONS_MIN`).
    pub const FOREIGN_SESSIONS: u32 = 9;
    /// Mostly ids already stored, with changed content
    /// (`pipeline::CONFLICTING_DUPLICATES_MIN`).
    pub const CONFLICTING_DUPLICATES: u32 = 10;
}

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
    /// The config file, re-read for `[security]` while the AM runs.
    pub config_path: Option<PathBuf>,
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

struct Context {
    ca: TrustedCa,
    store: Arc<Store>,
    ingest_pipeline: Ingest,
    signing_key: SigningKey,
    ingest: IngestConfig,
    connections: AtomicUsize,
    directory: ServiceDirectory,
    replay: std::sync::Mutex<ReplayCache>,
    providers: ProviderRegistry,
    deny: Arc<DenyList>,
    /// Backoffs of providers disconnected for abuse.
    penalties: super::penalty::Penalties<String>,
    /// Backoffs of addresses whose handshakes keep ending in a refused
    /// identity (denied, or a name in its backoff).
    address_penalties: super::penalty::Penalties<std::net::IpAddr>,
    /// Drops new connections from backed-off addresses before QUIC
    /// decrypts them (see [`super::gate`]).
    gate: Arc<super::gate::InitialGate>,
    /// Handshakes in progress.
    handshakes: Handshakes,
    /// The service list's frames, encoded once.
    service_list: bytes::Bytes,
    /// User connections open now (bounded by [`USER_CONNECTIONS_MAX`]).
    user_connections: AtomicUsize,
    /// User connections open now per address (IPv4, or IPv6 /64), bounded
    /// by [`USER_CONNECTIONS_PER_ADDRESS_MAX`]; entries leave at zero.
    user_addresses: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
    /// Sessions being opened now (see [`SessionSlot`]).
    sessions_opening: std::sync::Mutex<Opening>,
}

impl Context {
    /// A strike against `address`: once it is in a backoff, its new
    /// connections are dropped at the gate until the backoff ends.
    fn strike_address(&self, address: std::net::IpAddr) {
        let now = Instant::now();
        let backoff = self.address_penalties.strike(&address, now);
        if !backoff.is_zero() {
            self.gate.back_off(address, now + backoff, now);
        }
    }
}

/// Handshakes in progress at once. A handshake holds a connection slot; a
/// flood of handshakes started and abandoned must not take the slots of
/// honest providers, so beyond this new handshakes are refused (a QUIC
/// CONNECTION_REFUSED, before any cryptography). Beyond the per-address
/// bound, and from an address in its backoff, they are dropped unanswered
/// instead: a flood gets no packet back to cost the AM or to amplify.
pub const HANDSHAKES_MAX: usize = 1_024;
/// Handshakes in progress from one IP address at once (a quarter of
/// [`HANDSHAKES_MAX`]: one address cannot take them all).
pub const HANDSHAKES_PER_ADDRESS_MAX: u32 = 256;
/// A handshake not finished by then is dropped and its slot freed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress, in all and per source address. An address at
/// its bound is closed at the [`InitialGate`](super::gate::InitialGate)
/// until one of its handshakes ends.
struct Handshakes {
    by_address: std::sync::Mutex<HashMap<std::net::IpAddr, u32>>,
    gate: Arc<super::gate::InitialGate>,
}

/// Which handshake bound a new connection attempt hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakesFull {
    /// [`HANDSHAKES_MAX`].
    All,
    /// [`HANDSHAKES_PER_ADDRESS_MAX`].
    Address,
}

impl HandshakesFull {
    /// The `reason` label of `acct_connections_refused_total`.
    fn reason(self) -> &'static str {
        match self {
            Self::All => "handshakes",
            Self::Address => "handshakes_per_address",
        }
    }
}

impl Handshakes {
    fn new(gate: Arc<super::gate::InitialGate>) -> Self {
        Self {
            by_address: std::sync::Mutex::new(HashMap::new()),
            gate,
        }
    }

    /// Take a handshake slot for `address`, or say which bound is reached.
    /// The client's repeated first Initials (sent again if the AM's answer
    /// is late) carry `client_chosen_id`: the gate lets them through even
    /// once this handshake brings the address to its bound.
    fn enter(&self, address: std::net::IpAddr, client_chosen_id: quinn::ConnectionId) -> Result<(), HandshakesFull> {
        let mut by_address = self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let total: u32 = by_address.values().sum();
        if total as usize >= HANDSHAKES_MAX {
            return Err(HandshakesFull::All);
        }
        let count = by_address.entry(address).or_default();
        if *count >= HANDSHAKES_PER_ADDRESS_MAX {
            return Err(HandshakesFull::Address);
        }
        *count += 1;
        self.gate.allow(client_chosen_id, address, Instant::now());
        if *count == HANDSHAKES_PER_ADDRESS_MAX {
            self.gate.set_at_bound(address, true);
        }
        Ok(())
    }

    fn leave(&self, address: std::net::IpAddr) {
        let mut by_address = self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = by_address.get_mut(&address) {
            if *count == HANDSHAKES_PER_ADDRESS_MAX {
                self.gate.set_at_bound(address, false);
            }
            *count -= 1;
            if *count == 0 {
                by_address.remove(&address);
            }
        }
    }
}

/// Bounds of `ingest.udp_buffer_bytes` (a value outside is clamped).
pub const UDP_BUFFER_BYTES_MIN: usize = 64 * 1024;
/// See [`UDP_BUFFER_BYTES_MIN`].
pub const UDP_BUFFER_BYTES_MAX: usize = 1 << 30;

/// Connections without a client certificate (users) at once; they do not
/// count against `connections_max`, which stays for providers.
pub const USER_CONNECTIONS_MAX: usize = 4_096;
/// User connections from one IPv4 address or one IPv6 /64 at once: one
/// address cannot hold every user slot (a portal relaying many users'
/// requests needs only a few connections; requests are per stream).
pub const USER_CONNECTIONS_PER_ADDRESS_MAX: usize = 64;
/// A user connection is closed when this long passes without a complete
/// request (counted from the handshake and from each request answered),
/// whatever its streams hold: a stream sitting on part of a frame, or the
/// AM's own keep-alives, do not keep it open.
pub const USER_IDLE: Duration = Duration::from_secs(30);
/// Service Lists one user connection may ask for: the list is the AM's
/// largest answer (about 800 KB for the development default) to a 6-byte
/// request, so a connection gets it this often at most; more are answered
/// Error 7 BUSY. With [`USER_CONNECTIONS_PER_ADDRESS_MAX`] and a handshake
/// per connection, that bounds what one address can make the AM send.
pub const SERVICE_LISTS_PER_CONNECTION_MAX: u32 = 2;
/// Before a connection is closed for abuse, the stream that noticed waits
/// this long at most for the answers to what it admitted (BAD_SIGNATURE and
/// the like) to be verified, written and acknowledged by the provider:
/// closing at once discards what QUIC has buffered but not yet sent. The
/// connection's streams read nothing more meanwhile, and a provider that
/// does not read its answers cannot hold the close any longer than this.
pub const ABUSE_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Every second, the kernel's view of the AM's UDP socket, from
/// `/proc/self/net/udp` (and `udp6`): the bytes of datagrams waiting for the
/// I/O thread to read them (`acct_udp_receive_queue_bytes`; the kernel
/// counts each datagram's whole buffer, not only its payload) and the
/// datagrams dropped because the buffer was full
/// (`acct_udp_receive_drops_total`). The socket is found by its port alone:
/// the tables list the whole network namespace, so another process bound to
/// the same port on another address could be read instead. That queue sits in front
/// of everything the AM measures itself: in an open loop past what the
/// machine carries it held 10-52 MB (docs/performance.md). Where the files
/// do not exist (not Linux) the metrics are simply absent.
async fn watch_udp_socket(port: u16) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(Some((queued, drops))) = tokio::task::spawn_blocking(move || udp_socket_queue(port)).await else {
            continue;
        };
        metrics::gauge!("acct_udp_receive_queue_bytes").set(queued as f64);
        metrics::counter!("acct_udp_receive_drops_total").absolute(drops);
    }
}

/// The receive queue (bytes) and drop count of the UDP socket bound to
/// `port`, from the kernel's socket tables.
fn udp_socket_queue(port: u16) -> Option<(u64, u64)> {
    ["/proc/self/net/udp", "/proc/self/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|table| parse_udp_table(&table, port))
}

/// One socket's receive queue and drops in a `/proc/net/udp` table: after a
/// header line, one line per socket, `sl local_address rem_address st
/// tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref pointer
/// drops`, addresses and queues in hex.
fn parse_udp_table(table: &str, port: u16) -> Option<(u64, u64)> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
        if local_port != port {
            return None;
        }
        let queued = u64::from_str_radix(fields.get(4)?.rsplit(':').next()?, 16).ok()?;
        let drops = fields.get(12)?.parse().ok()?;
        Some((queued, drops))
    })
}

/// Completes when the provider has acknowledged every byte written on a
/// finished stream (or stopped it, or the connection is gone).
type Delivered = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn encode_service_list(directory: &ServiceDirectory) -> bytes::Bytes {
    let mut out = BytesMut::new();
    let mut parts = directory
        .entries()
        .chunks(wire::limits::SERVICE_LIST_ENTRIES_PER_FRAME_MAX)
        .peekable();
    if parts.peek().is_none() {
        wire::ServiceList {
            done: true,
            entries: Vec::new(),
        }
        .encode_frame(&mut out);
    }
    while let Some(part) = parts.next() {
        wire::ServiceList {
            done: parts.peek().is_none(),
            entries: part.to_vec(),
        }
        .encode_frame(&mut out);
    }
    out.freeze()
}

/// Run the AM until `shutdown` completes, then drain and stop. `ready` is
/// called once with the bound address, after recovery, when accepting.
pub async fn run(
    settings: AmSettings,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let ingest = settings.ingest.clone();
    std::fs::create_dir_all(&settings.data).with_context(|| format!("creating {}", settings.data.display()))?;
    // The store holds every session's User Credential, session key included:
    // only the AM's user may read it.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&settings.data, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", settings.data.display()))?;
    }
    let store = Arc::new(Store::open(&settings.data).with_context(|| format!("opening {}", settings.data.display()))?);
    let ingest_pipeline = Ingest::start(store.clone(), &ingest)?;
    tracing::info!(sessions = ingest_pipeline.table.len(), "recovered");

    let udp_buffer_bytes = ingest
        .udp_buffer_bytes
        .clamp(UDP_BUFFER_BYTES_MIN, UDP_BUFFER_BYTES_MAX);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(ingest.streams_per_connection_max.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(ingest.stream_receive_window_bytes.into())
        .receive_window(ingest.connection_receive_window_bytes.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(60)).context("idle timeout")?,
        ))
        .keep_alive_interval(Some(Duration::from_secs(15)));
    let (socket, buffer) = peer::quic::quic_socket_sized(settings.listen, udp_buffer_bytes)
        .with_context(|| format!("listening on {}", settings.listen))?;
    let (endpoint, gate) = tls::server_endpoint(
        socket,
        &settings.ca_der,
        settings.certificate_der.clone(),
        &settings.signing_key,
        transport,
        tls::ClientAuth::Optional,
        true,
    )?;
    let gate = gate.context("the AM's endpoint has an Initial gate")?;
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
    let local_addr = endpoint.local_addr().context("reading the bound address")?;
    // The replay cache as it was: the requests of the sessions issued within
    // the replay window, stored with them.
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

    let context = Arc::new(Context {
        ca: TrustedCa::from_der(settings.ca_der.clone()).context("loading the CA")?,
        store: store.clone(),
        ingest_pipeline,
        signing_key: settings.signing_key.clone(),
        ingest: ingest.clone(),
        connections: AtomicUsize::new(0),
        directory: settings.services.clone(),
        replay: std::sync::Mutex::new(replay),
        providers: ProviderRegistry::default(),
        deny: settings.deny.clone(),
        penalties: super::penalty::Penalties::default(),
        address_penalties: super::penalty::Penalties::default(),
        handshakes: Handshakes::new(gate.clone()),
        gate,
        service_list: encode_service_list(&settings.services),
        user_connections: AtomicUsize::new(0),
        user_addresses: std::sync::Mutex::new(HashMap::new()),
        sessions_opening: std::sync::Mutex::new(Opening::default()),
    });
    let socket_watcher = tokio::spawn(watch_udp_socket(local_addr.port()));
    let deny_watcher = settings
        .config_path
        .clone()
        .map(|path| crate::deny::watch_config(path, settings.deny.clone()));
    let (storage, storage_address) = match &settings.export.storage {
        StorageTarget::Embedded(storage_settings) => {
            let (address_sender, address) = tokio::sync::oneshot::channel();
            let (stop_storage, storage_stopped) = tokio::sync::oneshot::channel::<()>();
            let mut task = tokio::spawn(crate::storage::server::run(
                (**storage_settings).clone(),
                async move {
                    let _ = storage_stopped.await;
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
            tracing::info!(%address, folder = %storage_settings.folder.display(), "embedded storage");
            (Some((task, stop_storage)), Some(address))
        }
        StorageTarget::Remote(address) => (None, Some(*address)),
        StorageTarget::Disabled => {
            tracing::warn!("export disabled: records stay in RocksDB");
            (None, None)
        }
    };
    let exporter = storage_address.map(|storage| {
        Exporter::start(
            store.clone(),
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
    });

    let (stop_sender, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    ready(local_addr);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if context.connections.load(Ordering::Relaxed) >= context.ingest.connections_max {
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

    if let Some(watcher) = deny_watcher {
        watcher.abort();
    }
    socket_watcher.abort();
    tracing::info!("shutting down: draining in-flight messages");
    endpoint.set_server_config(None);
    let _ = stop_sender.send(true);
    let deadline = Duration::from_secs(ingest.drain_deadline_s);
    if tokio::time::timeout(deadline, async { while connections.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing the remaining connections");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    endpoint.close(close_code::SHUTTING_DOWN.into(), b"shutting down");
    // The stream tasks of aborted connections (and the aborted watchers)
    // still hold the context until the runtime drops them, at its next poll
    // of each. Wait for that, bounded; whatever happens, the export below
    // still runs: what is committed is durable and exportable.
    let leaked = match release(context, CONTEXT_RELEASE_TIMEOUT).await {
        Ok(context) => {
            tokio::task::spawn_blocking(move || context.ingest_pipeline.shutdown())
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
    if let Some((task, stop_storage)) = storage {
        let _ = stop_storage.send(());
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "embedded storage failed"),
            Err(error) => tracing::error!(%error, "embedded storage task failed"),
        }
    }
    drop(store);
    endpoint.wait_idle().await;
    if let Some(references) = leaked {
        anyhow::bail!("{references} references to the AM's state outlived the drain");
    }
    tracing::info!("stopped");
    Ok(())
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

async fn handle_connection(incoming: quinn::Incoming, context: &Arc<Context>, stop: watch::Receiver<bool>) {
    let address = incoming.remote_address().ip();
    // Dropping an unfinished handshake closes it and frees its slots.
    // The connection's first ID is made here: the gate lets the client's
    // later Initials, which carry it, through.
    let handshake = match super::gate::accepting(address, || incoming.accept()) {
        Ok(connecting) => tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await,
        Err(error) => Ok(Err(error)),
    };
    context.handshakes.leave(address);
    let connection = match handshake {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            metrics::counter!("acct_handshakes_failed_total").increment(1);
            tracing::debug!(%error, "handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("acct_handshakes_failed_total").increment(1);
            tracing::debug!("handshake timed out");
            return;
        }
    };
    let identity = tls::peer_identity(&connection, &context.ca, now_s());
    let identity = match identity {
        Some(Ok(identity)) if matches!(identity.role, Role::Provider | Role::AccountingManager) => identity,
        // Users need no certificate here: their requests carry it (a5) and
        // are signed with its key (a4).
        None | Some(Ok(wire::CertifiedIdentity { role: Role::User, .. })) => {
            // Users have their own bound, so that anonymous connections
            // cannot take the providers' slots.
            context.connections.fetch_sub(1, Ordering::Relaxed);
            let slot = UserSlot::take(context, connection.remote_address().ip());
            match slot {
                Ok(_slot) => {
                    let span = tracing::info_span!("user connection", remote = %connection.remote_address());
                    serve_user_connection(connection, context, stop).instrument(span).await;
                }
                Err(reason) => {
                    metrics::counter!("acct_user_connections_refused_total", "reason" => reason).increment(1);
                    connection.close(close_code::SHUTTING_DOWN.into(), b"too many user connections");
                }
            }
            context.connections.fetch_add(1, Ordering::Relaxed);
            return;
        }
        other => {
            tracing::info!(remote = %connection.remote_address(), reason = ?other.map(|result| result.map(|identity| identity.role)), "connection refused: no provider or admin identity");
            connection.close(close_code::ROLE_REFUSED.into(), b"certificate role may not connect");
            return;
        }
    };
    let certificate = tls::peer_certificate(&connection).unwrap_or_default();
    let deny_watch = context.deny.subscribe();
    if context.deny.is_denied(identity.name.as_str(), &certificate) {
        metrics::counter!("acct_connections_denied_total").increment(1);
        tracing::warn!(peer = %identity.name, remote = %connection.remote_address(), "connection refused: certificate denied");
        connection.close(close_code::DENIED.into(), b"certificate revoked");
        context.strike_address(address);
        return;
    }
    if let Some(left) = context.penalties.remaining(identity.name.as_str(), Instant::now()) {
        metrics::counter!("acct_connections_backoff_total").increment(1);
        let reason = format!("disconnected for abuse; retry in {} ms", left.as_millis());
        connection.close(close_code::BACKOFF.into(), reason.as_bytes());
        context.strike_address(address);
        return;
    }
    let span = tracing::info_span!("connection", peer = %identity.name, role = identity.role.as_str(), remote = %connection.remote_address());
    serve_connection(connection, identity, certificate, deny_watch, context, stop)
        .instrument(span)
        .await;
}

async fn serve_connection(
    connection: quinn::Connection,
    identity: wire::CertifiedIdentity,
    certificate: Vec<u8>,
    mut deny_watch: watch::Receiver<u64>,
    context: &Arc<Context>,
    stop: watch::Receiver<bool>,
) {
    let registration = if identity.role == Role::Provider {
        let max = context.ingest.connections_per_provider_max.max(1);
        match context.providers.register(&identity.name, &connection, max) {
            Some(token) => Some(token),
            None => {
                metrics::counter!("acct_connections_refused_total", "reason" => "per_provider").increment(1);
                tracing::warn!(
                    max,
                    "connection refused: the provider holds connections_per_provider_max already"
                );
                connection.close(
                    close_code::TOO_MANY_CONNECTIONS.into(),
                    b"too many connections for this provider",
                );
                context.strike_address(connection.remote_address().ip());
                return;
            }
        }
    } else {
        None
    };
    metrics::gauge!("acct_connections").increment(1.0);
    tracing::debug!("connected");
    let provider = ProviderConnection::new(identity.name.clone(), identity.public_key);
    let mut streams = JoinSet::new();
    let mut stop_watch = stop.clone();
    loop {
        tokio::select! {
            changed = stop_watch.changed() => {
                if changed.is_err() || *stop_watch.borrow() { break; }
            }
            Ok(()) = deny_watch.changed() => {
                if context.deny.is_denied(identity.name.as_str(), &certificate) {
                    metrics::counter!("acct_connections_denied_total").increment(1);
                    tracing::warn!("disconnecting: certificate denied");
                    connection.close(close_code::DENIED.into(), b"certificate revoked");
                    break;
                }
            }
            accepted = connection.accept_bi() => {
                let Ok((send, receive)) = accepted else { break };
                let context = context.clone();
                let stop = stop.clone();
                if identity.role == Role::AccountingManager {
                    streams.spawn(admin_stream(send, receive, context, stop));
                } else {
                    let provider = provider.clone();
                    let connection = connection.clone();
                    streams.spawn(async move {
                        let writer = provider_stream(send, receive, &connection, &context, &provider, stop).await;
                        let reason = if provider.is_abusive() {
                            Some((close_code::BAD_SIGNATURES, "bad_signatures", "too many bad signatures"))
                        } else if provider.sends_conflicting_duplicates() {
                            Some((close_code::CONFLICTING_DUPLICATES, "conflicting_duplicates", "too many conflicting duplicates"))
                        } else if provider.bills_foreign_sessions() {
                            Some((close_code::FOREIGN_SESSIONS, "foreign_sessions", "too many messages for sessions not its own"))
                        } else if provider.tiny_packets.load(Ordering::Relaxed) {
                            Some((close_code::TINY_PACKETS, "tiny_packets", "too many tiny packets"))
                        } else if provider.breaks_protocol() {
                            Some((close_code::PROTOCOL_ERRORS, "protocol_errors", "too many protocol errors"))
                        } else {
                            None
                        };
                        // Once per connection, whichever stream notices first.
                        if let Some((code, label, text)) = reason
                            && !provider.closed_for_abuse.swap(true, Ordering::Relaxed)
                        {
                            let backoff = context.penalties.strike(provider.name.as_str(), Instant::now());
                            tracing::warn!(reason = text, backoff_ms = backoff.as_millis() as u64, "disconnecting an abusive provider");
                            metrics::counter!("acct_connections_abusive_total", "reason" => label).increment(1);
                            // The other streams stop reading while this one's answers go out.
                            provider.abuse.notify_waiters();
                            let answered = async {
                                if let Ok(Some(delivered)) = writer.await {
                                    delivered.await;
                                }
                            };
                            let _ = tokio::time::timeout(ABUSE_CLOSE_LINGER, answered).await;
                            connection.close(code.into(), text.as_bytes());
                        } else {
                            let _ = writer.await;
                        }
                    });
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
    if let Some(token) = registration {
        context.providers.unregister(&identity.name, token);
    }
    metrics::gauge!("acct_connections").decrement(1.0);
    connection.close(close_code::DONE.into(), b"");
}

/// One user connection's place in the bounds: in all
/// ([`USER_CONNECTIONS_MAX`]) and per address
/// ([`USER_CONNECTIONS_PER_ADDRESS_MAX`]); given back on drop.
struct UserSlot<'a> {
    context: &'a Context,
    address: std::net::IpAddr,
}

impl<'a> UserSlot<'a> {
    /// A slot for a connection from `remote`, or the bound that is full.
    fn take(context: &'a Context, remote: std::net::IpAddr) -> Result<Self, &'static str> {
        let address = user_address_key(remote);
        let mut addresses = context
            .user_addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = addresses.get(&address).copied().unwrap_or(0);
        if count >= USER_CONNECTIONS_PER_ADDRESS_MAX {
            return Err("user_address");
        }
        if context.user_connections.load(Ordering::Relaxed) >= USER_CONNECTIONS_MAX {
            return Err("user_connections");
        }
        // Both counts change under the lock: the bounds are exact.
        context.user_connections.fetch_add(1, Ordering::Relaxed);
        addresses.insert(address, count + 1);
        Ok(Self { context, address })
    }
}

impl Drop for UserSlot<'_> {
    fn drop(&mut self) {
        let mut addresses = self
            .context
            .user_addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match addresses.get_mut(&self.address) {
            Some(count) if *count > 1 => *count -= 1,
            _ => {
                addresses.remove(&self.address);
            }
        }
        self.context.user_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The address a user connection counts against: the IPv4 address, or the
/// IPv6 /64 (one host usually holds a whole /64).
fn user_address_key(remote: std::net::IpAddr) -> std::net::IpAddr {
    match remote {
        std::net::IpAddr::V4(_) => remote,
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(segments))
            }
        },
    }
}

/// A user's connection: streams carrying Service List Requests and
/// Service Credential Requests, one answer each. It closes [`USER_IDLE`]
/// after its handshake or its last answered request, whatever its streams
/// hold.
async fn serve_user_connection(connection: quinn::Connection, context: &Arc<Context>, stop: watch::Receiver<bool>) {
    metrics::gauge!("acct_user_connections").increment(1.0);
    let activity = Arc::new(UserActivity::new());
    let mut streams = JoinSet::new();
    let mut stop_watch = stop.clone();
    loop {
        let idle_until = activity.last_request() + USER_IDLE;
        tokio::select! {
            changed = stop_watch.changed() => {
                if changed.is_err() || *stop_watch.borrow() { break; }
            }
            () = tokio::time::sleep_until(idle_until.into()) => {
                if activity.last_request() + USER_IDLE <= Instant::now() {
                    metrics::counter!("acct_user_connections_idle_total").increment(1);
                    break;
                }
            }
            accepted = connection.accept_bi() => {
                let Ok((send, receive)) = accepted else { break };
                streams.spawn(user_stream(send, receive, context.clone(), activity.clone(), stop.clone()));
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    // Streams waiting for bytes end with the connection (their reads fail);
    // one inside an issuance finishes it (bounded by the push's 5 s and the
    // store) and its answer is lost with the connection.
    connection.close(close_code::DONE.into(), b"");
    while streams.join_next().await.is_some() {}
    metrics::gauge!("acct_user_connections").decrement(1.0);
}

/// What a user connection's streams report to it: when a complete request
/// last arrived or was answered, and how many Service Lists it was sent.
struct UserActivity {
    last_request: std::sync::Mutex<Instant>,
    service_lists: std::sync::atomic::AtomicU32,
}

impl UserActivity {
    fn new() -> Self {
        Self {
            last_request: std::sync::Mutex::new(Instant::now()),
            service_lists: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn last_request(&self) -> Instant {
        *self
            .last_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A complete request arrived or was answered.
    fn touch(&self) {
        *self
            .last_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    /// Whether this connection may be sent one more Service List.
    fn take_service_list(&self) -> bool {
        self.service_lists
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sent| {
                (sent < SERVICE_LISTS_PER_CONNECTION_MAX).then_some(sent + 1)
            })
            .is_ok()
    }
}

async fn user_stream(
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
    context: Arc<Context>,
    activity: Arc<UserActivity>,
    mut stop: watch::Receiver<bool>,
) {
    let decoder = FrameDecoder::new(SMALL_FRAME_BODY_BYTES_MAX);
    let mut buffer = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);
    loop {
        loop {
            let frame = match decoder.next_frame(&mut buffer) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    out.clear();
                    frame_error(&error).encode_frame(&mut out);
                    let _ = send.write_all(&out).await;
                    let _ = send.finish();
                    return;
                }
            };
            // A complete request: the idle clock starts again now (an
            // issuance in progress is not idle) and again once answered.
            activity.touch();
            out.clear();
            match frame.decode() {
                Ok(Message::ServiceListRequest(_)) if activity.take_service_list() => {
                    // Shared bytes, encoded once: a request costs no copy.
                    if send.write_chunk(context.service_list.clone()).await.is_err() {
                        return;
                    }
                    activity.touch();
                    continue;
                }
                Ok(Message::ServiceListRequest(_)) => ErrorMessage::new(
                    ErrorCode::BUSY,
                    &format!(
                        "a connection is sent the service list {SERVICE_LISTS_PER_CONNECTION_MAX} times at most; reconnect"
                    ),
                )
                .encode_frame(&mut out),
                Ok(Message::ServiceCredentialRequest(request)) => match issue(&context, &request).await {
                    Ok(credential) => credential.encode_frame(&mut out),
                    Err(error) => error.encode_frame(&mut out),
                },
                Ok(other) => ErrorMessage::new(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    &format!(
                        "a user stream carries service list and credential requests only, not type 0x{:02x}",
                        other.message_type().0
                    ),
                )
                .encode_frame(&mut out),
                Err(error) => ErrorMessage::new(ErrorCode::MALFORMED_FRAME, &error.to_string()).encode_frame(&mut out),
            }
            if send.write_all(&out).await.is_err() {
                return;
            }
            activity.touch();
        }
        tokio::select! {
            chunk = receive.read_chunk(16 * 1024, true) => match chunk {
                Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
                Ok(None) | Err(_) => break,
            },
            _ = stop.changed() => break,
        }
    }
    let _ = send.finish();
}

/// A place under `sessions_max` (and, for a user's request, under
/// `sessions_per_user_max`) held while a session is being opened: the
/// sessions held plus those being opened never exceed either bound, however
/// many requests race (a session counts twice between its store and the
/// slot's drop, which only errs on the safe side).
struct SessionSlot<'a> {
    context: &'a Context,
    user: Option<Name>,
}

/// Sessions being opened now, in all and per user (users with none have no
/// entry).
#[derive(Default)]
struct Opening {
    all: usize,
    per_user: HashMap<Name, usize>,
}

impl<'a> SessionSlot<'a> {
    /// A place for a session of `user`'s request (`None`: the admin path,
    /// bound by `sessions_max` only).
    fn take(context: &'a Context, user: Option<&Name>) -> Result<Self, ErrorMessage> {
        let mut opening = context
            .sessions_opening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let table = &context.ingest_pipeline.table;
        if table.len() + opening.all >= context.ingest.sessions_max {
            return Err(ErrorMessage::new(
                ErrorCode::BUSY,
                "the AM holds its maximum number of sessions",
            ));
        }
        if let Some(user) = user {
            let pending = opening.per_user.get(user).copied().unwrap_or(0);
            if table.live_sessions(user) + pending >= context.ingest.sessions_per_user_max {
                metrics::counter!("acct_credentials_refused_total", "code" => "per_user").increment(1);
                return Err(ErrorMessage::new(
                    ErrorCode::BUSY,
                    "this user holds its maximum number of live sessions (sessions_per_user_max)",
                ));
            }
            *opening.per_user.entry(user.clone()).or_default() += 1;
        }
        opening.all += 1;
        Ok(Self {
            context,
            user: user.cloned(),
        })
    }
}

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        let mut opening = self
            .context
            .sessions_opening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        opening.all -= 1;
        if let Some(user) = &self.user {
            match opening.per_user.get_mut(user) {
                Some(count) if *count > 1 => *count -= 1,
                _ => {
                    opening.per_user.remove(user);
                }
            }
        }
    }
}

/// 202 → 206: validate, mint, push to the provider, store, answer.
async fn issue(
    context: &Arc<Context>,
    request: &Signed<wire::ServiceCredentialRequest>,
) -> Result<Signed<wire::ServiceCredential>, ErrorMessage> {
    let started = std::time::Instant::now();
    let issuer = Issuer {
        ca: &context.ca,
        directory: &context.directory,
        replay: &context.replay,
        providers: &context.providers,
        signing_key: &context.signing_key,
        deny: &context.deny,
    };
    // Refused from here on (or this task dropped), the request gives its
    // place in the replay cache back: the same bytes may come again.
    let mut reserved = issuer.check(request, now_ms())?;
    // Held until the session is stored (or refused).
    let _slot = SessionSlot::take(context, Some(&reserved.user))?;
    let minted = issuer.mint(request, &reserved, now_ms()).await?;
    let value = request.value();
    // The request id and nonce go in the session's own write: a replay
    // after a restart finds them.
    let session = SessionInfo::for_request(
        minted.provider,
        minted.user_credential,
        now_ms(),
        Some((value.request_id, value.nonce)),
    );
    // The committer may store the session even if this task is dropped
    // while it waits: the request keeps its place unless the store refuses.
    reserved.hold();
    if let Err(detail) = context.ingest_pipeline.open_session(session).await {
        reserved.release();
        return Err(ErrorMessage::new(store_failure_code(&detail), &detail));
    }
    metrics::counter!("acct_credentials_issued_total").increment(1);
    metrics::histogram!("acct_credential_issue_seconds").record(started.elapsed().as_secs_f64());
    Ok(minted.service_credential)
}

/// One provider stream: read frames, admit, queue for verification; a
/// companion task writes the acks. Returns when the stream ends, fails, the
/// provider is found abusive, or shutdown asks it to stop, and only after
/// every admitted message was answered.
async fn provider_stream(
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
    connection: &quinn::Connection,
    context: &Arc<Context>,
    provider: &Arc<ProviderConnection>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Option<Delivered>> {
    let inflight_max = context.ingest.stream_inflight_messages_max.max(1);
    let inflight = Arc::new(Semaphore::new(inflight_max));
    let (ack_sender, mut ack_input) = mpsc::channel::<Answers>(inflight_max);
    let (error_sender, error_input) = tokio::sync::oneshot::channel::<ErrorMessage>();
    let writer_inflight = inflight.clone();
    let writer = tokio::spawn(async move {
        // Grown on first use to what the stream's acks need, then reused:
        // an idle stream (of thousands) holds no 16 KiB up front.
        let mut frame = BytesMut::new();
        let mut entries = Vec::new();
        loop {
            let Some(first) = ack_input.recv().await else { break };
            first.append_to(&mut entries);
            // Bounded by the stream's in-flight bound: every answer holds a permit.
            while entries.len() < wire::limits::ACK_ENTRIES_MAX {
                match ack_input.try_recv() {
                    Ok(answers) => answers.append_to(&mut entries),
                    Err(_) => break,
                }
            }
            let count = entries.len();
            frame.clear();
            AccountingAck {
                entries: std::mem::take(&mut entries),
            }
            .encode_frames(&mut frame);
            if send.write_all(&frame).await.is_err() {
                // The provider is gone; what was stored stays stored and is
                // acked as duplicate when it is sent again.
                writer_inflight.add_permits(count);
                while let Some(answers) = ack_input.recv().await {
                    writer_inflight.add_permits(answers.len());
                }
                return None;
            }
            writer_inflight.add_permits(count);
        }
        if let Ok(error) = error_input.await {
            frame.clear();
            error.encode_frame(&mut frame);
            let _ = send.write_all(&frame).await;
        }
        let _ = send.finish();
        let stopped = send.stopped();
        Some(Box::pin(async move {
            let _ = stopped.await;
        }) as Delivered)
    });

    let decoder = FrameDecoder::new(SMALL_FRAME_BODY_BYTES_MAX);
    // Grows with what the provider sends; an idle stream holds nothing.
    let mut buffer = BytesMut::new();
    let mut fatal: Option<ErrorMessage> = None;
    let mut batch: Vec<Pending> = Vec::new();
    'stream: loop {
        // One clock reading per read: the messages of a read arrived together.
        let received_ms = now_ms();
        loop {
            let frame = match decoder.next_frame(&mut buffer) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    metrics::counter!("acct_frames_malformed_total").increment(1);
                    fatal = Some(frame_error(&error));
                    break 'stream;
                }
            };
            let message = match frame.decode() {
                Ok(Message::Accounting(message)) => message,
                Ok(other) => {
                    fatal = Some(ErrorMessage::new(
                        ErrorCode::UNEXPECTED_MESSAGE,
                        &format!(
                            "a provider stream carries accounting only, not type 0x{:02x}",
                            other.message_type().0
                        ),
                    ));
                    break 'stream;
                }
                Err(error) => {
                    metrics::counter!("acct_frames_malformed_total").increment(1);
                    fatal = Some(ErrorMessage::new(ErrorCode::MALFORMED_FRAME, &error.to_string()));
                    break 'stream;
                }
            };
            // One permit per admitted message, returned when its ack is
            // written: at the bound we stop reading and QUIC holds the provider.
            // Before waiting, hand over what this stream holds, so that the
            // acks that free permits can come.
            let permit = match inflight.try_acquire() {
                Ok(permit) => Ok(permit),
                Err(_) => {
                    if !submit(context, &mut batch, &ack_sender).await {
                        break 'stream;
                    }
                    // A provider that stops reading its answers waits here:
                    // an abuse verdict must still reach it.
                    let abuse = provider.abuse.notified();
                    tokio::pin!(abuse);
                    abuse.as_mut().enable();
                    if provider.stops_reading() {
                        break 'stream;
                    }
                    tokio::select! {
                        permit = inflight.acquire() => permit,
                        _ = stop.changed() => break 'stream,
                        () = &mut abuse => break 'stream,
                    }
                }
            };
            let Ok(permit) = permit else { break 'stream };
            permit.forget();
            let message_id = message.value().message_id();
            let admitted = context
                .ingest_pipeline
                .table
                .admit(&message.value().session_id, &provider.name);
            if let Err(status) = admitted {
                metrics::counter!("acct_messages_total", "outcome" => "rejected").increment(1);
                let _ = ack_sender.try_send(Answers::One(AckEntry { message_id, status }));
                provider.foreign_sessions.fetch_add(1, Ordering::Relaxed);
                if provider.bills_foreign_sessions() {
                    break 'stream;
                }
                continue;
            }
            if batch.capacity() == 0 {
                // Room for the rest of this read at once, sized by this
                // message (a stream's messages are alike): one allocation
                // per read instead of a Vec that doubles its way up.
                let frame_bytes = message.signed_bytes().len() + wire::limits::FRAME_HEADER_BYTES;
                batch.reserve((1 + buffer.len() / frame_bytes).min(SUBMIT_BATCH_MESSAGES_MAX));
            }
            batch.push(Pending {
                message,
                connection: provider.clone(),
                received_ms,
                reply: ack_sender.clone(),
            });
            if batch.len() >= SUBMIT_BATCH_MESSAGES_MAX && !submit(context, &mut batch, &ack_sender).await {
                break 'stream;
            }
            if provider.stops_reading() {
                break 'stream;
            }
        }
        // Everything decoded from this read goes to verification at once.
        if !submit(context, &mut batch, &ack_sender).await {
            break;
        }
        if *stop.borrow() {
            break;
        }
        // Verdicts arrive after admission: the verifiers signal when this
        // connection crosses the abuse line (registered before the check, so
        // that a signal in between is not lost). No timer: thousands of idle
        // streams cost no wakeups.
        let abuse = provider.abuse.notified();
        tokio::pin!(abuse);
        abuse.as_mut().enable();
        if provider.stops_reading() {
            break;
        }
        tokio::select! {
            chunk = receive.read_chunk(64 * 1024, true) => match chunk {
                Ok(Some(chunk)) => {
                    buffer.extend_from_slice(&chunk.bytes);
                    if provider.read_and_check(chunk.bytes.len(), || connection.stats().udp_rx.datagrams) {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            },
            _ = stop.changed() => break,
            () = &mut abuse => break,
        }
    }
    // Messages admitted before the stream ended are still verified and
    // answered (unless the AM is shutting down, which answers them so).
    let _ = submit(context, &mut batch, &ack_sender).await;
    match fatal {
        Some(error) => {
            provider.malformed_streams.fetch_add(1, Ordering::Relaxed);
            let _ = error_sender.send(error);
            let _ = receive.stop(0u32.into());
        }
        // The writer waits for this channel to close after the last ack.
        None => drop(error_sender),
    }
    drop(ack_sender);
    // Every admitted message holds a clone of the ack sender until answered:
    // the writer ends once all are answered and written. The caller awaits
    // it, for a bounded time when it closes the connection for abuse.
    writer
}

/// Hand the stream's admitted messages to the verify queue, waiting at most
/// `admission_wait_ms` for room; if there is none, each is answered BUSY
/// (or SHUTTING_DOWN). False when the AM is shutting down.
async fn submit(context: &Context, batch: &mut Vec<Pending>, ack_sender: &AckSender) -> bool {
    if batch.is_empty() {
        return true;
    }
    let wait = Duration::from_millis(context.ingest.admission_wait_ms);
    // The batch moves into the queue; the next one grows only as far as
    // its read needs (most reads carry a few messages).
    let taken = std::mem::take(batch);
    match context.ingest_pipeline.verify_queue().submit(taken, wait).await {
        Ok(()) => true,
        Err((refused, status)) => {
            let outcome = if status == AckStatus::BUSY { "busy" } else { "retry" };
            metrics::counter!("acct_messages_total", "outcome" => outcome).increment(refused.len() as u64);
            for pending in refused {
                let _ = ack_sender.try_send(Answers::One(AckEntry {
                    message_id: pending.message.value().message_id(),
                    status,
                }));
            }
            status != AckStatus::SHUTTING_DOWN
        }
    }
}

fn frame_error(error: &wire::DecodeError) -> ErrorMessage {
    let code = match error {
        wire::DecodeError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
        wire::DecodeError::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
        wire::DecodeError::UnknownMessageType(_) => ErrorCode::UNKNOWN_MESSAGE_TYPE,
        _ => ErrorCode::MALFORMED_FRAME,
    };
    ErrorMessage::new(code, &error.to_string())
}

/// An admin stream: open sessions on the operator's behalf.
async fn admin_stream(
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) {
    let decoder = FrameDecoder::new(SMALL_FRAME_BODY_BYTES_MAX);
    let mut buffer = BytesMut::with_capacity(1024);
    let mut out = BytesMut::with_capacity(1024);
    loop {
        while let Some(frame) = match decoder.next_frame(&mut buffer) {
            Ok(frame) => frame,
            Err(error) => {
                frame_error(&error).encode_frame(&mut out);
                let _ = send.write_all(&out).await;
                let _ = send.finish();
                return;
            }
        } {
            out.clear();
            match frame.decode() {
                Ok(Message::AdminOpenSession(request)) => match open_session(&context, request).await {
                    Ok(credential) => credential.encode_frame(&mut out),
                    Err(error) => error.encode_frame(&mut out),
                },
                Ok(Message::AdminAuditRequest(_)) => {
                    if !audit(&context, &mut send).await {
                        return;
                    }
                    continue;
                }
                Ok(_) | Err(_) => {
                    ErrorMessage::new(
                        ErrorCode::UNEXPECTED_MESSAGE,
                        "an admin stream carries admin requests only",
                    )
                    .encode_frame(&mut out);
                }
            }
            if send.write_all(&out).await.is_err() {
                return;
            }
        }
        tokio::select! {
            chunk = receive.read_chunk(16 * 1024, true) => match chunk {
                Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
                Ok(None) | Err(_) => break,
            },
            _ = stop.changed() => break,
        }
    }
    let _ = send.finish();
}

/// Answer an audit request on `send`: read the hot store on a blocking
/// thread, then send the runs in parts. False if the stream is gone.
async fn audit(context: &Arc<Context>, send: &mut quinn::SendStream) -> bool {
    let store = context.store.clone();
    let mut out = BytesMut::new();
    match tokio::task::spawn_blocking(move || store.audit_runs()).await {
        Ok(Ok((records, runs))) => {
            let mut parts = runs.chunks(wire::limits::AUDIT_RUNS_PER_FRAME_MAX).peekable();
            if parts.peek().is_none() {
                wire::AdminAuditReport {
                    done: true,
                    records,
                    runs: Vec::new(),
                }
                .encode_frame(&mut out);
            }
            while let Some(part) = parts.next() {
                let done = parts.peek().is_none();
                wire::AdminAuditReport {
                    done,
                    records: if done { records } else { 0 },
                    runs: part.to_vec(),
                }
                .encode_frame(&mut out);
                if out.len() >= 256 * 1024 {
                    if send.write_all(&out).await.is_err() {
                        return false;
                    }
                    out.clear();
                }
            }
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "audit: reading the store failed");
            ErrorMessage::new(ErrorCode::INTERNAL, &format!("reading the store: {error}")).encode_frame(&mut out);
        }
        Err(_) => ErrorMessage::new(ErrorCode::INTERNAL, "the audit task failed").encode_frame(&mut out),
    }
    send.write_all(&out).await.is_ok()
}

/// Mint a session: fresh id and key, the User Credential signed by the AM,
/// stored durably by the committer before it is returned.
async fn open_session(
    context: &Arc<Context>,
    request: AdminOpenSession,
) -> Result<Signed<UserCredential>, ErrorMessage> {
    let _slot = SessionSlot::take(context, None)?;
    let mut session_id = [0u8; 16];
    let mut session_key = [0u8; 32];
    getrandom::fill(&mut session_id)
        .and_then(|()| getrandom::fill(&mut session_key))
        .map_err(|_| ErrorMessage::new(ErrorCode::INTERNAL, "no randomness"))?;
    let credential = Signed::sign(
        UserCredential {
            session_id: SessionId(session_id),
            service_id: request.service_id,
            user_id: request.user_id,
            user_address: request.user_address,
            session_key: SessionKey(session_key),
            policy: request.policy,
        },
        &context.signing_key,
    )
    .map_err(|error| ErrorMessage::new(ErrorCode::UNEXPECTED_MESSAGE, &error.to_string()))?;
    let session = SessionInfo::new(request.provider, credential.clone(), now_ms());
    context
        .ingest_pipeline
        .open_session(session)
        .await
        .map(|()| credential)
        .map_err(|detail| ErrorMessage::new(store_failure_code(&detail), &detail))
}

/// The Error code for a session the committer could not store.
fn store_failure_code(detail: &str) -> ErrorCode {
    if detail.contains("stopping") {
        ErrorCode::SHUTTING_DOWN
    } else if detail.contains("out of disk space") {
        ErrorCode::OUT_OF_SPACE
    } else {
        ErrorCode::BUSY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_table_lines_give_queue_and_drops() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  \
            7: 0100007F:A484 00000000:0000 07 00000000:00034A00 00:00000000 00000000     0        0 123456 2 0000000000000000 17\n  \
            8: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123457 2 0000000000000000 0\n";
        assert_eq!(parse_udp_table(table, 0xA484), Some((0x34A00, 17)));
        assert_eq!(parse_udp_table(table, 8080), Some((0, 0)));
        assert_eq!(parse_udp_table(table, 9), None);
        assert_eq!(parse_udp_table("header only\n", 0xA484), None);
        assert_eq!(parse_udp_table("h\n  7: garbage\n", 0xA484), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_socket_with_unread_datagrams_shows_its_queue() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = receiver.local_addr().expect("address").port();
        for _ in 0..3 {
            sender.send_to(&[7u8; 1000], ("127.0.0.1", port)).expect("send");
        }
        let (queued, drops) = udp_socket_queue(port).expect("the socket is in /proc/self/net/udp");
        assert!(queued >= 3_000, "3 unread datagrams of 1,000 bytes, queue {queued}");
        assert_eq!(drops, 0);
    }
}
