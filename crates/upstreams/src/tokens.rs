//! Token-bucket selection (SPEC.md item 27).
//!
//! Each upstream holds up to 10 000 tokens, refilled at `max / 60` per second. A request of
//! `size` bytes costs `10 + size / 1024` tokens. The pick is the selectable upstream with
//! the fewest tokens in flight among those that can afford the cost (failing that, the one
//! with the most tokens left). Success returns the tokens, failure does not.

use crate::sync::{AtomicU64, Ordering};

const MAX_TOKENS: u64 = 10_000;
const BASE_COST: u64 = 10;
const SCALE: u64 = 1024;
/// Nanoseconds per refilled token: 60 s / 10 000.
const NS_PER_TOKEN: u64 = 60_000_000_000 / MAX_TOKENS;

/// The cost of a request of `size` bytes.
pub(crate) fn cost(size: usize) -> u64 {
    (BASE_COST + size as u64 / SCALE).min(MAX_TOKENS)
}

#[derive(Debug)]
pub(crate) struct Bucket {
    available: AtomicU64,
    inflight: AtomicU64,
    /// Clock time (ns) up to which refills have been credited; `u64::MAX` = not started.
    refilled_to: AtomicU64,
}

impl Bucket {
    pub(crate) fn new() -> Self {
        Self {
            available: AtomicU64::new(MAX_TOKENS),
            inflight: AtomicU64::new(0),
            refilled_to: AtomicU64::new(u64::MAX),
        }
    }

    fn refill(&self, now: u64) {
        let last = self.refilled_to.load(Ordering::Relaxed);
        if last == u64::MAX {
            let _ = self.refilled_to.compare_exchange(
                u64::MAX,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return;
        }
        let tokens = now.saturating_sub(last) / NS_PER_TOKEN;
        if tokens == 0 {
            return;
        }
        // Only the thread that advances the mark credits the tokens.
        if self
            .refilled_to
            .compare_exchange(
                last,
                last + tokens * NS_PER_TOKEN,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            let _ = self
                .available
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                    Some((a + tokens).min(MAX_TOKENS))
                });
        }
    }

    fn take(&self, cost: u64) {
        let _ = self
            .available
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_sub(cost))
            });
        self.inflight.fetch_add(cost, Ordering::Relaxed);
    }

    /// Ends a pick that cost `cost` tokens; a success returns them to the bucket.
    pub(crate) fn give_back(&self, cost: u32, success: bool) {
        if cost == 0 {
            return;
        }
        let cost = u64::from(cost);
        let _ = self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(cost))
            });
        if success {
            let _ = self
                .available
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                    Some((a + cost).min(MAX_TOKENS))
                });
        }
    }

    /// Tokens left.
    pub(crate) fn available(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }
}

/// Picks for a request of `size` bytes at `now` among `buckets` (one per member, `None`
/// for a member that is not selectable); returns the member and the tokens taken.
pub(crate) fn pick<'a>(
    buckets: impl ExactSizeIterator<Item = Option<&'a Bucket>> + Clone,
    size: usize,
    now: u64,
) -> Option<(usize, u32)> {
    let cost = cost(size);
    let mut affordable: Option<(usize, u64)> = None;
    let mut richest: Option<(usize, u64)> = None;
    for (i, bucket) in buckets.clone().enumerate() {
        let Some(bucket) = bucket else {
            continue;
        };
        bucket.refill(now);
        let available = bucket.available();
        let inflight = bucket.inflight.load(Ordering::Relaxed);
        if available >= cost && affordable.is_none_or(|(_, best)| inflight < best) {
            affordable = Some((i, inflight));
        }
        if richest.is_none_or(|(_, best)| available > best) {
            richest = Some((i, available));
        }
    }
    let (index, _) = affordable.or(richest)?;
    buckets.clone().nth(index).flatten()?.take(cost);
    Some((index, cost as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_formula() {
        assert_eq!(cost(0), 10);
        assert_eq!(cost(10240), 20);
    }

    #[test]
    fn refill_rate_is_max_per_minute() {
        let b = Bucket::new();
        b.refill(0);
        b.take(6000);
        assert_eq!(b.available(), 4000);
        b.refill(6_000_000_000); // 6 s → 1000 tokens
        assert_eq!(b.available(), 5000);
        b.refill(600_000_000_000);
        assert_eq!(b.available(), MAX_TOKENS);
    }
}
