//! What the AS checks before it stores a batch, whatever it stores it in:
//! the AM's signature over the Record Accounting, that `node` is the AM's
//! own name, the payload's digest, and that the payload is an acct Parquet
//! file whose every page decodes, with the rows and batch id it claims.

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
    match check_payload(&record.payload, &batch_hex) {
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
fn check_payload(payload: &Bytes, batch_hex: &str) -> Result<u64, String> {
    let info = archive::check(payload.clone()).map_err(|error| error.to_string())?;
    if info.batch_id.as_deref() != Some(batch_hex) {
        return Err(format!("file metadata names batch {:?}", info.batch_id));
    }
    Ok(info.rows)
}
