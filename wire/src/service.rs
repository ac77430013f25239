//! User ↔ provider: the Service Request (210, d1–d3) and the provider's
//! proof that it holds the same session key (211, mutual authentication).
//! Both are authenticated with HMAC-SHA256 keyed by the session key.

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::error::DecodeError;
use crate::frame::MessageType;
use crate::ids::{Nonce, SessionId};
use crate::signed::MacedFields;
use crate::text::Address;

/// 210: the user asks the provider for the service. d3 is the MAC.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ServiceRequest {
    /// d2: the accounting session id.
    pub session_id: SessionId,
    /// d1: the user's address.
    pub user_address: Address,
    /// Fresh per request; the provider's proof echoes it.
    pub nonce: Nonce,
    /// When the user sent the request, Unix ms.
    pub timestamp_ms: u64,
}

impl MacedFields for ServiceRequest {
    const MESSAGE_TYPE: MessageType = MessageType::SERVICE_REQUEST;
    const DOMAIN: &'static [u8] = b"acct/1 service-request\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        out.put_slice(&self.session_id.0);
        self.user_address.encode(out);
        out.put_slice(&self.nonce.0);
        out.put_u64(self.timestamp_ms);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            session_id: SessionId(reader.array("session_id")?),
            user_address: Address::decode(reader)?,
            nonce: Nonce(reader.array("nonce")?),
            timestamp_ms: reader.u64("timestamp_ms")?,
        })
    }
}

/// The provider's verdict on a Service Request. A newtype so unknown codes
/// stay representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ProofStatus(pub u8);

impl ProofStatus {
    /// The request is valid; the service session begins.
    pub const ACCEPTED: Self = Self(0x00);
    /// The credential's lifetime does not cover now.
    pub const EXPIRED: Self = Self(0x20);
    /// Outside the policy's time-of-day window.
    pub const OUTSIDE_TIME_WINDOW: Self = Self(0x21);
    /// The policy's maximum number of requests is used up.
    pub const REQUESTS_EXCEEDED: Self = Self(0x22);
    /// The user's address differs from c1 and the policy forbids a change.
    pub const ADDRESS_CHANGED: Self = Self(0x23);
    /// The request's timestamp is too far from the provider's clock, or its
    /// nonce was seen before.
    pub const STALE: Self = Self(0x24);
}

/// 211: the provider's reply. Its MAC under the same session key proves to
/// the user that the provider received the User Credential from the AM.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ServiceProof {
    /// The session the request named.
    pub session_id: SessionId,
    /// The request's nonce, echoed.
    pub nonce: Nonce,
    /// Accepted, or why not.
    pub status: ProofStatus,
}

impl MacedFields for ServiceProof {
    const MESSAGE_TYPE: MessageType = MessageType::SERVICE_PROOF;
    const DOMAIN: &'static [u8] = b"acct/1 service-proof\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        out.put_slice(&self.session_id.0);
        out.put_slice(&self.nonce.0);
        out.put_u8(self.status.0);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            session_id: SessionId(reader.array("session_id")?),
            nonce: Nonce(reader.array("nonce")?),
            status: ProofStatus(reader.u8("status")?),
        })
    }
}
