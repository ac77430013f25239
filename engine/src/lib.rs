//! `acct`: the Accounting Manager and the Accounting Storage.
//!
//! - [`am`]: the Accounting Manager's ingest path (`acct serve`).
//! - [`pki`]: the development PKI (`acct init`).
//! - [`config`]: the config file.
//! - [`cli`]: the command line; `main.rs` only dispatches.

pub mod am;
pub mod cli;
pub mod clock;
pub mod config;
pub mod pki;
