//! What a checker probes and how often: [`CheckConfig`] is the serde form (TOML, JSON, a Lua
//! table), [`CheckSettings`] the checked one.

use std::time::Duration;

use serde::Deserialize;

/// The longest interval or timeout a check takes (a day).
pub const MAX_SECONDS: f64 = 86_400.0;

/// The shortest interval between two checks of one upstream: 100 ms (HAProxy documents the
/// same floor for `inter`). Faster checking tells nothing more, and on a real network some
/// 470 connects a second to one address fill the ephemeral ports with `TIME_WAIT`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The largest `rise` or `fall`: with the shortest interval, 1 000 checks are 100 s; more
/// would keep an upstream out (or in) for practically ever.
pub const MAX_STREAK: u32 = 1000;

/// What one check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Connect, then close.
    Tcp,
    /// Connect, send `send`, and expect the answer to start with `expect` (HAProxy's
    /// `tcp-check send` / `expect`), e.g. `PING\r\n` → `+PONG` for Redis.
    SendExpect {
        /// Bytes sent after the connect.
        send: Vec<u8>,
        /// The prefix the answer must start with.
        expect: Vec<u8>,
    },
    /// An HTTP/1.1 `GET path`; the status must match `status`.
    Http {
        /// The request path, starting with `/`.
        path: String,
        /// The `Host` header; the upstream's name when `None`.
        host: Option<String>,
        /// Accepted statuses.
        status: StatusMatch,
    },
}

/// Accepted HTTP statuses: classes (`2xx`) and exact codes (`204`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatch {
    classes: Vec<u16>,
    codes: Vec<u16>,
}

impl Default for StatusMatch {
    /// `2xx,3xx`.
    fn default() -> Self {
        Self {
            classes: vec![2, 3],
            codes: Vec::new(),
        }
    }
}

impl StatusMatch {
    /// Parses `2xx`, `200`, or a comma-separated list of them.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut m = Self {
            classes: Vec::new(),
            codes: Vec::new(),
        };
        for part in text.split(',').map(str::trim) {
            let bad = || format!("status {part:?}: expected a class (2xx) or a code (100..=599)");
            if let Some(class) = part.strip_suffix("xx") {
                match class.parse::<u16>() {
                    Ok(c @ 1..=5) if class.len() == 1 => m.classes.push(c),
                    _ => return Err(bad()),
                }
            } else {
                match part.parse::<u16>() {
                    Ok(code @ 100..=599) => m.codes.push(code),
                    _ => return Err(bad()),
                }
            }
        }
        Ok(m)
    }

    /// Whether `code` is accepted.
    pub fn matches(&self, code: u16) -> bool {
        self.codes.contains(&code) || self.classes.contains(&(code / 100))
    }
}

/// Checked settings of a checker.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSettings {
    /// What a check does.
    pub probe: Probe,
    /// Time from the end of one check of an upstream to the start of its next.
    pub interval: Duration,
    /// Longest a check may take; longer is a failure.
    pub timeout: Duration,
    /// Successful checks in a row that bring an upstream back.
    pub rise: u32,
    /// Failed checks in a row that take an upstream out.
    pub fall: u32,
    /// Each interval is drawn from `interval × (1 ± jitter)`, so the checks of many
    /// upstreams spread out instead of firing together.
    pub jitter: f64,
}

impl CheckSettings {
    /// TCP connects every 2 s, 1 s timeout, rise 2, fall 3 (HAProxy's defaults), jitter 0.1.
    pub fn tcp() -> Self {
        Self {
            probe: Probe::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: 0.1,
        }
    }

    /// Checks the figures, naming the first bad one.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |what: &'static str, why: String| Err(crate::Error::Setting { what, why });
        for (what, d) in [("interval", self.interval), ("timeout", self.timeout)] {
            if d.is_zero() || d.as_secs_f64() > MAX_SECONDS {
                return bad(
                    what,
                    format!("{d:?} is out of range (above 0, at most {MAX_SECONDS} s)"),
                );
            }
        }
        if self.interval < MIN_INTERVAL {
            return bad(
                "interval",
                format!(
                    "{:?} is below the shortest interval, {MIN_INTERVAL:?}",
                    self.interval
                ),
            );
        }
        for (what, n) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=MAX_STREAK).contains(&n) {
                return bad(what, format!("{n} is out of range (1..={MAX_STREAK})"));
            }
        }
        if let Probe::SendExpect { expect, .. } = &self.probe {
            // An empty SEND is a banner check (the server speaks first); an empty EXPECT
            // would pass on any answer, or none.
            if expect.is_empty() {
                return bad(
                    "expect",
                    "must not be empty (the answer's expected start)".into(),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("jitter", format!("{} is out of range (0..=1)", self.jitter));
        }
        if let Probe::Http { path, .. } = &self.probe {
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return bad("path", format!("{path:?}: an absolute path without spaces"));
            }
        }
        Ok(())
    }
}

/// The serde form of [`CheckSettings`]: seconds as numbers, defaults filled in, unknown
/// fields refused.
///
/// ```toml
/// type = "send-expect"   # "tcp", "send-expect" or "http"
/// send = "PING\r\n"
/// expect = "+PONG"
/// interval = 2.0
/// timeout = 1.0
/// rise = 2
/// fall = 3
/// jitter = 0.1
/// # for "http": path = "/health", host = "example.com", status = "2xx,3xx"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// `tcp`, `send-expect` or `http`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `send-expect`: bytes to send.
    #[serde(default)]
    pub send: Option<String>,
    /// `send-expect`: the answer's prefix.
    #[serde(default)]
    pub expect: Option<String>,
    /// `http`: the path.
    #[serde(default)]
    pub path: Option<String>,
    /// `http`: the Host header.
    #[serde(default)]
    pub host: Option<String>,
    /// `http`: accepted statuses (`2xx,3xx` by default).
    #[serde(default)]
    pub status: Option<String>,
    /// Seconds between checks of one upstream (or `"500ms"`, `"2s"`…).
    #[serde(default, deserialize_with = "upstreams::seconds::optional")]
    pub interval: Option<f64>,
    /// Seconds a check may take (or `"500ms"`…).
    #[serde(default, deserialize_with = "upstreams::seconds::optional")]
    pub timeout: Option<f64>,
    /// Successes in a row to come back.
    #[serde(default)]
    pub rise: Option<u32>,
    /// Failures in a row to go out.
    #[serde(default)]
    pub fall: Option<u32>,
    /// Interval jitter (0..=1).
    #[serde(default)]
    pub jitter: Option<f64>,
}

impl TryFrom<&CheckConfig> for CheckSettings {
    type Error = crate::Error;

    fn try_from(c: &CheckConfig) -> Result<Self, crate::Error> {
        let bad = |what: &'static str, why: String| crate::Error::Setting { what, why };
        let unused = |what: &'static str, v: &Option<String>| match v {
            Some(_) => Err(bad(what, format!("not a setting of type {:?}", c.kind))),
            None => Ok(()),
        };
        let probe = match c.kind.as_str() {
            "tcp" => {
                for (what, v) in [("send", &c.send), ("expect", &c.expect), ("path", &c.path)] {
                    unused(what, v)?;
                }
                Probe::Tcp
            }
            "send-expect" => {
                unused("path", &c.path)?;
                Probe::SendExpect {
                    send: c.send.clone().unwrap_or_default().into_bytes(),
                    expect: c
                        .expect
                        .clone()
                        .ok_or_else(|| bad("expect", "required for send-expect".into()))?
                        .into_bytes(),
                }
            }
            "http" => {
                unused("send", &c.send)?;
                unused("expect", &c.expect)?;
                Probe::Http {
                    path: c.path.clone().unwrap_or_else(|| "/".into()),
                    host: c.host.clone(),
                    status: match &c.status {
                        Some(s) => StatusMatch::parse(s).map_err(|why| bad("status", why))?,
                        None => StatusMatch::default(),
                    },
                }
            }
            other => {
                return Err(bad(
                    "type",
                    format!("{other:?}: expected tcp, send-expect or http"),
                ))
            }
        };
        let defaults = Self::tcp();
        let secs = |what: &'static str, v: Option<f64>, default: Duration| match v {
            None => Ok(default),
            Some(v) if v > 0.0 && v <= MAX_SECONDS => Ok(Duration::from_secs_f64(v)),
            Some(v) => Err(bad(
                what,
                format!("{v:?} is out of range (seconds, above 0 and at most {MAX_SECONDS})"),
            )),
        };
        let settings = Self {
            probe,
            interval: secs("interval", c.interval, defaults.interval)?,
            timeout: secs("timeout", c.timeout, defaults.timeout)?,
            rise: c.rise.unwrap_or(defaults.rise),
            fall: c.fall.unwrap_or(defaults.fall),
            jitter: c.jitter.unwrap_or(defaults.jitter),
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// Parses the command-line form: `tcp`, `http:/PATH`, `send-expect:SEND:EXPECT` (SEND and
/// EXPECT take `\r`, `\n`, `\t`, `\\`, `\0` and `\xHH`; a colon inside them is `\x3a`).
pub fn parse_probe(text: &str) -> Result<Probe, String> {
    let bad = |why: &str| format!("health check {text:?}: {why}");
    if text == "tcp" {
        return Ok(Probe::Tcp);
    }
    if let Some(path) = text.strip_prefix("http:") {
        if !path.starts_with('/') {
            return Err(bad("expected http:/PATH"));
        }
        return Ok(Probe::Http {
            path: path.to_owned(),
            host: None,
            status: StatusMatch::default(),
        });
    }
    if let Some(rest) = text.strip_prefix("send-expect:") {
        let (send, expect) = rest
            .split_once(':')
            .ok_or_else(|| bad("expected send-expect:SEND:EXPECT"))?;
        return Ok(Probe::SendExpect {
            send: unescape(send).map_err(|why| bad(&why))?,
            expect: unescape(expect).map_err(|why| bad(&why))?,
        });
    }
    Err(bad("expected tcp, http:/PATH or send-expect:SEND:EXPECT"))
}

fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let value = std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("\\x takes two hex digits")?;
                out.push(value);
            }
            Some(other) => return Err(format!("unknown escape \\{}", char::from(other))),
            None => return Err("a lone \\ at the end".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_forms() {
        assert_eq!(parse_probe("tcp"), Ok(Probe::Tcp));
        assert_eq!(
            parse_probe(r"send-expect:PING\r\n:+PONG"),
            Ok(Probe::SendExpect {
                send: b"PING\r\n".to_vec(),
                expect: b"+PONG".to_vec()
            })
        );
        assert_eq!(
            parse_probe(r"send-expect:a\x3ab:\\"),
            Ok(Probe::SendExpect {
                send: b"a:b".to_vec(),
                expect: b"\\".to_vec()
            })
        );
        assert!(
            matches!(parse_probe("http:/health"), Ok(Probe::Http { path, .. }) if path == "/health")
        );
        for bad in [
            "udp",
            "http:health",
            "send-expect:x",
            r"send-expect:\q:x",
            r"send-expect:\x4:x",
        ] {
            let err = parse_probe(bad).expect_err(bad);
            assert!(err.starts_with(&format!("health check {bad:?}")), "{err}");
        }
    }

    #[test]
    fn status_classes_and_codes() {
        let m = StatusMatch::parse("2xx,301").expect("valid");
        assert!(m.matches(200) && m.matches(299) && m.matches(301));
        assert!(!m.matches(302) && !m.matches(500));
        assert!(StatusMatch::default().matches(302));
        for bad in ["6xx", "20x", "99", "abc", ""] {
            assert!(StatusMatch::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_is_checked_and_names_the_setting() {
        let base = CheckConfig {
            kind: "tcp".into(),
            send: None,
            expect: None,
            path: None,
            host: None,
            status: None,
            interval: None,
            timeout: None,
            rise: None,
            fall: None,
            jitter: None,
        };
        assert_eq!(CheckSettings::try_from(&base), Ok(CheckSettings::tcp()));
        let cases: [(CheckConfig, &str); 6] = [
            (
                CheckConfig {
                    interval: Some(1e19),
                    ..base.clone()
                },
                "interval",
            ),
            (
                CheckConfig {
                    timeout: Some(0.0),
                    ..base.clone()
                },
                "timeout",
            ),
            (
                CheckConfig {
                    rise: Some(0),
                    ..base.clone()
                },
                "rise",
            ),
            (
                CheckConfig {
                    jitter: Some(2.0),
                    ..base.clone()
                },
                "jitter",
            ),
            (
                CheckConfig {
                    kind: "udp".into(),
                    ..base.clone()
                },
                "type",
            ),
            (
                CheckConfig {
                    kind: "send-expect".into(),
                    ..base.clone()
                },
                "expect",
            ),
        ];
        for (config, what) in cases {
            match CheckSettings::try_from(&config) {
                Err(crate::Error::Setting { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{config:?}: {other:?}"),
            }
        }
    }
}
