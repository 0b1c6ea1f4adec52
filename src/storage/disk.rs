//! One local data directory: `blobs/aa/<sha256>` (content-addressed, read-only),
//! `dbs/<database>/<part>/...` (hard links to blobs) and `tmp/` (downloads under
//! way, emptied at start). A blob enters `blobs/` only after it was verified.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::manifest::{Part, is_sha256_hex};

#[derive(Debug)]
pub struct Disk {
    pub id: String,
    pub root: PathBuf,
    pub high_watermark: f64,
    pub max_bytes: Option<u64>,
    /// Bytes of blobs on this disk: counted at open, kept up to date after.
    used_bytes: AtomicU64,
    next_temp: AtomicU64,
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
}

impl Disk {
    /// Opens (creating if needed) a data directory and empties its `tmp/`.
    pub fn open(
        id: String,
        root: &Path,
        high_watermark: f64,
        max_bytes: Option<u64>,
    ) -> Result<Disk, StorageError> {
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
        };
        let used = disk.list_blobs()?.iter().map(|(_, size)| size).sum();
        disk.used_bytes.store(used, Ordering::Relaxed);
        Ok(disk)
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
    pub fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.part", std::process::id()))
    }

    /// Moves a verified temp file into `blobs/`, read-only. If the blob is already
    /// there, the temp file is dropped and the existing blob kept (its hard links
    /// stay valid). Returns whether a new blob was stored.
    pub fn commit_blob(&self, temp: &Path, sha256: &str, size: u64) -> Result<bool, StorageError> {
        let blob = self.blob_path(sha256);
        if let Some(parent) = blob.parent() {
            fs::create_dir_all(parent).map_err(StorageError::io(parent))?;
        }
        fs::set_permissions(temp, fs::Permissions::from_mode(0o444))
            .map_err(StorageError::io(temp))?;
        let stored = match fs::hard_link(temp, &blob) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(StorageError::io(&blob)(e)),
        };
        fs::remove_file(temp).map_err(StorageError::io(temp))?;
        if stored {
            self.used_bytes.fetch_add(size, Ordering::Relaxed);
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
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(StorageError::io(parent))?;
        }
        match fs::hard_link(&blob, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let same = match (fs::metadata(&blob), fs::metadata(&dest)) {
                    (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                    _ => false,
                };
                if !same {
                    fs::remove_file(&dest).map_err(StorageError::io(&dest))?;
                    fs::hard_link(&blob, &dest).map_err(StorageError::io(&dest))?;
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
        let root = self.root.join("blobs");
        let mut blobs = Vec::new();
        for fan in fs::read_dir(&root).map_err(StorageError::io(&root))? {
            let fan = fan.map_err(StorageError::io(&root))?.path();
            if !fan.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&fan).map_err(StorageError::io(&fan))? {
                let entry = entry.map_err(StorageError::io(&fan))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_sha256_hex(&name) {
                    let size = entry
                        .metadata()
                        .map_err(StorageError::io(entry.path()))?
                        .len();
                    blobs.push((name, size));
                }
            }
        }
        Ok(blobs)
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

    #[test]
    fn commit_link_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open("0".into(), dir.path(), 0.9, None).unwrap();
        let sha = "ab".repeat(32);
        for _ in 0..2 {
            let temp = disk.temp_path();
            fs::write(&temp, b"hello").unwrap();
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
        let temp = disk.temp_path();
        fs::write(&temp, b"partial").unwrap();
        let sha = "cd".repeat(32);
        let other = disk.temp_path();
        fs::write(&other, b"abc").unwrap();
        disk.commit_blob(&other, &sha, 3).unwrap();
        drop(disk);
        let disk = Disk::open("0".into(), dir.path(), 0.9, None).unwrap();
        assert!(!temp.exists());
        assert_eq!(disk.used_bytes(), 3);
        assert!(disk.has_blob(&sha, 3));
        assert!(!disk.has_blob(&sha, 4));
    }
}
