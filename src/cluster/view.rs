//! The cluster as placement sees it, built from gossip and pulled inventories —
//! pure.
//!
//! Candidates are the live members and the members dead for less than
//! `node_left_delay` (so a restart does not start a copy storm); a member's
//! weight is the capacity of its disks, and it is full when every disk is past
//! its high watermark. Holdings come from the inventories of live members.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::membership::Member;
use crate::local::Inventory;
use crate::placement::Candidate;
use crate::placement::plan::{ClusterState, Holdings};

/// Capacity unit of a weight: weights stay far from overflow and equal disks
/// weigh the same whatever their last bytes.
const WEIGHT_UNIT: u64 = 1 << 20;

/// Builds the cluster state. `dead_since` (member → first seen dead) is kept by
/// the caller between rounds and updated here.
pub fn cluster_state(
    members: &[Member],
    inventories: &[Inventory],
    pins: BTreeMap<String, Vec<String>>,
    dead_since: &mut HashMap<String, u64>,
    now_ms: u64,
    node_left_delay_ms: u64,
) -> ClusterState {
    let live: BTreeSet<String> = members
        .iter()
        .filter(|m| m.live)
        .map(|m| m.id.clone())
        .collect();
    // A member that restarted is listed live (new generation) and dead (old).
    let dead: BTreeSet<&str> = members
        .iter()
        .filter(|m| !m.live && !live.contains(&m.id))
        .map(|m| m.id.as_str())
        .collect();
    dead_since.retain(|id, _| dead.contains(id.as_str()));
    for id in &dead {
        dead_since.entry(id.to_string()).or_insert(now_ms);
    }
    // A member that has just restarted has not gossiped its disks yet: its
    // previous generation's stand in, so that it stays a candidate of the
    // same weight (a restart moves no copy, not even for a round).
    let mut last_disks: HashMap<&str, &Member> = HashMap::new();
    for member in members.iter().filter(|m| !m.disks.is_empty()) {
        last_disks.entry(member.id.as_str()).or_insert(member);
    }
    let mut candidates = Vec::new();
    let mut seen = BTreeSet::new();
    for member in members {
        let recently_dead = dead_since
            .get(&member.id)
            .is_some_and(|since| now_ms.saturating_sub(*since) < node_left_delay_ms);
        let with_disks = if member.disks.is_empty() && member.live {
            last_disks.get(member.id.as_str()).copied()
        } else {
            Some(member)
        };
        let Some(with_disks) = with_disks.filter(|m| !m.disks.is_empty()) else {
            continue;
        };
        if !(member.live || recently_dead) {
            continue;
        }
        if !seen.insert(member.id.clone()) {
            continue;
        }
        let capacity: u64 = with_disks.disks.values().map(|d| d.capacity).sum();
        candidates.push(Candidate {
            id: member.id.clone(),
            zone: member
                .node
                .as_ref()
                .map(|n| n.zone.clone())
                .unwrap_or_default(),
            weight: (capacity / WEIGHT_UNIT).max(1),
            full: with_disks.disks.values().all(|d| d.full),
        });
    }
    let mut holdings = Holdings::new();
    for inventory in inventories.iter().filter(|i| live.contains(&i.node)) {
        for (name, database) in &inventory.databases {
            let shards = holdings.entry(name.clone()).or_default();
            for (shard, part) in &database.shards {
                let state = if database.state == crate::catalog::DbState::Trashed {
                    crate::placement::HeldState::Trashed
                } else {
                    part.state
                };
                shards
                    .entry(shard.clone())
                    .or_default()
                    .insert(inventory.node.clone(), state);
            }
        }
    }
    ClusterState {
        candidates,
        live,
        holdings,
        pins,
        member_hashes: Default::default(),
        even_spread: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::DiskSummary;

    fn member(id: &str, live: bool, capacity: u64, full: bool) -> Member {
        Member {
            id: id.into(),
            live,
            is_self: false,
            gossip: String::new(),
            node: None,
            disks: BTreeMap::from([(
                "0".to_string(),
                DiskSummary {
                    capacity,
                    full,
                    ..DiskSummary::default()
                },
            )]),
            inventory: None,
            registry: None,
            primary: None,
            load: None,
            leaving: false,
            gossip_bytes: 0,
        }
    }

    #[test]
    fn dead_members_stay_candidates_for_the_delay_only() {
        let mut dead_since = HashMap::new();
        let members = [
            member("a", true, 100 << 20, false),
            member("b", false, 100 << 20, false),
            member("c", true, 300 << 20, true),
            // c restarted: its old generation is listed dead too.
            member("c", false, 300 << 20, true),
        ];
        let state = cluster_state(&members, &[], BTreeMap::new(), &mut dead_since, 1_000, 500);
        let ids: Vec<&str> = state.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(dead_since.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(state.candidates[2].weight, 300);
        assert!(state.candidates[2].full);
        let later = cluster_state(&members, &[], BTreeMap::new(), &mut dead_since, 1_600, 500);
        let ids: Vec<&str> = later.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"], "b left more than the delay ago");
        // c restarted a moment ago: its new generation has gossiped no disk
        // yet; it stays a candidate, with its old generation's weight.
        let mut fresh = member("c", true, 0, false);
        fresh.disks.clear();
        let restarted = [
            member("a", true, 100 << 20, false),
            fresh,
            member("c", false, 300 << 20, false),
        ];
        let state = cluster_state(
            &restarted,
            &[],
            BTreeMap::new(),
            &mut HashMap::new(),
            0,
            500,
        );
        let ids: Vec<&str> = state.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(state.candidates[1].weight, 300);
        // b back: forgotten as dead.
        let back = [member("b", true, 1, false)];
        cluster_state(&back, &[], BTreeMap::new(), &mut dead_since, 1_700, 500);
        assert!(dead_since.is_empty());
    }
}
