//! The access log: one line per session (time, listener, client, upstream, tries, bytes each
//! way, duration, outcome), as logfmt text or JSON, to standard error or a file that SIGUSR1
//! reopens (logrotate's `postrotate`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    /// `key=value` pairs (logfmt).
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// What one session did, for its line.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// The last upstream tried (the one that served, when it went well).
    pub(crate) upstream: Option<std::sync::Arc<upstreams::Upstream>>,
    /// Upstreams tried.
    pub(crate) tries: u32,
    /// Bytes from the upstream to the client.
    pub(crate) to_client: u64,
    /// Bytes from the client to the upstream that served (replays included).
    pub(crate) to_upstream: u64,
    /// How the session ended.
    pub(crate) outcome: Outcome,
}

/// How a session ended: one value per line of the access log (`outcome=`), and one series
/// per value of `upstreams_listener_sessions_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Outcome {
    /// Served (the first upstream tried).
    #[default]
    Ok,
    /// Served after a retry.
    Retried,
    /// No upstream could take it.
    Refused,
    /// The backend failed after the client's bytes reached it (not retried).
    Failed,
    /// No answer within `answer_timeout` (not retried).
    Timeout,
    /// The backend reset after answering.
    Reset,
    /// Neither side sent a byte for `idle_timeout`.
    Idle,
    /// The client went away (also one that closed while queued: nothing was forwarded).
    ClientGone,
    /// The proxy was out of descriptors.
    NoDescriptors,
    /// A missing, late or malformed PROXY protocol header (`accept_proxy`).
    BadProxyHeader,
    /// Every upstream at `max_conns` for `queue_timeout`.
    QueueTimeout,
}

impl Outcome {
    /// Every outcome, in the order of [`Outcome::index`].
    pub(crate) const ALL: [Self; 11] = [
        Self::Ok,
        Self::Retried,
        Self::Refused,
        Self::Failed,
        Self::Timeout,
        Self::Reset,
        Self::Idle,
        Self::ClientGone,
        Self::NoDescriptors,
        Self::BadProxyHeader,
        Self::QueueTimeout,
    ];

    /// The name logs and metrics use.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retried => "retried",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Idle => "idle",
            Self::ClientGone => "client-gone",
            Self::NoDescriptors => "no-descriptors",
            Self::BadProxyHeader => "bad-proxy-header",
            Self::QueueTimeout => "queue-timeout",
        }
    }

    /// Its place in [`Outcome::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The process's access log, when one is configured (set once at start).
pub(crate) static LOG: OnceLock<AccessLog> = OnceLock::new();

/// An open access log.
pub(crate) struct AccessLog {
    /// `None`: standard error.
    path: Option<PathBuf>,
    format: Format,
    file: Mutex<Option<std::fs::File>>,
}

fn open(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl AccessLog {
    /// `target`: `-` or `stderr` for standard error, else a file appended to.
    pub(crate) fn open(target: &str, format: Format) -> std::io::Result<Self> {
        let path = (!matches!(target, "-" | "stderr")).then(|| PathBuf::from(target));
        let file = path.as_ref().map(open).transpose()?;
        Ok(Self {
            path,
            format,
            file: Mutex::new(file),
        })
    }

    /// Reopens the file (after logrotate moved it); the old one is kept on failure.
    pub(crate) fn reopen(&self) {
        let Some(path) = &self.path else { return };
        match open(path) {
            Ok(f) => *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(f),
            Err(err) => {
                tracing::warn!(%err, path = %path.display(), "cannot reopen the access log")
            }
        }
    }

    /// Writes one session's line (one `write` call, so lines of concurrent sessions never
    /// interleave).
    pub(crate) fn session(&self, listener: &str, client: &str, tally: &Tally, took: Duration) {
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        let upstream = tally.upstream.as_ref().map_or("-", |u| u.name());
        let mut line = String::with_capacity(192);
        match self.format {
            Format::Text => {
                let _ = writeln!(
                    line,
                    "time={time} listener={listener} client={client} upstream={} tries={} \
                     bytes_to_client={} bytes_to_upstream={} duration={:.6} outcome={}",
                    quoted(upstream),
                    tally.tries,
                    tally.to_client,
                    tally.to_upstream,
                    took.as_secs_f64(),
                    tally.outcome
                );
            }
            Format::Json => {
                let value = serde_json::json!({
                    "time": time.to_string(),
                    "listener": listener,
                    "client": client,
                    "upstream": tally.upstream.as_ref().map(|u| u.name()),
                    "tries": tally.tries,
                    "bytes_to_client": tally.to_client,
                    "bytes_to_upstream": tally.to_upstream,
                    "duration": took.as_secs_f64(),
                    "outcome": tally.outcome.name(),
                });
                let _ = writeln!(line, "{value}");
            }
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let written = match file.as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
        if let Err(err) = written {
            tracing::warn!(%err, "cannot write the access log");
        }
    }
}

/// A logfmt value: bare when it holds no space, quote or `=`, else quoted.
fn quoted(v: &str) -> String {
    if v.is_empty() || v.contains([' ', '"', '=']) {
        format!("{v:?}")
    } else {
        v.to_owned()
    }
}
