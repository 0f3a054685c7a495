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
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let name = args.name.clone();
                    let active = Arc::clone(&active);
                    active.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let _ = serve(stream, &name).await;
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
        Ok(())
    })
}

/// Serves HTTP/1.1 requests on one connection until the peer closes or asks to.
pub(crate) async fn serve(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
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
        stream.write_all(response.as_bytes()).await?;
        if close {
            return stream.shutdown().await;
        }
    }
}
