//! Fetching one object into a verified blob: a whole-object GET streamed into a
//! temp file by a blocking writer that hashes as it writes; size and sha256 are
//! checked against the manifest before the blob is committed. On any error the
//! temp file is removed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::StorageError;
use super::disk::Disk;
use super::manifest::{MANIFEST_NAME, Manifest, ManifestFile};
use super::source::Source;

/// Largest manifest read into memory.
const MAX_MANIFEST_BYTES: u64 = 256 * 1024 * 1024;

/// Removes a temp file unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What a fetch stored.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub sha256: String,
    pub size: u64,
    /// False when an identical blob was already on the disk.
    pub new_blob: bool,
}

/// Tries a file gets before its load fails: a failed GET or a body that fails
/// its checksum is fetched again after 100 ms, then 400 ms.
pub const FETCH_ATTEMPTS: u32 = 3;

/// Downloads `file` from `source` into a blob on `disk`, adding bytes to `progress`
/// as they arrive (and taking back those of a failed try). Store errors and
/// size or checksum mismatches are tried again (`FETCH_ATTEMPTS` in all);
/// local disk errors are not. `failed_try` sees every failed try's error (the
/// index records them as exceptions).
pub async fn fetch_blob(
    source: &Source,
    disk: &Arc<Disk>,
    file: &ManifestFile,
    progress: &AtomicU64,
    failed_try: &(dyn Fn(&StorageError) + Sync),
) -> Result<Fetched, StorageError> {
    let mut attempt = 1;
    loop {
        let mut added = 0;
        match fetch_once(source, disk, file, progress, &mut added).await {
            Ok(fetched) => return Ok(fetched),
            Err(e) => {
                failed_try(&e);
                progress.fetch_sub(added, Ordering::Relaxed);
                let retryable = matches!(
                    e,
                    StorageError::Store { .. } | StorageError::Mismatch { .. }
                );
                if !retryable || attempt >= FETCH_ATTEMPTS {
                    return Err(e);
                }
                tracing::warn!(path = %file.path, attempt, error = %e, "fetch failed, trying again");
                tokio::time::sleep(std::time::Duration::from_millis(100 << (2 * (attempt - 1))))
                    .await;
                attempt += 1;
            }
        }
    }
}

/// Bytes the network side gathers before handing them to the writer thread:
/// one wake-up of it per batch rather than per network read (often 16 KiB).
const BATCH_BYTES: usize = 256 << 10;

/// What the network side hands the writer: bytes, then `End` once the body
/// is whole. A channel closed without `End` means the download failed.
enum ToWriter {
    Bytes(Vec<Bytes>),
    End,
}

async fn fetch_once(
    source: &Source,
    disk: &Arc<Disk>,
    file: &ManifestFile,
    progress: &AtomicU64,
    added: &mut u64,
) -> Result<Fetched, StorageError> {
    let location = source.object_path(&file.path);
    let result = source
        .store
        .get(&location)
        .await
        .map_err(StorageError::store(&location))?;

    let (batch_tx, batch_rx) = mpsc::channel::<ToWriter>(4);
    let writer = {
        let (disk, file) = (disk.clone(), file.clone());
        tokio::task::spawn_blocking(move || write_blob(&disk, &file, batch_rx))
    };

    let mut stream = result.into_stream();
    let mut batch = Vec::new();
    let mut batched = 0;
    let mut received = 0u64;
    let mut failure = None;
    loop {
        let chunk = match stream.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                failure = Some(StorageError::store(&location)(e));
                break;
            }
            None => {
                if !batch.is_empty() {
                    let _ = batch_tx.send(ToWriter::Bytes(batch)).await;
                }
                let _ = batch_tx.send(ToWriter::End).await;
                break;
            }
        };
        received += chunk.len() as u64;
        if received > file.size {
            failure = Some(StorageError::Mismatch {
                path: file.path.clone(),
                message: format!("larger than the {} bytes the manifest says", file.size),
            });
            break;
        }
        progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        *added += chunk.len() as u64;
        batched += chunk.len();
        batch.push(chunk);
        if batched >= BATCH_BYTES {
            batched = 0;
            let full = std::mem::take(&mut batch);
            if batch_tx.send(ToWriter::Bytes(full)).await.is_err() {
                break; // the writer failed; its error is reported below
            }
        }
    }
    drop(batch_tx);
    let written = writer.await.map_err(|e| StorageError::Io {
        path: disk.root.join("tmp"),
        source: std::io::Error::other(e),
    })?;
    match failure {
        Some(failure) => Err(failure),
        None => written,
    }
}

/// The blocking half of a fetch: writes the batches into a temp file while
/// hashing them; once the body is whole, checks size and sha256 against the
/// manifest and commits the blob. Any error (or a body that never ended)
/// removes the temp file. No fsync here: the node syncs each disk once its
/// writes go quiet, and checks again at start what a crash may have cut short
/// (`node::durable`).
fn write_blob(
    disk: &Disk,
    file: &ManifestFile,
    mut batch_rx: mpsc::Receiver<ToWriter>,
) -> Result<Fetched, StorageError> {
    let (temp, mut out) = disk.create_temp()?;
    let mut guard = TempGuard(Some(temp.clone()));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        match batch_rx.blocking_recv() {
            Some(ToWriter::Bytes(chunks)) => {
                for chunk in chunks {
                    hasher.update(&chunk);
                    out.write_all(&chunk).map_err(StorageError::io(&temp))?;
                    size += chunk.len() as u64;
                }
            }
            Some(ToWriter::End) => break,
            None => {
                return Err(StorageError::io(&temp)(std::io::Error::other(
                    "the download stopped before the end of the file",
                )));
            }
        }
    }
    if size != file.size {
        return Err(StorageError::Mismatch {
            path: file.path.clone(),
            message: format!("{size} bytes, the manifest says {}", file.size),
        });
    }
    let sha256 = hex::encode(hasher.finalize());
    if let Some(expected) = &file.sha256
        && *expected != sha256
    {
        return Err(StorageError::Mismatch {
            path: file.path.clone(),
            message: format!("sha256 {sha256}, the manifest says {expected}"),
        });
    }
    drop(out);
    let new_blob = disk.commit_blob(&temp, &sha256, size)?;
    guard.0 = None;
    Ok(Fetched {
        sha256,
        size,
        new_blob,
    })
}

/// Whether `source` holds a database: a manifest, or at least one file. `Ok`
/// unless the store says for certain that there is nothing there
/// ([`StorageError::SourceNotFound`]); a store that fails or does not answer
/// within `wait` is not a verdict (the load will try again and say why).
pub async fn probe(source: &Source, wait: std::time::Duration) -> Result<(), StorageError> {
    let look = async {
        match source.store.head(&source.object_path(MANIFEST_NAME)).await {
            Ok(_) => return Some(true),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(_) => return None,
        }
        let prefix = (!source.prefix.as_ref().is_empty()).then_some(&source.prefix);
        match source.store.list(prefix).next().await {
            Some(Ok(_)) => Some(true),
            Some(Err(object_store::Error::NotFound { .. })) | None => Some(false),
            Some(Err(_)) => None,
        }
    };
    match tokio::time::timeout(wait, look).await {
        Ok(Some(false)) => Err(StorageError::SourceNotFound {
            url: source.url.clone(),
            message: "no manifest (dram.json) and no files there".to_string(),
        }),
        _ => Ok(()),
    }
}

/// Reads `dram.json`; without one, lists the prefix and returns a manifest whose
/// hashes are unknown until the files are fetched.
pub async fn read_manifest(source: &Source) -> Result<Manifest, StorageError> {
    let location = source.object_path(MANIFEST_NAME);
    match source.store.get(&location).await {
        Ok(result) => {
            if result.meta.size > MAX_MANIFEST_BYTES {
                return Err(StorageError::Manifest(format!(
                    "manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} allowed",
                    result.meta.size
                )));
            }
            let bytes = result
                .bytes()
                .await
                .map_err(StorageError::store(&location))?;
            Manifest::parse(&bytes).map_err(StorageError::Manifest)
        }
        Err(object_store::Error::NotFound { .. }) => list_manifest(source).await,
        Err(e) => Err(StorageError::store(&location)(e)),
    }
}

async fn list_manifest(source: &Source) -> Result<Manifest, StorageError> {
    let prefix = (!source.prefix.as_ref().is_empty()).then_some(&source.prefix);
    let mut listing = source.store.list(prefix);
    let mut files = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(StorageError::store(&source.url))?;
        let Some(relative) = source.relative_path(&meta.location) else {
            continue;
        };
        if relative == MANIFEST_NAME {
            continue;
        }
        files.push(ManifestFile {
            path: relative.to_string(),
            size: meta.size,
            sha256: None,
        });
    }
    if files.is_empty() {
        return Err(StorageError::SourceNotFound {
            url: source.url.clone(),
            message: "no manifest and no files".to_string(),
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        format: 1,
        files,
        ..Manifest::default()
    };
    manifest.check().map_err(StorageError::Manifest)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::storage::SourceUrl;
    use object_store::PutPayload;

    async fn memory_source(name: &str) -> Source {
        Source::open(
            &SourceUrl::parse(&format!("memory://{name}/db")).unwrap(),
            &StoreConfig::default(),
            false,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn verifies_size_and_hash() {
        let source = memory_source("fetch-verify").await;
        source
            .store
            .put(&source.object_path("a"), PutPayload::from_static(b"hello"))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open("0".into(), dir.path(), 0.9, None).unwrap());
        let sha = hex::encode(Sha256::digest(b"hello"));
        let progress = AtomicU64::new(0);
        let good = ManifestFile {
            path: "a".into(),
            size: 5,
            sha256: Some(sha.clone()),
        };
        let fetched = fetch_blob(&source, &disk, &good, &progress, &|_| {})
            .await
            .unwrap();
        assert_eq!(fetched.sha256, sha);
        assert!(disk.has_blob(&sha, 5));

        let wrong_hash = ManifestFile {
            sha256: Some("0".repeat(64)),
            ..good.clone()
        };
        let err = fetch_blob(&source, &disk, &wrong_hash, &progress, &|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        let short = ManifestFile {
            size: 3,
            ..good.clone()
        };
        let err = fetch_blob(&source, &disk, &short, &progress, &|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger"), "{err}");
        let long = ManifestFile {
            size: 9,
            ..good.clone()
        };
        let err = fetch_blob(&source, &disk, &long, &progress, &|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("5 bytes"), "{err}");
        // Failed tries (three per file) take their bytes back from the progress.
        assert_eq!(progress.load(Ordering::Relaxed), 5);
        let tmp_entries = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
        assert_eq!(tmp_entries, 0, "failed fetches leave no temp files");
    }

    #[tokio::test]
    async fn lists_without_manifest() {
        let source = memory_source("fetch-list").await;
        for path in ["shards/1/x", "global/g", "shards/0/y"] {
            source
                .store
                .put(&source.object_path(path), PutPayload::from_static(b"1"))
                .await
                .unwrap();
        }
        let manifest = read_manifest(&source).await.unwrap();
        let paths: Vec<_> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["global/g", "shards/0/y", "shards/1/x"]);
        assert!(manifest.files.iter().all(|f| f.sha256.is_none()));

        // Names with non-ASCII and special characters, in a folder without
        // manifest: listed, then fetched under the same key.
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "shards/0/Fő.csv",
            "shards/0/a b%20c#d.csv",
            "global/é/ü.csv",
        ];
        for name in names {
            let file = dir.path().join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, name).unwrap();
        }
        let local = crate::storage::Source::open(
            &crate::storage::SourceUrl::File(dir.path().to_path_buf()),
            &crate::config::StoreConfig::default(),
            false,
        )
        .unwrap();
        let manifest = read_manifest(&local).await.unwrap();
        let mut paths: Vec<_> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        paths.sort_unstable();
        let mut expected = names.to_vec();
        expected.sort_unstable();
        assert_eq!(paths, expected);
        let disk_dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open("0".into(), disk_dir.path(), 0.99, None).unwrap());
        for file in &manifest.files {
            let fetched = fetch_blob(&local, &disk, file, &AtomicU64::new(0), &|_| {})
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.path));
            let blob = std::fs::read(disk.blob_path(&fetched.sha256)).unwrap();
            assert_eq!(blob, file.path.as_bytes());
        }

        let empty = memory_source("fetch-empty").await;
        assert!(matches!(
            read_manifest(&empty).await,
            Err(StorageError::SourceNotFound { .. })
        ));
    }
}
