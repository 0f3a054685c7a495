//! The health state machine (SPEC.md §4): every write to an upstream's state word and to
//! the list's `alive` / `offline` counters happens in this module, and each transition
//! fires its event here, once, from the thread whose compare-and-swap made it.
//!
//! ```text
//!            first addresses               fail() trips the window
//!  Pending ───────────────────▶ Alive ─────────────────────────────▶ Offline { until }
//!     ▲                          ▲  ▲ ◀──── deadline passed, lazily ──────┘   │
//!     │   undrain (no address)   │  └──── probe ok() ◀── Probing ◀───────────┘
//!  Draining ◀── drain / reload ──┘            (nothing alive: one probe at a time)
//! ```
//!
//! `health.rs` holds the state word's encoding and the error window; this module decides
//! and publishes. The failure path reads forward: [`Picked::fail`](crate::Picked::fail) →
//! [`Upstream::record_failure`] (here) → the window (`health.rs`) → [`Shared::go_offline`] (here) →
//! the watchers (`event.rs`).

use crate::event::Event;
use crate::health::{self, FailOutcome};
use crate::select::Members;
use crate::sync::Ordering;
use crate::upstream::{FailKind, Shared, Upstream};
use std::sync::Arc;
use std::time::Duration;

impl Shared {
    /// Called after every successful state compare-and-swap.
    pub(crate) fn health_changed(&self) {
        // Release: a picker that reads the new epoch sees the state word written before.
        self.health_epoch.fetch_add(1, Ordering::Release);
    }

    /// `from` (an exact state word) → `to` in one compare-and-swap, the epoch bumped on
    /// success; true for the single winner. Every transition but the drain loop goes
    /// through here.
    fn swap_state(&self, up: &Upstream, from: u64, to: u64) -> bool {
        // AcqRel: the winner's counter updates must not move before its win, and it must
        // see what the writer of `from` did before publishing it.
        let won = up
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if won {
            self.health_changed();
        }
        won
    }

    /// `from` → `Offline { until }` in one CAS; true for the single winner.
    pub(crate) fn go_offline(&self, up: &Upstream, from: u64, until: u64) -> bool {
        if !self.swap_state(up, from, health::pack_offline(until)) {
            return false;
        }
        if from == health::ALIVE {
            self.alive.fetch_sub(1, Ordering::Relaxed);
            self.offline.fetch_add(1, Ordering::Relaxed);
        }
        // SeqCst pairs with the reviver's swap: a deadline published here is either seen by
        // its scan or survives its final fetch_min.
        self.next_revive.fetch_min(until, Ordering::SeqCst);
        true
    }

    /// `from` (an exact state word) → Alive in one CAS; true for the single winner.
    pub(crate) fn try_transition(&self, up: &Upstream, from: u64, to: u64, now: u64) -> bool {
        debug_assert_eq!(to, health::ALIVE);
        if !self.swap_state(up, from, to) {
            return false;
        }
        self.came_back(up, from, now);
        true
    }

    fn came_back(&self, up: &Upstream, from: u64, now: u64) {
        if health::tag(from) == health::PROBING || health::offline_until(from).is_some() {
            self.offline.fetch_sub(1, Ordering::Relaxed);
        }
        up.revived_at.store(now, Ordering::Relaxed);
        self.alive.fetch_add(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// Records a success: closes the error window, clears the current address's errors,
    /// ends a probe (the upstream comes back) and fires `success`.
    ///
    /// This is the health report alone, for an upstream used without a [`Picked`]
    /// (a check, a view); [`Picked::ok`] ends a pick and records its success.
    ///
    /// [`Picked`]: crate::Picked
    /// [`Picked::ok`]: crate::Picked::ok
    pub fn record_success(&self) {
        self.clear_errors();
        if health::tag(self.state.load(Ordering::Relaxed)) == health::PROBING {
            self.probe_failures.store(0, Ordering::Relaxed);
            let now = self.shared.now_ns();
            if self
                .shared
                .try_transition(self, health::PROBING, health::ALIVE, now)
            {
                self.shared.emit(Event::Online, self, 0);
            }
        }
        self.shared.emit(Event::Success, self, 0);
    }

    /// Records a failure (SPEC.md §4): counts it in the error window and may take the
    /// upstream offline. `reason` is kept as [`Upstream::last_failure`], so a watcher of
    /// `failure` / `offline` (or a status page) can say why. The health report alone, as
    /// [`record_success`](Upstream::record_success); [`Picked::fail`](crate::Picked::fail)
    /// ends a pick and records its failure.
    pub fn record_failure(&self, kind: FailKind, reason: &str) {
        self.note_failure(kind, reason);
        let now = self.shared.now_ns();
        // Acquire: pairs with the CAS that published this word (a probe's, a revival's).
        let word = self.state.load(Ordering::Acquire);
        match health::tag(word) {
            health::ALIVE => {}
            health::PROBING => return self.probe_failed(now),
            // Offline, pending or draining: nothing to count (rspamd ignores these too).
            _ => return,
        }
        let outcome: FailOutcome = self.count_in_window(now);
        if outcome.opened || outcome.offline {
            self.request_resolve();
        }
        self.shared.emit(Event::Failure, self, outcome.reported);
        if outcome.offline {
            let until = now.saturating_add(self.shared.revive_delay());
            if self.shared.go_offline(self, health::ALIVE, until) {
                self.shared.emit(Event::Offline, self, outcome.reported);
            }
        }
    }

    fn probe_failed(&self, now: u64) {
        let n = self.probe_failures.fetch_add(1, Ordering::Relaxed);
        let limits = self.shared.limits.load();
        let base = limits
            .revive_time
            .saturating_mul(1u32 << n.min(20))
            .min(limits.probe_max_backoff.max(limits.revive_time));
        let until = now.saturating_add(health::jittered(
            base,
            limits.probe_jitter,
            self.shared.rng.unit(),
        ));
        self.request_resolve();
        if self.shared.go_offline(self, health::PROBING, until) {
            self.shared.emit(Event::Failure, self, self.errors());
        }
    }

    /// Takes the upstream out of selection for `duration` (an operator's "mark down"); it
    /// comes back like any offline upstream. Fires `offline`; false if it was not alive.
    pub fn mark_offline(&self, duration: Duration) -> bool {
        let until = self.shared.now_ns().saturating_add(health::nanos(duration));
        let done = self.shared.go_offline(self, health::ALIVE, until);
        if done {
            self.shared.emit(Event::Offline, self, self.errors());
        }
        done
    }

    /// Brings an offline (or probing) upstream back at once (an operator's "mark up"); fires
    /// `online`. False if it was not out of selection.
    pub fn mark_online(&self) -> bool {
        let now = self.shared.now_ns();
        loop {
            // Acquire: the word is the `from` of the CAS below (see `try_transition`).
            let word = self.state.load(Ordering::Acquire);
            let out = health::offline_until(word).is_some() || health::tag(word) == health::PROBING;
            if !out {
                return false;
            }
            if self.shared.try_transition(self, word, health::ALIVE, now) {
                self.shared.emit(Event::Online, self, self.errors());
                return true;
            }
        }
    }

    /// Hands back a probe without a verdict (the request was cancelled), so the next pick
    /// probes again; does nothing unless the upstream is the probe.
    pub fn release_probe(&self) {
        if health::tag(self.state.load(Ordering::Relaxed)) == health::PROBING {
            let now = self.shared.now_ns();
            self.shared.go_offline(self, health::PROBING, now);
        }
    }
}

/// Lazy revival (SPEC.md items 33–34): when some offline upstream's deadline has passed,
/// bring it back, or, when nothing is alive, take one as the probe (returned).
#[inline]
pub(crate) fn maintain(members: &Members, shared: &Shared) -> Option<usize> {
    if shared.offline.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let now = shared.now_ns();
    // SeqCst: pairs with `go_offline`'s fetch_min and `revive_due`'s swap (a deadline
    // published concurrently is seen here or survives the swap).
    if now < shared.next_revive.load(Ordering::SeqCst) {
        return None;
    }
    revive_due(members, shared, now)
}

#[inline(never)]
fn revive_due(members: &Members, shared: &Shared, now: u64) -> Option<usize> {
    // SeqCst: see `Shared::go_offline`.
    shared.next_revive.swap(u64::MAX, Ordering::SeqCst);
    let mut earliest = u64::MAX;
    // When nothing is alive, the upstream that has waited longest is the probe.
    let mut candidate: Option<(usize, u64, u64)> = None;
    let mut due = 0usize;
    for (i, up) in members.upstreams.iter().enumerate() {
        // Acquire: the word is the `from` of a CAS below (see `try_transition`).
        let word = up.state.load(Ordering::Acquire);
        let Some(until) = health::offline_until(word) else {
            continue;
        };
        if until > now {
            earliest = earliest.min(until);
        } else if shared.alive.load(Ordering::Relaxed) > 0 {
            if shared.try_transition(up, word, health::ALIVE, now) {
                shared.emit(Event::Online, up, up.errors());
            }
        } else {
            due += 1;
            if candidate.is_none_or(|(_, _, best)| until < best) {
                candidate = Some((i, word, until));
            }
        }
    }
    let probe = candidate.and_then(|(i, word, _)| {
        // One caller wins the probe.
        shared
            .swap_state(&members.upstreams[i], word, health::PROBING)
            .then_some(i)
    });
    if due > usize::from(probe.is_some()) {
        // Other due upstreams wait for the next caller.
        earliest = earliest.min(now);
    }
    shared.next_revive.fetch_min(earliest, Ordering::SeqCst);
    probe
}

/// A resolver's first answer: `Pending` → `Alive`, `online` fired.
pub(crate) fn resolved(shared: &Shared, upstream: &Upstream) {
    let now = shared.now_ns();
    if shared.try_transition(upstream, health::PENDING, health::ALIVE, now) {
        shared.emit(Event::Online, upstream, 0);
    }
}

/// Counts the alive upstreams of a new list (before anyone can pick from it).
pub(crate) fn count_initial(shared: &Shared, upstreams: &[Arc<Upstream>]) {
    let alive = upstreams.iter().filter(|u| u.is_alive()).count();
    shared.alive.store(alive, Ordering::Relaxed);
}

/// A new member joined a live list: counted, and `online` fired when it is alive.
pub(crate) fn joined(shared: &Shared, up: &Upstream) {
    if up.is_alive() {
        shared.alive.fetch_add(1, Ordering::Relaxed);
        shared.emit(Event::Online, up, 0);
    }
}

/// Takes `up` out for good: any state → `Draining`, counters adjusted, `offline` fired when it
/// was serving.
pub(crate) fn drain(shared: &Shared, up: &Upstream) {
    let mut word = up.state.load(Ordering::Acquire);
    loop {
        if health::tag(word) == health::DRAINING {
            return;
        }
        // AcqRel: the counter updates below belong to the winner of this CAS only.
        match up.state.compare_exchange_weak(
            word,
            health::DRAINING,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => break,
            Err(seen) => word = seen,
        }
    }
    shared.health_changed();
    match health::tag(word) {
        health::ALIVE => {
            shared.alive.fetch_sub(1, Ordering::Relaxed);
            shared.emit(Event::Offline, up, up.errors());
        }
        health::PENDING | health::DRAINING => {}
        _ => {
            shared.offline.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// An operator's undrain: `Draining` → `Alive` (`online` fired), or back to `Pending` for a
/// name that never had an address. False when it was not drained.
pub(crate) fn undrain(shared: &Shared, upstream: &Upstream) -> bool {
    // A name drained before its first answer goes back to waiting for it: alive without
    // an address would be picked and fail.
    if upstream.entry().host().needs_resolution() && upstream.addrs().is_empty() {
        return shared.swap_state(upstream, health::DRAINING, health::PENDING);
    }
    let now = shared.now_ns();
    if shared.try_transition(upstream, health::DRAINING, health::ALIVE, now) {
        shared.emit(Event::Online, upstream, upstream.errors());
        return true;
    }
    false
}
