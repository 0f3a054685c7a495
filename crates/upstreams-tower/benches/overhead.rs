//! Per-request overhead of `Balance::call` against calling the inner service directly and
//! against `tower::balance::p2c::Balance`, both over 16 endpoints whose service answers at
//! once. Futures are polled once (`now_or_never`): no runtime in the measurement.
//!
//! Run: `cargo bench -p upstreams-tower --bench overhead`. Overhead = a row minus `direct`.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use std::time::Duration;

use tower::load::{CompleteOnResponse, PeakEwma, PendingRequests};
use tower::{Service, ServiceExt};
use upstreams::{Limits, Rotation, UpstreamList};

const ENDPOINTS: usize = 16;

/// The inner service: answers with the request, at once.
type Echo = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, Infallible>>>;

fn echo() -> Echo {
    tower::service_fn(|r: u64| ready(Ok::<_, Infallible>(r)))
}

fn once<S: Service<u64>>(svc: &mut S, r: u64) -> S::Response
where
    S::Error: std::fmt::Debug,
{
    let ready = svc
        .ready()
        .now_or_never()
        .expect("ready at once")
        .expect("ready");
    ready
        .call(r)
        .now_or_never()
        .expect("answered at once")
        .expect("answer")
}

fn definition(prefix: &str) -> String {
    let entries: Vec<String> = (1..=ENDPOINTS).map(|i| format!("10.0.0.{i}:80")).collect();
    format!("{prefix}:{}", entries.join(","))
}

fn overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("call");
    let mut direct = echo();
    group.bench_function("direct", |b| b.iter(|| once(&mut direct, black_box(7))));

    for (name, rotation) in [
        ("upstreams-p2c", Rotation::P2c),
        ("upstreams-round-robin", Rotation::RoundRobin),
    ] {
        let list = Arc::new(
            UpstreamList::parse(&definition(&format!("{rotation}")), 80, Limits::default())
                .expect("list"),
        );
        let mut balance = upstreams_tower::Balance::new(list, |_| echo());
        group.bench_function(name, |b| b.iter(|| once(&mut balance, black_box(7))));
    }

    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|_| PendingRequests::new(echo(), CompleteOnResponse::default()))
        .collect();
    let mut p2c = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(endpoints));
    group.bench_function("tower-p2c", |b| b.iter(|| once(&mut p2c, black_box(7))));

    // tower's p2c by latency (Peak-EWMA), the load model closest to ours.
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|_| {
            PeakEwma::new(
                echo(),
                Duration::from_millis(1),
                10e9,
                CompleteOnResponse::default(),
            )
        })
        .collect();
    let mut ewma = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(endpoints));
    group.bench_function("tower-p2c-peak-ewma", |b| {
        b.iter(|| once(&mut ewma, black_box(7)))
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
