//! Adding, showing, listing, trashing and restoring databases.

use serde::{Deserialize, Serialize};

use super::{HeldState, Inner, Local, NodeError, load, registry};
use crate::catalog::{
    ALIASES, AliasRecord, DATABASES, DEFINITIONS, DatabaseRecord, DbState, Mode, PARTS, PartRecord,
    PartState, ReadStats, Replicas, key,
};
use crate::names::check_name;
use crate::registry::{Definition, DefinitionRecord};
use crate::storage::{Part, SourceUrl};

/// How long `add_database` waits for the store to say whether the source
/// exists before it defines the database anyway.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A request to load a database on this node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDatabase {
    pub name: String,
    pub source: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub replicas: Replicas,
    /// Never collected as garbage, even when no alias points to it.
    #[serde(default)]
    pub keep: bool,
}

/// What the API shows of a database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseInfo {
    #[serde(flatten)]
    pub record: DatabaseRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_at_ms: Option<u64>,
    pub shard_count: u64,
    pub files: u64,
    pub bytes: u64,
    pub bytes_done: u64,
    /// For a `failed` database: what to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// Present when the database is shown alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<PartInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<PartInfo>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartInfo {
    /// Shard id, or `None` for global data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `downloading`, `ready`, `lazy`, `failed`, or `trashed` (the copy or
    /// its whole database is in the trash).
    pub state: HeldState,
    /// Why the copy is `failed` (it is tried again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When this copy was trashed (the primary dropped an extra copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trashed_ms: Option<u64>,
    pub disk: String,
    pub files: u64,
    pub bytes: u64,
    pub bytes_done: u64,
    /// Files read and queries that mapped this part (shown with the database).
    #[serde(default)]
    pub reads: u64,
    #[serde(default)]
    pub queries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read_ms: Option<u64>,
}

impl Local {
    /// Registers a database and starts loading it in the background.
    pub async fn add_database(&self, request: AddDatabase) -> Result<DatabaseInfo, NodeError> {
        check_name("database", &request.name).map_err(NodeError::InvalidInput)?;
        if let Replicas::Count(0) = request.replicas {
            return Err(NodeError::InvalidInput(
                "replicas must be at least 1".into(),
            ));
        }
        let inner = &self.inner;
        // Stored absolute, as README says: `file://./dram-store/x` means the
        // same folder to every reader of the definition.
        let source = SourceUrl::resolve(&inner.config.store.url, &request.source)?.absolute()?;
        source.check_allowed(&inner.config.store)?;
        // Nothing is defined for a source that is not there (it would be
        // tried again forever); a missing folder is found by opening it.
        let opened = crate::storage::Source::open(&source, &inner.config.store, false)?
            .layered(inner.store_layer.as_ref());
        crate::storage::fetch::probe(&opened, PROBE_WAIT).await?;
        let record = Definition {
            source: source.to_url(),
            mode: request.mode,
            replicas: request.replicas,
            keep: request.keep,
        }
        .loading(&request.name, self.now_ms());
        inner.catalog.write(|w| {
            if let Some(existing) = w.get::<DatabaseRecord>(DATABASES, &request.name)? {
                let hint = if existing.state == DbState::Trashed {
                    " (it is in the trash: restore it, or wait for the purge)"
                } else {
                    ""
                };
                return Err(NodeError::Conflict(format!(
                    "database {:?} already exists{hint}",
                    request.name
                )));
            }
            if let Some(defined) = w.get::<DefinitionRecord>(DEFINITIONS, &request.name)?
                && defined.definition.is_some()
            {
                return Err(NodeError::Conflict(format!(
                    "database {:?} already exists (defined on node {})",
                    request.name, defined.version.node
                )));
            }
            if let Some(alias) = w.get::<AliasRecord>(ALIASES, &request.name)?
                && alias.target.is_some()
            {
                return Err(NodeError::Conflict(format!(
                    "{:?} is an alias; databases and aliases share one namespace",
                    request.name
                )));
            }
            let definition = Definition::of(&record);
            w.put(
                DEFINITIONS,
                &record.name,
                &inner.stamp_definition(&record.name, Some(definition)),
            )?;
            w.put(DATABASES, &record.name, &record)?;
            Ok(())
        })?;
        load::spawn(inner, &record.name);
        self.database(&record.name)
    }

    /// One database, with its parts and progress.
    pub fn database(&self, name: &str) -> Result<DatabaseInfo, NodeError> {
        let record: DatabaseRecord = self
            .inner
            .catalog
            .get(DATABASES, name)?
            .ok_or_else(|| NodeError::not_found("database", name))?;
        self.inner.info(record, true)
    }

    /// Every database on this node, without per-part detail.
    pub fn databases(&self) -> Result<Vec<DatabaseInfo>, NodeError> {
        let records: Vec<(String, DatabaseRecord)> = self.inner.catalog.scan(DATABASES, "")?;
        records
            .into_iter()
            .map(|(_, record)| self.inner.info(record, false))
            .collect()
    }

    /// Every database on this node, with per-part detail.
    pub(crate) fn databases_detailed(&self) -> Result<Vec<DatabaseInfo>, NodeError> {
        let records: Vec<(String, DatabaseRecord)> = self.inner.catalog.scan(DATABASES, "")?;
        records
            .into_iter()
            .map(|(_, record)| self.inner.info(record, true))
            .collect()
    }

    /// Stops serving a database at once and moves it to the trash; a database that
    /// failed to load is purged at once (nothing of it was ever served).
    pub async fn remove_database(&self, name: &str) -> Result<DatabaseInfo, NodeError> {
        let inner = &self.inner;
        let record: DatabaseRecord = inner
            .catalog
            .get(DATABASES, name)?
            .ok_or_else(|| NodeError::not_found("database", name))?;
        match record.state {
            DbState::Trashed => {
                return Err(NodeError::Conflict(format!(
                    "database {name:?} is already in the trash"
                )));
            }
            DbState::Failed => {
                inner
                    .catalog
                    .write(|w| w.put(DEFINITIONS, name, &inner.stamp_definition(name, None)))?;
                let mut info = inner.info(record, false)?;
                inner.purge(name).await?;
                info.record.state = DbState::Trashed;
                info.record.trashed_ms = Some(self.now_ms());
                info.purge_at_ms = info.record.trashed_ms;
                return Ok(info);
            }
            DbState::Loading | DbState::Ready => {}
        }
        inner.loads.cancel(name);
        let trashed = inner.catalog.write(|w| {
            let mut record: DatabaseRecord = w
                .get(DATABASES, name)?
                .ok_or_else(|| NodeError::not_found("database", name))?;
            record.state = DbState::Trashed;
            record.trashed_ms = Some(self.now_ms());
            w.put(DATABASES, name, &record)?;
            w.put(DEFINITIONS, name, &inner.stamp_definition(name, None))?;
            Ok::<_, NodeError>(record)
        })?;
        inner.files.forget(name);
        tracing::info!(database = %name, "database moved to trash");
        inner.info(trashed, false)
    }

    /// Takes a database out of the trash: served again if it was whole, its load
    /// resumed otherwise.
    pub async fn restore_database(&self, name: &str) -> Result<DatabaseInfo, NodeError> {
        let inner = &self.inner;
        let restored = inner.catalog.write(|w| {
            let record: DatabaseRecord = w
                .get(DATABASES, name)?
                .ok_or_else(|| NodeError::not_found("database", name))?;
            if record.state != DbState::Trashed {
                return Err(NodeError::Conflict(format!(
                    "database {name:?} is not in the trash"
                )));
            }
            let definition = Definition::of(&record);
            w.put(
                DEFINITIONS,
                name,
                &inner.stamp_definition(name, Some(definition)),
            )?;
            registry::restore_in(w, record)
        })?;
        if restored.state == DbState::Loading {
            load::spawn(inner, name);
        }
        tracing::info!(database = %name, "database restored from trash");
        inner.info(restored, true)
    }
}

impl Inner {
    pub(super) fn info(
        &self,
        record: DatabaseRecord,
        detail: bool,
    ) -> Result<DatabaseInfo, NodeError> {
        let parts: Vec<(String, PartRecord)> =
            self.catalog.scan(PARTS, &key(&[&record.name, ""]))?;
        let progress = self.loads.progress(&record.name);
        let mut info = DatabaseInfo {
            purge_at_ms: record
                .trashed_ms
                .map(|t| t + self.config.trash.lifetime_secs * 1000),
            shard_count: 0,
            files: 0,
            bytes: 0,
            bytes_done: 0,
            remedy: (record.state == DbState::Failed).then(|| {
                format!(
                    "it is tried again, with growing pauses, until it loads or is removed: \
                     `dram db rm {0}` (DELETE /v1/databases/{0}) removes it at once",
                    record.name
                )
            }),
            global: None,
            shards: detail.then(Vec::new),
            record,
        };
        for (key, part) in parts {
            let Some(part_key) = key.split('\0').nth(1) else {
                continue;
            };
            let Some(which) = Part::from_key(part_key) else {
                continue;
            };
            let bytes_done = match part.state {
                PartState::Ready => part.bytes,
                PartState::Downloading => progress.get(&which).copied().unwrap_or(0),
                PartState::Lazy | PartState::Failed => 0,
            };
            info.files += part.files;
            info.bytes += part.bytes;
            info.bytes_done += bytes_done;
            let reads = if detail {
                self.read_stats(&key)?
            } else {
                ReadStats::default()
            };
            let trashed = info.record.state == DbState::Trashed || part.trashed_ms.is_some();
            let part_info = PartInfo {
                id: which.shard_id().map(str::to_string),
                state: HeldState::of(part.state, trashed),
                error: part.error.clone(),
                trashed_ms: part.trashed_ms,
                disk: part.disk,
                files: part.files,
                bytes: part.bytes,
                bytes_done,
                reads: reads.reads,
                queries: reads.queries,
                last_read_ms: reads.last_read_ms,
            };
            match which {
                Part::Global => {
                    if detail {
                        info.global = Some(part_info);
                    }
                }
                Part::Shard(_) => {
                    info.shard_count += 1;
                    if let Some(shards) = info.shards.as_mut() {
                        shards.push(part_info);
                    }
                }
            }
        }
        Ok(info)
    }
}

impl Local {
    /// The version of a database that is ready here (its manifest is known).
    pub(crate) fn ready_version(&self, database: &str) -> Result<String, NodeError> {
        let inner = &self.inner;
        inner
            .ready_versions
            .get_or_read(&inner.catalog, database, || {
                self.ready_version_uncached(database)
            })
    }

    fn ready_version_uncached(&self, database: &str) -> Result<String, NodeError> {
        let record: DatabaseRecord = self
            .catalog()
            .get(DATABASES, database)?
            .ok_or_else(|| NodeError::not_found("database", database))?;
        if record.state != DbState::Ready {
            return Err(NodeError::NotReady(format!(
                "database {database:?} is {}, not ready",
                super::json_name(&record.state)
            )));
        }
        Ok(record.version.unwrap_or_default())
    }

    /// The shards of `database` this node serves its own copy of (one scan of
    /// its part records).
    pub(crate) fn serving_shards(
        &self,
        database: &str,
    ) -> Result<std::collections::HashSet<String>, NodeError> {
        let inner = &self.inner;
        inner
            .serving_shards
            .get_or_read(&inner.catalog, database, || {
                self.serving_shards_uncached(database)
            })
    }

    fn serving_shards_uncached(
        &self,
        database: &str,
    ) -> Result<std::collections::HashSet<String>, NodeError> {
        let parts: Vec<(String, PartRecord)> = self.catalog().scan(PARTS, &key(&[database, ""]))?;
        Ok(parts
            .into_iter()
            .filter(|(_, record)| record.is_serving())
            .filter_map(|(k, _)| {
                let part = Part::from_key(k.split('\0').nth(1)?)?;
                part.shard_id().map(str::to_string)
            })
            .collect())
    }
}
