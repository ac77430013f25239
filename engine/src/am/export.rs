//! The exporter: moves committed records from RocksDB to the Accounting
//! Storage, and deletes them only after the AS acked them.
//!
//! One batch at a time, in commit order:
//!
//! 1. cut: a manifest (batch id, range of commit sequences) and the moved
//!    export cursor are written in one synced RocksDB batch;
//! 2. encode the range as Parquet (deterministic: a retry sends the same
//!    bytes), remember the digest in the manifest, sign the batch's header
//!    (its place in the node's chain, after the last batch the AS acked)
//!    and the head, sign, send;
//! 3. on the AS's STORED / ALREADY_STORED ack naming that digest, delete the
//!    range and its manifest, and move the chain's tip, in one batch.
//!
//! A crash anywhere resumes at the oldest manifest: the same batch id and
//! the same bytes again, which the AS acks without a second file. While the
//! AS is away, ingest goes on, the exporter retries with backoff (100 ms
//! doubling to 5 s), and `acct_export_backlog_records` and
//! `acct_store_disk_bytes` grow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use wire::{BatchId, BatchToSign, Message, Name, RecordAccounting, RecordStatus, Signed, TrustedCa};

use super::store::{ChainTip, Manifest, SentChain, Store, StoreError};
use crate::clock::{now_ms, now_s};
use serving::background::Background;
use storage::failpoint;

/// Stored-record bytes in one batch at most: keeps the Parquet file well
/// under the 64 MiB frame maximum (a Parquet row is smaller than its stored
/// record: the bulk, ids and signatures, is the same, and names compress).
pub const BATCH_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most records in one batch (the `records_max` setting is capped here).
pub const BATCH_RECORDS_MAX: usize = 1_000_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest wait for the storage's answer to one batch (sending 64 MiB,
/// its checks and its fsync included).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often an idle exporter looks for new records.
const POLL: Duration = Duration::from_millis(100);
/// The server name the AS's certificate must carry (as for the AM).
const STORAGE_SERVER_NAME: &str = peer::quic::AM_SERVER_NAME;

/// The exporter's settings.
#[derive(Clone)]
pub struct ExportSettings {
    /// This AM node (partition and `am_node` column).
    pub node: Name,
    /// The AS's address.
    pub storage: SocketAddr,
    /// The AM's certificate and key (client certificate; signs batches),
    /// and the CA that must have issued the AS's certificate.
    pub identity: peer::quic::ClientIdentity,
    /// Cut a batch at least this often when records wait.
    pub interval: Duration,
    /// Or as soon as this many records wait.
    pub records_max: usize,
    /// A graceful shutdown exports what is committed for at most this long.
    pub shutdown_deadline: Duration,
}

/// A running exporter.
pub struct Exporter {
    finish: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    deadline: Duration,
}

impl Exporter {
    /// Start exporting from `store` on the current runtime.
    pub fn start(store: Arc<Store>, settings: ExportSettings) -> Self {
        let (finish, finishing) = watch::channel(false);
        let deadline = settings.shutdown_deadline;
        let task = tokio::spawn(run(store, settings, finishing));
        Self { finish, task, deadline }
    }

    /// Export every committed record (ingest has stopped), then stop; gives
    /// up after the shutdown deadline, leaving the rest for the next start.
    /// Returns whether everything was exported.
    pub async fn finish(self) -> bool {
        let _ = self.finish.send(true);
        let mut task = self.task;
        match tokio::time::timeout(self.deadline, &mut task).await {
            Ok(_) => true,
            Err(_) => {
                task.abort();
                let _ = task.await;
                false
            }
        }
    }
}

/// Why a batch was not shipped this time.
#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("encoding: {0}")]
    Encode(String),
    #[error("storage unreachable: {0}")]
    Unreachable(String),
    #[error("storage answered {0:?}")]
    Refused(RecordStatus),
}

async fn run(store: Arc<Store>, settings: ExportSettings, mut finishing: watch::Receiver<bool>) {
    let mut link = Link::new(&settings);
    // Encoding and signing batches run below the ingest's priority; the
    // store's synced writes (cut, digest, delete) do not, since RocksDB may
    // make the writer that leads a write group sync for the committer too.
    let background = Background::start("acct-export", 1);
    let mut last_cut = Instant::now();
    let mut backoff = BACKOFF_MIN;
    let mut last_complaint: Option<Instant> = None;
    loop {
        let finish = *finishing.borrow();
        let step = {
            let store = store.clone();
            let settings = settings.clone();
            let records_max = settings.records_max.clamp(1, BATCH_RECORDS_MAX);
            let due = finish || last_cut.elapsed() >= settings.interval;
            tokio::task::spawn_blocking(move || next_step(&store, records_max, due)).await
        };
        let step = match step {
            Ok(Ok(step)) => step,
            Ok(Err(error)) => {
                tracing::error!(%error, "export: reading the store failed; retrying");
                Step::Wait
            }
            Err(error) => {
                tracing::error!(%error, "export: the cut failed; retrying");
                Step::Wait
            }
        };
        match step {
            Step::Ship(manifest, cut_now) => {
                if cut_now {
                    last_cut = Instant::now();
                }
                match ship(&store, &settings, &background, &mut link, manifest).await {
                    Ok(()) => {
                        backoff = BACKOFF_MIN;
                        last_complaint = None;
                        continue;
                    }
                    Err(error) => {
                        if last_complaint.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
                            let backlog = store.next_commit_sequence().unwrap_or(0);
                            tracing::warn!(%error, next_commit_sequence = backlog, disk_bytes = store.disk_bytes(), "export: batch not shipped; ingest goes on, retrying with backoff");
                            last_complaint = Some(Instant::now());
                        }
                        metrics::counter!("acct_export_failures_total").increment(1);
                        link.reset();
                        wait(&mut finishing, backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            Step::Done if finish => return,
            Step::Done | Step::Wait => {
                let left = settings.interval.saturating_sub(last_cut.elapsed());
                wait(&mut finishing, left.clamp(Duration::from_millis(1), POLL)).await;
            }
        }
    }
}

async fn wait(finishing: &mut watch::Receiver<bool>, duration: Duration) {
    if *finishing.borrow() {
        tokio::time::sleep(duration.min(BACKOFF_MIN)).await;
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        _ = finishing.changed() => {}
    }
}

enum Step {
    /// Send this batch (cut now, or earlier and not yet acked).
    Ship(Manifest, bool),
    /// Nothing waits.
    Done,
    /// Records wait, but not enough yet.
    Wait,
}

/// `acct_export_backlog_age_seconds`: how long ago the oldest record not
/// yet acked by the storage was received (0 when none waits). One point
/// read per poll.
fn record_backlog_age(store: &Store, oldest: u64, next: u64) -> Result<(), StoreError> {
    let age = if oldest < next {
        store
            .records(oldest, 1)?
            .first()
            .map_or(0, |(_, record)| now_ms().saturating_sub(record.received_ms))
    } else {
        0
    };
    metrics::gauge!("acct_export_backlog_age_seconds").set(age as f64 / 1000.0);
    Ok(())
}

fn next_step(store: &Store, records_max: usize, due: bool) -> Result<Step, StoreError> {
    let next = store.next_commit_sequence()?;
    if let Some(manifest) = store.manifests()?.into_iter().next() {
        record_backlog_age(store, manifest.first, next)?;
        // Everything from the oldest unacknowledged batch on waits: also
        // while a batch is being retried against an absent storage.
        metrics::gauge!("acct_export_backlog_records").set(next.saturating_sub(manifest.first) as f64);
        metrics::gauge!("acct_store_disk_bytes").set(store.disk_bytes() as f64);
        return Ok(Step::Ship(manifest, false));
    }
    let cursor = store.export_cursor()?;
    record_backlog_age(store, cursor, next)?;
    let backlog = next.saturating_sub(cursor);
    metrics::gauge!("acct_export_backlog_records").set(backlog as f64);
    metrics::gauge!("acct_store_disk_bytes").set(store.disk_bytes() as f64);
    if backlog == 0 {
        return Ok(Step::Done);
    }
    if backlog < records_max as u64 && !due {
        return Ok(Step::Wait);
    }
    let mut batch_id = [0u8; 16];
    getrandom::fill(&mut batch_id).map_err(|_| StoreError::Corrupt {
        what: "batch id",
        detail: "no randomness".into(),
    })?;
    Ok(
        match store.cut_batch(records_max, BATCH_BYTES_MAX, BatchId(batch_id), now_ms())? {
            Some(manifest) => Step::Ship(manifest, true),
            None => Step::Done,
        },
    )
}

/// Encode a batch as Parquet, number `number` in the node's chain, exactly
/// as every earlier attempt did.
fn encode(store: &Store, node: &Name, manifest: &Manifest, number: u64) -> Result<(Vec<u8>, u32), ShipError> {
    let records = store.batch_records(manifest)?;
    let keys = store.keys()?;
    let mut rows = Vec::with_capacity(records.len());
    for (commit_sequence, record) in &records {
        let message = record.accounting()?;
        let provider_key = *keys
            .get(record.provider_key_id as usize)
            .ok_or_else(|| ShipError::Encode(format!("provider key {} is missing", record.provider_key_id)))?;
        rows.push(archive::Row::new(
            &archive::Context {
                commit_sequence: *commit_sequence,
                am_node: node.as_str(),
                provider_id: record.provider.as_str(),
                provider_key,
                user_id: record.user_id.as_str(),
                received_at_ms: record.received_ms,
                flags: record.flags.0,
            },
            &message,
        ));
    }
    let count = u32::try_from(rows.len()).map_err(|_| ShipError::Encode("too many rows".into()))?;
    let payload = archive::encode(&rows, &manifest.batch_id.to_string(), number)
        .map_err(|error| ShipError::Encode(error.to_string()))?;
    if payload.len() > wire::record::RECORD_PAYLOAD_BYTES_MAX {
        return Err(ShipError::Encode(format!(
            "{} bytes of Parquet exceed the frame maximum",
            payload.len()
        )));
    }
    Ok((payload, count))
}

async fn ship(
    store: &Arc<Store>,
    settings: &ExportSettings,
    background: &Background,
    link: &mut Link,
    manifest: Manifest,
) -> Result<(), ShipError> {
    let started = Instant::now();
    // The batch continues the chain from the last batch the storage acked
    // (the tip moves only when this batch is acked); its number and
    // previous digest are kept in the manifest when it is first sent, and
    // every later attempt signs the same header fields.
    let (message, digest, rows, tip) = {
        let store = store.clone();
        let node = settings.node.clone();
        let key = settings.identity.signing_key.clone();
        let manifest = manifest.clone();
        background
            .run(move || -> Result<_, ShipError> {
                let tip = store.chain_tip()?;
                let (number, previous) = match manifest.sent_chain {
                    Some(sent) => (sent.number, sent.previous),
                    None => (
                        tip.map_or(1, |tip| tip.number + 1),
                        tip.map_or(wire::chain::CHAIN_START, |tip| tip.header_digest),
                    ),
                };
                let (payload, rows) = encode(&store, &node, &manifest, number)?;
                let message = RecordAccounting::sign_batch(
                    BatchToSign {
                        batch_id: manifest.batch_id,
                        node,
                        created_ms: manifest.created_ms,
                        number,
                        first_commit_sequence: manifest.first,
                        record_count: rows,
                        previous,
                        payload: Bytes::from(payload),
                    },
                    &key,
                )
                .map_err(|error| ShipError::Encode(error.to_string()))?;
                let digest = message.value().digest;
                let next_tip = ChainTip {
                    number,
                    header_digest: wire::chain::header_digest(message.value().header.body()),
                    last_commit_sequence: manifest.last,
                };
                Ok((message, digest, rows, next_tip))
            })
            .await
            .map_err(|error| ShipError::Encode(error.to_string()))??
    };
    // The digest and the place in the chain are durable in the manifest
    // before the first send.
    let sent_chain = SentChain {
        number: tip.number,
        previous: message.value().header.value().previous,
        header_digest: tip.header_digest,
    };
    let manifest = {
        let store = store.clone();
        let mut manifest = manifest;
        tokio::task::spawn_blocking(move || -> Result<_, ShipError> {
            if manifest.sent_digest.is_none() {
                manifest.sent_digest = Some(digest);
                manifest.sent_chain = Some(sent_chain);
                store.record_sent_digest(&manifest)?;
            } else if manifest.sent_digest != Some(digest) {
                tracing::warn!(batch = %manifest.batch_id, "this build encodes the batch differently from the one that sent it first");
            }
            failpoint("export-after-manifest");
            Ok(manifest)
        })
        .await
        .map_err(|error| ShipError::Encode(error.to_string()))??
    };
    // A storage that is alive but stuck (an fsync that never returns)
    // keeps the connection up: bound the exchange itself.
    let ack = tokio::time::timeout(DELIVERY_TIMEOUT, link.deliver(&message))
        .await
        .map_err(|_| ShipError::Unreachable("no answer from the storage within 120 s".into()))??;
    let stored_as_sent = ack.status.is_stored() && ack.digest == digest;
    // A batch first sent by a build that encoded it differently: stored
    // with those bytes and the header first sent with them, which the tip
    // then names (none if that build predates the chain: the tip stays).
    let stored_before = ack.status == RecordStatus::CONFLICTING_BATCH && Some(ack.digest) == manifest.sent_digest;
    let stored = ack.batch_id == manifest.batch_id && (stored_as_sent || stored_before);
    if !stored {
        if ack.status.is_retryable() {
            return Err(ShipError::Unreachable(format!("storage busy ({:?})", ack.status)));
        }
        tracing::error!(batch = %manifest.batch_id, status = ?ack.status, "export: the storage refused a batch; it stays in the hot store (operator action)");
        metrics::counter!("acct_export_refused_total", "status" => ack.status.0.to_string()).increment(1);
        return Err(ShipError::Refused(ack.status));
    }
    {
        let store = store.clone();
        let manifest = manifest.clone();
        let tip = if stored_as_sent {
            Some(tip)
        } else {
            manifest.sent_chain.map(|sent| ChainTip {
                number: sent.number,
                header_digest: sent.header_digest,
                last_commit_sequence: manifest.last,
            })
        };
        tokio::task::spawn_blocking(move || {
            failpoint("export-after-ack");
            store.delete_batch(&manifest, tip.as_ref())
        })
        .await
        .map_err(|error| ShipError::Encode(error.to_string()))??;
    }
    metrics::counter!("acct_exported_records_total").increment(u64::from(rows));
    metrics::counter!("acct_exported_batches_total").increment(1);
    metrics::histogram!("acct_export_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(batch = %manifest.batch_id, rows, status = ?ack.status, elapsed_ms = started.elapsed().as_millis() as u64, "exported");
    Ok(())
}

/// The QUIC connection to the AS, made on demand.
struct Link {
    settings: ExportSettings,
    endpoint: Option<quinn::Endpoint>,
    connection: Option<quinn::Connection>,
}

impl Link {
    fn new(settings: &ExportSettings) -> Self {
        Self {
            settings: settings.clone(),
            endpoint: None,
            connection: None,
        }
    }

    fn reset(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.close(0u32.into(), b"retrying");
        }
    }

    async fn connection(&mut self) -> Result<quinn::Connection, ShipError> {
        if let Some(connection) = &self.connection
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let unreachable = |error: String| ShipError::Unreachable(error);
        if self.endpoint.is_none() {
            let bind: SocketAddr = if self.settings.storage.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let mut endpoint = peer::quic::shared_endpoint(bind).map_err(|error| unreachable(error.to_string()))?;
            let mut config = peer::quic::client_config_for(
                &self.settings.identity.ca_der,
                Some((
                    &self.settings.identity.certificate_der,
                    &self.settings.identity.signing_key,
                )),
                wire::Role::AccountingStorage,
            )
            .map_err(|error| unreachable(error.to_string()))?;
            // A storage that dies silently (SIGKILL, power) is noticed
            // after the idle timeout; keep-alives keep a healthy but quiet
            // link open between batches.
            let mut transport = quinn::TransportConfig::default();
            transport
                .keep_alive_interval(Some(Duration::from_secs(2)))
                .max_idle_timeout(Some(
                    quinn::IdleTimeout::try_from(Duration::from_secs(10))
                        .map_err(|error| unreachable(error.to_string()))?,
                ));
            config.transport_config(Arc::new(transport));
            endpoint.set_default_client_config(config);
            self.endpoint = Some(endpoint);
        }
        let Some(endpoint) = &self.endpoint else {
            return Err(unreachable("no endpoint".into()));
        };
        let connection = endpoint
            .connect(self.settings.storage, STORAGE_SERVER_NAME)
            .map_err(|error| unreachable(error.to_string()))?
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        let ca = TrustedCa::from_der(self.settings.identity.ca_der.clone())
            .map_err(|error| unreachable(error.to_string()))?;
        match serving::tls::peer_identity(&connection, &ca, now_s()) {
            Some(Ok(identity)) if identity.role == wire::Role::AccountingStorage => {
                tracing::info!(storage = %identity.name, address = %self.settings.storage, "connected to the storage");
            }
            other => {
                connection.close(0u32.into(), b"not a storage certificate");
                return Err(unreachable(format!("the peer is not an Accounting Storage: {other:?}")));
            }
        }
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn deliver(&mut self, message: &Signed<RecordAccounting>) -> Result<wire::RecordAck, ShipError> {
        let connection = self.connection().await?;
        let broken = |error: String| ShipError::Unreachable(error);
        let (mut send, mut receive) = connection.open_bi().await.map_err(|error| broken(error.to_string()))?;
        let mut frame = BytesMut::with_capacity(message.body().len() + 16);
        message.encode_frame(&mut frame);
        send.write_all(&frame)
            .await
            .map_err(|error| broken(error.to_string()))?;
        send.finish().map_err(|error| broken(error.to_string()))?;
        let answer = receive
            .read_to_end(64 * 1024)
            .await
            .map_err(|error| broken(error.to_string()))?;
        match Message::decode(Bytes::from(answer)) {
            Ok(Message::RecordAck(ack)) => Ok(ack),
            Ok(Message::Error(error)) => Err(broken(format!("storage error {:?}: {}", error.code, error.detail))),
            other => Err(broken(format!("unexpected answer from the storage: {other:?}"))),
        }
    }
}
