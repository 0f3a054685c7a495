//! `upstreams proxy`: a TCP load balancer on upstream lists, with retries, health, Prometheus
//! metrics, a status page, graceful shutdown and reload on SIGHUP.

mod admin;
mod config;
mod forward;
mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use config::{Config, LimitsConfig, ListenerConfig};
use forward::{Listener, Sessions};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The upstream list definition (with --listen); not with --config or --demo.
    definition: Option<String>,
    /// Address to accept clients on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A TOML file describing several listeners (reloaded on SIGHUP).
    #[arg(long, conflicts_with_all = ["definition", "demo"])]
    config: Option<PathBuf>,
    /// Start three built-in backends and a listener on them: see it work with one command.
    #[arg(long, conflicts_with_all = ["definition", "config"])]
    demo: bool,
    /// Rotation when the definition has no prefix (hash uses the client IP as key).
    #[arg(long, default_value = "round-robin")]
    rotation: String,
    /// Consistent-hash mode: balanced or rspamd-ring.
    #[arg(long)]
    hash: Option<String>,
    /// Other upstreams tried after a failed connect.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// When a client may move to another upstream, comma-separated: `connect` (nothing of the
    /// client reached a backend; always safe), `closed-before-answer`, `answer-timeout`. The
    /// last two replay the client's bytes elsewhere and so DUPLICATE non-idempotent requests.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "connect")]
    retry_on: Vec<config::RetryOn>,
    /// Port for entries that name none (`127.0.0.1` alone); without it such an entry is an
    /// error.
    #[arg(long, default_value_t = 0)]
    default_port: u16,
    /// Connect timeout in seconds.
    #[arg(long, default_value_t = 1.0)]
    connect_timeout: f64,
    /// Seconds a backend may take to answer the client's latest bytes; past that it counts
    /// as failed and the session is retried elsewhere with its bytes replayed (0: wait).
    #[arg(long, default_value_t = 0.0)]
    answer_timeout: f64,
    /// Seconds without a byte in either direction after which a session is closed.
    #[arg(long, default_value_t = config::default_idle_timeout())]
    idle_timeout: f64,
    /// Pass a backend's end of stream (FIN) to the client and keep the session until the
    /// client ends too. Without it a backend's end closes the session once its bytes reached
    /// the client, as nginx stream does by default. A client's end is passed on either way.
    #[arg(long)]
    half_close: bool,
    /// Seconds an offline upstream stays out.
    #[arg(long)]
    revive_time: Option<f64>,
    /// Revive jitter (0..=1).
    #[arg(long)]
    revive_jitter: Option<f64>,
    /// Failures in a row that take an upstream out at once (default 5).
    #[arg(long)]
    max_consecutive_errors: Option<u32>,
    /// Admin listener for /metrics, /status and /status.json.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Nameservers for names in definitions (`system` or `ip[:port],…`).
    #[arg(long)]
    dns: Option<String>,
    /// Seconds to let open sessions finish on SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// The running proxy, shared with the admin pages.
pub(crate) struct Proxy {
    listeners: RwLock<Vec<Arc<Listener>>>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) started: Instant,
}

impl Proxy {
    pub(crate) fn listeners(&self) -> Vec<Arc<Listener>> {
        self.listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn config_from_args(args: &Args, definition: String, listen: SocketAddr) -> Config {
    Config {
        admin: args.admin,
        dns: args.dns.clone(),
        drain_timeout: args.drain_timeout,
        listeners: vec![ListenerConfig {
            listen,
            upstreams: definition,
            rotation: Some(args.rotation.clone()),
            hash: args.hash.clone(),
            retries: args.retries,
            retry_on: args.retry_on.clone(),
            connect_timeout: args.connect_timeout,
            answer_timeout: args.answer_timeout,
            idle_timeout: args.idle_timeout,
            half_close: args.half_close,
            default_port: args.default_port,
            limits: LimitsConfig {
                revive_time: args.revive_time,
                revive_jitter: args.revive_jitter,
                max_consecutive_errors: args.max_consecutive_errors,
                ..LimitsConfig::default()
            },
        }],
    }
}

pub(crate) fn run(args: &Args) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // One thread: a current-thread runtime (no work stealing, no cross-thread wake-ups).
    let mut runtime = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: &Args) -> Result<()> {
    let mut config = if let Some(path) = &args.config {
        Config::load(path)?
    } else if args.demo {
        let backends = demo_backends().await?;
        let listen = args.listen.unwrap_or_else(|| ([127, 0, 0, 1], 8080).into());
        let mut config = config_from_args(args, backends.clone(), listen);
        config.admin = Some(args.admin.unwrap_or_else(|| ([127, 0, 0, 1], 9100).into()));
        println!("demo backends: {backends}");
        config
    } else {
        let (Some(definition), Some(listen)) = (&args.definition, args.listen) else {
            bail!("give a definition and --listen, or --config FILE, or --demo");
        };
        let config = config_from_args(args, definition.clone(), listen);
        config.check()?;
        config
    };
    config.check()?;
    let proxy = Arc::new(Proxy {
        listeners: RwLock::default(),
        sessions: Arc::default(),
        started: Instant::now(),
    });
    for l in &config.listeners {
        start_listener(&proxy, l.settings()?).await?;
    }
    if let Some(admin) = config.admin {
        let tcp = TcpListener::bind(admin)
            .await
            .with_context(|| format!("admin listener {admin}"))?;
        println!(
            "admin: http://{}/status  http://{0}/metrics  http://{0}/status.json",
            tcp.local_addr()?
        );
        let app = admin::router(Arc::clone(&proxy));
        tokio::spawn(async move {
            if let Err(err) = axum::serve(tcp, app).await {
                tracing::error!(%err, "admin listener failed");
            }
        });
    }
    spawn_dns(&proxy, config.dns.as_deref())?;

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match &args.config {
                Some(path) => match Config::load(path) {
                    Ok(new) => {
                        if let Err(err) = apply_reload(&proxy, &new).await {
                            tracing::error!(%err, "reload failed; the running configuration stays");
                        } else {
                            config = new;
                        }
                    }
                    Err(err) => tracing::error!(err = %format!("{err:#}"), "reload failed; the running configuration stays"),
                },
                None => tracing::info!("SIGHUP: nothing to reload without --config"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(
        open = proxy.sessions.open(),
        "shutting down: no new clients, draining"
    );
    for l in proxy.listeners() {
        l.stop();
    }
    let drain = Duration::from_secs_f64(config.drain_timeout.max(0.0));
    if tokio::time::timeout(drain, proxy.sessions.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            open = proxy.sessions.open(),
            "drain deadline passed; closing"
        );
    }
    Ok(())
}

/// Pending connections a client listener queues before accepting (nginx: 511; the kernel caps
/// it at `net.core.somaxconn`). tokio's `bind` asks for 128, which a burst of new clients
/// overflows while the proxy is busy: the extra SYNs are dropped and retried a second later.
const CLIENT_BACKLOG: u32 = 1024;

fn bind_clients(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(CLIENT_BACKLOG)
}

async fn start_listener(proxy: &Arc<Proxy>, settings: config::Settings) -> Result<()> {
    let listen = settings.listen;
    let tcp = bind_clients(listen).with_context(|| format!("listener {listen}"))?;
    let bound = tcp.local_addr()?;
    let listener = Listener::new(settings, bound)?;
    println!("listening {bound} -> {}", listener.list);
    tokio::spawn(Arc::clone(&listener).accept_loop(tcp, Arc::clone(&proxy.sessions)));
    proxy
        .listeners
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(listener);
    Ok(())
}

/// SIGHUP: listeners that stay are reconfigured in place (health kept, sessions untouched),
/// new ones start, removed ones stop accepting and let their sessions finish.
async fn apply_reload(proxy: &Arc<Proxy>, config: &Config) -> Result<()> {
    let current: HashMap<SocketAddr, Arc<Listener>> = proxy
        .listeners()
        .into_iter()
        .map(|l| (l.listen, l))
        .collect();
    let mut settings = Vec::new();
    for l in &config.listeners {
        settings.push(l.settings()?);
    }
    for s in settings {
        match current.get(&s.listen) {
            Some(l) => l.reload(s),
            None => start_listener(proxy, s).await?,
        }
    }
    let mut listeners = proxy.listeners.write().unwrap_or_else(|p| p.into_inner());
    listeners.retain(|l| {
        let keep = config.listeners.iter().any(|c| c.listen == l.listen);
        if !keep {
            tracing::info!(listener = %l.listen, "removed by reload");
            l.stop();
        }
        keep
    });
    Ok(())
}

/// Resolves names of the lists (first resolution now, then on schedule) when any list has
/// some.
fn spawn_dns(proxy: &Arc<Proxy>, dns: Option<&str>) -> Result<()> {
    let listeners = proxy.listeners();
    let Some(first) = listeners.iter().find(|l| {
        l.list
            .upstreams()
            .iter()
            .any(|u| u.entry().host().needs_resolution())
    }) else {
        return Ok(());
    };
    let servers = upstreams_dns::Nameservers::parse(dns.unwrap_or("system"))?;
    let refresher = Arc::new(upstreams_dns::Refresher::new(
        &servers,
        &first.list.limits(),
    )?);
    let proxy = Arc::clone(proxy);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for l in proxy.listeners() {
                refresher.refresh(&l.list).await;
            }
        }
    });
    Ok(())
}

/// Three HTTP backends on loopback for `--demo`; returns their list definition.
async fn demo_backends() -> Result<String> {
    let mut entries = Vec::new();
    for (i, weight) in [(1, 3), (2, 2), (3, 1)] {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        entries.push(format!("{addr}:{weight}"));
        tokio::spawn(async move {
            let name = format!("demo backend {i} ({addr})");
            while let Ok((stream, _)) = tcp.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let _ = crate::backend::serve(stream, &name).await;
                });
            }
        });
    }
    Ok(entries.join(","))
}

#[cfg(test)]
mod tests {
    use super::{bind_clients, CLIENT_BACKLOG};
    use std::net::TcpStream;
    use std::time::Duration;

    /// A burst of clients larger than tokio's default backlog (128) all get connected while
    /// nobody accepts: the kernel completes their handshakes into the larger queue. (With a
    /// backlog of 128, 129 of 200 connected.)
    #[tokio::test]
    async fn a_burst_beyond_the_default_backlog_is_queued() {
        let listener = bind_clients("127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = listener.local_addr().expect("bound");
        let burst = 300;
        assert!(burst < CLIENT_BACKLOG as usize);
        let connected = (0..burst)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
            .filter(Result::is_ok)
            .count();
        assert_eq!(connected, burst);
    }
}
