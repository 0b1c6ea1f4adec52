//! What restoring a backup writes — pure.
//!
//! A restore makes the registry equal the backup's: every definition, alias
//! and pin whose value differs from the backup's is written again with the
//! backup's value, and every entry the backup does not have (made after it) is
//! removed, each as a new change stamped now. Newer than anything the cluster
//! holds, these changes win last-writer-wins and reach every member through
//! the usual registry merge. Entries already equal are left alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::AliasRecord;
use crate::cluster::{DefinitionRecord, PinRecord, Registry};
use crate::hlc::{Hlc, HlcClock};
use crate::registry::Register;

/// Live entries of each kind in the restored backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub definitions: usize,
    pub aliases: usize,
    pub pins: usize,
}

/// One entry a restore changed: its value before and after (`null`: absent
/// or deleted). Values: a definition's `{source, mode, replicas, keep?}`, an
/// alias's target, a pin's members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overwrite {
    /// `definition`, `alias` or `pin`.
    pub kind: String,
    pub name: String,
    pub was: Value,
    pub now: Value,
}

/// What a restore writes, and what it reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestorePlan {
    /// The new entries, to be merged into the registry.
    pub changes: Registry,
    pub restored: Counts,
    pub overwrote: Vec<Overwrite>,
}

/// A registry entry a restore can write again.
trait Restorable: Register {
    const KIND: &'static str;
    /// The entry's value, `null` for a tombstone.
    fn value(&self) -> Value;
    /// Entry `name` with `from`'s value (a tombstone without one), newly stamped.
    fn restamped(name: &str, from: Option<&Self>, version: Hlc, now_ms: u64) -> Self;
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Restorable for DefinitionRecord {
    const KIND: &'static str = "definition";
    fn value(&self) -> Value {
        json(&self.definition)
    }
    fn restamped(name: &str, from: Option<&Self>, version: Hlc, now_ms: u64) -> Self {
        DefinitionRecord {
            name: name.to_string(),
            definition: from.and_then(|r| r.definition.clone()),
            version,
            updated_ms: now_ms,
        }
    }
}

impl Restorable for AliasRecord {
    const KIND: &'static str = "alias";
    fn value(&self) -> Value {
        json(&self.target)
    }
    fn restamped(name: &str, from: Option<&Self>, version: Hlc, now_ms: u64) -> Self {
        AliasRecord {
            name: name.to_string(),
            target: from.and_then(|r| r.target.clone()),
            version,
            updated_ms: now_ms,
        }
    }
}

impl Restorable for PinRecord {
    const KIND: &'static str = "pin";
    fn value(&self) -> Value {
        json(&self.nodes)
    }
    fn restamped(key: &str, from: Option<&Self>, version: Hlc, now_ms: u64) -> Self {
        PinRecord {
            key: key.to_string(),
            nodes: from.and_then(|r| r.nodes.clone()),
            version,
            updated_ms: now_ms,
        }
    }
}

/// What `node` writes at `now_ms` so that `current` becomes `backup`.
pub fn plan(current: &Registry, backup: &Registry, node: &str, now_ms: u64) -> RestorePlan {
    // Stamps newer than every version either registry holds.
    let mut clock = HlcClock::new(node);
    for max in [current.digest().max, backup.digest().max].iter().flatten() {
        clock.observe(max);
    }
    let mut plan = RestorePlan::default();
    plan.restored.definitions = diff(
        &current.definitions,
        &backup.definitions,
        &mut clock,
        now_ms,
        &mut plan.changes.definitions,
        &mut plan.overwrote,
    );
    plan.restored.aliases = diff(
        &current.aliases,
        &backup.aliases,
        &mut clock,
        now_ms,
        &mut plan.changes.aliases,
        &mut plan.overwrote,
    );
    plan.restored.pins = diff(
        &current.pins,
        &backup.pins,
        &mut clock,
        now_ms,
        &mut plan.changes.pins,
        &mut plan.overwrote,
    );
    plan
}

/// Fills `changes` with the entries of one kind to write; returns the live
/// entries of that kind in the backup.
fn diff<T: Restorable>(
    current: &BTreeMap<String, T>,
    backup: &BTreeMap<String, T>,
    clock: &mut HlcClock,
    now_ms: u64,
    changes: &mut BTreeMap<String, T>,
    overwrote: &mut Vec<Overwrite>,
) -> usize {
    let names: BTreeSet<&String> = current.keys().chain(backup.keys()).collect();
    for name in names {
        let wanted = backup.get(name);
        let was = current.get(name).map_or(Value::Null, T::value);
        let now = wanted.map_or(Value::Null, T::value);
        if was == now {
            continue;
        }
        changes.insert(
            name.clone(),
            T::restamped(name, wanted, clock.tick(now_ms), now_ms),
        );
        overwrote.push(Overwrite {
            kind: T::KIND.to_string(),
            name: name.clone(),
            was,
            now,
        });
    }
    backup.values().filter(|r| !r.is_tombstone()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Mode, Replicas};
    use crate::cluster::Definition;
    use serde_json::json;

    fn version(ms: u64, node: &str) -> Hlc {
        Hlc {
            ms,
            counter: 0,
            node: node.into(),
        }
    }

    fn alias(r: &mut Registry, name: &str, target: Option<&str>, ms: u64) {
        r.aliases.insert(
            name.into(),
            AliasRecord {
                name: name.into(),
                target: target.map(str::to_string),
                version: version(ms, "n2"),
                updated_ms: ms,
            },
        );
    }

    fn define(r: &mut Registry, name: &str, live: bool, ms: u64) {
        r.definitions.insert(
            name.into(),
            DefinitionRecord {
                name: name.into(),
                definition: live.then(|| Definition {
                    source: format!("file:///s/{name}"),
                    mode: Mode::Full,
                    replicas: Replicas::Count(2),
                    keep: false,
                }),
                version: version(ms, "n2"),
                updated_ms: ms,
            },
        );
    }

    #[test]
    fn restoring_makes_the_registry_equal_the_backup() {
        let mut backup = Registry::default();
        define(&mut backup, "db1", true, 10);
        define(&mut backup, "db2", true, 11);
        define(&mut backup, "gone", false, 12);
        alias(&mut backup, "sales", Some("db1"), 13);
        alias(&mut backup, "same", Some("db2"), 14);

        // Since the backup: sales moved, db2 was deleted, db3 and an alias to
        // it were made, "gone" stayed deleted, "same" was rewritten unchanged.
        let mut current = backup.clone();
        alias(&mut current, "sales", Some("db2"), 100);
        define(&mut current, "db2", false, 101);
        define(&mut current, "db3", true, 102);
        alias(&mut current, "new", Some("db3"), 103);
        alias(&mut current, "same", Some("db2"), 104);

        let plan = plan(&current, &backup, "n1", 50);
        assert_eq!(
            plan.restored,
            Counts {
                definitions: 2,
                aliases: 2,
                pins: 0
            }
        );
        let changed: Vec<(&str, &str, Value, Value)> = plan
            .overwrote
            .iter()
            .map(|o| {
                (
                    o.kind.as_str(),
                    o.name.as_str(),
                    o.was.clone(),
                    o.now.clone(),
                )
            })
            .collect();
        assert_eq!(
            changed,
            [
                (
                    "definition",
                    "db2",
                    Value::Null,
                    json!({"source": "file:///s/db2", "mode": "full", "replicas": 2})
                ),
                (
                    "definition",
                    "db3",
                    json!({"source": "file:///s/db3", "mode": "full", "replicas": 2}),
                    Value::Null
                ),
                ("alias", "new", json!("db3"), Value::Null),
                ("alias", "sales", json!("db2"), json!("db1")),
            ]
        );

        // Every new entry beats what the cluster holds (the clock may lag: 50 ms).
        let mut merged = current.clone();
        let won = merged.merge(&plan.changes);
        assert_eq!(won.definitions.len() + won.aliases.len(), 4);
        let live = |r: &Registry| {
            let aliases: Vec<(String, Option<String>)> = r
                .aliases
                .values()
                .filter(|a| a.target.is_some())
                .map(|a| (a.name.clone(), a.target.clone()))
                .collect();
            let definitions: Vec<(String, Option<Definition>)> = r
                .definitions
                .values()
                .filter(|d| d.definition.is_some())
                .map(|d| (d.name.clone(), d.definition.clone()))
                .collect();
            (aliases, definitions)
        };
        assert_eq!(live(&merged), live(&backup));
        // Restoring again changes nothing.
        assert!(super::plan(&merged, &backup, "n1", 60).overwrote.is_empty());
    }

    #[test]
    fn restoring_into_an_empty_registry_writes_the_backup_and_pins() {
        let mut backup = Registry::default();
        define(&mut backup, "db1", true, 10);
        alias(&mut backup, "sales", Some("db1"), 13);
        backup.pins.insert(
            "db1/0".into(),
            PinRecord {
                key: "db1/0".into(),
                nodes: Some(vec!["n2".into()]),
                version: version(14, "n1"),
                updated_ms: 14,
            },
        );
        let plan = plan(&Registry::default(), &backup, "n3", 1_000);
        assert_eq!(
            plan.restored,
            Counts {
                definitions: 1,
                aliases: 1,
                pins: 1
            }
        );
        assert_eq!(plan.overwrote.len(), 3);
        assert!(plan.overwrote.iter().all(|o| o.was.is_null()));
        assert_eq!(plan.changes.pins["db1/0"].nodes, Some(vec!["n2".into()]));
        let versions: BTreeSet<&Hlc> = plan
            .changes
            .definitions
            .values()
            .map(|d| &d.version)
            .chain(plan.changes.aliases.values().map(|a| &a.version))
            .collect();
        assert_eq!(versions.len(), 2, "every change has its own version");
    }
}
