//! Log lines under a flood: at most one line a period for one kind of event, the lines held
//! back counted in the next, so a storm of failed accepts or exhausted descriptors costs a
//! few lines a second of disk, never one per client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One kind of event's log budget.
pub(crate) struct RateLimited {
    period_ms: u64,
    /// Milliseconds since the Unix epoch before which no line is written.
    next_at: AtomicU64,
    /// Events not logged since the last line.
    held: AtomicU64,
}

impl RateLimited {
    pub(crate) const fn new(period: Duration) -> Self {
        Self {
            period_ms: period.as_millis() as u64,
            next_at: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(events held back since the last line)` when this event may be logged; `None`
    /// (and the event counted) when the period's line was written already.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let next = self.next_at.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_at
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimited;
    use std::time::Duration;

    #[test]
    fn one_line_a_period_and_the_rest_counted() {
        let log = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(log.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(log.allow(), None);
        }
        let now = RateLimited::new(Duration::ZERO);
        assert_eq!(now.allow(), Some(0));
        assert_eq!(now.allow(), Some(0));
    }
}
