//! The AS's QUIC service: mutual TLS with the operator's CA, and only an
//! AM's certificate may deliver. One bidirectional stream per batch: one
//! Record Accounting frame in, one Record Ack frame out.
//!
//! Bounds: `connections_max` connections, 4 streams per connection, and at
//! most `receiving_max` batches buffered at once (each up to the 64 MiB
//! frame maximum), so the AS holds at most `receiving_max` × 64 MiB of
//! payload in memory.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wire::limits::{FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES};
use wire::{ErrorCode, ErrorMessage, Message, RecordAccounting, RecordAck, Role, Signed, SigningKey, TrustedCa};

use peer::clock::now_s;
use serving::background::Background;
use serving::deny::{DenyList, DenySource};
use serving::tls;

use super::bucket::{Bucket, BucketSettings};
use super::checks;
use super::files::ColdFiles;

/// What the AS needs to run.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the Parquet files go: a folder, or an S3-compatible bucket.
    pub target: Target,
    /// The operator CA, DER.
    pub ca_der: Vec<u8>,
    /// The AS's certificate, DER (role `storage`).
    pub certificate_der: Vec<u8>,
    /// The AS's key.
    pub signing_key: SigningKey,
    /// Connections at once; more are refused.
    pub connections_max: usize,
    /// Batches being received or stored at once (memory: each up to 64 MiB).
    pub receiving_max: usize,
    /// Revoked certificates (`[security] denied`): a denied AM may not
    /// deliver. The embedded AS shares the AM's list.
    pub deny: Arc<DenyList>,
    /// Where the deny list is re-read from when it changes (the standalone
    /// AS; the embedded one's list is kept by the AM).
    pub deny_source: Option<DenySource>,
}

/// Where the AS keeps batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local folder ([`ColdFiles`]): the embedded default.
    Folder(PathBuf),
    /// An S3-compatible bucket ([`Bucket`]).
    Bucket(BucketSettings),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Folder(folder) => write!(f, "{}", folder.display()),
            Self::Bucket(bucket) => write!(f, "{}", bucket.url),
        }
    }
}

/// The opened target.
#[derive(Clone)]
enum Kept {
    Folder(Arc<ColdFiles>),
    Bucket(Arc<Bucket>),
}

/// Close code: the certificate is not an AM's.
pub const CLOSE_ROLE_REFUSED: u32 = 1;
/// Close code: the AM's certificate is denied (`[security] denied`).
pub const CLOSE_DENIED: u32 = 4;
/// Concurrent streams (batches) per connection.
const STREAMS_PER_CONNECTION: u32 = 4;

/// Run the AS until `shutdown` completes. `ready` gets the bound address.
pub async fn run(
    settings: StorageSettings,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let kept = match &settings.target {
        Target::Folder(folder) => {
            let folder = folder.clone();
            let files = tokio::task::spawn_blocking(move || ColdFiles::open(&folder))
                .await
                .context("opening the storage folder")??;
            tracing::info!(folder = %files.root().display(), batches = files.batch_count(), "storage ready");
            Kept::Folder(Arc::new(files))
        }
        Target::Bucket(bucket) => {
            let bucket = Bucket::open(bucket).context("opening the bucket")?;
            bucket
                .probe()
                .await
                .with_context(|| format!("checking the bucket {}", bucket.url()))?;
            tracing::info!(bucket = %bucket.url(), "storage ready");
            Kept::Bucket(Arc::new(bucket))
        }
    };
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(STREAMS_PER_CONNECTION.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((16u32 * 1024 * 1024).into())
        .receive_window((32u32 * 1024 * 1024).into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(60)).context("idle timeout")?,
        ));
    let (socket, _) =
        peer::quic::quic_socket(settings.listen).with_context(|| format!("listening on {}", settings.listen))?;
    let endpoint = tls::server_endpoint(
        socket,
        &settings.ca_der,
        settings.certificate_der.clone(),
        &settings.signing_key,
        transport,
        tls::ClientAuth::Required,
        None,
    )?;
    let ca = TrustedCa::from_der(settings.ca_der.clone()).context("loading the CA")?;
    let receiving = Arc::new(Semaphore::new(settings.receiving_max.max(1)));
    // Checking and writing batches runs below any ingest sharing the machine
    // (the embedded storage), one thread per batch being received.
    let background = Background::start("acct-storage", settings.receiving_max.max(1));
    let deny_watcher = settings
        .deny_source
        .clone()
        .map(|source| serving::deny::watch_config(source, settings.deny.clone()));
    let mut connections = JoinSet::new();
    ready(endpoint.local_addr().context("reading the bound address")?);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if connections.len() >= settings.connections_max {
                    incoming.refuse();
                    continue;
                }
                let shared = Shared {
                    kept: kept.clone(),
                    ca: ca.clone(),
                    deny: settings.deny.clone(),
                    receiving: receiving.clone(),
                    background: background.clone(),
                };
                connections.spawn(serve_connection(incoming, shared));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    endpoint.set_server_config(None);
    if let Some(watcher) = deny_watcher {
        watcher.abort();
    }
    // A batch being written to a folder finishes (its blocking task is not
    // cancelled); an upload to a bucket is cancelled. Either way its ack may
    // not reach the AM, which then sends it again (and is answered
    // ALREADY_STORED if it was stored).
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    endpoint.close(0u32.into(), b"shutting down");
    endpoint.wait_idle().await;
    tracing::info!("storage stopped");
    Ok(())
}

/// What every connection task shares.
#[derive(Clone)]
struct Shared {
    kept: Kept,
    ca: TrustedCa,
    deny: Arc<DenyList>,
    receiving: Arc<Semaphore>,
    background: Background,
}

async fn serve_connection(incoming: quinn::Incoming, shared: Shared) {
    let Ok(connection) = incoming.await else {
        return;
    };
    let am = match tls::peer_identity(&connection, &shared.ca, now_s()) {
        Some(Ok(identity)) if identity.role == Role::AccountingManager => Arc::new(identity),
        other => {
            tracing::warn!(remote = %connection.remote_address(), identity = ?other, "refused: only an AM may deliver");
            connection.close(CLOSE_ROLE_REFUSED.into(), b"only an AM certificate may deliver");
            return;
        }
    };
    let certificate: Arc<[u8]> = tls::peer_certificate(&connection).unwrap_or_default().into();
    let mut deny_watch = shared.deny.subscribe();
    if shared.deny.is_denied(am.name.as_str(), &certificate) {
        metrics::counter!("acct_storage_connections_denied_total").increment(1);
        tracing::warn!(am = %am.name, remote = %connection.remote_address(), "refused: certificate denied");
        connection.close(CLOSE_DENIED.into(), b"certificate revoked");
        return;
    }
    tracing::info!(am = %am.name, remote = %connection.remote_address(), "AM connected");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            Ok(()) = deny_watch.changed() => {
                if shared.deny.is_denied(am.name.as_str(), &certificate) {
                    metrics::counter!("acct_storage_connections_denied_total").increment(1);
                    tracing::warn!(am = %am.name, "disconnecting: certificate denied");
                    connection.close(CLOSE_DENIED.into(), b"certificate revoked");
                    break;
                }
            }
            accepted = connection.accept_bi() => {
                let Ok((send, receive)) = accepted else { break };
                streams.spawn(serve_stream(send, receive, shared.clone(), am.clone(), certificate.clone()));
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    streams.abort_all();
    while streams.join_next().await.is_some() {}
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
    shared: Shared,
    am: Arc<wire::CertifiedIdentity>,
    certificate: Arc<[u8]>,
) {
    let Ok(_permit) = shared.receiving.clone().acquire_owned().await else {
        return;
    };
    let mut out = BytesMut::new();
    let answer = match receive.read_to_end(FRAME_HEADER_BYTES + FRAME_BODY_BYTES_MAX).await {
        // Exactly one frame: Message::decode refuses trailing bytes.
        Ok(bytes) => match Message::decode(bytes::Bytes::from(bytes)) {
            // Checked again per batch: a list changed while this batch was
            // in flight refuses it here, before anything is stored.
            Ok(Message::RecordAccounting(_)) if shared.deny.is_denied(am.name.as_str(), &certificate) => Err(
                ErrorMessage::new(ErrorCode::UNAUTHENTICATED, "the AM's certificate is revoked"),
            ),
            Ok(Message::RecordAccounting(record)) => deliver(&shared, am, certificate, record).await,
            Ok(_) => Err(ErrorMessage::new(
                ErrorCode::UNEXPECTED_MESSAGE,
                "a storage stream carries exactly one Record Accounting",
            )),
            Err(error) => Err(ErrorMessage::new(ErrorCode::MALFORMED_FRAME, &error.to_string())),
        },
        Err(quinn::ReadToEndError::TooLong) => Err(ErrorMessage::new(
            ErrorCode::FRAME_TOO_LARGE,
            "a storage stream carries one frame of at most 64 MiB",
        )),
        Err(quinn::ReadToEndError::Read(_)) => return,
    };
    match answer {
        Ok(ack) => ack.encode_frame(&mut out),
        Err(error) => error.encode_frame(&mut out),
    }
    if let Some(delay) = ack_delay() {
        tokio::time::sleep(delay).await;
    }
    let _ = send.write_all(&out).await;
    let _ = send.finish();
    // Let the ack reach the AM before the stream is dropped.
    let _ = send.stopped().await;
}

/// Check and store one batch: the checks (and a folder's writes, which
/// block) on a background thread, a bucket's upload on the runtime.
async fn deliver(
    shared: &Shared,
    am: Arc<wire::CertifiedIdentity>,
    certificate: Arc<[u8]>,
    record: Signed<RecordAccounting>,
) -> Result<RecordAck, ErrorMessage> {
    let batch = record.value().batch_id;
    let failed = || ErrorMessage::new(ErrorCode::INTERNAL, &format!("storing batch {batch} failed"));
    match &shared.kept {
        Kept::Folder(files) => {
            let files = files.clone();
            shared
                .background
                .run(move || files.deliver(&am, &certificate, &record))
                .await
                .map_err(|_| failed())
        }
        Kept::Bucket(bucket) => {
            let checked = shared
                .background
                .run(move || checks::check(&am, &record).map(|()| record))
                .await
                .map_err(|_| failed())?;
            match checked {
                Ok(record) => Ok(bucket.store(record.value(), &certificate).await),
                Err(refusal) => Ok(refusal),
            }
        }
    }
}

/// Fault injection for tests and benchmarks: `ACCT_STORAGE_ACK_DELAY_MS`
/// makes the storage hold every answer that long after the file is durable,
/// as a slow storage would. Unset in production.
fn ack_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("ACCT_STORAGE_ACK_DELAY_MS")
            .ok()
            .and_then(|value| value.parse().ok())
            .map(std::time::Duration::from_millis)
    })
}
