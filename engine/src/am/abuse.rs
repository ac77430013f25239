//! The abuse rules, in one place: what a provider connection may do before
//! the AM closes it, which rule wins when several apply, the close code and
//! metric label each gives, and how the close is carried out (the
//! provider's name is backed off, `penalty`, and the answers already
//! admitted go out before the close, `connection::close_if_abusive`). The
//! counters live in [`Conduct`], one per provider connection; the verifiers,
//! the committer and the stream tasks increment them, and the rules below
//! read them. A verdict is a strike against the provider's name
//! (`penalty`); the address backoffs (`penalty`, enforced by the Initial
//! gate, `gate`) follow from refused handshakes (denied, name in its
//! backoff, provider over its connection bound), not from verdicts.
//!
//! docs/protocol.md (3.3) states the rules for peers and docs/operating.md
//! ("Why the AM closed a connection") for operators; this file is the source.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Application close codes on the AM's QUIC connections
/// (docs/protocol.md, 3.3).
pub mod close_code {
    /// Normal close (shutdown or the peer is done).
    pub const DONE: u32 = 0;
    /// The certificate names no role that may connect.
    pub const ROLE_REFUSED: u32 = 1;
    /// The provider sent mostly bad signatures.
    pub const BAD_SIGNATURES: u32 = 2;
    /// The AM is shutting down.
    pub const SHUTTING_DOWN: u32 = 3;
    /// The peer's certificate is denied (`[security] denied`).
    pub const DENIED: u32 = 4;
    /// The provider had more than `MALFORMED_STREAMS_MAX` streams closed for
    /// protocol errors.
    pub const PROTOCOL_ERRORS: u32 = 5;
    /// The provider was disconnected for abuse and its backoff has not ended.
    pub const BACKOFF: u32 = 6;
    /// The provider's datagrams carried almost no accounting each (the
    /// tiny-packet rule, `abuse::TINY_PACKET_BYTES`).
    pub const TINY_PACKETS: u32 = 7;
    /// The provider already holds `connections_per_provider_max`
    /// connections.
    pub const TOO_MANY_CONNECTIONS: u32 = 8;
    /// The provider sent mostly messages for unknown sessions or other
    /// providers' sessions (`abuse::FOREIGN_SESSIONS_MIN`).
    pub const FOREIGN_SESSIONS: u32 = 9;
    /// Mostly ids already stored, with changed content
    /// (`abuse::CONFLICTING_DUPLICATES_MIN`).
    pub const CONFLICTING_DUPLICATES: u32 = 10;
}

/// Before a connection is closed for abuse, the stream that noticed waits
/// this long at most for the answers to what it admitted (BAD_SIGNATURE and
/// the like) to be verified, written and acknowledged by the provider:
/// closing at once discards what QUIC has buffered but not yet sent. The
/// connection's streams read nothing more meanwhile, and a provider that
/// does not read its answers cannot hold the close any longer than this.
pub const ABUSE_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Why a provider connection is closed for abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// [`Conduct::is_abusive`].
    BadSignatures,
    /// [`Conduct::sends_conflicting_duplicates`].
    ConflictingDuplicates,
    /// [`Conduct::bills_foreign_sessions`].
    ForeignSessions,
    /// The tiny-packet rule ([`PacketWindow`]).
    TinyPackets,
    /// [`Conduct::breaks_protocol`].
    ProtocolErrors,
}

impl Verdict {
    /// The rule a connection breaks, if any. When several apply, the first
    /// in this order wins: the costliest to the AM first (each bad
    /// signature or conflicting copy cost a verification), then what costs
    /// a decode or a packet, then protocol errors.
    pub fn of(provider: &Conduct) -> Option<Self> {
        if provider.is_abusive() {
            Some(Self::BadSignatures)
        } else if provider.sends_conflicting_duplicates() {
            Some(Self::ConflictingDuplicates)
        } else if provider.bills_foreign_sessions() {
            Some(Self::ForeignSessions)
        } else if provider.tiny_packets.load(Ordering::Relaxed) {
            Some(Self::TinyPackets)
        } else if provider.breaks_protocol() {
            Some(Self::ProtocolErrors)
        } else {
            None
        }
    }

    /// The application close code.
    pub fn close_code(self) -> u32 {
        match self {
            Self::BadSignatures => close_code::BAD_SIGNATURES,
            Self::ConflictingDuplicates => close_code::CONFLICTING_DUPLICATES,
            Self::ForeignSessions => close_code::FOREIGN_SESSIONS,
            Self::TinyPackets => close_code::TINY_PACKETS,
            Self::ProtocolErrors => close_code::PROTOCOL_ERRORS,
        }
    }

    /// The `reason` label of `acct_connections_abusive_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadSignatures => "bad_signatures",
            Self::ConflictingDuplicates => "conflicting_duplicates",
            Self::ForeignSessions => "foreign_sessions",
            Self::TinyPackets => "tiny_packets",
            Self::ProtocolErrors => "protocol_errors",
        }
    }

    /// The close reason the provider reads.
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadSignatures => "too many bad signatures",
            Self::ConflictingDuplicates => "too many conflicting duplicates",
            Self::ForeignSessions => "too many messages for sessions not its own",
            Self::TinyPackets => "too many tiny packets",
            Self::ProtocolErrors => "too many protocol errors",
        }
    }
}

/// What a provider connection did, counted by the stream tasks, the
/// verifiers and the committer, and judged by the rules below.
#[derive(Debug, Default)]
pub struct Conduct {
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
    /// `PACKET_CHECK_READS`th read applies the tiny-packet rule ([`PacketWindow`]).
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
    pub abuse_found: tokio::sync::Notify,
}

impl Conduct {
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
            self.abuse_found.notify_waiters();
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
pub(super) struct PacketWindow {
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
/// before [`Conduct::bills_foreign_sessions`] applies.
pub const FOREIGN_SESSIONS_MIN: u64 = 1_024;

/// CONFLICTING_DUPLICATE answers a connection may get before the
/// conflicting-duplicate rule can close it.
pub const CONFLICTING_DUPLICATES_MIN: u64 = 1_024;

/// Streams a connection may have closed for protocol errors before it is
/// disconnected.
pub const MALFORMED_STREAMS_MAX: u64 = 16;

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

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
        let connection = Conduct::default();
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
        let connection = Conduct::default();
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
        let busy = Conduct::default();
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
        let connection = Conduct::default();
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

    #[test]
    fn the_costliest_rule_wins() {
        let connection = Conduct::default();
        assert_eq!(Verdict::of(&connection), None);
        connection
            .malformed_streams
            .store(MALFORMED_STREAMS_MAX + 1, Ordering::Relaxed);
        assert_eq!(Verdict::of(&connection), Some(Verdict::ProtocolErrors));
        connection.tiny_packets.store(true, Ordering::Relaxed);
        assert_eq!(Verdict::of(&connection), Some(Verdict::TinyPackets));
        connection
            .foreign_sessions
            .store(FOREIGN_SESSIONS_MIN + 1, Ordering::Relaxed);
        assert_eq!(Verdict::of(&connection), Some(Verdict::ForeignSessions));
        connection
            .bad_signatures
            .store(BAD_SIGNATURES_MIN + 1, Ordering::Relaxed);
        assert_eq!(Verdict::of(&connection), Some(Verdict::BadSignatures));
        assert_eq!(Verdict::BadSignatures.close_code(), close_code::BAD_SIGNATURES);
    }
}
