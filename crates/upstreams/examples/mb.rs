#![allow(missing_docs, clippy::unwrap_used)]
use std::hint::black_box;
use std::time::Instant;
use upstreams::{HashMode, Limits, Rotation, UpstreamList};

fn main() {
    let keys: Vec<[u8; 32]> = (0..4096u64)
        .map(|i| {
            let mut k = [b'k'; 32];
            k[..16].copy_from_slice(format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).as_bytes());
            k
        })
        .collect();
    for n in [10usize, 100, 1000] {
        let def = (0..n).map(|i| format!("10.{}.{}.{}:11333", i / 65536, (i / 256) % 256, i % 256)).collect::<Vec<_>>().join(",");
        for (label, rot, mode) in [("balanced", Rotation::Hashed, HashMode::Balanced), ("ring", Rotation::Hashed, HashMode::RspamdRing), ("rr", Rotation::RoundRobin, HashMode::Balanced), ("random", Rotation::Random, HashMode::Balanced), ("p2c", Rotation::P2c, HashMode::Balanced)] {
            let list = UpstreamList::parse(&def, 11333, Limits::default().with_hash_mode(mode)).unwrap();
            let snap = list.snapshot();
            let iters = 20_000_000usize;
            for _ in 0..2 { for i in 0..iters/4 { black_box(snap.select(rot, &keys[i & 4095])); } }
            let t = Instant::now();
            for i in 0..iters { black_box(snap.select(rot, black_box(&keys[i & 4095]))); }
            let ns = t.elapsed().as_nanos() as f64 / iters as f64;
            println!("n={n} {label}: {ns:.2} ns");
        }
    }
    for n in [10usize, 100, 1000] {
        let def = (0..n).map(|i| format!("10.{}.{}.{}:11333", i / 65536, (i / 256) % 256, i % 256)).collect::<Vec<_>>().join(",");
        let list = UpstreamList::parse(&def, 11333, Limits::default()).unwrap();
        let snap = list.snapshot();
        let iters = 10_000_000usize;
        // dependent chain
        let mut j = 0usize;
        let t = Instant::now();
        for i in 0..iters { let u = snap.select(Rotation::Hashed, &keys[(i ^ j) & 4095]).unwrap(); j = u.index(); }
        println!("n={n} balanced dependent: {:.2} ns", t.elapsed().as_nanos() as f64 / iters as f64);
        for (pct, label) in [(10, "10%"), (50, "50%"), (90, "90%")] {
            let list = UpstreamList::parse(&def, 11333, Limits::default()).unwrap();
            for (k, u) in list.upstreams().iter().enumerate() { if k * 100 / n < pct { u.mark_offline(std::time::Duration::from_secs(3600)); } }
            let snap = list.snapshot();
            let t = Instant::now();
            for i in 0..iters { black_box(snap.select(Rotation::Hashed, black_box(&keys[i & 4095]))); }
            println!("n={n} balanced {label} down: {:.2} ns", t.elapsed().as_nanos() as f64 / iters as f64);
        }
    }
    let t = Instant::now();
    let mut acc = 0u64;
    for i in 0..20_000_000usize { acc ^= xxhash_rust::xxh3::xxh3_64_with_seed(black_box(&keys[i & 4095]), 7); }
    black_box(acc);
    println!("xxh3 only: {:.2} ns", t.elapsed().as_nanos() as f64 / 2e7);
}
