//! The rotations: how a list picks.

use std::fmt;

/// How a list picks (rspamd's rotation names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rotation {
    /// Uniform (weighted when weights are set) random choice.
    Random,
    /// Consistent hash of a key; an empty key behaves as `Random`.
    Hashed,
    /// Smooth weighted round-robin.
    RoundRobin,
    /// Highest priority (weight) wins, first in configuration order on ties.
    MasterSlave,
    /// Configuration order, `None` once after the last.
    Sequential,
    /// Power of two choices by load.
    P2c,
}

impl Rotation {
    /// Every rotation, in prefix order.
    pub const ALL: [Rotation; 6] = [
        Self::Random,
        Self::Hashed,
        Self::RoundRobin,
        Self::MasterSlave,
        Self::Sequential,
        Self::P2c,
    ];

    /// The definition prefix naming it (`round-robin` for `round-robin:`).
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Hashed => "hash",
            Self::RoundRobin => "round-robin",
            Self::MasterSlave => "master-slave",
            Self::Sequential => "sequential",
            Self::P2c => "p2c",
        }
    }
}

impl fmt::Display for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

impl std::str::FromStr for Rotation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|r| r.prefix() == lower || (lower == "hashed" && *r == Self::Hashed))
            .ok_or_else(|| {
                format!(
                    "unknown rotation {s:?} (expected random, hash, round-robin, \
                     master-slave, sequential or p2c)"
                )
            })
    }
}
