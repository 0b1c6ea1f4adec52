//! The loads of this node: those under way (with the bytes fetched so far
//! per part), the failed ones waiting to be retried (1 s, 2 s, 4 s, … at
//! most `download.retry_max_secs`), and the slots bounding downloads (full
//! loads and lazy fetches alike, `download.concurrency`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::storage::Part;
use crate::sync::lock;

/// Bytes fetched so far for each part of a load.
pub(super) type Progress = Arc<Mutex<BTreeMap<Part, Arc<AtomicU64>>>>;

/// One load under way.
struct Running {
    task: AbortHandle,
    /// Tells this load from a later one of the same database.
    generation: u64,
    progress: Progress,
}

/// A database whose last load failed: failures in a row, and when to try again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retry {
    pub(super) failures: u32,
    pub(super) at: Instant,
}

/// The wait before the next try after `failures` failed loads in a row:
/// 1 s, 2 s, 4 s, … at most `cap`.
pub(super) fn retry_delay(failures: u32, cap: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << exponent).min(cap)
}

/// The loads under way, the retries waiting and the download slots.
pub(super) struct Loads {
    running: Mutex<HashMap<String, Running>>,
    retries: Mutex<HashMap<String, Retry>>,
    next_generation: AtomicU64,
    slots: Arc<Semaphore>,
}

impl Loads {
    pub(super) fn new(download_concurrency: usize) -> Loads {
        Loads {
            running: Mutex::default(),
            retries: Mutex::default(),
            next_generation: AtomicU64::default(),
            slots: Arc::new(Semaphore::new(download_concurrency)),
        }
    }

    /// Bounds the downloads under way, over every load and lazy fetch.
    pub(super) fn slots(&self) -> &Semaphore {
        &self.slots
    }

    /// Records a load of `name` started by `start` (given its progress and
    /// generation), aborting the one it replaces.
    pub(super) fn start(&self, name: &str, start: impl FnOnce(Progress, u64) -> AbortHandle) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let progress = Progress::default();
        let mut running = lock(&self.running);
        if let Some(previous) = running.remove(name) {
            previous.task.abort();
        }
        let task = start(progress.clone(), generation);
        running.insert(
            name.to_string(),
            Running {
                task,
                generation,
                progress,
            },
        );
    }

    /// Forgets a load that ended, unless a later one of the same database
    /// replaced it.
    pub(super) fn ended(&self, name: &str, generation: u64) {
        let mut running = lock(&self.running);
        if running
            .get(name)
            .is_some_and(|r| r.generation == generation)
        {
            running.remove(name);
        }
    }

    /// Stops the load of `name`, if one is under way.
    pub(super) fn cancel(&self, name: &str) {
        if let Some(load) = lock(&self.running).remove(name) {
            load.task.abort();
        }
    }

    /// Stops every load (at shutdown).
    pub(super) fn cancel_all(&self) {
        for (_, load) in lock(&self.running).drain() {
            load.task.abort();
        }
    }

    /// Whether a load of `name` is under way.
    pub(super) fn is_running(&self, name: &str) -> bool {
        lock(&self.running).contains_key(name)
    }

    /// Bytes fetched so far for each part of the load of `name`.
    pub(super) fn progress(&self, name: &str) -> BTreeMap<Part, u64> {
        let running = lock(&self.running);
        let Some(load) = running.get(name) else {
            return BTreeMap::new();
        };
        lock(&load.progress)
            .iter()
            .map(|(part, done)| (part.clone(), done.load(Ordering::Relaxed)))
            .collect()
    }

    /// Notes a failed load of `name`: when to try again, at most `cap` away.
    pub(super) fn failed(&self, name: &str, cap: Duration) -> Retry {
        let mut retries = lock(&self.retries);
        let failures = retries.get(name).map_or(0, |r| r.failures) + 1;
        let retry = Retry {
            failures,
            at: Instant::now() + retry_delay(failures, cap),
        };
        retries.insert(name.to_string(), retry);
        retry
    }

    /// Forgets the failures of `name` (it loaded, or it is gone).
    pub(super) fn forget_failures(&self, name: &str) {
        lock(&self.retries).remove(name);
    }

    /// Makes the next try of `name` due now (a restart is a retry).
    pub(super) fn retry_now(&self, name: &str) {
        lock(&self.retries).insert(
            name.to_string(),
            Retry {
                failures: 0,
                at: Instant::now(),
            },
        );
    }

    /// Whether a load of `name` may start now (it has not failed, or its
    /// retry is due).
    pub(super) fn due(&self, name: &str) -> bool {
        lock(&self.retries)
            .get(name)
            .is_none_or(|retry| retry.at <= Instant::now())
    }

    /// The databases whose retry is due.
    pub(super) fn due_now(&self) -> Vec<String> {
        let now = Instant::now();
        lock(&self.retries)
            .iter()
            .filter(|(_, retry)| retry.at <= now)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_the_cap() {
        let cap = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n, cap).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(u32::MAX, cap), cap);
        assert_eq!(retry_delay(5, Duration::from_secs(2)).as_secs(), 2);
    }

    #[test]
    fn failures_count_up_until_forgotten_and_a_restart_retries_at_once() {
        let loads = Loads::new(1);
        let cap = Duration::from_secs(60);
        assert!(loads.due("db"), "never failed");
        assert_eq!(loads.failed("db", cap).failures, 1);
        assert_eq!(loads.failed("db", cap).failures, 2);
        assert!(!loads.due("db"), "waits 2 s");
        assert!(loads.due_now().is_empty());
        loads.retry_now("db");
        assert_eq!(loads.due_now(), ["db"]);
        loads.forget_failures("db");
        assert!(loads.due("db"));
    }
}
