//! How this member's data is used, counted in memory between two flushes to
//! the catalog: reads and queries per database and per part (`reads`
//! table), the last access of each lazily cached file (`cache` table), and
//! the files downloaded since the node started.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::catalog::CatalogError;
use crate::catalog::{CACHE, CacheEntry, DATABASES, DatabaseRecord, READS, ReadStats, Writer, key};
use crate::storage::Part;
use crate::sync::lock;

/// Use not yet written to the catalog, and download totals.
#[derive(Default)]
pub(crate) struct Usage {
    /// Read counters by database name, or `database\0part key` for one part.
    reads: Mutex<HashMap<String, ReadStats>>,
    /// Last access of lazily cached files (cache key → ms).
    access: Mutex<HashMap<String, u64>>,
    bytes_downloaded: AtomicU64,
    files_downloaded: AtomicU64,
    files_deduplicated: AtomicU64,
}

/// Files downloaded since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Downloads {
    pub bytes: u64,
    pub files: u64,
    /// Files whose content was on disk already.
    pub deduplicated: u64,
}

impl Usage {
    /// Counts a file read of one part, for the database and for the part.
    pub fn count_read(&self, database: &str, part: &Part, now_ms: u64) {
        let mut reads = lock(&self.reads);
        for counter in [database.to_string(), key(&[database, &part.key()])] {
            let stats = reads.entry(counter).or_default();
            stats.reads += 1;
            stats.last_read_ms = Some(now_ms);
        }
    }

    /// Counts a query of a database and of each shard it mapped.
    pub fn count_query(&self, database: &str, shards: &[String], now_ms: u64) {
        let mut reads = lock(&self.reads);
        let db = reads.entry(database.to_string()).or_default();
        db.queries += 1;
        db.last_read_ms = Some(now_ms);
        for id in shards {
            let shard = reads
                .entry(key(&[database, &Part::Shard(id.clone()).key()]))
                .or_default();
            shard.queries += 1;
            shard.last_read_ms = Some(now_ms);
        }
    }

    /// Notes an access to a lazily cached file.
    pub fn note_access(&self, cache_key: &str, now_ms: u64) {
        lock(&self.access).insert(cache_key.to_string(), now_ms);
    }

    /// Accesses to lazily cached files not flushed yet.
    pub fn pending_access(&self) -> HashMap<String, u64> {
        lock(&self.access).clone()
    }

    /// `stored` plus the reads of `counter` not flushed yet.
    pub fn with_pending(&self, counter: &str, mut stored: ReadStats) -> ReadStats {
        if let Some(pending) = lock(&self.reads).get(counter) {
            add(&mut stored, pending);
        }
        stored
    }

    /// Every counter in `stored` plus the reads not flushed yet.
    pub fn add_pending(&self, stored: &mut HashMap<String, ReadStats>) {
        for (counter, pending) in lock(&self.reads).iter() {
            add(stored.entry(counter.clone()).or_default(), pending);
        }
    }

    /// Forgets what is pending for a database that is gone.
    pub fn forget(&self, database: &str) {
        lock(&self.reads).remove(database);
    }

    /// Counts a file fetched from object storage; `new_blob` is false when its
    /// content was already on disk.
    pub fn count_download(&self, bytes: u64, new_blob: bool) {
        self.bytes_downloaded.fetch_add(bytes, Ordering::Relaxed);
        self.files_downloaded.fetch_add(1, Ordering::Relaxed);
        if !new_blob {
            self.files_deduplicated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a file whose verified content was on disk already (not fetched).
    pub fn count_reuse(&self) {
        self.files_deduplicated.fetch_add(1, Ordering::Relaxed);
    }

    pub fn downloads(&self) -> Downloads {
        Downloads {
            bytes: self.bytes_downloaded.load(Ordering::Relaxed),
            files: self.files_downloaded.load(Ordering::Relaxed),
            deduplicated: self.files_deduplicated.load(Ordering::Relaxed),
        }
    }

    /// Takes what is pending, for a flush (see `write`).
    pub fn take(&self) -> Pending {
        Pending {
            reads: lock(&self.reads).drain().collect(),
            access: lock(&self.access).drain().collect(),
        }
    }
}

/// Use taken from memory, to be written in one transaction.
pub(crate) struct Pending {
    reads: Vec<(String, ReadStats)>,
    access: Vec<(String, u64)>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.access.is_empty()
    }

    /// Adds the pending use to the catalog's counters (databases that are
    /// gone are skipped).
    pub fn write(&self, w: &mut Writer) -> Result<(), CatalogError> {
        for (counter, delta) in &self.reads {
            let database = counter.split('\0').next().unwrap_or_default();
            if w.get::<DatabaseRecord>(DATABASES, database)?.is_none() {
                continue;
            }
            let mut stored: ReadStats = w.get(READS, counter)?.unwrap_or_default();
            add(&mut stored, delta);
            w.put(READS, counter, &stored)?;
        }
        for (cache_key, ms) in &self.access {
            if let Some(mut entry) = w.get::<CacheEntry>(CACHE, cache_key)? {
                entry.last_access_ms = entry.last_access_ms.max(*ms);
                w.put(CACHE, cache_key, &entry)?;
            }
        }
        Ok(())
    }
}

fn add(stats: &mut ReadStats, more: &ReadStats) {
    stats.reads += more.reads;
    stats.queries += more.queries;
    stats.last_read_ms = stats.last_read_ms.max(more.last_read_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_queries_count_per_database_and_part_until_taken() {
        let usage = Usage::default();
        usage.count_read("db", &Part::Shard("a".into()), 10);
        usage.count_query("db", &["a".to_string(), "b".to_string()], 20);
        let db = usage.with_pending("db", ReadStats::default());
        assert_eq!((db.reads, db.queries, db.last_read_ms), (1, 1, Some(20)));
        let shard_b = key(&["db", &Part::Shard("b".into()).key()]);
        let b = usage.with_pending(&shard_b, ReadStats::default());
        assert_eq!((b.reads, b.queries), (0, 1));
        usage.count_download(100, true);
        usage.count_download(50, false);
        usage.count_reuse();
        assert_eq!(
            usage.downloads(),
            Downloads {
                bytes: 150,
                files: 2,
                deduplicated: 2
            }
        );
        assert!(!usage.take().is_empty());
        assert!(usage.take().is_empty(), "taken once");
    }
}
