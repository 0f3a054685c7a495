//! What a request tells the balance, and retries that never repeat an upstream.

use std::future::Ready;
use std::sync::Arc;

use http::header::HeaderName;
use tower::retry::Policy;
use tower::BoxError;
use upstreams::{Upstream, UpstreamList};

use crate::balance::UpstreamError;
use crate::classify::{Classify, HttpStatus, Verdict};

/// What [`Balance`](crate::Balance) reads from a request: the key a hashed rotation hashes,
/// and the upstreams this request already tried (kept out of its pick).
pub trait Route<Req> {
    /// The request's hash key; empty for none (non-hashed rotations ignore it).
    fn key<'a>(&self, _req: &'a Req) -> &'a [u8] {
        &[]
    }

    /// The upstreams this request has tried, the latest last.
    fn tried<'a>(&self, _req: &'a Req) -> &'a [Arc<Upstream>] {
        &[]
    }
}

/// No key, no attempts: for any request type.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKey;

impl<Req> Route<Req> for NoKey {}

/// A key computed by a function of the request (`fn(&Req) -> &[u8]`).
impl<Req> Route<Req> for fn(&Req) -> &[u8] {
    fn key<'a>(&self, req: &'a Req) -> &'a [u8] {
        self(req)
    }
}

/// HTTP requests without a key: reads the [`Attempts`] a [`RetryPolicy`] records.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRoute;

impl<B> Route<http::Request<B>> for HttpRoute {
    fn tried<'a>(&self, req: &'a http::Request<B>) -> &'a [Arc<Upstream>] {
        attempts_of(req)
    }
}

/// HTTP requests keyed by a header's value (no header: no key), with the [`Attempts`] a
/// [`RetryPolicy`] records.
#[derive(Debug, Clone)]
pub struct HeaderKey(pub HeaderName);

impl<B> Route<http::Request<B>> for HeaderKey {
    fn key<'a>(&self, req: &'a http::Request<B>) -> &'a [u8] {
        req.headers().get(&self.0).map_or(&[], |v| v.as_bytes())
    }

    fn tried<'a>(&self, req: &'a http::Request<B>) -> &'a [Arc<Upstream>] {
        attempts_of(req)
    }
}

fn attempts_of<B>(req: &http::Request<B>) -> &[Arc<Upstream>] {
    req.extensions()
        .get::<Attempts>()
        .map_or(&[], |a| a.0.as_slice())
}

/// The upstreams a request was sent to, in order: a request extension kept by
/// [`RetryPolicy`] and read by [`HttpRoute`] / [`HeaderKey`].
#[derive(Debug, Clone, Default)]
pub struct Attempts(pub Vec<Arc<Upstream>>);

/// The upstream that served a response: a response extension added by
/// [`HttpStatus`](crate::HttpStatus) (and by any [`Classify::stamp`] that wants it).
#[derive(Debug, Clone)]
pub struct Served(pub Arc<Upstream>);

/// A request extension saying that the request may be sent again although its method is
/// not idempotent (the application knows it is safe, e.g. a POST with an idempotency key).
#[derive(Debug, Clone, Copy, Default)]
pub struct RetrySafe;

/// A [`tower::retry::Policy`] for HTTP: retries a failed request (as its [`Classify`] says)
/// on an upstream it has not tried, up to `attempts` tries in all.
///
/// - Only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are retried, and
///   requests that carry [`RetrySafe`]: a POST that timed out may have been applied, and
///   sending it again could apply it twice. Other requests are sent once.
/// - A retry goes to an upstream not yet tried by this request; when none is left (or
///   nothing is selectable), the failure is returned as it is, never a repeat.
/// - The body must be `Clone` (e.g. `Full<Bytes>`, `String`): a retry sends it again.
#[derive(Debug, Clone)]
pub struct RetryPolicy<C = HttpStatus> {
    list: Arc<UpstreamList>,
    attempts: usize,
    classify: C,
}

impl RetryPolicy<HttpStatus> {
    /// Up to `attempts` tries (the first included) over `list`, judged by [`HttpStatus`].
    pub fn new(list: Arc<UpstreamList>, attempts: usize) -> Self {
        Self {
            list,
            attempts: attempts.max(1),
            classify: HttpStatus,
        }
    }
}

impl<C> RetryPolicy<C> {
    /// Judges outcomes with `classify` (use the one the [`Balance`](crate::Balance) uses).
    pub fn classify<C2>(self, classify: C2) -> RetryPolicy<C2> {
        RetryPolicy {
            list: self.list,
            attempts: self.attempts,
            classify,
        }
    }

    fn untried_left(&self, tried: &[Arc<Upstream>]) -> bool {
        let snapshot = self.list.snapshot();
        snapshot
            .upstreams()
            .iter()
            .any(|u| u.is_alive() && !tried.iter().any(|t| Arc::ptr_eq(t, u)))
    }
}

fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

impl<B, Res, C> Policy<http::Request<B>, Res, BoxError> for RetryPolicy<C>
where
    B: Clone,
    C: Classify<Res>,
    Res: ServedBy,
{
    type Future = Ready<()>;

    fn retry(
        &mut self,
        req: &mut http::Request<B>,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        if self.classify.classify(result.as_ref()) == Verdict::Success {
            return None;
        }
        let served = match result {
            Ok(response) => response.served_by(),
            Err(e) => e.downcast_ref::<UpstreamError>().map(|e| &e.upstream),
        };
        // No upstream: nothing was picked (NoUpstream) — a retry could not do better.
        let served = Arc::clone(served?);
        let tried = req.extensions_mut().get_or_insert_default::<Attempts>();
        tried.0.push(served);
        if tried.0.len() >= self.attempts {
            return None;
        }
        let tried = tried.0.clone();
        self.untried_left(&tried).then(|| std::future::ready(()))
    }

    fn clone_request(&mut self, req: &http::Request<B>) -> Option<http::Request<B>> {
        if self.attempts <= 1
            || !(idempotent(req.method()) || req.extensions().get::<RetrySafe>().is_some())
        {
            return None;
        }
        let mut copy = http::Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

/// A response that can tell which upstream served it (see [`Served`]).
pub trait ServedBy {
    /// The upstream, when the response was stamped with it.
    fn served_by(&self) -> Option<&Arc<Upstream>>;
}

impl<B> ServedBy for http::Response<B> {
    fn served_by(&self) -> Option<&Arc<Upstream>> {
        self.extensions().get::<Served>().map(|s| &s.0)
    }
}
