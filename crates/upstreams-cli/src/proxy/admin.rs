//! The admin listener: `/metrics` (Prometheus text), `/status` (HTML that refreshes itself)
//! and `/status.json`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::stats::BUCKETS;
use super::Proxy;

pub(crate) fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status_html))
        .route("/status.json", get(status_json))
        .route("/", get(status_html))
        .with_state(proxy)
}

fn state_name(state: upstreams::State) -> &'static str {
    match state {
        upstreams::State::Alive => "alive",
        upstreams::State::Offline { .. } => "offline",
        upstreams::State::Probing => "probing",
        upstreams::State::Pending => "pending",
        _ => "draining",
    }
}

/// Everything the pages show, as JSON (the HTML page renders the same data).
pub(crate) fn snapshot(proxy: &Proxy) -> Value {
    let listeners: Vec<Value> = proxy
        .listeners()
        .iter()
        .map(|l| {
            let settings = l.settings();
            let upstreams: Vec<Value> = l
                .list
                .upstreams()
                .iter()
                .map(|up| {
                    let s = l.stats.upstream(up.name());
                    let last_change = s.last_change().map(|(at, what)| {
                        json!({
                            "event": what,
                            "unix": at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
                        })
                    });
                    json!({
                        "name": up.name(),
                        "state": state_name(up.state()),
                        "weight": up.weight(),
                        "errors": up.errors(),
                        "inflight": up.inflight(),
                        "addresses": up.addrs().iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>(),
                        "picks": s.picks.load(Ordering::Relaxed),
                        "active": s.active.load(Ordering::Relaxed),
                        "bytes_in": s.bytes_in.load(Ordering::Relaxed),
                        "bytes_out": s.bytes_out.load(Ordering::Relaxed),
                        "connect_failures": s.connect_failures.load(Ordering::Relaxed),
                        "last_change": last_change,
                    })
                })
                .collect();
            json!({
                "listen": l.listen.to_string(),
                "definition": l.list.to_string(),
                "rotation": l.list.rotation().unwrap_or(settings.rotation).to_string(),
                "accepted": l.stats.accepted.load(Ordering::Relaxed),
                "refused": l.stats.refused.load(Ordering::Relaxed),
                "upstreams": upstreams,
            })
        })
        .collect();
    json!({
        "uptime_seconds": proxy.started.elapsed().as_secs_f64(),
        "open_sessions": proxy.sessions.open(),
        "listeners": listeners,
    })
}

async fn status_json(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    axum::Json(snapshot(&proxy))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status_html(State(proxy): State<Arc<Proxy>>) -> Html<String> {
    let snap = snapshot(&proxy);
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
        snap["uptime_seconds"].as_f64().unwrap_or(0.0),
        snap["open_sessions"]
    );
    for l in snap["listeners"].as_array().into_iter().flatten() {
        let _ = write!(
            page,
            "<h2>listener {}</h2><p>{} &middot; rotation {} &middot; accepted {} &middot; refused {}</p>\
             <table><tr><th>upstream</th><th>state</th><th>weight</th><th>errors</th><th>active</th>\
             <th>picks</th><th>connect failures</th><th>bytes in</th><th>bytes out</th><th>last change</th></tr>",
            escape(l["listen"].as_str().unwrap_or("")),
            escape(l["definition"].as_str().unwrap_or("")),
            escape(l["rotation"].as_str().unwrap_or("")),
            l["accepted"],
            l["refused"],
        );
        for u in l["upstreams"].as_array().into_iter().flatten() {
            let state = u["state"].as_str().unwrap_or("");
            let change = match &u["last_change"] {
                Value::Object(c) => format!(
                    "{} at {:.0}",
                    c.get("event").and_then(Value::as_str).unwrap_or(""),
                    c.get("unix").and_then(Value::as_f64).unwrap_or(0.0)
                ),
                _ => "-".to_owned(),
            };
            let _ = write!(
                page,
                "<tr class=\"upstream {state}\"><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(u["name"].as_str().unwrap_or("")),
                u["weight"],
                u["errors"],
                u["active"],
                u["picks"],
                u["connect_failures"],
                u["bytes_in"],
                u["bytes_out"],
                escape(&change),
            );
        }
        page.push_str("</table>");
    }
    page.push_str("</body></html>");
    Html(page)
}

async fn metrics(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    let mut out = String::new();
    let help = |out: &mut String, name: &str, kind: &str, text: &str| {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
    };
    let listeners = proxy.listeners();
    help(
        &mut out,
        "upstreams_upstream_up",
        "gauge",
        "1 when the upstream is selectable.",
    );
    help(
        &mut out,
        "upstreams_upstream_state",
        "gauge",
        "1 for the upstream's current state.",
    );
    help(
        &mut out,
        "upstreams_upstream_errors",
        "gauge",
        "Failures in the current error window.",
    );
    help(
        &mut out,
        "upstreams_upstream_picks_total",
        "counter",
        "Connections handed to the upstream.",
    );
    help(
        &mut out,
        "upstreams_upstream_active_connections",
        "gauge",
        "Sessions open to the upstream.",
    );
    help(
        &mut out,
        "upstreams_upstream_bytes_in_total",
        "counter",
        "Bytes from the upstream to clients.",
    );
    help(
        &mut out,
        "upstreams_upstream_bytes_out_total",
        "counter",
        "Bytes from clients to the upstream.",
    );
    help(
        &mut out,
        "upstreams_upstream_connect_failures_total",
        "counter",
        "Failed connects.",
    );
    help(
        &mut out,
        "upstreams_upstream_connect_seconds",
        "histogram",
        "Connect latency.",
    );
    for l in &listeners {
        for up in l.list.upstreams() {
            let s = l.stats.upstream(up.name());
            let labels = format!(
                "listener=\"{}\",upstream=\"{}\"",
                l.listen,
                up.name().replace('"', "'")
            );
            let state = state_name(up.state());
            let _ = writeln!(
                out,
                "upstreams_upstream_up{{{labels}}} {}",
                u8::from(up.is_alive())
            );
            for st in ["alive", "offline", "probing", "pending", "draining"] {
                let _ = writeln!(
                    out,
                    "upstreams_upstream_state{{{labels},state=\"{st}\"}} {}",
                    u8::from(st == state)
                );
            }
            let _ = writeln!(out, "upstreams_upstream_errors{{{labels}}} {}", up.errors());
            let _ = writeln!(
                out,
                "upstreams_upstream_picks_total{{{labels}}} {}",
                s.picks.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "upstreams_upstream_active_connections{{{labels}}} {}",
                s.active.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "upstreams_upstream_bytes_in_total{{{labels}}} {}",
                s.bytes_in.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "upstreams_upstream_bytes_out_total{{{labels}}} {}",
                s.bytes_out.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "upstreams_upstream_connect_failures_total{{{labels}}} {}",
                s.connect_failures.load(Ordering::Relaxed)
            );
            let (buckets, count, sum) = s.histogram();
            for (le, n) in BUCKETS.iter().zip(buckets) {
                let _ = writeln!(
                    out,
                    "upstreams_upstream_connect_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "upstreams_upstream_connect_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "upstreams_upstream_connect_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "upstreams_upstream_connect_seconds_count{{{labels}}} {count}"
            );
        }
    }
    help(
        &mut out,
        "upstreams_listener_refused_total",
        "counter",
        "Clients closed: no upstream could take them.",
    );
    for l in &listeners {
        let _ = writeln!(
            out,
            "upstreams_listener_refused_total{{listener=\"{}\"}} {}",
            l.listen,
            l.stats.refused.load(Ordering::Relaxed)
        );
    }
    help(
        &mut out,
        "upstreams_listener_accepted_total",
        "counter",
        "Clients accepted.",
    );
    for l in &listeners {
        let _ = writeln!(
            out,
            "upstreams_listener_accepted_total{{listener=\"{}\"}} {}",
            l.listen,
            l.stats.accepted.load(Ordering::Relaxed)
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
