//! Helpers of the proxy integration tests: backends and proxies as child processes (so they
//! can be stopped and SIGKILLed), HTTP clients, admin look-ups.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    /// Addresses printed on stdout at start ("listening ADDR", "admin: http://ADDR/…").
    pub addrs: Vec<SocketAddr>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

pub fn spawn(args: &[&str], lines: usize) -> Proc {
    spawn_under(&[], args, lines)
}

/// Like [`spawn`], started through `wrapper` (for example `prlimit --nofile=64:64`).
pub fn spawn_under(wrapper: &[&str], args: &[&str], lines: usize) -> Proc {
    spawn_full(wrapper, args, lines, Stdio::null())
}

/// Like [`spawn`], with the process's log (stderr) written to `log`.
pub fn spawn_logged(args: &[&str], lines: usize, log: &std::path::Path) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    spawn_full(&[], args, lines, Stdio::from(file))
}

/// [`spawn_under`] with the process's log (stderr) written to `log`.
pub fn spawn_under_logged(
    wrapper: &[&str],
    args: &[&str],
    lines: usize,
    log: &std::path::Path,
) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    spawn_full(wrapper, args, lines, Stdio::from(file))
}

fn spawn_full(wrapper: &[&str], args: &[&str], lines: usize, stderr: Stdio) -> Proc {
    let bin = env!("CARGO_BIN_EXE_upstreams");
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addrs = Vec::new();
    while addrs.len() < lines {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "process exited early"
        );
        let word = line.split_whitespace().find_map(|w| {
            w.trim_start_matches("http://")
                .split('/')
                .next()?
                .parse::<SocketAddr>()
                .ok()
        });
        if let Some(addr) = word {
            addrs.push(addr);
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    Proc { child, addrs }
}

pub fn backend(name: &str, listen: &str) -> Proc {
    spawn(&["backend", "--listen", listen, "--name", name], 1)
}

pub fn proxy(definition: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "proxy",
        definition,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    spawn(&args, 2)
}

/// One HTTP request through `addr` with `Connection: close`; the body on success.
pub async fn request(addr: SocketAddr) -> Result<String, String> {
    request_from(None, addr).await
}

/// [`request`] from the source address `from` (any loopback address) when given.
pub async fn request_from(from: Option<IpAddr>, addr: SocketAddr) -> Result<String, String> {
    let work = async {
        let mut s = match from {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .map_err(|e| e.to_string())?;
                socket.connect(addr).await
            }
        }
        .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).to_string();
        if !text.starts_with("HTTP/1.1 200") {
            return Err(format!("bad response {text:?}"));
        }
        Ok(text
            .rsplit("\r\n\r\n")
            .next()
            .unwrap_or("")
            .trim()
            .to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

#[derive(Default)]
pub struct Load {
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
}

/// `total` requests, `concurrency` at a time.
pub async fn load(addr: SocketAddr, total: usize, concurrency: usize, figures: Arc<Load>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, figures) = (next.clone(), figures.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < total {
                if request(addr).await.is_err() {
                    figures.failed.fetch_add(1, Ordering::SeqCst);
                }
                figures.done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

pub async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

pub async fn state_of(admin: SocketAddr, upstream: &str) -> String {
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json").await).unwrap();
    status["listeners"][0]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == upstream)
        .map(|u| u["state"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| "absent".to_owned())
}

pub async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Open descriptors and resident memory (KiB) of a process, from /proc.
pub fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (fds, rss)
}

/// A listener figure from /status.json (`accepted`, `idle_closed`, `accept_errors`, …).
pub async fn listener_figure(admin: SocketAddr, name: &str) -> u64 {
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json").await).unwrap();
    status["listeners"][0][name].as_u64().unwrap()
}

/// A real server process, killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `addr`.
pub async fn listening(addr: SocketAddr, what: &str) {
    wait_until(what, Duration::from_secs(10), async || {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

/// An echo backend in this process: it sends back every byte it reads and half-closes when the
/// client has (after the echo of the last byte).
pub async fn echo_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A black hole: a listener with a backlog of one that never accepts, its queue filled, so
/// further SYNs are dropped and connects hang until the caller's timeout. The returned
/// streams keep the queue full.
pub async fn black_hole() -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = socket.listen(1).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break, // the queue is full: this SYN was dropped
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr))
            .await
            .is_err(),
        "the black hole still completes handshakes"
    );
    (addr, l, fillers)
}

/// A fresh scratch directory of this test process, named `name`.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("upstreams-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `what` on an echoed stream and checks that it comes back whole within 5 s.
pub async fn echo_once<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S, what: &[u8]) {
    s.write_all(what).await.unwrap();
    let mut back = vec![0u8; what.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, what);
}

/// Waits up to `limit` until `log` holds `n` completed reloads of the proxy.
pub async fn reloaded(log: &std::path::Path, n: usize, limit: Duration) {
    wait_until("the reload", limit, async || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("proxy: reloaded ")
            .count()
            == n
    })
    .await;
}
