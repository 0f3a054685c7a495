//! SPEC.md §1: the definition grammar.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use proptest::prelude::*;
use upstreams::{Definition, Host, ParseError, ParseErrorKind, Rotation};

fn parse(def: &str) -> Definition {
    Definition::parse(def, 11333).unwrap_or_else(|e| panic!("{def:?}: {e}"))
}

fn kind(def: &str) -> ParseErrorKind {
    Definition::parse(def, 11333)
        .expect_err(def)
        .kind()
        .cloned()
        .expect("entry error")
}

fn summary(def: &str) -> Vec<(String, u16, u16)> {
    parse(def)
        .entries()
        .iter()
        .map(|e| (e.name().to_owned(), e.port(), e.weight()))
        .collect()
}

#[test]
fn item_01_rotation_prefix_case_insensitive_with_leading_space() {
    for (text, rotation) in [
        ("random:127.0.0.1", Rotation::Random),
        ("HASH:127.0.0.1", Rotation::Hashed),
        ("  round-robin:127.0.0.1", Rotation::RoundRobin),
        ("Master-Slave:127.0.0.1", Rotation::MasterSlave),
        ("sequential:127.0.0.1", Rotation::Sequential),
        ("p2c:127.0.0.1", Rotation::P2c),
    ] {
        let def = parse(text);
        assert_eq!(def.rotation(), Some(rotation), "{text}");
        assert_eq!(def.entries()[0].name(), "127.0.0.1");
    }
    assert_eq!(parse("127.0.0.1").rotation(), None);
}

#[test]
fn item_02_separators_and_empty_tokens() {
    assert_eq!(
        summary(",,;; 127.0.0.1 ,, "),
        vec![("127.0.0.1".into(), 11333, 0)]
    );
    assert_eq!(parse("a,b;c d\te\r\nf").entries().len(), 6);
}

#[test]
fn item_03_strict_errors_name_index_text_offset() {
    let err = Definition::parse("127.0.0.1, foo:99999", 11333).unwrap_err();
    assert_eq!(
        err,
        ParseError::Entry {
            index: 2,
            text: "foo:99999".into(),
            offset: 11,
            kind: ParseErrorKind::PortOutOfRange
        }
    );
    assert_eq!(
        err.to_string(),
        "entry 2 \"foo:99999\" at byte 11: port out of range (1..=65535)"
    );
    assert_eq!(Definition::parse("", 1), Err(ParseError::Empty));
    assert_eq!(Definition::parse(" ,; ", 1), Err(ParseError::Empty));
    assert_eq!(Definition::parse("random:", 1), Err(ParseError::Empty));
    // Duplicates are kept.
    assert_eq!(parse("127.0.0.1,127.0.0.1").entries().len(), 2);
}

#[test]
fn item_04_several_definitions_last_prefix_wins() {
    let def = Definition::parse_many(["random:10.0.0.1", "hash:10.0.0.2", "10.0.0.3"], 1).unwrap();
    assert_eq!(def.rotation(), Some(Rotation::Hashed));
    assert_eq!(def.entries().len(), 3);
}

#[test]
fn item_05_srv_entries() {
    let def = parse("service=fuzzy+example.com,SERVICE=redis+internal:5");
    match def.entries()[0].host() {
        Host::Srv { service, domain } => assert_eq!(
            (service.as_str(), domain.as_str()),
            ("fuzzy", "example.com")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(def.entries()[0].name(), "_fuzzy._tcp.example.com");
    assert_eq!(def.entries()[1].weight(), 5);
    assert_eq!(kind("service=fuzzy"), ParseErrorKind::InvalidSrv);
    assert_eq!(kind("service=+x"), ParseErrorKind::InvalidSrv);
}

#[test]
fn item_06_bracketed_addresses() {
    assert_eq!(summary("[::1]:53:7"), vec![("::1".into(), 53, 7)]);
    assert_eq!(summary("[::1]"), vec![("::1".into(), 11333, 0)]);
    assert_eq!(kind("[::1"), ParseErrorKind::MissingBracket);
    assert_eq!(kind("[::1]x"), ParseErrorKind::JunkAfterBracket);
    assert_eq!(kind("[nothost]"), ParseErrorKind::InvalidAddress);
    assert_eq!(kind("[::1]:1:2:3"), ParseErrorKind::TooManyFields);
}

#[test]
fn item_07_unix_sockets() {
    let def = parse("/var/run/rspamd.sock ./local.sock");
    assert_eq!(
        def.entries()[0].host(),
        &Host::Unix("/var/run/rspamd.sock".into())
    );
    assert_eq!(def.entries()[0].port(), 0);
    assert_eq!(def.entries()[1].name(), "./local.sock");
}

#[test]
fn item_08_bare_ipv6_gets_default_port() {
    let def = parse("2001:db8::1");
    assert_eq!(def.entries()[0].name(), "2001:db8::1");
    assert_eq!(def.entries()[0].port(), 11333);
    assert_eq!(
        def.entries()[0].host(),
        &Host::Ip("2001:db8::1".parse::<IpAddr>().unwrap())
    );
}

#[test]
fn item_09_names_follow_rspamd() {
    assert_eq!(summary("127.0.0.1"), vec![("127.0.0.1".into(), 11333, 0)]);
    assert_eq!(
        summary("127.0.0.1:80:5"),
        vec![("127.0.0.1:80".into(), 80, 5)]
    );
    let def = parse("redis.example:6379:3");
    assert_eq!(def.entries()[0].name(), "redis.example:6379");
    assert!(def.entries()[0].host().needs_resolution());
    assert!(!parse("127.0.0.1").entries()[0].host().needs_resolution());
    assert_eq!(kind("999.1.1.1"), ParseErrorKind::InvalidAddress);
    assert_eq!(kind("bad!host"), ParseErrorKind::InvalidHost);
    assert_eq!(kind(&"a".repeat(10_000)), ParseErrorKind::HostTooLong);
    assert_eq!(kind(":80"), ParseErrorKind::EmptyHost);
}

#[test]
fn item_10_ports() {
    assert_eq!(kind("127.0.0.1:abc"), ParseErrorKind::InvalidPort);
    assert_eq!(kind("127.0.0.1:80x"), ParseErrorKind::InvalidPort);
    assert_eq!(kind("127.0.0.1:70000"), ParseErrorKind::PortOutOfRange);
    assert_eq!(kind("127.0.0.1:0"), ParseErrorKind::PortOutOfRange);
    assert_eq!(
        kind("127.0.0.1:99999999999999999999"),
        ParseErrorKind::PortOutOfRange
    );
    assert_eq!(kind("127.0.0.1:"), ParseErrorKind::EmptyPort);
    assert_eq!(
        summary("127.0.0.1:65535"),
        vec![("127.0.0.1:65535".into(), 65535, 0)]
    );
    assert_eq!(Definition::parse("h", 0).unwrap().entries()[0].port(), 0);
}

#[test]
fn item_11_weights() {
    assert_eq!(summary("1.2.3.4:80:65535")[0].2, 65535);
    assert_eq!(kind("1.2.3.4:80:65536"), ParseErrorKind::WeightOutOfRange);
    assert_eq!(kind("1.2.3.4:80:x"), ParseErrorKind::InvalidWeight);
    assert_eq!(kind("1.2.3.4:80:5:6"), ParseErrorKind::TooManyFields);
}

#[test]
fn item_12_master_slave_heuristic() {
    let w: Vec<u16> = parse("master-slave:a,b,c")
        .entries()
        .iter()
        .map(|e| e.weight())
        .collect();
    assert_eq!(w, [1, 0, 0]);
    let w: Vec<u16> = parse("master-slave:a:1:0,b:1:5")
        .entries()
        .iter()
        .map(|e| e.weight())
        .collect();
    assert_eq!(w, [1, 5]);
    let w: Vec<u16> = parse("a,b").entries().iter().map(|e| e.weight()).collect();
    assert_eq!(w, [0, 0]);
}

#[test]
fn item_13_display_round_trips_examples() {
    for text in [
        "127.0.0.1",
        "127.0.0.1:80:5",
        "[::1]:53:7",
        "2001:db8::1",
        "/var/run/rspamd.sock",
        "redis.example:6379:3",
        "service=fuzzy+example.com",
        "master-slave:a,b,c",
        "round-robin:1.1.1.1:80:10,1.1.1.2:80:1",
        "[127.0.0.1]:80",
    ] {
        let def = parse(text);
        let printed = def.to_string();
        assert_eq!(parse(&printed), def, "{text} printed as {printed}");
    }
}

/// Regression (found by the `parse` fuzzer): a first entry named like a rotation prefix
/// (`;;round-robin:8` is the host `round-robin`, port 8) printed as `round-robin:8`, which
/// reads back as a prefix.
#[test]
fn item_13_first_entry_named_like_a_prefix_round_trips() {
    for text in [
        ";;round-robin:8",
        " ,hash:80",
        ",P2C:1:2,b",
        "random:random:80",
    ] {
        let def = parse(text);
        let printed = def.to_string();
        assert_eq!(parse(&printed), def, "{text} printed as {printed}");
    }
    assert_eq!(parse(";;round-robin:8").rotation(), None);
}

#[test]
fn item_13_error_text_is_clipped() {
    let long = format!("{}:1", "a".repeat(1 << 20));
    let err = Definition::parse(&long, 1).unwrap_err().to_string();
    assert!(err.len() < 300, "{}", err.len());
}

fn entry_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            proptest::option::of((1u16.., proptest::option::of(any::<u16>())))
        )
            .prop_map(|(ip, pw)| {
                let ip = std::net::Ipv4Addr::from(ip);
                match pw {
                    None => ip.to_string(),
                    Some((p, None)) => format!("{ip}:{p}"),
                    Some((p, Some(w))) => format!("{ip}:{p}:{w}"),
                }
            }),
        (any::<[u16; 8]>(), proptest::option::of(1u16..)).prop_map(|(v6, p)| {
            let ip = std::net::Ipv6Addr::from(v6);
            match p {
                None => format!("[{ip}]"),
                Some(p) => format!("[{ip}]:{p}"),
            }
        }),
        (
            "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9]{0,5}){0,2}",
            proptest::option::of(1u16..)
        )
            .prop_map(|(h, p)| match p {
                None => h,
                Some(p) => format!("{h}:{p}"),
            }),
        "/[a-z]{1,8}(/[a-z.]{1,8}){0,2}",
        ("[a-z]{1,6}", "[a-z]{1,6}\\.[a-z]{2,3}").prop_map(|(s, d)| format!("service={s}+{d}")),
    ]
}

proptest! {
    /// print ∘ parse is the identity on parsed lists.
    #[test]
    fn prop_display_round_trip(
        prefix in proptest::option::of(proptest::sample::select(Rotation::ALL.to_vec())),
        entries in proptest::collection::vec(entry_strategy(), 1..8),
        seps in proptest::collection::vec("[,; \t]{1,3}", 8),
    ) {
        let mut text = String::new();
        if let Some(p) = prefix { text.push_str(p.prefix()); text.push(':'); }
        for (i, e) in entries.iter().enumerate() {
            if i > 0 { text.push_str(&seps[i % seps.len()]); }
            text.push_str(e);
        }
        let def = Definition::parse(&text, 11333).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let again = Definition::parse(&def.to_string(), 11333).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again, def);
    }

    /// No input panics; errors always name an entry inside the text.
    #[test]
    fn prop_never_panics(text in "\\PC{0,64}") {
        match Definition::parse(&text, 11333) {
            Ok(def) => prop_assert!(!def.entries().is_empty()),
            Err(ParseError::Entry { offset, .. }) => prop_assert!(offset < text.len()),
            Err(_) => {}
        }
    }
}

/// Issue #14's newcomer errors: each names what is wrong, not a symptom.
#[test]
fn newcomer_mistakes_get_their_own_reasons() {
    let reason = |d: &str| {
        upstreams::Definition::parse(d, 80)
            .unwrap_err()
            .kind()
            .unwrap()
            .to_string()
    };
    assert!(reason("bogus:1.2.3.4").starts_with("unknown rotation prefix \"bogus\""));
    assert!(reason("roundrobin:[::1]:80").starts_with("unknown rotation prefix \"roundrobin\""));
    // A host and a bad port in the middle of a list stay a bad port.
    assert_eq!(reason("10.0.0.1,redis:abc"), "port is not a number");
    assert!(reason("fe80::1%eth0").contains("zone ids (\"%eth0\")"));
    assert!(reason("[fe80::1%2]:80").contains("zone ids (\"%2\")"));
    let ambiguous = reason("::1:80");
    assert!(
        ambiguous.contains("[::1]:80") && ambiguous.contains("[::1:80]"),
        "{ambiguous}"
    );
    assert!(reason("service=x").contains("the port comes from the SRV records"));
    // Still fine: unambiguous IPv6, names with ports, prefixes.
    for ok in [
        "::1",
        "2001:db8::1",
        "[::1]:80",
        "[::1:80]",
        "redis:6379",
        "p2c:10.0.0.1:80",
    ] {
        assert!(upstreams::Definition::parse(ok, 80).is_ok(), "{ok}");
    }
}
