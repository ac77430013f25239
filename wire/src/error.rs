//! Errors at the wire boundary: one variant per way bytes can be wrong.

/// Why a value was not signed or sealed: its encoding would be refused by
/// the reader (a bound exceeded, a duplicate counter name), which
/// [`Signed::sign`](crate::Signed::sign) and [`Maced::seal`](crate::Maced::seal)
/// check by decoding it back before they sign. Nothing was signed; the
/// cause is the error the reader would give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not signed: its reader would refuse it ({0})")]
pub struct EncodeError(#[from] pub DecodeError);

/// Why a frame or message could not be decoded. Every malformed input maps to
/// one of these; decoding never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before a field was complete.
    #[error("truncated {field}: needed {needed} bytes, {remaining} remain")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        remaining: usize,
    },
    /// The frame header carries a protocol version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The frame header carries a message type this build does not know.
    #[error("unknown message type 0x{0:02x}")]
    UnknownMessageType(u8),
    /// A frame declares a body longer than allowed for its type or context.
    #[error("frame body of {length} bytes exceeds the maximum of {max} for message type 0x{message_type:02x}")]
    FrameTooLarge {
        /// The message type in the header.
        message_type: u8,
        /// The declared body length.
        length: usize,
        /// The maximum for this type and context.
        max: usize,
    },
    /// A variable-length field declares a length above its maximum.
    #[error("{field} of {length} bytes exceeds the maximum of {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// The declared length.
        length: usize,
        /// The maximum.
        max: usize,
    },
    /// A list declares more entries than allowed (or none where one is required).
    #[error("{field} has {count} entries, allowed {min}..={max}")]
    BadCount {
        /// The list.
        field: &'static str,
        /// The declared count.
        count: usize,
        /// The minimum.
        min: usize,
        /// The maximum.
        max: usize,
    },
    /// A text field is not valid UTF-8 or uses characters outside its alphabet.
    #[error("{field} is not valid text for its alphabet")]
    InvalidText {
        /// The field.
        field: &'static str,
    },
    /// A field holds a value outside its domain.
    #[error("invalid {field}: {reason}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// Bytes remain after the last field of a message.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes {
        /// How many bytes remain.
        count: usize,
    },
}

/// Why a signature or MAC did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// S is not a canonical scalar (S >= L).
    #[error("signature scalar S is not canonical")]
    NonCanonicalScalar,
    /// R is not the encoding of a curve point.
    #[error("signature point R is not a valid point encoding")]
    InvalidR,
    /// The public key is not the encoding of a curve point.
    #[error("public key is not a valid point encoding")]
    InvalidPublicKey,
    /// The public key is a point of small order (refused wherever a party's
    /// key enters: it would verify forged signatures).
    #[error("public key is a point of small order")]
    SmallOrderPublicKey,
    /// The public key's encoding is not the canonical one of its point.
    #[error("public key is not canonically encoded")]
    NonCanonicalPublicKey,
    /// The verification equation does not hold.
    #[error("signature does not verify")]
    Mismatch,
    /// A MAC (d3 or the provider's proof) does not match.
    #[error("MAC does not match")]
    MacMismatch,
}
