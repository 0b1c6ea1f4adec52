//! The node's durable state, in one redb file: databases, their manifests and parts,
//! aliases, the lazy-file cache and read counters. Values are JSON (small, readable,
//! forward-compatible); keys are strings, with `\0` joining compound keys so a
//! prefix scan finds all entries of one database.
//!
//! Every change that must be seen whole (a part becoming ready, an alias batch) is
//! one write transaction: after a crash the catalog shows it entirely or not at all.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::records::*;

pub type Table = TableDefinition<'static, &'static str, &'static [u8]>;

pub const META: Table = TableDefinition::new("meta");
pub const DATABASES: Table = TableDefinition::new("databases");
pub const MANIFESTS: Table = TableDefinition::new("manifests");
/// Key: `<database>\0<part key>`.
pub const PARTS: Table = TableDefinition::new("parts");
/// Key: `<alias>`; tombstones stay (their version orders later merges).
pub const ALIASES: Table = TableDefinition::new("aliases");
/// Key: `<database>/<shard>`: where the rebalancer moved a shard (tombstones stay).
pub const PINS: Table = TableDefinition::new("pins");
/// Key: `<database>`: the cluster-wide definition (tombstone once deleted).
pub const DEFINITIONS: Table = TableDefinition::new("definitions");
/// Key: `<database>\0<part key>\0<local path>`: lazily fetched files on disk.
pub const CACHE: Table = TableDefinition::new("cache");
/// Key: `<database>`: reads and last read, flushed from memory now and then.
pub const READS: Table = TableDefinition::new("reads");

/// Key: `<sha256>\0<database>\0<path>`: which files of which databases a
/// blob's content serves (the index, kept with the manifests).
pub const BLOB_USES: Table = TableDefinition::new("blob_uses");
/// Key: `<ts_ms as 16 hex digits>\0<sequence as 8 hex digits>`: events (reads,
/// writes, errors), oldest first; pruned by age and count.
pub const EVENTS: Table = TableDefinition::new("events");

const ALL_TABLES: [Table; 11] = [
    BLOB_USES,
    EVENTS,
    PINS,
    META,
    DATABASES,
    MANIFESTS,
    PARTS,
    ALIASES,
    DEFINITIONS,
    CACHE,
    READS,
];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("catalog storage error: {0}")]
    Storage(#[from] redb::Error),
    #[error("catalog entry {key:?} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    /// An I/O error (a full disk, say) closed the catalog; it is opened
    /// again on the next use.
    #[error("the catalog is closed after an I/O error ({0}); it is reopened once writes succeed")]
    Closed(String),
}

impl CatalogError {
    /// An I/O error of the catalog's file (after which redb refuses every
    /// use of the open database until it is opened again).
    fn is_io(&self) -> bool {
        matches!(
            self,
            CatalogError::Storage(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for CatalogError {
            fn from(e: $t) -> Self {
                CatalogError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Joins the parts of a compound key.
pub fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

type Opener = Box<dyn Fn() -> Result<Database, CatalogError> + Send + Sync>;

/// The node's catalog. After an I/O error of its file (a full disk), redb
/// refuses every further use of the open database: the catalog then opens
/// the file again on its next use, and reports the error as its
/// [`failure`](Catalog::failure) (health says `degraded`) until a write
/// succeeds again.
pub struct Catalog {
    db: RwLock<Option<Database>>,
    open: Opener,
    state: Mutex<Failure>,
    /// Counts committed writes (and reopenings): what was read at one
    /// generation is still true while it lasts (see [`Memo`]).
    generation: AtomicU64,
}

#[derive(Default)]
struct Failure {
    /// The last I/O error, until a write succeeds.
    error: Option<String>,
    /// The open database refuses further use: open it again.
    poisoned: bool,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("failure", &self.failure())
            .finish_non_exhaustive()
    }
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let path = path.to_path_buf();
        Catalog::open_with(Box::new(move || Ok(Database::create(&path)?)))
    }

    /// A catalog over the database `open` opens (again after an I/O error).
    fn open_with(open: Opener) -> Result<Catalog, CatalogError> {
        let db = open()?;
        let txn = db.begin_write()?;
        for table in ALL_TABLES {
            txn.open_table(table)?;
        }
        txn.commit()?;
        Ok(Catalog {
            db: RwLock::new(Some(db)),
            open,
            state: Mutex::default(),
            generation: AtomicU64::new(0),
        })
    }

    /// The number of writes committed so far (and reopenings): a value read
    /// at one generation holds until the next.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The I/O error that closed the catalog, until a write succeeds again.
    pub fn failure(&self) -> Option<String> {
        self.failure_state().error.clone()
    }

    fn failure_state(&self) -> std::sync::MutexGuard<'_, Failure> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The open database (opened again first if an I/O error closed it).
    fn database(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, CatalogError> {
        // Not while this thread (or another) uses the database: then the
        // next use reopens it.
        if self.failure_state().poisoned
            && let Ok(mut db) = self.db.try_write()
        {
            // Only one caller reopens: the others find it done.
            let mut state = self.failure_state();
            if state.poisoned {
                *db = None; // the old handle must go before the file is opened again
                match (self.open)() {
                    Ok(opened) => {
                        *db = Some(opened);
                        state.poisoned = false;
                        self.generation.fetch_add(1, Ordering::SeqCst);
                        tracing::info!("catalog opened again after an I/O error");
                    }
                    Err(e) => state.error = Some(e.to_string()),
                }
            }
        }
        let db = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if db.is_none() {
            let why = self.failure().unwrap_or_else(|| "not open".into());
            return Err(CatalogError::Closed(why));
        }
        Ok(db)
    }

    /// Notes an I/O error: the catalog is to be opened again.
    fn noted(&self, e: impl Into<CatalogError>) -> CatalogError {
        let e = e.into();
        if e.is_io() {
            let mut state = self.failure_state();
            if !state.poisoned {
                tracing::warn!(error = %e, "catalog I/O error: it is opened again on its next use");
            }
            state.poisoned = true;
            state.error = Some(e.to_string());
        }
        e
    }

    /// Runs `f` in one write transaction, committed only if `f` succeeds.
    pub fn write<T, E>(&self, f: impl FnOnce(&mut Writer) -> Result<T, E>) -> Result<T, E>
    where
        E: From<CatalogError>,
    {
        let db = self.database()?;
        let db = db
            .as_ref()
            .ok_or_else(|| CatalogError::Closed("not open".into()))?;
        let txn = db.begin_write().map_err(|e| self.noted(e))?;
        let mut writer = Writer { txn };
        let out = f(&mut writer)?;
        writer.txn.commit().map_err(|e| self.noted(e))?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.failure_state().error.is_some() {
            self.failure_state().error = None;
            tracing::info!("catalog writes succeed again");
        }
        Ok(out)
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, CatalogError> {
        let db = self.database()?;
        let db = db
            .as_ref()
            .ok_or_else(|| CatalogError::Closed("not open".into()))?;
        let txn = db.begin_read().map_err(|e| self.noted(e))?;
        let table = txn.open_table(table)?;
        match table.get(key)? {
            Some(value) => decode(key, value.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Entries whose key starts with `prefix` (all entries for `""`).
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, CatalogError> {
        let db = self.database()?;
        let db = db
            .as_ref()
            .ok_or_else(|| CatalogError::Closed("not open".into()))?;
        let txn = db.begin_read().map_err(|e| self.noted(e))?;
        let table = txn.open_table(table)?;
        scan_table(&table, prefix)
    }

    /// Up to `limit` entries with keys from `from` on, newest (greatest key)
    /// first.
    pub fn newest_from<T: DeserializeOwned>(
        &self,
        table: Table,
        from: &str,
        limit: usize,
    ) -> Result<Vec<(String, T)>, CatalogError> {
        self.newest_from_below(table, from, None, limit)
    }

    /// `newest_from`, only keys below `upper` (when given).
    pub fn newest_from_below<T: DeserializeOwned>(
        &self,
        table: Table,
        from: &str,
        upper: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, CatalogError> {
        let db = self.database()?;
        let db = db
            .as_ref()
            .ok_or_else(|| CatalogError::Closed("not open".into()))?;
        let txn = db.begin_read().map_err(|e| self.noted(e))?;
        let table = txn.open_table(table)?;
        let mut out = Vec::new();
        let range = match upper {
            Some(upper) if upper <= from => return Ok(out),
            Some(upper) => table.range::<&str>(from..upper)?,
            None => table.range::<&str>(from..)?,
        };
        for entry in range.rev().take(limit) {
            let (key, value) = entry?;
            out.push((key.value().to_string(), decode(key.value(), value.value())?));
        }
        Ok(out)
    }

    /// Runs `f` on one read transaction: every scan sees the same snapshot.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Reader) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let db = self.database()?;
        let db = db
            .as_ref()
            .ok_or_else(|| CatalogError::Closed("not open".into()))?;
        let txn = db.begin_read().map_err(|e| self.noted(e))?;
        f(&Reader { txn })
    }
}

/// A read transaction with JSON values.
pub struct Reader {
    txn: redb::ReadTransaction,
}

impl Reader {
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, CatalogError> {
        let table = self.txn.open_table(table)?;
        scan_table(&table, prefix)
    }
}

/// Values derived from the catalog, kept until its next write: the hot
/// path of a query (an alias resolved, a ready version) reads no table
/// while nothing changed. Holds at most `MEMO_ENTRIES` values (more are
/// read each time); every write empties it.
pub struct Memo<V> {
    entries: Mutex<(u64, HashMap<String, V>)>,
}

const MEMO_ENTRIES: usize = 4096;

impl<V> Default for Memo<V> {
    fn default() -> Self {
        Memo {
            entries: Mutex::new((0, HashMap::new())),
        }
    }
}

impl<V: Clone> Memo<V> {
    /// The value for `key`: kept, or `read` from `catalog` and kept when it
    /// succeeds (errors are never kept).
    pub fn get_or_read<E>(
        &self,
        catalog: &Catalog,
        key: &str,
        read: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        // Taken before reading: a write committed during the read leaves a
        // newer generation, and the value kept under this one is not used.
        let generation = catalog.generation();
        {
            let entries = self.lock();
            if entries.0 == generation
                && let Some(value) = entries.1.get(key)
            {
                return Ok(value.clone());
            }
        }
        let value = read()?;
        let mut entries = self.lock();
        if entries.0 < generation {
            *entries = (generation, HashMap::new());
        }
        if entries.0 == generation && entries.1.len() < MEMO_ENTRIES {
            entries.1.insert(key.to_string(), value.clone());
        }
        Ok(value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, V>)> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A write transaction with JSON values.
pub struct Writer {
    txn: WriteTransaction,
}

impl Writer {
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, CatalogError> {
        let table = self.txn.open_table(table)?;
        let value = table.get(key)?;
        match value {
            Some(value) => decode(key, value.value()).map(Some),
            None => Ok(None),
        }
    }

    pub fn put<T: Serialize>(
        &mut self,
        table: Table,
        key: &str,
        value: &T,
    ) -> Result<(), CatalogError> {
        let bytes = serde_json::to_vec(value).map_err(|e| CatalogError::Corrupt {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        let mut table = self.txn.open_table(table)?;
        table.insert(key, bytes.as_slice())?;
        Ok(())
    }

    pub fn remove(&mut self, table: Table, key: &str) -> Result<bool, CatalogError> {
        let mut table = self.txn.open_table(table)?;
        Ok(table.remove(key)?.is_some())
    }

    pub fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, CatalogError> {
        let table = self.txn.open_table(table)?;
        scan_table(&table, prefix)
    }

    /// Removes every entry whose key is below `end`, and then the oldest
    /// (smallest keys) until at most `keep` are left. Returns how many went.
    pub fn prune(&mut self, table: Table, end: &str, keep: u64) -> Result<u64, CatalogError> {
        let mut table = self.txn.open_table(table)?;
        let before = table.len()?;
        table.retain_in::<&str, _>(..end, |_, _| false)?;
        let mut len = table.len()?;
        while len > keep {
            let excess = (len - keep).min(10_000) as usize;
            let oldest: Vec<String> = table
                .iter()?
                .take(excess)
                .map(|entry| entry.map(|(key, _)| key.value().to_string()))
                .collect::<Result<_, _>>()?;
            for key in &oldest {
                table.remove(key.as_str())?;
            }
            len = table.len()?;
        }
        Ok(before - len)
    }

    /// Removes every entry whose key starts with `prefix`.
    pub fn remove_prefix(&mut self, table: Table, prefix: &str) -> Result<(), CatalogError> {
        let mut table = self.txn.open_table(table)?;
        table.retain(|key, _| !key.starts_with(prefix))?;
        Ok(())
    }
}

fn scan_table<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, T)>, CatalogError> {
    let mut out = Vec::new();
    for entry in table.range::<&str>(prefix..)? {
        let (key, value) = entry?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key.to_string(), decode(key, value.value())?));
    }
    Ok(out)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CatalogError> {
    serde_json::from_slice(bytes).map_err(|e| CatalogError::Corrupt {
        key: key.replace('\0', "/"),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use redb::StorageBackend;
    use redb::backends::InMemoryBackend;

    /// A disk that fills up on demand: while `full`, writes, growth and
    /// syncs fail with ENOSPC (what the catalog's file system says then).
    #[derive(Debug)]
    struct FillingDisk {
        bytes: Arc<InMemoryBackend>,
        full: Arc<AtomicBool>,
    }

    impl FillingDisk {
        fn check(&self) -> std::io::Result<()> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            Ok(())
        }
    }

    impl StorageBackend for FillingDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.bytes.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.bytes.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            if len > self.bytes.len()? {
                self.check()?;
            }
            self.bytes.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.bytes.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.bytes.write(offset, data)
        }
    }

    #[test]
    fn a_catalog_closed_by_a_full_disk_opens_again_once_writes_succeed() {
        let bytes = Arc::new(InMemoryBackend::new());
        let full = Arc::new(AtomicBool::new(false));
        let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, f, o) = (bytes.clone(), full.clone(), opens.clone());
        let catalog = Catalog::open_with(Box::new(move || {
            o.fetch_add(1, Ordering::SeqCst);
            let disk = FillingDisk {
                bytes: b.clone(),
                full: f.clone(),
            };
            Ok(Database::builder().create_with_backend(disk)?)
        }))
        .unwrap();
        catalog.write(|w| w.put(META, "a", &1u32)).unwrap();
        assert_eq!(catalog.failure(), None);

        full.store(true, Ordering::SeqCst);
        for i in 0..3 {
            let big = vec![7u8; 200_000];
            let written = catalog.write(|w| w.put(META, &format!("big{i}"), &big));
            assert!(written.is_err(), "a write succeeded on a full disk");
        }
        let failure = catalog.failure().expect("the failure is reported");
        assert!(failure.contains("os error 28"), "{failure}");

        // Space is back: the catalog opens again, writes succeed, and what
        // was committed before is all there.
        full.store(false, Ordering::SeqCst);
        catalog.write(|w| w.put(META, "b", &2u32)).unwrap();
        assert_eq!(catalog.failure(), None);
        assert_eq!(catalog.get::<u32>(META, "a").unwrap(), Some(1));
        assert_eq!(catalog.get::<u32>(META, "b").unwrap(), Some(2));
        assert_eq!(catalog.get::<Vec<u8>>(META, "big0").unwrap(), None);
        // Opened once more, not again on every use after that.
        let reopened = opens.load(Ordering::SeqCst);
        for i in 0..5 {
            catalog.write(|w| w.put(META, "c", &i)).unwrap();
            assert_eq!(catalog.get::<u32>(META, "c").unwrap(), Some(i));
        }
        assert_eq!(opens.load(Ordering::SeqCst), reopened);
    }

    #[test]
    fn a_memo_holds_until_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.redb")).unwrap();
        catalog.write(|w| w.put(META, "a", &1u32)).unwrap();
        let memo: Memo<u32> = Memo::default();
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            catalog
                .get::<u32>(META, "a")?
                .ok_or_else(|| CatalogError::Closed("missing".into()))
        };
        assert_eq!(memo.get_or_read(&catalog, "a", read).unwrap(), 1);
        assert_eq!(memo.get_or_read(&catalog, "a", read).unwrap(), 1);
        assert_eq!(reads.get(), 1, "read again while nothing changed");
        // A write (to any key) makes the memo read again, and see the change.
        catalog.write(|w| w.put(META, "a", &2u32)).unwrap();
        assert_eq!(memo.get_or_read(&catalog, "a", read).unwrap(), 2);
        assert_eq!(reads.get(), 2);
        // Errors are not kept.
        catalog.write(|w| w.remove(META, "a")).unwrap();
        assert!(memo.get_or_read(&catalog, "a", read).is_err());
        catalog.write(|w| w.put(META, "a", &3u32)).unwrap();
        assert_eq!(memo.get_or_read(&catalog, "a", read).unwrap(), 3);
    }

    #[test]
    fn write_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.redb")).unwrap();
        catalog
            .write(|w| {
                w.put(META, "a", &1u32)?;
                w.put(PARTS, &key(&["db", "shards/0"]), &2u32)?;
                w.put(PARTS, &key(&["db", "shards/1"]), &3u32)?;
                w.put(PARTS, &key(&["db2", "shards/0"]), &4u32)?;
                Ok::<_, CatalogError>(())
            })
            .unwrap();
        let failed: Result<(), CatalogError> = catalog.write(|w| {
            w.put(META, "a", &9u32)?;
            Err(CatalogError::Corrupt {
                key: "x".into(),
                message: "abort".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(catalog.get::<u32>(META, "a").unwrap(), Some(1));
        let db_parts: Vec<(String, u32)> = catalog.scan(PARTS, &key(&["db", ""])).unwrap();
        assert_eq!(db_parts.len(), 2);
        catalog
            .write(|w| w.remove_prefix(PARTS, &key(&["db", ""])))
            .unwrap();
        let all: Vec<(String, u32)> = catalog.scan(PARTS, "").unwrap();
        assert_eq!(all, vec![(key(&["db2", "shards/0"]), 4)]);
    }
}
