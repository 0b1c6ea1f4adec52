//! What this node should hold, and dropping a copy the primary asks it to drop.
//!
//! A node outside a cluster holds every part of its databases. In a cluster the
//! membership hands the node the cluster's state every round; the node derives
//! the shards placement gives it and loads those it lacks — additive work needs
//! no leader — and takes back a trashed copy placement wants again. Global data
//! goes with the first shard of a database and is trashed with its last one.
//! Until the cluster view has settled (a fresh node has not met its peers yet),
//! loads wait rather than fetch shards that belong elsewhere.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::info;

use super::{Inner, Local, NodeError, load};
use crate::catalog::{
    DATABASES, DatabaseRecord, DbState, Mode, PARTS, PartRecord, PartState, Replicas, key,
};
use crate::placement::plan::{ClusterState, Layout};
use crate::storage::Part;

/// How this node decides which shards to hold.
#[derive(Debug, Clone)]
pub enum Placement {
    /// Not in a cluster: every shard.
    Everything,
    /// In a cluster whose view has not settled: nothing new yet.
    Waiting,
    /// The shards placement gives this node in this cluster state.
    Cluster(Arc<ClusterState>),
}

impl Local {
    /// Takes a new cluster state: loads the shards placement now gives this node
    /// and restores its trashed copies that placement wants back. Returns the
    /// databases whose loads started.
    pub fn place(&self, state: Arc<ClusterState>) -> Result<Vec<String>, NodeError> {
        let inner = &self.inner;
        inner
            .placement
            .send_replace(Placement::Cluster(state.clone()));
        let records: Vec<(String, DatabaseRecord)> = inner.catalog.scan(DATABASES, "")?;
        let mut started = Vec::new();
        for (name, record) in records {
            let running = inner.loads.is_running(&name);
            // A loading database whose load runs decides for itself once it has
            // read the manifest.
            let settled =
                record.state == DbState::Ready || (record.state == DbState::Loading && !running);
            if !settled {
                continue;
            }
            let Ok(files) = inner.files(&name) else {
                continue;
            };
            let shard_ids: Vec<String> = files
                .parts
                .keys()
                .filter_map(|p| p.shard_id().map(str::to_string))
                .collect();
            let wanted = inner.shards_for(&state, &name, record.replicas, &shard_ids);
            if inner.hold(&record, &wanted)? && !running && inner.loads.due(&name) {
                load::spawn(inner, &name);
                started.push(name);
            }
        }
        Ok(started)
    }

    /// The databases this node knows with their shard sizes, for placement.
    pub fn layouts(&self) -> Result<Vec<Layout>, NodeError> {
        let inner = &self.inner;
        let registry = inner.registry()?;
        let mut layouts = Vec::new();
        for (name, record) in &registry.definitions {
            let Some(definition) = &record.definition else {
                continue;
            };
            let Ok(files) = inner.files(name) else {
                continue;
            };
            let size = |part: &Part| -> u64 {
                files
                    .parts
                    .get(part)
                    .map(|f| f.values().map(|f| f.size).sum())
                    .unwrap_or(0)
            };
            layouts.push(Layout {
                name: name.clone(),
                replicas: definition.replicas,
                shards: files
                    .parts
                    .keys()
                    .filter_map(|p| Some((p.shard_id()?.to_string(), size(p))))
                    .collect(),
                global_bytes: size(&Part::Global),
            });
        }
        Ok(layouts)
    }

    /// Trashes this node's copy of a shard (and the global data with the last
    /// shard): it stops being served at once and is purged after the trash
    /// lifetime unless placement wants it back first. Returns false when there
    /// was no copy to trash.
    pub fn trash_shard(&self, database: &str, shard: &str) -> Result<bool, NodeError> {
        let now = self.now_ms();
        let trashed = self.inner.catalog.write(|w| {
            let shard_key = key(&[database, &Part::Shard(shard.to_string()).key()]);
            let Some(mut record) = w.get::<PartRecord>(PARTS, &shard_key)? else {
                return Ok(false);
            };
            if record.trashed_ms.is_some() {
                return Ok(false);
            }
            record.trashed_ms = Some(now);
            w.put(PARTS, &shard_key, &record)?;
            let parts: Vec<(String, PartRecord)> = w.scan(PARTS, &key(&[database, ""]))?;
            let global_key = key(&[database, &Part::Global.key()]);
            let shards_left = parts
                .iter()
                .any(|(k, p)| *k != global_key && p.trashed_ms.is_none());
            if !shards_left
                && let Some(mut global) = w.get::<PartRecord>(PARTS, &global_key)?
                && global.trashed_ms.is_none()
            {
                global.trashed_ms = Some(now);
                w.put(PARTS, &global_key, &global)?;
            }
            Ok::<_, NodeError>(true)
        })?;
        if trashed {
            info!(
                database,
                shard, "copy moved to trash at the primary's request"
            );
        }
        Ok(trashed)
    }
}

impl Inner {
    /// The shards among `shard_ids` that placement gives this node.
    fn shards_for(
        &self,
        state: &ClusterState,
        name: &str,
        replicas: Replicas,
        shard_ids: &[String],
    ) -> BTreeSet<String> {
        let shards: Vec<&str> = shard_ids.iter().map(String::as_str).collect();
        state
            .place(name, &shards, replicas)
            .into_iter()
            .zip(shard_ids)
            .filter(|(chosen, _)| chosen.contains(&self.node_id))
            .map(|(_, shard)| shard.clone())
            .collect()
    }

    /// The shards of `name` this node should hold, waiting while the cluster view
    /// has not settled.
    pub(super) async fn wanted_shards(
        &self,
        name: &str,
        replicas: Replicas,
        shard_ids: &[String],
    ) -> Result<BTreeSet<String>, NodeError> {
        let mut placement_rx = self.placement.subscribe();
        let placement = placement_rx
            .wait_for(|p| !matches!(p, Placement::Waiting))
            .await
            .map_err(|_| NodeError::ShuttingDown)?
            .clone();
        Ok(match placement {
            Placement::Cluster(state) => self.shards_for(&state, name, replicas, shard_ids),
            _ => shard_ids.iter().cloned().collect(),
        })
    }

    /// Makes sure this node holds (or is downloading) `wanted` shards of a
    /// database and its global data if it holds any shard. Returns whether a
    /// part is left to download.
    fn hold(&self, record: &DatabaseRecord, wanted: &BTreeSet<String>) -> Result<bool, NodeError> {
        if wanted.is_empty() {
            return Ok(false);
        }
        let name = &record.name;
        let files = self.files(name)?;
        let mut parts: Vec<Part> = wanted.iter().map(|s| Part::Shard(s.clone())).collect();
        if files.parts.contains_key(&Part::Global) {
            parts.push(Part::Global);
        }
        // Most rounds nothing changes: look before taking the write transaction
        // (a durable commit) and asking the disks for room.
        let held: std::collections::HashMap<String, PartRecord> = self
            .catalog
            .scan::<PartRecord>(PARTS, &key(&[name, ""]))?
            .into_iter()
            .collect();
        let records: Vec<Option<&PartRecord>> = parts
            .iter()
            .map(|part| held.get(&key(&[name, &part.key()])))
            .collect();
        if records
            .iter()
            .all(|p| p.is_some_and(|p| p.trashed_ms.is_none()))
        {
            return Ok(records
                .iter()
                .flatten()
                .any(|p| matches!(p.state, PartState::Downloading | PartState::Failed)));
        }
        let rooms: Vec<(String, u64)> = self
            .disks
            .iter()
            .map(|d| (d.id.clone(), d.room()))
            .collect();
        self.catalog.write(|w| {
            let mut to_download = false;
            for part in &parts {
                let part_key = key(&[name, &part.key()]);
                let record_now = w.get::<PartRecord>(PARTS, &part_key)?;
                let part_record = match record_now {
                    Some(mut held) => {
                        if held.trashed_ms.take().is_some() {
                            info!(database = %name, part = %part.key(), "trashed copy restored: placement wants it here");
                            w.put(PARTS, &part_key, &held)?;
                        }
                        held
                    }
                    None => {
                        let placed = files.parts.get(part);
                        let bytes: u64 = placed.map(|f| f.values().map(|f| f.size).sum()).unwrap_or(0);
                        let disks =
                            super::load::assign_disks(&rooms, &[(part.clone(), bytes)]);
                        let lazy = record.mode == Mode::Lazy && *part != Part::Global;
                        let new = PartRecord {
                            disk: disks.get(part).cloned().unwrap_or_else(|| "0".into()),
                            state: if lazy {
                                PartState::Lazy
                            } else {
                                PartState::Downloading
                            },
                            files: placed.map(|f| f.len() as u64).unwrap_or(0),
                            bytes,
                            trashed_ms: None,
                            written_ms: None,
                            error: None,
                        };
                        info!(database = %name, part = %part.key(), "placement gives this node a copy");
                        w.put(PARTS, &part_key, &new)?;
                        new
                    }
                };
                to_download |= part_record.state == PartState::Downloading;
            }
            Ok::<_, NodeError>(to_download)
        })
    }
}
