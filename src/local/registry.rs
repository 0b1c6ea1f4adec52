//! The node's side of the registry: definitions and aliases as stored in the
//! catalog, merged with other nodes' registries, and turned into local work —
//! a database defined elsewhere starts loading here, one deleted elsewhere goes
//! to this node's trash.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::info;

use super::{Inner, Local, NodeError, load};
use crate::catalog::{
    ALIASES, AliasRecord, DATABASES, DEFINITIONS, DatabaseRecord, DbState, PARTS, PINS, PartRecord,
    PartState, Writer, key,
};
use crate::registry::{Changes, Definition, DefinitionRecord, PinRecord, Registry};
use crate::sync::lock;

/// What a registry change asks of this node once it is committed.
#[derive(Debug, Default)]
pub(super) struct LocalWork {
    /// Databases to load (new, or restored but not whole).
    pub load: Vec<String>,
    /// Databases moved to the trash: their loads stop, their files are no
    /// longer served.
    pub trashed: Vec<String>,
}

impl Local {
    /// This node's registry, tombstones included, from one catalog snapshot.
    pub fn registry(&self) -> Result<Registry, NodeError> {
        self.inner.registry()
    }

    /// Merges another node's registry into this one: the entries that win are
    /// written in one transaction (a batch of alias changes arrives whole), and
    /// definitions that changed become local loads or trashings.
    pub fn merge_registry(&self, remote: &Registry) -> Result<Changes, NodeError> {
        let inner = &self.inner;
        let (changes, work) = inner.catalog.write(|w| {
            let mut local = registry_in(w)?;
            let changes = local.merge(remote);
            for definition in &changes.definitions {
                w.put(DEFINITIONS, &definition.name, definition)?;
            }
            for alias in &changes.aliases {
                w.put(ALIASES, &alias.name, alias)?;
            }
            for pin in &changes.pins {
                w.put(PINS, &pin.key, pin)?;
            }
            let work = inner.apply_definitions(w, &changes.definitions)?;
            Ok::<_, NodeError>((changes, work))
        })?;
        if let Some(max) = remote.digest().max {
            inner.versions.observe(&max);
        }
        if !changes.is_empty() {
            info!(
                definitions = changes.definitions.len(),
                aliases = changes.aliases.len(),
                "merged registry changes"
            );
        }
        inner.start_local_work(work);
        Ok(changes)
    }
}

impl Local {
    /// Pins shards where the rebalancer moves them (`database/shard` → members),
    /// in one transaction; the registry carries them to every member.
    pub fn pin_shards(&self, pins: &[(String, Vec<String>)]) -> Result<(), NodeError> {
        let now = self.now_ms();
        self.inner.catalog.write(|w| {
            for (key, nodes) in pins {
                let record = PinRecord {
                    key: key.clone(),
                    nodes: Some(nodes.clone()),
                    version: self.inner.versions.next(now),
                    updated_ms: now,
                };
                w.put(PINS, key, &record)?;
            }
            Ok::<_, NodeError>(())
        })
    }

    /// Drops registry tombstones older than `cluster.tombstone_lifetime_secs`.
    pub fn collect_registry_tombstones(&self) -> Result<usize, NodeError> {
        let lifetime_ms = self.inner.config.cluster.tombstone_lifetime_secs * 1000;
        let now = self.now_ms();
        let collected = self.inner.catalog.write(|w| {
            let registry = registry_in(w)?;
            let mut kept = registry.clone();
            let collected = kept.collect_tombstones(now, lifetime_ms);
            for name in registry.definitions.keys() {
                if !kept.definitions.contains_key(name) {
                    w.remove(DEFINITIONS, name)?;
                }
            }
            for name in registry.aliases.keys() {
                if !kept.aliases.contains_key(name) {
                    w.remove(ALIASES, name)?;
                }
            }
            for key in registry.pins.keys() {
                if !kept.pins.contains_key(key) {
                    w.remove(PINS, key)?;
                }
            }
            Ok::<_, NodeError>(collected)
        })?;
        if collected > 0 {
            info!(collected, "registry tombstones collected");
        }
        Ok(collected)
    }
}

fn registry_in(w: &Writer) -> Result<Registry, NodeError> {
    let definitions: Vec<(String, DefinitionRecord)> = w.scan(DEFINITIONS, "")?;
    let aliases: Vec<(String, AliasRecord)> = w.scan(ALIASES, "")?;
    let pins: Vec<(String, PinRecord)> = w.scan(PINS, "")?;
    Ok(Registry {
        definitions: definitions.into_iter().collect(),
        aliases: aliases.into_iter().collect(),
        pins: pins.into_iter().collect(),
    })
}

impl Inner {
    pub(super) fn registry(&self) -> Result<Registry, NodeError> {
        Ok(self.catalog.read(|r| {
            let definitions: Vec<(String, DefinitionRecord)> = r.scan(DEFINITIONS, "")?;
            let aliases: Vec<(String, AliasRecord)> = r.scan(ALIASES, "")?;
            let pins: Vec<(String, PinRecord)> = r.scan(PINS, "")?;
            Ok(Registry {
                definitions: definitions.into_iter().collect::<BTreeMap<_, _>>(),
                aliases: aliases.into_iter().collect(),
                pins: pins.into_iter().collect(),
            })
        })?)
    }

    /// A new version of the definition of `name` (`None`: deleted).
    pub(super) fn stamp_definition(
        &self,
        name: &str,
        definition: Option<Definition>,
    ) -> DefinitionRecord {
        let now = self.now_ms();
        DefinitionRecord {
            name: name.to_string(),
            definition,
            version: self.versions.next(now),
            updated_ms: now,
        }
    }

    /// Brings this node's databases in line with definitions that changed, inside
    /// the transaction that wrote them.
    pub(super) fn apply_definitions(
        &self,
        w: &mut Writer,
        changed: &[DefinitionRecord],
    ) -> Result<LocalWork, NodeError> {
        let mut work = LocalWork::default();
        for record in changed {
            let name = &record.name;
            let local: Option<DatabaseRecord> = w.get(DATABASES, name)?;
            match (&record.definition, local) {
                (Some(definition), None) => {
                    let database = definition.loading(name, self.now_ms());
                    w.put(DATABASES, name, &database)?;
                    work.load.push(name.clone());
                }
                (Some(_), Some(local)) if local.state == DbState::Trashed => {
                    let restored = restore_in(w, local)?;
                    if restored.state == DbState::Loading {
                        work.load.push(name.clone());
                    }
                }
                (None, Some(mut local)) if local.state != DbState::Trashed => {
                    local.state = DbState::Trashed;
                    local.trashed_ms = Some(self.now_ms());
                    w.put(DATABASES, name, &local)?;
                    work.trashed.push(name.clone());
                }
                _ => {}
            }
        }
        Ok(work)
    }

    pub(super) fn start_local_work(self: &Arc<Self>, work: LocalWork) {
        for name in work.trashed {
            self.loads.cancel(&name);
            self.files.forget(&name);
            info!(database = %name, "database deleted in the cluster: moved to trash");
        }
        for name in work.load {
            info!(database = %name, "loading a database defined in the cluster");
            load::spawn(self, &name);
        }
    }

    /// Gives every database that predates definitions one (a catalog written by
    /// an older dram), so that the registry describes what this node holds.
    pub(super) fn define_existing_databases(&self) -> Result<(), NodeError> {
        self.catalog.write(|w| {
            let records: Vec<(String, DatabaseRecord)> = w.scan(DATABASES, "")?;
            for (name, record) in records {
                if w.get::<DefinitionRecord>(DEFINITIONS, &name)?.is_some() {
                    continue;
                }
                let definition =
                    (record.state != DbState::Trashed).then(|| Definition::of(&record));
                w.put(
                    DEFINITIONS,
                    &name,
                    &self.stamp_definition(&name, definition),
                )?;
            }
            Ok(())
        })
    }
}

/// Takes a trashed database out of the trash: `Ready` again if it was whole,
/// `Loading` (to be resumed by the caller) otherwise.
pub(super) fn restore_in(
    w: &mut Writer,
    mut record: DatabaseRecord,
) -> Result<DatabaseRecord, NodeError> {
    let parts: Vec<(String, PartRecord)> = w.scan(PARTS, &key(&[&record.name, ""]))?;
    let whole = record.ready_ms.is_some()
        && !parts.is_empty()
        && parts
            .iter()
            .all(|(_, p)| matches!(p.state, PartState::Ready | PartState::Lazy));
    record.state = if whole {
        DbState::Ready
    } else {
        DbState::Loading
    };
    record.trashed_ms = None;
    w.put(DATABASES, &record.name.clone(), &record)?;
    Ok(record)
}

/// The versions this member gives registry entries: a hybrid logical clock
/// over its wall clock, above every version it has made or seen.
pub(super) struct Versions {
    hlc: std::sync::Mutex<crate::hlc::HlcClock>,
}

impl Versions {
    pub(super) fn new(node_id: &str) -> Versions {
        Versions {
            hlc: std::sync::Mutex::new(crate::hlc::HlcClock::new(node_id)),
        }
    }

    /// A new version, at `now_ms` on the wall clock.
    pub(super) fn next(&self, now_ms: u64) -> crate::hlc::Hlc {
        lock(&self.hlc).tick(now_ms)
    }

    /// Takes a version seen elsewhere into account.
    pub(super) fn observe(&self, seen: &crate::hlc::Hlc) {
        lock(&self.hlc).observe(seen);
    }
}
