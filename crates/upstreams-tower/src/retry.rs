//! Retries that never repeat an upstream.

use std::future::Ready;
use std::sync::Arc;

use tower::retry::Policy;
use tower::BoxError;
use upstreams::{Upstream, UpstreamList};

use crate::classify::{Classify, HttpStatus, Verdict};
use crate::error::UpstreamError;
use crate::route::{Attempts, ServedBy};

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
