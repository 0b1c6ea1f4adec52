//! The scrub (as Arvados Keep's and HDFS's block scanners): every blob on
//! every disk is hashed again in the background, at most
//! `scrub.bytes_per_sec`, a full pass every `scrub.interval_secs` (or now,
//! on `POST /v1/admin/scrub`). A blob whose content is not what its name
//! says is quarantined at once: it and every link to it are removed, so its
//! shards stop being served here (they go back to downloading), an error
//! event names it, and their loads fetch it again. Loads also check a blob
//! before deduplication links it into another database
//! ([`Inner::intact_blob`]).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::durable::check_blob;
use super::{Inner, NodeError, blocking, load};
use crate::catalog::META;
use crate::storage::Disk;
use crate::sync::lock;

/// Where the last pass began, kept in the catalog across restarts.
const LAST_PASS_KEY: &str = "scrub";

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct LastPass {
    started_ms: u64,
}

/// What the scrub is doing and has done (`scrub` in `GET /v1/stats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrubStatus {
    /// A pass is under way.
    pub running: bool,
    /// When the current (or last) pass began, ms since the epoch.
    pub pass_started_ms: Option<u64>,
    /// When the last pass that went through every blob ended.
    pub last_completed_ms: Option<u64>,
    /// Blobs and bytes hashed in the current (or last) pass, of how many.
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    pub bytes_total: u64,
    /// Passes completed since this node started.
    pub passes: u64,
    /// Damaged blobs found (by the scrub, or before a deduplication) since
    /// this node started.
    pub damaged: u64,
}

/// The scrub's state, shared by its task, the API and loads.
#[derive(Default)]
pub(crate) struct Scrubber {
    status: std::sync::Mutex<ScrubStatus>,
    now: Notify,
}

impl Scrubber {
    pub(crate) fn status(&self) -> ScrubStatus {
        lock(&self.status).clone()
    }
}

/// Runs passes when they are due or asked for, until shutdown (holding the
/// node only while a pass runs).
pub(super) async fn run(
    node: Weak<Inner>,
    scrubber: Arc<Scrubber>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let due_in = {
            let Some(inner) = node.upgrade() else { return };
            let interval = Duration::from_secs(inner.config.scrub.interval_secs);
            let last: Option<LastPass> = inner.catalog.get(META, LAST_PASS_KEY).ok().flatten();
            last.map_or(Duration::ZERO, |last| {
                let since = Duration::from_millis(inner.now_ms().saturating_sub(last.started_ms));
                interval.saturating_sub(since)
            })
        };
        tokio::select! {
            () = tokio::time::sleep(due_in) => {}
            () = scrubber.now.notified() => {}
            _ = shutdown.changed() => return,
        }
        let Some(inner) = node.upgrade() else { return };
        tokio::select! {
            result = inner.scrub_pass() => if let Err(e) = result {
                warn!(error = %e, "scrub pass failed");
            },
            _ = shutdown.changed() => return,
        }
    }
}

impl Inner {
    /// Whether the blob `sha256` of `size` bytes is on `disk` and intact:
    /// one that is there but damaged is quarantined (and `false`), so that
    /// a damaged blob is never linked into another database.
    pub(super) fn intact_blob(self: &Arc<Self>, disk: &Disk, sha256: &str, size: u64) -> bool {
        if !disk.has_blob(sha256, size) {
            return false;
        }
        match check_blob(disk, sha256) {
            Ok(()) => disk.has_blob(sha256, size),
            Err(why) => {
                if let Err(e) = self.quarantine(disk, vec![(sha256.to_string(), why)]) {
                    warn!(disk = %disk.id, error = %e, "quarantining a damaged blob failed");
                }
                false
            }
        }
    }

    /// Removes damaged blobs with their links; the parts that used them go
    /// back to downloading, and their loads fetch them again.
    fn quarantine(
        self: &Arc<Self>,
        disk: &Disk,
        damaged: Vec<(String, String)>,
    ) -> Result<(), NodeError> {
        let count = damaged.len() as u64;
        let removed = self.remove_damaged_blobs(disk, damaged, "found by the scrub")?;
        lock(&self.scrub.status).damaged += count;
        let (_, reopened) = self.reopen_incomplete_parts(disk, u64::MAX, &removed)?;
        let mut databases: Vec<&str> = reopened
            .iter()
            .filter_map(|key| key.split_once('\0').map(|(database, _)| database))
            .collect();
        databases.sort_unstable();
        databases.dedup();
        for database in databases {
            info!(database, "loading again what a damaged blob held");
            load::spawn(self, database);
        }
        Ok(())
    }

    /// Starts a pass now, unless one is under way; returns the status.
    pub(crate) fn scrub_now(&self) -> ScrubStatus {
        self.scrub.now.notify_one();
        self.scrub.status()
    }

    /// Hashes every blob once, at most `scrub.bytes_per_sec`.
    async fn scrub_pass(self: &Arc<Self>) -> Result<(), NodeError> {
        let started_ms = self.now_ms();
        self.catalog
            .write(|w| w.put(META, LAST_PASS_KEY, &LastPass { started_ms }))?;
        let mut work = Vec::new();
        for disk in &self.disks {
            let listing = disk.clone();
            let blobs = blocking(move || Ok(listing.list_blobs()?)).await?;
            work.extend(
                blobs
                    .into_iter()
                    .map(|(sha, size)| (disk.clone(), sha, size)),
            );
        }
        {
            let mut status = lock(&self.scrub.status);
            status.running = true;
            status.pass_started_ms = Some(started_ms);
            status.blobs_checked = 0;
            status.bytes_checked = 0;
            status.bytes_total = work.iter().map(|(_, _, size)| size).sum();
        }
        let rate = self.config.scrub.bytes_per_sec.max(1) as f64;
        let began = Instant::now();
        let mut done = 0u64;
        for (disk, sha, size) in work {
            let (checked, sha_checked) = (disk.clone(), sha.clone());
            let verdict = blocking(move || Ok(check_blob(&checked, &sha_checked))).await?;
            if let Err(why) = verdict {
                self.quarantine(&disk, vec![(sha, why)])?;
            }
            done += size;
            {
                let mut status = lock(&self.scrub.status);
                status.blobs_checked += 1;
                status.bytes_checked = done;
            }
            // Throttle: never ahead of `rate` bytes per second.
            let due = Duration::from_secs_f64(done as f64 / rate);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let mut status = lock(&self.scrub.status);
        status.running = false;
        status.last_completed_ms = Some(self.now_ms());
        status.passes += 1;
        info!(
            blobs = status.blobs_checked,
            bytes = done,
            damaged = status.damaged,
            "scrub pass done"
        );
        Ok(())
    }
}
