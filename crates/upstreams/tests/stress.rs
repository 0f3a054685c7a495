//! Concurrency: several threads picking, failing, succeeding and reviving, for a bounded
//! number of iterations, with the invariants checked throughout and at the end.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use upstreams::{Event, Events, FailKind, Rotation, State};

#[test]
fn stress_transitions_are_reported_exactly_once() {
    let limits = common::exact()
        .with_max_consecutive_errors(3)
        .with_revive_time(Duration::from_millis(50));
    let (list, clock) = common::list(
        "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6",
        limits,
    );
    let list = Arc::new(list);
    // Per upstream: +1 on online, -1 on offline. Every upstream starts and ends alive, so
    // each must end at 0: a transition reported twice (or lost) leaves it off balance.
    // (Events of two racing transitions may reach watchers in either order, so the running
    // balance is not checked.)
    let balance: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let transitions = Arc::new(AtomicI64::new(0));
    {
        let balance = balance.clone();
        let transitions = transitions.clone();
        let events: Events = [Event::Online, Event::Offline].into_iter().collect();
        list.add_watcher(events, move |event, up, _| {
            let mut b = balance.lock().unwrap();
            *b.entry(up.name().to_owned()).or_insert(0) +=
                if event == Event::Online { 1 } else { -1 };
            transitions.fetch_add(1, Ordering::SeqCst);
        });
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let list = list.clone();
            let clock = clock.clone();
            thread::spawn(move || {
                for i in 0..20_000u32 {
                    let rotation = Rotation::ALL[(i as usize + t) % Rotation::ALL.len()];
                    let key = format!("k{}", i % 97);
                    let Some(p) = list.get_forced(rotation, key.as_bytes()) else {
                        clock.advance(Duration::from_millis(1));
                        continue;
                    };
                    // Another thread may take it offline right after the pick, so only
                    // states a pick can never return are checked here.
                    assert!(
                        !matches!(p.state(), State::Pending | State::Draining),
                        "picked {}",
                        p.name()
                    );
                    match (i + t as u32) % 5 {
                        0 | 1 => p.fail(FailKind::Other, "stress"),
                        2 => drop(p),
                        _ => p.ok(),
                    }
                    if i % 64 == 0 {
                        clock.advance(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        transitions.load(Ordering::SeqCst) > 100,
        "the run exercised transitions"
    );
    // Let everything revive and check the counters agree with the states.
    clock.advance(Duration::from_secs(3600));
    for _ in 0..20 {
        if let Some(p) = list.get(Rotation::RoundRobin, b"") {
            p.ok();
        }
    }
    let ups = list.upstreams();
    let alive = ups.iter().filter(|u| u.is_alive()).count();
    assert_eq!(list.alive_count(), alive);
    assert_eq!(alive, ups.len(), "{ups:?}");
    for up in &ups {
        assert_eq!(up.inflight(), 0, "{} leaked in-flight picks", up.name());
        let b = balance.lock().unwrap().get(up.name()).copied().unwrap_or(0);
        assert_eq!(b, 0, "{}: online/offline events unbalanced", up.name());
    }
}

#[test]
fn list_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<upstreams::UpstreamList>();
    assert_send_sync::<upstreams::Upstream>();
    assert_send_sync::<upstreams::Picked>();
}
