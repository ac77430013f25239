//! Backoffs for abuse, by certificate name and by source address.
//!
//! - By name: a provider connection closed for abuse, whatever the
//!   [`Verdict`](super::abuse::Verdict) (bad signatures, conflicting
//!   duplicates, messages for foreign sessions, tiny packets, or protocol
//!   errors), is a strike against its certificate name, and the name is in
//!   a backoff; until it ends, a new connection with the same certificate
//!   name is closed right after the handshake (close code 6, BACKOFF),
//!   before it can cost a single verification. The backoff doubles with
//!   each strike (1 s, 2 s, 4 s … at most 5 minutes).
//! - By address: each handshake that ends in a refused identity is a strike
//!   against the source IP address: a denied certificate (close code 4,
//!   DENIED), a name in its backoff (6, BACKOFF), or a provider that already
//!   holds `connections_per_provider_max` connections (8,
//!   TOO_MANY_CONNECTIONS). A certificate whose role may not connect (1) is
//!   not a strike. From the [`ADDRESS_STRIKES_FREE`]-th strike on, the
//!   address is in a backoff (1 s doubling to at most 1 minute) during which
//!   its new connection attempts are dropped unanswered, before any
//!   cryptography: a revoked provider reconnecting in a loop costs the AM a
//!   few handshakes, not hundreds per second. The free strikes and the short
//!   maximum are for addresses shared with honest parties (NAT): one
//!   revoked provider retrying at a sane pace never triggers it.
//!
//! A strike is forgotten after an hour without a new one. Bounded: at most
//! [`PENALTIES_MAX`] keys per table (about 64 bytes each); when full,
//! expired entries are dropped first, then the entry that ends soonest.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered at most, per table.
pub const PENALTIES_MAX: usize = 10_000;
/// The first backoff.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest backoff of a name.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The longest backoff of an address.
pub const ADDRESS_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Strikes against an address before its first backoff.
pub const ADDRESS_STRIKES_FREE: u32 = 8;
/// Strikes older than this are forgotten.
pub const STRIKES_FORGOTTEN_AFTER: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug)]
struct Penalty {
    strikes: u32,
    until: Instant,
}

/// Backoffs by key: certificate names or source addresses.
pub struct Penalties<K> {
    entries: Mutex<HashMap<K, Penalty>>,
    strikes_free: u32,
    backoff_max: Duration,
}

impl Default for Penalties<String> {
    /// Names: a backoff from the first strike, at most [`BACKOFF_MAX`].
    fn default() -> Self {
        Self::new(0, BACKOFF_MAX)
    }
}

impl Default for Penalties<IpAddr> {
    /// Addresses: a backoff after [`ADDRESS_STRIKES_FREE`] strikes, at most
    /// [`ADDRESS_BACKOFF_MAX`].
    fn default() -> Self {
        Self::new(ADDRESS_STRIKES_FREE, ADDRESS_BACKOFF_MAX)
    }
}

impl<K: Hash + Eq + Clone> Penalties<K> {
    /// A table whose first `strikes_free` strikes cost no backoff, and
    /// whose backoff doubles from [`BACKOFF_FIRST`] to `backoff_max`.
    pub fn new(strikes_free: u32, backoff_max: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            strikes_free,
            backoff_max,
        }
    }

    /// Record a strike against `key` at `now`; returns its backoff (zero
    /// while its strikes are free).
    pub fn strike<Q>(&self, key: &Q, now: Instant) -> Duration
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let strikes = match entries.get(key) {
            Some(penalty) if now < penalty.until + STRIKES_FORGOTTEN_AFTER => penalty.strikes + 1,
            _ => 1,
        };
        let backoff = match strikes.checked_sub(self.strikes_free + 1) {
            Some(doublings) => BACKOFF_FIRST
                .saturating_mul(1u32 << doublings.min(16))
                .min(self.backoff_max),
            None => Duration::ZERO,
        };
        if entries.len() >= PENALTIES_MAX && !entries.contains_key(key) {
            entries.retain(|_, penalty| now < penalty.until + STRIKES_FORGOTTEN_AFTER);
            if entries.len() >= PENALTIES_MAX
                && let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, penalty)| penalty.until)
                    .map(|(key, _)| key.clone())
            {
                entries.remove::<K>(&soonest);
            }
        }
        entries.insert(
            key.to_owned(),
            Penalty {
                strikes,
                until: now + backoff,
            },
        );
        backoff
    }

    /// How long `key` must still wait at `now`, if it is in a backoff.
    pub fn remaining<Q>(&self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .get(key)
            .and_then(|penalty| penalty.until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_is_forgotten() {
        let penalties = Penalties::<String>::default();
        let start = Instant::now();
        assert_eq!(penalties.strike("p", start), Duration::from_secs(1));
        assert!(penalties.remaining("p", start).is_some());
        assert!(penalties.remaining("p", start + Duration::from_secs(1)).is_none());
        assert!(penalties.remaining("other", start).is_none());
        assert_eq!(penalties.strike("p", start), Duration::from_secs(2));
        assert_eq!(penalties.strike("p", start), Duration::from_secs(4));
        for _ in 0..20 {
            penalties.strike("p", start);
        }
        assert_eq!(penalties.strike("p", start), BACKOFF_MAX);
        let later = start + BACKOFF_MAX + STRIKES_FORGOTTEN_AFTER + Duration::from_secs(1);
        assert_eq!(penalties.strike("p", later), Duration::from_secs(1));
    }

    #[test]
    fn addresses_get_free_strikes_then_a_shorter_backoff() {
        let penalties = Penalties::<IpAddr>::default();
        let address: IpAddr = [127, 0, 0, 2].into();
        let start = Instant::now();
        for _ in 0..ADDRESS_STRIKES_FREE {
            assert_eq!(penalties.strike(&address, start), Duration::ZERO);
            assert!(penalties.remaining(&address, start).is_none());
        }
        assert_eq!(penalties.strike(&address, start), Duration::from_secs(1));
        assert!(penalties.remaining(&address, start).is_some());
        assert!(penalties.remaining(&IpAddr::from([127, 0, 0, 1]), start).is_none());
        assert_eq!(penalties.strike(&address, start), Duration::from_secs(2));
        for _ in 0..20 {
            penalties.strike(&address, start);
        }
        assert_eq!(penalties.strike(&address, start), ADDRESS_BACKOFF_MAX);
    }

    #[test]
    fn bounded() {
        let penalties = Penalties::<String>::default();
        let now = Instant::now();
        for index in 0..PENALTIES_MAX + 10 {
            penalties.strike(&format!("p{index}"), now);
        }
        assert!(penalties.entries.lock().unwrap().len() <= PENALTIES_MAX);
    }
}
