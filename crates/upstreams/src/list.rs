//! The list: the membership snapshot, the pick entry points, `Picked` and `Snapshot`.

use std::any::Any;
use std::borrow::Borrow;
use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::clock::{Clock, MonotonicClock};
use crate::event::{Callback, Event, Events};
use crate::limits::Limits;
use crate::parse::Definition;
use crate::rotation::Rotation;
use crate::select::Members;
use crate::sync::{Mutex, MutexGuard, Ordering};
use crate::transition::{self, maintain};
use crate::upstream::{FailKind, Shared, TimeSource, Upstream, ValueMaker};
use crate::Error;

/// The most upstreams one [`UpstreamList::get_excluding`] keeps out of its pick.
pub const MAX_EXCLUDED: usize = 16;

/// An upstream list: parse a definition, pick upstreams, report outcomes.
///
/// Share it with `Arc`; every method takes `&self`. Picking is lock-free and does not
/// allocate; membership lives in one immutable snapshot swapped whole.
pub struct UpstreamList {
    shared: Arc<Shared>,
    /// The membership snapshot: members, the definition's rotation and entries, swapped
    /// whole (a reload is one swap).
    members: ArcSwap<Members>,
    /// Serialises membership writers (readers never take it).
    rebuild: Mutex<()>,
}

impl UpstreamList {
    /// Parses `definition` with `default_port` and builds a list with `limits` and the
    /// process's monotonic clock.
    pub fn parse(definition: &str, default_port: u16, limits: Limits) -> Result<Self, Error> {
        let def = Definition::parse(definition, default_port)?;
        Self::new(&def, limits)
    }

    /// Builds a list from a parsed definition with the monotonic clock.
    pub fn new(definition: &Definition, limits: Limits) -> Result<Self, Error> {
        Self::build(
            definition,
            limits,
            TimeSource::Monotonic(MonotonicClock::new()),
        )
    }

    /// Builds a list whose time comes from `clock` (a manual clock in tests).
    pub fn with_clock(
        definition: &Definition,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        Self::build(definition, limits, TimeSource::Injected(clock))
    }

    fn build(definition: &Definition, limits: Limits, clock: TimeSource) -> Result<Self, Error> {
        limits.validate()?;
        let entries = definition.entries();
        if entries.len() > crate::select::MAX_MEMBERS {
            return Err(Error::TooManyUpstreams(entries.len()));
        }
        let shared = Shared::new(limits, clock, entries.len());
        let upstreams: Vec<Arc<Upstream>> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| Upstream::new(e.clone(), i, 0, Arc::clone(&shared)))
            .collect();
        transition::count_initial(&shared, &upstreams);
        let mut members = Members::build(upstreams, shared.hash_mode);
        members.rotation = definition.rotation();
        members.entries = Arc::new(entries.to_vec());
        Ok(Self {
            shared,
            members: ArcSwap::from_pointee(members),
            rebuild: Mutex::new(()),
        })
    }

    /// The definition's entries, as the current snapshot carries them.
    pub(crate) fn definition_entries(&self) -> Arc<Vec<crate::parse::Entry>> {
        Arc::clone(&self.members.load().entries)
    }

    /// Serialises the writers of the membership (reloads, SRV answers, `apply`, drains).
    pub(crate) fn rebuild_lock(&self) -> MutexGuard<'_, ()> {
        self.rebuild.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn members_full(&self) -> Arc<Members> {
        self.members.load_full()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Publishes a new membership snapshot (one atomic swap).
    /// Publishes `members` with `definition`'s rotation and entries (a reload), or with the
    /// current ones (`None`: an SRV answer, a drain). Callers hold the rebuild lock.
    pub(crate) fn publish(&self, mut members: Members, definition: Option<&Definition>) {
        match definition {
            Some(def) => {
                members.rotation = def.rotation();
                members.entries = Arc::new(def.entries().to_vec());
            }
            None => {
                let current = self.members.load();
                members.rotation = current.rotation;
                members.entries = Arc::clone(&current.entries);
            }
        }
        // Relaxed: only compared for equality by picks; a pick that races a publish may see
        // either value, as it may load either snapshot.
        members.generation = self.shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.members.store(Arc::new(members));
    }

    /// The list's clock reading (what its revive deadlines are measured in); resolver shells
    /// schedule with it so a manual clock drives them too.
    pub fn now(&self) -> Duration {
        self.shared.now()
    }

    /// The rotation named by the definition's prefix, if any.
    pub fn rotation(&self) -> Option<Rotation> {
        self.members.load().rotation
    }

    /// The limits in force: those the list was built with, or the latest
    /// [`set_limits`](Self::set_limits).
    pub fn limits(&self) -> Arc<Limits> {
        self.shared.limits.load_full()
    }

    /// Replaces the limits of a live list (a configuration reload), keeping every upstream's
    /// health: error windows, offline deadlines and probes go on, and the new limits apply
    /// from the next failure, revival, probe, latency sample and pick. Three settings are
    /// fixed once the list exists and are left as they were: `hash_mode` (the members' tables
    /// are built for it), `seed` (the jitter generator is seeded with it), and the DNS
    /// settings (`dns_timeout`, `dns_retransmits`, `lazy_resolve_time`,
    /// `resolve_min_interval`, read by a resolver shell when it starts). Returns the names of
    /// those that differ in `limits` and so were not applied; an invalid `limits` changes
    /// nothing.
    pub fn set_limits(&self, limits: Limits) -> Result<Vec<&'static str>, Error> {
        limits.validate()?;
        let old = self.shared.limits.load_full();
        let mut kept = Vec::new();
        let mut limits = limits;
        macro_rules! fixed {
            ($($field:ident),*) => {$(
                if limits.$field != old.$field {
                    kept.push(stringify!($field));
                    limits.$field = old.$field.clone();
                }
            )*};
        }
        fixed!(
            hash_mode,
            seed,
            dns_timeout,
            dns_retransmits,
            lazy_resolve_time,
            resolve_min_interval
        );
        self.shared.publish_limits(limits);
        Ok(kept)
    }

    /// Whether some entry names a host or an SRV record: the list needs a resolver
    /// (`upstreams-dns`) before those members can be picked.
    pub fn needs_resolution(&self) -> bool {
        self.definition_entries()
            .iter()
            .any(|e| e.host().needs_resolution())
    }

    /// Number of configured upstreams.
    pub fn len(&self) -> usize {
        self.members.load().upstreams.len()
    }

    /// True when the list has no upstream (never after a successful parse).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of upstreams currently `Alive`.
    pub fn alive_count(&self) -> usize {
        self.shared.alive.load(Ordering::Relaxed)
    }

    /// Every configured upstream in configuration order (a view: retires nothing).
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.members.load().upstreams.to_vec()
    }

    /// The upstream named `name` (first in configuration order).
    pub fn find(&self, name: &str) -> Option<Arc<Upstream>> {
        self.members
            .load()
            .upstreams
            .iter()
            .find(|u| u.name() == name)
            .cloned()
    }

    /// Subscribes `callback` to `events`; it receives the event, the upstream and the
    /// upstream's error count at that moment.
    pub fn add_watcher<F>(&self, events: impl Into<Events>, callback: F)
    where
        F: Fn(Event, &Upstream, u32) + Send + Sync + 'static,
    {
        let callback: Box<Callback<Upstream>> = Box::new(callback);
        self.shared.watchers.add(events.into(), callback);
    }

    /// Makes the list carry a value per upstream (a connection pool, a client): `make` runs
    /// now for every upstream that has none yet, and later for each upstream that joins (a
    /// reload, an SRV answer, [`apply`](UpstreamList::apply)). A value lives as long as its
    /// upstream: a removed upstream drops it when its last [`Picked`] ends. Read it with
    /// [`Upstream::value`] — on a [`Picked`] too — without any lookup: it sits in the
    /// upstream itself, so a list without values pays nothing on the pick path.
    ///
    /// One value type per list: an upstream keeps the first value it was given. `make` runs
    /// while the membership is being rebuilt: it may read the list but must not change its
    /// membership (`update`, `apply`, `drain`), which would wait for itself.
    ///
    /// ```
    /// use upstreams::{Limits, Rotation, UpstreamList};
    ///
    /// #[derive(Debug)]
    /// struct Client(String);
    ///
    /// let list = UpstreamList::parse("10.0.0.1:80,10.0.0.2:80", 80, Limits::default())?;
    /// list.set_values(|up| Client(format!("http://{}", up.name())));
    /// let picked = list.get(Rotation::RoundRobin, b"").expect("an upstream");
    /// let client: &Client = picked.value().expect("a value");
    /// assert!(client.0.starts_with("http://10.0.0."));
    /// picked.ok();
    /// # Ok::<(), upstreams::Error>(())
    /// ```
    pub fn set_values<T, F>(&self, make: F)
    where
        T: Any + Send + Sync,
        F: Fn(&Upstream) -> T + Send + Sync + 'static,
    {
        let make: Arc<ValueMaker> = Arc::new(move |up: &Upstream| Box::new(make(up)) as _);
        {
            // Set before the walk: an upstream joining meanwhile gets its value either way.
            let _writer = self.rebuild_lock();
            *self
                .shared
                .values
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::clone(&make));
        }
        for up in self.members.load().upstreams.iter() {
            up.set_value(make(up));
        }
    }

    /// Picks with the list's own rotation when its definition named one, else `rotation`
    /// (rspamd's non-forced get). `key` matters for [`Rotation::Hashed`] only.
    pub fn get(&self, rotation: Rotation, key: &[u8]) -> Option<Picked> {
        let members = self.members.load();
        let rotation = members.rotation.unwrap_or(rotation);
        pick_from(&members, &self.shared, rotation, key, &[])
    }

    /// Picks with `rotation` whatever the definition's prefix says.
    pub fn get_forced(&self, rotation: Rotation, key: &[u8]) -> Option<Picked> {
        pick_from(&self.members.load(), &self.shared, rotation, key, &[])
    }

    /// Picks any upstream but `except` (for retries); returns `except` only when it is the
    /// one selectable upstream.
    pub fn get_except(&self, except: &Upstream, rotation: Rotation, key: &[u8]) -> Option<Picked> {
        let members = self.members.load();
        let rotation = members.rotation.unwrap_or(rotation);
        self.pick_in(&members, rotation, key, &[except])
            .or_else(|| {
                // Sequential's `None` is its end of round, not "nothing else selectable".
                let only_one = self.alive_count() <= 1;
                (rotation != Rotation::Sequential || only_one)
                    .then(|| pick_from(&members, &self.shared, rotation, key, &[]))
                    .flatten()
            })
    }

    /// Picks an upstream that is none of `tried` (a retry after several attempts), or
    /// `None` when every selectable upstream was tried: unlike [`get_except`] it never
    /// hands back an upstream already tried. The list's own rotation wins, as in [`get`];
    /// a hashed key moves to the next upstream of its own probe sequence. At most
    /// [`MAX_EXCLUDED`] upstreams are honoured: beyond that, the earliest tried may be
    /// picked again.
    ///
    /// [`get`]: UpstreamList::get
    /// [`get_except`]: UpstreamList::get_except
    pub fn get_excluding<U: Borrow<Upstream>>(
        &self,
        tried: &[U],
        rotation: Rotation,
        key: &[u8],
    ) -> Option<Picked> {
        let members = self.members.load();
        let rotation = members.rotation.unwrap_or(rotation);
        let tried = &tried[tried.len().saturating_sub(MAX_EXCLUDED)..];
        self.pick_in(&members, rotation, key, tried).or_else(|| {
            // Sequential's `None` may be the end of its round: the cursor wrapped, ask again.
            (rotation == Rotation::Sequential)
                .then(|| self.pick_in(&members, rotation, key, tried))
                .flatten()
        })
    }

    /// Token-bucket pick (SPEC.md item 27) for a request of `size` bytes.
    pub fn get_token_bucket(&self, size: usize) -> Option<Picked> {
        let members = self.members.load();
        if let Some(probe) = maintain(&members, &self.shared) {
            return Some(hand_out(&members.upstreams[probe], 0));
        }
        let now = self.shared.now_ns();
        let buckets = members
            .upstreams
            .iter()
            .map(|up| up.is_alive().then_some(&up.tokens));
        let (index, cost) = crate::tokens::pick(buckets, size, now)?;
        Some(hand_out(&members.upstreams[index], cost))
    }

    /// A pick from `members` that keeps the upstreams in `except` out.
    fn pick_in<U: Borrow<Upstream>>(
        &self,
        members: &Members,
        rotation: Rotation,
        key: &[u8],
        except: &[U],
    ) -> Option<Picked> {
        if except.is_empty() {
            return pick_from(members, &self.shared, rotation, key, &[]);
        }
        let mut slots = [0usize; MAX_EXCLUDED];
        let except = excluded_slots(members, except, &mut slots);
        pick_from(members, &self.shared, rotation, key, except)
    }

    /// A snapshot of the membership for a batch of lookups that need no in-flight
    /// accounting (sharding decisions, tools, benchmarks): its `select` costs no atomic
    /// read-modify-write at all when everything is healthy. Health stays live; membership is
    /// the one at the time of the call, so take a fresh snapshot now and then.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            members: self.members.load_full(),
            shared: Arc::clone(&self.shared),
        }
    }
    /// Hands a resolver's answer to the upstream named by `upstream` (A/AAAA addresses; the
    /// port is the upstream's). A pending upstream becomes alive and `online` fires; an empty
    /// answer keeps the current addresses. Returns whether the addresses changed.
    pub fn set_addresses(&self, upstream: &Upstream, ips: &[IpAddr]) -> bool {
        let changed = upstream.replace_addrs(ips);
        if !ips.is_empty() {
            transition::resolved(&self.shared, upstream);
        }
        changed
    }
}

/// A pick from `members`, keeping out the members whose slots are in `except`.
#[inline]
fn pick_from(
    members: &Members,
    shared: &Shared,
    rotation: Rotation,
    key: &[u8],
    except: &[usize],
) -> Option<Picked> {
    let cap = shared.max_inflight.load(Ordering::Relaxed);
    if cap != 0 {
        return pick_capped(members, shared, rotation, key, except, cap);
    }
    let index = choose(members, shared, rotation, key, except)?;
    Some(hand_out(&members.upstreams[index], 0))
}

/// [`UpstreamList::pick`] under `max_inflight`: the selection skips full upstreams, and the
/// in-flight count is taken with a compare-and-swap so that picks racing for an upstream's
/// last slot cannot both win it; the loser selects again (a few times, then finds nothing).
#[inline(never)]
fn pick_capped(
    members: &Members,
    shared: &Shared,
    rotation: Rotation,
    key: &[u8],
    except: &[usize],
    cap: u32,
) -> Option<Picked> {
    for _ in 0..4 {
        let index = choose(members, shared, rotation, key, except)?;
        let up = &members.upstreams[index];
        if up.try_start_pick(cap) {
            return Some(Picked {
                upstream: Arc::clone(up),
                tokens: 0,
                done: false,
            });
        }
    }
    None
}

fn hand_out(upstream: &Arc<Upstream>, tokens: u32) -> Picked {
    upstream.start_pick();
    Picked {
        upstream: Arc::clone(upstream),
        tokens,
        done: false,
    }
}

/// The index a pick returns: a due probe first, else the rotation's choice among the
/// members whose slots are not in `except`.
#[inline]
fn choose(
    members: &Members,
    shared: &Shared,
    rotation: Rotation,
    key: &[u8],
    except: &[usize],
) -> Option<usize> {
    if let Some(probe) = maintain(members, shared) {
        return Some(probe);
    }
    members.select(rotation, key, except, shared)
}

/// The slots in `members` of the upstreams in `except` (at most [`MAX_EXCLUDED`]), written
/// into `buf`; upstreams no longer members are left out.
#[inline]
fn excluded_slots<'b, U: Borrow<Upstream>>(
    members: &Members,
    except: &[U],
    buf: &'b mut [usize; MAX_EXCLUDED],
) -> &'b [usize] {
    let mut len = 0;
    for e in except.iter().take(MAX_EXCLUDED) {
        let e = e.borrow();
        let same = |u: &Arc<Upstream>| std::ptr::eq(u.as_ref(), e);
        // The slot is current unless membership changed under us; then search.
        let slot = match members.upstreams.get(e.index()) {
            Some(u) if same(u) => Some(e.index()),
            _ => members.upstreams.iter().position(same),
        };
        if let Some(slot) = slot {
            buf[len] = slot;
            len += 1;
        }
    }
    &buf[..len]
}

/// A membership snapshot for lookups without in-flight accounting; see
/// [`UpstreamList::snapshot`]. A returned upstream that is [`State::Probing`] must get a
/// verdict (`ok`, `fail` or `release_probe`).
///
/// [`State::Probing`]: crate::State::Probing
pub struct Snapshot {
    members: Arc<Members>,
    shared: Arc<Shared>,
}

impl Snapshot {
    /// Like [`UpstreamList::get`] (the definition's prefix wins), without a handle.
    #[inline]
    pub fn select(&self, rotation: Rotation, key: &[u8]) -> Option<&Arc<Upstream>> {
        let rotation = self.members.rotation.unwrap_or(rotation);
        let i = choose(&self.members, &self.shared, rotation, key, &[])?;
        Some(&self.members.upstreams[i])
    }

    /// Like [`UpstreamList::get_forced`] (the caller's rotation wins), without a handle.
    #[inline]
    pub fn select_forced(&self, rotation: Rotation, key: &[u8]) -> Option<&Arc<Upstream>> {
        let i = choose(&self.members, &self.shared, rotation, key, &[])?;
        Some(&self.members.upstreams[i])
    }

    /// The configured upstreams of this snapshot, in configuration order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.members.upstreams
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("upstreams", &self.members.upstreams)
            .finish()
    }
}

impl fmt::Debug for UpstreamList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamList")
            .field("rotation", &self.rotation())
            .field("upstreams", &self.members.load().upstreams)
            .finish()
    }
}

impl fmt::Display for UpstreamList {
    /// Prints a definition that parses back to the same list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members = self.members.load();
        crate::parse::write_definition(
            f,
            self.rotation(),
            members.upstreams.iter().map(|u| u.entry()),
        )
    }
}

/// A picked upstream. End it with [`ok`](Picked::ok), [`fail`](Picked::fail) or
/// [`release`](Picked::release); dropping it releases it (so an abandoned probe never blocks
/// the upstream).
#[must_use = "report the outcome with ok(), fail() or release()"]
pub struct Picked {
    upstream: Arc<Upstream>,
    tokens: u32,
    done: bool,
}

impl Picked {
    /// The picked upstream, as an owning handle.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Reports success.
    pub fn ok(mut self) {
        self.done = true;
        self.upstream.end_pick();
        self.upstream.tokens.give_back(self.tokens, true);
        self.upstream.record_success();
    }

    /// Reports failure.
    pub fn fail(mut self, kind: FailKind, reason: &str) {
        self.done = true;
        self.upstream.end_pick();
        self.upstream.tokens.give_back(self.tokens, false);
        self.upstream.record_failure(kind, reason);
    }

    /// Ends the pick without a verdict.
    pub fn release(self) {
        drop(self);
    }
}

impl Deref for Picked {
    type Target = Upstream;

    fn deref(&self) -> &Upstream {
        &self.upstream
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        if !self.done {
            self.upstream.end_pick();
            self.upstream.tokens.give_back(self.tokens, true);
            self.upstream.release_probe();
        }
    }
}

impl fmt::Debug for Picked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Picked")
            .field(&self.upstream.name())
            .finish()
    }
}
