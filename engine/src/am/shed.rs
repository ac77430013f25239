//! Overload control: keep the verify queue's delay near a target by
//! answering a share of the stream reads BUSY at admission, before they
//! cost a signature check.
//!
//! The measure is the queue's actual delay, not its length: each read
//! batch is stamped when it is queued, and the verifiers report how long
//! it waited when they take it (its sojourn, also the histogram
//! `acct_verify_queue_seconds`). Every [`UPDATE_INTERVAL`] the admission
//! path that finds the interval over turns the samples into one delay (the
//! mean sojourn of the batches taken; with none taken while some wait, the
//! time since the last was taken, which the oldest has waited at least)
//! and moves the share of reads it sheds, as a proportional-integral
//! controller does (the PIE scheme of RFC 8033, in its simplest form):
//!
//! ```text
//! share += ALPHA × (delay − target) / target + BETA × (delay − previous delay) / target
//! ```
//!
//! clamped to 0..=[`SHARE_MAX`], rising by at most [`RISE_MAX`] per
//! interval (one slow batch does not shed everything at once). A delay
//! that stays at twice the target raises the share by [`ALPHA`] per
//! interval (from 0 to a half in about 250 ms); once the delay is under
//! the target the share falls as fast, an empty queue decays it by a tenth
//! per interval, and so does every interval in which no read was admitted
//! (updates run on admission). The share is applied
//! without randomness: each read adds the share to a running sum and is
//! shed when the sum crosses a whole number, so that exactly that share of
//! reads is shed, spread evenly (the reads of one connection are no more
//! likely to be shed together than any others).
//!
//! Why not CoDel's drop schedule: it sheds one packet per interval,
//! shortening the interval by the square root of the drops, which takes
//! hundreds of drops to reach the half of the reads that twice the
//! capacity needs; the AM sees thousands of reads a second, and a share
//! moved by the delay reaches it in a quarter of a second.
//!
//! Bounded: a fixed set of atomics, no allocation.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the shed share is moved.
pub const UPDATE_INTERVAL: Duration = Duration::from_millis(10);
/// Share gained per interval per target of delay above the target.
pub const ALPHA: f64 = 0.02;
/// Share gained per interval per target the delay grew by since the last.
pub const BETA: f64 = 0.05;
/// The most the share rises in one interval: one slow batch (a commit
/// that took a second) does not shed nearly everything at once; a delay
/// that stays high still reaches a half in 100 ms.
pub const RISE_MAX: f64 = 0.05;
/// The share never reaches 1: some reads always get through, so that the
/// delay keeps being measured and providers keep making progress.
pub const SHARE_MAX: f64 = 0.98;
/// A share below this is taken as none.
const SHARE_MIN: f64 = 0.001;
/// Fixed-point unit of the share and of the running sum.
const ONE: u64 = 1 << 32;

/// Why a read was answered BUSY at admission (the `reason` label of
/// `acct_shed_messages_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The controller shed it: the queue's delay is above the target.
    QueueDelay,
    /// The queue had no room within `admission_wait_ms`.
    QueueFull,
}

impl ShedReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::QueueDelay => "queue_delay",
            Self::QueueFull => "queue_full",
        }
    }
}

/// The controller's state between updates.
struct Control {
    /// The share of reads shed, 0..=SHARE_MAX.
    share: f64,
    /// The delay measured at the last update, seconds.
    previous_delay: f64,
    /// When the last update ran (µs since the epoch).
    last_update_us: u64,
}

/// The verify queue's overload control, shared by every stream's admission
/// and every verifier.
pub struct Shedder {
    /// Target delay, seconds; 0 turns shedding off.
    target: f64,
    /// Since when the clock readings below count, in microseconds.
    epoch: Instant,
    /// The share now, in units of [`ONE`] (read by every admission).
    share: AtomicU64,
    /// Running sum of shares; a read that crosses a whole unit is shed.
    credit: AtomicU64,
    /// Samples since the last update: sojourns summed (µs) and counted.
    sojourn_sum_us: AtomicU64,
    sojourn_count: AtomicU64,
    /// When the verifiers last took a batch (µs since `epoch`).
    last_taken_us: AtomicU64,
    /// When the next update is due (µs since `epoch`).
    next_update_us: AtomicU64,
    control: Mutex<Control>,
}

impl std::fmt::Debug for Shedder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Shedder")
            .field("target", &self.target)
            .field("share", &self.share())
            .finish_non_exhaustive()
    }
}

impl Shedder {
    /// A controller holding the queue's delay near `target` (zero: never
    /// shed by delay).
    pub fn new(target: Duration) -> Self {
        Self {
            target: target.as_secs_f64(),
            epoch: Instant::now(),
            share: AtomicU64::new(0),
            credit: AtomicU64::new(0),
            sojourn_sum_us: AtomicU64::new(0),
            sojourn_count: AtomicU64::new(0),
            last_taken_us: AtomicU64::new(0),
            next_update_us: AtomicU64::new(0),
            control: Mutex::new(Control {
                share: 0.0,
                previous_delay: 0.0,
                last_update_us: 0,
            }),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// The share of reads shed now (0..=[`SHARE_MAX`]).
    pub fn share(&self) -> f64 {
        self.share.load(Ordering::Relaxed) as f64 / ONE as f64
    }

    /// A verifier took a batch queued `sojourn` ago.
    pub fn taken(&self, sojourn: Duration, now: Instant) {
        let micros = u64::try_from(sojourn.as_micros()).unwrap_or(u64::MAX);
        self.sojourn_sum_us.fetch_add(micros, Ordering::Relaxed);
        self.sojourn_count.fetch_add(1, Ordering::Relaxed);
        self.last_taken_us.fetch_max(self.micros(now), Ordering::Relaxed);
    }

    /// Whether to shed the read being admitted now, `queued` messages
    /// waiting in the queue. Moves the share when an update is due.
    pub fn shed(&self, queued: usize, now: Instant) -> bool {
        if self.target <= 0.0 {
            return false;
        }
        let now_us = self.micros(now);
        let due = self.next_update_us.load(Ordering::Relaxed);
        if now_us >= due
            && self
                .next_update_us
                .compare_exchange(
                    due,
                    now_us + UPDATE_INTERVAL.as_micros() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.update(queued, now_us);
        }
        let share = self.share.load(Ordering::Relaxed);
        if share == 0 {
            return false;
        }
        // Shed when the running sum crosses a whole unit: exactly `share`
        // of the reads, evenly spread.
        let before = self.credit.fetch_add(share, Ordering::Relaxed);
        (before % ONE) + share >= ONE
    }

    /// Turn the samples since the last update into a delay and move the share.
    fn update(&self, queued: usize, now_us: u64) {
        let sum = self.sojourn_sum_us.swap(0, Ordering::Relaxed);
        let count = self.sojourn_count.swap(0, Ordering::Relaxed);
        let delay = if count > 0 {
            sum as f64 / count as f64 / 1e6
        } else if queued > 0 {
            // Nothing taken this interval while some wait: the oldest has
            // waited at least since the last take (or since the start).
            now_us.saturating_sub(self.last_taken_us.load(Ordering::Relaxed)) as f64 / 1e6
        } else {
            // Empty: whatever is queued next waits from now at most.
            self.last_taken_us.fetch_max(now_us, Ordering::Relaxed);
            0.0
        };
        let Ok(mut control) = self.control.lock() else {
            return;
        };
        // Updates run only while reads are admitted: after a pause (every
        // provider backing off at once) the share decays by a tenth per
        // interval missed, and with nothing queued the samples from before
        // the pause say nothing about now.
        let interval = UPDATE_INTERVAL.as_micros() as u64;
        let missed = (now_us.saturating_sub(control.last_update_us) / interval).saturating_sub(1);
        control.last_update_us = now_us;
        let (mut share, delay) = if missed > 0 {
            let decayed = control.share * 0.9f64.powi(i32::try_from(missed.min(1_000)).unwrap_or(1_000));
            (decayed, if queued == 0 { 0.0 } else { delay })
        } else {
            (control.share, delay)
        };
        let step = ALPHA * (delay - self.target) / self.target + BETA * (delay - control.previous_delay) / self.target;
        share += step.min(RISE_MAX);
        if queued == 0 && count == 0 {
            share *= 0.9;
        }
        share = share.clamp(0.0, SHARE_MAX);
        if share < SHARE_MIN {
            share = 0.0;
        }
        control.share = share;
        control.previous_delay = delay;
        self.share.store((share * ONE as f64) as u64, Ordering::Relaxed);
        metrics::gauge!("acct_shed_share").set(share);
        metrics::gauge!("acct_verify_queue_delay_seconds").set(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(50);

    /// Run `intervals` updates with every batch waiting `sojourn`, `reads`
    /// reads admitted per interval; the reads shed in the last interval.
    fn drive(shedder: &Shedder, start: Instant, intervals: u32, sojourn: Duration, reads: u32) -> (Instant, u32) {
        let mut now = start;
        let mut shed = 0;
        for _ in 0..intervals {
            now += UPDATE_INTERVAL;
            shed = 0;
            for _ in 0..reads {
                shedder.taken(sojourn, now);
                if shedder.shed(100, now) {
                    shed += 1;
                }
            }
        }
        (now, shed)
    }

    #[test]
    fn sheds_nothing_while_the_delay_is_under_the_target() {
        let shedder = Shedder::new(TARGET);
        let (_, shed) = drive(&shedder, Instant::now(), 100, Duration::from_millis(20), 50);
        assert_eq!(shed, 0);
        assert_eq!(shedder.share(), 0.0);
    }

    #[test]
    fn a_standing_delay_raises_the_share_and_its_end_lowers_it() {
        let shedder = Shedder::new(TARGET);
        // Twice the target: ALPHA per interval (the growth adds BETA once).
        let (now, _) = drive(&shedder, Instant::now(), 10, 2 * TARGET, 100);
        let raised = shedder.share();
        assert!((0.2..=0.5).contains(&raised), "share {raised}");
        let (now, shed) = drive(&shedder, now, 1, 2 * TARGET, 1000);
        let expected = shedder.share() * 1000.0;
        assert!(
            (f64::from(shed) - expected).abs() <= 2.0,
            "shed {shed} of 1000 at share {}",
            shedder.share()
        );
        // The delay gone: the share falls back to none.
        let (_, shed) = drive(&shedder, now, 60, Duration::from_millis(1), 100);
        assert_eq!(shedder.share(), 0.0);
        assert_eq!(shed, 0);
    }

    #[test]
    fn a_stalled_queue_counts_as_delay_and_an_empty_one_decays() {
        let shedder = Shedder::new(TARGET);
        let start = Instant::now();
        // Messages wait and nothing is taken for 300 ms.
        let mut now = start;
        for _ in 0..30 {
            now += UPDATE_INTERVAL;
            shedder.shed(1000, now);
        }
        assert!(shedder.share() > 0.5, "share {}", shedder.share());
        assert!(shedder.share() <= SHARE_MAX);
        // Empty and idle: decays to none.
        for _ in 0..200 {
            now += UPDATE_INTERVAL;
            shedder.shed(0, now);
        }
        assert_eq!(shedder.share(), 0.0);
    }

    #[test]
    fn one_slow_batch_raises_the_share_by_a_step_only() {
        let shedder = Shedder::new(TARGET);
        let (now, _) = drive(&shedder, Instant::now(), 10, Duration::from_millis(5), 10);
        let (_, _) = drive(&shedder, now, 1, Duration::from_secs(1), 1);
        assert!(shedder.share() <= RISE_MAX + 1e-9, "share {}", shedder.share());
    }

    #[test]
    fn a_pause_in_admissions_decays_the_share() {
        let shedder = Shedder::new(TARGET);
        let (now, _) = drive(&shedder, Instant::now(), 30, 4 * TARGET, 10);
        assert!(shedder.share() > 0.5, "share {}", shedder.share());
        // Two seconds without an admission, the queue drained meanwhile.
        let later = now + Duration::from_secs(2);
        shedder.shed(0, later);
        assert_eq!(shedder.share(), 0.0);
    }

    #[test]
    fn a_zero_target_never_sheds() {
        let shedder = Shedder::new(Duration::ZERO);
        let (_, shed) = drive(&shedder, Instant::now(), 50, Duration::from_secs(5), 100);
        assert_eq!(shed, 0);
    }
}
