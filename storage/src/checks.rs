//! What the AS checks before it stores a batch, whatever it stores it in:
//! the AM's signature over the Record Accounting, that `node` is the AM's
//! own name, the payload's digest, the batch's header and head (signed by
//! the same AM, describing this batch), and that the payload is an acct
//! Parquet file whose every page decodes, with the rows, batch id and
//! batch number it claims.

use bytes::Bytes;
use wire::{CertifiedIdentity, RecordAccounting, RecordAck, RecordStatus, Signed};

/// `Ok` when the batch may be stored; otherwise the answer that refuses it.
/// CPU-bound (the Parquet file is decoded whole): call from a blocking or
/// background thread.
pub fn check(am: &CertifiedIdentity, message: &Signed<RecordAccounting>) -> Result<(), RecordAck> {
    let record = message.value();
    let refuse = |status: RecordStatus| RecordAck {
        batch_id: record.batch_id,
        digest: record.digest,
        status,
    };
    if message.verify(&am.public_key).is_err() {
        return Err(refuse(RecordStatus::BAD_SIGNATURE));
    }
    if record.node != am.name {
        return Err(refuse(RecordStatus::WRONG_NODE));
    }
    if !record.digest_matches() {
        return Err(refuse(RecordStatus::DIGEST_MISMATCH));
    }
    let batch_hex = record.batch_id.to_string();
    if record.header.verify(&am.public_key).is_err() || record.head.verify(&am.public_key).is_err() {
        tracing::warn!(batch = %batch_hex, "refused: the batch header or head is not signed by the AM");
        return Err(refuse(RecordStatus::BAD_HEADER));
    }
    if let Err(reason) = record.chain_matches() {
        tracing::warn!(batch = %batch_hex, reason, "refused: the batch header or head does not describe the batch");
        return Err(refuse(RecordStatus::BAD_HEADER));
    }
    let number = record.header.value().number;
    match check_payload(&record.payload, &batch_hex, number) {
        Ok(rows) if rows == u64::from(record.record_count) => Ok(()),
        Ok(rows) => {
            tracing::warn!(batch = %batch_hex, rows, claimed = record.record_count, "refused: row count differs");
            Err(refuse(RecordStatus::NOT_PARQUET))
        }
        Err(error) => {
            tracing::warn!(batch = %batch_hex, %error, "refused: not a readable acct Parquet file");
            Err(refuse(RecordStatus::NOT_PARQUET))
        }
    }
}

/// Rows in the payload, after decoding every page (the AS stores only
/// files that analysts' readers can read to the end).
fn check_payload(payload: &Bytes, batch_hex: &str, number: u64) -> Result<u64, String> {
    let info = archive::check(payload.clone()).map_err(|error| error.to_string())?;
    if info.batch_id.as_deref() != Some(batch_hex) {
        return Err(format!("file metadata names batch {:?}", info.batch_id));
    }
    if info.batch_number != Some(number) {
        return Err(format!(
            "file metadata names batch number {:?}, the header {number}",
            info.batch_number
        ));
    }
    Ok(info.rows)
}
