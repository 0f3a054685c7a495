//! A bitmap of the members that are not selectable, for picks while some are offline.
//!
//! # Why
//! With every member alive, picks test nothing. With some offline, each probe of the balanced
//! hash (and each step of the other rotations) must know whether a member is selectable.
//! Reading the member's own state word is a pointer chase per probe: about 4 ns, so a pick
//! costs 43–49 ns with 90 % of the members offline. One bit per member in a few words
//! costs about one L1 read per probe instead.
//!
//! # How it stays right
//! 1. Every state transition bumps the list's health epoch (`Shared::health_epoch`) after
//!    its compare-and-swap succeeded.
//! 2. The bitmap remembers the epoch it was computed at. A pick whose epoch matches reads
//!    the bits; otherwise one picker recomputes them from the state words (O(N / 64) words,
//!    N loads) while the others, finding the rebuild flag taken, read state words directly
//!    for that pick.
//! 3. A transition whose epoch bump is not visible yet may be missed by a pick: that pick
//!    behaves as if it happened just before the transition, exactly as a pick that reads the
//!    state word a moment before another thread's compare-and-swap does.
//!
//! # Concurrency
//! Lock-free: readers never wait; a rebuild is done by whichever picker wins a flag.

use crate::sync::{AtomicBool, AtomicU64, Ordering};
use crate::upstream::Upstream;
use std::sync::Arc;

/// The epoch a fresh bitmap claims: no list reaches it, so the first pick computes the bits.
const STALE: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct DownBits {
    words: Box<[AtomicU64]>,
    epoch: AtomicU64,
    rebuilding: AtomicBool,
}

impl DownBits {
    pub(crate) fn new(members: usize) -> Self {
        Self {
            words: (0..members.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            epoch: AtomicU64::new(STALE),
            rebuilding: AtomicBool::new(false),
        }
    }

    /// The bits as of the list's health epoch `now` (read by the caller), or `None` while
    /// another picker recomputes them.
    #[inline]
    pub(crate) fn current(&self, now: u64, upstreams: &[Arc<Upstream>]) -> Option<Bits<'_>> {
        // Acquire: pairs with the Release store below, so the words read are at least the
        // ones computed for this epoch.
        if self.epoch.load(Ordering::Acquire) == now {
            return Some(Bits(&self.words));
        }
        self.rebuild(now, upstreams)
    }

    #[cold]
    fn rebuild(&self, now: u64, upstreams: &[Arc<Upstream>]) -> Option<Bits<'_>> {
        // Acquire: the previous rebuilder's word stores are visible to this one.
        if self.rebuilding.swap(true, Ordering::Acquire) {
            return None;
        }
        for (word, chunk) in self.words.iter().zip(upstreams.chunks(64)) {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, up)| !up.is_alive())
                .fold(0u64, |acc, (k, _)| acc | 1 << k);
            word.store(bits, Ordering::Relaxed);
        }
        // Release: readers that see this epoch see the words stored above.
        self.epoch.store(now, Ordering::Release);
        self.rebuilding.store(false, Ordering::Release);
        Some(Bits(&self.words))
    }
}

/// A readable view of the bitmap.
#[derive(Clone, Copy)]
pub(crate) struct Bits<'a>(&'a [AtomicU64]);

impl Bits<'_> {
    /// Whether member `i` was selectable at the bitmap's epoch.
    #[inline]
    pub(crate) fn is_up(self, i: usize) -> bool {
        self.0
            .get(i >> 6)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (i & 63)) == 0)
    }
}
