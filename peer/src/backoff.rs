//! Backing off after "busy, retry" (BUSY, OUT_OF_SPACE or SHUTTING_DOWN
//! answers): the next attempt waits a jittered,
//! exponentially growing delay, so that an overloaded AM that sheds load is
//! not met by providers that send the shed messages straight back (a spin
//! that turns shedding into more load).
//!
//! The delay after the n-th refusal in a row is
//! `min(BUSY_BACKOFF_MIN × 2^(n−1), BUSY_BACKOFF_MAX)` times a factor drawn
//! uniformly from 0.5..1.5: providers refused together do not come back
//! together. Refusals that arrive while a backoff runs (the other answers
//! of the same flight) count once. The streak ends only after a quiet
//! time: a refusal of an attempt sent at least the last backoff's nominal
//! delay after that backoff ended starts again at the first delay (timed
//! by the attempt's send, not by the answer, which a full queue or a slow
//! connection attempt delays by as much as a first backoff). A stored
//! answer does not end it: an AM that sheds a share of the reads stores
//! the rest, so nearly every flight that meets a shedding AM gets both
//! answers, and a streak ended by each stored one would never grow past
//! the first delay (measured: 1,000 closed-loop providers kept sending
//! twice what the AM could take, half of it refused, and the refusals'
//! cost cut the stored rate by a sixth).
//!
//! Used by [`crate::node::ProviderNode`] per partition and by loadgen per
//! provider: the same code path. docs/protocol.md 3.2 states the rule for
//! any client.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use wire::AckStatus;

/// Whether an answer asks the sender to back off before it sends the
/// message again: every retryable status but WRONG_PARTITION (which asks
/// for another partition, not for a pause).
pub fn asks_backoff(status: AckStatus) -> bool {
    status.is_retryable() && status != AckStatus::WRONG_PARTITION
}

/// The first backoff: half the AM's default overload target (100 ms of queue
/// delay); sooner, a retry would likely meet the same shed share.
pub const BUSY_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest backoff (before jitter).
pub const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One sender's backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Refusals in a row (each backoff counts one).
    streak: u32,
    /// No retry before this.
    until: Option<Instant>,
    /// xorshift64 state of the jitter.
    random: u64,
    /// The first delay and the longest (before jitter).
    first: Duration,
    most: Duration,
    /// The last backoff's delay before jitter: the quiet time after it
    /// that ends the streak.
    nominal: Duration,
}

impl Default for Backoff {
    /// The rule after "busy, retry", with a random seed (per process,
    /// without another dependency).
    fn default() -> Self {
        Self::with_seed(random_seed())
    }
}

/// A fresh per-process seed.
fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    hasher.finish()
}

impl Backoff {
    /// The same rule with other bounds (reconnection attempts), the jitter
    /// drawn from `seed` (`None`: a fresh random one).
    pub fn with_bounds(first: Duration, most: Duration, seed: Option<u64>) -> Self {
        Self {
            first,
            most,
            ..Self::with_seed(seed.unwrap_or_else(random_seed))
        }
    }

    /// A backoff whose jitter is drawn from `seed` (reproducible runs).
    pub fn with_seed(seed: u64) -> Self {
        // splitmix64 of the seed: nearby seeds (provider numbers) start
        // far apart.
        let mut mixed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^= mixed >> 31;
        Self {
            streak: 0,
            until: None,
            random: mixed | 1,
            first: BUSY_BACKOFF_MIN,
            most: BUSY_BACKOFF_MAX,
            nominal: Duration::ZERO,
        }
    }

    /// A "busy, retry" answer (or a failed attempt) at `now` to an attempt
    /// sent at `sent`: starts the next backoff unless one runs. Returns
    /// when retries may start.
    pub fn refused(&mut self, now: Instant, sent: Instant) -> Instant {
        if let Some(until) = self.until {
            if until > now {
                return until;
            }
            // The attempt went out after a quiet time as long as the last
            // backoff (nominally): the streak starts again.
            if sent.saturating_duration_since(until) >= self.nominal {
                self.streak = 0;
            }
        }
        self.streak = self.streak.saturating_add(1);
        let doubled = self.first.saturating_mul(1u32 << (self.streak - 1).min(16));
        self.nominal = doubled.min(self.most);
        let delay = self.nominal.mul_f64(0.5 + self.uniform());
        let until = now + delay;
        self.until = Some(until);
        until
    }

    /// A success that shows the other side well (a connection made): the
    /// streak ends (a backoff already running still runs). Not for stored
    /// answers from an AM that may be shedding (see the module's text).
    pub fn stored(&mut self) {
        self.streak = 0;
    }

    /// When retries may start again; `None` when not backing off.
    pub fn until(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|until| *until > now)
    }

    /// When the last backoff ended or ends (`None`: none yet).
    pub fn last_until(&self) -> Option<Instant> {
        self.until
    }

    /// Whether a retry may go at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.until(now).is_none()
    }

    /// Uniform in 0..1 (the jitter).
    fn uniform(&mut self) -> f64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A sender's bound on unanswered messages under "busy, retry", as TCP's
/// congestion window (additive increase, multiplicative decrease): each
/// backoff halves it, from what was in flight when the refusal came; each
/// window's worth of stored answers grows it by one message; it stays
/// between 1 and `most`. With the backoff alone, a sender that may keep
/// many messages in flight comes back from each backoff with all of them
/// at once and meets the shedding again: measured with 1,000 providers of
/// 64 each, a third of what they sent was refused. With the window it
/// comes back with what the AM took, and grows from there.
#[derive(Debug, Clone)]
pub struct Window {
    size: f64,
    most: f64,
}

impl Default for Window {
    /// No bound until a backoff sets one.
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl Window {
    /// A window at its largest, `most` messages (at least 1).
    pub fn new(most: usize) -> Self {
        let most = most.max(1) as f64;
        Self { size: most, most }
    }

    /// Messages that may be unanswered now (at least 1).
    pub fn size(&self) -> usize {
        (self.size as usize).max(1)
    }

    /// A backoff began with `in_flight` messages unanswered: halve.
    pub fn backed_off(&mut self, in_flight: usize) {
        self.size = (self.size.min(in_flight as f64) / 2.0).max(1.0);
    }

    /// `answers` messages were answered stored: grow by one per window.
    pub fn stored(&mut self, answers: usize) {
        self.size = (self.size + answers as f64 / self.size).min(self.most);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_halves_at_each_backoff_and_grows_by_one_per_window() {
        let mut window = Window::new(64);
        assert_eq!(window.size(), 64);
        // Refused with 40 in flight: 20, then 10.
        window.backed_off(40);
        assert_eq!(window.size(), 20);
        window.backed_off(64);
        assert_eq!(window.size(), 10);
        // Ten stored answers (a window's worth): one more.
        window.stored(10);
        assert_eq!(window.size(), 11);
        for _ in 0..10 {
            window.backed_off(1);
        }
        assert_eq!(window.size(), 1);
        for _ in 0..10_000 {
            window.stored(64);
        }
        assert_eq!(window.size(), 64);
    }

    #[test]
    fn refusals_in_a_row_double_the_delay_up_to_the_bound_with_jitter() {
        let start = Instant::now();
        let mut backoff = Backoff::with_seed(7);
        let mut now = start;
        let mut delays = Vec::new();
        for _ in 0..12 {
            let until = backoff.refused(now, now);
            delays.push(until - now);
            assert!(!backoff.ready(now));
            now = until;
            assert!(backoff.ready(now));
        }
        for (n, delay) in delays.iter().enumerate() {
            let nominal = BUSY_BACKOFF_MIN.saturating_mul(1 << n.min(16)).min(BUSY_BACKOFF_MAX);
            assert!(
                *delay >= nominal / 2 && *delay < nominal * 3 / 2,
                "refusal {n}: {delay:?} for {nominal:?}"
            );
        }
        // An explicit success ends the streak: the next refusal starts over.
        backoff.stored();
        let until = backoff.refused(now, now);
        assert!(until - now < BUSY_BACKOFF_MIN * 3 / 2);
    }

    #[test]
    fn the_streak_ends_after_a_quiet_time_as_long_as_the_last_backoff() {
        let start = Instant::now();
        let mut backoff = Backoff::with_seed(11);
        // Three refusals, each as the previous backoff ends: 50, 100, 200 ms.
        let mut now = start;
        for _ in 0..3 {
            now = backoff.refused(now, now);
        }
        // Refused again 100 ms after the 200 ms backoff ended: not quiet
        // long enough, the fourth backoff (400 ms nominal).
        let until = backoff.refused(now + Duration::from_millis(100), now + Duration::from_millis(100));
        let delay = until - (now + Duration::from_millis(100));
        assert!(delay >= Duration::from_millis(200), "{delay:?}");
        // Refused 400 ms after that one ended: quiet long enough, the first delay again.
        let later = until + Duration::from_millis(400);
        let delay = backoff.refused(later, later) - later;
        assert!(delay < BUSY_BACKOFF_MIN * 3 / 2, "{delay:?}");
    }

    #[test]
    fn a_late_answer_to_an_attempt_sent_at_once_still_doubles() {
        // A full queue answers BUSY after admission_wait_ms (50 ms, as long
        // as the first backoff): the quiet time counts from the send.
        let start = Instant::now();
        let mut backoff = Backoff::with_seed(5);
        let mut now = start;
        let mut delays = Vec::new();
        for _ in 0..4 {
            let sent = now;
            let answered = sent + Duration::from_millis(120);
            let until = backoff.refused(answered, sent);
            delays.push(until - answered);
            now = until;
        }
        assert!(delays[3] >= BUSY_BACKOFF_MIN * 4, "{delays:?}");
    }

    #[test]
    fn refusals_during_a_backoff_count_once() {
        let start = Instant::now();
        let mut backoff = Backoff::with_seed(1);
        let first = backoff.refused(start, start);
        for _ in 0..100 {
            assert_eq!(
                backoff.refused(start + Duration::from_millis(1), start + Duration::from_millis(1)),
                first
            );
        }
        // The second backoff is the second of the streak, not the 101st.
        let second = backoff.refused(first, first);
        assert!(second - first < BUSY_BACKOFF_MIN * 2 * 3 / 2);
    }

    #[test]
    fn the_jitter_spreads_providers_refused_together() {
        let now = Instant::now();
        let mut untils: Vec<Instant> = (1..=100)
            .map(|seed| Backoff::with_seed(seed).refused(now, now))
            .collect();
        untils.sort();
        untils.dedup();
        assert!(untils.len() > 90, "{} distinct of 100", untils.len());
        let spread = *untils.last().unwrap() - untils[0];
        assert!(spread > BUSY_BACKOFF_MIN / 2, "spread {spread:?}");
    }
}
