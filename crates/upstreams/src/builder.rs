//! Building a list from typed entries, without writing a definition string.

use std::sync::Arc;

use crate::clock::Clock;
use crate::limits::Limits;
use crate::list::UpstreamList;
use crate::parse::{Definition, Entry};
use crate::rotation::Rotation;
use crate::Error;

/// Builds an [`UpstreamList`] from [`Entry`] values (see [`UpstreamList::builder`]).
///
/// ```
/// use std::net::SocketAddr;
/// use upstreams::{Entry, Limits, Rotation, UpstreamList};
///
/// let addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
/// let list = UpstreamList::builder()
///     .rotation(Rotation::P2c)
///     .entry(Entry::socket(addr).with_weight(2))
///     .entry(Entry::named("redis-b.internal", 6379).unwrap())
///     .entry(Entry::unix("/run/redis/redis.sock").unwrap())
///     .limits(Limits::default().with_max_inflight(100))
///     .build()
///     .unwrap();
/// assert_eq!(list.len(), 3);
/// // The name is waiting for a resolver; the other two can be picked at once.
/// assert!(list.get(Rotation::P2c, b"").is_some());
/// ```
#[derive(Default)]
#[must_use]
pub struct ListBuilder {
    rotation: Option<Rotation>,
    entries: Vec<Entry>,
    limits: Limits,
    clock: Option<Arc<dyn Clock>>,
}

impl ListBuilder {
    /// The list's own rotation (a definition's prefix): `get` uses it whatever the caller
    /// asks; without it the caller's rotation is used.
    pub fn rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = Some(rotation);
        self
    }

    /// Adds one upstream.
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// Adds upstreams.
    pub fn entries(mut self, entries: impl IntoIterator<Item = Entry>) -> Self {
        self.entries.extend(entries);
        self
    }

    /// The limits (default: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Where the list's time comes from (default: the monotonic clock); a
    /// [`ManualClock`](crate::ManualClock) in tests.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The list. Fails on invalid limits, as [`UpstreamList::new`] does.
    pub fn build(self) -> Result<UpstreamList, Error> {
        let definition = Definition::from_entries(self.rotation, self.entries);
        match self.clock {
            Some(clock) => UpstreamList::with_clock(&definition, self.limits, clock),
            None => UpstreamList::new(&definition, self.limits),
        }
    }
}

impl std::fmt::Debug for ListBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListBuilder")
            .field("rotation", &self.rotation)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamList {
    /// A [`ListBuilder`]: typed entries instead of a definition string.
    pub fn builder() -> ListBuilder {
        ListBuilder::default()
    }
}
