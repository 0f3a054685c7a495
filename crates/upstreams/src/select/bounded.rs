//! The `bounded` hash: `balanced` with bounded loads (consistent hashing with bounded loads,
//! Mirrokni, Thorup and Zadimoghaddam, SODA 2018; HAProxy's `hash-balance-factor`, Envoy's
//! `hash_balance_factor`). Written here because it is the product: no crate offers it over
//! an order-independent table, and the peers that do walk a ring or scan every host.
//!
//! # Rule
//! Let `T` be the picks in flight over the list (live [`Picked`](crate::Picked)s), `c` the
//! list's `balance_factor` (> 1), `w_j / W` member `j`'s weight share and `A / N` the
//! fraction of members alive. Member `j` may take a new pick while
//!
//! `inflight_j + 1 ≤ ⌈c × (T + 1) × (w_j / W) × (N / A)⌉`,
//!
//! tested as `inflight_j < c × (T + 1) × share_j × N / A` (for whole `a`, `a ≤ ⌈x⌉ ⇔ a − 1 <
//! x`). A key goes to its `balanced` owner when the owner is under the bound; otherwise it
//! walks the same per-key probe sequence `balanced` uses when members are down (then its
//! weighted-rendezvous fallback) to the first selectable member under the bound.
//!
//! # Guarantees
//! - When the owner is under its bound the answer is `balanced`'s, bit for bit: the same
//!   table, the same first probe. With no load (or loads all under the bounds) every
//!   `balanced` guarantee holds: the mapping is a function of the membership and the set of
//!   unselectable members, zero collateral movement, revival-order-proof.
//! - While every member is alive some member is always under its bound (the bounds sum to
//!   `c × (T + 1) > T ≥ Σ inflight`), and the walk ends with a scan of every member, so no
//!   pick exceeds its bound (property test `bounded_never_exceeds_the_bound`). With members
//!   down the `N / A` factor spreads their share evenly, exact for equal weights; when an
//!   exclusion (`get_except`) or unequal down weights leave nobody under the bound, the key
//!   goes to its `balanced` answer.
//! - A key that spilled returns home as soon as its owner is under the bound again: spilling
//!   never changes the table.
//!
//! # Cost
//! One relaxed load of the list's in-flight counter and one of the owner's, one multiply
//! and compare beyond `balanced` (benchmarked beside it in `benches/pick.rs`). Only a list
//! in `bounded` mode keeps the list-wide counter (one relaxed add and subtract per
//! `Picked`). Counts are relaxed: concurrent picks may each see a member just under its
//! bound, so under contention a member can exceed it by the number of picks racing.

use super::balanced::Balanced;
use crate::sync::Ordering;

/// Per member: `(w_j / W) × N`, the weight share scaled so that equal weights give 1.
pub(crate) fn shares(weights: impl Iterator<Item = u16>) -> Box<[f64]> {
    let w: Vec<f64> = weights.map(|w| f64::from(w.max(1))).collect();
    let total: f64 = w.iter().sum();
    let n = w.len() as f64;
    w.iter().map(|&x| x * n / total).collect()
}

/// `c × (T + 1) / A` for the list now: member `j` is under its bound while
/// `inflight_j < scale × shares[j]`.
#[inline]
pub(crate) fn scale(shared: &crate::upstream::Shared, members: usize) -> f64 {
    let alive = shared
        .alive
        .load(Ordering::Relaxed)
        .clamp(1, members.max(1));
    let total = shared.inflight.load(Ordering::Relaxed) as f64 + 1.0;
    let c = f64::from_bits(shared.balance_factor.load(Ordering::Relaxed));
    // `shares` carry the factor N, so the bound is `c × (T + 1) × share / A`.
    c * total / alive as f64
}

/// The pick for key hash `h`: the `balanced` answer while its owner is under the bound,
/// else the first member of the key's probe sequence under it.
#[inline]
pub(crate) fn lookup(
    table: &Balanced,
    shares: &[f64],
    loads: impl Fn(usize) -> u32 + Copy,
    h: u64,
    ok: impl Fn(usize) -> bool + Copy,
    scale: f64,
) -> Option<usize> {
    // An idle member is always under its bound (the bound is positive): no arithmetic.
    let under = move |i: usize| {
        ok(i) && {
            let load = loads(i);
            load == 0 || f64::from(load) < scale * shares[i]
        }
    };
    table.lookup(h, under).or_else(|| table.lookup(h, ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::mix64;
    use std::cell::{Cell, RefCell};

    /// Mean members asked per pick, and the fraction of picks served at home, with Zipf(1.1)
    /// keys over 10^6 distinct keys and a closed loop of `load` picks in flight (each new pick
    /// replaces a random one), 10 equal members, c = 1.25. Printed for BENCHMARKS.md
    /// (`cargo test -p upstreams --release bounded_probes -- --nocapture`).
    #[test]
    fn bounded_probes_under_zipf_load() {
        let n = 10;
        let names: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
        let table = Balanced::build(names.iter().map(|s| (s.as_str(), 1)));
        let shares = shares(std::iter::repeat_n(1, n));
        let keys = 1_000_000usize;
        let mut cdf = Vec::with_capacity(keys);
        let mut acc = 0.0;
        for k in 1..=keys {
            acc += (k as f64).powf(-1.1);
            cdf.push(acc);
        }
        // The fluid ceiling of the home share: each member keeps at most c / N of the load.
        let mut owned = vec![0.0; n];
        let mut prev = 0.0;
        for (k, &c) in cdf.iter().enumerate() {
            let h = crate::select::balanced::key_hash(&k.to_le_bytes());
            owned[table.lookup(h, |_| true).unwrap()] += c - prev;
            prev = c;
        }
        let ceiling: f64 = owned.iter().map(|&l| (l / acc).min(1.25 / n as f64)).sum();
        println!("largest member's share of Zipf(1.1) keys: {:.1} %; fluid ceiling of the home share at c 1.25: {:.1} %",
            owned.iter().fold(0.0f64, |a, &b| a.max(b)) / acc * 100.0, ceiling * 100.0);
        let mut seed = 1u64;
        let mut unit = || {
            seed = seed.wrapping_add(1);
            (mix64(seed) >> 11) as f64 / (1u64 << 53) as f64
        };
        for load in [8usize, 32, 128] {
            let inflight = RefCell::new(vec![0u32; n]);
            let mut held: Vec<usize> = Vec::new();
            let asked = Cell::new(0u64);
            let (mut picks, mut home) = (0u64, 0u64);
            for round in 0..200_000 {
                let u = unit() * acc;
                let key = cdf.partition_point(|&c| c < u);
                let h = crate::select::balanced::key_hash(&key.to_le_bytes());
                let total = held.len() as f64;
                let scale = 1.25 * (total + 1.0) / n as f64;
                let got = {
                    let loads = inflight.borrow();
                    let ok = |_: usize| {
                        asked.set(asked.get() + 1);
                        true
                    };
                    lookup(&table, &shares, |i| loads[i], h, ok, scale).unwrap()
                };
                let owner = table.lookup(h, |_| true).unwrap();
                let loads = inflight.borrow();
                assert!(
                    f64::from(loads[got]) < scale * shares[got],
                    "bound exceeded"
                );
                drop(loads);
                if round >= 10_000 {
                    picks += 1;
                    home += u64::from(got == owner);
                }
                inflight.borrow_mut()[got] += 1;
                held.push(got);
                if held.len() > load {
                    let j = (unit() * held.len() as f64) as usize % held.len();
                    let gone = held.swap_remove(j);
                    inflight.borrow_mut()[gone] -= 1;
                }
            }
            let mean = asked.get() as f64 / 200_000.0;
            let home = home as f64 / picks as f64;
            println!("bounded, 10 members, c 1.25, {load} in flight: {mean:.3} members asked per pick, {:.1} % at home", home * 100.0);
            assert!(mean < 4.0, "{mean}");
        }
    }
}
