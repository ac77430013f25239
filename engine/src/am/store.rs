//! The AM's durable state in RocksDB.
//!
//! The layout (each column family's key and value, when it is written, the
//! store-format rule) is written once, in docs/architecture.md ("RocksDB
//! layout"); the types here encode it: [`StoredSession`], [`SessionProgress`],
//! [`StoredRecord`], the dedup marker with its [`MarkerProgress`] (at most
//! [`MARKER_BYTES_MAX`] bytes), [`Manifest`], and the `meta` counters. Keys
//! are big-endian, so RocksDB's order is numeric order.
//!
//! A record, its fingerprint (the dedup marker) and its session's progress
//! are written in one WriteBatch with a synced WAL: none exists without the
//! others. The progress of a message stored in sequence order (the common
//! case) rides in its marker instead of a `progress` rewrite: one write per
//! message, not two. On start, a session's progress is the newer (by
//! message count, which every stored message raises) of its `progress`
//! entry and the progress in its highest-sequence marker; the final
//! sequence, close time and flags always come from `progress`. Records leave with export (a manifest names a range of commit
//! sequences; the range and its manifest are deleted in one batch after the
//! AS's ack); fingerprints and progress stay until the session is pruned
//! after the dedup window, so a duplicate of an exported message is still
//! answered DUPLICATE.

use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use wire::codec::Reader;
use wire::{BatchId, DecodeError, Name, Nonce, RequestId, SessionId, Signed, UserCredential};

use super::session::{ReceiptState, SessionFlags, SessionInfo, SessionProgress};

const SESSIONS: &str = "sessions";
const PROGRESS: &str = "progress";
const RECORDS: &str = "records";
const FINGERPRINTS: &str = "fingerprints";
const EXPORTS: &str = "exports";
const KEYS: &str = "keys";
const META: &str = "meta";
const NEXT_COMMIT_SEQUENCE: &[u8] = b"next_commit_sequence";
const EXPORT_CURSOR: &[u8] = b"export_cursor";
const STORE_FORMAT: &[u8] = b"store_format";
/// Whose store this is: the partition id (2 bytes, big-endian) and the
/// node's name, written on the first start.
const OWNER: &[u8] = b"owner";
/// The last batch of this node's archive chain that the storage acked
/// ([`ChainTip`]); absent until the first one.
const CHAIN_TIP: &[u8] = b"chain_tip";

/// The layout this build writes. 2: dedup markers may carry their session's
/// progress, and `progress` is no longer rewritten with every group. A
/// build that only knows 8-byte markers would miss those markers' dedup
/// state, so a store is refused by builds older than its format (from
/// format 2 on; builds before 2 did not check). 3: a `sessions` value may
/// end with the request id and nonce of the user's request. 4: markers and
/// `progress` (version 2) carry the session's receipt state (usage sums
/// and the digest of its stored messages).
const STORE_FORMAT_CURRENT: u64 = 4;

/// Version byte of `progress` values this build writes: 2 adds the receipt
/// state; version 1 values (format 3 stores) are still read.
const PROGRESS_VERSION: u8 = 2;

/// Version byte of every stored value this build writes.
const STORED_VERSION: u8 = 1;
/// Version byte of records: 3 names the provider's key by id (`keys`).
const RECORD_VERSION: u8 = 3;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk is full: writes fail until space returns.
    #[error("out of disk space: {0}")]
    OutOfSpace(rocksdb::Error),
    /// Any other RocksDB failure.
    #[error("rocksdb: {0}")]
    Rocks(rocksdb::Error),
    /// The data directory belongs to another node (see [`Store::claim`]).
    #[error("{0}")]
    Owner(String),
    /// A stored value does not decode: corruption or a newer format.
    #[error("corrupt stored {what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

impl From<rocksdb::Error> for StoreError {
    fn from(error: rocksdb::Error) -> Self {
        let text = error.to_string();
        if text.contains("No space left") || text.contains("NoSpace") {
            Self::OutOfSpace(error)
        } else {
            Self::Rocks(error)
        }
    }
}

/// A session as stored.
pub struct StoredSession {
    /// Fixed info.
    pub info: Arc<SessionInfo>,
    /// Dedup state and counters.
    pub progress: SessionProgress,
}

/// A [`StoredRecord`]'s fields borrowed from where the committer has them
/// (the connection, the session, the received body), so that storing a
/// record copies nothing but its encoding.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// When the AM received it, Unix ms.
    pub received_ms: u64,
    /// The session's flags when it was stored.
    pub flags: SessionFlags,
    /// The provider (from its certificate).
    pub provider: &'a str,
    /// Id of the provider's Ed25519 key in the `keys` family.
    pub provider_key_id: u32,
    /// The user the session bills.
    pub user_id: &'a str,
    /// The Accounting body exactly as received: fields, then signature.
    pub body: &'a [u8],
}

impl RecordRef<'_> {
    /// Append the encoding for the `records` family to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u8(RECORD_VERSION);
        out.put_u64(self.received_ms);
        out.put_u8(self.flags.0);
        put_text(out, self.provider);
        out.put_u32(self.provider_key_id);
        put_text(out, self.user_id);
        out.put_u16(u16::try_from(self.body.len()).unwrap_or(u16::MAX));
        out.put_slice(self.body);
    }
}

/// One stored accounting message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// When the AM received it, Unix ms.
    pub received_ms: u64,
    /// The session's flags when it was stored.
    pub flags: SessionFlags,
    /// The provider (from its certificate).
    pub provider: Name,
    /// Id of the provider's Ed25519 key (from its certificate), which signed
    /// the body, in the `keys` family.
    pub provider_key_id: u32,
    /// The user the session bills.
    pub user_id: Name,
    /// The Accounting body exactly as received: fields, then signature.
    pub body: Bytes,
}

impl StoredRecord {
    /// Encode for the `records` family.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.body.len());
        self.encode_into(&mut out);
        out
    }

    /// Append the encoding for the `records` family to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.as_ref().encode_into(out);
    }

    /// The record's fields, borrowed.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            received_ms: self.received_ms,
            flags: self.flags,
            provider: self.provider.as_str(),
            provider_key_id: self.provider_key_id,
            user_id: self.user_id.as_str(),
            body: &self.body,
        }
    }

    /// Decode from the `records` family.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let input = Bytes::copy_from_slice(bytes);
        let mut reader = Reader::new(&input);
        let parse = |reader: &mut Reader<'_>| -> Result<Self, DecodeError> {
            let version = reader.u8("record version")?;
            if version != RECORD_VERSION {
                return Err(DecodeError::InvalidValue {
                    field: "record version",
                    reason: "unknown version",
                });
            }
            let received_ms = reader.u64("received_ms")?;
            let flags = SessionFlags(reader.u8("flags")?);
            let provider = Name::new(reader.text_u8(64, "provider")?)?;
            let provider_key_id = reader.u32("provider_key_id")?;
            let user_id = Name::new(reader.text_u8(64, "user_id")?)?;
            let body = reader.bytes_u16(wire::limits::SMALL_FRAME_BODY_BYTES_MAX, "body")?;
            Ok(Self {
                received_ms,
                flags,
                provider,
                provider_key_id,
                user_id,
                body,
            })
        };
        let record = parse(&mut reader).map_err(|error| corrupt("record", error))?;
        reader.finish().map_err(|error| corrupt("record", error))?;
        Ok(record)
    }

    /// The message, decoded (it was checked when stored).
    pub fn accounting(&self) -> Result<Signed<wire::Accounting>, StoreError> {
        Signed::decode_body(self.body.clone()).map_err(|error| corrupt("record body", error))
    }
}

/// About how many bytes one record adds to a write batch: the record with
/// its key, its fingerprint, and its session's progress.
const RECORD_WRITE_BYTES_ESTIMATE: usize = 384;

/// One commit group's writes, applied atomically.
#[derive(Default)]
pub struct GroupWrite {
    batch: WriteBatch,
    records: usize,
    /// The commit sequence after the group's last record, written once per group.
    next_commit_sequence: Option<u64>,
    /// Reused buffer for encoding records.
    scratch: Vec<u8>,
    /// The group's dedup markers, added to the batch in key order at commit.
    fingerprints: Vec<([u8; 24], Marker)>,
}

impl GroupWrite {
    /// An empty group with room for about `records` records, so that the
    /// batch's buffer is not regrown (and copied) while it fills.
    pub fn with_capacity(records: usize) -> Self {
        Self {
            batch: WriteBatch::with_capacity_bytes(records.saturating_mul(RECORD_WRITE_BYTES_ESTIMATE) + 4096),
            fingerprints: Vec::with_capacity(records),
            ..Self::default()
        }
    }

    /// Records in the group.
    pub fn record_count(&self) -> usize {
        self.records
    }
}

/// Memory for the memtables of all column families together (RocksDB's
/// write buffer manager): the store's share of the AM's memory bound. 128
/// MiB since the AM allocates with mimalloc (docs/performance.md): at
/// 10,000 provider connections the AM's peak RSS with 256 MiB was 996 MiB,
/// with 128 MiB 898 MiB; the bound is 1 GiB.
pub const MEMTABLES_BYTES_MAX: usize = 128 * 1024 * 1024;

/// The RocksDB store.
pub struct Store {
    db: DB,
}

impl Store {
    /// Open (creating if missing) the store in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Group commit does the batching, and one thread writes, waiting for
        // each write: RocksDB's pipelined write has nothing to overlap (and
        // atomic flush, below, rules it out).
        // One writer (the committer): memtables need no concurrent inserts,
        // which lets the column families below use cheaper memtables.
        options.set_allow_concurrent_memtable_write(false);
        options.set_max_background_jobs(2);
        // Every flush writes all column families' memtables and records them
        // in one manifest entry. A group refused after its bytes reached the
        // WAL (a sync answered ENOSPC or EIO) is not in any memtable, but it
        // is in the WAL file. RocksDB's automatic recovery flushes the
        // memtables and retires that WAL; flushed family by family, a crash
        // between two families replays the WAL into the ones not yet
        // flushed, and the refused group comes back in some families and not
        // others: dedup markers without records, records without markers,
        // a commit-sequence gap (tests/tests/wal_sync_fault.rs). Atomic, the
        // WAL is retired for every family at once or replayed into all.
        options.set_atomic_flush(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // One budget for the memtables of every family: without it, the two
        // 128 MiB families below could hold 2 x 2 x 128 MiB while a flush
        // runs, on top of the connections' memory. Over the budget RocksDB
        // flushes the largest memtable, and stalls the committer's writes
        // until the flush frees memory: backpressure, never growth.
        options.set_write_buffer_manager(&rocksdb::WriteBufferManager::new_write_buffer_manager(
            MEMTABLES_BYTES_MAX,
            true,
        ));
        let families = [SESSIONS, PROGRESS, RECORDS, FINGERPRINTS, EXPORTS, KEYS, META].map(|name| {
            let mut family = Options::default();
            family.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if name == RECORDS || name == FINGERPRINTS {
                // Signatures and ids do not compress: spend no CPU trying.
                // Records are written once and leave with export, so
                // universal compaction rewrites them far less than levels.
                family.set_compression_type(rocksdb::DBCompressionType::None);
                family.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
                family.set_write_buffer_size(128 * 1024 * 1024);
            }
            if name == PROGRESS {
                // An append-only vector memtable inserts in O(1) and is
                // sorted once, at flush: progress is written on session
                // opens, out-of-order stores, Finals and watchdog flags (the
                // rest rides in markers), and read only at start.
                family.set_memtable_factory(rocksdb::MemtableFactory::Vector);
            }
            if name == FINGERPRINTS {
                // Almost every lookup is for a message never seen: a bloom
                // filter answers those without reading a block.
                let mut table = rocksdb::BlockBasedOptions::default();
                table.set_bloom_filter(10.0, false);
                family.set_block_based_table_factory(&table);
            }
            // Skip lists that remember where the last key of the same prefix
            // went: records (keys are commit sequences, always the next one)
            // append with no search, and a session's dedup markers (its
            // sequences, in order) insert after its previous one. Flushing a
            // skip list is a walk in order: no sort (a vector memtable of
            // records spent about 0.4 us per message sorting at flush).
            let hint_prefix_bytes = match name {
                RECORDS => Some(0),
                FINGERPRINTS => Some(16),
                _ => None,
            };
            if let Some(bytes) = hint_prefix_bytes {
                family = family
                    .get_options_from_string(format!(
                        "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{bytes}"
                    ))
                    .expect("a well-formed options string");
            }
            ColumnFamilyDescriptor::new(name, family)
        });
        let db = DB::open_cf_descriptors(&options, path, families)?;
        let store = Self { db };
        let format = store.meta_u64(STORE_FORMAT, 1)?;
        if format > STORE_FORMAT_CURRENT {
            return Err(StoreError::Corrupt {
                what: "store format",
                detail: format!(
                    "the store has format {format}, written by a newer acct; this build reads up to {STORE_FORMAT_CURRENT}"
                ),
            });
        }
        if format < STORE_FORMAT_CURRENT {
            let mut batch = WriteBatch::default();
            batch.put_cf(store.family(META), STORE_FORMAT, STORE_FORMAT_CURRENT.to_be_bytes());
            store.write_synced(batch)?;
        }
        Ok(store)
    }

    /// Bind the store to the node `node`, partition `partition`: recorded on
    /// the first start (synced), checked on every later one. A data
    /// directory given to another node (a volume attached to the wrong pod)
    /// is refused: its sessions carry another partition's id.
    pub fn claim(&self, node: &wire::Name, partition: wire::PartitionId) -> Result<(), StoreError> {
        let mut owner = partition.0.to_be_bytes().to_vec();
        owner.extend_from_slice(node.as_str().as_bytes());
        match self.db.get_cf(self.family(META), OWNER)? {
            Some(stored) if stored == owner => Ok(()),
            Some(stored) => {
                let (id, name) = stored.split_at(2.min(stored.len()));
                Err(StoreError::Owner(format!(
                    "this data directory belongs to {} (partition {}), not to {node} (partition {partition})",
                    String::from_utf8_lossy(name),
                    u16::from_be_bytes([id.first().copied().unwrap_or(0), id.get(1).copied().unwrap_or(0)])
                )))
            }
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(self.family(META), OWNER, owner);
                self.write_synced(batch)
            }
        }
    }

    fn family(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every family is created in `open`; a missing one is a broken invariant.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} missing after open"))
    }

    /// Every stored session, for recovery: one point read of `progress` and
    /// one seek to the highest-sequence marker per session.
    pub fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        let mut out = Vec::new();
        let mut markers = self.db.raw_iterator_cf(self.family(FINGERPRINTS));
        for item in self.db.iterator_cf(self.family(SESSIONS), IteratorMode::Start) {
            let (key, value) = item?;
            let (provider, created_ms, credential, request) = decode_session(&value)?;
            let mut progress = match self.db.get_cf(self.family(PROGRESS), &key)? {
                Some(bytes) => decode_progress(&bytes)?,
                None => SessionProgress::new(created_ms),
            };
            let session_id = SessionId(
                key.as_ref()
                    .try_into()
                    .map_err(|_| corrupt_text("session id", "not 16 bytes"))?,
            );
            markers.seek_for_prev(fingerprint_key(session_id, u64::MAX));
            if markers.valid()
                && let (Some(marker_key), Some(marker)) = (markers.key(), markers.value())
                && marker_key.len() == 24
                && marker_key[..16] == session_id.0
            {
                let mut sequence = [0u8; 8];
                sequence.copy_from_slice(&marker_key[16..]);
                if let Some(carried) = MarkerProgress::decode(marker)?
                    && carried.message_count > progress.message_count
                {
                    carried.apply(u64::from_be_bytes(sequence), &mut progress);
                }
            }
            markers.status()?;
            out.push(StoredSession {
                info: SessionInfo::for_request(provider, credential, created_ms, request),
                progress,
            });
        }
        Ok(out)
    }

    /// The users' requests (user, a2, a3, issuance time) of the sessions
    /// issued at or after `since_ms`: the replay cache's memory across a
    /// restart. One pass over `sessions`.
    pub fn requests_since(&self, since_ms: u64) -> Result<Vec<(Name, RequestId, Nonce, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.family(SESSIONS), IteratorMode::Start) {
            let (_, value) = item?;
            let (_, created_ms, credential, request) = decode_session(&value)?;
            if let Some((request_id, nonce)) = request
                && created_ms >= since_ms
            {
                out.push((credential.value().user_id.clone(), request_id, nonce, created_ms));
            }
        }
        Ok(out)
    }

    /// The next commit sequence to assign.
    pub fn next_commit_sequence(&self) -> Result<u64, StoreError> {
        self.meta_u64(NEXT_COMMIT_SEQUENCE, 1)
    }

    /// Store a new session (synced) before its credential is handed out.
    pub fn insert_session(&self, info: &SessionInfo, progress: &SessionProgress) -> Result<(), StoreError> {
        self.insert_sessions(&[info], progress)
    }

    /// Store new sessions in one synced write, each with `progress`.
    pub fn insert_sessions(&self, infos: &[&SessionInfo], progress: &SessionProgress) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let encoded = encode_progress(progress);
        for info in infos {
            let key = info.session_id().0;
            batch.put_cf(self.family(SESSIONS), key, encode_session(info));
            batch.put_cf(self.family(PROGRESS), key, &encoded);
        }
        self.write_synced(batch)
    }

    /// The stored fingerprint of (session, sequence), if any.
    pub fn fingerprint(&self, session_id: SessionId, sequence: u64) -> Result<Option<[u8; 8]>, StoreError> {
        let value = self
            .db
            .get_pinned_cf(self.family(FINGERPRINTS), fingerprint_key(session_id, sequence))?;
        Ok(value.and_then(|bytes| bytes.get(..8).and_then(|head| <[u8; 8]>::try_from(head).ok())))
    }

    /// Add a record, its fingerprint and the commit sequence to `group`;
    /// `progress` is the session's progress after the record when it is
    /// stored in sequence order (it then rides in the marker), else `None`
    /// (and the caller writes the session's `progress` entry).
    #[allow(clippy::too_many_arguments)]
    pub fn add_record(
        &self,
        group: &mut GroupWrite,
        commit_sequence: u64,
        record: RecordRef<'_>,
        session_id: SessionId,
        sequence: u64,
        fingerprint: [u8; 8],
        progress: Option<&SessionProgress>,
    ) {
        group.scratch.clear();
        record.encode_into(&mut group.scratch);
        group
            .batch
            .put_cf(self.family(RECORDS), commit_sequence.to_be_bytes(), &group.scratch);
        group.fingerprints.push((
            fingerprint_key(session_id, sequence),
            Marker::new(fingerprint, progress),
        ));
        group.next_commit_sequence = Some(commit_sequence + 1);
        group.records += 1;
    }

    /// Add a provider key with its new id to `group` (with the first record
    /// that names it, so neither exists without the other).
    pub fn add_key(&self, group: &mut GroupWrite, id: u32, key: &[u8; 32]) {
        group.batch.put_cf(self.family(KEYS), id.to_be_bytes(), key);
    }

    /// Every provider key by id, in id order (ids are dense from 0).
    pub fn keys(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.family(KEYS), IteratorMode::Start) {
            let (id, key) = item?;
            let id: [u8; 4] = id
                .as_ref()
                .try_into()
                .map_err(|_| corrupt_text("key id", "not 4 bytes"))?;
            if u32::from_be_bytes(id) as usize != out.len() {
                return Err(corrupt_text("keys", "key ids are not dense"));
            }
            out.push(
                key.as_ref()
                    .try_into()
                    .map_err(|_| corrupt_text("key", "not 32 bytes"))?,
            );
        }
        Ok(out)
    }

    /// Add a session's new progress to `group`.
    pub fn add_progress(&self, group: &mut GroupWrite, session_id: SessionId, progress: &SessionProgress) {
        group
            .batch
            .put_cf(self.family(PROGRESS), session_id.0, encode_progress(progress));
    }

    /// Delete a session and its dedup markers (after the dedup window).
    pub fn add_prune(&self, group: &mut GroupWrite, session_id: SessionId) {
        group.batch.delete_cf(self.family(SESSIONS), session_id.0);
        group.batch.delete_cf(self.family(PROGRESS), session_id.0);
        let start = fingerprint_key(session_id, 0);
        let end = fingerprint_key(session_id, u64::MAX);
        group.batch.delete_range_cf(self.family(FINGERPRINTS), start, end);
        group.batch.delete_cf(self.family(FINGERPRINTS), end);
    }

    /// Apply a group atomically with the WAL synced: after `Ok`, all of it
    /// survives a crash; after `Err`, none of it was applied.
    pub fn commit(&self, mut group: GroupWrite) -> Result<(), StoreError> {
        // In key order, each insert into the skip list starts where the last
        // one ended (RocksDB keeps the last insert position for a single
        // writer): a session's consecutive messages cost no search.
        group.fingerprints.sort_unstable_by_key(|entry| entry.0);
        let family = self.family(FINGERPRINTS);
        for (key, marker) in &group.fingerprints {
            group.batch.put_cf(family, key, marker.bytes());
        }
        if let Some(next) = group.next_commit_sequence {
            group
                .batch
                .put_cf(self.family(META), NEXT_COMMIT_SEQUENCE, next.to_be_bytes());
        }
        self.write_synced(group.batch)
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Which (session, sequence) pairs the `records` family holds and how
    /// many times each, and which were exported (their dedup markers stay
    /// for the dedup window): every record and marker is read once from one
    /// snapshot, and the answer is runs of consecutive sequences per
    /// session, hot and exported runs never overlapping. Memory: 8 bytes per
    /// record held (the hot store is bounded by export), plus the runs. For
    /// the admin audit (`loadgen --audit`).
    pub fn audit_runs(&self) -> Result<(u64, Vec<wire::AuditRun>), StoreError> {
        let mut sequences: std::collections::HashMap<SessionId, Vec<u64>> = std::collections::HashMap::new();
        let mut records = 0u64;
        // One snapshot for both families: an export deleting records while
        // the audit reads cannot make a message look missing.
        let snapshot = self.db.snapshot();
        for item in snapshot.iterator_cf(self.family(RECORDS), IteratorMode::Start) {
            let (_, value) = item?;
            let record = StoredRecord::decode(&value)?;
            let message = record.accounting()?;
            let message = message.value();
            sequences.entry(message.session_id).or_default().push(message.sequence);
            records += 1;
        }
        let mut runs = Vec::new();
        for list in sequences.values_mut() {
            list.sort_unstable();
        }
        let mut sessions: Vec<_> = sequences.iter().collect();
        sessions.sort_unstable_by_key(|(session_id, _)| **session_id);
        for (session_id, list) in sessions {
            let mut index = 0;
            while index < list.len() {
                let sequence = list[index];
                let mut copies = 1u32;
                while index + (copies as usize) < list.len() && list[index + copies as usize] == sequence {
                    copies += 1;
                }
                index += copies as usize;
                wire::AuditRun::append(&mut runs, *session_id, sequence, copies);
            }
        }
        // Every stored message has a dedup marker, written with its record
        // and kept after the record is exported: a marker without a hot
        // record is an exported message.
        let mut exported = Vec::new();
        for item in snapshot.iterator_cf(self.family(FINGERPRINTS), IteratorMode::Start) {
            let (key, _) = item?;
            let (session_id, sequence) = parse_fingerprint_key(&key)?;
            let hot = sequences
                .get(&session_id)
                .is_some_and(|list| list.binary_search(&sequence).is_ok());
            if !hot {
                wire::AuditRun::append_exported(&mut exported, session_id, sequence);
            }
        }
        runs.extend(exported);
        runs.sort_unstable_by_key(|run| (run.session_id, run.first));
        Ok((records, runs))
    }

    /// Records from `first_commit_sequence` on, in commit order, at most `limit`.
    pub fn records(&self, first_commit_sequence: u64, limit: usize) -> Result<Vec<(u64, StoredRecord)>, StoreError> {
        let mut out = Vec::new();
        let start = first_commit_sequence.to_be_bytes();
        let iterator = self
            .db
            .iterator_cf(self.family(RECORDS), IteratorMode::From(&start, Direction::Forward));
        for item in iterator.take(limit) {
            let (key, value) = item?;
            out.push((sequence_key(&key)?, StoredRecord::decode(&value)?));
        }
        Ok(out)
    }

    /// The first commit sequence not yet in an export batch.
    pub fn export_cursor(&self) -> Result<u64, StoreError> {
        self.meta_u64(EXPORT_CURSOR, 1)
    }

    fn meta_u64(&self, key: &[u8], default: u64) -> Result<u64, StoreError> {
        Ok(match self.db.get_cf(self.family(META), key)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt_text("meta", "a counter is not 8 bytes"))?,
            ),
            None => default,
        })
    }

    /// Batches cut for export and not yet deleted, oldest first.
    pub fn manifests(&self) -> Result<Vec<Manifest>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.family(EXPORTS), IteratorMode::Start) {
            let (_, value) = item?;
            out.push(Manifest::decode(&value)?);
        }
        Ok(out)
    }

    /// Cut the next export batch: the committed records from the export
    /// cursor on, at most `records_max` of them and about `bytes_max` bytes
    /// of stored records. Its manifest and the moved cursor are written in
    /// one synced batch, before anything is encoded or sent. `None` when no
    /// record waits.
    pub fn cut_batch(
        &self,
        records_max: usize,
        bytes_max: usize,
        batch_id: BatchId,
        created_ms: u64,
    ) -> Result<Option<Manifest>, StoreError> {
        let cursor = self.export_cursor()?;
        let start = cursor.to_be_bytes();
        let mut first = None;
        let mut last = 0;
        let mut count = 0u64;
        let mut bytes = 0usize;
        let iterator = self
            .db
            .iterator_cf(self.family(RECORDS), IteratorMode::From(&start, Direction::Forward));
        for item in iterator {
            let (key, value) = item?;
            if count >= records_max as u64 || (count > 0 && bytes + value.len() > bytes_max) {
                break;
            }
            let sequence = sequence_key(&key)?;
            first.get_or_insert(sequence);
            last = sequence;
            count += 1;
            bytes += value.len();
        }
        let Some(first) = first else { return Ok(None) };
        if last - first + 1 != count {
            return Err(corrupt_text(
                "records",
                "commit sequences have a gap inside an export batch",
            ));
        }
        let manifest = Manifest {
            batch_id,
            first,
            last,
            created_ms,
            sent_digest: None,
            sent_chain: None,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.family(EXPORTS), first.to_be_bytes(), manifest.encode());
        batch.put_cf(self.family(META), EXPORT_CURSOR, (last + 1).to_be_bytes());
        self.write_synced(batch)?;
        Ok(Some(manifest))
    }

    /// Remember (synced) the digest of the bytes about to be sent for a
    /// batch: if a later build encodes the batch differently, an AS answer
    /// "stored with other bytes" that names this digest still proves the
    /// batch is stored.
    pub fn record_sent_digest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.family(EXPORTS), manifest.first.to_be_bytes(), manifest.encode());
        self.write_synced(batch)
    }

    /// The records of a batch, in commit order; every one of them must be there.
    pub fn batch_records(&self, manifest: &Manifest) -> Result<Vec<(u64, StoredRecord)>, StoreError> {
        let records = self.records(manifest.first, manifest.count() as usize)?;
        let complete = records.len() as u64 == manifest.count()
            && records.first().map(|record| record.0) == Some(manifest.first)
            && records.last().map(|record| record.0) == Some(manifest.last);
        if !complete {
            return Err(corrupt_text("records", "an export batch's records are missing"));
        }
        Ok(records)
    }

    /// The last batch of the node's chain the storage acked, if any.
    pub fn chain_tip(&self) -> Result<Option<ChainTip>, StoreError> {
        match self.db.get_cf(self.family(META), CHAIN_TIP)? {
            None => Ok(None),
            Some(bytes) => ChainTip::decode(&bytes).map(Some),
        }
    }

    /// Delete an acked batch: its records and its manifest, in one batch,
    /// with the chain's new tip when the batch joined the chain (`tip`).
    /// Synced: the next batch's header names this tip, so it must survive
    /// a crash with the delete (an unsynced delete lost in a crash would
    /// only resend an acked batch, which the AS acks again without a
    /// second file, and the same header).
    pub fn delete_batch(&self, manifest: &Manifest, tip: Option<&ChainTip>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        if let Some(tip) = tip {
            batch.put_cf(self.family(META), CHAIN_TIP, tip.encode());
        }
        batch.delete_range_cf(
            self.family(RECORDS),
            manifest.first.to_be_bytes(),
            (manifest.last + 1).to_be_bytes(),
        );
        batch.delete_cf(self.family(EXPORTS), manifest.first.to_be_bytes());
        self.write_synced(batch)
    }

    /// Bytes the store takes on disk (SST files of every family) plus its
    /// memtables: what grows while the AS is away.
    pub fn disk_bytes(&self) -> u64 {
        [SESSIONS, PROGRESS, RECORDS, FINGERPRINTS, EXPORTS, KEYS, META]
            .iter()
            .map(|name| {
                let family = self.family(name);
                let property = |key: &str| self.db.property_int_value_cf(family, key).ok().flatten().unwrap_or(0);
                property("rocksdb.total-sst-files-size") + property("rocksdb.cur-size-all-mem-tables")
            })
            .sum()
    }

    /// Records stored, counted by a full scan (tests and operators).
    pub fn record_count(&self) -> Result<usize, StoreError> {
        let mut count = 0;
        for item in self.db.iterator_cf(self.family(RECORDS), IteratorMode::Start) {
            item?;
            count += 1;
        }
        Ok(count)
    }
}

fn sequence_key(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(
        key.try_into().map_err(|_| corrupt_text("record key", "not 8 bytes"))?,
    ))
}

/// The newest batch of the node's archive chain that the storage acked:
/// the next batch's header continues from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainTip {
    /// Its number in the chain.
    pub number: u64,
    /// The digest of its header (the next header's `previous`).
    pub header_digest: [u8; 32],
    /// Its last commit sequence.
    pub last_commit_sequence: u64,
}

impl ChainTip {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 32 + 8);
        out.put_u8(STORED_VERSION);
        out.put_u64(self.number);
        out.put_slice(&self.header_digest);
        out.put_u64(self.last_commit_sequence);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let bytes = Bytes::copy_from_slice(bytes);
        let mut reader = Reader::new(&bytes);
        let read = |reader: &mut Reader<'_>| -> Result<Self, wire::DecodeError> {
            if reader.u8("chain tip version")? != STORED_VERSION {
                return Err(wire::DecodeError::InvalidValue {
                    field: "chain tip",
                    reason: "unknown version",
                });
            }
            Ok(Self {
                number: reader.u64("number")?,
                header_digest: reader.array("header_digest")?,
                last_commit_sequence: reader.u64("last_commit_sequence")?,
            })
        };
        let tip = read(&mut reader).map_err(|error| corrupt_text("chain tip", &error.to_string()))?;
        reader
            .finish()
            .map_err(|error| corrupt_text("chain tip", &error.to_string()))?;
        Ok(tip)
    }
}

/// A batch cut for export: a range of commit sequences and its batch id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The batch id; a retry keeps it.
    pub batch_id: BatchId,
    /// First commit sequence in the batch.
    pub first: u64,
    /// Last commit sequence in the batch (inclusive).
    pub last: u64,
    /// When the batch was cut, Unix ms (names the partition date).
    pub created_ms: u64,
    /// The digest of the bytes sent, once sent.
    pub sent_digest: Option<[u8; 32]>,
    /// The batch's place in the chain as first sent (none if first sent
    /// by a build before the chain): every later attempt keeps it.
    pub sent_chain: Option<SentChain>,
}

/// A batch's place in the node's chain, fixed when it is first sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentChain {
    /// Its number.
    pub number: u64,
    /// The previous header's digest it names.
    pub previous: [u8; 32],
    /// The digest of the header first sent with it (the one the storage
    /// keeps if that attempt was stored).
    pub header_digest: [u8; 32],
}

impl Manifest {
    /// Records in the batch.
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 16 + 24 + 33);
        out.put_u8(STORED_VERSION);
        out.put_slice(&self.batch_id.0);
        out.put_u64(self.first);
        out.put_u64(self.last);
        out.put_u64(self.created_ms);
        match self.sent_digest {
            Some(digest) => {
                out.put_u8(1);
                out.put_slice(&digest);
            }
            None => out.put_u8(0),
        }
        if let Some(chain) = &self.sent_chain {
            out.put_u8(1);
            out.put_u64(chain.number);
            out.put_slice(&chain.previous);
            out.put_slice(&chain.header_digest);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let input = Bytes::copy_from_slice(bytes);
        let mut reader = Reader::new(&input);
        let parse = |reader: &mut Reader<'_>| -> Result<Self, DecodeError> {
            if reader.u8("manifest version")? != STORED_VERSION {
                return Err(DecodeError::InvalidValue {
                    field: "manifest version",
                    reason: "unknown version",
                });
            }
            let batch_id = BatchId(reader.array("batch_id")?);
            let first = reader.u64("first")?;
            let last = reader.u64("last")?;
            let created_ms = reader.u64("created_ms")?;
            let sent_digest = if reader.bool("sent")? {
                Some(reader.array("digest")?)
            } else {
                None
            };
            // Manifests written before the chain end here.
            let sent_chain = if reader.remaining() > 0 && reader.bool("chain")? {
                Some(SentChain {
                    number: reader.u64("number")?,
                    previous: reader.array("previous")?,
                    header_digest: reader.array("header_digest")?,
                })
            } else {
                None
            };
            if last < first {
                return Err(DecodeError::InvalidValue {
                    field: "manifest range",
                    reason: "last before first",
                });
            }
            Ok(Self {
                batch_id,
                first,
                last,
                created_ms,
                sent_digest,
                sent_chain,
            })
        };
        let manifest = parse(&mut reader).map_err(|error| corrupt("manifest", error))?;
        reader.finish().map_err(|error| corrupt("manifest", error))?;
        Ok(manifest)
    }
}

/// A dedup marker's value: the fingerprint, then the session's progress
/// when the message was stored in sequence order.
struct Marker {
    bytes: [u8; MARKER_BYTES_MAX],
    len: u8,
}

/// Fingerprint, then four varints of at most 10 bytes; then, for a session
/// with a receipt state, four more and its 32-byte digest.
const MARKER_BYTES_MAX: usize = 8 + 4 * 10 + 4 * 10 + 32;

impl Marker {
    fn new(fingerprint: [u8; 8], progress: Option<&SessionProgress>) -> Self {
        let mut bytes = [0u8; MARKER_BYTES_MAX];
        bytes[..8].copy_from_slice(&fingerprint);
        let mut len = 8;
        if let Some(progress) = progress {
            // The window is mostly ones where sequences can be: inverted
            // within those positions, it is mostly one byte.
            for value in [
                !progress.window & window_mask(progress.sequence_max),
                progress.message_count,
                progress.requests_total,
                progress.last_message_ms,
            ] {
                len += put_varint(&mut bytes[len..], value);
            }
            if let Some(receipt) = &progress.receipt {
                for value in [receipt.units, receipt.bytes_up, receipt.bytes_down, receipt.duration_ms] {
                    len += put_varint(&mut bytes[len..], value);
                }
                bytes[len..len + 32].copy_from_slice(&receipt.digest.0);
                len += 32;
            }
        }
        Self { bytes, len: len as u8 }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The positions of a window that can hold a sequence when the highest is
/// `sequence_max` (sequences start at 1).
fn window_mask(sequence_max: u64) -> u64 {
    if sequence_max >= 64 {
        u64::MAX
    } else {
        (1u64 << sequence_max) - 1
    }
}

/// The progress a marker carries (all but the sequence, which is its key's,
/// and what only the `progress` family holds: final sequence, close, flags).
#[derive(Debug, PartialEq, Eq)]
struct MarkerProgress {
    /// The window inverted within [`window_mask`] of the marker's sequence.
    window_gaps: u64,
    message_count: u64,
    requests_total: u64,
    last_message_ms: u64,
    /// None in a marker written for a session without a receipt state (or
    /// by a build before receipts).
    receipt: Option<ReceiptState>,
}

impl MarkerProgress {
    /// `None` for a marker without progress (stored out of order).
    fn decode(value: &[u8]) -> Result<Option<Self>, StoreError> {
        let Some(mut rest) = value.get(8..) else {
            return Err(corrupt_text("marker", "shorter than its fingerprint"));
        };
        if rest.is_empty() {
            return Ok(None);
        }
        let next = |rest: &mut &[u8]| take_varint(rest).ok_or_else(|| corrupt_text("marker", "bad varint"));
        let mut carried = Self {
            window_gaps: next(&mut rest)?,
            message_count: next(&mut rest)?,
            requests_total: next(&mut rest)?,
            last_message_ms: next(&mut rest)?,
            receipt: None,
        };
        if !rest.is_empty() {
            let units = next(&mut rest)?;
            let bytes_up = next(&mut rest)?;
            let bytes_down = next(&mut rest)?;
            let duration_ms = next(&mut rest)?;
            let digest: [u8; 32] = rest
                .try_into()
                .map_err(|_| corrupt_text("marker", "a receipt digest is not 32 bytes"))?;
            carried.receipt = Some(ReceiptState {
                units,
                bytes_up,
                bytes_down,
                duration_ms,
                digest: wire::ReceiptDigest(digest),
            });
        }
        Ok(Some(carried))
    }

    /// Replace `progress`'s dedup state and counters with these, for the
    /// marker at `sequence`.
    fn apply(&self, sequence: u64, progress: &mut SessionProgress) {
        progress.sequence_max = sequence;
        progress.window = !self.window_gaps & window_mask(sequence);
        progress.message_count = self.message_count;
        progress.requests_total = self.requests_total;
        progress.last_message_ms = self.last_message_ms;
        progress.receipt = self.receipt;
    }
}

/// LEB128: write `value` at the start of `out`, return the bytes written.
fn put_varint(out: &mut [u8], mut value: u64) -> usize {
    let mut len = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[len] = byte;
            return len + 1;
        }
        out[len] = byte | 0x80;
        len += 1;
    }
}

/// LEB128: read one value from the start of `input` and advance it.
fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, byte) in input.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * index as u32;
        if index == 9 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            *input = &input[index + 1..];
            return Some(value);
        }
    }
    None
}

/// The (session, sequence) of a `fingerprints` key.
fn parse_fingerprint_key(key: &[u8]) -> Result<(SessionId, u64), StoreError> {
    let session: Option<[u8; 16]> = key.get(..16).and_then(|bytes| bytes.try_into().ok());
    let sequence: Option<[u8; 8]> = key.get(16..).and_then(|bytes| bytes.try_into().ok());
    match (session, sequence) {
        (Some(session), Some(sequence)) => Ok((SessionId(session), u64::from_be_bytes(sequence))),
        _ => Err(StoreError::Corrupt {
            what: "fingerprint key",
            detail: format!("{} bytes, not 24", key.len()),
        }),
    }
}

fn fingerprint_key(session_id: SessionId, sequence: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&session_id.0);
    key[16..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn put_text(out: &mut impl BufMut, text: &str) {
    out.put_u8(u8::try_from(text.len()).unwrap_or(u8::MAX));
    out.put_slice(text.as_bytes());
}

/// A `sessions` value: version, creation time, provider, the signed User
/// Credential, then (sessions issued for a user's request) the request id
/// and nonce, 32 bytes. Values without the tail (the admin path, and stores
/// written before it existed) decode with no request.
fn encode_session(info: &SessionInfo) -> Vec<u8> {
    let body = info.credential.body();
    let mut out = BytesMut::with_capacity(16 + body.len() + 32);
    out.put_u8(STORED_VERSION);
    out.put_u64(info.created_ms);
    put_text(&mut out, info.provider.as_str());
    out.put_u16(u16::try_from(body.len()).unwrap_or(u16::MAX));
    out.put_slice(body);
    if let Some((request_id, nonce)) = &info.request {
        out.put_slice(&request_id.0);
        out.put_slice(&nonce.0);
    }
    out.to_vec()
}

/// A decoded `sessions` value.
type SessionValue = (Name, u64, Signed<UserCredential>, Option<(RequestId, Nonce)>);

fn decode_session(bytes: &[u8]) -> Result<SessionValue, StoreError> {
    let input = Bytes::copy_from_slice(bytes);
    let mut reader = Reader::new(&input);
    let parse = |reader: &mut Reader<'_>| -> Result<SessionValue, DecodeError> {
        let version = reader.u8("session version")?;
        if version != STORED_VERSION {
            return Err(DecodeError::InvalidValue {
                field: "session version",
                reason: "unknown version",
            });
        }
        let created_ms = reader.u64("created_ms")?;
        let provider = Name::new(reader.text_u8(64, "provider")?)?;
        let body = reader.bytes_u16(wire::limits::SMALL_FRAME_BODY_BYTES_MAX, "credential")?;
        let request = if reader.remaining() == 0 {
            None
        } else {
            Some((RequestId(reader.array("request_id")?), Nonce(reader.array("nonce")?)))
        };
        Ok((provider, created_ms, Signed::decode_body(body)?, request))
    };
    let session = parse(&mut reader).map_err(|error| corrupt("session", error))?;
    reader.finish().map_err(|error| corrupt("session", error))?;
    Ok(session)
}

fn encode_progress(progress: &SessionProgress) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 * 7 + 1 + 1 + 8 * 4 + 32);
    out.put_u8(PROGRESS_VERSION);
    out.put_u64(progress.sequence_max);
    out.put_u64(progress.window);
    out.put_u64(progress.message_count);
    out.put_u64(progress.requests_total);
    out.put_u64(progress.last_message_ms);
    // 0 encodes "none": sequences start at 1, and a close at time 0 is impossible.
    out.put_u64(progress.final_sequence.unwrap_or(0));
    out.put_u64(progress.closed_ms.unwrap_or(0));
    out.put_u8(progress.flags.0);
    match &progress.receipt {
        None => out.put_u8(0),
        Some(receipt) => {
            out.put_u8(1);
            out.put_u64(receipt.units);
            out.put_u64(receipt.bytes_up);
            out.put_u64(receipt.bytes_down);
            out.put_u64(receipt.duration_ms);
            out.put_slice(&receipt.digest.0);
        }
    }
    out
}

fn decode_progress(bytes: &[u8]) -> Result<SessionProgress, StoreError> {
    let input = Bytes::copy_from_slice(bytes);
    let mut reader = Reader::new(&input);
    let parse = |reader: &mut Reader<'_>| -> Result<SessionProgress, DecodeError> {
        let version = reader.u8("progress version")?;
        if version != STORED_VERSION && version != PROGRESS_VERSION {
            return Err(DecodeError::InvalidValue {
                field: "progress version",
                reason: "unknown version",
            });
        }
        let sequence_max = reader.u64("sequence_max")?;
        let window = reader.u64("window")?;
        let message_count = reader.u64("message_count")?;
        let requests_total = reader.u64("requests_total")?;
        let last_message_ms = reader.u64("last_message_ms")?;
        let final_sequence = reader.u64("final_sequence")?;
        let closed_ms = reader.u64("closed_ms")?;
        let flags = SessionFlags(reader.u8("flags")?);
        let receipt = if version == STORED_VERSION {
            // Before receipts: a session with nothing stored yet starts one.
            (message_count == 0).then(ReceiptState::default)
        } else if reader.bool("receipt state")? {
            Some(ReceiptState {
                units: reader.u64("units")?,
                bytes_up: reader.u64("bytes_up")?,
                bytes_down: reader.u64("bytes_down")?,
                duration_ms: reader.u64("duration_ms")?,
                digest: wire::ReceiptDigest(reader.array("digest")?),
            })
        } else {
            None
        };
        Ok(SessionProgress {
            sequence_max,
            window,
            message_count,
            requests_total,
            last_message_ms,
            final_sequence: (final_sequence != 0).then_some(final_sequence),
            closed_ms: (closed_ms != 0).then_some(closed_ms),
            flags,
            receipt,
        })
    };
    let progress = parse(&mut reader).map_err(|error| corrupt("progress", error))?;
    reader.finish().map_err(|error| corrupt("progress", error))?;
    Ok(progress)
}

fn corrupt(what: &'static str, error: DecodeError) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: error.to_string(),
    }
}

fn corrupt_text(what: &'static str, detail: &str) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_belongs_to_the_node_that_first_opened_it() {
        let folder = tempfile::tempdir().unwrap();
        let am2 = wire::Name::new("am-2").unwrap();
        let store = Store::open(folder.path()).unwrap();
        store.claim(&am2, wire::PartitionId(2)).unwrap();
        drop(store);
        let store = Store::open(folder.path()).unwrap();
        store.claim(&am2, wire::PartitionId(2)).unwrap();
        let error = store
            .claim(&wire::Name::new("am-3").unwrap(), wire::PartitionId(3))
            .unwrap_err();
        assert!(error.to_string().contains("belongs to am-2 (partition 2)"), "{error}");
        assert!(
            store.claim(&am2, wire::PartitionId(3)).is_err(),
            "same name, other partition"
        );
    }

    #[test]
    fn a_store_from_a_newer_format_is_refused() {
        let folder = tempfile::tempdir().unwrap();
        let store = Store::open(folder.path()).unwrap();
        assert_eq!(store.meta_u64(STORE_FORMAT, 0).unwrap(), STORE_FORMAT_CURRENT);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            store.family(META),
            STORE_FORMAT,
            (STORE_FORMAT_CURRENT + 1).to_be_bytes(),
        );
        store.write_synced(batch).unwrap();
        drop(store);
        let error = Store::open(folder.path()).err().expect("a newer format is refused");
        assert!(error.to_string().contains("newer acct"), "{error}");
    }

    #[test]
    fn varints_round_trip_at_every_length() {
        let mut buffer = [0u8; 10];
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX >> 1,
            u64::MAX,
        ] {
            let len = put_varint(&mut buffer, value);
            let mut input = &buffer[..len];
            assert_eq!(take_varint(&mut input), Some(value));
            assert!(input.is_empty());
        }
        // Truncated, and an 11th byte's worth of bits: refused, not wrapped.
        assert_eq!(take_varint(&mut &[0x80u8][..]), None);
        assert_eq!(
            take_varint(&mut &[0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..]),
            None
        );
    }

    #[test]
    fn markers_carry_progress_or_only_their_fingerprint() {
        let progress = SessionProgress {
            sequence_max: 90,
            window: u64::MAX - 4,
            message_count: 70_000,
            requests_total: 3,
            last_message_ms: 1_790_000_000_000,
            ..SessionProgress::default()
        };
        let marker = Marker::new([7; 8], Some(&progress));
        assert!(marker.bytes().len() < 24, "{} bytes", marker.bytes().len());
        let carried = MarkerProgress::decode(marker.bytes()).unwrap().unwrap();
        let mut recovered = SessionProgress::default();
        carried.apply(90, &mut recovered);
        assert_eq!(recovered, progress);
        assert_eq!(MarkerProgress::decode(Marker::new([7; 8], None).bytes()).unwrap(), None);
        // With a receipt state: it comes back whole, from the marker and
        // from `progress`; a `progress` value of version 1 has none unless
        // nothing was stored yet.
        let with_receipt = SessionProgress {
            receipt: Some(ReceiptState {
                units: 70,
                bytes_up: u64::MAX,
                bytes_down: 0,
                duration_ms: 4_000,
                digest: wire::ReceiptDigest([5; 32]),
            }),
            ..progress
        };
        let marker = Marker::new([7; 8], Some(&with_receipt));
        assert!(marker.bytes().len() <= MARKER_BYTES_MAX);
        let mut recovered = SessionProgress::default();
        MarkerProgress::decode(marker.bytes())
            .unwrap()
            .unwrap()
            .apply(90, &mut recovered);
        assert_eq!(recovered, with_receipt);
        assert_eq!(decode_progress(&encode_progress(&with_receipt)).unwrap(), with_receipt);
        assert_eq!(decode_progress(&encode_progress(&progress)).unwrap(), progress);
        let mut version_1 = encode_progress(&progress);
        version_1[0] = STORED_VERSION;
        version_1.truncate(version_1.len() - 1);
        assert_eq!(decode_progress(&version_1).unwrap().receipt, None);
        // A young session (fewer than 64 sequences) also stays short.
        for (sequence_max, window) in [
            (1, 1),
            (5, 0b10111),
            (63, u64::MAX >> 1),
            (64, u64::MAX),
            (70, u64::MAX - 2),
        ] {
            let young = SessionProgress {
                sequence_max,
                window,
                message_count: 5,
                ..SessionProgress::default()
            };
            let marker = Marker::new([1; 8], Some(&young));
            assert!(
                marker.bytes().len() <= 8 + 4 + 1 + 1,
                "{sequence_max}: {} bytes",
                marker.bytes().len()
            );
            let mut recovered = SessionProgress::default();
            MarkerProgress::decode(marker.bytes())
                .unwrap()
                .unwrap()
                .apply(sequence_max, &mut recovered);
            assert_eq!(recovered, young, "sequence_max {sequence_max}");
        }
        assert!(MarkerProgress::decode(&[7; 5]).is_err());
        let mut trailing = marker.bytes().to_vec();
        trailing.push(0);
        assert!(MarkerProgress::decode(&trailing).is_err());
    }
}
