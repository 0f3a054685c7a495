//! `upstreams simulate --scenario NAME`: how well clients are served when a backend
//! misbehaves, per rotation, against models of the peers' published algorithms.
//!
//! A discrete-event simulation on a simulated clock. Backends are queues with `servers`
//! parallel slots and exponential service times; clients arrive as a Poisson process at a set
//! utilisation of the pool's healthy capacity; a failed try is retried on another backend
//! (`--retries`, default 1). Our rotations run the library itself (an [`UpstreamList`] on a
//! [`ManualClock`]: its picks, health windows, revivals and latency estimates, no model of
//! them); each try holds a [`Picked`] until it ends, then reports `ok()` with the try's
//! latency or `fail()`.
//!
//! The peers are models written from their documentation, named as models:
//! - `nginx-rr`: smooth weighted round-robin with `max_fails=1 fail_timeout=10s` (a failed
//!   peer is skipped for 10 s, then tried again by one request);
//! - `nginx-least-conn`: fewest active connections ÷ weight, ties by weighted round-robin,
//!   the same `max_fails`;
//! - `haproxy-leastconn`: fewest active connections ÷ weight, ties in turn; the default TCP
//!   `check` (every 2 s, `fall 3`, `rise 2`) sees a backend that refuses connections, not one
//!   that answers errors;
//! - `envoy-least-request`: two random hosts, the one with fewer active requests (equal
//!   weights; with unequal ones, weight ÷ (active + 1) as the pick weight, `active_request_bias`
//!   1); no outlier detection (off by default);
//! - `tower-p2c-peak-ewma`: two random endpoints, cost = Peak-EWMA of response times (decay
//!   10 s, errors included: tower times every response) × (pending + 1); a retry asks the
//!   balancer again, which may return the same endpoint (tower's p2c has no exclusion);
//! - `oracle`: join-the-shortest-queue over the good backends only (the bad one removed):
//!   the floor the others are measured against.
//!
//! Our lists use the proxy's health defaults: rspamd's error window (4 failures per 10 s,
//! offline 60 s ± 40 %) and `max_consecutive_errors` 5 (`--max-consecutive-errors`; 0 is
//! rspamd's window alone, which takes an upstream out only once 10 s of errors have passed).
//!
//! Every peer gets the same retry budget and (except tower) the same "another backend"
//! rule, so the figures compare balancing and health, not retry policies.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp, Zipf};
use serde::Serialize;
use upstreams::{FailKind, HashMode, Limits, ManualClock, Picked, Rotation, UpstreamList};

/// The scenarios, by command-line name.
pub(crate) const SCENARIOS: [&str; 5] =
    ["slow", "fast-fail", "flapping", "hot-keys", "heterogeneous"];

/// What a scenario run is given.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) backends: usize,
    pub(crate) servers: u32,
    pub(crate) service_ms: f64,
    pub(crate) utilisation: f64,
    pub(crate) requests: usize,
    pub(crate) retries: u32,
    pub(crate) keys: usize,
    pub(crate) balance_factor: f64,
    pub(crate) max_consecutive_errors: u32,
    pub(crate) seed: u64,
}

impl Params {
    pub(crate) fn check(&self) -> Result<()> {
        if self.backends < 2 {
            bail!("--backends must be at least 2 (one of them misbehaves)");
        }
        if !(self.utilisation > 0.0 && self.utilisation < 1.0) {
            bail!("--utilisation must be above 0 and below 1");
        }
        if !(self.service_ms > 0.0 && self.service_ms.is_finite()) {
            bail!("--service-ms must be a positive number");
        }
        if self.servers == 0 || self.requests == 0 || self.keys == 0 {
            bail!("--servers, --requests and --keys must be at least 1");
        }
        if !(self.balance_factor > 1.0 && self.balance_factor <= 100.0) {
            bail!("--balance-factor must be above 1 and at most 100");
        }
        Ok(())
    }
}

/// One rotation's figures (the JSON row).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) requests: usize,
    pub(crate) errors: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) bad_share: Option<f64>,
    pub(crate) home_share: Option<f64>,
    pub(crate) max_over_mean: Option<f64>,
}

/// One scenario's figures (the JSON object).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) results: Vec<Row>,
}

/// How the pool misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Backend 0 serves 10× slower.
    Slow,
    /// Backend 0 answers every request with an error after 1 ms.
    FastFail,
    /// Backend 0 is down 5 s, up 5 s (first down at 5 s): refused while down, and what it
    /// held is reset when it goes down.
    Flapping,
}

struct Setup {
    fault: Fault,
    servers: Vec<u32>,
    weights: Vec<u16>,
    hashed: bool,
}

fn setup(scenario: &str, p: &Params) -> Result<Setup> {
    let n = p.backends;
    let plain = |fault| Setup {
        fault,
        servers: vec![p.servers; n],
        weights: vec![1; n],
        hashed: false,
    };
    Ok(match scenario {
        "slow" => plain(Fault::Slow),
        "fast-fail" => plain(Fault::FastFail),
        "flapping" => plain(Fault::Flapping),
        "hot-keys" => Setup {
            hashed: true,
            ..plain(Fault::None)
        },
        "heterogeneous" => {
            let caps: Vec<u16> = (0..n).map(|i| 1 + (i % 4) as u16).collect();
            Setup {
                fault: Fault::None,
                servers: caps
                    .iter()
                    .map(|&c| u32::from(c) * p.servers.div_ceil(2))
                    .collect(),
                weights: caps,
                hashed: false,
            }
        }
        other => bail!(
            "unknown scenario {other:?} (expected {} or all)",
            SCENARIOS.join(", ")
        ),
    })
}

/// Runs one scenario: every rotation and peer model on the same arrivals.
pub(crate) fn run(scenario: &str, p: &Params) -> Result<Report> {
    let s = setup(scenario, p)?;
    let mut policies: Vec<Box<dyn Policy>> = Vec::new();
    let modes: &[(&str, Rotation, HashMode)] = if s.hashed {
        &[
            ("balanced", Rotation::Hashed, HashMode::Balanced),
            ("bounded", Rotation::Hashed, HashMode::Bounded),
            ("rspamd-ring", Rotation::Hashed, HashMode::RspamdRing),
            ("rspamd-jump", Rotation::Hashed, HashMode::RspamdJump),
            ("p2c", Rotation::P2c, HashMode::Balanced),
        ]
    } else {
        &[
            ("round-robin", Rotation::RoundRobin, HashMode::Balanced),
            ("random", Rotation::Random, HashMode::Balanced),
            ("p2c", Rotation::P2c, HashMode::Balanced),
        ]
    };
    for &(name, rotation, mode) in modes {
        policies.push(Box::new(Ours::new(name, rotation, mode, &s.weights, p)?));
    }
    if !s.hashed {
        policies.push(Box::new(Nginx::new(false, &s.weights)));
        policies.push(Box::new(Nginx::new(true, &s.weights)));
        policies.push(Box::new(Haproxy::new(&s.weights)));
        policies.push(Box::new(Envoy::new(&s.weights)));
        policies.push(Box::new(TowerPeakEwma::new(
            s.weights.len(),
            p.service_ms / 1e3,
        )));
    }
    let bad = if s.fault == Fault::None {
        None
    } else {
        Some(0)
    };
    policies.push(Box::new(Oracle { exclude: bad }));
    let mut results = Vec::new();
    for mut policy in policies {
        results.push(simulate(&s, p, policy.as_mut(), bad)?);
    }
    Ok(Report {
        scenario: scenario.to_owned(),
        results,
    })
}

/// A balancing rule under test.
trait Policy {
    fn name(&self) -> String;
    fn kind(&self) -> &'static str;
    /// A backend for `req`'s next try (`tried`: the backend its last try failed on).
    fn pick(&mut self, w: &World, req: usize, key: u64, tried: Option<usize>) -> Option<usize>;
    /// `req`'s try on `backend` ended after `latency` seconds.
    fn done(&mut self, w: &World, req: usize, backend: usize, latency: f64, ok: bool);
    /// The key's home backend (hash rotations), with no load and every backend up.
    fn home(&self, _key: u64) -> Option<usize> {
        None
    }
    /// An active health check round (every 2 s of simulated time).
    fn check(&mut self, _w: &World) {}
}

/// What the policies may see of the simulated world: the time, the connections each has
/// open to each backend, and whether a backend accepts connections (for active checks).
struct World {
    now: u64,
    active: Vec<u32>,
    servers: Vec<u32>,
    accepting: Vec<bool>,
}

impl World {
    fn secs(&self) -> f64 {
        self.now as f64 / 1e9
    }
}

struct Request {
    start: u64,
    key: u64,
    tries: u32,
    /// Bumped when a try is cut short (a reset), so its scheduled end is ignored.
    attempt: u32,
    at: Option<usize>,
    try_start: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    Toggle,
    HealthCheck,
    End { req: usize, attempt: u32, ok: bool },
}

struct Backend {
    servers: u32,
    busy: Vec<usize>,
    queue: VecDeque<usize>,
    mean: f64,
    fault: Fault,
    up: bool,
}

fn simulate(s: &Setup, p: &Params, policy: &mut dyn Policy, bad: Option<usize>) -> Result<Row> {
    let n = s.servers.len();
    let mean = p.service_ms / 1e3;
    let capacity: f64 = s.servers.iter().map(|&k| f64::from(k) / mean).sum();
    let arrivals = Exp::new(p.utilisation * capacity)?;
    let service = Exp::new(1.0)?;
    let zipf = Zipf::new(p.keys as f64, 1.1)?;
    let mut backends: Vec<Backend> = (0..n)
        .map(|i| Backend {
            servers: s.servers[i],
            busy: Vec::new(),
            queue: VecDeque::new(),
            mean: if s.fault == Fault::Slow && i == 0 {
                mean * 10.0
            } else {
                mean
            },
            fault: if Some(i) == bad { s.fault } else { Fault::None },
            up: true,
        })
        .collect();
    let mut world = World {
        now: 0,
        active: vec![0; n],
        servers: s.servers.clone(),
        accepting: vec![true; n],
    };
    // Arrivals, keys and service times come from their own generator with the same seed for
    // every policy: all of them see the same clients.
    let mut load_rng = SmallRng::seed_from_u64(p.seed);
    let mut heap: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>, at: u64, ev: Ev| {
        seq += 1;
        heap.push(Reverse((at, seq, ev)));
    };
    push(&mut heap, 0, Ev::Arrival);
    if s.fault == Fault::Flapping {
        push(&mut heap, 5_000_000_000, Ev::Toggle);
    }
    push(&mut heap, 2_000_000_000, Ev::HealthCheck);
    let mut reqs: Vec<Request> = Vec::with_capacity(p.requests);
    let mut latencies: Vec<u64> = Vec::with_capacity(p.requests);
    let (mut errors, mut tries, mut bad_tries, mut home_hits) = (0usize, 0u64, 0u64, 0u64);
    let mut served = vec![0u64; n];
    let mut finished = 0usize;
    let secs = |x: f64| (x * 1e9) as u64;

    // Starts (or queues, or refuses) `req`'s try on backend `b`; returns a failure to report
    // now when the backend refuses at once.
    macro_rules! dispatch {
        ($req:expr, $b:expr) => {{
            let (req, b) = ($req, $b);
            let now = world.now;
            reqs[req].at = Some(b);
            reqs[req].try_start = now;
            tries += 1;
            if Some(b) == bad {
                bad_tries += 1;
            }
            world.active[b] += 1;
            let be = &mut backends[b];
            let attempt = reqs[req].attempt;
            if !be.up {
                push(
                    &mut heap,
                    now + 100_000,
                    Ev::End {
                        req,
                        attempt,
                        ok: false,
                    },
                );
            } else if be.fault == Fault::FastFail {
                push(
                    &mut heap,
                    now + 1_000_000,
                    Ev::End {
                        req,
                        attempt,
                        ok: false,
                    },
                );
            } else if (be.busy.len() as u32) < be.servers {
                be.busy.push(req);
                let t = service.sample(&mut load_rng) * be.mean;
                push(
                    &mut heap,
                    now + secs(t),
                    Ev::End {
                        req,
                        attempt,
                        ok: true,
                    },
                );
            } else {
                be.queue.push_back(req);
            }
        }};
    }

    while let Some(Reverse((at, _, ev))) = heap.pop() {
        world.now = at;
        let mut failed: Vec<usize> = Vec::new();
        match ev {
            Ev::Arrival => {
                if reqs.len() < p.requests {
                    let key = if s.hashed {
                        zipf.sample(&mut load_rng) as u64
                    } else {
                        0
                    };
                    let req = reqs.len();
                    reqs.push(Request {
                        start: at,
                        key,
                        tries: 0,
                        attempt: 0,
                        at: None,
                        try_start: at,
                    });
                    let next = arrivals.sample(&mut load_rng);
                    push(&mut heap, at + secs(next).max(1), Ev::Arrival);
                    match policy.pick(&world, req, key, None) {
                        Some(b) => {
                            if s.hashed && policy.home(key) == Some(b) {
                                home_hits += 1;
                            }
                            dispatch!(req, b)
                        }
                        None => {
                            errors += 1;
                            finished += 1;
                            latencies.push(0);
                        }
                    }
                }
            }
            Ev::Toggle => {
                let be = &mut backends[0];
                be.up = !be.up;
                world.accepting[0] = be.up;
                if !be.up {
                    // Going down resets what it held.
                    failed.append(&mut be.busy);
                    failed.extend(be.queue.drain(..));
                }
                if finished < p.requests {
                    push(&mut heap, at + 5_000_000_000, Ev::Toggle);
                }
            }
            Ev::HealthCheck => {
                policy.check(&world);
                if finished < p.requests {
                    push(&mut heap, at + 2_000_000_000, Ev::HealthCheck);
                }
            }
            Ev::End { req, attempt, ok } => {
                if reqs[req].attempt != attempt {
                    continue;
                }
                let b = reqs[req].at.expect("a try in progress has a backend");
                if ok {
                    let be = &mut backends[b];
                    be.busy.retain(|&r| r != req);
                    if let Some(next) = be.queue.pop_front() {
                        be.busy.push(next);
                        let t = service.sample(&mut load_rng) * be.mean;
                        let attempt = reqs[next].attempt;
                        push(
                            &mut heap,
                            at + secs(t),
                            Ev::End {
                                req: next,
                                attempt,
                                ok: true,
                            },
                        );
                    }
                    world.active[b] -= 1;
                    served[b] += 1;
                    let latency = (at - reqs[req].try_start) as f64 / 1e9;
                    policy.done(&world, req, b, latency, true);
                    latencies.push(at - reqs[req].start);
                    finished += 1;
                } else {
                    failed.push(req);
                }
            }
        }
        for req in failed {
            let b = reqs[req].at.take().expect("a failed try has a backend");
            reqs[req].attempt += 1;
            world.active[b] -= 1;
            let latency = (at - reqs[req].try_start) as f64 / 1e9;
            policy.done(&world, req, b, latency, false);
            reqs[req].tries += 1;
            let retry = if reqs[req].tries <= p.retries {
                policy.pick(&world, req, reqs[req].key, Some(b))
            } else {
                None
            };
            match retry {
                Some(next) => dispatch!(req, next),
                None => {
                    errors += 1;
                    finished += 1;
                    latencies.push(at - reqs[req].start);
                }
            }
        }
        if finished >= p.requests {
            break;
        }
    }
    latencies.sort_unstable();
    let pct = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
        latencies.get(i).map_or(0.0, |&ns| ns as f64 / 1e6)
    };
    let mean_served = served.iter().sum::<u64>() as f64 / n as f64;
    Ok(Row {
        name: policy.name(),
        kind: policy.kind(),
        requests: reqs.len(),
        errors,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        bad_share: bad.map(|_| bad_tries as f64 / tries.max(1) as f64),
        home_share: (s.hashed && policy.home(0).is_some())
            .then(|| home_hits as f64 / reqs.len().max(1) as f64),
        max_over_mean: s
            .hashed
            .then(|| served.iter().copied().max().unwrap_or(0) as f64 / mean_served.max(1e-9)),
    })
}

/// Our library, on the simulated clock.
struct Ours {
    name: &'static str,
    rotation: Rotation,
    list: UpstreamList,
    /// `balanced` for `bounded` (a key's home is its balanced owner), else the list's mode.
    reference: UpstreamList,
    clock: Arc<ManualClock>,
    held: HashMap<usize, Picked>,
    hashed: bool,
}

const EPOCH: Duration = Duration::from_secs(1000);

fn definition(weights: &[u16]) -> String {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!("10.0.{}.{}:80:{w}", i / 250, i % 250 + 1))
        .collect::<Vec<_>>()
        .join(",")
}

impl Ours {
    fn new(
        name: &'static str,
        rotation: Rotation,
        mode: HashMode,
        weights: &[u16],
        p: &Params,
    ) -> Result<Self> {
        let def = upstreams::Definition::parse(&definition(weights), 80)?;
        let clock = Arc::new(ManualClock::new(EPOCH));
        // The proxy's defaults: rspamd's error window, plus five failures in a row.
        let limits = Limits::default()
            .with_max_consecutive_errors(p.max_consecutive_errors)
            .with_seed(Some(p.seed))
            .with_hash_mode(mode)
            .with_balance_factor(p.balance_factor);
        let list = UpstreamList::with_clock(&def, limits.clone(), clock.clone())?;
        let home_mode = if mode == HashMode::Bounded {
            HashMode::Balanced
        } else {
            mode
        };
        let reference =
            UpstreamList::with_clock(&def, limits.with_hash_mode(home_mode), clock.clone())?;
        Ok(Self {
            name,
            rotation,
            list,
            reference,
            clock,
            held: HashMap::new(),
            hashed: rotation == Rotation::Hashed,
        })
    }
}

fn key_bytes(key: u64) -> [u8; 8] {
    key.to_le_bytes()
}

impl Policy for Ours {
    fn name(&self) -> String {
        self.name.to_owned()
    }
    fn kind(&self) -> &'static str {
        "ours"
    }
    fn pick(&mut self, w: &World, req: usize, key: u64, tried: Option<usize>) -> Option<usize> {
        self.clock.set(EPOCH + Duration::from_nanos(w.now));
        let key = key_bytes(key);
        let key: &[u8] = if self.hashed { &key } else { b"" };
        let picked = match tried {
            Some(t) => {
                let ups = self.list.upstreams();
                self.list.get_except(&ups[t], self.rotation, key)?
            }
            None => self.list.get(self.rotation, key)?,
        };
        let i = picked.index();
        self.held.insert(req, picked);
        Some(i)
    }
    fn done(&mut self, w: &World, req: usize, _backend: usize, latency: f64, ok: bool) {
        self.clock.set(EPOCH + Duration::from_nanos(w.now));
        if let Some(p) = self.held.remove(&req) {
            if ok {
                p.record_latency(latency);
                p.ok();
            } else {
                p.fail(FailKind::Other, "simulated failure");
            }
        }
    }
    fn home(&self, key: u64) -> Option<usize> {
        if !self.hashed {
            return None;
        }
        self.reference
            .snapshot()
            .select(Rotation::Hashed, &key_bytes(key))
            .map(|u| u.index())
    }
}

/// nginx `max_fails=1 fail_timeout=10s` bookkeeping, shared by both nginx models.
struct NginxPeer {
    weight: i64,
    current: i64,
    effective: i64,
    fails: u32,
    checked: f64,
    accessed: f64,
}

struct Nginx {
    least_conn: bool,
    peers: Vec<NginxPeer>,
}

const NGINX_FAIL_TIMEOUT: f64 = 10.0;

impl Nginx {
    fn new(least_conn: bool, weights: &[u16]) -> Self {
        Self {
            least_conn,
            peers: weights
                .iter()
                .map(|&w| NginxPeer {
                    weight: i64::from(w.max(1)),
                    current: 0,
                    effective: i64::from(w.max(1)),
                    fails: 0,
                    checked: 0.0,
                    accessed: 0.0,
                })
                .collect(),
        }
    }

    fn usable(&self, i: usize, now: f64, tried: Option<usize>) -> bool {
        let p = &self.peers[i];
        Some(i) != tried && !(p.fails >= 1 && now - p.checked <= NGINX_FAIL_TIMEOUT)
    }
}

impl Policy for Nginx {
    fn name(&self) -> String {
        if self.least_conn {
            "nginx-least-conn"
        } else {
            "nginx-rr"
        }
        .to_owned()
    }
    fn kind(&self) -> &'static str {
        "peer-model"
    }
    fn pick(&mut self, w: &World, _req: usize, _key: u64, tried: Option<usize>) -> Option<usize> {
        let now = w.secs();
        let n = self.peers.len();
        let mut candidates: Vec<usize> = (0..n).filter(|&i| self.usable(i, now, tried)).collect();
        if candidates.is_empty() {
            // nginx resets every peer's failure state when all are down and tries anyway.
            for p in &mut self.peers {
                p.fails = 0;
            }
            candidates = (0..n).filter(|&i| Some(i) != tried).collect();
        }
        if self.least_conn {
            // Fewest connections per unit of weight; the ties go to weighted round-robin.
            let best = candidates
                .iter()
                .map(|&i| (u64::from(w.active[i]), self.peers[i].weight))
                .min_by(|a, b| (a.0 as i128 * b.1 as i128).cmp(&(b.0 as i128 * a.1 as i128)))?;
            candidates.retain(|&i| {
                u64::from(w.active[i]) as i128 * best.1 as i128
                    == best.0 as i128 * self.peers[i].weight as i128
            });
        }
        let mut total = 0;
        let mut best: Option<(usize, i64)> = None;
        for &i in &candidates {
            let p = &mut self.peers[i];
            p.current += p.effective;
            total += p.effective;
            if p.effective < p.weight {
                p.effective += 1;
            }
            if best.is_none_or(|(_, c)| p.current > c) {
                best = Some((i, p.current));
            }
        }
        let (b, _) = best?;
        self.peers[b].current -= total;
        if now - self.peers[b].checked > NGINX_FAIL_TIMEOUT {
            self.peers[b].checked = now;
        }
        Some(b)
    }
    fn done(&mut self, w: &World, _req: usize, backend: usize, _latency: f64, ok: bool) {
        let now = w.secs();
        let p = &mut self.peers[backend];
        if ok {
            if p.accessed < p.checked {
                p.fails = 0;
            }
        } else {
            p.fails += 1;
            p.accessed = now;
            p.checked = now;
            p.effective = (p.effective - p.weight).max(0);
        }
    }
}

/// HAProxy `balance leastconn` with the default TCP `check inter 2s fall 3 rise 2`.
struct Haproxy {
    weights: Vec<u32>,
    /// Pick order among equals: the last picked goes to the back.
    turn: Vec<u64>,
    clock: u64,
    up: Vec<bool>,
    fails: Vec<u32>,
    rises: Vec<u32>,
}

impl Haproxy {
    fn new(weights: &[u16]) -> Self {
        let n = weights.len();
        Self {
            weights: weights.iter().map(|&w| u32::from(w.max(1))).collect(),
            turn: (0..n as u64).collect(),
            clock: n as u64,
            up: vec![true; n],
            fails: vec![0; n],
            rises: vec![0; n],
        }
    }
}

impl Policy for Haproxy {
    fn name(&self) -> String {
        "haproxy-leastconn".to_owned()
    }
    fn kind(&self) -> &'static str {
        "peer-model"
    }
    fn pick(&mut self, w: &World, _req: usize, _key: u64, tried: Option<usize>) -> Option<usize> {
        let n = self.weights.len();
        let b = (0..n)
            .filter(|&i| self.up[i] && Some(i) != tried)
            .min_by(|&a, &b| {
                let la = u64::from(w.active[a] + 1) * u64::from(self.weights[b]);
                let lb = u64::from(w.active[b] + 1) * u64::from(self.weights[a]);
                la.cmp(&lb).then(self.turn[a].cmp(&self.turn[b]))
            })?;
        self.clock += 1;
        self.turn[b] = self.clock;
        Some(b)
    }
    fn done(&mut self, _w: &World, _req: usize, _backend: usize, _latency: f64, _ok: bool) {}
    fn check(&mut self, w: &World) {
        for i in 0..self.weights.len() {
            if w.accepting[i] {
                self.fails[i] = 0;
                self.rises[i] += 1;
                if !self.up[i] && self.rises[i] >= 2 {
                    self.up[i] = true;
                }
            } else {
                self.rises[i] = 0;
                self.fails[i] += 1;
                if self.fails[i] >= 3 {
                    self.up[i] = false;
                }
            }
        }
    }
}

/// Envoy `LEAST_REQUEST`, `choice_count` 2, `active_request_bias` 1, no outlier detection.
struct Envoy {
    weights: Vec<f64>,
    equal: bool,
    rng: SmallRng,
}

impl Envoy {
    fn new(weights: &[u16]) -> Self {
        Self {
            weights: weights.iter().map(|&w| f64::from(w.max(1))).collect(),
            equal: weights.windows(2).all(|p| p[0] == p[1]),
            rng: SmallRng::seed_from_u64(0x0065_6e76_6f79),
        }
    }
}

fn two_distinct(rng: &mut SmallRng, n: usize, tried: Option<usize>) -> Option<(usize, usize)> {
    let pool: Vec<usize> = (0..n).filter(|&i| Some(i) != tried).collect();
    match pool.len() {
        0 => None,
        1 => Some((pool[0], pool[0])),
        k => {
            let a = rng.random_range(0..k);
            let mut b = rng.random_range(0..k - 1);
            if b >= a {
                b += 1;
            }
            Some((pool[a], pool[b]))
        }
    }
}

impl Policy for Envoy {
    fn name(&self) -> String {
        "envoy-least-request".to_owned()
    }
    fn kind(&self) -> &'static str {
        "peer-model"
    }
    fn pick(&mut self, w: &World, _req: usize, _key: u64, tried: Option<usize>) -> Option<usize> {
        let n = self.weights.len();
        let rng = &mut self.rng;
        if self.equal {
            let (a, b) = two_distinct(rng, n, tried)?;
            return Some(if w.active[b] < w.active[a] { b } else { a });
        }
        let eff: Vec<f64> = (0..n)
            .map(|i| {
                if Some(i) == tried {
                    0.0
                } else {
                    self.weights[i] / f64::from(w.active[i] + 1)
                }
            })
            .collect();
        let total: f64 = eff.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = rng.random::<f64>() * total;
        for (i, &e) in eff.iter().enumerate() {
            if x < e {
                return Some(i);
            }
            x -= e;
        }
        (0..n).rev().find(|&i| eff[i] > 0.0)
    }
    fn done(&mut self, _w: &World, _req: usize, _backend: usize, _latency: f64, _ok: bool) {}
}

/// tower `p2c::Balance` over `PeakEwma` (decay 10 s, default RTT = the mean service time).
struct TowerPeakEwma {
    rtt: Vec<f64>,
    at: Vec<f64>,
    pending: Vec<u32>,
    rng: SmallRng,
}

const TOWER_DECAY: f64 = 10.0;

impl TowerPeakEwma {
    fn new(n: usize, default_rtt: f64) -> Self {
        Self {
            rtt: vec![default_rtt; n],
            at: vec![0.0; n],
            pending: vec![0; n],
            rng: SmallRng::seed_from_u64(0x70_7765),
        }
    }

    fn cost(&self, i: usize, now: f64) -> f64 {
        let decayed = self.rtt[i] * (-(now - self.at[i]).max(0.0) / TOWER_DECAY).exp();
        decayed * f64::from(self.pending[i] + 1)
    }
}

impl Policy for TowerPeakEwma {
    fn name(&self) -> String {
        "tower-p2c-peak-ewma".to_owned()
    }
    fn kind(&self) -> &'static str {
        "peer-model"
    }
    fn pick(&mut self, w: &World, _req: usize, _key: u64, _tried: Option<usize>) -> Option<usize> {
        let now = w.secs();
        let (a, b) = two_distinct(&mut self.rng, self.rtt.len(), None)?;
        let pick = if self.cost(b, now) < self.cost(a, now) {
            b
        } else {
            a
        };
        self.pending[pick] += 1;
        Some(pick)
    }
    fn done(&mut self, w: &World, _req: usize, backend: usize, latency: f64, _ok: bool) {
        let now = w.secs();
        let i = backend;
        self.pending[i] = self.pending[i].saturating_sub(1);
        if latency > self.rtt[i] {
            self.rtt[i] = latency;
        } else {
            let decay = (-(now - self.at[i]).max(0.0) / TOWER_DECAY).exp();
            self.rtt[i] = self.rtt[i] * decay + latency * (1.0 - decay);
        }
        self.at[i] = now;
    }
}

/// Join the shortest queue (connections ÷ servers) over the good backends: the floor.
struct Oracle {
    exclude: Option<usize>,
}

impl Policy for Oracle {
    fn name(&self) -> String {
        "oracle".to_owned()
    }
    fn kind(&self) -> &'static str {
        "oracle"
    }
    fn pick(&mut self, w: &World, _req: usize, _key: u64, tried: Option<usize>) -> Option<usize> {
        (0..w.active.len())
            .filter(|&i| Some(i) != self.exclude && Some(i) != tried)
            .min_by(|&a, &b| {
                let la = u64::from(w.active[a]) * u64::from(w.servers[b]);
                let lb = u64::from(w.active[b]) * u64::from(w.servers[a]);
                la.cmp(&lb).then(a.cmp(&b))
            })
    }
    fn done(&mut self, _w: &World, _req: usize, _backend: usize, _latency: f64, _ok: bool) {}
}

/// Prints a report as a table.
pub(crate) fn print(out: &mut impl Write, report: &Report, p: &Params) -> Result<()> {
    writeln!(
        out,
        "scenario {}: {} backends × {} servers, service {} ms (exponential), utilisation {:.0} %, \
         {} requests, {} retr{} on another backend",
        report.scenario,
        p.backends,
        p.servers,
        p.service_ms,
        p.utilisation * 100.0,
        p.requests,
        p.retries,
        if p.retries == 1 { "y" } else { "ies" }
    )?;
    let header = [
        "rotation",
        "kind",
        "requests",
        "errors",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "bad share",
        "home share",
        "max/mean",
    ];
    let opt = |v: Option<f64>, pct: bool| match v {
        None => "-".to_owned(),
        Some(x) if pct => format!("{:.3} %", x * 100.0),
        Some(x) => format!("{x:.3}"),
    };
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.kind.to_owned(),
                r.requests.to_string(),
                r.errors.to_string(),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p99_ms),
                format!("{:.2}", r.p999_ms),
                opt(r.bad_share, true),
                opt(r.home_share, true),
                opt(r.max_over_mean, false),
            ]
        })
        .collect();
    crate::check::print_table(out, &header, &rows)?;
    Ok(())
}

/// Writes an SVG of p99 latency per rotation, one panel per scenario (log scale; ours in
/// blue, the peer models in grey, the oracle in green).
pub(crate) fn plot(path: &std::path::Path, reports: &[Report]) -> Result<()> {
    use plotters::prelude::*;
    let height = 320 * reports.len().max(1) as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((reports.len().max(1), 1));
    for (report, area) in reports.iter().zip(panels.iter()) {
        let names: Vec<String> = report.results.iter().map(|r| r.name.clone()).collect();
        let top = report
            .results
            .iter()
            .map(|r| r.p99_ms)
            .fold(1.0f64, f64::max)
            * 2.0;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: p99 latency (ms, log scale)", report.scenario),
                ("sans-serif", 18),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(
                // A segmented range has one segment past its end: stop one short.
                (0..names.len().saturating_sub(1)).into_segmented(),
                (1.0f64..top).log_scale(),
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len())
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_style(("sans-serif", 11))
            .draw()?;
        chart.draw_series(report.results.iter().enumerate().map(|(i, r)| {
            let color = match r.kind {
                "ours" => RGBColor(40, 90, 200),
                "oracle" => RGBColor(40, 150, 60),
                _ => RGBColor(150, 150, 150),
            };
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 1.0),
                    (SegmentValue::Exact(i + 1), r.p99_ms.max(1.0)),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Params {
        Params {
            backends: 10,
            servers: 4,
            service_ms: 10.0,
            utilisation: 0.8,
            requests: 20_000,
            retries: 1,
            keys: 100_000,
            balance_factor: 1.25,
            max_consecutive_errors: 5,
            seed: 1,
        }
    }

    fn row<'a>(r: &'a Report, name: &str) -> &'a Row {
        r.results
            .iter()
            .find(|x| x.name == name)
            .expect("row present")
    }

    /// The targets at a small size (the full figures are in BENCHMARKS.md).
    #[test]
    fn scenarios_meet_their_targets_at_a_small_size() {
        let p = small();
        let slow = run("slow", &p).unwrap();
        let (ours, oracle) = (row(&slow, "p2c"), row(&slow, "oracle"));
        assert!(ours.p99_ms <= 1.2 * oracle.p99_ms, "{ours:?} {oracle:?}");
        assert!(row(&slow, "round-robin").p99_ms > 10.0 * ours.p99_ms);
        let ff = run("fast-fail", &p).unwrap();
        let ours = row(&ff, "p2c");
        assert!(ours.bad_share.unwrap() < 0.01, "{ours:?}");
        assert_eq!(ours.errors, 0);
        // tower's Peak-EWMA times fast errors as fast answers (linkerd2-proxy #4537).
        assert!(row(&ff, "tower-p2c-peak-ewma").bad_share.unwrap() > 0.05);
        let hot = run("hot-keys", &p).unwrap();
        let bounded = row(&hot, "bounded");
        assert!(bounded.max_over_mean.unwrap() <= 1.25, "{bounded:?}");
        assert!(row(&hot, "balanced").max_over_mean.unwrap() > 1.5);
        assert_eq!(row(&hot, "balanced").home_share, Some(1.0));
        for name in ["flapping", "heterogeneous"] {
            let r = run(name, &p).unwrap();
            assert_eq!(row(&r, "p2c").errors, 0, "{name}");
            assert!(r.results.iter().all(|x| x.requests == p.requests));
        }
    }

    #[test]
    fn unknown_scenario_and_bad_parameters_are_named() {
        let err = run("nope", &small()).unwrap_err().to_string();
        assert!(
            err.contains("unknown scenario") && err.contains("hot-keys"),
            "{err}"
        );
        let mut p = small();
        p.utilisation = f64::NAN;
        assert!(p.check().unwrap_err().to_string().contains("--utilisation"));
        p = small();
        p.balance_factor = 1.0;
        assert!(p
            .check()
            .unwrap_err()
            .to_string()
            .contains("--balance-factor"));
    }

    /// The same seed gives the same figures.
    #[test]
    fn runs_are_reproducible() {
        let mut p = small();
        p.requests = 3000;
        let a = serde_json::to_string(&run("flapping", &p).unwrap()).unwrap();
        let b = serde_json::to_string(&run("flapping", &p).unwrap()).unwrap();
        assert_eq!(a, b);
    }
}
