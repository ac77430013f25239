//! `acct`: the Accounting Manager and the Accounting Storage.
//!
//! - [`am`]: the Accounting Manager's ingest path (`acct serve`).
//! - The Accounting Storage (`acct storage`, and embedded) is the `storage`
//!   crate; what both servers share (TLS endpoints, the deny list,
//!   background threads) is the `serving` crate.
//! - The PKI (`acct init`) is the `pki` crate.
//! - [`config`]: the config file.
//! - [`cli`]: the command line; `main.rs` only dispatches.

pub mod am;
pub mod cli;
pub mod clock;
pub mod config;
