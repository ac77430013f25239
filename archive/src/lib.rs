//! The cold-storage record format: one Parquet file per exported batch, one
//! row per accounting message, schema version 1 (docs/schema.md is the
//! contract with analysts; this crate is its only implementation).
//!
//! - [`Row`]: one accounting message as exported, with the provider's
//!   signature and the exact bytes it signed, so an auditor can re-verify it.
//! - [`encode`]: rows → Parquet bytes (zstd, deterministic: the same rows
//!   give the same bytes, which a retried export relies on).
//! - [`read`] / [`read_file`] / [`parquet_files`]: Parquet → rows, for the
//!   Accounting Storage's checks, `acct report`, `acct audit` and loadgen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, FixedSizeBinaryBuilder, MapBuilder, StringBuilder, TimestampMillisecondBuilder,
    UInt8Builder, UInt32Builder, UInt64Builder,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeBinaryArray, MapArray, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt8Array, UInt32Array, UInt64Array,
};
use arrow_schema::{ArrowError, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use wire::limits::{CREDENTIAL_DIGEST_BYTES, PUBLIC_KEY_BYTES, SIGNATURE_BYTES};
use wire::{Accounting, AccountingKind, PublicKey, SessionId, Signed};

pub mod chain;
pub mod receipts;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// File metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "acct.schema_version";
/// File metadata key holding the batch id (32 hex digits).
pub const BATCH_ID_KEY: &str = "acct.batch_id";
/// File metadata key holding the batch's number in its node's chain
/// (decimal; [`chain`]). Files exported before the chain have none.
pub const BATCH_NUMBER_KEY: &str = "acct.batch_number";
/// The `created_by` every file carries. Fixed, so that the bytes depend only
/// on the rows and the batch (a retried export must produce the same bytes).
pub const CREATED_BY: &str = "acct archive, schema 1";
/// Most rows in one row group: large enough for column scans, small enough
/// that a reader's memory per row group stays around 10-20 MB.
pub const ROW_GROUP_ROWS_MAX: usize = 131_072;
/// zstd level: 3 is zstd's default trade-off; ids and signatures, the bulk
/// of a row, do not compress at any level.
const ZSTD_LEVEL: i32 = 3;

/// Session flag bit: the session missed its "max time between accounting
/// messages" policy before this message (set by the AM's watchdog).
pub const FLAG_MISSED_INTERIM: u8 = 1 << 0;

/// Why a file could not be written or read as acct records.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The Parquet layer failed (not Parquet, truncated, corrupt).
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// The Arrow layer failed.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// The file is Parquet but not acct's schema (or another version).
    #[error("not an acct schema {SCHEMA_VERSION} file: {0}")]
    Schema(String),
    /// Reading a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// One accounting message as exported: a row of the Parquet file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The AM's commit order on its node (unique per node).
    pub commit_sequence: u64,
    /// The AM node that stored and exported the message.
    pub am_node: String,
    /// e6: the accounting session.
    pub session_id: SessionId,
    /// e4: the message's number in its session; (session, message id) is unique.
    pub message_id: u64,
    /// e2: interim or final.
    pub kind: AccountingKind,
    /// The provider, from its certificate.
    pub provider_id: String,
    /// The user the session bills.
    pub user_id: String,
    /// e1: the service.
    pub service_id: u32,
    /// When the AM received the message, Unix ms.
    pub received_at_ms: u64,
    /// e5 interval, Unix ms.
    pub interval_ms: Option<(u64, u64)>,
    /// e5 units of the service's charge unit.
    pub units: Option<u64>,
    /// e5 bytes user → provider.
    pub bytes_up: Option<u64>,
    /// e5 bytes provider → user.
    pub bytes_down: Option<u64>,
    /// e5 service time, ms.
    pub duration_ms: Option<u64>,
    /// e5 custom counters, in message order.
    pub custom: Vec<(String, u64)>,
    /// The session's policy flags when the message was stored.
    pub flags: u8,
    /// e3: digest of the User Credential.
    pub credential_digest: [u8; CREDENTIAL_DIGEST_BYTES],
    /// The provider's Ed25519 key (from its certificate) that signed e7.
    pub provider_key: [u8; PUBLIC_KEY_BYTES],
    /// The exact bytes the provider signed (after the domain prefix
    /// `acct/1 accounting\0`): the Accounting fields as received.
    pub signed_fields: Bytes,
    /// e7: the provider's signature.
    pub signature: [u8; SIGNATURE_BYTES],
}

/// What the AM knew about a message besides the message itself.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    /// Commit order.
    pub commit_sequence: u64,
    /// The AM node.
    pub am_node: &'a str,
    /// The provider's name.
    pub provider_id: &'a str,
    /// The provider's key.
    pub provider_key: [u8; PUBLIC_KEY_BYTES],
    /// The billed user.
    pub user_id: &'a str,
    /// Receive time, Unix ms.
    pub received_at_ms: u64,
    /// Session flags.
    pub flags: u8,
}

impl Row {
    /// The row of a stored message.
    pub fn new(context: &Context<'_>, message: &Signed<Accounting>) -> Self {
        let value = message.value();
        Self {
            commit_sequence: context.commit_sequence,
            am_node: context.am_node.to_owned(),
            session_id: value.session_id,
            message_id: value.sequence,
            kind: value.kind,
            provider_id: context.provider_id.to_owned(),
            user_id: context.user_id.to_owned(),
            service_id: value.service_id.0,
            received_at_ms: context.received_at_ms,
            interval_ms: value.usage.interval_ms,
            units: value.usage.units,
            bytes_up: value.usage.bytes_up,
            bytes_down: value.usage.bytes_down,
            duration_ms: value.usage.duration_ms,
            custom: value
                .usage
                .custom
                .iter()
                .map(|counter| (counter.name.as_str().to_owned(), counter.value))
                .collect(),
            flags: context.flags,
            credential_digest: value.credential_digest,
            provider_key: context.provider_key,
            signed_fields: message.body().slice(..message.body().len() - SIGNATURE_BYTES),
            signature: *message.signature(),
        }
    }

    /// Re-check the row the way the AM accepted it: the signature verifies
    /// under `provider_key` with the protocol's rule (ZIP-215, domain
    /// prefix), and every column derived from the signed bytes agrees with
    /// them. Returns what is wrong, if anything.
    pub fn verify(&self) -> Result<(), String> {
        let mut body = Vec::with_capacity(self.signed_fields.len() + SIGNATURE_BYTES);
        body.extend_from_slice(&self.signed_fields);
        body.extend_from_slice(&self.signature);
        let message = Signed::<Accounting>::decode_body(Bytes::from(body))
            .map_err(|error| format!("signed_fields do not decode: {error}"))?;
        let key =
            PublicKey::from_identity_bytes(self.provider_key).map_err(|error| format!("provider_key: {error}"))?;
        message
            .verify(&key)
            .map_err(|error| format!("signature does not verify: {error}"))?;
        let value = message.value();
        let usage = &value.usage;
        let custom: Vec<(String, u64)> = usage
            .custom
            .iter()
            .map(|counter| (counter.name.as_str().to_owned(), counter.value))
            .collect();
        let mismatches = [
            ("session_id", value.session_id == self.session_id),
            ("message_id", value.sequence == self.message_id),
            ("kind", value.kind == self.kind),
            ("service_id", value.service_id.0 == self.service_id),
            ("credential_digest", value.credential_digest == self.credential_digest),
            ("interval", usage.interval_ms == self.interval_ms),
            ("units", usage.units == self.units),
            ("bytes_up", usage.bytes_up == self.bytes_up),
            ("bytes_down", usage.bytes_down == self.bytes_down),
            ("duration_ms", usage.duration_ms == self.duration_ms),
            ("custom_counters", custom == self.custom),
        ];
        let wrong: Vec<&str> = mismatches
            .iter()
            .filter(|(_, equal)| !equal)
            .map(|(name, _)| *name)
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("columns disagree with the signed bytes: {}", wrong.join(", ")))
        }
    }
}

/// The word for a kind in the `kind` column.
pub fn kind_name(kind: AccountingKind) -> &'static str {
    if kind == AccountingKind::FINAL {
        "final"
    } else {
        "interim"
    }
}

fn kind_from_name(name: &str) -> Option<AccountingKind> {
    match name {
        "interim" => Some(AccountingKind::INTERIM),
        "final" => Some(AccountingKind::FINAL),
        _ => None,
    }
}

/// The Arrow schema of version 1 (field order is part of the contract).
pub fn schema() -> SchemaRef {
    // The schema is what the builders produce for no rows: one definition.
    to_batch(&[]).map_or_else(|_| Arc::new(Schema::empty()), |batch| batch.schema())
}

fn to_batch(rows: &[Row]) -> Result<RecordBatch, ArrowError> {
    let count = rows.len();
    let mut commit_sequence = UInt64Builder::with_capacity(count);
    let mut am_node = StringBuilder::with_capacity(count, count * 8);
    let mut session_id = StringBuilder::with_capacity(count, count * 32);
    let mut message_id = UInt64Builder::with_capacity(count);
    let mut kind = StringBuilder::with_capacity(count, count * 7);
    let mut provider_id = StringBuilder::with_capacity(count, count * 16);
    let mut user_id = StringBuilder::with_capacity(count, count * 16);
    let mut service_id = UInt32Builder::with_capacity(count);
    let mut received_at = TimestampMillisecondBuilder::with_capacity(count).with_timezone("UTC");
    let mut interval_start = TimestampMillisecondBuilder::with_capacity(count).with_timezone("UTC");
    let mut interval_end = TimestampMillisecondBuilder::with_capacity(count).with_timezone("UTC");
    let mut units = UInt64Builder::with_capacity(count);
    let mut bytes_up = UInt64Builder::with_capacity(count);
    let mut bytes_down = UInt64Builder::with_capacity(count);
    let mut duration_ms = UInt64Builder::with_capacity(count);
    let mut custom = MapBuilder::new(None, StringBuilder::new(), UInt64Builder::new());
    let mut flags = UInt8Builder::with_capacity(count);
    let mut missed_interim = BooleanBuilder::with_capacity(count);
    let mut credential_digest = FixedSizeBinaryBuilder::with_capacity(count, CREDENTIAL_DIGEST_BYTES as i32);
    let mut provider_key = FixedSizeBinaryBuilder::with_capacity(count, PUBLIC_KEY_BYTES as i32);
    let mut signed_fields = BinaryBuilder::with_capacity(count, count * 120);
    let mut signature = FixedSizeBinaryBuilder::with_capacity(count, SIGNATURE_BYTES as i32);
    for row in rows {
        commit_sequence.append_value(row.commit_sequence);
        am_node.append_value(&row.am_node);
        session_id.append_value(row.session_id.to_string());
        message_id.append_value(row.message_id);
        kind.append_value(kind_name(row.kind));
        provider_id.append_value(&row.provider_id);
        user_id.append_value(&row.user_id);
        service_id.append_value(row.service_id);
        received_at.append_value(clamp_ms(row.received_at_ms));
        interval_start.append_option(row.interval_ms.map(|(start, _)| clamp_ms(start)));
        interval_end.append_option(row.interval_ms.map(|(_, end)| clamp_ms(end)));
        units.append_option(row.units);
        bytes_up.append_option(row.bytes_up);
        bytes_down.append_option(row.bytes_down);
        duration_ms.append_option(row.duration_ms);
        for (name, value) in &row.custom {
            custom.keys().append_value(name);
            custom.values().append_value(*value);
        }
        custom.append(true)?;
        flags.append_value(row.flags);
        missed_interim.append_value(row.flags & FLAG_MISSED_INTERIM != 0);
        credential_digest.append_value(row.credential_digest)?;
        provider_key.append_value(row.provider_key)?;
        signed_fields.append_value(&row.signed_fields);
        signature.append_value(row.signature)?;
    }
    let columns: Vec<(&str, ArrayRef, bool)> = vec![
        ("commit_sequence", Arc::new(commit_sequence.finish()), false),
        ("am_node", Arc::new(am_node.finish()), false),
        ("session_id", Arc::new(session_id.finish()), false),
        ("message_id", Arc::new(message_id.finish()), false),
        ("kind", Arc::new(kind.finish()), false),
        ("provider_id", Arc::new(provider_id.finish()), false),
        ("user_id", Arc::new(user_id.finish()), false),
        ("service_id", Arc::new(service_id.finish()), false),
        ("received_at", Arc::new(received_at.finish()), false),
        ("interval_start", Arc::new(interval_start.finish()), true),
        ("interval_end", Arc::new(interval_end.finish()), true),
        ("units", Arc::new(units.finish()), true),
        ("bytes_up", Arc::new(bytes_up.finish()), true),
        ("bytes_down", Arc::new(bytes_down.finish()), true),
        ("duration_ms", Arc::new(duration_ms.finish()), true),
        ("custom_counters", Arc::new(custom.finish()), false),
        ("session_flags", Arc::new(flags.finish()), false),
        ("missed_interim", Arc::new(missed_interim.finish()), false),
        ("credential_digest", Arc::new(credential_digest.finish()), false),
        ("provider_key", Arc::new(provider_key.finish()), false),
        ("signed_fields", Arc::new(signed_fields.finish()), false),
        ("signature", Arc::new(signature.finish()), false),
    ];
    let fields: Vec<arrow_schema::Field> = columns
        .iter()
        .map(|(name, array, nullable)| arrow_schema::Field::new(*name, array.data_type().clone(), *nullable))
        .collect();
    let schema = Schema::new(fields).with_metadata(
        [(SCHEMA_VERSION_KEY.to_owned(), SCHEMA_VERSION.to_string())]
            .into_iter()
            .collect::<std::collections::HashMap<String, String>>(),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        columns.into_iter().map(|(_, array, _)| array).collect(),
    )
}

/// Unix ms as Arrow's signed timestamp; times past year 292 million saturate.
fn clamp_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Encode `rows` (in commit order) as one Parquet file of batch `batch_id`,
/// number `batch_number` in its node's chain. Deterministic: the same rows,
/// batch id and number give the same bytes.
pub fn encode(rows: &[Row], batch_id: &str, batch_number: u64) -> Result<Vec<u8>, ArchiveError> {
    let batch = to_batch(rows)?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
        .set_created_by(CREATED_BY.to_owned())
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(SCHEMA_VERSION_KEY.to_owned(), SCHEMA_VERSION.to_string()),
            KeyValue::new(BATCH_ID_KEY.to_owned(), batch_id.to_owned()),
            KeyValue::new(BATCH_NUMBER_KEY.to_owned(), batch_number.to_string()),
        ]))
        .build();
    let mut out = Vec::with_capacity(rows.len() * 128 + 4096);
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(properties))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(out)
}

/// What a file's metadata says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Rows in the file.
    pub rows: u64,
    /// The batch id from the file metadata, if present.
    pub batch_id: Option<String>,
    /// The batch's number in its node's chain, if present (files exported
    /// before the chain have none).
    pub batch_number: Option<u64>,
}

/// Check that `bytes` are a complete acct schema-1 Parquet file and read its
/// metadata (footer only; cheap).
pub fn inspect(bytes: Bytes) -> Result<FileInfo, ArchiveError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let metadata = builder.metadata().file_metadata();
    let key_value = |key: &str| {
        metadata
            .key_value_metadata()
            .and_then(|entries| entries.iter().find(|entry| entry.key == key))
            .and_then(|entry| entry.value.clone())
    };
    match key_value(SCHEMA_VERSION_KEY) {
        Some(version) if version == SCHEMA_VERSION.to_string() => {}
        other => return Err(ArchiveError::Schema(format!("{SCHEMA_VERSION_KEY} is {other:?}"))),
    }
    let expected = schema();
    let found = builder.schema();
    if found.fields() != expected.fields() {
        return Err(ArchiveError::Schema("the columns differ from schema 1".into()));
    }
    Ok(FileInfo {
        rows: u64::try_from(metadata.num_rows()).unwrap_or(0),
        batch_id: key_value(BATCH_ID_KEY),
        batch_number: key_value(BATCH_NUMBER_KEY).and_then(|number| number.parse().ok()),
    })
}

/// Check that `bytes` are a complete acct schema-1 Parquet file whose every
/// page decodes (decompressed and decoded to Arrow, not turned into
/// [`Row`]s: the Accounting Storage's check before it stores a file).
/// Returns the footer's metadata; `rows` is the count actually decoded.
pub fn check(bytes: Bytes) -> Result<FileInfo, ArchiveError> {
    let mut info = inspect(bytes.clone())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(65_536)
        .build()?;
    let mut decoded = 0u64;
    for batch in reader {
        decoded += batch?.num_rows() as u64;
    }
    info.rows = decoded;
    Ok(info)
}

/// Read every row of a schema-1 Parquet file held in memory, calling `each`
/// per row (memory: one Arrow batch of 8,192 rows at a time).
pub fn read(bytes: Bytes, mut each: impl FnMut(Row)) -> Result<u64, ArchiveError> {
    inspect(bytes.clone())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(8_192)
        .build()?;
    let mut count = 0u64;
    for batch in reader {
        let batch = batch?;
        for row in rows_of(&batch)? {
            each(row);
            count += 1;
        }
    }
    Ok(count)
}

/// Read every row of a Parquet file on disk (see [`read`]).
pub fn read_file(path: &Path, each: impl FnMut(Row)) -> Result<u64, ArchiveError> {
    let bytes = std::fs::read(path).map_err(|source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read(Bytes::from(bytes), each)
}

/// Every visible `*.parquet` file under `folder`, sorted by path. Hidden
/// entries (the Accounting Storage's `.tmp` files) are skipped.
pub fn parquet_files(folder: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut out = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| ArchiveError::Io {
            path: current.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ArchiveError::Io {
                path: current.clone(),
                source,
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type().map_err(|source| ArchiveError::Io {
                path: path.clone(),
                source,
            })?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() && name.ends_with(".parquet") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArchiveError> {
    batch
        .column_by_name(name)
        .and_then(|array| array.as_any().downcast_ref::<T>())
        .ok_or_else(|| ArchiveError::Schema(format!("column {name} missing or of another type")))
}

fn option<T: Copy>(array: &impl Array, index: usize, value: impl Fn(usize) -> T) -> Option<T> {
    (!array.is_null(index)).then(|| value(index))
}

fn rows_of(batch: &RecordBatch) -> Result<Vec<Row>, ArchiveError> {
    let commit_sequence = column::<UInt64Array>(batch, "commit_sequence")?;
    let am_node = column::<StringArray>(batch, "am_node")?;
    let session_id = column::<StringArray>(batch, "session_id")?;
    let message_id = column::<UInt64Array>(batch, "message_id")?;
    let kind = column::<StringArray>(batch, "kind")?;
    let provider_id = column::<StringArray>(batch, "provider_id")?;
    let user_id = column::<StringArray>(batch, "user_id")?;
    let service_id = column::<UInt32Array>(batch, "service_id")?;
    let received_at = column::<TimestampMillisecondArray>(batch, "received_at")?;
    let interval_start = column::<TimestampMillisecondArray>(batch, "interval_start")?;
    let interval_end = column::<TimestampMillisecondArray>(batch, "interval_end")?;
    let units = column::<UInt64Array>(batch, "units")?;
    let bytes_up = column::<UInt64Array>(batch, "bytes_up")?;
    let bytes_down = column::<UInt64Array>(batch, "bytes_down")?;
    let duration_ms = column::<UInt64Array>(batch, "duration_ms")?;
    let custom = column::<MapArray>(batch, "custom_counters")?;
    let flags = column::<UInt8Array>(batch, "session_flags")?;
    let _missed_interim = column::<BooleanArray>(batch, "missed_interim")?;
    let credential_digest = column::<FixedSizeBinaryArray>(batch, "credential_digest")?;
    let provider_key = column::<FixedSizeBinaryArray>(batch, "provider_key")?;
    let signed_fields = column::<BinaryArray>(batch, "signed_fields")?;
    let signature = column::<FixedSizeBinaryArray>(batch, "signature")?;
    let custom_keys = custom
        .keys()
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| ArchiveError::Schema("custom_counters keys are not strings".into()))?;
    let custom_values = custom
        .values()
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| ArchiveError::Schema("custom_counters values are not u64".into()))?;
    let offsets = custom.value_offsets();
    let to_ms = |value: i64| u64::try_from(value).unwrap_or(0);
    let mut rows = Vec::with_capacity(batch.num_rows());
    for index in 0..batch.num_rows() {
        let session_text = session_id.value(index);
        let mut session = [0u8; 16];
        hex::decode_to_slice(session_text, &mut session)
            .map_err(|_| ArchiveError::Schema(format!("session_id {session_text:?} is not 32 hex digits")))?;
        let kind_text = kind.value(index);
        let kind = kind_from_name(kind_text)
            .ok_or_else(|| ArchiveError::Schema(format!("kind {kind_text:?} is not interim or final")))?;
        let start = usize::try_from(offsets[index]).unwrap_or(0);
        let end = usize::try_from(offsets[index + 1]).unwrap_or(0);
        let custom = (start..end)
            .map(|entry| (custom_keys.value(entry).to_owned(), custom_values.value(entry)))
            .collect();
        let interval = match (
            option(interval_start, index, |i| to_ms(interval_start.value(i))),
            option(interval_end, index, |i| to_ms(interval_end.value(i))),
        ) {
            (Some(start), Some(end)) => Some((start, end)),
            _ => None,
        };
        rows.push(Row {
            commit_sequence: commit_sequence.value(index),
            am_node: am_node.value(index).to_owned(),
            session_id: SessionId(session),
            message_id: message_id.value(index),
            kind,
            provider_id: provider_id.value(index).to_owned(),
            user_id: user_id.value(index).to_owned(),
            service_id: service_id.value(index),
            received_at_ms: to_ms(received_at.value(index)),
            interval_ms: interval,
            units: option(units, index, |i| units.value(i)),
            bytes_up: option(bytes_up, index, |i| bytes_up.value(i)),
            bytes_down: option(bytes_down, index, |i| bytes_down.value(i)),
            duration_ms: option(duration_ms, index, |i| duration_ms.value(i)),
            custom,
            flags: flags.value(index),
            credential_digest: fixed(credential_digest.value(index), "credential_digest")?,
            provider_key: fixed(provider_key.value(index), "provider_key")?,
            signed_fields: Bytes::copy_from_slice(signed_fields.value(index)),
            signature: fixed(signature.value(index), "signature")?,
        });
    }
    Ok(rows)
}

fn fixed<const N: usize>(bytes: &[u8], name: &str) -> Result<[u8; N], ArchiveError> {
    bytes
        .try_into()
        .map_err(|_| ArchiveError::Schema(format!("{name} is not {N} bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{CounterName, CustomCounter, ServiceId, SigningKey, Usage};

    fn row(sequence: u64, key: &SigningKey) -> Row {
        let message = Signed::sign(
            Accounting {
                service_id: ServiceId(7),
                kind: if sequence == 3 {
                    AccountingKind::FINAL
                } else {
                    AccountingKind::INTERIM
                },
                session_id: SessionId([9; 16]),
                sequence,
                credential_digest: [4; 16],
                usage: Usage {
                    units: Some(sequence * 10),
                    bytes_up: (sequence == 2).then_some(5),
                    interval_ms: Some((1_000, 2_000)),
                    custom: vec![CustomCounter {
                        name: CounterName::new("gpu_ms").unwrap(),
                        value: 42,
                    }],
                    ..Usage::default()
                },
            },
            key,
        )
        .unwrap();
        Row::new(
            &Context {
                commit_sequence: sequence + 100,
                am_node: "am-1",
                provider_id: "provider-0001",
                provider_key: *key.public_key().as_bytes(),
                user_id: "user-0001",
                received_at_ms: 1_700_000_000_000 + sequence,
                flags: if sequence == 2 { FLAG_MISSED_INTERIM } else { 0 },
            },
            &message,
        )
    }

    #[test]
    fn rows_round_trip_verify_and_encode_deterministically() {
        let key = SigningKey::from_seed(&[1; 32]);
        let rows: Vec<Row> = (1..=3).map(|sequence| row(sequence, &key)).collect();
        let bytes = encode(&rows, "00ff", 1).unwrap();
        assert_eq!(bytes, encode(&rows, "00ff", 1).unwrap(), "same rows, same bytes");
        let info = inspect(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(info.rows, 3);
        assert_eq!(check(Bytes::from(bytes.clone())).unwrap(), info);
        assert_eq!(info.batch_id.as_deref(), Some("00ff"));
        assert_eq!(info.batch_number, Some(1));
        let mut back = Vec::new();
        assert_eq!(read(Bytes::from(bytes), |row| back.push(row)).unwrap(), 3);
        assert_eq!(back, rows);
        for row in &back {
            row.verify().unwrap();
        }
    }

    #[test]
    fn tampered_rows_fail_verification() {
        let key = SigningKey::from_seed(&[1; 32]);
        let mut changed = row(1, &key);
        changed.units = Some(1_000_000);
        assert!(changed.verify().unwrap_err().contains("units"));
        let mut forged = row(1, &key);
        forged.provider_key = *SigningKey::from_seed(&[2; 32]).public_key().as_bytes();
        assert!(forged.verify().unwrap_err().contains("signature"));
    }

    #[test]
    fn garbage_and_truncated_files_are_errors_not_panics() {
        assert!(inspect(Bytes::from_static(b"not parquet at all")).is_err());
        let key = SigningKey::from_seed(&[1; 32]);
        let bytes = encode(&[row(1, &key)], "aa", 1).unwrap();
        for cut in [0, 4, bytes.len() / 2, bytes.len() - 1] {
            assert!(inspect(Bytes::copy_from_slice(&bytes[..cut])).is_err(), "cut at {cut}");
        }
        // A flipped byte inside the data pages: the footer still parses,
        // decoding the pages does not (zstd's frame checks or Parquet's).
        let mut corrupt = bytes.clone();
        corrupt[8] ^= 0xff;
        corrupt[9] ^= 0xff;
        assert!(check(Bytes::from(corrupt)).is_err());
    }

    #[test]
    fn hidden_files_are_not_listed() {
        let folder = tempfile::tempdir().unwrap();
        let inner = folder.path().join("date=2026-01-01").join("node=am-1");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(inner.join("batch-1.parquet"), b"x").unwrap();
        std::fs::write(inner.join(".batch-2.parquet.tmp"), b"x").unwrap();
        std::fs::write(inner.join("notes.txt"), b"x").unwrap();
        assert_eq!(
            parquet_files(folder.path()).unwrap(),
            vec![inner.join("batch-1.parquet")]
        );
    }
}
