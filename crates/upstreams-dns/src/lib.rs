//! The DNS shell of `upstreams` (SPEC.md §6): resolves the names of a list (A/AAAA) and its
//! SRV entries with `hickory-resolver`, re-resolves them lazily, and hands the answers to the
//! core through [`set_addresses`](upstreams::UpstreamList::set_addresses) and
//! [`set_srv_targets`](upstreams::UpstreamList::set_srv_targets).
//!
//! The core decides *what* an answer means (pending → alive, addresses that persist keep
//! their error counts, targets that vanish are drained); this crate decides *when* to ask:
//!
//! 1. a name never resolved is resolved at the first [`Refresher::refresh`];
//! 2. then again every `lazy_resolve_time` (+0–10 % jitter);
//! 3. and when the core asks (the first failure of an error window, going offline), but never
//!    more often than `resolve_min_interval` (clamped to `revive_time`) per upstream.
//!
//! A failed, timed-out, NXDOMAIN or empty answer changes nothing: the last good addresses and
//! members stay. Queries honour `dns_timeout` and `dns_retransmits` from the list's limits.
//! Time comes from the list's own clock, so a manual clock drives the schedule in tests.
//!
//! ```no_run
//! use std::sync::Arc;
//! use upstreams::{Limits, UpstreamList};
//! use upstreams_dns::{Nameservers, Refresher};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let list = Arc::new(UpstreamList::parse("redis.internal:6379,service=fuzzy+example.com", 11335, Limits::default())?);
//! let refresher = Refresher::new(&Nameservers::parse("127.0.0.1:5353")?, &list.limits())?;
//! refresher.refresh(&list).await;               // first resolution
//! tokio::spawn(refresher.run(vec![list.clone()], std::time::Duration::from_secs(1)));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod resolver;
mod schedule;

pub use resolver::{Error, LookupFailure, Nameservers, Resolver};
pub use schedule::{resolve_blocking, Refresher, Report};
