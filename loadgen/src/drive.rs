//! The timed phase: every provider on its own QUIC connection sends its
//! pre-signed messages on schedule (open loop) or as fast as its window of
//! unanswered messages allows (closed loop), retries what the AM asks it to
//! retry, reconnects and retransmits after a lost connection, injects the
//! planned faults on streams of their own, and records every answer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peer::quic::{AccountingSender, AckReceiver, AmClient, Received};
use tokio::sync::{Notify, Semaphore};
use wire::{AckStatus, MessageId, Signed};

use crate::plan::{Fault, ProviderPlan};
use crate::settings::Settings;

/// Messages in one stream write, at most.
const WRITE_MESSAGES_MAX: usize = 256;
/// Malformed-frame streams in flight per provider, at most.
const MALFORMED_STREAMS_MAX: usize = 2;
/// Latency histograms cover 1 µs to one hour.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// What a message was sent as, and so which answer it must get.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A fresh Interim Accounting: STORED.
    Interim,
    /// A session's Final Accounting: STORED.
    Final,
    /// A retransmission after the ack: DUPLICATE.
    Duplicate,
    /// A corrupted signature: BAD_SIGNATURE.
    BadSignature,
    /// Another provider's session: WRONG_PROVIDER.
    ForeignSession,
    /// Not a frame: an Error.
    Malformed,
}

/// Counts and latencies of the whole run, shared by every provider.
pub struct Shared {
    /// When the timed phase started.
    pub start: Instant,
    /// Messages written to a stream (every class, retries included).
    pub sent: AtomicU64,
    /// Interims and finals answered as stored (STORED or DUPLICATE).
    pub stored: AtomicU64,
    /// Answers that were not the expected one, plus connection losses.
    pub errors: AtomicU64,
    stats: Mutex<Stats>,
}

/// loadgen's maps, hashed with foldhash (seeded per process): several
/// lookups per answer, where SipHash was a visible part of loadgen's CPU,
/// which shares the machine with the AM under test.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Everything recorded, under one lock (taken once per ack frame).
pub struct Stats {
    /// Latency (µs) of interims and finals from their intended send time to
    /// the answer that settled them.
    pub latency: Histogram<u64>,
    /// Latency (µs) of each attempt of an interim or final from when it
    /// was picked up to be written to a stored answer.
    pub attempt_stored: Histogram<u64>,
    /// The same to a "busy, retry" answer.
    pub attempt_busy: Histogram<u64>,
    /// Per second of the run.
    pub timeline: Vec<SecondStats>,
    /// When the timed phase started, ms since the Unix epoch (to line the
    /// timeline up with events outside loadgen, such as an AM restart).
    pub start_unix_ms: u64,
    /// Open loop: how late (µs) loadgen's own scheduler picked each interim
    /// and final up after its scheduled send time. When this is large,
    /// loadgen, not the AM, delayed the messages (loadgen shares the
    /// machine with the AM in the harness).
    pub send_lateness: Histogram<u64>,
    /// Open loop, per second of the scheduled send times: the largest of
    /// those latenesses (µs).
    pub send_lateness_max: Vec<u64>,
    /// Answers by class and status name.
    pub answers: BTreeMap<(Class, String), u64>,
    /// Messages sent by class (first sends, not retries).
    pub sent_by_class: BTreeMap<Class, u64>,
    /// Retransmissions after a retryable answer or a lost connection.
    pub retried: u64,
    /// Connections lost (and re-made) during the run.
    pub connections_lost: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Providers that sent all their signed messages before the end.
    pub exhausted_providers: u64,
    /// Unanswered at the end, by class.
    pub unanswered: BTreeMap<Class, u64>,
    /// Per session: sequences answered as stored (for the audit).
    pub stored_sequences: Map<wire::SessionId, Vec<u64>>,
    /// Stored acks per second of the run, by the partition that holds the
    /// session (the first two bytes of its id).
    pub stored_by_partition: Map<u16, Vec<u64>>,
    /// When the last interim or final was answered.
    pub last_answer: Option<Instant>,
    /// QUIC traffic of every connection, summed when each one ends.
    pub quic: QuicTraffic,
}

/// One second of the run, by when the answers came.
pub struct SecondStats {
    /// Interims and finals answered as stored.
    pub stored: u64,
    /// Their latency from their intended send time (µs).
    pub latency: Histogram<u64>,
    /// The latency of the attempts answered stored, each from its own send.
    pub attempt: Histogram<u64>,
    /// The latency of the attempts answered "busy, retry".
    pub busy: Histogram<u64>,
    /// The earliest intended send time (µs from the start) among the
    /// messages stored (`u64::MAX`: none): a backlog is stored once no
    /// later second has one from before it began.
    pub oldest_intended_us: u64,
}

impl Default for SecondStats {
    fn default() -> Self {
        Self::new()
    }
}

impl SecondStats {
    /// A second with nothing answered yet.
    pub fn new() -> Self {
        Self {
            stored: 0,
            latency: latency_histogram(2),
            attempt: latency_histogram(2),
            busy: latency_histogram(2),
            oldest_intended_us: u64::MAX,
        }
    }
}

/// What the providers' QUIC connections put on the wire and took off it
/// (quinn's connection statistics, summed over connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QuicTraffic {
    /// UDP datagrams sent to the AM.
    pub datagrams_sent: u64,
    /// Send system calls (several datagrams per call with GSO).
    pub send_calls: u64,
    /// UDP datagrams received from the AM (quinn counts a GRO batch as its
    /// length over the segment size, so a short last segment is not counted).
    pub datagrams_received: u64,
    /// Batches of received datagrams handed to the connections (a GRO batch
    /// is one; the endpoint's receive system calls are not per connection).
    pub receive_calls: u64,
    /// ACK frames sent to the AM.
    pub ack_frames_sent: u64,
    /// ACK frames received from the AM.
    pub ack_frames_received: u64,
    /// STREAM frames sent to the AM.
    pub stream_frames_sent: u64,
    /// STREAM frames received from the AM.
    pub stream_frames_received: u64,
    /// Flow-control frames (MAX_DATA, MAX_STREAM_DATA) sent.
    pub flow_control_frames_sent: u64,
    /// Flow-control frames (MAX_DATA, MAX_STREAM_DATA) received.
    pub flow_control_frames_received: u64,
    /// PING frames sent (keep-alives and loss probes).
    pub ping_frames_sent: u64,
    /// PING frames received.
    pub ping_frames_received: u64,
    /// Packets the providers declared lost.
    pub packets_lost: u64,
}

impl QuicTraffic {
    /// Add one connection's statistics.
    pub fn add(&mut self, stats: &quinn::ConnectionStats) {
        self.datagrams_sent += stats.udp_tx.datagrams;
        self.send_calls += stats.udp_tx.ios;
        self.datagrams_received += stats.udp_rx.datagrams;
        self.receive_calls += stats.udp_rx.ios;
        self.ack_frames_sent += stats.frame_tx.acks;
        self.ack_frames_received += stats.frame_rx.acks;
        self.stream_frames_sent += stats.frame_tx.stream;
        self.stream_frames_received += stats.frame_rx.stream;
        self.flow_control_frames_sent += stats.frame_tx.max_data + stats.frame_tx.max_stream_data;
        self.flow_control_frames_received += stats.frame_rx.max_data + stats.frame_rx.max_stream_data;
        self.ping_frames_sent += stats.frame_tx.ping;
        self.ping_frames_received += stats.frame_rx.ping;
        self.packets_lost += stats.path.lost_packets;
    }
}

impl Stats {
    fn new() -> Self {
        Self {
            latency: latency_histogram(3),
            attempt_stored: latency_histogram(3),
            attempt_busy: latency_histogram(3),
            timeline: Vec::new(),
            start_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
            send_lateness: latency_histogram(2),
            send_lateness_max: Vec::new(),
            answers: BTreeMap::new(),
            sent_by_class: BTreeMap::new(),
            retried: 0,
            connections_lost: 0,
            connect_failures: 0,
            exhausted_providers: 0,
            unanswered: BTreeMap::new(),
            stored_sequences: Map::default(),
            stored_by_partition: Map::default(),
            last_answer: None,
            quic: QuicTraffic::default(),
        }
    }
}

impl Shared {
    /// Counters for a run starting now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            sent: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stats: Mutex::new(Stats::new()),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Stats) -> R) -> R {
        let mut stats = self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut stats)
    }

    /// Count failed connection attempts made before the timed phase.
    pub fn add_connect_failures(&self, count: u64) {
        self.with(|stats| stats.connect_failures += count);
    }

    /// Take the recorded figures (after the run).
    pub fn into_stats(self: Arc<Self>) -> Stats {
        match Arc::try_unwrap(self) {
            Ok(shared) => shared
                .stats
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            Err(shared) => {
                let mut stats = shared.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                std::mem::replace(&mut *stats, Stats::new())
            }
        }
    }
}

/// Record how late, at `now`, loadgen picked up messages scheduled at `due`.
fn record_lateness(stats: &mut Stats, start: Instant, now: Instant, due: &[Instant]) {
    for &scheduled in due {
        let late_us = now
            .saturating_duration_since(scheduled)
            .as_micros()
            .min(LATENCY_US_MAX as u128) as u64;
        stats.send_lateness.saturating_record(late_us.max(1));
        // Bounded: one entry per second of the run.
        let second = scheduled.saturating_duration_since(start).as_secs() as usize;
        if stats.send_lateness_max.len() <= second {
            stats.send_lateness_max.resize(second + 1, 0);
        }
        stats.send_lateness_max[second] = stats.send_lateness_max[second].max(late_us);
    }
}

/// A latency histogram (µs, 1 µs to one hour) with `digits` significant digits.
fn latency_histogram(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, digits.clamp(1, 5)).expect("constant histogram bounds are valid")
}

/// The name of an ack status, as reports show it.
pub fn status_name(status: AckStatus) -> String {
    match status {
        AckStatus::STORED => "stored".into(),
        AckStatus::DUPLICATE => "duplicate".into(),
        AckStatus::BUSY => "busy".into(),
        AckStatus::OUT_OF_SPACE => "out_of_space".into(),
        AckStatus::SHUTTING_DOWN => "shutting_down".into(),
        AckStatus::WRONG_PARTITION => "wrong_partition".into(),
        AckStatus::BAD_SIGNATURE => "bad_signature".into(),
        AckStatus::UNKNOWN_SESSION => "unknown_session".into(),
        AckStatus::WRONG_PROVIDER => "wrong_provider".into(),
        AckStatus::SESSION_CLOSED => "session_closed".into(),
        AckStatus::CONFLICTING_DUPLICATE => "conflicting_duplicate".into(),
        AckStatus::MISSING_ACCOUNTING_DATA => "missing_accounting_data".into(),
        AckStatus::SESSION_EXPIRED => "session_expired".into(),
        AckStatus::REQUESTS_EXCEEDED => "requests_exceeded".into(),
        AckStatus::TIMESTAMP_IN_FUTURE => "timestamp_in_future".into(),
        AckStatus::TIMESTAMP_TOO_OLD => "timestamp_too_old".into(),
        AckStatus::CREDENTIAL_MISMATCH => "credential_mismatch".into(),
        AckStatus::SERVICE_MISMATCH => "service_mismatch".into(),
        AckStatus::SEQUENCE_OUT_OF_WINDOW => "sequence_out_of_window".into(),
        AckStatus(other) => format!("status_0x{other:02x}"),
    }
}

/// The answer each class must get.
fn expected(class: Class, status: AckStatus) -> bool {
    match class {
        Class::Interim | Class::Final => status == AckStatus::STORED,
        Class::Duplicate => status == AckStatus::DUPLICATE,
        Class::BadSignature => status == AckStatus::BAD_SIGNATURE,
        Class::ForeignSession => status == AckStatus::WRONG_PROVIDER,
        Class::Malformed => false,
    }
}

/// One provider's plan and moving parts.
struct Provider {
    /// Its home AM (reconnects go there too).
    address: std::net::SocketAddr,
    plan: ProviderPlan,
    state: Mutex<State>,
    /// Signalled when answers free window space or queue work.
    changed: Notify,
    /// Open loop: the sender runs on its schedule, so an answer wakes it
    /// only when it queues work (a retry, a retransmission) or settles the
    /// last outstanding message; a wake per answer would double the task
    /// wakeups per message.
    open_loop: bool,
    /// `--hold-unanswered`: nothing new goes while a write is unanswered.
    hold_unanswered: bool,
    malformed: Arc<Semaphore>,
}

#[derive(Default)]
struct State {
    /// Next interim to send.
    cursor: usize,
    /// Next planned fault to inject.
    next_fault: usize,
    /// Finals sent (after the sending phase).
    finals_sent: usize,
    /// Main stream: message id → (intended send time, when this attempt
    /// was picked up to be written, message index). The latency counts from
    /// the first, the attempt latency (the AM's answer time) from the second.
    inflight: Map<MessageId, (Instant, Instant, usize)>,
    /// Duplicate stream: message ids sent.
    duplicates: Map<MessageId, Instant>,
    /// Fault stream: message id → class.
    faults: Map<MessageId, Class>,
    /// Indices to send again (retryable answer, lost connection), with
    /// their original intended time.
    retry: VecDeque<(usize, Instant)>,
    /// Interim indices to retransmit on the duplicate stream.
    duplicate_queue: VecDeque<usize>,
    /// After "busy, retry": nothing is sent before its end (peer::backoff,
    /// the provider library's rule).
    backoff: peer::backoff::Backoff,
    /// Unanswered messages allowed on the main stream: `--window` in the
    /// closed loop, [`OPEN_LOOP_WINDOW`] in the open loop, halved at each
    /// backoff (peer::backoff::Window).
    window: peer::backoff::Window,
    /// When answers last made room in a full window.
    window_opened: Option<Instant>,
}

/// The open loop's largest window per provider: the AM's default bound on a
/// stream's unanswered messages (`ingest.stream_inflight_messages_max`).
/// Until a backoff halves it, it holds nothing back at any rate the AM
/// keeps up with.
const OPEN_LOOP_WINDOW: usize = 1024;

impl Provider {
    fn message(&self, index: usize) -> &Signed<wire::Accounting> {
        let interims = self.plan.interims.len();
        if index < interims {
            &self.plan.interims[index]
        } else {
            &self.plan.finals[index - interims]
        }
    }

    fn class(&self, index: usize) -> Class {
        if index < self.plan.interims.len() {
            Class::Interim
        } else {
            Class::Final
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Timing of the run.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    /// End of the sending phase.
    send_until: Instant,
    /// End of the wait for answers.
    drain_until: Instant,
}

/// When a provider's messages are due in the open loop: its `index`-th
/// message `offset + index × interval` after the start, `interval` being
/// providers / rate (so the rate in all is the rate asked for) and
/// `offset` index / rate (so the providers take turns). With
/// `--rate-steps`, each phase has its own interval and offset, counted
/// from the phase's start, and the provider's messages fill the phases'
/// slots in turn (the last phase's pace goes on for what comes after).
///
/// The finals keep the same pace, each in the slot after the last interim
/// sent, so that the rate stays the rate to the end. All 5,000 finals of a
/// run at once were a burst of a fraction of a second's load that the open
/// loop never asked for, and they made the whole p99: at 8,000/s, p99 95 ms
/// over the run against 3.5-9.6 ms in each of its seconds 1 to 12. A
/// final whose slot falls past half the drain goes at half the drain, so
/// that a slow rate still leaves time for the answers.
#[derive(Clone)]
struct Schedule {
    start: Instant,
    phases: Vec<Phase>,
    latest_final: Instant,
}

/// One phase of the schedule, for one provider.
#[derive(Clone, Copy)]
struct Phase {
    /// Seconds from the start to the phase's start.
    begin: f64,
    interval: f64,
    offset: f64,
    /// The provider's first message index in this phase.
    first: usize,
    /// Its slots in this phase (the last phase's are unbounded).
    slots: usize,
}

impl Schedule {
    fn new(settings: &Settings, providers: usize, provider_index: usize, clock: Clock) -> Self {
        let mut phases = Vec::new();
        let (mut begin, mut first) = (0.0, 0usize);
        for (rate, seconds) in settings.steps() {
            // Slots j with offset + j × interval inside the phase, counted
            // in whole messages (as the plan shares them out).
            let slots = crate::settings::slots(rate.saturating_mul(seconds), providers, provider_index);
            let rate = rate.max(1) as f64;
            let interval = providers as f64 / rate;
            let offset = provider_index as f64 / rate;
            phases.push(Phase {
                begin,
                interval,
                offset,
                first,
                slots,
            });
            begin += seconds as f64;
            first += slots;
        }
        Self {
            start: clock.start,
            phases,
            latest_final: clock.send_until + (clock.drain_until - clock.send_until) / 2,
        }
    }

    /// When the provider's `index`-th interim is due.
    fn interim(&self, index: usize) -> Instant {
        let last = self.phases.len().saturating_sub(1);
        let phase = self
            .phases
            .iter()
            .enumerate()
            .find(|(k, phase)| *k == last || index < phase.first + phase.slots)
            .map(|(_, phase)| *phase)
            .unwrap_or(Phase {
                begin: 0.0,
                interval: 1.0,
                offset: 0.0,
                first: 0,
                slots: 0,
            });
        let j = index.saturating_sub(phase.first);
        self.start + Duration::from_secs_f64(phase.begin + (phase.offset + j as f64 * phase.interval))
    }

    /// When its `final_index`-th final is due, `interims_sent` interims
    /// having been sent.
    fn final_(&self, interims_sent: usize, final_index: usize) -> Instant {
        self.interim(interims_sent + final_index).min(self.latest_final)
    }
}

/// Attempts per provider to make its first connection.
const CONNECT_ATTEMPTS: u32 = 3;
/// How long one handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one reconnection attempt may take (after a lost connection).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first backoff before a reconnection, and the longest (jittered
/// 0.5-1.5x).
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MOST: Duration = Duration::from_secs(2);

/// Connect every provider before the timed phase, at most
/// `--connect-concurrency` handshakes at once; `progress` counts the
/// providers connected. Returns each provider's connection (None if all
/// its attempts failed) and the number of failed attempts.
pub async fn connect_all(
    settings: &Settings,
    configs: &[quinn::ClientConfig],
    endpoints: &[quinn::Endpoint],
    addresses: &[std::net::SocketAddr],
    progress: Arc<AtomicUsize>,
) -> (Vec<Option<AmClient>>, u64) {
    let handshakes = Arc::new(Semaphore::new(settings.connect_concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, config) in configs.iter().enumerate() {
        let endpoint = endpoints[index % endpoints.len().max(1)].clone();
        let (config, handshakes, progress, address) =
            (config.clone(), handshakes.clone(), progress.clone(), addresses[index]);
        tasks.spawn(async move {
            let mut failures = 0u64;
            for _ in 0..CONNECT_ATTEMPTS {
                let attempt = {
                    let _permit = handshakes.acquire().await;
                    tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        AmClient::connect_with(&endpoint, config.clone(), address),
                    )
                    .await
                };
                if let Ok(Ok(client)) = attempt {
                    progress.fetch_add(1, Ordering::Relaxed);
                    return (index, Some(client), failures);
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (index, None, failures)
        });
    }
    let mut clients: Vec<Option<AmClient>> = (0..configs.len()).map(|_| None).collect();
    let mut failures = 0;
    while let Some(result) = tasks.join_next().await {
        if let Ok((index, client, failed)) = result {
            clients[index] = client;
            failures += failed;
        }
    }
    (clients, failures)
}

/// Run every provider from the clock's start (`shared.start`) on, with the
/// connections made by [`connect_all`]; returns when all are done.
pub async fn run(
    settings: &Settings,
    plans: Vec<ProviderPlan>,
    configs: Vec<quinn::ClientConfig>,
    endpoints: Vec<quinn::Endpoint>,
    addresses: &[std::net::SocketAddr],
    clients: Vec<Option<AmClient>>,
    shared: Arc<Shared>,
) {
    let clock = Clock {
        start: shared.start,
        send_until: shared.start + Duration::from_secs(settings.duration),
        drain_until: shared.start + Duration::from_secs(settings.duration + settings.drain),
    };
    let handshakes = Arc::new(Semaphore::new(settings.connect_concurrency));
    let providers = plans.len();
    let mut tasks = tokio::task::JoinSet::new();
    for ((plan, config), client) in plans.into_iter().zip(configs).zip(clients) {
        let endpoint = endpoints[plan.index % endpoints.len().max(1)].clone();
        let address = addresses[plan.index];
        let provider = Arc::new(Provider {
            address,
            plan,
            state: Mutex::new(State {
                window: peer::backoff::Window::new(if settings.max {
                    settings.window
                } else {
                    OPEN_LOOP_WINDOW
                }),
                ..State::default()
            }),
            changed: Notify::new(),
            open_loop: !settings.max,
            hold_unanswered: settings.hold_unanswered,
            malformed: Arc::new(Semaphore::new(MALFORMED_STREAMS_MAX)),
        });
        let settings = settings.clone();
        let shared = shared.clone();
        let handshakes = handshakes.clone();
        tasks.spawn(async move {
            let context = Context {
                settings: &settings,
                clock,
                shared: &shared,
                providers,
            };
            run_provider(&provider, &context, client, config, endpoint, &handshakes).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// What every provider task shares.
struct Context<'a> {
    settings: &'a Settings,
    clock: Clock,
    shared: &'a Arc<Shared>,
    providers: usize,
}

async fn run_provider(
    provider: &Arc<Provider>,
    context: &Context<'_>,
    mut initial: Option<AmClient>,
    config: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    handshakes: &Semaphore,
) {
    let shared = context.shared;
    // Reconnections back off with jitter; each attempt is short, so that
    // one begun while the AM was down (its Initial unanswered, QUIC's
    // retransmissions backing off to 8 s and more) does not keep the
    // provider away long after the AM is back.
    let mut reconnect = peer::backoff::Backoff::with_bounds(RECONNECT_FIRST, RECONNECT_MOST, None);
    let mut attempt_timeout = HANDSHAKE_TIMEOUT;
    while Instant::now() < context.clock.drain_until {
        let attempt = Instant::now();
        let client = match initial.take() {
            Some(client) => Ok(Ok(client)),
            None => {
                let _permit = handshakes.acquire().await;
                tokio::time::timeout(
                    attempt_timeout,
                    AmClient::connect_with(&endpoint, config.clone(), provider.address),
                )
                .await
            }
        };
        let Ok(Ok(client)) = client else {
            shared.with(|stats| stats.connect_failures += 1);
            shared.errors.fetch_add(1, Ordering::Relaxed);
            let until = reconnect.refused(Instant::now(), attempt);
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            continue;
        };
        reconnect.stored();
        attempt_timeout = RECONNECT_TIMEOUT;
        let done = run_connection(provider, &client, context).await;
        let traffic = client.connection_handle().stats();
        shared.with(|stats| stats.quic.add(&traffic));
        if done {
            client.close().await;
            break;
        }
        shared.with(|stats| stats.connections_lost += 1);
        shared.errors.fetch_add(1, Ordering::Relaxed);
        // Whatever was in flight is sent again on the next connection with
        // the same bytes: the AM's dedup makes it exactly-once.
        {
            let mut state = provider.lock();
            let lost: Vec<(usize, Instant)> = state
                .inflight
                .drain()
                .map(|(_, (intended, _, index))| (index, intended))
                .collect();
            for entry in lost {
                state.retry.push_front(entry);
            }
            state.duplicates.clear();
            state.faults.clear();
        }
        let now = Instant::now();
        let until = reconnect.refused(now, now);
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
    }
    let state = provider.lock();
    let mut missing: BTreeMap<Class, u64> = BTreeMap::new();
    for (_, _, index) in state.inflight.values() {
        *missing.entry(provider.class(*index)).or_default() += 1;
    }
    for (index, _) in &state.retry {
        *missing.entry(provider.class(*index)).or_default() += 1;
    }
    *missing.entry(Class::Final).or_default() += (provider.plan.finals.len() - state.finals_sent) as u64;
    if !state.duplicates.is_empty() {
        *missing.entry(Class::Duplicate).or_default() += state.duplicates.len() as u64;
    }
    for class in state.faults.values() {
        *missing.entry(*class).or_default() += 1;
    }
    let exhausted = context.settings.max && state.cursor >= provider.plan.interims.len();
    drop(state);
    shared.with(|stats| {
        for (class, count) in missing {
            *stats.unanswered.entry(class).or_default() += count;
        }
        if exhausted {
            stats.exhausted_providers += 1;
        }
    });
}

/// Drive one connection; true when the provider is done, false when the
/// connection was lost (the caller reconnects).
async fn run_connection(provider: &Arc<Provider>, client: &AmClient, context: &Context<'_>) -> bool {
    let opened = async {
        let main = client.open_accounting().await?;
        let duplicates = client.open_accounting().await?;
        let faults = client.open_accounting().await?;
        Ok::<_, peer::quic::ClientError>((main, duplicates, faults))
    };
    let Ok((main, duplicates, faults)) = opened.await else {
        return false;
    };
    let mut receivers = tokio::task::JoinSet::new();
    receivers.spawn(receive(
        provider.clone(),
        main.receiver,
        context.shared.clone(),
        Stream::Main,
    ));
    receivers.spawn(receive(
        provider.clone(),
        duplicates.receiver,
        context.shared.clone(),
        Stream::Duplicates,
    ));
    receivers.spawn(receive(
        provider.clone(),
        faults.receiver,
        context.shared.clone(),
        Stream::Faults,
    ));
    let mut senders = Senders {
        main: main.sender,
        duplicates: duplicates.sender,
        faults: faults.sender,
    };
    let finished = tokio::select! {
        finished = send_all(provider, client, &mut senders, context) => finished,
        // A receiver ends early only when its stream or the connection fails.
        _ = receivers.join_next() => false,
    };
    let _ = senders.main.finish();
    let _ = senders.duplicates.finish();
    let _ = senders.faults.finish();
    receivers.abort_all();
    finished
}

struct Senders {
    main: AccountingSender,
    duplicates: AccountingSender,
    faults: AccountingSender,
}

async fn send_all(provider: &Arc<Provider>, client: &AmClient, senders: &mut Senders, context: &Context<'_>) -> bool {
    let settings = context.settings;
    let clock = context.clock;
    let shared = context.shared;
    let interims = provider.plan.interims.len();
    let schedule = Schedule::new(settings, context.providers, provider.plan.index, clock);
    // References into the provider's signed messages: cloning each (a
    // reference count on a cold cache line) was loadgen's largest single
    // cost per message.
    let mut batch: Vec<&Signed<wire::Accounting>> = Vec::with_capacity(WRITE_MESSAGES_MAX);
    // Open loop: the scheduled send times of the interims and finals in
    // `batch` (not retries), for loadgen's own lateness.
    let mut due: Vec<Instant> = Vec::with_capacity(WRITE_MESSAGES_MAX);
    // Open loop with a linger: nothing is picked up until the oldest due
    // message has waited this long; then everything due goes together.
    // The rule ProviderNode's sender follows too (peer::linger).
    let linger = peer::linger::Linger::new(Duration::from_millis(settings.linger_ms));
    loop {
        let now = Instant::now();
        batch.clear();
        let mut interims_sent = 0u64;
        let mut finals_queued = 0u64;
        let mut retried = 0u64;
        let mut faults: Vec<Fault> = Vec::new();
        let mut duplicates: Vec<&Signed<wire::Accounting>> = Vec::new();
        due.clear();
        let (idle, pending, next_due) = {
            let mut state = provider.lock();
            // Open loop: every interim scheduled before the end is sent,
            // even if the timer woke a little late.
            let sending_phase = state.cursor < interims
                && (now < clock.send_until || (!settings.max && schedule.interim(state.cursor) < clock.send_until));
            let backoff_ready = state.backoff.ready(now);
            // Held by a backoff or a full window: loadgen's own lateness
            // counts from when it let go.
            let held_until = state.backoff.last_until().max(state.window_opened);
            // A backoff holds everything (as a producer library does): what
            // falls due meanwhile goes out together when it ends, its
            // latency counted from its scheduled time.
            // --hold-unanswered: an unanswered write holds the next.
            let held_by_flight = provider.hold_unanswered && !state.inflight.is_empty();
            let room = if backoff_ready && !held_by_flight {
                state.window.size().saturating_sub(state.inflight.len())
            } else {
                0
            };
            let limit = room.min(WRITE_MESSAGES_MAX);
            while backoff_ready && batch.len() < limit {
                let Some((index, intended)) = state.retry.pop_front() else {
                    break;
                };
                let message = provider.message(index);
                if state
                    .inflight
                    .insert(message.value().message_id(), (intended, now, index))
                    .is_some()
                {
                    continue;
                }
                retried += 1;
                batch.push(message);
            }
            // Whether the oldest due message has lingered its time (always
            // without a linger, and in the closed loop).
            let ripe = |intended: Instant| settings.max || linger.ripe(intended, now);
            if sending_phase {
                let lingered = state.cursor < interims && ripe(schedule.interim(state.cursor));
                while lingered && batch.len() < limit && state.cursor < interims {
                    let index = state.cursor;
                    let intended = if settings.max { now } else { schedule.interim(index) };
                    if intended > now {
                        break;
                    }
                    let message = provider.message(index);
                    state
                        .inflight
                        .insert(message.value().message_id(), (intended, now, index));
                    batch.push(message);
                    // Held by a backoff or the window: lateness counts from the release.
                    due.push(held_until.map_or(intended, |until| intended.max(until)));
                    state.cursor += 1;
                    interims_sent += 1;
                }
            } else {
                // The end of the sending phase: each session's Final Accounting.
                let finals = provider.plan.finals.len();
                let lingered = state.finals_sent < finals && ripe(schedule.final_(state.cursor, state.finals_sent));
                while lingered && batch.len() < limit && state.finals_sent < finals {
                    let intended = if settings.max {
                        now
                    } else {
                        schedule.final_(state.cursor, state.finals_sent)
                    };
                    if intended > now {
                        break;
                    }
                    let index = interims + state.finals_sent;
                    let message = provider.message(index);
                    state
                        .inflight
                        .insert(message.value().message_id(), (intended, now, index));
                    batch.push(message);
                    // Held by a backoff or the window: lateness counts from the release.
                    due.push(held_until.map_or(intended, |until| intended.max(until)));
                    state.finals_sent += 1;
                    finals_queued += 1;
                }
            }
            // Faults planned up to the cursor.
            while let Some((position, fault)) = provider.plan.faults.get(state.next_fault) {
                if *position >= state.cursor {
                    break;
                }
                match fault {
                    Fault::BadSignature(message) => {
                        state.faults.insert(message.value().message_id(), Class::BadSignature);
                    }
                    Fault::Foreign(message) => {
                        state.faults.insert(message.value().message_id(), Class::ForeignSession);
                    }
                    Fault::Malformed(_) => {}
                }
                faults.push(fault.clone());
                state.next_fault += 1;
            }
            while let Some(index) = backoff_ready.then(|| state.duplicate_queue.pop_front()).flatten() {
                let message = provider.message(index);
                state.duplicates.insert(message.value().message_id(), now);
                duplicates.push(message);
            }
            // When to pick up next: the next due message's time plus the
            // linger.
            let next_due = if settings.max {
                None
            } else if sending_phase {
                (state.cursor < interims)
                    .then(|| linger.release_at(schedule.interim(state.cursor).min(clock.send_until)))
            } else {
                (state.finals_sent < provider.plan.finals.len())
                    .then(|| linger.release_at(schedule.final_(state.cursor, state.finals_sent)))
            };
            // A full window: pick up again when an answer makes room (the
            // receiver wakes this task), not at a due time already past.
            let window_full =
                state.inflight.len() >= state.window.size() || (provider.hold_unanswered && !state.inflight.is_empty());
            let next_due = if window_full { None } else { next_due };
            // In a backoff: pick up again when it ends.
            let next_due = state.backoff.until(now).or(next_due);
            (
                !backoff_ready || ((state.retry.is_empty() || window_full) && state.duplicate_queue.is_empty()),
                state.inflight.len() + state.duplicates.len() + state.faults.len(),
                next_due,
            )
        };
        if interims_sent > 0 || finals_queued > 0 || retried > 0 || !faults.is_empty() || !duplicates.is_empty() {
            shared.with(|stats| {
                *stats.sent_by_class.entry(Class::Interim).or_default() += interims_sent;
                *stats.sent_by_class.entry(Class::Final).or_default() += finals_queued;
                *stats.sent_by_class.entry(Class::Duplicate).or_default() += duplicates.len() as u64;
                for fault in &faults {
                    let class = match fault {
                        Fault::BadSignature(_) => Class::BadSignature,
                        Fault::Foreign(_) => Class::ForeignSession,
                        Fault::Malformed(_) => Class::Malformed,
                    };
                    *stats.sent_by_class.entry(class).or_default() += 1;
                }
                stats.retried += retried;
                if !settings.max {
                    record_lateness(stats, clock.start, now, &due);
                }
            });
        }
        if !batch.is_empty() {
            shared.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if senders.main.send(batch.iter().copied()).await.is_err() {
                return false;
            }
        }
        if !duplicates.is_empty() {
            shared.sent.fetch_add(duplicates.len() as u64, Ordering::Relaxed);
            if senders.duplicates.send(duplicates.iter().copied()).await.is_err() {
                return false;
            }
        }
        for fault in faults {
            shared.sent.fetch_add(1, Ordering::Relaxed);
            let result = match fault {
                Fault::BadSignature(message) | Fault::Foreign(message) => senders.faults.send(&[message]).await,
                Fault::Malformed(bytes) => {
                    send_malformed(provider, client, bytes, shared.clone());
                    Ok(())
                }
            };
            if result.is_err() {
                return false;
            }
        }
        let now = Instant::now();
        let (finals_done, retries_waiting) = {
            let state = provider.lock();
            (state.finals_sent == provider.plan.finals.len(), !state.retry.is_empty())
        };
        if finals_done && idle && pending == 0 && !retries_waiting {
            return true;
        }
        if now >= clock.drain_until {
            return true;
        }
        if !idle {
            continue;
        }
        // Wait for the next due message, an answer (the receivers notify
        // whenever there is something to send or everything is answered),
        // or the next phase of the clock. No periodic tick: with 10,000
        // providers a 50 ms tick was 200,000 idle wake-ups a second, more
        // than 3 per message, in the process that shares the machine with
        // the AM under test.
        let phase_end = if now < clock.send_until {
            clock.send_until
        } else {
            clock.drain_until
        };
        let wake = next_due.unwrap_or(phase_end);
        if wake > now || settings.max {
            let notified = provider.changed.notified();
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake.max(now + Duration::from_millis(1)))) => {}
            }
        }
    }
}

/// Send malformed bytes on a stream of their own (the AM answers with an
/// Error and closes that stream only) and record the answer.
fn send_malformed(provider: &Arc<Provider>, client: &AmClient, bytes: bytes::Bytes, shared: Arc<Shared>) {
    let Ok(permit) = provider.malformed.clone().try_acquire_owned() else {
        shared.with(|stats| {
            *stats
                .answers
                .entry((Class::Malformed, "skipped_busy".into()))
                .or_default() += 1
        });
        return;
    };
    let opener = client.stream_opener();
    let stream = async move {
        let answer = async {
            let mut stream = opener.open_accounting().await.ok()?;
            stream.sender.send_raw(&bytes).await.ok()?;
            let _ = stream.sender.finish();
            match tokio::time::timeout(Duration::from_secs(10), stream.receiver.next()).await {
                Ok(Ok(Some(Received::Error(error)))) => Some(format!("error_{}", error_code_name(error.code))),
                Ok(Ok(Some(Received::Acks(_)))) => Some("acked".into()),
                Ok(Ok(None)) => Some("closed_without_error".into()),
                Ok(Err(_)) => Some("stream_failed".into()),
                Err(_) => None,
            }
        };
        let name = answer.await.unwrap_or_else(|| "no_answer".into());
        if !name.starts_with("error_") {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        shared.with(|stats| *stats.answers.entry((Class::Malformed, name)).or_default() += 1);
        drop(permit);
    };
    tokio::spawn(stream);
}

fn error_code_name(code: wire::ErrorCode) -> String {
    match code {
        wire::ErrorCode::MALFORMED_FRAME => "malformed_frame".into(),
        wire::ErrorCode::FRAME_TOO_LARGE => "frame_too_large".into(),
        wire::ErrorCode::UNSUPPORTED_VERSION => "unsupported_version".into(),
        wire::ErrorCode::UNKNOWN_MESSAGE_TYPE => "unknown_message_type".into(),
        wire::ErrorCode::UNEXPECTED_MESSAGE => "unexpected_message".into(),
        wire::ErrorCode::BUSY => "busy".into(),
        wire::ErrorCode::SHUTTING_DOWN => "shutting_down".into(),
        other => format!("{}", other.0),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Main,
    Duplicates,
    Faults,
}

/// One answer matched to what it answers: class, status, for stored
/// interims and finals (intended send time, session, sequence), and for
/// every answer on the main stream when its attempt was sent.
type Settled = (
    Class,
    AckStatus,
    Option<(Instant, wire::SessionId, u64)>,
    Option<Instant>,
);

/// Read the answers of one stream until it ends or fails.
async fn receive(provider: Arc<Provider>, mut receiver: AckReceiver, shared: Arc<Shared>, stream: Stream) {
    loop {
        let entries = match receiver.next().await {
            Ok(Some(Received::Acks(entries))) => entries,
            Ok(Some(Received::Error(_))) | Ok(None) | Err(_) => return,
        };
        let now = Instant::now();
        let mut settled: Vec<Settled> = Vec::with_capacity(entries.len());
        let wake = {
            let mut state = provider.lock();
            let queued_before = state.retry.len() + state.duplicate_queue.len();
            let in_flight = state.inflight.len();
            let window_was_full = in_flight >= state.window.size() || (provider.hold_unanswered && in_flight > 0);
            let mut refused: Option<Instant> = None;
            let mut stored = 0usize;
            for entry in &entries {
                match stream {
                    Stream::Main => {
                        let Some((intended, attempt, index)) = state.inflight.remove(&entry.message_id) else {
                            continue;
                        };
                        // The earliest refused attempt's send (peer::backoff times the quiet from it).
                        if peer::backoff::asks_backoff(entry.status) {
                            refused = Some(refused.map_or(attempt, |earliest| earliest.min(attempt)));
                        }
                        stored += usize::from(entry.status.is_stored());
                        let class = provider.class(index);
                        // WRONG_PARTITION is retryable elsewhere, but loadgen
                        // sends each provider to one partition only: its map
                        // differs from the AMs', an error, not a retry.
                        if entry.status.is_retryable() && entry.status != AckStatus::WRONG_PARTITION {
                            state.retry.push_back((index, intended));
                        } else if entry.status.is_stored() {
                            if entry.status == AckStatus::STORED
                                && index < provider.plan.duplicate.len()
                                && provider.plan.duplicate[index]
                            {
                                state.duplicate_queue.push_back(index);
                            }
                            settled.push((
                                class,
                                entry.status,
                                Some((intended, entry.message_id.session_id, entry.message_id.sequence)),
                                Some(attempt),
                            ));
                            continue;
                        }
                        settled.push((class, entry.status, None, Some(attempt)));
                    }
                    Stream::Duplicates => {
                        if state.duplicates.remove(&entry.message_id).is_some() {
                            settled.push((Class::Duplicate, entry.status, None, None));
                        }
                    }
                    Stream::Faults => {
                        if let Some(class) = state.faults.remove(&entry.message_id) {
                            settled.push((class, entry.status, None, None));
                        }
                    }
                }
            }
            // A "busy, retry" starts a backoff (the rest of the flight's
            // count with it); the streak ends after a quiet time
            // (peer::backoff), not at a stored answer.
            // The window halves when a backoff begins and grows with stored answers.
            if stored > 0 {
                state.window.stored(stored);
            }
            if let Some(sent) = refused {
                if state.backoff.ready(now) {
                    state.window.backed_off(in_flight);
                }
                state.backoff.refused(now, sent);
            }
            // Room again in a window that was full: loadgen's own lateness
            // counts from now for what the window held.
            let opened = window_was_full
                && (state.inflight.len() < state.window.size())
                && (!provider.hold_unanswered || state.inflight.is_empty());
            if opened {
                state.window_opened = Some(now);
            }
            !provider.open_loop
                || opened
                || state.retry.len() + state.duplicate_queue.len() > queued_before
                || (state.inflight.is_empty() && state.duplicates.is_empty() && state.faults.is_empty())
        };
        if wake {
            provider.changed.notify_one();
        }
        if settled.is_empty() {
            continue;
        }
        let second = now.saturating_duration_since(shared.start).as_secs() as usize;
        let mut stored = 0u64;
        let mut errors = 0u64;
        // Answers by (class, status), counted here and added under the
        // lock once per distinct pair: a frame's answers are nearly all
        // alike, and each map entry costs a status name.
        let mut counts: Vec<(Class, AckStatus, u64)> = Vec::new();
        for (class, status, _, _) in &settled {
            match counts.iter_mut().find(|(c, s, _)| c == class && s == status) {
                Some((_, _, count)) => *count += 1,
                None => counts.push((*class, *status, 1)),
            }
            if !expected(*class, *status) && (!status.is_retryable() || *status == AckStatus::WRONG_PARTITION) {
                errors += 1;
            }
        }
        shared.with(|stats| {
            for (class, status, count) in &counts {
                *stats.answers.entry((*class, status_name(*status))).or_default() += count;
            }
            let micros_since = |at: Instant| {
                let micros = now.saturating_duration_since(at).as_micros().max(1);
                u64::try_from(micros).unwrap_or(LATENCY_US_MAX).min(LATENCY_US_MAX)
            };
            if settled.iter().any(|(_, _, _, attempt)| attempt.is_some()) {
                while stats.timeline.len() <= second {
                    stats.timeline.push(SecondStats::new());
                }
            }
            for (_, status, storage, attempt) in &settled {
                if let Some(attempt) = attempt {
                    let micros = micros_since(*attempt);
                    let this_second = &mut stats.timeline[second];
                    if status.is_stored() {
                        let _ = stats.attempt_stored.record(micros);
                        let _ = this_second.attempt.record(micros);
                    } else if peer::backoff::asks_backoff(*status) {
                        let _ = stats.attempt_busy.record(micros);
                        let _ = this_second.busy.record(micros);
                    }
                }
                if let Some((intended, session_id, sequence)) = storage {
                    stored += 1;
                    let micros = micros_since(*intended);
                    let _ = stats.latency.record(micros);
                    let this_second = &mut stats.timeline[second];
                    this_second.stored += 1;
                    let _ = this_second.latency.record(micros);
                    let intended_us =
                        u64::try_from(intended.saturating_duration_since(shared.start).as_micros()).unwrap_or(u64::MAX);
                    this_second.oldest_intended_us = this_second.oldest_intended_us.min(intended_us);
                    stats.stored_sequences.entry(*session_id).or_default().push(*sequence);
                    let by_second = stats.stored_by_partition.entry(session_id.partition().0).or_default();
                    if by_second.len() <= second {
                        by_second.resize(second + 1, 0);
                    }
                    by_second[second] += 1;
                    stats.last_answer = Some(now);
                }
            }
        });
        shared.stored.fetch_add(stored, Ordering::Relaxed);
        shared.errors.fetch_add(errors, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn schedule(rate: u64, providers: usize, index: usize, duration: u64, drain: u64) -> (Schedule, Clock) {
        let start = Instant::now();
        let clock = Clock {
            start,
            send_until: start + Duration::from_secs(duration),
            drain_until: start + Duration::from_secs(duration + drain),
        };
        let settings = Settings::try_parse_from([
            "loadgen",
            "--am",
            "127.0.0.1:1",
            "--pki",
            "/nonexistent",
            "--rate",
            &rate.to_string(),
        ])
        .expect("settings parse");
        (Schedule::new(&settings, providers, index, clock), clock)
    }

    #[test]
    fn finals_keep_the_pace_of_the_interims() {
        // 1,000 providers at 8,000/s: a provider's slots are 125 ms apart,
        // provider 3 starts 3/8000 s in.
        let (schedule, clock) = schedule(8_000, 1_000, 3, 14, 30);
        let slot = |n: f64| clock.start + Duration::from_secs_f64(3.0 / 8_000.0 + n * 0.125);
        assert_eq!(schedule.interim(0), slot(0.0));
        assert_eq!(schedule.interim(10), slot(10.0));
        // 112 interims sent (the last due at 13.875 s): the finals take the
        // slots 112, 113, … — never all at once.
        assert_eq!(schedule.final_(112, 0), slot(112.0));
        assert_eq!(schedule.final_(112, 4), slot(116.0));
        assert!(schedule.final_(112, 1) > schedule.final_(112, 0));
    }

    #[test]
    fn rate_steps_fill_each_phase_at_its_own_pace_with_the_messages_the_plan_gives() {
        let start = Instant::now();
        let clock = Clock {
            start,
            send_until: start + Duration::from_secs(3),
            drain_until: start + Duration::from_secs(33),
        };
        let mut settings = Settings::try_parse_from([
            "loadgen",
            "--am",
            "127.0.0.1:1",
            "--pki",
            "/nonexistent",
            "--rate-steps",
            "100:2,301:1",
        ])
        .expect("settings parse");
        settings.check().expect("valid");
        settings.apply_steps();
        assert_eq!((settings.duration, settings.rate), (3, 100));
        let providers = 7;
        let mut in_phase = [0usize; 2];
        for index in 0..providers {
            let schedule = Schedule::new(&settings, providers, index, clock);
            // The plan's share: every phase's slots of this provider.
            let share = crate::settings::slots(200, providers, index) + crate::settings::slots(301, providers, index);
            let mut last = start;
            for n in 0..share {
                let due = schedule.interim(n);
                assert!(due >= last && due < clock.send_until, "provider {index} message {n}");
                last = due;
                in_phase[usize::from(due >= start + Duration::from_secs(2))] += 1;
            }
        }
        // 100/s for 2 s, then 301/s for 1 s: every message in its phase.
        assert_eq!(in_phase, [200, 301]);
    }

    #[test]
    fn finals_never_come_later_than_half_the_drain() {
        // 100 providers at 1/s: a slot every 100 s; the finals would come
        // long after the drain ends, so they go at half of it.
        let (schedule, clock) = schedule(1, 100, 0, 10, 30);
        assert_eq!(schedule.final_(1, 0), clock.send_until + Duration::from_secs(15));
        assert_eq!(schedule.final_(1, 7), clock.send_until + Duration::from_secs(15));
        assert_eq!(schedule.final_(0, 0), clock.start);
    }
}
