//! Randomness for the rotations and the revival jitter: a per-thread source, or a seeded
//! sequence (tests), and SplitMix64's mixer, which the hash tables use as well. Written
//! here (not `rand`) because a pick draws one number and must not lock or allocate:
//! `fastrand`'s thread-local generator does the per-thread part.

/// The random source of a list: per-thread by default, or a seeded sequence for tests.
#[derive(Debug)]
pub(crate) enum Rng {
    Thread,
    Seeded(crate::sync::AtomicU64),
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser: a bijective mix of 64 bits.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        match seed {
            Some(s) => Self::Seeded(crate::sync::AtomicU64::new(s)),
            None => Self::Thread,
        }
    }

    pub(crate) fn next_u64(&self) -> u64 {
        match self {
            Self::Thread => fastrand::u64(..),
            Self::Seeded(state) => mix64(state.fetch_add(GOLDEN, crate::sync::Ordering::Relaxed)),
        }
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-high.
    pub(crate) fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}
