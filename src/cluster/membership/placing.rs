//! Placement in the sync loop: every round builds the cluster state from gossip
//! and the cached inventories; once the view has settled the node loads the
//! shards placement gives it, and the primary (once settled itself) trashes
//! extra copies. A holder asked to trash checks the request against its own view.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{Membership, NodeInfo, Peer};
use crate::cluster::view::cluster_state;
use crate::node::{Inventory, Node, NodeError};
use crate::placement::plan::{ClusterState, NodeUse, Plan, plan, what_if};
use crate::placement::rebalance::{Move, Usage, rebalance};
use crate::primary::Primary;
use crate::primary::actions::{TrashRequest, check_trash, trash_extra_copies};
use crate::primary::gc::eligible;
use crate::sync::lock;

/// How long a holder whose map request failed is tried last.
const FAILED_HOLDER_MS: u64 = 5_000;

/// Rounds before a seeded node places shards: enough for gossip to show its peers.
const SETTLE_ROUNDS: u64 = 3;
/// Rounds after which a node that met no peer places shards alone.
const ALONE_ROUNDS: u64 = 20;

/// `GET /v1/plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanReport {
    /// The node that computed it, from its own view.
    pub node: String,
    pub primary: Option<super::PrimaryStatus>,
    #[serde(flatten)]
    pub plan: Plan,
    /// What the rebalancer would move next (only once nothing else is under way).
    pub moves: Vec<Move>,
}

/// What one sync round reads of the cluster.
struct Round {
    members: Vec<super::Member>,
    inventories: Vec<Inventory>,
    state: Arc<ClusterState>,
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

/// `GET /v1/gc`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcReport {
    /// The node that computed it, from its own view.
    pub node: String,
    pub primary: Option<super::PrimaryStatus>,
    /// Whether a disk past its high watermark makes the primary collect now.
    pub triggered: bool,
    /// Disks past their high watermark, as `node/disk`.
    pub full_disks: Vec<String>,
    /// Databases no alias points to and not marked `keep`, least recently read
    /// first: the order garbage collection deletes them in.
    pub eligible: Vec<crate::primary::gc::Eligible>,
    /// This node's trash (soonest purged first) and lazy cache (in eviction
    /// order); filled by `gc_report`, not by the primary's rounds.
    #[serde(default)]
    pub trash: Vec<crate::node::index::TrashItem>,
    #[serde(default)]
    pub cache: Vec<crate::node::index::CacheItem>,
}

/// `GET /v1/plan?database=D&replicas=K`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhatIf {
    pub database: String,
    pub replicas_now: crate::catalog::Replicas,
    pub replicas: crate::catalog::Replicas,
    pub nodes: Vec<NodeUse>,
}

impl Membership {
    /// One round of placement (see the module doc).
    pub(super) async fn place(
        &self,
        node: &Node,
        client: &reqwest::Client,
        peers: &[Peer],
    ) -> Result<(), NodeError> {
        let round = self.round(node).await?;
        let state = round.state.clone();
        let rounds = self.rounds.fetch_add(1, Ordering::Relaxed) + 1;
        // After a restart: nothing until a majority of the members this node
        // last knew are heard from (a restarted seed, alone for a moment,
        // would otherwise give itself every shard).
        if !self.has_met_its_cluster() {
            return Ok(());
        }
        // A node without seeds starts a cluster (or is alone): it places at once,
        // and hands shards over as members join. A node with seeds waits to meet
        // a peer, so that it does not fetch shards that belong elsewhere.
        let met = !self.seeded || (rounds >= SETTLE_ROUNDS && !peers.is_empty());
        let counted = state.candidates.iter().any(|c| c.id == self.node_id());
        if !(counted && (met || rounds >= ALONE_ROUNDS)) {
            return Ok(());
        }
        let started = node.place(state.clone())?;
        if !started.is_empty() {
            info!(databases = ?started, "loading the shards placement gives this node");
        }
        let cluster = &node.config().cluster;
        if !self.may_act_as_primary(cluster.primary_settle_secs * 1000) {
            return Ok(());
        }
        let Some(primary) = self.own_primacy() else {
            return Ok(());
        };
        // Backups (cluster/backup): restore into an empty cluster, back up changes; never waits.
        let registries: Vec<Option<usize>> = peers
            .iter()
            .map(|p| p.registry.as_ref().map(|r| r.entries))
            .collect();
        self.backups.on_primary_round(node, &registries);
        let layouts = node.layouts()?;
        let planned = plan(&layouts, &state);
        if planned.downloads.is_empty() && planned.trashes.is_empty() && planned.waiting.is_empty()
        {
            // Settled: even out disk use, a few moves at a time.
            let moves = rebalance(
                &layouts,
                &state,
                &Self::usage(&round.members, &round.inventories),
                cluster.max_concurrent_moves,
                cluster.rebalance_threshold,
            );
            if !moves.is_empty() {
                let pins: Vec<(String, Vec<String>)> =
                    moves.iter().map(|m| (m.key(), m.nodes.clone())).collect();
                node.pin_shards(&pins)?;
                for m in &moves {
                    info!(database = %m.database, shard = %m.shard, from = %m.from, to = %m.to,
                        reason = %m.reason, "rebalancer moves a copy");
                }
            }
        }
        if !planned.trashes.is_empty() {
            let http = self.http_addresses().await;
            trash_extra_copies(
                node,
                client,
                &http,
                &primary,
                &planned.trashes,
                cluster.max_concurrent_moves,
            )
            .await;
        }
        self.collect_garbage(node, &round).await
    }

    /// On the primary: while a member's disk is past its high watermark, deletes
    /// the coldest eligible database, one per `cluster.gc_interval_secs`.
    async fn collect_garbage(&self, node: &Node, round: &Round) -> Result<(), NodeError> {
        let now = self.time.now_ms();
        let interval_ms = node.config().cluster.gc_interval_secs * 1000;
        if now.saturating_sub(*lock(&self.last_gc_ms)) < interval_ms {
            return Ok(());
        }
        let report = self.gc_report_of(node, &round.members, &round.inventories)?;
        let Some(first) = report.eligible.first() else {
            return Ok(());
        };
        if !report.triggered {
            return Ok(());
        }
        *lock(&self.last_gc_ms) = now;
        node.remove_database(&first.database).await?;
        info!(database = %first.database, bytes = first.bytes, full_disks = ?report.full_disks,
            "garbage collection deleted the least recently read unaliased database");
        Ok(())
    }

    /// `GET /v1/gc`: the databases garbage collection may delete, in order, and
    /// whether a full disk makes it run now.
    pub async fn gc_report(&self, node: &Node) -> Result<GcReport, NodeError> {
        let members = self.members().await;
        let inventories = self.live_inventories(node, &members)?;
        let mut report = self.gc_report_of(node, &members, &inventories)?;
        let removals = node.removals()?;
        report.trash = removals.trash;
        report.cache = removals.cache;
        Ok(report)
    }

    fn gc_report_of(
        &self,
        node: &Node,
        members: &[super::Member],
        inventories: &[Inventory],
    ) -> Result<GcReport, NodeError> {
        let full_disks: Vec<String> = members
            .iter()
            .filter(|m| m.live)
            .flat_map(|m| {
                m.disks
                    .iter()
                    .filter(|(_, d)| d.full)
                    .map(move |(id, _)| format!("{}/{id}", m.id))
            })
            .collect();
        let primary = lock(&self.election)
            .1
            .as_ref()
            .map(|p| super::PrimaryStatus {
                id: p.id.clone(),
                term: p.term,
            });
        Ok(GcReport {
            node: self.node_id().to_string(),
            primary,
            triggered: !full_disks.is_empty(),
            full_disks,
            eligible: eligible(
                &node.registry()?,
                inventories,
                self.time.now_ms(),
                node.config().cluster.gc_min_age_secs * 1000,
            ),
            trash: Vec::new(),
            cache: Vec::new(),
        })
    }

    /// Builds the cluster state from gossip and the cached inventories, and keeps
    /// it for the checks and reports of this round.
    async fn refresh_state(&self, node: &Node) -> Result<Arc<ClusterState>, NodeError> {
        Ok(self.round(node).await?.state)
    }

    /// Gossip, the live inventories and the cluster state, read once for a round.
    async fn round(&self, node: &Node) -> Result<Round, NodeError> {
        let members = self.members().await;
        let inventories = self.live_inventories(node, &members)?;
        let delay_ms = node.config().cluster.node_left_delay_secs * 1000;
        let pins = node.registry()?.live_pins();
        let state = Arc::new(cluster_state(
            &members,
            &inventories,
            pins,
            &mut lock(&self.dead_since),
            self.time.now_ms(),
            delay_ms,
        ));
        *lock(&self.state) = Some(state.clone());
        Ok(Round {
            members,
            inventories,
            state,
        })
    }

    /// The last cluster state, or a fresh one before the first round.
    async fn current_state(&self, node: &Node) -> Result<Arc<ClusterState>, NodeError> {
        let last = lock(&self.state).clone();
        match last {
            Some(state) => Ok(state),
            None => self.refresh_state(node).await,
        }
    }

    /// Each live member's use for the rebalancer: the bytes of the copies it
    /// holds (trashed ones excluded, as they are on their way out) against the
    /// capacity of its disks.
    fn usage(members: &[super::Member], inventories: &[Inventory]) -> Vec<Usage> {
        members
            .iter()
            .filter(|m| m.live)
            .map(|m| {
                let used = inventories
                    .iter()
                    .filter(|i| i.node == m.id)
                    .flat_map(|i| i.databases.values())
                    .filter(|d| d.state != crate::catalog::DbState::Trashed)
                    .flat_map(|d| d.shards.values().chain(d.global.as_ref()))
                    .filter(|p| p.state != crate::placement::HeldState::Trashed)
                    .map(|p| p.bytes)
                    .sum();
                Usage {
                    node: m.id.clone(),
                    used,
                    capacity: m.disks.values().map(|d| d.capacity).sum(),
                }
            })
            .collect()
    }

    /// What a query's root needs to reach the other holders of `database` at
    /// `version`, from one read of gossip and the cached peer inventories (the
    /// query path computes no inventory and clones none).
    pub(crate) async fn query_holders(&self, database: &str, version: &str) -> QueryHolders {
        let members = self.members().await;
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
    pub(crate) async fn member_ahead(&self, node: &Node) -> Result<Option<String>, NodeError> {
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

    /// This node as primary, if it is the elected one.
    fn own_primacy(&self) -> Option<Primary> {
        let election = lock(&self.election);
        let elected = election.1.as_ref()?;
        (elected.id == self.node_id()).then(|| Primary {
            id: elected.id.clone(),
            term: election.0.term,
        })
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
        self.members()
            .await
            .into_iter()
            .filter(|m| m.live)
            .filter_map(|m| Some((m.id, m.node.map(|n: NodeInfo| n.url())?)))
            .collect()
    }

    /// `POST /v1/internal/trash`: trashes this node's copy if its own view
    /// agrees (see `check_trash`); a refusal is a conflict naming the reason.
    pub async fn trash(&self, node: &Node, request: &TrashRequest) -> Result<(), NodeError> {
        let state = self.current_state(node).await?;
        let (known_term, seen) = {
            let election = lock(&self.election);
            (election.0.term, election.1.clone())
        };
        let replicas = node
            .registry()?
            .definitions
            .get(&request.database)
            .and_then(|d| d.definition.as_ref())
            .map(|d| d.replicas);
        check_trash(
            request,
            node.id(),
            known_term,
            seen.as_ref(),
            replicas,
            &state,
        )
        .map_err(|refusal| NodeError::Conflict(refusal.to_string()))?;
        node.trash_shard(&request.database, &request.shard)?;
        Ok(())
    }

    /// `GET /v1/plan`: what placement would do now, from this node's view.
    pub async fn plan(&self, node: &Node) -> Result<PlanReport, NodeError> {
        let state = self.current_state(node).await?;
        let primary = lock(&self.election)
            .1
            .as_ref()
            .map(|p| super::PrimaryStatus {
                id: p.id.clone(),
                term: p.term,
            });
        let layouts = node.layouts()?;
        let planned = plan(&layouts, &state);
        let settled = planned.downloads.is_empty()
            && planned.trashes.is_empty()
            && planned.waiting.is_empty();
        let moves = if settled {
            let cluster = &node.config().cluster;
            let members = self.members().await;
            let usage = Self::usage(&members, &self.live_inventories(node, &members)?);
            rebalance(
                &layouts,
                &state,
                &usage,
                cluster.max_concurrent_moves,
                cluster.rebalance_threshold,
            )
        } else {
            Vec::new()
        };
        Ok(PlanReport {
            node: self.node_id().to_string(),
            primary,
            plan: planned,
            moves,
        })
    }

    /// `GET /v1/plan?database=D&replicas=K`: bytes of D per node now and with K.
    pub async fn what_if(
        &self,
        node: &Node,
        database: &str,
        replicas: crate::catalog::Replicas,
    ) -> Result<WhatIf, NodeError> {
        let state = self.current_state(node).await?;
        let layout = node
            .layouts()?
            .into_iter()
            .find(|l| l.name == database)
            .ok_or_else(|| NodeError::not_found("database", database))?;
        Ok(WhatIf {
            database: database.to_string(),
            replicas_now: layout.replicas,
            replicas,
            nodes: what_if(&layout, &state, replicas),
        })
    }
}
