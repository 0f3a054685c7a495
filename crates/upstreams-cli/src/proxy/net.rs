//! Where the proxy listens and how it reaches an upstream: TCP or Unix stream sockets on
//! either side (nginx's `listen unix:/path` and `server unix:/path`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;

/// A client connection, TCP or Unix.
pub(crate) type Client = Either<TcpStream, UnixStream>;
/// A backend connection, TCP or Unix.
pub(crate) type Backend = Either<TcpStream, UnixStream>;

/// Reads and drops what a client sent that nobody will read, without waiting (at most
/// 64 KiB), so that closing it ends with a FIN: a socket closed with unread bytes sends a
/// reset, and the client may lose the end of what it was sent.
pub(crate) fn drain_readable(client: &mut Client) {
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        let read = match client {
            Either::Left(tcp) => tcp.try_read(&mut buf),
            Either::Right(unix) => unix.try_read(&mut buf),
        };
        match read {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// A listen address as nginx's `listen` takes it: `IP:port`, `[v6]:port`, `host:port`
/// (resolved once, at start or reload), `:port` or `port` (every IPv4 address, as nginx's
/// `listen 80`), or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub(crate) enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("listen address {text:?}: {why}");
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a unix socket path must be absolute (unix:/run/x.sock)",
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Tcp(addr));
        }
        let port_only = text.strip_prefix(':').unwrap_or(text);
        if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
            let port = port_only
                .parse::<u16>()
                .map_err(|_| bad("port out of range (0..=65535)"))?;
            return Ok(Self::Tcp(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            )));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(bad(
                "expected IP:port, [v6]:port, host:port, port or unix:/path",
            ));
        };
        if host.is_empty() || host.contains(':') {
            return Err(bad(
                "expected IP:port, [v6]:port, host:port, port or unix:/path",
            ));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| bad("port out of range (0..=65535)"))?;
        // Resolved once: a listener binds one address.
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve {host:?}: {e}")))?
            .next()
            .ok_or_else(|| bad(&format!("{host:?} has no address")))?;
        Ok(Self::Tcp(addr))
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

/// Pending connections a client listener queues before accepting (nginx: 511; the kernel caps
/// it at `net.core.somaxconn`). tokio's `bind` asks for 128, which a burst of new clients
/// overflows while the proxy is busy: the extra SYNs are dropped and retried a second later.
pub(crate) const CLIENT_BACKLOG: u32 = 1024;

/// A bound client listener.
pub(crate) enum Acceptor {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Acceptor {
    /// Binds `addr`. A Unix path that holds a stale socket (nothing accepts on it) is
    /// replaced; a live one or any other file is an error.
    pub(crate) fn bind(addr: &ListenAddr) -> std::io::Result<Self> {
        match addr {
            ListenAddr::Tcp(addr) => {
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.bind(*addr)?;
                Ok(Self::Tcp(socket.listen(CLIENT_BACKLOG)?))
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                Ok(Self::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// The address actually bound (the port the kernel chose for port 0).
    pub(crate) fn local(&self) -> std::io::Result<ListenAddr> {
        Ok(match self {
            Self::Tcp(l) => ListenAddr::Tcp(l.local_addr()?),
            Self::Unix(_, path) => ListenAddr::Unix(path.clone()),
        })
    }

    /// The next client and its address (`None` for Unix clients). TCP clients get
    /// `TCP_NODELAY`, as backends do (nginx's `tcp_nodelay on`): an answer that reaches us in
    /// two reads is written in two pieces, and Nagle would hold the second until the client
    /// acknowledges the first (up to its delayed-ACK time, 40 ms on Linux).
    pub(crate) async fn accept(&self) -> std::io::Result<(Client, Option<SocketAddr>)> {
        match self {
            Self::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Either::Left(s), Some(peer)))
            }
            Self::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok((Either::Right(s), None))
            }
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is served by another process", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// Where a backend is reached.
pub(crate) enum Target<'a> {
    Tcp(SocketAddr),
    Unix(&'a str),
}

/// Connects to a backend (TCP with `TCP_NODELAY`).
pub(crate) async fn connect(target: Target<'_>) -> std::io::Result<Backend> {
    match target {
        Target::Tcp(addr) => {
            let s = TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            Ok(Either::Left(s))
        }
        Target::Unix(path) => Ok(Either::Right(UnixStream::connect(path).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::ListenAddr;

    #[test]
    fn listen_takes_what_nginx_listen_does() {
        let tcp = |s: &str| ListenAddr::Tcp(s.parse().expect("address"));
        for (text, want) in [
            ("127.0.0.1:8080", tcp("127.0.0.1:8080")),
            ("[::1]:8080", tcp("[::1]:8080")),
            (":8080", tcp("0.0.0.0:8080")),
            ("8080", tcp("0.0.0.0:8080")),
            ("unix:/run/x.sock", ListenAddr::Unix("/run/x.sock".into())),
        ] {
            assert_eq!(text.parse::<ListenAddr>(), Ok(want), "{text}");
        }
        // A name is resolved once (either loopback family, as /etc/hosts orders them).
        match "localhost:8080".parse::<ListenAddr>() {
            Ok(ListenAddr::Tcp(addr)) => assert!(addr.ip().is_loopback() && addr.port() == 8080),
            other => panic!("localhost:8080 gave {other:?}"),
        }
        for (text, why) in [
            ("unix:x.sock", "must be absolute"),
            ("99999", "port out of range"),
            (":", "expected IP:port"),
            ("host:", "port out of range"),
            ("no-such-host.invalid:80", "cannot resolve"),
        ] {
            let err = text.parse::<ListenAddr>().expect_err(text);
            assert!(err.contains(why) && err.contains(text), "{text}: {err}");
        }
    }
}
