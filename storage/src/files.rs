//! The AS's folder: one Parquet file per batch under
//! `date=YYYY-MM-DD/node=<am node>/batch-<batch id>.parquet` (Hive-style
//! partitions, so DuckDB and Spark can prune by date and node), and the
//! chain beside them under `_chain/node=<am node>/` (`archive::chain`): each
//! batch's signed header, the node's head, the AM certificates.
//!
//! Memory: an index of the stored batches (batch id → path), about 150
//! bytes per file, rebuilt from a listing at start. With the default export
//! policy (one batch per 10 s or 100,000 records) that is ~1.3 MB per year.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wire::{BatchId, CertifiedIdentity, RecordAccounting, RecordAck, RecordStatus, Signed};

use super::checks::check;
use super::failpoint;

/// Why the folder could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FilesError {
    /// The file or folder.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError {
        path: path.to_path_buf(),
        source,
    }
}

/// The stored batches.
pub struct ColdFiles {
    root: PathBuf,
    /// Stored batches; the lock also serializes writers.
    index: Mutex<HashMap<BatchId, PathBuf>>,
    /// fsync of one file or folder ([`fsync`]; tests record the calls).
    sync: fn(&Path) -> std::io::Result<()>,
}

impl ColdFiles {
    /// Open (creating if missing) the folder: index the stored batches and
    /// delete temp files left by a crash mid-write (never acked).
    pub fn open(root: &Path) -> Result<Self, FilesError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let mut index = HashMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(folder) = pending.pop() {
            for entry in std::fs::read_dir(&folder).map_err(io(&folder))? {
                let entry = entry.map_err(io(&folder))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type().map_err(io(&path))?.is_dir() {
                    pending.push(path);
                } else if name.starts_with('.') && name.ends_with(".tmp") {
                    tracing::info!(file = %path.display(), "removing a partial file left by a crash");
                    std::fs::remove_file(&path).map_err(io(&path))?;
                } else if let Some(batch_id) = parse_batch_file(&name) {
                    index.insert(batch_id, path);
                }
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            index: Mutex::new(index),
            sync: fsync,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Batches stored.
    pub fn batch_count(&self) -> usize {
        self.index.lock().map_or(0, |index| index.len())
    }

    /// Check and store one batch delivered by `am`; the answer to send back.
    /// Blocking (file I/O and fsync): call from a blocking thread.
    /// `certificate`: the AM's certificate (DER), kept with the chain.
    pub fn deliver(&self, am: &CertifiedIdentity, certificate: &[u8], message: &Signed<RecordAccounting>) -> RecordAck {
        match check(am, message) {
            Ok(()) => self.store(message.value(), certificate),
            Err(refusal) => refusal,
        }
    }

    /// Store a checked batch ([`check`]) and its chain objects; the answer
    /// to send back. Blocking (file I/O and fsync): call from a blocking
    /// thread.
    pub fn store(&self, record: &RecordAccounting, certificate: &[u8]) -> RecordAck {
        let ack = self.store_file(record);
        if !ack.status.is_stored() {
            return ack;
        }
        // After the file, before the ack: a chained file never lacks its
        // header for long (the AM sends the batch again until acked), and
        // a batch refused as conflicting leaves no header.
        match self.store_chain(record, certificate) {
            Ok(()) => ack,
            Err(error) => {
                tracing::error!(batch = %record.batch_id, %error, "cannot store the batch's chain objects; the AM will retry");
                RecordAck {
                    status: RecordStatus::UNAVAILABLE,
                    ..ack
                }
            }
        }
    }

    /// The batch's header, its head and the AM's certificate, each written
    /// once (a name is determined by its bytes, or by the batch number for
    /// a head: the first head stored for a number stays).
    fn store_chain(&self, record: &RecordAccounting, certificate: &[u8]) -> std::io::Result<()> {
        let folder = self.root.join(archive::chain::node_folder(record.node.as_str()));
        // An object found in place may be one an earlier process renamed
        // and died before its folders' fsync: made durable before the ack.
        let once = |name: String, bytes: &[u8]| -> std::io::Result<()> {
            let path = folder.join(&name);
            if path.exists() {
                return sync_up_to_root(&self.root, &path, self.sync);
            }
            write_atomically(&self.root, &folder, &name, bytes, self.sync).map(drop)
        };
        once(archive::chain::certificate_name(certificate), certificate)?;
        once(archive::chain::header_name(&record.header), record.header.body())?;
        once(
            archive::chain::head_name(record.head.value().number),
            record.head.body(),
        )
    }

    /// Store a checked batch's Parquet file (or find it stored).
    fn store_file(&self, record: &RecordAccounting) -> RecordAck {
        let answer = |status: RecordStatus, digest: [u8; 32]| RecordAck {
            batch_id: record.batch_id,
            digest,
            status,
        };
        let batch_hex = record.batch_id.to_string();
        let Ok(mut index) = self.index.lock() else {
            return answer(RecordStatus::UNAVAILABLE, record.digest);
        };
        if let Some(existing) = index.get(&record.batch_id) {
            return match std::fs::read(existing) {
                Ok(bytes) => {
                    let stored: [u8; 32] = Sha256::digest(&bytes).into();
                    if stored == record.digest {
                        // The ack lets the AM delete its copy: vouch only for
                        // what is durable. The file may be one an earlier
                        // process renamed into place and died before its
                        // folders' fsync, or one indexed at start.
                        match sync_up_to_root(&self.root, existing, self.sync) {
                            Ok(()) => answer(RecordStatus::ALREADY_STORED, stored),
                            Err(error) => {
                                tracing::error!(file = %existing.display(), %error, "cannot fsync a stored batch");
                                answer(RecordStatus::UNAVAILABLE, record.digest)
                            }
                        }
                    } else {
                        tracing::error!(batch = %batch_hex, file = %existing.display(), "refused: batch id stored with other bytes");
                        answer(RecordStatus::CONFLICTING_BATCH, stored)
                    }
                }
                Err(error) => {
                    tracing::error!(file = %existing.display(), %error, "cannot read a stored batch");
                    answer(RecordStatus::UNAVAILABLE, record.digest)
                }
            };
        }
        let folder = self
            .root
            .join(format!("date={}", utc_date(record.created_ms)))
            .join(format!("node={}", record.node));
        match write_atomically(
            &self.root,
            &folder,
            &format!("batch-{batch_hex}.parquet"),
            &record.payload,
            self.sync,
        ) {
            Ok(path) => {
                tracing::info!(batch = %batch_hex, rows = record.record_count, bytes = record.payload.len(), file = %path.display(), "stored");
                metrics::counter!("acct_storage_batches_total").increment(1);
                metrics::counter!("acct_storage_rows_total").increment(u64::from(record.record_count));
                index.insert(record.batch_id, path);
                answer(RecordStatus::STORED, record.digest)
            }
            Err(error) => {
                tracing::error!(batch = %batch_hex, %error, "cannot store the batch; the AM will retry");
                answer(RecordStatus::UNAVAILABLE, record.digest)
            }
        }
    }
}

/// The batch id of a stored file's name, `batch-<32 hex>.parquet`.
fn parse_batch_file(name: &str) -> Option<BatchId> {
    let hex_id = name.strip_prefix("batch-")?.strip_suffix(".parquet")?;
    let mut id = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some(BatchId(id))
}

/// `YYYY-MM-DD` (UTC) of a Unix time in ms.
pub fn utc_date(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    let date = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

/// Temp file, fsync, rename (replacing a file of that name), then fsync of
/// the file and of every folder up to the root: after `Ok`, the file
/// survives a crash; before, no reader ever sees it. Every folder is synced
/// on every attempt, not only when this attempt made it: a first attempt
/// that made the date folder and then failed (or was killed) leaves a
/// folder whose name is not yet durable.
fn write_atomically(
    root: &Path,
    folder: &Path,
    name: &str,
    payload: &[u8],
    sync: fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(folder)?;
    let temp = folder.join(format!(".{name}.tmp"));
    let path = folder.join(name);
    let mut file = File::create(&temp)?;
    let half = payload.len() / 2;
    file.write_all(&payload[..half])?;
    failpoint("storage-mid-write");
    file.write_all(&payload[half..])?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, &path)?;
    sync_up_to_root(root, &path, sync)?;
    Ok(path)
}

/// fsync `path` and each folder above it up to and including `root` (a
/// file's contents, its name in its folder, and each folder's name in the
/// one above).
fn sync_up_to_root(root: &Path, path: &Path, sync: fn(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    assert!(
        path.starts_with(root),
        "{} is outside {}",
        path.display(),
        root.display()
    );
    sync(path)?;
    let mut folder = path.parent();
    while let Some(current) = folder {
        sync(current)?;
        if current == root {
            break;
        }
        folder = current.parent();
    }
    Ok(())
}

/// fsync of a file or folder (opened read-only: Linux syncs through any
/// descriptor).
fn fsync(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use wire::{Name, Role, SigningKey};

    /// Stands for the AM's certificate: the storage keeps it as bytes.
    const CERTIFICATE: &[u8] = b"the AM's certificate";

    fn am(key: &SigningKey) -> CertifiedIdentity {
        CertifiedIdentity {
            role: Role::AccountingManager,
            name: Name::new("am-1").unwrap(),
            public_key: key.public_key(),
        }
    }

    fn batch(
        key: &SigningKey,
        id: u8,
        rows: u64,
        tamper: impl FnOnce(&mut RecordAccounting),
    ) -> Signed<RecordAccounting> {
        let provider = SigningKey::from_seed(&[7; 32]);
        let rows: Vec<archive::Row> = (1..=rows)
            .map(|sequence| {
                let message = Signed::sign(
                    wire::Accounting {
                        service_id: wire::ServiceId(1),
                        kind: wire::AccountingKind::INTERIM,
                        session_id: wire::SessionId([3; 16]),
                        sequence,
                        credential_digest: [0; 16],
                        usage: wire::Usage {
                            units: Some(sequence),
                            ..wire::Usage::default()
                        },
                    },
                    &provider,
                )
                .unwrap();
                archive::Row::new(
                    &archive::Context {
                        commit_sequence: sequence,
                        am_node: "am-1",
                        provider_id: "provider-0001",
                        provider_key: *provider.public_key().as_bytes(),
                        user_id: "user-0001",
                        received_at_ms: 1_795_000_000_000,
                        flags: 0,
                    },
                    &message,
                )
            })
            .collect();
        let batch_id = BatchId([id; 16]);
        let payload = archive::encode(&rows, &batch_id.to_string(), 1).unwrap();
        let (mut record, _) = RecordAccounting::sign_batch(
            wire::BatchToSign {
                batch_id,
                node: Name::new("am-1").unwrap(),
                created_ms: 1_795_000_000_000,
                number: 1,
                first_commit_sequence: 1,
                record_count: rows.len() as u32,
                previous: wire::chain::CHAIN_START,
                payload: Bytes::from(payload),
            },
            key,
        )
        .unwrap()
        .into_parts();
        tamper(&mut record);
        // The header and head describe the batch as tampered (an AM that
        // lies consistently): the storage's own checks must catch it.
        let header = record.header.value();
        let (header, head) = wire::chain::sign_chain(
            wire::BatchHeader {
                node: record.node.clone(),
                batch_id: record.batch_id,
                record_count: record.record_count,
                last_commit_sequence: u64::from(record.record_count.max(1)),
                created_ms: record.created_ms,
                file_digest: record.digest,
                ..header.clone()
            },
            key,
        )
        .unwrap();
        record.header = Box::new(header);
        record.head = Box::new(head);
        Signed::sign(record, key).unwrap()
    }

    /// A good batch whose header is then changed, and its header and head
    /// signed with `chain_key` (`head`: then the head changed too).
    fn with_chain(
        key: &SigningKey,
        chain_key: &SigningKey,
        id: u8,
        tamper: impl FnOnce(&mut wire::BatchHeader),
        head: impl FnOnce(&mut wire::ArchiveHead),
    ) -> Signed<RecordAccounting> {
        let (mut record, _) = batch(key, id, 3, |_| {}).into_parts();
        let mut header = record.header.value().clone();
        tamper(&mut header);
        let (header, signed_head) = wire::chain::sign_chain(header, chain_key).unwrap();
        let mut changed = signed_head.value().clone();
        head(&mut changed);
        record.header = Box::new(header);
        record.head = Box::new(Signed::sign(changed, chain_key).unwrap());
        Signed::sign(record, key).unwrap()
    }

    #[test]
    fn a_batch_is_stored_once_and_a_conflicting_one_refused() {
        let folder = tempfile::tempdir().unwrap();
        let files = ColdFiles::open(folder.path()).unwrap();
        let key = SigningKey::from_seed(&[1; 32]);
        let first = batch(&key, 1, 5, |_| {});
        assert_eq!(
            files.deliver(&am(&key), CERTIFICATE, &first).status,
            RecordStatus::STORED
        );
        let path = folder
            .path()
            .join("date=2026-11-18/node=am-1")
            .join(format!("batch-{}.parquet", BatchId([1; 16])));
        assert!(path.exists());
        let again = files.deliver(&am(&key), CERTIFICATE, &first);
        assert_eq!(again.status, RecordStatus::ALREADY_STORED);
        assert_eq!(again.digest, first.value().digest);
        // Same id, other rows: refused, and the answer names what is stored.
        let other = batch(&key, 1, 6, |_| {});
        let refused = files.deliver(&am(&key), CERTIFICATE, &other);
        assert_eq!(refused.status, RecordStatus::CONFLICTING_BATCH);
        assert_eq!(refused.digest, first.value().digest);
        assert_eq!(archive::parquet_files(folder.path()).unwrap().len(), 1);
        // A restart finds the stored batch again.
        drop(files);
        let files = ColdFiles::open(folder.path()).unwrap();
        assert_eq!(files.batch_count(), 1);
        assert_eq!(
            files.deliver(&am(&key), CERTIFICATE, &first).status,
            RecordStatus::ALREADY_STORED
        );
    }

    #[test]
    fn bad_batches_are_refused_with_their_reason() {
        let folder = tempfile::tempdir().unwrap();
        let files = ColdFiles::open(folder.path()).unwrap();
        let key = SigningKey::from_seed(&[1; 32]);
        let other_key = SigningKey::from_seed(&[2; 32]);
        let cases: Vec<(Signed<RecordAccounting>, CertifiedIdentity, RecordStatus)> = vec![
            (batch(&other_key, 2, 3, |_| {}), am(&key), RecordStatus::BAD_SIGNATURE),
            (
                batch(&key, 3, 3, |record| record.node = Name::new("am-2").unwrap()),
                am(&key),
                RecordStatus::WRONG_NODE,
            ),
            (
                batch(&key, 4, 3, |record| record.digest[0] ^= 1),
                am(&key),
                RecordStatus::DIGEST_MISMATCH,
            ),
            (
                batch(&key, 5, 3, |record| {
                    record.payload = Bytes::from_static(b"PAR1 not really");
                    record.digest = RecordAccounting::digest_of(&record.payload);
                }),
                am(&key),
                RecordStatus::NOT_PARQUET,
            ),
            (
                batch(&key, 6, 3, |record| record.record_count = 4),
                am(&key),
                RecordStatus::NOT_PARQUET,
            ),
            (
                // The file says it is batch 8.
                batch(&key, 8, 3, |record| record.batch_id = BatchId([7; 16])),
                am(&key),
                RecordStatus::NOT_PARQUET,
            ),
            // The header and head must be the AM's and describe the batch.
            (
                with_chain(&key, &other_key, 9, |_| {}, |_| {}),
                am(&key),
                RecordStatus::BAD_HEADER,
            ),
            (
                with_chain(&key, &key, 10, |header| header.file_digest[0] ^= 1, |_| {}),
                am(&key),
                RecordStatus::BAD_HEADER,
            ),
            (
                with_chain(&key, &key, 11, |_| {}, |head| head.header_digest[0] ^= 1),
                am(&key),
                RecordStatus::BAD_HEADER,
            ),
            (
                // The file's metadata says batch number 1.
                with_chain(&key, &key, 12, |header| header.number = 2, |_| {}),
                am(&key),
                RecordStatus::NOT_PARQUET,
            ),
        ];
        for (message, identity, expected) in cases {
            assert_eq!(files.deliver(&identity, CERTIFICATE, &message).status, expected);
        }
        assert!(archive::parquet_files(folder.path()).unwrap().is_empty());
    }

    /// Every fsync the recording hook saw, in order.
    static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    fn recording_fsync(path: &Path) -> std::io::Result<()> {
        SYNCED.lock().unwrap().push(path.to_path_buf());
        fsync(path)
    }

    /// The recorded fsyncs under `root` (tests run in parallel), drained.
    fn synced_under(root: &Path) -> Vec<PathBuf> {
        let mut all = SYNCED.lock().unwrap();
        let (mine, others): (Vec<_>, Vec<_>) = all.drain(..).partition(|path| path.starts_with(root));
        *all = others;
        mine
    }

    #[test]
    fn every_ack_vouches_only_for_what_is_fsynced() {
        let folder = tempfile::tempdir().unwrap();
        let root = folder.path().to_path_buf();
        let key = SigningKey::from_seed(&[1; 32]);
        let first = batch(&key, 1, 5, |_| {});
        let node = root.join("date=2026-11-18/node=am-1");
        let file = node.join(format!("batch-{}.parquet", BatchId([1; 16])));
        let mut chain = vec![file.clone(), node.clone(), root.join("date=2026-11-18"), root.clone()];
        // Then the chain's objects, each with its folders.
        let chain_folder = root.join("_chain/node=am-1");
        for name in [
            archive::chain::certificate_name(CERTIFICATE),
            archive::chain::header_name(&first.value().header),
            archive::chain::head_name(1),
        ] {
            chain.extend([
                chain_folder.join(name),
                chain_folder.clone(),
                root.join("_chain"),
                root.clone(),
            ]);
        }
        // A first attempt made the folders and died mid-write: its temp file
        // is removed at start, its folders stay, their names not yet durable.
        std::fs::create_dir_all(&node).unwrap();
        std::fs::write(node.join(format!(".batch-{}.parquet.tmp", BatchId([1; 16]))), b"half").unwrap();
        let mut files = ColdFiles::open(&root).unwrap();
        files.sync = recording_fsync;
        assert_eq!(
            files.deliver(&am(&key), CERTIFICATE, &first).status,
            RecordStatus::STORED
        );
        assert_eq!(synced_under(&root), chain, "the retry's STORED");
        // Redelivered: the ack is given again only after the same fsyncs.
        assert_eq!(
            files.deliver(&am(&key), CERTIFICATE, &first).status,
            RecordStatus::ALREADY_STORED
        );
        assert_eq!(synced_under(&root), chain, "ALREADY_STORED");
        // A file found at start (renamed by a process that died before its
        // folders' fsync) is made durable before it is vouched for.
        drop(files);
        let mut files = ColdFiles::open(&root).unwrap();
        files.sync = recording_fsync;
        assert_eq!(
            files.deliver(&am(&key), CERTIFICATE, &first).status,
            RecordStatus::ALREADY_STORED
        );
        assert_eq!(synced_under(&root), chain, "ALREADY_STORED after a restart");
    }

    #[test]
    fn partial_files_from_a_crash_are_removed_at_start() {
        let folder = tempfile::tempdir().unwrap();
        let inner = folder.path().join("date=2026-11-18/node=am-1");
        std::fs::create_dir_all(&inner).unwrap();
        let partial = inner.join(format!(".batch-{}.parquet.tmp", BatchId([9; 16])));
        std::fs::write(&partial, b"half").unwrap();
        let files = ColdFiles::open(folder.path()).unwrap();
        assert!(!partial.exists());
        assert_eq!(files.batch_count(), 0);
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_795_000_000_000), "2026-11-18");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn batch_file_names_parse() {
        let id = BatchId([0xab; 16]);
        assert_eq!(parse_batch_file(&format!("batch-{id}.parquet")), Some(id));
        assert_eq!(parse_batch_file("batch-xyz.parquet"), None);
        assert_eq!(parse_batch_file(&format!(".batch-{id}.parquet.tmp")), None);
    }
}
