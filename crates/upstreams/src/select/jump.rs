//! rspamd 3.x's consistent hash, bit-compatible (SPEC.md item 46, `rspamd-jump`).
//!
//! # Algorithm (as every rspamd release before 4.0 computes it)
//! 1. `k = XXH64(key, seed 0xa574de7df64e9b9d)`.
//! 2. A jump hash of `k` over all configured members in configuration order, healthy or
//!    not: `b = -1, j = 0; while j < n { b = j; k ×= 2862933555777941758; j = ⌊((b + 1) ×
//!    2^31) / ((k >> 33) + 1)⌋ }` in doubles, left to right. The multiplier is the paper's
//!    constant plus one, with no addend: rspamd writes `k *= C + 1`. The jump works on a
//!    copy of `k`: its steps do not carry over to the next candidate.
//! 3. When member `b` is not selectable (offline, or the excluded one), the `k` of step 1
//!    (or of the previous rehash) is rehashed,
//!    `k = mum(k, 0x2e0bb864e9ea7df5) ^ mum(seed, 0xcdb32970830fcaa1)` with `mum` the sum of
//!    the high and low halves of the 128-bit product, and step 2 runs again: 20 candidates
//!    at most.
//! 4. After that, rspamd takes a random selectable member; so do we.
//!
//! Weights play no part. Written here because it is the product: rspamd's exact arithmetic,
//! which no crate reproduces.
//!
//! # Guarantees
//! Identical picks to rspamd 3.4 (checked against `vectors/rspamd3_jump.tsv`, offline
//! members included). Quality is the jump hash's: even shares when all are healthy, but a
//! failed member's keys are rehashed over all members (see the quality report).
//!
//! # Complexity
//! No table; O(ln n) per candidate, at most 20 candidates, then O(n) for the fallback.
//! Nothing is allocated.

use xxhash_rust::xxh64::xxh64;

use super::ring::SEED;

/// Candidates tried before the random fallback.
const TRIES: usize = 20;

fn mum(v: u64, p: u64) -> u64 {
    let product = u128::from(v) * u128::from(p);
    ((product >> 64) as u64).wrapping_add(product as u64)
}

/// One jump over `n` members, advancing `k`.
#[inline]
fn jump(k: &mut u64, n: usize) -> usize {
    let n = n as i64;
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n {
        b = j;
        *k = k.wrapping_mul(2_862_933_555_777_941_758);
        j = ((b + 1) as f64 * (1u64 << 31) as f64 / ((*k >> 33) + 1) as f64) as i64;
    }
    b as usize
}

/// The member rspamd 3.x picks for `key` among `n`, where `ok` says which are selectable;
/// `random` draws the fallback.
pub(crate) fn lookup(
    key: &[u8],
    n: usize,
    ok: impl Fn(usize) -> bool,
    random: impl FnOnce(usize) -> usize,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let mut k = xxh64(key, SEED);
    for _ in 0..TRIES {
        // rspamd passes `k` to the jump by value: the jump's steps do not carry over.
        let b = jump(&mut k.clone(), n);
        if ok(b) {
            return Some(b);
        }
        k = mum(k, 0x2e0b_b864_e9ea_7df5) ^ mum(SEED, 0xcdb3_2970_830f_caa1);
    }
    let selectable = (0..n).filter(|&i| ok(i)).count();
    if selectable == 0 {
        return None;
    }
    let nth = random(selectable);
    (0..n).filter(|&i| ok(i)).nth(nth)
}

#[cfg(test)]
mod tests {
    use super::{jump, lookup};

    #[test]
    fn one_member_takes_every_key_and_none_takes_nothing() {
        assert_eq!(lookup(b"k", 1, |_| true, |_| 0), Some(0));
        assert_eq!(lookup(b"k", 0, |_| true, |_| 0), None);
        assert_eq!(lookup(b"k", 3, |_| false, |_| 0), None);
        // Only member 2 selectable: found by the rehashes or by the fallback.
        assert_eq!(lookup(b"k", 3, |i| i == 2, |_| 0), Some(2));
    }

    #[test]
    fn jump_stays_in_range_and_spreads() {
        let mut counts = [0usize; 7];
        for i in 0..70_000u64 {
            let mut k = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            counts[jump(&mut k, 7)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
