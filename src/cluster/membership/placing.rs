//! Placement in the sync round: every round builds the cluster state from gossip
//! and the cached inventories; once the view has settled the node loads the
//! shards placement gives it (the primary's part is `primary::round`). Also
//! the queries' holder lookups.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::info;

use super::{Membership, NodeInfo, Peer};
use crate::cluster::view::cluster_state;
use crate::local::{Inventory, Local, NodeError};
use crate::placement::plan::ClusterState;
use crate::sync::lock;

/// How long a holder whose map request failed is tried last.
const FAILED_HOLDER_MS: u64 = 5_000;

/// Rounds before a seeded node places shards: enough for gossip to show its peers.
const SETTLE_ROUNDS: u64 = 3;
/// Rounds after which a node that met no peer places shards alone.
const ALONE_ROUNDS: u64 = 20;

/// What one sync round reads of the cluster.
pub(crate) struct Round {
    pub members: Vec<super::Member>,
    pub inventories: Vec<Inventory>,
    pub state: Arc<ClusterState>,
}

/// The other holders of a database's shards, as a query's root sees them.
#[derive(Debug, Default)]
pub(crate) struct QueryHolders {
    /// Shard → live members with a serving copy of the pinned version.
    pub holders: HashMap<String, Vec<String>>,
    /// Member → HTTP address.
    pub http: HashMap<String, String>,
    /// Member → the URL of its SQL worker, for members that run one.
    pub workers: HashMap<String, String>,
    /// Member → map work in flight (failed lately: tried last).
    pub load: HashMap<String, u64>,
    /// Member → its recent p99 map time (ms), from its `load` gossip key.
    pub p99_ms: HashMap<String, u64>,
    /// Whether this view is current: the node has met its cluster and holds
    /// every live member's inventory as that member last gossiped it. A shard
    /// without a holder in a view that is not current may have one yet.
    pub current: bool,
}

impl Membership {
    /// The last part of a round (see the module doc): once the view has
    /// settled, the node loads the shards placement gives it. Returns what
    /// the round read when this member placed (the primary acts on it), and
    /// `None` while it waits.
    pub(crate) async fn place(
        &self,
        node: &Local,
        peers: &[Peer],
    ) -> Result<Option<Round>, NodeError> {
        let round = self.round(node).await?;
        let state = round.state.clone();
        let rounds = self.rounds.fetch_add(1, Ordering::Relaxed) + 1;
        // After a restart: nothing until a majority of the members this node
        // last knew are heard from (a restarted seed, alone for a moment,
        // would otherwise give itself every shard).
        if !self.has_met_its_cluster() {
            return Ok(None);
        }
        // A node without seeds starts a cluster (or is alone): it places at once,
        // and hands shards over as members join. A node with seeds waits to meet
        // a peer, so that it does not fetch shards that belong elsewhere.
        let met = !self.seeded || (rounds >= SETTLE_ROUNDS && !peers.is_empty());
        let counted = state.candidates.iter().any(|c| c.id == self.node_id());
        if !(counted && (met || rounds >= ALONE_ROUNDS)) {
            return Ok(None);
        }
        let started = node.place(state)?;
        if !started.is_empty() {
            info!(databases = ?started, "loading the shards placement gives this node");
        }
        Ok(Some(round))
    }

    /// Builds the cluster state from gossip and the cached inventories, and keeps
    /// it for the checks and reports of this round.
    async fn refresh_state(&self, node: &Local) -> Result<Arc<ClusterState>, NodeError> {
        Ok(self.round(node).await?.state)
    }

    /// Gossip, the live inventories and the cluster state, read once for a round.
    async fn round(&self, node: &Local) -> Result<Round, NodeError> {
        let members = self.members().await;
        let inventories = self.live_inventories(node, &members)?;
        let delay_ms = node.config().cluster.node_left_delay_secs * 1000;
        let pins = node.registry()?.live_pins();
        let mut state = cluster_state(
            &members,
            &inventories,
            pins,
            &mut lock(&self.dead_since),
            self.time.now_ms(),
            delay_ms,
        );
        state.even_spread = node.config().cluster.even_spread;
        let state = Arc::new(state);
        *lock(&self.state) = Some(state.clone());
        Ok(Round {
            members,
            inventories,
            state,
        })
    }

    /// The last cluster state, or a fresh one before the first round.
    pub(crate) async fn current_state(&self, node: &Local) -> Result<Arc<ClusterState>, NodeError> {
        let last = lock(&self.state).clone();
        match last {
            Some(state) => Ok(state),
            None => self.refresh_state(node).await,
        }
    }

    /// What a query's root needs to reach the other holders of `database` at
    /// `version`, from one read of gossip and the cached peer inventories (the
    /// query path computes no inventory and clones none).
    pub(crate) async fn query_holders(&self, database: &str, version: &str) -> QueryHolders {
        let members = self.members_for_queries().await;
        let mut out = QueryHolders::default();
        // A member shutting down gets no new map requests.
        for member in members
            .iter()
            .filter(|m| m.live && !m.is_self && !m.leaving)
        {
            if let Some(http) = member.node.as_ref().map(NodeInfo::url) {
                out.http.insert(member.id.clone(), http);
            }
            if let Some(node) = &member.node
                && let Some(worker) = &node.sql
            {
                let scheme = if node.tls { "https" } else { "http" };
                out.workers
                    .insert(member.id.clone(), format!("{scheme}://{worker}"));
            }
            if let Some(load) = member.load {
                out.load.insert(member.id.clone(), load.inflight);
                out.p99_ms.insert(member.id.clone(), load.p99_ms);
            }
        }
        self.mark_failed(&mut out.load);
        let cached = lock(&self.inventories);
        let peers = members.iter().filter(|m| m.live && !m.is_self);
        let pulled = peers.clone().all(|m| match &m.inventory {
            Some(digest) => cached
                .get(&m.id)
                .is_some_and(|(hash, _)| *hash == digest.hash),
            None => true,
        });
        out.current = pulled && self.settled(peers.count() > 0);
        for (node, (_, inventory)) in cached.iter() {
            if !out.http.contains_key(node) {
                continue;
            }
            let Some(held) = inventory.databases.get(database) else {
                continue;
            };
            if held.state != crate::catalog::DbState::Ready
                || held.version.as_deref() != Some(version)
            {
                continue;
            }
            for (shard, part) in &held.shards {
                if part.state.is_serving() {
                    out.holders
                        .entry(shard.clone())
                        .or_default()
                        .push(node.clone());
                }
            }
        }
        out
    }

    /// Whether this node's view has settled: it has done a few sync rounds and
    /// (given seeds) met a peer, or waited long enough alone.
    pub(crate) fn settled(&self, has_peers: bool) -> bool {
        let rounds = self.rounds.load(Ordering::Relaxed);
        rounds >= SETTLE_ROUNDS && (!self.seeded || has_peers || rounds >= ALONE_ROUNDS)
    }

    /// Whether this node has met its cluster (see `settled`).
    pub(crate) async fn has_settled(&self) -> bool {
        let members = self.members().await;
        self.settled(members.iter().any(|m| m.live && !m.is_self))
    }

    /// The HTTP address of the live member whose registry is furthest ahead of
    /// this node's, if one is ahead: where to forward a query naming a
    /// database or alias this node has not heard of yet.
    pub(crate) async fn member_ahead(&self, node: &Local) -> Result<Option<String>, NodeError> {
        let own = node.registry()?.digest();
        let members = self.members().await;
        Ok(members
            .into_iter()
            .filter(|m| m.live && !m.is_self)
            .filter_map(|m| {
                let registry = m.registry?;
                let ahead = registry.hash != own.hash && registry.max > own.max;
                ahead.then(|| Some((registry.max, m.node?.url())))?
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, http)| http))
    }

    /// The client for node-to-node requests (map requests, trashes).
    pub(crate) fn http_client(&self) -> &reqwest::Client {
        &self.http_client
    }

    /// The client of the rounds' requests, each bounded in time.
    pub(crate) fn pull_client(&self) -> &reqwest::Client {
        &self.pull_client
    }

    /// Counts members whose map request failed in the last `FAILED_HOLDER_MS`
    /// as busiest of all, so that queries try them last.
    fn mark_failed(&self, loads: &mut HashMap<String, u64>) {
        let now = self.time.now_ms();
        let mut failed = lock(&self.failed_holders);
        failed.retain(|_, at| now.saturating_sub(*at) < FAILED_HOLDER_MS);
        for node in failed.keys() {
            loads.insert(node.clone(), u64::MAX / 2);
        }
    }

    /// Notes holders whose map request just failed.
    pub(crate) fn note_failed_holders<'n>(&self, nodes: impl IntoIterator<Item = &'n str>) {
        let now = self.time.now_ms();
        let mut failed = lock(&self.failed_holders);
        for node in nodes {
            failed.insert(node.to_string(), now);
        }
    }

    /// The HTTP address of each live member.
    pub(crate) async fn http_addresses(&self) -> HashMap<String, String> {
        self.members_for_queries()
            .await
            .iter()
            .filter(|m| m.live)
            .filter_map(|m| Some((m.id.clone(), m.node.as_ref().map(NodeInfo::url)?)))
            .collect()
    }
}
