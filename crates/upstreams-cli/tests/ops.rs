//! Operating `upstreams proxy` (issue #18): config test, readiness endpoints, systemd
//! notifications, completions and the manual page. Real processes on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::*;

fn run(args: &[&str]) -> (i32, String, String) {
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
fn check_config_validates_without_serving() {
    let dir = std::env::temp_dir().join(format!("upstreams-checkcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstreams = \"127.0.0.1:9,127.0.0.2:9\"\n\
         [listener.health_check]\ntype = \"tcp\"\n",
    )
    .unwrap();
    let (code, out, err) = run(&["proxy", "--check-config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("listener 127.0.0.1:1 -> 127.0.0.1:9,127.0.0.2:9 (2 upstreams"),
        "{out}"
    );
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstreams = 5\n",
    )
    .unwrap();
    let (code, _, err) = run(&["proxy", "--check-config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml") && err.contains("line 3"), "{err}");
    let wrong = dir.join("wrong.toml");
    std::fs::write(
        &wrong,
        "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstreams = \"127.0.0.1\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["proxy", "--check-config", wrong.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("has no port"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_endpoints() {
    let a = backend("a", "127.0.0.1:0");
    let p = proxy(&format!("{},{}", a.addrs[0], free_port()), &[]);
    let admin = p.addrs[1];
    assert_eq!(admin_get(admin, "/healthz").await, "ok\n");
    assert_eq!(admin_get(admin, "/readyz").await, "ready\n");
    // Two refusing upstreams (a lone one is never taken out): one request fails both.
    let dead = proxy(
        &format!("{},{}", free_port(), free_port()),
        &["--max-consecutive-errors", "1"],
    );
    let _ = request(dead.addrs[0]).await;
    let body = admin_get(dead.addrs[1], "/readyz").await;
    assert!(body.starts_with("no selectable upstream"), "{body}");
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let dir = std::env::temp_dir().join(format!("upstreams-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nlisten = \"{}\"\nupstreams = \"127.0.0.1:9\"\n",
            free_port()
        ),
    )
    .unwrap();
    let env = format!("NOTIFY_SOCKET={}", socket_path.display());
    let p = spawn_under(
        &["env", &env],
        &["proxy", "--config", config.to_str().unwrap()],
        1,
    );
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).trim().to_owned()
    };
    assert_eq!(next(), "READY=1");
    p.signal("-HUP");
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    p.signal("-TERM");
    assert_eq!(next(), "STOPPING=1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_manual_and_help_list_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, _) = run(&["completions", shell]);
        assert_eq!(code, 0);
        assert!(
            out.contains("proxy") && out.contains("check-config"),
            "{shell}"
        );
    }
    let (code, out, _) = run(&["man"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(".ie") || out.contains(".TH upstreams"),
        "{}",
        &out[..200]
    );
    let (_, out, _) = run(&["--help"]);
    for command in ["check", "pick", "simulate", "proxy", "completions", "man"] {
        assert!(out.contains(command), "--help lacks {command}: {out}");
    }
}

/// Durations take units (`500ms`, `10s`, `5m`) in the file and on the command line.
#[test]
fn durations_take_units() {
    let dir = std::env::temp_dir().join(format!("upstreams-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("units.toml");
    std::fs::write(
        &file,
        "drain_timeout = \"30s\"\n[[listener]]\nlisten = \"127.0.0.1:1\"\nupstreams = \"127.0.0.1:9\"\n\
         idle_timeout = \"5m\"\nconnect_timeout = \"250ms\"\n\
         [listener.limits]\nrevive_time = \"1m 30s\"\nerror_time = 10\n\
         [listener.health_check]\ntype = \"tcp\"\ninterval = \"500ms\"\n",
    )
    .unwrap();
    let (code, out, err) = run(&["proxy", "--check-config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("health checks every 500ms"), "{out}");
    std::fs::write(&file, "[[listener]]\nlisten = \"127.0.0.1:1\"\nupstreams = \"127.0.0.1:9\"\nidle_timeout = \"5 parsecs\"\n").unwrap();
    let (code, _, err) = run(&["proxy", "--check-config", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("is not a duration") && err.contains("line 4"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "proxy",
        "127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--idle-timeout",
        "5x",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--idle-timeout") && err.contains("is not a duration"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One access-log line per session, JSON here, with the retry visible; SIGUSR1 reopens the
/// file after a rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_and_reopen() {
    let dir = std::env::temp_dir().join(format!("upstreams-access-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let a = backend("a", "127.0.0.1:0");
    let dead = free_port();
    let p = proxy(
        &format!("master-slave:{dead}:2,{}:1", a.addrs[0]),
        &[
            "--access-log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
        ],
    );
    let listen = p.addrs[0];
    for _ in 0..2 {
        assert_eq!(request(listen).await.as_deref(), Ok("a"));
    }
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_until("two lines", Duration::from_secs(5), async || {
        lines().len() == 2
    })
    .await;
    for line in lines() {
        assert_eq!(line["listener"], listen.to_string(), "{line}");
        assert!(
            line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        assert_eq!(line["upstream"], a.addrs[0].to_string(), "{line}");
        assert_eq!(line["tries"], 2, "{line}");
        assert_eq!(line["outcome"], "retried", "{line}");
        // The request: GET / HTTP/1.1, Host and Connection headers, 46 bytes.
        assert_eq!(line["bytes_to_upstream"], 46, "{line}");
        assert!(line["bytes_to_client"].as_u64().unwrap() > 40, "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    // logrotate: move the file away, SIGUSR1, the next line goes to a new file.
    std::fs::rename(&log, dir.join("access.log.1")).unwrap();
    p.signal("-USR1");
    wait_until("the reopened log", Duration::from_secs(5), async || {
        let _ = request(listen).await;
        !lines().is_empty()
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
