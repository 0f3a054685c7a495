//! Membership churn of slot-table fills (DESIGN-NOTES' open problem), measured side by side:
//! the Maglev-style fill the `balanced` hash uses, and two fills that are pure functions of
//! the membership and move only the removed member's slots: rendezvous (HRW) ownership per
//! slot, and "darts" (each member claims slots from its own hash sequence, the best score
//! wins a slot, empty slots inherit the next claimed one). Thinning makes every fill's shares
//! exact; the table prints what that costs in probes and in keys moved.
//!
//! A second table grows the Maglev fill's slot count (2^14…2^17) and counts, besides keys,
//! the slots of members that stay whose owner changed: whether the fill's cascade or the
//! thinning moves the keys, and whether a larger table cures it.
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
            Fill::Rendezvous => rendezvous(&ids, m),
            Fill::Darts(per) => darts(&ids, m, per),
        };
        let mut slots = vec![0u64; ids.len()];
        for &o in &owners {
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
            if (x & 0xffff_ffff) < self.thresh[o] {
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

/// `n` member names and the same list without the middle one.
fn memberships(n: usize) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = (0..n)
        .map(|i| format!("10.0.{}.{}:11333", i / 256, i % 256))
        .collect();
    let kept = names
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != n / 2)
        .map(|(_, s)| s.clone())
        .collect();
    (names, kept)
}

/// Index in the full list of member `y` of the list without the middle one.
fn unshift(y: usize, n: usize) -> usize {
    if y >= n / 2 {
        y + 1
    } else {
        y
    }
}

/// Keys moved when the middle member is removed, and the keys it held (the ideal).
fn moved(a: &Table, b: &Table, keys: &[u64], n: usize) -> (usize, usize) {
    let (mut moved, mut ideal) = (0, 0);
    for &h in keys {
        let x = a.lookup(h).0;
        if x == n / 2 {
            ideal += 1;
        }
        if x != unshift(b.lookup(h).0, n) {
            moved += 1;
        }
    }
    (moved, ideal)
}

fn table_sizes(keys: &[u64]) {
    println!();
    println!("| N | slots | slots of the removed member | other slots changed | keys moved | ideal | ratio | build ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [10usize, 100, 1000] {
        let (names, kept) = memberships(n);
        for bits in 14..=17 {
            let t0 = Instant::now();
            let a = Table::build(Fill::Maglev, &names, bits);
            let build = t0.elapsed().as_secs_f64() * 1e3;
            let b = Table::build(Fill::Maglev, &kept, bits);
            let own = a.owners.iter().filter(|&&x| x as usize == n / 2).count();
            let changed = a
                .owners
                .iter()
                .zip(&b.owners)
                .filter(|(&x, &y)| x as usize != n / 2 && x as usize != unshift(y as usize, n))
                .count();
            let (moved, ideal) = moved(&a, &b, keys, n);
            println!(
                "| {n} | 2^{bits} | {own} | {changed} | {moved} | {ideal} | {:.2} | {build:.2} |",
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
        let (names, kept) = memberships(n);
        for fill in [
            Fill::Maglev,
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
            let (moved, ideal) = moved(&a, &b, &keys, n);
            let peak = *load.iter().max().unwrap() as f64 / (keys.len() as f64 / n as f64);
            let label = match fill {
                Fill::Maglev => "maglev (balanced today)".to_owned(),
                Fill::Rendezvous => "rendezvous per slot".to_owned(),
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
}
