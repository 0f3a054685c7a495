//! The errors the balance returns: nothing could be picked, or an upstream's service failed
//! (with the upstream, so a retry policy knows where not to go again).

use std::fmt;
use std::sync::Arc;

use tower::BoxError;
use upstreams::Upstream;

/// Nothing in the list could be picked (every upstream down, or every one tried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoUpstream;

impl fmt::Display for NoUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no upstream available")
    }
}

impl std::error::Error for NoUpstream {}

/// An inner service's error, with the upstream whose service returned it.
#[derive(Debug)]
pub struct UpstreamError {
    /// The upstream that failed.
    pub upstream: Arc<Upstream>,
    /// The inner service's error.
    pub source: BoxError,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream {}: {}", self.upstream.name(), self.source)
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
