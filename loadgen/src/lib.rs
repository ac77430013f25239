//! loadgen: drives a real Accounting Manager with many providers.
//!
//! Today: [`workload`], the reproducible, pre-signed accounting traffic with
//! injected duplicates and bad signatures that loadgen sends (signed ahead of
//! the timed phase, so the client's CPU measures the server, not itself) and
//! that the benchmarks verify. The network driver builds on it.

pub mod workload;
