//! Every protocol limit, in one place, each with its reason.
//!
//! Decoders check each declared length against these maxima *and* against the
//! bytes actually present before they allocate anything. The relations between
//! limits are checked at compile time at the bottom of this file.

/// Protocol version carried in every frame header. A peer that receives any
/// other value answers with `ErrorCode::UNSUPPORTED_VERSION` and closes.
pub const PROTOCOL_VERSION: u8 = 1;

/// Frame header: version (1) + message type (1) + body length (4, big-endian).
pub const FRAME_HEADER_BYTES: usize = 6;

/// Largest body of any frame: a Record Accounting batch of Parquet bytes.
/// 64 MiB holds ~600k rows at ~100 B/row, more than any sane export batch,
/// while a single frame still fits comfortably in memory.
pub const FRAME_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest body of any message other than Record Accounting. Providers and
/// users never need more; an AM ingest stream refuses anything larger before
/// reading it, so a hostile provider cannot make the AM buffer megabytes.
pub const SMALL_FRAME_BODY_BYTES_MAX: usize = 16 * 1024;

/// Ed25519 signature length.
pub const SIGNATURE_BYTES: usize = 64;
/// Ed25519 public key length.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// HMAC-SHA256 tag length (d3 and the provider's proof).
pub const MAC_BYTES: usize = 32;
/// Session key length (b3/c3): a 256-bit HMAC-SHA256 key.
pub const SESSION_KEY_BYTES: usize = 32;
/// Accounting session ids (b4/c2/d2/e6), request ids (a2/b1) and batch ids.
pub const ID_BYTES: usize = 16;
/// Nonces (a3, the Service Request's nonce).
pub const NONCE_BYTES: usize = 16;
/// e3: the truncated SHA-256 digest of the User Credential's body.
pub const CREDENTIAL_DIGEST_BYTES: usize = 16;
/// SHA-256 digest of a Record Accounting payload.
pub const PAYLOAD_DIGEST_BYTES: usize = 32;

/// Addresses (b2, c1, d1): "host:port", a DNS name or an opaque locator.
/// 253 is the longest DNS name; one length byte covers it.
pub const ADDRESS_BYTES_MAX: usize = 253;

/// User ids carried in the User Credential: the name from the user's
/// certificate (`urn:acct:user:<name>`). Also provider and node names.
pub const NAME_BYTES_MAX: usize = 64;

/// a5: the user's X.509 certificate, DER. An Ed25519 certificate from the
/// operator's CA is ~400-700 bytes; 4 KiB leaves room for extensions while
/// keeping a credential request well under `SMALL_FRAME_BODY_BYTES_MAX`.
pub const CERTIFICATE_BYTES_MAX: usize = 4096;

/// e5: at most this many named custom counters per accounting message.
/// Bounds the per-message decode work and the Parquet row width.
pub const CUSTOM_COUNTERS_MAX: usize = 16;

/// e5: custom counter names are 1..=32 bytes of `[a-z0-9_.-]`.
pub const COUNTER_NAME_BYTES_MAX: usize = 32;

/// Entries in one Accounting Ack frame. The AM acks per commit group and
/// splits a larger group over several frames; 512 entries of 25 bytes fit a
/// small frame (checked below).
pub const ACK_ENTRIES_MAX: usize = 512;

/// Bytes of one Accounting Ack entry: session id + sequence + status.
pub const ACK_ENTRY_BYTES: usize = ID_BYTES + 8 + 1;

/// Runs in one Admin Audit Report frame: 36 bytes each, so a part fits a
/// small frame (checked below); a longer answer is sent in several parts.
pub const AUDIT_RUNS_PER_FRAME_MAX: usize = 400;

/// Services in one Service List frame; a longer list is sent in parts
/// (checked below against the largest entry).
pub const SERVICE_LIST_ENTRIES_PER_FRAME_MAX: usize = 32;

/// Free-text detail in an Error message: for humans and logs, never parsed.
pub const ERROR_DETAIL_BYTES_MAX: usize = 256;

/// Minutes in a day: the time-of-day window is expressed in UTC minutes.
pub const MINUTES_PER_DAY: u16 = 1440;

// Relations between limits, checked when the crate compiles.
const _: () = assert!(FRAME_BODY_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(SMALL_FRAME_BODY_BYTES_MAX < FRAME_BODY_BYTES_MAX);
const _: () = assert!(2 + ACK_ENTRIES_MAX * ACK_ENTRY_BYTES <= SMALL_FRAME_BODY_BYTES_MAX);
const _: () = assert!(1 + 8 + 2 + AUDIT_RUNS_PER_FRAME_MAX * (ID_BYTES + 8 + 8 + 4 + 1) <= SMALL_FRAME_BODY_BYTES_MAX);
const _: () = assert!(AUDIT_RUNS_PER_FRAME_MAX <= u16::MAX as usize);
const _: () = assert!(
    3 + SERVICE_LIST_ENTRIES_PER_FRAME_MAX * (4 + 3 * (1 + NAME_BYTES_MAX) + 1 + ADDRESS_BYTES_MAX + 30)
        <= SMALL_FRAME_BODY_BYTES_MAX
);
const _: () = assert!(ADDRESS_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(COUNTER_NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(CUSTOM_COUNTERS_MAX <= u8::MAX as usize);
const _: () = assert!(ERROR_DETAIL_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(CERTIFICATE_BYTES_MAX <= u16::MAX as usize);
// The largest credential request (certificate, address, fixed fields and
// signature) must fit a small frame.
const _: () = assert!(
    4 + ID_BYTES + NONCE_BYTES + 8 + 1 + ADDRESS_BYTES_MAX + 2 + CERTIFICATE_BYTES_MAX + SIGNATURE_BYTES
        <= SMALL_FRAME_BODY_BYTES_MAX
);
// The largest accounting message must fit a small frame.
const _: () = assert!(
    4 + 1
        + ID_BYTES
        + 8
        + CREDENTIAL_DIGEST_BYTES
        + 6 * 8
        + 1
        + CUSTOM_COUNTERS_MAX * (1 + COUNTER_NAME_BYTES_MAX + 8)
        + SIGNATURE_BYTES
        <= SMALL_FRAME_BODY_BYTES_MAX
);
