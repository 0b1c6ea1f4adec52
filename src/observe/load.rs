//! Map work under way on this node and how long recent map work took: what
//! the `load` gossip key says of it (queries try the least busy holder).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::sync::lock;

/// Durations kept for the p99 of the `load` key.
const RECENT: usize = 256;

/// Map work under way and the durations of recent map work.
#[derive(Default)]
pub struct LoadTracker {
    inflight: AtomicU64,
    /// The last `RECENT` durations, in microseconds.
    recent: Mutex<VecDeque<u64>>,
}

/// Ends one unit of map work when dropped.
pub struct LoadGuard<'a> {
    tracker: &'a LoadTracker,
    started: Instant,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.tracker.inflight.fetch_sub(1, Ordering::Relaxed);
        let mut recent = lock(&self.tracker.recent);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(self.started.elapsed().as_micros() as u64);
    }
}

/// What the `load` gossip key says of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Load {
    /// Map requests (local or for other roots) under way.
    pub inflight: u64,
    /// p99 of the recent ones, in milliseconds.
    pub p99_ms: u64,
}

impl LoadTracker {
    /// Counts map work under way until the guard drops.
    pub fn track(&self) -> LoadGuard<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            tracker: self,
            started: Instant::now(),
        }
    }

    /// Map work under way now and the p99 of recent map work.
    pub fn load(&self) -> Load {
        let mut recent: Vec<u64> = lock(&self.recent).iter().copied().collect();
        recent.sort_unstable();
        let p99 = recent
            .get((recent.len() * 99 / 100).min(recent.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0);
        Load {
            inflight: self.inflight.load(Ordering::Relaxed),
            p99_ms: p99 / 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_counts_work_under_way_and_the_p99_of_finished_work() {
        let tracker = LoadTracker::default();
        let first = tracker.track();
        let second = tracker.track();
        assert_eq!(tracker.load().inflight, 2);
        drop(first);
        drop(second);
        assert_eq!(tracker.load().inflight, 0);
        assert!(tracker.load().p99_ms < 1_000, "{:?}", tracker.load());
    }
}
