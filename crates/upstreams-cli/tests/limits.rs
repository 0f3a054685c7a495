//! Connection limits (issue #18): `max_conns` per upstream with a queue (`queue_timeout`),
//! and `max_connections` per listener, against the real binary on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client that has said `word` and heard it back: a session in progress.
async fn open_session(listen: SocketAddr, word: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(word).await.unwrap();
    let mut buf = vec![0; word.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(buf, word);
    s
}

/// Whether `s` hears `n` bytes within `wait`.
async fn hears(s: &mut TcpStream, n: usize, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0; n];
    match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_conns_queues_then_serves_or_times_out() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let p = proxy(
        &format!("{a},{b}"),
        &["--max-conns", "1", "--queue-timeout", "800ms"],
    );
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    // Two sessions fill both upstreams.
    let first = open_session(listen, b"one").await;
    let _second = open_session(listen, b"two").await;
    // The third waits in the queue…
    let mut third = TcpStream::connect(listen).await.unwrap();
    third.write_all(b"three").await.unwrap();
    assert!(hears(&mut third, 5, Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(listener_figure(admin, "queued").await, 1);
    // …and is served as soon as a session ends.
    let freed = Instant::now();
    drop(first);
    let got = hears(&mut third, 5, Duration::from_secs(2)).await;
    assert_eq!(got.as_deref(), Some(&b"three"[..]));
    assert!(
        freed.elapsed() < Duration::from_millis(500),
        "{:?}",
        freed.elapsed()
    );
    // A fourth, with both upstreams busy again, is closed after queue_timeout, unserved.
    let mut fourth = TcpStream::connect(listen).await.unwrap();
    fourth.write_all(b"four").await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(listener_figure(admin, "queued_total").await, 2);
    assert_eq!(listener_figure(admin, "queue_timeouts").await, 1);
    assert_eq!(listener_figure(admin, "refused").await, 0);
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metrics.contains("upstreams_listener_queue_timeouts_total{"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_stops_accepting_until_a_client_leaves() {
    let a = echo_backend().await;
    let p = proxy(&a.to_string(), &["--max-connections", "2"]);
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    let first = open_session(listen, b"one").await;
    let _second = open_session(listen, b"two").await;
    // The third connects (the kernel's backlog) but is not served…
    let mut third = TcpStream::connect(listen).await.unwrap();
    third.write_all(b"three").await.unwrap();
    assert!(hears(&mut third, 5, Duration::from_millis(400))
        .await
        .is_none());
    assert_eq!(listener_figure(admin, "connections").await, 2);
    assert_eq!(listener_figure(admin, "accept_paused").await, 1);
    // …until a client leaves.
    drop(first);
    let got = hears(&mut third, 5, Duration::from_secs(2)).await;
    assert_eq!(got.as_deref(), Some(&b"three"[..]));
}
