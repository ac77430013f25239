//! Wall-clock time for the drivers: the one reading of the clock, shared
//! with the peer library (`peer::clock`).

pub use peer::clock::{now_ms, now_s};
