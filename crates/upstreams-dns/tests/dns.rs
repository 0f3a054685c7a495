//! The DNS layer against a real DNS server on 127.0.0.1 (hickory-server, in process, on an
//! ephemeral port, zone changed at runtime). Bounded: every test finishes in seconds.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use upstreams::{
    Definition, Event, Events, FailKind, Limits, ManualClock, Rotation, State, UpstreamList,
};
use upstreams_dns::{resolve_blocking, Nameservers, Refresher};

type Zone = Arc<InMemoryZoneHandler<TokioRuntimeProvider>>;

struct Dns {
    addr: SocketAddr,
    zone: Zone,
    server: Server<Catalog>,
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

impl Dns {
    async fn start() -> Self {
        let origin = name("test.");
        let mut records = BTreeMap::new();
        let soa = Record::from_rdata(
            origin.clone(),
            60,
            RData::SOA(SOA::new(
                name("ns.test."),
                name("admin.test."),
                1,
                60,
                60,
                60,
                0,
            )),
        );
        let mut set = RecordSet::new(origin.clone(), RecordType::SOA, 1);
        set.insert(soa, 1);
        records.insert(RrKey::new(LowerName::new(&origin), RecordType::SOA), set);
        let zone: Zone = Arc::new(
            InMemoryZoneHandler::new(origin.clone(), records, ZoneType::Primary, AxfrPolicy::Deny)
                .unwrap(),
        );
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        // UDP and TCP on the same ephemeral port; another process may hold the TCP side.
        let (udp, tcp, addr) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                break (udp, tcp, addr);
            }
        };
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        Self { addr, zone, server }
    }

    /// Replaces the RRset of `owner`/`rtype` with `data` (empty: removes it).
    async fn set(&self, owner: &str, rtype: RecordType, data: Vec<RData>) {
        let owner = name(owner);
        let key = RrKey::new(LowerName::new(&owner), rtype);
        let mut records = self.zone.records_mut().await;
        if data.is_empty() {
            records.remove(&key);
            return;
        }
        let mut set = RecordSet::new(owner.clone(), rtype, 1);
        for rdata in data {
            set.insert(Record::from_rdata(owner.clone(), 1, rdata), 1);
        }
        records.insert(key, Arc::new(set));
    }

    async fn a(&self, owner: &str, ips: &[&str]) {
        let data = ips
            .iter()
            .map(|ip| match ip.parse::<IpAddr>().unwrap() {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            })
            .collect::<Vec<_>>();
        let (v4, v6): (Vec<RData>, Vec<RData>) =
            data.into_iter().partition(|d| matches!(d, RData::A(_)));
        self.set(owner, RecordType::A, v4).await;
        self.set(owner, RecordType::AAAA, v6).await;
    }

    async fn srv(&self, owner: &str, targets: &[(u16, u16, u16, &str)]) {
        let data = targets
            .iter()
            .map(|&(prio, weight, port, target)| {
                RData::SRV(SRV::new(prio, weight, port, name(target)))
            })
            .collect();
        self.set(owner, RecordType::SRV, data).await;
    }

    fn servers(&self) -> Nameservers {
        Nameservers::Explicit(vec![self.addr])
    }
}

fn limits() -> Limits {
    Limits::default()
        .with_seed(Some(1))
        .with_dns_timeout(Duration::from_millis(300))
        .with_dns_retransmits(1)
        .with_lazy_resolve_time(Duration::from_secs(100))
        .with_resolve_min_interval(Duration::from_secs(10))
        .with_revive_jitter(0.0)
}

fn list(def: &str, port: u16) -> (Arc<UpstreamList>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1000)));
    let def = Definition::parse(def, port).unwrap();
    let list = UpstreamList::with_clock(&def, limits(), clock.clone()).unwrap();
    (Arc::new(list), clock)
}

fn addrs(list: &UpstreamList, name: &str) -> Vec<String> {
    list.find(name)
        .unwrap()
        .addrs()
        .iter()
        .map(|(a, _)| a.to_string())
        .collect()
}

fn log(list: &UpstreamList) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    list.add_watcher(Events::ALL, move |e: Event, up: &upstreams::Upstream, _| {
        if e == Event::Online || e == Event::Offline {
            sink.lock().unwrap().push(format!("{e} {}", up.name()));
        }
    });
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_38_names_resolve_and_come_online_numeric_never_queried() {
    let dns = Dns::start().await;
    dns.a("redis.test.", &["10.0.0.1", "::1", "10.0.0.2"]).await;
    let (list, _) = list("redis.test:6379,127.0.0.1,/run/x.sock", 11333);
    let events = log(&list);
    assert_eq!(
        list.find("redis.test:6379").unwrap().state(),
        State::Pending
    );
    let r = Refresher::new(&dns.servers(), &list.limits()).unwrap();
    let report = r.refresh(&list).await;
    assert_eq!(report.queried, 1, "only the name is queried: {report:?}");
    assert_eq!(report.failed, 0);
    assert_eq!(
        addrs(&list, "redis.test:6379"),
        ["10.0.0.1:6379", "10.0.0.2:6379", "[::1]:6379"]
    );
    assert!(list.find("redis.test:6379").unwrap().is_alive());
    assert_eq!(*events.lock().unwrap(), ["online redis.test:6379"]);
    // Nothing is due until the lazy interval: a second pass sends nothing.
    assert_eq!(r.refresh(&list).await.queried, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_39_lazy_interval_and_failure_triggers_with_min_interval() {
    let dns = Dns::start().await;
    dns.a("svc.test.", &["10.0.0.1"]).await;
    let (list, clock) = list("svc.test:80,127.0.0.9:80", 0);
    let r = Refresher::new(&dns.servers(), &list.limits()).unwrap();
    r.refresh(&list).await;
    let up = list.find("svc.test:80").unwrap();
    up.record_failure(FailKind::Address, "refused"); // errors of 10.0.0.1 = 1
    dns.a("svc.test.", &["10.0.0.1", "10.0.0.7"]).await;
    // A failure asks for re-resolution, but not before resolve_min_interval (10 s).
    clock.advance(Duration::from_secs(5));
    assert_eq!(r.refresh(&list).await.queried, 0, "rate-limited");
    clock.advance(Duration::from_secs(5));
    let report = r.refresh(&list).await;
    assert_eq!((report.queried, report.changed), (1, 1));
    assert_eq!(
        up.addrs(),
        [
            ("10.0.0.1:80".parse().unwrap(), 1),
            ("10.0.0.7:80".parse().unwrap(), 0)
        ],
        "errors kept for the address that stayed"
    );
    // The lazy interval (100 s + up to 10 %) re-resolves without any failure.
    dns.a("svc.test.", &["10.0.0.8"]).await;
    clock.advance(Duration::from_secs(99));
    assert_eq!(r.refresh(&list).await.queried, 0);
    clock.advance(Duration::from_secs(12));
    assert_eq!(r.refresh(&list).await.queried, 1);
    assert_eq!(addrs(&list, "svc.test:80"), ["10.0.0.8:80"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_39_failed_answers_keep_addresses() {
    let mut dns = Dns::start().await;
    dns.a("keep.test.", &["10.0.0.1"]).await;
    let (list, clock) = list("keep.test:80,127.0.0.9:80", 0);
    let r = Refresher::new(&dns.servers(), &list.limits()).unwrap();
    r.refresh(&list).await;
    // NXDOMAIN: kept.
    dns.a("keep.test.", &[]).await;
    clock.advance(Duration::from_secs(200));
    let report = r.refresh(&list).await;
    assert_eq!((report.queried, report.failed), (1, 1));
    assert_eq!(addrs(&list, "keep.test:80"), ["10.0.0.1:80"]);
    // Server stopped: kept, and the upstream stays selectable.
    dns.server.shutdown_gracefully().await.unwrap();
    clock.advance(Duration::from_secs(200));
    let started = Instant::now();
    let report = r.refresh(&list).await;
    assert_eq!((report.queried, report.failed), (1, 1));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(addrs(&list, "keep.test:80"), ["10.0.0.1:80"]);
    let picks: Vec<String> = (0..4)
        .map(|_| {
            list.get(Rotation::RoundRobin, b"")
                .unwrap()
                .name()
                .to_owned()
        })
        .collect();
    assert!(picks.contains(&"keep.test:80".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_39_timeouts_are_bounded_by_dns_timeout_and_retransmits() {
    // A server that receives and never answers (black hole) on loopback.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let servers = Nameservers::Explicit(vec![silent.local_addr().unwrap()]);
    let (list, _) = list("slow.test:80", 0);
    let r = Refresher::new(&servers, &list.limits()).unwrap();
    let started = Instant::now();
    let report = r.refresh(&list).await;
    let took = started.elapsed();
    assert_eq!((report.queried, report.failed), (1, 1));
    // dns_timeout 300 ms × (1 retransmit + 1), with scheduling slack.
    assert!(took < Duration::from_millis(600 + 700), "took {took:?}");
    assert_eq!(list.find("slow.test:80").unwrap().state(), State::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_41_srv_members_join_drain_and_survive_empty_answers() {
    let dns = Dns::start().await;
    dns.srv(
        "_fuzzy._tcp.test.",
        &[(10, 5, 1001, "a.test."), (20, 0, 1002, "b.test.")],
    )
    .await;
    dns.a("a.test.", &["10.1.0.1"]).await;
    dns.a("b.test.", &["10.1.0.2"]).await;
    dns.a("c.test.", &["10.1.0.3"]).await;
    let (list, clock) = list("master-slave:service=fuzzy+test", 0);
    let events = log(&list);
    let r = Refresher::new(&dns.servers(), &list.limits()).unwrap();
    let report = r.refresh(&list).await;
    assert_eq!(
        report.queried, 3,
        "SRV, then both targets in the same pass: {report:?}"
    );
    let names: Vec<String> = list
        .upstreams()
        .iter()
        .map(|u| u.name().to_owned())
        .collect();
    assert_eq!(names, ["a.test:1001", "b.test:1002"]);
    assert_eq!(addrs(&list, "a.test:1001"), ["10.1.0.1:1001"]);
    assert_eq!(
        list.get(Rotation::MasterSlave, b"").unwrap().name(),
        "a.test:1001",
        "SRV priority"
    );
    // b disappears, c joins.
    dns.srv(
        "_fuzzy._tcp.test.",
        &[(10, 5, 1001, "a.test."), (20, 1, 1003, "c.test.")],
    )
    .await;
    clock.advance(Duration::from_secs(200));
    r.refresh(&list).await;
    let names: Vec<String> = list
        .upstreams()
        .iter()
        .map(|u| u.name().to_owned())
        .collect();
    assert_eq!(names, ["a.test:1001", "c.test:1003"]);
    assert_eq!(
        *events.lock().unwrap(),
        [
            "online a.test:1001",
            "online b.test:1002",
            "offline b.test:1002",
            "online c.test:1003"
        ]
    );
    // An empty answer (record gone) keeps the members.
    dns.srv("_fuzzy._tcp.test.", &[]).await;
    clock.advance(Duration::from_secs(200));
    let report = r.refresh(&list).await;
    assert!(report.failed >= 1);
    assert_eq!(list.upstreams().len(), 2);
    assert!(list.get(Rotation::RoundRobin, b"").is_some());
}

#[test]
fn blocking_convenience_without_a_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dns = runtime.block_on(async {
        let dns = Dns::start().await;
        dns.a("block.test.", &["10.9.9.9"]).await;
        dns
    });
    let def = Definition::parse("block.test:25", 0).unwrap();
    let list = UpstreamList::new(&def, limits()).unwrap();
    let report = resolve_blocking(&list, &dns.servers()).unwrap();
    assert_eq!(report.queried, 1);
    assert_eq!(addrs(&list, "block.test:25"), ["10.9.9.9:25"]);
    drop(dns);
}

#[test]
fn nameserver_strings() {
    assert_eq!(Nameservers::parse("system").unwrap(), Nameservers::System);
    assert_eq!(
        Nameservers::parse("127.0.0.1:5353,[::1]:53,10.0.0.1").unwrap(),
        Nameservers::Explicit(vec![
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            "10.0.0.1:53".parse().unwrap()
        ])
    );
    assert!(Nameservers::parse("nope").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresher_serves_several_lists() {
    let dns = Dns::start().await;
    dns.a("one.test.", &["10.2.0.1"]).await;
    dns.a("two.test.", &["10.2.0.2"]).await;
    let (a, clock) = list("one.test:1", 0);
    let (b, _) = list("two.test:2", 0);
    let r = Refresher::new(&dns.servers(), &a.limits()).unwrap();
    assert_eq!(r.refresh(&a).await.queried, 1);
    assert_eq!(r.refresh(&b).await.queried, 1);
    // Neither list's schedule disturbs the other's: nothing is due on either.
    assert_eq!(r.refresh(&a).await.queried, 0);
    assert_eq!(r.refresh(&b).await.queried, 0);
    clock.advance(Duration::from_secs(200));
    assert_eq!(r.refresh(&a).await.queried, 1);
    assert_eq!(addrs(&b, "two.test:2"), ["10.2.0.2:2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_failures_are_typed() {
    use upstreams_dns::{Error, LookupFailure, Resolver};
    let mut dns = Dns::start().await;
    dns.a("here.test.", &["10.0.0.1"]).await;
    let limits = upstreams::Limits::default().with_dns_timeout(Duration::from_millis(300));
    let resolver = Resolver::new(&dns.servers(), &limits).unwrap();
    let failure = |e: Error| match e {
        Error::Lookup { failure, .. } => failure,
        other => panic!("not a lookup error: {other}"),
    };
    let missing = resolver.lookup_ips("missing.test").await.unwrap_err();
    assert_eq!(failure(missing), LookupFailure::NoSuchName);
    let no_srv = resolver.lookup_srv("here.test").await.unwrap_err();
    assert_eq!(failure(no_srv), LookupFailure::NoRecords);
    dns.server.shutdown_gracefully().await.unwrap();
    let gone = resolver.lookup_ips("other.test").await.unwrap_err();
    let kind = failure(gone);
    assert!(
        matches!(kind, LookupFailure::Timeout | LookupFailure::Other),
        "a silent server: {kind:?}"
    );
}
