//! Garbage collection order — pure.
//!
//! A database is garbage-collection eligible when it is defined (for at least
//! `cluster.gc_min_age_secs`: one just added is about to be used), no alias
//! points to it and its definition is not marked `keep`. When a member's disk passes its
//! high watermark the primary deletes the eligible databases least recently read
//! first (never read before any read one), one at a time; deleted databases go to
//! the trash, which members under disk pressure purge early.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::placement::HeldState;
use crate::placement::inventory::Inventory;
use crate::records::DbState;
use crate::registry::Registry;

/// One database garbage collection may delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eligible {
    pub database: String,
    /// Its last read on any live member (to the minute), if ever read.
    pub last_read_ms: Option<u64>,
    /// Bytes its copies take on the live members (shared blobs counted in full:
    /// what it frees is at most this).
    pub bytes: u64,
    /// The members holding a copy of some part of it.
    pub holders: Vec<String>,
}

/// The eligible databases in the order garbage collection takes them.
/// Databases defined less than `min_age_ms` before `now_ms` are not taken.
pub fn eligible(
    registry: &Registry,
    inventories: &[Inventory],
    now_ms: u64,
    min_age_ms: u64,
) -> Vec<Eligible> {
    let aliased: BTreeSet<&str> = registry
        .aliases
        .values()
        .filter_map(|a| a.target.as_deref())
        .collect();
    let mut out: HashMap<&str, Eligible> = HashMap::new();
    for (name, record) in &registry.definitions {
        let Some(definition) = &record.definition else {
            continue;
        };
        if definition.keep
            || aliased.contains(name.as_str())
            || now_ms.saturating_sub(record.updated_ms) < min_age_ms
        {
            continue;
        }
        out.insert(
            name,
            Eligible {
                database: name.clone(),
                last_read_ms: None,
                bytes: 0,
                holders: Vec::new(),
            },
        );
    }
    for inventory in inventories {
        for (name, held) in &inventory.databases {
            let Some(entry) = out.get_mut(name.as_str()) else {
                continue;
            };
            if held.state == DbState::Trashed {
                continue;
            }
            entry.last_read_ms = entry.last_read_ms.max(held.last_read_ms);
            let bytes: u64 = held
                .shards
                .values()
                .chain(held.global.as_ref())
                .filter(|p| p.state != HeldState::Trashed)
                .map(|p| p.bytes)
                .sum();
            if bytes > 0 {
                entry.bytes += bytes;
                entry.holders.push(inventory.node.clone());
            }
        }
    }
    let mut eligible: Vec<Eligible> = out.into_values().filter(|e| e.bytes > 0).collect();
    eligible.sort_by(|a, b| (a.last_read_ms, &a.database).cmp(&(b.last_read_ms, &b.database)));
    eligible
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::placement::inventory::{HeldDatabase, HeldPart};
    use crate::records::{AliasRecord, Mode, Replicas};
    use crate::registry::{Definition, DefinitionRecord};
    use std::collections::BTreeMap;

    fn define(registry: &mut Registry, name: &str, keep: bool) {
        registry.definitions.insert(
            name.into(),
            DefinitionRecord {
                name: name.into(),
                definition: Some(Definition {
                    source: format!("file:///s/{name}"),
                    mode: Mode::Full,
                    replicas: Replicas::Count(1),
                    keep,
                }),
                version: Hlc {
                    ms: 1,
                    counter: 0,
                    node: "n1".into(),
                },
                updated_ms: 1,
            },
        );
    }

    fn held(bytes: u64, last_read_ms: Option<u64>) -> HeldDatabase {
        HeldDatabase {
            state: DbState::Ready,
            version: None,
            global: None,
            shards: BTreeMap::from([(
                "0".to_string(),
                HeldPart {
                    state: HeldState::Ready,
                    bytes,
                    pct: 100,
                    error: None,
                },
            )]),
            last_read_ms,
        }
    }

    #[test]
    fn aliased_and_kept_databases_are_never_eligible_and_the_coldest_go_first() {
        let mut registry = Registry::default();
        for name in ["old", "recent", "never", "aliased", "kept"] {
            define(&mut registry, name, name == "kept");
        }
        registry.aliases.insert(
            "live".into(),
            AliasRecord {
                name: "live".into(),
                target: Some("aliased".into()),
                version: Hlc {
                    ms: 1,
                    counter: 0,
                    node: "n1".into(),
                },
                updated_ms: 1,
            },
        );
        let mut a = Inventory {
            node: "a".into(),
            databases: BTreeMap::new(),
        };
        let mut b = Inventory {
            node: "b".into(),
            databases: BTreeMap::new(),
        };
        for (name, read) in [
            ("old", Some(1_000)),
            ("recent", Some(9_000)),
            ("never", None),
            ("aliased", None),
            ("kept", None),
        ] {
            a.databases.insert(name.into(), held(10, read));
        }
        // Read recently on b: "old" is not that old after all.
        b.databases.insert("old".into(), held(5, Some(20_000)));
        let order = eligible(&registry, &[a.clone(), b.clone()], 100_000, 0);
        let names: Vec<&str> = order.iter().map(|e| e.database.as_str()).collect();
        assert_eq!(names, ["never", "recent", "old"]);
        assert_eq!(order[2].bytes, 15);
        assert_eq!(order[2].holders, ["a", "b"]);
        assert_eq!(order[2].last_read_ms, Some(20_000));
        // Defined at 1 ms: not eligible until it is a minute old.
        assert!(eligible(&registry, &[a.clone(), b.clone()], 30_000, 60_000).is_empty());
        assert_eq!(eligible(&registry, &[a, b], 60_001, 60_000).len(), 3);
    }

    #[test]
    fn the_primary_collects_a_database_only_once_its_clock_says_it_is_old_enough() {
        use std::sync::Arc;
        use std::time::Duration;

        use crate::clock::ManualClock;
        use crate::cluster::Member;
        use crate::cluster::membership::DiskSummary;
        use crate::primary::Role;
        use crate::primary::report::gc_report_of;

        let clock = Arc::new(ManualClock::new(1));
        let role = Role::new("a", clock.clone());
        let mut registry = Registry::default();
        define(&mut registry, "cold", false);
        let inventory = Inventory {
            node: "a".into(),
            databases: BTreeMap::from([("cold".to_string(), held(10, None))]),
        };
        let full = DiskSummary {
            total: 100,
            free: 0,
            used: 100,
            capacity: 100,
            full: true,
            watermark_permille: Some(900),
        };
        let member = Member {
            id: "a".into(),
            live: true,
            is_self: true,
            gossip: "127.0.0.1:1".into(),
            node: None,
            disks: BTreeMap::from([("d0".to_string(), full)]),
            inventory: None,
            registry: None,
            primary: None,
            load: None,
            leaving: false,
            gossip_bytes: 0,
        };
        let min_age_ms = 60_000;
        let report = |role: &Role| {
            gc_report_of(
                role,
                &registry,
                min_age_ms,
                "a",
                std::slice::from_ref(&member),
                std::slice::from_ref(&inventory),
            )
        };
        let young = report(&role);
        assert!(young.triggered, "a disk is full");
        assert!(young.eligible.is_empty(), "defined this instant");
        clock.advance(Duration::from_millis(min_age_ms - 1));
        assert!(
            report(&role).eligible.is_empty(),
            "1 ms short of the minimum age"
        );
        clock.advance(Duration::from_millis(1));
        let old = report(&role);
        assert_eq!(old.eligible.len(), 1);
        assert_eq!(old.eligible[0].database, "cold");
    }
}
