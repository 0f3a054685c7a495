//! The `upstreams` binary, run as a user would.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn upstreams(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_upstreams"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_shows_table_and_normalised_form() {
    let (code, out, _) = upstreams(&[
        "check",
        "round-robin:10.0.0.1:11333:5,redis.example:6379;[::1]:11333 /run/x.sock",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("rotation: round-robin"), "{out}");
    assert!(out.contains("redis.example:6379  6379"), "{out}");
    assert!(out.contains("unix socket"), "{out}");
    assert!(out.contains(
        "normalised: round-robin:10.0.0.1:11333:5,redis.example:6379,[::1]:11333,/run/x.sock"
    ));
}

#[test]
fn check_reports_errors_with_position() {
    let (code, out, err) = upstreams(&["check", "127.0.0.1, foo:99999"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert_eq!(
        err.trim(),
        "upstreams: entry 2 \"foo:99999\" at byte 11: port out of range (1..=65535)"
    );
}

#[test]
fn pick_matches_the_library_for_keys_and_stdin() {
    let def = "127.0.0.1,127.0.0.2,127.0.0.3";
    let list = upstreams::UpstreamList::parse(def, 11333, upstreams::Limits::default()).unwrap();
    let keys: Vec<String> = (0..50).map(|i| format!("user{i}@example.com")).collect();
    let want: Vec<String> = keys
        .iter()
        .map(|k| {
            list.get(upstreams::Rotation::Hashed, k.as_bytes())
                .unwrap()
                .name()
                .to_owned()
        })
        .collect();
    let mut args = vec!["pick", def];
    args.extend(keys.iter().map(String::as_str));
    let (code, out, _) = upstreams(&args);
    assert_eq!(code, 0);
    assert_eq!(out.lines().collect::<Vec<_>>(), want);

    // Keys from standard input, under both spellings of the flag.
    for flag in ["--keys-from", "--keys"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_upstreams"))
            .args(["pick", def, flag, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(keys.join("\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .collect::<Vec<_>>(),
            want
        );
    }
}

#[test]
fn pick_rspamd_ring_golden_and_down() {
    let (_, out, _) = upstreams(&[
        "pick",
        "127.0.0.1,127.0.0.2,127.0.0.3",
        "--hash",
        "rspamd-ring",
        "hello",
        "key-2",
    ]);
    assert_eq!(out, "127.0.0.2\n127.0.0.1\n");
    let (_, out, _) = upstreams(&[
        "pick",
        "127.0.0.1,127.0.0.2,127.0.0.3",
        "--hash",
        "rspamd-ring",
        "--down",
        "127.0.0.2",
        "hello",
    ]);
    assert_eq!(out, "127.0.0.3\n");
    let (code, _, err) = upstreams(&["pick", "127.0.0.1", "--down", "nope", "k"]);
    assert_eq!(code, 2);
    assert!(err.contains("no upstream of that name"), "{err}");
}

#[test]
fn pick_unkeyed_rotations() {
    let (_, out, _) = upstreams(&[
        "pick",
        "a.example:1:5,127.0.0.1:1:5,127.0.0.2:1:1",
        "-n",
        "6",
    ]);
    // a.example is pending (the CLI does not resolve names yet): 5:1 between the others.
    assert_eq!(out.lines().filter(|l| *l == "127.0.0.1:1").count(), 5);
    let (_, out, _) = upstreams(&["pick", "127.0.0.1,127.0.0.2", "-r", "sequential", "-n", "3"]);
    assert_eq!(out, "127.0.0.1\n127.0.0.2\n(none)\n");
    let (code, _, err) = upstreams(&["pick", "127.0.0.1", "-r", "bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown rotation"), "{err}");
}

#[test]
fn simulate_runs_on_its_embedded_default() {
    let (code, out, _) = upstreams(&["simulate", "--picks", "20000", "--keys", "20000"]);
    assert_eq!(code, 0);
    for rotation in [
        "round-robin",
        "master-slave",
        "random",
        "p2c",
        "sequential",
        "hash",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(rotation)),
            "{rotation} missing:\n{out}"
        );
    }
    let balanced = out.lines().find(|l| l.starts_with("balanced")).unwrap();
    let cols: Vec<&str> = balanced.split_whitespace().collect();
    // moved from healthy and not back after revive are both 0
    assert_eq!(&cols[cols.len() - 2..], ["0", "0"], "{balanced}");
}

/// Settings the proxy cannot serve are refused at start, naming the setting or entry; none is
/// accepted only to fail every session later.
#[test]
fn proxy_refuses_what_it_cannot_serve() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--idle-timeout", "1e19"],
            "idle_timeout: 1e19 is out of range",
        ),
        (
            &["--answer-timeout", "1e19"],
            "answer_timeout: 1e19 is out of range",
        ),
        (
            &["--connect-timeout", "0"],
            "connect_timeout: 0.0 is out of range",
        ),
        (&["--idle-timeout=-1"], "idle_timeout: -1.0 is out of range"),
        (
            &["--answer-timeout", "NaN"],
            "answer_timeout: NaN is out of range",
        ),
        (
            &["--drain-timeout", "1e300"],
            "drain_timeout: 1e300 is out of range",
        ),
        (
            &["--revive-time", "1e19"],
            "limits: invalid limit revive_time: must be a number of seconds",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec!["proxy", "127.0.0.1:9", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (code, _, err) = upstreams(&args);
        assert_eq!(code, 2, "{extra:?} accepted");
        assert!(err.contains(message), "{extra:?}: {err}");
    }
    // An entry with no port and no default port.
    let (code, _, err) = upstreams(&["proxy", "127.0.0.1:9,127.0.0.2", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("entry \"127.0.0.2\" has no port"), "{err}");
    // The same upstream twice (its metrics series would collide).
    let (code, _, err) = upstreams(&[
        "proxy",
        "127.0.0.1:9,127.0.0.1:9:3",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("entry 2 \"127.0.0.1:9\" is listed twice"),
        "{err}"
    );
    // A listen address that is none.
    let (code, _, err) = upstreams(&["proxy", "127.0.0.1:9", "--listen", "unix:relative.sock"]);
    assert_eq!(code, 2);
    assert!(err.contains("must be absolute"), "{err}");
    // --demo with a definition or a config file.
    for extra in [&["127.0.0.1:9"][..], &["--config", "/dev/null"][..]] {
        let mut args = vec!["proxy", "--demo"];
        args.extend_from_slice(extra);
        let (code, _, err) = upstreams(&args);
        assert_eq!(code, 2, "{args:?} accepted");
        assert!(err.contains("cannot be used with"), "{err}");
    }
    // An unknown retry condition.
    let (code, _, err) = upstreams(&[
        "proxy",
        "127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--retry-on",
        "connect,always",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'always'"), "{err}");
}

/// SPEC.md item 46 through the command: every row of the rspamd 3.4 vectors, offline members
/// taken down with `--down`, keys on standard input.
#[test]
fn pick_reproduces_the_rspamd3_jump_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../upstreams/tests/vectors/rspamd3_jump.tsv"
    );
    let text = std::fs::read_to_string(path).unwrap();
    // (definition, default port, offline) and its (key, expected name) rows.
    type Group = ((String, String, String), Vec<(String, String)>);
    let mut groups: Vec<Group> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let group = (f[0].to_owned(), f[1].to_owned(), f[2].to_owned());
        match groups.last_mut() {
            Some((g, rows)) if *g == group => rows.push((f[3].to_owned(), f[4].to_owned())),
            _ => groups.push((group, vec![(f[3].to_owned(), f[4].to_owned())])),
        }
    }
    let mut checked = 0;
    for ((def, port, offline), rows) in &groups {
        let mut args = vec![
            "pick".to_owned(),
            def.clone(),
            "--rotation".into(),
            "hash".into(),
            "--hash".into(),
            "rspamd-jump".into(),
            "--default-port".into(),
            port.clone(),
            "--keys".into(),
            "-".into(),
        ];
        if offline != "-" {
            for name in offline.split(',') {
                args.push("--down".into());
                args.push(name.to_owned());
            }
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_upstreams"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let keys: String = rows.iter().map(|(k, _)| format!("{k}\n")).collect();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(keys.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        let want: Vec<&str> = rows.iter().map(|(_, e)| e.as_str()).collect();
        assert_eq!(got, want, "{def} down {offline}");
        checked += rows.len();
    }
    assert!(checked >= 5987, "{checked} rows");
}

fn upstreams_with_stdin(args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_upstreams"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Definitions from standard input or a file (a 10 000-entry list is beyond the argument
/// limit); weight-0 entries of a weighted list shown as backups.
#[test]
fn definitions_from_stdin_and_files() {
    let entries: Vec<String> = (0..10_000)
        .map(|i| format!("10.{}.{}.1:80", i / 250, i % 250))
        .collect();
    let (code, out, err) = upstreams_with_stdin(&["check", "-"], entries.join("\n").as_bytes());
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8(out).unwrap().contains("upstreams: 10000"));
    let path = std::env::temp_dir().join(format!("upstreams-def-{}", std::process::id()));
    std::fs::write(&path, "round-robin:10.0.0.1:80:3\n10.0.0.2:80\n").unwrap();
    let (code, out, _) = upstreams(&["check", &format!("@{}", path.display())]);
    assert_eq!(code, 0);
    assert!(out.contains("0 (backup)"), "{out}");
    let (code, out, _) = upstreams(&["pick", &format!("@{}", path.display()), "-n", "4"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "10.0.0.1:80\n10.0.0.1:80\n10.0.0.1:80\n10.0.0.1:80\n")
    );
    let _ = std::fs::remove_file(&path);
    let (code, _, err) = upstreams_with_stdin(&["pick", "-", "--keys", "-"], b"");
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot both come from standard input"),
        "{err}"
    );
}

/// `pick --keys -` streams keys as bytes (an invalid UTF-8 key is a key like any other) and
/// exits non-zero when nothing can be picked.
#[test]
fn pick_streams_byte_keys_and_fails_when_nothing_is_selectable() {
    let (code, out, err) = upstreams_with_stdin(
        &["pick", "127.0.0.1,127.0.0.2,127.0.0.3", "--keys", "-"],
        b"a\n\xff\xfe\nb\r\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
    let (code, _, err) = upstreams(&["pick", "127.0.0.1", "--down", "127.0.0.1", "-n", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("no upstream is selectable"), "{err}");
}
