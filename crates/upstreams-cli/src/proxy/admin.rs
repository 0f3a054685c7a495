//! The admin listener: `/metrics` (Prometheus text), `/status` (HTML that refreshes itself)
//! and `/status.json`.
//!
//! Bounded, so that it can never starve the proxy: at most [`MAX_CONNECTIONS`] connections,
//! a request head must arrive within [`HEADER_TIMEOUT`], a connection lives at most
//! [`CONNECTION_LIFETIME`], and no page grows with the size of a list beyond [`PAGE`]
//! upstreams per listener (`/status.json?offset=N&limit=M` pages through the rest;
//! `/metrics` drops per-upstream series for listeners above that size unless asked with
//! `?per_upstream=all`).
//!
//! When all [`MAX_CONNECTIONS`] are open, a new connection takes the place of the one that
//! has been idle longest (silent since it was accepted, or between two requests of a kept-alive
//! connection): that one is closed, so a liveness probe or a scrape always gets in, whatever
//! other clients hold open. Only when every connection is in the middle of a request is the
//! new one closed at once.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use tokio::sync::Notify;

use super::stats::PAGE;
use super::Proxy;

/// Admin connections served at once; beyond it the longest idle one gives way.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Time for a request head to arrive (each request of a kept-alive connection).
pub(crate) const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest life of one admin connection.
pub(crate) const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// One open admin connection, as the eviction sees it.
struct Conn {
    /// A request is being answered.
    busy: AtomicBool,
    /// Nanoseconds from the table's epoch to the end of the latest request (or the accept).
    idle_since: AtomicU64,
    /// Closes the connection.
    close: Notify,
}

/// The open admin connections.
struct Conns {
    epoch: Instant,
    open: Mutex<std::collections::HashMap<u64, Arc<Conn>>>,
}

impl Conns {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A place for connection `id`, closing the longest idle one when all are taken; `None`
    /// when every connection is mid-request.
    fn admit(&self, id: u64) -> Option<Arc<Conn>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_CONNECTIONS {
            let victim = open
                .iter()
                .filter(|(_, c)| !c.busy.load(Ordering::Acquire))
                .min_by_key(|(_, c)| c.idle_since.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(gone) = open.remove(&victim) {
                gone.close.notify_one();
            }
        }
        let conn = Arc::new(Conn {
            busy: AtomicBool::new(false),
            idle_since: AtomicU64::new(self.now()),
            close: Notify::new(),
        });
        open.insert(id, Arc::clone(&conn));
        Some(conn)
    }

    fn leave(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// Serves the admin router on `tcp` within the bounds above.
pub(crate) async fn serve(tcp: tokio::net::TcpListener, app: Router) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;
    let conns = Arc::new(Conns {
        epoch: Instant::now(),
        open: Mutex::default(),
    });
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(%err, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let Some(conn) = conns.admit(id) else {
            tracing::debug!(%peer, "admin connection refused: {MAX_CONNECTIONS} requests in progress");
            continue;
        };
        // The peer's address reaches handlers (write requests are for loopback clients).
        let app = app.clone().layer(axum::Extension(Peer(peer)));
        let (marks, table) = (Arc::clone(&conn), Arc::clone(&conns));
        let service = hyper::service::service_fn(
            move |req: axum::extract::Request<hyper::body::Incoming>| {
                let (app, marks, table) = (app.clone(), Arc::clone(&marks), Arc::clone(&table));
                marks.busy.store(true, Ordering::Release);
                async move {
                    let answer = app.oneshot(req.map(axum::body::Body::new)).await;
                    marks.idle_since.store(table.now(), Ordering::Relaxed);
                    marks.busy.store(false, Ordering::Release);
                    answer
                }
            },
        );
        let table = Arc::clone(&conns);
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, served) => {}
                () = conn.close.notified() => {}
            }
            table.leave(id);
        });
    }
}

/// The address of an admin client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(std::net::SocketAddr);

/// `POST /listeners/{listen}/upstreams/{name}/drain` or `…/enable` (with `admin_write`, from
/// loopback): drain takes the upstream out of selection, sessions in progress go on, shown as
/// `draining`; enable brings it back. `listen` is the listener's address as `/status.json`
/// shows it (percent-encoded when it holds a `/`).
async fn write_upstream(
    State(proxy): State<Arc<Proxy>>,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    axum::extract::Path((listen, name, action)): axum::extract::Path<(String, String, String)>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    if !proxy.admin_write.load(Ordering::Relaxed) {
        return (
            StatusCode::FORBIDDEN,
            "read-only admin listener (start with --admin-write, or admin_write = true)\n".into(),
        );
    }
    if !peer.ip().to_canonical().is_loopback() {
        tracing::warn!(%peer, "admin write request from another host refused");
        return (
            StatusCode::FORBIDDEN,
            "write requests are taken from loopback clients only\n".into(),
        );
    }
    let listeners = proxy.listeners();
    // Addresses compare as addresses (`[0:0:0:0:0:0:0:1]:P` is `[::1]:P`); a Unix
    // listener by its text. Nothing is resolved here.
    let wanted = listen.parse::<std::net::SocketAddr>().ok().map(|a| {
        super::net::ListenAddr::Tcp(std::net::SocketAddr::new(a.ip().to_canonical(), a.port()))
    });
    let same = |have: &super::net::ListenAddr| match (&wanted, have) {
        (Some(w), super::net::ListenAddr::Tcp(h)) => {
            *w == super::net::ListenAddr::Tcp(std::net::SocketAddr::new(
                h.ip().to_canonical(),
                h.port(),
            ))
        }
        _ => have.to_string() == listen,
    };
    let Some(l) = listeners.iter().find(|l| same(&l.bound) || same(&l.listen)) else {
        return (StatusCode::NOT_FOUND, format!("no listener {listen:?}\n"));
    };
    let Some(up) = l.list.find(&name) else {
        return (
            StatusCode::NOT_FOUND,
            format!("listener {listen}: no upstream {name:?}\n"),
        );
    };
    let figures = l.stats.upstream(&name);
    let (done, verb) = match action.as_str() {
        "drain" => {
            // Marked first: the list's `offline` event then logs a drain, not a removal.
            let was = figures.drained_by_admin.swap(true, Ordering::Relaxed);
            let done = l.list.drain(&up);
            if !done {
                figures.drained_by_admin.store(was, Ordering::Relaxed);
            }
            (done, "drained")
        }
        "enable" => {
            let done = l.list.undrain(&up);
            if done {
                figures.drained_by_admin.store(false, Ordering::Relaxed);
            }
            (done, "enabled")
        }
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?} (drain or enable)\n"),
            )
        }
    };
    let state = up.state().name();
    if done {
        tracing::info!(listener = %l.bound, upstream = %name, %peer, "{verb} by the admin API");
        (StatusCode::OK, format!("{name}: {verb}; state {state}\n"))
    } else {
        (
            StatusCode::CONFLICT,
            format!("{name}: nothing to do, state {state}\n"),
        )
    }
}

/// `?offset=N&limit=M` of `/status.json` and `/status`.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Paging {
    offset: usize,
    limit: usize,
}

impl Default for Paging {
    fn default() -> Self {
        Self {
            offset: 0,
            limit: PAGE,
        }
    }
}

pub(crate) fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status_html))
        .route("/status.json", get(status_json))
        .route("/", get(status_html))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/listeners/{listen}/upstreams/{name}/{action}",
            axum::routing::post(write_upstream),
        )
        .with_state(proxy)
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: every listener serves and has at least one selectable upstream (503 otherwise,
/// naming the listeners that have none).
async fn readyz(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    let empty: Vec<String> = proxy
        .listeners()
        .iter()
        .filter(|l| l.list.alive_count() == 0)
        .map(|l| l.bound.to_string())
        .collect();
    if empty.is_empty() {
        (axum::http::StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("no selectable upstream: {}\n", empty.join(" ")),
        )
    }
}

/// Everything the pages show: `/status.json` serialises it, `/status` renders it (one
/// typed snapshot, so a renamed field is a compile error, not a blank cell).
#[derive(Debug, serde::Serialize)]
pub(crate) struct StatusSnapshot {
    uptime_seconds: f64,
    open_sessions: usize,
    listeners: Vec<ListenerStatus>,
}

/// One listener and one page of its upstreams.
#[derive(Debug, serde::Serialize)]
struct ListenerStatus {
    listen: String,
    /// A reload removed it: it accepts no one, its sessions go on.
    removed: bool,
    definition: String,
    rotation: String,
    accepted: u64,
    refused: u64,
    failed: u64,
    idle_closed: u64,
    accept_errors: u64,
    proxy_protocol_rejected: u64,
    queued_total: u64,
    queued: i64,
    queue_timeouts: u64,
    queue_abandoned: u64,
    connections: i64,
    accept_paused: u64,
    upstreams_total: usize,
    offset: usize,
    upstreams: Vec<UpstreamStatus>,
}

/// One upstream of a listener.
#[derive(Debug, serde::Serialize)]
struct UpstreamStatus {
    name: String,
    state: &'static str,
    weight: u16,
    errors: u32,
    last_failure: Option<String>,
    inflight: u32,
    addresses: Vec<String>,
    picks: u64,
    active: i64,
    bytes_in: u64,
    bytes_out: u64,
    connect_failures: u64,
    session_failures: u64,
    last_change: Option<LastChange>,
    check: Option<CheckView>,
}

/// The latest state change of an upstream.
#[derive(Debug, serde::Serialize)]
struct LastChange {
    event: &'static str,
    unix: f64,
    seconds_ago: f64,
}

/// The latest active health check of an upstream.
#[derive(Debug, serde::Serialize)]
struct CheckView {
    ok: bool,
    error: Option<String>,
    duration_seconds: f64,
    streak: i64,
    checked_out: bool,
    checks: u64,
    failures: u64,
}

/// The snapshot of the proxy: one page of each listener's upstreams.
pub(crate) fn snapshot(proxy: &Proxy, paging: Paging) -> StatusSnapshot {
    let limit = paging.limit.min(PAGE);
    let serving = proxy.listeners();
    let listeners = proxy
        .shown_listeners()
        .iter()
        .map(|l| {
            let removed = !serving.iter().any(|s| Arc::ptr_eq(s, l));
            let settings = l.settings();
            let checker = l.checker();
            let shown = l.shown_upstreams();
            let upstreams = shown
                .iter()
                .skip(paging.offset)
                .take(limit)
                .map(|up| {
                    let s = l.stats.upstream(up.name());
                    let last_change = s.last_change().map(|(at, event)| LastChange {
                        event,
                        unix: at
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs_f64())
                            .unwrap_or(0.0),
                        seconds_ago: at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
                    });
                    let check = checker
                        .as_ref()
                        .and_then(|c| c.status(up))
                        .map(|c| CheckView {
                            ok: c.ok,
                            error: c.error,
                            duration_seconds: c.duration.as_secs_f64(),
                            streak: c.streak,
                            checked_out: c.checked_out,
                            checks: c.checks,
                            failures: c.failures,
                        });
                    UpstreamStatus {
                        name: up.name().to_owned(),
                        state: up.state().name(),
                        weight: up.weight(),
                        errors: up.errors(),
                        last_failure: up.last_failure(),
                        inflight: up.inflight(),
                        addresses: up.addrs().iter().map(|(a, _)| a.to_string()).collect(),
                        picks: s.picks.load(Ordering::Relaxed),
                        active: s.active.load(Ordering::Relaxed),
                        bytes_in: s.bytes_in.load(Ordering::Relaxed),
                        bytes_out: s.bytes_out.load(Ordering::Relaxed),
                        connect_failures: s.connect_failures.load(Ordering::Relaxed),
                        session_failures: s.session_failures.load(Ordering::Relaxed),
                        last_change,
                        check,
                    }
                })
                .collect();
            ListenerStatus {
                listen: l.bound.to_string(),
                removed,
                definition: shortened(l.list.to_string()),
                rotation: l.list.rotation().unwrap_or(settings.rotation).to_string(),
                accepted: l.stats.accepted.load(Ordering::Relaxed),
                refused: l.stats.refused.load(Ordering::Relaxed),
                failed: l.stats.failed.load(Ordering::Relaxed),
                idle_closed: l.stats.idle_closed.load(Ordering::Relaxed),
                accept_errors: l.stats.accept_errors.load(Ordering::Relaxed),
                proxy_protocol_rejected: l.stats.proxy_rejected.load(Ordering::Relaxed),
                queued_total: l.stats.queued_total.load(Ordering::Relaxed),
                queued: l.stats.queued.load(Ordering::Relaxed),
                queue_timeouts: l.stats.queue_timeouts.load(Ordering::Relaxed),
                queue_abandoned: l.stats.queue_abandoned.load(Ordering::Relaxed),
                connections: l.stats.connections.load(Ordering::Relaxed),
                accept_paused: l.stats.accept_paused.load(Ordering::Relaxed),
                upstreams_total: shown.len(),
                offset: paging.offset,
                upstreams,
            }
        })
        .collect();
    StatusSnapshot {
        uptime_seconds: proxy.started.elapsed().as_secs_f64(),
        open_sessions: proxy.sessions.open(),
        listeners,
    }
}

/// A definition as the pages show it: whole up to 4 KiB, else its start and how much more
/// (a list of 2^18 upstreams is a 3.7 MB definition).
fn shortened(mut text: String) -> String {
    const SHOWN: usize = 4096;
    if text.len() > SHOWN {
        let mut cut = SHOWN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = text.len() - cut;
        text.truncate(cut);
        text.push_str(&format!("… ({more} more bytes)"));
    }
    text
}

async fn status_json(
    State(proxy): State<Arc<Proxy>>,
    axum::extract::Query(paging): axum::extract::Query<Paging>,
) -> impl IntoResponse {
    axum::Json(snapshot(&proxy, paging))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status_html(
    State(proxy): State<Arc<Proxy>>,
    axum::extract::Query(paging): axum::extract::Query<Paging>,
) -> Html<String> {
    let snap = snapshot(&proxy, paging);
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>upstreams status</title><style>body{font-family:sans-serif;margin:2em}\
         table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}\
         .alive{background:#dfd}.offline{background:#fdd}.probing{background:#ffd}.pending{background:#eee}</style>\
         </head><body><h1>upstreams</h1>",
    );
    let _ = write!(
        page,
        "<p>uptime {:.0} s, open sessions {}</p>",
        snap.uptime_seconds, snap.open_sessions
    );
    for l in &snap.listeners {
        let _ = write!(
            page,
            "<h2>listener {}{}</h2><p>{} &middot; rotation {} &middot; accepted {} &middot; refused {}</p>\
             <table><tr><th>upstream</th><th>state</th><th>weight</th><th>errors</th><th>active</th>\
             <th>picks</th><th>connect failures</th><th>bytes in</th><th>bytes out</th><th>last change</th>\
             <th>health check</th></tr>",
            escape(&l.listen),
            if l.removed {
                " (removed by reload; its sessions go on)"
            } else {
                ""
            },
            escape(&l.definition),
            escape(&l.rotation),
            l.accepted,
            l.refused,
        );
        for u in &l.upstreams {
            let state = u.state;
            let change = u.last_change.as_ref().map_or_else(
                || "-".to_owned(),
                |c| format!("{} {:.0} s ago", c.event, c.seconds_ago),
            );
            let check = u.check.as_ref().map_or_else(
                || "-".to_owned(),
                |c| {
                    format!(
                        "{} in {:.1} ms, streak {}{}",
                        if c.ok { "pass" } else { "fail" },
                        c.duration_seconds * 1e3,
                        c.streak,
                        c.error
                            .as_ref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default(),
                    )
                },
            );
            let _ = write!(
                page,
                "<tr class=\"upstream {state}\"><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&u.name),
                u.weight,
                u.errors,
                u.active,
                u.picks,
                u.connect_failures,
                u.bytes_in,
                u.bytes_out,
                escape(&change),
                escape(&check),
            );
        }
        page.push_str("</table>");
        let total = l.upstreams_total;
        let shown = l.upstreams.len();
        if shown < total {
            let _ = write!(
                page,
                "<p>upstreams {}–{} of {total} (<code>?offset=N</code> for others)</p>",
                paging.offset + 1,
                paging.offset + shown
            );
        }
    }
    page.push_str("</body></html>");
    Html(page)
}

/// `?per_upstream=all` of `/metrics`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct MetricsQuery {
    per_upstream: Option<String>,
}

async fn metrics(
    State(proxy): State<Arc<Proxy>>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(query): axum::extract::Query<MetricsQuery>,
) -> impl IntoResponse {
    let all = query.per_upstream.as_deref() == Some("all");
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let out = super::metrics::render(proxy, all, openmetrics);
    let kind = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, kind)], out)
}
