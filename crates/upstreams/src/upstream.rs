//! One upstream: its configuration, its atomic health and its addresses.

use std::any::Any;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, Weak};

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};
use std::time::Duration;

use crate::event::Event;
use crate::health::{self, FailOutcome, State, Window};
use crate::list::Shared;
use crate::parse::{Entry, Host};

/// Why `fail()` was called (SPEC.md item 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailKind {
    /// The address itself failed (connect refused, timeout): it also counts against the
    /// current address, so address rotation moves away from it.
    Address,
    /// Anything else (bad reply, protocol error).
    Other,
}

/// An address of an upstream with its own failure count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AddrSlot {
    addr: SocketAddr,
    errors: u32,
}

#[derive(Debug, Default)]
struct Addrs {
    slots: Vec<AddrSlot>,
    cur: usize,
}

/// A backend of a list. Shared by `Arc`; every method takes `&self`.
pub struct Upstream {
    entry: Entry,
    /// Weight (round-robin) or priority (master-slave): the entry's, until a reload changes
    /// only this field of the entry and keeps the upstream (and its health).
    weight: AtomicU32,
    /// Position in the current membership snapshot (updated when membership changes).
    slot: AtomicUsize,
    /// The definition entry it comes from (an SRV entry has several members); changes when
    /// a reload moves the entry.
    group: AtomicUsize,
    /// SRV priority (lower is preferred by master-slave); 0 for configured entries.
    srv_priority: u16,
    /// Health state word (see [`health`]).
    pub(crate) state: AtomicU64,
    window: Mutex<Window>,
    /// Mirror of the window's error count for lock-free readers.
    errors: AtomicU32,
    /// Whether the window counts anything (errors or a consecutive run), written under its
    /// lock: a success with nothing to reset (the common case) takes no lock.
    window_open: AtomicBool,
    /// Whether some address has errors, written under the addresses' lock (same purpose).
    addr_errors: AtomicBool,
    pub(crate) inflight: AtomicU32,
    /// Consecutive failed probes, for the probe backoff.
    probe_failures: AtomicU32,
    /// When it last came back (ns), for slow start; `u64::MAX` = never.
    pub(crate) revived_at: AtomicU64,
    /// Latency estimate in seconds (`f64` bits); `u64::MAX` = no sample yet.
    latency: AtomicU64,
    latency_at: Mutex<Option<u64>>,
    /// The reason given with the latest [`Upstream::fail`], for watchers and status pages.
    last_failure: Mutex<Option<Box<str>>>,
    pub(crate) tokens: crate::select::tokens::Bucket,
    addrs: Mutex<Addrs>,
    resolve_wanted: AtomicBool,
    shared: Arc<Shared>,
    me: Weak<Upstream>,
    /// The value the list gave it ([`UpstreamList::set_values`]); set once.
    ///
    /// [`UpstreamList::set_values`]: crate::UpstreamList::set_values
    value: OnceLock<Box<dyn Any + Send + Sync>>,
}

const NO_SAMPLE: u64 = u64::MAX;

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Upstream {
    pub(crate) fn new(
        entry: Entry,
        group: usize,
        srv_priority: u16,
        shared: Arc<Shared>,
    ) -> Arc<Self> {
        let slots = match entry.host() {
            Host::Ip(ip) => vec![AddrSlot {
                addr: SocketAddr::new(*ip, entry.port()),
                errors: 0,
            }],
            _ => Vec::new(),
        };
        let initial = if entry.host().needs_resolution() {
            health::PENDING
        } else {
            health::ALIVE
        };
        let up = Arc::new_cyclic(|me| Self {
            tokens: crate::select::tokens::Bucket::new(),
            weight: AtomicU32::new(u32::from(entry.weight())),
            entry,
            slot: AtomicUsize::new(group),
            group: AtomicUsize::new(group),
            srv_priority,
            state: AtomicU64::new(initial),
            window: Mutex::default(),
            errors: AtomicU32::new(0),
            window_open: AtomicBool::new(false),
            addr_errors: AtomicBool::new(false),
            inflight: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            revived_at: AtomicU64::new(u64::MAX),
            latency: AtomicU64::new(NO_SAMPLE),
            latency_at: Mutex::new(None),
            last_failure: Mutex::new(None),
            addrs: Mutex::new(Addrs { slots, cur: 0 }),
            resolve_wanted: AtomicBool::new(false),
            shared,
            me: me.clone(),
            value: OnceLock::new(),
        });
        up.shared.make_value(&up);
        up
    }

    /// The value the list carries for this upstream ([`UpstreamList::set_values`]), when it
    /// carries values of type `T`.
    ///
    /// [`UpstreamList::set_values`]: crate::UpstreamList::set_values
    #[inline]
    pub fn value<T: Any>(&self) -> Option<&T> {
        self.value.get()?.downcast_ref()
    }

    /// Sets the value unless one is set already.
    pub(crate) fn set_value(&self, value: Box<dyn Any + Send + Sync>) {
        let _first_wins = self.value.set(value);
    }

    /// The name rspamd gives it (`host`, `host:port`, the bracketed text, the socket path).
    pub fn name(&self) -> &str {
        self.entry.name()
    }

    /// The port (0 for unix sockets, the default port when none was written).
    pub fn port(&self) -> u16 {
        self.entry.port()
    }

    /// Weight (round-robin) or priority (master-slave); a reload may change it.
    pub fn weight(&self) -> u16 {
        // Relaxed: a lone figure; a membership rebuild that depends on it is published
        // after it is stored.
        u16::try_from(self.weight.load(Ordering::Relaxed)).unwrap_or(u16::MAX)
    }

    /// A reload changed only the weight of this upstream's entry.
    pub(crate) fn set_weight(&self, weight: u16) {
        self.weight.store(u32::from(weight), Ordering::Relaxed);
    }

    /// The parsed entry it comes from, as first configured: a reload that changes only the
    /// weight keeps the upstream, so read the weight from [`Upstream::weight`].
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Position in the list's current membership, in configuration order.
    pub fn index(&self) -> usize {
        self.slot.load(Ordering::Relaxed)
    }

    pub(crate) fn set_index(&self, slot: usize) {
        self.slot.store(slot, Ordering::Relaxed);
    }

    /// The index of the definition entry this upstream comes from (SRV targets share their
    /// SRV entry's).
    pub fn group(&self) -> usize {
        self.group.load(Ordering::Relaxed)
    }

    pub(crate) fn set_group(&self, group: usize) {
        self.group.store(group, Ordering::Relaxed);
    }

    /// SRV priority (lower preferred); 0 for upstreams written in the definition.
    pub fn srv_priority(&self) -> u16 {
        self.srv_priority
    }

    /// An owning handle to this upstream (for watchers that keep it).
    pub fn handle(&self) -> Option<Arc<Upstream>> {
        self.me.upgrade()
    }

    /// The current health state.
    pub fn state(&self) -> State {
        health::unpack(self.state.load(Ordering::Acquire))
    }

    /// Selectable right now (revival is checked by the next pick, not here).
    pub fn is_alive(&self) -> bool {
        health::tag(self.state.load(Ordering::Relaxed)) == health::ALIVE
    }

    /// Failures in the current error window.
    pub fn errors(&self) -> u32 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The reason given with the latest failure report, if any.
    pub fn last_failure(&self) -> Option<String> {
        lock(&self.last_failure).as_deref().map(str::to_owned)
    }

    /// Picks handed out ([`Picked`](crate::Picked)) and not yet ended.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The latency estimate (p2c), if any sample was recorded.
    pub fn latency(&self) -> Option<Duration> {
        match self.latency.load(Ordering::Relaxed) {
            NO_SAMPLE => None,
            bits => Some(Duration::from_secs_f64(f64::from_bits(bits))),
        }
    }

    pub(crate) fn latency_secs(&self) -> Option<f64> {
        match self.latency.load(Ordering::Relaxed) {
            NO_SAMPLE => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    pub(crate) fn start_pick(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        if self.shared.hash_mode == crate::HashMode::Bounded {
            self.shared.inflight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`Upstream::start_pick`] unless `cap` picks are already in flight.
    pub(crate) fn try_start_pick(&self, cap: u32) -> bool {
        let taken = self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        if taken && self.shared.hash_mode == crate::HashMode::Bounded {
            self.shared.inflight.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Called exactly once per [`Picked`](crate::Picked), which owns the increment.
    pub(crate) fn end_pick(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        if self.shared.hash_mode == crate::HashMode::Bounded {
            self.shared.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Reports a success: closes the error window, clears the current address's errors,
    /// ends a probe (the upstream comes back) and fires `success`.
    ///
    /// This is the health report alone; [`Picked::ok`](crate::Picked::ok) also ends the
    /// pick's in-flight count.
    pub fn ok(&self) {
        // A flag read as clear orders this success before a failure racing it: the same
        // as taking the lock first.
        if self.window_open.load(Ordering::Relaxed) {
            let mut window = lock(&self.window);
            window.ok();
            self.errors.store(0, Ordering::Relaxed);
            self.window_open.store(false, Ordering::Relaxed);
        }
        if self.addr_errors.load(Ordering::Relaxed) {
            let mut addrs = lock(&self.addrs);
            if let Some(slot) = addrs.current_mut() {
                slot.errors = 0;
            }
            let left = addrs.slots.iter().any(|s| s.errors > 0);
            self.addr_errors.store(left, Ordering::Relaxed);
        }
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

    /// Reports a failure (SPEC.md §4): counts it in the error window and may take the
    /// upstream offline. `reason` is kept as [`Upstream::last_failure`], so a watcher of
    /// `failure` / `offline` (or a status page) can say why.
    pub fn fail(&self, kind: FailKind, reason: &str) {
        *lock(&self.last_failure) = Some(reason.into());
        if kind == FailKind::Address {
            let mut addrs = lock(&self.addrs);
            if let Some(slot) = addrs.current_mut() {
                slot.errors = slot.errors.saturating_add(1);
                self.addr_errors.store(true, Ordering::Relaxed);
            }
        }
        let now = self.shared.now_ns();
        let word = self.state.load(Ordering::Acquire);
        match health::tag(word) {
            health::ALIVE => {}
            health::PROBING => return self.probe_failed(now),
            // Offline, pending or draining: nothing to count (rspamd ignores these too).
            _ => return,
        }
        let outcome: FailOutcome = {
            let mut window = lock(&self.window);
            let outcome = window.fail(now, &self.shared.limits.load(), self.shared.member_count());
            self.errors.store(window.errors, Ordering::Relaxed);
            self.window_open.store(window.is_open(), Ordering::Relaxed);
            outcome
        };
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

    /// Feeds one latency sample (seconds) into the time-decayed EWMA used by p2c:
    /// the first sample sets it; then `alpha = 1 − exp(−dt·ln2/half_life)` in [0.01, 0.5].
    pub fn record_latency(&self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let now = self.shared.now_ns();
        let mut last = lock(&self.latency_at);
        let next = match (*last, self.latency_secs()) {
            (Some(at), Some(prev)) => {
                let dt = now.saturating_sub(at) as f64 / 1e9;
                let half = self.shared.limits.load().latency_half_life.as_secs_f64();
                let alpha = (1.0 - (-dt * std::f64::consts::LN_2 / half).exp()).clamp(0.01, 0.5);
                prev + alpha * (seconds - prev)
            }
            _ => seconds,
        };
        *last = Some(now);
        self.latency.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The current address (without rotating); `None` while pending and for sockets.
    pub fn addr(&self) -> Option<SocketAddr> {
        lock(&self.addrs).current_mut().map(|s| s.addr)
    }

    /// Rotates to the next usable address and returns it (rspamd's `get_addr`, item 40):
    /// the next address of the current family with no more errors than the current one;
    /// failing that, the address with the fewest errors (which brings IPv6 in once the IPv4
    /// addresses have failed).
    pub fn next_addr(&self) -> Option<SocketAddr> {
        let mut addrs = lock(&self.addrs);
        let n = addrs.slots.len();
        if n == 0 {
            return None;
        }
        let cur = addrs.slots[addrs.cur.min(n - 1)];
        let same_family = (1..n).map(|step| (addrs.cur + step) % n).find(|&i| {
            let s = addrs.slots[i];
            s.addr.is_ipv4() == cur.addr.is_ipv4() && s.errors <= cur.errors
        });
        let next = same_family.or_else(|| {
            (0..n)
                .filter(|&i| i != addrs.cur)
                .min_by_key(|&i| addrs.slots[i].errors)
                .filter(|&i| addrs.slots[i].errors < cur.errors)
        });
        if let Some(i) = next {
            addrs.cur = i;
        }
        Some(addrs.slots[addrs.cur].addr)
    }

    /// Every address with its error count, IPv4 first.
    pub fn addrs(&self) -> Vec<(SocketAddr, u32)> {
        lock(&self.addrs)
            .slots
            .iter()
            .map(|s| (s.addr, s.errors))
            .collect()
    }

    /// Replaces the addresses with a resolver's answer. An empty answer keeps the current
    /// ones. Addresses sort IPv4 before IPv6; one already known keeps its error count; the
    /// current address stays current when it survives. Returns whether anything changed.
    pub(crate) fn replace_addrs(&self, ips: &[IpAddr]) -> bool {
        if ips.is_empty() {
            return false;
        }
        let mut fresh: Vec<SocketAddr> = ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port()))
            .collect();
        fresh.sort_by_key(|a| a.is_ipv6()); // stable: keeps the answer's order per family
        fresh.dedup();
        let mut addrs = lock(&self.addrs);
        let current = addrs.current_mut().map(|s| s.addr);
        let slots: Vec<AddrSlot> = fresh
            .into_iter()
            .map(|addr| AddrSlot {
                addr,
                errors: addrs
                    .slots
                    .iter()
                    .find(|s| s.addr == addr)
                    .map_or(0, |s| s.errors),
            })
            .collect();
        let changed = slots != addrs.slots;
        addrs.cur = current
            .and_then(|c| slots.iter().position(|s| s.addr == c))
            .unwrap_or(0);
        addrs.slots = slots;
        changed
    }

    fn request_resolve(&self) {
        if self.entry.host().needs_resolution() {
            self.resolve_wanted.store(true, Ordering::Relaxed);
        }
    }

    /// Takes the "re-resolve me" flag set by a failure window opening or going offline
    /// (SPEC.md item 39); the DNS shell polls it.
    pub fn take_resolve_request(&self) -> bool {
        self.resolve_wanted.swap(false, Ordering::Relaxed)
    }
}

impl Addrs {
    fn current_mut(&mut self) -> Option<&mut AddrSlot> {
        let cur = self.cur;
        self.slots.get_mut(cur)
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name())
            .field("port", &self.port())
            .field("weight", &self.weight())
            .field("state", &self.state())
            .field("errors", &self.errors())
            .finish()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for Upstream {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Upstream {}
