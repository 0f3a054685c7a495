//! `upstreams proxy` with real TCP backends on loopback (separate processes, so they can be
//! stopped and SIGKILLed), real clients, and the admin endpoints. Bounded in count and time.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_stopping_and_dying_under_load() {
    let a = backend("a", "127.0.0.1:0");
    let b = backend("b", "127.0.0.1:0");
    let c = backend("c", "127.0.0.1:0");
    let (a_addr, b_addr) = (a.addrs[0], b.addrs[0]);
    let def = format!("{},{},{}", a.addrs[0], b.addrs[0], c.addrs[0]);
    let p = proxy(&def, &["--revive-time", "3", "--revive-jitter", "0"]);
    let (listen, admin) = (p.addrs[0], p.addrs[1]);

    let figures = Arc::new(Load::default());
    let run = tokio::spawn(load(listen, 20_000, 50, figures.clone()));
    wait_until("5000 requests", Duration::from_secs(60), async || {
        figures.done.load(Ordering::SeqCst) >= 5_000
    })
    .await;
    // a stops listening; its open sessions complete: nothing may fail.
    a.signal("-TERM");
    wait_until("10000 requests", Duration::from_secs(60), async || {
        figures.done.load(Ordering::SeqCst) >= 10_000
    })
    .await;
    let failed_before_kill = figures.failed.load(Ordering::SeqCst);
    // b dies at once: only sessions in flight on it may fail.
    b.signal("-KILL");
    run.await.unwrap();
    let failed = figures.failed.load(Ordering::SeqCst);
    assert_eq!(failed_before_kill, 0, "a graceful stop lost requests");
    assert!(
        failed <= 50,
        "{failed} failed: more than the sessions in flight on the dead backend"
    );

    assert_eq!(state_of(admin, &a_addr.to_string()).await, "offline");
    assert_eq!(state_of(admin, &b_addr.to_string()).await, "offline");
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "upstreams_upstream_up{{listener=\"{listen}\",upstream=\"{b_addr}\"}} 0"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("upstreams_upstream_connect_seconds_bucket"));

    // b comes back on its port and rejoins after revive_time (3 s).
    let b2 = backend("b", &b_addr.to_string());
    let back = Instant::now();
    let mut served_by_b = false;
    wait_until("b back", Duration::from_secs(15), async || {
        served_by_b |= request(listen).await.as_deref() == Ok("b");
        served_by_b
    })
    .await;
    assert!(back.elapsed() < Duration::from_secs(10));
    assert_eq!(state_of(admin, &b_addr.to_string()).await, "alive");
    drop(b2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_clients_closed_promptly_then_recovery() {
    let a = backend("a", "127.0.0.1:0");
    let a_addr = a.addrs[0];
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead); // nothing listens there
    let def = format!("{a_addr},{dead_addr}");
    let p = proxy(&def, &["--revive-time", "1", "--revive-jitter", "0"]);
    let listen = p.addrs[0];
    assert_eq!(request(listen).await.as_deref(), Ok("a"));
    drop(a);
    for _ in 0..20 {
        let started = Instant::now();
        assert!(request(listen).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a client waited {:?}",
            started.elapsed()
        );
    }
    // The proxy is still up; a backend returns and the pool recovers through a probe.
    let _a2 = backend("a", &a_addr.to_string());
    wait_until("recovery", Duration::from_secs(15), async || {
        request(listen).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_adds_and_removes_backends_under_load() {
    let a = backend("a", "127.0.0.1:0");
    let b = backend("b", "127.0.0.1:0");
    let c = backend("c", "127.0.0.1:0");
    let dir = std::env::temp_dir().join(format!("upstreams-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("proxy.toml");
    let (listen, admin) = (free_port(), free_port());
    let write = |list: String| {
        let text = format!(
            "admin = \"{admin}\"\n[[listener]]\nlisten = \"{listen}\"\nupstreams = \"{list}\"\n"
        );
        std::fs::write(&config, text).unwrap();
    };
    write(format!("{},{}", a.addrs[0], b.addrs[0]));
    let p = spawn(&["proxy", "--config", config.to_str().unwrap()], 2);
    assert_eq!(p.addrs, [listen, admin]);

    let figures = Arc::new(Load::default());
    let run = tokio::spawn(load(listen, 6_000, 50, figures.clone()));
    wait_until("2000 requests", Duration::from_secs(60), async || {
        figures.done.load(Ordering::SeqCst) >= 2_000
    })
    .await;
    write(format!("{},{}", b.addrs[0], c.addrs[0]));
    p.signal("-HUP");
    run.await.unwrap();
    assert_eq!(
        figures.failed.load(Ordering::SeqCst),
        0,
        "a reload lost requests"
    );
    assert_eq!(state_of(admin, &a.addrs[0].to_string()).await, "absent");
    assert_eq!(state_of(admin, &c.addrs[0].to_string()).await, "alive");
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json").await).unwrap();
    let c_picks = status["listeners"][0]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == c.addrs[0].to_string())
        .unwrap()["picks"]
        .as_u64()
        .unwrap();
    assert!(c_picks > 100, "the added backend took traffic: {c_picks}");
    // A broken file is refused; the running configuration stays.
    std::fs::write(&config, "[[listener]]\nlisten = 5\n").unwrap();
    p.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(request(listen).await.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_open_sessions() {
    let a = backend("a", "127.0.0.1:0");
    let mut p = proxy(&a.addrs[0].to_string(), &["--drain-timeout", "10"]);
    let listen = p.addrs[0];
    // An open session: the request is sent only after the proxy was told to stop.
    let mut open = TcpStream::connect(listen).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "still accepting after SIGTERM"
    );
    open.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    open.read_to_end(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "the open session completed"
    );
    drop(open);
    // Then, with no session left, the proxy exits by itself.
    let started = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "proxy did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The relay after the first answer: 1 MiB each way on one connection (many times the
/// buffers), written while the echo is read back; then the client half-closes, the echo's
/// end still arrives, and the byte counters in /metrics add up to what went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_streams_both_ways_and_passes_half_close() {
    let echo = echo_backend().await;
    let p = proxy(&echo.to_string(), &[]);
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    let total = 1 << 20;
    let payload: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
    let client = TcpStream::connect(listen).await.unwrap();
    let (mut r, mut w) = client.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(7_000) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap(); // half-close: the answer must still come back whole
        w
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut back))
        .await
        .expect("the echo's end arrives")
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the echo differs from what was sent");
    let figure = |text: &str, name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&echo.to_string()))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    wait_until("byte counters", Duration::from_secs(3), async || {
        let metrics = admin_get(admin, "/metrics").await;
        figure(&metrics, "upstreams_upstream_sent_bytes_total") == total as u64
            && figure(&metrics, "upstreams_upstream_received_bytes_total") == total as u64
    })
    .await;
}

/// A backend that greets, ends its side (FIN) and then reads on: each connection sends what
/// the backend received after its end, once the client side ends, on the returned channel.
async fn greeting_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                stream.write_all(b"hello\n").await.unwrap();
                stream.shutdown().await.unwrap();
                let mut after = Vec::new();
                // A reset (the session ended while bytes were unread) counts as the end too.
                let _ = stream.read_to_end(&mut after).await;
                let _ = tx.send(after);
            });
        }
    });
    (addr, rx)
}

/// A client of [`greeting_backend`] through the proxy at `listen`, after the greeting and
/// the backend's end of stream have reached it; its own side still open.
async fn greeted(listen: std::net::SocketAddr) -> TcpStream {
    let mut client = TcpStream::connect(listen).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
        .await
        .expect("the backend's end reaches the client")
        .unwrap();
    assert_eq!(got, b"hello\n");
    client
}

/// The backend's end of stream: by default it ends the session as soon as the greeting
/// reached the client (the client sees its end, the backend sees the session's end, while the
/// client still holds its socket open); with `--half-close` it is passed on and the client
/// may still talk to the backend afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_end_ends_the_session_unless_half_close() {
    let (greeter, mut heard) = greeting_backend().await;
    let p = proxy(&greeter.to_string(), &[]);
    let client = greeted(p.addrs[0]).await;
    // The client has not closed, yet the backend's connection ends: the session is over.
    let after = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("the session ends without waiting for the client")
        .unwrap();
    assert!(after.is_empty());
    wait_until("no active session", Duration::from_secs(3), async || {
        !admin_get(p.addrs[1], "/metrics")
            .await
            .lines()
            .any(|l| l.starts_with("upstreams_upstream_active_connections{") && !l.ends_with(" 0"))
    })
    .await;
    drop(client);

    let p = proxy(&greeter.to_string(), &["--half-close"]);
    let mut client = greeted(p.addrs[0]).await;
    // The session is still open towards the backend: what the client says now arrives.
    client.write_all(b"late words").await.unwrap();
    client.shutdown().await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("the client's end reaches the backend")
        .unwrap();
    assert_eq!(after, b"late words");
}

/// `--rotation hash` keys on the client's address (nginx's `hash $remote_addr consistent`):
/// clients from each of eight loopback addresses always reach one backend, and it is the one
/// `upstreams pick` places the address text on, so the key is the address and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_rotation_keys_on_the_client_address() {
    let addrs: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
    let _backends: Vec<Proc> = addrs.iter().map(|a| backend(a, a)).collect();
    let definition = addrs.join(",");
    let p = proxy(&definition, &["--rotation", "hash"]);
    let sources: Vec<std::net::IpAddr> = (1..=8).map(|i| [127, 0, 0, i].into()).collect();
    let keys: Vec<String> = sources.iter().map(ToString::to_string).collect();
    let mut args = vec!["pick", definition.as_str()];
    args.extend(keys.iter().map(String::as_str));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_upstreams"))
        .args(&args)
        .output()
        .unwrap();
    let placed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(placed.len(), sources.len());
    let mut reached = std::collections::HashSet::new();
    for (source, want) in sources.iter().zip(&placed) {
        for _ in 0..4 {
            let body = request_from(Some(*source), p.addrs[0]).await.unwrap();
            assert_eq!(&body, want, "client {source}");
            reached.insert(body);
        }
    }
    assert!(reached.len() > 1, "eight addresses all on one backend");
}

/// A reload that changes only the limits applies them to the running list: a refusing
/// backend tolerated under `max_errors = 1000` goes offline soon after the reload sets 1,
/// and no client sees a failure on the way (each refusal is retried on the live backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_applies_changed_limits() {
    let a = backend("a", "127.0.0.1:0");
    // Bound but not listening: connects are refused, and no other port here can take it.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = reserved.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("upstreams-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("proxy.toml");
    let (listen, admin) = (free_port(), free_port());
    let write = |max_errors: u32| {
        let text = format!(
            "admin = \"{admin}\"\n[[listener]]\nlisten = \"{listen}\"\nupstreams = \"{},{dead}\"\n\
             [listener.limits]\nmax_errors = {max_errors}\nmax_consecutive_errors = 0\n\
             error_time = 0.5\nrevive_time = 60.0\n",
            a.addrs[0]
        );
        std::fs::write(&config, text).unwrap();
    };
    write(1000);
    let p = spawn(&["proxy", "--config", config.to_str().unwrap()], 2);
    for _ in 0..20 {
        assert_eq!(request(listen).await.as_deref(), Ok("a"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state_of(admin, &dead.to_string()).await, "alive");
    write(1);
    p.signal("-HUP");
    wait_until(
        "the refusing backend offline",
        Duration::from_secs(10),
        async || {
            assert_eq!(request(listen).await.as_deref(), Ok("a"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            state_of(admin, &dead.to_string()).await == "offline"
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
