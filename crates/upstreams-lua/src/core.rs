//! What a list and every upstream wrapper taken from it share: the core list, the queue of
//! watch events waiting for Lua callbacks, and the list's handle on the FFI path. A leaf of
//! the Lua layer (the list and the upstream wrappers both hold it).

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use mlua::{AnyUserData, Result, Table};
use upstreams::{Event, Events, Upstream, UpstreamList};

pub(crate) type Queued = (Event, Arc<Upstream>, u32);

/// What a list and every upstream wrapper taken from it share.
pub(crate) struct Core {
    pub(crate) list: Arc<UpstreamList>,
    /// Events the core reported, waiting to be handed to Lua callbacks. The core's watchers
    /// must be `Send + Sync` and may fire at any point inside a call; Lua callbacks run when
    /// that call is about to return, in order, with no Rust borrow held.
    pub(crate) queue: Arc<Mutex<VecDeque<Queued>>>,
    /// Bit per event that some Lua watcher wants (so unwatched events are not queued).
    pub(crate) wanted: Arc<AtomicU8>,
    /// A delivery is running: events raised by its callbacks are queued and delivered by
    /// that outermost call, in order, instead of by a nested one (no native recursion).
    pub(crate) delivering: Cell<bool>,
    /// The list's handle on the FFI path (`fast.rs`), once asked for.
    fast: Cell<Option<f64>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(h) = self.fast.get() {
            crate::fast::unregister_list(h);
        }
    }
}

/// The callbacks of a list live in its userdata's user value (a Lua table of `{mask, fn}`
/// pairs), where Lua's collector sees them: a callback that refers to its own list is then a
/// cycle the collector can free. Upstream wrappers keep their list's userdata in their own
/// user value, for the same reason.
pub(crate) fn callbacks(list: &AnyUserData) -> Result<Option<Table>> {
    list.user_value::<Option<Table>>()
}

impl Core {
    pub(crate) fn new(list: UpstreamList) -> Rc<Self> {
        let queue: Arc<Mutex<VecDeque<Queued>>> = Arc::default();
        let wanted = Arc::new(AtomicU8::new(0));
        let (q, w) = (Arc::clone(&queue), Arc::clone(&wanted));
        list.add_watcher(Events::ALL, move |event, up, errors| {
            if w.load(Ordering::Relaxed) & event.bit() == 0 {
                return;
            }
            if let Some(handle) = up.handle() {
                q.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((event, handle, errors));
            }
        });
        Rc::new(Self {
            list: Arc::new(list),
            queue,
            wanted,
            delivering: Cell::new(false),
            fast: Cell::new(None),
        })
    }

    /// The list's handle on the FFI path, registered at the first call.
    pub(crate) fn fast_handle(&self) -> Result<f64> {
        if let Some(h) = self.fast.get() {
            return Ok(h);
        }
        let h = crate::fast::register_list(Arc::clone(&self.list))
            .ok_or_else(|| mlua::Error::runtime("upstream_list: too many lists"))?;
        self.fast.set(Some(h));
        Ok(h)
    }

    /// Whether some Lua watcher was added (before that, nothing is ever queued).
    pub(crate) fn has_watchers(&self) -> bool {
        self.wanted.load(Ordering::Relaxed) != 0
    }
}
