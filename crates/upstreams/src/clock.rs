//! Injected time.
//!
//! The core never reads the system clock itself: every list holds a [`Clock`] and asks it
//! for "now" as a [`Duration`] since the clock's own epoch. Production code uses
//! [`MonotonicClock`]; tests drive a [`ManualClock`] so error windows and revivals are
//! exercised deterministically, without sleeping.

use crate::sync::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic source of time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Time elapsed since this clock's epoch; never decreases.
    fn now(&self) -> Duration;

    /// [`now`](Clock::now) in nanoseconds (saturating); override it when the clock can
    /// answer without building a `Duration`.
    fn now_nanos(&self) -> u64 {
        duration_to_nanos(self.now())
    }
}

/// The process's monotonic clock, with its epoch at construction.
///
/// It reads the kernel's coarse monotonic clock (`CLOCK_MONOTONIC_COARSE` on Linux,
/// through `coarsetime`): about 3.6 ns a read here against 22 ns for `std::time::Instant`, at
/// the price of a resolution of one scheduler tick (1–4 ms). Every duration the core keeps
/// (error windows, revive delays, DNS schedules, latency decay) is counted in seconds, and
/// a pick reads the clock whenever some upstream is offline, so the cheaper read wins.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    epoch: coarsetime::Instant,
}

impl MonotonicClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: coarsetime::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicClock {
    /// Nanoseconds since the epoch. The read leaves `coarsetime`'s process-wide "recent"
    /// cache alone: storing into it on every pick would make every picking thread write one
    /// shared cache line.
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        coarsetime::Instant::now_without_cache_update()
            .duration_since(self.epoch)
            .as_nanos()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos())
    }

    fn now_nanos(&self) -> u64 {
        self.nanos()
    }
}

/// A clock that only moves when told to; share it with `Arc` between a test and a list.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Duration) -> Self {
        Self {
            nanos: AtomicU64::new(duration_to_nanos(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.nanos
            .fetch_add(duration_to_nanos(by), Ordering::Relaxed);
    }

    /// Moves the clock to `to`; a time before the current one is ignored (monotonic).
    pub fn set(&self, to: Duration) {
        self.nanos
            .fetch_max(duration_to_nanos(to), Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }

    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
}

/// Saturating conversion to nanoseconds (584 years fit in a `u64`).
pub(crate) fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
