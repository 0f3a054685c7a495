//! `upstreams proxy`: a TCP load balancer on upstream lists, with retries, health, Prometheus
//! metrics, a status page, graceful shutdown and reload on SIGHUP.

mod access;
mod admin;
mod config;
mod forward;
mod metrics;
mod net;
mod proxy_protocol;
mod queue;
mod ratelog;
mod relay;
mod stats;
mod trim;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use config::{Config, ListenerConfig};
use forward::{Listener, Sessions};
use net::{Acceptor, ListenAddr};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The upstream list definition (with --listen); not with --config or --demo.
    definition: Option<String>,
    /// Address to accept clients on: IP:port, [v6]:port, host:port (resolved once), :port or
    /// port (every IPv4 address), unix:/path.
    #[arg(long)]
    listen: Option<ListenAddr>,
    /// A TOML file describing several listeners (reloaded on SIGHUP).
    #[arg(long, conflicts_with_all = ["definition", "demo"])]
    config: Option<PathBuf>,
    /// Check a configuration file and exit (nginx -t): parse and validate everything, print
    /// what would run, exit 0; or exit 2 naming the file, the line or setting, and the reason.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["definition", "demo", "config"])]
    check_config: Option<PathBuf>,
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
    #[arg(long, default_value_t = 1.0, value_parser = upstreams::parse_seconds)]
    connect_timeout: f64,
    /// Seconds a backend may take to answer the client's latest bytes; past that it counts
    /// as failed and the session is retried elsewhere with its bytes replayed (0: wait).
    #[arg(long, default_value_t = 0.0, value_parser = upstreams::parse_seconds)]
    answer_timeout: f64,
    /// Seconds without a byte in either direction after which a session is closed.
    #[arg(long, default_value_t = config::default_idle_timeout(), value_parser = upstreams::parse_seconds)]
    idle_timeout: f64,
    /// Pass a backend's end of stream (FIN) to the client and keep the session until the
    /// client ends too. Without it a backend's end closes the session once its bytes reached
    /// the client, as nginx stream does by default. A client's end is passed on either way.
    #[arg(long)]
    half_close: bool,
    /// Clients start with a PROXY protocol header (v1 or v2, from a load balancer in front):
    /// its client address is used (hash key, logs); a missing or malformed header closes
    /// the client before anything is forwarded.
    #[arg(long)]
    accept_proxy: bool,
    /// Seconds for a client's PROXY protocol header to arrive whole.
    #[arg(long, default_value_t = config::default_proxy_protocol_timeout(), value_parser = upstreams::parse_seconds)]
    proxy_protocol_timeout: f64,
    /// Send a PROXY protocol header (v1 or v2) ahead of every backend connection.
    #[arg(long, value_enum)]
    send_proxy: Option<proxy_protocol::Version>,
    /// Sessions per upstream (nginx's max_conns): a full upstream is skipped; when all are
    /// full a client waits up to --queue-timeout. 0: no limit.
    #[arg(long, default_value_t = 0)]
    max_conns: u32,
    /// Seconds a client waits for a free upstream under --max-conns (default: the connect
    /// timeout).
    #[arg(long, value_parser = upstreams::parse_seconds)]
    queue_timeout: Option<f64>,
    /// Clients served at once by the listener; above it the proxy stops accepting and the
    /// kernel's backlog holds the rest. 0: no limit.
    #[arg(long, default_value_t = 0)]
    max_connections: u32,
    /// Active health checks: `tcp`, `http:/PATH` or `send-expect:SEND:EXPECT` (escapes \r \n
    /// \t \\ \0 \xHH; a colon inside SEND or EXPECT is \x3a).
    #[arg(long)]
    health_check: Option<String>,
    /// Seconds between checks of one upstream (default 2).
    #[arg(long, requires = "health_check", value_parser = upstreams::parse_seconds)]
    check_interval: Option<f64>,
    /// Seconds a check may take (default 1).
    #[arg(long, requires = "health_check", value_parser = upstreams::parse_seconds)]
    check_timeout: Option<f64>,
    /// Passing checks in a row that bring an upstream back (default 2).
    #[arg(long, requires = "health_check")]
    check_rise: Option<u32>,
    /// Failed checks in a row that take an upstream out (default 3).
    #[arg(long, requires = "health_check")]
    check_fall: Option<u32>,
    /// Seconds an offline upstream stays out.
    #[arg(long, value_parser = upstreams::parse_seconds)]
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
    /// Allow the admin listener's write requests (POST …/drain, …/enable), from loopback
    /// clients only.
    #[arg(long)]
    admin_write: bool,
    /// Nameservers for names in definitions (`system` or `ip[:port],…`).
    #[arg(long)]
    dns: Option<String>,
    /// Seconds to let open sessions finish on SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10.0, value_parser = upstreams::parse_seconds)]
    drain_timeout: f64,
    /// Access log: one line per session, to this file (appended; SIGUSR1 reopens it) or
    /// `-` for standard error.
    #[arg(long, value_name = "PATH")]
    access_log: Option<String>,
    /// Access log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: access::Format,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// The running proxy, shared with the admin pages.
pub(crate) struct Proxy {
    listeners: RwLock<Vec<Arc<Listener>>>,
    /// Listeners a reload removed: shown, with their figures, while their sessions last
    /// (the sessions hold them; a weak reference here keeps none alive).
    retired: std::sync::Mutex<Vec<std::sync::Weak<Listener>>>,
    /// `admin_write`: the admin listener takes drain / enable requests (from loopback).
    pub(crate) admin_write: std::sync::atomic::AtomicBool,
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

    /// What the pages show: the listeners in service, then those a reload removed that still
    /// have sessions (unless a listener of the same address took their place).
    pub(crate) fn shown_listeners(&self) -> Vec<Arc<Listener>> {
        let mut shown = self.listeners();
        let retired = self.live_retired();
        let retired: Vec<Arc<Listener>> = retired
            .into_iter()
            .filter(|r| !shown.iter().any(|l| l.listen == r.listen))
            .collect();
        shown.extend(retired);
        shown
    }

    /// The removed listeners whose sessions go on; forgets the others.
    fn live_retired(&self) -> Vec<Arc<Listener>> {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<Arc<Listener>> = retired
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        retired.retain(|w| w.strong_count() > 0);
        live
    }
}

fn config_from_args(args: &Args, definition: String, listen: ListenAddr) -> Result<Config> {
    let health_check = match &args.health_check {
        None => None,
        Some(text) => {
            let probe = upstreams_check::parse_probe(text).map_err(anyhow::Error::msg)?;
            // The command line's form in the file's terms, so both are checked alike.
            let (kind, send, expect, path) = match probe {
                upstreams_check::Probe::Tcp => ("tcp", None, None, None),
                upstreams_check::Probe::SendExpect { send, expect } => (
                    "send-expect",
                    Some(String::from_utf8(send).context("--health-check: SEND is not UTF-8")?),
                    Some(String::from_utf8(expect).context("--health-check: EXPECT is not UTF-8")?),
                    None,
                ),
                upstreams_check::Probe::Http { path, .. } => ("http", None, None, Some(path)),
            };
            Some(upstreams_check::CheckConfig {
                kind: kind.to_owned(),
                send,
                expect,
                path,
                host: None,
                status: None,
                interval: args.check_interval,
                timeout: args.check_timeout,
                rise: args.check_rise,
                fall: args.check_fall,
                jitter: None,
            })
        }
    };
    Ok(Config {
        access_log: None,
        log_format: None,
        admin: args.admin,
        admin_write: args.admin_write,
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
            accept_proxy: args.accept_proxy,
            proxy_protocol_timeout: args.proxy_protocol_timeout,
            send_proxy: args.send_proxy,
            max_conns: args.max_conns,
            queue_timeout: args.queue_timeout,
            max_connections: args.max_connections,
            limits: {
                let mut limits = upstreams::LimitsConfig::default();
                limits.revive_time = args.revive_time;
                limits.revive_jitter = args.revive_jitter;
                limits.max_consecutive_errors = args.max_consecutive_errors;
                limits
            },
            health_check,
        }],
    })
}

/// `--check-config FILE`: everything `--config` would check, without binding or serving.
fn check_config(path: &std::path::Path) -> Result<()> {
    let config = Config::load(path)?;
    println!("{}: ok", path.display());
    if let Some(admin) = config.admin {
        println!("admin {admin}");
    }
    for l in &config.listeners {
        let s = l.settings()?;
        let checks = s.health_check.as_ref().map_or_else(
            || "no health checks".to_owned(),
            |c| format!("health checks every {:?}", c.interval),
        );
        println!(
            "listener {} -> {} ({} upstreams; retries {}; {checks})",
            s.listen,
            s.definition,
            s.definition.entries().len(),
            s.retries
        );
    }
    Ok(())
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if let Some(path) = &args.check_config {
        return check_config(path);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // No colour codes in files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    // Every client and backend connection takes a descriptor: raise the soft limit to the
    // hard one (systemd's soft default of 1 024 serves about 500 clients).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open files limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open files limit"),
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: &Args) -> Result<()> {
    // Before anything is printed or bound: a SIGHUP that arrives once the addresses are out
    // (a test, a script) must reach the reload, not the default action (exit).
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut config = if let Some(path) = &args.config {
        Config::load(path)?
    } else if args.demo {
        let backends = demo_backends().await?;
        let listen = args
            .listen
            .clone()
            .unwrap_or_else(|| ListenAddr::Tcp(([127, 0, 0, 1], 8080).into()));
        let mut config = config_from_args(args, backends.clone(), listen)?;
        config.admin = Some(args.admin.unwrap_or_else(|| ([127, 0, 0, 1], 9100).into()));
        println!("demo backends: {backends}");
        config
    } else {
        let (Some(definition), Some(listen)) = (&args.definition, &args.listen) else {
            bail!("give a definition and --listen, or --config FILE, or --demo");
        };
        config_from_args(args, definition.clone(), listen.clone())?
    };
    config.check()?;
    // The access log: the file's setting, else the command line's. Fixed until a restart.
    let log_target = config
        .access_log
        .clone()
        .or_else(|| args.access_log.clone());
    if let Some(target) = &log_target {
        let format = config.log_format.unwrap_or(args.log_format);
        let log = access::AccessLog::open(target, format)
            .with_context(|| format!("access log {target}"))?;
        let _ = access::LOG.set(log);
    }
    let proxy = Arc::new(Proxy {
        admin_write: std::sync::atomic::AtomicBool::new(config.admin_write),
        listeners: RwLock::default(),
        retired: std::sync::Mutex::default(),
        sessions: Arc::default(),
        started: Instant::now(),
    });
    let mut running = Running::default();
    let plan = prepare(&proxy, &running, None, &config).await?;
    apply(&proxy, &mut running, plan);
    tokio::spawn(trim::after_bursts(Arc::clone(&proxy.sessions)));
    // systemd (Type=notify): bound and serving. Without NOTIFY_SOCKET this does nothing.
    notify(&[sd_notify::NotifyState::Ready]);

    loop {
        tokio::select! {
            _ = hup.recv() => match &args.config {
                Some(path) => reload(&proxy, &mut running, &mut config, path).await,
                None => tracing::info!("SIGHUP: nothing to reload without --config"),
            },
            _ = usr1.recv() => {
                if let Some(log) = access::LOG.get() {
                    log.reopen();
                    tracing::info!("SIGUSR1: access log reopened");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(
        open = proxy.sessions.open(),
        "shutting down: no new clients, draining"
    );
    notify(&[sd_notify::NotifyState::Stopping]);
    for l in proxy.listeners() {
        l.stop();
    }
    let drain = Duration::from_secs_f64(config.drain_timeout.clamp(0.0, config::MAX_SECONDS));
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

/// SIGHUP with `--config`: loads the file again and puts it into service, all or nothing;
/// on any error the running configuration stays, and the error is logged.
async fn reload(
    proxy: &Arc<Proxy>,
    running: &mut Running,
    config: &mut Config,
    path: &std::path::Path,
) {
    notify(&[sd_notify::NotifyState::Reloading]);
    let prepared = match Config::load(path) {
        Ok(new) => prepare(proxy, running, Some(config), &new)
            .await
            .map(|plan| (new, plan)),
        Err(err) => Err(err),
    };
    match prepared {
        Ok((new, plan)) => {
            if new.access_log != config.access_log || new.log_format != config.log_format {
                tracing::warn!("access_log and log_format take effect on restart only");
            }
            apply(proxy, running, plan);
            proxy
                .admin_write
                .store(new.admin_write, std::sync::atomic::Ordering::Relaxed);
            *config = new;
            tracing::info!("reloaded {}", path.display());
        }
        Err(err) => tracing::error!(
            err = %format!("{err:#}"),
            "reload refused; nothing changed, the running configuration stays"
        ),
    }
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) what the proxy is doing.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(false, state) {
        tracing::warn!(%err, "cannot notify systemd");
    }
}

/// The admin listener and the DNS refresher in service, replaced when a reload changes them.
#[derive(Default)]
struct Running {
    admin: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// The `dns` setting the refresher uses (`None`: no refresher runs).
    dns: Option<(String, tokio::task::JoinHandle<()>)>,
}

/// Everything a (re)load changes, prepared (validated, bound, built) before anything runs,
/// so a reload is all or nothing.
struct Plan {
    /// Listeners that stay, with their new settings.
    reconfigure: Vec<(Arc<Listener>, config::Settings)>,
    /// New listeners, bound.
    start: Vec<(Arc<Listener>, Acceptor)>,
    /// Listeners the configuration no longer has.
    stop: Vec<Arc<Listener>>,
    /// A new admin listener (`Some(None)`: the admin listener goes away).
    admin: Option<Option<(SocketAddr, TcpListener)>>,
    /// A new DNS refresher (`Some(None)`: none is needed any more).
    dns: Option<Option<(String, Arc<upstreams_dns::Refresher>)>>,
}

/// Checks `new` against what runs and binds what it adds; any error leaves the proxy as it
/// was (the sockets bound so far close when the plan is dropped).
async fn prepare(
    proxy: &Arc<Proxy>,
    running: &Running,
    old: Option<&Config>,
    new: &Config,
) -> Result<Plan> {
    let current: HashMap<ListenAddr, Arc<Listener>> = proxy
        .listeners()
        .into_iter()
        .map(|l| (l.listen.clone(), l))
        .collect();
    let mut plan = Plan {
        reconfigure: Vec::new(),
        start: Vec::new(),
        stop: Vec::new(),
        admin: None,
        dns: None,
    };
    for l in &new.listeners {
        let settings = l.settings()?;
        match current.get(&settings.listen) {
            Some(listener) => plan.reconfigure.push((Arc::clone(listener), settings)),
            None => {
                let listen = settings.listen.clone();
                let acceptor =
                    Acceptor::bind(&listen).with_context(|| format!("listener {listen}"))?;
                let bound = acceptor.local()?;
                let listener = Listener::new(settings, bound)?;
                plan.start.push((listener, acceptor));
            }
        }
    }
    plan.stop = current
        .values()
        .filter(|l| !new.listeners.iter().any(|c| c.listen == l.listen))
        .cloned()
        .collect();
    let admin_now = running.admin.as_ref().map(|(addr, _)| *addr);
    if old.map(|o| o.admin) != Some(new.admin) || (new.admin.is_some() && admin_now.is_none()) {
        plan.admin = Some(match new.admin {
            Some(addr) => {
                let tcp = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin listener {addr}"))?;
                Some((addr, tcp))
            }
            None => None,
        });
    }
    // A refresher runs when some list names hosts; it is rebuilt when the `dns` setting
    // changes or when names first appear.
    let names = plan
        .reconfigure
        .iter()
        .any(|(_, s)| s.definition.needs_resolution())
        || plan.start.iter().any(|(l, _)| l.list.needs_resolution());
    let wanted = names.then(|| new.dns.clone().unwrap_or_else(|| "system".to_owned()));
    let now = running.dns.as_ref().map(|(dns, _)| dns.clone());
    if wanted != now {
        plan.dns = Some(match wanted {
            Some(dns) => {
                let servers = upstreams_dns::Nameservers::parse(&dns)
                    .with_context(|| format!("dns {dns:?}"))?;
                let limits = new
                    .listeners
                    .first()
                    .map(|l| l.settings())
                    .transpose()?
                    .map(|s| s.limits)
                    .unwrap_or_default();
                let refresher = upstreams_dns::Refresher::new(&servers, &limits)
                    .with_context(|| format!("dns {dns:?}"))?;
                Some((dns, Arc::new(refresher)))
            }
            None => None,
        });
    }
    Ok(plan)
}

/// Puts a prepared plan into service; nothing here can fail.
fn apply(proxy: &Arc<Proxy>, running: &mut Running, plan: Plan) {
    for (listener, settings) in plan.reconfigure {
        listener.reload(settings);
    }
    for (listener, acceptor) in plan.start {
        println!("listening {} -> {}", listener.bound, listener.list);
        tokio::spawn(Arc::clone(&listener).accept_loop(acceptor, Arc::clone(&proxy.sessions)));
        listener.start_checks();
        proxy
            .listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }
    if !plan.stop.is_empty() {
        let mut listeners = proxy.listeners.write().unwrap_or_else(|p| p.into_inner());
        for gone in &plan.stop {
            tracing::info!(listener = %gone.listen, "removed by reload; open sessions go on");
            gone.stop();
        }
        listeners.retain(|l| !plan.stop.iter().any(|g| Arc::ptr_eq(g, l)));
        proxy
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(plan.stop.iter().map(Arc::downgrade));
    }
    // Removed listeners whose last session ended are forgotten at each reload too.
    let _ = proxy.live_retired();
    if let Some(admin) = plan.admin {
        if let Some((_, task)) = running.admin.take() {
            task.abort();
        }
        if let Some((addr, tcp)) = admin {
            let bound = tcp
                .local_addr()
                .map_or_else(|_| addr.to_string(), |a| a.to_string());
            println!(
                "admin: http://{bound}/status  http://{bound}/metrics  http://{bound}/status.json"
            );
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the admin listener is reachable from other hosts: its pages show \
                    every upstream; bind it to a loopback address or firewall it");
            }
            let app = admin::router(Arc::clone(proxy));
            let task = tokio::spawn(admin::serve(tcp, app));
            running.admin = Some((addr, task));
        }
    }
    if let Some(dns) = plan.dns {
        if let Some((_, task)) = running.dns.take() {
            task.abort();
        }
        if let Some((setting, refresher)) = dns {
            let proxy = Arc::clone(proxy);
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    for l in proxy.listeners() {
                        refresher.refresh(&l.list).await;
                    }
                }
            });
            running.dns = Some((setting, task));
        }
    }
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
    use super::net::{Acceptor, ListenAddr, CLIENT_BACKLOG};
    use std::net::TcpStream;
    use std::time::Duration;

    /// A burst of clients larger than tokio's default backlog (128) all get connected while
    /// nobody accepts: the kernel completes their handshakes into the larger queue. (With a
    /// backlog of 128, 129 of 200 connected.)
    #[tokio::test]
    async fn a_burst_beyond_the_default_backlog_is_queued() {
        let listener = Acceptor::bind(&ListenAddr::Tcp("127.0.0.1:0".parse().expect("address")))
            .expect("bind");
        let Ok(ListenAddr::Tcp(addr)) = listener.local() else {
            panic!("not a TCP listener");
        };
        let burst = 300;
        assert!(burst < CLIENT_BACKLOG as usize);
        let connected = (0..burst)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
            .filter(Result::is_ok)
            .count();
        assert_eq!(connected, burst);
    }
}
