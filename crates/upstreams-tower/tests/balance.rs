//! Balance, RetryPolicy and discover with in-process services.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tower::{Service, ServiceBuilder, ServiceExt};
use upstreams::{Change, Entry, Limits, Rotation, Upstream, UpstreamList};
use upstreams_tower::{
    discover, Balance, BoxError, HeaderKey, HttpRoute, HttpStatus, NoUpstream, RetryPolicy,
    RetrySafe, Served, UpstreamError,
};

type Log = Arc<Mutex<Vec<String>>>;

fn list(def: &str) -> Arc<UpstreamList> {
    Arc::new(UpstreamList::parse(def, 80, Limits::default()).expect("list"))
}

/// Every upstream answers 200 with its name, except those named in `failing` (503).
fn balance(
    list: &Arc<UpstreamList>,
    failing: &'static [&'static str],
    log: Log,
) -> Balance<
    impl Service<
            http::Request<String>,
            Response = http::Response<String>,
            Error = BoxError,
            Future = impl Send,
        > + Clone
        + Send,
    HttpRoute,
    HttpStatus,
> {
    Balance::new(Arc::clone(list), move |up: &Upstream| {
        let name = up.name().to_owned();
        let log = Arc::clone(&log);
        tower::service_fn(move |_req: http::Request<String>| {
            let name = name.clone();
            log.lock().expect("log").push(name.clone());
            async move {
                let status = if failing.contains(&name.as_str()) {
                    503
                } else {
                    200
                };
                let response = http::Response::builder().status(status).body(name)?;
                Ok::<_, BoxError>(response)
            }
        })
    })
    .route(HttpRoute)
    .classify(HttpStatus)
}

/// One call through `client`, which must answer.
async fn send<S>(client: &mut S, req: http::Request<String>) -> http::Response<String>
where
    S: Service<http::Request<String>, Response = http::Response<String>, Error = BoxError>,
{
    client
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("call")
}

fn get() -> http::Request<String> {
    http::Request::get("/")
        .body(String::new())
        .expect("request")
}

#[tokio::test]
async fn retries_go_to_upstreams_not_tried_and_stop_when_none_is_left() {
    let list = list("round-robin:10.0.0.1:80,10.0.0.2:80,10.0.0.3:80,10.0.0.4:80");
    let failing = &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
    let log = Log::default();
    let mut client = ServiceBuilder::new()
        .retry(RetryPolicy::new(Arc::clone(&list), 4))
        .service(balance(&list, failing, Arc::clone(&log)));
    for _ in 0..20 {
        log.lock().expect("log").clear();
        let response = send(&mut client, get()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.body(), "10.0.0.4:80");
        let tries = log.lock().expect("log").clone();
        let distinct: HashSet<_> = tries.iter().collect();
        assert_eq!(distinct.len(), tries.len(), "no upstream twice: {tries:?}");
    }

    // Everything fails: four tries, each on another upstream, then the last 503.
    let list = list_all_failing();
    let log = Log::default();
    let mut client = ServiceBuilder::new()
        .retry(RetryPolicy::new(Arc::clone(&list), 10))
        .service(balance(&list, ALL, Arc::clone(&log)));
    let response = send(&mut client, get()).await;
    assert_eq!(response.status(), 503);
    let tries = log.lock().expect("log").clone();
    assert_eq!(tries.len(), 3, "one try per upstream: {tries:?}");
    assert_eq!(tries.iter().collect::<HashSet<_>>().len(), 3);
}

const ALL: &[&str] = &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];

fn list_all_failing() -> Arc<UpstreamList> {
    list("round-robin:10.0.0.1:80,10.0.0.2:80,10.0.0.3:80")
}

#[tokio::test]
async fn a_post_is_sent_once_unless_marked_safe() {
    let list = list_all_failing();
    let log = Log::default();
    let mut client = ServiceBuilder::new()
        .retry(RetryPolicy::new(Arc::clone(&list), 3))
        .service(balance(&list, ALL, Arc::clone(&log)));
    let post = http::Request::post("/")
        .body("payload".to_owned())
        .expect("request");
    let response = send(&mut client, post).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        log.lock().expect("log").len(),
        1,
        "a POST is never sent twice"
    );

    log.lock().expect("log").clear();
    let mut post = http::Request::post("/")
        .body("payload".to_owned())
        .expect("request");
    post.extensions_mut().insert(RetrySafe);
    let response = send(&mut client, post).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        log.lock().expect("log").len(),
        3,
        "marked safe: retried on every upstream"
    );
}

#[tokio::test]
async fn outcomes_feed_health_and_errors_name_the_upstream() {
    let list = Arc::new(
        UpstreamList::parse(
            "10.0.0.1:80,10.0.0.2:80",
            80,
            Limits::default().with_max_consecutive_errors(2),
        )
        .expect("list"),
    );
    let mut balance = Balance::new(Arc::clone(&list), |up: &Upstream| {
        let bad = up.name() == "10.0.0.1:80";
        tower::service_fn(move |_req: ()| async move {
            if bad {
                Err::<(), BoxError>("connection refused".into())
            } else {
                Ok(())
            }
        })
    })
    .rotation(Rotation::RoundRobin);
    let mut errors = 0;
    for _ in 0..10 {
        if let Err(e) = balance.ready().await.expect("ready").call(()).await {
            let e = e.downcast_ref::<UpstreamError>().expect("an UpstreamError");
            assert_eq!(e.upstream.name(), "10.0.0.1:80");
            assert!(e.to_string().contains("connection refused"), "{e}");
            errors += 1;
        }
    }
    assert_eq!(errors, 2, "two errors in a row took it out");
    let bad = list.find("10.0.0.1:80").expect("bad");
    assert!(!bad.is_alive());
    assert_eq!(bad.last_failure().as_deref(), Some("connection refused"));
    let good = list.find("10.0.0.2:80").expect("good");
    assert!(
        good.latency().is_none(),
        "only p2c times its calls (the one rotation that reads latencies)"
    );
    assert_eq!(good.inflight(), 0, "every pick ended");

    good.mark_offline(std::time::Duration::from_secs(60));
    bad.mark_offline(std::time::Duration::from_secs(60));
    let e = balance
        .ready()
        .await
        .expect("ready")
        .call(())
        .await
        .expect_err("nothing");
    assert!(e.downcast_ref::<NoUpstream>().is_some(), "{e}");
}

#[tokio::test]
async fn a_header_keys_the_hash_and_responses_say_who_served() {
    let list = list("hash:10.0.0.1:80,10.0.0.2:80,10.0.0.3:80,10.0.0.4:80");
    let mut balance = balance(&list, &[], Log::default())
        .route(HeaderKey(http::HeaderName::from_static("x-user")));
    for user in ["alice", "bob", "carol", "dave", "eve"] {
        let home = list.get(Rotation::Hashed, user.as_bytes()).expect("home");
        let home_name = home.name().to_owned();
        home.release();
        for _ in 0..3 {
            let req = http::Request::get("/")
                .header("x-user", user)
                .body(String::new());
            let response = balance
                .ready()
                .await
                .expect("ready")
                .call(req.expect("request"))
                .await
                .expect("call");
            assert_eq!(response.body(), &home_name);
            let served = response.extensions().get::<Served>().expect("stamped");
            assert_eq!(served.0.name(), home_name);
        }
    }
}

#[tokio::test]
async fn discovery_from_a_channel_drives_the_list() {
    let list = list("10.0.0.1:80");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Change>();
    let source = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let driver = {
        let list = Arc::clone(&list);
        tokio::spawn(async move { discover(&list, source).await })
    };
    let entry = |s: &str| Entry::socket(s.parse().expect("addr"));
    tx.send(Change::Insert(entry("10.0.0.2:80"))).expect("send");
    tx.send(Change::Insert(entry("10.0.0.3:80"))).expect("send");
    tx.send(Change::Remove("10.0.0.1:80".into())).expect("send");
    tx.send(upstreams_tower::from_tower(
        tower::discover::Change::Insert("10.0.0.4:80".into(), entry("10.0.0.4:80")),
    ))
    .expect("send");
    drop(tx);
    let changes = driver.await.expect("driver");
    let mut names: Vec<String> = list
        .upstreams()
        .iter()
        .map(|u| u.name().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
    assert_eq!(changes.removed, ["10.0.0.1:80"]);
    assert_eq!(changes.added.len(), 3);
}

#[tokio::test]
async fn joining_upstreams_get_their_service() {
    let list = list("round-robin:10.0.0.1:80");
    let log = Log::default();
    let mut client = balance(&list, &[], Arc::clone(&log));
    list.apply([Change::Insert(Entry::socket(
        "10.0.0.2:80".parse().expect("addr"),
    ))]);
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let response = send(&mut client, get()).await;
        seen.insert(response.into_body());
    }
    assert_eq!(seen.len(), 2, "the new upstream serves too: {seen:?}");
}

#[tokio::test]
async fn a_p2c_balance_feeds_the_latency_estimate() {
    let list = list("p2c:10.0.0.1:80,10.0.0.2:80");
    let mut balance = Balance::new(Arc::clone(&list), |_: &Upstream| {
        tower::service_fn(|_req: ()| async { Ok::<_, BoxError>(()) })
    });
    for _ in 0..4 {
        balance
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect("call");
    }
    assert!(list.upstreams().iter().any(|u| u.latency().is_some()));
    assert!(list.upstreams().iter().all(|u| u.inflight() == 0));
}
