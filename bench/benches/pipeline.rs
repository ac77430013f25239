//! The AM's ingest pipeline in process, from decoded signed messages to
//! durable acks (verifier threads, committer, RocksDB with synced WAL; no
//! QUIC), next to the ceiling: batch verification alone of the same
//! messages on all cores. Run: `cargo bench -p bench --bench pipeline`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use acct::am::ingest::Ingest;
use acct::am::pipeline::{Pending, ProviderConnection};
use acct::am::session::SessionInfo;
use acct::am::store::Store;
use acct::config::IngestConfig;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use peer::provider::ProviderSession;
use tokio::sync::mpsc;
use wire::{
    AccountingKind, Address, DataFields, Name, Policy, ServiceId, SessionId, SessionKey, Signed, SigningKey, TimeOfDay,
    Usage, UserCredential,
};

const PROVIDERS: usize = 64;
/// The pipeline's default verification batch, used for the ceiling too: the
/// fastest batch size measured (docs/performance.md).
const VERIFY_BATCH: usize = 1024;
const SESSIONS_PER_PROVIDER: usize = 16;
/// Messages per criterion iteration: large enough that the pipeline's
/// fill and drain at the ends of an iteration are a small part of it.
const CHUNK: usize = 32_768;

struct Fixture {
    ingest: Ingest,
    connections: Vec<Arc<ProviderConnection>>,
    sessions: Vec<(usize, Arc<SessionInfo>, ProviderSession)>,
    _folder: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let folder = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(folder.path()).unwrap());
    let settings = IngestConfig {
        verify_threads: std::thread::available_parallelism().map_or(1, usize::from),
        verify_batch_messages_max: VERIFY_BATCH,
        ..IngestConfig::default()
    };
    let ingest = Ingest::start(store, &settings).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let am = SigningKey::from_seed(&[0xa1; 32]);
    let now = acct::clock::now_ms();
    let policy = Policy {
        valid_from_ms: now - 3_600_000,
        valid_until_ms: now + 24 * 3_600_000,
        time_of_day: TimeOfDay::ANY,
        requests_max: 0,
        address_change_allowed: true,
        required_data: DataFields::UNITS,
        interim_interval_max_s: 0,
    };
    let mut connections = Vec::new();
    let mut sessions = Vec::new();
    for provider in 0..PROVIDERS {
        let key = SigningKey::from_seed(&[provider as u8 + 1; 32]);
        let name = Name::new(format!("provider-{provider:04}")).unwrap();
        connections.push(ProviderConnection::new(name.clone(), key.public_key()));
        for index in 0..SESSIONS_PER_PROVIDER {
            let mut id = [0u8; 16];
            id[0] = provider as u8;
            id[1] = index as u8;
            let credential = Signed::sign(
                UserCredential {
                    session_id: SessionId(id),
                    service_id: ServiceId(1),
                    user_id: Name::new(format!("user-{index}")).unwrap(),
                    user_address: Address::new("127.0.0.1:1").unwrap(),
                    session_key: SessionKey([7; 32]),
                    policy,
                },
                &am,
            )
            .unwrap();
            let info = SessionInfo::new(name.clone(), credential.clone(), now);
            runtime.block_on(ingest.open_session(info.clone())).unwrap();
            let session = ProviderSession::accept(credential, &am.public_key(), key.clone()).unwrap();
            sessions.push((provider, info, session));
        }
    }
    Fixture {
        ingest,
        connections,
        sessions,
        _folder: folder,
        runtime,
    }
}

/// `count` fresh messages, round-robin over sessions (signing is not timed).
fn messages(fixture: &mut Fixture, count: usize) -> Vec<(usize, Arc<SessionInfo>, Signed<wire::Accounting>)> {
    let now = acct::clock::now_ms();
    let sessions = fixture.sessions.len();
    (0..count)
        .map(|index| {
            let (provider, info, session) = &mut fixture.sessions[index % sessions];
            let usage = Usage {
                units: Some(1),
                bytes_up: Some(1200),
                bytes_down: Some(48_000),
                duration_ms: Some(60_000),
                interval_ms: Some((now - 60_000, now)),
                custom: Vec::new(),
            };
            let message = session.account(AccountingKind::INTERIM, usage).unwrap();
            // The benchmark never reads acks back into the session: forget it.
            let _ = session.on_ack(&wire::AckEntry {
                message_id: message.value().message_id(),
                status: wire::AckStatus::STORED,
            });
            (*provider, info.clone(), message)
        })
        .collect()
}

/// Messages signed before measuring, so that signing never shares the CPU
/// with a timed iteration; refilled (untimed) if criterion asks for more.
struct Pool {
    messages: Vec<(usize, Arc<SessionInfo>, Signed<wire::Accounting>)>,
}

impl Pool {
    fn take(
        &mut self,
        fixture: &mut Fixture,
        count: usize,
    ) -> Vec<(usize, Arc<SessionInfo>, Signed<wire::Accounting>)> {
        if self.messages.len() < count {
            let more = messages(fixture, count - self.messages.len());
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
    let mut fixture = fixture();
    let mut pool = Pool {
        messages: messages(&mut fixture, POOL_MESSAGES),
    };
    let mut group = c.benchmark_group("ingest");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.bench_function("durable_acks", |b| {
        b.iter_custom(|iters| {
            let batch = pool.take(&mut fixture, CHUNK * iters as usize);
            let total = batch.len();
            let (ack_sender, mut acks) = mpsc::channel(total.max(1));
            let queue = fixture.ingest.verify_queue().clone();
            let connections = fixture.connections.clone();
            let started = Instant::now();
            let feeder = std::thread::spawn(move || {
                for (provider, session, message) in batch {
                    let pending = Pending {
                        message,
                        session,
                        connection: connections[provider].clone(),
                        received_ms: acct::clock::now_ms(),
                        reply: ack_sender.clone(),
                    };
                    queue.send_blocking(pending).unwrap();
                }
            });
            let stored = fixture.runtime.block_on(async {
                let mut stored = 0usize;
                for _ in 0..total {
                    let entry = acks.recv().await.unwrap();
                    assert_eq!(entry.status, wire::AckStatus::STORED);
                    stored += 1;
                }
                stored
            });
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
                                .map(|(provider, _, message)| message.batch_item(&keys[*provider]))
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
