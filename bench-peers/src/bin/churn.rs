//! Membership churn of slot-table fills (DESIGN-NOTES' open problem), measured side by side
//! on the same keys: the Maglev-style fill the `balanced` hash used until 2026-12-02;
//! deferred acceptance over the same permutations (the core's fill since, with floor quotas
//! and holes); and two fills that are pure functions of the membership and move only the
//! removed member's slots: rendezvous (HRW) ownership per slot, and "darts" (each member
//! claims slots from its own hash sequence, the best score wins a slot, empty slots inherit
//! the next claimed one). Thinning makes every fill's shares exact; the table prints what
//! that costs in probes and in keys moved.
//!
//! A second table grows the slot count (2^14…2^17) and counts, besides keys, the slots of
//! members that stay whose owner changed: whether the fill's cascade or the thinning moves
//! the keys, and whether a larger table cures it. A third removes eight different members in
//! turn, since one removal's figure varies.
//!
//! `cargo run --release --manifest-path bench-peers/Cargo.toml --bin churn`

use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64_with_seed;

const STEP: u64 = 0x9e37_79b9_7f4a_7c15;
const PROBES: u64 = 64;

fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[derive(Clone, Copy, PartialEq)]
enum Fill {
    Maglev,
    Deferred,
    DeferredFloor,
    DeferredLoose,
    Rendezvous,
    Darts(u64),
}

struct Table {
    shift: u32,
    owners: Vec<u32>,
    thresh: Vec<u64>,
}

fn id(name: &str) -> u64 {
    xxh3_64_with_seed(name.as_bytes(), 0x6261_6c61_6e63_6564)
}

impl Table {
    fn build(fill: Fill, names: &[String], bits: u32) -> Self {
        let m = 1usize << bits;
        let ids: Vec<u64> = names.iter().map(|n| id(n)).collect();
        let owners = match fill {
            Fill::Maglev => maglev(&ids, m),
            Fill::Deferred => deferred(&ids, m, false),
            Fill::DeferredFloor => deferred(&ids, m, true),
            Fill::DeferredLoose => deferred_loose(&ids, m),
            Fill::Rendezvous => rendezvous(&ids, m),
            Fill::Darts(per) => darts(&ids, m, per),
        };
        let mut slots = vec![0u64; ids.len()];
        for &o in owners.iter().filter(|&&o| o != u32::MAX) {
            slots[o as usize] += 1;
        }
        // Equal weights: p_j = min_k(t_k) / t_j.
        let min = slots.iter().copied().filter(|&t| t > 0).min().unwrap_or(1);
        let thresh = slots
            .iter()
            .map(|&t| ((1u64 << 32) * min).checked_div(t).unwrap_or(0))
            .collect();
        Self {
            shift: 64 - bits,
            owners,
            thresh,
        }
    }

    /// The member and the number of probes it took.
    fn lookup(&self, h: u64) -> (usize, u64) {
        let mut x = h;
        for i in 1..=PROBES {
            let o = self.owners[(x >> self.shift) as usize] as usize;
            // An unowned slot (a hole) passes the key on.
            if o != u32::MAX as usize && (x & 0xffff_ffff) < self.thresh[o] {
                return (o, i);
            }
            x = mix64(h.wrapping_add(i.wrapping_mul(STEP)));
        }
        (self.owners[(h >> self.shift) as usize] as usize, PROBES)
    }
}

fn maglev(ids: &[u64], m: usize) -> Vec<u32> {
    let mask = (m - 1) as u64;
    let n = ids.len();
    let quota = m / n;
    let mut left: Vec<usize> = (0..n).map(|j| quota + usize::from(j < m % n)).collect();
    let mut owners = vec![u32::MAX; m];
    let mut next = vec![0u64; n];
    let mut filled = 0;
    while filled < m {
        for j in 0..n {
            if left[j] == 0 {
                continue;
            }
            let (off, skip) = (ids[j] & mask, (mix64(ids[j]) | 1) & mask);
            loop {
                let s = (off.wrapping_add(next[j].wrapping_mul(skip)) & mask) as usize;
                next[j] += 1;
                if owners[s] == u32::MAX {
                    owners[s] = j as u32;
                    break;
                }
            }
            left[j] -= 1;
            filled += 1;
        }
    }
    owners
}

/// Member-proposing deferred acceptance: members propose along their Maglev permutations;
/// a slot keeps the proposer that ranks it earliest in its permutation (ties: identity).
/// `floor`: every member gets `⌊m / n⌋` slots and the rest stay holes (the core's fill
/// since 2026-12-02); otherwise the remainder goes to the first `m mod n` members.
fn deferred(ids: &[u64], m: usize, floor: bool) -> Vec<u32> {
    let n = ids.len();
    let quotas: Vec<usize> = (0..n)
        .map(|j| m / n + usize::from(!floor && j < m % n))
        .collect();
    deferred_quotas(ids, m, quotas)
}

/// Deferred acceptance by position with quotas one below the floor (more holes).
fn deferred_loose(ids: &[u64], m: usize) -> Vec<u32> {
    let quota = (m / ids.len()).saturating_sub(1).max(1);
    deferred_quotas(ids, m, vec![quota; ids.len()])
}

fn deferred_quotas(ids: &[u64], m: usize, mut need: Vec<usize>) -> Vec<u32> {
    let mask = (m - 1) as u64;
    let n = ids.len();
    let perm: Vec<(u64, u64)> = ids
        .iter()
        .map(|&id| (id & mask, (mix64(id) | 1) & mask))
        .collect();
    // Per slot: (position in the holder's permutation, holder's identity, holder).
    let mut held: Vec<(u64, u64, u32)> = vec![(u64::MAX, 0, u32::MAX); m];
    let mut next = vec![0u64; n];
    let mut queue: Vec<usize> = (0..n).rev().collect();
    while let Some(j) = queue.pop() {
        while need[j] > 0 {
            let p = next[j];
            next[j] += 1;
            let s = (perm[j].0.wrapping_add(p.wrapping_mul(perm[j].1)) & mask) as usize;
            let (hp, hid, h) = held[s];
            if (p, ids[j]) < (hp, hid) {
                held[s] = (p, ids[j], j as u32);
                need[j] -= 1;
                if h != u32::MAX {
                    need[h as usize] += 1;
                    if need[h as usize] == 1 {
                        queue.push(h as usize);
                    }
                }
            }
        }
    }
    held.iter().map(|h| h.2).collect()
}

fn rendezvous(ids: &[u64], m: usize) -> Vec<u32> {
    (0..m as u64)
        .map(|s| {
            let mut best = (0u64, 0u32);
            for (j, &i) in ids.iter().enumerate() {
                let score = mix64(i ^ s.wrapping_mul(STEP));
                if score >= best.0 {
                    best = (score, j as u32);
                }
            }
            best.1
        })
        .collect()
}

fn darts(ids: &[u64], m: usize, per: u64) -> Vec<u32> {
    let bits = m.trailing_zeros();
    let mut best = vec![(0u64, u32::MAX); m];
    for (j, &i) in ids.iter().enumerate() {
        for k in 0..per {
            let h = mix64(i ^ k.wrapping_mul(STEP));
            let slot = (h >> (64 - bits)) as usize;
            let score = mix64(h);
            if best[slot].1 == u32::MAX || score > best[slot].0 {
                best[slot] = (score, j as u32);
            }
        }
    }
    // Empty slots inherit the next claimed slot (a ring), so removal touches only the run
    // before each of the removed member's slots.
    let mut owners = vec![u32::MAX; m];
    let start = best.iter().position(|b| b.1 != u32::MAX).unwrap_or(0);
    let mut carry = best[start].1;
    for step in 0..m {
        let s = (start + m - step) % m;
        if best[s].1 != u32::MAX {
            carry = best[s].1;
        }
        owners[s] = carry;
    }
    owners
}

/// `n` member names, and the same list without member `r`.
fn memberships(n: usize, r: usize) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = (0..n)
        .map(|i| format!("10.0.{}.{}:11333", i / 256, i % 256))
        .collect();
    let mut kept = names.clone();
    kept.remove(r);
    (names, kept)
}

/// Index in the full list of member `y` of the list without member `r`.
fn unshift(y: usize, r: usize) -> usize {
    if y >= r {
        y + 1
    } else {
        y
    }
}

/// Keys moved when member `r` is removed (table `a` with it, `b` without), and the keys it
/// held (the ideal).
fn moved(a: &Table, b: &Table, keys: &[u64], r: usize) -> (usize, usize) {
    let (mut moved, mut ideal) = (0, 0);
    for &h in keys {
        let x = a.lookup(h).0;
        if x == r {
            ideal += 1;
        }
        if x != unshift(b.lookup(h).0, r) {
            moved += 1;
        }
    }
    (moved, ideal)
}

/// Eight different members removed in turn (one at a time) from N = 100 and N = 1000: the
/// ratio of keys moved to the ideal, over all eight, and the range of the single removals.
fn removal_sweep(keys: &[u64]) {
    println!();
    println!("| fill | N | mean probes | keys moved / ideal, 8 removals | range |");
    println!("|---|---|---|---|---|");
    for (fill, label) in [
        (Fill::Maglev, "maglev"),
        (Fill::Deferred, "deferred acceptance, remainder handed out"),
        (
            Fill::DeferredFloor,
            "deferred acceptance, floor quotas (balanced today)",
        ),
        (
            Fill::DeferredLoose,
            "deferred acceptance, quotas one below the floor",
        ),
    ] {
        for n in [100usize, 1000] {
            let a = Table::build(fill, &memberships(n, 0).0, 14);
            let (mut moved_all, mut ideal_all) = (0usize, 0usize);
            let (mut lo, mut hi) = (f64::MAX, 0f64);
            for k in 0..8 {
                let r = (k * n / 8 + n / 16) % n;
                let b = Table::build(fill, &memberships(n, r).1, 14);
                let (moved, ideal) = moved(&a, &b, keys, r);
                let ratio = moved as f64 / ideal.max(1) as f64;
                (lo, hi) = (lo.min(ratio), hi.max(ratio));
                moved_all += moved;
                ideal_all += ideal;
            }
            let probes: u64 = keys.iter().map(|&h| a.lookup(h).1).sum();
            println!(
                "| {label} | {n} | {:.3} | {:.2} | {lo:.2}–{hi:.2} |",
                probes as f64 / keys.len() as f64,
                moved_all as f64 / ideal_all.max(1) as f64
            );
        }
    }
}

fn table_sizes(keys: &[u64]) {
    println!();
    println!("| fill | N | slots | slots of the removed member | other slots changed | keys moved | ideal | ratio | build ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in [10usize, 100, 1000] {
        let (names, kept) = memberships(n, n / 2);
        for (fill, bits) in [
            (Fill::Maglev, 14u32),
            (Fill::Maglev, 15),
            (Fill::Maglev, 16),
            (Fill::Maglev, 17),
            (Fill::DeferredFloor, 14),
            (Fill::DeferredFloor, 15),
            (Fill::DeferredFloor, 16),
        ] {
            let t0 = Instant::now();
            let a = Table::build(fill, &names, bits);
            let build = t0.elapsed().as_secs_f64() * 1e3;
            let b = Table::build(fill, &kept, bits);
            let own = a.owners.iter().filter(|&&x| x as usize == n / 2).count();
            let changed = a
                .owners
                .iter()
                .zip(&b.owners)
                .filter(|(&x, &y)| {
                    x as usize != n / 2
                        && !(x == u32::MAX && y == u32::MAX)
                        && x as usize != unshift(y as usize, n / 2)
                })
                .count();
            let (moved, ideal) = moved(&a, &b, keys, n / 2);
            println!(
                "| {} | {n} | 2^{bits} | {own} | {changed} | {moved} | {ideal} | {:.2} | {build:.2} |",
                if fill == Fill::Maglev { "maglev" } else { "deferred, floor" },
                moved as f64 / ideal.max(1) as f64
            );
        }
    }
}

fn main() {
    let keys: Vec<u64> = (0..1_000_000u64)
        .map(|i| xxh3_64_with_seed(format!("key-{i}-padding-to-32-bytes....").as_bytes(), 7))
        .collect();
    println!("| fill | N | slots | peak/avg | mean probes | keys moved on removal | ideal | ratio | build ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in [10usize, 100, 1000] {
        let (names, kept) = memberships(n, n / 2);
        for fill in [
            Fill::Maglev,
            Fill::DeferredFloor,
            Fill::Rendezvous,
            Fill::Darts(64),
            Fill::Darts(256),
        ] {
            let bits = match fill {
                Fill::Darts(per) => (n as u64 * per)
                    .next_power_of_two()
                    .trailing_zeros()
                    .max(14),
                _ => 14,
            };
            let t0 = Instant::now();
            let a = Table::build(fill, &names, bits);
            let build = t0.elapsed().as_secs_f64() * 1e3;
            let b = Table::build(fill, &kept, bits);
            let mut probes = 0u64;
            let mut load = vec![0usize; n];
            for &h in &keys {
                let (x, p) = a.lookup(h);
                probes += p;
                load[x] += 1;
            }
            let (moved, ideal) = moved(&a, &b, &keys, n / 2);
            let peak = *load.iter().max().unwrap() as f64 / (keys.len() as f64 / n as f64);
            let label = match fill {
                Fill::Maglev => "maglev (balanced before 2026-12-02)".to_owned(),
                Fill::Rendezvous => "rendezvous per slot".to_owned(),
                Fill::Deferred => "deferred acceptance".to_owned(),
                Fill::DeferredFloor => {
                    "deferred acceptance, floor quotas (balanced today)".to_owned()
                }
                Fill::DeferredLoose => "deferred acceptance, quotas one below the floor".to_owned(),
                Fill::Darts(p) => format!("darts, {p} per member"),
            };
            println!(
                "| {label} | {n} | 2^{bits} | {peak:.3} | {:.2} | {moved} | {ideal} | {:.2} | {build:.2} |",
                probes as f64 / keys.len() as f64,
                moved as f64 / ideal.max(1) as f64
            );
        }
    }
    table_sizes(&keys);
    removal_sweep(&keys);
}
