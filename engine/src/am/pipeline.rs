//! The items that travel between the ingest stages, and the shared session
//! table. Stage order: QUIC stream task (decode, admit) → verifier threads
//! (batch Ed25519) → committer thread (dedup, policy, RocksDB group commit)
//! → the stream's ack writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wire::{Accounting, AckEntry, AckStatus, Name, PublicKey, SessionId, Signed};

use super::session::SessionInfo;

/// Where a stream's acks go. Bounded: a stream admits at most
/// `stream_inflight_max` unanswered messages, and the channel holds as many
/// sends (each carries at least one answer), so the committer's `try_send`
/// never finds it full while the stream lives.
pub type AckSender = mpsc::Sender<Answers>;

/// Answers for one stream: one, or a run of them decided together (the
/// committer sends a stream's consecutive answers in a group as one, so a
/// busy stream costs one channel send and one wakeup per group, not one per
/// message).
#[derive(Debug)]
pub enum Answers {
    /// A single answer (no allocation).
    One(AckEntry),
    /// Several, in the order decided.
    Many(Vec<AckEntry>),
}

impl Answers {
    /// How many answers.
    pub fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(entries) => entries.len(),
        }
    }

    /// Never true for what the pipeline sends; for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Move the answers to the end of `out`.
    pub fn append_to(self, out: &mut Vec<AckEntry>) {
        match self {
            Self::One(entry) => out.push(entry),
            Self::Many(mut entries) => out.append(&mut entries),
        }
    }
}

/// A provider connection as the pipeline sees it.
#[derive(Debug)]
pub struct ProviderConnection {
    /// The provider's name from its certificate.
    pub name: Name,
    /// Its parsed key (parsed once per connection, not per message).
    pub key: PublicKey,
    /// Signatures that verified on this connection.
    pub good_signatures: AtomicU64,
    /// Signatures that did not.
    pub bad_signatures: AtomicU64,
    /// Messages refused before verification because their session is
    /// unknown or another provider's.
    pub foreign_sessions: AtomicU64,
    /// Messages answered CONFLICTING_DUPLICATE: an id already stored with
    /// other content (counted by the committer).
    pub conflicting_duplicates: AtomicU64,
    /// Streams the AM closed for a protocol error (malformed or oversized
    /// frame, a message type that has no place on the stream).
    pub malformed_streams: AtomicU64,
    /// Set once the AM closed this connection for abuse.
    pub closed_for_abuse: AtomicBool,
    /// Reads from this connection's accounting streams; every
    /// `PACKET_CHECK_READS`th read checks [`Self::sends_tiny_packets`].
    pub reads: AtomicU64,
    /// Bytes read from this connection's accounting streams.
    pub stream_bytes: AtomicU64,
    /// The current window of the tiny-packet rule.
    packets: Mutex<PacketWindow>,
    /// Set once the tiny-packet rule fired.
    pub tiny_packets: AtomicBool,
    /// Signalled (to every stream waiting on it) when a verifier finds the
    /// connection [abusive](Self::is_abusive), or when it is being closed
    /// for any abuse: its streams then [stop reading](Self::stops_reading).
    pub abuse: tokio::sync::Notify,
}

impl ProviderConnection {
    /// A connection's state.
    pub fn new(name: Name, key: PublicKey) -> Arc<Self> {
        Arc::new(Self {
            name,
            key,
            good_signatures: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            foreign_sessions: AtomicU64::new(0),
            conflicting_duplicates: AtomicU64::new(0),
            malformed_streams: AtomicU64::new(0),
            closed_for_abuse: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            stream_bytes: AtomicU64::new(0),
            packets: Mutex::new(PacketWindow::default()),
            tiny_packets: AtomicBool::new(false),
            abuse: tokio::sync::Notify::new(),
        })
    }

    /// Count one read of `bytes` from an accounting stream; on every
    /// `PACKET_CHECK_READS`th read, ask `datagrams` (the connection's total
    /// of received UDP datagrams, from QUIC's statistics) and apply the
    /// tiny-packet rule. True once the rule has fired for this connection.
    pub fn read_and_check(&self, bytes: usize, datagrams: impl FnOnce() -> u64) -> bool {
        let total = self.stream_bytes.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        let reads = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        if reads.is_multiple_of(PACKET_CHECK_READS) {
            let mut window = self.packets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if window.observe(Instant::now(), datagrams(), total) {
                self.tiny_packets.store(true, Ordering::Relaxed);
            }
        }
        self.tiny_packets.load(Ordering::Relaxed)
    }

    /// Whether the connection sends mostly bad signatures: more than
    /// `BAD_SIGNATURES_MIN` bad ones and more bad than good. Such a provider
    /// is disconnected so that its verification cost cannot slow the others.
    pub fn is_abusive(&self) -> bool {
        let bad = self.bad_signatures.load(Ordering::Relaxed);
        let good = self.good_signatures.load(Ordering::Relaxed);
        bad > BAD_SIGNATURES_MIN && bad > good
    }

    /// Whether the connection's streams stop reading: it sends mostly bad
    /// signatures or conflicting duplicates (verdicts that come after
    /// admission), or it is being closed for abuse (its answers are being
    /// flushed).
    pub fn stops_reading(&self) -> bool {
        self.is_abusive() || self.sends_conflicting_duplicates() || self.closed_for_abuse.load(Ordering::Relaxed)
    }

    /// Count one CONFLICTING_DUPLICATE answer; wakes the connection's
    /// streams when it crosses the line of
    /// [`Self::sends_conflicting_duplicates`].
    pub fn conflicting_duplicate(&self) {
        self.conflicting_duplicates.fetch_add(1, Ordering::Relaxed);
        if self.sends_conflicting_duplicates() {
            self.abuse.notify_waiters();
        }
    }

    /// Whether the connection replays stored ids with changed content: more
    /// than `CONFLICTING_DUPLICATES_MIN` of them, and more than the rest of
    /// its good signatures. Each costs a verification before the committer
    /// can tell; an honest provider retransmits the same bytes (DUPLICATE),
    /// and changed content under a stored id is a broken or dishonest one.
    pub fn sends_conflicting_duplicates(&self) -> bool {
        let conflicting = self.conflicting_duplicates.load(Ordering::Relaxed);
        let good = self.good_signatures.load(Ordering::Relaxed);
        conflicting > CONFLICTING_DUPLICATES_MIN && conflicting > good.saturating_sub(conflicting)
    }

    /// Whether the connection bills mostly sessions that are not its own:
    /// more than `FOREIGN_SESSIONS_MIN` messages for unknown sessions or
    /// other providers' sessions, and more of them than messages with a good
    /// signature. Each is refused before verification, but decoding and
    /// answering a flood of them still costs the AM a core; an honest
    /// provider sends such a message only by mistake.
    pub fn bills_foreign_sessions(&self) -> bool {
        let foreign = self.foreign_sessions.load(Ordering::Relaxed);
        let good = self.good_signatures.load(Ordering::Relaxed);
        foreign > FOREIGN_SESSIONS_MIN && foreign > good
    }

    /// Whether the connection keeps breaking the protocol: more than
    /// `MALFORMED_STREAMS_MAX` streams closed for a protocol error. The
    /// provider library never sends a malformed frame, so this is a broken
    /// or hostile peer opening stream after stream of garbage; it is
    /// disconnected, and a reconnect costs it a full handshake.
    pub fn breaks_protocol(&self) -> bool {
        self.malformed_streams.load(Ordering::Relaxed) > MALFORMED_STREAMS_MAX
    }
}

/// The tiny-packet rule: a connection whose datagrams carried on average
/// fewer than `TINY_PACKET_BYTES` bytes of accounting each, over at least
/// `TINY_PACKETS_DATAGRAMS_MIN` datagrams that arrived within
/// `TINY_PACKETS_WINDOW`, is disconnected. Each datagram costs the AM a
/// decryption and a wakeup whatever it carries; a provider writing its
/// frames a byte at a time would make it pay that per byte. The provider
/// library packs messages into full packets (an accounting frame alone is
/// 125 to 160 bytes), so an honest provider stays far above the line; a
/// connection sending fewer than 205 datagrams a second is never judged,
/// and its idle keep-alives never count (a window older than
/// `TINY_PACKETS_WINDOW` starts over).
#[derive(Debug, Default)]
struct PacketWindow {
    /// When the window started, with the totals then.
    started: Option<(Instant, u64, u64)>,
}

/// See [`PacketWindow`].
pub const TINY_PACKET_BYTES: u64 = 32;
/// See [`PacketWindow`].
pub const TINY_PACKETS_DATAGRAMS_MIN: u64 = 2_048;
/// See [`PacketWindow`].
pub const TINY_PACKETS_WINDOW: Duration = Duration::from_secs(10);
/// Reads between two checks of the tiny-packet rule (each check takes the
/// QUIC connection's lock once).
pub const PACKET_CHECK_READS: u64 = 64;

impl PacketWindow {
    /// Feed the connection's totals (datagrams received, accounting bytes
    /// read); true when a window just closed with tiny packets.
    fn observe(&mut self, now: Instant, datagrams: u64, bytes: u64) -> bool {
        match self.started {
            Some((started, datagrams_then, bytes_then)) if now.duration_since(started) <= TINY_PACKETS_WINDOW => {
                let arrived = datagrams.saturating_sub(datagrams_then);
                if arrived < TINY_PACKETS_DATAGRAMS_MIN {
                    return false;
                }
                self.started = Some((now, datagrams, bytes));
                bytes.saturating_sub(bytes_then) < arrived.saturating_mul(TINY_PACKET_BYTES)
            }
            _ => {
                self.started = Some((now, datagrams, bytes));
                false
            }
        }
    }
}

/// Bad signatures a connection may send before the abuse rule applies.
pub const BAD_SIGNATURES_MIN: u64 = 256;

/// Messages for unknown or other providers' sessions a connection may send
/// before [`ProviderConnection::bills_foreign_sessions`] applies.
pub const FOREIGN_SESSIONS_MIN: u64 = 1_024;

/// CONFLICTING_DUPLICATE answers a connection may get before the
/// conflicting-duplicate rule can close it.
pub const CONFLICTING_DUPLICATES_MIN: u64 = 1_024;

/// Streams a connection may have closed for protocol errors before it is
/// disconnected.
pub const MALFORMED_STREAMS_MAX: u64 = 16;

/// An accounting message admitted for verification.
#[derive(Debug)]
pub struct Pending {
    /// The message as received. Its session was admitted when it was read
    /// (`SessionTable::admit`); the committer checks it again in its own
    /// map, so no reference to the session travels with the message (one
    /// reference count per message, taken by the I/O thread and released
    /// by the committer, was the largest cost of the AM's own code in the
    /// I/O thread: 1.2% of the AM's samples).
    pub message: Signed<Accounting>,
    /// The provider connection it came on.
    pub connection: Arc<ProviderConnection>,
    /// When the AM received it, Unix ms.
    pub received_ms: u64,
    /// Where its ack goes.
    pub reply: AckSender,
}

/// A message whose signature verified. Only the verifier makes these.
#[derive(Debug)]
pub struct Verified(Pending);

impl Verified {
    /// Only the verifier calls this, after the signature checked out.
    pub(super) fn new(pending: Pending) -> Self {
        Self(pending)
    }

    /// The verified message and its context.
    pub fn pending(&self) -> &Pending {
        &self.0
    }
}

/// Work for the committer.
#[derive(Debug)]
pub enum CommitCommand {
    /// Store verified messages (or answer why not), in order.
    Records(Vec<Verified>),
    /// Store a new session durably, then answer.
    OpenSession {
        /// The minted session.
        session: Arc<SessionInfo>,
        /// Ok once durable.
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

impl CommitCommand {
    /// Messages carried (0 for a session to open).
    pub fn messages(&self) -> usize {
        match self {
            Self::Records(records) => records.len(),
            Self::OpenSession { .. } => 0,
        }
    }
}

/// The sessions the AM knows, shared for admission (reads on every message,
/// writes when a session is opened or pruned). Hashed with foldhash, seeded
/// per process, like the committer's maps: SipHash made this lookup the
/// I/O thread's largest single cost.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: RwLock<HashMap<SessionId, Arc<SessionInfo>, foldhash::fast::RandomState>>,
    /// Live sessions per user (no Final stored, within their validity):
    /// kept by the committer, read by credential issuance. Users with none
    /// have no entry.
    live_per_user: Mutex<HashMap<Name, usize>>,
}

impl SessionTable {
    /// Look a session up (tests; the ingest path uses [`Self::admit`]).
    #[cfg(test)]
    pub fn get(&self, session_id: &SessionId) -> Option<Arc<SessionInfo>> {
        self.sessions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(session_id)
            .cloned()
    }

    /// Admission of a message for `session_id` on `provider`'s connection
    /// ([`super::session::admit`]), under the read lock, without taking a
    /// reference to the session.
    pub fn admit(&self, session_id: &SessionId, provider: &Name) -> Result<(), AckStatus> {
        let sessions = self.sessions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        super::session::admit(sessions.get(session_id).map(Arc::as_ref), provider)
    }

    /// Add a session.
    pub fn insert(&self, session: Arc<SessionInfo>) {
        self.sessions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(session.session_id(), session);
    }

    /// Remove a session.
    pub fn remove(&self, session_id: &SessionId) {
        self.sessions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(session_id);
    }

    /// Live sessions of `user`.
    pub fn live_sessions(&self, user: &Name) -> usize {
        self.live_per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    /// One more live session of `user` (the committer, when it opens or
    /// recovers one).
    pub fn count_live(&self, user: &Name) {
        *self
            .live_per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(user.clone())
            .or_default() += 1;
    }

    /// One live session of `user` fewer (the committer, when its Final is
    /// stored or its validity ends).
    pub fn uncount_live(&self, user: &Name) {
        let mut live = self
            .live_per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match live.get_mut(user) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                live.remove(user);
            }
            None => debug_assert!(false, "a live session uncounted twice"),
        }
    }

    /// Sessions known.
    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_packets_are_judged_per_window() {
        let start = Instant::now();
        let mut window = PacketWindow::default();
        // The first observation only starts a window.
        assert!(!window.observe(start, 0, 0));
        // Too few datagrams yet to judge, however small.
        assert!(!window.observe(start + Duration::from_secs(1), 2_047, 2_047));
        // 2,048 datagrams of one byte each within the window: tiny.
        assert!(window.observe(start + Duration::from_secs(2), 2_048, 2_048));
        // 2,048 datagrams of 300 bytes: honest.
        let t = start + Duration::from_secs(2);
        assert!(!window.observe(t + Duration::from_secs(1), 4_096, 2_048 + 2_048 * 300));
        // Exactly at the line is not below it.
        assert!(!window.observe(
            t + Duration::from_secs(2),
            6_144,
            2_048 + 2_048 * 300 + 2_048 * TINY_PACKET_BYTES
        ));
    }

    #[test]
    fn keep_alives_of_an_idle_connection_never_count() {
        let start = Instant::now();
        let mut window = PacketWindow::default();
        assert!(!window.observe(start, 0, 0));
        // Hours of keep-alives with no accounting, then a burst of honest
        // messages: the stale window starts over instead of judging.
        let later = start + Duration::from_secs(6 * 3600);
        assert!(!window.observe(later, 10_000, 0));
        assert!(!window.observe(later + Duration::from_secs(1), 10_000 + 2_048, 2_048 * 300));
        // The same in a fresh window but tiny: judged.
        assert!(window.observe(later + Duration::from_secs(2), 10_000 + 4_096, 2_048 * 300 + 2_048));
    }

    #[test]
    fn billing_foreign_sessions_is_abuse_only_in_bulk() {
        let key = wire::SigningKey::from_seed(&[7; 32]);
        let connection = ProviderConnection::new(Name::new("p1").unwrap(), key.public_key());
        connection
            .foreign_sessions
            .store(FOREIGN_SESSIONS_MIN, Ordering::Relaxed);
        assert!(!connection.bills_foreign_sessions(), "a mistake or a few are not abuse");
        connection
            .foreign_sessions
            .store(FOREIGN_SESSIONS_MIN + 1, Ordering::Relaxed);
        assert!(connection.bills_foreign_sessions());
        // A busy honest provider with some stale sessions is not judged.
        connection.good_signatures.store(100_000, Ordering::Relaxed);
        assert!(!connection.bills_foreign_sessions());
    }

    #[test]
    fn conflicting_duplicates_are_abuse_only_in_bulk_and_against_the_rest() {
        let key = wire::SigningKey::from_seed(&[7; 32]);
        let connection = ProviderConnection::new(Name::new("p1").unwrap(), key.public_key());
        // Every conflicting duplicate had a good signature first.
        let conflicting = |count: u64| {
            for _ in 0..count {
                connection.good_signatures.fetch_add(1, Ordering::Relaxed);
                connection.conflicting_duplicate();
            }
        };
        conflicting(CONFLICTING_DUPLICATES_MIN);
        assert!(
            !connection.sends_conflicting_duplicates(),
            "a bug replaying a batch is not abuse"
        );
        conflicting(1);
        assert!(connection.sends_conflicting_duplicates());
        assert!(connection.stops_reading());
        // A provider that stored far more than it conflicted is not judged.
        let busy = ProviderConnection::new(Name::new("p2").unwrap(), key.public_key());
        busy.good_signatures.store(1_000_000, Ordering::Relaxed);
        for _ in 0..10_000 {
            busy.good_signatures.fetch_add(1, Ordering::Relaxed);
            busy.conflicting_duplicate();
        }
        assert!(!busy.sends_conflicting_duplicates());
        assert!(!busy.stops_reading());
    }

    #[test]
    fn the_rule_sticks_once_fired() {
        let key = wire::SigningKey::from_seed(&[7; 32]);
        let connection = ProviderConnection::new(Name::new("p1").unwrap(), key.public_key());
        let mut datagrams = 0u64;
        let mut fired_at = None;
        for read in 1..=10_000u64 {
            datagrams += 1;
            if connection.read_and_check(1, || datagrams) && fired_at.is_none() {
                fired_at = Some(read);
            }
        }
        // The window opens at read 64 and closes at the first check with
        // 2,048 more datagrams: read 2,112.
        assert_eq!(fired_at, Some(2_112));
        assert!(connection.read_and_check(10_000, || datagrams));
    }
}
