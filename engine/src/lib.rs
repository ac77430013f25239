//! `acct`: the Accounting Manager and the Accounting Storage.
//!
//! - [`am`]: the Accounting Manager's ingest path (`acct serve`).
//! - [`storage`]: the Accounting Storage (`acct storage`, and embedded).
//! - [`tls`]: TLS 1.3 server configs for QUIC.
//! - The PKI (`acct init`) is the `pki` crate.
//! - [`config`]: the config file.
//! - [`cli`]: the command line; `main.rs` only dispatches.

pub mod am;
pub mod background;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deny;
pub mod storage;
pub mod tls;
