//! Smooth weighted round-robin, precomputed (SPEC.md items 16–18).
//!
//! # Algorithm
//! 1. Weights are divided by their greatest common divisor; the cycle length is their sum.
//! 2. The cycle is laid out once per membership change with nginx's smooth weighted
//!    round-robin (each step: every member's `current += weight`; the largest `current`
//!    wins, first in configuration order on ties, and pays back the total), so 5,1,1
//!    gives `a a b a c a a`. Members of equal weight move in lockstep, so a step compares
//!    one candidate per distinct weight: O(L × distinct weights) for a cycle of L, not
//!    nginx's O(L × N) (equal weights: O(L)). Cycles that would still take more than 2^26
//!    steps of work are laid out by earliest virtual deadline instead, in O(L log N), with
//!    the same per-cycle counts.
//! 3. A pick reads a cursor, walks the schedule to the first selectable member and stores
//!    the position after it. Skipping offline members does not consume the cursor, so the
//!    others keep their exact ratio. There are 8
//!    cursors on separate cache lines and each thread uses one (assigned round-robin at its
//!    first pick): one thread sees nginx's exact sequence; several threads each walk their
//!    own copy of the cycle, so the counts stay exact per cycle of each thread and two cores
//!    never bounce one cache line.
//! 4. Weight-0 members of a mixed list form a second schedule used only when no weighted
//!    member is selectable; a list of all weight 0 rotates plainly.
//!
//! # Guarantees
//! Over every full cycle each selectable member is picked exactly its (gcd-reduced) weight
//! times. Cycles longer than 2^20 entries are scaled down proportionally (weights then hold
//! to within 2^-20 of the total).
//!
//! # Complexity
//! O(1) per pick when everything is healthy; a run of offline entries costs its length.
//! Memory: 4 bytes per schedule entry.
//!
//! # Concurrency
//! Lock-free and free of read-modify-writes: one load and one store on the thread's cursor
//! per pick. Past 8 threads, two threads share a stripe, and if they race, one position may
//! be handed out twice. Measured (`cargo bench -p upstreams --bench pick`, BENCHMARKS.md):
//! ≈ 5 ns per `Snapshot::select`; two threads pick 1.85–1.96× as many per second as one.

use crate::sync::{AtomicUsize, Ordering};
use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const MAX_CYCLE: u64 = 1 << 20;
const MAX_SMOOTH_WORK: u64 = 1 << 26;

#[derive(Debug)]
pub(crate) struct RoundRobin {
    weighted: Schedule,
    spare: Schedule,
}

/// Cursors per schedule: threads are spread over them so that two threads picking from one
/// list do not fight over one cache line.
const STRIPES: usize = 8;

#[derive(Debug, Default)]
struct Schedule {
    order: Box<[u32]>,
    cursors: [Cursor; STRIPES],
}

/// One cursor on its own cache line (128 bytes: adjacent-line prefetch pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cursor(AtomicUsize);

/// The cursor stripe of the calling thread, assigned round-robin at its first pick.
#[inline]
fn stripe() -> usize {
    // A std atomic: a static needs a `const` constructor, and this one orders nothing.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut v = s.get();
        if v == usize::MAX {
            // Relaxed: the counter only hands out distinct numbers.
            v = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(v);
        }
        v
    })
}

impl RoundRobin {
    pub(crate) fn build(weights: &[u16]) -> Self {
        let weighted: Vec<(u32, u64)> = weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0)
            .map(|(i, &w)| (i as u32, u64::from(w)))
            .collect();
        let zero: Vec<(u32, u64)> = weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| w == 0)
            .map(|(i, _)| (i as u32, 1))
            .collect();
        if weighted.is_empty() {
            Self {
                weighted: Schedule::new(layout(&zero)),
                spare: Schedule::default(),
            }
        } else {
            Self {
                weighted: Schedule::new(layout(&weighted)),
                spare: Schedule::new(layout(&zero)),
            }
        }
    }

    #[inline]
    pub(crate) fn pick(&self, accept: impl Fn(usize) -> bool) -> Option<usize> {
        self.weighted
            .pick(&accept)
            .or_else(|| self.spare.pick(&accept))
    }

    /// The precomputed cycle (member indices), for tests and tools.
    #[cfg(test)]
    pub(crate) fn cycle(&self) -> &[u32] {
        &self.weighted.order
    }
}

impl Schedule {
    fn new(order: Vec<u32>) -> Self {
        Self {
            order: order.into_boxed_slice(),
            cursors: Default::default(),
        }
    }

    #[inline]
    fn pick(&self, accept: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.order.len();
        if n == 0 {
            return None;
        }
        let cursor = &self.cursors[stripe()].0;
        let cur = cursor.load(Ordering::Relaxed);
        let mut pos = if cur < n { cur } else { 0 };
        let mut steps = 0;
        let member = loop {
            let member = self.order[pos] as usize;
            if accept(member) {
                break member;
            }
            steps += 1;
            if steps == n {
                return None;
            }
            pos += 1;
            if pos == n {
                pos = 0;
            }
        };
        // A plain store, no read-modify-write: the stripe belongs to this thread unless more
        // than `STRIPES` threads pick, and then a race at worst hands one position out twice
        // (never an invalid one: `cur` is range-checked above). Relaxed: the cursor orders
        // nothing but itself.
        cursor.store(if pos + 1 == n { 0 } else { pos + 1 }, Ordering::Relaxed);
        Some(member)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The schedule of one cycle for `(member, weight)` pairs.
fn layout(members: &[(u32, u64)]) -> Vec<u32> {
    if members.is_empty() {
        return Vec::new();
    }
    let g = members.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
    let mut reduced: Vec<(u32, u64)> = members.iter().map(|&(i, w)| (i, w / g)).collect();
    let total: u64 = reduced.iter().map(|&(_, w)| w).sum();
    if total > MAX_CYCLE.max(members.len() as u64) {
        for (_, w) in &mut reduced {
            *w = ((*w * MAX_CYCLE) / total).max(1);
        }
    }
    let total: u64 = reduced.iter().map(|&(_, w)| w).sum();
    let groups = weight_groups(&reduced);
    if total.saturating_mul(groups.len() as u64) <= MAX_SMOOTH_WORK {
        smooth(&reduced, groups, total)
    } else {
        by_deadline(&reduced, total)
    }
}

/// The members of one weight in nginx's walk. Two members of equal weight never differ by
/// more than one pick (when the one ahead took its latest pick its `current` was at least
/// the other's, and the two `current`s differ by a multiple of the total per pick), so a
/// group is a set picked once more ("low") and the rest ("high", all with one `current`),
/// and the group's next pick is its first high member in configuration order.
struct Group {
    weight: i64,
    /// Positions in configuration order.
    positions: Vec<usize>,
    /// `positions[next..]` are high.
    next: usize,
    /// Picks of each high member.
    rounds: i64,
}

/// Members grouped by weight.
fn weight_groups(members: &[(u32, u64)]) -> Vec<Group> {
    let mut by_weight: Vec<(u64, usize)> = members
        .iter()
        .enumerate()
        .map(|(pos, &(_, w))| (w, pos))
        .collect();
    by_weight.sort_unstable();
    let mut groups: Vec<Group> = Vec::new();
    for (w, pos) in by_weight {
        match groups.last_mut() {
            Some(g) if g.weight == w as i64 => g.positions.push(pos),
            _ => groups.push(Group {
                weight: w as i64,
                positions: vec![pos],
                next: 0,
                rounds: 0,
            }),
        }
    }
    groups
}

/// nginx's smooth weighted round-robin for one cycle, in O(cycle × distinct weights): after
/// `t` steps a member picked `c` times holds `current = t·w − c·total`, so each step compares
/// only the next high member of every weight group (ties: first in configuration order).
fn smooth(members: &[(u32, u64)], mut groups: Vec<Group>, total: u64) -> Vec<u32> {
    let total_i = total as i64;
    let mut order = Vec::with_capacity(total as usize);
    for t in 1..=total as i64 {
        let current = |g: &Group| t * g.weight - g.rounds * total_i;
        let mut best = 0;
        for k in 1..groups.len() {
            let (a, b) = (current(&groups[k]), current(&groups[best]));
            if a > b
                || (a == b
                    && groups[k].positions[groups[k].next]
                        < groups[best].positions[groups[best].next])
            {
                best = k;
            }
        }
        let g = &mut groups[best];
        order.push(members[g.positions[g.next]].0);
        g.next += 1;
        if g.next == g.positions.len() {
            g.next = 0;
            g.rounds += 1;
        }
    }
    order
}

/// nginx's smooth weighted round-robin, step by step as nginx runs it: the oracle of
/// [`smooth`].
#[cfg(test)]
fn smooth_walk(members: &[(u32, u64)], total: u64) -> Vec<u32> {
    let total_i = total as i64;
    let mut current = vec![0i64; members.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, &(_, w)) in members.iter().enumerate() {
            current[k] += w as i64;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total_i;
        order.push(members[best].0);
    }
    order
}

/// Earliest virtual deadline: the k-th pick of a member of weight w is due at
/// (2k+1)·T/(2w); ties go to configuration order.
fn by_deadline(members: &[(u32, u64)], total: u64) -> Vec<u32> {
    #[derive(PartialEq, Eq)]
    struct Due {
        num: u64, // deadline = num / den
        den: u64,
        pos: usize,
    }
    impl Ord for Due {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (u128::from(self.num) * u128::from(other.den))
                .cmp(&(u128::from(other.num) * u128::from(self.den)))
                .then(self.pos.cmp(&other.pos))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    let mut heap: BinaryHeap<Reverse<Due>> = members
        .iter()
        .enumerate()
        .map(|(pos, &(_, w))| {
            Reverse(Due {
                num: 1,
                den: 2 * w,
                pos,
            })
        })
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    while let Some(Reverse(due)) = heap.pop() {
        order.push(members[due.pos].0);
        // num = 2k+1 for the k-th pick; a member of weight w stops after w picks.
        let next = Due {
            num: due.num + 2,
            ..due
        };
        if next.num < next.den {
            heap.push(Reverse(next));
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(rr: &RoundRobin) -> String {
        rr.cycle()
            .iter()
            .map(|&i| (b'a' + i as u8) as char)
            .collect()
    }

    #[test]
    fn nginx_interleaving() {
        assert_eq!(names(&RoundRobin::build(&[5, 1, 1])), "aabacaa");
    }

    #[test]
    fn grouped_walk_is_nginx_walk() {
        // Lists with repeated and distinct weights, orders and sizes, against the step-by-step
        // walk (deterministic pseudo-random cases).
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for case in 0..400 {
            let n = 1 + next(40) as usize;
            let spread = [2, 3, 5, 11, 100][case % 5];
            let members: Vec<(u32, u64)> = (0..n).map(|i| (i as u32, 1 + next(spread))).collect();
            let total = members.iter().map(|&(_, w)| w).sum();
            assert_eq!(
                smooth(&members, weight_groups(&members), total),
                smooth_walk(&members, total),
                "weights {members:?}"
            );
        }
    }

    #[test]
    fn deadline_layout_counts_exact() {
        let order = by_deadline(&[(0, 3), (1, 2), (2, 1)], 6);
        let count = |m| order.iter().filter(|&&i| i == m).count();
        assert_eq!((count(0), count(1), count(2)), (3, 2, 1));
    }
}
