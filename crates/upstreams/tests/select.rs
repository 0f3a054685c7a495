//! SPEC.md §3: selection.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{exact, list, take_offline};
use upstreams::{FailKind, HashMode, Rotation};

fn names(list: &upstreams::UpstreamList, rotation: Rotation, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let p = list.get(rotation, b"").expect("something alive");
            let name = p.name().to_owned();
            p.ok();
            name
        })
        .collect()
}

fn counts(names: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

#[test]
fn item_14_prefix_wins_over_caller_forced_wins_over_prefix() {
    let (l, _) = list("master-slave:a.invalid,127.0.0.2,127.0.0.3", exact());
    // a.invalid is pending (unresolved): master-slave falls to .2 for any caller rotation.
    assert_eq!(names(&l, Rotation::RoundRobin, 3), ["127.0.0.2"; 3]);
    let forced = names_forced(&l, Rotation::RoundRobin, 2);
    assert_eq!(forced, ["127.0.0.2", "127.0.0.3"]);
}

fn names_forced(list: &upstreams::UpstreamList, rotation: Rotation, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| list.get_forced(rotation, b"").unwrap().name().to_owned())
        .collect()
}

#[test]
fn item_14_get_except_and_single_selectable() {
    let (l, clock) = list("127.0.0.1,127.0.0.2", exact());
    let a = l.find("127.0.0.1").unwrap();
    for r in Rotation::ALL {
        for key in [&b""[..], b"k1", b"k2"] {
            let got = l.get_except(&a, r, key);
            if r == Rotation::Sequential && got.is_none() {
                continue; // sequential's end-of-round None
            }
            assert_eq!(got.unwrap().name(), "127.0.0.2", "{r:?}");
        }
    }
    take_offline(&l, &clock, "127.0.0.2");
    let b = l.find("127.0.0.2").unwrap();
    // Only .1 is selectable: returned even though it is `except`.
    assert_eq!(
        l.get_except(&a, Rotation::RoundRobin, b"").unwrap().name(),
        "127.0.0.1"
    );
    assert_eq!(
        l.get_except(&b, Rotation::RoundRobin, b"").unwrap().name(),
        "127.0.0.1"
    );
    take_offline(&l, &clock, "127.0.0.1");
    assert!(
        l.get(Rotation::RoundRobin, b"").is_none(),
        "nothing selectable"
    );
}

#[test]
fn item_15_inflight_counts() {
    let (l, _) = list("127.0.0.1", exact());
    let up = l.find("127.0.0.1").unwrap();
    let a = l.get(Rotation::Random, b"").unwrap();
    let b = l.get(Rotation::Random, b"").unwrap();
    let c = l.get(Rotation::Random, b"").unwrap();
    assert_eq!(up.inflight(), 3);
    a.ok();
    b.fail(FailKind::Other, "x");
    assert_eq!(up.inflight(), 1);
    drop(c);
    assert_eq!(up.inflight(), 0);
    up.record_success(); // a bare health report does not touch the count
    assert_eq!(up.inflight(), 0);
    // Snapshot lookups do no accounting at all.
    let snap = l.snapshot();
    assert_eq!(
        snap.select(Rotation::Random, b"").unwrap().name(),
        "127.0.0.1"
    );
    assert_eq!(up.inflight(), 0);
}

#[test]
fn item_16_smooth_weighted_round_robin() {
    let (l, _) = list("a.x:1:5,b.x:1:1,c.x:1:1", exact());
    for up in l.upstreams() {
        l.set_addresses(&up, &["127.0.0.1".parse().unwrap()]);
    }
    let seq: String = names(&l, Rotation::RoundRobin, 7)
        .iter()
        .map(|n| n.chars().next().unwrap())
        .collect();
    assert_eq!(seq, "aabacaa");
    for (def, total, want) in [
        (
            "round-robin:127.0.0.1:1:3,127.0.0.2:1:2,127.0.0.3:1:1",
            12,
            vec![6, 4, 2],
        ),
        (
            "round-robin:127.0.0.1:1:10,127.0.0.2:1:1",
            1100,
            vec![1000, 100],
        ),
        (
            "round-robin:127.0.0.1:1:100,127.0.0.2:1:100,127.0.0.3:1:1",
            201,
            vec![100, 100, 1],
        ),
    ] {
        let (l, _) = list(def, exact());
        let c = counts(&names(&l, Rotation::RoundRobin, total));
        let got: Vec<usize> = l.upstreams().iter().map(|u| c[u.name()]).collect();
        assert_eq!(got, want, "{def}");
    }
}

/// Item 16 under concurrency: every thread walks its own copy of the cycle (one cursor per
/// thread), so each sees nginx's exact interleaving while others pick at the same time.
#[test]
fn item_16_each_thread_sees_the_exact_cycle() {
    let (l, _) = list(
        "round-robin:127.0.0.1:1:5,127.0.0.2:1:1,127.0.0.3:1:1",
        exact(),
    );
    let l = std::sync::Arc::new(l);
    // Two threads: stripes are handed out round-robin, so they get distinct ones unless six
    // other threads of this process make their first pick in between.
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || {
                (0..700)
                    .map(|_| {
                        let name = l.get(Rotation::RoundRobin, b"").unwrap().name().to_owned();
                        (b'a' + name.as_bytes()[8] - b'1') as char
                    })
                    .collect::<String>()
            })
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().unwrap(), "aabacaa".repeat(100));
    }
}

#[test]
fn item_16_offline_members_do_not_skew_the_others() {
    let (l, clock) = list("127.0.0.1:1:3,127.0.0.2:1:2,127.0.0.3:1:1", exact());
    take_offline(&l, &clock, "127.0.0.1:1");
    let c = counts(&names(&l, Rotation::RoundRobin, 300));
    assert_eq!((c["127.0.0.2:1"], c["127.0.0.3:1"]), (200, 100));
}

#[test]
fn item_17_all_weights_zero_plain_rotation() {
    let (l, _) = list("127.0.0.1,127.0.0.2,127.0.0.3", exact());
    let n = names(&l, Rotation::RoundRobin, 3000);
    assert_eq!(&n[..3], ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    assert!(counts(&n).values().all(|&c| c == 1000));
}

#[test]
fn item_18_weight_zero_only_when_weighted_are_offline() {
    let (l, clock) = list("127.0.0.1:1:5,127.0.0.2:1", exact());
    assert!(names(&l, Rotation::RoundRobin, 50)
        .iter()
        .all(|n| n == "127.0.0.1:1"));
    let a = l.find("127.0.0.1:1").unwrap();
    assert_eq!(
        l.get_except(&a, Rotation::RoundRobin, b"").unwrap().name(),
        "127.0.0.2:1"
    );
    take_offline(&l, &clock, "127.0.0.1:1");
    assert_eq!(names(&l, Rotation::RoundRobin, 3), ["127.0.0.2:1"; 3]);
}

#[test]
fn item_19_master_slave_priority_failover_and_return() {
    let (l, clock) = list("127.0.0.1:1:1,127.0.0.2:1:5,127.0.0.3:1:5", exact());
    assert_eq!(names(&l, Rotation::MasterSlave, 3), ["127.0.0.2:1"; 3]);
    take_offline(&l, &clock, "127.0.0.2:1");
    assert_eq!(names(&l, Rotation::MasterSlave, 2), ["127.0.0.3:1"; 2]);
    clock.advance(Duration::from_secs(61));
    assert_eq!(names(&l, Rotation::MasterSlave, 2), ["127.0.0.2:1"; 2]);
}

#[test]
fn item_20_master_slave_equal_priorities_first_in_config_order() {
    let (l, _) = list("127.0.0.1,127.0.0.2,127.0.0.3", exact());
    assert_eq!(names(&l, Rotation::MasterSlave, 3), ["127.0.0.1"; 3]);
}

#[test]
fn item_21_random_uniform_and_weighted() {
    let (l, _) = list("127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4", exact());
    let c = counts(&names(&l, Rotation::Random, 40_000));
    for v in c.values() {
        assert!((9_400..10_600).contains(v), "{c:?}");
    }
    let (l, _) = list("127.0.0.1:1:1,127.0.0.2:1:3", exact());
    let c = counts(&names(&l, Rotation::Random, 40_000));
    assert!((9_400..10_600).contains(&c["127.0.0.1:1"]), "{c:?}");
}

#[test]
fn item_22_p2c_prefers_lower_load() {
    let (l, _) = list("p2c:127.0.0.1,127.0.0.2", exact());
    let slow = l.find("127.0.0.1").unwrap();
    let fast = l.find("127.0.0.2").unwrap();
    slow.record_latency(0.100);
    fast.record_latency(0.001);
    let n = names(&l, Rotation::P2c, 100);
    assert!(n.iter().all(|n| n == "127.0.0.2"));
    // Held picks raise the load: with 100 in flight the fast one costs 101 × 1 ms > 100 ms.
    let held: Vec<_> = (0..95)
        .map(|_| l.get_forced(Rotation::P2c, b"").unwrap())
        .collect();
    assert!(held.iter().all(|p| p.name() == "127.0.0.2"));
    let more: Vec<_> = (0..10)
        .map(|_| l.get_forced(Rotation::P2c, b"").unwrap())
        .collect();
    assert!(more.iter().any(|p| p.name() == "127.0.0.1"));
}

#[test]
fn item_22_latency_ewma_figures() {
    let (l, clock) = list("127.0.0.1", exact());
    let up = l.find("127.0.0.1").unwrap();
    up.record_latency(1.0);
    up.record_latency(0.0);
    assert!((up.latency().unwrap().as_secs_f64() - 0.99).abs() < 1e-9);
    clock.advance(Duration::from_secs(60));
    up.record_latency(0.0);
    assert!((up.latency().unwrap().as_secs_f64() - 0.495).abs() < 1e-9);
    clock.advance(Duration::from_secs(600));
    up.record_latency(1.0);
    assert!((up.latency().unwrap().as_secs_f64() - 0.7475).abs() < 1e-9);
}

#[test]
fn item_23_spec_examples_rspamd_ring() {
    let limits = exact().with_hash_mode(HashMode::RspamdRing);
    let (l, clock) = list("127.0.0.1,127.0.0.2,127.0.0.3", limits.clone());
    let pick = |k: &str| {
        l.get(Rotation::Hashed, k.as_bytes())
            .unwrap()
            .name()
            .to_owned()
    };
    for (k, want) in [
        ("hello", "127.0.0.2"),
        ("test", "127.0.0.3"),
        ("user@example.com", "127.0.0.3"),
        ("key-1", "127.0.0.3"),
        ("key-2", "127.0.0.1"),
    ] {
        assert_eq!(pick(k), want, "{k}");
    }
    let two = l.find("127.0.0.2").unwrap();
    assert_eq!(
        l.get_except(&two, Rotation::Hashed, b"hello")
            .unwrap()
            .name(),
        "127.0.0.3"
    );
    take_offline(&l, &clock, "127.0.0.2");
    assert_eq!(pick("hello"), "127.0.0.3");
    assert_eq!(pick("key-2"), "127.0.0.1");
    assert_eq!(pick("test"), "127.0.0.3");

    let (l, _) = list(
        "127.0.0.1:11333,127.0.0.2:11333,127.0.0.3:11333,127.0.0.4:11333,127.0.0.5:11333",
        limits.clone(),
    );
    let got = spread(&l, "distribution-key-", 10_000);
    assert_eq!(got, [2258, 2149, 1780, 1792, 2021]);
    let (l, _) = list("127.0.0.1:11333:3,127.0.0.2:11333,127.0.0.3:11333", limits);
    assert_eq!(spread(&l, "weight-test-key-", 15_000), [9259, 2563, 3178]);
}

fn spread(l: &upstreams::UpstreamList, prefix: &str, n: usize) -> Vec<usize> {
    let c: Vec<String> = (0..n)
        .map(|i| {
            l.get(Rotation::Hashed, format!("{prefix}{i}").as_bytes())
                .unwrap()
                .name()
                .to_owned()
        })
        .collect();
    let c = counts(&c);
    l.upstreams()
        .iter()
        .map(|u| c.get(u.name()).copied().unwrap_or(0))
        .collect()
}

#[test]
fn item_23_empty_key_behaves_as_random() {
    let (l, _) = list("127.0.0.1,127.0.0.2", exact());
    let c = counts(
        &(0..1000)
            .map(|_| l.get(Rotation::Hashed, b"").unwrap().name().to_owned())
            .collect::<Vec<_>>(),
    );
    assert_eq!(c.len(), 2);
}

#[test]
fn item_23_balanced_moves_only_failed_keys_and_they_return() {
    let (l, clock) = list("127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5", exact());
    let keys: Vec<String> = (0..20_000).map(|i| format!("k{i}")).collect();
    let map = |l: &upstreams::UpstreamList| -> Vec<String> {
        keys.iter()
            .map(|k| {
                l.get(Rotation::Hashed, k.as_bytes())
                    .unwrap()
                    .name()
                    .to_owned()
            })
            .collect()
    };
    let before = map(&l);
    take_offline(&l, &clock, "127.0.0.3");
    let during = map(&l);
    let mut moved_to = HashMap::new();
    for (b, d) in before.iter().zip(&during) {
        if b == "127.0.0.3" {
            assert_ne!(d, "127.0.0.3");
            *moved_to.entry(d.clone()).or_insert(0usize) += 1;
        } else {
            assert_eq!(b, d, "a healthy upstream's key moved");
        }
    }
    // The orphaned keys spread over all four others.
    assert_eq!(moved_to.len(), 4, "{moved_to:?}");
    clock.advance(Duration::from_secs(61));
    assert_eq!(map(&l), before, "keys come back after revival");
}

#[test]
fn item_24_deterministic_across_lists() {
    let (a, _) = list("127.0.0.1,127.0.0.2,127.0.0.3", exact().with_seed(Some(1)));
    let (b, _) = list("127.0.0.1,127.0.0.2,127.0.0.3", exact().with_seed(Some(99)));
    for i in 0..1000 {
        let k = format!("key{i}");
        assert_eq!(
            a.get(Rotation::Hashed, k.as_bytes()).unwrap().name(),
            b.get(Rotation::Hashed, k.as_bytes()).unwrap().name()
        );
    }
    // Pinned: a change to the balanced mapping is a compatibility break.
    assert_eq!(
        a.get(Rotation::Hashed, b"hello").unwrap().name(),
        PINNED_HELLO
    );
}

/// The balanced mapping of "hello" over 127.0.0.1–3, pinned so that an accidental change of
/// the hash (which would reshard every deployment) fails a test.
const PINNED_HELLO: &str = "127.0.0.2";

#[test]
fn item_26_sequential_walks_then_none() {
    let (l, clock) = list("sequential:127.0.0.1,127.0.0.2,127.0.0.3", exact());
    let walk = |n: usize| -> Vec<Option<String>> {
        (0..n)
            .map(|_| l.get(Rotation::Random, b"").map(|p| p.name().to_owned()))
            .collect()
    };
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        walk(5),
        [
            s("127.0.0.1"),
            s("127.0.0.2"),
            s("127.0.0.3"),
            None,
            s("127.0.0.1")
        ]
    );
    take_offline(&l, &clock, "127.0.0.2");
    assert_eq!(walk(3), [s("127.0.0.3"), None, s("127.0.0.1")]);
}

#[test]
fn item_27_token_bucket() {
    let (l, _) = list("127.0.0.1,127.0.0.2", exact());
    let a = l.get_token_bucket(10240).unwrap();
    // The other one has fewer tokens in flight.
    let b = l.get_token_bucket(10240).unwrap();
    assert_ne!(a.name(), b.name());
    a.ok();
    b.ok();
}

/// An empty list (`Definition::empty`) answers `None` to every pick, and a reload can fill it.
#[test]
fn an_empty_list_picks_nothing() {
    let list = upstreams::UpstreamList::new(
        &upstreams::Definition::empty(),
        upstreams::Limits::default(),
    )
    .unwrap();
    assert!(list.is_empty());
    for rotation in [
        Rotation::RoundRobin,
        Rotation::Random,
        Rotation::MasterSlave,
        Rotation::Hashed,
        Rotation::Sequential,
        Rotation::P2c,
    ] {
        assert!(list.get(rotation, b"key").is_none(), "{rotation:?}");
        assert!(list.get_forced(rotation, b"").is_none(), "{rotation:?}");
    }
    assert!(list.get_token_bucket(1).is_none());
    list.reconfigure(&upstreams::Definition::parse("127.0.0.1", 80).unwrap());
    assert_eq!(
        list.get(Rotation::RoundRobin, b"").unwrap().name(),
        "127.0.0.1"
    );
}

/// `bounded`: one hot key held 100 times spreads over the members (each at most
/// ⌈1.25 × in flight / 10⌉), where `balanced` puts all 100 on one; released, the key goes
/// home again.
#[test]
fn bounded_spreads_a_hot_key_and_returns_it_home() {
    let def = (1..=10)
        .map(|i| format!("10.0.0.{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let (bounded, _) = list(&def, exact().with_hash_mode(HashMode::Bounded));
    let (plain, _) = list(&def, exact());
    let home = plain
        .get(Rotation::Hashed, b"hot")
        .unwrap()
        .name()
        .to_owned();
    assert_eq!(bounded.get(Rotation::Hashed, b"hot").unwrap().name(), home);
    let held: Vec<_> = (0..100)
        .map(|_| bounded.get(Rotation::Hashed, b"hot").unwrap())
        .collect();
    let most = bounded
        .upstreams()
        .iter()
        .map(|u| u.inflight())
        .max()
        .unwrap();
    assert!(most <= 13, "{most}");
    let used = bounded
        .upstreams()
        .iter()
        .filter(|u| u.inflight() > 0)
        .count();
    assert!(used >= 8, "{used}");
    let at_home = bounded.find(&home).unwrap().inflight();
    assert!(at_home >= 10, "{at_home}");
    drop(held);
    assert_eq!(bounded.get(Rotation::Hashed, b"hot").unwrap().name(), home);
    let plain_held: Vec<_> = (0..100)
        .map(|_| plain.get(Rotation::Hashed, b"hot").unwrap())
        .collect();
    assert_eq!(plain.find(&home).unwrap().inflight(), 100);
    drop(plain_held);
}

/// `balance_factor` must be above 1; the error names it.
#[test]
fn bounded_balance_factor_is_checked() {
    let err = upstreams::Limits::default()
        .with_balance_factor(1.0)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("balance_factor"), "{err}");
    assert!(upstreams::Limits::default()
        .with_balance_factor(f64::NAN)
        .validate()
        .is_err());
}

/// `max_inflight` (nginx's `max_conns`): a full upstream is skipped like a busy one, a hashed
/// key walks on from a full home, nothing is picked when all are full, and a released slot is
/// taken again; the limit changes with `set_limits`.
#[test]
fn max_inflight_skips_full_upstreams() {
    let limits = exact().with_max_inflight(2);
    let (l, _) = list("10.0.0.1,10.0.0.2,10.0.0.3", limits.clone());
    for rotation in [
        Rotation::RoundRobin,
        Rotation::P2c,
        Rotation::Random,
        Rotation::Hashed,
    ] {
        let held: Vec<_> = (0..6).map(|_| l.get(rotation, b"k").unwrap()).collect();
        assert!(
            l.upstreams().iter().all(|u| u.inflight() == 2),
            "{rotation}"
        );
        assert!(l.get(rotation, b"k").is_none(), "{rotation}");
        drop(held);
    }
    // A hashed key's home full: the key goes elsewhere, and comes back once a slot frees.
    let home = l.get(Rotation::Hashed, b"user").unwrap().name().to_owned();
    let a = l.get(Rotation::Hashed, b"user").unwrap();
    let b = l.get(Rotation::Hashed, b"user").unwrap();
    assert_eq!((a.name(), b.name()), (home.as_str(), home.as_str()));
    let c = l.get(Rotation::Hashed, b"user").unwrap();
    assert_ne!(c.name(), home);
    drop(a);
    assert_eq!(l.get(Rotation::Hashed, b"user").unwrap().name(), home);
    drop((b, c));
    // Lifted at runtime.
    l.set_limits(limits.with_max_inflight(0)).unwrap();
    let held: Vec<_> = (0..9)
        .map(|_| l.get(Rotation::RoundRobin, b"").unwrap())
        .collect();
    assert_eq!(held.len(), 9);
}

#[test]
fn get_excluding_never_repeats_a_tried_upstream() {
    use std::sync::Arc;
    use upstreams::Upstream;
    for rotation in Rotation::ALL {
        let (list, _) = list(
            "10.0.0.1:1:3,10.0.0.2:1,10.0.0.3:1:2,10.0.0.4:1,10.0.0.5:1",
            exact(),
        );
        for key in [&b"k1"[..], b"other", b"x"] {
            let mut tried: Vec<Arc<Upstream>> = Vec::new();
            while let Some(p) = list.get_excluding(&tried, rotation, key) {
                assert!(
                    !tried.iter().any(|t| Arc::ptr_eq(t, p.upstream())),
                    "{rotation:?} repeated {}",
                    p.name()
                );
                tried.push(Arc::clone(p.upstream()));
                p.ok();
            }
            assert_eq!(tried.len(), 5, "{rotation:?} tried every upstream once");
        }
    }
}

#[test]
fn get_excluding_keeps_a_hashed_key_on_its_probe_sequence() {
    let (list, _) = list("hash:10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4", exact());
    let home = list.get(Rotation::Hashed, b"key").expect("home");
    let second = list
        .get_except(home.upstream(), Rotation::Hashed, b"key")
        .expect("2nd");
    let by_slice = list
        .get_excluding(&[home.upstream().clone()], Rotation::Hashed, b"key")
        .expect("2nd");
    assert_eq!(second.name(), by_slice.name());
    assert!(list
        .get_excluding::<&upstreams::Upstream>(&[], Rotation::Hashed, b"key")
        .is_some());
}
