//! Reloads of `upstreams proxy` (issue #13): all or nothing, health kept through weight
//! changes, removed upstreams shown as draining while used, the admin listener moved; and
//! Unix stream sockets on both sides. Real processes and sockets, bounded in time.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::net::{TcpStream, UnixListener, UnixStream};

fn listener_toml(listen: &str, upstreams: &str) -> String {
    format!("[[listener]]\nlisten = \"{listen}\"\nupstreams = \"{upstreams}\"\n")
}

/// An echo backend on a TCP port of loopback.
async fn tcp_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// An echo backend on a Unix socket.
fn unix_echo(path: &Path) {
    let l = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

async fn log_contains(log: &Path, what: &str) -> bool {
    for _ in 0..50 {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(what)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_changes_nothing_and_names_its_cause() {
    let a = backend("a", "127.0.0.1:0");
    let b = backend("b", "127.0.0.1:0");
    let dir = scratch("atomic");
    let (config, log) = (dir.join("proxy.toml"), dir.join("log"));
    let (listen, admin, second) = (free_port(), free_port(), free_port());
    let head = format!("admin = \"{admin}\"\n");
    std::fs::write(
        &config,
        head.clone() + &listener_toml(&listen.to_string(), &a.addrs[0].to_string()),
    )
    .unwrap();
    let p = spawn_logged(&["proxy", "--config", config.to_str().unwrap()], 2, &log);
    assert_eq!(request(listen).await.as_deref(), Ok("a"));

    // The first listener moves to b, and a second one asks for a port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let text = head.clone()
        + &listener_toml(&listen.to_string(), &b.addrs[0].to_string())
        + &listener_toml(&taken_addr.to_string(), &b.addrs[0].to_string());
    std::fs::write(&config, text).unwrap();
    p.signal("-HUP");
    assert!(log_contains(&log, "reload refused").await);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("listener {taken_addr}")) && text.contains("Address already in use"),
        "the cause is not named: {text}"
    );
    for _ in 0..5 {
        assert_eq!(
            request(listen).await.as_deref(),
            Ok("a"),
            "half of the reload applied"
        );
    }

    // Fixed: both changes apply together.
    let text = head
        + &listener_toml(&listen.to_string(), &b.addrs[0].to_string())
        + &listener_toml(&second.to_string(), &b.addrs[0].to_string());
    std::fs::write(&config, text).unwrap();
    p.signal("-HUP");
    wait_until("the reload", Duration::from_secs(5), async || {
        request(listen).await.as_deref() == Ok("b")
    })
    .await;
    assert_eq!(request(second).await.as_deref(), Ok("b"));
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_health_through_weight_changes_and_shows_removed_upstreams_draining() {
    let a = backend("a", "127.0.0.1:0");
    let echo = tcp_echo().await;
    // Bound but not listening: connects are refused.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = reserved.local_addr().unwrap();
    let dir = scratch("weights");
    let (config, log) = (dir.join("proxy.toml"), dir.join("log"));
    let (listen, admin) = (free_port(), free_port());
    let write = |upstreams: String| {
        let text = format!(
            "admin = \"{admin}\"\n{}[listener.limits]\nrevive_time = 60.0\n",
            listener_toml(&listen.to_string(), &upstreams)
        );
        std::fs::write(&config, text).unwrap();
    };
    write(format!("{}:1,{dead}:1", a.addrs[0]));
    let p = spawn_logged(&["proxy", "--config", config.to_str().unwrap()], 2, &log);
    wait_until(
        "the dead backend out",
        Duration::from_secs(10),
        async || {
            assert_eq!(request(listen).await.as_deref(), Ok("a"));
            state_of(admin, &dead.to_string()).await == "offline"
        },
    )
    .await;
    // Only the weights change: the dead backend stays out (no client meets it again).
    write(format!("{}:3,{dead}:2", a.addrs[0]));
    p.signal("-HUP");
    assert!(log_contains(&log, "reweighted").await);
    assert_eq!(state_of(admin, &dead.to_string()).await, "offline");

    // A session to `echo`; then a reload removes `echo`: shown as draining while the
    // session lasts, logged as removed, never as offline; gone once the session ends.
    write(echo.to_string());
    p.signal("-HUP");
    wait_until("echo in", Duration::from_secs(5), async || {
        state_of(admin, &echo.to_string()).await == "alive"
    })
    .await;
    let mut session = TcpStream::connect(listen).await.unwrap();
    echo_once(&mut session, b"hello").await;
    write(a.addrs[0].to_string());
    p.signal("-HUP");
    wait_until("echo draining", Duration::from_secs(5), async || {
        state_of(admin, &echo.to_string()).await == "draining"
    })
    .await;
    echo_once(&mut session, b"still here").await;
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "upstreams_upstream_state{{listener=\"{listen}\",upstream=\"{echo}\",state=\"draining\"}} 1"
        )),
        "{metrics}"
    );
    assert!(log_contains(&log, "upstream removed by reload; draining").await);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("upstream removed by reload") && l.contains(&echo.to_string())),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "colour codes in a log file");
    assert!(
        !text
            .lines()
            .any(|l| l.contains(&echo.to_string()) && l.contains("upstream offline")),
        "a removal was logged as an outage: {text}"
    );
    drop(session);
    wait_until("echo gone", Duration::from_secs(5), async || {
        state_of(admin, &echo.to_string()).await == "absent"
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_admin_listener() {
    let a = backend("a", "127.0.0.1:0");
    let dir = scratch("admin");
    let config = dir.join("proxy.toml");
    let (listen, admin, admin2) = (free_port(), free_port(), free_port());
    let body = listener_toml(&listen.to_string(), &a.addrs[0].to_string());
    std::fs::write(&config, format!("admin = \"{admin}\"\n{body}")).unwrap();
    let p = spawn(&["proxy", "--config", config.to_str().unwrap()], 2);
    assert!(admin_get(admin, "/metrics")
        .await
        .contains("upstreams_upstream_up"));
    std::fs::write(&config, format!("admin = \"{admin2}\"\n{body}")).unwrap();
    p.signal("-HUP");
    wait_until(
        "the new admin listener",
        Duration::from_secs(5),
        async || TcpStream::connect(admin2).await.is_ok(),
    )
    .await;
    assert!(admin_get(admin2, "/metrics")
        .await
        .contains("upstreams_upstream_up"));
    wait_until(
        "the old admin listener closed",
        Duration::from_secs(5),
        async || TcpStream::connect(admin).await.is_err(),
    )
    .await;
    assert_eq!(request(listen).await.as_deref(), Ok("a"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_on_both_sides() {
    let dir = scratch("unix");
    let upstream = dir.join("backend.sock");
    unix_echo(&upstream);
    // A Unix listener in front of a Unix upstream.
    let front = dir.join("proxy.sock");
    let p = spawn(
        &[
            "proxy",
            upstream.to_str().unwrap(),
            "--listen",
            &format!("unix:{}", front.display()),
            "--admin",
            "127.0.0.1:0",
            "--rotation",
            "hash",
        ],
        1,
    );
    let admin = p.addrs[0];
    let mut s = UnixStream::connect(&front).await.unwrap();
    echo_once(&mut s, b"through unix sockets").await;
    drop(s);
    assert_eq!(state_of(admin, upstream.to_str().unwrap()).await, "alive");
    let status = admin_get(admin, "/status.json").await;
    assert!(
        status.contains(&format!("unix:{}", front.display())),
        "{status}"
    );
    p.signal("-TERM");
    // The listener's socket file is removed when the proxy stops.
    wait_until("socket removed", Duration::from_secs(5), async || {
        !front.exists()
    })
    .await;

    // A TCP listener in front of the same Unix upstream.
    let p = proxy(upstream.to_str().unwrap(), &[]);
    let mut s = TcpStream::connect(p.addrs[0]).await.unwrap();
    echo_once(&mut s, b"tcp to unix").await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Byte counters and active sessions move while a session lasts, not only at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_move_while_a_session_lasts() {
    let echo = tcp_echo().await;
    let p = proxy(&echo.to_string(), &[]);
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    let mut session = TcpStream::connect(listen).await.unwrap();
    let figures = async || {
        let status: serde_json::Value =
            serde_json::from_str(&admin_get(admin, "/status.json").await).unwrap();
        let u = &status["listeners"][0]["upstreams"][0];
        (
            u["active"].as_i64().unwrap(),
            u["bytes_out"].as_u64().unwrap(),
            u["bytes_in"].as_u64().unwrap(),
        )
    };
    for round in 1..=3u64 {
        echo_once(&mut session, &[b'x'; 1000]).await;
        wait_until("figures to move", Duration::from_secs(2), async || {
            figures().await == (1, 1000 * round, 1000 * round)
        })
        .await;
    }
    drop(session);
    wait_until("the session to end", Duration::from_secs(2), async || {
        figures().await == (0, 3000, 3000)
    })
    .await;
}
