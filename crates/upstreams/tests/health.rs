//! SPEC.md §4 (health), §5 (watchers) and the core side of §6 (addresses).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{exact, list, record, take_offline};
use upstreams::{Event, Events, FailKind, Limits, Rotation, State};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn item_28_address_failure_counts_against_the_address() {
    let (l, _) = list("a.example:80", exact());
    let up = l.find("a.example:80").unwrap();
    l.set_addresses(&up, &[ip("10.0.0.1"), ip("10.0.0.2")]);
    up.record_failure(FailKind::Address, "refused");
    up.record_failure(FailKind::Other, "bad reply");
    assert_eq!(
        up.addrs()[0].1,
        1,
        "only the address failure counts against it"
    );
    assert_eq!(up.errors(), 2);
}

#[test]
fn item_29_six_failures_over_ten_seconds() {
    let (l, clock) = list("127.0.0.1,127.0.0.2", exact());
    let log = record(&l);
    let up = l.find("127.0.0.1").unwrap();
    for _ in 0..5 {
        up.record_failure(FailKind::Other, "x");
    }
    assert!(up.is_alive());
    clock.advance(Duration::from_secs(10));
    up.record_failure(FailKind::Other, "x");
    assert!(!up.is_alive());
    let log = log.lock().unwrap();
    assert_eq!(
        &log[log.len() - 2..],
        ["failure 127.0.0.1 6", "offline 127.0.0.1 6"]
    );
    assert_eq!(up.errors(), 0);
}

#[test]
fn item_30_consecutive_errors_fast_path() {
    let (l, _) = list(
        "127.0.0.1,127.0.0.2",
        exact().with_max_consecutive_errors(3),
    );
    let up = l.find("127.0.0.1").unwrap();
    up.record_failure(FailKind::Other, "x");
    up.record_failure(FailKind::Other, "x");
    up.record_success();
    up.record_failure(FailKind::Other, "x");
    up.record_failure(FailKind::Other, "x");
    assert!(up.is_alive(), "ok() breaks the run");
    up.record_failure(FailKind::Other, "x");
    assert!(!up.is_alive(), "three in a row");
}

#[test]
fn item_31_single_upstream_never_offline() {
    let (l, clock) = list("127.0.0.1", exact().with_max_consecutive_errors(2));
    let up = l.find("127.0.0.1").unwrap();
    for _ in 0..1000 {
        up.record_failure(FailKind::Other, "x");
        clock.advance(Duration::from_millis(100));
    }
    assert!(up.is_alive());
    assert!(l.get(Rotation::RoundRobin, b"").is_some());
}

#[test]
fn item_32_going_offline() {
    let (l, clock) = list("a.example,127.0.0.2", exact());
    let up = l.find("a.example").unwrap();
    l.set_addresses(&up, &[ip("10.0.0.1")]);
    assert!(!up.take_resolve_request());
    up.record_failure(FailKind::Other, "x");
    assert!(
        up.take_resolve_request(),
        "first failure of a window asks for re-resolution"
    );
    take_offline(&l, &clock, "a.example");
    assert!(
        up.take_resolve_request(),
        "going offline asks for re-resolution"
    );
    let now = clock.now_for_test();
    assert_eq!(
        up.state(),
        State::Offline {
            until: now + Duration::from_secs(60)
        }
    );
    assert_eq!(up.errors(), 0);
}

trait NowForTest {
    fn now_for_test(&self) -> Duration;
}
impl NowForTest for upstreams::ManualClock {
    fn now_for_test(&self) -> Duration {
        upstreams::Clock::now(self)
    }
}

#[test]
fn item_32_revive_jitter_bounds() {
    let limits = Limits::default().with_seed(Some(3));
    for seed in 0..20 {
        let (l, clock) = list("127.0.0.1,127.0.0.2", limits.clone().with_seed(Some(seed)));
        take_offline(&l, &clock, "127.0.0.1");
        let State::Offline { until } = l.find("127.0.0.1").unwrap().state() else {
            panic!("offline")
        };
        let delay = until - clock.now_for_test();
        assert!(
            delay >= Duration::from_secs(60) && delay < Duration::from_secs(84),
            "{delay:?}"
        );
    }
}

#[test]
fn item_33_lazy_revive_fires_online_once() {
    let (l, clock) = list("127.0.0.1,127.0.0.2", exact());
    let log = record(&l);
    take_offline(&l, &clock, "127.0.0.1");
    clock.advance(Duration::from_secs(59));
    for _ in 0..10 {
        assert_eq!(
            l.get(Rotation::RoundRobin, b"").unwrap().name(),
            "127.0.0.2"
        );
    }
    clock.advance(Duration::from_secs(1));
    let names: Vec<String> = (0..4)
        .map(|_| l.get(Rotation::RoundRobin, b"").unwrap().name().to_owned())
        .collect();
    assert!(names.contains(&"127.0.0.1".to_owned()));
    let online = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.starts_with("online"))
        .count();
    assert_eq!(online, 1);
    assert_eq!(l.alive_count(), 2);
    assert_eq!(l.upstreams().len(), 2, "never listed twice");
}

#[test]
fn item_34_probe_mode() {
    let limits = exact()
        .with_probe_jitter(0.0)
        .with_probe_max_backoff(Duration::from_secs(200));
    let (l, clock) = list("127.0.0.1,127.0.0.2", limits);
    let log = record(&l);
    take_offline(&l, &clock, "127.0.0.1");
    take_offline(&l, &clock, "127.0.0.2"); // .2 goes out 10 s after .1
    assert!(l.get(Rotation::RoundRobin, b"").is_none());
    clock.advance(Duration::from_secs(50)); // .1 due (60 s after it went out), .2 not yet
    let probe = l.get(Rotation::RoundRobin, b"").expect("a probe");
    assert_eq!(probe.name(), "127.0.0.1");
    assert_eq!(probe.state(), State::Probing);
    assert!(
        l.get(Rotation::RoundRobin, b"").is_none(),
        "the probe is handed out once"
    );
    // A failed probe backs off: 60 s, then 120 s, capped at 200 s.
    probe.fail(FailKind::Address, "still down");
    let until = |name: &str| match l.find(name).unwrap().state() {
        State::Offline { until } => until - clock.now_for_test(),
        s => panic!("{s:?}"),
    };
    assert_eq!(until("127.0.0.1"), Duration::from_secs(60));
    clock.advance(Duration::from_secs(10)); // .2 is due now
    let probe = l.get(Rotation::RoundRobin, b"").unwrap();
    assert_eq!(probe.name(), "127.0.0.2");
    drop(probe); // abandoned: handed back, probed again by the next pick
    let probe = l.get(Rotation::RoundRobin, b"").unwrap();
    assert_eq!(probe.name(), "127.0.0.2");
    probe.fail(FailKind::Other, "x");
    clock.advance(Duration::from_secs(50));
    let probe = l.get(Rotation::RoundRobin, b"").unwrap();
    assert_eq!(probe.name(), "127.0.0.1");
    probe.fail(FailKind::Other, "x");
    assert_eq!(until("127.0.0.1"), Duration::from_secs(120));
    clock.advance(Duration::from_secs(10));
    let probe = l.get(Rotation::RoundRobin, b"").unwrap();
    assert_eq!(probe.name(), "127.0.0.2");
    probe.ok();
    assert!(l.find("127.0.0.2").unwrap().is_alive());
    assert_eq!(
        l.get(Rotation::RoundRobin, b"").unwrap().name(),
        "127.0.0.2"
    );
    let log = log.lock().unwrap();
    assert_eq!(log.iter().filter(|e| e.starts_with("online")).count(), 1);
    assert_eq!(log.iter().filter(|e| e.starts_with("offline")).count(), 2);
    // Once something is alive, due upstreams revive normally again.
    drop(log);
    clock.advance(Duration::from_secs(200));
    let _ = l.get(Rotation::RoundRobin, b"");
    assert_eq!(l.alive_count(), 2);
}

#[test]
fn item_34_probe_backoff_caps() {
    let limits = exact()
        .with_probe_jitter(0.0)
        .with_probe_max_backoff(Duration::from_secs(200));
    let (l, clock) = list("127.0.0.1,127.0.0.2", limits);
    take_offline(&l, &clock, "127.0.0.1");
    take_offline(&l, &clock, "127.0.0.2");
    let mut seen = Vec::new();
    for _ in 0..8 {
        clock.advance(Duration::from_secs(1000));
        let probe = l.get(Rotation::RoundRobin, b"").unwrap();
        let up = probe.upstream().clone();
        probe.fail(FailKind::Other, "x");
        if up.name() == "127.0.0.1" {
            let State::Offline { until } = up.state() else {
                panic!()
            };
            seen.push((until - clock.now_for_test()).as_secs());
        }
    }
    assert_eq!(seen, [60, 120, 200, 200]);
}

#[test]
fn item_35_slow_start_ramps_weight() {
    let limits = exact().with_slow_start(Duration::from_secs(100));
    let (l, clock) = list("127.0.0.1,127.0.0.2", limits);
    take_offline(&l, &clock, "127.0.0.1");
    clock.advance(Duration::from_secs(60));
    let share = |n: usize| {
        (0..n)
            .filter(|_| l.get(Rotation::RoundRobin, b"").unwrap().name() == "127.0.0.1")
            .count() as f64
            / n as f64
    };
    let _ = l.get(Rotation::RoundRobin, b""); // revives
    clock.advance(Duration::from_secs(10));
    let early = share(4000);
    clock.advance(Duration::from_secs(40));
    let mid = share(4000);
    clock.advance(Duration::from_secs(60));
    let full = share(4000);
    assert!(early < 0.15, "{early}");
    assert!(mid > early && mid < 0.45, "{mid}");
    assert!((full - 0.5).abs() < 0.01, "{full}");
}

#[test]
fn item_36_watchers_subsets_order_and_panics() {
    let (l, clock) = list("127.0.0.1,127.0.0.2", exact());
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o1 = order.clone();
    l.add_watcher(Event::Offline, move |_, _, _| o1.lock().unwrap().push(1));
    l.add_watcher(Events::ALL, |_, _, _| panic!("a broken watcher"));
    let o3 = order.clone();
    let events: Events = [Event::Offline, Event::Online].into_iter().collect();
    l.add_watcher(events, move |e, _, _| {
        o3.lock()
            .unwrap()
            .push(if e == Event::Offline { 3 } else { 4 })
    });
    take_offline(&l, &clock, "127.0.0.1");
    assert_eq!(*order.lock().unwrap(), [1, 3]);
    assert!(
        l.get(Rotation::RoundRobin, b"").is_some(),
        "the list survives the panic"
    );
    clock.advance(Duration::from_secs(60));
    let _ = l.get(Rotation::RoundRobin, b"");
    assert_eq!(*order.lock().unwrap(), [1, 3, 4]);
}

#[test]
fn item_36_watcher_may_reenter_the_list() {
    let (l, clock) = list("127.0.0.1,127.0.0.2", exact());
    let l = Arc::new(l);
    let weak = Arc::downgrade(&l);
    let picked = Arc::new(AtomicUsize::new(0));
    let p = picked.clone();
    l.add_watcher(Event::Offline, move |_, up, _| {
        let list = weak.upgrade().unwrap();
        let other = list.get_except(up, Rotation::RoundRobin, b"").unwrap();
        assert_ne!(other.name(), up.name());
        other.ok();
        p.fetch_add(1, Ordering::SeqCst);
    });
    take_offline(&l, &clock, "127.0.0.1");
    assert_eq!(picked.load(Ordering::SeqCst), 1);
}

#[test]
fn item_37_success_on_every_ok_failure_on_every_counted_fail() {
    let (l, _) = list("127.0.0.1,127.0.0.2", exact());
    let log = record(&l);
    let up = l.find("127.0.0.2").unwrap();
    up.record_success();
    up.record_success();
    up.record_failure(FailKind::Other, "x");
    up.record_failure(FailKind::Other, "x");
    up.record_success();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "success 127.0.0.2 0",
            "success 127.0.0.2 0",
            "failure 127.0.0.2 1",
            "failure 127.0.0.2 2",
            "success 127.0.0.2 0"
        ]
    );
}

#[test]
fn item_38_names_pending_until_resolved() {
    let (l, _) = list("redis.example:6379,127.0.0.1", exact());
    let log = record(&l);
    let r = l.find("redis.example:6379").unwrap();
    assert_eq!(r.state(), State::Pending);
    assert_eq!(r.addr(), None);
    assert_eq!(l.alive_count(), 1);
    for _ in 0..5 {
        assert_eq!(
            l.get(Rotation::RoundRobin, b"").unwrap().name(),
            "127.0.0.1"
        );
    }
    assert!(!l.set_addresses(&r, &[]), "an empty answer changes nothing");
    assert_eq!(r.state(), State::Pending);
    l.set_addresses(&r, &[ip("10.1.1.1")]);
    assert!(r.is_alive());
    assert_eq!(r.addr(), Some("10.1.1.1:6379".parse().unwrap()));
    assert_eq!(*log.lock().unwrap(), ["online redis.example:6379 0"]);
    // Numeric hosts and sockets never need resolution.
    let (l, _) = list("127.0.0.1,/tmp/x.sock", exact());
    assert_eq!(l.alive_count(), 2);
}

#[test]
fn item_40_address_order_errors_and_rotation() {
    let (l, _) = list("h.example", exact());
    let up = l.find("h.example").unwrap();
    l.set_addresses(&up, &[ip("::1"), ip("127.0.0.1"), ip("127.0.0.2")]);
    let order: Vec<String> = up.addrs().iter().map(|(a, _)| a.ip().to_string()).collect();
    assert_eq!(order, ["127.0.0.1", "127.0.0.2", "::1"], "IPv4 first");
    // errors .1 = 2, .2 = 1
    up.record_failure(FailKind::Address, "x");
    up.record_failure(FailKind::Address, "x");
    assert_eq!(up.next_addr().unwrap().ip(), ip("127.0.0.2"));
    up.record_failure(FailKind::Address, "x");
    assert_eq!(
        up.next_addr().unwrap().ip(),
        ip("::1"),
        "IPv6 once IPv4 has failed"
    );
    // A re-resolution keeps the error counts of addresses that persist.
    l.set_addresses(&up, &[ip("127.0.0.2"), ip("127.0.0.3"), ip("::1")]);
    let errs: Vec<u32> = up.addrs().iter().map(|a| a.1).collect();
    assert_eq!(errs, [1, 0, 0]);
    assert_eq!(
        up.addr().unwrap().ip(),
        ip("::1"),
        "current address stays current"
    );
    up.record_success();
    assert_eq!(up.addrs()[2].1, 0, "ok() clears the current address");
}

#[test]
fn mark_offline_and_mark_online_are_operator_overrides() {
    let (l, _) = list("127.0.0.1,127.0.0.2", exact());
    let log = record(&l);
    let up = l.find("127.0.0.1").unwrap();
    assert!(up.mark_offline(Duration::from_secs(3600)));
    assert!(!up.mark_offline(Duration::from_secs(3600)), "already out");
    assert_eq!(l.alive_count(), 1);
    assert!(up.mark_online());
    assert!(!up.mark_online(), "already in");
    assert_eq!(l.alive_count(), 2);
    assert_eq!(
        *log.lock().unwrap(),
        ["offline 127.0.0.1 0", "online 127.0.0.1 0"]
    );
}

/// A reload's new limits take effect on a live list without touching health: an upstream
/// already offline keeps its deadline, the next failures count against the new
/// `max_errors` / `error_time`, the next offline period is the new `revive_time`; the
/// settings fixed at build (`hash_mode`, `seed`, DNS) are reported and left alone.
#[test]
fn set_limits_applies_to_a_live_list_and_keeps_health() {
    let (l, clock) = list("127.0.0.1,127.0.0.2,127.0.0.3", exact());
    let (a, b) = (l.find("127.0.0.1").unwrap(), l.find("127.0.0.2").unwrap());
    take_offline(&l, &clock, "127.0.0.1");
    let State::Offline { until } = a.state() else {
        panic!("offline before the change")
    };
    let log = record(&l);
    let stricter = exact()
        .with_max_errors(1)
        .with_error_time(Duration::from_secs(2))
        .with_revive_time(Duration::from_secs(5));
    assert_eq!(l.set_limits(stricter).unwrap(), Vec::<&str>::new());
    assert_eq!(l.limits().max_errors, 1);
    assert_eq!(
        a.state(),
        State::Offline { until },
        "the offline deadline stays"
    );
    // Three failures over 2 s: enough under the new limits, not under the old ones (the
    // same sequence on a list that kept them).
    let (control, control_clock) = list("127.0.0.1,127.0.0.2,127.0.0.3", exact());
    let c = control.find("127.0.0.2").unwrap();
    for (up, clock) in [(&b, &clock), (&c, &control_clock)] {
        up.record_failure(FailKind::Other, "x");
        up.record_failure(FailKind::Other, "x");
        assert!(up.is_alive());
        clock.advance(Duration::from_secs(2));
        up.record_failure(FailKind::Other, "x");
    }
    assert!(c.is_alive(), "the old limits tolerate it");
    assert!(!b.is_alive(), "the new max_errors / error_time count");
    let now = upstreams::Clock::now(&*clock);
    assert_eq!(
        b.state(),
        State::Offline {
            until: now + Duration::from_secs(5)
        },
        "the new revive_time"
    );
    assert_eq!(
        log.lock().unwrap().last().map(String::as_str),
        Some("offline 127.0.0.2 3")
    );

    // Fixed settings: reported, not applied; an invalid set changes nothing.
    let moved = l
        .limits()
        .as_ref()
        .clone()
        .with_hash_mode(upstreams::HashMode::RspamdRing)
        .with_seed(Some(8))
        .with_max_errors(2);
    assert_eq!(l.set_limits(moved).unwrap(), ["hash_mode", "seed"]);
    assert_eq!(l.limits().hash_mode, Limits::default().hash_mode);
    assert_eq!(l.limits().max_errors, 2, "the rest of the set applies");
    let invalid = exact().with_revive_jitter(-1.0);
    assert!(l.set_limits(invalid).is_err());
    assert_eq!(l.limits().max_errors, 2);
}

/// The one reading of limits the shells share: every field applies, ranges are checked and
/// the error names the setting.
#[test]
fn limits_config_applies_every_field_and_names_bad_ones() {
    use std::time::Duration;
    use upstreams::{HashMode, Limits, LimitsConfig};
    let mut c = LimitsConfig::default();
    c.max_errors = Some(7);
    c.error_time = Some(2.5);
    c.revive_time = Some(0.0);
    c.probe_jitter = Some(0.5);
    c.latency_half_life = Some(30.0);
    c.default_latency = Some(0.01);
    c.hash = Some("rspamd-jump".into());
    c.seed = Some(9);
    let l = c.apply(Limits::default()).unwrap();
    assert_eq!(l.max_errors, 7);
    assert_eq!(l.error_time, Duration::from_millis(2500));
    assert_eq!(l.revive_time, Duration::ZERO);
    assert_eq!(l.probe_jitter, 0.5);
    assert_eq!(l.latency_half_life, Duration::from_secs(30));
    assert_eq!(l.default_latency, Duration::from_millis(10));
    assert_eq!(l.hash_mode, HashMode::RspamdJump);
    assert_eq!(l.seed, Some(9));
    let one = |f: &dyn Fn(&mut LimitsConfig)| {
        let mut c = LimitsConfig::default();
        f(&mut c);
        c
    };
    for (set, what) in [
        (one(&|c| c.error_time = Some(0.0)), "error_time"),
        (one(&|c| c.revive_time = Some(1e19)), "revive_time"),
        (one(&|c| c.slow_start = Some(f64::NAN)), "slow_start"),
        (one(&|c| c.probe_jitter = Some(2.0)), "probe_jitter"),
        (one(&|c| c.hash = Some("nope".into())), "hash"),
    ] {
        let err = set.apply(Limits::default()).unwrap_err().to_string();
        assert!(err.contains(what), "{what}: {err}");
    }
}

/// `fail`'s reason is kept for watchers: the `offline` watcher can say why.
#[test]
fn the_failure_reason_reaches_watchers() {
    let (l, _) = common::list(
        "10.0.0.1,10.0.0.2",
        common::exact().with_max_consecutive_errors(1),
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    l.add_watcher(upstreams::Event::Offline, move |_, up, _| {
        sink.lock().unwrap().push(up.last_failure());
    });
    let up = l.upstreams()[0].clone();
    assert_eq!(up.last_failure(), None);
    up.record_failure(upstreams::FailKind::Address, "connect refused");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [Some("connect refused".to_owned())]
    );
}
