//! Hash-quality report: over the same 1 000 000 keys, for each consistent-hashing scheme —
//! load spread against the statistical floor, keys moved when the middle upstream fails (and
//! how many were not on it), keys misplaced after "fail A, fail B, revive A", membership churn,
//! weighted share error, and build memory. Prints Markdown; writes `quality.svg`.
//!
//! `cargo run --release --manifest-path bench-peers/Cargo.toml --bin quality [keys]`

use std::alloc::System;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bench_peers::{addrs, definition, keys};
use maglev::ConsistentHasher;
use pingora_load_balancing::selection::Consistent;
use pingora_load_balancing::LoadBalancer;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use upstreams::{Definition, HashMode, Limits, ManualClock, Rotation, UpstreamList};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A consistent-hash scheme over members `0..n` with a set of members down.
trait Scheme {
    fn pick(&self, key: &[u8; 32]) -> usize;
    /// Takes member `i` out (how the scheme does it: a health flag, or removal).
    fn down(&mut self, i: usize);
    fn up(&mut self, i: usize);
}

struct Ours {
    list: UpstreamList,
    index: std::collections::HashMap<String, usize>,
}

impl Ours {
    fn new(n: usize, mode: HashMode, weights: Option<&dyn Fn(usize) -> u16>) -> Self {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1)));
        let def = Definition::parse(&definition(n, weights), 11333).unwrap();
        let limits = Limits::default()
            .with_hash_mode(mode)
            .with_revive_jitter(0.0);
        let list = UpstreamList::with_clock(&def, limits, clock).unwrap();
        let index = list
            .upstreams()
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name().to_owned(), i))
            .collect();
        Self { list, index }
    }
}

impl Scheme for Ours {
    fn pick(&self, key: &[u8; 32]) -> usize {
        let p = self.list.get(Rotation::Hashed, key).unwrap();
        self.index[p.name()]
    }
    fn down(&mut self, i: usize) {
        // Long enough that nothing revives unless asked (the clock never moves anyway).
        self.list.upstreams()[i].mark_offline(Duration::from_secs(1_000_000));
    }
    fn up(&mut self, i: usize) {
        assert!(self.list.upstreams()[i].mark_online());
    }
}

/// pingora's `LoadBalancer<Consistent>` (ketama, 160 points per backend); down members are
/// walked past with `select_with`, as its health checks do.
struct Pingora {
    lb: LoadBalancer<Consistent>,
    names: Vec<String>,
    down: HashSet<usize>,
}

impl Scheme for Pingora {
    fn pick(&self, key: &[u8; 32]) -> usize {
        let down: HashSet<String> = self.down.iter().map(|&i| self.names[i].clone()).collect();
        let b = self
            .lb
            .select_with(key, 256, |b, _| !down.contains(&b.addr.to_string()))
            .unwrap();
        self.names
            .iter()
            .position(|n| *n == b.addr.to_string())
            .unwrap()
    }
    fn down(&mut self, i: usize) {
        self.down.insert(i);
    }
    fn up(&mut self, i: usize) {
        self.down.remove(&i);
    }
}

/// Schemes rebuilt over the members that are up (how they handle a failure).
struct Rebuilt {
    kind: &'static str,
    n: usize,
    alive: Vec<usize>,
    anchor: Option<
        anchorhash::AnchorHash<
            [u8; 32],
            usize,
            std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
        >,
    >,
    maglev: Option<maglev::Maglev<usize>>,
    ring: Option<hashring::HashRing<usize>>,
}

impl Rebuilt {
    fn new(kind: &'static str, n: usize) -> Self {
        let mut s = Self {
            kind,
            n,
            alive: (0..n).collect(),
            anchor: None,
            maglev: None,
            ring: None,
        };
        s.rebuild(true);
        s
    }
    fn rebuild(&mut self, first: bool) {
        match self.kind {
            "anchorhash" if first => {
                self.anchor = Some(
                    anchorhash::Builder::with_hasher(Default::default())
                        .with_resources(0..self.n)
                        .build(self.n as u16 * 2),
                )
            }
            // A fixed table size (a prime), so a removal does not resize it.
            "maglev" => {
                self.maglev = Some(maglev::Maglev::with_capacity(self.alive.clone(), 65_537))
            }
            "hashring" if first => {
                let mut r = hashring::HashRing::new();
                for i in 0..self.n {
                    r.add(i);
                }
                self.ring = Some(r);
            }
            _ => {}
        }
    }
}

fn xxh(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl Scheme for Rebuilt {
    fn pick(&self, key: &[u8; 32]) -> usize {
        match self.kind {
            "anchorhash" => *self.anchor.as_ref().unwrap().get_resource(*key).unwrap(),
            "maglev" => *self.maglev.as_ref().unwrap().get(key).unwrap(),
            "hashring" => *self.ring.as_ref().unwrap().get(key).unwrap(),
            "jumphash" => {
                let slot =
                    jumphash::JumpHasher::new_with_keys(1, 2).slot(key, self.alive.len() as u32);
                self.alive[slot as usize]
            }
            _ => self.alive[(xxh(key) % self.alive.len() as u64) as usize], // hash mod N
        }
    }
    fn down(&mut self, i: usize) {
        self.alive.retain(|&j| j != i);
        match self.kind {
            "anchorhash" => self.anchor.as_mut().unwrap().remove_resource(&i).unwrap(),
            "hashring" => {
                self.ring.as_mut().unwrap().remove(&i);
            }
            _ => self.rebuild(false),
        }
    }
    fn up(&mut self, i: usize) {
        self.alive.push(i);
        self.alive.sort_unstable();
        match self.kind {
            "anchorhash" => self.anchor.as_mut().unwrap().add_resource(i).unwrap(),
            "hashring" => self.ring.as_mut().unwrap().add(i),
            _ => self.rebuild(false),
        }
    }
}

const SCHEMES: [&str; 9] = [
    "upstreams balanced",
    "upstreams rspamd-ring",
    "upstreams rspamd-jump",
    "pingora consistent (ketama)",
    "anchorhash 0.2",
    "maglev 0.2",
    "jumphash 0.1",
    "hashring 0.3",
    "hash mod N (floor)",
];

fn make(kind: &str, n: usize) -> Box<dyn Scheme> {
    match kind {
        "upstreams balanced" => Box::new(Ours::new(n, HashMode::Balanced, None)),
        "upstreams rspamd-ring" => Box::new(Ours::new(n, HashMode::RspamdRing, None)),
        "upstreams rspamd-jump" => Box::new(Ours::new(n, HashMode::RspamdJump, None)),
        "pingora consistent (ketama)" => Box::new(Pingora {
            lb: LoadBalancer::try_from_iter(addrs(n)).unwrap(),
            names: addrs(n),
            down: HashSet::new(),
        }),
        "anchorhash 0.2" => Box::new(Rebuilt::new("anchorhash", n)),
        "maglev 0.2" => Box::new(Rebuilt::new("maglev", n)),
        "jumphash 0.1" => Box::new(Rebuilt::new("jumphash", n)),
        "hashring 0.3" => Box::new(Rebuilt::new("hashring", n)),
        _ => Box::new(Rebuilt::new("mod", n)),
    }
}

fn map(s: &dyn Scheme, keys: &[[u8; 32]]) -> Vec<u32> {
    keys.iter().map(|k| s.pick(k) as u32).collect()
}

struct Row {
    scheme: &'static str,
    n: usize,
    peak: f64,
    moved: usize,
    moved_healthy: usize,
    misplaced: usize,
    bytes: usize,
}

fn measure(kind: &'static str, n: usize, keys: &[[u8; 32]]) -> Row {
    let region = Region::new(GLOBAL);
    let mut s = make(kind, n);
    let bytes = region
        .change()
        .bytes_allocated
        .saturating_sub(region.change().bytes_deallocated);
    let before = map(s.as_ref(), keys);
    let mut counts = vec![0usize; n];
    for &o in &before {
        counts[o as usize] += 1;
    }
    let peak = *counts.iter().max().unwrap() as f64 / (keys.len() as f64 / n as f64);
    let (a, b) = (n / 2, n / 4);
    s.down(a);
    let during = map(s.as_ref(), keys);
    let moved = before.iter().zip(&during).filter(|(x, y)| x != y).count();
    let moved_healthy = before
        .iter()
        .zip(&during)
        .filter(|(x, y)| x != y && **x as usize != a)
        .count();
    s.down(b);
    s.up(a);
    let after = map(s.as_ref(), keys);
    let mut fresh = make(kind, n);
    fresh.down(b);
    let expected = map(fresh.as_ref(), keys);
    let misplaced = after.iter().zip(&expected).filter(|(x, y)| x != y).count();
    Row {
        scheme: kind,
        n,
        peak,
        moved,
        moved_healthy,
        misplaced,
        bytes,
    }
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let keys = keys(1_000_000_000, count);
    let mut rows = Vec::new();
    for n in [10, 100] {
        for kind in SCHEMES {
            rows.push(measure(kind, n, &keys));
        }
    }
    println!("{count} keys; middle upstream (N/2) fails, then N/4 fails, then N/2 revives.\n");
    println!("| scheme | N | peak/avg | − floor | keys moved on 1 down | of them not on it | misplaced after A↓ B↓ A↑ | build memory |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let floor = rows
            .iter()
            .find(|x| x.n == r.n && x.scheme.starts_with("hash mod"))
            .unwrap()
            .peak;
        println!(
            "| {} | {} | {:.3} | {:+.3} | {} ({:.2} %) | {} | {} | {} KiB |",
            r.scheme,
            r.n,
            r.peak,
            r.peak - floor,
            r.moved,
            100.0 * r.moved as f64 / count as f64,
            r.moved_healthy,
            r.misplaced,
            r.bytes / 1024
        );
    }
    averaged_peak(count);
    flips(&keys[..100_000]);
    weighted(count);
    churn(&keys);
    plot(&rows);
}

/// Weighted shares (weights 1..10 over 10 upstreams): the largest share error, over 30 keys
/// per 1 000 000 asked (30 M by default), streamed.
fn weighted(count: usize) {
    let total = count * 30;
    println!("\nWeights 1..10 over 10 upstreams, {total} keys: largest |share − weight/total| (percentage points)\n");
    println!("| scheme | max share error |");
    println!("|---|---|");
    let w = |i: usize| 1 + i as u16;
    for (name, mode) in [
        ("upstreams balanced", HashMode::Balanced),
        ("upstreams rspamd-ring", HashMode::RspamdRing),
        // rspamd 3.x ignores weights: its error here is what a weighted 3.x fleet gets.
        ("upstreams rspamd-jump", HashMode::RspamdJump),
    ] {
        let s = Ours::new(10, mode, Some(&w));
        let mut counts = [0usize; 10];
        for chunk in 0..30 {
            for k in keys(7_000_000_000 + (chunk * count) as u64, count) {
                counts[s.pick(&k)] += 1;
            }
        }
        let err = (0..10)
            .map(|i| (counts[i] as f64 / total as f64 - (i + 1) as f64 / 55.0).abs() * 100.0)
            .fold(0.0, f64::max);
        println!("| {name} | {err:.3} |");
    }
}

/// Peak/avg against the floor averaged over five key sets (one set's sampling noise at N = 100
/// is about ±0.005).
fn averaged_peak(count: usize) {
    println!("\nPeak/avg averaged over 5 key sets of {count}:\n");
    println!("| N | upstreams balanced | hash mod N (floor) | difference |");
    println!("|---|---|---|---|");
    for n in [10, 100, 1000] {
        let (mut ours, mut floor) = (0.0, 0.0);
        for set in 0..5u64 {
            let keys = keys(20_000_000_000 + set * 1_000_000_000, count);
            for (acc, kind) in [
                (&mut ours, "upstreams balanced"),
                (&mut floor, "hash mod N (floor)"),
            ] {
                let s = make(kind, n);
                let mut counts = vec![0usize; n];
                for k in &keys {
                    counts[s.pick(k)] += 1;
                }
                *acc += *counts.iter().max().unwrap() as f64 / (count as f64 / n as f64) / 5.0;
            }
        }
        println!("| {n} | {ours:.4} | {floor:.4} | {:+.4} |", ours - floor);
    }
}

/// 2 000 random health flips on one list, then its mapping against a fresh list with the same
/// members down.
fn flips(keys: &[[u8; 32]]) {
    let n = 100;
    let mut list = Ours::new(n, HashMode::Balanced, None);
    let mut down = vec![false; n];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % n as u64) as usize;
        if down[i] {
            list.up(i);
            down[i] = false;
        } else if down.iter().filter(|d| !**d).count() > 1 {
            list.down(i);
            down[i] = true;
        }
    }
    let mut fresh = Ours::new(n, HashMode::Balanced, None);
    for (i, &d) in down.iter().enumerate() {
        if d {
            fresh.down(i);
        }
    }
    let a = map(&list, keys);
    let b = map(&fresh, keys);
    let misplaced = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    println!(
        "\n2 000 random health flips over {n} upstreams ({} down at the end), {} keys: {misplaced} misplaced against a fresh list in the same state",
        down.iter().filter(|d| **d).count(),
        keys.len()
    );
}

/// Membership change: the middle upstream removed from the configuration.
fn churn(keys: &[[u8; 32]]) {
    println!("\nMembership change (one of N removed from the configuration, as an SRV target disappearing):\n");
    println!("| scheme | weights | N | keys moved | ideal (its share) | ratio |");
    println!("|---|---|---|---|---|---|");
    let w = |i: usize| 1 + (i % 10) as u16;
    for (weights, label) in [
        (None, "equal"),
        (Some(&w as &dyn Fn(usize) -> u16), "1..10"),
    ] {
        for n in [10, 100, 1000] {
            churn_one(keys, n, weights, label);
        }
    }
}

/// One membership change: the middle upstream of `n` removed.
fn churn_one(keys: &[[u8; 32]], n: usize, weights: Option<&dyn Fn(usize) -> u16>, label: &str) {
    let def = definition(n, weights);
    let list = UpstreamList::parse(&def, 11333, Limits::default()).unwrap();
    let names: Vec<String> = addrs(n);
    let entries: Vec<&str> = def.split(',').collect();
    let before: Vec<String> = keys
        .iter()
        .map(|k| list.get(Rotation::Hashed, k).unwrap().name().to_owned())
        .collect();
    let removed = &names[n / 2];
    let kept: Vec<&str> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != n / 2)
        .map(|(_, e)| *e)
        .collect();
    list.reconfigure(&Definition::parse(&kept.join(","), 11333).unwrap());
    let after: Vec<String> = keys
        .iter()
        .map(|k| list.get(Rotation::Hashed, k).unwrap().name().to_owned())
        .collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let ideal = before.iter().filter(|a| *a == removed).count();
    println!(
        "| upstreams balanced | {label} | {n} | {moved} | {ideal} | {:.2} |",
        moved as f64 / ideal.max(1) as f64
    );
}

fn plot(rows: &[Row]) {
    use plotters::prelude::*;
    // Next to this crate's manifest (bench-peers/), wherever the tool runs from.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/quality.svg");
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    let _ = root.fill(&WHITE);
    // hashring (one point per node, peak ≈ 6) would flatten the others: it is in the table.
    let shown: Vec<&str> = SCHEMES
        .iter()
        .copied()
        .filter(|s| !s.starts_with("hashring"))
        .collect();
    let rows: Vec<&Row> = rows.iter().filter(|r| shown.contains(&r.scheme)).collect();
    let max = rows.iter().map(|r| r.peak).fold(1.0, f64::max) + 0.02;
    let Ok(mut chart) = ChartBuilder::on(&root)
        .caption("peak/avg load over 1M keys (lower is better; hash mod N is the floor; hashring ≈ 6, off the chart)", ("sans-serif", 16))
        .margin(20)
        .x_label_area_size(120)
        .y_label_area_size(50)
        .build_cartesian_2d(-1..shown.len() as i32, 0.99..max)
    else {
        return;
    };
    let _ = chart
        .configure_mesh()
        .x_labels(shown.len() + 2)
        .x_label_formatter(&|i| {
            usize::try_from(*i)
                .ok()
                .and_then(|i| shown.get(i))
                .map(|s| s.replace(" (floor)", "").replace(" (ketama)", ""))
                .unwrap_or_default()
        })
        .draw();
    for (n, color) in [(10, BLUE), (100, RED)] {
        let points: Vec<(i32, f64)> = rows
            .iter()
            .filter(|r| r.n == n)
            .enumerate()
            .map(|(i, r)| (i as i32, r.peak))
            .collect();
        let _ = chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map(|s| {
                s.label(format!("N = {n}"))
                    .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()))
            });
    }
    let _ = chart.configure_series_labels().border_style(BLACK).draw();
    let _ = root.present();
}
