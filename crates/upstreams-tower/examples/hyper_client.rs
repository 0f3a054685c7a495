//! An HTTP client balanced by upstreams: hyper-util's client behind a [`Balance`], three
//! axum servers on loopback.
//!
//! Run: `cargo run --release -p upstreams-tower --example hyper_client`. It checks what it
//! shows and exits non-zero when a check fails (CI runs it):
//!
//! 1. one of three servers answers 10× slower than the others: p2c sends it the smallest
//!    share of 1 500 requests (16 at a time);
//! 2. then one server is killed while 1 500 more requests run: retries on upstreams not
//!    yet tried keep the failed requests at 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use upstreams::{Limits, Rotation, Upstream, UpstreamList};
use upstreams_tower::{Balance, BoxError, HttpRoute, HttpStatus, RetryPolicy, Served};

/// A server on its own thread and runtime: stopping it drops every connection it holds.
struct Backend {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start(name: &'static str, delay: Duration) -> Backend {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let app = axum::Router::new().route(
                    "/",
                    axum::routing::get(move || async move {
                        tokio::time::sleep(delay).await;
                        name
                    }),
                );
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task: clients see resets.
            runtime.shutdown_background();
        });
        Backend {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

type Request = http::Request<Full<Bytes>>;

/// Runs `total` GETs, `concurrency` at a time; returns the answering server of each
/// success and the number of failures.
async fn run<S>(
    client: S,
    total: usize,
    concurrency: usize,
    next: Arc<std::sync::atomic::AtomicUsize>,
) -> (Vec<String>, usize)
where
    S: Service<Request, Response = http::Response<String>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut served = Vec::new();
            let mut failed = 0;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let req = http::Request::get("/")
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                match client.ready().await {
                    Ok(ready) => match ready.call(req).await {
                        Ok(response) if response.status().is_success() => {
                            served.push(response.into_body());
                        }
                        Ok(response) => {
                            eprintln!("status {}", response.status());
                            failed += 1;
                        }
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failed += 1;
                        }
                    },
                    Err(e) => {
                        eprintln!("not ready: {e}");
                        failed += 1;
                    }
                }
            }
            (served, failed)
        }));
    }
    let mut served = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (s, f) = task.await.expect("task");
        served.extend(s);
        failed += f;
    }
    (served, failed)
}

fn share(served: &[String], name: &str) -> usize {
    served.iter().filter(|s| s.as_str() == name).count()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut fast_a = Backend::start("fast-a", Duration::from_millis(2));
    let fast_a_name = fast_a.addr.to_string();
    let fast_b = Backend::start("fast-b", Duration::from_millis(2));
    let slow = Backend::start("slow", Duration::from_millis(20));
    let definition = format!("p2c:{},{},{}", fast_a.addr, fast_b.addr, slow.addr);
    // rspamd's error window needs `error_time` (10 s) of errors; a client takes a refusing
    // server out after 3 in a row, as the proxy does after 5.
    let limits = Limits::default().with_max_consecutive_errors(3);
    let list = Arc::new(UpstreamList::parse(&definition, 80, limits)?);

    // One inner service per upstream: the shared hyper client, aimed at that upstream.
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let balance = Balance::new(Arc::clone(&list), move |up: &Upstream| {
        let http = http.clone();
        let authority = up.name().to_owned();
        tower::service_fn(move |mut req: Request| {
            let http = http.clone();
            let uri = format!("http://{authority}{}", req.uri().path());
            async move {
                *req.uri_mut() = uri.parse()?;
                let response = http.request(req).await?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await?.to_bytes();
                let body = String::from_utf8_lossy(&body).into_owned();
                Ok::<_, BoxError>(http::Response::from_parts(parts, body))
            }
        })
    })
    .rotation(Rotation::P2c)
    .route(HttpRoute)
    .classify(HttpStatus);
    let client = ServiceBuilder::new()
        .retry(RetryPolicy::new(Arc::clone(&list), 3))
        .service(balance);

    // 1. A slow server.
    let (served, failed) = run(client.clone(), 1_500, 16, Arc::default()).await;
    let (a, b, s) = (
        share(&served, "fast-a"),
        share(&served, "fast-b"),
        share(&served, "slow"),
    );
    println!(
        "slow server: fast-a {a}, fast-b {b}, slow {s} (of {}), {failed} failed",
        served.len()
    );
    let mut ok = failed == 0 && s < a && s < b;

    // 2. A server killed mid-run.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = {
        let (stop, progress) = (Arc::clone(&stop), Arc::clone(&progress));
        tokio::spawn(async move {
            // A third of the way in, with requests in flight on every server.
            while progress.load(Ordering::Relaxed) < 500 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::task::spawn_blocking(move || fast_a.kill())
                .await
                .expect("kill");
            stop.store(true, Ordering::Relaxed);
        })
    };
    let (served, failed) = run(client.clone(), 1_500, 16, progress).await;
    killer.await?;
    let offline = list.find(&fast_a_name).map(|u| u.state());
    println!(
        "killed server: fast-a {}, fast-b {}, slow {} (of {}), {failed} failed; fast-a is now {:?}",
        share(&served, "fast-a"),
        share(&served, "fast-b"),
        share(&served, "slow"),
        served.len(),
        offline,
    );
    let after_kill = share(&served, "fast-a");
    ok &= failed == 0 && stop.load(Ordering::Relaxed) && after_kill < 700;
    ok &= offline.is_some_and(|s| s != upstreams::State::Alive);

    // The response says which upstream served it.
    let mut one = client.clone();
    let req = http::Request::get("/").body(Full::new(Bytes::new()))?;
    let response = one.ready().await?.call(req).await?;
    let served_by = response
        .extensions()
        .get::<Served>()
        .map(|s| s.0.name().to_owned());
    println!("last response served by {served_by:?}");
    ok &= served_by.is_some();
    drop((fast_b, slow));
    if ok {
        println!("hyper_client: ok");
        Ok(())
    } else {
        Err("hyper_client: a check failed".into())
    }
}
