//! Which members' registry digests differ from the one most members have, and
//! since when — pure.

use std::collections::{BTreeMap, HashMap};

/// Updates `disagreeing` (member → since when, its digest) from the registry
/// digests of the live members: those whose digest is not the most common one
/// are added (keeping their first time), the others removed. Ties between
/// equally common digests go to the smaller hash, so every node picks the same.
pub(super) fn track(
    disagreeing: &mut HashMap<String, (u64, String)>,
    digests: &[(&str, &str)],
    now_ms: u64,
) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, hash) in digests {
        *counts.entry(hash).or_default() += 1;
    }
    let Some(majority) = counts
        .iter()
        .max_by_key(|(hash, count)| (**count, std::cmp::Reverse(**hash)))
        .map(|(hash, _)| *hash)
    else {
        disagreeing.clear();
        return;
    };
    disagreeing.retain(|id, _| digests.iter().any(|(d, h)| d == id && *h != majority));
    for (id, hash) in digests {
        if *hash != majority {
            let entry = disagreeing
                .entry(id.to_string())
                .or_insert_with(|| (now_ms, hash.to_string()));
            entry.1 = hash.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disagreement_is_tracked_from_its_start_until_it_ends() {
        let mut disagreeing = HashMap::new();
        track(
            &mut disagreeing,
            &[("n1", "a"), ("n2", "a"), ("n3", "b")],
            10,
        );
        assert_eq!(disagreeing["n3"], (10, "b".to_string()));
        assert_eq!(disagreeing.len(), 1);
        // Still behind later, with another digest: the start time stays.
        track(
            &mut disagreeing,
            &[("n1", "c"), ("n2", "c"), ("n3", "d")],
            20,
        );
        assert_eq!(disagreeing["n3"], (10, "d".to_string()));
        // Caught up: forgotten. A two-way tie picks the smaller hash everywhere.
        track(
            &mut disagreeing,
            &[("n1", "c"), ("n2", "c"), ("n3", "c")],
            30,
        );
        assert!(disagreeing.is_empty());
        track(&mut disagreeing, &[("n1", "y"), ("n2", "x")], 40);
        assert_eq!(disagreeing.keys().collect::<Vec<_>>(), ["n1"]);
        // A member that left is no longer listed.
        track(&mut disagreeing, &[("n2", "x")], 50);
        assert!(disagreeing.is_empty());
    }
}
