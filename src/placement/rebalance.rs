//! The rebalancer — pure.
//!
//! Rendezvous hashing spreads shards in proportion to capacity, but shards differ
//! in size: some members fill faster. The rebalancer moves copies from the member
//! whose disks are fullest (above the mean use of the members that are not past
//! their watermark; those are always sources) to the emptiest one below it that
//! holds no copy of the shard, largest shard first, as long as the move leaves
//! the target no fuller than the source (so moves never go back and forth). A move
//! is a pin: the shard's chosen members with the source replaced by the target.
//! The target loads its copy like any placed shard; the primary trashes the
//! source's copy only once the target's is ready.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::HeldState;
use super::plan::{ClusterState, Layout};
use super::shard_key;
use super::spread::rebalance_limits;

/// One member's disk use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub node: String,
    /// Bytes dram uses on its disks.
    pub used: u64,
    /// Bytes dram may fill.
    pub capacity: u64,
}

/// One copy to move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub database: String,
    pub shard: String,
    pub bytes: u64,
    pub from: String,
    pub to: String,
    /// The members that hold the shard once the move is done (its pin).
    pub nodes: Vec<String>,
    pub reason: String,
}

impl Move {
    /// The pin key of the moved shard.
    pub fn key(&self) -> String {
        shard_key(&self.database, &self.shard)
    }
}

fn ratio(used: u64, capacity: u64) -> f64 {
    used as f64 / capacity.max(1) as f64
}

/// What the rebalancer reads of the cluster while it plans.
struct Scan<'a> {
    layouts: &'a [Layout],
    cluster: &'a ClusterState,
    /// Live candidates that can take shards: (used, capacity), updated per move.
    used: BTreeMap<String, (u64, u64)>,
    full: BTreeSet<&'a str>,
    mean: f64,
    /// Shards already moved in this pass.
    moved: BTreeSet<String>,
    /// Each member's placed copies (layout index, shard index, chosen members),
    /// computed once per pass.
    placed: HashMap<String, Vec<Placed>>,
    /// Copies of each database (by layout index) per member, and the most each
    /// member may hold (`spread::rebalance_limits`): a move never leaves a
    /// member with more than 1.2 times its share of a database.
    counts: HashMap<(usize, String), usize>,
    bounds: Vec<HashMap<String, usize>>,
}

/// A member that may take a copy: its use ratio, id, used and capacity.
type Target<'b> = (f64, &'b String, u64, u64);

/// A placed copy: layout index, shard index, the shard's chosen members.
type Placed = (usize, usize, std::rc::Rc<Vec<String>>);

/// A copy found to move: database (layout index), shard, bytes, its chosen
/// members and the target.
type Found = (usize, String, u64, Vec<String>, String);

impl<'a> Scan<'a> {
    fn state(&self, node: &str, database: &str, shard: &str) -> Option<HeldState> {
        self.cluster.state(node, database, shard)
    }

    /// The largest ready copy on `source` that some member below the mean can
    /// take without ending up fuller than the source.
    fn find(&self, source: &str, targets: &[Target<'_>]) -> Option<Found> {
        let (source_used, source_capacity) = self.used[source];
        let mut copies: Vec<(usize, &'a str, u64, Vec<String>)> = Vec::new();
        for (l, s, chosen) in self.placed.get(source).into_iter().flatten() {
            let layout = &self.layouts[*l];
            let (shard, bytes) = &layout.shards[*s];
            if *bytes == 0 || self.moved.contains(&shard_key(&layout.name, shard)) {
                continue;
            }
            if self.state(source, &layout.name, shard) == Some(HeldState::Ready) {
                copies.push((*l, shard, *bytes, chosen.as_ref().clone()));
            }
        }
        copies.sort_by(|a, b| {
            b.2.cmp(&a.2)
                .then_with(|| (&self.layouts[a.0].name, a.1).cmp(&(&self.layouts[b.0].name, b.1)))
        });
        for (l, shard, bytes, chosen) in copies {
            let layout = &self.layouts[l];
            let source_after = ratio(source_used.saturating_sub(bytes), source_capacity);
            for (now, target, target_used, target_capacity) in targets {
                if *now > source_after {
                    // Every later target is fuller still.
                    break;
                }
                let holds = matches!(
                    self.state(target, &layout.name, shard),
                    Some(HeldState::Ready | HeldState::Lazy | HeldState::Downloading)
                );
                if target.as_str() == source || chosen.contains(target) || holds {
                    continue;
                }
                let count = self
                    .counts
                    .get(&(l, target.to_string()))
                    .copied()
                    .unwrap_or(0);
                if count >= self.bounds[l].get(*target).copied().unwrap_or(usize::MAX) {
                    continue;
                }
                if ratio(target_used + bytes, *target_capacity) <= source_after {
                    return Some((l, shard.to_string(), bytes, chosen, (*target).clone()));
                }
            }
        }
        None
    }
}

/// At most `limit` moves that even out disk use, taken only off members whose
/// use is more than `threshold` (a fraction of capacity) above the mean.
pub fn rebalance(
    layouts: &[Layout],
    cluster: &ClusterState,
    usage: &[Usage],
    limit: usize,
    threshold: f64,
) -> Vec<Move> {
    let open: BTreeSet<&str> = cluster
        .candidates
        .iter()
        .filter(|c| c.weight > 0 && cluster.live.contains(&c.id))
        .map(|c| c.id.as_str())
        .collect();
    let used: BTreeMap<String, (u64, u64)> = usage
        .iter()
        .filter(|u| u.capacity > 0 && open.contains(u.node.as_str()))
        .map(|u| (u.node.clone(), (u.used, u.capacity)))
        .collect();
    let full: BTreeSet<&str> = cluster
        .candidates
        .iter()
        .filter(|c| c.full)
        .map(|c| c.id.as_str())
        .collect();
    // The mean over the members that can take shards: a full member is always
    // a source, never a target.
    let (total_used, total_capacity) = used
        .iter()
        .filter(|(node, _)| !full.contains(node.as_str()))
        .fold((0u64, 0u64), |(u, c), (_, (du, dc))| (u + du, c + dc));
    let mut scan = Scan {
        layouts,
        cluster,
        used,
        full,
        mean: ratio(total_used, total_capacity),
        moved: BTreeSet::new(),
        placed: HashMap::new(),
        counts: HashMap::new(),
        bounds: Vec::new(),
    };
    let mut moves = Vec::new();
    while moves.len() < limit {
        // Sources above the mean, fullest first; the first with a copy to move.
        let mut sources: Vec<(String, f64)> = scan
            .used
            .iter()
            .map(|(node, (u, c))| (node.clone(), ratio(*u, *c)))
            .filter(|(_, r)| *r > scan.mean + threshold)
            .collect();
        sources.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if sources.is_empty() {
            break;
        }
        if scan.placed.is_empty() {
            // Who holds what: once per pass, and only when something may move.
            for (l, layout) in layouts.iter().enumerate() {
                let placement = cluster.placement(layout);
                let copies = placement.iter().map(Vec::len).sum();
                // Without the even spread, no bound per database (the
                // rebalancer weighs bytes alone, as rendezvous placed them).
                let bounds = match cluster.even_spread {
                    true => rebalance_limits(&cluster.candidates, copies)
                        .into_iter()
                        .map(|(id, bound)| (id.to_string(), bound))
                        .collect(),
                    false => HashMap::new(),
                };
                scan.bounds.push(bounds);
                for (s, chosen) in placement.into_iter().enumerate() {
                    let chosen = std::rc::Rc::new(chosen);
                    for node in chosen.iter() {
                        *scan.counts.entry((l, node.clone())).or_default() += 1;
                        scan.placed
                            .entry(node.clone())
                            .or_default()
                            .push((l, s, chosen.clone()));
                    }
                }
            }
        }
        // Members below the mean that can take shards, emptiest first.
        let mut targets: Vec<Target<'_>> = scan
            .used
            .iter()
            .filter(|(node, (u, c))| {
                !scan.full.contains(node.as_str()) && ratio(*u, *c) < scan.mean
            })
            .map(|(node, (u, c))| (ratio(*u, *c), node, *u, *c))
            .collect();
        targets.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let found = sources
            .into_iter()
            .find_map(|(source, _)| scan.find(&source, &targets).map(|found| (source, found)));
        let Some((source, (l, shard, bytes, chosen, target))) = found else {
            break;
        };
        let layout = &layouts[l];
        if let Some(count) = scan.counts.get_mut(&(l, source.clone())) {
            *count = count.saturating_sub(1);
        }
        *scan.counts.entry((l, target.clone())).or_default() += 1;
        let (s_used, s_capacity) = scan.used[&source];
        let (t_used, t_capacity) = scan.used[&target];
        let reason = format!(
            "{source} uses {:.0}% of its capacity, {target} {:.0}% (mean {:.0}%)",
            ratio(s_used, s_capacity) * 100.0,
            ratio(t_used, t_capacity) * 100.0,
            scan.mean * 100.0
        );
        let nodes: Vec<String> = chosen
            .iter()
            .map(|n| {
                if *n == source {
                    target.clone()
                } else {
                    n.clone()
                }
            })
            .collect();
        scan.moved.insert(shard_key(&layout.name, &shard));
        if let Some(entry) = scan.used.get_mut(&source) {
            entry.0 = entry.0.saturating_sub(bytes);
        }
        if let Some(entry) = scan.used.get_mut(&target) {
            entry.0 += bytes;
        }
        moves.push(Move {
            database: layout.name.clone(),
            shard,
            bytes,
            from: source,
            to: target,
            nodes,
            reason,
        });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::plan::fixtures::cluster;
    use crate::records::Replicas;

    /// Places every shard where `chosen` says, ready, and returns the use.
    fn settle(layouts: &[Layout], state: &mut ClusterState) -> Vec<Usage> {
        state.holdings.clear();
        let mut used: BTreeMap<String, u64> = BTreeMap::new();
        for layout in layouts {
            let placement = state.placement(layout);
            for ((shard, bytes), chosen) in layout.shards.iter().zip(placement) {
                for node in chosen {
                    state.set_state(&node, &layout.name, shard, HeldState::Ready);
                    *used.entry(node).or_default() += bytes;
                }
            }
        }
        state
            .candidates
            .iter()
            .map(|c| Usage {
                node: c.id.clone(),
                used: used.get(&c.id).copied().unwrap_or(0),
                capacity: 1_000,
            })
            .collect()
    }

    #[test]
    fn moves_even_out_use_and_then_stop() {
        // One huge shard and many small ones, two copies each, on four members.
        let mut shards: Vec<(String, u64)> = vec![("big".into(), 300)];
        shards.extend((0..30).map(|s| (format!("s{s}"), 10)));
        let layouts = [Layout {
            name: "db".into(),
            replicas: Replicas::Count(2),
            shards,
            global_bytes: 0,
        }];
        let mut state = cluster(&["a", "b", "c", "d"]);
        let spread = |usage: &[Usage]| {
            let max = usage.iter().map(|u| u.used).max().unwrap();
            let min = usage.iter().map(|u| u.used).min().unwrap();
            max - min
        };
        let mut usage = settle(&layouts, &mut state);
        let before = spread(&usage);
        for round in 0..100 {
            let moves = rebalance(&layouts, &state, &usage, 2, 0.0);
            if moves.is_empty() {
                break;
            }
            assert!(round < 99, "the rebalancer never stops");
            for m in moves {
                assert_ne!(m.from, m.to);
                assert!(m.nodes.contains(&m.to) && !m.nodes.contains(&m.from));
                state.pins.insert(m.key(), m.nodes);
            }
            let next = settle(&layouts, &mut state);
            assert!(spread(&next) <= spread(&usage).max(before), "round {round}");
            usage = next;
        }
        // Balanced within the largest movable shard once it stops.
        assert!(spread(&usage) <= 300, "{usage:?}");
        assert!(
            spread(&usage) < before || before <= 10,
            "{before} → {usage:?}"
        );
        // Every shard still has its two copies on two members.
        for chosen in state.placement(&layouts[0]) {
            assert_eq!(chosen.len(), 2);
            assert_ne!(chosen[0], chosen[1]);
        }
    }

    #[test]
    fn all_shards_on_one_member_are_split_evenly_and_full_members_take_none() {
        let layouts = [Layout {
            name: "db".into(),
            replicas: Replicas::Count(1),
            shards: (0..6).map(|s| (s.to_string(), 100)).collect(),
            global_bytes: 0,
        }];
        let mut state = cluster(&["a", "b", "c"]);
        for (shard, _) in &layouts[0].shards {
            state.pins.insert(shard_key("db", shard), vec!["a".into()]);
        }
        // c is past its watermark (other data fills it): it takes nothing.
        state.candidates[2].full = true;
        let with_c_full = |mut usage: Vec<Usage>| {
            usage[2].used = 950;
            usage
        };
        let mut usage = with_c_full(settle(&layouts, &mut state));
        loop {
            let moves = rebalance(&layouts, &state, &usage, 4, 0.0);
            if moves.is_empty() {
                break;
            }
            assert!(
                moves.iter().all(|m| m.from == "a" && m.to == "b"),
                "{moves:?}"
            );
            for m in moves {
                state.pins.insert(m.key(), m.nodes);
            }
            usage = with_c_full(settle(&layouts, &mut state));
        }
        let used: Vec<u64> = usage.iter().map(|u| u.used).collect();
        assert_eq!(used, [300, 300, 950]);
        // Within the threshold of the mean: nothing moves.
        assert!(rebalance(&layouts, &state, &usage, 4, 0.0).is_empty());
        usage[0].used += 50;
        assert!(rebalance(&layouts, &state, &usage, 4, 0.1).is_empty());
    }
}
