//! Membership changes from discovery (SRV targets): a new snapshot built off the pick path
//! and published with one atomic swap; upstreams that stay keep their health.

use crate::sync::Ordering;
use std::sync::Arc;

use crate::health;
use crate::list::UpstreamList;
use crate::parse::{Entry, Host};
use crate::select::Members;
use crate::transition;
use crate::upstream::Upstream;

/// One target of an SRV answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrvTarget {
    /// SRV priority: lower is preferred (master-slave honours it).
    pub priority: u16,
    /// SRV weight; the member's weight is `max(weight, 1)`.
    pub weight: u16,
    /// The target's port.
    pub port: u16,
    /// The target host name.
    pub target: String,
}

/// What a membership change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipChange {
    /// Names of the members that joined.
    pub added: Vec<String>,
    /// Names of the members that were drained.
    pub removed: Vec<String>,
    /// Names of the members that stayed with a new weight (or priority).
    pub reweighted: Vec<String>,
}

impl MembershipChange {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reweighted.is_empty()
    }
}

impl UpstreamList {
    /// The SRV entries of the definition: `(group, record name)`, where `group` is the
    /// entry's index (its members' [`Upstream::group`]) and the name is
    /// `_<service>._tcp.<domain>`.
    pub fn srv_entries(&self) -> Vec<(usize, String)> {
        self.definition_entries()
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.host(), Host::Srv { .. }))
            .map(|(i, e)| (i, e.name().to_owned()))
            .collect()
    }

    /// Replaces the members of SRV entry `group` (see [`srv_entries`](Self::srv_entries)) with
    /// `targets` (SPEC.md item 41). Members that stay keep their state and error counts; new
    /// ones start `Pending` until their names resolve; members that disappear are drained
    /// (`offline` fires for those that were alive; they are never returned again). An empty
    /// answer changes nothing.
    pub fn set_srv_targets(&self, group: usize, targets: &[SrvTarget]) -> MembershipChange {
        let mut change = MembershipChange::default();
        if targets.is_empty() {
            return change;
        }
        let _writer = self.rebuild_lock();
        let current = self.members_full();
        if !current.upstreams.iter().any(|u| u.group() == group) {
            return change; // not (or no longer) a member of this list
        }
        let mut wanted: Vec<SrvTarget> = targets.to_vec();
        wanted.sort(); // the same answer gives the same membership, whatever its order
        wanted.dedup();
        let fresh: Vec<Entry> = wanted
            .iter()
            .map(|t| Entry::srv_target(&t.target, t.port, t.weight.max(1)))
            .collect();
        let shared = self.shared();
        let mut next: Vec<Arc<Upstream>> = Vec::with_capacity(current.upstreams.len());
        let mut placed = false;
        let mut kept: Vec<bool> = vec![false; current.upstreams.len()];
        for up in current.upstreams.iter() {
            if up.group() != group {
                next.push(Arc::clone(up));
                continue;
            }
            if placed {
                continue;
            }
            placed = true;
            for (entry, target) in fresh.iter().zip(&wanted) {
                let existing = current.upstreams.iter().enumerate().find(|(_, u)| {
                    u.group() == group
                        && u.entry() == entry
                        && u.srv_priority() == target.priority
                        && !matches!(u.entry().host(), Host::Srv { .. })
                });
                match existing {
                    Some((i, u)) => {
                        kept[i] = true;
                        next.push(Arc::clone(u));
                    }
                    None => {
                        change.added.push(entry.name().to_owned());
                        next.push(Upstream::new(
                            entry.clone(),
                            group,
                            target.priority,
                            Arc::clone(shared),
                        ));
                    }
                }
            }
        }
        for (i, up) in current.upstreams.iter().enumerate() {
            if up.group() == group && !kept[i] {
                if !matches!(up.entry().host(), Host::Srv { .. }) {
                    change.removed.push(up.name().to_owned());
                }
                transition::drain(shared, up);
            }
        }
        if change.is_empty() {
            return change;
        }
        shared.set_member_count(next.len());
        self.publish(Members::build(next, shared.hash_mode), None);
        change
    }
}

impl UpstreamList {
    /// Whether `upstream` is one of this list's current members (not a drained one).
    fn is_member(&self, upstream: &Upstream) -> bool {
        self.members_full()
            .upstreams
            .iter()
            .any(|u| std::ptr::eq(u.as_ref(), upstream))
    }

    /// Takes a member out of selection until [`UpstreamList::undrain`] (an operator's drain):
    /// no new picks, those in flight go on, [`State::Draining`](crate::State::Draining) is
    /// shown, and health reports leave it drained. Fires `offline` when it was alive. False
    /// when `upstream` is not a member of this list or is drained already.
    pub fn drain(&self, upstream: &Upstream) -> bool {
        let _writer = self.rebuild_lock();
        let member = self.is_member(upstream);
        // Acquire: pairs with the CAS that drained it (under the same lock, so this is
        // belt and braces: the lock orders them already).
        if !member || health::tag(upstream.state.load(Ordering::Acquire)) == health::DRAINING {
            return false;
        }
        transition::drain(self.shared(), upstream);
        true
    }

    /// Brings a drained member back into selection at once; fires `online`. False when
    /// `upstream` is not a drained member of this list (an upstream a reload removed stays
    /// out).
    pub fn undrain(&self, upstream: &Upstream) -> bool {
        let _writer = self.rebuild_lock();
        let member = self.is_member(upstream);
        if !member {
            return false;
        }
        transition::undrain(self.shared(), upstream)
    }
}

impl UpstreamList {
    /// Applies a changed definition (a configuration reload) without losing health: an
    /// upstream whose entry is unchanged keeps its state, error counts and in-flight picks; an
    /// unchanged SRV entry keeps its current members; new entries join (names `Pending`,
    /// numeric ones alive at once); entries that are gone are drained. The rotation prefix
    /// follows the new definition. Limits are not changed by a reload (build a new list for
    /// that). Picks in progress are never disturbed.
    pub fn reconfigure(&self, definition: &crate::parse::Definition) -> MembershipChange {
        let writer = self.rebuild_lock();
        self.reconfigure_locked(&writer, definition)
    }

    /// [`UpstreamList::reconfigure`] with the rebuild lock held by the caller.
    fn reconfigure_locked(
        &self,
        _writer: &crate::sync::MutexGuard<'_, ()>,
        definition: &crate::parse::Definition,
    ) -> MembershipChange {
        let mut change = MembershipChange::default();
        let current = self.members_full();
        let old_entries = self.definition_entries();
        let shared = self.shared();
        let is_srv = |e: &Entry| matches!(e.host(), Host::Srv { .. });
        let configured = |u: &Upstream| old_entries.get(u.group()).is_some_and(|e| !is_srv(e));
        let mut used = vec![false; current.upstreams.len()];
        let mut srv_used = vec![false; old_entries.len()];
        let mut next: Vec<Arc<Upstream>> = Vec::with_capacity(definition.entries().len());
        // Configured (non-SRV) members sorted by name hash, then configuration order, so each
        // new entry finds the first unused equal one without scanning them all.
        let mut by_name: Vec<(u64, usize)> = current
            .upstreams
            .iter()
            .enumerate()
            .filter(|(_, up)| configured(up))
            .map(|(i, up)| (name_hash(up.name()), i))
            .collect();
        by_name.sort_unstable();
        for (group, entry) in definition.entries().iter().enumerate() {
            if is_srv(entry) {
                let old =
                    (0..old_entries.len()).find(|&g| !srv_used[g] && old_entries[g] == *entry);
                if let Some(old) = old {
                    srv_used[old] = true;
                    // Members not taken yet still carry their old group number.
                    for (i, up) in current.upstreams.iter().enumerate() {
                        if !used[i] && up.group() == old {
                            used[i] = true;
                            up.set_group(group);
                            next.push(Arc::clone(up));
                        }
                    }
                    continue;
                }
            } else if let Some(i) = same_name(&by_name, entry.name())
                .find(|&i| !used[i] && current.upstreams[i].entry() == entry)
                .or_else(|| {
                    // The same backend with another weight (or priority) stays the same
                    // upstream, health and in-flight picks included.
                    same_name(&by_name, entry.name()).find(|&i| {
                        let old = current.upstreams[i].entry();
                        !used[i] && old.host() == entry.host() && old.port() == entry.port()
                    })
                })
            {
                used[i] = true;
                let up = &current.upstreams[i];
                up.set_group(group);
                if up.weight() != entry.weight() {
                    up.set_weight(entry.weight());
                    change.reweighted.push(up.name().to_owned());
                }
                next.push(Arc::clone(up));
                continue;
            }
            let up = Upstream::new(entry.clone(), group, 0, Arc::clone(shared));
            transition::joined(shared, &up);
            change.added.push(up.name().to_owned());
            next.push(up);
        }
        for (i, up) in current.upstreams.iter().enumerate() {
            if !used[i] {
                if !is_srv(up.entry()) {
                    change.removed.push(up.name().to_owned());
                }
                transition::drain(shared, up);
            }
        }
        shared.set_member_count(next.len());
        self.publish(Members::build(next, shared.hash_mode), Some(definition));
        change
    }
}

impl UpstreamList {
    /// Replaces the membership with `entries` (typed, no definition text) in one swap, as a
    /// reload does: an upstream whose entry stays (same name and address) keeps its health,
    /// error counts and in-flight picks, also when only its weight changes; new ones join;
    /// the others are drained. The list's rotation is kept.
    pub fn update(&self, entries: impl IntoIterator<Item = Entry>) -> MembershipChange {
        let definition =
            crate::parse::Definition::from_entries(self.rotation(), entries.into_iter().collect());
        self.reconfigure(&definition)
    }
}

/// One membership change from a discovery source (Kubernetes endpoints, Consul, a file
/// watcher): the shape of tower's `discover::Change`, keyed by the upstream's name.
#[derive(Debug, Clone)]
pub enum Change {
    /// Adds the entry, or replaces the entry of the same name (a weight change keeps its
    /// upstream's health, as [`UpstreamList::update`] does).
    Insert(Entry),
    /// Removes the entry of this name (its upstream drains); unknown names are ignored.
    Remove(String),
}

impl UpstreamList {
    /// Applies discovery changes in one swap (a batch of them, in order): a discovery task
    /// calls it with what its source reported since the last call. Calls are serialised with
    /// each other and with reloads, so two sources cannot lose each other's changes.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> MembershipChange {
        let writer = self.rebuild_lock();
        let mut entries: Vec<Entry> = self.definition_entries().as_ref().clone();
        for change in changes {
            match change {
                Change::Insert(entry) => {
                    match entries.iter_mut().find(|e| e.name() == entry.name()) {
                        Some(slot) => *slot = entry,
                        None => entries.push(entry),
                    }
                }
                Change::Remove(name) => entries.retain(|e| e.name() != name),
            }
        }
        let definition = crate::parse::Definition::from_entries(self.rotation(), entries);
        self.reconfigure_locked(&writer, &definition)
    }
}

fn name_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// The members of `sorted` (name hash, index) whose name hashes like `name`, in index order.
fn same_name<'a>(sorted: &'a [(u64, usize)], name: &str) -> impl Iterator<Item = usize> + 'a {
    let h = name_hash(name);
    let start = sorted.partition_point(|&(k, _)| k < h);
    sorted[start..]
        .iter()
        .take_while(move |&&(k, _)| k == h)
        .map(|&(_, i)| i)
}
