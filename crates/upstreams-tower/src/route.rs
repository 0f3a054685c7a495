//! What a request and its response carry for the balance: the route (a hash key and the
//! upstreams already tried), the attempts a retry policy records, the upstream that served.
//! A leaf: the balance, the classifiers and the retry policy all read it.

use std::sync::Arc;

use http::header::HeaderName;
use upstreams::Upstream;

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

/// HTTP requests without a key: reads the [`Attempts`] a [`RetryPolicy`](crate::RetryPolicy) records.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRoute;

impl<B> Route<http::Request<B>> for HttpRoute {
    fn tried<'a>(&self, req: &'a http::Request<B>) -> &'a [Arc<Upstream>] {
        attempts_of(req)
    }
}

/// HTTP requests keyed by a header's value (no header: no key), with the [`Attempts`] a
/// [`RetryPolicy`](crate::RetryPolicy) records.
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
/// [`RetryPolicy`](crate::RetryPolicy) and read by [`HttpRoute`] / [`HeaderKey`].
#[derive(Debug, Clone, Default)]
pub struct Attempts(pub Vec<Arc<Upstream>>);

/// The upstream that served a response: a response extension added by
/// [`HttpStatus`](crate::HttpStatus) (and by any [`Classify::stamp`](crate::Classify::stamp) that wants it).
#[derive(Debug, Clone)]
pub struct Served(pub Arc<Upstream>);

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
