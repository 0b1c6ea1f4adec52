//! The sections of the configuration, each with its documented defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};
pub use crate::storage::StoreConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node id; generated once and kept in `data_dir` when empty.
    pub id: String,
    pub data_dir: PathBuf,
    pub http_listen: String,
    /// The `host:port` other members (and the dashboard's links) reach this
    /// node's HTTP API at, when it is not the listen address — behind NAT, a
    /// container's port mapping or a proxy. Unset: the listen address (with
    /// `cluster.gossip_advertise`'s IP when listening on every interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_advertise: Option<String>,
    pub zone: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: String::new(),
            data_dir: PathBuf::from("./dram-data"),
            http_listen: "127.0.0.1:7070".to_string(),
            http_advertise: None,
            zone: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Fraction of the file system's capacity above which dram stops adding data
    /// and evicts lazily cached files.
    #[serde(default = "default_high_watermark")]
    pub high_watermark: f64,
    /// Most bytes dram may keep on this disk; the watermark then applies to this
    /// instead of the file system's capacity. Unset: the whole file system.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

pub(super) fn default_high_watermark() -> f64 {
    0.90
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// Files fetched at once, over all databases loading on this node.
    pub concurrency: usize,
    /// A failed load is retried after 1 s, 2 s, 4 s, … up to this many seconds
    /// between tries, for as long as the database stays defined.
    pub retry_max_secs: u64,
    /// Downloaded files are not flushed one by one: a disk is synced once no
    /// file has been written to it for this many milliseconds (and at least
    /// every 30 s while writes go on). After a crash, what was written since
    /// the last sync is verified again at start.
    pub sync_delay_ms: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            concurrency: 32,
            retry_max_secs: 60,
            sync_delay_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Lazily fetched files read within this many milliseconds are not evicted.
    pub eviction_grace_ms: u64,
    /// Bytes of query answers kept on this member, least recently used out
    /// first (0: no result cache). A database version never changes, so a
    /// kept answer never goes stale.
    pub result_bytes: u64,
    /// Distinct recent queries kept per database on the member that was
    /// their root; an alias moved with `warm` replays them against its new
    /// database (0: none kept, none replayed).
    pub warm_queries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            eviction_grace_ms: 10_000,
            result_bytes: 64 << 20,
            warm_queries: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrashConfig {
    /// How long a deleted database stays restorable, in seconds.
    pub lifetime_secs: u64,
}

impl Default for TrashConfig {
    fn default() -> Self {
        TrashConfig {
            lifetime_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Events (reads, downloads, errors) are kept this many seconds…
    pub event_retention_secs: u64,
    /// …and at most this many (the oldest go first).
    pub max_events: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            event_retention_secs: 7 * 24 * 3600,
            max_events: 100_000,
        }
    }
}

impl TrashConfig {
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime_secs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
    /// A client must send a request's headers (and, with TLS, finish its
    /// handshake) within this many milliseconds of connecting or of the last
    /// response; otherwise the connection is closed. Also closes idle
    /// keep-alive connections.
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this many milliseconds of its
    /// headers; otherwise 408 `timeout`.
    pub body_timeout_ms: u64,
    /// On shutdown, how long the requests in flight (maps for other
    /// members' queries among them) have to finish; past it they are
    /// cancelled and their work stops.
    pub shutdown_grace_ms: u64,
    /// Connections open at once. Beyond it the connection idle longest is
    /// closed to admit the new one; when all are busy, the new one is closed.
    pub max_connections: usize,
    /// Connections open at once from one address (the same rule, among that
    /// address's connections).
    pub max_connections_per_ip: usize,
    /// PEM certificate chain: with `tls_key`, the API is served over HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM certificates node-to-node calls trust beside the system's roots
    /// (default: `tls_cert`'s, enough for members sharing one certificate).
    pub tls_ca: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 1024 * 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            shutdown_grace_ms: 5_000,
            max_connections: 1024,
            max_connections_per_ip: 256,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

impl HttpConfig {
    /// Whether the API is served over TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes < 1024 {
            return Err(invalid("http.max_body_bytes", "must be at least 1024"));
        }
        for (field, ms) in [
            ("http.header_timeout_ms", self.header_timeout_ms),
            ("http.body_timeout_ms", self.body_timeout_ms),
        ] {
            if ms == 0 || ms > 3_600_000 {
                return Err(invalid(field, "must be in 1..=3600000"));
            }
        }
        if self.max_connections_per_ip == 0 {
            return Err(invalid("http.max_connections_per_ip", "must be positive"));
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err(invalid("http.max_connections", "must be in 1..=1000000"));
        }
        for (field, path) in [
            ("http.tls_cert", &self.tls_cert),
            ("http.tls_key", &self.tls_key),
            ("http.tls_ca", &self.tls_ca),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(field, "must not be empty (leave it out instead)"));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err(invalid("http.tls_key", "must be set with http.tls_cert")),
            (None, Some(_)) => Err(invalid("http.tls_cert", "must be set with http.tls_key")),
            (None, None) if self.tls_ca.is_some() => Err(invalid(
                "http.tls_ca",
                "needs http.tls_cert and http.tls_key (TLS on)",
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// `map` calls running at once on this node, over all queries; 0 means one
    /// per CPU core.
    pub max_concurrent_maps: usize,
    /// A query's deadline when the request gives none, in milliseconds.
    pub timeout_ms: u64,
    /// The largest deadline a request may ask for, in milliseconds.
    pub max_timeout_ms: u64,
    /// Queries this node runs as root at once (`POST /v1/query/…`); more are
    /// answered 503 `overloaded` with `Retry-After`, never queued.
    pub max_concurrent_queries: usize,
    /// Map requests from other members' queries this node takes at once
    /// (each waits for a map slot within its deadline); more are answered
    /// 503 `overloaded`.
    pub max_map_requests: usize,
    /// How long a holder may take to answer a map request before its shards
    /// are also asked of their other holders (the first full answer wins),
    /// for every request; 0: adaptive — after the 95th percentile of this
    /// root's recent requests of the same analysis while `hedge_budget`
    /// allows, else after four times the holder's recent p99 (at least 200 ms).
    pub holder_timeout_ms: u64,
    /// Share of map requests that may be hedged early (0: none; 0.05: one
    /// in twenty more requests at most).
    pub hedge_budget: f64,
    /// Ask a holder much slower than another holder of the same shard last
    /// (by this root's recent round trips, or what the holder gossips).
    pub adaptive_selection: bool,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            max_concurrent_maps: 0,
            timeout_ms: 30_000,
            max_timeout_ms: 300_000,
            max_concurrent_queries: 256,
            max_map_requests: 1024,
            holder_timeout_ms: 0,
            hedge_budget: 0.05,
            adaptive_selection: true,
        }
    }
}

/// The scrub: every blob re-hashed in the background.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrubConfig {
    /// At most this many bytes hashed per second (the scrub's whole cost).
    pub bytes_per_sec: u64,
    /// A full pass over every blob begins this long after the last one began
    /// (`POST /v1/admin/scrub` starts one now).
    pub interval_secs: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            bytes_per_sec: 64 << 20,
            interval_secs: 7 * 24 * 3600,
        }
    }
}

/// The built-in `sql` analysis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Bytes of memory the SQL work on this node (its stages of every
    /// distributed query; one shard's `map_sql`) may hold; past it the query
    /// fails with 503 `memory_limit` (nothing spills to disk).
    pub memory_limit: u64,
    /// Where this node's SQL worker listens for the stages other members
    /// send it (node-to-node: the cluster secret is required). Empty: the
    /// HTTP listener's address, on a port the system picks (gossiped).
    pub worker_listen: String,
    /// How rows travel between members: `none`, `lz4` or `zstd`.
    pub compression: String,
    /// In a query spread over members, a join whose smaller side is
    /// estimated under this many bytes sends that side to every task
    /// (broadcast) instead of repartitioning both sides across the members
    /// by key. 0: DataFusion's one-process default (1 MiB).
    pub broadcast_join_bytes: u64,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            memory_limit: 2 << 30,
            worker_listen: String::new(),
            compression: "none".into(),
            broadcast_join_bytes: 64 << 20,
        }
    }
}

/// The PostgreSQL wire protocol: SQL clients (psql, psycopg, Grafana,
/// DBeaver) run the same read-only SQL as the `sql` analysis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgConfig {
    /// Serve the protocol at all.
    pub enabled: bool,
    /// Where it listens (port 0: one the system picks).
    pub listen: String,
    /// Connections open at once; one more is refused (SQLSTATE 53300).
    pub max_connections: usize,
    /// A connection that runs nothing for this long is closed (0: never),
    /// as PostgreSQL's `idle_session_timeout`.
    pub idle_timeout_secs: u64,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            enabled: true,
            listen: "127.0.0.1:5433".into(),
            max_connections: 256,
            idle_timeout_secs: 3600,
        }
    }
}

impl QueryConfig {
    /// `max_concurrent_maps`, with 0 resolved to the number of CPU cores.
    pub fn map_slots(&self) -> usize {
        if self.max_concurrent_maps > 0 {
            self.max_concurrent_maps
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Nodes gossip only with nodes of the same cluster id.
    pub id: String,
    /// UDP address gossip listens on (a fixed port: peers must know it).
    pub gossip_listen: String,
    /// The address peers reach this node's gossip at (default: `gossip_listen`).
    pub gossip_advertise: Option<String>,
    /// Gossip addresses (`host:port`) of nodes to join through.
    pub seeds: Vec<String>,
    pub gossip_interval_ms: u64,
    /// How long a dead member stays in gossip (listed, and in every digest
    /// sent) before it is forgotten: quickwit found members kept dead for
    /// hours filling the digest of a large cluster. Also how long a
    /// restarted member waits to hear from a majority of the members it
    /// knew. Read under its old name, `dead_node_grace_period_secs`, too.
    #[serde(alias = "dead_node_grace_period_secs")]
    pub dead_member_grace_secs: u64,
    /// How long gossip keeps deleted keys before collecting them.
    pub marked_for_deletion_grace_period_secs: u64,
    /// How long registry tombstones (deleted aliases and databases) are kept: a
    /// node away for longer must rejoin with a fresh data directory.
    pub tombstone_lifetime_secs: u64,
    /// A node whose registry digest differs from the majority's for longer than
    /// this is listed as disagreeing.
    pub disagreement_secs: u64,
    /// May this node be elected primary (the one that does destructive work)?
    pub primary_eligible: bool,
    /// How long a new primary waits before its first destructive action.
    pub primary_settle_secs: u64,
    /// How long after a member is seen dead its shards get new copies elsewhere
    /// (a restart within it causes no copying).
    pub node_left_delay_secs: u64,
    /// Extra copies the primary trashes per sync round, and shard moves the
    /// rebalancer runs at once.
    pub max_concurrent_moves: usize,
    /// While a member's disk is past its high watermark, the primary deletes one
    /// garbage-collection-eligible database per this many seconds.
    pub gc_interval_secs: u64,
    /// Garbage collection never takes a database defined less than this many
    /// seconds ago (a database just added is about to be used, and a disk
    /// filled by others should not empty dram of what it was just given).
    pub gc_min_age_secs: u64,
    /// The rebalancer moves copies only off members whose use is more than this
    /// fraction of their capacity above the mean.
    pub rebalance_threshold: f64,
    /// Each database's copies are spread evenly over the members (by
    /// weight, within a zone) after rendezvous hashing places them; `false`:
    /// rendezvous alone, which moves fewer copies when members join or
    /// leave but may put most of a database on one member. Must be the same
    /// on every member (they would disagree on placement).
    pub even_spread: bool,
    /// A change of definitions or aliases is answered once every live member
    /// has it (`"acknowledged": true`), or after this many milliseconds
    /// (`false`: it is applied here and still spreading). 0: answer at once.
    pub ack_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            id: "dram".to_string(),
            gossip_listen: "127.0.0.1:7071".to_string(),
            gossip_advertise: None,
            seeds: Vec::new(),
            gossip_interval_ms: 1000,
            dead_member_grace_secs: 15 * 60,
            marked_for_deletion_grace_period_secs: 3600,
            tombstone_lifetime_secs: 7 * 24 * 3600,
            disagreement_secs: 30,
            primary_eligible: true,
            primary_settle_secs: 10,
            node_left_delay_secs: 60,
            max_concurrent_moves: 2,
            gc_interval_secs: 60,
            gc_min_age_secs: 3600,
            ack_timeout_ms: 10_000,
            rebalance_threshold: 0.05,
            even_spread: true,
        }
    }
}

/// Backups of the registry (definitions, aliases, pins) to object storage,
/// written by the primary (see `cluster::backup`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Where backups go: a store URL (`file:///var/backups/dram`,
    /// `s3://bucket/dram-backups`, `memory://…`; S3 settings from `[store]`).
    /// Unset: no backups, and the admin backup routes answer 409.
    pub url: Option<String>,
    /// Valid backups kept; older ones are deleted once a new one is verified.
    pub keep: usize,
    /// Every this many seconds the primary checks that the newest backup holds
    /// the current registry, and writes one if it does not.
    pub interval_secs: u64,
    /// A registry change is backed up once no other change came for this long.
    pub debounce_ms: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            url: None,
            keep: 10,
            interval_secs: 3600,
            debounce_ms: 2000,
        }
    }
}

impl ClusterConfig {
    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip_interval_ms)
    }

    /// The address gossip listens on and the one it advertises.
    pub fn gossip_addresses(&self) -> Result<(SocketAddr, SocketAddr), ConfigError> {
        let listen: SocketAddr = self
            .gossip_listen
            .parse()
            .map_err(|e| invalid("cluster.gossip_listen", format!("not an address: {e}")))?;
        if listen.port() == 0 {
            return Err(invalid(
                "cluster.gossip_listen",
                "port 0 is not allowed: peers must know the gossip port",
            ));
        }
        let advertise = match &self.gossip_advertise {
            Some(text) => text
                .parse()
                .map_err(|e| invalid("cluster.gossip_advertise", format!("not an address: {e}")))?,
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    "cluster.gossip_advertise",
                    "must be set when gossip_listen is an unspecified address (0.0.0.0 or ::)",
                ));
            }
            None => listen,
        };
        Ok((listen, advertise))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Required (as `Authorization: Bearer …`) for every call that changes
    /// something; also `DRAM_ADMIN_TOKEN`. Unset: changes are open.
    pub admin_token: Option<String>,
    /// Shared by the members: node-to-node calls carry it.
    pub cluster_secret: Option<String>,
    /// Reads (GET, queries, /metrics) need the admin token, the cluster secret
    /// or a signed token for the database queried.
    pub require_token_for_reads: bool,
    /// Signs access tokens (`POST /v1/tokens`); unset: derived from
    /// `cluster_secret`. The same on every member.
    pub token_key: Option<String>,
    /// The key before the last rotation: its tokens are still accepted for
    /// `previous_token_key_grace_secs` after this node starts.
    pub previous_token_key: Option<String>,
    pub previous_token_key_grace_secs: u64,
    /// The longest `ttl` a token may be given.
    pub max_token_ttl_secs: u64,
    /// Lets a node listen on a non-loopback address without `admin_token`
    /// or `cluster_secret` (it warns at every start). Off: it refuses to.
    pub insecure: bool,
}

impl AuthConfig {
    /// What members present to each other on node-to-node calls (and
    /// require of each other): the cluster secret, or the admin token when
    /// no cluster secret is set. `None`: both unset, node-to-node calls are
    /// open (allowed only on loopback addresses, or with `insecure`).
    pub fn peer_secret(&self) -> Option<&str> {
        self.cluster_secret
            .as_deref()
            .or(self.admin_token.as_deref())
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            admin_token: None,
            cluster_secret: None,
            require_token_for_reads: false,
            token_key: None,
            previous_token_key: None,
            previous_token_key_grace_secs: 24 * 3600,
            max_token_ttl_secs: 30 * 24 * 3600,
            insecure: false,
        }
    }
}
