//! This member's part in the primary election: its standing (term, since when
//! it is primary), the primary it last saw elected, and each round's vote
//! (its view and candidate, the result a majority of known members agrees
//! on, its `primary` gossip key).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::info;

use super::{Primary, PrimaryState, View, candidate, elect};
use crate::clock::Clock;
use crate::cluster::{Membership, Peer, PrimaryKey, PrimaryStatus};
use crate::local::Local;
use crate::sync::lock;

/// This member's role in the election and, while it is primary, in the
/// primary's round (`round.rs`) and the checks a holder makes (`report.rs`).
pub struct Role {
    node_id: String,
    time: Arc<dyn Clock>,
    /// This node's standing and the primary it last saw elected.
    election: Mutex<(PrimaryState, Option<Primary>)>,
    /// When the primary last deleted a database as garbage.
    pub(super) last_gc_ms: Mutex<u64>,
    /// Whether this member's view of the cluster has settled once (see
    /// `elect`).
    settled: AtomicBool,
}

impl Role {
    pub fn new(node_id: &str, time: Arc<dyn Clock>) -> Role {
        Role {
            node_id: node_id.to_string(),
            time,
            election: Mutex::default(),
            last_gc_ms: Mutex::new(0),
            settled: AtomicBool::new(false),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.time.now_ms()
    }

    /// One round's vote: names a candidate, takes the election's result
    /// into account, and publishes this node's `primary` key.
    ///
    /// A fresh member with seeds, before it has heard a peer, would find
    /// itself alone and elect itself (and say so) while the cluster has a
    /// primary: it takes no part, and names no primary, until its view has
    /// settled once (`Membership::settled`). From then on it always votes,
    /// so that a member cut off later sees its primary go at once.
    pub(crate) async fn elect(&self, node: &Local, membership: &Membership, peers: &[Peer]) {
        if !self.settled.load(Ordering::Relaxed) {
            if !membership.settled(!peers.is_empty()) {
                return;
            }
            self.settled.store(true, Ordering::Relaxed);
        }
        let eligible = node.config().cluster.primary_eligible;
        let mut views = vec![View {
            id: self.node_id.clone(),
            eligible,
            names: None,
            term: lock(&self.election).0.term,
        }];
        for peer in peers {
            let key = peer.primary.clone().unwrap_or_default();
            views.push(View {
                id: peer.id.clone(),
                eligible: key.eligible,
                names: key.names,
                term: key.term,
            });
        }
        views[0].names = candidate(&views).map(str::to_string);
        let elected = elect(membership.election_size().await, &views);
        let seen_term = views.iter().map(|v| v.term).max().unwrap_or(0);
        let term = self.observe(elected, seen_term);
        let key = PrimaryKey {
            names: views[0].names.clone(),
            term,
            eligible,
        };
        membership.publish_primary(&key).await;
    }

    /// Takes an election's result into account: the primary elected (if
    /// any) and the highest term seen. Returns this node's term.
    pub(super) fn observe(&self, elected: Option<Primary>, seen_term: u64) -> u64 {
        let mut election = lock(&self.election);
        let was = election.1.clone();
        election.0.update(
            &self.node_id,
            elected.as_ref(),
            seen_term,
            self.time.now_ms(),
        );
        // This node as primary is in the term it has just begun (its voters
        // still gossip the one before): say that term, as `/v1/cluster` does
        // once they follow.
        let elected = elected.map(|mut primary| {
            if primary.id == self.node_id {
                primary.term = election.0.term;
            }
            primary
        });
        if was.as_ref().map(|p| &p.id) != elected.as_ref().map(|p| &p.id) {
            match &elected {
                Some(primary) => {
                    info!(primary = %primary.id, term = election.0.term, "primary elected")
                }
                None => info!("no primary: no candidate named by a majority of known members"),
            }
        }
        election.1 = elected;
        election.0.term
    }

    /// Whether this node is the primary and has been for `settle_ms`, so
    /// that it may do destructive work now.
    pub fn may_act(&self, settle_ms: u64) -> bool {
        lock(&self.election)
            .0
            .may_act(self.time.now_ms(), settle_ms)
    }

    /// The primary this node last saw elected.
    pub fn status(&self) -> Option<PrimaryStatus> {
        lock(&self.election).1.as_ref().map(|p| PrimaryStatus {
            id: p.id.clone(),
            term: p.term,
        })
    }

    /// The term this node knows and the primary it last saw elected.
    pub(super) fn standing(&self) -> (u64, Option<Primary>) {
        let election = lock(&self.election);
        (election.0.term, election.1.clone())
    }

    /// This node as primary, if it is the elected one.
    pub(super) fn own_primacy(&self) -> Option<Primary> {
        let election = lock(&self.election);
        let elected = election.1.as_ref()?;
        (elected.id == self.node_id).then(|| Primary {
            id: elected.id.clone(),
            term: election.0.term,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_new_primary_acts_only_once_the_clock_has_passed_its_settle_time() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let role = Role::new("n1", clock.clone());
        let settle_ms = 30_000;
        assert!(!role.may_act(settle_ms), "no primary yet");
        let term = role.observe(
            Some(Primary {
                id: "n1".into(),
                term: 1,
            }),
            0,
        );
        assert_eq!(term, 1);
        assert_eq!(role.own_primacy().map(|p| p.term), Some(1));
        assert!(!role.may_act(settle_ms), "elected this instant");
        clock.advance(Duration::from_millis(settle_ms - 1));
        assert!(!role.may_act(settle_ms), "1 ms short of settled");
        clock.advance(Duration::from_millis(1));
        assert!(role.may_act(settle_ms), "settled");
        // Another member elected: this one stops acting at once.
        role.observe(
            Some(Primary {
                id: "n0".into(),
                term: 2,
            }),
            2,
        );
        assert!(!role.may_act(settle_ms));
        assert!(role.own_primacy().is_none());
        assert_eq!(role.status().map(|p| p.id), Some("n0".to_string()));
    }
}
