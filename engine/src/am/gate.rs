//! The Initial gate: a new connection attempt from an address that may not
//! start one now is dropped as it comes off the UDP socket, before QUIC
//! derives its keys and decrypts it.
//!
//! The accept loop already ignores such attempts (an address in its
//! backoff, or with [`HANDSHAKES_PER_ADDRESS_MAX`] handshakes in progress),
//! but only after quinn has decrypted the Initial to hand it over: about
//! 8 µs of AM CPU each, so a flood of 25,000 Initials a second from one
//! address cost a fifth of a core. The gate looks at three header fields
//! instead (long header, type Initial, version 1) and, for those, at the
//! destination connection ID. An Initial of a handshake in progress passes:
//! the client's later Initials (its acknowledgements, often coalesced with
//! its handshake Finished) carry the ID this AM chose when it accepted the
//! handshake, and a client's repeated first Initial carries the ID it chose
//! itself. Both are allowed for [`HANDSHAKE_TIMEOUT`], from the address of
//! that handshake only. Every other Initial from a closed address is
//! dropped. Datagrams with a short header (every packet of an established
//! connection) cost one comparison.
//!
//! An allowed ID passes at most [`ALLOWED_ID_USES`] times: an attacker that
//! learns one (the AM sends its own in the clear) cannot replay it to flood
//! past the gate, and it learns one only per handshake it may start. The
//! other IDs the endpoint issues (NEW_CONNECTION_ID for established
//! connections, which a peer can make it issue again and again) are never
//! allowed: only those made inside [`accepting`].
//!
//! Bounded: at most [`GATE_ADDRESSES_MAX`] addresses in backoff (about 64
//! bytes each; beyond that the accept loop's own check still applies), at
//! most `HANDSHAKES_MAX / HANDSHAKES_PER_ADDRESS_MAX` (4) addresses at their
//! handshake bound, and at most [`ALLOWED_IDS_MAX`] allowed IDs (about
//! 80 bytes each; the oldest is forgotten first).
//!
//! [`HANDSHAKES_PER_ADDRESS_MAX`]: super::handshakes::HANDSHAKES_PER_ADDRESS_MAX

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, HashedConnectionIdGenerator, InvalidCid};

/// Addresses in backoff the gate holds at most.
pub const GATE_ADDRESSES_MAX: usize = 10_000;
/// Connection IDs of handshakes in progress the gate holds at most (the
/// oldest is forgotten first).
pub const ALLOWED_IDS_MAX: usize = 32_768;
/// Initials one allowed ID may carry through a closed address's gate (an
/// honest client sends a few).
pub const ALLOWED_ID_USES: u8 = 16;
/// A handshake not finished by then is dropped and its slot freed
/// (`handshakes`); the gate lets its Initials through as long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ID stays allowed: a handshake not done by then is dropped.
const ALLOWED_FOR: Duration = HANDSHAKE_TIMEOUT;
/// The longest connection ID (RFC 9000 §17.2).
const CONNECTION_ID_BYTES_MAX: usize = 20;

/// QUIC version 1 (RFC 9000), the only version the AM speaks.
const QUIC_V1: [u8; 4] = [0, 0, 0, 1];

/// Why a datagram was dropped (the `reason` label of
/// `acct_initials_dropped_total`, the same as the accept loop's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The address is in its backoff.
    Backoff,
    /// The address has as many handshakes in progress as it may.
    Handshakes,
}

impl Closed {
    fn reason(self) -> &'static str {
        match self {
            Self::Backoff => "address_backoff",
            Self::Handshakes => "handshakes_per_address",
        }
    }
}

#[derive(Default)]
struct Closures {
    /// Addresses in a backoff, until when.
    backoff: HashMap<IpAddr, Instant>,
    /// When the last backoff ends: after that, the table is emptied.
    backoff_last_end: Option<Instant>,
    /// Addresses at their bound of handshakes in progress.
    at_bound: HashSet<IpAddr>,
}

/// Connection IDs of handshakes in progress: those the AM issued and those
/// the clients chose for handshakes the accept loop took.
#[derive(Default)]
struct Allowed {
    /// The handshake's address and the uses left, by ID.
    uses: HashMap<ConnectionId, (IpAddr, u8)>,
    /// In the order allowed, with when: the front expires first.
    order: VecDeque<(Instant, ConnectionId)>,
}

impl Allowed {
    fn forget_expired(&mut self, now: Instant) {
        while let Some(&(since, id)) = self.order.front() {
            if now.saturating_duration_since(since) < ALLOWED_FOR && self.order.len() <= ALLOWED_IDS_MAX {
                break;
            }
            self.order.pop_front();
            self.uses.remove(&id);
        }
    }
}

/// Which addresses may not start a connection now. Shared by the accept
/// loop (which closes and opens addresses) and the socket (which asks).
pub struct InitialGate {
    /// False while nothing is closed: then the socket takes no lock.
    armed: AtomicBool,
    closures: Mutex<Closures>,
    allowed: Mutex<Allowed>,
}

impl fmt::Debug for InitialGate {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("InitialGate").finish_non_exhaustive()
    }
}

impl InitialGate {
    /// A gate with nothing closed. The endpoint issues its connection IDs
    /// through [`IssuedIds`], so that handshakes in progress pass.
    pub fn new() -> Self {
        Self {
            armed: AtomicBool::new(false),
            closures: Mutex::new(Closures::default()),
            allowed: Mutex::new(Allowed::default()),
        }
    }

    fn closures(&self) -> std::sync::MutexGuard<'_, Closures> {
        self.closures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Let Initials whose destination is `id` through for a while: an ID
    /// the AM issued, or the one a client chose for a handshake the accept
    /// loop took (its repeated first Initials carry it).
    pub fn allow(&self, id: ConnectionId, address: IpAddr, now: Instant) {
        let mut allowed = self.allowed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Once only: an ID allowed again keeps its uses and its deadline.
        if let std::collections::hash_map::Entry::Vacant(entry) = allowed.uses.entry(id) {
            entry.insert((address, ALLOWED_ID_USES));
            allowed.order.push_back((now, id));
        }
        allowed.forget_expired(now);
    }

    /// Whether `id` is allowed from `from` at `now`; counts one use.
    fn take_allowed(&self, id: &[u8], from: IpAddr, now: Instant) -> bool {
        if id.len() > CONNECTION_ID_BYTES_MAX {
            return false;
        }
        let mut allowed = self.allowed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        allowed.forget_expired(now);
        match allowed.uses.get_mut(&ConnectionId::new(id)) {
            Some((address, uses)) if *address == from && *uses > 0 => {
                *uses -= 1;
                true
            }
            _ => false,
        }
    }

    fn rearm(&self, closures: &Closures) {
        let armed = !closures.backoff.is_empty() || !closures.at_bound.is_empty();
        self.armed.store(armed, Ordering::Release);
    }

    /// New connections from `address` are dropped until `until`.
    pub fn back_off(&self, address: IpAddr, until: Instant, now: Instant) {
        let mut closures = self.closures();
        if closures.backoff.len() >= GATE_ADDRESSES_MAX && !closures.backoff.contains_key(&address) {
            closures.backoff.retain(|_, end| *end > now);
            if closures.backoff.len() >= GATE_ADDRESSES_MAX {
                // The accept loop's check still holds this address back.
                return;
            }
        }
        let end = closures.backoff.entry(address).or_insert(until);
        *end = (*end).max(until);
        closures.backoff_last_end = Some(closures.backoff_last_end.map_or(until, |last| last.max(until)));
        self.rearm(&closures);
    }

    /// Whether `address` has reached its bound of handshakes in progress.
    pub fn set_at_bound(&self, address: IpAddr, at_bound: bool) {
        let mut closures = self.closures();
        let changed = if at_bound {
            closures.at_bound.insert(address)
        } else {
            closures.at_bound.remove(&address)
        };
        if changed {
            self.rearm(&closures);
        }
    }

    /// Why `datagram` from `from` is dropped, or `None` if it goes on to QUIC.
    fn closed(&self, datagram: &[u8], from: IpAddr, now: impl FnOnce() -> Instant) -> Option<Closed> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let id = initial_destination(datagram)?;
        let now = now();
        let verdict = {
            let mut closures = self.closures();
            if closures.backoff_last_end.is_some_and(|last| last <= now) {
                // Every backoff has ended: nothing to keep.
                closures.backoff.clear();
                closures.backoff_last_end = None;
                self.rearm(&closures);
            }
            if closures.at_bound.contains(&from) {
                Closed::Handshakes
            } else {
                match closures.backoff.get(&from) {
                    Some(until) if *until > now => Closed::Backoff,
                    Some(_) => {
                        closures.backoff.remove(&from);
                        self.rearm(&closures);
                        return None;
                    }
                    None => return None,
                }
            }
        };
        // A closed address: only a handshake in progress goes on.
        if self.take_allowed(id, from, now) {
            None
        } else {
            Some(verdict)
        }
    }
}

impl Default for InitialGate {
    fn default() -> Self {
        Self::new()
    }
}

/// The destination connection ID of `datagram` if it starts with a QUIC v1
/// Initial: a long header (0x80) of type Initial (bits 0x30 clear, RFC 9000
/// §17.2.2). Only the first packet of a coalesced datagram can open a
/// connection.
fn initial_destination(datagram: &[u8]) -> Option<&[u8]> {
    let &first = datagram.first()?;
    if first & 0x80 == 0 || first & 0x30 != 0 || datagram.get(1..5)? != QUIC_V1 {
        return None;
    }
    let length = usize::from(*datagram.get(5)?);
    datagram.get(6..6 + length)
}

thread_local! {
    /// The address of the handshake this thread is accepting, while it is.
    static ACCEPTING: Cell<Option<IpAddr>> = const { Cell::new(None) };
}

/// Run `accept` (quinn's `Incoming::accept`, which makes the connection's
/// first ID on the calling thread) so that the ID it issues is allowed for
/// the handshake from `address`.
pub fn accepting<T>(address: IpAddr, accept: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ACCEPTING.set(None);
        }
    }
    ACCEPTING.set(Some(address));
    let _reset = Reset;
    accept()
}

/// The endpoint's connection-ID generator, telling the gate of the first ID
/// of each handshake it accepts (inside [`accepting`]): a client's later
/// Initials carry it.
pub struct IssuedIds {
    inner: HashedConnectionIdGenerator,
    gate: Arc<InitialGate>,
}

/// The gate as the AM endpoint's hooks: the socket goes through the gate
/// ([`GatedSocket`]), and every connection ID the endpoint issues is made
/// by [`IssuedIds`], which tells the gate.
pub struct GateHooks(pub Arc<InitialGate>);

impl serving::tls::EndpointHooks for GateHooks {
    fn cid_generator(&self, cid_key: u64) -> Box<dyn ConnectionIdGenerator> {
        Box::new(IssuedIds::new(cid_key, self.0.clone()))
    }

    fn wrap_socket(&self, socket: Arc<dyn AsyncUdpSocket>) -> Arc<dyn AsyncUdpSocket> {
        Arc::new(GatedSocket::new(socket, self.0.clone()))
    }
}

impl IssuedIds {
    /// IDs from a [`HashedConnectionIdGenerator`] with `key`.
    pub fn new(key: u64, gate: Arc<InitialGate>) -> Self {
        Self {
            inner: HashedConnectionIdGenerator::from_key(key),
            gate,
        }
    }
}

impl ConnectionIdGenerator for IssuedIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let id = self.inner.generate_cid();
        if let Some(address) = ACCEPTING.get() {
            self.gate.allow(id, address, Instant::now());
        }
        id
    }

    fn validate(&self, id: &ConnectionId) -> Result<(), InvalidCid> {
        self.inner.validate(id)
    }

    fn cid_len(&self) -> usize {
        self.inner.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.inner.cid_lifetime()
    }
}

/// The AM's UDP socket with the [`InitialGate`] in front of QUIC: a dropped
/// datagram is handed to quinn with a length of zero, which it skips.
#[derive(Debug)]
pub struct GatedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    gate: Arc<InitialGate>,
}

impl GatedSocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, gate: Arc<InitialGate>) -> Self {
        Self { inner, gate }
    }
}

impl AsyncUdpSocket for GatedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(received)) => received,
            other => return other,
        };
        // One clock reading per batch, and only if a closed address sent.
        let mut now = None;
        let mut dropped = [0u64; 2];
        for (buffer, meta) in bufs.iter().zip(meta.iter_mut()).take(received) {
            let stride = meta.stride.max(1);
            let data = &buffer[..meta.len.min(buffer.len())];
            // With GRO one buffer holds several datagrams of one sender: it
            // is dropped only if every one of them is.
            let mut closed = None;
            for datagram in data.chunks(stride) {
                let verdict = self
                    .gate
                    .closed(datagram, meta.addr.ip(), || *now.get_or_insert_with(Instant::now));
                if verdict.is_none() {
                    closed = None;
                    break;
                }
                closed = verdict;
            }
            if let Some(closed) = closed {
                dropped[closed as usize] += data.len().div_ceil(stride) as u64;
                meta.len = 0;
            }
        }
        for closed in [Closed::Backoff, Closed::Handshakes] {
            if dropped[closed as usize] > 0 {
                metrics::counter!("acct_initials_dropped_total", "reason" => closed.reason())
                    .increment(dropped[closed as usize]);
            }
        }
        Poll::Ready(Ok(received))
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> (Arc<InitialGate>, IssuedIds) {
        let gate = Arc::new(InitialGate::new());
        let ids = IssuedIds::new(7, gate.clone());
        (gate, ids)
    }

    /// A long header packet of type `kind` (0 Initial, 2 Handshake) for `id`.
    fn long_header(kind: u8, id: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xc0 | (kind << 4)];
        packet.extend_from_slice(&QUIC_V1);
        packet.push(id.len() as u8);
        packet.extend_from_slice(id);
        packet.extend_from_slice(&[0; 8]);
        packet.resize(1200, 0);
        packet
    }

    const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const HONEST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

    #[test]
    fn first_initials_from_a_closed_address_are_dropped_and_nothing_else() {
        let (gate, mut ids) = gate();
        let now = Instant::now();
        let first = long_header(0, &[9; 16]);
        assert_eq!(gate.closed(&first, ATTACKER, || now), None, "nothing closed yet");
        gate.set_at_bound(ATTACKER, true);
        assert_eq!(gate.closed(&first, ATTACKER, || now), Some(Closed::Handshakes));
        assert_eq!(gate.closed(&first, HONEST, || now), None);
        // A handshake in progress: the client's later Initials carry the ID
        // the AM issued when it accepted it, from that address only.
        let ours = accepting(ATTACKER, || ids.generate_cid());
        assert_eq!(gate.closed(&long_header(0, &ours), ATTACKER, || now), None);
        let elsewhere = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
        gate.set_at_bound(elsewhere, true);
        assert_eq!(
            gate.closed(&long_header(0, &ours), elsewhere, || now),
            Some(Closed::Handshakes)
        );
        gate.set_at_bound(elsewhere, false);
        // IDs issued outside an accept (NEW_CONNECTION_ID) are never allowed.
        let later_id = ids.generate_cid();
        assert_eq!(
            gate.closed(&long_header(0, &later_id), ATTACKER, || now),
            Some(Closed::Handshakes)
        );
        // An ID that passes the generator's keyed check but was never
        // issued is a new attempt.
        let forged = HashedConnectionIdGenerator::from_key(7).generate_cid();
        assert!(ids.validate(&forged).is_ok());
        assert_eq!(
            gate.closed(&long_header(0, &forged), ATTACKER, || now),
            Some(Closed::Handshakes)
        );
        // Handshake packets, short headers, other versions, runts: untouched.
        assert_eq!(gate.closed(&long_header(2, &[9; 16]), ATTACKER, || now), None);
        assert_eq!(gate.closed(&[0x40; 1200], ATTACKER, || now), None);
        let mut draft = first.clone();
        draft[1..5].copy_from_slice(&[0xff, 0, 0, 29]);
        assert_eq!(gate.closed(&draft, ATTACKER, || now), None);
        for length in 0..8 {
            assert_eq!(gate.closed(&first[..length], ATTACKER, || now), None, "{length} bytes");
        }
        // A length byte pointing past the end is no Initial either.
        let mut short = first[..10].to_vec();
        short[5] = 20;
        assert_eq!(gate.closed(&short, ATTACKER, || now), None);
        // A length above 20 bytes is never an allowed ID.
        let mut long = first.clone();
        long[5] = 21;
        assert_eq!(gate.closed(&long, ATTACKER, || now), Some(Closed::Handshakes));
        gate.set_at_bound(ATTACKER, false);
        assert_eq!(gate.closed(&first, ATTACKER, || now), None);
        assert!(!gate.armed.load(Ordering::Relaxed));
    }

    #[test]
    fn an_allowed_id_passes_a_bounded_number_of_times_and_for_a_bounded_time() {
        let (gate, mut ids) = gate();
        let now = Instant::now();
        gate.set_at_bound(ATTACKER, true);
        // The ID a client chose for a handshake the accept loop took.
        let chosen = [5u8; 16];
        gate.allow(ConnectionId::new(&chosen), ATTACKER, now);
        for _ in 0..ALLOWED_ID_USES {
            assert_eq!(gate.closed(&long_header(0, &chosen), ATTACKER, || now), None);
        }
        // An attacker replaying it floods no further.
        assert_eq!(
            gate.closed(&long_header(0, &chosen), ATTACKER, || now),
            Some(Closed::Handshakes)
        );
        // Allowing it again gives it no more uses.
        gate.allow(ConnectionId::new(&chosen), ATTACKER, now);
        assert_eq!(
            gate.closed(&long_header(0, &chosen), ATTACKER, || now),
            Some(Closed::Handshakes)
        );
        // An issued ID passes until the handshake timeout, then no more.
        let start = Instant::now();
        let ours = accepting(ATTACKER, || ids.generate_cid());
        let end = Instant::now() + ALLOWED_FOR;
        assert_eq!(
            gate.closed(&long_header(0, &ours), ATTACKER, || start + ALLOWED_FOR
                - Duration::from_millis(100)),
            None
        );
        assert_eq!(
            gate.closed(&long_header(0, &ours), ATTACKER, || end),
            Some(Closed::Handshakes)
        );
    }

    #[test]
    fn allowed_ids_are_bounded() {
        let (gate, _) = gate();
        let now = Instant::now();
        for index in 0..(ALLOWED_IDS_MAX as u64 + 10) {
            gate.allow(ConnectionId::new(&index.to_be_bytes()), ATTACKER, now);
        }
        let allowed = gate.allowed.lock().unwrap();
        assert_eq!(allowed.order.len(), ALLOWED_IDS_MAX);
        assert_eq!(allowed.uses.len(), ALLOWED_IDS_MAX);
        // The oldest went first, the rest stay.
        assert!(!allowed.uses.contains_key(&ConnectionId::new(&0u64.to_be_bytes())));
        assert!(!allowed.uses.contains_key(&ConnectionId::new(&9u64.to_be_bytes())));
        assert!(allowed.uses.contains_key(&ConnectionId::new(&10u64.to_be_bytes())));
    }

    #[test]
    fn a_backoff_ends_by_itself() {
        let (gate, _) = gate();
        let now = Instant::now();
        let first = long_header(0, &[3; 12]);
        gate.back_off(ATTACKER, now + Duration::from_secs(2), now);
        // A shorter backoff does not shorten a longer one.
        gate.back_off(ATTACKER, now + Duration::from_secs(1), now);
        assert_eq!(
            gate.closed(&first, ATTACKER, || now + Duration::from_millis(1500)),
            Some(Closed::Backoff)
        );
        // One address's ended backoff is forgotten when it sends again.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
        gate.back_off(other, now + Duration::from_secs(1), now);
        assert_eq!(gate.closed(&first, other, || now + Duration::from_secs(1)), None);
        assert!(!gate.closures().backoff.contains_key(&other));
        assert!(gate.armed.load(Ordering::Relaxed), "the attacker's backoff runs on");
        // Once every backoff has ended, the gate is disarmed, whoever sends.
        assert_eq!(gate.closed(&first, HONEST, || now + Duration::from_secs(2)), None);
        assert!(!gate.armed.load(Ordering::Relaxed));
        assert!(gate.closures().backoff.is_empty());
    }

    #[test]
    fn the_backoff_table_is_bounded() {
        let (gate, _) = gate();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        for index in 0..GATE_ADDRESSES_MAX as u32 {
            gate.back_off(IpAddr::V4(index.into()), later, now);
        }
        gate.back_off(ATTACKER, later, now);
        assert_eq!(gate.closures().backoff.len(), GATE_ADDRESSES_MAX);
        assert_eq!(gate.closed(&long_header(0, &[3; 12]), ATTACKER, || now), None);
        // Once the others have expired, there is room again.
        gate.back_off(ATTACKER, later + Duration::from_secs(60), later);
        assert_eq!(gate.closures().backoff.len(), 1);
        assert_eq!(
            gate.closed(&long_header(0, &[3; 12]), ATTACKER, || later),
            Some(Closed::Backoff)
        );
    }
}
