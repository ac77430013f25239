//! Session receipts: the AM's signed statement of what it holds for one
//! session (docs/protocol.md 4.20, 4.21).
//!
//! - [`SessionReceipt`] (`0x12`, AM → SP and AM → User): the stored
//!   messages' count, highest sequence, whether the Final is stored, the
//!   sums of the usage fields, and [`ReceiptDigest`], which commits to
//!   exactly the stored messages in the order the AM stored them. Signed by
//!   the AM node that holds the session.
//! - [`ReceiptRequest`] (`0x13`, User or SP → AM, on a user connection):
//!   authenticated with the session key (b3 = c3), which only the user,
//!   the provider and the AM hold.
//!
//! The digest is a hash chain in commit order: `d₀` = 32 zero bytes,
//! `dᵢ = SHA-256("acct/1 receipt-chain\0" ‖ dᵢ₋₁ ‖ sequence (u64) ‖
//! SHA-256(signed fields of message i))`. The AM keeps it up to date with
//! each stored message (32 bytes of state per session; one SHA-256 of the
//! message, on a verifier thread, and one of 85 bytes); an auditor
//! recomputes it from the archive's rows of the session in
//! `commit_sequence` order. A chain, not a Merkle tree: a receipt is checked
//! against the whole session, and the running state fits in the dedup
//! marker the AM writes with every in-order message anyway.

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};

use crate::codec::Reader;
use crate::error::DecodeError;
use crate::frame::MessageType;
use crate::ids::{ServiceId, SessionId};
use crate::signed::{MacedFields, SignedFields};
use crate::text::Name;

/// Domain of each step of the receipt digest.
pub const RECEIPT_CHAIN_DOMAIN: &[u8] = b"acct/1 receipt-chain\0";

/// The running digest of a session's stored messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct ReceiptDigest(pub [u8; 32]);

impl ReceiptDigest {
    /// The digest once the message with `sequence` and `signed_fields` (the
    /// Accounting's fields as received, without the signature) is stored.
    pub fn then(&self, sequence: u64, signed_fields: &[u8]) -> Self {
        self.then_leaf(sequence, &Sha256::digest(signed_fields).into())
    }

    /// [`Self::then`] with the SHA-256 of the signed fields already made.
    pub fn then_leaf(&self, sequence: u64, leaf: &[u8; 32]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(RECEIPT_CHAIN_DOMAIN);
        hasher.update(self.0);
        hasher.update(sequence.to_be_bytes());
        hasher.update(leaf);
        Self(hasher.finalize().into())
    }
}

/// The sums of a session's usage fields over its stored messages; each
/// saturates at 2⁶⁴ − 1 (a sum at that value means "at least").
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct UsageSums {
    /// e5 `units`.
    pub units: u64,
    /// e5 `bytes_up`.
    pub bytes_up: u64,
    /// e5 `bytes_down`.
    pub bytes_down: u64,
    /// e5 `duration_ms`.
    pub duration_ms: u64,
    /// The `requests` custom counter.
    pub requests: u64,
}

/// 4.20: what the AM holds for one session, signed by the AM node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionReceipt {
    /// The AM node that holds the session and signs.
    pub node: Name,
    /// b4/c2/e6.
    pub session_id: SessionId,
    /// The provider the session was issued to.
    pub provider: Name,
    /// The user it bills.
    pub user_id: Name,
    /// The service.
    pub service_id: ServiceId,
    /// When the AM signed this receipt, Unix ms.
    pub issued_ms: u64,
    /// Accounting messages stored.
    pub message_count: u64,
    /// Highest sequence stored (0: none).
    pub highest_sequence: u64,
    /// Whether the Final Accounting is stored (then no other message will be).
    pub final_stored: bool,
    /// The sums of the usage fields.
    pub sums: UsageSums,
    /// The digest of the stored messages, in the order the AM stored them.
    pub digest: ReceiptDigest,
}

impl SignedFields for SessionReceipt {
    const MESSAGE_TYPE: MessageType = MessageType::SESSION_RECEIPT;
    const DOMAIN: &'static [u8] = b"acct/1 session-receipt\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        self.node.encode(out);
        out.put_slice(&self.session_id.0);
        self.provider.encode(out);
        self.user_id.encode(out);
        out.put_u32(self.service_id.0);
        out.put_u64(self.issued_ms);
        out.put_u64(self.message_count);
        out.put_u64(self.highest_sequence);
        out.put_u8(u8::from(self.final_stored));
        out.put_u64(self.sums.units);
        out.put_u64(self.sums.bytes_up);
        out.put_u64(self.sums.bytes_down);
        out.put_u64(self.sums.duration_ms);
        out.put_u64(self.sums.requests);
        out.put_slice(&self.digest.0);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            node: Name::decode(reader)?,
            session_id: SessionId(reader.array("session_id")?),
            provider: Name::decode(reader)?,
            user_id: Name::decode(reader)?,
            service_id: ServiceId(reader.u32("service_id")?),
            issued_ms: reader.u64("issued_ms")?,
            message_count: reader.u64("message_count")?,
            highest_sequence: reader.u64("highest_sequence")?,
            final_stored: reader.bool("final_stored")?,
            sums: UsageSums {
                units: reader.u64("units")?,
                bytes_up: reader.u64("bytes_up")?,
                bytes_down: reader.u64("bytes_down")?,
                duration_ms: reader.u64("duration_ms")?,
                requests: reader.u64("requests")?,
            },
            digest: ReceiptDigest(reader.array("digest")?),
        })
    }
}

/// 4.21: the user or the provider asks for a session's receipt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReceiptRequest {
    /// The session.
    pub session_id: SessionId,
}

impl MacedFields for ReceiptRequest {
    const MESSAGE_TYPE: MessageType = MessageType::RECEIPT_REQUEST;
    const DOMAIN: &'static [u8] = b"acct/1 receipt-request\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        out.put_slice(&self.session_id.0);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            session_id: SessionId(reader.array("session_id")?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ed25519::SigningKey;
    use crate::ids::SessionKey;
    use crate::signed::{Maced, Signed};

    #[test]
    fn the_digest_depends_on_every_message_and_its_order() {
        let start = ReceiptDigest::default();
        let one = start.then(1, b"first").then(2, b"second");
        assert_eq!(one, start.then(1, b"first").then(2, b"second"));
        assert_ne!(one, start.then(2, b"second").then(1, b"first"));
        assert_ne!(one, start.then(1, b"first").then(2, b"Second"));
        assert_ne!(one, start.then(1, b"first").then(3, b"second"));
        assert_ne!(one, start.then(1, b"first"));
    }

    #[test]
    fn receipts_and_requests_round_trip() {
        let key = SigningKey::from_seed(&[5; 32]);
        let receipt = SessionReceipt {
            node: Name::new("am-1").unwrap(),
            session_id: SessionId([1; 16]),
            provider: Name::new("provider-0001").unwrap(),
            user_id: Name::new("user-0001").unwrap(),
            service_id: ServiceId(1),
            issued_ms: 7,
            message_count: 3,
            highest_sequence: 3,
            final_stored: true,
            sums: UsageSums {
                units: 10,
                ..UsageSums::default()
            },
            digest: ReceiptDigest([9; 32]),
        };
        let signed = Signed::sign(receipt.clone(), &key).unwrap();
        let decoded = Signed::<SessionReceipt>::decode_body(signed.body().clone()).unwrap();
        assert_eq!(decoded.value(), &receipt);
        decoded.verify(&key.public_key()).unwrap();
        let session_key = SessionKey([4; 32]);
        let request = Maced::seal(
            ReceiptRequest {
                session_id: SessionId([1; 16]),
            },
            &session_key,
        )
        .unwrap();
        let decoded = Maced::<ReceiptRequest>::decode_body(request.body().clone()).unwrap();
        decoded.verify(&session_key).unwrap();
        assert!(decoded.verify(&SessionKey([5; 32])).is_err());
    }
}
