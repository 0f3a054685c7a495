//! `upstreams simulate [DEF]`: picks per rotation against a list with a failing upstream,
//! on a simulated clock, and how keys spread and move under the two hash modes.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use upstreams::{
    Definition, Event, FailKind, HashMode, Limits, ManualClock, Rotation, UpstreamList,
};

use crate::check::print_table;
use crate::scenario;

/// The list simulated when none is given: five backends, weights 3,2,1,1,1.
pub(crate) const DEFAULT_LIST: &str =
    "10.0.0.1:11333:3,10.0.0.2:11333:2,10.0.0.3:11333:1,10.0.0.4:11333:1,10.0.0.5:11333:1";

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The upstream list definition (default: five backends with weights 3,2,1,1,1).
    definition: Option<String>,
    /// Requests simulated per rotation.
    #[arg(long, default_value_t = 100_000)]
    picks: usize,
    /// Simulated time between two requests, in milliseconds.
    #[arg(long, default_value_t = 1)]
    interval_ms: u64,
    /// The upstream that fails (by name; default: the second).
    #[arg(long)]
    failing: Option<String>,
    /// Fraction of the failing upstream's requests that fail.
    #[arg(long, default_value_t = 1.0)]
    fail_rate: f64,
    /// Distinct keys for the hash figures.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Port for entries that name none.
    #[arg(long, short = 'p', default_value_t = 11333)]
    default_port: u16,
    /// Failures in a row that take an upstream offline at once (0 = rspamd's window only;
    /// default 0, and 5 with --scenario, the proxy's default).
    #[arg(long)]
    max_consecutive_errors: Option<u32>,
    /// How long an offline upstream stays out: seconds (fractions too) or a duration like
    /// `500ms`, `90s`, `2m`, as the proxy's settings take them.
    #[arg(long, default_value_t = 60.0, value_parser = upstreams::parse_seconds)]
    revive_time: f64,
    /// Run a what-if scenario instead (slow, fast-fail, flapping, hot-keys, heterogeneous,
    /// or all): tail latency and errors per rotation against models of the peers.
    #[arg(long)]
    scenario: Option<String>,
    /// Scenario: print one JSON object per scenario instead of a table.
    #[arg(long)]
    json: bool,
    /// Scenario: backends in the pool.
    #[arg(long, default_value_t = 10)]
    backends: usize,
    /// Scenario: requests each backend serves in parallel.
    #[arg(long, default_value_t = 4)]
    servers: u32,
    /// Scenario: mean service time in milliseconds (exponential).
    #[arg(long, default_value_t = 10.0)]
    service_ms: f64,
    /// Scenario: arrival rate as a fraction of the healthy pool's capacity.
    #[arg(long, default_value_t = 0.8)]
    utilisation: f64,
    /// Scenario: client requests per rotation.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Scenario: retries of a failed request, each on another backend.
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Scenario (hot-keys): distinct keys, drawn Zipf(1.1).
    #[arg(long, default_value_t = 1_000_000)]
    distinct_keys: usize,
    /// Scenario (hot-keys): the `bounded` hash's balance factor.
    #[arg(long, default_value_t = 1.25)]
    balance_factor: f64,
    /// Scenario: also write an SVG plot of p99 latency per rotation to this file.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Scenario: seed of arrivals, keys and service times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl Args {
    fn limits(&self) -> Limits {
        Limits::default()
            .with_max_consecutive_errors(self.max_consecutive_errors.unwrap_or(0))
            .with_revive_time(Duration::from_secs_f64(self.revive_time))
    }
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if let Some(name) = &args.scenario {
        return run_scenarios(name, args);
    }
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fail_rate),
        "--fail-rate must be within 0..=1 (got {})",
        args.fail_rate
    );
    anyhow::ensure!(args.picks > 0, "--picks must be at least 1");
    anyhow::ensure!(
        args.revive_time.is_finite()
            && (0.0..=upstreams::MAX_CONFIG_SECONDS).contains(&args.revive_time),
        "--revive-time must be between 0 and {} seconds, got {}",
        upstreams::MAX_CONFIG_SECONDS,
        args.revive_time
    );
    let text = args.definition.as_deref().unwrap_or(DEFAULT_LIST);
    let def = Definition::parse(text, args.default_port)?;
    let names: Vec<String> = def.entries().iter().map(|e| e.name().to_owned()).collect();
    let failing = match &args.failing {
        Some(name) => name.clone(),
        None => names
            .get(1)
            .or(names.first())
            .cloned()
            .context("empty list")?,
    };
    anyhow::ensure!(
        names.contains(&failing),
        "--failing {failing:?}: no upstream of that name"
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "list: {def}")?;
    writeln!(
        out,
        "failing upstream: {failing} ({:.0} % of its requests fail); {} requests per rotation, \
         one every {} ms of simulated time; max_errors 4 per 10 s, revive {} s, \
         max_consecutive_errors {}",
        args.fail_rate * 100.0,
        args.picks,
        args.interval_ms,
        args.revive_time,
        args.max_consecutive_errors.unwrap_or(0)
    )?;
    writeln!(out)?;
    let mut header = vec!["rotation".to_owned()];
    header.extend(names.iter().cloned());
    header.extend(["failed".to_owned(), "offline events".to_owned()]);
    let mut rows = Vec::new();
    for rotation in [
        Rotation::RoundRobin,
        Rotation::MasterSlave,
        Rotation::Random,
        Rotation::P2c,
        Rotation::Sequential,
        Rotation::Hashed,
    ] {
        rows.push(simulate_rotation(&def, rotation, &names, &failing, args)?);
    }
    print_table(&mut out, &header, &rows)?;
    writeln!(out)?;
    writeln!(
        out,
        "consistent hash over {} keys (shares with every upstream healthy; then {failing} goes \
         offline and comes back):",
        args.keys
    )?;
    let header = [
        "hash mode",
        "peak/expected",
        "keys moved",
        "moved from healthy",
        "not back after revive",
    ];
    let mut rows = vec![modulo_reference(&def, args.keys)];
    for mode in [HashMode::Balanced, HashMode::RspamdRing] {
        rows.push(hash_quality(
            &def,
            args.limits().with_hash_mode(mode),
            &failing,
            args.keys,
        )?);
    }
    print_table(&mut out, &header, &rows)?;
    Ok(())
}

fn run_scenarios(name: &str, args: &Args) -> Result<()> {
    let params = scenario::Params {
        backends: args.backends,
        servers: args.servers,
        service_ms: args.service_ms,
        utilisation: args.utilisation,
        requests: args.requests,
        retries: args.retries,
        keys: args.distinct_keys,
        balance_factor: args.balance_factor,
        max_consecutive_errors: args.max_consecutive_errors.unwrap_or(5),
        seed: args.seed,
    };
    params.check()?;
    let names: Vec<&str> = if name == "all" {
        scenario::SCENARIOS.to_vec()
    } else {
        vec![name]
    };
    let mut out = std::io::stdout().lock();
    let mut reports = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let report = scenario::run(name, &params)?;
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else {
            if i > 0 {
                writeln!(out)?;
            }
            scenario::print(&mut out, &report, &params)?;
        }
        reports.push(report);
    }
    if let Some(path) = &args.svg {
        scenario::plot(path, &reports)
            .map_err(|e| anyhow::anyhow!("--svg {}: {e}", path.display()))?;
    }
    Ok(())
}

fn simulate_rotation(
    def: &Definition,
    rotation: Rotation,
    names: &[String],
    failing: &str,
    args: &Args,
) -> Result<Vec<String>> {
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1)));
    let limits = args.limits().with_seed(Some(1));
    let list = UpstreamList::with_clock(def, limits, clock.clone())?;
    let offline = Arc::new(AtomicUsize::new(0));
    let counter = offline.clone();
    list.add_watcher(Event::Offline, move |_, _, _| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut picks: HashMap<String, usize> = HashMap::new();
    let mut failed = 0usize;
    let mut none = 0usize;
    let mut rng = 0x1234_5678_u64;
    let step = Duration::from_millis(args.interval_ms);
    for i in 0..args.picks {
        clock.advance(step);
        let key = format!("key-{}", i % args.keys.max(1));
        let Some(p) = list.get_forced(rotation, key.as_bytes()) else {
            none += 1;
            continue;
        };
        *picks.entry(p.name().to_owned()).or_default() += 1;
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (rng >> 11) as f64 / (1u64 << 53) as f64;
        // Healthy backends answer in 1–2 ms; the failing one times out after 50 ms.
        if p.name() == failing && u < args.fail_rate {
            p.record_latency(0.050);
            p.fail(FailKind::Address, "simulated failure");
            failed += 1;
        } else {
            p.record_latency(0.001 + u * 0.001);
            p.ok();
        }
    }
    let mut row = vec![rotation.to_string()];
    for name in names {
        let n = picks.get(name).copied().unwrap_or(0);
        row.push(format!("{:5.1} %", 100.0 * n as f64 / args.picks as f64));
    }
    row.push(failed.to_string());
    let mut events = offline.load(Ordering::Relaxed).to_string();
    if none > 0 {
        events.push_str(&format!(" ({none} none)"));
    }
    row.push(events);
    Ok(row)
}

/// `hash mod N` (weights ignored): the statistical floor of peak/avg for this key count.
fn modulo_reference(def: &Definition, keys: usize) -> [String; 5] {
    let n = def.entries().len();
    let mut counts = vec![0usize; n];
    for k in 0..keys {
        let h = xxhash_rust::xxh3::xxh3_64(format!("key-{k}").as_bytes());
        counts[(h % n as u64) as usize] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(0) as f64 / (keys as f64 / n as f64);
    [
        "hash mod N (floor, unweighted)".to_owned(),
        format!("{peak:.3}"),
        "-".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
    ]
}

fn hash_quality(
    def: &Definition,
    limits: Limits,
    failing: &str,
    keys: usize,
) -> Result<[String; 5]> {
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1)));
    let mode = limits.hash_mode;
    let revive = limits.revive_time;
    let limits = limits.with_revive_jitter(0.0);
    let list = UpstreamList::with_clock(def, limits, clock.clone())?;
    let map = |list: &UpstreamList| -> Vec<Option<usize>> {
        (0..keys)
            .map(|k| {
                list.get(Rotation::Hashed, format!("key-{k}").as_bytes())
                    .map(|p| p.index())
            })
            .collect()
    };
    let before = map(&list);
    let ups = list.upstreams();
    let total_weight: f64 = ups.iter().map(|u| f64::from(u.weight().max(1))).sum();
    let mut counts = vec![0usize; ups.len()];
    for i in before.iter().flatten() {
        counts[*i] += 1;
    }
    let peak = ups
        .iter()
        .map(|u| {
            let expected = keys as f64 * f64::from(u.weight().max(1)) / total_weight;
            counts[u.index()] as f64 / expected
        })
        .fold(0.0, f64::max);
    let victim = list.find(failing).context("failing upstream exists")?;
    victim.mark_offline(revive);
    let during = map(&list);
    let moved = before.iter().zip(&during).filter(|(b, d)| b != d).count();
    let from_healthy = before
        .iter()
        .zip(&during)
        .filter(|(b, d)| b != d && **b != Some(victim.index()))
        .count();
    clock.advance(revive + Duration::from_secs(1));
    let after = map(&list);
    let not_back = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    Ok([
        mode.to_string(),
        format!("{peak:.3}"),
        format!("{moved} ({:.2} %)", 100.0 * moved as f64 / keys as f64),
        from_healthy.to_string(),
        not_back.to_string(),
    ])
}
