//! Hybrid logical clock: versions for registry entries (aliases, definitions) that
//! order like wall-clock time but never go backwards and never tie on one node.
//! Pure: the caller passes the physical time in.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// One timestamp: physical milliseconds, a counter for events in the same
/// millisecond, and the node that made it (the tie-breaker across nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hlc {
    pub ms: u64,
    pub counter: u32,
    pub node: String,
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.counter, &self.node).cmp(&(other.ms, other.counter, &other.node))
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The clock of one node.
#[derive(Debug, Clone)]
pub struct HlcClock {
    node: String,
    last_ms: u64,
    last_counter: u32,
}

impl HlcClock {
    pub fn new(node: impl Into<String>) -> Self {
        HlcClock {
            node: node.into(),
            last_ms: 0,
            last_counter: 0,
        }
    }

    /// A new timestamp, greater than every one this clock made or observed.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            self.last_counter = 0;
        } else {
            self.last_counter = self.last_counter.saturating_add(1);
        }
        Hlc {
            ms: self.last_ms,
            counter: self.last_counter,
            node: self.node.clone(),
        }
    }

    /// Takes a timestamp seen from elsewhere into account.
    pub fn observe(&mut self, seen: &Hlc) {
        if (seen.ms, seen.counter) > (self.last_ms, self.last_counter) {
            self.last_ms = seen.ms;
            self.last_counter = seen.counter;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards() {
        let mut clock = HlcClock::new("n1");
        let a = clock.tick(100);
        let b = clock.tick(100);
        let c = clock.tick(50); // the wall clock stepped back
        let d = clock.tick(101);
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
    }

    #[test]
    fn observe_moves_past_remote() {
        let mut clock = HlcClock::new("a");
        let remote = Hlc {
            ms: 1000,
            counter: 7,
            node: "b".into(),
        };
        clock.observe(&remote);
        let next = clock.tick(10);
        assert!(next > remote);
    }

    #[test]
    fn node_breaks_ties() {
        let a = Hlc {
            ms: 1,
            counter: 0,
            node: "a".into(),
        };
        let b = Hlc {
            ms: 1,
            counter: 0,
            node: "b".into(),
        };
        assert!(a < b);
    }
}
