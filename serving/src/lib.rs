//! What acct's servers share: the Accounting Manager (`acct serve`) and the
//! Accounting Storage (`acct storage`, or embedded in the AM).
//!
//! - [`tls`]: QUIC server endpoints with TLS 1.3, ALPN `acct/1`, client
//!   certificates from the operator's CA, and stateless-reset keys that
//!   survive a restart; reading who connected.
//! - [`deny`]: the revocation list, re-read from the config file while the
//!   server runs.
//! - [`background`]: threads at a lower CPU priority for bursts of work
//!   (export encoding, the storage's checks and writes).

pub mod background;
pub mod deny;
pub mod tls;
