//! One check of one upstream: connect (TCP or Unix), then the probe's exchange.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::settings::Probe;

/// Where a check connects.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Tcp(SocketAddr),
    Unix(String),
}

/// Runs `probe` against `target`; `Err` says why it failed. The caller bounds the time.
pub(crate) async fn run(probe: &Probe, target: &Target, name: &str) -> Result<(), String> {
    match target {
        Target::Tcp(addr) => {
            let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            exchange(probe, s, name).await
        }
        Target::Unix(path) => {
            let s = UnixStream::connect(path).await.map_err(|e| e.to_string())?;
            exchange(probe, s, "localhost").await
        }
    }
}

async fn exchange<S>(probe: &Probe, mut stream: S, name: &str) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match probe {
        Probe::Tcp => Ok(()),
        Probe::SendExpect { send, expect } => {
            stream.write_all(send).await.map_err(|e| e.to_string())?;
            let mut answer = Vec::with_capacity(expect.len());
            while answer.len() < expect.len() {
                let mut chunk = [0u8; 512];
                let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed before the expected answer".into());
                }
                answer.extend_from_slice(&chunk[..n]);
            }
            if answer.starts_with(expect) {
                Ok(())
            } else {
                let shown = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
                Err(format!("unexpected answer {shown:?}"))
            }
        }
        Probe::Http { path, host, status } => {
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
                .await
                .map_err(|e| e.to_string())?;
            let request = hyper::Request::get(path.as_str())
                .header(hyper::header::HOST, host.as_deref().unwrap_or(name))
                .header(hyper::header::USER_AGENT, "upstreams-check")
                .header(hyper::header::CONNECTION, "close")
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            let answer = async {
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<u16, String>(response.status().as_u16())
            };
            tokio::pin!(conn);
            tokio::pin!(answer);
            let code = tokio::select! {
                biased;
                code = &mut answer => code?,
                // The connection may finish in the same poll that delivered the answer
                // (`Connection: close`): the answer is then ready, or its error says why not.
                ended = &mut conn => {
                    ended.map_err(|e| e.to_string())?;
                    answer.await?
                }
            };
            if status.matches(code) {
                Ok(())
            } else {
                Err(format!("status {code}"))
            }
        }
    }
}
