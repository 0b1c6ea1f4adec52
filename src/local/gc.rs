//! Taking space back: purging databases whose trash lifetime is over, deleting
//! blobs nothing references any more, and evicting least-recently-used lazily
//! cached files when a disk passes its high watermark.

use std::collections::{HashMap, HashSet};

use tracing::{debug, info};

use super::{Inner, NodeError};
use crate::catalog::{
    ALIASES, AliasRecord, CACHE, CacheEntry, DATABASES, DEFINITIONS, DatabaseRecord, DbState,
    MANIFESTS, PARTS, PartRecord, PartState, READS, key,
};
use crate::hlc::Hlc;
use crate::registry::DefinitionRecord;
use crate::storage::{Manifest, Part};

/// What a garbage collection freed.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcReport {
    pub blobs_removed: u64,
    pub bytes_freed: u64,
}

impl Inner {
    /// Purges every trashed database whose lifetime is over.
    pub(super) async fn purge_expired(&self) -> Result<(), NodeError> {
        let lifetime_ms = self.config.trash.lifetime_secs * 1000;
        let now = self.now_ms();
        let records: Vec<(String, DatabaseRecord)> = self.catalog.scan(DATABASES, "")?;
        let mut purged = false;
        for (name, record) in records {
            if record.state == DbState::Trashed
                && record.trashed_ms.is_some_and(|t| t + lifetime_ms <= now)
            {
                self.forget(&name)?;
                purged = true;
            }
        }
        let parts: Vec<(String, PartRecord)> = self.catalog.scan(PARTS, "")?;
        for (part_key, record) in parts {
            if record.trashed_ms.is_some_and(|t| t + lifetime_ms <= now) {
                self.purge_part(&part_key, &record)?;
                purged = true;
            }
        }
        if purged {
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Deletes one trashed copy of a part: its folder, its record, its cached
    /// files and counters. Its blobs go with the next garbage collection.
    fn purge_part(&self, part_key: &str, record: &PartRecord) -> Result<(), NodeError> {
        let mut fields = part_key.split('\0');
        let (Some(database), Some(part)) = (fields.next(), fields.next()) else {
            return Ok(());
        };
        let Some(which) = Part::from_key(part) else {
            return Ok(());
        };
        let disk = self.disk(&record.disk)?;
        // Inside the write transaction: placement, which takes copies back in
        // one too, sees the copy either whole or gone.
        self.catalog.write(|w| {
            let current: Option<PartRecord> = w.get(PARTS, part_key)?;
            if current.is_some_and(|c| c.trashed_ms.is_none()) {
                return Ok(());
            }
            disk.remove_part_dir(database, &which)?;
            w.remove(PARTS, part_key)?;
            w.remove(READS, part_key)?;
            w.remove_prefix(CACHE, &key(&[database, part, ""]))?;
            Ok::<_, NodeError>(())
        })?;
        info!(database, part, "trashed copy purged");
        Ok(())
    }

    /// While a disk is past its high watermark (once lazily cached files are
    /// evicted), purges the trash early, oldest first: whole databases and
    /// trashed copies of parts alike, freeing their unshared blobs.
    pub(super) async fn purge_trash_under_pressure(&self) -> Result<(), NodeError> {
        if !self.disks.iter().any(|d| d.over_watermark()) {
            return Ok(());
        }
        let databases: Vec<(String, DatabaseRecord)> = self.catalog.scan(DATABASES, "")?;
        let parts: Vec<(String, PartRecord)> = self.catalog.scan(PARTS, "")?;
        let mut trash: Vec<(u64, String, Option<PartRecord>)> = databases
            .into_iter()
            .filter(|(_, r)| r.state == DbState::Trashed)
            .map(|(name, r)| (r.trashed_ms.unwrap_or(0), name, None))
            .collect();
        trash.extend(
            parts
                .into_iter()
                .filter_map(|(k, r)| Some((r.trashed_ms?, k, Some(r)))),
        );
        trash.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, name, part) in trash {
            if !self.disks.iter().any(|d| d.over_watermark()) {
                break;
            }
            match part {
                Some(record) => self.purge_part(&name, &record)?,
                None => self.forget(&name)?,
            }
            info!(entry = %name.replace('\0', "/"), "trash purged early: a disk is past its high watermark");
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Removes a database from this node now, then frees its unshared blobs.
    pub(super) async fn purge(&self, name: &str) -> Result<(), NodeError> {
        self.loads.cancel(name);
        self.forget(name)?;
        self.collect_garbage()?;
        Ok(())
    }

    /// Deletes a database's folders and catalog entries, and tombstones the aliases
    /// that pointed to it.
    fn forget(&self, name: &str) -> Result<(), NodeError> {
        for disk in &self.disks {
            disk.remove_database_dir(name)?;
        }
        let now = self.now_ms();
        self.catalog.write(|w| {
            if let Some(manifest) = w.get::<Manifest>(MANIFESTS, name)? {
                super::index::forget_manifest(w, name, &manifest)?;
            }
            w.remove(DATABASES, name)?;
            w.remove(MANIFESTS, name)?;
            w.remove(READS, name)?;
            w.remove_prefix(READS, &key(&[name, ""]))?;
            w.remove_prefix(PARTS, &key(&[name, ""]))?;
            w.remove_prefix(CACHE, &key(&[name, ""]))?;
            // Aliases still pointing at the database are removed, with a version
            // derived from the deletion's: the same on every node that purges,
            // and older than any move of the alias made after the deletion (a
            // move this node may not have seen yet must win).
            let deleted: Option<DefinitionRecord> = w.get(DEFINITIONS, name)?;
            let version = match deleted {
                Some(d) if d.definition.is_none() => Hlc {
                    ms: d.version.ms,
                    counter: d.version.counter.saturating_add(1),
                    node: d.version.node,
                },
                _ => self.versions.next(now),
            };
            let aliases: Vec<(String, AliasRecord)> = w.scan(ALIASES, "")?;
            for (alias, record) in aliases {
                if record.target.as_deref() == Some(name) && record.version < version {
                    let tombstone = AliasRecord {
                        name: alias.clone(),
                        target: None,
                        version: version.clone(),
                        updated_ms: version.ms,
                    };
                    w.put(ALIASES, &alias, &tombstone)?;
                }
            }
            Ok::<_, NodeError>(())
        })?;
        self.files.forget(name);
        self.usage.forget(name);
        info!(database = %name, "database purged");
        Ok(())
    }

    /// Hashes of every blob some database still needs: all files of parts that are
    /// (being) downloaded, the cached files of lazy parts, and pinned hashes.
    fn live_blobs(&self) -> Result<HashSet<String>, NodeError> {
        let mut live = self.live_blobs_but_cache()?;
        let cached: Vec<(String, CacheEntry)> = self.catalog.scan(CACHE, "")?;
        live.extend(cached.into_iter().map(|(_, c)| c.sha256));
        Ok(live)
    }

    /// Like `live_blobs`, without the lazily cached files.
    fn live_blobs_but_cache(&self) -> Result<HashSet<String>, NodeError> {
        let mut live = HashSet::new();
        let parts: HashMap<String, PartRecord> =
            self.catalog.scan(PARTS, "")?.into_iter().collect();
        let manifests: Vec<(String, Manifest)> = self.catalog.scan(MANIFESTS, "")?;
        for (name, manifest) in manifests {
            let Ok(split) = manifest.parts() else {
                continue;
            };
            for (part, files) in split {
                // Parts placed on other nodes have no record here.
                let held = parts
                    .get(&key(&[&name, &part.key()]))
                    .is_some_and(|r| r.state != PartState::Lazy);
                if held {
                    live.extend(files.into_iter().filter_map(|f| f.file.sha256));
                }
            }
        }
        live.extend(self.claims.pinned());
        Ok(live)
    }

    /// Deletes blobs that no database references.
    pub(super) fn collect_garbage(&self) -> Result<GcReport, NodeError> {
        let mut report = GcReport::default();
        // List first, then read what is live: a blob stored after the listing is
        // not deleted, and one stored before it is already pinned or recorded.
        let mut listed = Vec::new();
        for disk in &self.disks {
            listed.push((disk.clone(), disk.list_blobs()?));
        }
        let live = self.live_blobs()?;
        for (disk, blobs) in listed {
            for (sha, _) in blobs {
                if !live.contains(&sha) {
                    let freed = disk.remove_blob(&sha)?;
                    if freed > 0 {
                        report.blobs_removed += 1;
                        report.bytes_freed += freed;
                    }
                }
            }
        }
        if report.blobs_removed > 0 {
            info!(
                blobs = report.blobs_removed,
                bytes = report.bytes_freed,
                "garbage collected"
            );
        }
        Ok(report)
    }

    /// Evicts least-recently-used lazily cached files from disks above their high
    /// watermark, until each is below it or has nothing left to evict.
    pub(super) async fn evict_if_needed(&self) -> Result<(), NodeError> {
        let full: Vec<_> = self
            .disks
            .iter()
            .filter(|d| d.over_watermark())
            .cloned()
            .collect();
        if full.is_empty() {
            return Ok(());
        }
        self.flush_counters()?;
        let now = self.now_ms();
        let grace = self.config.cache.eviction_grace_ms;
        let live = self.live_blobs_but_cache()?;
        let all: Vec<(String, CacheEntry)> = self.catalog.scan(CACHE, "")?;
        let mut cache_refs: HashMap<String, usize> = HashMap::new();
        for (_, entry) in &all {
            *cache_refs.entry(entry.sha256.clone()).or_default() += 1;
        }
        for disk in full {
            let mut entries: Vec<&(String, CacheEntry)> = all
                .iter()
                .filter(|(_, e)| e.disk == disk.id && e.last_access_ms + grace <= now)
                .collect();
            entries.sort_by_key(|(_, e)| e.last_access_ms);
            let mut evicted = 0u64;
            for (cache_key, entry) in entries {
                if !disk.over_watermark() {
                    break;
                }
                let mut fields = cache_key.split('\0');
                let (Some(db), Some(part), Some(path)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                let Some(part) = Part::from_key(part) else {
                    continue;
                };
                disk.unlink(db, &part, path)?;
                self.catalog.write(|w| w.remove(CACHE, cache_key))?;
                let refs = cache_refs.entry(entry.sha256.clone()).or_default();
                *refs = refs.saturating_sub(1);
                if *refs == 0 && !live.contains(&entry.sha256) {
                    disk.remove_blob(&entry.sha256)?;
                }
                evicted += 1;
            }
            if evicted > 0 {
                info!(disk = %disk.id, files = evicted, "evicted lazily cached files");
            } else {
                debug!(disk = %disk.id, "disk is above its high watermark and nothing can be evicted");
            }
        }
        Ok(())
    }
}
