//! Drives a list with arbitrary pick / ok / fail / release / clock / membership / limits operations
//! and checks the invariants after each step: counters agree with states, nothing offline is
//! picked while something is alive, in-flight counts match the handles held, and each
//! transition is reported once (single-threaded, so online/offline alternate per upstream).
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use upstreams::{
    Definition, Event, Events, FailKind, Limits, ManualClock, Picked, Rotation, State, UpstreamList,
};

#[derive(Debug, Arbitrary)]
enum Op {
    Pick { rotation: u8, key: u8 },
    PickExcept { held: u8, rotation: u8 },
    Ok { held: u8 },
    Fail { held: u8, address: bool },
    Release { held: u8 },
    FailBare { upstream: u8 },
    Advance { millis: u16 },
    Reconfigure { mask: u8 },
    MarkOffline { upstream: u8 },
    SetLimits {
        max_errors: u8,
        consecutive: u8,
        revive_secs: u8,
        slow_start: bool,
    },
}

const POOL: [&str; 6] = [
    "10.0.0.1",
    "10.0.0.2:80:3",
    "10.0.0.3:80:1",
    "[::1]:53",
    "/run/x.sock",
    "10.0.0.4",
];

fn definition(mask: u8) -> Definition {
    let chosen: Vec<&str> = POOL
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, e)| *e)
        .collect();
    let text = if chosen.is_empty() {
        POOL[0].to_owned()
    } else {
        chosen.join(",")
    };
    Definition::parse(&text, 11333).expect("pool entries parse")
}

fuzz_target!(|ops: Vec<Op>| {
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1000)));
    let limits = Limits::default()
        .with_seed(Some(1))
        .with_max_errors(2)
        .with_error_time(Duration::from_secs(1))
        .with_revive_time(Duration::from_secs(5))
        .with_max_consecutive_errors(3);
    let list =
        UpstreamList::with_clock(&definition(0b11_1111), limits, clock.clone()).expect("list");
    let balance: Arc<Mutex<HashMap<String, i32>>> = Arc::default();
    let sink = balance.clone();
    let both: Events = [Event::Online, Event::Offline].into_iter().collect();
    list.add_watcher(both, move |event, up, _| {
        let mut b = sink.lock().expect("lock");
        let v = b.entry(up.name().to_owned()).or_insert(0);
        *v += if event == Event::Online { 1 } else { -1 };
        // Starting alive at 0: offline → -1, online → 0. Anything else is a double report.
        assert!(
            (-1..=0).contains(v),
            "{event} reported twice for {}",
            up.name()
        );
    });
    let mut held: Vec<Picked> = Vec::new();
    for op in ops.into_iter().take(200) {
        match op {
            Op::Pick { rotation, key } => {
                let rotation = Rotation::ALL[rotation as usize % Rotation::ALL.len()];
                let alive_before = list.alive_count();
                if let Some(p) = list.get_forced(rotation, &[key]) {
                    if alive_before > 0 && p.state() != State::Probing {
                        assert_eq!(
                            p.state(),
                            State::Alive,
                            "picked {} while something was alive",
                            p.name()
                        );
                    }
                    held.push(p);
                }
            }
            Op::PickExcept { held: i, rotation } => {
                if let Some(except) = held
                    .get(i as usize % held.len().max(1))
                    .map(|p| p.upstream().clone())
                {
                    let rotation = Rotation::ALL[rotation as usize % Rotation::ALL.len()];
                    if let Some(p) = list.get_except(&except, rotation, b"k") {
                        held.push(p);
                    }
                }
            }
            Op::Ok { held: i } if !held.is_empty() => {
                held.swap_remove(i as usize % held.len()).ok()
            }
            Op::Fail { held: i, address } if !held.is_empty() => {
                let kind = if address {
                    FailKind::Address
                } else {
                    FailKind::Other
                };
                held.swap_remove(i as usize % held.len()).fail(kind, "fuzz");
            }
            Op::Release { held: i } if !held.is_empty() => {
                held.swap_remove(i as usize % held.len()).release()
            }
            Op::FailBare { upstream } => {
                let ups = list.upstreams();
                ups[upstream as usize % ups.len()].record_failure(FailKind::Other, "fuzz");
            }
            Op::Advance { millis } => clock.advance(Duration::from_millis(u64::from(millis) * 10)),
            Op::Reconfigure { mask } => {
                list.reconfigure(&definition(mask));
            }
            Op::MarkOffline { upstream } => {
                let ups = list.upstreams();
                ups[upstream as usize % ups.len()].mark_offline(Duration::from_secs(3));
            }
            Op::SetLimits {
                max_errors,
                consecutive,
                revive_secs,
                slow_start,
            } => {
                let next = list
                    .limits()
                    .as_ref()
                    .clone()
                    .with_max_errors(u32::from(max_errors % 8))
                    .with_max_consecutive_errors(u32::from(consecutive % 6))
                    .with_revive_time(Duration::from_secs(1 + u64::from(revive_secs % 10)))
                    .with_slow_start(Duration::from_secs(if slow_start { 2 } else { 0 }));
                let kept = list.set_limits(next).expect("valid limits");
                assert!(kept.is_empty(), "only live limits changed: {kept:?}");
            }
            _ => {}
        }
        // Counters agree with states.
        let ups = list.upstreams();
        let alive = ups.iter().filter(|u| u.is_alive()).count();
        assert_eq!(list.alive_count(), alive, "alive counter drifted: {ups:?}");
        // In-flight counts match the handles held (members of the current snapshot).
        for up in &ups {
            let mine = held
                .iter()
                .filter(|p| Arc::ptr_eq(p.upstream(), up))
                .count();
            assert_eq!(
                up.inflight() as usize,
                mine,
                "in-flight of {} drifted",
                up.name()
            );
        }
    }
});
