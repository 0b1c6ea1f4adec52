//! The gossip the primary's election reads and writes (the election itself
//! is `primary`'s): how many members it must count, and this member's
//! `primary` key.

use super::types::PrimaryKey;
use super::{KEY_PRIMARY, Membership, set_if_changed, to_json};
use crate::sync::lock;

impl Membership {
    /// How many members an election must count: the members gossip knows,
    /// or, until this node has met its cluster, the ones it last knew.
    pub(crate) async fn election_size(&self) -> usize {
        let known_now = self.known_members().await;
        lock(&self.quorum).known(known_now)
    }

    /// Publishes this member's `primary` key.
    pub(crate) async fn publish_primary(&self, key: &PrimaryKey) {
        let mut chitchat = self.handle.lock().await;
        set_if_changed(chitchat.self_node_state(), KEY_PRIMARY, to_json(key));
    }
}
