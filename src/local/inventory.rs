//! What this node holds, as other nodes see it: per database its state and
//! version, per shard its state (`downloading` with a percentage, `ready`,
//! `lazy`, `failed`, `trashed`), and a small digest of it all for gossip.

use std::collections::BTreeMap;

use super::{Local, NodeError};
use crate::catalog::PartState;

pub use crate::placement::HeldState;
pub use crate::placement::inventory::{HeldDatabase, HeldPart, Inventory, InventoryDigest};

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

impl Local {
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
