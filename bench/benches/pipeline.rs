//! The AM's ingest pipeline in process, from decoded signed messages to
//! durable acks (verifier threads, committer, RocksDB with synced WAL; no
//! QUIC), next to the ceiling: batch verification alone of the same
//! messages on all cores. Run: `cargo bench -p bench --bench pipeline`.

use std::time::{Duration, Instant};

use acct::config::IngestConfig;
use bench::{FixtureMessage, IngestFixture};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PROVIDERS: usize = 64;
/// The pipeline's default verification batch, used for the ceiling too: the
/// fastest batch size measured (docs/performance.md).
const VERIFY_BATCH: usize = 1024;
/// Messages per criterion iteration: large enough that the pipeline's
/// fill and drain at the ends of an iteration are a small part of it.
const CHUNK: usize = 32_768;

/// Messages signed before measuring, so that signing never shares the CPU
/// with a timed iteration; refilled (untimed) if criterion asks for more.
struct Pool {
    messages: Vec<FixtureMessage>,
}

impl Pool {
    fn take(&mut self, fixture: &mut IngestFixture, count: usize) -> Vec<FixtureMessage> {
        if self.messages.len() < count {
            let more = fixture.messages(count - self.messages.len()).unwrap();
            self.messages.extend(more);
        }
        let keep = self.messages.len() - count;
        self.messages.split_off(keep)
    }
}

/// Messages signed ahead of the measurement (more are signed, untimed,
/// when an iteration needs them).
const POOL_MESSAGES: usize = 4 * CHUNK;

fn pipeline(c: &mut Criterion) {
    let settings = IngestConfig {
        verify_threads: std::thread::available_parallelism().map_or(1, usize::from),
        verify_batch_messages_max: VERIFY_BATCH,
        // The pipeline's own rate: the feeder waits for room, nothing is shed.
        queue_delay_target_ms: 0,
        ..IngestConfig::default()
    };
    let mut fixture = IngestFixture::new(PROVIDERS, &settings).unwrap();
    let mut pool = Pool {
        messages: fixture.messages(POOL_MESSAGES).unwrap(),
    };
    let mut group = c.benchmark_group("ingest");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.bench_function("durable_acks", |b| {
        b.iter_custom(|iters| {
            let batch = pool.take(&mut fixture, CHUNK * iters as usize);
            let total = batch.len();
            let queue = fixture.ingest.verify_queue().clone();
            let connections = fixture.connections.clone();
            let replies = bench::Replies::new(connections.len(), total);
            let senders = replies.senders.clone();
            let started = Instant::now();
            let feeder = std::thread::spawn(move || bench::feed(&queue, &connections, batch, &senders).unwrap());
            let stored = fixture.runtime.block_on(replies.stored()).unwrap();
            let elapsed = started.elapsed();
            feeder.join().unwrap();
            assert_eq!(stored, total);
            elapsed
        })
    });
    group.bench_function("verification_ceiling", |b| {
        b.iter_custom(|iters| {
            let batch = pool.take(&mut fixture, CHUNK * iters as usize);
            let keys: Vec<wire::PublicKey> = fixture.connections.iter().map(|connection| connection.key).collect();
            let threads = std::thread::available_parallelism().map_or(1, usize::from);
            let started = Instant::now();
            std::thread::scope(|scope| {
                for part in batch.chunks(batch.len().div_ceil(threads).max(1)) {
                    let keys = &keys;
                    scope.spawn(move || {
                        for chunk in part.chunks(VERIFY_BATCH) {
                            let items: Vec<_> = chunk
                                .iter()
                                .map(|(provider, message)| message.batch_item(&keys[*provider]))
                                .collect();
                            assert!(wire::verify_batch(&items, &[5; 32]).iter().all(|valid| *valid));
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
