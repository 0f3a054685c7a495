//! Pick cost of upstreams against pingora-load-balancing 0.9, pingora-ketama, anchorhash,
//! maglev, jumphash and hashring on identical inputs, in one run.
//!
//! `cargo bench --manifest-path bench-peers/Cargo.toml --bench peers` (pingora needs cmake).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bench_peers::{addrs, definition, keys};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use maglev::ConsistentHasher;
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::LoadBalancer;
use upstreams::{HashMode, Limits, Rotation, Snapshot, UpstreamList};

const SIZES: [usize; 4] = [4, 16, 100, 1000];

fn ours(n: usize, mode: HashMode, weighted: bool) -> Snapshot {
    let w = |i: usize| 1 + (i % 10) as u16;
    let def = definition(n, if weighted { Some(&w) } else { None });
    let list = UpstreamList::parse(&def, 11333, Limits::default().with_hash_mode(mode)).unwrap();
    list.snapshot()
}

/// Benchmarks `f(i)` (one pick for running index `i`) on `threads` threads. `f` is generic, so
/// every scheme is called directly and inlined into its loop: no indirect call per pick.
fn run<F: Fn(usize) + Send + Sync + 'static>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    threads: usize,
    f: F,
) {
    let f = Arc::new(f);
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter_custom(|iters| timed(iters, threads, &f));
    });
}

/// Runs `f(i)` `iters` times on `threads` threads; wall time for all of them.
fn timed<F: Fn(usize) + Send + Sync + 'static>(iters: u64, threads: usize, f: &Arc<F>) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        for i in 0..iters as usize {
            f(i);
        }
        return start.elapsed();
    }
    let barrier = Arc::new(Barrier::new(threads + 1));
    let per = iters as usize / threads;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (f, barrier) = (Arc::clone(f), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                for i in 0..per {
                    f(i + t * 7919);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for w in workers {
        w.join().unwrap();
    }
    start.elapsed()
}

fn hash_group(c: &mut Criterion) {
    let keys = Arc::new(keys(0, 4096));
    for threads in [1, 2] {
        let mut group = c.benchmark_group(format!("hash/{threads}-thread"));
        group.throughput(Throughput::Elements(1));
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(1));
        group.sample_size(15);
        for n in SIZES {
            let k = keys.clone();
            let balanced = ours(n, HashMode::Balanced, false);
            run(&mut group, "upstreams-balanced", n, threads, move |i| {
                black_box(balanced.select(Rotation::Hashed, &k[i & 4095]));
            });
            let k = keys.clone();
            let ring = ours(n, HashMode::RspamdRing, false);
            run(&mut group, "upstreams-rspamd-ring", n, threads, move |i| {
                black_box(ring.select(Rotation::Hashed, &k[i & 4095]));
            });
            let k = keys.clone();
            let lb: LoadBalancer<Consistent> = LoadBalancer::try_from_iter(addrs(n)).unwrap();
            run(&mut group, "pingora-consistent", n, threads, move |i| {
                black_box(lb.select(&k[i & 4095], 256));
            });
            let k = keys.clone();
            let buckets: Vec<pingora_ketama::Bucket> = addrs(n)
                .iter()
                .map(|a| pingora_ketama::Bucket::new(a.parse().unwrap(), 1))
                .collect();
            let continuum = pingora_ketama::Continuum::new(&buckets);
            run(&mut group, "pingora-ketama", n, threads, move |i| {
                black_box(continuum.node_idx(&k[i & 4095]));
            });
            let k = keys.clone();
            let anchor: anchorhash::AnchorHash<[u8; 32], String, _> =
                anchorhash::Builder::default()
                    .with_resources(addrs(n))
                    .build(n as u16 * 2);
            run(&mut group, "anchorhash", n, threads, move |i| {
                black_box(anchor.get_resource(k[i & 4095]));
            });
            let k = keys.clone();
            let mag = maglev::Maglev::new(addrs(n));
            run(&mut group, "maglev", n, threads, move |i| {
                black_box(mag.get(&k[i & 4095]));
            });
            let k = keys.clone();
            let jump = jumphash::JumpHasher::new();
            run(&mut group, "jumphash", n, threads, move |i| {
                black_box(jump.slot(&k[i & 4095], n as u32));
            });
            let k = keys.clone();
            let mut ring2 = hashring::HashRing::new();
            for a in addrs(n) {
                ring2.add(a);
            }
            run(&mut group, "hashring", n, threads, move |i| {
                black_box(ring2.get(&k[i & 4095]));
            });
        }
        group.finish();
    }
}

fn unkeyed_group(c: &mut Criterion) {
    for threads in [1, 2] {
        let mut group = c.benchmark_group(format!("unkeyed/{threads}-thread"));
        group.throughput(Throughput::Elements(1));
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(1));
        group.sample_size(15);
        for n in SIZES {
            for (name, weighted, rotation) in [
                ("upstreams-round-robin", false, Rotation::RoundRobin),
                ("upstreams-round-robin-weighted", true, Rotation::RoundRobin),
                ("upstreams-random", false, Rotation::Random),
                ("upstreams-p2c", false, Rotation::P2c),
            ] {
                let s = ours(n, HashMode::Balanced, weighted);
                run(&mut group, name, n, threads, move |_| {
                    black_box(s.select(rotation, b""));
                });
            }
            let list = Arc::new(
                UpstreamList::parse(&definition(n, None), 11333, Limits::default()).unwrap(),
            );
            run(
                &mut group,
                "upstreams-round-robin-get",
                n,
                threads,
                move |_| {
                    black_box(list.get(Rotation::RoundRobin, b""));
                },
            );
            let lb: LoadBalancer<RoundRobin> = LoadBalancer::try_from_iter(addrs(n)).unwrap();
            run(&mut group, "pingora-round-robin", n, threads, move |_| {
                black_box(lb.select(b"", 256));
            });
            let lb: LoadBalancer<Random> = LoadBalancer::try_from_iter(addrs(n)).unwrap();
            run(&mut group, "pingora-random", n, threads, move |_| {
                black_box(lb.select(b"", 256));
            });
        }
        group.finish();
    }
}

fn rebuild_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebuild");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    for n in [100, 1000] {
        let def = upstreams::Definition::parse(&definition(n, None), 11333).unwrap();
        let smaller = upstreams::Definition::parse(&definition(n - 1, None), 11333).unwrap();
        let list = UpstreamList::new(&def, Limits::default()).unwrap();
        let mut flip = false;
        group.bench_with_input(BenchmarkId::new("upstreams-reconfigure", n), &n, |b, _| {
            b.iter(|| {
                flip = !flip;
                list.reconfigure(if flip { &smaller } else { &def })
            });
        });
        // Weights 1..10: the round-robin cycle is 5.5 × N long.
        let w = |i: usize| 1 + (i % 10) as u16;
        let def = upstreams::Definition::parse(&definition(n, Some(&w)), 11333).unwrap();
        let smaller = upstreams::Definition::parse(&definition(n - 1, Some(&w)), 11333).unwrap();
        let list = UpstreamList::new(&def, Limits::default()).unwrap();
        group.bench_with_input(
            BenchmarkId::new("upstreams-reconfigure-weighted", n),
            &n,
            |b, _| {
                b.iter(|| {
                    flip = !flip;
                    list.reconfigure(if flip { &smaller } else { &def })
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("pingora-consistent-build", n),
            &n,
            |b, _| {
                b.iter(|| LoadBalancer::<Consistent>::try_from_iter(addrs(n)).unwrap());
            },
        );
        group.bench_with_input(BenchmarkId::new("maglev-build", n), &n, |b, _| {
            b.iter(|| maglev::Maglev::new(addrs(n)));
        });
    }
    group.finish();
}

/// p2c against tower's `Balance` over `PendingRequests` services that answer at once: one pick
/// is poll_ready + call + the response (tower needs `&mut`, so one thread only).
fn p2c_group(c: &mut Criterion) {
    use std::convert::Infallible;
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::{CompleteOnResponse, PendingRequests};
    use tower::{Service, ServiceExt};

    let mut group = c.benchmark_group("p2c/1-thread");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(1));
    group.sample_size(15);
    for n in SIZES {
        let snap = ours(n, HashMode::Balanced, false);
        group.bench_with_input(BenchmarkId::new("upstreams-p2c-select", n), &n, |b, _| {
            b.iter(|| black_box(snap.select(Rotation::P2c, b"")));
        });
        let list = UpstreamList::parse(&definition(n, None), 11333, Limits::default()).unwrap();
        group.bench_with_input(BenchmarkId::new("upstreams-p2c-get-ok", n), &n, |b, _| {
            b.iter(|| list.get(Rotation::P2c, b"").unwrap().ok());
        });
        let services: Vec<_> = (0..n)
            .map(|_| {
                PendingRequests::new(
                    tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }),
                    CompleteOnResponse::default(),
                )
            })
            .collect();
        let mut balance = Balance::new(ServiceList::new(services));
        group.bench_with_input(BenchmarkId::new("tower-p2c-ready-call", n), &n, |b, _| {
            b.iter(|| {
                futures::executor::block_on(async {
                    let svc = balance.ready().await.unwrap();
                    svc.call(()).await.unwrap();
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, hash_group, unkeyed_group, p2c_group, rebuild_group);
criterion_main!(benches);
