//! The Accounting Manager: `acct serve`.
//!
//! Protocol decisions live in [`session`] (admission, policy, dedup state);
//! the drivers move data between bounded stages: [`server`] (QUIC streams),
//! [`verify`] (batch signature checks on their own threads), [`commit`]
//! (the single RocksDB writer) and [`store`] (the RocksDB layout).
//! docs/architecture.md draws the pipeline and its bounds.

pub mod commit;
pub mod credentials;
pub mod export;
pub mod gate;
pub mod ingest;
pub mod penalty;
pub mod pipeline;
pub mod server;
pub mod session;
pub mod store;
pub mod verify;
