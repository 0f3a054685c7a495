//! Builds lists from hostile definitions and prints how long each took and what it cost:
//! `cargo run --release -p upstreams --example hostile`.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use upstreams::{Definition, HashMode, Limits, Rotation, UpstreamList};

fn entries(n: usize, weight: impl Fn(usize) -> u32) -> String {
    (0..n)
        .map(|i| {
            format!(
                "10.{}.{}.{}:80:{}",
                i / 62_500,
                (i / 250) % 250,
                i % 250 + 1,
                weight(i)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn time<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    println!("{what:<60} {:>9.1} ms", start.elapsed().as_secs_f64() * 1e3);
    out
}

fn main() {
    for (label, def) in [
        (
            "100 000 entries, weights 1..65535",
            entries(100_000, |i| (i % 65_535) as u32 + 1),
        ),
        (
            "100 000 entries, weight 65535 each",
            entries(100_000, |_| 65_535),
        ),
        (
            "100 000 entries, no weight",
            entries(100_000, |_| 0).replace(":0,", ","),
        ),
    ] {
        let parsed = time(&format!("parse {label}"), || {
            Definition::parse(&def, 0).unwrap()
        });
        let list = time(&format!("build {label}"), || {
            UpstreamList::new(&parsed, Limits::default()).unwrap()
        });
        time("  1 000 hashed picks (balanced)", || {
            for k in 0..1000u32 {
                let _ = list.get(Rotation::Hashed, &k.to_le_bytes());
            }
        });
        time("  1 000 round-robin picks", || {
            for _ in 0..1000 {
                let _ = list.get(Rotation::RoundRobin, b"");
            }
        });
    }
    let one = Definition::parse("10.0.0.1:80:65535,10.0.0.2:80:1", 0).unwrap();
    let ring = time(
        "rspamd-ring, weights 65535 + 1 (6.5 M points): build",
        || UpstreamList::new(&one, Limits::default().with_hash_mode(HashMode::RspamdRing)).unwrap(),
    );
    time("  1 000 hashed picks", || {
        for k in 0..1000u32 {
            let _ = ring.get(Rotation::Hashed, &k.to_le_bytes());
        }
    });
    let key = vec![b'x'; 1 << 20];
    let list = UpstreamList::parse("10.0.0.1,10.0.0.2", 0, Limits::default()).unwrap();
    time("1 000 picks with a 1 MiB key (balanced)", || {
        for _ in 0..1000 {
            let _ = list.get(Rotation::Hashed, &key);
        }
    });
    let long = "a".repeat(1 << 20);
    time("parse a 1 MiB host name (error)", || {
        Definition::parse(&long, 0).unwrap_err()
    });
    let nul = "10.0.0.1,\0bad";
    println!("NUL byte: {}", Definition::parse(nul, 0).unwrap_err());
}
