//! `/metrics`: the proxy's figures in the OpenMetrics text format, encoded by
//! `prometheus-client` from the live counters at each scrape (a [`Collector`]: nothing is
//! copied into a registry between scrapes, and the pick path keeps its plain atomics).
//!
//! Names follow OpenMetrics: counters end in `_total`, units are suffixes (`_bytes`,
//! `_seconds`). Per-upstream series are left out for listeners above [`PAGE`] upstreams
//! unless the scrape asks for them (`?per_upstream=all`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::forward::Listener;
use super::stats::{Stats, UpStats, BUCKETS, PAGE};
use super::Proxy;

type Labels = Vec<(&'static str, String)>;

/// One scrape's view of the proxy.
struct Scrape {
    proxy: Arc<Proxy>,
    per_upstream_all: bool,
}

/// The whole `/metrics` page: the Prometheus text format (0.0.4), or OpenMetrics 1.0 when
/// `openmetrics` (the scraper's `Accept` asked for it).
pub(crate) fn render(proxy: Arc<Proxy>, per_upstream_all: bool, openmetrics: bool) -> String {
    let mut registry = Registry::default();
    registry.register(
        "upstreams_build",
        // The registry ends a registered metric's help with a full stop.
        "The running build",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(Scrape {
        proxy,
        per_upstream_all,
    }));
    registry.register_collector(Box::new(ProcessCollector));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
    };
    out
}

/// A family of samples with labels.
fn family<V: Copy>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, V)>,
    mut write: impl FnMut(&mut prometheus_client::encoding::MetricEncoder<'_>, V) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in samples {
        let mut e = metric.encode_family(&labels)?;
        write(&mut e, v)?;
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    family(
        enc,
        name,
        help,
        unit,
        MetricType::Counter,
        samples,
        |e, v| e.encode_counter::<NoLabelSet, _, u64>(&v, None),
    )
}

fn gauges<V: Copy + prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> std::fmt::Result {
    family(enc, name, help, unit, MetricType::Gauge, samples, |e, v| {
        e.encode_gauge(&v)
    })
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let listeners = self.proxy.shown_listeners();
        let enc = &mut enc;
        // Every (labels, upstream, figures) once.
        let rows: Vec<(Labels, Arc<upstreams::Upstream>, Arc<UpStats>)> = listeners
            .iter()
            .filter(|l| self.per_upstream_all || l.list.len() <= PAGE)
            .flat_map(|l| {
                l.shown_upstreams().into_iter().map(move |up| {
                    let s = l.stats.upstream(up.name());
                    let labels = vec![
                        ("listener", l.bound.to_string()),
                        ("upstream", up.name().to_owned()),
                    ];
                    (labels, up, s)
                })
            })
            .collect();
        let per = |f: &dyn Fn(&upstreams::Upstream, &UpStats) -> u64| {
            rows.iter()
                .map(|(labels, up, s)| (labels.clone(), f(up, s)))
                .collect::<Vec<_>>()
        };
        gauges(
            enc,
            "upstreams_upstream_up",
            "1 when the upstream is selectable.",
            None,
            per(&|up, _| u64::from(up.is_alive())),
        )?;
        gauges(
            enc,
            "upstreams_upstream_state",
            "1 for the upstream's current state.",
            None,
            rows.iter().flat_map(|(labels, up, _)| {
                let now = up.state().name();
                upstreams::State::NAMES.map(|st| {
                    let mut l = labels.clone();
                    l.push(("state", st.to_owned()));
                    (l, u64::from(st == now))
                })
            }),
        )?;
        gauges(
            enc,
            "upstreams_upstream_errors",
            "Failures in the current error window.",
            None,
            per(&|up, _| u64::from(up.errors())),
        )?;
        counters(
            enc,
            "upstreams_upstream_picks",
            "Connections handed to the upstream.",
            None,
            per(&|_, s| load(&s.picks)),
        )?;
        gauges(
            enc,
            "upstreams_upstream_active_connections",
            "Sessions open to the upstream.",
            None,
            per(&|_, s| s.active.load(Ordering::Relaxed).max(0) as u64),
        )?;
        counters(
            enc,
            "upstreams_upstream_received",
            "Bytes from the upstream to clients.",
            Some(&Unit::Bytes),
            per(&|_, s| load(&s.bytes_in)),
        )?;
        counters(
            enc,
            "upstreams_upstream_sent",
            "Bytes from clients to the upstream.",
            Some(&Unit::Bytes),
            per(&|_, s| load(&s.bytes_out)),
        )?;
        counters(
            enc,
            "upstreams_upstream_connect_failures",
            "Failed connects.",
            None,
            per(&|_, s| load(&s.connect_failures)),
        )?;
        counters(
            enc,
            "upstreams_upstream_session_failures",
            "Failures after a connect: closed or silent before answering, reset after.",
            None,
            per(&|_, s| load(&s.session_failures)),
        )?;
        {
            let mut metric = enc.encode_descriptor(
                "upstreams_upstream_connect",
                "Connect latency.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (labels, _, s) in &rows {
                let (cumulative, count, sum) = s.histogram();
                // The encoder takes per-bucket counts; ours are cumulative.
                let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
                let mut below = 0;
                for (le, c) in BUCKETS.iter().zip(&cumulative) {
                    buckets.push((*le, c - below));
                    below = *c;
                }
                buckets.push((f64::INFINITY, count.saturating_sub(below)));
                metric
                    .encode_family(labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        // Active health checks, for listeners that run them.
        let checks: Vec<(Labels, upstreams_check::CheckStatus)> = listeners
            .iter()
            .filter(|l| self.per_upstream_all || l.list.len() <= PAGE)
            .filter_map(|l| l.checker().map(|c| (l, c)))
            .flat_map(|(l, c)| {
                l.shown_upstreams().into_iter().filter_map(move |up| {
                    let status = c.status(&up)?;
                    Some((
                        vec![
                            ("listener", l.bound.to_string()),
                            ("upstream", up.name().to_owned()),
                        ],
                        status,
                    ))
                })
            })
            .collect();
        gauges(
            enc,
            "upstreams_upstream_check_up",
            "1 when the latest active health check passed.",
            None,
            checks.iter().map(|(l, c)| (l.clone(), u64::from(c.ok))),
        )?;
        counters(
            enc,
            "upstreams_upstream_checks",
            "Active health checks run.",
            None,
            checks.iter().map(|(l, c)| (l.clone(), c.checks)),
        )?;
        counters(
            enc,
            "upstreams_upstream_check_failures",
            "Active health checks failed.",
            None,
            checks.iter().map(|(l, c)| (l.clone(), c.failures)),
        )?;
        gauges(
            enc,
            "upstreams_upstream_check_duration",
            "How long the latest active health check took.",
            Some(&Unit::Seconds),
            checks
                .iter()
                .map(|(l, c)| (l.clone(), c.duration.as_secs_f64())),
        )?;
        listener_families(enc, &listeners)
    }
}

fn listener_families(
    enc: &mut DescriptorEncoder<'_>,
    listeners: &[Arc<Listener>],
) -> std::fmt::Result {
    let per = |f: &dyn Fn(&Listener, &Stats) -> u64| {
        listeners
            .iter()
            .map(|l| (vec![("listener", l.bound.to_string())], f(l, &l.stats)))
            .collect::<Vec<_>>()
    };
    let c = |enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, f: &dyn Fn(&Stats) -> u64| {
        counters(enc, name, help, None, per(&|_, s| f(s)))
    };
    c(
        enc,
        "upstreams_listener_accepted",
        "Clients accepted.",
        &|s| load(&s.accepted),
    )?;
    c(
        enc,
        "upstreams_listener_refused",
        "Clients closed because no upstream could take them.",
        &|s| load(&s.refused),
    )?;
    c(
        enc,
        "upstreams_listener_failed",
        "Clients closed: their backend failed after their bytes reached it (not retried).",
        &|s| load(&s.failed),
    )?;
    c(
        enc,
        "upstreams_listener_retries",
        "Tries on another upstream after a failed one.",
        &|s| load(&s.retries),
    )?;
    c(
        enc,
        "upstreams_listener_idle_closed",
        "Sessions closed after idle_timeout without a byte either way.",
        &|s| load(&s.idle_closed),
    )?;
    c(
        enc,
        "upstreams_listener_accept_errors",
        "Failed accepts (out of file descriptors and the like).",
        &|s| load(&s.accept_errors),
    )?;
    c(
        enc,
        "upstreams_listener_proxy_protocol_rejected",
        "Clients closed for a missing, late or malformed PROXY protocol header.",
        &|s| load(&s.proxy_rejected),
    )?;
    c(
        enc,
        "upstreams_listener_queued",
        "Clients that found every upstream at max_conns and waited.",
        &|s| load(&s.queued_total),
    )?;
    c(
        enc,
        "upstreams_listener_queue_timeouts",
        "Clients closed after waiting queue_timeout for a free upstream.",
        &|s| load(&s.queue_timeouts),
    )?;
    c(
        enc,
        "upstreams_listener_queue_abandoned",
        "Queued clients that closed before an upstream was free (nothing forwarded).",
        &|s| load(&s.queue_abandoned),
    )?;
    c(
        enc,
        "upstreams_listener_accept_paused",
        "Times the listener stopped accepting at max_connections.",
        &|s| load(&s.accept_paused),
    )?;
    counters(
        enc,
        "upstreams_listener_sessions",
        "Sessions ended, by outcome (the access log's outcome).",
        None,
        listeners.iter().flat_map(|l| {
            l.stats.outcomes().map(|(outcome, n)| {
                let labels = vec![
                    ("listener", l.bound.to_string()),
                    ("outcome", outcome.name().to_owned()),
                ];
                (labels, n)
            })
        }),
    )?;
    gauges(
        enc,
        "upstreams_listener_waiting",
        "Clients waiting for a free upstream now.",
        None,
        per(&|_, s| s.queued.load(Ordering::Relaxed).max(0) as u64),
    )?;
    gauges(
        enc,
        "upstreams_listener_connections",
        "Clients being served now.",
        None,
        per(&|_, s| s.connections.load(Ordering::Relaxed).max(0) as u64),
    )?;
    gauges(
        enc,
        "upstreams_listener_upstreams",
        "Upstreams configured (per-upstream series are left out above 1000 unless \
         /metrics?per_upstream=all).",
        None,
        per(&|l, _| l.list.len() as u64),
    )?;
    gauges(
        enc,
        "upstreams_listener_upstreams_alive",
        "Upstreams selectable now.",
        None,
        per(&|l, _| l.list.alive_count() as u64),
    )
}

/// The process figures Prometheus's clients export by convention (from /proc, through
/// `procfs`).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let none = || -> Labels { Vec::new() };
        let me = procfs::process::Process::myself().ok();
        let stat = me.as_ref().and_then(|p| p.stat().ok());
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let cpu = stat
            .as_ref()
            .map_or(0.0, |s| (s.utime + s.stime) as f64 / ticks);
        let rss = stat.as_ref().map_or(0, |s| s.rss * procfs::page_size());
        let mut metric = enc.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        metric
            .encode_family(&none())?
            .encode_counter::<NoLabelSet, _, u64>(&cpu, None)?;
        gauges(
            &mut enc,
            "process_resident_memory",
            "Resident memory.",
            Some(&Unit::Bytes),
            [(none(), rss)],
        )?;
        let fds = me.as_ref().and_then(|p| p.fd_count().ok()).unwrap_or(0) as u64;
        gauges(
            &mut enc,
            "process_open_fds",
            "Open file descriptors.",
            None,
            [(none(), fds)],
        )?;
        let max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
        gauges(
            &mut enc,
            "process_max_fds",
            "The soft limit of open file descriptors.",
            None,
            [(none(), max_fds)],
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_figures_render() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(super::ProcessCollector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("process_cpu_seconds_total "), "{out}");
        assert!(out.contains("process_resident_memory_bytes "), "{out}");
        assert!(out.contains("process_open_fds "), "{out}");
        assert!(out.ends_with("# EOF\n"));
    }
}
