//! Per-upstream traffic figures kept by the proxy (the core keeps health, not traffic).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::access::Outcome;

/// Upstreams per listener in one page of `/status.json` and `/status`, and the list size
/// above which `/metrics` leaves out per-upstream series: no page grows with a list beyond it.
pub(crate) const PAGE: usize = 1000;

/// Upper bounds (seconds) of the connect-latency histogram buckets.
pub(crate) const BUCKETS: [f64; 11] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0,
];

#[derive(Debug, Default)]
pub(crate) struct UpStats {
    pub(crate) picks: AtomicU64,
    pub(crate) active: AtomicI64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    /// Failures after a connect: closed or silent before answering, reset after answering.
    pub(crate) session_failures: AtomicU64,
    /// Drained through the admin API (not removed by a reload).
    pub(crate) drained_by_admin: std::sync::atomic::AtomicBool,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
    last_change: Mutex<Option<(SystemTime, &'static str)>>,
}

impl UpStats {
    pub(crate) fn observe_connect(&self, seconds: f64) {
        for (bucket, le) in self.buckets.iter().zip(BUCKETS) {
            if seconds <= le {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Cumulative bucket counts, the count and the sum in seconds.
    pub(crate) fn histogram(&self) -> (Vec<u64>, u64, f64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }

    pub(crate) fn changed(&self, what: &'static str) {
        *self.last_change.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((SystemTime::now(), what));
    }

    pub(crate) fn last_change(&self) -> Option<(SystemTime, &'static str)> {
        *self.last_change.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The figures of one listener, by upstream name.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    per: RwLock<HashMap<String, Arc<UpStats>>>,
    /// Clients closed because no upstream could take them.
    pub(crate) refused: AtomicU64,
    /// Clients closed because their backend failed after their bytes reached it, and
    /// `retry_on` did not allow replaying them elsewhere.
    pub(crate) failed: AtomicU64,
    pub(crate) accepted: AtomicU64,
    /// Sessions closed by the idle timer.
    pub(crate) idle_closed: AtomicU64,
    /// Failed accepts (descriptor limit and the like).
    pub(crate) accept_errors: AtomicU64,
    /// Clients closed for a missing, late or malformed PROXY protocol header.
    pub(crate) proxy_rejected: AtomicU64,
    /// Tries on another upstream after a failed one.
    pub(crate) retries: AtomicU64,
    /// Clients that found every upstream at `max_conns` and waited.
    pub(crate) queued_total: AtomicU64,
    /// Clients waiting now.
    pub(crate) queued: AtomicI64,
    /// Clients closed after waiting `queue_timeout`.
    pub(crate) queue_timeouts: AtomicU64,
    /// Queued clients that closed before an upstream was free (not forwarded).
    pub(crate) queue_abandoned: AtomicU64,
    /// Clients being served now (accepted, not yet closed).
    pub(crate) connections: AtomicI64,
    /// Times the listener stopped accepting at `max_connections`.
    pub(crate) accept_paused: AtomicU64,
    /// Sessions ended, by [`Outcome::index`].
    outcomes: [AtomicU64; Outcome::ALL.len()],
}

impl Stats {
    /// Counts one ended session.
    pub(crate) fn record(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions ended with each outcome.
    pub(crate) fn outcomes(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL
            .into_iter()
            .map(|o| (o, self.outcomes[o.index()].load(Ordering::Relaxed)))
    }

    /// Keeps the figures of the names `keep` says yes to.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.per
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| keep(name));
    }

    pub(crate) fn upstream(&self, name: &str) -> Arc<UpStats> {
        if let Some(s) = self.per.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Arc::clone(s);
        }
        let mut per = self.per.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(per.entry(name.to_owned()).or_default())
    }
}
