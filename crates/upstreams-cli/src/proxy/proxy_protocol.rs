//! The PROXY protocol (HAProxy's specification, versions 1 and 2) on both sides of the
//! proxy: read from a load balancer in front (`accept_proxy`), written to every backend
//! connection (`send_proxy`). Headers are built, and v2 blocks parsed, by the `ppp` crate.
//!
//! Reading is strict, as HAProxy's is: the header must arrive whole within
//! `proxy_protocol_timeout` and parse, or the client is closed before anything is forwarded.
//! The v1 line is read here by hand (`ppp` takes a port of `+80`, and reports a line cut
//! short as "incomplete" and a line split mid-field as malformed), and so are the checks
//! `ppp` leaves out of v2 (TLV bounds, the CRC-32C TLV, a UDP pair on a TCP session). A
//! `LOCAL` (v2) or `UNKNOWN` (v1) header keeps the connection's own addresses, as the
//! specification asks. Bytes the client sent after the header are kept and forwarded first.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2};
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
///
/// Judged only once it is whole: a v1 line at its CRLF (or at 107 bytes, the specification's
/// longest line, without one), a v2 block once its announced length has arrived; a header
/// that arrives in any number of pieces is taken as if it came at once.
#[allow(clippy::type_complexity)]
fn parse(buf: &[u8]) -> Result<Option<(usize, Option<Addresses>)>, Refused> {
    // What neither version can start with is refused at once, not after the deadline.
    let n = buf.len().min(V2_SIGNATURE.len());
    let v1 = b"PROXY ".starts_with(&buf[..n.min(6)]);
    if !(V2_SIGNATURE.starts_with(&buf[..n]) || v1) {
        return Err(invalid("not a PROXY protocol header"));
    }
    if buf.is_empty() {
        return Ok(None);
    }
    if v1 {
        return parse_v1(buf);
    }
    parse_v2(buf)
}

/// The v2 signature, the first 12 bytes of a binary header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn invalid(why: impl Into<String>) -> Refused {
    Refused::Invalid(why.into())
}

/// A v1 line (`PROXY TCP4 SRC DST SPORT DPORT\r\n`, `TCP6`, or `UNKNOWN …`), strictly: single
/// spaces, addresses of the announced family, ports of decimal digits only without a sign or a
/// leading zero (as HAProxy reads them).
#[allow(clippy::type_complexity)]
fn parse_v1(buf: &[u8]) -> Result<Option<(usize, Option<Addresses>)>, Refused> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(invalid(format!("v1 line without CRLF in {V1_MAX} bytes")));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("v1 line is not ASCII"))?;
    let mut fields = line.split(' ');
    let _proxy = fields.next();
    let family = fields.next().unwrap_or("");
    if family == "UNKNOWN" {
        // The receiver ignores the rest of an UNKNOWN line, as the specification says.
        return Ok(Some((end + 2, None)));
    }
    let rest: Vec<&str> = fields.collect();
    let [source, destination, source_port, destination_port] = rest[..] else {
        return Err(invalid(format!(
            "v1 {family}: 4 fields after the protocol expected, {} found",
            rest.len()
        )));
    };
    let ip = |text: &str, what: &str| -> Result<std::net::IpAddr, Refused> {
        let parsed = match family {
            "TCP4" => text.parse::<std::net::Ipv4Addr>().map(Into::into),
            "TCP6" => text.parse::<std::net::Ipv6Addr>().map(Into::into),
            other => return Err(invalid(format!("v1: unknown protocol {other:?}"))),
        };
        parsed.map_err(|_| invalid(format!("v1 {family}: invalid {what} address {text:?}")))
    };
    let port = |text: &str, what: &str| -> Result<u16, Refused> {
        let digits =
            !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
        let leading_zero = text.len() > 1 && text.starts_with('0');
        match text.parse::<u16>() {
            Ok(p) if digits && !leading_zero => Ok(p),
            _ => Err(invalid(format!(
                "v1 {family}: invalid {what} port {text:?}"
            ))),
        }
    };
    let addrs = Addresses {
        source: SocketAddr::new(ip(source, "source")?, port(source_port, "source")?),
        destination: SocketAddr::new(
            ip(destination, "destination")?,
            port(destination_port, "destination")?,
        ),
    };
    Ok(Some((end + 2, Some(addrs))))
}

/// The TLV type of a CRC-32C checksum of the header (`PP2_TYPE_CRC32C`).
const PP2_TYPE_CRC32C: u8 = 0x04;

/// A v2 block, once whole: its structure by `ppp`, then what `ppp` leaves unchecked — every
/// TLV within the block, a CRC-32C TLV that matches, and a stream (TCP) session's
/// addresses (a UDP pair is no client of a TCP connection).
#[allow(clippy::type_complexity)]
fn parse_v2(buf: &[u8]) -> Result<Option<(usize, Option<Addresses>)>, Refused> {
    // Signature, version and command, family and protocol, a 16-bit length.
    const FIXED: usize = 16;
    if buf.len() < FIXED {
        return Ok(None);
    }
    let total = FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > MAX_HEADER {
        return Err(Refused::TooLong);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let block = &buf[..total];
    let header = v2::Header::try_from(block).map_err(|e| invalid(e.to_string()))?;
    check_tlvs(block, header.tlv_bytes())?;
    let addrs = match header.command {
        v2::Command::Local => None,
        v2::Command::Proxy => {
            match header.protocol {
                v2::Protocol::Datagram => {
                    return Err(invalid(
                        "v2: a UDP (datagram) address pair for a TCP connection",
                    ))
                }
                // An unspecified transport: the connection's own addresses, as for AF_UNSPEC.
                v2::Protocol::Unspecified => return Ok(Some((total, None))),
                v2::Protocol::Stream => {}
            }
            match header.addresses {
                v2::Addresses::IPv4(a) => Some(Addresses {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                v2::Addresses::IPv6(a) => Some(Addresses {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                }),
                // A Unix pair or an unspecified family: the connection's own addresses.
                v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
            }
        }
    };
    Ok(Some((total, addrs)))
}

/// Walks the TLVs (type, 16-bit length, value) that end the v2 `block`: each must lie
/// wholly inside it, and a CRC-32C TLV must be 4 bytes and match the block's checksum
/// computed with its own value zeroed (the specification's rule).
fn check_tlvs(block: &[u8], tlvs: &[u8]) -> Result<(), Refused> {
    let tlv_start = block.len() - tlvs.len();
    let mut at = 0;
    while at < tlvs.len() {
        let Some(head) = tlvs.get(at..at + 3) else {
            return Err(invalid(format!(
                "v2: truncated TLV header at byte {}",
                tlv_start + at
            )));
        };
        let (kind, len) = (head[0], usize::from(u16::from_be_bytes([head[1], head[2]])));
        let value = at + 3;
        if value + len > tlvs.len() {
            return Err(invalid(format!(
                "v2: TLV 0x{kind:02x} claims {len} bytes, {} are left in the header",
                tlvs.len() - value
            )));
        }
        if kind == PP2_TYPE_CRC32C {
            if len != 4 {
                return Err(invalid(format!(
                    "v2: CRC32C TLV of {len} bytes (4 expected)"
                )));
            }
            let stated = u32::from_be_bytes([
                tlvs[value],
                tlvs[value + 1],
                tlvs[value + 2],
                tlvs[value + 3],
            ]);
            let mut zeroed = block.to_vec();
            zeroed[tlv_start + value..tlv_start + value + 4].fill(0);
            let computed = crc32c::crc32c(&zeroed);
            if stated != computed {
                return Err(invalid(format!(
                    "v2: CRC32C 0x{stated:08x} does not match the header's 0x{computed:08x}"
                )));
            }
        }
        at = value + len;
    }
    Ok(())
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
