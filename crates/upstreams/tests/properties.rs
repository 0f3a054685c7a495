//! Property tests of the selection invariants (STYLE.md "Tests").

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use upstreams::{FailKind, HashMode, Limits, Rotation, UpstreamList};

/// Limits where one failure takes an upstream offline and nothing revives during a case.
fn instant() -> Limits {
    common::exact()
        .with_max_consecutive_errors(1)
        .with_revive_time(Duration::from_secs(1_000_000))
}

fn definition(weights: &[u16]) -> String {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!("10.0.{}.{}:80:{w}", i / 250, i % 250 + 1))
        .collect::<Vec<_>>()
        .join(",")
}

fn set_down(list: &UpstreamList, down: &[bool]) {
    for (up, &d) in list.upstreams().iter().zip(down) {
        if d && up.is_alive() {
            up.record_failure(FailKind::Other, "prop");
        }
    }
}

fn mapping(list: &UpstreamList, keys: usize) -> Vec<String> {
    (0..keys)
        .map(|k| {
            list.get(Rotation::Hashed, format!("key-{k}").as_bytes())
                .unwrap()
                .name()
                .to_owned()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No rotation returns an offline upstream while an alive one exists.
    #[test]
    fn prop_never_offline_while_alive_exists(
        weights in proptest::collection::vec(0u16..5, 2..12),
        down in proptest::collection::vec(any::<bool>(), 12),
        mode in prop_oneof![Just(HashMode::Balanced), Just(HashMode::RspamdRing)],
    ) {
        let (list, _) = common::list(&definition(&weights), instant().with_hash_mode(mode));
        let mut down = down[..weights.len()].to_vec();
        down[0] = false; // keep one alive
        set_down(&list, &down);
        for rotation in Rotation::ALL {
            for k in 0..40 {
                let key = format!("k{k}");
                if let Some(p) = list.get_forced(rotation, key.as_bytes()) {
                    prop_assert!(p.is_alive(), "{rotation:?} returned {}", p.name());
                } else {
                    prop_assert_eq!(rotation, Rotation::Sequential);
                }
            }
        }
    }

    /// The balanced mapping depends only on the set of offline upstreams: after any sequence of
    /// failures and revivals it equals a fresh list's with the same set down.
    #[test]
    fn prop_balanced_is_a_function_of_the_down_set(
        weights in proptest::collection::vec(0u16..4, 2..10),
        flips in proptest::collection::vec(0usize..10, 1..30),
    ) {
        let def = definition(&weights);
        let limits = instant().with_revive_time(Duration::from_secs(1));
        let (list, clock) = common::list(&def, limits);
        let n = weights.len();
        let mut down = vec![false; n];
        for f in flips {
            let i = f % n;
            if down[i] {
                // Revive everything due, then re-fail the ones that must stay down.
                clock.advance(Duration::from_secs(2));
                let _ = list.get(Rotation::Random, b"");
                down[i] = false;
            } else if down.iter().filter(|d| !**d).count() > 1 {
                down[i] = true;
            }
            set_down(&list, &down);
        }
        let (fresh, _) = common::list(&def, instant());
        set_down(&fresh, &down);
        prop_assert_eq!(mapping(&list, 500), mapping(&fresh, 500));
    }

    /// Taking one upstream down moves exactly its keys.
    #[test]
    fn prop_balanced_moves_only_the_failed_upstreams_keys(
        weights in proptest::collection::vec(0u16..4, 2..10),
        victim in 0usize..10,
    ) {
        let (list, _) = common::list(&definition(&weights), instant());
        let victim = victim % weights.len();
        let before = mapping(&list, 1000);
        let name = list.upstreams()[victim].name().to_owned();
        list.upstreams()[victim].record_failure(FailKind::Other, "prop");
        let after = mapping(&list, 1000);
        for (b, a) in before.iter().zip(&after) {
            if *b == name { prop_assert_ne!(a, &name); } else { prop_assert_eq!(a, b); }
        }
    }

    /// `bounded`, any interleaving of picks and releases: no pick lands on an upstream at or
    /// over `c × (in flight + 1) × its weight share`, and whenever the `balanced` owner of
    /// the key is under that bound the pick is the owner.
    #[test]
    fn bounded_never_exceeds_the_bound(
        weights in proptest::collection::vec(0u16..5, 2..12),
        factor in 1.05f64..3.0,
        ops in proptest::collection::vec((any::<bool>(), 0u32..40, any::<u16>()), 1..400),
    ) {
        let def = definition(&weights);
        let limits = instant().with_hash_mode(HashMode::Bounded).with_balance_factor(factor);
        let (list, _) = common::list(&def, limits);
        let (plain, _) = common::list(&def, instant());
        let w: Vec<f64> = weights.iter().map(|&w| f64::from(w.max(1))).collect();
        let total_w: f64 = w.iter().sum();
        let mut held: Vec<upstreams::Picked> = Vec::new();
        for (pick, key, victim) in ops {
            if !pick && !held.is_empty() {
                held.swap_remove(usize::from(victim) % held.len()).ok();
                continue;
            }
            let key = format!("key-{key}");
            let in_flight = held.len() as f64;
            let home = plain.snapshot().select(Rotation::Hashed, key.as_bytes()).unwrap().index();
            let ups = list.upstreams();
            let bound = |i: usize| (factor * (in_flight + 1.0) * w[i] / total_w).ceil();
            let p = list.get(Rotation::Hashed, key.as_bytes()).unwrap();
            let i = p.index();
            prop_assert!(f64::from(ups[i].inflight()) <= bound(i),
                "{} holds {} > bound {}", p.name(), ups[i].inflight(), bound(i));
            if f64::from(ups[home].inflight() - u32::from(home == i)) + 1.0 <= bound(home) {
                prop_assert_eq!(i, home);
            }
            held.push(p);
        }
    }

    /// Round-robin gives every member exactly its weight per cycle.
    #[test]
    fn prop_round_robin_exact_per_cycle(weights in proptest::collection::vec(1u16..20, 1..8)) {
        let (list, _) = common::list(&definition(&weights), instant());
        let g = weights.iter().fold(0u16, |a, &b| gcd(a, b));
        let total: usize = weights.iter().map(|&w| usize::from(w / g)).sum();
        let mut counts = HashMap::new();
        for _ in 0..total {
            *counts.entry(list.get(Rotation::RoundRobin, b"").unwrap().name().to_owned()).or_insert(0usize) += 1;
        }
        for (up, w) in list.upstreams().iter().zip(&weights) {
            prop_assert_eq!(counts.get(up.name()).copied().unwrap_or(0), usize::from(w / g));
        }
    }
}

fn gcd(a: u16, b: u16) -> u16 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Balanced shares follow the weights (1:2:3:4) within sampling error over 400 000 keys.
#[test]
fn balanced_shares_follow_weights() {
    let (list, _) = common::list(&definition(&[1, 2, 3, 4]), instant());
    let mut counts = HashMap::new();
    let n = 400_000;
    for k in 0..n {
        let name = list
            .get(Rotation::Hashed, format!("w{k}").as_bytes())
            .unwrap()
            .name()
            .to_owned();
        *counts.entry(name).or_insert(0usize) += 1;
    }
    for (up, w) in list.upstreams().iter().zip([1.0, 2.0, 3.0, 4.0]) {
        let share = counts[up.name()] as f64 / n as f64;
        assert!((share - w / 10.0).abs() < 0.004, "{} {share}", up.name());
    }
}
