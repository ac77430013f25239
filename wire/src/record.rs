//! Record Accounting (222, AM → AS) and its Ack (224, AS → AM).

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::chain::{ArchiveHead, BatchHeader, CHAIN_BODY_BYTES_MAX};
use crate::codec::{Reader, put_bytes_u16, put_bytes_u32};
use crate::ed25519::SigningKey;
use crate::error::{DecodeError, EncodeError};
use crate::frame::{MessageType, put_frame};
use crate::ids::BatchId;
use crate::limits::{FRAME_BODY_BYTES_MAX, ID_BYTES, PAYLOAD_DIGEST_BYTES};
use crate::signed::{Signed, SignedFields};
use crate::text::Name;

/// Largest Parquet payload in one Record Accounting: the frame maximum less
/// room for the fixed fields, the node name and the signature.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = FRAME_BODY_BYTES_MAX - 1024;

/// 222: a batch of finished records as one Parquet file, signed by the AM.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordAccounting {
    /// The batch id; a retried batch keeps it.
    pub batch_id: BatchId,
    /// The AM node that exported the batch.
    pub node: Name,
    /// When the batch was cut, Unix ms.
    pub created_ms: u64,
    /// Rows in the Parquet file.
    pub record_count: u32,
    /// SHA-256 of `payload`.
    pub digest: [u8; PAYLOAD_DIGEST_BYTES],
    /// The batch's place in the node's chain, signed by the AM: the AS
    /// keeps it beside the file.
    pub header: Box<Signed<BatchHeader>>,
    /// The node's head once this batch is stored, signed by the AM: the AS
    /// keeps the one with the highest number.
    pub head: Box<Signed<ArchiveHead>>,
    /// The Parquet file.
    pub payload: Bytes,
}

/// What the AM signs for one batch: [`RecordAccounting::sign_batch`].
#[derive(Clone, Debug)]
pub struct BatchToSign {
    /// The batch id.
    pub batch_id: BatchId,
    /// The AM node.
    pub node: Name,
    /// When the batch was cut, Unix ms.
    pub created_ms: u64,
    /// Its number in the node's chain.
    pub number: u64,
    /// Its first commit sequence; the rows hold this one and the next
    /// `record_count - 1`.
    pub first_commit_sequence: u64,
    /// Rows in the file.
    pub record_count: u32,
    /// The digest of the node's previous header (`chain::CHAIN_START` for
    /// number 1).
    pub previous: [u8; PAYLOAD_DIGEST_BYTES],
    /// The Parquet file.
    pub payload: Bytes,
}

impl RecordAccounting {
    /// The Record Accounting of a batch with its header and head, all
    /// signed with the AM node's `key`.
    pub fn sign_batch(batch: BatchToSign, key: &SigningKey) -> Result<Signed<Self>, EncodeError> {
        let digest = Self::digest_of(&batch.payload);
        let last = (batch.first_commit_sequence + u64::from(batch.record_count)).saturating_sub(1);
        let (header, head) = crate::chain::sign_chain(
            BatchHeader {
                node: batch.node.clone(),
                batch_id: batch.batch_id,
                number: batch.number,
                first_commit_sequence: batch.first_commit_sequence,
                last_commit_sequence: last,
                record_count: batch.record_count,
                created_ms: batch.created_ms,
                file_digest: digest,
                previous: batch.previous,
            },
            key,
        )?;
        Signed::sign(
            Self {
                batch_id: batch.batch_id,
                node: batch.node,
                created_ms: batch.created_ms,
                record_count: batch.record_count,
                digest,
                header: Box::new(header),
                head: Box::new(head),
                payload: batch.payload,
            },
            key,
        )
    }

    /// SHA-256 of a payload, as carried in `digest`.
    pub fn digest_of(payload: &[u8]) -> [u8; PAYLOAD_DIGEST_BYTES] {
        Sha256::digest(payload).into()
    }

    /// Whether `digest` is the payload's SHA-256.
    pub fn digest_matches(&self) -> bool {
        Self::digest_of(&self.payload) == self.digest
    }

    /// Whether the header and the head describe this batch: the same node,
    /// batch, time, rows and file digest, and a head naming this header.
    /// Signatures are not checked here.
    pub fn chain_matches(&self) -> Result<(), &'static str> {
        let header = self.header.value();
        let head = self.head.value();
        if header.node != self.node || head.node != self.node {
            return Err("the header or head names another node");
        }
        if header.batch_id != self.batch_id || head.batch_id != self.batch_id {
            return Err("the header or head names another batch");
        }
        if header.created_ms != self.created_ms
            || header.record_count != self.record_count
            || header.file_digest != self.digest
        {
            return Err("the header's time, rows or file digest differ from the batch's");
        }
        if head.number != header.number
            || head.last_commit_sequence != header.last_commit_sequence
            || head.created_ms != header.created_ms
            || head.header_digest != crate::chain::header_digest(self.header.body())
        {
            return Err("the head does not name this batch's header");
        }
        Ok(())
    }
}

impl SignedFields for RecordAccounting {
    const MESSAGE_TYPE: MessageType = MessageType::RECORD_ACCOUNTING;
    const DOMAIN: &'static [u8] = b"acct/1 record-accounting\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        out.reserve(128 + self.payload.len());
        out.put_slice(&self.batch_id.0);
        self.node.encode(out);
        out.put_u64(self.created_ms);
        out.put_u32(self.record_count);
        out.put_slice(&self.digest);
        put_bytes_u16(out, self.header.body());
        put_bytes_u16(out, self.head.body());
        put_bytes_u32(out, &self.payload);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            batch_id: BatchId(reader.array("batch_id")?),
            node: Name::decode(reader)?,
            created_ms: reader.u64("created_ms")?,
            record_count: reader.u32("record_count")?,
            digest: reader.array("digest")?,
            header: Box::new(Signed::decode_body(reader.bytes_u16(CHAIN_BODY_BYTES_MAX, "header")?)?),
            head: Box::new(Signed::decode_body(reader.bytes_u16(CHAIN_BODY_BYTES_MAX, "head")?)?),
            payload: reader.bytes_u32(RECORD_PAYLOAD_BYTES_MAX, "payload")?,
        })
    }
}

/// What the AS did with a batch. A newtype so unknown codes stay representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RecordStatus(pub u8);

impl RecordStatus {
    /// Stored durably now; the AM may delete the batch.
    pub const STORED: Self = Self(0x00);
    /// Stored before with the same bytes; the AM may delete the batch.
    pub const ALREADY_STORED: Self = Self(0x01);
    /// The AS cannot store now (disk, overload); retry later.
    pub const UNAVAILABLE: Self = Self(0x10);
    /// The digest does not match the payload.
    pub const DIGEST_MISMATCH: Self = Self(0x20);
    /// The AM's signature does not verify.
    pub const BAD_SIGNATURE: Self = Self(0x21);
    /// The payload is not a readable Parquet file.
    pub const NOT_PARQUET: Self = Self(0x22);
    /// The batch id is stored with other bytes.
    pub const CONFLICTING_BATCH: Self = Self(0x23);
    /// The batch names another AM node than the certificate that delivered it.
    pub const WRONG_NODE: Self = Self(0x24);
    /// The batch header or the head does not verify under the AM's key, or
    /// does not describe this batch (docs/protocol.md 4.11).
    pub const BAD_HEADER: Self = Self(0x25);

    /// Whether the AM may delete the batch.
    pub fn is_stored(self) -> bool {
        self.0 <= 0x0f
    }

    /// Whether the AM should send the same batch again later.
    pub fn is_retryable(self) -> bool {
        (0x10..=0x1f).contains(&self.0)
    }
}

/// 224: the AS's answer to one Record Accounting.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RecordAck {
    /// The batch answered.
    pub batch_id: BatchId,
    /// The digest the AS stored (or refused).
    pub digest: [u8; PAYLOAD_DIGEST_BYTES],
    /// What became of the batch.
    pub status: RecordStatus,
}

impl RecordAck {
    /// Append this ack as a frame.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        let mut body = [0u8; ID_BYTES + PAYLOAD_DIGEST_BYTES + 1];
        let (batch, rest) = body.split_at_mut(ID_BYTES);
        batch.copy_from_slice(&self.batch_id.0);
        let (digest, status) = rest.split_at_mut(PAYLOAD_DIGEST_BYTES);
        digest.copy_from_slice(&self.digest);
        status.fill(self.status.0);
        put_frame(out, MessageType::RECORD_ACK, &body);
    }

    /// Read the body.
    pub fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            batch_id: BatchId(reader.array("batch_id")?),
            digest: reader.array("digest")?,
            status: RecordStatus(reader.u8("status")?),
        })
    }
}
