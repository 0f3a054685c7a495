//! Loom models of the health transitions (issue #7): the real `UpstreamList` code, built with
//! loom's atomics and locks (`crate::sync`), with every interleaving of two racing threads
//! explored. Each model proves one of SPEC.md items 15, 33 and 34 under concurrency:
//! exactly one `offline` per Alive → Offline transition, exactly one `online` per revival,
//! a probe handed to one caller only, and in-flight counts back to zero.
//!
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p upstreams --test loom`
//! (`scripts/test` runs it).

#![cfg(loom)]
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loom::thread;
use upstreams::{Definition, Event, FailKind, Limits, ManualClock, Rotation, UpstreamList};

/// Two upstreams on a manual clock; one failure takes an upstream out; no jitter.
fn two(clock: &Arc<ManualClock>) -> Arc<UpstreamList> {
    let def = Definition::parse("127.0.0.1,127.0.0.2", 11333).unwrap();
    let limits = Limits::default()
        .with_max_consecutive_errors(1)
        .with_revive_jitter(0.0)
        .with_revive_time(Duration::from_secs(60))
        .with_seed(Some(1));
    Arc::new(UpstreamList::with_clock(&def, limits, clock.clone()).unwrap())
}

/// Counts one event kind (a std atomic: the count is checked, not modelled).
fn count(list: &UpstreamList, event: Event) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let sink = n.clone();
    list.add_watcher(event, move |_, _, _| {
        sink.fetch_add(1, Ordering::SeqCst);
    });
    n
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Duration::from_secs(1000)))
}

/// Item 33: two callers failing one upstream at once: it goes offline once, one `offline`.
#[test]
fn racing_failures_take_an_upstream_offline_once() {
    loom::model(|| {
        let clock = clock();
        let list = two(&clock);
        let offline = count(&list, Event::Offline);
        let a = list.upstreams()[0].clone();
        let other = {
            let a = a.clone();
            thread::spawn(move || a.record_failure(FailKind::Other, "t1"))
        };
        a.record_failure(FailKind::Other, "t0");
        other.join().unwrap();
        assert_eq!(offline.load(Ordering::SeqCst), 1);
        assert_eq!(list.alive_count(), 1);
        assert!(!a.is_alive());
    });
}

/// Item 33: after the revive deadline, two racing picks bring it back once, one `online`,
/// and the alive count ends right.
#[test]
fn racing_picks_revive_an_upstream_once() {
    loom::model(|| {
        let clock = clock();
        let list = two(&clock);
        let online = count(&list, Event::Online);
        let a = list.upstreams()[0].clone();
        a.record_failure(FailKind::Other, "down");
        assert!(!a.is_alive());
        clock.advance(Duration::from_secs(61));
        let other = {
            let list = list.clone();
            thread::spawn(move || drop(list.get(Rotation::RoundRobin, b"")))
        };
        drop(list.get(Rotation::RoundRobin, b""));
        other.join().unwrap();
        assert_eq!(online.load(Ordering::SeqCst), 1);
        assert_eq!(list.alive_count(), 2);
        assert!(a.is_alive());
    });
}

/// Item 34: with everything offline and one upstream due, two racing picks: the probe goes
/// to one caller only; its `ok()` brings the upstream back with one `online`.
#[test]
fn a_due_probe_is_handed_to_one_caller() {
    loom::model(|| {
        let clock = clock();
        let list = two(&clock);
        let online = count(&list, Event::Online);
        let [a, b] = [list.upstreams()[0].clone(), list.upstreams()[1].clone()];
        a.record_failure(FailKind::Other, "down");
        clock.advance(Duration::from_secs(30));
        b.record_failure(FailKind::Other, "down"); // due 30 s after a
        clock.advance(Duration::from_secs(31)); // a is due, b is not
        assert_eq!(list.alive_count(), 0);
        // Each caller keeps its handle until both have picked: a probe released by a caller
        // that is done may be handed out again, a held one may not.
        let other = {
            let list = list.clone();
            thread::spawn(move || list.get(Rotation::RoundRobin, b""))
        };
        let mine = list.get(Rotation::RoundRobin, b"");
        let theirs = other.join().unwrap();
        let names = |p: &Option<upstreams::Picked>| p.as_ref().map(|p| p.name().to_owned());
        assert_eq!(
            usize::from(mine.is_some()) + usize::from(theirs.is_some()),
            1,
            "the probe went to {:?} and {:?}",
            names(&mine),
            names(&theirs)
        );
        let probe = mine.or(theirs).unwrap();
        assert_eq!(probe.name(), "127.0.0.1", "the due one is probed");
        probe.ok();
        assert_eq!(online.load(Ordering::SeqCst), 1);
        assert!(a.is_alive());
    });
}

/// Item 15: racing picks and verdicts leave no in-flight count behind.
#[test]
fn racing_picks_leave_no_inflight_count() {
    loom::model(|| {
        let clock = clock();
        let list = two(&clock);
        let other = {
            let list = list.clone();
            thread::spawn(move || {
                if let Some(p) = list.get(Rotation::P2c, b"") {
                    p.ok();
                }
            })
        };
        if let Some(p) = list.get(Rotation::P2c, b"") {
            p.fail(FailKind::Address, "refused");
        }
        other.join().unwrap();
        assert!(list.upstreams().iter().all(|u| u.inflight() == 0));
    });
}
