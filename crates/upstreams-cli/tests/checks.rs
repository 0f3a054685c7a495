//! Active health checks in `upstreams proxy` (issue #13), against real peers on loopback: a
//! port with nothing listening, a backend that starts and one that stops, a real
//! `redis-server` (send-expect `PING` → `+PONG`) and a real nginx (HTTP status).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn upstream_json(admin: SocketAddr, listener: usize, name: &str) -> serde_json::Value {
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json").await).unwrap();
    status["listeners"][listener]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

async fn picks(admin: SocketAddr, name: &str) -> u64 {
    upstream_json(admin, 0, name).await["picks"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_drive_health_with_no_client_traffic() {
    let a = backend("a", "127.0.0.1:0");
    let dead = free_port();
    let p = proxy(
        &format!("{},{dead}", a.addrs[0]),
        &[
            "--health-check",
            "tcp",
            "--check-interval",
            "0.2",
            "--check-rise",
            "2",
            "--check-fall",
            "2",
        ],
    );
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    // No client: the dead port is found by the checks alone.
    let start = Instant::now();
    wait_until("dead port out", Duration::from_secs(5), async || {
        state_of(admin, &dead.to_string()).await == "offline"
    })
    .await;
    eprintln!("dead port out after {:?} (fall 2 x 0.2 s)", start.elapsed());
    assert_eq!(listener_figure(admin, "accepted").await, 0);
    let dead_json = upstream_json(admin, 0, &dead.to_string()).await;
    assert_eq!(dead_json["check"]["ok"], false, "{dead_json}");
    assert!(
        dead_json["check"]["streak"].as_i64().unwrap() <= -2,
        "{dead_json}"
    );
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "upstreams_upstream_check_up{{listener=\"{listen}\",upstream=\"{dead}\"}} 0"
        )),
        "{metrics}"
    );
    // Clients never meet it.
    for _ in 0..30 {
        assert_eq!(request(listen).await.as_deref(), Ok("a"));
    }
    assert_eq!(picks(admin, &dead.to_string()).await, 0);

    // It starts listening: back within rise × interval (plus jitter and a status read).
    let b = backend("b", &dead.to_string());
    let start = Instant::now();
    wait_until("b back", Duration::from_secs(5), async || {
        state_of(admin, &dead.to_string()).await == "alive"
    })
    .await;
    eprintln!(
        "restarted backend back after {:?} (rise 2 x 0.2 s)",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_millis(2 * 220 + 220 + 300));

    // `a` stops: taken out by the checks; from then on every client is served by b.
    a.signal("-TERM");
    let a_name = a.addrs[0].to_string();
    wait_until("a out", Duration::from_secs(5), async || {
        state_of(admin, &a_name).await == "offline"
    })
    .await;
    let before = picks(admin, &a_name).await;
    for _ in 0..30 {
        assert_eq!(request(listen).await.as_deref(), Ok("b"));
    }
    assert_eq!(
        picks(admin, &a_name).await,
        before,
        "a client met a checked-out backend"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_expect_against_a_real_redis() {
    let port = free_port();
    let redis = Server(
        Command::new("redis-server")
            .args([
                "--port",
                &port.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian: apt-get install redis-server)"),
    );
    listening(port, "redis-server").await;
    let dead = free_port();
    let p = proxy(
        &format!("master-slave:{port}:2,{dead}:1"),
        &[
            "--health-check",
            r"send-expect:PING\r\n:+PONG",
            "--check-interval",
            "0.2",
        ],
    );
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    wait_until("checks settled", Duration::from_secs(5), async || {
        state_of(admin, &dead.to_string()).await == "offline"
            && upstream_json(admin, 0, &port.to_string()).await["check"]["ok"] == true
    })
    .await;
    // Through the proxy, to the real server.
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    drop(s);
    // Redis goes away: out by its checks.
    drop(redis);
    wait_until("redis out", Duration::from_secs(5), async || {
        state_of(admin, &port.to_string()).await == "offline"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_against_a_real_nginx() {
    let dir = std::env::temp_dir().join(format!("upstreams-nginx-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off; master_process off; worker_processes 1;\n\
             error_log {d}/error.log; pid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
               fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen {port};\n\
                 location /health {{ return 200 \"ok\\n\"; }}\n\
                 location /down {{ return 503; }} }} }}\n"
        ),
    )
    .unwrap();
    let _nginx = Server(
        Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian: apt-get install nginx-light)"),
    );
    listening(port, "nginx").await;
    // Two listeners over the same nginx: one checks a path that answers 200, one a path that
    // answers 503.
    let (l1, l2, admin) = (free_port(), free_port(), free_port());
    let other = backend("other", "127.0.0.1:0");
    let listener = |listen: SocketAddr, path: &str| {
        format!(
            "[[listener]]\nlisten = \"{listen}\"\nupstreams = \"{port},{}\"\n\
             [listener.health_check]\ntype = \"http\"\npath = \"{path}\"\ninterval = 0.2\n",
            other.addrs[0]
        )
    };
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "admin = \"{admin}\"\n{}{}",
            listener(l1, "/health"),
            listener(l2, "/down")
        ),
    )
    .unwrap();
    let _p = spawn(&["proxy", "--config", config.to_str().unwrap()], 3);
    let name = port.to_string();
    wait_until("/down out", Duration::from_secs(5), async || {
        upstream_json(admin, 1, &name).await["state"] == "offline"
    })
    .await;
    let down = upstream_json(admin, 1, &name).await;
    assert_eq!(down["check"]["error"], "status 503", "{down}");
    let up = upstream_json(admin, 0, &name).await;
    assert_eq!(up["state"], "alive", "{up}");
    assert_eq!(up["check"]["ok"], true, "{up}");
    let _ = std::fs::remove_dir_all(&dir);
}
