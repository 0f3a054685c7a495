//! Data safety of `upstreams proxy` retries (issue #13): by default a request is never sent to
//! a second backend once any byte of it reached a first one; replaying is an explicit
//! `--retry-on` opt-in. Real sockets on 127.0.0.1, bounded in count and time.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a counting backend treats a request once it has read it.
#[derive(Clone, Copy)]
enum Then {
    /// Close without a byte of answer.
    Close,
    /// Answer `+OK` after this long.
    AnswerAfter(Duration),
}

/// A backend that counts every request it reads (one line), then does `then`.
async fn counting_backend(then: Then) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 256];
                while !buf.ends_with(b"\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                match then {
                    Then::Close => drop(s),
                    Then::AnswerAfter(wait) => {
                        tokio::time::sleep(wait).await;
                        let _ = s.write_all(b"+OK\r\n").await;
                        let _ = s.read(&mut chunk).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends `GET` and expects `+OK` back.
async fn expect_ok(listen: SocketAddr) {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"GET\r\n").await.unwrap();
    let mut answer = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer, b"+OK\r\n");
}

/// Sends one request line and reads until the proxy closes; the answer.
async fn one_request(listen: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"INCR balance 100\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the client was left hanging");
    answer
}

async fn three(then: Then) -> (String, Vec<Arc<AtomicUsize>>) {
    let mut addrs = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let (addr, seen) = counting_backend(then).await;
        addrs.push(addr.to_string());
        counts.push(seen);
    }
    (addrs.join(","), counts)
}

fn total(counts: &[Arc<AtomicUsize>]) -> usize {
    counts.iter().map(|c| c.load(Ordering::SeqCst)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_request_reaches_one_backend_even_when_all_close_without_answering() {
    let (def, counts) = three(Then::Close).await;
    // Generous error limits: the backends stay in and every request meets a closing one.
    let p = proxy(&def, &["--max-consecutive-errors", "1000"]);
    let (listen, admin) = (p.addrs[0], p.addrs[1]);
    for i in 1..=10 {
        assert_eq!(one_request(listen).await, b"", "request {i} was answered");
        assert_eq!(
            total(&counts),
            i,
            "request {i} was delivered more than once"
        );
    }
    // Each close was still a failure of its backend, and the clients were counted.
    assert_eq!(listener_figure(admin, "failed").await, 10);
    let metrics = admin_get(admin, "/metrics").await;
    let failures: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("upstreams_upstream_session_failures_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(failures, 10, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_late_answer_is_not_replayed_elsewhere() {
    let (def, counts) = three(Then::AnswerAfter(Duration::from_millis(600))).await;
    let p = proxy(
        &def,
        &[
            "--answer-timeout",
            "0.2",
            "--max-consecutive-errors",
            "1000",
        ],
    );
    let listen = p.addrs[0];
    for i in 1..=5 {
        // The answer timeout closes the client; no second backend sees the request.
        assert_eq!(one_request(listen).await, b"", "request {i}");
        assert_eq!(
            total(&counts),
            i,
            "request {i} was delivered more than once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_in_replays_go_to_every_retry() {
    // closed-before-answer: the request is replayed to the other two (retries 2).
    let (def, counts) = three(Then::Close).await;
    let p = proxy(
        &def,
        &[
            "--retry-on",
            "connect,closed-before-answer",
            "--max-consecutive-errors",
            "1000",
        ],
    );
    assert_eq!(one_request(p.addrs[0]).await, b"");
    assert_eq!(total(&counts), 3);
    // answer-timeout: a slow first backend is left, the request is replayed.
    let (slow, slow_seen) = counting_backend(Then::AnswerAfter(Duration::from_secs(3))).await;
    let (fast, fast_seen) = counting_backend(Then::AnswerAfter(Duration::ZERO)).await;
    let p = proxy(
        &format!("master-slave:{slow}:2,{fast}:1"),
        &[
            "--answer-timeout",
            "0.2",
            "--retry-on",
            "connect,answer-timeout",
        ],
    );
    expect_ok(p.addrs[0]).await;
    assert_eq!(
        (
            slow_seen.load(Ordering::SeqCst),
            fast_seen.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_by_default() {
    let refusing = free_port();
    let (good, seen) = counting_backend(Then::AnswerAfter(Duration::ZERO)).await;
    let p = proxy(&format!("master-slave:{refusing}:2,{good}:1"), &[]);
    expect_ok(p.addrs[0]).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}
