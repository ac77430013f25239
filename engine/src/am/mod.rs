//! The Accounting Manager: `acct serve`.
//!
//! Protocol decisions live in [`session`] (admission, policy, dedup state)
//! and [`abuse`] (what a provider may do before it is disconnected); the
//! drivers move data between bounded stages: [`server`] and the modules it
//! names (QUIC connections and streams), [`ingest`] (the pipeline's threads
//! and queues, [`pipeline`] the items between them), [`verify`] (batch
//! signature checks on their own threads), [`commit`] (the single RocksDB
//! writer) and [`store`] (the RocksDB layout). docs/architecture.md draws
//! the pipeline and its bounds, with a map of the code.

pub mod abuse;
mod admin;
pub mod cluster;
pub mod codes;
pub mod commit;
mod connection;
mod context;
pub mod credentials;
pub mod export;
mod frames;
pub mod gate;
pub mod handshakes;
pub mod ingest;
mod issue;
pub mod penalty;
pub mod pipeline;
mod provider_stream;
pub mod receipts;
pub mod server;
pub mod session;
pub mod shed;
mod slots;
pub mod store;
mod udp_watch;
pub mod user;
pub mod verify;
