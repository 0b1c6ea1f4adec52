//! The operations index of this node: which blobs serve which files of which
//! databases on which disk (the `blob_uses` table, kept with the manifests),
//! and views over it — a blob, a database, the disks (space, bytes saved by
//! content addressing, read activity against space, error trends, download
//! throughput, imbalance), the trash and the lazy cache's eviction order.
//! `api/index.rs` merges these views cluster-wide.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{Inner, Local, NodeError};
use crate::catalog::{
    BLOB_USES, CACHE, CacheEntry, DATABASES, DatabaseRecord, DbState, MANIFESTS, PARTS, PartRecord,
    READS, ReadStats, Writer, key,
};
use crate::observe::events::DiskTrend;
use crate::storage::{Manifest, Part, StorageError};

/// What one file of a database takes from a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobUse {
    /// Part key: `global` or `shards/<id>`.
    pub part: String,
    pub size: u64,
}

/// Records which blob serves each file of `manifest` (files whose hash is known).
pub(crate) fn record_manifest(
    w: &mut Writer,
    database: &str,
    manifest: &Manifest,
) -> Result<(), NodeError> {
    for (part, files) in manifest.parts().map_err(StorageError::Manifest)? {
        for placed in files {
            if let Some(sha) = &placed.file.sha256 {
                let value = BlobUse {
                    part: part.key(),
                    size: placed.file.size,
                };
                w.put(BLOB_USES, &key(&[sha, database, &placed.file.path]), &value)?;
            }
        }
    }
    Ok(())
}

/// Forgets the files of a database that is purged.
pub(crate) fn forget_manifest(
    w: &mut Writer,
    database: &str,
    manifest: &Manifest,
) -> Result<(), NodeError> {
    for file in &manifest.files {
        if let Some(sha) = &file.sha256 {
            w.remove(BLOB_USES, &key(&[sha, database, &file.path]))?;
        }
    }
    Ok(())
}

impl Inner {
    /// Builds the blob index from the manifests when it is empty (a catalog
    /// written before the index existed).
    pub(crate) fn index_blobs_if_missing(&self) -> Result<(), NodeError> {
        let manifests: Vec<(String, Manifest)> = self.catalog.scan(MANIFESTS, "")?;
        let indexed = !self
            .catalog
            .newest_from::<BlobUse>(BLOB_USES, "", 1)?
            .is_empty();
        if manifests.is_empty() || indexed {
            return Ok(());
        }
        self.catalog.write(|w| {
            for (name, manifest) in &manifests {
                record_manifest(w, name, manifest)?;
            }
            Ok::<_, NodeError>(())
        })
    }

    /// Read counters per part key (`<database>\0<part key>`), flushed and pending.
    fn part_reads(&self) -> Result<HashMap<String, ReadStats>, NodeError> {
        let mut reads: HashMap<String, ReadStats> =
            self.catalog.scan(READS, "")?.into_iter().collect();
        self.usage.add_pending(&mut reads);
        Ok(reads)
    }
}

/// `GET /v1/index/blobs/{sha256}` on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobIndex {
    pub node: String,
    pub sha256: String,
    pub size: u64,
    /// Files this content serves.
    pub uses: Vec<BlobUseInfo>,
    /// Disks of this node that store the blob.
    pub disks: Vec<String>,
    /// Bytes the files would take stored separately.
    pub logical_bytes: u64,
    /// Bytes the blob takes (once per disk that stores it).
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobUseInfo {
    pub database: String,
    pub part: String,
    pub path: String,
    /// Where this node holds that part, and in which state (absent: placed
    /// elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `GET /v1/index/databases/{name}` on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseIndex {
    pub node: String,
    pub database: String,
    pub state: DbState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub parts: Vec<PartIndex>,
    /// Bytes of the parts held here.
    pub logical_bytes: u64,
    /// Of those, bytes whose content another database here shares.
    pub shared_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartIndex {
    pub part: String,
    pub disk: String,
    pub state: String,
    pub files: u64,
    pub bytes: u64,
    pub shared_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trashed_ms: Option<u64>,
    /// When its download finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read_ms: Option<u64>,
    pub reads: u64,
    pub queries: u64,
}

/// `GET /v1/index/disks` on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DisksIndex {
    pub node: String,
    pub disks: Vec<DiskIndex>,
    /// Fullest disk's use (used / capacity) over the mean use of the disks.
    pub max_over_mean: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskIndex {
    pub id: String,
    pub path: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub over_watermark: bool,
    /// Files written since the disk's last sync.
    pub unsynced: bool,
    /// used / capacity.
    #[serde(rename = "use")]
    pub use_ratio: f64,
    pub blobs: u64,
    /// Bytes the blobs take.
    pub stored_bytes: u64,
    /// Bytes the files of the parts on this disk would take stored separately.
    pub logical_bytes: u64,
    /// What content addressing saves here: logical − stored (at least 0).
    pub saved_bytes: u64,
    /// Share of the bytes of the parts here read in the last hour, day, week.
    pub read_share: ReadShare,
    /// Error events per hour over the last 24 hours (oldest first) and by class.
    pub errors_per_hour: Vec<u64>,
    pub errors_by_class: BTreeMap<String, u64>,
    /// Downloads finished in the last hour: bytes and MB/s over their time.
    pub written_bytes_hour: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_mb_s_hour: Option<f64>,
    /// Bytes read through shard handles in the last hour.
    pub read_bytes_hour: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ReadShare {
    pub hour: f64,
    pub day: f64,
    pub week: f64,
}

/// What garbage collection and the lazy cache will remove on this node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Removals {
    /// Trashed databases and copies, soonest purged first.
    pub trash: Vec<TrashItem>,
    /// Lazily cached files in eviction order (least recently read first);
    /// evicted only while their disk is past its high watermark.
    pub cache: Vec<CacheItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrashItem {
    pub database: String,
    /// Absent: the whole database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    pub bytes: u64,
    pub trashed_ms: u64,
    /// Purged then, or sooner if the disk passes its high watermark.
    pub purge_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheItem {
    pub database: String,
    pub part: String,
    pub path: String,
    pub disk: String,
    pub bytes: u64,
    pub last_access_ms: u64,
    /// Not evicted before this (`cache.eviction_grace_ms` after the last read).
    pub protected_until_ms: u64,
}

fn state_name(record: &PartRecord) -> String {
    if record.trashed_ms.is_some() {
        "trashed".to_string()
    } else {
        super::shard::json_name(&record.state)
    }
}

impl Local {
    /// Where the blob `sha256` is used and stored on this node.
    pub fn blob_index(&self, sha256: &str) -> Result<BlobIndex, NodeError> {
        let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid || sha256.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(NodeError::InvalidInput(format!(
                "{sha256:?} is not a sha256 (64 lowercase hex digits)"
            )));
        }
        let inner = &self.inner;
        let entries: Vec<(String, BlobUse)> = inner.catalog.scan(BLOB_USES, &key(&[sha256, ""]))?;
        let parts: HashMap<String, PartRecord> =
            inner.catalog.scan(PARTS, "")?.into_iter().collect();
        let mut size = 0;
        let mut uses = Vec::new();
        for (entry_key, blob_use) in entries {
            let mut fields = entry_key.splitn(3, '\0').skip(1);
            let (Some(database), Some(path)) = (fields.next(), fields.next()) else {
                continue;
            };
            size = blob_use.size;
            let held = parts.get(&key(&[database, &blob_use.part]));
            uses.push(BlobUseInfo {
                database: database.to_string(),
                part: blob_use.part,
                path: path.to_string(),
                disk: held.map(|p| p.disk.clone()),
                state: held.map(state_name),
            });
        }
        let disks: Vec<String> = inner
            .disks
            .iter()
            .filter(|d| d.has_blob(sha256, size))
            .map(|d| d.id.clone())
            .collect();
        if uses.is_empty() && disks.is_empty() {
            return Err(NodeError::not_found("blob", sha256));
        }
        Ok(BlobIndex {
            node: inner.node_id.clone(),
            sha256: sha256.to_string(),
            size,
            logical_bytes: size * uses.len() as u64,
            stored_bytes: size * disks.len() as u64,
            uses,
            disks,
        })
    }

    /// The parts of a database on this node: disk, state, bytes, bytes shared
    /// with other databases, when each was written and last read.
    pub fn database_index(&self, name: &str) -> Result<DatabaseIndex, NodeError> {
        let inner = &self.inner;
        let record: DatabaseRecord = inner
            .catalog
            .get(DATABASES, name)?
            .ok_or_else(|| NodeError::not_found("database", name))?;
        let manifest: Option<Manifest> = inner.catalog.get(MANIFESTS, name)?;
        let held: Vec<(String, PartRecord)> = inner.catalog.scan(PARTS, &key(&[name, ""]))?;
        let reads = inner.part_reads()?;
        // Bytes per part whose content another database also uses.
        let mut shared: HashMap<String, u64> = HashMap::new();
        if let Some(manifest) = &manifest {
            let parts = manifest.parts().map_err(StorageError::Manifest)?;
            // One read transaction for every file's lookup.
            inner.catalog.read(|r| {
                for (part, files) in &parts {
                    for placed in files {
                        let Some(sha) = &placed.file.sha256 else {
                            continue;
                        };
                        let users: Vec<(String, BlobUse)> = r.scan(BLOB_USES, &key(&[sha, ""]))?;
                        let elsewhere = users
                            .iter()
                            .any(|(k, _)| k.split('\0').nth(1).is_some_and(|db| db != name));
                        if elsewhere {
                            *shared.entry(part.key()).or_default() += placed.file.size;
                        }
                    }
                }
                Ok(())
            })?;
        }
        let mut parts = Vec::new();
        for (part_key, part) in held {
            let Some(part_name) = part_key.split('\0').nth(1) else {
                continue;
            };
            let read = reads.get(&part_key).copied().unwrap_or_default();
            parts.push(PartIndex {
                part: part_name.to_string(),
                disk: part.disk.clone(),
                state: state_name(&part),
                files: part.files,
                bytes: part.bytes,
                shared_bytes: shared.get(part_name).copied().unwrap_or(0),
                trashed_ms: part.trashed_ms,
                written_ms: part.written_ms,
                last_read_ms: read.last_read_ms,
                reads: read.reads,
                queries: read.queries,
            });
        }
        Ok(DatabaseIndex {
            node: inner.node_id.clone(),
            database: name.to_string(),
            state: record.state,
            version: record.version,
            logical_bytes: parts.iter().map(|p| p.bytes).sum(),
            shared_bytes: parts.iter().map(|p| p.shared_bytes).sum(),
            parts,
        })
    }

    /// Every disk of this node: space, content addressing, activity, errors.
    pub fn disks_index(&self) -> Result<DisksIndex, NodeError> {
        let inner = &self.inner;
        let now = self.now_ms();
        let hour = 3_600_000;
        let trends = self.inner.events.trends(24, now.saturating_sub(hour))?;
        let held: Vec<(String, PartRecord)> = inner.catalog.scan(PARTS, "")?;
        let reads = inner.part_reads()?;
        let mut disks = Vec::new();
        for disk in &inner.disks {
            let stats = disk.stats();
            let blobs = disk.list_blobs()?;
            let stored: u64 = blobs.iter().map(|(_, size)| size).sum();
            let here: Vec<&(String, PartRecord)> =
                held.iter().filter(|(_, p)| p.disk == disk.id).collect();
            let logical: u64 = here.iter().map(|(_, p)| p.bytes).sum();
            let read_within = |window: u64| -> f64 {
                let read: u64 = here
                    .iter()
                    .filter(|(k, _)| {
                        reads
                            .get(k)
                            .and_then(|r| r.last_read_ms)
                            .is_some_and(|t| t + window >= now)
                    })
                    .map(|(_, p)| p.bytes)
                    .sum();
                if logical == 0 {
                    0.0
                } else {
                    read as f64 / logical as f64
                }
            };
            let trend = trends
                .disks
                .get(&disk.id)
                .cloned()
                .unwrap_or_else(|| DiskTrend {
                    errors_per_hour: vec![0; 24],
                    ..DiskTrend::default()
                });
            let capacity = stats.capacity_bytes;
            disks.push(DiskIndex {
                id: disk.id.clone(),
                path: disk.root.display().to_string(),
                capacity_bytes: capacity,
                used_bytes: stats.used_by_dram_bytes,
                free_bytes: stats.free_bytes,
                over_watermark: stats.over_watermark,
                unsynced: stats.unsynced,
                use_ratio: if capacity == 0 {
                    0.0
                } else {
                    stats.used_by_dram_bytes as f64 / capacity as f64
                },
                blobs: blobs.len() as u64,
                stored_bytes: stored,
                logical_bytes: logical,
                saved_bytes: logical.saturating_sub(stored),
                read_share: ReadShare {
                    hour: read_within(hour),
                    day: read_within(24 * hour),
                    week: read_within(7 * 24 * hour),
                },
                errors_per_hour: trend.errors_per_hour,
                errors_by_class: trend
                    .errors_by_class
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                written_bytes_hour: trend.written_bytes,
                write_mb_s_hour: (trend.write_ms > 0)
                    .then(|| trend.written_bytes as f64 / 1e3 / trend.write_ms as f64),
                read_bytes_hour: trend.read_bytes,
            });
        }
        let uses: Vec<f64> = disks.iter().map(|d| d.use_ratio).collect();
        Ok(DisksIndex {
            node: inner.node_id.clone(),
            max_over_mean: max_over_mean(&uses),
            disks,
        })
    }

    /// The trash, soonest purged first, and the lazy cache in eviction order.
    pub fn removals(&self) -> Result<Removals, NodeError> {
        let inner = &self.inner;
        let lifetime = inner.config.trash.lifetime_secs.saturating_mul(1000);
        let mut trash = Vec::new();
        let records: Vec<(String, DatabaseRecord)> = inner.catalog.scan(DATABASES, "")?;
        let held: Vec<(String, PartRecord)> = inner.catalog.scan(PARTS, "")?;
        for (name, record) in &records {
            let bytes_of = |prefix: &str| -> u64 {
                held.iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(_, p)| p.bytes)
                    .sum()
            };
            if record.state == DbState::Trashed {
                let trashed = record.trashed_ms.unwrap_or(0);
                trash.push(TrashItem {
                    database: name.clone(),
                    part: None,
                    bytes: bytes_of(&key(&[name, ""])),
                    trashed_ms: trashed,
                    purge_at_ms: trashed.saturating_add(lifetime),
                });
                continue;
            }
            for (part_key, part) in held
                .iter()
                .filter(|(k, _)| k.starts_with(&key(&[name, ""])))
            {
                if let (Some(trashed), Some(part_name)) =
                    (part.trashed_ms, part_key.split('\0').nth(1))
                {
                    trash.push(TrashItem {
                        database: name.clone(),
                        part: Some(part_name.to_string()),
                        bytes: part.bytes,
                        trashed_ms: trashed,
                        purge_at_ms: trashed.saturating_add(lifetime),
                    });
                }
            }
        }
        trash.sort_by_key(|t| t.purge_at_ms);
        let grace = inner.config.cache.eviction_grace_ms;
        let pending = inner.usage.pending_access();
        let mut cache: Vec<CacheItem> = inner
            .catalog
            .scan::<CacheEntry>(CACHE, "")?
            .into_iter()
            .filter_map(|(cache_key, entry)| {
                let mut fields = cache_key.splitn(3, '\0');
                let (database, part, path) = (fields.next()?, fields.next()?, fields.next()?);
                let last = pending
                    .get(&cache_key)
                    .copied()
                    .unwrap_or(0)
                    .max(entry.last_access_ms);
                Some(CacheItem {
                    database: database.to_string(),
                    part: Part::from_key(part).map_or_else(|| part.to_string(), |p| p.key()),
                    path: path.to_string(),
                    disk: entry.disk,
                    bytes: entry.size,
                    last_access_ms: last,
                    protected_until_ms: last.saturating_add(grace),
                })
            })
            .collect();
        cache.sort_by_key(|c| c.last_access_ms);
        Ok(Removals { trash, cache })
    }
}

/// The largest value over the mean (1 when all are equal; 0 without values).
pub fn max_over_mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let max = values.iter().copied().fold(0.0, f64::max);
    if mean <= 0.0 { 1.0 } else { max / mean }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imbalance_is_max_over_mean() {
        assert_eq!(max_over_mean(&[]), 0.0);
        assert_eq!(max_over_mean(&[0.0, 0.0]), 1.0);
        assert!((max_over_mean(&[0.2, 0.4]) - 4.0 / 3.0).abs() < 1e-9);
    }
}
