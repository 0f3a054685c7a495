//! Client-side load balancing over rspamd-style upstream lists.
//!
//! An *upstream list* is a pool of backends written as one line, such as
//! `round-robin:10.0.0.1:11333:5,redis.example:6379;[::1]:11333 /run/x.sock`. This crate is
//! the sans-IO core: it parses definitions, picks upstreams with every rotation rspamd has
//! (and a few it should have), tracks health from `ok()`/`fail()` reports, revives lazily,
//! and tells watchers. It does no I/O: time comes from an injected [`Clock`], and a resolver
//! shell hands addresses in with [`UpstreamList::set_addresses`].
//!
//! ```
//! use upstreams::{FailKind, Limits, Rotation, UpstreamList};
//!
//! let list = UpstreamList::parse("10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379", 6379, Limits::default())?;
//! // The same key always lands on the same backend, in every process.
//! let picked = list.get(Rotation::Hashed, b"user@example.com").expect("three alive");
//! let name = picked.name().to_owned();
//! picked.ok();
//! assert_eq!(list.get(Rotation::Hashed, b"user@example.com").unwrap().name(), name);
//!
//! // Retries go elsewhere.
//! let first = list.get(Rotation::RoundRobin, b"").unwrap();
//! let retry = list.get_except(&first, Rotation::RoundRobin, b"").unwrap();
//! assert_ne!(first.name(), retry.name());
//! first.fail(FailKind::Address, "connection refused");
//! retry.ok();
//! # Ok::<(), upstreams::Error>(())
//! ```
//!
//! # Where we differ from rspamd, deliberately
//! - Parsing is strict: a bad entry is an error naming it, not a log line and a lost backend.
//!   Ports out of range, `host:`, trailing junk and a fourth field are errors; bare IPv6 works;
//!   `sequential:` and `p2c:` prefixes are recognised.
//! - Round-robin is nginx's smooth weighted round-robin (5,1,1 → `a a b a c a a`); weight-0
//!   members of a mixed list are used when every weighted one is offline.
//! - Master-slave ties go to configuration order, stably, also after revivals.
//! - `random` is random (rspamd serves it with p2c); p2c compares one consistent unit.
//! - The default hash is `balanced` (see [`HashMode`]); `rspamd-ring` is bit-compatible.
//! - When everything is offline, one upstream at a time is probed with backoff instead of
//!   the whole pool being hammered, and a failed probe is retried later (rspamd forgets it).
//! - `online` fires on revival; `success` on every `ok()`; each transition fires once.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod builder;
mod clock;
mod error;
mod event;
mod health;
mod limits;
mod list;
mod member;
mod parse;
mod random;
mod rotation;
mod select;
mod sync;
mod tokens;
mod transition;
mod upstream;

pub use builder::ListBuilder;
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use error::Error;
pub use event::{Event, Events};
pub use health::State;
pub use limits::{parse_seconds, seconds, HashMode, Limits, LimitsConfig, MAX_CONFIG_SECONDS};
pub use list::{Picked, Snapshot, UpstreamList, MAX_EXCLUDED};
pub use member::{Change, MembershipChange, SrvTarget};
pub use parse::{Definition, Entry, Host, ParseError, ParseErrorKind};
pub use rotation::Rotation;
pub use upstream::{FailKind, Upstream};
