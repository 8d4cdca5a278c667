//! How requests ended — the one count that `/health` (`engine.finished`, `cancelled`, `failed`,
//! `refused`, `non_finite`, `outcomes`) and `/metrics` (`request_success_total{finished_reason}`,
//! `request_failure_total{type}`: failed and refused together) both read, so they cannot disagree.
//! The engine counts each sequence once when it ends (a request with `n` choices is `n`
//! sequences); the HTTP side counts a request refused before it reached the engine (invalid,
//! queue full, unauthorized…) once.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::Serialize;

/// The counts by finish reason and by error type (`cancelled` for a client that left).
#[derive(Debug, Default)]
pub struct Outcomes {
    counts: Mutex<OutcomeCounts>,
}

/// A copy of the counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    /// Ended with a result, by finish reason (`stop`, `length`, `time_limit`…).
    pub finished: BTreeMap<&'static str, u64>,
    /// Ended in the engine without one, by the error's stable type (`cancelled`,
    /// `non_finite_logits`, `shutting_down`…).
    pub failed: BTreeMap<&'static str, u64>,
    /// Refused before reaching the engine, by type (`invalid_request`, `queue_full`…).
    pub refused: BTreeMap<&'static str, u64>,
}

/// The error type of a client that left.
pub const CANCELLED: &str = "cancelled";
/// The error type of non-finite logits.
pub const NON_FINITE: &str = "non_finite_logits";

impl Outcomes {
    pub fn finished(&self, reason: &'static str) {
        *self.counts.lock().finished.entry(reason).or_insert(0) += 1;
    }

    pub fn failed(&self, kind: &'static str) {
        *self.counts.lock().failed.entry(kind).or_insert(0) += 1;
    }

    pub fn refused(&self, kind: &'static str) {
        *self.counts.lock().refused.entry(kind).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> OutcomeCounts {
        self.counts.lock().clone()
    }
}

impl OutcomeCounts {
    pub fn total_finished(&self) -> u64 {
        self.finished.values().sum()
    }

    pub fn failed_as(&self, kind: &str) -> u64 {
        self.failed.get(kind).copied().unwrap_or(0)
    }

    /// Failures in the engine other than a client leaving.
    pub fn total_failed(&self) -> u64 {
        self.failed.values().sum::<u64>() - self.failed_as(CANCELLED)
    }

    pub fn total_refused(&self) -> u64 {
        self.refused.values().sum()
    }

    /// Failed and refused together, by type (what `/metrics` counts as failures).
    pub fn failures(&self) -> BTreeMap<&'static str, u64> {
        let mut all = self.failed.clone();
        for (&k, &n) in &self.refused {
            *all.entry(k).or_insert(0) += n;
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_split_cancellations_from_failures() {
        let o = Outcomes::default();
        o.finished("stop");
        o.finished("length");
        o.finished("stop");
        o.failed(CANCELLED);
        o.refused("queue_full");
        o.failed(NON_FINITE);
        o.refused("internal");
        o.failed("internal");
        let s = o.snapshot();
        assert_eq!(s.total_finished(), 3);
        assert_eq!(s.finished["stop"], 2);
        assert_eq!(s.failed_as(CANCELLED), 1);
        assert_eq!(s.total_failed(), 2);
        assert_eq!(s.total_refused(), 2);
        assert_eq!(s.failures()["internal"], 2);
        assert_eq!(s.failures().values().sum::<u64>(), 5);
    }
}
