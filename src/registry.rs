//! The registry: the cluster-wide desired state — database definitions and
//! aliases — as a map of last-writer-wins registers.
//!
//! Every entry carries the hybrid-logical-clock version of the write that made it;
//! a removal is a tombstone (an entry without a value). Merging two registries
//! keeps, per name, the entry with the greater version, so merge is commutative,
//! associative and idempotent: nodes that have seen the same writes hold the same
//! registry, whatever order the writes reached them in. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::hlc::Hlc;
use crate::records::{AliasRecord, Mode, Replicas};

/// The desired state of one database, the same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// Absolute URL of the database in object storage.
    pub source: String,
    pub mode: Mode,
    pub replicas: Replicas,
    /// Never collected as garbage, even when no alias points to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
}

impl Definition {
    /// A database about to be loaded from this definition.
    pub fn loading(&self, name: &str, now_ms: u64) -> crate::records::DatabaseRecord {
        crate::records::DatabaseRecord {
            name: name.to_string(),
            source: self.source.clone(),
            mode: self.mode,
            replicas: self.replicas,
            keep: self.keep,
            state: crate::records::DbState::Loading,
            error: None,
            version: None,
            created_ms: now_ms,
            ready_ms: None,
            trashed_ms: None,
        }
    }

    /// The definition a database on this node was loaded from.
    pub fn of(record: &crate::records::DatabaseRecord) -> Definition {
        Definition {
            source: record.source.clone(),
            mode: record.mode,
            replicas: record.replicas,
            keep: record.keep,
        }
    }
}

/// A definition register: `definition: None` is a tombstone (the database was
/// deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionRecord {
    pub name: String,
    pub definition: Option<Definition>,
    pub version: Hlc,
    pub updated_ms: u64,
}

/// Where the rebalancer put one shard: the members that hold its copies instead
/// of those rendezvous hashing would pick (`nodes: None`: the pin was removed).
/// Key: `database/shard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    pub key: String,
    pub nodes: Option<Vec<String>>,
    pub version: Hlc,
    pub updated_ms: u64,
}

/// Something merged last-writer-wins by its version.
pub trait Register: Clone + PartialEq + Serialize {
    fn version(&self) -> &Hlc;
    fn is_tombstone(&self) -> bool;
}

impl Register for DefinitionRecord {
    fn version(&self) -> &Hlc {
        &self.version
    }
    fn is_tombstone(&self) -> bool {
        self.definition.is_none()
    }
}

impl Register for PinRecord {
    fn version(&self) -> &Hlc {
        &self.version
    }
    fn is_tombstone(&self) -> bool {
        self.nodes.is_none()
    }
}

impl Register for AliasRecord {
    fn version(&self) -> &Hlc {
        &self.version
    }
    fn is_tombstone(&self) -> bool {
        self.target.is_none()
    }
}

/// Definitions and aliases, tombstones included, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub definitions: BTreeMap<String, DefinitionRecord>,
    pub aliases: BTreeMap<String, AliasRecord>,
    /// Shards the rebalancer moved, by `database/shard`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, PinRecord>,
}

/// What a merge changed: the entries of `other` that won.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub definitions: Vec<DefinitionRecord>,
    pub aliases: Vec<AliasRecord>,
    pub pins: Vec<PinRecord>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty() && self.aliases.is_empty() && self.pins.is_empty()
    }
}

/// A small summary of a registry, gossiped so that nodes notice when theirs differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryDigest {
    /// The greatest version in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Hlc>,
    /// Hex prefix of the sha256 of the registry's canonical JSON.
    pub hash: String,
    /// Entries, tombstones included.
    pub entries: usize,
}

/// Whether `candidate` beats `current`: a greater version wins. Equal versions
/// come from the same write, so they are equal entries; should they differ all the
/// same, the greater JSON wins, keeping merge commutative whatever happens.
fn wins<T: Register>(candidate: &T, current: &T) -> bool {
    match candidate.version().cmp(current.version()) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            candidate != current
                && serde_json::to_vec(candidate).ok() > serde_json::to_vec(current).ok()
        }
    }
}

fn merge_map<T: Register>(into: &mut BTreeMap<String, T>, other: &BTreeMap<String, T>) -> Vec<T> {
    let mut won = Vec::new();
    for (name, entry) in other {
        let take = match into.get(name) {
            None => true,
            Some(current) => wins(entry, current),
        };
        if take {
            into.insert(name.clone(), entry.clone());
            won.push(entry.clone());
        }
    }
    won
}

impl Registry {
    /// Takes every entry of `other` that beats this registry's; returns them.
    pub fn merge(&mut self, other: &Registry) -> Changes {
        Changes {
            definitions: merge_map(&mut self.definitions, &other.definitions),
            aliases: merge_map(&mut self.aliases, &other.aliases),
            pins: merge_map(&mut self.pins, &other.pins),
        }
    }

    /// The summary nodes gossip.
    pub fn digest(&self) -> RegistryDigest {
        let max = self
            .definitions
            .values()
            .map(|d| &d.version)
            .chain(self.aliases.values().map(|a| &a.version))
            .chain(self.pins.values().map(|p| &p.version))
            .max()
            .cloned();
        // BTreeMaps serialize in key order: the same registry, the same bytes.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let hash = hex::encode(&Sha256::digest(&bytes)[..8]);
        RegistryDigest {
            max,
            hash,
            entries: self.definitions.len() + self.aliases.len() + self.pins.len(),
        }
    }

    /// Drops tombstones written more than `lifetime_ms` before `now_ms`. A node
    /// that was away for longer than that must not rejoin with its old registry
    /// (it could bring deleted entries back), as with Cassandra's gc_grace.
    pub fn collect_tombstones(&mut self, now_ms: u64, lifetime_ms: u64) -> usize {
        let old = |version: &Hlc| version.ms.saturating_add(lifetime_ms) < now_ms;
        let count = |r: &Registry| r.definitions.len() + r.aliases.len() + r.pins.len();
        let before = count(self);
        self.definitions
            .retain(|_, d| !(d.is_tombstone() && old(&d.version)));
        self.aliases
            .retain(|_, a| !(a.is_tombstone() && old(&a.version)));
        self.pins
            .retain(|_, p| !(p.is_tombstone() && old(&p.version)));
        before - count(self)
    }

    /// The live pins: `database/shard` → the members holding its copies.
    pub fn live_pins(&self) -> BTreeMap<String, Vec<String>> {
        self.pins
            .iter()
            .filter_map(|(key, pin)| Some((key.clone(), pin.nodes.clone()?)))
            .collect()
    }

    /// The live definition of `name`, if any.
    pub fn definition(&self, name: &str) -> Option<&Definition> {
        self.definitions.get(name)?.definition.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::HlcClock;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A random history: `nodes` clocks writing to a few names, each write seen
    /// by a random subset of registries.
    fn random_registries(seed: u64) -> Vec<Registry> {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = rng.random_range(1..5);
        let mut clocks: Vec<HlcClock> =
            (0..nodes).map(|i| HlcClock::new(format!("n{i}"))).collect();
        let mut registries = vec![Registry::default(); rng.random_range(2..5)];
        let mut now = 1_000;
        for _ in 0..rng.random_range(0..40) {
            // Clocks skew: each node's wall clock is a little off.
            now += rng.random_range(0..3);
            let node = rng.random_range(0..nodes);
            let version = clocks[node].tick(now + rng.random_range(0..5));
            let name = format!("x{}", rng.random_range(0..4));
            let into = rng.random_range(0..registries.len());
            if rng.random_bool(0.5) {
                let target = rng
                    .random_bool(0.7)
                    .then(|| format!("db{}", rng.random_range(0..3)));
                registries[into].aliases.insert(
                    name.clone(),
                    AliasRecord {
                        name,
                        target,
                        version,
                        updated_ms: now,
                    },
                );
            } else {
                let definition = rng.random_bool(0.7).then(|| Definition {
                    source: format!("file:///s/{}", rng.random_range(0..3)),
                    mode: Mode::Full,
                    replicas: Replicas::Count(1),
                    keep: false,
                });
                registries[into].definitions.insert(
                    name.clone(),
                    DefinitionRecord {
                        name,
                        definition,
                        version,
                        updated_ms: now,
                    },
                );
            }
            // A node sometimes syncs with another before writing again.
            if rng.random_bool(0.3) {
                let (a, b) = (
                    rng.random_range(0..registries.len()),
                    rng.random_range(0..registries.len()),
                );
                let other = registries[b].clone();
                registries[a].merge(&other);
                if let Some(max) = registries[a].digest().max {
                    clocks[node].observe(&max);
                }
            }
        }
        registries
    }

    fn merged(a: &Registry, b: &Registry) -> Registry {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent() {
        for seed in 0..3_000 {
            let r = random_registries(seed);
            let (a, b) = (&r[0], &r[1]);
            let c = r.get(2).cloned().unwrap_or_default();
            assert_eq!(merged(a, b), merged(b, a), "commutative, seed {seed}");
            assert_eq!(
                merged(&merged(a, b), &c),
                merged(a, &merged(b, &c)),
                "associative, seed {seed}"
            );
            assert_eq!(merged(a, a), *a, "idempotent, seed {seed}");
            let ab = merged(a, b);
            assert_eq!(merged(&ab, b), ab, "idempotent, seed {seed}");
            assert_eq!(ab.digest(), merged(b, a).digest(), "seed {seed}");
        }
    }

    #[test]
    fn every_order_of_merges_converges_on_the_latest_writes() {
        for seed in 0..1_000 {
            let registries = random_registries(seed);
            let forward = registries
                .iter()
                .fold(Registry::default(), |acc, r| merged(&acc, r));
            let backward = registries
                .iter()
                .rev()
                .fold(Registry::default(), |acc, r| merged(&acc, r));
            assert_eq!(forward, backward, "seed {seed}");
            // Every surviving entry is the greatest version written for its name.
            for registry in &registries {
                for (name, alias) in &registry.aliases {
                    assert!(
                        forward.aliases[name].version >= alias.version,
                        "seed {seed}"
                    );
                }
                for (name, definition) in &registry.definitions {
                    assert!(
                        forward.definitions[name].version >= definition.version,
                        "seed {seed}"
                    );
                }
            }
        }
    }

    fn alias(name: &str, target: Option<&str>, ms: u64, node: &str) -> AliasRecord {
        AliasRecord {
            name: name.into(),
            target: target.map(str::to_string),
            version: Hlc {
                ms,
                counter: 0,
                node: node.into(),
            },
            updated_ms: ms,
        }
    }

    #[test]
    fn later_writes_win_and_ties_go_to_the_greater_node_id() {
        let mut a = Registry::default();
        a.aliases
            .insert("s".into(), alias("s", Some("v1"), 10, "n2"));
        let mut b = Registry::default();
        b.aliases
            .insert("s".into(), alias("s", Some("v2"), 10, "n1"));
        let changes = a.merge(&b);
        assert!(changes.is_empty(), "same ms: n2 > n1 keeps v1");
        assert_eq!(a.aliases["s"].target.as_deref(), Some("v1"));
        let mut c = Registry::default();
        c.aliases.insert("s".into(), alias("s", None, 11, "n1"));
        let changes = a.merge(&c);
        assert_eq!(changes.aliases.len(), 1, "a later removal wins");
        assert!(a.aliases["s"].is_tombstone());
        assert_ne!(a.digest().hash, b.digest().hash);
    }

    #[test]
    fn tombstones_are_collected_after_their_lifetime() {
        let mut r = Registry::default();
        r.aliases
            .insert("gone".into(), alias("gone", None, 1_000, "n1"));
        r.aliases
            .insert("live".into(), alias("live", Some("db"), 1_000, "n1"));
        assert_eq!(r.collect_tombstones(1_500, 1_000), 0);
        assert_eq!(r.collect_tombstones(2_001, 1_000), 1);
        assert_eq!(r.aliases.keys().collect::<Vec<_>>(), ["live"]);
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests (proptest, 2,000 cases each) over arbitrary entries with
    //! arbitrary versions — few names, nodes and milliseconds, so that equal
    //! versions with different contents (the tie-break) come up often.

    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;

    use super::*;

    fn hlc() -> impl Strategy<Value = Hlc> {
        let node = prop_oneof![Just("n1"), Just("n2"), Just("n3")];
        (0u64..4, 0u32..3, node).prop_map(|(ms, counter, node)| Hlc {
            ms,
            counter,
            node: node.to_string(),
        })
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_string)
    }

    fn alias() -> impl Strategy<Value = AliasRecord> {
        let target = option::of(prop_oneof![Just("db1"), Just("db2")].prop_map(str::to_string));
        (name(), target, hlc(), 0u64..3).prop_map(|(name, target, version, updated_ms)| {
            AliasRecord {
                name,
                target,
                version,
                updated_ms,
            }
        })
    }

    fn definition() -> impl Strategy<Value = DefinitionRecord> {
        let mode = prop_oneof![Just(Mode::Full), Just(Mode::Lazy)];
        let replicas = prop_oneof![
            (1u32..3).prop_map(Replicas::Count),
            Just(Replicas::All(crate::records::AllReplicas::All)),
        ];
        let definition = option::of((0u8..2, mode, replicas, any::<bool>()).prop_map(
            |(source, mode, replicas, keep)| Definition {
                source: format!("file:///s/{source}"),
                mode,
                replicas,
                keep,
            },
        ));
        (name(), definition, hlc(), 0u64..3).prop_map(|(name, definition, version, updated_ms)| {
            DefinitionRecord {
                name,
                definition,
                version,
                updated_ms,
            }
        })
    }

    fn pin() -> impl Strategy<Value = PinRecord> {
        let nodes = option::of(vec(prop_oneof![Just("n1"), Just("n2")], 0..3));
        (name(), nodes, hlc(), 0u64..3).prop_map(|(key, nodes, version, updated_ms)| PinRecord {
            key,
            nodes: nodes.map(|n| n.into_iter().map(str::to_string).collect()),
            version,
            updated_ms,
        })
    }

    fn registry() -> impl Strategy<Value = Registry> {
        (
            vec(definition(), 0..5),
            vec(alias(), 0..5),
            vec(pin(), 0..3),
        )
            .prop_map(|(definitions, aliases, pins)| Registry {
                definitions: definitions
                    .into_iter()
                    .map(|d| (d.name.clone(), d))
                    .collect(),
                aliases: aliases.into_iter().map(|a| (a.name.clone(), a)).collect(),
                pins: pins.into_iter().map(|p| (p.key.clone(), p)).collect(),
            })
    }

    fn merged(a: &Registry, b: &Registry) -> Registry {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            a in registry(),
            b in registry(),
            c in registry(),
        ) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab.clone());
            // What a merge reports as changed is exactly what it took.
            let mut into = a.clone();
            let changes = into.merge(&b);
            prop_assert_eq!(changes.is_empty(), into == a);
        }

        #[test]
        fn every_merge_order_gives_the_same_digest(
            (registries, shuffled) in vec(registry(), 1..6)
                .prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
        ) {
            let fold = |rs: &[Registry]| rs.iter().fold(Registry::default(), |acc, r| merged(&acc, r));
            let (one, other) = (fold(&registries), fold(&shuffled));
            prop_assert_eq!(one.digest(), other.digest());
            // Merging pairwise, as gossip does, ends in the same place too.
            let mut pairwise = shuffled.clone();
            while pairwise.len() > 1 {
                let last = pairwise.pop().unwrap_or_default();
                let first = pairwise.remove(0);
                pairwise.push(merged(&last, &first));
            }
            prop_assert_eq!(pairwise[0].digest(), one.digest());
            prop_assert_eq!(&pairwise[0], &one);
            // Every entry kept is the greatest version written for its name.
            for registry in &registries {
                for (name, alias) in &registry.aliases {
                    prop_assert!(one.aliases[name].version >= alias.version);
                }
                for (name, definition) in &registry.definitions {
                    prop_assert!(one.definitions[name].version >= definition.version);
                }
            }
        }
    }
}
