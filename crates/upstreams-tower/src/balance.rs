//! The [`Balance`] service.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::{BoxError, Service, ServiceExt};
use upstreams::{Picked, Rotation, Upstream, UpstreamList};

use crate::classify::{Classify, ErrorsFail, Verdict};
use crate::error::{NoUpstream, UpstreamError};
use crate::route::{NoKey, Route};

/// The inner service of one upstream, as the list carries it; a call clones it.
struct Endpoint<S>(S);

/// A [`Service`] that sends each request to an upstream picked from an [`UpstreamList`].
///
/// - `S` is the inner service, one per upstream, made by the function given to
///   [`Balance::new`] when an upstream joins the list (and dropped with it). It must be
///   `Clone + Send + Sync`, as tower's clients are (hyper's, tonic's channels; wrap
///   others in `tower::util::BoxCloneSyncService`): each call clones the picked upstream's
///   service and drives the clone to readiness, so backpressure is the picked service's
///   own, and a slow upstream never blocks calls that go elsewhere.
/// - `R` ([`Route`]) reads the hash key and the upstreams already tried from a request.
/// - `C` ([`Classify`]) turns each outcome into `ok` or `fail` for the list.
///
/// `poll_ready` is always ready: which upstream serves a request is decided in `call`
/// (the key is in the request). When nothing is selectable, the call fails at once with
/// [`NoUpstream`], a load shedder's answer, rather than waiting for an upstream to return.
/// Errors of the inner service come wrapped in an [`UpstreamError`] naming the upstream.
///
/// The list's per-upstream values ([`UpstreamList::set_values`]) hold the services: one
/// `Balance` type per list.
pub struct Balance<S, R = NoKey, C = ErrorsFail> {
    list: Arc<UpstreamList>,
    rotation: Rotation,
    route: R,
    classify: C,
    _service: PhantomData<fn() -> S>,
}

impl<S> Balance<S, NoKey, ErrorsFail>
where
    S: Send + Sync + 'static,
{
    /// A balance over `list`, with `make` building the service of each upstream (now for
    /// every current upstream, later for each that joins). The rotation is the list's own
    /// (its definition's prefix), else power of two choices.
    pub fn new<F>(list: Arc<UpstreamList>, make: F) -> Self
    where
        F: Fn(&Upstream) -> S + Send + Sync + 'static,
    {
        list.set_values(move |up| Endpoint(make(up)));
        Self {
            rotation: list.rotation().unwrap_or(Rotation::P2c),
            list,
            route: NoKey,
            classify: ErrorsFail,
            _service: PhantomData,
        }
    }
}

impl<S, R, C> Balance<S, R, C> {
    /// Picks with `rotation` when the list's definition names none.
    pub fn rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = self.list.rotation().unwrap_or(rotation);
        self
    }

    /// Reads keys and tried upstreams from requests with `route`.
    pub fn route<R2>(self, route: R2) -> Balance<S, R2, C> {
        Balance {
            list: self.list,
            rotation: self.rotation,
            route,
            classify: self.classify,
            _service: PhantomData,
        }
    }

    /// Classifies outcomes with `classify`.
    pub fn classify<C2>(self, classify: C2) -> Balance<S, R, C2> {
        Balance {
            list: self.list,
            rotation: self.rotation,
            route: self.route,
            classify,
            _service: PhantomData,
        }
    }

    /// The list balanced over.
    pub fn list(&self) -> &Arc<UpstreamList> {
        &self.list
    }
}

impl<S, R: Clone, C: Clone> Clone for Balance<S, R, C> {
    fn clone(&self) -> Self {
        Self {
            list: Arc::clone(&self.list),
            rotation: self.rotation,
            route: self.route.clone(),
            classify: self.classify.clone(),
            _service: PhantomData,
        }
    }
}

impl<S, R: fmt::Debug, C: fmt::Debug> fmt::Debug for Balance<S, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("list", &self.list)
            .field("rotation", &self.rotation)
            .field("route", &self.route)
            .field("classify", &self.classify)
            .finish()
    }
}

impl<S, Req, R, C> Service<Req> for Balance<S, R, C>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    R: Route<Req>,
    C: Classify<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let picked = {
            let key = self.route.key(&req);
            let tried = self.route.tried(&req);
            match tried {
                [] => self.list.get(self.rotation, key),
                // Every upstream tried (a policy that retries past them): any, again.
                _ => self
                    .list
                    .get_excluding(tried, self.rotation, key)
                    .or_else(|| self.list.get(self.rotation, key)),
            }
        };
        let Some(picked) = picked else {
            return ResponseFuture::failed(NoUpstream.into());
        };
        let Some(endpoint) = picked.value::<Endpoint<S>>() else {
            // Another type's values took the list: a setup error, not the upstream's fault.
            let error = format!(
                "upstream {} carries no service of this Balance (one Balance type per list)",
                picked.name()
            );
            picked.release();
            return ResponseFuture::failed(error.into());
        };
        let call = endpoint.0.clone().oneshot(req);
        // Only p2c reads latencies: other rotations do not pay for two clock reads.
        let started = (self.rotation == Rotation::P2c).then(Instant::now);
        ResponseFuture {
            state: State::Running { call },
            picked: Some(picked),
            started,
            classify: Some(self.classify.clone()),
        }
    }
}

pin_project! {
    /// The future of [`Balance::call`]: the picked upstream's call, then its verdict.
    pub struct ResponseFuture<S: Service<Req>, Req, C> {
        #[pin]
        state: State<S, Req>,
        picked: Option<Picked>,
        // When the call started, if its latency is wanted.
        started: Option<Instant>,
        classify: Option<C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req> {
        Running { #[pin] call: Oneshot<S, Req> },
        Failed { error: Option<BoxError> },
    }
}

impl<S: Service<Req>, Req, C> ResponseFuture<S, Req, C> {
    fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            picked: None,
            started: None,
            classify: None,
        }
    }
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.state.project() {
            StateProj::Failed { error } => {
                let error = error
                    .take()
                    .unwrap_or_else(|| "polled after completion".into());
                return Poll::Ready(Err(error));
            }
            StateProj::Running { call } => match call.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result.map_err(Into::into),
            },
        };
        let (Some(picked), Some(classify)) = (this.picked.take(), this.classify.take()) else {
            return Poll::Ready(Err("polled after completion".into()));
        };
        let verdict = classify.classify(result.as_ref());
        let result = match result {
            Ok(mut response) => {
                classify.stamp(&mut response, picked.upstream());
                Ok(response)
            }
            Err(source) => Err(UpstreamError {
                upstream: Arc::clone(picked.upstream()),
                source,
            }
            .into()),
        };
        match verdict {
            Verdict::Success => {
                if let Some(started) = this.started {
                    picked.record_latency(started.elapsed().as_secs_f64());
                }
                picked.ok();
            }
            Verdict::Failure(kind, reason) => picked.fail(kind, &reason),
        }
        Poll::Ready(result)
    }
}

impl<S: Service<Req>, Req, C> fmt::Debug for ResponseFuture<S, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("picked", &self.picked)
            .finish_non_exhaustive()
    }
}
