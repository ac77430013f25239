//! The Error message: a typed reason code and a short human-readable detail.

use bytes::{BufMut, BytesMut};

use crate::codec::{Reader, put_bytes_u16};
use crate::error::DecodeError;
use crate::frame::{MessageType, put_frame};
use crate::limits::ERROR_DETAIL_BYTES_MAX;

/// An error code. A newtype so unknown codes stay representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// A frame could not be decoded; the stream is closed after this.
    pub const MALFORMED_FRAME: Self = Self(1);
    /// A frame declared a body over the limit; the stream is closed.
    pub const FRAME_TOO_LARGE: Self = Self(2);
    /// The frame's protocol version is not spoken here.
    pub const UNSUPPORTED_VERSION: Self = Self(3);
    /// The frame's message type is unknown.
    pub const UNKNOWN_MESSAGE_TYPE: Self = Self(4);
    /// A valid message that this peer does not accept in this context.
    pub const UNEXPECTED_MESSAGE: Self = Self(5);
    /// The peer is not authenticated for this operation.
    pub const UNAUTHENTICATED: Self = Self(6);
    /// Overloaded: retry later.
    pub const BUSY: Self = Self(7);
    /// Out of disk space: retry later.
    pub const OUT_OF_SPACE: Self = Self(8);
    /// The provider of the requested service is not connected to the AM.
    pub const PROVIDER_UNAVAILABLE: Self = Self(9);
    /// The user's certificate or signature (a4/a5) is not acceptable.
    pub const CREDENTIAL_REFUSED: Self = Self(10);
    /// A request id or nonce was seen before, or the request is too old.
    pub const REPLAYED_REQUEST: Self = Self(11);
    /// The requested service is not in the AM's service list.
    pub const UNKNOWN_SERVICE: Self = Self(12);
    /// The peer is shutting down: reconnect and retry.
    pub const SHUTTING_DOWN: Self = Self(13);
    /// A bug or broken invariant on the sender's side.
    pub const INTERNAL: Self = Self(14);
    /// The session named by a Service Request is unknown to the provider, or
    /// its MAC (d3) does not verify.
    pub const SESSION_REFUSED: Self = Self(15);
    /// A receipt was asked for a session whose messages this AM stored
    /// partly before it kept receipts: it cannot state them all.
    pub const RECEIPT_UNAVAILABLE: Self = Self(16);
}

/// A typed error sent to the peer.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ErrorMessage {
    /// The reason.
    pub code: ErrorCode,
    /// Detail for humans, at most 256 bytes of UTF-8; never parsed.
    pub detail: String,
}

impl ErrorMessage {
    /// An error with `detail` cut to the limit at a character boundary.
    pub fn new(code: ErrorCode, detail: &str) -> Self {
        Self {
            code,
            detail: cut(detail).to_owned(),
        }
    }

    /// Append this error as a frame; a detail over the limit is cut at a
    /// character boundary.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        let detail = cut(&self.detail);
        let mut body = BytesMut::with_capacity(4 + detail.len());
        body.put_u16(self.code.0);
        put_bytes_u16(&mut body, detail.as_bytes());
        put_frame(out, MessageType::ERROR, &body);
    }

    /// Read the body.
    pub fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            code: ErrorCode(reader.u16("error code")?),
            detail: reader.text_u16(ERROR_DETAIL_BYTES_MAX, "error detail")?,
        })
    }
}

/// `detail` cut to `ERROR_DETAIL_BYTES_MAX` at a character boundary.
fn cut(detail: &str) -> &str {
    let mut end = detail.len().min(ERROR_DETAIL_BYTES_MAX);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    detail.get(..end).unwrap_or_default()
}
