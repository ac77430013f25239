//! Identifiers and small fixed-size values.
//!
//! How each is made (the wire crate has no randomness; callers supply bytes):
//! - [`SessionId`] (b4/c2/d2/e6): 16 bytes: the minting partition's id (2
//!   bytes, big-endian; [`crate::cluster`]) and 14 from the AM's CSPRNG when
//!   it mints the session. Unguessable, so knowing one session id says
//!   nothing of another.
//! - [`RequestId`] (a2/b1): 16 bytes from the User's CSPRNG, fresh per request.
//! - [`MessageId`] (e4): the pair (session id, sequence). The SP numbers the
//!   accounting messages of a session 1, 2, 3, … and never reuses a number, so
//!   the AM deduplicates with a per-session watermark and a small window
//!   instead of an index of every id ever seen.
//! - [`BatchId`]: 16 bytes chosen by the AM's exporter for a Record Accounting
//!   batch; a retried batch keeps its id.

use std::fmt;

use crate::limits::{ID_BYTES, NONCE_BYTES, SESSION_KEY_BYTES};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                for byte in self.0 {
                    write!(f, "{byte:02x}")?;
                }
                write!(f, ")")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for byte in self.0 {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    };
}

id_type!(
    /// An accounting session id (b4, c2, d2, e6).
    SessionId,
    ID_BYTES
);
id_type!(
    /// A Service Credential Request id (a2, echoed as b1).
    RequestId,
    ID_BYTES
);
id_type!(
    /// A Record Accounting batch id.
    BatchId,
    ID_BYTES
);
id_type!(
    /// A random nonce (a3; the Service Request's freshness nonce).
    Nonce,
    NONCE_BYTES
);

/// A service in the AM's service list (a1, e1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct ServiceId(pub u32);

/// The accounting message id (e4): unique within its session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageId {
    /// The accounting session (e6).
    pub session_id: SessionId,
    /// The SP's sequence number within the session, starting at 1.
    pub sequence: u64,
}

/// The session key shared by User and SP (b3/c3): the HMAC-SHA256 key for
/// the Service Request and the SP's proof. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(pub [u8; SESSION_KEY_BYTES]);

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        // Best effort: overwrite the key before the memory is released.
        self.0 = [0; SESSION_KEY_BYTES];
        std::hint::black_box(&mut self.0);
    }
}
