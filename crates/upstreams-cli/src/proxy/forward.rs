//! Accepting clients and forwarding them to upstreams, with retries on connect failures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use upstreams::{Event, Events, FailKind, Upstream, UpstreamList};

use super::config::Settings;
use super::stats::Stats;

/// A running listener: its list, settings (replaced on reload) and figures.
pub(crate) struct Listener {
    /// The configured address (reloads match listeners by it).
    pub(crate) listen: SocketAddr,
    /// The address actually bound (differs when the configuration says port 0).
    pub(crate) bound: SocketAddr,
    pub(crate) list: Arc<UpstreamList>,
    settings: RwLock<Arc<Settings>>,
    pub(crate) stats: Arc<Stats>,
    stop: Notify,
}

/// Open client sessions across listeners, for draining on shutdown.
#[derive(Default)]
pub(crate) struct Sessions {
    open: AtomicUsize,
    idle: Notify,
}

impl Sessions {
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until no session is open.
    pub(crate) async fn drained(&self) {
        while self.open() > 0 {
            let idle = self.idle.notified();
            if self.open() == 0 {
                break;
            }
            idle.await;
        }
    }
}

struct SessionGuard(Arc<Sessions>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Listener {
    pub(crate) fn new(settings: Settings, bound: SocketAddr) -> anyhow::Result<Arc<Self>> {
        let list = Arc::new(UpstreamList::new(
            &settings.definition,
            settings.limits.clone(),
        )?);
        let stats = Arc::new(Stats::default());
        let (listen, figures) = (bound, Arc::clone(&stats));
        let events: Events = [Event::Online, Event::Offline].into_iter().collect();
        list.add_watcher(events, move |event, up, errors| {
            tracing::info!(listener = %listen, upstream = up.name(), errors, "upstream {event}");
            figures.upstream(up.name()).changed(event.name());
        });
        Ok(Arc::new(Self {
            listen: settings.listen,
            bound,
            list,
            settings: RwLock::new(Arc::new(settings)),
            stats,
            stop: Notify::new(),
        }))
    }

    pub(crate) fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Applies reloaded settings: the list keeps the health of upstreams that stay.
    pub(crate) fn reload(&self, settings: Settings) {
        if settings.limits != *self.list.limits() {
            tracing::warn!(listener = %self.listen, "changed limits take effect on restart only");
        }
        let change = self.list.reconfigure(&settings.definition);
        tracing::info!(listener = %self.listen, added = ?change.added, removed = ?change.removed, "reloaded");
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// Stops accepting; open sessions go on.
    pub(crate) fn stop(&self) {
        self.stop.notify_one();
    }

    pub(crate) async fn accept_loop(self: Arc<Self>, tcp: TcpListener, sessions: Arc<Sessions>) {
        loop {
            tokio::select! {
                _ = self.stop.notified() => break,
                accepted = tcp.accept() => {
                    let (client, peer) = match accepted {
                        Ok(a) => a,
                        Err(err) => {
                            // Out of descriptors and the like: back off briefly, keep serving.
                            tracing::warn!(listener = %self.listen, %err, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    sessions.open.fetch_add(1, Ordering::SeqCst);
                    let guard = SessionGuard(Arc::clone(&sessions));
                    let me = Arc::clone(&self);
                    tokio::spawn(async move {
                        me.forward(client, peer).await;
                        drop(guard);
                    });
                }
            }
        }
        tracing::info!(listener = %self.listen, "stopped accepting");
    }

    /// One client: pick, connect, and wait for the backend's first byte, retrying elsewhere
    /// when the connect fails or the backend closes before answering (with the client's bytes
    /// so far replayed); then copy both ways.
    async fn forward(&self, mut client: TcpStream, peer: SocketAddr) {
        let settings = self.settings();
        let key = peer.ip().to_string(); // nginx's `hash $remote_addr consistent`
        let mut previous: Option<Arc<Upstream>> = None;
        // What the client sent before any backend answered: replayed on a retry.
        let mut sent: Vec<u8> = Vec::new();
        let mut client_done = false;
        for _attempt in 0..=settings.retries {
            let picked = match &previous {
                None => self.list.get(settings.rotation, key.as_bytes()),
                Some(prev) => self
                    .list
                    .get_except(prev, settings.rotation, key.as_bytes()),
            };
            let Some(picked) = picked else { break };
            let figures = self.stats.upstream(picked.name());
            figures.picks.fetch_add(1, Ordering::Relaxed);
            let failed = |picked: upstreams::Picked, reason: &str| {
                figures.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, upstream = picked.name(), reason, "upstream failed; retrying");
                let up = Arc::clone(picked.upstream());
                picked.fail(FailKind::Address, reason);
                up
            };
            let Some(addr) = picked.next_addr() else {
                previous = Some(failed(picked, "no address"));
                continue;
            };
            let started = Instant::now();
            let connected =
                tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await;
            let mut backend = match connected {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    previous = Some(failed(picked, &err.to_string()));
                    continue;
                }
                Err(_) => {
                    previous = Some(failed(picked, "connect timeout"));
                    continue;
                }
            };
            let seconds = started.elapsed().as_secs_f64();
            figures.observe_connect(seconds);
            picked.record_latency(seconds);
            let _ = backend.set_nodelay(true);
            match first_answer(&mut client, &mut backend, &mut sent, &mut client_done).await {
                First::Answered(n) => figures.bytes_in.fetch_add(n, Ordering::Relaxed),
                First::ClientGone => return,
                First::BackendClosed => {
                    previous = Some(failed(picked, "closed before answering"));
                    continue;
                }
            };
            // Health: a success. The pick stays in flight for the whole session (p2c load).
            picked.upstream().ok();
            figures.active.fetch_add(1, Ordering::Relaxed);
            let copied = if client_done {
                tokio::io::copy(&mut backend, &mut client)
                    .await
                    .map(|down| (0, down))
            } else {
                tokio::io::copy_bidirectional(&mut client, &mut backend).await
            };
            figures.active.fetch_sub(1, Ordering::Relaxed);
            figures
                .bytes_out
                .fetch_add(sent.len() as u64, Ordering::Relaxed);
            if let Ok((up_bytes, down_bytes)) = copied {
                figures.bytes_out.fetch_add(up_bytes, Ordering::Relaxed);
                figures.bytes_in.fetch_add(down_bytes, Ordering::Relaxed);
            }
            tracing::debug!(%peer, upstream = picked.name(), "session closed");
            drop(picked);
            return;
        }
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "no upstream could take the client; closing");
    }
}

/// Most client bytes kept for a replay; beyond this a session is committed to its backend.
const REPLAY_LIMIT: usize = 64 * 1024;

enum First {
    /// The backend answered; that many bytes went to the client.
    Answered(u64),
    /// The backend closed (or reset) before sending a byte: try another one.
    BackendClosed,
    /// The client went away.
    ClientGone,
}

/// Sends what the client said so far, then relays client bytes (keeping them for a replay)
/// until the backend sends its first bytes, which go to the client.
async fn first_answer(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    sent: &mut Vec<u8>,
    client_done: &mut bool,
) -> First {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !sent.is_empty() && backend.write_all(sent).await.is_err() {
        return First::BackendClosed;
    }
    if *client_done && backend.shutdown().await.is_err() {
        return First::BackendClosed;
    }
    let mut from_client = [0u8; 16 * 1024];
    let mut from_backend = [0u8; 16 * 1024];
    loop {
        if sent.len() >= REPLAY_LIMIT {
            // Too much to keep for a replay: commit to this backend.
            return First::Answered(0);
        }
        tokio::select! {
            read = backend.read(&mut from_backend) => match read {
                // A client that already left and a backend that then hangs up: nothing failed.
                Ok(0) | Err(_) if *client_done => return First::ClientGone,
                Ok(0) | Err(_) => return First::BackendClosed,
                Ok(n) => {
                    return match client.write_all(&from_backend[..n]).await {
                        Ok(()) => First::Answered(n as u64),
                        Err(_) => First::ClientGone,
                    };
                }
            },
            read = client.read(&mut from_client), if !*client_done => match read {
                Ok(0) => {
                    *client_done = true;
                    if backend.shutdown().await.is_err() {
                        return First::BackendClosed;
                    }
                }
                Err(_) => return First::ClientGone,
                Ok(n) => {
                    sent.extend_from_slice(&from_client[..n]);
                    if backend.write_all(&from_client[..n]).await.is_err() {
                        return First::BackendClosed;
                    }
                }
            },
        }
    }
}
