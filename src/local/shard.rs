//! Reading a served database: `ShardContext` opens the files of one shard (or of
//! the global data) by their path inside it. For a lazy shard, the first open of a
//! file fetches and verifies it, caches it as a blob, and records it so eviction
//! can take it back under disk pressure.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{Inner, Local, NodeError};
use crate::catalog::{
    CACHE, CacheEntry, DATABASES, DatabaseRecord, DbState, MANIFESTS, PARTS, PartRecord, PartState,
    key,
};
use crate::storage::fetch::fetch_blob;
use crate::storage::{Disk, Manifest, ManifestFile, Part, Source, SourceUrl, StorageError};
use crate::sync::lock;

/// The files of one database by part and local path, kept in memory while served.
#[derive(Debug)]
pub(crate) struct DatabaseFiles {
    pub(crate) parts: BTreeMap<Part, HashMap<String, ManifestFile>>,
    /// The manifest's co-located shard tables: table → column.
    pub(crate) shard_keys: BTreeMap<String, String>,
}

/// A handle on one part of a served database.
#[derive(Clone)]
pub struct ShardContext {
    inner: Arc<Inner>,
    database: String,
    part: Part,
    disk: Arc<Disk>,
    lazy: bool,
    files: Arc<DatabaseFiles>,
}

impl std::fmt::Debug for ShardContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardContext")
            .field("database", &self.database)
            .field("part", &self.part)
            .field("lazy", &self.lazy)
            .finish()
    }
}

impl Local {
    /// Opens shard `shard_id` of a database (or alias) that is served here.
    pub fn shard(&self, database: &str, shard_id: &str) -> Result<ShardContext, NodeError> {
        self.inner
            .context(database, Part::Shard(shard_id.to_string()))
    }

    /// Opens the global data of a database (or alias) that is served here.
    pub fn global(&self, database: &str) -> Result<ShardContext, NodeError> {
        self.inner.context(database, Part::Global)
    }

    /// The shard ids of a served database, sorted.
    pub fn shard_ids(&self, database: &str) -> Result<Vec<String>, NodeError> {
        let name = self.inner.resolve(database)?;
        let files = self.inner.files(&name)?;
        Ok(files
            .parts
            .keys()
            .filter_map(|p| p.shard_id().map(str::to_string))
            .collect())
    }
}

/// What fetching a database's lazy copies took (see
/// [`Local::fetch_lazy_copies`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LazyFetched {
    /// Lazy shards of the database this member holds.
    pub shards: u64,
    /// Files fetched (and verified) now.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Files of lazy shards fetched at once by [`Local::fetch_lazy_copies`]
/// (the store's download slots bound them further).
const LAZY_FETCHES: usize = 8;

impl Local {
    /// Fetches every file not here yet of this member's lazy copies of
    /// `database`, as their first reads would: verified, kept as blobs, and
    /// evicted later like any lazily fetched file.
    pub async fn fetch_lazy_copies(&self, database: &str) -> Result<LazyFetched, NodeError> {
        use futures::StreamExt;
        let name = self.inner.resolve(database)?;
        let mut shards = self.serving_shards(&name)?.into_iter().collect::<Vec<_>>();
        shards.sort();
        let mut lazy = Vec::new();
        for id in shards {
            let context = self.shard(&name, &id)?;
            if context.is_lazy() {
                lazy.push(context);
            }
        }
        let mut fetched = LazyFetched {
            shards: lazy.len() as u64,
            ..LazyFetched::default()
        };
        // Owned futures (borrowing ones trip rustc's higher-ranked `Send`
        // checks under warp).
        let fetches: Vec<_> = lazy
            .iter()
            .flat_map(|context| {
                context.files().into_iter().map(move |path| {
                    let context = context.clone();
                    async move {
                        let size = context.size(&path)?;
                        let here = std::fs::metadata(context.dir().join(&path)).is_ok();
                        context.local_path(&path).await?;
                        Ok::<_, NodeError>((!here).then_some(size))
                    }
                })
            })
            .collect();
        let mut fetches = futures::stream::iter(fetches).buffer_unordered(LAZY_FETCHES);
        while let Some(result) = fetches.next().await {
            if let Some(size) = result? {
                fetched.files += 1;
                fetched.bytes += size;
            }
        }
        Ok(fetched)
    }
}

impl Inner {
    fn context(self: &Arc<Self>, database: &str, part: Part) -> Result<ShardContext, NodeError> {
        let name = self.resolve(database)?;
        let copy =
            self.serving_copies
                .get_or_read(&self.catalog, &key(&[&name, &part.key()]), || {
                    self.serving_copy(&name, &part)
                })?;
        // Kept too: most databases have no global data, and every query asks.
        let Some((disk, lazy)) = copy else {
            return Err(NodeError::not_found("global data of database", &name));
        };
        Ok(ShardContext {
            inner: self.clone(),
            disk: self.disk(&disk)?.clone(),
            files: self.files(&name)?,
            database: name,
            part,
            lazy,
        })
    }

    /// The disk of this node's copy of `part` of the database `name`, and
    /// whether it is lazy; `None` when the database has no global data (or
    /// this node holds none of it), an error when it serves no such copy.
    fn serving_copy(&self, name: &str, part: &Part) -> Result<Option<(String, bool)>, NodeError> {
        let record: DatabaseRecord = self
            .catalog
            .get(DATABASES, name)?
            .ok_or_else(|| NodeError::not_found("database", name))?;
        if record.state != DbState::Ready {
            return Err(NodeError::NotReady(format!(
                "database {name:?} is {}, not ready",
                json_name(&record.state)
            )));
        }
        let part_record: Option<PartRecord> =
            self.catalog.get(PARTS, &key(&[name, &part.key()]))?;
        if part_record.is_none() && *part == Part::Global {
            return Ok(None);
        }
        let part_record = part_record.ok_or_else(|| match part {
                Part::Global => NodeError::not_found("global data of database", name),
                // Known from the manifest, placed on other members.
                Part::Shard(id) if self.files(name).is_ok_and(|f| f.parts.contains_key(part)) => {
                    NodeError::NotReady(format!(
                        "this node holds no copy of shard {name}/{id}: placement put it on other members"
                    ))
                }
                Part::Shard(id) => NodeError::not_found("shard", format!("{name}/{id}")),
            })?;
        if part_record.trashed_ms.is_some() {
            return Err(NodeError::NotReady(format!(
                "this node's copy of {} of {name:?} is in the trash",
                part.key()
            )));
        }
        let lazy = match part_record.state {
            PartState::Ready => false,
            PartState::Lazy => true,
            other => {
                return Err(NodeError::NotReady(format!(
                    "{} of {name:?} is {}",
                    part.key(),
                    json_name(&other)
                )));
            }
        };
        Ok(Some((part_record.disk, lazy)))
    }

    pub(super) fn files(&self, name: &str) -> Result<Arc<DatabaseFiles>, NodeError> {
        if let Some(files) = self.files.get(name) {
            return Ok(files);
        }
        let manifest: Manifest = self
            .catalog
            .get(MANIFESTS, name)?
            .ok_or_else(|| NodeError::NotReady(format!("database {name:?} has no manifest yet")))?;
        let parts = manifest.parts().map_err(StorageError::Manifest)?;
        let files = Arc::new(DatabaseFiles {
            parts: parts
                .into_iter()
                .map(|(part, files)| {
                    let by_path = files.into_iter().map(|p| (p.local, p.file)).collect();
                    (part, by_path)
                })
                .collect(),
            shard_keys: manifest.shard_keys,
        });
        self.files.keep(name, files.clone());
        Ok(files)
    }

    /// Counts a file read of one part, for the database and for the part.
    fn count_read(&self, database: &str, part: &Part) {
        self.usage.count_read(database, part, self.now_ms());
    }

    /// Counts a query of a database and of each shard it mapped.
    pub(crate) fn count_query(&self, database: &str, shards: &[String]) {
        self.usage.count_query(database, shards, self.now_ms());
    }
}

impl ShardContext {
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The shard id, or `None` for global data.
    pub fn shard_id(&self) -> Option<&str> {
        self.part.shard_id()
    }

    /// Paths of the files of this part, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .files
            .parts
            .get(&self.part)
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        paths.sort();
        paths
    }

    /// Size of a file, from the manifest.
    pub fn size(&self, path: &str) -> Result<u64, NodeError> {
        Ok(self.entry(path)?.size)
    }

    /// The local folder of this part (for a lazy shard, files appear in it once
    /// they are opened).
    pub fn dir(&self) -> PathBuf {
        self.disk.part_dir(&self.database, &self.part)
    }

    /// The id of the local disk this part is on.
    pub fn disk_id(&self) -> &str {
        &self.disk.id
    }

    /// True when files are fetched on first open.
    pub fn is_lazy(&self) -> bool {
        self.lazy
    }

    /// The local path of a file, fetched first for a lazy shard. Counts a read.
    pub async fn path(&self, path: &str) -> Result<PathBuf, NodeError> {
        let local = self.local_path(path).await?;
        self.inner.count_read(&self.database, &self.part);
        Ok(local)
    }

    /// The local path of a file when no fetch is needed (the part is fully
    /// loaded); `None` for a lazy part. Counts a read when it answers.
    pub(crate) fn local_path_now(&self, path: &str) -> Result<Option<PathBuf>, NodeError> {
        if self.lazy {
            return Ok(None);
        }
        self.entry(path)?;
        self.inner.count_read(&self.database, &self.part);
        Ok(Some(self.dir().join(path)))
    }

    /// Opens a file for reading; for a lazy shard the first open fetches it.
    pub async fn open(&self, path: &str) -> Result<std::fs::File, NodeError> {
        let local = self.path(path).await?;
        std::fs::File::open(&local).map_err(|e| StorageError::io(&local)(e).into())
    }

    /// Reads a whole file.
    pub async fn read(&self, path: &str) -> Result<Bytes, NodeError> {
        let local = self.path(path).await?;
        let bytes = tokio::fs::read(&local)
            .await
            .map_err(StorageError::io(&local))?;
        Ok(Bytes::from(bytes))
    }

    fn entry(&self, path: &str) -> Result<&ManifestFile, NodeError> {
        self.files
            .parts
            .get(&self.part)
            .and_then(|files| files.get(path))
            .ok_or_else(|| NodeError::not_found("file", format!("{}/{path}", self.part.key())))
    }

    /// The file's path on local disk, fetching it first for a lazy shard.
    async fn local_path(&self, path: &str) -> Result<PathBuf, NodeError> {
        let entry = self.entry(path)?.clone();
        let local = self.dir().join(path);
        if !self.lazy {
            return Ok(local);
        }
        let cache_key = key(&[&self.database, &self.part.key(), path]);
        let gate = self.inner.files.gate(&cache_key);
        let _turn = gate.lock().await;
        let result = if std::fs::metadata(&local).is_ok() {
            self.inner
                .usage
                .note_access(&cache_key, self.inner.now_ms());
            Ok(())
        } else {
            self.fetch_lazy(&entry, path, &cache_key).await
        };
        self.inner.files.ungate(&cache_key);
        result.map(|()| local)
    }

    async fn fetch_lazy(
        &self,
        entry: &ManifestFile,
        path: &str,
        cache_key: &str,
    ) -> Result<(), NodeError> {
        let inner = &self.inner;
        let record: DatabaseRecord = inner
            .catalog
            .get(DATABASES, &self.database)?
            .ok_or_else(|| NodeError::not_found("database", &self.database))?;
        // A blob already here (another database's) is checked before it is
        // linked: deduplication must not spread a damaged blob.
        let present = match &entry.sha256 {
            Some(sha) => {
                let (inner, disk, sha, size) =
                    (inner.clone(), self.disk.clone(), sha.clone(), entry.size);
                super::blocking(move || Ok(inner.intact_blob(&disk, &sha, size))).await?
            }
            None => false,
        };
        let sha = match &entry.sha256 {
            Some(sha) if present => sha.clone(),
            _ => {
                let source = Source::open(
                    &SourceUrl::parse(&record.source)?,
                    &inner.config.store,
                    false,
                )?
                .layered(inner.store_layer.as_ref());
                let _permit = inner
                    .loads
                    .slots()
                    .acquire()
                    .await
                    .map_err(|_| NodeError::ShuttingDown)?;
                let part = self.part.key();
                let failed_try = |e: &StorageError| {
                    inner.record_error(Some(&self.disk.id), Some(&self.database), Some(&part), e)
                };
                let fetched =
                    fetch_blob(&source, &self.disk, entry, &AtomicU64::new(0), &failed_try).await?;
                inner.usage.count_download(fetched.size, fetched.new_blob);
                inner.metrics.download_done(&self.disk.id, fetched.size);
                fetched.sha256
            }
        };
        let cached = CacheEntry {
            sha256: sha.clone(),
            size: entry.size,
            disk: self.disk.id.clone(),
            last_access_ms: inner.now_ms(),
        };
        inner.catalog.write(|w| w.put(CACHE, cache_key, &cached))?;
        self.disk.link(&sha, &self.database, &self.part, path)?;
        Ok(())
    }
}

/// The files of the databases this node holds, from their manifests
/// (cached: a version's files never change), and one gate per lazily cached
/// file, so that it is fetched once while others wait.
#[derive(Default)]
pub(super) struct Files {
    manifests: Mutex<HashMap<String, Arc<DatabaseFiles>>>,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Files {
    fn get(&self, database: &str) -> Option<Arc<DatabaseFiles>> {
        lock(&self.manifests).get(database).cloned()
    }

    fn keep(&self, database: &str, files: Arc<DatabaseFiles>) {
        lock(&self.manifests).insert(database.to_string(), files);
    }

    /// Forgets a database's files (it is trashed or purged).
    pub(super) fn forget(&self, database: &str) {
        lock(&self.manifests).remove(database);
    }

    /// The gate of one lazily cached file.
    fn gate(&self, cache_key: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.fetching)
            .entry(cache_key.to_string())
            .or_default()
            .clone()
    }

    fn ungate(&self, cache_key: &str) {
        lock(&self.fetching).remove(cache_key);
    }
}

/// A state as the API spells it (`loading`, `trashed`, …).
pub(crate) fn json_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A handle on a node that does not keep it alive: the SQL engine's object
/// store and worker hold one (the node owns them).
#[derive(Clone)]
pub(crate) struct WeakLocal(std::sync::Weak<Inner>);

impl WeakLocal {
    pub(crate) fn upgrade(&self) -> Option<Local> {
        self.0.upgrade().map(|inner| Local { inner })
    }
}

impl Local {
    pub(crate) fn downgrade(&self) -> WeakLocal {
        WeakLocal(Arc::downgrade(&self.inner))
    }

    /// The files of one part of a database this node knows the manifest of
    /// (whether or not it holds the part): path inside the part → file.
    pub(crate) fn part_files(
        &self,
        database: &str,
        part: &Part,
    ) -> Result<HashMap<String, ManifestFile>, NodeError> {
        let files = self.inner.files(database)?;
        Ok(files.parts.get(part).cloned().unwrap_or_default())
    }

    /// One file of one part of a database this node knows the manifest of.
    pub(crate) fn manifest_file(
        &self,
        database: &str,
        part: &Part,
        path: &str,
    ) -> Result<Option<ManifestFile>, NodeError> {
        let files = self.inner.files(database)?;
        Ok(files.parts.get(part).and_then(|f| f.get(path)).cloned())
    }

    /// The parts of a database, from its manifest.
    pub(crate) fn parts(&self, database: &str) -> Result<Vec<Part>, NodeError> {
        Ok(self.inner.files(database)?.parts.keys().cloned().collect())
    }

    /// The co-located shard tables of a database (table → column), from
    /// its manifest.
    pub(crate) fn shard_keys(&self, database: &str) -> Result<BTreeMap<String, String>, NodeError> {
        Ok(self.inner.files(database)?.shard_keys.clone())
    }
}
