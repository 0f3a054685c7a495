//! Picks per rotation at 4, 16 and 256 upstreams, one thread and two threads.
//!
//! `cargo bench -p upstreams --bench pick`. Each pick is `get()` + dropping the handle
//! (which releases it), i.e. the full cost a caller pays. A counting allocator checks that
//! picking allocates nothing; the count is printed before the benchmarks run.

#![allow(missing_docs, clippy::unwrap_used)]

use std::alloc::System;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use upstreams::{HashMode, Limits, Rotation, UpstreamList};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SIZES: [usize; 3] = [4, 16, 256];

fn definition(n: usize, weighted: bool) -> String {
    (0..n)
        .map(|i| {
            let w = if weighted { 1 + i % 5 } else { 0 };
            format!("10.{}.{}.{}:11333:{w}", i / 65536, (i / 256) % 256, i % 256)
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn keys() -> Vec<[u8; 32]> {
    (0..4096u64)
        .map(|i| {
            let mut k = [b'k'; 32];
            k[..16].copy_from_slice(
                format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).as_bytes(),
            );
            k
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Case {
    label: &'static str,
    rotation: Rotation,
    mode: HashMode,
    weighted: bool,
}

const CASES: [Case; 9] = [
    Case {
        label: "round-robin",
        rotation: Rotation::RoundRobin,
        mode: HashMode::Balanced,
        weighted: false,
    },
    Case {
        label: "round-robin-weighted",
        rotation: Rotation::RoundRobin,
        mode: HashMode::Balanced,
        weighted: true,
    },
    Case {
        label: "master-slave",
        rotation: Rotation::MasterSlave,
        mode: HashMode::Balanced,
        weighted: true,
    },
    Case {
        label: "random",
        rotation: Rotation::Random,
        mode: HashMode::Balanced,
        weighted: false,
    },
    Case {
        label: "p2c",
        rotation: Rotation::P2c,
        mode: HashMode::Balanced,
        weighted: false,
    },
    Case {
        label: "hash-balanced",
        rotation: Rotation::Hashed,
        mode: HashMode::Balanced,
        weighted: false,
    },
    Case {
        label: "hash-bounded",
        rotation: Rotation::Hashed,
        mode: HashMode::Bounded,
        weighted: false,
    },
    Case {
        label: "hash-rspamd-ring",
        rotation: Rotation::Hashed,
        mode: HashMode::RspamdRing,
        weighted: false,
    },
    Case {
        label: "hash-rspamd-jump",
        rotation: Rotation::Hashed,
        mode: HashMode::RspamdJump,
        weighted: false,
    },
];

fn list(case: Case, n: usize) -> Arc<UpstreamList> {
    let limits = Limits::default().with_hash_mode(case.mode);
    Arc::new(UpstreamList::parse(&definition(n, case.weighted), 11333, limits).unwrap())
}

/// `get()` and dropping the handle: the full cost with in-flight accounting.
fn pick_loop(
    list: &UpstreamList,
    rotation: Rotation,
    keys: &[[u8; 32]],
    iters: u64,
    offset: usize,
) {
    for i in 0..iters as usize {
        let key = &keys[(i + offset) & (keys.len() - 1)];
        black_box(list.get(rotation, black_box(key)));
    }
}

/// `Snapshot::select()`: the lookup alone, no accounting.
fn select_loop(
    list: &UpstreamList,
    rotation: Rotation,
    keys: &[[u8; 32]],
    iters: u64,
    offset: usize,
) {
    let snap = list.snapshot();
    for i in 0..iters as usize {
        let key = &keys[(i + offset) & (keys.len() - 1)];
        black_box(snap.select(rotation, black_box(key)));
    }
}

type Loop = fn(&UpstreamList, Rotation, &[[u8; 32]], u64, usize);

fn allocations_per_pick() {
    let keys = keys();
    for case in CASES {
        let list = list(case, 16);
        pick_loop(&list, case.rotation, &keys, 1000, 0); // warm (lazy ring build)
        let region = Region::new(GLOBAL);
        pick_loop(&list, case.rotation, &keys, 100_000, 0);
        let snap = list.snapshot();
        for key in keys.iter().cycle().take(100_000) {
            black_box(snap.select(case.rotation, key));
        }
        let allocs = region.change().allocations;
        println!(
            "allocations in 100000 get() + 100000 select(), {:<22} {allocs}",
            case.label
        );
        assert_eq!(allocs, 0, "{} allocates on the pick path", case.label);
    }
}

fn bench(c: &mut Criterion) {
    allocations_per_pick();
    let keys = Arc::new(keys());
    for case in CASES {
        let mut group = c.benchmark_group(format!("pick/{}", case.label));
        group.throughput(Throughput::Elements(1));
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(1));
        group.sample_size(20);
        for n in SIZES {
            let list = list(case, n);
            let variants: [(&str, Loop); 2] = [("get", pick_loop), ("select", select_loop)];
            for (api, run) in variants {
                group.bench_with_input(
                    BenchmarkId::new(format!("{api}/1-thread"), n),
                    &n,
                    |b, _| {
                        b.iter_custom(|iters| {
                            let start = Instant::now();
                            run(&list, case.rotation, &keys, iters, 0);
                            start.elapsed()
                        });
                    },
                );
                // Two threads share the list; the figure is wall time per pick of both
                // together, so perfect scaling halves it.
                group.bench_with_input(
                    BenchmarkId::new(format!("{api}/2-threads"), n),
                    &n,
                    |b, _| {
                        b.iter_custom(|iters| {
                            let barrier = Arc::new(Barrier::new(3));
                            let workers: Vec<_> = (0..2)
                                .map(|t| {
                                    let (list, keys, barrier) =
                                        (list.clone(), keys.clone(), barrier.clone());
                                    thread::spawn(move || {
                                        barrier.wait();
                                        run(&list, case.rotation, &keys, iters / 2, t * 2048);
                                    })
                                })
                                .collect();
                            barrier.wait();
                            let start = Instant::now();
                            for w in workers {
                                w.join().unwrap();
                            }
                            start.elapsed()
                        });
                    },
                );
            }
        }
        group.finish();
    }
}

/// The balanced hash under health changes (issue #6's targets): `Snapshot::select` with 0,
/// 10, 50 and 90 % of the upstreams offline, and as a dependent chain (each key chosen from
/// the previous answer, so lookups cannot overlap).
fn balanced_health(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("balanced");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(1));
    group.sample_size(20);
    for n in [10, 100, 1000] {
        for down in [0, 10, 50, 90] {
            let list =
                UpstreamList::parse(&definition(n, false), 11333, Limits::default()).unwrap();
            for (k, up) in list.upstreams().iter().enumerate() {
                if k * 100 < down * n {
                    up.mark_offline(Duration::from_secs(3600));
                }
            }
            let snap = list.snapshot();
            group.bench_with_input(
                BenchmarkId::new(format!("{down}pct-down"), n),
                &n,
                |b, _| {
                    // The same plain loop as the `pick/…` group (`iter_custom`), so the two
                    // groups' figures compare.
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        for i in 0..iters as usize {
                            black_box(snap.select(Rotation::Hashed, black_box(&keys[i & 4095])));
                        }
                        start.elapsed()
                    });
                },
            );
        }
        // `bounded` beside it, nothing over the bound (the same table, one more load and
        // compare), and with one pick held on every upstream (the arithmetic runs).
        for held in [false, true] {
            let list = UpstreamList::parse(
                &definition(n, false),
                11333,
                Limits::default().with_hash_mode(HashMode::Bounded),
            )
            .unwrap();
            let hold: Vec<_> = if held {
                list.upstreams()
                    .iter()
                    .map(|u| list.get(Rotation::Hashed, u.name().as_bytes()))
                    .collect()
            } else {
                Vec::new()
            };
            let snap = list.snapshot();
            let label = if held {
                "bounded-loaded"
            } else {
                "bounded-idle"
            };
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for i in 0..iters as usize {
                        black_box(snap.select(Rotation::Hashed, black_box(&keys[i & 4095])));
                    }
                    start.elapsed()
                });
            });
            drop(hold);
        }
        let list = UpstreamList::parse(&definition(n, false), 11333, Limits::default()).unwrap();
        let snap = list.snapshot();
        group.bench_with_input(BenchmarkId::new("dependent", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut prev = 0usize;
                for i in 0..iters as usize {
                    let up = snap.select(Rotation::Hashed, &keys[(i ^ prev) & 4095]);
                    // The answer (the address of the member's slot in the snapshot) feeds the
                    // next key; nothing is read through it.
                    prev = up.map_or(0, |u| std::ptr::from_ref(u) as usize >> 3);
                }
                black_box(prev);
                start.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench, balanced_health);
criterion_main!(benches);
