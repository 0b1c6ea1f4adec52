//! What `map` sees of its shard: the shard's files, the database's global data,
//! which database and version they belong to, and the query's cancellation.
//!
//! `map` runs on the blocking pool, so these methods block: a file of a lazy shard
//! is fetched on first use (the calling thread waits, the runtime keeps working),
//! and a wait is cut short when the query is cancelled.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::AnalysisError;
use crate::local::ShardContext;

/// The files of one part of a database (a shard, or the global data), readable
/// from blocking code.
#[derive(Debug, Clone)]
pub struct DataDir {
    context: ShardContext,
    runtime: Handle,
    cancel: CancellationToken,
    /// Bytes read through `open`/`read` of this handle (and its clones).
    read_bytes: Arc<AtomicU64>,
    /// Files opened through it.
    opened: Arc<AtomicU64>,
}

/// A file of a shard opened for reading: a `std::fs::File` that counts the
/// bytes read through it (the index's read events and `dram_read_bytes_total`).
#[derive(Debug)]
pub struct ShardFile {
    file: std::fs::File,
    read_bytes: Arc<AtomicU64>,
}

impl ShardFile {
    /// The file itself (reads through it directly are not counted).
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    pub fn into_file(self) -> std::fs::File {
        self.file
    }
}

impl Read for ShardFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for ShardFile {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(position)
    }
}

impl DataDir {
    pub(crate) fn new(context: ShardContext, runtime: Handle, cancel: CancellationToken) -> Self {
        DataDir {
            context,
            runtime,
            cancel,
            read_bytes: Arc::default(),
            opened: Arc::default(),
        }
    }

    /// Files opened and bytes read through this handle so far.
    pub(crate) fn reads(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.read_bytes.load(Ordering::Relaxed),
        )
    }

    /// The id of the local disk this part is on.
    pub(crate) fn disk_id(&self) -> &str {
        self.context.disk_id()
    }

    /// The local folder of this part. In a lazy database a file appears here only
    /// once it was opened (use [`DataDir::path`] to fetch it first).
    pub fn dir(&self) -> PathBuf {
        self.context.dir()
    }

    /// Paths of the files, relative to [`DataDir::dir`], sorted.
    pub fn files(&self) -> Vec<String> {
        self.context.files()
    }

    /// Size of a file in bytes, from the manifest.
    pub fn size(&self, path: &str) -> Result<u64, AnalysisError> {
        Ok(self.context.size(path)?)
    }

    /// The local path of a file, fetched first if the database is lazy and the
    /// file is not on disk yet.
    pub fn path(&self, path: &str) -> Result<PathBuf, AnalysisError> {
        if let Some(local) = self.context.local_path_now(path)? {
            return Ok(local);
        }
        self.fetch(path)
    }

    /// Opens a file for reading (the bytes read through it are counted).
    pub fn open(&self, path: &str) -> Result<ShardFile, AnalysisError> {
        let local = self.path(path)?;
        let file = std::fs::File::open(&local)
            .map_err(|e| AnalysisError::failed(format!("cannot open {}: {e}", local.display())))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(ShardFile {
            file,
            read_bytes: self.read_bytes.clone(),
        })
    }

    /// Reads a whole file.
    pub fn read(&self, path: &str) -> Result<Bytes, AnalysisError> {
        let mut file = self.open(path)?;
        let mut buffer = Vec::with_capacity(self.context.size(path).unwrap_or(0) as usize);
        file.read_to_end(&mut buffer)
            .map_err(|e| AnalysisError::failed(format!("cannot read {path}: {e}")))?;
        Ok(Bytes::from(buffer))
    }

    /// Reads a whole file as UTF-8 text.
    pub fn read_to_string(&self, path: &str) -> Result<String, AnalysisError> {
        let bytes = self.read(path)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| AnalysisError::failed(format!("{path} is not UTF-8 text")))
    }

    /// Runs a lazy fetch on the runtime and waits for it, or for cancellation.
    fn fetch(&self, path: &str) -> Result<PathBuf, AnalysisError> {
        let context = self.context.clone();
        let cancel = self.cancel.clone();
        let path = path.to_string();
        let task = self.runtime.spawn(async move {
            tokio::select! {
                result = context.path(&path) => result.map_err(AnalysisError::from),
                () = cancel.cancelled() => Err(AnalysisError::cancelled()),
            }
        });
        match futures::executor::block_on(task) {
            Ok(result) => result,
            Err(e) => Err(AnalysisError::failed(format!(
                "fetching a lazy file failed: {e}"
            ))),
        }
    }
}

/// One shard of a database, as given to [`Analysis::map`](super::Analysis::map).
#[derive(Debug, Clone)]
pub struct Shard {
    database: String,
    version: String,
    id: String,
    data: DataDir,
    global: Option<DataDir>,
    cancel: CancellationToken,
}

impl Shard {
    pub(crate) fn new(
        version: String,
        data: DataDir,
        global: Option<DataDir>,
        cancel: CancellationToken,
    ) -> Shard {
        Shard {
            database: data.context.database().to_string(),
            id: data.context.shard_id().unwrap_or_default().to_string(),
            version,
            data,
            global,
            cancel,
        }
    }

    /// The database's name (an alias in the request is already resolved).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The database's version: the sha256 of its manifest.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The shard id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The shard's files.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The database's global data, if it has any.
    pub fn global(&self) -> Option<&DataDir> {
        self.global.as_ref()
    }

    /// The global data, or an error naming the database when it has none.
    pub fn require_global(&self) -> Result<&DataDir, AnalysisError> {
        self.global.as_ref().ok_or_else(|| {
            AnalysisError::failed(format!("database {:?} has no global data", self.database))
        })
    }

    /// The shard's local folder (see [`DataDir::dir`]).
    pub fn dir(&self) -> PathBuf {
        self.data.dir()
    }

    /// The shard's file paths, sorted.
    pub fn files(&self) -> Vec<String> {
        self.data.files()
    }

    /// A shard file's local path, fetched first if lazy.
    pub fn path(&self, path: &str) -> Result<PathBuf, AnalysisError> {
        self.data.path(path)
    }

    /// Opens a shard file.
    pub fn open(&self, path: &str) -> Result<ShardFile, AnalysisError> {
        self.data.open(path)
    }

    /// Reads a whole shard file.
    pub fn read(&self, path: &str) -> Result<Bytes, AnalysisError> {
        self.data.read(path)
    }

    /// True once the query is cancelled (deadline passed, caller gone).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(cancelled)` once the query is cancelled: call it in long loops.
    pub fn check_cancelled(&self) -> Result<(), AnalysisError> {
        if self.cancel.is_cancelled() {
            Err(AnalysisError::cancelled())
        } else {
            Ok(())
        }
    }

    /// The cancellation token itself, for code that waits on it.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }
}
