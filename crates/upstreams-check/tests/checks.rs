//! The checker against real sockets on 127.0.0.1: a port with nothing listening goes out with
//! no client traffic, a backend that starts listening comes back within rise × interval, one
//! that stops goes out; each transition is one event; stopping releases what it holds out.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use upstreams::{Event, Limits, Rotation, State, UpstreamList};
use upstreams_check::{CheckSettings, Checker, Probe};

fn settings(probe: Probe) -> CheckSettings {
    CheckSettings {
        probe,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 3,
        jitter: 0.1,
    }
}

/// A port nobody listens on (bound, then released).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Accepts and answers `+PONG\r\n` to anything.
async fn pong(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                let _ = s.write_all(b"+PONG\r\n").await;
            }
        });
    }
}

async fn wait_for(what: &str, limit: Duration, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_take_out_bring_back_and_release() {
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    tokio::spawn(pong(live));
    let dead = free_port();
    let list = Arc::new(
        UpstreamList::parse(&format!("{live_addr},{dead}"), 0, Limits::default()).unwrap(),
    );
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    list.add_watcher(
        [Event::Online, Event::Offline]
            .into_iter()
            .collect::<upstreams::Events>(),
        move |e, up, _| {
            log.lock()
                .unwrap()
                .push(format!("{} {}", e.name(), up.name()));
        },
    );
    let probe = Probe::SendExpect {
        send: b"PING\r\n".to_vec(),
        expect: b"+PONG".to_vec(),
    };
    let checker = Checker::new(Arc::clone(&list), settings(probe)).unwrap();
    let task = tokio::spawn(Arc::clone(&checker).run());
    let dead_up = list.find(&dead.to_string()).unwrap();
    let live_up = list.find(&live_addr.to_string()).unwrap();

    // Nothing listens on `dead`: out after three failed checks, no client involved.
    let took = wait_for("dead out", Duration::from_secs(5), || !dead_up.is_alive()).await;
    eprintln!("detected a dead port in {took:?} (fall 3 × interval 0.1 s)");
    assert!(live_up.is_alive());
    let status = checker.status(&dead_up).unwrap();
    assert!(
        !status.ok && status.checked_out && status.streak <= -3,
        "{status:?}"
    );
    // No client meets it.
    for _ in 0..50 {
        let p = list.get(Rotation::RoundRobin, b"").unwrap();
        assert_eq!(p.name(), live_addr.to_string());
        p.ok();
    }
    // It stays out past any revive time: only the checks bring it back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(dead_up.state(), State::Offline { .. }));

    // It starts listening: back within rise × interval (plus one interval of jitter and
    // the check's own time).
    let started = Instant::now();
    let revived = TcpListener::bind(dead).await.unwrap();
    tokio::spawn(pong(revived));
    wait_for("dead back", Duration::from_secs(5), || dead_up.is_alive()).await;
    eprintln!(
        "a revived backend came back in {:?} (rise 2 × interval 0.1 s)",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_millis(2 * 110 + 110 + 200));
    assert_eq!(
        events.lock().unwrap().clone(),
        [format!("offline {dead}"), format!("online {dead}")],
        "each transition is one event"
    );

    // A passively failed upstream whose checks pass comes back without its revive time.
    live_up.mark_offline(Duration::from_secs(3600));
    wait_for("live back by its checks", Duration::from_secs(2), || {
        live_up.is_alive()
    })
    .await;

    // A stopped checker releases what it holds out.
    let gone = free_port();
    list.reconfigure(
        &upstreams::Definition::parse(&format!("{live_addr},{dead},{gone}"), 0).unwrap(),
    );
    let gone_up = list.find(&gone.to_string()).unwrap();
    wait_for("gone out", Duration::from_secs(5), || !gone_up.is_alive()).await;
    checker.stop();
    task.await.unwrap();
    assert!(gone_up.is_alive(), "left out with nothing to bring it back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_answer_fails_and_checks_never_overlap() {
    // Answers slowly (longer than the interval, shorter than the timeout) and counts the
    // connections open at once.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (o, m) = (Arc::clone(&open), Arc::clone(&most));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (o, m) = (Arc::clone(&o), Arc::clone(&m));
            tokio::spawn(async move {
                let now = o.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                m.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
                let _ = s.write_all(b"-ERR\r\n").await;
                o.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    let other = free_port();
    let list =
        Arc::new(UpstreamList::parse(&format!("{addr},{other}"), 0, Limits::default()).unwrap());
    let probe = Probe::SendExpect {
        send: b"PING\r\n".to_vec(),
        expect: b"+PONG".to_vec(),
    };
    let checker = Checker::new(Arc::clone(&list), settings(probe)).unwrap();
    tokio::spawn(Arc::clone(&checker).run());
    let up = list.find(&addr.to_string()).unwrap();
    wait_for("wrong answers out", Duration::from_secs(5), || {
        !up.is_alive()
    })
    .await;
    let status = checker.status(&up).unwrap();
    assert_eq!(
        status.error.as_deref(),
        Some("unexpected answer \"-ERR\\r\\n\""),
        "{status:?}"
    );
    assert_eq!(
        most.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "checks of one upstream overlapped"
    );
    checker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_upstreams_spread_their_checks() {
    // 1 000 refusing ports at 1 s: one task, and the checks spread over the interval rather
    // than firing together.
    let defs: Vec<String> = (0..1000)
        .map(|i| format!("127.0.{}.{}:9", 1 + i / 250, 1 + i % 250))
        .collect();
    let list = Arc::new(UpstreamList::parse(&defs.join(","), 0, Limits::default()).unwrap());
    let s = CheckSettings {
        interval: Duration::from_secs(1),
        ..settings(Probe::Tcp)
    };
    let checker = Checker::new(Arc::clone(&list), s).unwrap();
    tokio::spawn(Arc::clone(&checker).run());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let checked = list
        .upstreams()
        .iter()
        .filter(|u| checker.status(u).is_some())
        .count();
    // About half of them had their first check in the first half interval.
    assert!(
        (300..=700).contains(&checked),
        "{checked} of 1000 checked after 0.5 s"
    );
    checker.stop();
}
