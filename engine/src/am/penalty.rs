//! Backoff for providers disconnected for abuse (mostly bad signatures, or
//! stream after stream of protocol errors): until its backoff ends, a new
//! connection with the same certificate name is closed right after the
//! handshake, before it can cost a single verification. The backoff
//! doubles with each strike (1 s, 2 s, 4 s … at most 5 minutes) and a
//! strike is forgotten after an hour without a new one.
//!
//! Bounded: at most [`PENALTIES_MAX`] names (about 64 bytes each); when
//! full, expired entries are dropped first, then the entry that ends soonest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Names remembered at most.
pub const PENALTIES_MAX: usize = 10_000;
/// The first backoff.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Strikes older than this are forgotten.
pub const STRIKES_FORGOTTEN_AFTER: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug)]
struct Penalty {
    strikes: u32,
    until: Instant,
}

/// The backoffs of abusive providers, by certificate name.
#[derive(Default)]
pub struct Penalties {
    entries: Mutex<HashMap<String, Penalty>>,
}

impl Penalties {
    /// Record a strike against `name` at `now`; returns its backoff.
    pub fn strike(&self, name: &str, now: Instant) -> Duration {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let strikes = match entries.get(name) {
            Some(penalty) if now < penalty.until + STRIKES_FORGOTTEN_AFTER => penalty.strikes + 1,
            _ => 1,
        };
        let backoff = BACKOFF_FIRST
            .saturating_mul(1u32 << (strikes - 1).min(16))
            .min(BACKOFF_MAX);
        if entries.len() >= PENALTIES_MAX && !entries.contains_key(name) {
            entries.retain(|_, penalty| now < penalty.until + STRIKES_FORGOTTEN_AFTER);
            if entries.len() >= PENALTIES_MAX
                && let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, penalty)| penalty.until)
                    .map(|(key, _)| key.clone())
            {
                entries.remove(&soonest);
            }
        }
        entries.insert(
            name.to_owned(),
            Penalty {
                strikes,
                until: now + backoff,
            },
        );
        backoff
    }

    /// How long `name` must still wait at `now`, if it is in a backoff.
    pub fn remaining(&self, name: &str, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .get(name)
            .and_then(|penalty| penalty.until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_is_forgotten() {
        let penalties = Penalties::default();
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
    fn bounded() {
        let penalties = Penalties::default();
        let now = Instant::now();
        for index in 0..PENALTIES_MAX + 10 {
            penalties.strike(&format!("p{index}"), now);
        }
        assert!(penalties.entries.lock().unwrap().len() <= PENALTIES_MAX);
    }
}
