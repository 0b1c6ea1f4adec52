//! Acknowledged changes: a change of definitions or aliases is answered once
//! every live member gossips the registry digest this node has — the change
//! has reached them all — as Elasticsearch answers `acknowledged` once every
//! node has applied a cluster-state change.

use std::time::Duration;

use tokio::time::Instant;

use super::Membership;
use crate::node::Node;

impl Membership {
    /// Waits, at most `timeout`, until every live member has this node's
    /// registry. Returns whether they all have it.
    pub async fn await_registry_agreement(&self, node: &Node, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let poll = (node.config().cluster.gossip_interval() / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        loop {
            let Ok(registry) = node.registry() else {
                return false;
            };
            let own = registry.digest().hash;
            let members = self.members().await;
            let agreed = members
                .iter()
                .filter(|m| m.live && !m.is_self)
                .all(|m| m.registry.as_ref().is_some_and(|r| r.hash == own));
            if agreed {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(poll).await;
        }
    }
}
