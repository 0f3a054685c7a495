//! When to ask: first resolution, the lazy interval, and the core's re-resolution requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use upstreams::{Host, Limits, Upstream, UpstreamList};

use crate::resolver::{Error, Nameservers, Resolver};

/// What one refresh pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Queries sent.
    pub queried: usize,
    /// Queries that failed (timeout, NXDOMAIN, empty): the previous answer was kept.
    pub failed: usize,
    /// Upstreams whose addresses changed, plus members added or drained.
    pub changed: usize,
}

/// When one name was last asked for and when it is due again.
#[derive(Debug, Clone, Copy)]
struct Timing {
    last: Option<Duration>,
    next_lazy: Duration,
    requested: bool,
}

impl Timing {
    fn new(now: Duration) -> Self {
        Self {
            last: None,
            next_lazy: now,
            requested: false,
        }
    }

    /// Decides whether to query now; if so, records the query.
    fn take_due(&mut self, now: Duration, limits: &Limits, name: &str) -> bool {
        let go = match self.last {
            None => true,
            Some(last) => {
                now >= self.next_lazy
                    || (self.requested
                        && now.saturating_sub(last) >= limits.effective_resolve_min_interval())
            }
        };
        if go {
            self.last = Some(now);
            self.requested = false;
            self.next_lazy =
                now + limits.lazy_resolve_time + lazy_jitter(limits.lazy_resolve_time, name, now);
        }
        go
    }
}

/// An upstream (held, see `Refresher::names`) and its timing.
type NameTiming = (Arc<Upstream>, Timing);

/// A query to send: an upstream's A/AAAA, or an SRV entry of a list.
enum Query {
    Name(Arc<Upstream>),
    Srv { group: usize, name: String },
}

/// Resolves the names of lists on schedule. One per set of lists; cheap to share by `Arc`.
#[derive(Debug)]
pub struct Refresher {
    resolver: Resolver,
    /// Per (list, upstream); the entry keeps the upstream alive, so a freed address is never
    /// confused with a new upstream.
    names: Mutex<HashMap<(usize, usize), NameTiming>>,
    /// Per (list, SRV entry).
    srv: Mutex<HashMap<(usize, usize), Timing>>,
}

/// 0–10 % of `d`, from a hash of the name and time (spreads re-resolutions of many names).
fn lazy_jitter(d: Duration, name: &str, now: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(now.as_nanos().to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    d.mul_f64((h % 1000) as f64 / 10_000.0)
}

impl Refresher {
    /// A refresher asking `servers`, with timeouts and retries from `limits`. Call inside a
    /// tokio runtime.
    pub fn new(servers: &Nameservers, limits: &Limits) -> Result<Self, Error> {
        Ok(Self {
            resolver: Resolver::new(servers, limits)?,
            names: Mutex::default(),
            srv: Mutex::default(),
        })
    }

    /// One pass over `list`: queries every name that is due and hands the answers in.
    /// New SRV members are resolved in the same pass.
    pub async fn refresh(&self, list: &UpstreamList) -> Report {
        let mut report = Report::default();
        // A pass can add members (SRV); a second round resolves them at once.
        for _ in 0..2 {
            let todo = self.due_now(list);
            if todo.is_empty() {
                break;
            }
            for query in todo {
                self.resolve_one(list, query, &mut report).await;
            }
        }
        report
    }

    /// The queries due now; the schedule is updated as if they were sent.
    fn due_now(&self, list: &UpstreamList) -> Vec<Query> {
        let limits = list.limits();
        let now = list.now();
        let members = list.upstreams();
        let list_key = list as *const UpstreamList as usize;
        let mut todo = Vec::new();
        let mut srv_requested = Vec::new();
        {
            let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            // Forget upstreams that left this list (drained SRV targets).
            names.retain(|&(l, _), (up, _)| {
                l != list_key || members.iter().any(|m| Arc::ptr_eq(m, up))
            });
            for up in members.iter() {
                let Host::Name(_) = up.entry().host() else {
                    continue;
                };
                let (_, timing) = names
                    .entry((list_key, Arc::as_ptr(up) as usize))
                    .or_insert_with(|| (Arc::clone(up), Timing::new(now)));
                if up.take_resolve_request() {
                    timing.requested = true;
                    srv_requested.push(up.group());
                }
                if timing.take_due(now, &limits, up.name()) {
                    todo.push(Query::Name(Arc::clone(up)));
                }
            }
        }
        let mut srv = self.srv.lock().unwrap_or_else(|p| p.into_inner());
        for (group, name) in list.srv_entries() {
            let timing = srv
                .entry((list_key, group))
                .or_insert_with(|| Timing::new(now));
            timing.requested |= srv_requested.contains(&group);
            if timing.take_due(now, &limits, &name) {
                todo.push(Query::Srv { group, name });
            }
        }
        todo
    }

    async fn resolve_one(&self, list: &UpstreamList, query: Query, report: &mut Report) {
        report.queried += 1;
        match query {
            Query::Srv { group, name } => match self.resolver.lookup_srv(&name).await {
                Ok(targets) if !targets.is_empty() => {
                    let change = list.set_srv_targets(group, &targets);
                    report.changed += change.added.len() + change.removed.len();
                    tracing::debug!(%name, ?change, "srv answer");
                }
                Ok(_) => report.failed += 1,
                Err(err) => {
                    report.failed += 1;
                    tracing::info!(%err, "srv lookup failed; members kept");
                }
            },
            Query::Name(up) => {
                let Host::Name(name) = up.entry().host() else {
                    return;
                };
                match self.resolver.lookup_ips(name).await {
                    Ok(ips) if !ips.is_empty() => {
                        if list.set_addresses(&up, &ips) {
                            report.changed += 1;
                        }
                    }
                    Ok(_) => report.failed += 1,
                    Err(err) => {
                        report.failed += 1;
                        tracing::info!(%err, upstream = up.name(), "lookup failed; addresses kept");
                    }
                }
            }
        }
    }

    /// Refreshes `lists` forever, one pass every `tick`. Spawn it once per set of lists.
    pub async fn run(self, lists: Vec<Arc<UpstreamList>>, tick: Duration) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            for list in &lists {
                self.refresh(list).await;
            }
        }
    }
}

/// Resolves every name of `list` once, for programs without a tokio runtime (the Lua
/// module's `create`, the CLI): a current-thread runtime lives for the call.
pub fn resolve_blocking(list: &UpstreamList, servers: &Nameservers) -> Result<Report, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let refresher = Refresher::new(servers, &list.limits())?;
        Ok(refresher.refresh(list).await)
    })
}
