//! Active health checks for upstream lists: a [`Checker`] probes every upstream of a list on
//! its own schedule (TCP connect, send/expect, HTTP) and drives the core's health through
//! [`Upstream::mark_offline`] and [`Upstream::mark_online`], so a dead backend leaves
//! selection before any client meets it.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use upstreams::{Limits, UpstreamList};
//! use upstreams_check::{CheckSettings, Checker, Probe};
//!
//! let list = Arc::new(UpstreamList::parse("10.0.0.1:6379,10.0.0.2:6379", 6379, Limits::default())?);
//! let settings = CheckSettings {
//!     probe: Probe::SendExpect { send: b"PING\r\n".to_vec(), expect: b"+PONG".to_vec() },
//!     ..CheckSettings::tcp()
//! };
//! let checker = Checker::new(Arc::clone(&list), settings)?;
//! tokio::spawn(Arc::clone(&checker).run());
//! # Ok(()) }
//! ```
//!
//! # The rules
//! - `fall` failed checks in a row take an alive upstream out (one `offline` event). It then
//!   stays out, whatever its revive time, until `rise` successful checks in a row bring it
//!   back (one `online` event).
//! - An upstream that clients' failures took out comes back as soon as `rise` checks in a
//!   row have passed, without waiting for its revive time.
//! - Checks of one upstream never overlap: the next starts `interval × (1 ± jitter)` after
//!   the previous one ended. A pending upstream (a name not resolved yet) is not checked.
//! - One task runs every check of a list ([`Checker::run`]); checks in progress are futures
//!   of that task, and one timer wakes it for the earliest due check, so a thousand
//!   upstreams do not make a thousand timers.
//! - When the checker stops ([`Checker::stop`]), the upstreams it holds out are released
//!   (brought back) so that no upstream stays out with nothing left to bring it back.
//!
//! The scheduling is written here rather than taken from a crate: it is a few lines over
//! tokio's timer and `FuturesUnordered`, and the rules above are the product.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod probe;
mod settings;
mod track;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use upstreams::{Host, State, Upstream, UpstreamList};

pub use settings::{
    parse_probe, CheckConfig, CheckSettings, Probe, StatusMatch, MAX_SECONDS, MAX_STREAK,
    MIN_INTERVAL,
};

use probe::Target;
use track::{Action, Track};

/// Errors of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of its range or does not fit the check's type.
    #[error("health check {what}: {why}")]
    Setting {
        /// The setting.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// How long the checks hold an upstream out: until they bring it back (a year stands for
/// "no revive time").
const HELD_OUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The latest check of one upstream, for status pages.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckStatus {
    /// The latest check passed.
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub duration: Duration,
    /// Successes (positive) or failures (negative) in a row.
    pub streak: i64,
    /// The checks hold the upstream out.
    pub checked_out: bool,
    /// Checks run.
    pub checks: u64,
    /// Checks failed.
    pub failures: u64,
}

/// One upstream's place in the schedule.
struct Slot {
    up: Arc<Upstream>,
    track: Track,
    due: Instant,
    running: bool,
    status: Option<CheckStatus>,
}

/// Checks the upstreams of one list. Build with [`Checker::new`], run [`Checker::run`] on a
/// tokio runtime, read results with [`Checker::status`].
pub struct Checker {
    list: Arc<UpstreamList>,
    settings: RwLock<Arc<CheckSettings>>,
    slots: Mutex<HashMap<usize, Slot>>,
    stop: CancellationToken,
}

fn key(up: &Arc<Upstream>) -> usize {
    // The map holds the Arc, so the address is not reused while the key is in use.
    Arc::as_ptr(up) as usize
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Checker {
    /// A checker of `list` with `settings` (validated).
    pub fn new(list: Arc<UpstreamList>, settings: CheckSettings) -> Result<Arc<Self>, Error> {
        settings.validate()?;
        Ok(Arc::new(Self {
            list,
            settings: RwLock::new(Arc::new(settings)),
            slots: Mutex::default(),
            stop: CancellationToken::new(),
        }))
    }

    /// The settings in use.
    pub fn settings(&self) -> Arc<CheckSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the settings (a reload); runs of results are kept, and each upstream's next
    /// check follows the new interval.
    pub fn set_settings(&self, settings: CheckSettings) -> Result<(), Error> {
        settings.validate()?;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
        Ok(())
    }

    /// The latest check of `up`; `None` before its first.
    pub fn status(&self, up: &Arc<Upstream>) -> Option<CheckStatus> {
        lock(&self.slots)
            .get(&key(up))
            .and_then(|s| s.status.clone())
    }

    /// Ends [`Checker::run`]; upstreams the checks hold out are brought back.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Checks until [`Checker::stop`].
    pub async fn run(self: Arc<Self>) {
        let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        let mut running = FuturesUnordered::new();
        let mut next_sync = Instant::now();
        loop {
            let now = Instant::now();
            let settings = self.settings();
            if now >= next_sync {
                self.sync(now, &settings, &mut heap);
                next_sync = now + settings.interval.min(Duration::from_secs(1));
            }
            // Start every due check whose upstream has none running.
            while let Some(&Reverse((due, k))) = heap.peek() {
                if due > now {
                    break;
                }
                heap.pop();
                let mut slots = lock(&self.slots);
                let Some(slot) = slots.get_mut(&k) else {
                    continue;
                };
                if slot.running || slot.due != due {
                    continue;
                }
                let Some(target) = target(&slot.up) else {
                    // Pending: nothing to check yet; look again an interval later.
                    slot.due = now + settings.interval;
                    heap.push(Reverse((slot.due, k)));
                    continue;
                };
                slot.running = true;
                let (up, settings) = (Arc::clone(&slot.up), Arc::clone(&settings));
                running.push(async move {
                    let started = Instant::now();
                    let result = tokio::time::timeout(
                        settings.timeout,
                        probe::run(&settings.probe, &target, up.name()),
                    )
                    .await
                    .unwrap_or_else(|_| Err("timeout".into()));
                    (k, result, started.elapsed())
                });
            }
            let wake = heap
                .peek()
                .map(|Reverse((due, _))| *due)
                .map_or(next_sync, |due| due.min(next_sync));
            tokio::select! {
                () = self.stop.cancelled() => break,
                Some((k, result, took)) = running.next(), if !running.is_empty() => {
                    self.record(k, result, took, &settings, &mut heap);
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        // Nothing will bring back what the checks hold out: release it.
        for slot in lock(&self.slots).values() {
            if slot.track.checked_out {
                slot.up.mark_online();
            }
        }
    }

    /// Follows the list's membership: new upstreams get a first check spread over one
    /// interval; removed ones are forgotten.
    fn sync(
        &self,
        now: Instant,
        settings: &CheckSettings,
        heap: &mut BinaryHeap<Reverse<(Instant, usize)>>,
    ) {
        let members = self.list.upstreams();
        let mut slots = lock(&self.slots);
        let mut present = std::collections::HashSet::with_capacity(members.len());
        for up in members {
            let k = key(&up);
            present.insert(k);
            slots.entry(k).or_insert_with(|| {
                let due = now + settings.interval.mul_f64(fastrand::f64());
                heap.push(Reverse((due, k)));
                Slot {
                    up,
                    track: Track::default(),
                    due,
                    running: false,
                    status: None,
                }
            });
        }
        slots.retain(|k, slot| present.contains(k) || slot.running);
    }

    fn record(
        &self,
        k: usize,
        result: Result<(), String>,
        took: Duration,
        settings: &CheckSettings,
        heap: &mut BinaryHeap<Reverse<(Instant, usize)>>,
    ) {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(&k) else {
            return;
        };
        slot.running = false;
        let ok = result.is_ok();
        let selectable = match slot.up.state() {
            State::Alive => Some(true),
            State::Offline { .. } | State::Probing => Some(false),
            // Pending or removed: the checks decide nothing.
            _ => None,
        };
        if let Some(selectable) = selectable {
            match slot
                .track
                .record(ok, selectable, settings.rise, settings.fall)
            {
                Action::TakeOut => {
                    if slot.up.mark_offline(HELD_OUT) {
                        tracing::info!(
                            upstream = slot.up.name(),
                            error = result.as_ref().err(),
                            "health check failed {} times; taken out",
                            settings.fall
                        );
                    }
                }
                Action::BringBack => {
                    if slot.up.mark_online() {
                        tracing::info!(
                            upstream = slot.up.name(),
                            "health check passed {} times; back",
                            settings.rise
                        );
                    }
                }
                Action::Keep => {}
            }
        }
        let previous = slot.status.take();
        let (checks, failures) = previous.map_or((0, 0), |p| (p.checks, p.failures));
        slot.status = Some(CheckStatus {
            ok,
            error: result.err(),
            duration: took,
            streak: slot.track.streak(),
            checked_out: slot.track.checked_out,
            checks: checks + 1,
            failures: failures + u64::from(!ok),
        });
        let spread = 1.0 + settings.jitter * (2.0 * fastrand::f64() - 1.0);
        slot.due = Instant::now() + settings.interval.mul_f64(spread);
        heap.push(Reverse((slot.due, k)));
    }
}

/// Where to check `up`: its socket path, or its current address (`None` while pending).
fn target(up: &Upstream) -> Option<Target> {
    match up.entry().host() {
        Host::Unix(path) => Some(Target::Unix(path.clone())),
        _ => up.addr().map(Target::Tcp),
    }
}
