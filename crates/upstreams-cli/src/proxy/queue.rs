//! The wait for a free upstream under `max_conns`: first in, first out, as HAProxy's queue.
//!
//! A client that finds every upstream full takes a ticket; only the first ticket may take a
//! slot a session frees, and a client arriving while others wait goes behind them instead of
//! taking that slot. Each waiter has its own wake-up, so a freed slot wakes one client, not
//! all of them. A waiter that leaves (served, out of time, or gone) wakes the next.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The clients waiting on one listener.
#[derive(Default)]
pub(crate) struct Queue {
    waiting: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    /// `waiting.len()`, read without the lock on every session's end.
    len: AtomicUsize,
    next: AtomicU64,
}

/// A place in the queue; leaving it (on drop) wakes the next client.
pub(crate) struct Ticket<'q> {
    queue: &'q Queue,
    number: u64,
    pub(crate) wake: Arc<Notify>,
}

impl Queue {
    /// Whether nobody waits (a new client may then pick at once).
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// A place at the end.
    pub(crate) fn join(&self) -> Ticket<'_> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let mut waiting = self.lock();
        waiting.push_back((number, Arc::clone(&wake)));
        self.len.store(waiting.len(), Ordering::Release);
        Ticket {
            queue: self,
            number,
            wake,
        }
    }

    /// Wakes the first waiter (a slot may be free); nothing when nobody waits.
    pub(crate) fn wake_first(&self) {
        if self.is_empty() {
            return;
        }
        if let Some((_, wake)) = self.lock().front() {
            wake.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<Notify>)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ticket<'_> {
    /// Whether this client is the first in line.
    pub(crate) fn is_first(&self) -> bool {
        self.queue
            .lock()
            .front()
            .is_some_and(|(n, _)| *n == self.number)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut waiting = self.queue.lock();
        if let Some(at) = waiting.iter().position(|(n, _)| *n == self.number) {
            waiting.remove(at);
        }
        self.queue.len.store(waiting.len(), Ordering::Release);
        // The next in line may find the slot this one did not take (or another freed one).
        if let Some((_, wake)) = waiting.front() {
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;

    #[test]
    fn tickets_are_served_in_arrival_order_and_leaving_moves_the_line() {
        let q = Queue::default();
        assert!(q.is_empty());
        let a = q.join();
        let b = q.join();
        let c = q.join();
        assert!(a.is_first() && !b.is_first() && !c.is_first());
        drop(b);
        assert!(a.is_first());
        drop(a);
        assert!(c.is_first());
        drop(c);
        assert!(q.is_empty());
    }
}
