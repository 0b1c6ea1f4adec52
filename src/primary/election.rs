//! Primary election over gossip — pure.
//!
//! Every member gossips whom it names as primary (the lowest id among the live,
//! primary-eligible members it sees) and the highest term it knows. A member is
//! primary when a strict majority of all known members (live or dead) name it:
//! the minority side of a partition never has one, so it deletes nothing. A new
//! primary takes a term above every term it has seen, and waits a settle time
//! before its first destructive action.

/// One live member as gossip shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub id: String,
    /// May this member be primary (config)?
    pub eligible: bool,
    /// Whom it names as primary.
    pub names: Option<String>,
    /// The highest term it knows.
    pub term: u64,
}

/// The elected primary and its term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub id: String,
    pub term: u64,
}

/// Whom a member should name: the lowest id among the live eligible members.
pub fn candidate(live: &[View]) -> Option<&str> {
    live.iter()
        .filter(|v| v.eligible)
        .map(|v| v.id.as_str())
        .min()
}

/// The primary, if a strict majority of the `known` members (live or dead) name
/// the same live eligible member; its term is the highest its voters know.
pub fn elect(known: usize, live: &[View]) -> Option<Primary> {
    let candidate = candidate(live)?;
    let voters: Vec<&View> = live
        .iter()
        .filter(|v| v.names.as_deref() == Some(candidate))
        .collect();
    if voters.len() * 2 <= known.max(live.len()) {
        return None;
    }
    let term = voters.iter().map(|v| v.term).max().unwrap_or(0);
    Some(Primary {
        id: candidate.to_string(),
        term,
    })
}

/// One member's own standing: the term it knows, and since when it is primary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrimaryState {
    /// The highest term seen; only grows.
    pub term: u64,
    /// When this member became primary (in its current term), if it is.
    pub primary_since_ms: Option<u64>,
}

impl PrimaryState {
    /// Takes a new election result into account. When this member (`self_id`)
    /// becomes primary it starts a new term, above every term seen.
    pub fn update(
        &mut self,
        self_id: &str,
        elected: Option<&Primary>,
        seen_term: u64,
        now_ms: u64,
    ) {
        self.term = self.term.max(seen_term);
        match elected {
            Some(primary) if primary.id == self_id => {
                if self.primary_since_ms.is_none() {
                    self.term += 1;
                    self.primary_since_ms = Some(now_ms);
                }
            }
            _ => self.primary_since_ms = None,
        }
    }

    /// Whether this member may act as primary now: primary for at least `settle_ms`.
    pub fn may_act(&self, now_ms: u64, settle_ms: u64) -> bool {
        self.primary_since_ms
            .is_some_and(|since| now_ms.saturating_sub(since) >= settle_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The views of `members` once each has named the candidate of what it sees.
    fn settled(members: &[(String, bool)], term: u64) -> Vec<View> {
        let mut views: Vec<View> = members
            .iter()
            .map(|(id, eligible)| View {
                id: id.clone(),
                eligible: *eligible,
                names: None,
                term,
            })
            .collect();
        let named = candidate(&views).map(str::to_string);
        for view in &mut views {
            view.names = named.clone();
        }
        views
    }

    #[test]
    fn only_a_majority_side_has_a_primary() {
        let mut rng = StdRng::seed_from_u64(9);
        for round in 0..5_000 {
            let known = rng.random_range(1..12);
            let members: Vec<(String, bool)> = (0..known)
                .map(|i| (format!("n{i:02}"), rng.random_bool(0.8)))
                .collect();
            // A partition: each member on side 0 or 1 (a dead member on neither).
            let sides: Vec<u8> = (0..known).map(|_| rng.random_range(0..3)).collect();
            let mut primaries = Vec::new();
            for side in 0..2u8 {
                let live: Vec<(String, bool)> = members
                    .iter()
                    .zip(&sides)
                    .filter(|(_, s)| **s == side)
                    .map(|(m, _)| m.clone())
                    .collect();
                let views = settled(&live, round);
                if let Some(primary) = elect(known, &views) {
                    assert!(live.len() * 2 > known, "round {round}: a minority elected");
                    primaries.push(primary);
                } else if live.len() * 2 > known && live.iter().any(|(_, e)| *e) {
                    panic!("round {round}: a settled majority elected nobody");
                }
            }
            assert!(
                primaries.len() <= 1,
                "round {round}: two primaries {primaries:?}"
            );
        }
    }

    #[test]
    fn the_lowest_eligible_id_wins_once_named_by_a_majority() {
        let view = |id: &str, eligible: bool, names: Option<&str>, term: u64| View {
            id: id.into(),
            eligible,
            names: names.map(str::to_string),
            term,
        };
        let live = [
            view("a", false, Some("b"), 3),
            view("b", true, Some("b"), 4),
            view("c", true, Some("c"), 9),
        ];
        assert_eq!(candidate(&live), Some("b"), "a is not eligible");
        assert_eq!(
            elect(3, &live),
            Some(Primary {
                id: "b".into(),
                term: 4
            })
        );
        assert_eq!(elect(4, &live), None, "2 of 4 known is no majority");
        assert_eq!(elect(3, &[]), None);
    }

    #[test]
    fn terms_only_grow_and_a_new_primary_settles_first() {
        let mut state = PrimaryState::default();
        let me = Primary {
            id: "n1".into(),
            term: 4,
        };
        state.update("n1", Some(&me), 4, 1_000);
        assert_eq!(state.term, 5, "a new term above every term seen");
        assert!(!state.may_act(1_500, 1_000), "settling");
        assert!(state.may_act(2_000, 1_000));
        state.update("n1", Some(&me), 5, 2_100);
        assert_eq!(state.term, 5, "still the same term");
        let other = Primary {
            id: "n0".into(),
            term: 7,
        };
        state.update("n1", Some(&other), 7, 2_200);
        assert_eq!((state.term, state.primary_since_ms), (7, None));
        state.update("n1", None, 3, 2_300);
        assert_eq!(state.term, 7, "never goes back");
        assert!(!state.may_act(10_000, 0));
    }
}
