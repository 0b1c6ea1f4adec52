//! Meeting the cluster again after a start — pure. A member remembers (in
//! its catalog) the members it last knew; after a restart it neither places
//! shards nor counts as a majority for an election until it has heard from
//! a strict majority of them (itself included). Otherwise a restarted seed,
//! alone for a moment, would elect itself and give itself every shard. A
//! member that knew no one (a first start) has met its cluster at once; one
//! whose remembered members stay silent for the dead-member grace period
//! gives up waiting (they would have been forgotten by then anyway).

use std::collections::BTreeSet;

/// Whom this member remembers, and whether it has met a majority of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Quorum {
    remembered: BTreeSet<String>,
    met: bool,
}

impl Quorum {
    /// After a start with `remembered` members (from the catalog).
    pub(crate) fn new(self_id: &str, remembered: BTreeSet<String>) -> Quorum {
        let met = remembered.iter().all(|id| id == self_id);
        Quorum { remembered, met }
    }

    /// Notes the members heard from now (`live`, this one included);
    /// `waited_too_long` once the grace period has passed since the start.
    /// Returns whether this member has met its cluster (and from then on
    /// always does).
    pub(crate) fn observe<'a>(
        &mut self,
        live: impl IntoIterator<Item = &'a str>,
        waited_too_long: bool,
    ) -> bool {
        if !self.met {
            let heard = live
                .into_iter()
                .filter(|id| self.remembered.contains(*id))
                .count();
            self.met = heard * 2 > self.remembered.len() || waited_too_long;
        }
        self.met
    }

    pub(crate) fn met(&self) -> bool {
        self.met
    }

    /// How many members an election must count (live or dead): until the
    /// cluster is met, at least those remembered.
    pub(crate) fn known(&self, known_now: usize) -> usize {
        if self.met {
            known_now
        } else {
            known_now.max(self.remembered.len())
        }
    }

    /// The members to remember from now on, if they changed (only once the
    /// cluster is met: a member alone after a restart must not forget).
    pub(crate) fn remember(&mut self, known: BTreeSet<String>) -> Option<&BTreeSet<String>> {
        if !self.met || known == self.remembered {
            return None;
        }
        self.remembered = known;
        Some(&self.remembered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_first_start_has_met_its_cluster() {
        assert!(Quorum::new("n1", set(&[])).met());
        assert!(Quorum::new("n1", set(&["n1"])).met());
    }

    #[test]
    fn a_restarted_member_waits_for_a_majority_of_those_it_knew() {
        let mut quorum = Quorum::new("n1", set(&["n1", "n2", "n3", "n4", "n5"]));
        assert!(!quorum.met());
        assert_eq!(quorum.known(1), 5, "an election alone cannot win");
        assert!(!quorum.observe(["n1"], false));
        assert!(!quorum.observe(["n1", "n2"], false));
        // Nothing forgotten while waiting.
        assert_eq!(quorum.remember(set(&["n1"])), None);
        assert!(quorum.observe(["n1", "n2", "n9", "n3"], false));
        // Met for good; what it knows from now on is remembered.
        assert!(quorum.observe(["n1"], false));
        assert_eq!(quorum.known(2), 2);
        assert_eq!(
            quorum.remember(set(&["n1", "n2", "n3", "n9"])),
            Some(&set(&["n1", "n2", "n3", "n9"]))
        );
        assert_eq!(quorum.remember(set(&["n1", "n2", "n3", "n9"])), None);
    }

    #[test]
    fn a_member_whose_cluster_stays_silent_gives_up_after_the_grace_period() {
        let mut quorum = Quorum::new("n1", set(&["n1", "n2", "n3"]));
        assert!(!quorum.observe(["n1"], false));
        assert!(quorum.observe(["n1"], true));
    }
}
