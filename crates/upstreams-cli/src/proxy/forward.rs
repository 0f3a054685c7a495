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
    pub(crate) listen: SocketAddr,
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
    pub(crate) fn new(settings: Settings) -> anyhow::Result<Arc<Self>> {
        let list = Arc::new(UpstreamList::new(
            &settings.definition,
            settings.limits.clone(),
        )?);
        let stats = Arc::new(Stats::default());
        let (listen, figures) = (settings.listen, Arc::clone(&stats));
        let events: Events = [Event::Online, Event::Offline].into_iter().collect();
        list.add_watcher(events, move |event, up, errors| {
            tracing::info!(listener = %listen, upstream = up.name(), errors, "upstream {event}");
            figures.upstream(up.name()).changed(event.name());
        });
        Ok(Arc::new(Self {
            listen: settings.listen,
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

    /// One client: pick, connect (retrying elsewhere on failure), then copy both ways.
    async fn forward(&self, mut client: TcpStream, peer: SocketAddr) {
        let settings = self.settings();
        let key = peer.ip().to_string(); // nginx's `hash $remote_addr consistent`
        let mut previous: Option<Arc<Upstream>> = None;
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
            let Some(addr) = picked.next_addr() else {
                let up = Arc::clone(picked.upstream());
                picked.fail(FailKind::Address, "no address");
                previous = Some(up);
                continue;
            };
            let started = Instant::now();
            let connected =
                tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await;
            let mut backend = match connected {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    figures.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, upstream = picked.name(), %err, "connect failed");
                    let up = Arc::clone(picked.upstream());
                    picked.fail(FailKind::Address, &err.to_string());
                    previous = Some(up);
                    continue;
                }
                Err(_) => {
                    figures.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, upstream = picked.name(), "connect timed out");
                    let up = Arc::clone(picked.upstream());
                    picked.fail(FailKind::Address, "connect timeout");
                    previous = Some(up);
                    continue;
                }
            };
            let seconds = started.elapsed().as_secs_f64();
            figures.observe_connect(seconds);
            picked.record_latency(seconds);
            // Health: a success. The pick stays in flight for the whole session (p2c load).
            picked.upstream().ok();
            let _ = backend.set_nodelay(true);
            figures.active.fetch_add(1, Ordering::Relaxed);
            let copied = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
            figures.active.fetch_sub(1, Ordering::Relaxed);
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
