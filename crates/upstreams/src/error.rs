//! The crate's error type.

use crate::parse::ParseError;

/// Errors of this crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The definition does not parse: fix the entry the error names.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A limit is out of its range: change the named setting.
    #[error("invalid limit {what}: {why}")]
    InvalidLimit {
        /// The setting.
        what: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// More upstreams than one list can hold (2^20): split the list.
    #[error("too many upstreams: {0} (at most 1048576)")]
    TooManyUpstreams(usize),
    /// An event name that is not `success`, `failure`, `online` or `offline`.
    #[error("unknown event {0:?} (expected success, failure, online or offline)")]
    UnknownEvent(String),
}
