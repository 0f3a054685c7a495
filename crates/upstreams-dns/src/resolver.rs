//! A thin wrapper over hickory's resolver: configuration from the list's limits, and
//! answers translated into the core's terms.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use upstreams::{Limits, SrvTarget};

/// Errors of the DNS shell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `--dns` / nameserver string is not `ip[:port]`: fix the address.
    #[error("invalid nameserver {0:?} (expected ip or ip:port, e.g. 127.0.0.1:5353)")]
    InvalidNameserver(String),
    /// The system resolver configuration could not be read: pass nameservers explicitly.
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConfig(String),
    /// A lookup failed; the caller keeps what it had.
    #[error("lookup of {name} failed ({failure}): {reason}")]
    Lookup {
        /// The name queried.
        name: String,
        /// What kind of failure, for callers that act on it.
        failure: LookupFailure,
        /// The resolver's own words.
        reason: String,
    },
    /// A tokio runtime could not be built for a blocking resolution.
    #[error("cannot start a runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Why a lookup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupFailure {
    /// The name does not exist (NXDOMAIN).
    #[error("no such name")]
    NoSuchName,
    /// The name exists but has no record of the type asked.
    #[error("no records")]
    NoRecords,
    /// No answer in time from any nameserver.
    #[error("timeout")]
    Timeout,
    /// A nameserver answered with an error (SERVFAIL, REFUSED, …).
    #[error("server failure")]
    ServerFailure,
    /// Anything else (transport, malformed answers).
    #[error("other")]
    Other,
}

/// Which nameservers to ask.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Nameservers {
    /// The system configuration (`/etc/resolv.conf`).
    #[default]
    System,
    /// These servers, in order (UDP, falling back to TCP).
    Explicit(Vec<SocketAddr>),
}

impl Nameservers {
    /// Parses `ip[:port][,ip[:port]…]` (port 53 by default; `[v6]:port` for IPv6), or
    /// `system`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.trim().eq_ignore_ascii_case("system") {
            return Ok(Self::System);
        }
        let mut servers = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let addr = part
                .parse::<SocketAddr>()
                .or_else(|_| part.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| Error::InvalidNameserver(part.to_owned()))?;
            servers.push(addr);
        }
        if servers.is_empty() {
            return Err(Error::InvalidNameserver(text.to_owned()));
        }
        Ok(Self::Explicit(servers))
    }
}

/// A resolver configured from a list's limits. Build it inside a tokio runtime.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// A resolver asking `servers`, with `dns_timeout` per query and `dns_retransmits`
    /// retries, and no cache (the schedule decides when to ask again).
    pub fn new(servers: &Nameservers, limits: &Limits) -> Result<Self, Error> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match servers {
            Nameservers::System => {
                TokioResolver::builder(provider).map_err(|e| Error::SystemConfig(e.to_string()))?
            }
            Nameservers::Explicit(addrs) => {
                let configs = addrs
                    .iter()
                    .map(|addr| {
                        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                        for conn in &mut ns.connections {
                            conn.port = addr.port();
                        }
                        ns
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], configs),
                    provider,
                )
            }
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = limits.dns_timeout;
        opts.attempts = limits.dns_retransmits as usize;
        opts.cache_size = 0;
        let inner = builder
            .build()
            .map_err(|e| Error::SystemConfig(e.to_string()))?;
        Ok(Self { inner })
    }

    /// A and AAAA addresses of `name` (IPv4 first is the core's business).
    pub async fn lookup_ips(&self, name: &str) -> Result<Vec<IpAddr>, Error> {
        let fqdn = absolute(name);
        let lookup = self
            .inner
            .lookup_ip(fqdn.as_str())
            .await
            .map_err(|e| lookup_error(name, e))?;
        Ok(lookup.iter().collect())
    }

    /// The targets of the SRV record `name`.
    pub async fn lookup_srv(&self, name: &str) -> Result<Vec<SrvTarget>, Error> {
        let fqdn = absolute(name);
        let lookup = self
            .inner
            .srv_lookup(fqdn.as_str())
            .await
            .map_err(|e| lookup_error(name, e))?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(SrvTarget {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: srv.target.to_utf8().trim_end_matches('.').to_owned(),
                }),
                _ => None,
            })
            .collect())
    }
}

/// Names in definitions are absolute: `redis.internal` must not go through search domains.
fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

fn lookup_error(name: &str, e: NetError) -> Error {
    use hickory_resolver::net::DnsError;
    use hickory_resolver::proto::op::ResponseCode;
    let failure = match &e {
        NetError::Timeout => LookupFailure::Timeout,
        _ if e.is_nx_domain() => LookupFailure::NoSuchName,
        NetError::Dns(DnsError::NoRecordsFound(none)) => match none.response_code {
            ResponseCode::NoError => LookupFailure::NoRecords,
            _ => LookupFailure::ServerFailure,
        },
        NetError::Dns(DnsError::ResponseCode(_)) => LookupFailure::ServerFailure,
        _ => LookupFailure::Other,
    };
    Error::Lookup {
        name: name.to_owned(),
        failure,
        reason: e.to_string(),
    }
}
