//! Deciding whether a call succeeded, for the list's health.

use std::borrow::Cow;
use std::sync::Arc;

use tower::BoxError;
use upstreams::{FailKind, Upstream};

/// What a call's outcome means for the upstream that served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream did its job: `ok()`, and the latency feeds the estimate.
    Success,
    /// The upstream failed: `fail(kind, reason)` (counted in the error window; see
    /// [`Upstream::record_failure`]).
    Failure(FailKind, Cow<'static, str>),
}

/// Classifies outcomes: the answer feeds the list's health.
///
/// Implemented by [`ErrorsFail`] (any error fails, any response succeeds) and
/// [`HttpStatus`] (an error or a 5xx status fails).
pub trait Classify<Res> {
    /// The verdict on one call.
    fn classify(&self, result: Result<&Res, &BoxError>) -> Verdict;

    /// Marks a response with the upstream that served it, for a retry policy that must
    /// know it; the default leaves the response alone. [`HttpStatus`] adds a
    /// [`Served`](crate::Served) extension.
    fn stamp(&self, _response: &mut Res, _upstream: &Arc<Upstream>) {}
}

/// Any error is a failure; any response a success. The default of [`Balance`](crate::Balance).
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsFail;

impl<Res> Classify<Res> for ErrorsFail {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(e) => Verdict::Failure(FailKind::Other, Cow::Owned(e.to_string())),
        }
    }
}

/// HTTP: a transport error or a `5xx` status is a failure, anything else a success (a `4xx`
/// is the client's fault, not the upstream's).
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpStatus;

impl<B> Classify<http::Response<B>> for HttpStatus {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Verdict {
        match result {
            Ok(r) if r.status().is_server_error() => Verdict::Failure(
                FailKind::Other,
                Cow::Owned(format!("HTTP status {}", r.status().as_u16())),
            ),
            Ok(_) => Verdict::Success,
            Err(e) => Verdict::Failure(FailKind::Other, Cow::Owned(e.to_string())),
        }
    }

    fn stamp(&self, response: &mut http::Response<B>, upstream: &Arc<Upstream>) {
        response
            .extensions_mut()
            .insert(crate::route::Served(Arc::clone(upstream)));
    }
}
