//! The admin listener (issue #18): write requests (drain / enable) only with `--admin-write`,
//! and bounds that keep it from starving the proxy: a header-read timeout, a cap on its
//! connections, and pages that do not grow with a list's size.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request with a method; the status line and the body.
async fn admin_call(admin: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_enable_through_the_admin_api() {
    let a = backend("a", "127.0.0.1:0");
    let b = backend("b", "127.0.0.1:0");
    let (a_name, b_name) = (a.addrs[0].to_string(), b.addrs[0].to_string());
    // Read-only by default.
    let ro = proxy(&format!("{a_name},{b_name}"), &[]);
    let path = format!("/listeners/{}/upstreams/{a_name}/drain", ro.addrs[0]);
    let (status, body) = admin_call(ro.addrs[1], "POST", &path).await;
    assert!(status.contains("403"), "{status} {body}");
    assert!(body.contains("--admin-write"), "{body}");
    drop(ro);

    let p = proxy(&format!("{a_name},{b_name}"), &["--admin-write"]);
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    let url = |action: &str| format!("/listeners/{listen}/upstreams/{a_name}/{action}");
    let (status, body) = admin_call(admin, "POST", &url("drain")).await;
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(state_of(admin, &a_name).await, "draining");
    for _ in 0..10 {
        assert_eq!(request(listen).await.unwrap(), "b");
    }
    let (status, _) = admin_call(admin, "POST", &url("drain")).await;
    assert!(status.contains("409"), "{status}");
    let (status, _) = admin_call(admin, "POST", &url("enable")).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(state_of(admin, &a_name).await, "alive");
    let mut served = std::collections::HashSet::new();
    for _ in 0..10 {
        served.insert(request(listen).await.unwrap());
    }
    assert_eq!(served.len(), 2, "{served:?}");
    // Unknown listener, upstream or action; GET is not a write.
    let (status, _) = admin_call(
        admin,
        "POST",
        &format!("/listeners/{listen}/upstreams/nope/drain"),
    )
    .await;
    assert!(status.contains("404"), "{status}");
    let (status, _) = admin_call(admin, "POST", &url("explode")).await;
    assert!(status.contains("404"), "{status}");
    let (status, _) = admin_call(admin, "GET", &url("drain")).await;
    assert!(status.contains("405"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_bounded() {
    let b = backend("b", "127.0.0.1:0");
    // 1 501 upstreams: 1 500 distinct loopback addresses that need not answer, and one real
    // backend.
    let many: Vec<String> = (0..1500)
        .map(|i| format!("127.1.{}.{}:9", i / 250, i % 250 + 1))
        .chain([format!("{}:10", b.addrs[0])])
        .collect();
    // Master-slave: clients go to the one real backend (the highest weight).
    let p = proxy(&format!("master-slave:{}", many.join(",")), &[]);
    let admin = p.addrs[1];
    // Pages: at most 1 000 upstreams per listener, the rest behind ?offset.
    let page: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json").await).unwrap();
    let l = &page["listeners"][0];
    assert_eq!(l["upstreams"].as_array().unwrap().len(), 1000);
    assert_eq!(l["upstreams_total"], 1501);
    let rest: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json?offset=1000&limit=5000").await)
            .unwrap();
    assert_eq!(
        rest["listeners"][0]["upstreams"].as_array().unwrap().len(),
        501
    );
    // Metrics: listener-level series only above 1 000 upstreams, unless asked.
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        !metrics.contains("upstreams_upstream_up{"),
        "per-upstream series present"
    );
    assert!(
        metrics.contains("upstreams_listener_upstreams{"),
        "{metrics}"
    );
    let all = admin_get(admin, "/metrics?per_upstream=all").await;
    assert_eq!(all.matches("upstreams_upstream_up{").count(), 1501);

    // A client that never finishes its request head is closed after the header timeout.
    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\n").await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(8), "{waited:?}");

    // 64 idle connections fill the admin listener; the 65th takes the place of the one idle
    // longest (hostile.rs has the flood cases); the proxy serves clients throughout.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(admin_get(admin, "/healthz").await, "ok\n");
    let mut first = idle.remove(0);
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), first.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the oldest idle connection was closed");
    assert_eq!(request(p.addrs[0]).await.unwrap(), "b");
}

/// `/metrics` passes `promtool check metrics` (the Prometheus text format and its naming
/// rules), with every family present: traffic, a retry, health checks, process figures;
/// OpenMetrics when the scraper asks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let b = backend("b", "127.0.0.1:0");
    let dead = free_port();
    let p = proxy(
        &format!("{},{dead}", b.addrs[0]),
        &["--health-check", "tcp", "--check-interval", "0.2"],
    );
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    for _ in 0..4 {
        let _ = request(listen).await;
    }
    wait_until("a check round", Duration::from_secs(5), async || {
        admin_get(admin, "/metrics")
            .await
            .contains("upstreams_upstream_check_up{")
    })
    .await;
    let metrics = admin_get(admin, "/metrics").await;
    for family in [
        "upstreams_build_info{",
        "upstreams_upstream_picks_total{",
        "upstreams_upstream_received_bytes_total{",
        "upstreams_upstream_connect_seconds_bucket{",
        "upstreams_upstream_check_up{",
        "upstreams_listener_retries_total{",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian: apt-get install prometheus)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // OpenMetrics on request.
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("application/openmetrics-text"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}
