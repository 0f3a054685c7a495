//! Accepting clients and forwarding them to upstreams, with retries on connect failures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use upstreams::{Event, Events, FailKind, Host, Upstream, UpstreamList};
use upstreams_check::Checker;

use super::access::{Outcome, Tally};
use super::config::{RetryPolicy, Settings};
use super::net::{self, Acceptor, Backend, Client, ListenAddr, Target};
use super::proxy_protocol;
use super::ratelog::RateLimited;
use super::relay::{later, pool, relay, End, READ_SIZE};
use super::stats::{Stats, UpStats};

/// A running listener: its list, settings (replaced on reload) and figures.
pub(crate) struct Listener {
    /// The configured address (reloads match listeners by it).
    pub(crate) listen: ListenAddr,
    /// The address actually bound (differs when the configuration says port 0).
    pub(crate) bound: ListenAddr,
    pub(crate) list: Arc<UpstreamList>,
    /// Upstreams a reload removed, shown (as `draining`) while sessions still use them.
    draining: std::sync::Mutex<Vec<Arc<Upstream>>>,
    /// `draining.len()`, read without the lock as each session ends.
    draining_len: AtomicUsize,
    /// The active health checker, when the settings ask for one.
    checker: std::sync::Mutex<Option<Arc<Checker>>>,
    settings: RwLock<Arc<Settings>>,
    pub(crate) stats: Arc<Stats>,
    stop: Notify,
    /// Failed accepts and exhausted descriptors: a line a second at most, each.
    accept_log: RateLimited,
    exhausted_log: RateLimited,
    /// Clients waiting under `max_conns`, woken first to last as sessions end.
    queue: super::queue::Queue,
    /// Signalled when a client closes: accepting resumes under `max_connections`.
    conn_freed: Notify,
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
    pub(crate) fn new(settings: Settings, bound: ListenAddr) -> anyhow::Result<Arc<Self>> {
        let list = Arc::new(UpstreamList::new(
            &settings.definition,
            settings.limits.clone(),
        )?);
        let stats = Arc::new(Stats::default());
        let (listen, figures) = (bound.clone(), Arc::clone(&stats));
        let events: Events = [Event::Online, Event::Offline].into_iter().collect();
        list.add_watcher(events, move |event, up, errors| {
            let by_admin = figures
                .upstream(up.name())
                .drained_by_admin
                .load(Ordering::Relaxed);
            if up.state() == upstreams::State::Draining && by_admin {
                tracing::info!(listener = %listen, upstream = up.name(), "upstream drained; sessions in progress go on");
                figures.upstream(up.name()).changed("drained");
                return;
            }
            // A reload's removal reaches watchers as `offline`; it is no outage.
            if up.state() == upstreams::State::Draining {
                tracing::info!(listener = %listen, upstream = up.name(), "upstream removed by reload; draining");
                figures.upstream(up.name()).changed("removed");
                return;
            }
            match (event, up.last_failure()) {
                (Event::Offline, Some(reason)) => {
                    tracing::info!(listener = %listen, upstream = up.name(), errors, %reason, "upstream {event}")
                }
                _ => tracing::info!(listener = %listen, upstream = up.name(), errors, "upstream {event}"),
            }
            figures.upstream(up.name()).changed(event.name());
        });
        let checker = settings
            .health_check
            .clone()
            .map(|c| Checker::new(Arc::clone(&list), c))
            .transpose()?;
        Ok(Arc::new(Self {
            listen: settings.listen.clone(),
            bound,
            list,
            draining: std::sync::Mutex::default(),
            draining_len: AtomicUsize::new(0),
            checker: std::sync::Mutex::new(checker),
            settings: RwLock::new(Arc::new(settings)),
            stats,
            stop: Notify::new(),
            queue: super::queue::Queue::default(),
            accept_log: RateLimited::new(Duration::from_secs(1)),
            exhausted_log: RateLimited::new(Duration::from_secs(1)),
            conn_freed: Notify::new(),
        }))
    }

    pub(crate) fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Applies reloaded settings: the list keeps the health of upstreams that stay.
    pub(crate) fn reload(&self, settings: Settings) {
        // Health limits apply at once (the upstreams keep their state); the few fixed once a
        // list exists wait for a restart.
        match self.list.set_limits(settings.limits.clone()) {
            Ok(kept) if !kept.is_empty() => {
                tracing::warn!(listener = %self.listen, ?kept, "these changed limits take effect on restart only");
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(listener = %self.listen, %err, "invalid limits not applied");
            }
        }
        let before = self.list.upstreams();
        let change = self.list.reconfigure(&settings.definition);
        let after: std::collections::HashSet<*const Upstream> =
            self.list.upstreams().iter().map(Arc::as_ptr).collect();
        {
            let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
            draining.extend(
                before
                    .into_iter()
                    .filter(|up| !after.contains(&Arc::as_ptr(up))),
            );
        }
        self.prune_draining();
        {
            let mut checker = self.checker.lock().unwrap_or_else(|p| p.into_inner());
            match (checker.as_ref(), settings.health_check.clone()) {
                (Some(running), Some(new)) => {
                    if *running.settings() != new {
                        // Validated with the rest of the file; the error cannot happen here.
                        if let Err(err) = running.set_settings(new) {
                            tracing::warn!(listener = %self.listen, %err, "health check settings not applied");
                        }
                    }
                }
                (None, Some(new)) => match Checker::new(Arc::clone(&self.list), new) {
                    Ok(new) => {
                        tokio::spawn(Arc::clone(&new).run());
                        *checker = Some(new);
                    }
                    Err(err) => {
                        tracing::warn!(listener = %self.listen, %err, "health checks not started")
                    }
                },
                (Some(running), None) => {
                    running.stop();
                    *checker = None;
                }
                (None, None) => {}
            }
        }
        tracing::info!(
            listener = %self.listen,
            added = ?change.added,
            removed = ?change.removed,
            reweighted = ?change.reweighted,
            "reloaded"
        );
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// The upstreams to show: the list's, then removed ones that sessions still use, one
    /// entry per name (an upstream a reload brought back is shown as the list's, its
    /// figures, kept by name, include the old sessions).
    pub(crate) fn shown_upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut shown = self.list.upstreams();
        let draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        shown.extend(draining.iter().cloned());
        shown
    }

    /// Whether some removed upstream has no session left (O(removed ones), no list scan).
    fn some_draining_unused(&self) -> bool {
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|d| d.inflight() == 0)
    }

    /// Forgets removed upstreams that no session uses any more, and the figures of names
    /// that are neither listed nor used. Runs at each reload and when a session of a
    /// removed upstream ends, so memory follows what is in use, whether or not anyone reads
    /// the admin pages.
    fn prune_draining(&self) {
        let listed = self.list.upstreams();
        let names: std::collections::HashSet<&str> = listed.iter().map(|u| u.name()).collect();
        let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        // A session holds its pick in flight until it ends; a name listed again is shown
        // (and counted) as the list's upstream.
        draining.retain(|up| up.inflight() > 0 && !names.contains(up.name()));
        self.draining_len.store(draining.len(), Ordering::Release);
        let kept: std::collections::HashSet<&str> = names
            .iter()
            .copied()
            .chain(draining.iter().map(|u| u.name()))
            .collect();
        self.stats.retain(|name| kept.contains(name));
    }

    /// Starts the health checks, if any (once the listener is in service).
    pub(crate) fn start_checks(&self) {
        if let Some(checker) = self.checker() {
            tokio::spawn(checker.run());
        }
    }

    /// The health checker, if checks run.
    pub(crate) fn checker(&self) -> Option<Arc<Checker>> {
        self.checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops accepting and checking; open sessions go on.
    pub(crate) fn stop(&self) {
        self.stop.notify_one();
        if let Some(checker) = self.checker() {
            checker.stop();
        }
    }

    pub(crate) async fn accept_loop(self: Arc<Self>, acceptor: Acceptor, sessions: Arc<Sessions>) {
        loop {
            if !self.room_to_accept().await {
                break;
            }
            tokio::select! {
                _ = self.stop.notified() => break,
                accepted = acceptor.accept() => {
                    let (client, peer) = match accepted {
                        Ok(a) => a,
                        Err(err) => {
                            // Out of descriptors and the like: pause accepting (500 ms, as
                            // nginx does; the kernel's backlog holds new clients meanwhile),
                            // keep serving, and log a line a second at most.
                            self.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                            let pause = if is_local_exhaustion(&err) { 500 } else { 10 };
                            if let Some(held) = self.accept_log.allow() {
                                tracing::warn!(listener = %self.listen, %err, failures_not_logged = held, pause_ms = pause, "accept failed");
                            }
                            tokio::select! {
                                _ = self.stop.notified() => break,
                                () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                            }
                            continue;
                        }
                    };
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                    sessions.open.fetch_add(1, Ordering::SeqCst);
                    let guard = SessionGuard(Arc::clone(&sessions));
                    let me = Arc::clone(&self);
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let (tally, peer) = me.serve(client, peer).await;
                        me.stats.record(tally.outcome);
                        me.stats.connections.fetch_sub(1, Ordering::Relaxed);
                        // Wake a queued client (`max_conns`) and a paused accept loop
                        // (`max_connections`); a permit is kept when nobody waits.
                        me.queue.wake_first();
                        // The last session of a removed upstream lets it go (a look at
                        // the short draining list, only while it is not empty).
                        if me.draining_len.load(Ordering::Acquire) > 0 && me.some_draining_unused() {
                            me.prune_draining();
                        }
                        me.conn_freed.notify_one();
                        if let Some(log) = super::access::LOG.get() {
                            let client = PeerName(peer).to_string();
                            log.session(&me.bound.to_string(), &client, &tally, started.elapsed());
                        }
                        drop(guard);
                    });
                }
            }
        }
        tracing::info!(listener = %self.listen, "stopped accepting");
    }

    /// Waits while the listener serves `max_connections` clients (the kernel's backlog holds
    /// the next ones meanwhile). False when the listener is stopping.
    async fn room_to_accept(&self) -> bool {
        let mut paused = false;
        loop {
            let max = self.settings().max_connections;
            let open = usize::try_from(self.stats.connections.load(Ordering::Relaxed)).unwrap_or(0);
            if max == 0 || open < max {
                return true;
            }
            if !paused {
                paused = true;
                self.stats.accept_paused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %self.listen, max, "max_connections reached; not accepting");
            }
            // A reload may raise the limit: look again now and then.
            tokio::select! {
                _ = self.stop.notified() => {
                    // Keep the stop for the accept loop's own wait.
                    self.stop.notify_one();
                    return false;
                }
                _ = self.conn_freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// A pick for a client that found every upstream at `max_conns` (or others already
    /// waiting): waits its turn, first in first out, for a session to end, up to
    /// `queue_timeout`. Meanwhile the client's bytes are read into `sent` (forwarded once it
    /// is served), so a client that closes while it waits is seen: it is not forwarded
    /// (HAProxy's `abortonclose`). Under `half_close` a client's end of stream is its
    /// half-close instead, and it keeps its place.
    async fn wait_in_queue(
        &self,
        settings: &Settings,
        key: &[u8],
        client: &mut Client,
        sent: &mut Vec<u8>,
        client_done: &mut bool,
    ) -> Result<upstreams::Picked, Unqueued> {
        use tokio::io::AsyncReadExt;
        self.stats.queued_total.fetch_add(1, Ordering::Relaxed);
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        let ticket = self.queue.join();
        let deadline = Instant::now() + settings.queue_timeout;
        let picked = loop {
            if ticket.is_first() {
                if let Some(p) = self.list.get(settings.rotation, key) {
                    break Ok(p);
                }
            }
            let now = Instant::now();
            if self.list.alive_count() == 0 {
                break Err(Unqueued::NoUpstream);
            }
            if now >= deadline {
                break Err(Unqueued::Timeout);
            }
            // A missed wake-up costs at most 50 ms.
            let nap = (deadline - now).min(Duration::from_millis(50));
            room_for_a_read(sent);
            let listen = !*client_done && sent.len() < REPLAY_LIMIT;
            tokio::select! {
                () = ticket.wake.notified() => {}
                () = tokio::time::sleep(nap) => {}
                read = client.read_buf(sent), if listen => match read {
                    Ok(0) if settings.half_close => *client_done = true,
                    Ok(0) | Err(_) => break Err(Unqueued::ClientGone),
                    Ok(_) => {}
                },
            }
        };
        drop(ticket);
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        picked
    }

    /// One client: its PROXY protocol header first when the listener expects one (the
    /// address it carries is the client's from then on), then [`Listener::forward`]. Returns
    /// the tally and the client address for the access log.
    async fn serve(
        &self,
        mut client: Client,
        peer: Option<SocketAddr>,
    ) -> (Tally, Option<SocketAddr>) {
        let settings = self.settings();
        let mut early = Vec::new();
        let mut addrs = None;
        let mut peer = peer;
        if let Some(timeout) = settings.accept_proxy {
            match proxy_protocol::read_header(&mut client, &mut early, timeout).await {
                Ok(Some(carried)) => {
                    peer = Some(carried.source);
                    addrs = Some(carried);
                }
                Ok(None) => {}
                Err(err) => {
                    self.stats.proxy_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(listener = %self.listen, client = %PeerName(peer), %err, "client closed; nothing forwarded");
                    let tally = Tally {
                        outcome: Outcome::BadProxyHeader,
                        ..Tally::default()
                    };
                    return (tally, peer);
                }
            }
        }
        let header = settings.send_proxy.map(|version| {
            let own = || {
                let local = match &client {
                    tokio_util::either::Either::Left(tcp) => tcp.local_addr().ok(),
                    tokio_util::either::Either::Right(_) => None,
                };
                peer.zip(local)
                    .map(|(source, destination)| proxy_protocol::Addresses {
                        source,
                        destination,
                    })
            };
            proxy_protocol::header(version, addrs.or_else(own))
        });
        let tally = self
            .forward(&mut client, peer, &early, header.as_deref())
            .await;
        if matches!(tally.outcome, Outcome::Refused | Outcome::QueueTimeout) {
            // What the client sent and nobody read would turn the close into a reset.
            net::drain_readable(&mut client);
        }
        (tally, peer)
    }

    /// One client: pick, connect, and wait for the backend's first byte, retrying elsewhere
    /// when nothing of the client reached the backend (the connect failed, or the backend
    /// closed first); with `retry_on` opted in, also when the backend closes or stays silent
    /// after reading the client's bytes, which are then replayed. Then copy both ways.
    ///
    /// The steps, each a function of its own: [`Listener::first_pick`] (the `max_conns`
    /// queue), [`Listener::retry_pick`], [`Listener::connect`], [`first_answer`], the rule
    /// [`after_failure`], [`Listener::relay_session`].
    ///
    /// `early`: client bytes read with its PROXY protocol header, forwarded first; `header`:
    /// the PROXY protocol header each backend connection starts with.
    async fn forward(
        &self,
        client: &mut Client,
        peer: Option<SocketAddr>,
        early: &[u8],
        header: Option<&[u8]>,
    ) -> Tally {
        let mut tally = Tally::default();
        let settings = self.settings();
        let mut key_buf = [0u8; 48];
        let key = self.hash_key(&settings, peer, &mut key_buf);
        // For the logs: the client address, or "unix".
        let peer = PeerName(peer);
        let mut previous: Option<Arc<Upstream>> = None;
        // Two buffers from this thread's pool: `sent` keeps what the client said before any
        // backend answered (replayed on a retry), `answer` takes the backend's first bytes;
        // then they carry the relay's two directions.
        let mut buffers = pool::Buffers::take();
        let pool::Buffers { sent, answer } = &mut buffers;
        sent.extend_from_slice(early);
        let mut client_done = false;
        // Upstreams this client already failed on: a retry goes elsewhere while it can.
        let mut tried: Vec<Arc<Upstream>> = Vec::new();
        for _attempt in 0..=settings.retries {
            let picked = match &previous {
                None => {
                    let first = self
                        .first_pick(&settings, key, client, sent, &mut client_done, peer)
                        .await;
                    match first {
                        Ok(picked) => picked,
                        Err(outcome) => {
                            tally.outcome = outcome;
                            return tally;
                        }
                    }
                }
                Some(prev) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tried.push(Arc::clone(prev));
                    self.retry_pick(prev, &tried, settings.rotation, key)
                }
            };
            let Some(picked) = picked else { break };
            tally.tries += 1;
            tally.upstream = Some(Arc::clone(picked.upstream()));
            let figures = self.stats.upstream(picked.name());
            figures.picks.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let mut backend = match self.connect(&picked, &settings, header, peer).await {
                Connected::Yes(stream) => stream,
                Connected::NoDescriptors => {
                    picked.release();
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tally.outcome = Outcome::NoDescriptors;
                    return tally;
                }
                Connected::No(reason) => {
                    figures.connect_failures.fetch_add(1, Ordering::Relaxed);
                    previous = Some(fail(picked, &reason, peer));
                    match after_failure(Before::Connect, false, settings.retry_on) {
                        Next::Retry => continue,
                        Next::Close(_) => break,
                    }
                }
            };
            let connect_time = started.elapsed();
            figures.observe_connect(connect_time.as_secs_f64());
            let timers = Timers {
                answer: settings.answer_timeout,
                idle: settings.idle_timeout,
            };
            let first = first_answer(
                client,
                &mut backend,
                sent,
                answer,
                &mut client_done,
                timers,
                &figures,
            )
            .await;
            tally.to_upstream = sent.len() as u64;
            let failure = match first {
                First::Answered(wait, first) => {
                    // p2c's latency: connect plus the wait for the first answer byte after the
                    // client's latest bytes (not the time a client took to speak).
                    picked.record_latency((connect_time + wait).as_secs_f64());
                    // A probe's answer brings its upstream back at once; any other success
                    // is reported when the session ends well (a reset mid-answer is a
                    // failure, and an `ok()` now would clear the error window it counts in).
                    // The pick stays in flight for the whole session (p2c's load).
                    if !picked.upstream().is_alive() {
                        picked.upstream().record_success();
                    }
                    tally.to_client = first;
                    let session = Session {
                        settings: &settings,
                        figures: &figures,
                        peer,
                    };
                    let (end, up, down) = self
                        .relay_session(
                            client,
                            &mut backend,
                            [sent, answer],
                            client_done,
                            picked,
                            session,
                        )
                        .await;
                    tally.to_upstream += up;
                    tally.to_client += down;
                    tally.outcome = end.outcome(tally.tries > 1);
                    return tally;
                }
                First::ClientGone => {
                    tally.outcome = Outcome::ClientGone;
                    return tally;
                }
                First::Idle => {
                    // Nobody said anything for `idle_timeout`: not the backend's fault.
                    self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, upstream = picked.name(), "idle before any answer; closing");
                    picked.release();
                    tally.outcome = Outcome::Idle;
                    return tally;
                }
                First::BackendClosed => Before::Closed,
                First::NoAnswer => Before::Silent,
            };
            figures.session_failures.fetch_add(1, Ordering::Relaxed);
            previous = Some(fail(picked, failure.reason(), peer));
            // Whether any byte of the client was handed to this backend: from then on only
            // an opted-in `retry_on` may move the session (its bytes would be replayed).
            let reached = !sent.is_empty();
            if let Next::Close(outcome) = after_failure(failure, reached, settings.retry_on) {
                // The backend may have acted on the client's bytes: sending them to another
                // one could do it twice. The client is closed; `retry_on` opts in.
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, reason = failure.reason(), "backend failed after the client's bytes reached it; closing (not retried)");
                tally.outcome = outcome;
                return tally;
            }
        }
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "no upstream could take the client; closing");
        tally.outcome = Outcome::Refused;
        tally
    }

    /// nginx's `hash $remote_addr consistent`: the client address as text, formatted on the
    /// stack into `buf`, and only for the one rotation that reads a key (empty otherwise).
    fn hash_key<'b>(
        &self,
        settings: &Settings,
        peer: Option<SocketAddr>,
        buf: &'b mut [u8; 48],
    ) -> &'b [u8] {
        let hashed =
            self.list.rotation().unwrap_or(settings.rotation) == upstreams::Rotation::Hashed;
        match peer {
            Some(peer) if hashed => ip_text(peer.ip(), buf),
            // nginx's $remote_addr of a Unix client.
            None if hashed => b"unix:",
            _ => &[],
        }
    }

    /// The first pick of a client: at once when an upstream is free and nobody waits, else
    /// (under `max_conns`) its turn in the queue. `Ok(None)`: nothing is selectable;
    /// `Err`: the client was closed while queued (out of time, or gone).
    async fn first_pick(
        &self,
        settings: &Settings,
        key: &[u8],
        client: &mut Client,
        sent: &mut Vec<u8>,
        client_done: &mut bool,
        peer: PeerName,
    ) -> Result<Option<upstreams::Picked>, Outcome> {
        // Behind those already waiting, as a queue is.
        let now = if self.queue.is_empty() {
            self.list.get(settings.rotation, key)
        } else {
            None
        };
        if now.is_some() || settings.max_conns == 0 || self.list.alive_count() == 0 {
            return Ok(now);
        }
        match self
            .wait_in_queue(settings, key, client, sent, client_done)
            .await
        {
            Ok(picked) => Ok(Some(picked)),
            Err(Unqueued::NoUpstream) => Ok(None),
            Err(Unqueued::Timeout) => {
                self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "every upstream at max_conns for queue_timeout; closing");
                Err(Outcome::QueueTimeout)
            }
            Err(Unqueued::ClientGone) => {
                self.stats.queue_abandoned.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "client gone while queued; nothing forwarded");
                Err(Outcome::ClientGone)
            }
        }
    }

    /// A connection to `picked` within `connect_timeout`, its PROXY protocol `header` (if
    /// any) written ahead of any client byte: a refusal of the header is still a connect
    /// failure, retried where `connect` is.
    async fn connect(
        &self,
        picked: &upstreams::Picked,
        settings: &Settings,
        header: Option<&[u8]>,
        peer: PeerName,
    ) -> Connected {
        use tokio::io::AsyncWriteExt;
        let target = match picked.upstream().entry().host() {
            Host::Unix(path) => Some(Target::Unix(path)),
            _ => picked.next_addr().map(Target::Tcp),
        };
        let Some(target) = target else {
            return Connected::No("no address".to_owned());
        };
        let mut stream = match tokio::time::timeout(settings.connect_timeout, net::connect(target))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) if is_local_exhaustion(&err) => {
                // Out of descriptors here: no backend is to blame, and no retry can help
                // before some session ends.
                if let Some(held) = self.exhausted_log.allow() {
                    tracing::warn!(%peer, %err, clients_not_logged = held, "cannot open a backend connection");
                }
                return Connected::NoDescriptors;
            }
            Ok(Err(err)) => return Connected::No(err.to_string()),
            Err(_) => return Connected::No("connect timeout".to_owned()),
        };
        if let Some(header) = header {
            if let Err(err) = stream.write_all(header).await {
                return Connected::No(format!("PROXY protocol header not taken: {err}"));
            }
        }
        Connected::Yes(stream)
    }
}

/// Ends a failed pick as an address failure (logged), keeping its upstream for the retry.
fn fail(picked: upstreams::Picked, reason: &str, peer: PeerName) -> Arc<Upstream> {
    tracing::debug!(%peer, upstream = picked.name(), reason, "upstream failed");
    let up = Arc::clone(picked.upstream());
    picked.fail(FailKind::Address, reason);
    up
}

/// What the relay of one session reads besides its sockets.
#[derive(Clone, Copy)]
struct Session<'a> {
    settings: &'a Settings,
    figures: &'a UpStats,
    peer: PeerName,
}

impl End {
    /// The outcome of a session whose relay ended so (`retried`: after another upstream
    /// failed it).
    fn outcome(self, retried: bool) -> Outcome {
        match self {
            End::Done | End::ClientFailed if retried => Outcome::Retried,
            End::Done | End::ClientFailed => Outcome::Ok,
            End::Idle => Outcome::Idle,
            End::BackendFailed => Outcome::Reset,
        }
    }
}

/// How a connect to a backend went.
enum Connected {
    Yes(Backend),
    /// Failed (the reason): the backend's fault.
    No(String),
    /// This process is out of descriptors: nobody's fault but ours.
    NoDescriptors,
}

/// How a backend failed before its first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Before {
    /// The connect (or the PROXY header) failed: nothing of the client reached it.
    Connect,
    /// It closed (or reset) before sending a byte.
    Closed,
    /// It let `answer_timeout` pass after the client's latest bytes.
    Silent,
}

impl Before {
    fn reason(self) -> &'static str {
        match self {
            Self::Connect => "connect failed",
            Self::Closed => "closed before answering",
            Self::Silent => "no answer in time",
        }
    }
}

/// What becomes of a session after a failure before the first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try another upstream (with the client's bytes replayed, if any).
    Retry,
    /// Close the client with this outcome.
    Close(Outcome),
}

/// The retry rule, alone: a failure is retried when nothing of the client reached the
/// backend and `connect` is in `retry_on` (nothing can be duplicated), or, once bytes did
/// reach it, only when `retry_on` opts in for that failure (`closed-before-answer`,
/// `answer-timeout`): the backend may have acted on them. Whether another upstream is left
/// is the caller's to find out.
pub(crate) fn after_failure(failure: Before, reached: bool, policy: RetryPolicy) -> Next {
    let (allowed, outcome) = match failure {
        Before::Connect => (policy.connect, Outcome::Refused),
        Before::Closed if reached => (policy.closed_before_answer, Outcome::Failed),
        Before::Silent if reached => (policy.answer_timeout, Outcome::Timeout),
        Before::Closed => (policy.connect, Outcome::Failed),
        Before::Silent => (policy.connect, Outcome::Timeout),
    };
    if allowed {
        Next::Retry
    } else {
        Next::Close(outcome)
    }
}

impl Listener {
    /// The session after the backend's first answer: copy both ways, counting bytes as they
    /// move; a reset or a write refused by the backend fails it (no retry: its bytes already
    /// reached the client).
    async fn relay_session(
        &self,
        client: &mut Client,
        backend: &mut Backend,
        buffers: [&mut Vec<u8>; 2],
        client_done: bool,
        picked: upstreams::Picked,
        session: Session<'_>,
    ) -> (End, u64, u64) {
        let Session {
            settings,
            figures,
            peer,
        } = session;
        figures.active.fetch_add(1, Ordering::Relaxed);
        let (end, up, down) = relay(
            client,
            backend,
            buffers,
            client_done,
            settings.idle_timeout,
            settings.half_close,
            figures,
        )
        .await;
        figures.active.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Done | End::ClientFailed => {
                tracing::debug!(%peer, upstream = picked.name(), "session closed");
                picked.ok();
            }
            End::Idle => {
                self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, upstream = picked.name(), "idle session closed");
                picked.ok();
            }
            End::BackendFailed => {
                figures.session_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, upstream = picked.name(), "backend reset the session");
                picked.fail(FailKind::Other, "reset after answering");
            }
        }
        (end, up, down)
    }

    /// An upstream this client has not tried (the core excludes every one in `tried`); when
    /// only tried ones are left, any but `prev`.
    fn retry_pick(
        &self,
        prev: &Upstream,
        tried: &[Arc<Upstream>],
        rotation: upstreams::Rotation,
        key: &[u8],
    ) -> Option<upstreams::Picked> {
        // An upstream not tried yet; when every one was, the core's usual retry answer
        // (anything but the last, or the last when it is the only one left).
        self.list
            .get_excluding(tried, rotation, key)
            .or_else(|| self.list.get_except(prev, rotation, key))
    }
}

/// A client's address in logs: the TCP peer, or `unix` for a Unix-socket client.
#[derive(Clone, Copy)]
struct PeerName(Option<SocketAddr>);

impl std::fmt::Display for PeerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unix"),
        }
    }
}

/// `ip` as text (what `IpAddr`'s `Display` prints) in `buf`, without allocating.
fn ip_text(ip: std::net::IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    use std::io::Write;
    let mut rest = &mut buf[..];
    // 45 bytes hold the longest IPv6 text form; the write cannot fall short.
    let _ = write!(rest, "{ip}");
    let len = 48 - rest.len();
    &buf[..len]
}

/// EMFILE / ENFILE / ENOBUFS / ENOMEM: this process or host ran out of something, the
/// backend did nothing wrong.
fn is_local_exhaustion(err: &std::io::Error) -> bool {
    err.raw_os_error()
        .is_some_and(|e| [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM].contains(&e))
}

/// Room for a full read in `buf`, made only when little is left: growing on every pass
/// would reallocate (and copy) the kept bytes once per client message.
fn room_for_a_read(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
}

/// Why a queued client left the queue without a pick.
enum Unqueued {
    /// `queue_timeout` passed.
    Timeout,
    /// No upstream is selectable any more.
    NoUpstream,
    /// The client closed (or reset) while it waited.
    ClientGone,
}

/// Most client bytes kept for a replay; beyond this a session is committed to its backend.
const REPLAY_LIMIT: usize = 64 * 1024;

enum First {
    /// The backend answered (its first bytes, the second figure, went to the client) this
    /// long after the client's latest bytes, or after the connect when the client had said
    /// nothing.
    Answered(Duration, u64),
    /// The backend closed (or reset) before sending a byte: try another one.
    BackendClosed,
    /// The backend let `answer_timeout` pass after the client's latest bytes: try another.
    NoAnswer,
    /// Neither side sent a byte for `idle_timeout`: close.
    Idle,
    /// The client went away.
    ClientGone,
}

#[derive(Clone, Copy)]
struct Timers {
    answer: Option<Duration>,
    idle: Duration,
}

/// Now on tokio's clock (the real one, unless a test paused it), as a std `Instant`: the
/// first answer's timers and the latency they report then agree with the runtime's timers.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sends what the client said so far, then relays client bytes (keeping them for a replay)
/// until the backend sends its first bytes, which go to the client.
async fn first_answer<C, B>(
    client: &mut C,
    backend: &mut B,
    sent: &mut Vec<u8>,
    answer: &mut Vec<u8>,
    client_done: &mut bool,
    timers: Timers,
    figures: &UpStats,
) -> First
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !sent.is_empty() {
        if backend.write_all(sent).await.is_err() {
            return First::BackendClosed;
        }
        figures
            .bytes_out
            .fetch_add(sent.len() as u64, Ordering::Relaxed);
    }
    if *client_done && backend.shutdown().await.is_err() {
        return First::BackendClosed;
    }
    // Reads land in spare capacity (`read_buf`): client bytes straight into `sent`, the
    // backend's first bytes into `answer`; nothing is zeroed, and the session's future stays
    // small (no buffers inside it for the task to allocate and move).
    answer.clear();
    let start = now();
    let mut idle_from = start;
    // The answer clock runs from the client's latest bytes (the replay counts), so a client
    // that says nothing never makes a healthy backend look dead; that is the idle timer's.
    let mut answer_from = (!sent.is_empty() || *client_done).then_some(start);
    // One timer for the whole wait, moved when the deadline moves.
    let timer = tokio::time::sleep_until(later(start, timers.idle).into());
    tokio::pin!(timer);
    loop {
        if sent.len() >= REPLAY_LIMIT {
            // Too much to keep for a replay: commit to this backend.
            return First::Answered(
                now().saturating_duration_since(answer_from.unwrap_or(start)),
                0,
            );
        }
        let idle_at = later(idle_from, timers.idle);
        let answer_at = timers
            .answer
            .zip(answer_from)
            .map(|(t, from)| later(from, t));
        let (deadline, on_expiry) = match answer_at {
            Some(at) if at < idle_at => (at, First::NoAnswer),
            _ => (idle_at, First::Idle),
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        room_for_a_read(sent);
        tokio::select! {
            () = &mut timer => return on_expiry,
            read = backend.read_buf(answer) => match read {
                // A client that already left and a backend that then hangs up: nothing failed.
                Ok(0) | Err(_) if *client_done => return First::ClientGone,
                Ok(0) | Err(_) => return First::BackendClosed,
                Ok(n) => {
                    let waited = now().saturating_duration_since(answer_from.unwrap_or(start));
                    figures.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    return match client.write_all(&answer[..n]).await {
                        Ok(()) => First::Answered(waited, n as u64),
                        Err(_) => First::ClientGone,
                    };
                }
            },
            read = client.read_buf(sent), if !*client_done => match read {
                Ok(0) => {
                    *client_done = true;
                    if backend.shutdown().await.is_err() {
                        return First::BackendClosed;
                    }
                    answer_from.get_or_insert_with(now);
                }
                Err(_) => return First::ClientGone,
                Ok(n) => {
                    if backend.write_all(&sent[sent.len() - n..]).await.is_err() {
                        return First::BackendClosed;
                    }
                    figures.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    idle_from = now();
                    answer_from = Some(idle_from);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{after_failure, first_answer, ip_text, Before, First, Next, Timers};
    use super::{Outcome, RetryPolicy, UpStats, REPLAY_LIMIT};
    use std::net::IpAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_failure_is_retried_only_where_nothing_can_be_duplicated_or_the_policy_opts_in() {
        let connect_only = RetryPolicy {
            connect: true,
            ..RetryPolicy::default()
        };
        let all = RetryPolicy {
            connect: true,
            closed_before_answer: true,
            answer_timeout: true,
        };
        let none = RetryPolicy::default();
        // Nothing reached the backend: `connect` decides, whatever happened.
        for failure in [Before::Connect, Before::Closed, Before::Silent] {
            assert_eq!(after_failure(failure, false, connect_only), Next::Retry);
        }
        assert_eq!(
            after_failure(Before::Connect, false, none),
            Next::Close(Outcome::Refused)
        );
        // The client's bytes reached it: only an opt-in retries (a replay could duplicate).
        assert_eq!(
            after_failure(Before::Closed, true, connect_only),
            Next::Close(Outcome::Failed)
        );
        assert_eq!(
            after_failure(Before::Silent, true, connect_only),
            Next::Close(Outcome::Timeout)
        );
        assert_eq!(after_failure(Before::Closed, true, all), Next::Retry);
        assert_eq!(after_failure(Before::Silent, true, all), Next::Retry);
        let answer_only = RetryPolicy {
            answer_timeout: true,
            ..RetryPolicy::default()
        };
        assert_eq!(
            after_failure(Before::Closed, true, answer_only),
            Next::Close(Outcome::Failed)
        );
    }

    /// `first_answer` over in-memory pipes on tokio's paused clock: which timer fires.
    async fn wait_for_first(
        client_says: &[u8],
        timers: Timers,
        backend_answers_after: Option<Duration>,
    ) -> (First, Vec<u8>) {
        let (mut client, mut client_end) = tokio::io::duplex(1 << 20);
        let (mut backend, mut backend_end) = tokio::io::duplex(1 << 20);
        client_end.write_all(client_says).await.unwrap();
        if let Some(after) = backend_answers_after {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = backend_end.write_all(b"answer").await;
                // Keep reading so the proxy's writes never block.
                let mut sink = Vec::new();
                let _ = backend_end.read_to_end(&mut sink).await;
            });
        } else {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = backend_end.read_to_end(&mut sink).await;
            });
        }
        let (mut sent, mut answer, mut done) = (Vec::new(), Vec::new(), false);
        let figures = UpStats::default();
        let first = first_answer(
            &mut client,
            &mut backend,
            &mut sent,
            &mut answer,
            &mut done,
            timers,
            &figures,
        )
        .await;
        drop(client_end);
        (first, sent)
    }

    #[tokio::test(start_paused = true)]
    async fn the_answer_timer_runs_from_the_clients_bytes_and_idle_from_silence() {
        let timers = Timers {
            answer: Some(Duration::from_secs(1)),
            idle: Duration::from_secs(10),
        };
        // The client spoke, the backend did not: the answer timeout.
        let (first, sent) = wait_for_first(b"request", timers, None).await;
        assert!(
            matches!(first, First::NoAnswer),
            "{:?}",
            std::mem::discriminant(&first)
        );
        assert_eq!(sent, b"request");
        // Nobody spoke: not the backend's fault, the idle timer ends it.
        let (first, _) = wait_for_first(b"", timers, None).await;
        assert!(matches!(first, First::Idle));
        // An answer within the timeout is an answer, with the wait measured.
        let (first, _) = wait_for_first(b"request", timers, Some(Duration::from_millis(300))).await;
        match first {
            First::Answered(waited, n) => {
                assert_eq!(n, 6);
                assert!(waited >= Duration::from_millis(300), "{waited:?}");
            }
            First::NoAnswer => panic!("no answer in time"),
            First::Idle => panic!("idle"),
            First::BackendClosed => panic!("backend closed"),
            First::ClientGone => panic!("client gone"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_replay_limit_a_session_commits_to_its_backend() {
        let timers = Timers {
            answer: Some(Duration::from_secs(1)),
            idle: Duration::from_secs(10),
        };
        let big = vec![b'x'; REPLAY_LIMIT + 1];
        let (first, sent) = wait_for_first(&big, timers, None).await;
        // Committed, not failed: too much was kept to replay elsewhere.
        assert!(matches!(first, First::Answered(_, 0)));
        assert!(sent.len() >= REPLAY_LIMIT);
    }

    #[test]
    fn ip_text_is_the_display_form() {
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().expect("valid address");
            let mut buf = [0u8; 48];
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
    }
}
