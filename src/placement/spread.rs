//! Even spread of one database's copies — pure.
//!
//! Rendezvous hashing places each shard on its own, so a database of a few
//! shards can land unevenly (6 shards on 3 equal members: 4/1/1), and every
//! query of it then waits on the member holding most. As Elasticsearch balances
//! the shards of one index before bytes, placement bounds each member's copies
//! of a database: copies spread over zones first (as rendezvous placed them),
//! then each zone's copies are shared among its members by weight. A member's
//! bound is its exact quota — its share rounded down, and one more for the
//! largest remainders (ties by their rendezvous score for the database) until
//! the quotas add up — or 1.2 times its share, rounded down, when that is
//! more: 6 shards on 3 equal members land 2/2/2 and 7 land 3/2/2, while a
//! large database is only kept within 20% of even, so that a join or a leave
//! churns few copies. This is consistent hashing with bounded loads (Mirrokni,
//! Thorup and Zadimoghaddam, 2018).
//!
//! A member over its bound gives up its weakest claims until it is within it;
//! each goes to the best-scored member under its bound that does not take a
//! zone's only copy away. The result depends on the members and the shards
//! alone, never on who holds what: a plan does not change while its copies
//! are made (measured in the tests and the scale model).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

use super::{Candidate, score_hashed, stable_hash};

/// A member may hold this much more than its share of a database's copies
/// (1.2: 20% more, rounded down) before it gives copies up — and the
/// rebalancer may fill it that far (rounded up), to even out disk use.
pub(crate) const SLACK: (u128, u128) = (6, 5);

/// One database's shards as the spread sees them.
pub(crate) struct Shards<'a> {
    /// The database's name: which members get the copies left over after
    /// rounding down depends on it (not the same members for every database).
    pub database: &'a str,
    /// The placement key of each shard.
    pub keys: &'a [String],
}

/// The members whose share counts: those that can take copies (weight, not
/// past their watermark); with none, every member with weight.
fn counted(candidates: &[Candidate]) -> Vec<&Candidate> {
    let open: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.weight > 0 && !c.full)
        .collect();
    if open.is_empty() {
        candidates.iter().filter(|c| c.weight > 0).collect()
    } else {
        open
    }
}

/// Each counted member's quota of `copies` of a database of `shards` shards:
/// its share by weight rounded down, plus one for the largest remainders
/// (ties: the member's rendezvous score for the database) until the quotas
/// add up to `copies`. A member holds at most one copy of a shard: a share
/// above `shards` is cut to it and the rest shared among the others.
fn quotas<'c>(
    counted: &[&'c Candidate],
    copies: usize,
    shards: usize,
    database: &str,
    member_hash: &impl Fn(&str) -> u64,
) -> HashMap<&'c str, usize> {
    let mut quotas: HashMap<&str, usize> = HashMap::new();
    let mut rest: Vec<&Candidate> = counted.to_vec();
    let mut left = copies;
    loop {
        let total: u128 = rest.iter().map(|c| u128::from(c.weight)).sum();
        let (full, open): (Vec<&Candidate>, Vec<&Candidate>) = rest
            .iter()
            .partition(|c| left as u128 * u128::from(c.weight) > shards as u128 * total);
        if full.is_empty() || open.is_empty() {
            break;
        }
        for c in full {
            quotas.insert(c.id.as_str(), shards);
            left = left.saturating_sub(shards);
        }
        rest = open;
    }
    let total: u128 = rest.iter().map(|c| u128::from(c.weight)).sum();
    if total == 0 {
        return quotas;
    }
    let database_hash = stable_hash(database);
    let mut remainders: Vec<(u128, f64, &str)> = Vec::new();
    let mut given = 0usize;
    for c in rest {
        let share = left as u128 * u128::from(c.weight);
        let floor = ((share / total) as usize).min(shards);
        given += floor;
        quotas.insert(c.id.as_str(), floor);
        let score = score_hashed(database_hash, member_hash(&c.id), c.weight);
        remainders.push((share % total, score, c.id.as_str()));
    }
    remainders.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal))
            .then_with(|| a.2.cmp(b.2))
    });
    for (_, _, id) in remainders.into_iter().take(left.saturating_sub(given)) {
        let quota = quotas.get_mut(id).expect("counted");
        *quota = (*quota + 1).min(shards);
    }
    quotas
}

/// The most copies of a database (`copies` in all) the rebalancer lets each
/// member hold: its share by weight and `SLACK`, rounded up.
pub(crate) fn rebalance_limits(candidates: &[Candidate], copies: usize) -> HashMap<&str, usize> {
    let counted = counted(candidates);
    let total: u128 = counted.iter().map(|c| u128::from(c.weight)).sum();
    let (num, den) = SLACK;
    counted
        .into_iter()
        .map(|c| {
            let limit = (copies as u128 * u128::from(c.weight) * num).div_ceil(total.max(1) * den);
            (c.id.as_str(), limit as usize)
        })
        .collect()
}

/// Evens out `chosen` (each shard's members, best first, as rendezvous chose
/// them) so that no member holds more copies than its quota.
pub(crate) fn even_out(
    shards: &Shards<'_>,
    chosen: &mut [Vec<String>],
    candidates: &[Candidate],
    member_hash: impl Fn(&str) -> u64,
) {
    let counted = counted(candidates);
    // Each member's copies: how many, and of which shards.
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut held_by: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, members) in chosen.iter().enumerate() {
        for member in members {
            *counts.entry(member.clone()).or_default() += 1;
            held_by.entry(member.clone()).or_default().push(i);
        }
    }
    // Copies spread over zones first (rendezvous did that): each zone's
    // copies are shared among its members. Copies on members that take
    // nothing new stay there, outside the bounds.
    let mut zones: HashMap<&str, (usize, Vec<&Candidate>)> = HashMap::new();
    for c in &counted {
        let zone = zones.entry(c.zone.as_str()).or_default();
        zone.0 += counts.get(&c.id).copied().unwrap_or(0);
        zone.1.push(c);
    }
    let mut quotas: HashMap<&str, usize> = HashMap::new();
    for (copies, members) in zones.values() {
        let exact = self::quotas(
            members,
            *copies,
            chosen.len(),
            shards.database,
            &member_hash,
        );
        let (num, den) = SLACK;
        let total: u128 = members.iter().map(|c| u128::from(c.weight)).sum();
        for c in members {
            // Its exact quota, or its share with the slack when that is more:
            // small databases land exactly even, large ones are not churned
            // for a copy or two.
            let slack = (*copies as u128 * u128::from(c.weight) * num / (total.max(1) * den))
                .min(chosen.len() as u128) as usize;
            let exact = exact.get(c.id.as_str()).copied().unwrap_or(0);
            quotas.insert(c.id.as_str(), exact.max(slack));
        }
    }
    let quota = |id: &str| quotas.get(id).copied().unwrap_or(usize::MAX);
    let mut over: Vec<String> = counts
        .iter()
        .filter(|(id, n)| **n > quota(id))
        .map(|(id, _)| id.clone())
        .collect();
    if over.is_empty() {
        return;
    }
    over.sort();
    let by_id: HashMap<&str, &Candidate> = candidates.iter().map(|c| (c.id.as_str(), c)).collect();
    // Members that may take a copy (weight, not past their watermark) and are
    // under their quota, with their hashes. Only members over their quota
    // give copies up, down to it, so a member never has room again once full.
    let mut room: Vec<(&Candidate, u64)> = candidates
        .iter()
        .filter(|c| c.weight > 0 && !c.full)
        .filter(|c| counts.get(&c.id).copied().unwrap_or(0) < quota(&c.id))
        .map(|c| (c, member_hash(&c.id)))
        .collect();
    let key_hashes: Vec<u64> = shards.keys.iter().map(|k| stable_hash(k)).collect();
    for member in over {
        let Some(candidate) = by_id.get(member.as_str()) else {
            continue;
        };
        let own_hash = member_hash(&member);
        // Its copies, weakest claim first.
        let mut mine: Vec<(f64, usize)> = held_by
            .get(&member)
            .into_iter()
            .flatten()
            .map(|i| (score_hashed(key_hashes[*i], own_hash, candidate.weight), *i))
            .collect();
        mine.sort_by(|a, b| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(Ordering::Equal)
                .then_with(|| a.1.cmp(&b.1))
        });
        for (_, i) in mine {
            if counts[&member] <= quota(&member) || room.is_empty() {
                break;
            }
            let Some(at) = replacement(&chosen[i], &member, key_hashes[i], &room, &by_id) else {
                continue;
            };
            let target = room[at].0.id.clone();
            let slot = chosen[i].iter().position(|m| *m == member).expect("chosen");
            chosen[i][slot] = target.clone();
            *counts.get_mut(&member).expect("counted") -= 1;
            let filled = counts.entry(target).or_default();
            *filled += 1;
            if *filled >= quota(&room[at].0.id) {
                room.swap_remove(at);
            }
        }
    }
}

/// The member of `room` (its index there) to take `leaving`'s copy of a
/// shard: not chosen already, keeping as many zones as before; the best score
/// first.
fn replacement(
    members: &[String],
    leaving: &str,
    key_hash: u64,
    room: &[(&Candidate, u64)],
    by_id: &HashMap<&str, &Candidate>,
) -> Option<usize> {
    let zone_of = |id: &str| by_id.get(id).map_or("", |c| c.zone.as_str());
    let others: BTreeSet<&str> = members
        .iter()
        .filter(|m| m.as_str() != leaving)
        .map(|m| zone_of(m))
        .collect();
    // The leaving member's zone is needed when no other copy is in it.
    let needs_new_zone = !others.contains(zone_of(leaving));
    room.iter()
        .enumerate()
        .filter(|(_, (c, _))| !members.contains(&c.id))
        .filter(|(_, (c, _))| !needs_new_zone || !others.contains(c.zone.as_str()))
        .map(|(at, (c, hash))| (score_hashed(key_hash, *hash, c.weight), &c.id, at))
        .max_by(|a, b| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(Ordering::Equal)
                .then_with(|| b.1.cmp(a.1))
        })
        .map(|(_, _, at)| at)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::placement::plan::fixtures::cluster;
    use crate::placement::plan::{ClusterState, Layout, plan};
    use crate::placement::{HeldState, choose};
    use crate::records::Replicas;

    fn layout(name: &str, shards: usize, replicas: u32) -> Layout {
        Layout {
            name: name.into(),
            replicas: Replicas::Count(replicas),
            shards: (0..shards).map(|s| (s.to_string(), 100)).collect(),
            global_bytes: 0,
        }
    }

    /// Copies of `layout` per member.
    fn counts(layout: &Layout, state: &ClusterState) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for members in state.placement(layout) {
            for member in members {
                *counts.entry(member).or_default() += 1;
            }
        }
        counts
    }

    /// Downloads done, extra copies trashed: the cluster at rest.
    fn settle(layouts: &[Layout], state: &mut ClusterState) {
        for _ in 0..4 {
            let planned = plan(layouts, state);
            for a in &planned.downloads {
                state.set_state(&a.node, &a.database, &a.shard, HeldState::Ready);
            }
            for a in &planned.trashes {
                state.set_state(&a.node, &a.database, &a.shard, HeldState::Trashed);
            }
        }
        let rest = plan(layouts, state);
        assert!(
            rest.downloads.is_empty() && rest.trashes.is_empty(),
            "{rest:?}"
        );
    }

    fn held(layout: &Layout, state: &ClusterState) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (shard, _) in &layout.shards {
            for (node, s) in state.copies(&layout.name, shard) {
                if s == HeldState::Ready {
                    out.push((shard.clone(), node.to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn six_shards_on_three_equal_members_land_two_each_and_seven_three_two_two() {
        let state = cluster(&["a", "b", "c"]);
        // Every database name, not only a lucky one.
        for d in 0..200 {
            let six = counts(&layout(&format!("db{d}"), 6, 1), &state);
            assert_eq!(
                six.values().copied().collect::<Vec<_>>(),
                [2, 2, 2],
                "db{d}"
            );
            let mut seven: Vec<usize> = counts(&layout(&format!("db{d}"), 7, 1), &state)
                .into_values()
                .collect();
            seven.sort();
            assert_eq!(seven, [2, 2, 3], "db{d}");
            let mut two: Vec<usize> = counts(&layout(&format!("db{d}"), 6, 2), &state)
                .into_values()
                .collect();
            two.sort();
            assert_eq!(two, [4, 4, 4], "db{d}, 2 copies");
        }
        // Rendezvous alone is uneven for some of these names.
        let uneven = (0..200).any(|d| {
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            for s in 0..6 {
                let key = crate::placement::shard_key(&format!("db{d}"), &s.to_string());
                let first = choose(
                    &key,
                    &state.candidates,
                    Replicas::Count(1),
                    &Default::default(),
                );
                *per.entry(first[0].clone()).or_default() += 1;
            }
            per.values().any(|n| *n != 2)
        });
        assert!(uneven, "the test would pass without the spread");
    }

    #[test]
    fn random_clusters_stay_within_bounds_zones_and_move_little() {
        let mut rng = StdRng::seed_from_u64(11);
        let (mut leave_moved, mut leave_held) = (0usize, 0usize);
        let (mut join_to_newcomer, mut join_elsewhere) = (0usize, 0usize);
        for round in 0..300 {
            let n = rng.random_range(3..12);
            // Zones in half the rounds: copies spread over them first, even
            // where that leaves a member of a small zone above its share.
            let zoned = round % 2 == 0;
            let mut state = cluster(&[]);
            for i in 0..=n {
                let mut c = crate::placement::plan::fixtures::candidate(&format!("m{i}"));
                c.weight = rng.random_range(1..4);
                if zoned {
                    c.zone = ["a", "b", "c"][i % 3].to_string();
                }
                state.candidates.push(c);
            }
            let newcomer = state.candidates.pop().unwrap();
            state.live = state.candidates.iter().map(|c| c.id.clone()).collect();
            let replicas = rng.random_range(1..=3);
            let l = layout(&format!("r{round}"), rng.random_range(1..40), replicas);
            // Within one copy of its share by weight, or 1.2 times it (where
            // no share is more than one copy of every shard).
            let copies = l.shards.len() * replicas as usize;
            let total: u64 = state.candidates.iter().map(|c| c.weight).sum();
            let share = |weight: u64| copies as f64 * weight as f64 / total as f64;
            let capped = state
                .candidates
                .iter()
                .any(|c| share(c.weight) > l.shards.len() as f64);
            for (member, count) in counts(&l, &state).into_iter().filter(|_| !zoned && !capped) {
                let weight = state
                    .candidates
                    .iter()
                    .find(|c| c.id == member)
                    .unwrap()
                    .weight;
                let share = share(weight);
                assert!(
                    (count as f64) < (share + 1.0).max(share * 1.2 + 1e-9),
                    "round {round}: {member} holds {count}, share {share:.2}"
                );
            }
            for (i, members) in state.placement(&l).iter().enumerate() {
                let distinct: std::collections::BTreeSet<&String> = members.iter().collect();
                assert_eq!(distinct.len(), members.len(), "round {round}");
                assert_eq!(members.len(), replicas as usize, "round {round}");
                let zones = |ids: &[String]| {
                    ids.iter()
                        .map(|id| {
                            state
                                .candidates
                                .iter()
                                .find(|c| c.id == *id)
                                .unwrap()
                                .zone
                                .clone()
                        })
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                };
                let key = crate::placement::shard_key(&l.name, &i.to_string());
                let pure = choose(&key, &state.candidates, l.replicas, &Default::default());
                assert_eq!(zones(members), zones(&pure), "round {round}: zones kept");
            }
            settle(std::slice::from_ref(&l), &mut state);
            // A join: copies move to the newcomer, and some elsewhere.
            let before = held(&l, &state);
            let mut joined = state.clone();
            joined.candidates.push(newcomer.clone());
            joined.live.insert(newcomer.id.clone());
            let join = plan(std::slice::from_ref(&l), &joined);
            for a in &join.downloads {
                if a.node == newcomer.id {
                    join_to_newcomer += 1;
                } else {
                    join_elsewhere += 1;
                }
            }
            // The plan stays as it is while its copies are made: nothing new
            // to fetch, nothing to trash until they are ready, then only the
            // copies they replace.
            for a in &join.downloads {
                joined.set_state(&a.node, &a.database, &a.shard, HeldState::Downloading);
            }
            let making = plan(std::slice::from_ref(&l), &joined);
            assert!(
                making.downloads.is_empty() && making.trashes.is_empty(),
                "round {round}: the plan changed while copies were made: {making:?}"
            );
            for a in &join.downloads {
                joined.set_state(&a.node, &a.database, &a.shard, HeldState::Ready);
            }
            let ready = plan(std::slice::from_ref(&l), &joined);
            assert!(ready.downloads.is_empty(), "round {round}: {ready:?}");
            assert_eq!(ready.trashes.len(), join.downloads.len(), "round {round}");
            for a in &ready.trashes {
                joined.set_state(&a.node, &a.database, &a.shard, HeldState::Trashed);
            }
            assert_eq!(
                plan(std::slice::from_ref(&l), &joined),
                Default::default(),
                "round {round}: at rest after the join"
            );
            // A leave: the leaver's copies move, and a few others.
            let leaver = format!("m{}", rng.random_range(0..n));
            let mut left = state.clone();
            left.candidates.retain(|c| c.id != leaver);
            left.live.remove(&leaver);
            for shards in left.holdings.values_mut() {
                for holders in shards.values_mut() {
                    holders.remove(&leaver);
                }
            }
            leave_held += before.iter().filter(|(_, m)| *m == leaver).count();
            leave_moved += plan(std::slice::from_ref(&l), &left).downloads.len();
        }
        let ratio = leave_moved as f64 / leave_held.max(1) as f64;
        eprintln!(
            "join: {join_to_newcomer} to the newcomer, {join_elsewhere} elsewhere; \
             leave: {leave_moved} moved, {leave_held} held by the leavers"
        );
        // Measured (seed 11, clusters of 3 to 12 members, databases of 1 to
        // 39 shards): leaves move 0.97× the leavers' copies (fewer where a
        // cluster shrinks below the copies wanted), joins 18% of their copies
        // between old members (bounds that shrink by a copy).
        assert!(ratio < 1.1, "leaves moved {ratio:.3}× the leavers' copies");
        let elsewhere = join_elsewhere as f64 / (join_to_newcomer + join_elsewhere) as f64;
        assert!(
            elsewhere < 0.25,
            "joins moved {elsewhere:.3} of their copies between old members"
        );
    }
}
