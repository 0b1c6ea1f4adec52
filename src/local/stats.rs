//! Statistics: per database (state, shards, files, bytes, bytes shared with other
//! databases, reads) and per disk (capacity, free, used by dram, bytes saved by
//! storing identical files once).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{Inner, Local, NodeError};
use crate::catalog::{
    CACHE, CacheEntry, DATABASES, DatabaseRecord, DbState, MANIFESTS, Mode, PARTS, PartRecord,
    PartState, READS, ReadStats, key,
};
use crate::storage::{DiskStats, Manifest, Part};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub node: NodeStats,
    pub databases: Vec<DatabaseStats>,
    pub disks: Vec<DiskUsage>,
    /// The background re-hash of every blob.
    #[serde(default)]
    pub scrub: super::ScrubStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStats {
    pub id: String,
    pub uptime_secs: u64,
    /// Bytes fetched from object storage since start.
    pub bytes_downloaded: u64,
    pub files_downloaded: u64,
    /// Files whose content was already on disk (not stored again).
    pub files_deduplicated: u64,
    /// Bytes on disk that serve more than one file (space saved by dedup).
    pub dedup_saved_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseStats {
    pub name: String,
    pub state: DbState,
    pub mode: Mode,
    pub shards: u64,
    pub files: u64,
    pub bytes: u64,
    /// Bytes of this database's files whose content another database also has.
    pub bytes_shared: u64,
    /// Bytes of this database on local disk (for lazy ones, the cached part).
    pub bytes_local: u64,
    /// Files read.
    pub reads: u64,
    /// Queries run on it.
    pub queries: u64,
    pub last_read_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskUsage {
    #[serde(flatten)]
    pub disk: DiskStats,
    pub dedup_saved_bytes: u64,
}

impl Local {
    pub fn stats(&self) -> Result<Stats, NodeError> {
        let inner = &self.inner;
        let records: Vec<(String, DatabaseRecord)> = inner.catalog.scan(DATABASES, "")?;
        let manifests: HashMap<String, Manifest> =
            inner.catalog.scan(MANIFESTS, "")?.into_iter().collect();
        let parts: HashMap<String, PartRecord> =
            inner.catalog.scan(PARTS, "")?.into_iter().collect();
        let cached: Vec<(String, CacheEntry)> = inner.catalog.scan(CACHE, "")?;

        // Which databases hold each content hash.
        let mut holders: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (name, manifest) in &manifests {
            for file in &manifest.files {
                if let Some(sha) = &file.sha256 {
                    holders.entry(sha).or_default().insert(name);
                }
            }
        }
        // Local files per (disk, hash): each beyond the first is space saved.
        let mut local: HashMap<(String, String), (u64, u64)> = HashMap::new();
        let mut local_bytes: HashMap<String, u64> = HashMap::new();
        for (name, manifest) in &manifests {
            let Ok(split) = manifest.parts() else {
                continue;
            };
            for (part, files) in split {
                let Some(record) = parts.get(&key(&[name, &part.key()])) else {
                    continue;
                };
                if record.state != PartState::Ready {
                    continue;
                }
                for placed in files {
                    if let Some(sha) = placed.file.sha256 {
                        let slot = local
                            .entry((record.disk.clone(), sha))
                            .or_insert((placed.file.size, 0));
                        slot.1 += 1;
                        *local_bytes.entry(name.clone()).or_default() += placed.file.size;
                    }
                }
            }
        }
        for (cache_key, entry) in &cached {
            let name = cache_key.split('\0').next().unwrap_or_default().to_string();
            let slot = local
                .entry((entry.disk.clone(), entry.sha256.clone()))
                .or_insert((entry.size, 0));
            slot.1 += 1;
            *local_bytes.entry(name).or_default() += entry.size;
        }
        let mut saved_per_disk: HashMap<String, u64> = HashMap::new();
        for ((disk, _), (size, count)) in &local {
            *saved_per_disk.entry(disk.clone()).or_default() += size * count.saturating_sub(1);
        }

        let databases = records
            .iter()
            .map(|(name, record)| {
                let manifest = manifests.get(name);
                let mut shared = 0;
                let mut seen = HashSet::new();
                for file in manifest.map(|m| m.files.as_slice()).unwrap_or_default() {
                    if let Some(sha) = &file.sha256
                        && holders.get(sha.as_str()).is_some_and(|h| h.len() > 1)
                        && seen.insert(sha)
                    {
                        shared += file.size;
                    }
                }
                let shards = parts
                    .keys()
                    .filter(|k| {
                        k.split_once('\0').is_some_and(|(db, p)| {
                            db == name && matches!(Part::from_key(p), Some(Part::Shard(_)))
                        })
                    })
                    .count() as u64;
                let reads = inner.read_stats(name)?;
                Ok(DatabaseStats {
                    name: name.clone(),
                    state: record.state,
                    mode: record.mode,
                    shards,
                    files: manifest.map(|m| m.files.len() as u64).unwrap_or(0),
                    bytes: manifest.map(Manifest::total_bytes).unwrap_or(0),
                    bytes_shared: shared,
                    bytes_local: local_bytes.get(name).copied().unwrap_or(0),
                    reads: reads.reads,
                    queries: reads.queries,
                    last_read_ms: reads.last_read_ms,
                })
            })
            .collect::<Result<_, NodeError>>()?;
        let disks: Vec<DiskUsage> = inner
            .disks
            .iter()
            .map(|d| DiskUsage {
                dedup_saved_bytes: saved_per_disk.get(&d.id).copied().unwrap_or(0),
                disk: d.stats(),
            })
            .collect();
        let downloads = inner.usage.downloads();
        Ok(Stats {
            node: NodeStats {
                id: inner.node_id.clone(),
                uptime_secs: self.now_ms().saturating_sub(inner.started_ms) / 1000,
                bytes_downloaded: downloads.bytes,
                files_downloaded: downloads.files,
                files_deduplicated: downloads.deduplicated,
                dedup_saved_bytes: disks.iter().map(|d| d.dedup_saved_bytes).sum(),
            },
            databases,
            disks,
            scrub: inner.scrub.status(),
        })
    }
}

impl Inner {
    /// Read counters of a database (`name`) or one of its parts
    /// (`name\0part key`): what the catalog has plus what is not flushed yet.
    pub(super) fn read_stats(&self, counter: &str) -> Result<ReadStats, NodeError> {
        let stored: ReadStats = self.catalog.get(READS, counter)?.unwrap_or_default();
        Ok(self.usage.with_pending(counter, stored))
    }
}

impl Local {
    /// The gauges of a scrape of this node (see [`crate::observe::metrics::gauges`]).
    pub fn metric_gauges(&self) -> Result<Vec<crate::observe::Gauge>, NodeError> {
        let inventory = self.inventory()?;
        let mut out = crate::observe::metrics::gauges(&inventory, &self.disk_stats(), self.load());
        let scrub = self.inner.scrub.status();
        out.extend([
            crate::observe::Gauge::new(
                "dram_scrub_running",
                "1 while a scrub pass re-hashes this node's blobs.",
                f64::from(u8::from(scrub.running)),
            ),
            crate::observe::Gauge::new(
                "dram_scrub_pass_checked_bytes",
                "Bytes the current (or last) scrub pass has hashed.",
                scrub.bytes_checked as f64,
            ),
            crate::observe::Gauge::new(
                "dram_scrub_pass_bytes",
                "Bytes the current (or last) scrub pass hashes in all.",
                scrub.bytes_total as f64,
            ),
            crate::observe::Gauge::new(
                "dram_scrub_passes",
                "Scrub passes completed since this node started.",
                scrub.passes as f64,
            ),
            crate::observe::Gauge::new(
                "dram_scrub_damaged_blobs",
                "Damaged blobs found (and quarantined) since this node started.",
                scrub.damaged as f64,
            ),
        ]);
        Ok(out)
    }
}
