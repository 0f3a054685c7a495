//! Proxy configuration: command-line flags for one listener, or a TOML file for several.
//!
//! ```toml
//! admin = "127.0.0.1:9100"          # optional admin listener (/metrics, /status, /status.json)
//! admin_write = false               # true: POST /listeners/{listen}/upstreams/{name}/drain
//!                                   # and …/enable are served (loopback clients only)
//! access_log = "/var/log/upstreams/access.log"   # or "-" (stderr); SIGUSR1 reopens it
//! log_format = "text"               # or "json"
//! dns = "system"                    # or "127.0.0.1:5353"; used when a list names hosts
//! drain_timeout = 10.0              # seconds to let sessions finish on shutdown
//!
//! [[listener]]
//! listen = "127.0.0.1:8080"
//! upstreams = "round-robin:127.0.0.1:9001,127.0.0.1:9002:3"
//! rotation = "round-robin"          # when the definition has no prefix (default round-robin)
//! hash = "balanced"                 # or "rspamd-ring"; for rotation "hash" (key: client IP)
//! retries = 2                       # other upstreams tried after a failed connect
//! retry_on = ["connect"]            # when a retry may happen; adding "closed-before-answer"
//!                                   # or "answer-timeout" replays the client's bytes to
//!                                   # another backend: it DUPLICATES non-idempotent requests
//! connect_timeout = 1.0             # seconds (every duration also takes "500ms", "10s", "5m")
//! answer_timeout = 0.0              # seconds a backend may take to answer the client's
//!                                   # latest bytes before it counts as failed (the client
//!                                   # is closed, or replayed with "answer-timeout"); 0 = wait
//! idle_timeout = 600.0              # seconds without a byte either way: session closed
//! half_close = false                # true: a backend's end of stream is passed on and the
//!                                   # session waits for the client's; false: it ends the session
//! default_port = 80                 # for entries without a port (else such an entry is
//!                                   # an error); every duration is 0 < s <= one year
//! accept_proxy = false              # true: every client starts with a PROXY protocol
//!                                   # header (v1 or v2), whose client address is used
//! proxy_protocol_timeout = 10.0     # seconds for that header to arrive whole
//! send_proxy = "v2"                 # or "v1": a PROXY header ahead of each backend connection
//! max_conns = 0                     # sessions per upstream (nginx's max_conns); 0 = no limit
//! queue_timeout = 1.0               # with max_conns: how long a client waits for a free
//!                                   # upstream before it is closed (default connect_timeout)
//! max_connections = 0               # clients per listener; above it the proxy stops
//!                                   # accepting (the kernel's backlog holds the rest)
//!
//! [listener.health_check]           # optional active checks
//! type = "send-expect"              # "tcp", "send-expect" (send, expect) or "http" (path,
//! send = "PING\r\n"                 # host, status = "2xx,3xx")
//! expect = "+PONG"
//! interval = 2.0                    # seconds between checks of one upstream (at least 0.1)
//! timeout = 1.0
//! rise = 2                          # passes in a row to come back (1..=1000)
//! fall = 3                          # failures in a row to go out (1..=1000)
//!
//! [listener.limits]                 # upstreams::LimitsConfig: max_errors, error_time,
//! revive_time = 30.0                # revive_time, revive_jitter, max_consecutive_errors,
//!                                   # slow_start, probe_jitter, latency_half_life,
//!                                   # default_latency, ... (the Lua cfg table's names)
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::net::ListenAddr;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use upstreams::{Definition, HashMode, Host, Limits, Rotation};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Access log: a file path, or `-` for standard error.
    #[serde(default)]
    pub(crate) access_log: Option<String>,
    /// `text` (logfmt) or `json`.
    #[serde(default)]
    pub(crate) log_format: Option<super::access::Format>,
    pub(crate) admin: Option<SocketAddr>,
    /// The admin listener takes write requests (drain / enable), from loopback clients.
    #[serde(default)]
    pub(crate) admin_write: bool,
    pub(crate) dns: Option<String>,
    #[serde(
        default = "default_drain",
        deserialize_with = "upstreams::seconds::required"
    )]
    pub(crate) drain_timeout: f64,
    #[serde(rename = "listener", default)]
    pub(crate) listeners: Vec<ListenerConfig>,
}

fn default_drain() -> f64 {
    10.0
}

/// One listener and its list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerConfig {
    pub(crate) listen: ListenAddr,
    pub(crate) upstreams: String,
    pub(crate) rotation: Option<String>,
    pub(crate) hash: Option<String>,
    #[serde(default = "default_retries")]
    pub(crate) retries: u32,
    #[serde(default = "default_retry_on")]
    pub(crate) retry_on: Vec<RetryOn>,
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "upstreams::seconds::required"
    )]
    pub(crate) connect_timeout: f64,
    #[serde(default, deserialize_with = "upstreams::seconds::required")]
    pub(crate) answer_timeout: f64,
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "upstreams::seconds::required"
    )]
    pub(crate) idle_timeout: f64,
    #[serde(default)]
    pub(crate) half_close: bool,
    #[serde(default)]
    pub(crate) default_port: u16,
    /// Clients start with a PROXY protocol header (v1 or v2).
    #[serde(default)]
    pub(crate) accept_proxy: bool,
    #[serde(
        default = "default_proxy_protocol_timeout",
        deserialize_with = "upstreams::seconds::required"
    )]
    pub(crate) proxy_protocol_timeout: f64,
    /// Send a PROXY protocol header ahead of every backend connection.
    #[serde(default)]
    pub(crate) send_proxy: Option<super::proxy_protocol::Version>,
    /// Sessions per upstream; 0 = no limit.
    #[serde(default)]
    pub(crate) max_conns: u32,
    /// Seconds a client waits for an upstream under `max_conns`.
    #[serde(default, deserialize_with = "upstreams::seconds::optional")]
    pub(crate) queue_timeout: Option<f64>,
    /// Clients served at once by this listener; 0 = no limit.
    #[serde(default)]
    pub(crate) max_connections: u32,
    #[serde(default)]
    pub(crate) limits: upstreams::LimitsConfig,
    /// Active health checks (`[listener.health_check]`); none when absent.
    #[serde(default)]
    pub(crate) health_check: Option<upstreams_check::CheckConfig>,
}

/// nginx's `proxy_protocol_timeout` is 30 s; a load balancer in front sends its header with
/// the connection, so 10 s is generous.
pub(crate) fn default_proxy_protocol_timeout() -> f64 {
    10.0
}

fn default_retries() -> u32 {
    2
}

/// Only what cannot duplicate a request: no byte of the client reached a backend.
pub(crate) fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Connect]
}

/// When a client may be moved to another upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RetryOn {
    /// The connect failed or timed out, or the backend closed before any client byte was
    /// written to it: nothing reached a backend, so a retry is always safe.
    Connect,
    /// The backend closed (or reset) after reading client bytes and before its first byte:
    /// the bytes are replayed elsewhere. The first backend may have acted on them.
    ClosedBeforeAnswer,
    /// The backend stayed silent for `answer_timeout` after the client's latest bytes: the
    /// bytes are replayed elsewhere. The first backend may still act on them.
    AnswerTimeout,
}

/// The retry rule of a listener, from its `retry_on` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RetryPolicy {
    pub(crate) connect: bool,
    pub(crate) closed_before_answer: bool,
    pub(crate) answer_timeout: bool,
}

impl RetryPolicy {
    pub(crate) fn from_list(list: &[RetryOn]) -> Self {
        let has = |r| list.contains(&r);
        Self {
            connect: has(RetryOn::Connect),
            closed_before_answer: has(RetryOn::ClosedBeforeAnswer),
            answer_timeout: has(RetryOn::AnswerTimeout),
        }
    }
}

fn default_connect_timeout() -> f64 {
    1.0
}

/// nginx's `proxy_timeout` default (10 minutes).
pub(crate) fn default_idle_timeout() -> f64 {
    600.0
}

/// The longest duration any setting takes (a year): beyond it a deadline computed from "now"
/// could overflow the clock, and nothing operational waits that long.
pub(crate) const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// `v` seconds as a duration, if it lies within `min..=MAX_SECONDS` (`min` itself excluded
/// when `above_min`), or an error naming the setting and the range.
fn secs_within(what: &str, v: f64, min: f64, above_min: bool) -> Result<Duration> {
    let low_ok = if above_min { v > min } else { v >= min };
    if !(low_ok && v <= MAX_SECONDS) {
        let low = if above_min { "above" } else { "at least" };
        bail!("{what}: {v:?} is out of range (seconds, {low} {min} and at most {MAX_SECONDS})");
    }
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("{what}: {v} is not a duration in seconds"))
}

/// A duration setting that may be zero.
fn secs(what: &str, v: f64) -> Result<Duration> {
    secs_within(what, v, 0.0, false)
}

/// A duration setting that must be above zero.
fn positive_secs(what: &str, v: f64) -> Result<Duration> {
    secs_within(what, v, 0.0, true)
}

/// A listener's settings, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) listen: ListenAddr,
    pub(crate) definition: Definition,
    pub(crate) rotation: Rotation,
    pub(crate) limits: Limits,
    pub(crate) retries: u32,
    pub(crate) retry_on: RetryPolicy,
    pub(crate) connect_timeout: Duration,
    /// `None`: wait for the backend's answer as long as the session is not idle.
    pub(crate) answer_timeout: Option<Duration>,
    pub(crate) idle_timeout: Duration,
    /// Pass a backend's end of stream to the client and wait for the client's (each
    /// direction closes on its own); otherwise a backend's end ends the session once its
    /// bytes reached the client. A client's end of stream is passed on either way.
    pub(crate) half_close: bool,
    /// Active health checks, if any.
    pub(crate) health_check: Option<upstreams_check::CheckSettings>,
    /// Read a PROXY protocol header from every client within this time.
    pub(crate) accept_proxy: Option<Duration>,
    /// Write a PROXY protocol header to every backend connection.
    pub(crate) send_proxy: Option<super::proxy_protocol::Version>,
    /// Sessions per upstream (0: no limit); also the list's `max_inflight`.
    pub(crate) max_conns: u32,
    /// How long a client waits when every upstream is at `max_conns`.
    pub(crate) queue_timeout: Duration,
    /// Clients served at once (0: no limit).
    pub(crate) max_connections: usize,
}

impl ListenerConfig {
    pub(crate) fn settings(&self) -> Result<Settings> {
        let what = |field: &str| format!("listener {}: {field}", self.listen);
        let definition = Definition::parse(&self.upstreams, self.default_port)
            .with_context(|| what("upstreams"))?;
        let entries = definition.entries();
        let mut seen = std::collections::HashSet::new();
        if let Some((i, entry)) = entries
            .iter()
            .enumerate()
            .find(|(_, e)| !seen.insert(e.name()))
        {
            bail!(
                "{}: entry {} {:?} is listed twice (each upstream once; use its weight)",
                what("upstreams"),
                i + 1,
                entry.name()
            );
        }
        if let Some(entry) = definition
            .entries()
            .iter()
            .find(|e| e.port() == 0 && !matches!(e.host(), Host::Unix(_) | Host::Srv { .. }))
        {
            bail!(
                "{}: entry {:?} has no port (write host:port, or give a default port: \
                 default_port in the file, --default-port on the command line)",
                what("upstreams"),
                entry.name()
            );
        }
        let rotation = match &self.rotation {
            Some(r) => r
                .parse::<Rotation>()
                .map_err(anyhow::Error::msg)
                .with_context(|| what("rotation"))?,
            None => Rotation::RoundRobin,
        };
        // A proxy sees many failures fast: five refused connects in a row take an upstream
        // out at once (envoy's consecutive-5xx default), on top of rspamd's error window.
        let mut limits = Limits::default().with_max_consecutive_errors(5);
        if let Some(h) = &self.hash {
            limits = limits.with_hash_mode(
                h.parse::<HashMode>()
                    .map_err(anyhow::Error::msg)
                    .with_context(|| what("hash"))?,
            );
        }
        // The core's one reading of limits: the same names as the Lua cfg table.
        if self.max_conns != 0 {
            limits = limits.with_max_inflight(self.max_conns);
        }
        let limits = self.limits.apply(limits).with_context(|| what("limits"))?;
        let connect_timeout = positive_secs(&what("connect_timeout"), self.connect_timeout)?;
        let queue_timeout = match self.queue_timeout {
            Some(v) => secs(&what("queue_timeout"), v)?,
            None => connect_timeout,
        };
        Ok(Settings {
            max_conns: limits.max_inflight,
            queue_timeout,
            max_connections: self.max_connections as usize,
            listen: self.listen.clone(),
            definition,
            rotation,
            limits,
            retries: self.retries,
            retry_on: RetryPolicy::from_list(&self.retry_on),
            connect_timeout,
            answer_timeout: Some(secs(&what("answer_timeout"), self.answer_timeout)?)
                .filter(|d| !d.is_zero()),
            idle_timeout: positive_secs(&what("idle_timeout"), self.idle_timeout)?,
            half_close: self.half_close,
            accept_proxy: if self.accept_proxy {
                Some(positive_secs(
                    &what("proxy_protocol_timeout"),
                    self.proxy_protocol_timeout,
                )?)
            } else {
                None
            },
            send_proxy: self.send_proxy,
            health_check: self
                .health_check
                .as_ref()
                .map(upstreams_check::CheckSettings::try_from)
                .transpose()
                .with_context(|| what("health_check"))?,
        })
    }
}

impl Config {
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.check()?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.listeners.is_empty() {
            bail!("no [[listener]] configured");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            l.settings()?;
            if self.listeners[..i].iter().any(|o| o.listen == l.listen) {
                bail!("listener {} configured twice", l.listen);
            }
        }
        secs("drain_timeout", self.drain_timeout)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    /// `[listener.limits]` reads the core's `LimitsConfig`: the names the Lua cfg table takes,
    /// the ones the proxy used to lack included; an unknown one is refused.
    #[test]
    fn listener_limits_take_the_cores_names() {
        let text = "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstreams = \"127.0.0.1:9\"\n\
                    [listener.limits]\nprobe_jitter = 0.1\nlatency_half_life = 5\n\
                    default_latency = 0.002\nhash = \"rspamd-jump\"\n";
        let config: Config = toml::from_str(text).expect("parses");
        let limits = config.listeners[0].settings().expect("valid").limits;
        assert_eq!(limits.probe_jitter, 0.1);
        assert_eq!(limits.latency_half_life, std::time::Duration::from_secs(5));
        assert_eq!(limits.default_latency, std::time::Duration::from_millis(2));
        assert_eq!(limits.hash_mode, upstreams::HashMode::RspamdJump);
        let bad = text.replace("probe_jitter", "probe_jiter");
        let err = toml::from_str::<Config>(&bad)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("unknown field `probe_jiter`"), "{err}");
    }
}
