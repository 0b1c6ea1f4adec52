//! One local data directory: `blobs/aa/<sha256>` (content-addressed, read-only),
//! `dbs/<database>/<part>/...` (hard links to blobs) and `tmp/` (downloads under
//! way, emptied at start). A blob enters `blobs/` only after it was verified.
//!
//! Blobs and links are written without a flush each: the disk counts its
//! writes, and [`Disk::sync`] makes everything written before it durable at
//! once (the node's flusher calls it once writes go quiet).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::manifest::{Part, is_sha256_hex};
use crate::clock::now_ms;

#[derive(Debug)]
pub struct Disk {
    pub id: String,
    pub root: PathBuf,
    pub high_watermark: f64,
    pub max_bytes: Option<u64>,
    /// Bytes of blobs on this disk: counted at open, kept up to date after.
    used_bytes: AtomicU64,
    next_temp: AtomicU64,
    /// Blobs committed and links made since the disk was opened.
    writes: AtomicU64,
    /// When the last of them was made (ms since the epoch).
    last_write_ms: AtomicU64,
    /// `writes` as it stood when the last completed sync began.
    synced_writes: AtomicU64,
    /// Set at shutdown: writes are refused from then on. Writers hold the read
    /// side while they write, so closing waits for those under way.
    closed: RwLock<bool>,
}

/// A blob found on disk, with when its content was last written.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub sha256: String,
    pub size: u64,
    pub modified_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskStats {
    pub id: String,
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_by_dram_bytes: u64,
    pub high_watermark: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_bytes: Option<u64>,
    /// What dram may fill: `max_bytes` when set (at most the file system),
    /// otherwise the file system's size.
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Usage is past the high watermark: placement gives this disk nothing new.
    #[serde(default)]
    pub over_watermark: bool,
    /// Files were written since the last sync: a crash now would have them
    /// checked again at start.
    #[serde(default)]
    pub unsynced: bool,
}

impl Disk {
    /// Opens (creating if needed) a data directory and empties its `tmp/`.
    pub fn open(
        id: String,
        root: &Path,
        high_watermark: f64,
        max_bytes: Option<u64>,
    ) -> Result<Disk, StorageError> {
        Disk::open_listing(id, root, high_watermark, max_bytes, u64::MAX).map(|(disk, _)| disk)
    }

    /// Opens a data directory like [`Disk::open`], and returns the blobs whose
    /// content was written at or after `written_since_ms` (from the same pass
    /// over `blobs/` that counts the disk's use).
    pub fn open_listing(
        id: String,
        root: &Path,
        high_watermark: f64,
        max_bytes: Option<u64>,
        written_since_ms: u64,
    ) -> Result<(Disk, Vec<BlobFile>), StorageError> {
        for sub in ["blobs", "dbs", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(StorageError::io(&dir))?;
        }
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(StorageError::io(&tmp))? {
            let path = entry.map_err(StorageError::io(&tmp))?.path();
            remove_any(&path).map_err(StorageError::io(&path))?;
        }
        let disk = Disk {
            id,
            root: root.to_path_buf(),
            high_watermark,
            max_bytes,
            used_bytes: AtomicU64::new(0),
            next_temp: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            last_write_ms: AtomicU64::new(0),
            synced_writes: AtomicU64::new(0),
            closed: RwLock::new(false),
        };
        let mut used = 0;
        let mut recent = Vec::new();
        disk.each_blob(|blob| {
            used += blob.size;
            if blob.modified_ms >= written_since_ms {
                recent.push(blob);
            }
        })?;
        disk.used_bytes.store(used, Ordering::Relaxed);
        Ok((disk, recent))
    }

    /// Counts a write (a blob committed, a link made).
    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.last_write_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Refuses writes from now on, once those under way are done.
    pub fn close(&self) {
        *self.closed.write().unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Holds off [`Disk::close`] while a write is made; fails once closed.
    fn open_for_write(&self, path: &Path) -> Result<RwLockReadGuard<'_, bool>, StorageError> {
        let closed = self.closed.read().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return Err(StorageError::io(path)(io::Error::other(
                "the disk is closed: the node is shutting down",
            )));
        }
        Ok(closed)
    }

    /// When the last blob or link was written (ms since the epoch, 0: never).
    pub fn last_write_ms(&self) -> u64 {
        self.last_write_ms.load(Ordering::Relaxed)
    }

    /// Whether something was written since the last completed sync began.
    pub fn is_dirty(&self) -> bool {
        self.writes.load(Ordering::Relaxed) != self.synced_writes.load(Ordering::Relaxed)
    }

    /// Makes everything written to this disk's file system so far durable:
    /// file contents and directory entries (Linux `syncfs`; elsewhere `sync`).
    pub fn sync(&self) -> Result<(), StorageError> {
        let writes = self.writes.load(Ordering::Relaxed);
        let root = File::open(&self.root).map_err(StorageError::io(&self.root))?;
        sync_file_system(&root).map_err(StorageError::io(&self.root))?;
        self.synced_writes.fetch_max(writes, Ordering::Relaxed);
        Ok(())
    }

    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        let fan = sha256.get(..2).unwrap_or("00");
        self.root.join("blobs").join(fan).join(sha256)
    }

    pub fn database_dir(&self, database: &str) -> PathBuf {
        self.root.join("dbs").join(database)
    }

    pub fn part_dir(&self, database: &str, part: &Part) -> PathBuf {
        self.database_dir(database).join(part.key())
    }

    /// Whether a verified blob of this size is here.
    pub fn has_blob(&self, sha256: &str, size: u64) -> bool {
        fs::metadata(self.blob_path(sha256)).is_ok_and(|m| m.len() == size)
    }

    /// A fresh path under `tmp/` for a download.
    fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.part", std::process::id()))
    }

    /// Creates a temp file for a download under `tmp/`, read-only from the
    /// start (the handle returned may still write): committed, it is a blob.
    pub fn create_temp(&self) -> Result<(PathBuf, File), StorageError> {
        let temp = self.temp_path();
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&temp)
            .map_err(StorageError::io(&temp))?;
        Ok((temp, file))
    }

    /// Moves a verified temp file (from [`Disk::create_temp`]) into `blobs/`.
    /// If the blob is already there, the temp file is dropped and the existing
    /// blob kept (its hard links stay valid). Returns whether a new blob was
    /// stored.
    pub fn commit_blob(&self, temp: &Path, sha256: &str, size: u64) -> Result<bool, StorageError> {
        let _open = self.open_for_write(temp)?;
        let blob = self.blob_path(sha256);
        let stored =
            with_parent(&blob, || move_new(temp, &blob)).map_err(StorageError::io(&blob))?;
        if stored {
            self.used_bytes.fetch_add(size, Ordering::Relaxed);
            self.wrote();
        } else {
            fs::remove_file(temp).map_err(StorageError::io(temp))?;
        }
        Ok(stored)
    }

    /// Hard-links a blob at `dbs/<database>/<part>/<local>`, replacing whatever
    /// another inode left there.
    pub fn link(
        &self,
        sha256: &str,
        database: &str,
        part: &Part,
        local: &str,
    ) -> Result<PathBuf, StorageError> {
        let blob = self.blob_path(sha256);
        let dest = self.part_dir(database, part).join(local);
        let _open = self.open_for_write(&dest)?;
        match with_parent(&dest, || fs::hard_link(&blob, &dest)) {
            Ok(()) => self.wrote(),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let same = match (fs::metadata(&blob), fs::metadata(&dest)) {
                    (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                    _ => false,
                };
                if !same {
                    fs::remove_file(&dest).map_err(StorageError::io(&dest))?;
                    fs::hard_link(&blob, &dest).map_err(StorageError::io(&dest))?;
                    self.wrote();
                }
            }
            Err(e) => return Err(StorageError::io(&dest)(e)),
        }
        Ok(dest)
    }

    /// Removes the link of one file (lazy eviction).
    pub fn unlink(&self, database: &str, part: &Part, local: &str) -> Result<(), StorageError> {
        let dest = self.part_dir(database, part).join(local);
        match fs::remove_file(&dest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io(&dest)(e)),
            _ => Ok(()),
        }
    }

    pub fn remove_database_dir(&self, database: &str) -> Result<(), StorageError> {
        let dir = self.database_dir(database);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io(&dir)(e)),
            _ => Ok(()),
        }
    }

    pub fn remove_part_dir(&self, database: &str, part: &Part) -> Result<(), StorageError> {
        let dir = self.part_dir(database, part);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// Deletes a blob; returns the bytes freed (0 if it was not there).
    pub fn remove_blob(&self, sha256: &str) -> Result<u64, StorageError> {
        let blob = self.blob_path(sha256);
        let size = match fs::metadata(&blob) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StorageError::io(&blob)(e)),
        };
        match fs::remove_file(&blob) {
            Ok(()) => {
                self.used_bytes.fetch_sub(size, Ordering::Relaxed);
                Ok(size)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StorageError::io(&blob)(e)),
        }
    }

    /// Every blob on this disk with its size.
    pub fn list_blobs(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut blobs = Vec::new();
        self.each_blob(|blob| blobs.push((blob.sha256, blob.size)))?;
        Ok(blobs)
    }

    fn each_blob(&self, mut found: impl FnMut(BlobFile)) -> Result<(), StorageError> {
        let root = self.root.join("blobs");
        for fan in fs::read_dir(&root).map_err(StorageError::io(&root))? {
            let fan = fan.map_err(StorageError::io(&root))?.path();
            if !fan.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&fan).map_err(StorageError::io(&fan))? {
                let entry = entry.map_err(StorageError::io(&fan))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_sha256_hex(&name) {
                    let meta = entry.metadata().map_err(StorageError::io(entry.path()))?;
                    let modified_ms = u64::try_from(meta.mtime())
                        .unwrap_or(0)
                        .saturating_mul(1000)
                        .saturating_add(meta.mtime_nsec().max(0) as u64 / 1_000_000);
                    found(BlobFile {
                        sha256: name,
                        size: meta.len(),
                        modified_ms,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> DiskStats {
        let (total_bytes, free_bytes) = capacity(&self.root).unwrap_or((0, 0));
        DiskStats {
            id: self.id.clone(),
            path: self.root.display().to_string(),
            total_bytes,
            free_bytes,
            used_by_dram_bytes: self.used_bytes(),
            high_watermark: self.high_watermark,
            max_bytes: self.max_bytes,
            capacity_bytes: self.usage().0,
            over_watermark: self.over_watermark(),
            unsynced: self.is_dirty(),
        }
    }

    /// (capacity, used, free on the file system): with `max_bytes`, capacity is
    /// the cap and used is dram's own bytes; otherwise the file system's figures.
    fn usage(&self) -> (u64, u64, u64) {
        let (total, free) = capacity(&self.root).unwrap_or((0, 0));
        match self.max_bytes {
            Some(max) => (max.min(total), self.used_bytes(), free),
            None => (total, total.saturating_sub(free), free),
        }
    }

    /// Bytes that may still be written before the high watermark is passed.
    pub fn room(&self) -> u64 {
        let (capacity, used, free) = self.usage();
        let limit = (self.high_watermark * capacity as f64) as u64;
        limit.saturating_sub(used).min(free)
    }

    /// Whether usage is above the high watermark.
    pub fn over_watermark(&self) -> bool {
        let (capacity, used, _) = self.usage();
        capacity > 0 && used as f64 > self.high_watermark * capacity as f64
    }
}

/// Runs `make` (which creates `path`), creating `path`'s folder first if it
/// fails for want of it: folders are made once, not checked for every file.
fn with_parent<T>(path: &Path, make: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match make() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            make()
        }
        other => other,
    }
}

/// Moves `from` to `to` unless `to` exists; whether it moved.
#[cfg(target_os = "linux")]
fn move_new(from: &Path, to: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (c_from, c_to) = (c(from)?, c(to)?);
    // SAFETY: both are NUL-terminated paths that outlive the call.
    let moved = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if moved == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        // A file system without RENAME_NOREPLACE.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => link_new(from, to),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn move_new(from: &Path, to: &Path) -> io::Result<bool> {
    link_new(from, to)
}

/// `move_new` by hard link and unlink.
fn link_new(from: &Path, to: &Path) -> io::Result<bool> {
    match fs::hard_link(from, to) {
        Ok(()) => {
            fs::remove_file(from)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(target_os = "linux")]
fn sync_file_system(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a syscall on a descriptor `file` keeps open.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_file_system(_file: &File) -> io::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}

/// (total, available) bytes of the file system holding `path`.
fn capacity(path: &Path) -> Option<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let unit = stat.fragment_size() as u64;
    Some((
        stat.blocks() as u64 * unit,
        stat.blocks_available() as u64 * unit,
    ))
}

fn remove_any(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A temp file holding `bytes`, as a download leaves it.
    fn downloaded(disk: &Disk, bytes: &[u8]) -> PathBuf {
        let (temp, mut file) = disk.create_temp().unwrap();
        file.write_all(bytes).unwrap();
        temp
    }

    #[test]
    fn commit_link_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open("0".into(), dir.path(), 0.9, None).unwrap();
        let sha = "ab".repeat(32);
        for _ in 0..2 {
            let temp = downloaded(&disk, b"hello");
            disk.commit_blob(&temp, &sha, 5).unwrap();
            assert!(!temp.exists());
        }
        assert_eq!(disk.used_bytes(), 5, "a blob stored twice counts once");
        let part = Part::Shard("0".into());
        let a = disk.link(&sha, "a", &part, "x/y").unwrap();
        let b = disk.link(&sha, "b", &part, "y").unwrap();
        assert_eq!(
            fs::metadata(&a).unwrap().ino(),
            fs::metadata(&b).unwrap().ino()
        );
        assert!(fs::metadata(&a).unwrap().permissions().readonly());
        disk.link(&sha, "a", &part, "x/y").unwrap();
        assert_eq!(disk.list_blobs().unwrap(), vec![(sha.clone(), 5)]);
        assert_eq!(disk.remove_blob(&sha).unwrap(), 5);
        assert_eq!(disk.used_bytes(), 0);
        assert_eq!(
            fs::read(&a).unwrap(),
            b"hello",
            "links outlive the blob entry"
        );
    }

    #[test]
    fn open_empties_tmp_and_counts_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open("0".into(), dir.path(), 0.9, None).unwrap();
        let temp = downloaded(&disk, b"partial");
        let sha = "cd".repeat(32);
        let other = downloaded(&disk, b"abc");
        disk.commit_blob(&other, &sha, 3).unwrap();
        drop(disk);
        let disk = Disk::open("0".into(), dir.path(), 0.9, None).unwrap();
        assert!(!temp.exists());
        assert_eq!(disk.used_bytes(), 3);
        assert!(disk.has_blob(&sha, 3));
        assert!(!disk.has_blob(&sha, 4));
    }

    #[test]
    fn counts_writes_until_synced_and_refuses_them_once_closed() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open("0".into(), dir.path(), 0.9, None).unwrap();
        assert!(!disk.is_dirty());
        let sha = "ef".repeat(32);
        let temp = downloaded(&disk, b"abc");
        disk.commit_blob(&temp, &sha, 3).unwrap();
        assert!(disk.is_dirty());
        assert!(disk.last_write_ms() > 0);
        disk.sync().unwrap();
        assert!(!disk.is_dirty());
        disk.link(&sha, "a", &Part::Global, "f").unwrap();
        assert!(disk.is_dirty(), "a link is a write too");

        disk.close();
        let temp = downloaded(&disk, b"xyz");
        let err = disk.commit_blob(&temp, &"01".repeat(32), 3).unwrap_err();
        assert!(err.to_string().contains("shutting down"), "{err}");
        assert!(disk.link(&sha, "b", &Part::Global, "f").is_err());
        drop(disk);

        // Reopened: blobs written at or after a time are listed.
        let (_, recent) = Disk::open_listing("0".into(), dir.path(), 0.9, None, 0).unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(
            (recent[0].sha256.as_str(), recent[0].size),
            (sha.as_str(), 3)
        );
        let (disk, recent) =
            Disk::open_listing("0".into(), dir.path(), 0.9, None, u64::MAX).unwrap();
        assert!(recent.is_empty());
        assert_eq!(disk.used_bytes(), 3);
    }
}
