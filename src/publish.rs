//! Publishing: uploading a local folder as a database. Every file is hashed while
//! it is uploaded; the manifest `dram.json` is written last and only if none is
//! there, so a half-published database has no manifest and a published one never
//! changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::storage::manifest::MANIFEST_NAME;
use crate::storage::{Manifest, ManifestFile, Source, StorageError};

/// Files up to this size are uploaded in one PUT; larger ones in parts.
const SINGLE_PUT_BYTES: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 8 * 1024 * 1024;

/// What `publish` found in the folder, before uploading.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub files: Vec<(PathBuf, String, u64)>,
    pub total_bytes: u64,
    /// Shard tables co-located by a column (table → column), written to
    /// the manifest (`Manifest::shard_keys`).
    pub shard_keys: BTreeMap<String, String>,
}

impl PublishPlan {
    /// Declares that the rows of each shard table named were put in shards
    /// by its column, all tables by the same mapping (see
    /// `Manifest::shard_keys`). Every table must be a table of the shards.
    pub fn with_shard_keys(
        mut self,
        keys: impl IntoIterator<Item = (String, String)>,
    ) -> Result<PublishPlan, StorageError> {
        let parts = layout(&self.files)
            .parts()
            .map_err(StorageError::Manifest)?;
        // A shard table is a folder `<table>/` or a file `<table>.<ext>`.
        let shard_tables: std::collections::BTreeSet<&str> = parts
            .iter()
            .filter(|(part, _)| part.shard_id().is_some())
            .flat_map(|(_, files)| files.iter())
            .map(|f| match f.local.split_once('/') {
                Some((folder, _)) => folder,
                None => f
                    .local
                    .rsplit_once('.')
                    .map_or(f.local.as_str(), |(stem, _)| stem),
            })
            .collect();
        for (table, column) in keys {
            crate::storage::manifest::check_shard_key(&table, &column)
                .map_err(StorageError::Manifest)?;
            if !shard_tables.contains(table.as_str()) {
                return Err(StorageError::Manifest(format!(
                    "shard key {table}={column}: no shard has a table {table} (shard tables: {})",
                    shard_tables.iter().copied().collect::<Vec<_>>().join(", ")
                )));
            }
            self.shard_keys.insert(table, column);
        }
        Ok(self)
    }
}

/// Lists `dir` and checks that its layout makes a valid database.
pub fn plan(dir: &Path) -> Result<PublishPlan, StorageError> {
    if !dir.is_dir() {
        return Err(StorageError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| StorageError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(dir)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| {
                StorageError::Manifest(format!("{} is not a UTF-8 path", entry.path().display()))
            })?
            .to_string();
        if relative == MANIFEST_NAME {
            continue; // written by publish itself
        }
        let size = entry
            .metadata()
            .map_err(|e| StorageError::Io {
                path: entry.path().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?
            .len();
        files.push((entry.path().to_path_buf(), relative, size));
    }
    if files.is_empty() {
        return Err(StorageError::Manifest(format!(
            "{} has no files to publish",
            dir.display()
        )));
    }
    let layout = layout(&files);
    layout.check().map_err(StorageError::Manifest)?;
    let total_bytes = files.iter().map(|(_, _, s)| s).sum();
    Ok(PublishPlan {
        files,
        total_bytes,
        shard_keys: BTreeMap::new(),
    })
}

/// The manifest `files` would have, without hashes: their layout.
fn layout(files: &[(PathBuf, String, u64)]) -> Manifest {
    Manifest {
        format: 1,
        files: files
            .iter()
            .map(|(_, path, size)| ManifestFile {
                path: path.clone(),
                size: *size,
                sha256: None,
            })
            .collect(),
        ..Manifest::default()
    }
}

/// Uploads the planned files to `source` (`concurrency` at a time), then writes
/// the manifest. `on_bytes` is called as bytes are uploaded.
pub async fn publish(
    plan: &PublishPlan,
    source: &Source,
    concurrency: usize,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<Manifest, StorageError> {
    let manifest_path = source.object_path(MANIFEST_NAME);
    match source.store.head(&manifest_path).await {
        Ok(_) => {
            return Err(StorageError::InvalidSource {
                url: source.url.clone(),
                message: "a database is already published there (databases never change: publish to a new location)".into(),
            });
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(StorageError::store(&manifest_path)(e)),
    }
    let mut files: Vec<ManifestFile> = futures::stream::iter(plan.files.iter())
        .map(|(local, relative, size)| upload_file(source, local, relative, *size, on_bytes))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        format: 1,
        files,
        shard_keys: plan.shard_keys.clone(),
    };
    let bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| StorageError::Manifest(e.to_string()))?;
    source
        .store
        .put_opts(
            &manifest_path,
            PutPayload::from(bytes),
            PutOptions::from(PutMode::Create),
        )
        .await
        .map_err(StorageError::store(&manifest_path))?;
    Ok(manifest)
}

async fn upload_file(
    source: &Source,
    local: &Path,
    relative: &str,
    size: u64,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<ManifestFile, StorageError> {
    let location = source.object_path(relative);
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(StorageError::io(local))?;
    let mut hasher = Sha256::new();
    let mut uploaded = 0u64;
    if size <= SINGLE_PUT_BYTES {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes)
            .await
            .map_err(StorageError::io(local))?;
        hasher.update(&bytes);
        uploaded = bytes.len() as u64;
        source
            .store
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(StorageError::store(&location))?;
        on_bytes(uploaded);
    } else {
        let upload = source
            .store
            .put_multipart(&location)
            .await
            .map_err(StorageError::store(&location))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(StorageError::io(local))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer
                .wait_for_capacity(4)
                .await
                .map_err(StorageError::store(&location))?;
            writer.write(&buf[..n]);
            uploaded += n as u64;
            on_bytes(n as u64);
        }
        writer
            .finish()
            .await
            .map_err(StorageError::store(&location))?;
    }
    if uploaded != size {
        return Err(StorageError::Mismatch {
            path: relative.to_string(),
            message: format!("changed while publishing: {uploaded} bytes read, {size} listed"),
        });
    }
    Ok(ManifestFile {
        path: relative.to_string(),
        size,
        sha256: Some(hex::encode(hasher.finalize())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard key names a table of the shards; anything else is refused
    /// before a byte is uploaded.
    #[test]
    fn shard_keys_name_shard_tables() {
        let dir = tempfile::tempdir().unwrap();
        for path in [
            "shards/0/orders/a.parquet",
            "shards/1/items.csv",
            "global/nation.csv",
        ] {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, b"x").unwrap();
        }
        let keyed = |table: &str| {
            plan(dir.path())
                .unwrap()
                .with_shard_keys([(table.to_string(), "k".to_string())])
        };
        assert_eq!(keyed("orders").unwrap().shard_keys["orders"], "k");
        assert!(keyed("items").is_ok());
        for wrong in ["nation", "missing"] {
            let e = keyed(wrong).unwrap_err().to_string();
            assert!(
                e.contains("no shard has a table") && e.contains("orders"),
                "{e}"
            );
        }
    }
}
