//! The definition grammar (SPEC.md §1).
//!
//! ```text
//! definition := [rotation ":"] entry (sep+ entry)*      sep := , ; space \t \r \n
//! rotation   := random | hash | round-robin | master-slave | sequential | p2c
//! entry      := "service=" svc "+" domain [":" weight]   SRV name
//!             | "[" address "]" [":" port [":" weight]]
//!             | ("/" | ".") path                         unix socket
//!             | ipv6                                      bare IPv6, default port
//!             | host [":" port [":" weight]]
//! ```
//!
//! Parsing is strict: any bad entry is an error naming its 1-based index, its text, its byte
//! offset in the definition and the reason, where rspamd would log and drop it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::rotation::Rotation;

/// Longest host name accepted (RFC 1035 presentation form).
const MAX_HOST_LEN: usize = 253;
/// Longest entry text kept in an error (the rest is elided).
const MAX_ERROR_TEXT: usize = 80;

/// What an entry names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Host {
    /// A numeric address, never resolved.
    Ip(IpAddr),
    /// A DNS name, resolved (A/AAAA) by a resolver shell.
    Name(String),
    /// A unix socket path, never resolved.
    Unix(String),
    /// An SRV record `_<service>._tcp.<domain>` whose targets become the members.
    Srv {
        /// The service label without `_`.
        service: String,
        /// The domain the record lives under.
        domain: String,
    },
}

impl Host {
    /// True for hosts a resolver must look up before the upstream can be used.
    pub fn needs_resolution(&self) -> bool {
        matches!(self, Self::Name(_) | Self::Srv { .. })
    }
}

/// One parsed entry of a definition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    name: String,
    text: String,
    host: Host,
    port: u16,
    weight: u16,
    port_written: bool,
}

impl Entry {
    /// The upstream's name as rspamd forms it: `host` when no port was written, `host:port`
    /// when it was; the text inside brackets for `[v6]`; the path for sockets.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the entry names.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port (the default port when none was written; 0 for sockets).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The third field: weight for round-robin, priority for master-slave.
    pub fn weight(&self) -> u16 {
        self.weight
    }

    /// Whether the definition wrote a port for this entry.
    pub fn port_written(&self) -> bool {
        self.port_written
    }

    /// An entry for a socket address, named as the definition `ip:port` (`[v6]:port`) would
    /// be; weight 0 until [`Entry::with_weight`].
    pub fn socket(addr: std::net::SocketAddr) -> Self {
        let ip = addr.ip().to_string();
        let name = match addr {
            // rspamd names `[v6]:port` by the text inside the brackets.
            std::net::SocketAddr::V6(_) => ip.clone(),
            std::net::SocketAddr::V4(_) => format!("{ip}:{}", addr.port()),
        };
        Self {
            name,
            text: ip,
            host: Host::Ip(addr.ip()),
            port: addr.port(),
            weight: 0,
            port_written: true,
        }
    }

    /// An entry for a host name (resolved by a resolver shell) or a textual IP, with a port;
    /// the same checks as a definition's entry, with the same errors.
    pub fn named(name: &str, port: u16) -> Result<Self, ParseError> {
        let text = if name.contains(':') && !name.starts_with('[') {
            format!("[{name}]:{port}")
        } else {
            format!("{name}:{port}")
        };
        parse_entry(&text, 0).map_err(|kind| ParseError::Entry {
            index: 1,
            text: clip(&text),
            offset: 0,
            kind,
        })
    }

    /// An entry for a Unix socket path (absolute).
    pub fn unix(path: &str) -> Result<Self, ParseError> {
        if !path.starts_with('/') {
            return Err(ParseError::Entry {
                index: 1,
                text: clip(path),
                offset: 0,
                kind: ParseErrorKind::InvalidHost,
            });
        }
        parse_entry(path, 0).map_err(|kind| ParseError::Entry {
            index: 1,
            text: clip(path),
            offset: 0,
            kind,
        })
    }

    /// The same entry with a weight (round-robin) or priority (master-slave).
    #[must_use]
    pub fn with_weight(mut self, weight: u16) -> Self {
        self.weight = weight;
        self
    }

    /// The entry of one SRV target: a DNS name with the target's port; named `target:port`.
    pub(crate) fn srv_target(target: &str, port: u16, weight: u16) -> Self {
        let host = target.trim_end_matches('.');
        Self {
            name: format!("{host}:{port}"),
            text: host.to_owned(),
            host: Host::Name(host.to_owned()),
            port,
            weight,
            port_written: true,
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Unix(path) => return f.write_str(path),
            Host::Srv { service, domain } => {
                write!(f, "service={service}+{domain}")?;
                if self.weight != 0 {
                    write!(f, ":{}", self.weight)?;
                }
                return Ok(());
            }
            Host::Ip(IpAddr::V6(_)) => write!(f, "[{}]", self.text)?,
            Host::Ip(IpAddr::V4(_)) | Host::Name(_) => f.write_str(&self.text)?,
        }
        if self.port_written {
            write!(f, ":{}", self.port)?;
            if self.weight != 0 {
                write!(f, ":{}", self.weight)?;
            }
        }
        Ok(())
    }
}

/// A parsed definition: an optional rotation and the entries in configuration order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Definition {
    rotation: Option<Rotation>,
    entries: Vec<Entry>,
}

impl Definition {
    /// Parses `text`; entries without a port get `default_port`.
    pub fn parse(text: &str, default_port: u16) -> Result<Self, ParseError> {
        let mut def = Self {
            rotation: None,
            entries: Vec::new(),
        };
        def.extend(text, default_port)?;
        if def.entries.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(def)
    }

    /// Parses several definitions into one list (the Lua API's table of strings): entries
    /// are concatenated; a rotation prefix in any of them sets the rotation, the last wins.
    pub fn parse_many<'a, I>(texts: I, default_port: u16) -> Result<Self, ParseError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut def = Self {
            rotation: None,
            entries: Vec::new(),
        };
        for text in texts {
            def.extend(text, default_port)?;
        }
        if def.entries.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(def)
    }

    /// A definition with no entries: a list built from it is empty and every pick answers
    /// `None` (rspamd's Lua `create({})` returns such a list). Parsing never yields one.
    pub fn empty() -> Self {
        Self {
            rotation: None,
            entries: Vec::new(),
        }
    }

    /// Whether some entry names a host or an SRV record (a resolver must look it up).
    pub fn needs_resolution(&self) -> bool {
        self.entries.iter().any(|e| e.host().needs_resolution())
    }

    /// A definition built from typed entries (no parsing), with an optional rotation.
    pub fn from_entries(rotation: Option<Rotation>, entries: Vec<Entry>) -> Self {
        Self { rotation, entries }
    }

    /// The rotation named by the prefix, if any.
    pub fn rotation(&self) -> Option<Rotation> {
        self.rotation
    }

    /// The entries in configuration order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn extend(&mut self, text: &str, default_port: u16) -> Result<(), ParseError> {
        let (rotation, body_start) = split_prefix(text);
        if rotation.is_some() {
            self.rotation = rotation;
        }
        let first = self.entries.len();
        for (i, (offset, token)) in tokens(text, body_start).enumerate() {
            let index = i + 1;
            let entry = parse_entry(token, default_port).map_err(|kind| {
                let kind = match kind {
                    // `bogus:1.2.3.4`: the first entry of a line, a word, then a host.
                    ParseErrorKind::InvalidPort | ParseErrorKind::TooManyFields if i == 0 => {
                        misread_prefix(token).unwrap_or(kind)
                    }
                    kind => kind,
                };
                ParseError::Entry {
                    index,
                    text: clip(token),
                    offset,
                    kind,
                }
            })?;
            self.entries.push(entry);
        }
        // rspamd's heuristic: a master-slave line whose first entry has no priority makes
        // that entry the master.
        if rotation == Some(Rotation::MasterSlave) {
            if let Some(entry) = self.entries.get_mut(first) {
                if entry.weight == 0 {
                    entry.weight = 1;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for Definition {
    type Err = ParseError;

    /// Parses with default port 0 (no port written means "unspecified").
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, 0)
    }
}

impl fmt::Display for Definition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_definition(f, self.rotation, self.entries.iter())
    }
}

/// Writes `[prefix:]entry,entry,…`, a line that parses back to the same entries.
pub(crate) fn write_definition<'a>(
    f: &mut fmt::Formatter<'_>,
    rotation: Option<Rotation>,
    entries: impl Iterator<Item = &'a Entry>,
) -> fmt::Result {
    if let Some(rotation) = rotation {
        write!(f, "{}:", rotation.prefix())?;
    }
    let mut entries = entries;
    if let Some(first) = entries.next() {
        let first = first.to_string();
        // A first entry such as the host `round-robin` with port 8 would read back as a
        // prefix: a leading separator keeps it an entry.
        if rotation.is_none() && split_prefix(&first).0.is_some() {
            f.write_str(",")?;
        }
        f.write_str(&first)?;
    }
    for entry in entries {
        write!(f, ",{entry}")?;
    }
    Ok(())
}

/// Why a definition was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The definition holds no entry at all: give at least one upstream.
    #[error("empty upstream list definition")]
    Empty,
    /// One entry is malformed: fix the entry named by `index` (1-based) and `offset`.
    #[error("entry {index} {text:?} at byte {offset}: {kind}")]
    Entry {
        /// 1-based position of the entry in its definition.
        index: usize,
        /// The entry's text (long texts are clipped).
        text: String,
        /// Byte offset of the entry in its definition.
        offset: usize,
        /// What is wrong with it.
        kind: ParseErrorKind,
    },
}

impl ParseError {
    /// The reason, when an entry is at fault.
    pub fn kind(&self) -> Option<&ParseErrorKind> {
        match self {
            Self::Empty => None,
            Self::Entry { kind, .. } => Some(kind),
        }
    }
}

/// What is wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// `host:` — write a port after the colon or drop the colon.
    #[error("empty port")]
    EmptyPort,
    /// The port is not a decimal number.
    #[error("port is not a number")]
    InvalidPort,
    /// The port is 0 or above 65535.
    #[error("port out of range (1..=65535)")]
    PortOutOfRange,
    /// The weight is not a decimal number.
    #[error("weight is not a number")]
    InvalidWeight,
    /// The weight is above 65535.
    #[error("weight out of range (0..=65535)")]
    WeightOutOfRange,
    /// More than `host:port:weight`.
    #[error("too many fields (expected host[:port[:weight]])")]
    TooManyFields,
    /// `[` without its `]`.
    #[error("missing ']'")]
    MissingBracket,
    /// Something other than `:port` after `]`.
    #[error("unexpected text after ']'")]
    JunkAfterBracket,
    /// The text in brackets (or a numeric host) is not an IP address.
    #[error("invalid IP address")]
    InvalidAddress,
    /// The host is empty.
    #[error("empty host")]
    EmptyHost,
    /// The host holds characters a DNS name cannot hold.
    #[error("invalid host name")]
    InvalidHost,
    /// The host name is longer than 253 bytes.
    #[error("host name too long (at most 253 bytes)")]
    HostTooLong,
    /// `service=` without `svc+domain`.
    #[error("SRV entry must be service=<service>+<domain>[:weight] (the port comes from the SRV records)")]
    InvalidSrv,
    /// `word:host…` at the start of a definition: a rotation prefix that is not one.
    #[error(
        "unknown rotation prefix {0:?} (expected random, hash, round-robin, master-slave, \
         sequential or p2c)"
    )]
    UnknownPrefix(String),
    /// An IPv6 address with a zone (`fe80::1%eth0`).
    #[error(
        "IPv6 zone ids ({0:?}) are not supported: use a global or unique-local address, not a \
         link-local one"
    )]
    ZoneId(String),
    /// An unbracketed IPv6 address whose last group reads as a port as well (`::1:80`).
    #[error(
        "ambiguous: the IPv6 address {whole} or {address} port {port}? Write [{address}]:{port} \
         for a port, or [{whole}] for the address"
    )]
    AmbiguousIpv6 {
        /// The whole text as an address.
        whole: String,
        /// The text before the last colon, as an address.
        address: String,
        /// The last group, as a port.
        port: String,
    },
}

/// Recognises a rotation prefix; returns it and where the entries start.
fn split_prefix(text: &str) -> (Option<Rotation>, usize) {
    let lead = text.len() - text.trim_start().len();
    let rest = &text[lead..];
    for rotation in Rotation::ALL {
        let prefix = rotation.prefix();
        let n = prefix.len();
        if rest.len() > n
            && rest.as_bytes()[n] == b':'
            && rest.as_bytes()[..n].eq_ignore_ascii_case(prefix.as_bytes())
        {
            return (Some(rotation), lead + n + 1);
        }
    }
    (None, 0)
}

fn is_separator(b: u8) -> bool {
    matches!(b, b',' | b';' | b' ' | b'\t' | b'\r' | b'\n')
}

/// Non-empty tokens of `text[start..]` with their byte offsets in `text`.
fn tokens(text: &str, start: usize) -> impl Iterator<Item = (usize, &str)> {
    let bytes = text.as_bytes();
    let mut pos = start;
    std::iter::from_fn(move || {
        while pos < bytes.len() && is_separator(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            return None;
        }
        let begin = pos;
        while pos < bytes.len() && !is_separator(bytes[pos]) {
            pos += 1;
        }
        // Separators are ASCII, so both ends are char boundaries.
        Some((begin, &text[begin..pos]))
    })
}

fn clip(token: &str) -> String {
    if token.len() <= MAX_ERROR_TEXT {
        return token.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !token.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &token[..end])
}

/// `word:rest` where `word` could only be a (mistyped) rotation prefix: letters and dashes,
/// followed by something that is a host, not a port.
fn misread_prefix(token: &str) -> Option<ParseErrorKind> {
    let (word, rest) = token.split_once(':')?;
    let wordy = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    let hosty = rest.starts_with('[')
        || rest.starts_with('/')
        || rest
            .split(':')
            .next()
            .is_some_and(|h| parse_host(h).is_ok() && parse_decimal(h).is_none());
    (wordy && hosty).then(|| ParseErrorKind::UnknownPrefix(word.to_owned()))
}

fn parse_entry(token: &str, default_port: u16) -> Result<Entry, ParseErrorKind> {
    if let Some(at) = token.find('%') {
        if token.contains(':') {
            let zone = token[at..]
                .split([']', ':'])
                .next()
                .unwrap_or_default()
                .to_owned();
            return Err(ParseErrorKind::ZoneId(zone));
        }
    }
    if token.len() >= 8 && token.as_bytes()[..8].eq_ignore_ascii_case(b"service=") {
        return parse_srv(&token[8..], default_port);
    }
    if let Some(inner) = token.strip_prefix('[') {
        return parse_bracketed(inner, default_port);
    }
    if token.starts_with('/') || token.starts_with('.') {
        return Ok(Entry {
            name: token.to_owned(),
            text: token.to_owned(),
            host: Host::Unix(token.to_owned()),
            port: 0,
            weight: 0,
            port_written: false,
        });
    }
    if token.bytes().filter(|&b| b == b':').count() >= 2 {
        if let Ok(v6) = token.parse::<Ipv6Addr>() {
            // `::1:80`: also `::1` port 80. Only brackets can tell.
            if let Some((address, port)) = token.rsplit_once(':') {
                if address.parse::<Ipv6Addr>().is_ok()
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && parse_port(port).is_ok()
                {
                    return Err(ParseErrorKind::AmbiguousIpv6 {
                        whole: token.to_owned(),
                        address: address.to_owned(),
                        port: port.to_owned(),
                    });
                }
            }
            return Ok(Entry {
                name: token.to_owned(),
                text: token.to_owned(),
                host: Host::Ip(IpAddr::V6(v6)),
                port: default_port,
                weight: 0,
                port_written: false,
            });
        }
    }
    let mut fields = token.split(':');
    let host_text = fields.next().unwrap_or_default();
    let port = fields.next();
    let weight = fields.next();
    if fields.next().is_some() {
        return Err(ParseErrorKind::TooManyFields);
    }
    let host = parse_host(host_text)?;
    let (port, port_written) = match port {
        Some(p) => (parse_port(p)?, true),
        None => (default_port, false),
    };
    let weight = weight.map(parse_weight).transpose()?.unwrap_or(0);
    let name = if port_written {
        format!("{host_text}:{port}")
    } else {
        host_text.to_owned()
    };
    Ok(Entry {
        name,
        text: host_text.to_owned(),
        host,
        port,
        weight,
        port_written,
    })
}

fn parse_bracketed(inner: &str, default_port: u16) -> Result<Entry, ParseErrorKind> {
    let close = inner.find(']').ok_or(ParseErrorKind::MissingBracket)?;
    let addr_text = &inner[..close];
    let ip = addr_text
        .parse::<IpAddr>()
        .map_err(|_| ParseErrorKind::InvalidAddress)?;
    let rest = &inner[close + 1..];
    let (port, weight, port_written) = if rest.is_empty() {
        (default_port, 0, false)
    } else if let Some(fields) = rest.strip_prefix(':') {
        let mut fields = fields.split(':');
        let port = parse_port(fields.next().unwrap_or_default())?;
        let weight = fields.next().map(parse_weight).transpose()?.unwrap_or(0);
        if fields.next().is_some() {
            return Err(ParseErrorKind::TooManyFields);
        }
        (port, weight, true)
    } else {
        return Err(ParseErrorKind::JunkAfterBracket);
    };
    let entry = Entry {
        name: addr_text.to_owned(),
        text: addr_text.to_owned(),
        host: Host::Ip(ip),
        port,
        weight,
        port_written,
    };
    // A bracketed IPv4 prints back without brackets, so keep the name it would get then.
    match ip {
        IpAddr::V4(_) if port_written => Ok(Entry {
            name: format!("{addr_text}:{port}"),
            ..entry
        }),
        _ => Ok(entry),
    }
}

fn parse_srv(rest: &str, default_port: u16) -> Result<Entry, ParseErrorKind> {
    let (main, weight) = match rest.split_once(':') {
        Some((main, w)) => (main, parse_weight(w)?),
        None => (rest, 0),
    };
    let (service, domain) = main.split_once('+').ok_or(ParseErrorKind::InvalidSrv)?;
    if service.is_empty() || domain.is_empty() {
        return Err(ParseErrorKind::InvalidSrv);
    }
    parse_host(service).map_err(|_| ParseErrorKind::InvalidSrv)?;
    parse_host(domain)?;
    Ok(Entry {
        name: format!("_{service}._tcp.{domain}"),
        text: main.to_owned(),
        host: Host::Srv {
            service: service.to_owned(),
            domain: domain.to_owned(),
        },
        port: default_port,
        weight,
        port_written: false,
    })
}

fn parse_host(text: &str) -> Result<Host, ParseErrorKind> {
    if text.is_empty() {
        return Err(ParseErrorKind::EmptyHost);
    }
    if text.len() > MAX_HOST_LEN {
        return Err(ParseErrorKind::HostTooLong);
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return text
            .parse::<Ipv4Addr>()
            .map(|v4| Host::Ip(IpAddr::V4(v4)))
            .map_err(|_| ParseErrorKind::InvalidAddress);
    }
    let valid = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid || text.starts_with('-') || text.contains("..") {
        return Err(ParseErrorKind::InvalidHost);
    }
    Ok(Host::Name(text.to_owned()))
}

fn parse_decimal(text: &str) -> Option<Option<u32>> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Leading zeros are fine; a number too big for u32 is out of range for every field.
    match text.trim_start_matches('0') {
        "" => Some(Some(0)),
        digits => Some(digits.parse::<u32>().ok()),
    }
}

fn parse_port(text: &str) -> Result<u16, ParseErrorKind> {
    if text.is_empty() {
        return Err(ParseErrorKind::EmptyPort);
    }
    match parse_decimal(text) {
        None => Err(ParseErrorKind::InvalidPort),
        Some(Some(v @ 1..=65535)) => Ok(v as u16),
        Some(_) => Err(ParseErrorKind::PortOutOfRange),
    }
}

fn parse_weight(text: &str) -> Result<u16, ParseErrorKind> {
    match parse_decimal(text) {
        None => Err(ParseErrorKind::InvalidWeight),
        Some(Some(v @ 0..=65535)) => Ok(v as u16),
        Some(_) => Err(ParseErrorKind::WeightOutOfRange),
    }
}
