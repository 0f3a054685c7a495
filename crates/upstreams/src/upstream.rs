//! One upstream: its configuration, its atomic health and its addresses.

use std::any::Any;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, Weak};

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::clock::{Clock, MonotonicClock};
use crate::event::{Event, Watchers};
use crate::health::{self, FailOutcome, State, Window};
use crate::limits::Limits;
use crate::parse::{Entry, Host};
use crate::random::Rng;

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
    pub(crate) probe_failures: AtomicU32,
    /// When it last came back (ns), for slow start; `u64::MAX` = never.
    pub(crate) revived_at: AtomicU64,
    /// Latency estimate in seconds (`f64` bits); `u64::MAX` = no sample yet.
    latency: AtomicU64,
    /// When the latest latency sample was taken (ns); `u64::MAX` = none yet.
    latency_at: AtomicU64,
    /// The reason given with the latest [`Upstream::record_failure`], for watchers and status pages.
    last_failure: Mutex<Option<Box<str>>>,
    pub(crate) tokens: crate::tokens::Bucket,
    addrs: Mutex<Addrs>,
    resolve_wanted: AtomicBool,
    pub(crate) shared: Arc<Shared>,
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
            tokens: crate::tokens::Bucket::new(),
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
            latency_at: AtomicU64::new(NO_SAMPLE),
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

    /// The error bookkeeping of a success: closes the error window and clears the current
    /// address's errors (no state change: that is `transition.rs`'s). A flag read as clear
    /// orders this success before a failure racing it, the same as taking the lock first.
    pub(crate) fn clear_errors(&self) {
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
    }

    /// Keeps a failure's reason, and counts an address failure against the current address.
    pub(crate) fn note_failure(&self, kind: FailKind, reason: &str) {
        *lock(&self.last_failure) = Some(reason.into());
        if kind == FailKind::Address {
            let mut addrs = lock(&self.addrs);
            if let Some(slot) = addrs.current_mut() {
                slot.errors = slot.errors.saturating_add(1);
                self.addr_errors.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Counts one failure at `now` in the error window; what the window concludes.
    pub(crate) fn count_in_window(&self, now: u64) -> FailOutcome {
        let mut window = lock(&self.window);
        let outcome = window.fail(now, &self.shared.limits.load(), self.shared.member_count());
        self.errors.store(window.errors, Ordering::Relaxed);
        self.window_open.store(window.is_open(), Ordering::Relaxed);
        outcome
    }

    /// Feeds one latency sample (seconds) into the time-decayed EWMA used by p2c:
    /// the first sample sets it; then `alpha = 1 − exp(−dt·ln2/half_life)` in [0.01, 0.5].
    pub fn record_latency(&self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let now = self.shared.now_ns();
        // Lock-free: the swap gives this sample its own interval (since the sample before it
        // in swap order), and the update folds it in without losing a concurrent one.
        // Relaxed: the estimate orders nothing else.
        let at = self.latency_at.swap(now, Ordering::Relaxed);
        let half = self.shared.limits.load().latency_half_life.as_secs_f64();
        let _ = self
            .latency
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                if at == NO_SAMPLE || bits == NO_SAMPLE {
                    return Some(seconds.to_bits());
                }
                let prev = f64::from_bits(bits);
                let dt = now.saturating_sub(at) as f64 / 1e9;
                let alpha = (1.0 - (-dt * std::f64::consts::LN_2 / half).exp()).clamp(0.01, 0.5);
                Some((prev + alpha * (seconds - prev)).to_bits())
            });
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

    pub(crate) fn request_resolve(&self) {
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

/// State shared by a list and its upstreams (no reference back to the upstreams, so no
/// reference cycle).
pub(crate) struct Shared {
    /// The limits in force; [`UpstreamList::set_limits`] replaces them (health transitions
    /// read them, picks read the copies below).
    pub(crate) limits: ArcSwap<Limits>,
    /// `limits.hash_mode`, fixed when the list is built (the members' tables follow it).
    pub(crate) hash_mode: crate::HashMode,
    /// `limits.slow_start` in nanoseconds (read by every weighted pick).
    pub(crate) slow_start_ns: AtomicU64,
    /// `limits.default_latency` in seconds, as `f64` bits (read by every p2c pick).
    pub(crate) default_latency: AtomicU64,
    /// `limits.balance_factor`, as `f64` bits (read by every `bounded` pick).
    pub(crate) balance_factor: AtomicU64,
    /// `limits.max_inflight` (0: none), read by every pick.
    pub(crate) max_inflight: AtomicU32,
    /// Picks in flight over the whole list ([`Picked`]s alive), counted only when the list
    /// hashes with `bounded` (the one reader): other lists do not pay for a shared counter.
    pub(crate) inflight: AtomicUsize,
    pub(crate) clock: TimeSource,
    pub(crate) watchers: Watchers<Upstream>,
    pub(crate) rng: Rng,
    /// Upstreams in `Alive`.
    pub(crate) alive: AtomicUsize,
    /// Bumped at every membership snapshot published; a snapshot remembers its own, so a
    /// pick can tell that `alive` counts this snapshot's members (see `Members::select`).
    pub(crate) generation: AtomicU64,
    /// Upstreams in `Offline` or `Probing`.
    pub(crate) offline: AtomicUsize,
    members: AtomicUsize,
    /// Earliest revive deadline among offline upstreams (ns), `u64::MAX` when none.
    pub(crate) next_revive: AtomicU64,
    /// Bumped after every state transition (see `select::down`).
    pub(crate) health_epoch: AtomicU64,
    /// Makes the value an upstream carries ([`UpstreamList::set_values`]). A plain mutex:
    /// it is read when an upstream joins, never by a pick.
    pub(crate) values: std::sync::Mutex<Option<Arc<ValueMaker>>>,
}

/// What [`UpstreamList::set_values`] keeps: a maker of per-upstream values, type-erased.
pub(crate) type ValueMaker = dyn Fn(&Upstream) -> Box<dyn Any + Send + Sync> + Send + Sync;

/// Where a list's time comes from: the process's monotonic clock, read inline (a pick reads
/// it whenever some upstream is offline), or an injected clock behind a virtual call.
pub(crate) enum TimeSource {
    Monotonic(MonotonicClock),
    Injected(Arc<dyn Clock>),
}

impl Shared {
    pub(crate) fn new(limits: Limits, clock: TimeSource, members: usize) -> Arc<Self> {
        Arc::new(Shared {
            rng: Rng::new(limits.seed),
            hash_mode: limits.hash_mode,
            slow_start_ns: AtomicU64::new(health::nanos(limits.slow_start)),
            default_latency: AtomicU64::new(limits.default_latency.as_secs_f64().to_bits()),
            balance_factor: AtomicU64::new(limits.balance_factor.to_bits()),
            max_inflight: AtomicU32::new(limits.max_inflight),
            inflight: AtomicUsize::new(0),
            limits: ArcSwap::from_pointee(limits),
            clock,
            watchers: Watchers::default(),
            alive: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            offline: AtomicUsize::new(0),
            members: AtomicUsize::new(members),
            next_revive: AtomicU64::new(u64::MAX),
            health_epoch: AtomicU64::new(0),
            values: std::sync::Mutex::new(None),
        })
    }

    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        match &self.clock {
            TimeSource::Monotonic(clock) => clock.nanos(),
            TimeSource::Injected(clock) => clock.now_nanos(),
        }
    }

    pub(crate) fn now(&self) -> Duration {
        match &self.clock {
            TimeSource::Monotonic(clock) => clock.now(),
            TimeSource::Injected(clock) => clock.now(),
        }
    }

    /// Gives a new upstream its value, when the list carries values.
    pub(crate) fn make_value(&self, up: &Upstream) {
        let maker = self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(make) = maker {
            up.set_value(make(up));
        }
    }

    pub(crate) fn member_count(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }

    pub(crate) fn set_member_count(&self, n: usize) {
        self.members.store(n, Ordering::Relaxed);
    }

    pub(crate) fn emit(&self, event: Event, upstream: &Upstream, errors: u32) {
        self.watchers.emit(event, upstream, errors);
    }

    pub(crate) fn revive_delay(&self) -> u64 {
        let limits = self.limits.load();
        health::jittered(limits.revive_time, limits.revive_jitter, self.rng.unit())
    }

    /// Publishes `limits` and the picks' copies of them.
    pub(crate) fn publish_limits(&self, limits: Limits) {
        self.slow_start_ns
            .store(health::nanos(limits.slow_start), Ordering::Relaxed);
        self.default_latency.store(
            limits.default_latency.as_secs_f64().to_bits(),
            Ordering::Relaxed,
        );
        self.balance_factor
            .store(limits.balance_factor.to_bits(), Ordering::Relaxed);
        self.max_inflight
            .store(limits.max_inflight, Ordering::Relaxed);
        self.limits.store(Arc::new(limits));
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("limits", &*self.limits.load())
            .field("alive", &self.alive)
            .field("offline", &self.offline)
            .finish_non_exhaustive()
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
