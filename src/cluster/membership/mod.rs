//! Gossip membership (chitchat) and the sync loop of a serving node.
//!
//! Each node gossips small summaries of its own state only (DESIGN.md, "Gossip"):
//! `node` (http address, version, start time, zone), `registry` (digest of its
//! definitions and aliases), `inv` (digest of its inventory) and `disk:<id>`.
//! Every gossip interval the sync loop refreshes those keys, and for each live
//! peer whose registry digest differs from ours pulls `GET /v1/internal/registry`
//! from it and merges; whose inventory digest changed pulls
//! `GET /v1/internal/inventory` and caches it. Bulk data moves over HTTP; gossip
//! values stay well under 1 KB.
//!
//! The round itself is driven by the node (`node.rs`): `sync` (publish, pull,
//! merge, meet), then the primary's election (`primary`), then `place`.
//!
//! `placing.rs`: each round also builds the cluster state placement reads and
//! hands it to the node (which loads the shards it now should hold); it also
//! answers the queries' holder lookups. `election.rs`: the gossip the primary's
//! election reads and writes. `types.rs`: the gossip values and
//! `GET /v1/cluster`; `disagreement.rs`: which members' registries lag (pure).

mod ack;
mod disagreement;
mod election;
mod peers;
use peers::{peer_headers, pull};
mod placing;
mod quorum;
pub(crate) use placing::{QueryHolders, Round};
mod types;

pub use types::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use rand::seq::SliceRandom;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::health::health;
use super::wire::{self, VersionedTransport, WireVersion};
use super::{Registry, RegistryDigest};
use crate::local::{Inventory, InventoryDigest, Local, NodeError};
use crate::storage::DiskStats;
use crate::sync::lock;

/// Gossip keys (each node writes only its own).
pub const KEY_NODE: &str = "node";
pub const KEY_REGISTRY: &str = "registry";
pub const KEY_INVENTORY: &str = "inv";
pub const KEY_DISK_PREFIX: &str = "disk:";
pub const KEY_PRIMARY: &str = "primary";
pub const KEY_LOAD: &str = "load";
/// Set by a member shutting down: peers send it no new map requests.
pub const KEY_LEAVING: &str = "leaving";

/// Registry pulls started per sync round, at most.
const PULLS_PER_ROUND: usize = 3;
/// How long a pull from a peer may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(5);

/// Gossip and the sync loop of one node; `shutdown` stops both.
pub struct Membership {
    /// The node's clock.
    time: Arc<dyn crate::clock::Clock>,
    chitchat: Mutex<Option<ChitchatHandle>>,
    handle: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    self_id: ChitchatId,
    cluster_id: String,
    /// Inventories pulled from peers, by node id, with the digest they had.
    inventories: Mutex<HashMap<String, (String, Inventory)>>,
    /// Since when each member's registry digest differs from the majority's.
    disagreeing: Mutex<HashMap<String, (u64, String)>>,
    /// When each dead member was first seen dead.
    dead_since: Mutex<HashMap<String, u64>>,
    /// The cluster state of the last round.
    state: Mutex<Option<Arc<crate::placement::plan::ClusterState>>>,
    /// Sync rounds done; placement starts once the view has settled.
    rounds: std::sync::atomic::AtomicU64,
    /// Holders whose map request failed lately (member → when, ms): queries
    /// try them last until gossip has caught up.
    failed_holders: Mutex<HashMap<String, u64>>,
    /// The last reading of the members for queries, and the gossip state
    /// it was read from (see `members_for_queries`).
    recent_members: Mutex<Option<(u64, Arc<Vec<Member>>)>>,
    /// The gossip wire version this member sends (see `cluster::wire`).
    wire_version: WireVersion,
    /// The versions this member reads, as gossiped.
    reads: Vec<u8>,
    /// Connections to the other members, reused across queries.
    http_client: reqwest::Client,
    /// The client of the sync round's pulls (each bounded by `PULL_TIMEOUT`).
    pull_client: reqwest::Client,
    /// Whether this node was given seeds (it waits to meet a peer before placing).
    seeded: bool,
    /// The members this node last knew, and whether it has met a majority
    /// of them since it started (see `quorum`).
    quorum: Mutex<quorum::Quorum>,
    /// Registry backups, run by the primary (`cluster::backup`).
    pub(crate) backups: crate::cluster::backup::Backups,
}

/// The catalog key of the members this node last knew.
const MEMBERS_KEY: &str = "members";

/// What the sync round reads of a live peer.
pub(crate) struct Peer {
    pub id: String,
    pub http: Option<String>,
    pub registry: Option<RegistryDigest>,
    inventory: Option<InventoryDigest>,
    pub primary: Option<PrimaryKey>,
    /// The gossip wire versions it reads (empty: V0 only).
    reads: Vec<u8>,
}

/// The live and dead members gossip knows, one entry per node id. A restarted
/// member comes back with a new generation and chitchat keeps the old one as
/// dead for a while: the old generation is not another member (counting it
/// would let restarts raise the majority an election needs until no primary
/// can be elected).
fn distinct_members(chitchat: &chitchat::Chitchat) -> (Vec<ChitchatId>, Vec<ChitchatId>) {
    let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
    let live_ids: std::collections::HashSet<&str> = live.iter().map(|id| &*id.node_id).collect();
    let mut dead: HashMap<&str, &ChitchatId> = HashMap::new();
    for id in chitchat.dead_nodes() {
        if live_ids.contains(&*id.node_id) {
            continue;
        }
        let newest = dead.entry(&*id.node_id).or_insert(id);
        if id.generation_id > newest.generation_id {
            *newest = id;
        }
    }
    let dead = dead.into_values().cloned().collect();
    (live, dead)
}

/// Protocol versions as gossiped (their codes).
fn codes(versions: &[chitchat::ProtocolVersion]) -> Vec<u8> {
    versions.iter().map(|v| v.to_code()).collect()
}

/// What the members' reading depends on: who is live and who is dead, and
/// the newest version of each one's keys.
fn gossip_fingerprint(
    chitchat: &chitchat::Chitchat,
    live: &[ChitchatId],
    dead: &[ChitchatId],
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (ids, is_live) in [(live, true), (dead, false)] {
        for id in ids {
            (id, is_live).hash(&mut hasher);
            chitchat
                .node_state(id)
                .map(|state| state.max_version())
                .hash(&mut hasher);
        }
    }
    hasher.finish()
}

impl Membership {
    /// Joins the cluster: binds the gossip socket. The node runs the rounds
    /// (`sync`, then `place`).
    pub async fn start(
        node: &Local,
        http_addr: SocketAddr,
        transport: &dyn chitchat::transport::Transport,
        reads: &[chitchat::ProtocolVersion],
    ) -> Result<Arc<Membership>, NodeError> {
        let config = node.config().cluster.clone();
        let (listen, advertise) = config
            .gossip_addresses()
            .map_err(|e| NodeError::InvalidInput(e.to_string()))?;
        let interval = config.gossip_interval();
        let self_id = ChitchatId::new(node.id().to_string(), node.now_ms(), advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: config.id.clone(),
            gossip_interval: interval,
            listen_addr: listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                // Near the gossip interval: a dead node is noticed in a few rounds
                // rather than chitchat's default 5 s start.
                initial_interval: interval,
                max_interval: interval.max(Duration::from_secs(10)),
                dead_node_grace_period: Duration::from_secs(config.dead_member_grace_secs),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(
                config.marked_for_deletion_grace_period_secs,
            ),
            catchup_callback: None,
            extra_liveness_predicate: None,
            // The budget of a message's delta is what is left of a
            // datagram after the digest: sized for the compressed digest when
            // this member reads V1 (the socket sets each message's version,
            // see `cluster::wire`).
            protocol_version: wire::agreed([codes(reads).as_slice()]),
        };
        let info = NodeInfo {
            sql: None,
            http: node
                .config()
                .node
                .http_advertise
                .clone()
                .unwrap_or_else(|| advertised(advertise, http_addr).to_string()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: node.now_ms(),
            zone: node.config().node.zone.clone(),
            tls: node.config().http.tls(),
            gossip: codes(reads),
        };
        let initial = vec![(KEY_NODE.to_string(), to_json(&info))];
        let failed = |e: anyhow::Error| {
            NodeError::InvalidInput(format!("cannot start gossip on {listen}: {e:#}"))
        };
        let wire_version = WireVersion::new();
        let transport = VersionedTransport::open(
            transport,
            listen,
            wire_version.clone(),
            reads,
            node.metrics().gossip_rejected(),
        )
        .await
        .map_err(failed)?;
        let chitchat = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(failed)?;
        let membership = Arc::new(Membership {
            time: node.clock(),
            handle: chitchat.chitchat(),
            chitchat: Mutex::new(Some(chitchat)),
            self_id,
            cluster_id: config.id.clone(),
            inventories: Mutex::default(),
            disagreeing: Mutex::default(),
            dead_since: Mutex::default(),
            state: Mutex::default(),
            rounds: Default::default(),
            seeded: !config.seeds.is_empty(),
            quorum: Mutex::new(quorum::Quorum::new(
                node.id(),
                node.catalog()
                    .get::<BTreeSet<String>>(crate::catalog::META, MEMBERS_KEY)?
                    .unwrap_or_default(),
            )),
            backups: crate::cluster::backup::Backups::new(node),
            failed_holders: Mutex::default(),
            recent_members: Mutex::default(),
            wire_version,
            reads: codes(reads),
            http_client: crate::net::peer_client(node.config())
                .pool_max_idle_per_host(64)
                .default_headers(peer_headers(&config.id))
                .build()
                .map_err(|e| {
                    NodeError::InvalidInput(format!("cannot build an HTTP client: {e}"))
                })?,
            pull_client: crate::net::peer_client(node.config())
                .timeout(PULL_TIMEOUT)
                .default_headers(peer_headers(&config.id))
                .build()
                .map_err(|e| {
                    NodeError::InvalidInput(format!("cannot build an HTTP client: {e}"))
                })?,
        });
        info!(gossip = %listen, advertise = %advertise, seeds = ?config.seeds, "joined gossip");
        Ok(membership)
    }

    /// Gossips where the other members reach this node's SQL worker.
    pub(crate) async fn advertise_sql_worker(&self, address: String) {
        let mut chitchat = self.handle.lock().await;
        let state = chitchat.self_node_state();
        if let Some(mut info) = parse::<NodeInfo>(state.get(KEY_NODE)) {
            info.sql = Some(address);
            set_if_changed(state, KEY_NODE, to_json(&info));
        }
    }

    /// Tells the cluster this member is leaving, and waits (a couple of
    /// gossip rounds, at most 2 s) for its peers to hear it and stop sending
    /// it map requests. Alone, it does not wait.
    pub async fn announce_leaving(&self, gossip_interval: Duration) {
        let peers = {
            let mut chitchat = self.handle.lock().await;
            chitchat.self_node_state().set(KEY_LEAVING, "1");
            chitchat.live_nodes().count() > 1
        };
        if peers {
            tokio::time::sleep((gossip_interval * 3).min(Duration::from_secs(2))).await;
        }
    }

    /// Stops the backups under way and leaves gossip.
    pub async fn shutdown(&self) {
        self.backups.shutdown().await;
        let chitchat = lock(&self.chitchat).take();
        if let Some(chitchat) = chitchat
            && let Err(e) = chitchat.shutdown().await
        {
            warn!(error = %e, "gossip did not shut down cleanly");
        }
    }

    pub fn node_id(&self) -> &str {
        &self.self_id.node_id
    }

    /// Every member gossip knows, live and dead, with its keys.
    /// The members as queries see them: the same as `members`, read again
    /// only when the gossip state changed (a member came, went, or set a
    /// key). Reading them parses every member's keys, while they change a
    /// few times a gossip round: per query, that was most of a cached
    /// answer's time.
    pub(crate) async fn members_for_queries(&self) -> Arc<Vec<Member>> {
        let chitchat = self.handle.lock().await;
        let (live, dead) = distinct_members(&chitchat);
        let state = gossip_fingerprint(&chitchat, &live, &dead);
        if let Some((read, members)) = lock(&self.recent_members).as_ref()
            && *read == state
        {
            return members.clone();
        }
        let members = Arc::new(self.members_of(&chitchat, live, dead));
        *lock(&self.recent_members) = Some((state, members.clone()));
        members
    }

    pub(crate) async fn members(&self) -> Vec<Member> {
        let chitchat = self.handle.lock().await;
        let (live, dead) = distinct_members(&chitchat);
        self.members_of(&chitchat, live, dead)
    }

    fn members_of(
        &self,
        chitchat: &chitchat::Chitchat,
        live: Vec<ChitchatId>,
        dead: Vec<ChitchatId>,
    ) -> Vec<Member> {
        let mut members = Vec::with_capacity(live.len() + dead.len());
        for (id, is_live) in live
            .iter()
            .map(|id| (id, true))
            .chain(dead.iter().map(|id| (id, false)))
        {
            let Some(state) = chitchat.node_state(id) else {
                continue;
            };
            let disks = state
                .iter_prefix(KEY_DISK_PREFIX)
                .filter_map(|(key, value)| {
                    let disk = key.strip_prefix(KEY_DISK_PREFIX)?.to_string();
                    Some((disk, serde_json::from_str(&value.value).ok()?))
                })
                .collect();
            members.push(Member {
                id: id.node_id.to_string(),
                live: is_live,
                is_self: *id == self.self_id,
                gossip: id.gossip_advertise_addr.to_string(),
                node: parse(state.get(KEY_NODE)),
                disks,
                inventory: parse(state.get(KEY_INVENTORY)),
                registry: parse(state.get(KEY_REGISTRY)),
                primary: parse(state.get(KEY_PRIMARY)),
                load: parse(state.get(KEY_LOAD)),
                leaving: state.get(KEY_LEAVING).is_some(),
                gossip_bytes: state
                    .key_values()
                    .map(|(key, value)| (key.len() + value.len()) as u64)
                    .sum(),
            });
        }
        members.sort_by(|a, b| (!a.live, &a.id).cmp(&(!b.live, &b.id)));
        members
    }

    /// The inventories of the live members: this node's own, and the last pulled
    /// of every other live member.
    pub(crate) fn live_inventories(
        &self,
        node: &Local,
        members: &[Member],
    ) -> Result<Vec<Inventory>, NodeError> {
        let cached = lock(&self.inventories);
        let mut inventories = vec![node.inventory()?];
        for member in members.iter().filter(|m| m.live && !m.is_self) {
            if let Some((_, inventory)) = cached.get(&member.id) {
                inventories.push(inventory.clone());
            }
        }
        Ok(inventories)
    }

    /// `GET /v1/cluster`, with the primary this node last saw elected.
    pub async fn status(
        &self,
        node: &Local,
        primary: Option<PrimaryStatus>,
    ) -> Result<ClusterStatus, NodeError> {
        let members = self.members().await;
        let registry = node.registry()?;
        let inventories = self.live_inventories(node, &members)?;
        let disagreement_ms = node.config().cluster.disagreement_secs * 1000;
        let now = self.time.now_ms();
        let disagreements = lock(&self.disagreeing)
            .iter()
            .filter(|(_, (since, _))| now.saturating_sub(*since) >= disagreement_ms)
            .map(|(id, (since, hash))| Disagreement {
                node: id.clone(),
                since_ms: *since,
                hash: hash.clone(),
            })
            .collect();
        Ok(ClusterStatus {
            cluster_id: self.cluster_id.clone(),
            node: self.node_id().to_string(),
            health: health(&registry, &inventories, &node.layouts()?),
            members,
            registry: registry.digest(),
            disagreements,
            primary,
            gossip_version: self.wire_version.get().to_code(),
        })
    }

    /// `GET /v1/cluster/shards?database=D`: the holders of each shard among the
    /// live members.
    pub async fn shard_holders(
        &self,
        node: &Local,
        database: &str,
    ) -> Result<ShardHolders, NodeError> {
        let members = self.members().await;
        let inventories = self.live_inventories(node, &members)?;
        let mut holders = ShardHolders {
            database: database.to_string(),
            global: Vec::new(),
            shards: BTreeMap::new(),
        };
        let mut known = node.registry()?.definitions.contains_key(database);
        for inventory in &inventories {
            let Some(held) = inventory.databases.get(database) else {
                continue;
            };
            known = true;
            if let Some(global) = &held.global {
                holders.global.push(Holder {
                    node: inventory.node.clone(),
                    state: global.state,
                    pct: global.pct,
                });
            }
            for (id, part) in &held.shards {
                holders.shards.entry(id.clone()).or_default().push(Holder {
                    node: inventory.node.clone(),
                    state: part.state,
                    pct: part.pct,
                });
            }
        }
        if !known {
            return Err(NodeError::not_found("database", database));
        }
        Ok(holders)
    }

    async fn live_peers(&self) -> Vec<Peer> {
        let chitchat = self.handle.lock().await;
        let ids: Vec<ChitchatId> = chitchat
            .live_nodes()
            .filter(|id| **id != self.self_id)
            .cloned()
            .collect();
        ids.iter()
            .filter_map(|id| {
                let state = chitchat.node_state(id)?;
                let info = parse::<NodeInfo>(state.get(KEY_NODE));
                Some(Peer {
                    id: id.node_id.to_string(),
                    http: info.as_ref().map(NodeInfo::url),
                    reads: info.map(|n| n.gossip).unwrap_or_default(),
                    registry: parse(state.get(KEY_REGISTRY)),
                    inventory: parse(state.get(KEY_INVENTORY)),
                    primary: parse(state.get(KEY_PRIMARY)),
                })
            })
            .collect()
    }

    /// Sends V1 from now on if every live member reads it, V0 otherwise.
    fn agree_on_wire_version(&self, peers: &[Peer]) {
        let version = wire::agreed(
            peers
                .iter()
                .map(|p| p.reads.as_slice())
                .chain([self.reads.as_slice()]),
        );
        if self.wire_version.set(version) {
            info!(
                version = version.to_code(),
                live_peers = peers.len(),
                "gossip wire version changed (V1 once every live member reads it)"
            );
        }
    }

    /// Members gossip knows, live or dead (a restarted member counts once).
    async fn known_members(&self) -> usize {
        let chitchat = self.handle.lock().await;
        let (live, dead) = distinct_members(&chitchat);
        live.len() + dead.len()
    }

    async fn publish(&self, node: &Local, registry: &RegistryDigest, inventory: &InventoryDigest) {
        let disks: Vec<DiskStats> = node.disk_stats();
        let mut chitchat = self.handle.lock().await;
        let state = chitchat.self_node_state();
        set_if_changed(state, KEY_REGISTRY, to_json(registry));
        set_if_changed(state, KEY_LOAD, to_json(&node.load()));
        set_if_changed(state, KEY_INVENTORY, to_json(inventory));
        for disk in disks {
            let summary = DiskSummary {
                total: disk.total_bytes,
                free: DiskSummary::coarse_free(disk.free_bytes, disk.total_bytes),
                used: disk.used_by_dram_bytes,
                capacity: disk.capacity_bytes,
                full: disk.over_watermark,
                watermark_permille: Some((disk.high_watermark * 1000.0).round() as u16),
            };
            set_if_changed(
                state,
                &format!("{KEY_DISK_PREFIX}{}", disk.id),
                to_json(&summary),
            );
        }
    }

    /// The first part of a round: publish our digests, pull what differs,
    /// track disagreement, note whom this node hears from. Returns the live
    /// peers, for the election and `place`.
    pub(crate) async fn sync(&self, node: &Local) -> Result<Vec<Peer>, NodeError> {
        let client = &self.pull_client;
        let registry = node.registry()?.digest();
        let inventory = node.inventory()?.digest();
        self.publish(node, &registry, &inventory).await;
        let peers = self.live_peers().await;
        self.agree_on_wire_version(&peers);

        let mut differing: Vec<&Peer> = peers
            .iter()
            .filter(|p| p.http.is_some())
            .filter(|p| p.registry.as_ref().is_some_and(|r| r.hash != registry.hash))
            .collect();
        differing.shuffle(&mut rand::rng());
        differing.truncate(PULLS_PER_ROUND);
        let pulls = differing.iter().map(|peer| async move {
            let http = peer.http.as_deref().unwrap_or_default();
            (
                peer,
                pull::<Registry>(client, node, http, "/v1/internal/registry").await,
            )
        });
        for (peer, pulled) in futures::future::join_all(pulls).await {
            match pulled.and_then(|remote| node.merge_registry(&remote).map_err(|e| e.to_string()))
            {
                Ok(changes) if !changes.is_empty() => {
                    debug!(peer = %peer.id, "registry merged from peer");
                }
                Ok(_) => {}
                Err(e) => warn!(peer = %peer.id, error = %e, "registry pull failed"),
            }
        }

        let stale: Vec<&Peer> = {
            let cached = lock(&self.inventories);
            peers
                .iter()
                .filter(|p| p.http.is_some())
                .filter(|p| {
                    let hash = p.inventory.as_ref().map(|i| i.hash.as_str());
                    hash.is_some() && cached.get(&p.id).map(|(h, _)| h.as_str()) != hash
                })
                .collect()
        };
        let pulls = stale.iter().map(|peer| async move {
            let http = peer.http.as_deref().unwrap_or_default();
            (
                peer,
                pull::<Inventory>(client, node, http, "/v1/internal/inventory").await,
            )
        });
        for (peer, pulled) in futures::future::join_all(pulls).await {
            match pulled {
                Ok(inventory) => {
                    let hash = inventory.digest().hash;
                    lock(&self.inventories).insert(peer.id.clone(), (hash, inventory));
                }
                Err(e) => warn!(peer = %peer.id, error = %e, "inventory pull failed"),
            }
        }
        {
            let live: std::collections::HashSet<&str> =
                peers.iter().map(|p| p.id.as_str()).collect();
            lock(&self.inventories).retain(|id, _| live.contains(id.as_str()));
        }
        self.track_disagreement(&registry, &peers);
        self.meet(node, &peers).await?;
        Ok(peers)
    }

    /// Notes whom this node hears from (see `quorum`) and, once it has met
    /// its cluster, remembers the members it knows in the catalog.
    async fn meet(&self, node: &Local, peers: &[Peer]) -> Result<(), NodeError> {
        let grace_ms = node
            .config()
            .cluster
            .dead_member_grace_secs
            .saturating_mul(1000);
        let waited_too_long = self.time.now_ms().saturating_sub(node.started_ms()) > grace_ms;
        let live = peers.iter().map(|p| p.id.as_str()).chain([self.node_id()]);
        let was_met = lock(&self.quorum).met();
        if !lock(&self.quorum).observe(live, waited_too_long) {
            return Ok(());
        }
        if !was_met {
            info!("heard from a majority of the members this node last knew");
        }
        let known: BTreeSet<String> = {
            let chitchat = self.handle.lock().await;
            let (live, dead) = distinct_members(&chitchat);
            live.iter()
                .chain(&dead)
                .map(|id| id.node_id.to_string())
                .collect()
        };
        let changed = lock(&self.quorum).remember(known).cloned();
        if let Some(members) = changed {
            node.catalog()
                .write(|w| w.put(crate::catalog::META, MEMBERS_KEY, &members))?;
        }
        Ok(())
    }

    /// Whether this node has heard from a majority of the members it last
    /// knew since it started (a first start has).
    pub(crate) fn has_met_its_cluster(&self) -> bool {
        lock(&self.quorum).met()
    }

    /// Notes, for every live member, since when its registry digest differs from
    /// the one most members have.
    fn track_disagreement(&self, own: &RegistryDigest, peers: &[Peer]) {
        let mut digests: Vec<(&str, &str)> = vec![(self.node_id(), own.hash.as_str())];
        for peer in peers {
            if let Some(registry) = &peer.registry {
                digests.push((&peer.id, &registry.hash));
            }
        }
        disagreement::track(&mut lock(&self.disagreeing), &digests, self.time.now_ms());
    }
}

/// `address` as the other members reach it: an unspecified IP (`0.0.0.0`)
/// becomes the IP gossip advertises.
pub(crate) fn advertised(advertise: SocketAddr, address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        SocketAddr::new(advertise.ip(), address.port())
    } else {
        address
    }
}

fn set_if_changed(state: &mut chitchat::NodeState, key: &str, value: String) {
    if state.get(key) != Some(value.as_str()) {
        state.set(key, value);
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(value: Option<&str>) -> Option<T> {
    serde_json::from_str(value?).ok()
}
