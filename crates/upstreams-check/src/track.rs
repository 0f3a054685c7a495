//! The decision of a checker, without I/O: what a run of check results does to an upstream.

/// What a check result asks of the upstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing changes.
    Keep,
    /// `fall` failures in a row on a selectable upstream: take it out.
    TakeOut,
    /// `rise` successes in a row on an upstream out of selection (taken out by the checks or
    /// by client failures): bring it back.
    BringBack,
}

/// The runs of results of one upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Track {
    /// Successes in a row.
    pub(crate) oks: u32,
    /// Failures in a row.
    pub(crate) fails: u32,
    /// The checks took it out (and it has not come back since).
    pub(crate) checked_out: bool,
}

impl Track {
    /// Records one result of an upstream that is `selectable` (alive) or out of selection
    /// (offline or probing) now.
    pub(crate) fn record(&mut self, ok: bool, selectable: bool, rise: u32, fall: u32) -> Action {
        if ok {
            self.oks = self.oks.saturating_add(1);
            self.fails = 0;
            if !selectable && self.oks >= rise {
                self.checked_out = false;
                return Action::BringBack;
            }
            if selectable {
                self.checked_out = false;
            }
        } else {
            self.fails = self.fails.saturating_add(1);
            self.oks = 0;
            if selectable && self.fails >= fall {
                self.checked_out = true;
                return Action::TakeOut;
            }
        }
        Action::Keep
    }

    /// Successes (positive) or failures (negative) in a row.
    pub(crate) fn streak(&self) -> i64 {
        if self.oks > 0 {
            i64::from(self.oks)
        } else {
            -i64::from(self.fails)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Action, Track};

    #[test]
    fn fall_failures_take_out_rise_successes_bring_back() {
        let mut t = Track::default();
        // rise 2, fall 3 on an alive upstream.
        assert_eq!(t.record(false, true, 2, 3), Action::Keep);
        assert_eq!(t.record(false, true, 2, 3), Action::Keep);
        assert_eq!(
            t.record(true, true, 2, 3),
            Action::Keep,
            "a success breaks the run"
        );
        assert_eq!(t.record(false, true, 2, 3), Action::Keep);
        assert_eq!(t.record(false, true, 2, 3), Action::Keep);
        assert_eq!(t.record(false, true, 2, 3), Action::TakeOut);
        assert!(t.checked_out);
        assert_eq!(t.streak(), -3);
        // Out: failures change nothing, one success is not enough.
        assert_eq!(t.record(false, false, 2, 3), Action::Keep);
        assert_eq!(t.record(true, false, 2, 3), Action::Keep);
        assert_eq!(t.record(true, false, 2, 3), Action::BringBack);
        assert!(!t.checked_out);
    }

    #[test]
    fn a_passively_failed_upstream_comes_back_when_its_checks_pass() {
        let mut t = Track::default();
        for _ in 0..5 {
            assert_eq!(t.record(true, true, 2, 3), Action::Keep);
        }
        // Clients took it out; the checks still pass: back at the next check.
        assert_eq!(t.record(true, false, 2, 3), Action::BringBack);
    }

    #[test]
    fn revived_behind_the_checks_back_then_failing_again_goes_out_again() {
        let mut t = Track::default();
        for _ in 0..3 {
            t.record(false, true, 2, 3);
        }
        // Something else brought it back while it still fails its checks.
        assert_eq!(t.record(false, true, 2, 3), Action::TakeOut);
    }
}
