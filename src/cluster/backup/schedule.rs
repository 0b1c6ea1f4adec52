//! When the primary backs up or restores — pure: the round passes the time and
//! what it sees, the schedule answers with the job to start, if any, and hears
//! back how the job ended.
//!
//! - Restore first: a member that started with an empty registry, once primary
//!   and once every live member's registry digest is known and empty, restores
//!   the newest valid backup (once). Nothing is backed up before that is
//!   settled, so a fresh cluster never buries its backups under an empty one.
//! - A registry change is backed up once the digest has stayed the same for
//!   `debounce_ms` and differs from the one last backed up.
//! - Every `interval_secs` (and on the first round as primary after a pause)
//!   the store is checked: a backup is written if the newest valid one does not
//!   hold the current registry.
//! - A failed job is retried after `RETRY_MS`. An empty registry is never
//!   backed up on its own.

use crate::config::BackupConfig;

/// A failed job is tried again after this long.
pub const RETRY_MS: u64 = 5_000;
/// Rounds further apart than this mean this node was not primary in between:
/// another may have written backups since, so the store is checked again.
const PAUSE_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Restore the newest valid backup into the empty cluster.
    AutoRestore,
    /// Write a backup unless the newest valid one holds the registry.
    Check,
    /// Write a backup of the registry.
    Write,
}

/// How a job ended: `Ok(Some(hash))` when the store's newest backup now holds
/// the registry with that digest hash.
pub type Outcome = Result<Option<String>, ()>;

#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// Whether the empty-cluster restore is still to be decided.
    restore_pending: bool,
    /// The registry digest hash the store's newest backup holds, as far as
    /// this node knows.
    backed_up: Option<String>,
    /// The digest hash seen in the last round, and since when.
    seen: Option<(String, u64)>,
    /// When the store was last checked.
    checked_ms: Option<u64>,
    /// No job before this (after a failure).
    retry_at_ms: u64,
    last_round_ms: u64,
}

impl Schedule {
    /// `started_empty`: this node started with no registry entries at all.
    pub fn new(started_empty: bool) -> Schedule {
        Schedule {
            restore_pending: started_empty,
            ..Schedule::default()
        }
    }

    /// The job to start in this round of the primary, given its registry's
    /// digest hash and entries, and the live peers' registry entries (`None`:
    /// not gossiped yet).
    pub fn next(
        &mut self,
        now_ms: u64,
        hash: &str,
        entries: usize,
        peers: &[Option<usize>],
        config: &BackupConfig,
    ) -> Option<Job> {
        if now_ms.saturating_sub(self.last_round_ms) > PAUSE_MS {
            self.checked_ms = None;
        }
        self.last_round_ms = now_ms;
        if self.seen.as_ref().is_none_or(|(seen, _)| seen != hash) {
            self.seen = Some((hash.to_string(), now_ms));
        }
        if now_ms < self.retry_at_ms {
            return None;
        }
        if self.restore_pending {
            if entries > 0 || peers.iter().any(|p| p.is_some_and(|n| n > 0)) {
                // Someone has a registry: nothing to restore into.
                self.restore_pending = false;
            } else if peers.iter().any(Option::is_none) {
                return None;
            } else {
                return Some(Job::AutoRestore);
            }
        }
        let interval_ms = config.interval_secs.saturating_mul(1000);
        if self
            .checked_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= interval_ms)
        {
            return Some(Job::Check);
        }
        let settled = self
            .seen
            .as_ref()
            .is_some_and(|(_, since)| now_ms.saturating_sub(*since) >= config.debounce_ms);
        (entries > 0 && settled && self.backed_up.as_deref() != Some(hash)).then_some(Job::Write)
    }

    /// Takes a job's end into account.
    pub fn done(&mut self, job: Job, outcome: Outcome, now_ms: u64) {
        match outcome {
            Err(()) => self.retry_at_ms = now_ms.saturating_add(RETRY_MS),
            Ok(hash) => {
                if let Some(hash) = hash {
                    self.backed_up = Some(hash);
                }
                match job {
                    Job::AutoRestore => self.restore_pending = false,
                    Job::Check => self.checked_ms = Some(now_ms),
                    Job::Write => {}
                }
            }
        }
    }

    /// A backup of the registry with digest `hash` was written outside the
    /// schedule (on demand).
    pub fn written(&mut self, hash: &str) {
        self.backed_up = Some(hash.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackupConfig {
        BackupConfig {
            url: Some("memory://b".into()),
            keep: 3,
            interval_secs: 60,
            debounce_ms: 500,
        }
    }

    #[test]
    fn a_fresh_member_restores_once_everyone_is_known_empty_and_backs_up_nothing_before() {
        let c = config();
        let mut s = Schedule::new(true);
        assert_eq!(
            s.next(1_000, "e", 0, &[Some(0), None], &c),
            None,
            "a peer unknown"
        );
        assert_eq!(
            s.next(1_100, "e", 0, &[Some(0), Some(0)], &c),
            Some(Job::AutoRestore)
        );
        s.done(Job::AutoRestore, Err(()), 1_200);
        assert_eq!(
            s.next(1_300, "e", 0, &[Some(0), Some(0)], &c),
            None,
            "retry later"
        );
        assert_eq!(
            s.next(1_200 + RETRY_MS, "e", 0, &[Some(0), Some(0)], &c),
            Some(Job::AutoRestore)
        );
        s.done(Job::AutoRestore, Ok(Some("r".into())), 7_000);
        // The restored registry is in the store already: a check, then nothing.
        assert_eq!(s.next(7_100, "r", 4, &[Some(4)], &c), Some(Job::Check));
        s.done(Job::Check, Ok(Some("r".into())), 7_200);
        assert_eq!(s.next(9_000, "r", 4, &[Some(4)], &c), None);
    }

    #[test]
    fn a_member_that_had_a_registry_or_meets_one_never_restores() {
        let c = config();
        let mut s = Schedule::new(false);
        assert_eq!(s.next(1_000, "e", 0, &[Some(0)], &c), Some(Job::Check));
        let mut s = Schedule::new(true);
        assert_eq!(
            s.next(1_000, "e", 0, &[Some(0), Some(3)], &c),
            Some(Job::Check)
        );
        s.done(Job::Check, Ok(None), 1_000);
        assert_eq!(s.next(1_100, "e", 0, &[Some(0), Some(0)], &c), None);
    }

    #[test]
    fn changes_are_backed_up_once_they_settle_and_checked_every_interval() {
        let c = config();
        let mut s = Schedule::new(false);
        assert_eq!(s.next(0, "a", 2, &[], &c), Some(Job::Check));
        s.done(Job::Check, Ok(Some("a".into())), 0);
        assert_eq!(s.next(100, "a", 2, &[], &c), None);
        // Changes keep coming: wait until none came for debounce_ms.
        assert_eq!(s.next(200, "b", 3, &[], &c), None);
        assert_eq!(s.next(600, "c", 4, &[], &c), None);
        assert_eq!(s.next(1_000, "c", 4, &[], &c), None);
        assert_eq!(s.next(1_100, "c", 4, &[], &c), Some(Job::Write));
        s.done(Job::Write, Ok(Some("c".into())), 1_150);
        assert_eq!(s.next(1_200, "c", 4, &[], &c), None);
        // A failed write is retried after RETRY_MS.
        assert_eq!(s.next(1_300, "d", 4, &[], &c), None);
        assert_eq!(s.next(1_800, "d", 4, &[], &c), Some(Job::Write));
        s.done(Job::Write, Err(()), 1_800);
        assert_eq!(s.next(2_000, "d", 4, &[], &c), None);
        assert_eq!(s.next(1_800 + RETRY_MS, "d", 4, &[], &c), Some(Job::Write));
        s.done(Job::Write, Ok(Some("d".into())), 7_000);
        // Rounds every second: a check every interval_secs (the last was at 0).
        let mut jobs = Vec::new();
        for now in (8..=130).map(|secs| secs * 1_000) {
            if let Some(job) = s.next(now, "d", 4, &[], &c) {
                jobs.push((now, job));
                s.done(job, Ok(Some("d".into())), now);
            }
        }
        assert_eq!(jobs, [(60_000, Job::Check), (120_000, Job::Check)]);
        // After a pause (another member was primary meanwhile): a check at once.
        assert_eq!(s.next(145_000, "d", 4, &[], &c), Some(Job::Check));
        s.done(Job::Check, Ok(Some("d".into())), 145_000);
        // An on-demand backup counts; an empty registry is never written alone.
        s.next(145_100, "e", 5, &[], &c);
        s.written("e");
        assert_eq!(s.next(146_000, "e", 5, &[], &c), None);
        s.next(146_100, "z", 0, &[], &c);
        assert_eq!(s.next(147_000, "z", 0, &[], &c), None);
    }
}
