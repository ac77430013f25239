//! The Initial gate: a new connection attempt from an address that may not
//! start one now is dropped as it comes off the UDP socket, before QUIC
//! derives its keys and decrypts it.
//!
//! The accept loop already ignores such attempts (an address in its
//! backoff, or with [`HANDSHAKES_PER_ADDRESS_MAX`] handshakes in progress),
//! but only after quinn has decrypted the Initial to hand it over: about
//! 8 µs of AM CPU each, so a flood of 25,000 Initials a second from one
//! address cost a fifth of a core. The gate looks at three header fields
//! instead (long header, type Initial, version 1) and, for those, whether
//! the destination connection ID is one this AM issued: a client's later
//! Initials (its acknowledgements, often coalesced with its handshake
//! Finished) carry the AM's own ID and pass, so handshakes already in
//! progress complete. Only a first Initial, which carries an ID the client
//! chose, is dropped. Datagrams with a short header (every packet of an
//! established connection) cost one comparison.
//!
//! Bounded: at most [`GATE_ADDRESSES_MAX`] addresses in backoff are held
//! (about 64 bytes each); beyond that, the accept loop's own check still
//! applies. Addresses at their handshake bound are at most
//! `HANDSHAKES_MAX / HANDSHAKES_PER_ADDRESS_MAX` (4).
//!
//! [`HANDSHAKES_PER_ADDRESS_MAX`]: super::server::HANDSHAKES_PER_ADDRESS_MAX

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, HashedConnectionIdGenerator};

/// Addresses in backoff the gate holds at most.
pub const GATE_ADDRESSES_MAX: usize = 10_000;

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
    /// Addresses at their bound of handshakes in progress.
    at_bound: HashSet<IpAddr>,
}

/// Which addresses may not start a connection now. Shared by the accept
/// loop (which closes and opens addresses) and the socket (which asks).
pub struct InitialGate {
    /// False while nothing is closed: then the socket takes no lock.
    armed: AtomicBool,
    closures: Mutex<Closures>,
    /// Recognises the connection IDs this AM issued.
    ids: HashedConnectionIdGenerator,
}

impl fmt::Debug for InitialGate {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("InitialGate").finish_non_exhaustive()
    }
}

impl InitialGate {
    /// A gate that recognises the connection IDs issued by a
    /// [`HashedConnectionIdGenerator`] with `connection_id_key` (the
    /// endpoint's own, see `tls::server_endpoint`).
    pub fn new(connection_id_key: u64) -> Self {
        Self {
            armed: AtomicBool::new(false),
            closures: Mutex::new(Closures::default()),
            ids: HashedConnectionIdGenerator::from_key(connection_id_key),
        }
    }

    fn closures(&self) -> std::sync::MutexGuard<'_, Closures> {
        self.closures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        if !self.armed.load(Ordering::Acquire) || !self.opens_a_connection(datagram) {
            return None;
        }
        let mut closures = self.closures();
        if closures.at_bound.contains(&from) {
            return Some(Closed::Handshakes);
        }
        let until = *closures.backoff.get(&from)?;
        if until > now() {
            return Some(Closed::Backoff);
        }
        closures.backoff.remove(&from);
        self.rearm(&closures);
        None
    }

    /// Whether `datagram` starts with the first Initial of a new QUIC v1
    /// connection: a long header of type Initial whose destination
    /// connection ID is not one this AM issued.
    fn opens_a_connection(&self, datagram: &[u8]) -> bool {
        // Long header (0x80) of type Initial (bits 0x30 clear, RFC 9000 §17.2.2).
        let Some(&first) = datagram.first() else { return false };
        if first & 0x80 == 0 || first & 0x30 != 0 || datagram.get(1..5) != Some(&QUIC_V1[..]) {
            return false;
        }
        let Some(&length) = datagram.get(5) else { return false };
        let Some(id) = datagram.get(6..6 + usize::from(length)) else {
            return false;
        };
        // Checked before ConnectionId::new, which takes at most 20 bytes.
        if id.len() != self.ids.cid_len() {
            return true;
        }
        self.ids.validate(&ConnectionId::new(id)).is_err()
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
    use std::time::Duration;

    fn gate() -> (InitialGate, HashedConnectionIdGenerator) {
        (InitialGate::new(7), HashedConnectionIdGenerator::from_key(7))
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
        // A handshake in progress: the client's later Initials carry our ID.
        let ours = ids.generate_cid();
        assert_eq!(gate.closed(&long_header(0, &ours), ATTACKER, || now), None);
        // An 8-byte ID the AM did not issue is a new attempt.
        assert_eq!(
            gate.closed(&long_header(0, &[1; 8]), ATTACKER, || now),
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
        // A length byte pointing past the end is no new connection either.
        let mut short = first[..10].to_vec();
        short[5] = 20;
        assert_eq!(gate.closed(&short, ATTACKER, || now), None);
        gate.set_at_bound(ATTACKER, false);
        assert_eq!(gate.closed(&first, ATTACKER, || now), None);
        assert!(!gate.armed.load(Ordering::Relaxed));
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
        assert_eq!(gate.closed(&first, ATTACKER, || now + Duration::from_secs(2)), None);
        assert!(!gate.armed.load(Ordering::Relaxed), "the expired entry is gone");
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
