//! Selection: the rotations of SPEC.md §3 over one membership snapshot.
//!
//! A `Members` snapshot holds the configured upstreams and everything precomputed from
//! them (round-robin schedule, priority order, hash tables). It is immutable and rebuilt
//! only when membership changes, never on a health change: picks test nothing while every
//! upstream is alive, and otherwise read the snapshot's down-bitmap (`down`), which follows
//! each upstream's own atomic state.

pub(crate) mod balanced;
pub(crate) mod bounded;
pub(crate) mod down;
pub(crate) mod jump;
pub(crate) mod ring;
pub(crate) mod rr;

use crate::sync::{AtomicUsize, Ordering};
use std::cell::Cell;
use std::fmt;

use crate::rotation::Rotation;
use std::sync::{Arc, OnceLock};

use crate::limits::HashMode;
use crate::upstream::Shared;
use crate::upstream::Upstream;

use balanced::Balanced;
use ring::Ring;
use rr::RoundRobin;

/// Most upstreams one list may hold.
pub(crate) const MAX_MEMBERS: usize = 1 << 20;

/// One immutable membership snapshot.
pub(crate) struct Members {
    pub(crate) upstreams: Box<[Arc<Upstream>]>,
    rr: RoundRobin,
    priority: Box<[u32]>,
    /// Built with the snapshot when the list hashes with `balanced`; otherwise on first use
    /// (weighted random): a list that never needs it (the Lua module's lists hash with
    /// rspamd's ring) does not carry its 16 384-slot table (≈ 23 KiB a list).
    balanced: OnceLock<Balanced>,
    ring: OnceLock<Ring>,
    /// Weight shares for `bounded` (empty in other modes).
    bound_shares: Box<[f64]>,
    sequence: AtomicUsize,
    weighted: bool,
    down: down::DownBits,
    /// The list's membership generation when this snapshot was published.
    pub(crate) generation: u64,
    /// The rotation the definition's prefix names, published with the members it goes
    /// with: a pick that races a reload sees the old pair or the new one, never a mix.
    pub(crate) rotation: Option<Rotation>,
    /// The definition's entries (an SRV entry expands to several members), with the same
    /// guarantee.
    pub(crate) entries: Arc<Vec<crate::parse::Entry>>,
}

impl Members {
    pub(crate) fn build(upstreams: Vec<Arc<Upstream>>, hash_mode: HashMode) -> Self {
        for (i, up) in upstreams.iter().enumerate() {
            up.set_index(i);
        }
        let weights: Vec<u16> = upstreams.iter().map(|u| u.weight()).collect();
        let mut priority: Vec<u32> = (0..upstreams.len() as u32).collect();
        // SRV priority first (lower wins), then weight (higher wins); stable, so configuration
        // order breaks ties.
        priority.sort_by_key(|&i| {
            let up = &upstreams[i as usize];
            (up.srv_priority(), std::cmp::Reverse(up.weight()))
        });
        let balanced = OnceLock::new();
        if matches!(hash_mode, HashMode::Balanced | HashMode::Bounded) {
            let _ = balanced.set(Balanced::build(
                upstreams.iter().map(|u| (u.name(), u.weight())),
            ));
        }
        let ring = OnceLock::new();
        if hash_mode == HashMode::RspamdRing {
            let _ = ring.set(Ring::build(
                upstreams.iter().map(|u| (u.name(), u.weight())),
            ));
        }
        let bound_shares = if hash_mode == HashMode::Bounded {
            bounded::shares(weights.iter().copied())
        } else {
            Box::default()
        };
        Self {
            bound_shares,
            rr: RoundRobin::build(&weights),
            priority: priority.into_boxed_slice(),
            balanced,
            ring,
            sequence: AtomicUsize::new(0),
            down: down::DownBits::new(upstreams.len()),
            weighted: weights.iter().any(|&w| w > 0),
            generation: 0,
            rotation: None,
            entries: Arc::default(),
            upstreams: upstreams.into_boxed_slice(),
        }
    }

    #[inline]
    fn balanced(&self) -> &Balanced {
        self.balanced
            .get_or_init(|| Balanced::build(self.upstreams.iter().map(|u| (u.name(), u.weight()))))
    }

    fn ring(&self) -> &Ring {
        self.ring
            .get_or_init(|| Ring::build(self.upstreams.iter().map(|u| (u.name(), u.weight()))))
    }

    /// The index of the pick, or `None` when nothing is selectable.
    #[inline]
    pub(crate) fn select(
        &self,
        rotation: Rotation,
        key: &[u8],
        except: &[usize],
        shared: &Shared,
    ) -> Option<usize> {
        let n = self.upstreams.len();
        let alive = shared.alive.load(Ordering::Relaxed);
        if alive == 0 {
            return None;
        }
        let cap = shared.max_inflight.load(Ordering::Relaxed);
        if cap != 0 {
            return self.select_capped(rotation, key, except, shared, cap);
        }
        // `alive` counts the members of the current snapshot: it vouches for this one only
        // while this one is current (a snapshot held across a reload may hold drained
        // members, and the reload may have added more than it drained).
        if alive >= n && shared.generation.load(Ordering::Relaxed) == self.generation {
            // Everything healthy: no health test at all, only the exclusion if there is one.
            return match *except {
                [] => self.select_by(rotation, key, shared, |_| true),
                [e] => self.select_by(rotation, key, shared, move |i| i != e),
                _ => self.select_by(rotation, key, shared, |i| !except.contains(&i)),
            };
        }
        self.select_degraded(rotation, key, except, shared)
    }

    /// [`Members::select`] while some member is not alive: out of line, so the all-alive
    /// path stays small.
    #[inline(never)]
    fn select_degraded(
        &self,
        rotation: Rotation,
        key: &[u8],
        except: &[usize],
        shared: &Shared,
    ) -> Option<usize> {
        // Acquire: transitions counted by this epoch are visible in the state words.
        let epoch = shared.health_epoch.load(Ordering::Acquire);
        if let Some(bits) = self.down.current(epoch, &self.upstreams) {
            // The bits are those of the current epoch: a transition they miss is one whose
            // compare-and-swap is landing right now, which a read of the state words could
            // miss as well (the pick then happened just before it).
            let ok = |i: usize| bits.is_up(i) && !except.contains(&i);
            return self.select_by(rotation, key, shared, ok);
        }
        let ups = &self.upstreams;
        let ok = |i: usize| ups[i].is_alive() && !except.contains(&i);
        self.select_by(rotation, key, shared, ok)
    }

    /// [`Members::select`] under `max_inflight`: a full member is skipped like an
    /// unselectable one.
    #[inline(never)]
    fn select_capped(
        &self,
        rotation: Rotation,
        key: &[u8],
        except: &[usize],
        shared: &Shared,
        cap: u32,
    ) -> Option<usize> {
        let ups = &self.upstreams;
        let ok = |i: usize| ups[i].inflight() < cap && ups[i].is_alive() && !except.contains(&i);
        self.select_by(rotation, key, shared, ok)
    }

    /// [`Members::select`] with `ok` telling which members may be picked.
    #[inline(always)]
    fn select_by(
        &self,
        rotation: Rotation,
        key: &[u8],
        shared: &Shared,
        ok: impl Fn(usize) -> bool + Copy,
    ) -> Option<usize> {
        let ups = &self.upstreams;
        match rotation {
            Rotation::Hashed if !key.is_empty() => {
                return match shared.hash_mode {
                    HashMode::RspamdRing => self.ring().lookup(key, ok),
                    HashMode::RspamdJump => {
                        jump::lookup(key, ups.len(), ok, |n| shared.rng.below(n))
                    }
                    HashMode::Bounded => bounded::lookup(
                        self.balanced(),
                        &self.bound_shares,
                        |i| ups[i].inflight(),
                        balanced::key_hash(key),
                        ok,
                        bounded::scale(shared, ups.len()),
                    ),
                    _ => self.balanced().lookup(balanced::key_hash(key), ok),
                };
            }
            Rotation::Sequential => return self.sequential(ok),
            _ => {}
        }
        // Keyed hashing and sequential never ramp (SPEC.md item 35): only the rest pay for it.
        let ramp = Ramp::new(shared);
        match rotation {
            Rotation::P2c => self.p2c(ok, shared, &ramp),
            _ if ramp.window == 0 => self.weighted_pick(rotation, ok, shared),
            _ => {
                // Slow start: ramping members are accepted in proportion to their factor;
                // when that leaves nothing (only ramping members), they are taken plainly.
                let thinned = |i: usize| {
                    ok(i) && {
                        let f = ramp.factor(&ups[i]);
                        f >= 1.0 || shared.rng.unit() < f
                    }
                };
                self.weighted_pick(rotation, thinned, shared)
                    .or_else(|| self.weighted_pick(rotation, ok, shared))
            }
        }
    }

    /// Random, round-robin and master-slave, the rotations slow start thins.
    #[inline]
    fn weighted_pick(
        &self,
        rotation: Rotation,
        accept: impl Fn(usize) -> bool,
        shared: &Shared,
    ) -> Option<usize> {
        match rotation {
            Rotation::RoundRobin => self.rr.pick(accept),
            Rotation::MasterSlave => self
                .priority
                .iter()
                .map(|&i| i as usize)
                .find(|&i| accept(i)),
            _ => self.balanced().lookup(shared.rng.next_u64(), accept),
        }
    }

    fn sequential(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.upstreams.len();
        loop {
            let cur = self.sequence.load(Ordering::Relaxed);
            let found = (cur.min(n)..n).find(|&i| ok(i));
            let next = found.map_or(0, |i| i + 1);
            // Relaxed: the cursor orders nothing but itself.
            if self
                .sequence
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return found;
            }
        }
    }

    /// Two distinct random selectable members; the lower load wins (Mitzenmacher).
    fn p2c(&self, ok: impl Fn(usize) -> bool, shared: &Shared, ramp: &Ramp<'_>) -> Option<usize> {
        let n = self.upstreams.len();
        let draw = |not: Option<usize>| {
            for _ in 0..8 {
                let i = shared.rng.below(n);
                if Some(i) != not && ok(i) {
                    return Some(i);
                }
            }
            let start = shared.rng.below(n);
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| Some(i) != not && ok(i))
        };
        let a = draw(None)?;
        let Some(b) = draw(Some(a)) else {
            return Some(a);
        };
        let default = f64::from_bits(shared.default_latency.load(Ordering::Relaxed));
        let load = |i: usize| {
            let up = &self.upstreams[i];
            let latency = up.latency_secs().unwrap_or(default).max(1e-9);
            let mut load = f64::from(up.inflight() + 1) * latency * (1.0 + f64::from(up.errors()));
            if self.weighted {
                load /= f64::from(up.weight().max(1));
            }
            load / ramp.factor(up).max(0.01)
        };
        Some(if load(a) <= load(b) { a } else { b })
    }
}

impl fmt::Debug for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.upstreams.iter()).finish()
    }
}

/// Slow start (SPEC.md item 35): a revived upstream's weight ramps from 0 to full.
struct Ramp<'a> {
    shared: &'a Shared,
    window: u64,
    now: Cell<Option<u64>>,
}

impl<'a> Ramp<'a> {
    #[inline]
    fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            window: shared.slow_start_ns.load(Ordering::Relaxed),
            now: Cell::new(None),
        }
    }

    /// The fraction of its weight `up` carries now, in (0, 1].
    fn factor(&self, up: &Upstream) -> f64 {
        if self.window == 0 {
            return 1.0;
        }
        let since = up.revived_at.load(Ordering::Relaxed);
        if since == u64::MAX {
            return 1.0;
        }
        let now = match self.now.get() {
            Some(now) => now,
            None => {
                let now = self.shared.now_ns();
                self.now.set(Some(now));
                now
            }
        };
        let elapsed = now.saturating_sub(since);
        if elapsed >= self.window {
            1.0
        } else {
            elapsed as f64 / self.window as f64
        }
    }
}
