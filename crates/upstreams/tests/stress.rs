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

/// Per upstream name, starting from `start`: +1 on every `online`, −1 on every `offline`;
/// and the number of those events.
fn watch_balance(
    list: &upstreams::UpstreamList,
    start: HashMap<String, i64>,
) -> (Arc<Mutex<HashMap<String, i64>>>, Arc<AtomicI64>) {
    let balance = Arc::new(Mutex::new(start));
    let transitions = Arc::new(AtomicI64::new(0));
    let (sink, count) = (balance.clone(), transitions.clone());
    let events: Events = [Event::Online, Event::Offline].into_iter().collect();
    list.add_watcher(events, move |event, up, _| {
        *sink
            .lock()
            .unwrap()
            .entry(up.name().to_owned())
            .or_insert(0) += if event == Event::Online { 1 } else { -1 };
        count.fetch_add(1, Ordering::SeqCst);
    });
    (balance, transitions)
}

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
    let (balance, transitions) = watch_balance(&list, HashMap::new());
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

/// Issue #7: pickers racing a thread that changes the membership (members leave and come
/// back, as SRV targets or reloads do), with failures and revivals. Nothing drained or
/// pending is ever picked, every transition is reported once (per name: +1 online, −1
/// offline, starting at +1 for the first members, ending at +1 for those configured at the
/// end and 0 for those removed), and counters and in-flight counts end right.
#[test]
fn stress_membership_changes_under_picks() {
    let limits = common::exact()
        .with_max_consecutive_errors(3)
        .with_revive_time(Duration::from_millis(50));
    let names: Vec<String> = (1..=8).map(|i| format!("127.0.0.{i}")).collect();
    // The members of bit i set in `mask`, in name order.
    fn definition(mask: u32) -> upstreams::Definition {
        let kept: Vec<String> = (0..8)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| format!("127.0.0.{}", i + 1))
            .collect();
        upstreams::Definition::parse(&kept.join(","), 11333).unwrap()
    }
    let first = 0b0011_1111;
    let (list, clock) = common::list(&definition(first).to_string(), limits);
    let list = Arc::new(list);
    let start = list
        .upstreams()
        .iter()
        .map(|u| (u.name().to_owned(), 1))
        .collect();
    let (balance, _) = watch_balance(&list, start);
    let seen: Arc<Mutex<Vec<Arc<upstreams::Upstream>>>> = Arc::default();
    let pickers: Vec<_> = (0..3)
        .map(|t| {
            let (list, clock, seen) = (list.clone(), clock.clone(), seen.clone());
            thread::spawn(move || {
                for i in 0..20_000u32 {
                    let rotation = Rotation::ALL[(i as usize + t) % Rotation::ALL.len()];
                    let key = format!("k{}", i % 89);
                    let Some(p) = list.get_forced(rotation, key.as_bytes()) else {
                        clock.advance(Duration::from_millis(1));
                        continue;
                    };
                    assert!(
                        !matches!(p.state(), State::Pending),
                        "picked pending {}",
                        p.name()
                    );
                    if i % 512 == 0 {
                        seen.lock().unwrap().push(Arc::clone(p.upstream()));
                    }
                    match (i + t as u32) % 6 {
                        0 => p.fail(FailKind::Other, "stress"),
                        1 => drop(p),
                        _ => p.ok(),
                    }
                    if i % 64 == 0 {
                        clock.advance(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    // Membership: a fixed walk over subsets of the eight names (never empty).
    let masks = [
        0b0011_1111u32,
        0b1111_0000,
        0b0101_0101,
        0b1111_1111,
        0b0000_0111,
        0b1100_0011,
    ];
    let changer = {
        let list = list.clone();
        thread::spawn(move || {
            for round in 0..300 {
                list.reconfigure(&definition(masks[round % masks.len()]));
                thread::yield_now();
            }
        })
    };
    for t in pickers {
        t.join().unwrap();
    }
    changer.join().unwrap();
    let last = masks[299 % masks.len()];
    clock.advance(Duration::from_secs(3600));
    for _ in 0..40 {
        if let Some(p) = list.get(Rotation::RoundRobin, b"") {
            p.ok();
        }
    }
    let ups = list.upstreams();
    assert_eq!(ups.len(), last.count_ones() as usize);
    assert_eq!(
        list.alive_count(),
        ups.iter().filter(|u| u.is_alive()).count()
    );
    assert_eq!(list.alive_count(), ups.len(), "{ups:?}");
    for up in ups.iter().chain(seen.lock().unwrap().iter()) {
        assert_eq!(up.inflight(), 0, "{} leaked in-flight picks", up.name());
    }
    let balance = balance.lock().unwrap();
    for (i, name) in names.iter().enumerate() {
        let want = i64::from(last & (1 << i) != 0);
        assert_eq!(balance.get(name).copied().unwrap_or(0), want, "{name}");
    }
}

#[test]
fn list_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<upstreams::UpstreamList>();
    assert_send_sync::<upstreams::Upstream>();
    assert_send_sync::<upstreams::Picked>();
}
