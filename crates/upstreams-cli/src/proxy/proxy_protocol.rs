//! The PROXY protocol (HAProxy's specification, versions 1 and 2) on both sides of the
//! proxy: read from a load balancer in front (`accept_proxy`), written to every backend
//! connection (`send_proxy`). The wire format is the `ppp` crate's; this module only decides
//! what to do with it.
//!
//! Reading is strict: the header must arrive whole within `proxy_protocol_timeout` and
//! parse, or the client is closed before anything is forwarded. A `LOCAL` (v2) or `UNKNOWN`
//! (v1) header keeps the connection's own addresses, as the specification asks. Bytes the
//! client sent after the header are kept and forwarded first.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest header accepted: v1's 107 bytes, or v2's 16 plus addresses and TLVs (HAProxy
/// sends well under this; the limit bounds what a silent or hostile client can make us keep).
const MAX_HEADER: usize = 4096;

/// The longest v1 line the specification allows, CRLF included.
const V1_MAX: usize = 107;

/// Which version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Version {
    /// The text form (`PROXY TCP4 …\r\n`).
    V1,
    /// The binary form.
    V2,
}

/// The addresses a header carries: the client's and the one it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addresses {
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
}

/// `addr` with an IPv4-mapped IPv6 address written as IPv4 (a dual-stack listener's view of
/// an IPv4 client), so both ends of a header share a family where they can.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The header to send ahead of a backend connection's first byte. Without both addresses
/// (a Unix-socket client), or with addresses of two families, v1 says `UNKNOWN` and v2
/// `LOCAL`: the backend then uses the connection's own addresses.
pub(crate) fn header(version: Version, addrs: Option<Addresses>) -> Vec<u8> {
    let pair = addrs
        .map(|a| (canonical(a.source), canonical(a.destination)))
        .filter(|(s, d)| s.is_ipv4() == d.is_ipv4());
    match version {
        Version::V1 => match pair {
            Some(pair) => v1::Addresses::from(pair).to_string().into_bytes(),
            None => v1::Addresses::Unknown.to_string().into_bytes(),
        },
        Version::V2 => {
            let built = match pair {
                Some(pair) => v2::Builder::with_addresses(
                    v2::Version::Two | v2::Command::Proxy,
                    v2::Protocol::Stream,
                    pair,
                )
                .build(),
                None => v2::Builder::new(
                    v2::Version::Two | v2::Command::Local,
                    v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
                )
                .build(),
            };
            // Building into a Vec only fails on a length beyond u16, which addresses alone
            // never reach.
            built.unwrap_or_default()
        }
    }
}

/// Why a client's header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("the client closed before a complete PROXY protocol header")]
    Closed,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a PROXY protocol header (either version) from `client` into `buf`, within
/// `timeout`. Returns the addresses it carries (`None` for `LOCAL` / `UNKNOWN`, or a v2
/// Unix-socket pair); leaves in `buf` only the bytes that followed the header.
pub(crate) async fn read_header<C: AsyncRead + Unpin>(
    client: &mut C,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<Option<Addresses>, Refused> {
    let read = async {
        loop {
            if let Some(done) = parse(buf)? {
                return Ok(done);
            }
            if buf.len() >= MAX_HEADER {
                return Err(Refused::TooLong);
            }
            buf.reserve(512);
            if client.read_buf(buf).await? == 0 {
                return Err(Refused::Closed);
            }
        }
    };
    let (len, addrs) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Refused::Timeout(timeout))??;
    buf.drain(..len);
    Ok(addrs)
}

/// The header at the start of `buf`: `None` while incomplete, else its length and addresses.
#[allow(clippy::type_complexity)]
fn parse(buf: &[u8]) -> Result<Option<(usize, Option<Addresses>)>, Refused> {
    // What neither version can start with is refused at once, not after the deadline.
    const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let n = buf.len().min(V2_SIGNATURE.len());
    if !(V2_SIGNATURE.starts_with(&buf[..n]) || b"PROXY ".starts_with(&buf[..n.min(6)])) {
        return Err(Refused::Invalid("not a PROXY protocol header".to_owned()));
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let parsed = HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        // A v1 line is complete at its CRLF: one that still lacks fields is malformed, not
        // incomplete (the parser reports missing fields as partial input).
        let v1_line_ended =
            buf.starts_with(b"PROXY ") && buf.windows(2).take(V1_MAX).any(|w| w == b"\r\n");
        if v1_line_ended {
            return Err(Refused::Invalid("malformed v1 header line".to_owned()));
        }
        return Ok(None);
    }
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            let addrs = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(Addresses {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                v1::Addresses::Tcp6(a) => Some(Addresses {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                v1::Addresses::Unknown => None,
            };
            Ok(Some((h.header.len(), addrs)))
        }
        HeaderResult::V2(Ok(h)) => {
            let addrs = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some(Addresses {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some(Addresses {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                _ => None,
            };
            Ok(Some((h.len(), addrs)))
        }
        HeaderResult::V1(Err(e)) => Err(Refused::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(Refused::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(s: &str, d: &str) -> Addresses {
        Addresses {
            source: s.parse().unwrap(),
            destination: d.parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn both_versions_round_trip_and_keep_the_bytes_after_the_header() {
        for version in [Version::V1, Version::V2] {
            for a in [
                addrs("127.0.0.7:40000", "127.0.0.1:8080"),
                addrs("[::1]:40000", "[::1]:8080"),
            ] {
                let mut wire = header(version, Some(a));
                wire.extend_from_slice(b"PING\r\n");
                let mut buf = Vec::new();
                let got = read_header(&mut &wire[..], &mut buf, Duration::from_secs(1))
                    .await
                    .unwrap();
                assert_eq!(got, Some(a), "{version:?}");
                assert_eq!(buf, b"PING\r\n");
            }
            let wire = header(version, None);
            let mut buf = Vec::new();
            let got = read_header(&mut &wire[..], &mut buf, Duration::from_secs(1))
                .await
                .unwrap();
            assert_eq!(got, None);
            assert!(buf.is_empty());
        }
        // A v4-mapped client on a dual-stack listener is sent as IPv4.
        let mapped = addrs("[::ffff:127.0.0.7]:1", "127.0.0.1:2");
        assert_eq!(
            header(Version::V1, Some(mapped)),
            b"PROXY TCP4 127.0.0.7 127.0.0.1 1 2\r\n"
        );
    }

    #[tokio::test]
    async fn a_missing_or_malformed_header_is_refused() {
        let mut buf = Vec::new();
        let err = read_header(
            &mut &b"GET / HTTP/1.1\r\n\r\n"[..],
            &mut buf,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Refused::Invalid(_)), "{err}");
        let mut buf = Vec::new();
        let err = read_header(
            &mut &b"PROXY TCP4 1.2.3.4\r\n"[..],
            &mut buf,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Refused::Invalid(_)), "{err}");
        // A short greeting that is no header is refused at once, not at the deadline.
        let (mut client, mut peer) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"PING\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let err = read_header(&mut client, &mut buf, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, Refused::Invalid(_)), "{err}");
        // Closed mid-header.
        let mut buf = Vec::new();
        let err = read_header(
            &mut &b"PROXY TCP4 1.2"[..],
            &mut buf,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Refused::Closed), "{err}");
        // Silent: the deadline.
        let (mut silent, _keep) = tokio::io::duplex(64);
        let mut buf = Vec::new();
        let err = read_header(&mut silent, &mut buf, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, Refused::Timeout(_)), "{err}");
    }
}
