//! `acct`: the Accounting Manager and the Accounting Storage.
//!
//! Today this crate holds the development PKI (`acct init`) and the config
//! file; the ingest path (`acct serve`) and the export path (`acct storage`)
//! build on it.

pub mod cli;
pub mod config;
pub mod pki;
