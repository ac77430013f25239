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

/// An in-process ingest pipeline (the real verifiers, committer and RocksDB
/// in a temp folder) with sessions open for `providers` providers, 16 each,
/// and the means to make signed messages for them. Shared by the pipeline
/// benchmark and `pipeline_profile`.
pub struct IngestFixture {
    /// The running pipeline.
    pub ingest: acct::am::ingest::Ingest,
    /// One connection per provider, as the AM would hold it.
    pub connections: Vec<std::sync::Arc<acct::am::pipeline::ProviderConnection>>,
    sessions: Vec<(
        usize,
        std::sync::Arc<acct::am::session::SessionInfo>,
        peer::provider::ProviderSession,
    )>,
    /// Runs the async parts (opening sessions, collecting acks).
    pub runtime: tokio::runtime::Runtime,
    _folder: tempfile::TempDir,
}

/// One message ready for the pipeline: provider index, message.
pub type FixtureMessage = (usize, wire::Signed<wire::Accounting>);

/// Sessions per provider in an [`IngestFixture`].
pub const FIXTURE_SESSIONS_PER_PROVIDER: usize = 16;

impl IngestFixture {
    /// Start a pipeline with `settings` and open the sessions.
    pub fn new(providers: usize, settings: &acct::config::IngestConfig) -> anyhow::Result<Self> {
        use wire::{
            Address, DataFields, Name, Policy, ServiceId, SessionId, SessionKey, Signed, SigningKey, TimeOfDay,
            UserCredential,
        };
        let folder = tempfile::tempdir()?;
        let store = std::sync::Arc::new(acct::am::store::Store::open(folder.path())?);
        let ingest = acct::am::ingest::Ingest::start(store, settings)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
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
        let mut connections = Vec::with_capacity(providers);
        let mut sessions = Vec::with_capacity(providers * FIXTURE_SESSIONS_PER_PROVIDER);
        for provider in 0..providers {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(provider as u64 + 1).to_le_bytes());
            let key = SigningKey::from_seed(&seed);
            let name = Name::new(format!("provider-{provider:04}"))?;
            connections.push(acct::am::pipeline::ProviderConnection::new(
                name.clone(),
                key.public_key(),
            ));
            for index in 0..FIXTURE_SESSIONS_PER_PROVIDER {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(provider as u64).to_be_bytes());
                id[8] = index as u8;
                let credential = Signed::sign(
                    UserCredential {
                        session_id: SessionId(id),
                        service_id: ServiceId(1),
                        user_id: Name::new(format!("user-{index}"))?,
                        user_address: Address::new("127.0.0.1:1")?,
                        session_key: SessionKey([7; 32]),
                        policy,
                    },
                    &am,
                )?;
                let info = acct::am::session::SessionInfo::new(name.clone(), credential.clone(), now);
                runtime
                    .block_on(ingest.open_session(info.clone()))
                    .map_err(anyhow::Error::msg)?;
                let session = peer::provider::ProviderSession::accept(credential, &am.public_key(), key.clone())?;
                sessions.push((provider, info, session));
            }
        }
        Ok(Self {
            ingest,
            connections,
            sessions,
            runtime,
            _folder: folder,
        })
    }

    /// Drain and stop the pipeline, then remove its folder.
    pub fn shutdown(self) {
        self.ingest.shutdown();
    }

    /// `count` fresh signed Interim Accounting messages, round-robin over the
    /// sessions (units, bytes up and down, duration, interval).
    pub fn messages(&mut self, count: usize) -> anyhow::Result<Vec<FixtureMessage>> {
        let now = acct::clock::now_ms();
        let sessions = self.sessions.len().max(1);
        let mut out = Vec::with_capacity(count);
        for index in 0..count {
            let Some((provider, _, session)) = self.sessions.get_mut(index % sessions) else {
                anyhow::bail!("the fixture has no sessions");
            };
            let usage = wire::Usage {
                units: Some(1),
                bytes_up: Some(1200),
                bytes_down: Some(48_000),
                duration_ms: Some(60_000),
                interval_ms: Some((now - 60_000, now)),
                custom: Vec::new(),
            };
            let message = session.account(wire::AccountingKind::INTERIM, usage)?;
            // The fixture never feeds acks back: forget the message at once so
            // the provider's bounded backlog never fills.
            let _ = session.on_ack(&wire::AckEntry {
                message_id: message.value().message_id(),
                status: wire::AckStatus::STORED,
            });
            out.push((*provider, message));
        }
        Ok(out)
    }
}

/// Messages a benchmark feeder hands to the verify queue at once, as a
/// provider stream does with the messages of one read.
pub const FEED_BATCH: usize = 64;

/// Where the answers to the fixture's messages go: one channel per provider
/// connection, as each provider stream in the AM has its own.
pub struct Replies {
    /// Indexed like the fixture's connections.
    pub senders: Vec<acct::am::pipeline::AckSender>,
    receivers: Vec<tokio::sync::mpsc::Receiver<acct::am::pipeline::Answers>>,
}

impl Replies {
    /// Channels for `providers` connections, each with room for `capacity`
    /// sends (the benchmark has no in-flight bound: room for every message).
    pub fn new(providers: usize, capacity: usize) -> Self {
        let (senders, receivers) = (0..providers.max(1))
            .map(|_| tokio::sync::mpsc::channel(capacity.max(1)))
            .unzip();
        Self { senders, receivers }
    }

    /// Wait until every sender is gone (the feeder's and the pipeline's),
    /// counting the answers; any answer but STORED is an error.
    pub async fn stored(self) -> anyhow::Result<usize> {
        drop(self.senders);
        let tasks: Vec<_> = self
            .receivers
            .into_iter()
            .map(|mut receiver| {
                tokio::spawn(async move {
                    let mut stored = 0usize;
                    let mut entries = Vec::new();
                    while let Some(answers) = receiver.recv().await {
                        entries.clear();
                        answers.append_to(&mut entries);
                        for entry in &entries {
                            anyhow::ensure!(
                                entry.status == wire::AckStatus::STORED,
                                "unexpected answer {:?}",
                                entry.status
                            );
                            stored += 1;
                        }
                    }
                    Ok(stored)
                })
            })
            .collect();
        let mut stored = 0;
        for task in tasks {
            stored += task.await??;
        }
        Ok(stored)
    }
}

/// Feed `work` to `queue` in batches of [`FEED_BATCH`] (blocking: waits for
/// room like a stream does), on the calling thread; each message's answer
/// goes to its provider's channel in `replies`.
pub fn feed(
    queue: &acct::am::ingest::VerifyQueue,
    connections: &[std::sync::Arc<acct::am::pipeline::ProviderConnection>],
    work: Vec<FixtureMessage>,
    replies: &[acct::am::pipeline::AckSender],
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut batch = Vec::with_capacity(FEED_BATCH);
    let mut work = work.into_iter().peekable();
    while work.peek().is_some() {
        batch.extend(
            work.by_ref()
                .take(FEED_BATCH)
                .map(|item| pending(connections, item, replies)),
        );
        runtime
            .block_on(queue.submit(std::mem::take(&mut batch), std::time::Duration::from_secs(3600)))
            .map_err(|(_, status)| anyhow::anyhow!("the verify queue refused a batch: {status:?}"))?;
    }
    Ok(())
}

/// The pipeline item for a fixture message from `connections`, answered on
/// its provider's channel in `replies`.
pub fn pending(
    connections: &[std::sync::Arc<acct::am::pipeline::ProviderConnection>],
    item: FixtureMessage,
    replies: &[acct::am::pipeline::AckSender],
) -> acct::am::pipeline::Admitted {
    let (provider, message) = item;
    acct::am::pipeline::Admitted {
        message,
        connection: connections[provider % connections.len().max(1)].clone(),
        received_ms: acct::clock::now_ms(),
        reply: replies[provider % replies.len().max(1)].clone(),
    }
}

/// What the harness's clients for other systems (PostgreSQL, JetStream)
/// share: the records split over connections, and the report they print.
pub mod other {
    use loadgen::records::Record;

    /// Split `records` over `parts` connections by provider (a provider's
    /// records stay on one connection and keep their order, as on the AM).
    pub fn split(records: Vec<Record>, parts: usize) -> Vec<Vec<Record>> {
        let parts = parts.max(1);
        let mut out: Vec<Vec<Record>> = (0..parts)
            .map(|_| Vec::with_capacity(records.len() / parts + 1))
            .collect();
        for record in records {
            out[record.provider as usize % parts].push(record);
        }
        out
    }

    /// One connection's outcome: an ack latency (ms) per fresh record
    /// stored, and how many duplicates the system recognised.
    #[derive(Default)]
    pub struct Outcome {
        /// Ack latency of each fresh record, ms.
        pub latencies_ms: Vec<f64>,
        /// Records the system answered as already stored.
        pub duplicates: u64,
    }

    /// Run `client` on `connections` tasks at once, each with its share of
    /// `records` (by [`split`]) and the instant `seconds` from now at which
    /// to stop sending; then the [`report`] of what they stored.
    pub async fn drive<A, F, Fut>(
        args: std::sync::Arc<A>,
        records: Vec<Record>,
        connections: usize,
        seconds: u64,
        client: F,
        extra: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value>
    where
        A: Send + Sync + 'static,
        F: Fn(std::sync::Arc<A>, Vec<Record>, std::time::Instant) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Outcome>> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let until = started + std::time::Duration::from_secs(seconds);
        let tasks: Vec<_> = split(records, connections)
            .into_iter()
            .map(|share| tokio::spawn(client(args.clone(), share, until)))
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await??);
        }
        Ok(report(outcomes, started.elapsed().as_secs_f64(), extra))
    }

    /// The JSON line every client prints: fresh records stored per second
    /// (from the start to the last answer) and the ack latency quantiles.
    pub fn report(outcomes: Vec<Outcome>, seconds: f64, extra: serde_json::Value) -> serde_json::Value {
        let duplicates: u64 = outcomes.iter().map(|outcome| outcome.duplicates).sum();
        let mut latencies: Vec<f64> = outcomes.into_iter().flat_map(|outcome| outcome.latencies_ms).collect();
        latencies.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        let mut out = serde_json::json!({
            "stored": latencies.len(),
            "duplicates": duplicates,
            "seconds": seconds,
            "msgs_per_s": latencies.len() as f64 / seconds.max(1e-9),
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
            "p99_9_ms": pick(0.999),
        });
        if let (Some(out), serde_json::Value::Object(extra)) = (out.as_object_mut(), extra) {
            out.extend(extra);
        }
        out
    }
}
