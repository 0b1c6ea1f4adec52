//! The backup store (`backup.url`): writing a backup crash-safely, listing
//! backups with their validity, reading one, and pruning old ones.
//!
//! Writing puts the whole object under its own new name (one `put`: an object
//! appears whole or not at all), reads it back and checks that its sha256 and
//! content are what was written, and only then deletes valid backups beyond
//! `backup.keep`, oldest first. A damaged or foreign object is never taken for
//! a backup, and never deleted.

use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::format::{Backup, BackupName, sha256_hex, to_prune};
use crate::config::Config;
use crate::local::NodeError;
use crate::storage::{Source, SourceUrl};

/// Objects larger than this are not read as backups.
const MAX_BACKUP_BYTES: u64 = 512 * 1024 * 1024;
/// Backups read at once while listing.
const READS_AT_ONCE: usize = 8;

/// One object named like a backup, as `GET /v1/admin/backups` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub name: String,
    pub written_ms: u64,
    /// The member that wrote it.
    pub node: String,
    pub bytes: u64,
    /// Parses, verifies, and belongs to this cluster: restorable.
    pub valid: bool,
    /// Why it is not valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A backup just written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub backup: String,
    pub bytes: u64,
    pub written_ms: u64,
}

/// The configured backup store.
pub struct BackupStore {
    source: Source,
    cluster_id: String,
}

impl BackupStore {
    /// Opens `backup.url`; 409 when none is configured.
    pub fn open(config: &Config) -> Result<BackupStore, NodeError> {
        let url = config.backup.url.as_deref().ok_or_else(|| {
            NodeError::Conflict(
                "no backup store is configured: set backup.url (e.g. \"file:///var/backups/dram\")"
                    .into(),
            )
        })?;
        let parsed = SourceUrl::parse(url)
            .map_err(|e| NodeError::InvalidInput(format!("backup.url: {e}")))?;
        let source =
            Source::open(&parsed, &config.store, true).map_err(|e| NodeError::BackupStore {
                url: url.to_string(),
                doing: "opening it".into(),
                reason: e.to_string(),
            })?;
        Ok(BackupStore {
            source,
            cluster_id: config.cluster.id.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.source.url
    }

    fn path(&self, name: &str) -> StorePath {
        self.source.object_path(name)
    }

    fn failed(&self, doing: &str, why: impl std::fmt::Display) -> NodeError {
        NodeError::BackupStore {
            url: self.source.url.clone(),
            doing: doing.to_string(),
            reason: why.to_string(),
        }
    }

    /// Writes `backup` under a new name (`nonce` drawn by the caller) and
    /// verifies it; on success prunes beyond `keep` (a failed prune is logged).
    pub async fn write(
        &self,
        backup: &Backup,
        nonce: u32,
        keep: usize,
    ) -> Result<Written, NodeError> {
        let name = BackupName::new(backup.written_ms, &backup.node, nonce);
        let text = name.to_string();
        let bytes = backup.encode().map_err(NodeError::InvalidInput)?;
        let path = self.path(&text);
        self.source
            .store
            .put(&path, bytes.clone().into())
            .await
            .map_err(|e| self.failed(&format!("writing {text}"), e))?;
        let verified = match self.read_bytes(&text).await {
            Ok(read) if sha256_hex(&read) != sha256_hex(&bytes) => {
                Err("it reads back differently".to_string())
            }
            Ok(read) => Backup::decode(&read, &name, &self.cluster_id).map(|_| ()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = verified {
            if let Err(e) = self.source.store.delete(&path).await {
                warn!(backup = %text, error = %e, "cannot delete a backup that failed verification");
            }
            return Err(self.failed(&format!("verifying {text} after writing it"), why));
        }
        if let Err(e) = self.prune(keep).await {
            warn!(error = %e, "pruning old backups failed");
        }
        Ok(Written {
            backup: text,
            bytes: bytes.len() as u64,
            written_ms: backup.written_ms,
        })
    }

    async fn read_bytes(&self, name: &str) -> Result<bytes::Bytes, NodeError> {
        let fail = |e: object_store::Error| match e {
            object_store::Error::NotFound { .. } => NodeError::not_found("backup", name),
            e => self.failed(&format!("reading {name}"), e),
        };
        let got = self
            .source
            .store
            .get(&self.path(name))
            .await
            .map_err(fail)?;
        if got.meta.size > MAX_BACKUP_BYTES {
            return Err(NodeError::Conflict(format!(
                "{name} is {} bytes: larger than any backup",
                got.meta.size
            )));
        }
        got.bytes().await.map_err(fail)
    }

    /// Reads and verifies backup `name`: 400 for a name that is not a backup's,
    /// 404 when there is none, 409 when it is not valid.
    pub async fn read(&self, name: &str) -> Result<Backup, NodeError> {
        let parsed = BackupName::parse(name).ok_or_else(|| {
            NodeError::InvalidInput(format!(
                "{name:?} is not a backup name (dram-backup-<ms>-<node>-<hex>.json)"
            ))
        })?;
        let bytes = self.read_bytes(name).await?;
        Backup::decode(&bytes, &parsed, &self.cluster_id)
            .map_err(|why| NodeError::Conflict(format!("backup {name} is not valid: {why}")))
    }

    /// Objects named like backups directly under the prefix, newest first.
    async fn names(&self) -> Result<Vec<(BackupName, u64)>, NodeError> {
        let prefix = (!self.source.prefix.as_ref().is_empty()).then_some(&self.source.prefix);
        let listed = self
            .source
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| self.failed("listing", e))?;
        let mut names: Vec<(BackupName, u64)> = listed
            .objects
            .iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                Some((BackupName::parse(name)?, meta.size))
            })
            .collect();
        names.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(names)
    }

    /// Every object named like a backup, newest first, each read and verified.
    pub async fn list(&self) -> Result<Vec<Listed>, NodeError> {
        let names = self.names().await?;
        let checks = names.into_iter().map(|(name, bytes)| async move {
            let text = name.to_string();
            let error = match self.read(&text).await {
                Ok(_) => None,
                Err(e @ NodeError::BackupStore { .. }) => return Err(e),
                Err(NodeError::NotFound { .. }) => return Ok(None), // deleted meanwhile
                Err(e) => Some(e.to_string()),
            };
            Ok(Some(Listed {
                name: text,
                written_ms: name.written_ms,
                node: name.node,
                bytes,
                valid: error.is_none(),
                error,
            }))
        });
        let listed: Vec<Result<Option<Listed>, NodeError>> = futures::stream::iter(checks)
            .buffered(READS_AT_ONCE)
            .collect()
            .await;
        listed.into_iter().filter_map(Result::transpose).collect()
    }

    /// The newest valid backup, if any; newer objects that are not valid are
    /// skipped with a warning.
    pub async fn newest_valid(&self) -> Result<Option<(String, Backup)>, NodeError> {
        for (name, _) in self.names().await? {
            let text = name.to_string();
            match self.read(&text).await {
                Ok(backup) => return Ok(Some((text, backup))),
                Err(e @ NodeError::BackupStore { .. }) => return Err(e),
                Err(NodeError::NotFound { .. }) => {}
                Err(e) => warn!(backup = %text, error = %e, "skipping a backup that is not valid"),
            }
        }
        Ok(None)
    }

    /// Deletes the valid backups beyond the `keep` newest valid ones.
    async fn prune(&self, keep: usize) -> Result<(), NodeError> {
        let listed = self.list().await?;
        let flags: Vec<(BackupName, bool)> = listed
            .iter()
            .filter_map(|l| Some((BackupName::parse(&l.name)?, l.valid)))
            .collect();
        for name in to_prune(&flags, keep) {
            let text = name.to_string();
            match self.source.store.delete(&self.path(&text)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(backup = %text, "old backup deleted");
                }
                Err(e) => return Err(self.failed(&format!("deleting {text}"), e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Registry;

    fn backup(ms: u64, cluster: &str) -> Backup {
        Backup::new(
            cluster,
            "n1",
            ms,
            Registry::default(),
            serde_json::json!({}),
        )
    }

    /// One suite, run against the in-memory store and a folder.
    async fn suite(url: String) {
        let mut config = Config::default();
        config.backup.url = Some(url.clone());
        let store = BackupStore::open(&config).unwrap();
        assert!(store.list().await.unwrap().is_empty(), "{url}");
        assert!(store.newest_valid().await.unwrap().is_none());

        let mut written = Vec::new();
        for ms in [10, 20, 30] {
            written.push(store.write(&backup(ms, "dram"), 1, 2).await.unwrap().backup);
        }
        // Damaged, foreign, and unrelated objects beside them.
        let damaged = BackupName::new(40, "n1", 2).to_string();
        let store_ref = &store;
        let put = |name: String, bytes: Vec<u8>| async move {
            let path = store_ref.path(&name);
            store_ref
                .source
                .store
                .put(&path, bytes.into())
                .await
                .unwrap();
        };
        put(damaged.clone(), b"{\"format\":".to_vec()).await;
        let foreign = BackupName::new(5, "n1", 3).to_string();
        put(foreign.clone(), backup(5, "other").encode().unwrap()).await;
        put("notes.txt".into(), b"hello".to_vec()).await;

        let listed = store.list().await.unwrap();
        let names: Vec<(&str, bool)> = listed.iter().map(|l| (l.name.as_str(), l.valid)).collect();
        assert_eq!(
            names,
            [
                (damaged.as_str(), false),
                (written[2].as_str(), true),
                (written[1].as_str(), true),
                (foreign.as_str(), false)
            ],
            "{url}: keep 2, the oldest valid pruned, the others kept"
        );
        assert!(listed[3].error.as_deref().unwrap().contains("cluster"));
        let (newest, _) = store.newest_valid().await.unwrap().unwrap();
        assert_eq!(newest, written[2], "the damaged newer object is skipped");

        // A write prunes only valid backups.
        store.write(&backup(50, "dram"), 4, 1).await.unwrap();
        let listed = store.list().await.unwrap();
        assert_eq!(listed.iter().filter(|l| l.valid).count(), 1, "{url}");
        assert_eq!(listed.len(), 3, "{url}: the damaged and foreign ones stay");

        assert!(matches!(
            store.read(&written[0]).await,
            Err(NodeError::NotFound { .. })
        ));
        assert!(matches!(
            store.read(&damaged).await,
            Err(NodeError::Conflict(_))
        ));
        assert!(matches!(
            store.read("x.json").await,
            Err(NodeError::InvalidInput(_))
        ));
    }

    #[tokio::test]
    async fn memory_store() {
        let name = format!("backup-test-{:08x}", rand::random::<u32>());
        suite(format!("memory://{name}/backups")).await;
    }

    #[tokio::test]
    async fn folder_store() {
        let dir = tempfile::tempdir().unwrap();
        suite(format!("file://{}", dir.path().join("backups").display())).await;
    }
}
