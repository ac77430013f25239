//! The archive's chain: what the AM signs about each exported batch so that
//! an auditor can prove the cold archive complete (docs/protocol.md 4.11,
//! docs/schema.md "The chain").
//!
//! - [`BatchHeader`]: one per batch, signed by the AM node: which batch,
//!   its place in the node's chain (`number`, 1, 2, …), the commit
//!   sequences it holds, its row count, the SHA-256 of its Parquet file and
//!   the digest of the node's previous header. A missing, altered, swapped
//!   or re-ordered batch breaks the chain at a place the auditor can name.
//! - [`ArchiveHead`]: the node's latest batch, signed by the AM node; the
//!   storage keeps one per node, replaced only by a higher `number`. Batches
//!   deleted from the end of the chain are found against it.
//!
//! Both travel inside Record Accounting (222) and are stored by the AS as
//! their exact bytes (fields then signature). Neither is a frame of its
//! own: their `MESSAGE_TYPE` is the one of the frame that carries them.

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};

use crate::codec::Reader;
use crate::ed25519::SigningKey;
use crate::error::{DecodeError, EncodeError};
use crate::frame::MessageType;
use crate::ids::BatchId;
use crate::limits::PAYLOAD_DIGEST_BYTES;
use crate::signed::{Signed, SignedFields};
use crate::text::Name;

/// Most bytes of a header's or a head's body (fields and signature) in a
/// Record Accounting; both are at most 270 bytes with a 64-byte name.
pub const CHAIN_BODY_BYTES_MAX: usize = 1024;

/// The `previous` of a node's first batch.
pub const CHAIN_START: [u8; PAYLOAD_DIGEST_BYTES] = [0; PAYLOAD_DIGEST_BYTES];

/// SHA-256 of a header's whole body (fields and signature): what the next
/// header's `previous` and the head's `header_digest` carry.
pub fn header_digest(body: &[u8]) -> [u8; PAYLOAD_DIGEST_BYTES] {
    Sha256::digest(body).into()
}

/// The AM's signed statement about one exported batch.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BatchHeader {
    /// The AM node that exported the batch.
    pub node: Name,
    /// The batch id (the file's name).
    pub batch_id: BatchId,
    /// Place in the node's chain: 1 for its first batch, then one more per
    /// batch.
    pub number: u64,
    /// First commit sequence in the file.
    pub first_commit_sequence: u64,
    /// Last commit sequence in the file (inclusive); every sequence from
    /// the first to the last is a row of the file.
    pub last_commit_sequence: u64,
    /// Rows in the file: `last - first + 1`.
    pub record_count: u32,
    /// When the batch was cut, Unix ms.
    pub created_ms: u64,
    /// SHA-256 of the Parquet file's bytes.
    pub file_digest: [u8; PAYLOAD_DIGEST_BYTES],
    /// [`header_digest`] of the node's header number `number - 1`;
    /// [`CHAIN_START`] for number 1.
    pub previous: [u8; PAYLOAD_DIGEST_BYTES],
}

impl SignedFields for BatchHeader {
    const MESSAGE_TYPE: MessageType = MessageType::RECORD_ACCOUNTING;
    const DOMAIN: &'static [u8] = b"acct/1 batch-header\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        self.node.encode(out);
        out.put_slice(&self.batch_id.0);
        out.put_u64(self.number);
        out.put_u64(self.first_commit_sequence);
        out.put_u64(self.last_commit_sequence);
        out.put_u32(self.record_count);
        out.put_u64(self.created_ms);
        out.put_slice(&self.file_digest);
        out.put_slice(&self.previous);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let header = Self {
            node: Name::decode(reader)?,
            batch_id: BatchId(reader.array("batch_id")?),
            number: reader.u64("number")?,
            first_commit_sequence: reader.u64("first_commit_sequence")?,
            last_commit_sequence: reader.u64("last_commit_sequence")?,
            record_count: reader.u32("record_count")?,
            created_ms: reader.u64("created_ms")?,
            file_digest: reader.array("file_digest")?,
            previous: reader.array("previous")?,
        };
        let spans = header
            .last_commit_sequence
            .checked_sub(header.first_commit_sequence)
            .and_then(|span| span.checked_add(1));
        if header.number == 0 || header.first_commit_sequence == 0 || spans != Some(u64::from(header.record_count)) {
            return Err(DecodeError::InvalidValue {
                field: "batch header",
                reason: "number ≥ 1, first commit sequence ≥ 1 and record_count = last - first + 1",
            });
        }
        Ok(header)
    }
}

/// The AM's signed statement of a node's latest exported batch.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ArchiveHead {
    /// The AM node.
    pub node: Name,
    /// The latest batch's `number`.
    pub number: u64,
    /// The latest batch's id.
    pub batch_id: BatchId,
    /// The latest batch's last commit sequence.
    pub last_commit_sequence: u64,
    /// [`header_digest`] of the latest batch's header.
    pub header_digest: [u8; PAYLOAD_DIGEST_BYTES],
    /// When the latest batch was cut, Unix ms.
    pub created_ms: u64,
}

impl SignedFields for ArchiveHead {
    const MESSAGE_TYPE: MessageType = MessageType::RECORD_ACCOUNTING;
    const DOMAIN: &'static [u8] = b"acct/1 archive-head\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        self.node.encode(out);
        out.put_u64(self.number);
        out.put_slice(&self.batch_id.0);
        out.put_u64(self.last_commit_sequence);
        out.put_slice(&self.header_digest);
        out.put_u64(self.created_ms);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let head = Self {
            node: Name::decode(reader)?,
            number: reader.u64("number")?,
            batch_id: BatchId(reader.array("batch_id")?),
            last_commit_sequence: reader.u64("last_commit_sequence")?,
            header_digest: reader.array("header_digest")?,
            created_ms: reader.u64("created_ms")?,
        };
        if head.number == 0 || head.last_commit_sequence == 0 {
            return Err(DecodeError::InvalidValue {
                field: "archive head",
                reason: "number ≥ 1 and last commit sequence ≥ 1",
            });
        }
        Ok(head)
    }
}

/// Sign a batch's header and the head that names it, with the AM node's
/// key.
pub fn sign_chain(
    header: BatchHeader,
    key: &SigningKey,
) -> Result<(Signed<BatchHeader>, Signed<ArchiveHead>), EncodeError> {
    let header = Signed::sign(header, key)?;
    let value = header.value();
    let head = ArchiveHead {
        node: value.node.clone(),
        number: value.number,
        batch_id: value.batch_id,
        last_commit_sequence: value.last_commit_sequence,
        header_digest: header_digest(header.body()),
        created_ms: value.created_ms,
    };
    let head = Signed::sign(head, key)?;
    Ok((header, head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(number: u64, first: u64, last: u64, count: u32) -> BatchHeader {
        BatchHeader {
            node: Name::new("am-1").unwrap(),
            batch_id: BatchId([7; 16]),
            number,
            first_commit_sequence: first,
            last_commit_sequence: last,
            record_count: count,
            created_ms: 1_780_000_000_000,
            file_digest: [1; 32],
            previous: CHAIN_START,
        }
    }

    #[test]
    fn headers_round_trip_and_refuse_inconsistent_ranges() {
        let key = SigningKey::from_seed(&[3; 32]);
        let signed = Signed::sign(header(1, 1, 10, 10), &key).unwrap();
        let decoded = Signed::<BatchHeader>::decode_body(signed.body().clone()).unwrap();
        assert_eq!(decoded.value(), signed.value());
        decoded.verify(&key.public_key()).unwrap();
        assert_eq!(header_digest(signed.body()), header_digest(decoded.body()));
        for bad in [
            header(0, 1, 10, 10),
            header(1, 0, 9, 10),
            header(1, 1, 10, 9),
            header(1, 10, 1, 0),
        ] {
            assert!(Signed::sign(bad, &key).is_err());
        }
    }

    #[test]
    fn a_head_is_not_a_header() {
        let key = SigningKey::from_seed(&[3; 32]);
        let head = Signed::sign(
            ArchiveHead {
                node: Name::new("am-1").unwrap(),
                number: 3,
                batch_id: BatchId([7; 16]),
                last_commit_sequence: 30,
                header_digest: [2; 32],
                created_ms: 1,
            },
            &key,
        )
        .unwrap();
        assert!(Signed::<BatchHeader>::decode_body(head.body().clone()).is_err());
        assert_ne!(BatchHeader::DOMAIN, ArchiveHead::DOMAIN);
    }
}
