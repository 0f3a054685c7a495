//! Golden vectors recorded on the real rspamd (`tests/vectors`, copied unchanged from
//! `shared/vectors`): the `rspamd-ring` (4.x) and `rspamd-jump` (3.x) hashes and the error
//! window must match them exactly.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use upstreams::{FailKind, HashMode, Rotation};

fn rows(file: &str) -> Vec<Vec<String>> {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("vector file present");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1) // header
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// SPEC.md item 23: every pick of `ring_hash.tsv` matches rspamd.
#[test]
fn item_23_rspamd_ring_matches_every_golden_vector() {
    let rows = rows("ring_hash.tsv");
    assert!(rows.len() >= 7200, "all vectors read");
    check_hash_vectors(&rows, HashMode::RspamdRing);
}

/// SPEC.md item 46: every pick of `rspamd3_jump.tsv` (the real rspamd 3.4) matches.
#[test]
fn item_46_rspamd_jump_matches_every_golden_vector() {
    let rows = rows("rspamd3_jump.tsv");
    assert!(rows.len() >= 5987, "all vectors read");
    check_hash_vectors(&rows, HashMode::RspamdJump);
}

fn check_hash_vectors(rows: &[Vec<String>], mode: HashMode) {
    let mut lists = std::collections::HashMap::new();
    let mut mismatches = Vec::new();
    for row in rows {
        let [def, port, offline, key, expected] = &row[..] else {
            panic!("bad row {row:?}")
        };
        let list = lists
            .entry((def.clone(), port.clone(), offline.clone()))
            .or_insert_with(|| {
                // Taking many members out one after another moves the clock on by an error
                // window each: a long revive time keeps the first ones out meanwhile.
                let limits = common::exact()
                    .with_hash_mode(mode)
                    .with_revive_time(Duration::from_secs(3600));
                let (list, clock) = common::list_port(def, port.parse().unwrap(), limits);
                if offline != "-" {
                    for name in offline.split(',') {
                        common::take_offline(&list, &clock, name);
                    }
                }
                (list, clock)
            });
        let got = list
            .0
            .get(Rotation::Hashed, key.as_bytes())
            .map(|p| p.name().to_owned());
        if got.as_deref() != Some(expected.as_str()) {
            mismatches.push(format!(
                "{def} {offline} {key}: got {got:?} want {expected}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}

/// SPEC.md items 29 and 31: every timeline of `fail_timeline.tsv` matches rspamd.
#[test]
fn item_29_error_window_matches_every_golden_timeline() {
    for row in rows("fail_timeline.tsv") {
        let [max_errors, error_time, n, events, offline_at, errors_after, trace, note] = &row[..]
        else {
            panic!("bad row {row:?}")
        };
        let limits = common::exact()
            .with_max_errors(max_errors.parse().unwrap())
            .with_error_time(Duration::from_secs(error_time.parse().unwrap()))
            .with_revive_time(Duration::from_secs(60));
        let n: usize = n.parse().unwrap();
        let all = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
        let (list, clock) = common::list(&all[..n].join(","), limits);
        let up = list.upstreams()[0].clone();
        let t0 = Duration::from_secs(1000);
        let mut fails = 0;
        let mut went_offline = None;
        let mut got_trace = Vec::new();
        for event in events.split(' ') {
            let (is_ok, at) = match event.strip_prefix("ok@") {
                Some(at) => (true, at),
                None => (false, event),
            };
            clock.set(t0 + common::secs(at));
            if is_ok {
                up.record_success();
            } else {
                fails += 1;
                let before = up.is_alive();
                up.record_failure(FailKind::Other, "vector");
                if before && !up.is_alive() && went_offline.is_none() {
                    went_offline = Some(fails);
                }
            }
            got_trace.push(up.errors().to_string());
        }
        let want_offline = match offline_at.as_str() {
            "never" => None,
            n => Some(n.parse::<usize>().unwrap()),
        };
        assert_eq!(went_offline, want_offline, "offline index: {note}");
        assert_eq!(&got_trace.join(" "), trace, "errors trace: {note}");
        assert_eq!(
            up.errors().to_string(),
            *errors_after,
            "errors after: {note}"
        );
    }
}
