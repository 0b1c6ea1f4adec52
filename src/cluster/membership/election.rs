//! This member's part in the primary election each round: its view and
//! candidate, the result a majority of known members agrees on, and its
//! `primary` gossip key.

use tracing::info;

use super::types::PrimaryKey;
use super::{KEY_PRIMARY, Membership, Peer, set_if_changed, to_json};
use crate::node::Node;
use crate::primary::{View, candidate, elect};
use crate::sync::lock;

impl Membership {
    /// Names a candidate, takes the election's result into account, and
    /// publishes this node's `primary` key.
    pub(super) async fn elect(&self, node: &Node, peers: &[Peer]) {
        let cluster = &node.config().cluster;
        let own = {
            let election = lock(&self.election);
            View {
                id: self.node_id().to_string(),
                eligible: cluster.primary_eligible,
                names: None,
                term: election.0.term,
            }
        };
        let mut views = vec![own];
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
        let known_now = self.known_members().await;
        let known = lock(&self.quorum).known(known_now);
        let elected = elect(known, &views);
        let seen_term = views.iter().map(|v| v.term).max().unwrap_or(0);
        let key = {
            let mut election = lock(&self.election);
            let was = election.1.clone();
            election.0.update(
                self.node_id(),
                elected.as_ref(),
                seen_term,
                self.time.now_ms(),
            );
            if was.as_ref().map(|p| &p.id) != elected.as_ref().map(|p| &p.id) {
                match &elected {
                    Some(primary) => {
                        info!(primary = %primary.id, term = election.0.term, "primary elected")
                    }
                    None => info!("no primary: no candidate named by a majority of known members"),
                }
            }
            election.1 = elected;
            PrimaryKey {
                names: views[0].names.clone(),
                term: election.0.term,
                eligible: cluster.primary_eligible,
            }
        };
        let mut chitchat = self.handle.lock().await;
        set_if_changed(chitchat.self_node_state(), KEY_PRIMARY, to_json(&key));
    }

    /// Whether this node is the primary and has settled, so that it may do
    /// destructive work now.
    pub fn may_act_as_primary(&self, settle_ms: u64) -> bool {
        lock(&self.election)
            .0
            .may_act(self.time.now_ms(), settle_ms)
    }
}
