//! tower integration for [`upstreams`]: balance requests over an [`UpstreamList`].
//!
//! - [`Balance`] is a [`tower::Service`] that picks an upstream of the list for every request
//!   and calls the inner service made for that upstream (one per upstream, kept in the
//!   list's per-upstream values, so a pick reaches its service without a map lookup). The
//!   outcome is fed back to the list: a [`Classify`] decides success or failure, and the
//!   response latency of a success feeds the list's latency estimate (what `p2c` compares).
//! - [`RetryPolicy`] is a [`tower::retry::Policy`] for HTTP requests: it retries idempotent
//!   requests only, and each retry goes to an upstream this request has not tried yet
//!   ([`UpstreamList::get_excluding`]); it never retries when no such upstream is left.
//! - [`discover`] drives a list from any [`Stream`](futures_core::Stream) of
//!   [`Change`]s (Kubernetes, Consul or a file watcher on one side, the list on the
//!   other), applying what arrives together in one membership swap.
//!
//! The balancing itself — rotations, health, the error window, revival — is the core's;
//! this crate is a thin shell around [`UpstreamList::get_excluding`], [`Picked::ok`] and
//! [`Picked::fail`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use upstreams::{Limits, UpstreamList};
//! use upstreams_tower::{Balance, HttpRoute, HttpStatus, RetryPolicy};
//!
//! # async fn run() -> Result<(), tower::BoxError> {
//! let list = Arc::new(UpstreamList::parse("p2c:127.0.0.1:8081,127.0.0.1:8082", 80, Limits::default())?);
//! // One inner service per upstream: here a function of the upstream's address.
//! let balance = Balance::new(Arc::clone(&list), |up: &upstreams::Upstream| {
//!     let addr = up.addr();
//!     tower::service_fn(move |_req: http::Request<String>| async move {
//!         Ok::<_, std::io::Error>(http::Response::new(format!("answered by {addr:?}")))
//!     })
//! })
//! .route(HttpRoute)
//! .classify(HttpStatus);
//! let mut client = ServiceBuilder::new()
//!     .retry(RetryPolicy::new(Arc::clone(&list), 3))
//!     .service(balance);
//! let response = client.ready().await?.call(http::Request::new(String::new())).await?;
//! # drop(response);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod balance;
mod classify;
mod discover;
mod error;
mod retry;
mod route;

pub use balance::{Balance, ResponseFuture};
pub use classify::{Classify, ErrorsFail, HttpStatus, Verdict};
pub use discover::{discover, from_tower};
pub use error::{NoUpstream, UpstreamError};
pub use retry::{RetryPolicy, RetrySafe};
pub use route::{Attempts, HeaderKey, HttpRoute, NoKey, Route, Served, ServedBy};

/// Errors of this crate's services: boxed, as tower's middleware expects.
pub use tower::BoxError;
#[doc(no_inline)]
pub use upstreams::{Change, Picked, Upstream, UpstreamList};
