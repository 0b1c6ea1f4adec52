//! What placement asks of the cluster now — pure.
//!
//! From the databases (shards and their sizes), the candidates and what each live
//! member holds, `plan` lists the copies to download (a member placement chose
//! that has none), the extra copies the primary may trash (every chosen member
//! already holds a ready copy) and the extra copies that must wait. Each node
//! takes its own downloads from it, the primary its trashes, and `GET /v1/plan`
//! shows all of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::HeldState;
use super::spread::{Shards, even_out};
use super::{Candidate, choose_hashed, shard_key, stable_hash};
use crate::records::Replicas;

/// A database as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub name: String,
    pub replicas: Replicas,
    /// Shard ids and their bytes.
    pub shards: Vec<(String, u64)>,
    /// Bytes of its global data (on every member holding one of its shards).
    pub global_bytes: u64,
}

/// What the live members hold: database → shard → member → state (by shard, so
/// that a shard's holders are found without scanning every member).
pub type Holdings = BTreeMap<String, BTreeMap<String, BTreeMap<String, HeldState>>>;

/// The cluster at one moment.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Who may hold shards: the live members and those dead for less than
    /// `node_left_delay` (their shards are not copied elsewhere yet).
    pub candidates: Vec<Candidate>,
    /// Members that are live now.
    pub live: BTreeSet<String>,
    pub holdings: Holdings,
    /// Shards the rebalancer moved: `database/shard` → the members to hold them.
    pub pins: BTreeMap<String, Vec<String>>,
    /// Hashes of the candidates' ids, computed once (a hash depends on the id
    /// alone, so the cache stays right whatever changes in `candidates`).
    pub member_hashes: OnceLock<HashMap<String, u64>>,
    /// Whether each database's copies are spread evenly over the members
    /// after rendezvous places them (`cluster.even_spread`).
    pub even_spread: bool,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub node: String,
    pub database: String,
    pub shard: String,
    pub bytes: u64,
    pub reason: String,
    /// For a trash: the members whose ready copies make this one extra.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready_on: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Copies to make: the node downloads the shard.
    pub downloads: Vec<Action>,
    /// Extra copies the primary may trash now.
    pub trashes: Vec<Action>,
    /// Extra copies kept until the copies that replace them are ready.
    pub waiting: Vec<Action>,
}

impl ClusterState {
    /// A cluster whose candidates are all live and hold nothing yet.
    pub fn new(candidates: Vec<Candidate>) -> ClusterState {
        ClusterState {
            live: candidates.iter().map(|c| c.id.clone()).collect(),
            candidates,
            even_spread: true,
            ..ClusterState::default()
        }
    }

    /// The state of `node`'s copy of a shard.
    pub fn state(&self, node: &str, database: &str, shard: &str) -> Option<HeldState> {
        self.holdings.get(database)?.get(shard)?.get(node).copied()
    }

    /// Records `node`'s copy of a shard.
    pub fn set_state(&mut self, node: &str, database: &str, shard: &str, state: HeldState) {
        self.holdings
            .entry(database.to_string())
            .or_default()
            .entry(shard.to_string())
            .or_default()
            .insert(node.to_string(), state);
    }

    /// Every copy of a shard: member → state.
    pub fn copies(&self, database: &str, shard: &str) -> impl Iterator<Item = (&str, HeldState)> {
        self.holdings
            .get(database)
            .and_then(|d| d.get(shard))
            .into_iter()
            .flatten()
            .map(|(node, state)| (node.as_str(), *state))
    }

    /// Live members with a copy that is or will be served (not trashed or failed).
    fn holders(&self, database: &str, shard: &str) -> BTreeSet<String> {
        self.copies(database, shard)
            .filter(|(node, s)| {
                self.live.contains(*node)
                    && matches!(
                        s,
                        HeldState::Ready | HeldState::Lazy | HeldState::Downloading
                    )
            })
            .map(|(node, _)| node.to_string())
            .collect()
    }

    /// The members placement chooses for each shard of `layout`, best first.
    pub fn placement(&self, layout: &Layout) -> Vec<Vec<String>> {
        let shards: Vec<&str> = layout.shards.iter().map(|(s, _)| s.as_str()).collect();
        self.place(&layout.name, &shards, layout.replicas)
    }

    /// The members placement chooses for each of `shards` (every shard of
    /// `database`: a database's copies are spread evenly together), best
    /// first: rendezvous hashing, evened out (see `spread`), or the
    /// rebalancer's pin while it still fits (as many members as copies wanted,
    /// every one a candidate that can take it).
    pub fn place(&self, database: &str, shards: &[&str], replicas: Replicas) -> Vec<Vec<String>> {
        let hashes = self.member_hashes.get_or_init(|| {
            self.candidates
                .iter()
                .map(|c| (c.id.clone(), stable_hash(&c.id)))
                .collect()
        });
        let member_hash = |id: &str| hashes.get(id).copied().unwrap_or_else(|| stable_hash(id));
        let keys: Vec<String> = shards.iter().map(|s| shard_key(database, s)).collect();
        let holders: Vec<BTreeSet<String>> =
            shards.iter().map(|s| self.holders(database, s)).collect();
        let mut chosen: Vec<Vec<String>> = keys
            .iter()
            .zip(&holders)
            .map(|(key, held)| choose_hashed(key, &self.candidates, replicas, held, member_hash))
            .collect();
        let spread = Shards {
            database,
            keys: &keys,
        };
        if self.even_spread {
            even_out(&spread, &mut chosen, &self.candidates, member_hash);
        }
        for ((key, held), members) in keys.iter().zip(&holders).zip(chosen.iter_mut()) {
            let Some(pinned) = self.pins.get(key) else {
                continue;
            };
            let fits = pinned.len() == members.len()
                && pinned.iter().all(|node| {
                    self.candidates
                        .iter()
                        .any(|c| c.id == *node && c.weight > 0 && (!c.full || held.contains(node)))
                });
            if fits {
                *members = pinned.clone();
            }
        }
        chosen
    }

    /// The members placement chooses for one shard of `database`, whose
    /// shards are `shards`.
    pub fn chosen_for(
        &self,
        database: &str,
        shards: &[&str],
        replicas: Replicas,
        shard: &str,
    ) -> Vec<String> {
        shards
            .iter()
            .position(|s| *s == shard)
            .map(|i| self.place(database, shards, replicas).swap_remove(i))
            .unwrap_or_default()
    }
}

/// Downloads, trashes and waiting extra copies for `layouts` in `cluster`.
pub fn plan(layouts: &[Layout], cluster: &ClusterState) -> Plan {
    let mut plan = Plan::default();
    for layout in layouts {
        let placement = cluster.placement(layout);
        for ((shard, bytes), chosen) in layout.shards.iter().zip(placement) {
            let action = |node: &str, reason: String| Action {
                node: node.to_string(),
                database: layout.name.clone(),
                shard: shard.clone(),
                bytes: *bytes,
                reason,
                ready_on: Vec::new(),
            };
            let mut ready = Vec::new();
            for node in &chosen {
                if !cluster.live.contains(node) {
                    continue;
                }
                let reason = match cluster.state(node, &layout.name, shard) {
                    Some(HeldState::Ready | HeldState::Lazy) => {
                        ready.push(node.as_str());
                        continue;
                    }
                    Some(HeldState::Downloading) => continue,
                    Some(HeldState::Trashed) => "placed here: restore the trashed copy",
                    Some(HeldState::Failed) => "placed here: the last download failed",
                    None => "placed here: no copy yet",
                };
                plan.downloads.push(action(node, reason.to_string()));
            }
            let extra: Vec<String> = cluster
                .holders(&layout.name, shard)
                .into_iter()
                .filter(|node| !chosen.contains(node))
                .collect();
            for node in extra {
                if !chosen.is_empty() && ready.len() == chosen.len() {
                    let reason = format!("extra copy: ready on {}", ready.join(", "));
                    let mut trash = action(&node, reason);
                    trash.ready_on = ready.iter().map(|r| r.to_string()).collect();
                    plan.trashes.push(trash);
                } else {
                    let pending: Vec<&str> = chosen
                        .iter()
                        .map(String::as_str)
                        .filter(|c| !ready.contains(c))
                        .collect();
                    let reason = format!(
                        "extra copy kept until copies on {} are ready",
                        pending.join(", ")
                    );
                    plan.waiting.push(action(&node, reason));
                }
            }
        }
    }
    plan
}

/// Disk use of one member under two replication factors of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUse {
    pub node: String,
    /// Bytes of the database this member holds now (shards and global data).
    pub bytes_now: u64,
    /// Bytes it would hold with the other replication factor.
    pub bytes_after: u64,
}

/// How the bytes of `layout` held per candidate would change with `replicas`.
pub fn what_if(layout: &Layout, cluster: &ClusterState, replicas: Replicas) -> Vec<NodeUse> {
    let mut now: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
    let mut after: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
    for candidate in &cluster.candidates {
        now.insert(&candidate.id, (0, false));
        after.insert(&candidate.id, (0, false));
    }
    let shards: Vec<&str> = layout.shards.iter().map(|(s, _)| s.as_str()).collect();
    let placement = cluster.place(&layout.name, &shards, replicas);
    for ((shard, bytes), chosen) in layout.shards.iter().zip(placement) {
        for node in cluster.holders(&layout.name, shard) {
            if let Some(entry) = now.get_mut(node.as_str()) {
                *entry = (entry.0 + bytes, true);
            }
        }
        for node in chosen {
            if let Some(entry) = after.get_mut(node.as_str()) {
                *entry = (entry.0 + bytes, true);
            }
        }
    }
    let total = |(bytes, any): (u64, bool)| bytes + if any { layout.global_bytes } else { 0 };
    now.iter()
        .map(|(node, held)| NodeUse {
            node: node.to_string(),
            bytes_now: total(*held),
            bytes_after: total(after[node]),
        })
        .collect()
}

/// Clusters for tests: members of one zone and equal weight.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Candidate, ClusterState};

    pub(crate) fn candidate(id: &str) -> Candidate {
        Candidate {
            id: id.to_string(),
            zone: String::new(),
            weight: 1,
            full: false,
        }
    }

    pub(crate) fn cluster(ids: &[&str]) -> ClusterState {
        ClusterState::new(ids.iter().map(|id| candidate(id)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{candidate, cluster};
    use super::*;

    fn layout(shards: usize, replicas: u32) -> Layout {
        Layout {
            name: "db".into(),
            replicas: Replicas::Count(replicas),
            shards: (0..shards).map(|s| (s.to_string(), 100)).collect(),
            global_bytes: 10,
        }
    }

    fn hold(cluster: &mut ClusterState, node: &str, shard: &str, state: HeldState) {
        cluster.set_state(node, "db", shard, state);
    }

    /// Carries out the downloads (as ready copies) and the trashes.
    fn apply(cluster: &mut ClusterState, plan: &Plan) {
        for a in &plan.downloads {
            hold(cluster, &a.node, &a.shard, HeldState::Ready);
        }
        for a in &plan.trashes {
            hold(cluster, &a.node, &a.shard, HeldState::Trashed);
        }
    }

    #[test]
    fn an_empty_cluster_downloads_every_copy_once_and_then_rests() {
        let layouts = [layout(6, 2)];
        let mut state = cluster(&["a", "b", "c", "d"]);
        let first = plan(&layouts, &state);
        assert_eq!(first.downloads.len(), 12);
        assert!(first.trashes.is_empty() && first.waiting.is_empty());
        apply(&mut state, &first);
        assert_eq!(plan(&layouts, &state), Plan::default());
    }

    #[test]
    fn a_join_copies_first_and_trashes_only_once_the_new_copies_are_ready() {
        let layouts = [layout(40, 2)];
        let mut state = cluster(&["a", "b", "c"]);
        let first = plan(&layouts, &state);
        apply(&mut state, &first);
        state.candidates.push(candidate("d"));
        state.live.insert("d".into());
        let join = plan(&layouts, &state);
        assert!(!join.downloads.is_empty());
        // Copies move to d only, about its share (20 of 80), within 20%.
        assert!(join.downloads.iter().all(|a| a.node == "d"), "{join:?}");
        assert!((16..=24).contains(&join.downloads.len()), "{join:?}");
        assert!(
            join.trashes.is_empty(),
            "nothing is trashed before d is ready"
        );
        assert_eq!(join.waiting.len(), join.downloads.len());
        // Copies being made: still nothing to trash, nothing new.
        for a in &join.downloads {
            hold(&mut state, &a.node, &a.shard, HeldState::Downloading);
        }
        let downloading = plan(&layouts, &state);
        assert!(downloading.downloads.is_empty() && downloading.trashes.is_empty());
        for a in &join.downloads {
            hold(&mut state, &a.node, &a.shard, HeldState::Ready);
        }
        let ready = plan(&layouts, &state);
        assert_eq!(ready.trashes.len(), join.downloads.len());
        assert!(ready.trashes.iter().all(|a| a.node != "d"));
        apply(&mut state, &ready);
        assert_eq!(plan(&layouts, &state), Plan::default());
    }

    #[test]
    fn a_leave_within_the_delay_copies_nothing_and_after_it_restores_the_count() {
        let layouts = [layout(20, 2)];
        let mut state = cluster(&["a", "b", "c"]);
        let first = plan(&layouts, &state);
        apply(&mut state, &first);
        // c dies: still a candidate during node_left_delay.
        state.live.remove("c");
        for shards in state.holdings.values_mut() {
            for copies in shards.values_mut() {
                copies.remove("c");
            }
        }
        let within = plan(&layouts, &state);
        assert!(within.downloads.is_empty() && within.trashes.is_empty());
        // After the delay: c's shards get a new copy on a or b.
        state.candidates.retain(|c| c.id != "c");
        let after = plan(&layouts, &state);
        assert!(!after.downloads.is_empty());
        apply(&mut state, &after);
        for (shard, _) in &layouts[0].shards {
            assert_eq!(state.holders("db", shard).len(), 2, "shard {shard}");
        }
    }

    #[test]
    fn extra_copies_wait_for_every_chosen_copy_and_nothing_is_trashed_without_candidates() {
        let layouts = [layout(1, 1)];
        let mut state = cluster(&["a", "b"]);
        let chosen = state.placement(&layouts[0])[0][0].clone();
        let other = if chosen == "a" { "b" } else { "a" };
        hold(&mut state, other, "0", HeldState::Ready);
        hold(&mut state, &chosen, "0", HeldState::Failed);
        let p = plan(&layouts, &state);
        assert_eq!(p.downloads.len(), 1);
        assert_eq!(p.waiting.len(), 1);
        assert!(p.trashes.is_empty());
        // Nobody can take it (zero weight): the only copy stays.
        for c in &mut state.candidates {
            c.weight = 0;
        }
        let p = plan(&layouts, &state);
        assert!(p.trashes.is_empty());
    }

    #[test]
    fn what_if_counts_shards_and_global_data_per_node() {
        let l = layout(12, 1);
        let mut state = cluster(&["a", "b", "c"]);
        let first = plan(std::slice::from_ref(&l), &state);
        apply(&mut state, &first);
        let uses = what_if(&l, &state, Replicas::Count(3));
        assert_eq!(uses.len(), 3);
        // Now: each shard once, global data on every node holding a shard.
        let holding = uses.iter().filter(|u| u.bytes_now > 0).count() as u64;
        assert_eq!(
            uses.iter().map(|u| u.bytes_now).sum::<u64>(),
            12 * 100 + 10 * holding
        );
        for u in &uses {
            assert_eq!(u.bytes_after, 12 * 100 + 10, "{u:?}");
        }
    }
}
