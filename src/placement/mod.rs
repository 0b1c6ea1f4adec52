//! Placement: which members should hold each shard — pure.
//!
//! Weighted rendezvous (highest-random-weight) hashing: every (shard, member) pair
//! gets a score `weight / -ln(u)`, with `u` in (0, 1) drawn from the pair (sha256
//! of the shard key and of the member id, mixed by splitmix64: stable across
//! builds and machines, and one sha256 per shard and per member rather than per
//! pair); the shard goes to the best-scored
//! members. A member's chance to win a shard is proportional to its weight (disk
//! capacity), a join moves only the shards the newcomer now wins, and a leave
//! moves only the leaver's. Copies spread over zones first: the best member of
//! each zone, zones in the order of their best score, then the best of the rest.
//! A member whose disks are past their high watermark takes no new shard, but
//! keeps those it holds — unless every member is full: then the shard is placed
//! as if none were, and the load fails visibly ("no room") instead of the
//! shard silently having no copy.
//!
//! `spread`: the copies of one database evened out over the members;
//! `plan`: the downloads, trashes and waiting extra copies that follow from it;
//! `rebalance`: moves that even out disk use.

pub mod inventory;
pub mod plan;
pub mod rebalance;
mod spread;

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};

use sha2::{Digest, Sha256};

use serde::{Deserialize, Serialize};

use crate::records::Replicas;

/// The state of one part (shard or global data) on one member, as its
/// inventory says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeldState {
    Downloading,
    Ready,
    Lazy,
    Failed,
    Trashed,
}

impl HeldState {
    /// Whether a query may use this copy.
    pub fn is_serving(self) -> bool {
        matches!(self, HeldState::Ready | HeldState::Lazy)
    }
}

/// A member that may hold shards.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    /// Failure domain; `""` is a zone of its own like any other.
    pub zone: String,
    /// Relative capacity (e.g. bytes of its disks). Zero takes nothing.
    pub weight: u64,
    /// Past its high watermark: keeps what it holds, takes nothing new.
    pub full: bool,
}

/// The key a shard is placed by.
pub fn shard_key(database: &str, shard: &str) -> String {
    format!("{database}/{shard}")
}

/// A stable 64-bit hash of `text`: the first 8 bytes of its sha256.
pub fn stable_hash(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// splitmix64's finalizer: a bijection that scatters every input bit.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The score of a member (by the hash of its id) for a key (by its hash).
fn score_hashed(key_hash: u64, member_hash: u64, weight: u64) -> f64 {
    if weight == 0 {
        return f64::NEG_INFINITY;
    }
    let mixed = splitmix64(key_hash ^ splitmix64(member_hash));
    // 53 random bits, shifted off zero: u in (0, 1).
    let u = ((mixed >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight as f64 / -u.ln()
}

/// The rendezvous score of `member` for `key`: higher wins.
pub fn score(key: &str, member: &str, weight: u64) -> f64 {
    score_hashed(stable_hash(key), stable_hash(member), weight)
}

/// [`score`] for a key hashed once ([`stable_hash`]) and scored against
/// several members.
pub fn score_of_hashed(key_hash: u64, member: &str, weight: u64) -> f64 {
    score_hashed(key_hash, stable_hash(member), weight)
}

/// Copies wanted of each shard: `Count(n)`, or every member for `All`.
pub fn wanted(replicas: Replicas, members: usize) -> usize {
    match replicas {
        Replicas::Count(n) => (n as usize).min(members),
        Replicas::All(_) => members,
    }
}

/// The members that should hold the shard `key`, best first. `holding` lists the
/// members that hold it now (a full member keeps its copy).
pub fn choose(
    key: &str,
    candidates: &[Candidate],
    replicas: Replicas,
    holding: &BTreeSet<String>,
) -> Vec<String> {
    choose_hashed(key, candidates, replicas, holding, stable_hash)
}

/// `choose`, with the members' hashes from `member_hash` (a cache, when many
/// shards are placed over the same members).
pub(crate) fn choose_hashed(
    key: &str,
    candidates: &[Candidate],
    replicas: Replicas,
    holding: &BTreeSet<String>,
    member_hash: impl Fn(&str) -> u64,
) -> Vec<String> {
    let key_hash = stable_hash(key);
    let open = |c: &&Candidate| c.weight > 0 && (!c.full || holding.contains(&c.id));
    let all_full = !candidates.iter().any(|c| open(&c));
    let mut ranked: Vec<(f64, &Candidate)> = candidates
        .iter()
        .filter(|c| c.weight > 0 && (all_full || open(c)))
        .map(|c| (score_hashed(key_hash, member_hash(&c.id), c.weight), c))
        .collect();
    // Best first: higher score, then smaller id.
    let better = |a: &(f64, &Candidate), b: &(f64, &Candidate)| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.1.id.cmp(&b.1.id))
    };
    let count = wanted(replicas, ranked.len());
    if count == 0 {
        return Vec::new();
    }
    // First the best member of each zone, zones in the order of their best;
    // then the best of the others. Linear in the members but for the sorts of
    // the few picked (a full sort only for "all").
    let mut zone_best: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in ranked.iter().enumerate() {
        let best = zone_best.entry(entry.1.zone.as_str()).or_insert(i);
        if better(entry, &ranked[*best]) == Ordering::Less {
            *best = i;
        }
    }
    let mut firsts: Vec<usize> = zone_best.into_values().collect();
    firsts.sort_by(|a, b| better(&ranked[*a], &ranked[*b]));
    firsts.truncate(count);
    let mut chosen: Vec<String> = firsts.iter().map(|i| ranked[*i].1.id.clone()).collect();
    let need = count - chosen.len();
    if need > 0 {
        let taken: HashSet<usize> = firsts.into_iter().collect();
        let mut rest: Vec<(f64, &Candidate)> = ranked
            .drain(..)
            .enumerate()
            .filter(|(i, _)| !taken.contains(i))
            .map(|(_, entry)| entry)
            .collect();
        if need < rest.len() {
            rest.select_nth_unstable_by(need - 1, better);
            rest.truncate(need);
        }
        rest.sort_by(better);
        chosen.extend(rest.into_iter().map(|(_, c)| c.id.clone()));
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    fn members(n: usize, weight: impl Fn(usize) -> u64) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: format!("node-{i:03}"),
                zone: String::new(),
                weight: weight(i),
                full: false,
            })
            .collect()
    }

    fn place(keys: &[String], candidates: &[Candidate], replicas: u32) -> Vec<Vec<String>> {
        keys.iter()
            .map(|k| choose(k, candidates, Replicas::Count(replicas), &BTreeSet::new()))
            .collect()
    }

    /// Copies that changed holder between two placements.
    fn moved(before: &[Vec<String>], after: &[Vec<String>]) -> usize {
        before
            .iter()
            .zip(after)
            .map(|(b, a)| a.iter().filter(|m| !b.contains(m)).count())
            .sum()
    }

    #[test]
    fn joins_and_leaves_move_about_their_share_and_nothing_else() {
        let mut rng = StdRng::seed_from_u64(5);
        let (mut moved_total, mut ideal_total) = (0.0, 0.0);
        for cluster in 0..1_000 {
            let n = rng.random_range(2..16);
            let replicas = rng.random_range(1..=3.min(n as u32));
            let weights: Vec<u64> = (0..=n).map(|_| rng.random_range(1..4) * 100).collect();
            let all = members(n + 1, |i| weights[i]);
            let before_join = &all[..n];
            let keys: Vec<String> = (0..64)
                .map(|s| shard_key(&format!("db{cluster}"), &s.to_string()))
                .collect();
            let before = place(&keys, before_join, replicas);
            let after = place(&keys, &all, replicas);
            // A join: every copy that moved went to the newcomer.
            for (b, a) in before.iter().zip(&after) {
                for member in a.iter().filter(|m| !b.contains(m)) {
                    assert_eq!(
                        member, &all[n].id,
                        "cluster {cluster}: a copy moved between old members"
                    );
                }
            }
            let share = weights[n] as f64 / weights.iter().sum::<u64>() as f64;
            moved_total += moved(&before, &after) as f64;
            ideal_total += share * (keys.len() * replicas as usize) as f64;
            // A leave: only the leaver's copies move.
            let leaver = rng.random_range(0..=n);
            let rest: Vec<Candidate> = all
                .iter()
                .filter(|c| c.id != all[leaver].id)
                .cloned()
                .collect();
            let after_leave = place(&keys, &rest, replicas);
            let held_by_leaver = after.iter().filter(|h| h.contains(&all[leaver].id)).count();
            assert_eq!(
                moved(&after, &after_leave),
                held_by_leaver,
                "cluster {cluster}"
            );
        }
        let ratio = moved_total / ideal_total;
        assert!(ratio < 1.2, "joins moved {ratio:.3}× the ideal share");
    }

    #[test]
    fn equal_weights_balance_within_ten_percent_and_weights_count() {
        let candidates = members(10, |_| 1);
        let keys: Vec<String> = (0..20_000)
            .map(|s| shard_key("db", &s.to_string()))
            .collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for holders in place(&keys, &candidates, 2) {
            assert_eq!(holders.len(), 2);
            assert_ne!(holders[0], holders[1]);
            for holder in holders {
                *counts.entry(holder).or_default() += 1;
            }
        }
        let mean = 40_000.0 / 10.0;
        for (member, count) in &counts {
            let off = (*count as f64 - mean).abs() / mean;
            assert!(off < 0.10, "{member} holds {count}, {off:.3} off the mean");
        }
        // Double weight, about double the shards.
        let candidates = members(4, |i| if i == 0 { 2 } else { 1 });
        let firsts = place(&keys, &candidates, 1);
        let heavy = firsts.iter().filter(|h| h[0] == "node-000").count() as f64;
        assert!((heavy / 20_000.0 - 0.4).abs() < 0.02, "{heavy}");
    }

    #[test]
    fn copies_spread_over_zones_and_full_members_keep_but_take_nothing() {
        let mut candidates = members(6, |_| 1);
        for (i, c) in candidates.iter_mut().enumerate() {
            c.zone = ["a", "b", "c"][i % 3].to_string();
        }
        for s in 0..500 {
            let key = shard_key("db", &s.to_string());
            let holders = choose(&key, &candidates, Replicas::Count(3), &BTreeSet::new());
            let zones: BTreeSet<&str> = holders
                .iter()
                .map(|h| {
                    candidates
                        .iter()
                        .find(|c| &c.id == h)
                        .unwrap()
                        .zone
                        .as_str()
                })
                .collect();
            assert_eq!(zones.len(), 3, "one copy per zone: {holders:?}");
            // More copies than zones: the rest go to the best remaining members.
            assert_eq!(
                choose(&key, &candidates, Replicas::Count(5), &BTreeSet::new()).len(),
                5
            );
        }
        let mut full = members(3, |_| 1);
        full[0].full = true;
        for s in 0..200 {
            let key = shard_key("db", &s.to_string());
            let fresh = choose(&key, &full, Replicas::Count(1), &BTreeSet::new());
            assert_ne!(fresh[0], "node-000", "a full member takes nothing new");
            let kept = choose(
                &key,
                &full,
                Replicas::Count(3),
                &BTreeSet::from(["node-000".to_string()]),
            );
            assert!(
                kept.contains(&"node-000".to_string()),
                "but keeps what it holds"
            );
        }
        let all = choose(
            "db/0",
            &full,
            Replicas::All(crate::records::AllReplicas::All),
            &BTreeSet::new(),
        );
        assert_eq!(all.len(), 2, "all = every member that can take it");
        assert!(
            choose(
                "db/0",
                &members(2, |_| 0),
                Replicas::Count(1),
                &BTreeSet::new()
            )
            .is_empty()
        );
        // Everyone full: placed anyway, so the load fails visibly.
        for c in &mut full {
            c.full = true;
        }
        assert_eq!(
            choose("db/0", &full, Replicas::Count(2), &BTreeSet::new()).len(),
            2
        );
    }

    const PINNED: [&str; 3] = ["2.597438532", "1.061803332", "4.404739442"];

    #[test]
    fn scores_are_stable() {
        // Pinned values: if these change, every upgrade would move shards.
        let pinned = [
            score("db/a", "n1", 1),
            score("db/a", "n2", 1),
            score("sales/7", "n1", 3),
        ];
        assert_eq!(format!("{:.9}", pinned[0]), PINNED[0]);
        assert_eq!(format!("{:.9}", pinned[1]), PINNED[1]);
        assert_eq!(format!("{:.9}", pinned[2]), PINNED[2]);
        let a = score("sales/0", "node-1", 100);
        let b = score("sales/0", "node-1", 200);
        assert!((b / a - 2.0).abs() < 1e-9, "score scales with weight");
        assert_eq!(
            choose(
                "sales/0",
                &members(5, |_| 1),
                Replicas::Count(2),
                &BTreeSet::new()
            ),
            choose(
                "sales/0",
                &members(5, |_| 1),
                Replicas::Count(2),
                &BTreeSet::new()
            )
        );
    }
}
