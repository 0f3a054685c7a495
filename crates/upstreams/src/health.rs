//! The error window and the state word (SPEC.md §4).
//!
//! # The error window (rspamd's rule, item 29)
//! 1. The first failure opens a window: `errors = 1`, `start = now`.
//! 2. Each later failure increments `errors`.
//! 3. Nothing is decided until `error_time` has elapsed since `start`. At the first failure
//!    after that: if `errors / elapsed > max_errors / error_time` the upstream goes offline
//!    (a single-upstream list instead resets its errors once the window is older than
//!    `revive_time`); otherwise the window restarts with `errors = 1`.
//! 4. `ok()` closes the window.
//!
//! The rate comparison is done on integers (`errors × error_time > max_errors × elapsed`, in
//! nanoseconds) so boundary cases such as "4 failures in exactly 10 s" are exact.
//!
//! # The state word
//! An upstream's state and its revive deadline share one `AtomicU64` (deadline in the upper
//! 61 bits, tag in the lower 3), so every transition is a single compare-and-swap and a
//! stale reader can never revive an upstream that has gone offline again meanwhile (no ABA).

use std::time::Duration;

use crate::limits::Limits;

/// The health state of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Selectable.
    Alive,
    /// Out of selection until `until` (clock time); revived lazily by the next pick after it.
    Offline {
        /// When it may come back.
        until: Duration,
    },
    /// Handed out as the one probe of a pool that is wholly offline.
    Probing,
    /// A name not resolved yet.
    Pending,
    /// Removed from the membership; never returned again.
    Draining,
}

impl State {
    /// The state's name as pages, metrics and logs print it: `alive`, `offline`, `probing`,
    /// `pending` or `draining`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Offline { .. } => "offline",
            Self::Probing => "probing",
            Self::Pending => "pending",
            Self::Draining => "draining",
        }
    }

    /// Every state's name, in the order of [`State::name`]'s list.
    pub const NAMES: [&'static str; 5] = ["alive", "offline", "probing", "pending", "draining"];
}

const TAG_BITS: u32 = 3;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
pub(crate) const ALIVE: u64 = 0;
const OFFLINE: u64 = 1;
pub(crate) const PROBING: u64 = 2;
pub(crate) const PENDING: u64 = 3;
pub(crate) const DRAINING: u64 = 4;
/// Largest representable deadline (about 73 years of clock time).
const MAX_UNTIL: u64 = u64::MAX >> TAG_BITS;

pub(crate) fn pack_offline(until_ns: u64) -> u64 {
    (until_ns.min(MAX_UNTIL) << TAG_BITS) | OFFLINE
}

pub(crate) fn tag(word: u64) -> u64 {
    word & TAG_MASK
}

/// The deadline of an offline word, or `None` for other states.
pub(crate) fn offline_until(word: u64) -> Option<u64> {
    (tag(word) == OFFLINE).then_some(word >> TAG_BITS)
}

pub(crate) fn unpack(word: u64) -> State {
    match tag(word) {
        ALIVE => State::Alive,
        OFFLINE => State::Offline {
            until: Duration::from_nanos(word >> TAG_BITS),
        },
        PROBING => State::Probing,
        PENDING => State::Pending,
        DRAINING => State::Draining,
        _ => unreachable!("state tags are written only by this module"),
    }
}

/// Failure bookkeeping of one upstream, guarded by its mutex (never on the pick path).
#[derive(Debug, Default, Clone)]
pub(crate) struct Window {
    pub(crate) errors: u32,
    start: u64,
    consecutive: u32,
}

/// What one failure decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailOutcome {
    /// Errors after counting this failure, as reported to watchers.
    pub(crate) reported: u32,
    /// The upstream must leave selection.
    pub(crate) offline: bool,
    /// This failure opened a window (a re-resolution trigger).
    pub(crate) opened: bool,
}

impl Window {
    /// Counts one failure at `now` (ns) for a list of `members` upstreams.
    pub(crate) fn fail(&mut self, now: u64, limits: &Limits, members: usize) -> FailOutcome {
        self.consecutive = self.consecutive.saturating_add(1);
        let consecutive_trip =
            limits.max_consecutive_errors > 0 && self.consecutive >= limits.max_consecutive_errors;
        if self.errors == 0 {
            self.errors = 1;
            self.start = now;
            let offline = consecutive_trip && members > 1;
            return self.outcome(offline, true);
        }
        self.errors = self.errors.saturating_add(1);
        let elapsed = now.saturating_sub(self.start);
        let error_time = nanos(limits.error_time);
        let mut offline = consecutive_trip && members > 1;
        if !offline && elapsed >= error_time {
            let too_fast = u128::from(self.errors) * u128::from(error_time)
                > u128::from(limits.max_errors) * u128::from(elapsed);
            if !too_fast {
                // Rate acceptable: forget the old window and start a new one here.
                let reported = self.errors;
                self.errors = 1;
                self.start = now;
                return FailOutcome {
                    reported,
                    offline: false,
                    opened: false,
                };
            }
            if members > 1 {
                offline = true;
            } else if elapsed > nanos(limits.revive_time) {
                // The last upstream is never taken out; its stale errors are dropped instead.
                let reported = self.errors;
                self.errors = 0;
                return FailOutcome {
                    reported,
                    offline: false,
                    opened: false,
                };
            }
        }
        self.outcome(offline, false)
    }

    fn outcome(&mut self, offline: bool, opened: bool) -> FailOutcome {
        let reported = self.errors;
        if offline {
            self.errors = 0;
            self.consecutive = 0;
        }
        FailOutcome {
            reported,
            offline,
            opened,
        }
    }

    /// Whether the window counts anything a success would reset.
    pub(crate) fn is_open(&self) -> bool {
        self.errors > 0 || self.consecutive > 0
    }

    /// A success closes the window.
    pub(crate) fn ok(&mut self) {
        self.errors = 0;
        self.consecutive = 0;
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    crate::clock::duration_to_nanos(d)
}

/// `base × (1 + U × jitter)` in nanoseconds, `u` in [0, 1).
pub(crate) fn jittered(base: Duration, jitter: f64, u: f64) -> u64 {
    let factor = 1.0 + u * jitter.clamp(0.0, 1.0);
    let ns = nanos(base) as f64 * factor;
    if ns >= u64::MAX as f64 {
        u64::MAX
    } else {
        ns as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_word_round_trips() {
        let w = pack_offline(123_456_789);
        assert_eq!(
            unpack(w),
            State::Offline {
                until: Duration::from_nanos(123_456_789)
            }
        );
        assert_eq!(offline_until(w), Some(123_456_789));
        assert_eq!(unpack(ALIVE), State::Alive);
        assert_eq!(offline_until(PROBING), None);
    }

    #[test]
    fn jitter_zero_is_exact() {
        assert_eq!(jittered(Duration::from_secs(60), 0.0, 0.99), 60_000_000_000);
        assert_eq!(jittered(Duration::from_secs(60), 0.4, 0.5), 72_000_000_000);
    }
}
