//! Handshakes in progress: bounded in all and per source address, so that
//! a flood of handshakes started and abandoned cannot take the slots of
//! honest providers. An address at its bound is closed at the
//! [`InitialGate`] until one of its handshakes ends; a handshake not
//! finished within [`HANDSHAKE_TIMEOUT`] is dropped.
//!
//! [`HANDSHAKE_TIMEOUT`]: super::gate::HANDSHAKE_TIMEOUT

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::gate::InitialGate;

/// Handshakes in progress at once. A handshake holds a connection slot; a
/// flood of handshakes started and abandoned must not take the slots of
/// honest providers, so beyond this new handshakes are refused (a QUIC
/// CONNECTION_REFUSED, before any cryptography). Beyond the per-address
/// bound, and from an address in its backoff, they are dropped unanswered
/// instead: a flood gets no packet back to cost the AM or to amplify.
pub const HANDSHAKES_MAX: usize = 1_024;
/// Handshakes in progress from one IP address at once (a quarter of
/// [`HANDSHAKES_MAX`]: one address cannot take them all).
pub const HANDSHAKES_PER_ADDRESS_MAX: u32 = 256;

/// Handshakes in progress, in all and per source address. An address at
/// its bound is closed at the [`InitialGate`](InitialGate)
/// until one of its handshakes ends.
pub(super) struct Handshakes {
    by_address: std::sync::Mutex<HashMap<std::net::IpAddr, u32>>,
    gate: Arc<InitialGate>,
}

/// Which handshake bound a new connection attempt hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HandshakesFull {
    /// [`HANDSHAKES_MAX`].
    All,
    /// [`HANDSHAKES_PER_ADDRESS_MAX`].
    Address,
}

impl HandshakesFull {
    /// The `reason` label of `acct_connections_refused_total`.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::All => "handshakes",
            Self::Address => "handshakes_per_address",
        }
    }
}

impl Handshakes {
    pub(super) fn new(gate: Arc<InitialGate>) -> Self {
        Self {
            by_address: std::sync::Mutex::new(HashMap::new()),
            gate,
        }
    }

    /// Take a handshake slot for `address`, or say which bound is reached.
    /// The client's repeated first Initials (sent again if the AM's answer
    /// is late) carry `client_chosen_id`: the gate lets them through even
    /// once this handshake brings the address to its bound.
    pub(super) fn enter(
        &self,
        address: std::net::IpAddr,
        client_chosen_id: quinn::ConnectionId,
    ) -> Result<(), HandshakesFull> {
        let mut by_address = self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let total: u32 = by_address.values().sum();
        if total as usize >= HANDSHAKES_MAX {
            return Err(HandshakesFull::All);
        }
        let count = by_address.entry(address).or_default();
        if *count >= HANDSHAKES_PER_ADDRESS_MAX {
            return Err(HandshakesFull::Address);
        }
        *count += 1;
        self.gate.allow(client_chosen_id, address, Instant::now());
        if *count == HANDSHAKES_PER_ADDRESS_MAX {
            self.gate.set_at_bound(address, true);
        }
        Ok(())
    }

    pub(super) fn leave(&self, address: std::net::IpAddr) {
        let mut by_address = self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = by_address.get_mut(&address) {
            if *count == HANDSHAKES_PER_ADDRESS_MAX {
                self.gate.set_at_bound(address, false);
            }
            *count -= 1;
            if *count == 0 {
                by_address.remove(&address);
            }
        }
    }
}
