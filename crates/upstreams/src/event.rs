//! Watch events (SPEC.md §5).
//!
//! Watchers are called synchronously, in registration order, after the change they report
//! and outside every internal lock, so a callback may call back into the list. A panicking
//! watcher is caught and does not disturb the list or the other watchers.
//!
//! Each transition is reported exactly once (the thread whose compare-and-swap made it
//! reports it). Two transitions raced from different threads may reach watchers in either
//! order; read [`Upstream::state`](crate::Upstream::state) for the current truth.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Something that happened to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// `ok()` was called.
    Success,
    /// A failure was counted by `fail()`.
    Failure,
    /// The upstream became selectable (revive, probe success, first resolution).
    Online,
    /// The upstream left selection.
    Offline,
}

impl Event {
    /// Every event, in the order rspamd lists them.
    pub const ALL: [Event; 4] = [Self::Success, Self::Failure, Self::Online, Self::Offline];

    /// The event's name as the Lua API spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }

    /// The event's bit in an [`Events`] mask (`Events::bits`): 1, 2, 4, 8 in the order of
    /// [`Event::ALL`]. Shells that keep a mask of their own use it rather than a copy.
    pub const fn bit(self) -> u8 {
        match self {
            Self::Success => 1,
            Self::Failure => 2,
            Self::Online => 4,
            Self::Offline => 8,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Event {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| crate::Error::UnknownEvent(s.chars().take(64).collect()))
    }
}

/// A set of events a watcher subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Events(u8);

impl Events {
    /// No event.
    pub const NONE: Events = Events(0);
    /// Every event.
    pub const ALL: Events = Events(15);

    /// The mask as bits ([`Event::bit`] of each event it holds).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether `event` is in the set.
    pub fn contains(self, event: Event) -> bool {
        self.0 & event.bit() != 0
    }

    /// The set with `event` added.
    #[must_use]
    pub fn with(self, event: Event) -> Self {
        Self(self.0 | event.bit())
    }
}

impl From<Event> for Events {
    fn from(event: Event) -> Self {
        Self(event.bit())
    }
}

impl FromIterator<Event> for Events {
    fn from_iter<I: IntoIterator<Item = Event>>(iter: I) -> Self {
        iter.into_iter().fold(Self::NONE, Self::with)
    }
}

/// A watcher's callback: the event, the upstream (`U`: the core's `Upstream`), its error
/// count at that moment. Generic so that this module needs nothing of the others.
pub(crate) type Callback<U> = dyn Fn(Event, &U, u32) + Send + Sync;

struct Watcher<U: ?Sized> {
    events: Events,
    callback: Box<Callback<U>>,
}

/// The watchers of one list; adding is rare, emitting reads a snapshot without locking.
pub(crate) struct Watchers<U: ?Sized> {
    list: ArcSwap<Vec<Arc<Watcher<U>>>>,
}

impl<U: ?Sized> Default for Watchers<U> {
    fn default() -> Self {
        Self {
            list: ArcSwap::default(),
        }
    }
}

impl<U: ?Sized> fmt::Debug for Watchers<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Watchers({})", self.list.load().len())
    }
}

impl<U: ?Sized> Watchers<U> {
    pub(crate) fn add(&self, events: Events, callback: Box<Callback<U>>) {
        let watcher = Arc::new(Watcher { events, callback });
        self.list.rcu(|current| {
            let mut next = Vec::clone(current);
            next.push(Arc::clone(&watcher));
            next
        });
    }

    pub(crate) fn emit(&self, event: Event, upstream: &U, errors: u32) {
        let list = self.list.load();
        for watcher in list.iter().filter(|w| w.events.contains(event)) {
            // A watcher's panic is its own problem: the list carries on.
            let _ = catch_unwind(AssertUnwindSafe(|| {
                (watcher.callback)(event, upstream, errors);
            }));
        }
    }
}
