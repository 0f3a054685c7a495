//! Tunables of a list. Defaults are rspamd's (SPEC.md §2).

use std::time::Duration;

/// How the consistent hash maps keys to upstreams (SPEC.md §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HashMode {
    /// Slot table with per-key probe sequence: minimal movement, exact shares, O(1).
    #[default]
    Balanced,
    /// rspamd 4.x's ketama ring, bit-compatible with rspamd's own picks.
    RspamdRing,
    /// rspamd 3.x's jump hash (every release before 4.0), bit-compatible.
    RspamdJump,
    /// `balanced` with bounded loads (Mirrokni, Thorup and Zadimoghaddam 2018; HAProxy's
    /// `hash-balance-factor`): a key goes to its `balanced` owner unless that owner already
    /// holds [`Limits::balance_factor`] × its weight share of the picks in flight; then it
    /// walks its own probe sequence to the first upstream under that bound.
    Bounded,
}

impl std::str::FromStr for HashMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "balanced" => Ok(Self::Balanced),
            "rspamd-ring" | "rspamd" | "ring" | "ketama" => Ok(Self::RspamdRing),
            "rspamd-jump" | "jump" => Ok(Self::RspamdJump),
            "bounded" => Ok(Self::Bounded),
            other => Err(format!(
                "unknown hash mode {other:?} (expected balanced, bounded, rspamd-ring or \
                 rspamd-jump)"
            )),
        }
    }
}

impl std::fmt::Display for HashMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Balanced => "balanced",
            Self::RspamdRing => "rspamd-ring",
            Self::RspamdJump => "rspamd-jump",
            Self::Bounded => "bounded",
        })
    }
}

/// Limits and options of one list. Build with `Limits::default().with_*(…)`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// Failures tolerated per `error_time` before an upstream goes offline.
    pub max_errors: u32,
    /// Length of the error window.
    pub error_time: Duration,
    /// How long an offline upstream stays out before it is revived.
    pub revive_time: Duration,
    /// Revive after `revive_time × (1 + U[0,1) × revive_jitter)`; 0 means exactly `revive_time`.
    pub revive_jitter: f64,
    /// Time allowed for one DNS query (used by the DNS shell).
    pub dns_timeout: Duration,
    /// DNS retransmissions after the first query (used by the DNS shell).
    pub dns_retransmits: u32,
    /// Names are re-resolved this often (+0–10 % jitter).
    pub lazy_resolve_time: Duration,
    /// An upstream is never re-resolved more often than this (clamped to `revive_time`).
    pub resolve_min_interval: Duration,
    /// Longest delay between two probes of a pool that is wholly offline.
    pub probe_max_backoff: Duration,
    /// Jitter applied to probe backoff.
    pub probe_jitter: f64,
    /// When non-zero, a revived upstream's weight ramps from 0 to full over this window.
    pub slow_start: Duration,
    /// Half-life of the latency estimate used by p2c.
    pub latency_half_life: Duration,
    /// Latency assumed for an upstream with no sample yet (p2c).
    pub default_latency: Duration,
    /// When non-zero, this many failures in a row take an upstream offline at once.
    pub max_consecutive_errors: u32,
    /// Consistent-hash mode used by [`Rotation::Hashed`](crate::Rotation::Hashed).
    pub hash_mode: HashMode,
    /// With [`HashMode::Bounded`]: no upstream takes a new pick while it holds more than
    /// `balance_factor × (picks in flight + 1) × its weight share`; above 1 (default 1.25,
    /// HAProxy's `hash-balance-factor` 125).
    pub balance_factor: f64,
    /// When non-zero, an upstream holding this many picks in flight (live
    /// [`Picked`](crate::Picked)s) is skipped like an unselectable one until one ends (nginx's
    /// `max_conns`); a pick finds nothing when every upstream is full.
    pub max_inflight: u32,
    /// Seed for the random choices of this list (random, p2c, jitter); `None` draws from
    /// a per-thread generator. Set it in tests for reproducible runs.
    pub seed: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_errors: 4,
            error_time: Duration::from_secs(10),
            revive_time: Duration::from_secs(60),
            revive_jitter: 0.4,
            dns_timeout: Duration::from_secs(1),
            dns_retransmits: 2,
            lazy_resolve_time: Duration::from_secs(3600),
            resolve_min_interval: Duration::from_secs(60),
            probe_max_backoff: Duration::from_secs(600),
            probe_jitter: 0.3,
            slow_start: Duration::ZERO,
            latency_half_life: Duration::from_secs(60),
            default_latency: Duration::from_millis(5),
            max_consecutive_errors: 0,
            hash_mode: HashMode::Balanced,
            balance_factor: 1.25,
            max_inflight: 0,
            seed: None,
        }
    }
}

macro_rules! with {
    ($($(#[$doc:meta])* $name:ident => $field:ident: $ty:ty;)*) => {
        impl Limits {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

with! {
    /// Sets `max_errors`.
    with_max_errors => max_errors: u32;
    /// Sets `error_time`.
    with_error_time => error_time: Duration;
    /// Sets `revive_time`.
    with_revive_time => revive_time: Duration;
    /// Sets `revive_jitter` (clamped to 0..=1 when used).
    with_revive_jitter => revive_jitter: f64;
    /// Sets `dns_timeout`.
    with_dns_timeout => dns_timeout: Duration;
    /// Sets `dns_retransmits`.
    with_dns_retransmits => dns_retransmits: u32;
    /// Sets `lazy_resolve_time`.
    with_lazy_resolve_time => lazy_resolve_time: Duration;
    /// Sets `resolve_min_interval`.
    with_resolve_min_interval => resolve_min_interval: Duration;
    /// Sets `probe_max_backoff`.
    with_probe_max_backoff => probe_max_backoff: Duration;
    /// Sets `probe_jitter`.
    with_probe_jitter => probe_jitter: f64;
    /// Sets `slow_start`.
    with_slow_start => slow_start: Duration;
    /// Sets `latency_half_life`.
    with_latency_half_life => latency_half_life: Duration;
    /// Sets `default_latency`.
    with_default_latency => default_latency: Duration;
    /// Sets `max_consecutive_errors`.
    with_max_consecutive_errors => max_consecutive_errors: u32;
    /// Sets `hash_mode`.
    with_hash_mode => hash_mode: HashMode;
    /// Sets `max_inflight` (0: no limit).
    with_max_inflight => max_inflight: u32;
    /// Sets `balance_factor` (used by [`HashMode::Bounded`]).
    with_balance_factor => balance_factor: f64;
    /// Sets `seed`.
    with_seed => seed: Option<u64>;
}

impl Limits {
    /// `resolve_min_interval`, clamped to at most `revive_time` (SPEC.md §2).
    pub fn effective_resolve_min_interval(&self) -> Duration {
        self.resolve_min_interval.min(self.revive_time)
    }

    /// Validates the figures, naming the first bad one.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad =
            |what: &'static str, why: &'static str| Err(crate::Error::InvalidLimit { what, why });
        if self.error_time.is_zero() {
            return bad("error_time", "must be greater than zero");
        }
        if !(0.0..=1.0).contains(&self.revive_jitter) || self.revive_jitter.is_nan() {
            return bad("revive_jitter", "must be within 0..=1");
        }
        if !(0.0..=1.0).contains(&self.probe_jitter) || self.probe_jitter.is_nan() {
            return bad("probe_jitter", "must be within 0..=1");
        }
        if self.latency_half_life.is_zero() {
            return bad("latency_half_life", "must be greater than zero");
        }
        if !(self.balance_factor > 1.0 && self.balance_factor <= 100.0) {
            return bad("balance_factor", "must be above 1 and at most 100");
        }
        Ok(())
    }
}

/// A duration as configuration writes it: a number of seconds (`2.5`) or a duration with
/// units (`"500ms"`, `"10s"`, `"5m"`, `"1h 30m"`). Returns seconds.
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    let text = text.trim();
    if let Ok(v) = text.parse::<f64>() {
        return Ok(v);
    }
    humantime::parse_duration(text)
        .map(|d| d.as_secs_f64())
        .map_err(|e| format!("{text:?} is not a duration ({e}; write seconds, or 500ms, 10s, 5m)"))
}

/// Serde helpers for durations in seconds that also take [`parse_seconds`]'s strings: use
/// with `#[serde(deserialize_with = "upstreams::seconds::required")]` (or `optional`).
pub mod seconds {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(f64),
        Text(String),
    }

    fn read(w: Written) -> Result<f64, String> {
        match w {
            Written::Number(v) => Ok(v),
            Written::Text(t) => super::parse_seconds(&t),
        }
    }

    /// A duration that must be written.
    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        read(Written::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    /// A duration that may be left out (use with `#[serde(default)]`).
    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Written>::deserialize(d)? {
            None => Ok(None),
            Some(w) => read(w).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// The longest duration a setting read by [`LimitsConfig`] takes (a year): deadlines computed
/// from "now" stay far from the clock's end.
pub const MAX_CONFIG_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// The limits as configuration files and scripts write them, read once for every shell (the
/// proxy's `[listener.limits]`, the Lua `cfg` table, command-line flags): the field names of
/// [`Limits`], times in seconds, the hash mode by name (`hash`), unknown names refused.
/// [`LimitsConfig::apply`] checks every value and names the one that is out of range.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// [`Limits::max_errors`].
    pub max_errors: Option<u32>,
    /// [`Limits::error_time`], seconds.
    #[serde(default, deserialize_with = "seconds::optional")]
    pub error_time: Option<f64>,
    /// [`Limits::revive_time`], seconds.
    #[serde(default, deserialize_with = "seconds::optional")]
    pub revive_time: Option<f64>,
    /// [`Limits::revive_jitter`], 0..=1.
    pub revive_jitter: Option<f64>,
    /// [`Limits::dns_timeout`], seconds.
    #[serde(default, deserialize_with = "seconds::optional")]
    pub dns_timeout: Option<f64>,
    /// [`Limits::dns_retransmits`].
    pub dns_retransmits: Option<u32>,
    /// [`Limits::lazy_resolve_time`], seconds.
    #[serde(default, deserialize_with = "seconds::optional")]
    pub lazy_resolve_time: Option<f64>,
    /// [`Limits::resolve_min_interval`], seconds.
    #[serde(default, deserialize_with = "seconds::optional")]
    pub resolve_min_interval: Option<f64>,
    /// [`Limits::probe_max_backoff`], seconds.
    #[serde(default, deserialize_with = "seconds::optional")]
    pub probe_max_backoff: Option<f64>,
    /// [`Limits::probe_jitter`], 0..=1.
    pub probe_jitter: Option<f64>,
    /// [`Limits::slow_start`], seconds.
    #[serde(default, deserialize_with = "seconds::optional")]
    pub slow_start: Option<f64>,
    /// [`Limits::latency_half_life`], seconds.
    #[serde(default, deserialize_with = "seconds::optional")]
    pub latency_half_life: Option<f64>,
    /// [`Limits::default_latency`], seconds.
    #[serde(default, deserialize_with = "seconds::optional")]
    pub default_latency: Option<f64>,
    /// [`Limits::max_consecutive_errors`].
    pub max_consecutive_errors: Option<u32>,
    /// [`Limits::hash_mode`] by name: `balanced`, `bounded`, `rspamd-ring` or `rspamd-jump`.
    pub hash: Option<String>,
    /// [`Limits::balance_factor`], above 1.
    pub balance_factor: Option<f64>,
    /// [`Limits::max_inflight`], 0 for no limit.
    pub max_inflight: Option<u32>,
    /// [`Limits::seed`].
    pub seed: Option<u64>,
}

impl LimitsConfig {
    /// `base` with every value this configuration sets, checked: a time must be a number of
    /// seconds in `0..=MAX_CONFIG_SECONDS` (`error_time` and `latency_half_life` above 0),
    /// a jitter in `0..=1`, the hash mode a known name. The error names the setting.
    pub fn apply(&self, base: Limits) -> Result<Limits, crate::Error> {
        fn secs(what: &'static str, v: f64, zero_ok: bool) -> Result<Duration, crate::Error> {
            let ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
            if !(ok && v <= MAX_CONFIG_SECONDS) {
                return Err(crate::Error::InvalidLimit {
                    what,
                    why: if zero_ok {
                        "must be a number of seconds within 0..=31536000"
                    } else {
                        "must be a number of seconds above 0 and at most 31536000"
                    },
                });
            }
            Ok(Duration::from_secs_f64(v))
        }
        let mut l = base;
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = self.$field {
                    l.$field = v;
                }
            };
            ($field:ident, seconds, $zero_ok:expr) => {
                if let Some(v) = self.$field {
                    l.$field = secs(stringify!($field), v, $zero_ok)?;
                }
            };
        }
        set!(max_errors);
        set!(error_time, seconds, false);
        set!(revive_time, seconds, true);
        set!(revive_jitter);
        set!(dns_timeout, seconds, true);
        set!(dns_retransmits);
        set!(lazy_resolve_time, seconds, true);
        set!(resolve_min_interval, seconds, true);
        set!(probe_max_backoff, seconds, true);
        set!(probe_jitter);
        set!(slow_start, seconds, true);
        set!(latency_half_life, seconds, false);
        set!(default_latency, seconds, true);
        set!(max_consecutive_errors);
        set!(balance_factor);
        set!(max_inflight);
        if let Some(name) = &self.hash {
            l.hash_mode = name.parse().map_err(|_| crate::Error::InvalidLimit {
                what: "hash",
                why: "must be balanced, bounded, rspamd-ring or rspamd-jump",
            })?;
        }
        if self.seed.is_some() {
            l.seed = self.seed;
        }
        l.validate()?;
        Ok(l)
    }
}
