//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use upstreams::{Definition, Event, Events, Limits, ManualClock, UpstreamList};

/// A list on a manual clock standing at t0 = 1000 s, with a fixed seed and no jitter.
pub fn list(def: &str, limits: Limits) -> (UpstreamList, Arc<ManualClock>) {
    list_port(def, 11333, limits)
}

pub fn list_port(def: &str, port: u16, limits: Limits) -> (UpstreamList, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1000)));
    let def = Definition::parse(def, port).expect("test definition parses");
    let list = UpstreamList::with_clock(&def, limits, clock.clone()).expect("valid limits");
    (list, clock)
}

/// Limits with a fixed seed and no revive jitter.
pub fn exact() -> Limits {
    Limits::default().with_seed(Some(7)).with_revive_jitter(0.0)
}

/// Records every event as `event name errors`.
pub fn record(list: &UpstreamList) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    list.add_watcher(
        Events::ALL,
        move |event: Event, up: &upstreams::Upstream, errors| {
            sink.lock()
                .unwrap()
                .push(format!("{event} {} {errors}", up.name()));
        },
    );
    log
}

/// Parses "12.5" seconds exactly into a Duration.
pub fn secs(text: &str) -> Duration {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut nanos: u64 = int.parse::<u64>().unwrap() * 1_000_000_000;
    let mut scale = 100_000_000;
    for d in frac.bytes() {
        nanos += u64::from(d - b'0') * scale;
        scale /= 10;
    }
    Duration::from_nanos(nanos)
}

/// Takes the named upstream offline through fail() (enough failures over the window).
pub fn take_offline(list: &UpstreamList, clock: &ManualClock, name: &str) {
    let up = list.find(name).expect("named upstream exists");
    for _ in 0..=list.limits().max_errors {
        up.record_failure(upstreams::FailKind::Other, "test");
    }
    clock.advance(list.limits().error_time);
    up.record_failure(upstreams::FailKind::Other, "test");
    assert!(!up.is_alive(), "{name} should be offline");
}
