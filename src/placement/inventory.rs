//! What one member holds, as the others see it in gossip: per database its
//! state and version, per shard its state and bytes, and a small digest of it
//! all. Placement and the primary plan from these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::HeldState;
use crate::records::DbState;

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
