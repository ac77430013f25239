//! A producer's linger: a message that falls due is held up to a bound so
//! that the messages falling due meanwhile travel with it, in one write
//! (fewer datagrams, fewer ack frames), as Kafka's `linger.ms` does. The
//! latency of each message still counts from the time it fell due.
//!
//! One rule for both senders: [`crate::node::ProviderNode`]'s background
//! sender (default [`LINGER_DEFAULT`]) and loadgen's open loop
//! (`--linger-ms`, default 0) decide when a held batch goes with
//! [`Linger::ripe`] and when to look again with [`Linger::release_at`].
//!
//! [`Held`] is the state the node keeps: only the time the oldest held
//! message fell due (the messages themselves are the sessions' unacked
//! ones), so it is bounded by construction.

use std::time::{Duration, Instant};

/// ProviderNode's default: at most 5 ms, the hold the overload issue
/// accepted (each message's latency still counts from its due time).
pub const LINGER_DEFAULT: Duration = Duration::from_millis(5);
/// The longest linger either sender takes: past a second, a batch is a
/// hold, not a linger.
pub const LINGER_MAX: Duration = Duration::from_secs(1);

/// How long a due message is held for others to join it (zero: sent when due).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Linger(Duration);

impl Linger {
    /// A linger of `hold`, capped at [`LINGER_MAX`].
    pub fn new(hold: Duration) -> Self {
        Self(hold.min(LINGER_MAX))
    }

    /// The hold.
    pub fn hold(self) -> Duration {
        self.0
    }

    /// When a batch whose oldest message fell due at `oldest` goes.
    pub fn release_at(self, oldest: Instant) -> Instant {
        oldest + self.0
    }

    /// Whether a batch whose oldest message fell due at `oldest` goes now.
    pub fn ripe(self, oldest: Instant, now: Instant) -> bool {
        self.release_at(oldest) <= now
    }
}

/// What a sender holds for its linger: when the oldest held message fell
/// due, if any is held.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    oldest: Option<Instant>,
}

impl Held {
    /// A message fell due at `due`.
    pub fn note(&mut self, due: Instant) {
        self.oldest = Some(self.oldest.map_or(due, |oldest| oldest.min(due)));
    }

    /// When what is held goes (`None`: nothing is held).
    pub fn release_at(&self, linger: Linger) -> Option<Instant> {
        self.oldest.map(|oldest| linger.release_at(oldest))
    }

    /// Whether anything is held.
    pub fn is_empty(&self) -> bool {
        self.oldest.is_none()
    }

    /// If what is held is ripe at `now`, let it go (true) and hold nothing.
    pub fn take_if_ripe(&mut self, linger: Linger, now: Instant) -> bool {
        match self.oldest {
            Some(oldest) if linger.ripe(oldest, now) => {
                self.oldest = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_when_its_oldest_message_has_waited_the_linger() {
        let start = Instant::now();
        let linger = Linger::new(Duration::from_millis(5));
        let mut held = Held::default();
        assert!(held.is_empty());
        assert_eq!(held.release_at(linger), None);
        assert!(
            !held.take_if_ripe(linger, start + Duration::from_secs(1)),
            "nothing held"
        );
        held.note(start + Duration::from_millis(2));
        // An older message moves the release earlier; a younger one does not.
        held.note(start);
        held.note(start + Duration::from_millis(4));
        assert_eq!(held.release_at(linger), Some(start + Duration::from_millis(5)));
        assert!(!held.take_if_ripe(linger, start + Duration::from_millis(4)));
        assert!(!held.is_empty());
        assert!(held.take_if_ripe(linger, start + Duration::from_millis(5)));
        assert!(held.is_empty(), "released: nothing held");
    }

    #[test]
    fn zero_sends_when_due_and_the_hold_is_capped() {
        let start = Instant::now();
        let none = Linger::default();
        assert!(none.ripe(start, start));
        assert_eq!(none.release_at(start), start);
        assert_eq!(Linger::new(Duration::from_secs(60)).hold(), LINGER_MAX);
        assert!(!Linger::new(Duration::from_millis(5)).ripe(start, start + Duration::from_millis(4)));
    }
}
