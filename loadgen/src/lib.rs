//! loadgen: drives a real Accounting Manager with many providers.
//!
//! - [`workload`]: reproducible, pre-signed accounting traffic with injected
//!   duplicates and bad signatures, used by the benchmarks.
//! - [`settings`], [`plan`], [`drive`], [`report`]: the `loadgen` binary's
//!   parts: the command line; identities, sessions and messages signed ahead;
//!   the timed phase over QUIC; and the JSON, summary and HTML reports.
//! - [`records`]: the messages of a run as a file, for the benchmark
//!   harness's other systems.

pub mod cluster;
pub mod drive;
pub mod plan;
pub mod records;
pub mod report;
pub mod settings;
pub mod workload;
