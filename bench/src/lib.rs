//! acct's benchmarks. The criterion benchmarks per stage live in `benches/`
//! (run `cargo bench -p bench`); figures go to docs/performance.md.

use loadgen::workload::{Workload, WorkloadSpec};

/// A fault-free workload of at least `count` accounting messages from
/// `providers` providers, one session each, messages interleaved across
/// providers as they would arrive at the AM.
pub fn workload(providers: usize, count: usize) -> Workload {
    let providers = providers.max(1);
    let spec = WorkloadSpec {
        providers,
        sessions_per_provider: 1,
        messages_per_session: count.div_ceil(providers).max(1) as u64,
        duplicate_ratio: 0.0,
        bad_signature_ratio: 0.0,
        seed: 0xacc7,
    };
    Workload::generate(&spec).unwrap_or_else(|error| panic!("benchmark workload: {error}"))
}
