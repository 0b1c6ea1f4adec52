//! Durability without a flush per file. Downloads commit blobs, link them and
//! mark parts ready without fsync; the flusher syncs a disk once no file has
//! been written to it for `download.sync_delay_ms` (at least every
//! [`MAX_UNSYNCED`] while writes go on) and records in the catalog when that
//! sync began: everything written before it is durable. A clean shutdown
//! closes the disks to writes, syncs them and records that it did.
//!
//! At start after anything but a clean shutdown, what was written after the
//! recorded time is checked again before anything is served: blobs written
//! since (by mtime) are hashed, and one that no longer matches its name is
//! removed with every link to it; ready parts written since (or that lost a
//! link) must have all their files, else they go back to downloading and the
//! load resumes. A power loss can therefore cost a download, never a wrong
//! answer. Invariant: a disk's recorded time is never later than the start of
//! a sync that completed, and `clean` is set only when nothing was written
//! after that sync began.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{Inner, NodeError, blocking};
// Durability compares with the file system's times and paces fsyncs:
// the system's clock, never a test's.
use crate::catalog::{Catalog, MANIFESTS, META, PARTS, PartRecord, PartState};
use crate::clock::now_ms;
use crate::config::Config;
use crate::storage::disk::BlobFile;
use crate::storage::{Disk, Manifest, Part, StorageError};

/// Longest a disk stays unsynced while writes keep coming.
pub const MAX_UNSYNCED: Duration = Duration::from_secs(30);

/// Slack for coarse file timestamps and small clock steps: files written this
/// long before a recorded sync began are checked too.
const CLOCK_SLACK_MS: u64 = 2_000;

/// The catalog's record of a disk's last sync.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SyncMark {
    /// When the sync began (ms since the epoch).
    started_ms: u64,
    /// Set by a clean shutdown: nothing was written after the sync.
    clean: bool,
}

type PartFiles = std::collections::BTreeMap<Part, Vec<crate::storage::manifest::PlacedFile>>;

/// What start found possibly unsynced on one disk.
pub(crate) struct Unsynced {
    disk: usize,
    /// Files written after this may have been lost; `None`: nothing to check
    /// (a clean shutdown, a new disk, or one an older dram flushed file by file).
    since_ms: Option<u64>,
    blobs: Vec<BlobFile>,
}

fn synced_key(path: &Path) -> String {
    format!("synced:{}", path.display())
}

/// Opens the configured disks; for each, lists the blobs written since its
/// last recorded sync unless it was shut down cleanly.
pub(crate) fn open_disks(
    config: &Config,
    catalog: &Catalog,
) -> Result<(Vec<Arc<Disk>>, Vec<Unsynced>), NodeError> {
    let mut disks = Vec::new();
    let mut unsynced = Vec::new();
    for (i, disk) in config.effective_disks().iter().enumerate() {
        let mark: Option<SyncMark> = catalog.get(META, &synced_key(&disk.path))?;
        let since_ms = mark
            .filter(|mark| !mark.clean)
            .map(|mark| mark.started_ms.saturating_sub(CLOCK_SLACK_MS));
        let (opened, blobs) = Disk::open_listing(
            i.to_string(),
            &disk.path,
            disk.high_watermark,
            disk.max_bytes,
            since_ms.unwrap_or(u64::MAX),
        )?;
        disks.push(Arc::new(opened));
        unsynced.push(Unsynced {
            disk: i,
            since_ms,
            blobs,
        });
    }
    Ok((disks, unsynced))
}

impl Inner {
    /// Checks again what was written after each disk's last sync (syncing the
    /// disk once that is done), then records that this run has begun: from
    /// now on, a crash leaves the disk to be checked. Runs before loads resume.
    pub(crate) fn recover_unsynced(&self, unsynced: Vec<Unsynced>) -> Result<(), NodeError> {
        for Unsynced {
            disk,
            since_ms,
            blobs,
        } in unsynced
        {
            let Some(disk) = self.disks.get(disk).cloned() else {
                continue;
            };
            let started = now_ms();
            if let Some(since_ms) = since_ms {
                let damaged = self.drop_damaged_blobs(&disk, &blobs)?;
                let (parts, _) = self.reopen_incomplete_parts(&disk, since_ms, &damaged)?;
                if !blobs.is_empty() || parts > 0 {
                    disk.sync()?;
                    info!(
                        disk = %disk.id,
                        blobs = blobs.len(),
                        parts,
                        "checked what was written after the last sync"
                    );
                }
            }
            self.mark_synced(&disk, started, false)?;
        }
        Ok(())
    }

    /// Hashes blobs written since the last sync; removes those whose content
    /// is not what their name says, with every link to them. Returns their
    /// hashes.
    fn drop_damaged_blobs(
        &self,
        disk: &Disk,
        blobs: &[BlobFile],
    ) -> Result<HashSet<String>, NodeError> {
        let damaged: Vec<(String, String)> = blobs
            .iter()
            .filter_map(|blob| {
                check_blob(disk, &blob.sha256)
                    .err()
                    .map(|why| (blob.sha256.clone(), why))
            })
            .collect();
        self.remove_damaged_blobs(disk, damaged, "after a crash before it was synced")
    }

    /// Removes blobs whose content is not what their name says (with why),
    /// with every link to them, each an error event naming `when`. Returns
    /// their hashes.
    pub(super) fn remove_damaged_blobs(
        &self,
        disk: &Disk,
        damaged: Vec<(String, String)>,
        when: &str,
    ) -> Result<HashSet<String>, NodeError> {
        if damaged.is_empty() {
            return Ok(HashSet::new());
        }
        let inodes: HashSet<(u64, u64)> = damaged
            .iter()
            .filter_map(|(sha, _)| std::fs::metadata(disk.blob_path(sha)).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        let dbs = disk.root.join("dbs");
        for entry in walkdir::WalkDir::new(&dbs).min_depth(3) {
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || !inodes.contains(&(meta.dev(), meta.ino())) {
                continue;
            }
            std::fs::remove_file(entry.path()).map_err(StorageError::io(entry.path()))?;
        }
        let mut hashes = HashSet::new();
        for (sha, why) in damaged {
            disk.remove_blob(&sha)?;
            let error = StorageError::Mismatch {
                path: disk.blob_path(&sha).display().to_string(),
                message: format!("{why} {when}; removed"),
            };
            warn!(disk = %disk.id, error = %error, "damaged blob");
            self.record_error(Some(&disk.id), None, None, &error);
            hashes.insert(sha);
        }
        Ok(hashes)
    }

    /// Ready parts on `disk` that became ready after `since_ms` or have a
    /// file whose blob was `damaged` (and removed with its links): any missing
    /// or short file sends the part back to downloading. Returns how many
    /// parts were checked, and the keys of those sent back.
    pub(super) fn reopen_incomplete_parts(
        &self,
        disk: &Disk,
        since_ms: u64,
        damaged: &HashSet<String>,
    ) -> Result<(usize, Vec<String>), NodeError> {
        let parts: Vec<(String, PartRecord)> = self.catalog.scan(PARTS, "")?;
        // Per database: its files by part, from its manifest (read once).
        let mut layouts: HashMap<String, Option<PartFiles>> = HashMap::new();
        let mut checked = 0;
        let mut incomplete = Vec::new();
        for (part_key, record) in parts {
            let Some((database, part_name)) = part_key.split_once('\0') else {
                continue;
            };
            let recent = record.written_ms.is_some_and(|ms| ms >= since_ms);
            if record.disk != disk.id
                || record.state != PartState::Ready
                || record.trashed_ms.is_some()
                || (!recent && damaged.is_empty())
            {
                continue;
            }
            let Some(part) = Part::from_key(part_name) else {
                continue;
            };
            let layout = match layouts.get(database) {
                Some(layout) => layout,
                None => {
                    let manifest: Option<Manifest> = self.catalog.get(MANIFESTS, database)?;
                    let layout = manifest.and_then(|m| m.parts().ok());
                    layouts.entry(database.to_string()).or_insert(layout)
                }
            };
            let Some(files) = layout.as_ref().and_then(|layout| layout.get(&part)) else {
                continue;
            };
            let lost_link = files.iter().any(|placed| {
                (placed.file.sha256.as_ref()).is_some_and(|sha| damaged.contains(sha))
            });
            if !(recent || lost_link) {
                continue;
            }
            checked += 1;
            let dir = disk.part_dir(database, &part);
            let whole = files.iter().all(|placed| {
                std::fs::metadata(dir.join(&placed.local))
                    .is_ok_and(|m| m.len() == placed.file.size)
            });
            if !whole {
                incomplete.push(part_key);
            }
        }
        if !incomplete.is_empty() {
            self.catalog.write(|w| {
                for part_key in &incomplete {
                    if let Some(mut record) = w.get::<PartRecord>(PARTS, part_key)? {
                        record.state = PartState::Downloading;
                        record.written_ms = None;
                        w.put(PARTS, part_key, &record)?;
                    }
                }
                Ok::<_, NodeError>(())
            })?;
            for part_key in &incomplete {
                warn!(part = %part_key.replace('\0', "/"), "part lost files (a damaged blob, or a crash before a sync); loading it again");
            }
        }
        Ok((checked, incomplete))
    }

    /// Records that everything written to `disk` before `started_ms` is
    /// durable, and whether nothing was written after.
    fn mark_synced(&self, disk: &Disk, started_ms: u64, clean: bool) -> Result<(), NodeError> {
        let mark = SyncMark { started_ms, clean };
        self.catalog
            .write(|w| w.put(META, &synced_key(&disk.root), &mark))?;
        Ok(())
    }

    /// Syncs every disk written to since its last sync that has been idle for
    /// `download.sync_delay_ms` or unsynced for [`MAX_UNSYNCED`]. `dirty_since`
    /// tracks, per disk, when the flusher first saw it unsynced.
    pub(crate) async fn sync_idle_disks(&self, dirty_since: &mut HashMap<String, u64>) {
        let delay = self.config.download.sync_delay_ms;
        for disk in &self.disks {
            if !disk.is_dirty() {
                dirty_since.remove(&disk.id);
                continue;
            }
            let now = now_ms();
            let first = *dirty_since.entry(disk.id.clone()).or_insert(now);
            let idle = now.saturating_sub(disk.last_write_ms()) >= delay;
            let overdue = now.saturating_sub(first) >= MAX_UNSYNCED.as_millis() as u64;
            if !idle && !overdue {
                continue;
            }
            let started = now_ms();
            let syncing = disk.clone();
            let result = blocking(move || Ok(syncing.sync()?))
                .await
                .and_then(|()| self.mark_synced(disk, started, false));
            match result {
                Ok(()) => {
                    dirty_since.remove(&disk.id);
                }
                Err(e) => {
                    warn!(disk = %disk.id, error = %e, "syncing the disk failed; trying again");
                    if let NodeError::Storage(e) = &e {
                        self.record_error(Some(&disk.id), None, None, e);
                    }
                }
            }
        }
    }

    /// At shutdown: closes every disk to writes (waiting for those under way),
    /// syncs it and records a clean shutdown, so the next start checks nothing.
    pub(crate) async fn close_disks(&self) {
        for disk in &self.disks {
            let started = now_ms();
            let closing = disk.clone();
            let result = blocking(move || {
                closing.close();
                if closing.is_dirty() {
                    closing.sync()?;
                }
                Ok(())
            })
            .await
            .and_then(|()| self.mark_synced(disk, started, true));
            if let Err(e) = result {
                warn!(disk = %disk.id, error = %e, "syncing the disk at shutdown failed; the next start checks it");
            }
        }
    }
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Whether the blob `sha256` on `disk` holds what its name says: `Err` says
/// why not. A blob that is gone (purged meanwhile) is not damaged.
pub(super) fn check_blob(disk: &Disk, sha256: &str) -> Result<(), String> {
    match hash_file(&disk.blob_path(sha256)) {
        Ok(sha) if sha == sha256 => Ok(()),
        Ok(sha) => Err(format!("content hashes to {sha}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("unreadable: {e}")),
    }
}
