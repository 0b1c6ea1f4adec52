//! What this node holds, as other nodes see it: per database its state and
//! version, per shard its state (`downloading` with a percentage, `ready`,
//! `lazy`, `failed`, `trashed`), and a small digest of it all for gossip.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Node, NodeError};
use crate::catalog::{DbState, PartState};

pub use crate::placement::HeldState;

impl HeldState {
    /// A copy's state: its catalog state, unless it (or its whole database)
    /// is in the trash.
    pub fn of(state: PartState, trashed: bool) -> HeldState {
        match state {
            _ if trashed => HeldState::Trashed,
            PartState::Downloading => HeldState::Downloading,
            PartState::Ready => HeldState::Ready,
            PartState::Lazy => HeldState::Lazy,
            PartState::Failed => HeldState::Failed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPart {
    pub state: HeldState,
    pub bytes: u64,
    /// Download progress, 0–100.
    pub pct: u8,
    /// Why the copy is `failed` (the last try's error; it is tried again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldDatabase {
    pub state: DbState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<HeldPart>,
    pub shards: BTreeMap<String, HeldPart>,
    /// When a query last read it here, to the minute (garbage collection takes
    /// the least recently read first; the coarse time keeps the digest still).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read_ms: Option<u64>,
}

/// Everything one node holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub node: String,
    pub databases: BTreeMap<String, HeldDatabase>,
}

/// The gossiped summary of an inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryDigest {
    pub hash: String,
    /// Shards this node serves.
    pub ready: u64,
    /// Bytes of the shards it serves.
    pub bytes: u64,
}

impl Inventory {
    pub fn digest(&self) -> InventoryDigest {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let (mut ready, mut ready_bytes) = (0, 0);
        for database in self.databases.values() {
            for part in database.shards.values() {
                if part.state.is_serving() {
                    ready += 1;
                    ready_bytes += part.bytes;
                }
            }
        }
        InventoryDigest {
            hash: hex::encode(&Sha256::digest(&bytes)[..8]),
            ready,
            bytes: ready_bytes,
        }
    }
}

impl Node {
    /// This node's inventory.
    pub fn inventory(&self) -> Result<Inventory, NodeError> {
        let mut inventory = Inventory {
            node: self.id().to_string(),
            databases: BTreeMap::new(),
        };
        for info in self.databases_detailed()? {
            let held = |part: &super::PartInfo| {
                let pct = match part.state {
                    _ if part.bytes == 0 => 0,
                    _ => (part.bytes_done.saturating_mul(100) / part.bytes).min(100) as u8,
                };
                HeldPart {
                    state: part.state,
                    bytes: part.bytes,
                    pct,
                    error: part.error.clone(),
                }
            };
            // A database that failed before its manifest was read has no parts.
            let shards = info
                .shards
                .iter()
                .flatten()
                .filter_map(|p| Some((p.id.clone()?, held(p))))
                .collect();
            let last_read_ms = info
                .shards
                .iter()
                .flatten()
                .chain(info.global.as_ref())
                .filter_map(|p| p.last_read_ms)
                .max()
                .map(|ms| ms - ms % 60_000);
            inventory.databases.insert(
                info.record.name.clone(),
                HeldDatabase {
                    state: info.record.state,
                    version: info.record.version.clone(),
                    global: info.global.as_ref().map(held),
                    shards,
                    last_read_ms,
                },
            );
        }
        Ok(inventory)
    }
}
