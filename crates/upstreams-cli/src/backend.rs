//! `upstreams backend --listen ADDR --name NAME`: a tiny HTTP/1.1 backend for tests, the demo
//! and benchmarks. Every request gets `200 OK` with body `NAME\n`; keep-alive unless the client
//! says `Connection: close`. SIGTERM stops accepting and lets open sessions finish.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The body every response carries.
    #[arg(long, default_value = "backend")]
    name: String,
    /// Seconds to wait before each answer (a slow backend for benchmarks).
    #[arg(long, default_value_t = 0.0)]
    delay: f64,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen).await?;
        // Tests read the bound address from the first line.
        println!("listening {}", listener.local_addr()?);
        let active = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let delay = Duration::try_from_secs_f64(args.delay)
            .map_err(|_| anyhow::anyhow!("--delay {}: not a duration in seconds", args.delay))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let name = args.name.clone();
                    let active = Arc::clone(&active);
                    let served = Arc::clone(&served);
                    active.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let _ = serve_counted(stream, &name, delay, &served).await;
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                _ = term.recv() => break,
            }
        }
        // Stop listening; let open sessions finish (bounded).
        drop(listener);
        for _ in 0..100 {
            if active.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Benchmarks read how many requests this backend answered.
        println!("served {}", served.load(Ordering::SeqCst));
        Ok(())
    })
}

/// Serves HTTP/1.1 requests on one connection until the peer closes or asks to.
pub(crate) async fn serve(stream: TcpStream, name: &str) -> std::io::Result<()> {
    serve_counted(stream, name, Duration::ZERO, &AtomicUsize::new(0)).await
}

/// [`serve`], waiting `delay` before each answer and counting answers in `served`.
async fn serve_counted(
    mut stream: TcpStream,
    name: &str,
    delay: Duration,
    served: &AtomicUsize,
) -> std::io::Result<()> {
    let body = format!("{name}\n");
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 64 * 1024 {
                return Ok(()); // not HTTP: give up
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let close = head.contains("connection: close");
        buf.drain(..end);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        stream.write_all(response.as_bytes()).await?;
        served.fetch_add(1, Ordering::Relaxed);
        if close {
            return stream.shutdown().await;
        }
    }
}
