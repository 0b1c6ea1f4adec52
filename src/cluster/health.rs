//! Cluster health from definitions and the inventories of live members — pure.
//!
//! - red: a defined database has a shard with no serving copy on any live member
//!   (or no member holds any shard of it yet);
//! - yellow: every shard has a serving copy, but some have fewer than asked
//!   (`replicas: N`, or every live member for `"all"`);
//! - green: every shard has the copies asked for.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Registry;
use crate::catalog::Replicas;
use crate::local::Inventory;
use crate::placement::plan::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Green,
    Yellow,
    Red,
}

/// The health and, when not green, why (at most `MAX_REASONS` reasons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub health: Health,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

const MAX_REASONS: usize = 20;

/// Copies wanted of each shard of a database with these replicas.
pub fn wanted_copies(replicas: Replicas, live_members: usize) -> usize {
    match replicas {
        Replicas::Count(n) => n as usize,
        Replicas::All(_) => live_members,
    }
}

/// Health of the databases `registry` defines, given the inventories of the live
/// members (one per member) and the layouts known from manifests (a shard no
/// live member holds is known from these).
pub fn health(registry: &Registry, inventories: &[Inventory], layouts: &[Layout]) -> HealthReport {
    let mut health = Health::Green;
    let mut reasons = Vec::new();
    let mut note = |level: Health, reason: String, health: &mut Health| {
        *health = (*health).max(level);
        if reasons.len() < MAX_REASONS {
            reasons.push(reason);
        }
    };
    for (name, record) in &registry.definitions {
        let Some(definition) = &record.definition else {
            continue;
        };
        let wanted = wanted_copies(definition.replicas, inventories.len());
        // Shard ids are known from any member that read the manifest.
        let shard_ids: BTreeSet<&String> = inventories
            .iter()
            .filter_map(|i| i.databases.get(name))
            .flat_map(|d| d.shards.keys())
            .chain(
                layouts
                    .iter()
                    .filter(|l| l.name == *name)
                    .flat_map(|l| l.shards.iter().map(|(id, _)| id)),
            )
            .collect();
        if shard_ids.is_empty() {
            note(
                Health::Red,
                format!("{name}: no member holds a shard of it yet"),
                &mut health,
            );
            continue;
        }
        let mut serving: BTreeMap<&String, usize> = BTreeMap::new();
        for inventory in inventories {
            let Some(database) = inventory.databases.get(name) else {
                continue;
            };
            if database.state != crate::catalog::DbState::Ready {
                continue;
            }
            for (id, part) in &database.shards {
                if part.state.is_serving() {
                    *serving.entry(id).or_default() += 1;
                }
            }
        }
        for id in shard_ids {
            let copies = serving.get(id).copied().unwrap_or(0);
            if copies == 0 {
                note(
                    Health::Red,
                    format!("{name}/{id}: no serving copy"),
                    &mut health,
                );
            } else if copies < wanted {
                note(
                    Health::Yellow,
                    format!("{name}/{id}: {copies} of {wanted} copies"),
                    &mut health,
                );
            }
        }
    }
    HealthReport { health, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{AllReplicas, DbState, Mode};
    use crate::cluster::{Definition, DefinitionRecord};
    use crate::hlc::Hlc;
    use crate::local::{HeldDatabase, HeldPart, HeldState};

    fn registry(replicas: Replicas) -> Registry {
        let mut registry = Registry::default();
        registry.definitions.insert(
            "db".into(),
            DefinitionRecord {
                name: "db".into(),
                definition: Some(Definition {
                    source: "file:///s/db".into(),
                    mode: Mode::Full,
                    replicas,
                    keep: false,
                }),
                version: Hlc {
                    ms: 1,
                    counter: 0,
                    node: "n1".into(),
                },
                updated_ms: 1,
            },
        );
        registry
    }

    fn holding(node: &str, shards: &[(&str, HeldState)]) -> Inventory {
        let mut inventory = Inventory {
            node: node.into(),
            databases: BTreeMap::new(),
        };
        inventory.databases.insert(
            "db".into(),
            HeldDatabase {
                state: DbState::Ready,
                version: None,
                global: None,
                last_read_ms: None,
                shards: shards
                    .iter()
                    .map(|(id, state)| {
                        (
                            id.to_string(),
                            HeldPart {
                                state: *state,
                                bytes: 1,
                                pct: 100,
                                error: None,
                            },
                        )
                    })
                    .collect(),
            },
        );
        inventory
    }

    #[test]
    fn copies_decide_the_colour() {
        use HeldState::*;
        let all = registry(Replicas::All(AllReplicas::All));
        let both = [
            holding("n1", &[("a", Ready), ("b", Lazy)]),
            holding("n2", &[("a", Ready), ("b", Ready)]),
        ];
        assert_eq!(health(&all, &both, &[]).health, Health::Green);
        let one_behind = [
            holding("n1", &[("a", Ready), ("b", Ready)]),
            holding("n2", &[("a", Downloading), ("b", Ready)]),
        ];
        let report = health(&all, &one_behind, &[]);
        assert_eq!(report.health, Health::Yellow);
        assert_eq!(report.reasons, ["db/a: 1 of 2 copies"]);
        let two = registry(Replicas::Count(1));
        assert_eq!(health(&two, &one_behind, &[]).health, Health::Green);
        let none = [
            holding("n1", &[("a", Failed), ("b", Ready)]),
            holding("n2", &[("a", Trashed), ("b", Ready)]),
        ];
        assert_eq!(health(&two, &none, &[]).health, Health::Red);
        assert_eq!(
            health(&two, &[], &[]).health,
            Health::Red,
            "nobody holds it"
        );
        assert_eq!(health(&Registry::default(), &[], &[]).health, Health::Green);
    }
}
