//! SPEC.md item 41: SRV membership in the core (the DNS shell feeds it answers).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::{exact, list, record};
use upstreams::{FailKind, Rotation, SrvTarget, State};

fn target(name: &str, port: u16, weight: u16, priority: u16) -> SrvTarget {
    SrvTarget {
        priority,
        weight,
        port,
        target: name.to_owned(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn item_41_srv_targets_join_stay_and_drain() {
    let (l, _) = list("service=fuzzy+example.com", exact());
    let log = record(&l);
    let placeholder = l.upstreams()[0].clone();
    assert_eq!(placeholder.state(), State::Pending);
    assert!(l.get(Rotation::RoundRobin, b"").is_none());

    assert_eq!(l.srv_entries(), [(0, "_fuzzy._tcp.example.com".to_owned())]);
    let change = l.set_srv_targets(
        placeholder.group(),
        &[
            target("a.example.", 1001, 5, 10),
            target("b.example.", 1002, 0, 20),
        ],
    );
    assert_eq!(change.added, ["a.example:1001", "b.example:1002"]);
    assert!(change.removed.is_empty());
    let names: Vec<String> = l.upstreams().iter().map(|u| u.name().to_owned()).collect();
    assert_eq!(names, ["a.example:1001", "b.example:1002"]);
    let weights: Vec<u16> = l.upstreams().iter().map(|u| u.weight()).collect();
    assert_eq!(weights, [5, 1], "weight = max(SRV weight, 1)");
    for up in l.upstreams() {
        assert_eq!(up.state(), State::Pending, "targets need their own A/AAAA");
        l.set_addresses(&up, &[ip("10.0.0.1")]);
    }
    // SRV priority: the lower one is the master.
    for _ in 0..3 {
        assert_eq!(
            l.get(Rotation::MasterSlave, b"").unwrap().name(),
            "a.example:1001"
        );
    }
    let a = l.find("a.example:1001").unwrap();
    a.record_failure(FailKind::Other, "x");

    // b disappears, c joins; a stays with its errors.
    let change = l.set_srv_targets(
        a.group(),
        &[
            target("c.example.", 1003, 1, 20),
            target("a.example.", 1001, 5, 10),
        ],
    );
    assert_eq!(change.added, ["c.example:1003"]);
    assert_eq!(change.removed, ["b.example:1002"]);
    assert_eq!(a.errors(), 1, "a kept its error count");
    assert!(std::sync::Arc::ptr_eq(
        &a,
        &l.find("a.example:1001").unwrap()
    ));
    let b_events: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.contains("b.example"))
        .cloned()
        .collect();
    assert_eq!(b_events.last().unwrap(), "offline b.example:1002 0");
    assert!(l.find("b.example:1002").is_none());
    let c = l.find("c.example:1003").unwrap();
    l.set_addresses(&c, &[ip("10.0.0.3")]);
    for _ in 0..20 {
        let p = l.get(Rotation::RoundRobin, b"").unwrap();
        assert_ne!(
            p.name(),
            "b.example:1002",
            "a drained member is never returned"
        );
    }
    assert_eq!(l.alive_count(), 2);
    // An empty answer keeps the members.
    assert!(l.set_srv_targets(a.group(), &[]).is_empty());
    assert_eq!(l.upstreams().len(), 2);
    // The same answer in another order changes nothing.
    assert!(l
        .set_srv_targets(
            a.group(),
            &[
                target("a.example", 1001, 5, 10),
                target("c.example", 1003, 1, 20)
            ]
        )
        .is_empty());
}

#[test]
fn item_41_other_entries_keep_their_place() {
    let (l, _) = list("127.0.0.1,service=x+example.com,127.0.0.2", exact());
    let srv = l.upstreams()[1].clone();
    l.set_srv_targets(srv.group(), &[target("t.example", 7, 1, 0)]);
    let names: Vec<String> = l.upstreams().iter().map(|u| u.name().to_owned()).collect();
    assert_eq!(names, ["127.0.0.1", "t.example:7", "127.0.0.2"]);
    let idx: Vec<usize> = l.upstreams().iter().map(|u| u.index()).collect();
    assert_eq!(idx, [0, 1, 2]);
    // get_except still works after the snapshot changed.
    let first = l.find("127.0.0.1").unwrap();
    assert_eq!(
        l.get_except(&first, Rotation::RoundRobin, b"")
            .unwrap()
            .name(),
        "127.0.0.2"
    );
}

#[test]
fn reconfigure_keeps_health_of_upstreams_that_stay() {
    let (l, clock) = list(
        "127.0.0.1,127.0.0.2,127.0.0.3,service=x+example.com",
        exact(),
    );
    let events = record(&l);
    let srv_group = l.srv_entries()[0].0;
    l.set_srv_targets(srv_group, &[target("t.example", 7, 1, 0)]);
    let t = l.find("t.example:7").unwrap();
    l.set_addresses(&t, &[ip("10.0.0.7")]);
    common::take_offline(&l, &clock, "127.0.0.2");
    let two = l.find("127.0.0.2").unwrap();
    let def = upstreams::Definition::parse(
        "round-robin:service=x+example.com,127.0.0.2,127.0.0.4",
        11333,
    )
    .unwrap();
    let change = l.reconfigure(&def);
    assert_eq!(change.added, ["127.0.0.4"]);
    assert_eq!(change.removed, ["127.0.0.1", "127.0.0.3"]);
    assert_eq!(l.rotation(), Some(Rotation::RoundRobin));
    let names: Vec<String> = l.upstreams().iter().map(|u| u.name().to_owned()).collect();
    assert_eq!(names, ["t.example:7", "127.0.0.2", "127.0.0.4"]);
    assert!(
        std::sync::Arc::ptr_eq(&two, &l.find("127.0.0.2").unwrap()),
        "same upstream, same health"
    );
    assert!(!two.is_alive(), "still offline after the reload");
    assert_eq!(l.srv_entries(), [(0, "_x._tcp.example.com".to_owned())]);
    assert_eq!(l.find("t.example:7").unwrap().group(), 0);
    assert_eq!(l.alive_count(), 2);
    let ev = events.lock().unwrap().clone();
    assert!(ev.contains(&"offline 127.0.0.1 0".to_owned()), "{ev:?}");
    assert!(ev.contains(&"online 127.0.0.4 0".to_owned()), "{ev:?}");
    for _ in 0..10 {
        let p = l.get(Rotation::Random, b"").unwrap();
        assert!(
            ["t.example:7", "127.0.0.4"].contains(&p.name()),
            "{}",
            p.name()
        );
    }
    // SRV answers after the reload land in the moved group.
    let change = l.set_srv_targets(0, &[target("u.example", 8, 1, 0)]);
    assert_eq!(change.added, ["u.example:8"]);
    assert_eq!(change.removed, ["t.example:7"]);
}

#[test]
fn a_snapshot_held_across_a_reload_never_picks_a_drained_member() {
    // The reload adds more members than it drains, so the list-wide alive count alone would
    // say "everything in this old snapshot is alive".
    let (l, _) = list("127.0.0.1,127.0.0.2", exact());
    let old = l.snapshot();
    let def =
        upstreams::Definition::parse("127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5", 11333).unwrap();
    let change = l.reconfigure(&def);
    assert_eq!(change.removed, ["127.0.0.1"]);
    assert_eq!(l.alive_count(), 4);
    for rotation in [
        Rotation::RoundRobin,
        Rotation::Random,
        Rotation::MasterSlave,
        Rotation::Hashed,
        Rotation::Sequential,
        Rotation::P2c,
    ] {
        // Sequential answers nothing after running off the end (SPEC.md), then starts over.
        let mut picks = 0;
        for k in 0..64u32 {
            if let Some(picked) = old.select(rotation, &k.to_le_bytes()) {
                assert_eq!(
                    picked.name(),
                    "127.0.0.2",
                    "{rotation:?} picked a drained member"
                );
                picks += 1;
            }
        }
        assert!(picks >= 32, "{rotation:?}: {picks} picks");
    }
}

/// A reload that changes only an entry's weight (or master-slave priority) keeps the
/// upstream: an offline one stays offline with its errors, in-flight picks stay counted, and
/// the new weight is what the rotation uses.
#[test]
fn reconfigure_with_a_new_weight_keeps_the_upstream() {
    let (l, clock) = list(
        "round-robin:127.0.0.1:80:1,127.0.0.2:80:1,127.0.0.3:80:1",
        exact(),
    );
    common::take_offline(&l, &clock, "127.0.0.2:80");
    let two = l.find("127.0.0.2:80").unwrap();
    let one = l.find("127.0.0.1:80").unwrap();
    let held = l.get(Rotation::RoundRobin, b"").unwrap();
    let held_name = held.name().to_owned();
    let def = upstreams::Definition::parse(
        "round-robin:127.0.0.1:80:5,127.0.0.2:80:3,127.0.0.3:80:1",
        0,
    )
    .unwrap();
    let change = l.reconfigure(&def);
    assert!(
        change.added.is_empty() && change.removed.is_empty(),
        "{change:?}"
    );
    assert_eq!(change.reweighted, ["127.0.0.1:80", "127.0.0.2:80"]);
    assert!(std::sync::Arc::ptr_eq(
        &two,
        &l.find("127.0.0.2:80").unwrap()
    ));
    assert!(
        !two.is_alive(),
        "a dead backend came back alive through a weight change"
    );
    assert!(std::sync::Arc::ptr_eq(
        &one,
        &l.find("127.0.0.1:80").unwrap()
    ));
    assert_eq!(one.weight(), 5);
    assert_eq!(
        l.find(&held_name).unwrap().inflight(),
        1,
        "in-flight pick lost"
    );
    held.ok();
    // 127.0.0.2 is out: the rotation is 5 : 1 between the other two.
    let mut ones = 0;
    for _ in 0..60 {
        let p = l.get(Rotation::RoundRobin, b"").unwrap();
        ones += usize::from(p.name() == "127.0.0.1:80");
        p.ok();
    }
    assert_eq!(ones, 50);
}

/// Typed entries build the same members a definition would, and `update` swaps the
/// membership keeping the health of what stays (issue #17).
#[test]
fn typed_entries_and_update() {
    use upstreams::{Definition, Entry};
    let parsed = Definition::parse(
        "10.0.0.1:80:3,[2001:db8::5]:7248,redis.example:6379,/run/x.sock",
        0,
    )
    .unwrap();
    let typed = [
        Entry::socket("10.0.0.1:80".parse().unwrap()).with_weight(3),
        Entry::socket("[2001:db8::5]:7248".parse().unwrap()),
        Entry::named("redis.example", 6379).unwrap(),
        Entry::unix("/run/x.sock").unwrap(),
    ];
    for (t, p) in typed.iter().zip(parsed.entries()) {
        assert_eq!(t.name(), p.name());
        assert_eq!(t.host(), p.host());
        assert_eq!(
            (t.port(), t.weight()),
            (p.port(), p.weight()),
            "{}",
            p.name()
        );
    }
    assert!(Entry::named("bad host!", 80).is_err());
    assert!(Entry::unix("relative.sock").is_err());

    let (l, clock) = list("round-robin:10.0.0.1:80,10.0.0.2:80", exact());
    common::take_offline(&l, &clock, "10.0.0.2:80");
    let change = l.update([
        Entry::socket("10.0.0.2:80".parse().unwrap()).with_weight(5),
        Entry::socket("10.0.0.3:80".parse().unwrap()),
    ]);
    assert_eq!(change.added, ["10.0.0.3:80"]);
    assert_eq!(change.removed, ["10.0.0.1:80"]);
    assert_eq!(change.reweighted, ["10.0.0.2:80"]);
    assert!(!l.find("10.0.0.2:80").unwrap().is_alive(), "health kept");
    assert_eq!(l.rotation(), Some(Rotation::RoundRobin), "rotation kept");
}

/// An operator's drain: no new picks while drained (picks in flight go on), health reports
/// leave it drained, undrain brings it back; a non-member or a removed upstream is refused.
#[test]
fn drain_and_undrain_by_an_operator() {
    let (l, _) = common::list("10.0.0.1,10.0.0.2", common::exact());
    let log = common::record(&l);
    let a = l.upstreams()[0].clone();
    let b_name = l.upstreams()[1].name().to_owned();
    let held = l.get(Rotation::RoundRobin, b"").unwrap();
    assert!(l.drain(&a));
    assert!(!l.drain(&a), "drained already");
    assert_eq!(a.state(), upstreams::State::Draining);
    assert_eq!(l.alive_count(), 1);
    for _ in 0..10 {
        assert_eq!(l.get(Rotation::RoundRobin, b"").unwrap().name(), b_name);
    }
    a.record_failure(upstreams::FailKind::Other, "ignored while drained");
    a.record_success();
    assert_eq!(a.state(), upstreams::State::Draining);
    drop(held);
    assert!(l.undrain(&a));
    assert!(!l.undrain(&a));
    assert_eq!(l.alive_count(), 2);
    let names: std::collections::HashSet<String> = (0..4)
        .map(|_| l.get(Rotation::RoundRobin, b"").unwrap().name().to_owned())
        .collect();
    assert_eq!(names.len(), 2);
    let events = log.lock().unwrap().clone();
    assert!(
        events.iter().any(|e| e.starts_with("offline")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.starts_with("online")), "{events:?}");
    // Not a member of this list.
    let (other, _) = common::list("10.0.0.9", common::exact());
    assert!(!l.drain(&other.upstreams()[0]));
    // A name not resolved yet goes back to waiting for its addresses, not to alive.
    let (named, _) = common::list("cache.internal,10.0.0.1", common::exact());
    let pending = named.upstreams()[0].clone();
    assert_eq!(pending.state(), upstreams::State::Pending);
    assert!(named.drain(&pending));
    assert!(named.undrain(&pending));
    assert_eq!(pending.state(), upstreams::State::Pending);
    assert_eq!(named.alive_count(), 1);
}

/// `UpstreamList::builder()` gives the list the same definition string would: same names,
/// weights, rotation and key mapping.
#[test]
fn builder_matches_the_parsed_definition() {
    let parsed = upstreams::UpstreamList::parse(
        "round-robin:10.0.0.1:80:3,10.0.0.2:80,cache.internal:6379",
        80,
        exact(),
    )
    .unwrap();
    let built = upstreams::UpstreamList::builder()
        .rotation(Rotation::RoundRobin)
        .entry(upstreams::Entry::socket("10.0.0.1:80".parse().unwrap()).with_weight(3))
        .entries([
            upstreams::Entry::socket("10.0.0.2:80".parse().unwrap()),
            upstreams::Entry::named("cache.internal", 6379).unwrap(),
        ])
        .limits(exact())
        .build()
        .unwrap();
    let describe = |l: &upstreams::UpstreamList| {
        l.upstreams()
            .iter()
            .map(|u| (u.name().to_owned(), u.weight(), u.state()))
            .collect::<Vec<_>>()
    };
    assert_eq!(describe(&built), describe(&parsed));
    assert_eq!(built.rotation(), parsed.rotation());
    for k in 0..200 {
        let key = format!("k{k}");
        let a = built
            .snapshot()
            .select(Rotation::Hashed, key.as_bytes())
            .map(|u| u.name().to_owned());
        let b = parsed
            .snapshot()
            .select(Rotation::Hashed, key.as_bytes())
            .map(|u| u.name().to_owned());
        assert_eq!(a, b);
    }
}

/// Discovery changes (`Change::Insert` / `Remove`, tower's `discover::Change` shape) drive a
/// list from a channel: joins, a weight change that keeps health, a removal that drains.
#[test]
fn discovery_changes_from_a_channel() {
    use upstreams::{Change, Entry};
    let (l, _) = list("10.0.0.1:80", exact().with_max_consecutive_errors(0));
    let (tx, rx) = std::sync::mpsc::channel::<Change>();
    let socket = |s: &str| Entry::socket(s.parse().unwrap());
    // A source reports, a task applies what arrived since its last turn.
    tx.send(Change::Insert(socket("10.0.0.2:80"))).unwrap();
    tx.send(Change::Insert(socket("10.0.0.3:80"))).unwrap();
    let change = l.apply(rx.try_iter());
    assert_eq!(change.added, ["10.0.0.2:80", "10.0.0.3:80"]);
    assert_eq!(l.len(), 3);
    // Health survives a weight change.
    let b = l.find("10.0.0.2:80").unwrap();
    b.record_failure(FailKind::Other, "one error");
    tx.send(Change::Insert(socket("10.0.0.2:80").with_weight(5)))
        .unwrap();
    let change = l.apply(rx.try_iter());
    assert_eq!(change.reweighted, ["10.0.0.2:80"]);
    let b2 = l.find("10.0.0.2:80").unwrap();
    assert!(std::sync::Arc::ptr_eq(&b, &b2));
    assert_eq!(b2.errors(), 1);
    assert_eq!(b2.weight(), 5);
    // A removal drains; an unknown name is ignored.
    tx.send(Change::Remove("10.0.0.1:80".into())).unwrap();
    tx.send(Change::Remove("nope".into())).unwrap();
    let gone = l.find("10.0.0.1:80").unwrap();
    let change = l.apply(rx.try_iter());
    assert_eq!(change.removed, ["10.0.0.1:80"]);
    assert_eq!(gone.state(), State::Draining);
    assert_eq!(l.len(), 2);
    assert!(l.apply(rx.try_iter()).is_empty());
}

#[test]
fn per_upstream_values_follow_membership() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use upstreams::{Change, Entry};

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    struct Client(String);
    impl Client {
        fn new(name: &str) -> Self {
            LIVE.fetch_add(1, Ordering::SeqCst);
            Client(format!("client of {name}"))
        }
    }
    impl Drop for Client {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }

    let (list, _) = common::list("10.0.0.1:80,10.0.0.2:80", common::exact());
    list.set_values(|up| Client::new(up.name()));
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        2,
        "existing upstreams get theirs at once"
    );
    let picked = list
        .get(upstreams::Rotation::RoundRobin, b"")
        .expect("pick");
    let client: &Client = picked.value().expect("a value");
    assert_eq!(client.0, format!("client of {}", picked.name()));
    assert!(
        picked.value::<String>().is_none(),
        "another type is not there"
    );
    let held = picked.name().to_owned();
    let entry = Entry::socket("10.0.0.3:80".parse().expect("addr"));
    list.apply([Change::Insert(entry), Change::Remove(held.clone())]);
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        3,
        "a joining upstream gets one; the removed one is still held"
    );
    let joined = list.find("10.0.0.3:80").expect("joined");
    assert_eq!(
        joined.value::<Client>().expect("value").0,
        "client of 10.0.0.3:80"
    );
    picked.ok();
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        2,
        "the removed upstream's value goes with its last pick"
    );
    drop(joined);
    drop(list);
    assert_eq!(LIVE.load(Ordering::SeqCst), 0);
}
