//! Node configuration: one `Config` struct read from TOML, with embedded defaults so
//! that `dram serve` runs with no file at all. `validate()` names the bad field.
//! Every option here is shown, with its default, in `config.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration problem, naming the field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    /// Data directories. Empty means one disk at `node.data_dir`.
    pub disks: Vec<DiskConfig>,
    pub store: StoreConfig,
    pub download: DownloadConfig,
    pub cache: CacheConfig,
    pub trash: TrashConfig,
    pub index: IndexConfig,
    pub http: HttpConfig,
    pub query: QueryConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node id; generated once and kept in `data_dir` when empty.
    pub id: String,
    pub data_dir: PathBuf,
    pub http_listen: String,
    pub zone: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: String::new(),
            data_dir: PathBuf::from("./dram-data"),
            http_listen: "127.0.0.1:7070".to_string(),
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

fn default_high_watermark() -> f64 {
    0.90
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Base URL that relative database sources resolve against.
    pub url: String,
    /// S3 endpoint (for S3-compatible servers); AWS_ENDPOINT otherwise.
    pub endpoint: Option<String>,
    /// S3 region; AWS_REGION / AWS_DEFAULT_REGION otherwise.
    pub region: Option<String>,
    /// Allow plain-HTTP endpoints; AWS_ALLOW_HTTP otherwise.
    pub allow_http: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "file://./dram-store".to_string(),
            endpoint: None,
            region: None,
            allow_http: None,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// Files fetched at once, over all databases loading on this node.
    pub concurrency: usize,
    /// A failed load is retried after 1 s, 2 s, 4 s, … up to this many seconds
    /// between tries, for as long as the database stays defined.
    pub retry_max_secs: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            concurrency: 32,
            retry_max_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Lazily fetched files read within this many milliseconds are not evicted.
    pub eviction_grace_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            eviction_grace_ms: 10_000,
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
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 1024 * 1024,
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
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            max_concurrent_maps: 0,
            timeout_ms: 30_000,
            max_timeout_ms: 300_000,
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
    /// How long a dead node is still listed before it is forgotten.
    pub dead_node_grace_period_secs: u64,
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
    /// The rebalancer moves copies only off members whose use is more than this
    /// fraction of their capacity above the mean.
    pub rebalance_threshold: f64,
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
            dead_node_grace_period_secs: 3600,
            marked_for_deletion_grace_period_secs: 3600,
            tombstone_lifetime_secs: 7 * 24 * 3600,
            disagreement_secs: 30,
            primary_eligible: true,
            primary_settle_secs: 10,
            node_left_delay_secs: 60,
            max_concurrent_moves: 2,
            gc_interval_secs: 60,
            ack_timeout_ms: 10_000,
            rebalance_threshold: 0.05,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub admin_token: Option<String>,
    pub cluster_secret: Option<String>,
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The disks to use: the configured ones, or one at `node.data_dir`.
    pub fn effective_disks(&self) -> Vec<DiskConfig> {
        if self.disks.is_empty() {
            vec![DiskConfig {
                path: self.node.data_dir.clone(),
                high_watermark: default_high_watermark(),
                max_bytes: None,
            }]
        } else {
            self.disks.clone()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.node.id.is_empty() && !crate::names::is_valid_name(&self.node.id) {
            return Err(invalid(
                "node.id",
                "must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}",
            ));
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data_dir", "must not be empty"));
        }
        self.node
            .http_listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("node.http_listen", format!("not an address: {e}")))?;
        for (i, disk) in self.disks.iter().enumerate() {
            if disk.path.as_os_str().is_empty() {
                return Err(invalid(format!("disks[{i}].path"), "must not be empty"));
            }
            if disk.max_bytes == Some(0) {
                return Err(invalid(format!("disks[{i}].max_bytes"), "must be positive"));
            }
            if !(disk.high_watermark > 0.0 && disk.high_watermark <= 1.0) {
                return Err(invalid(
                    format!("disks[{i}].high_watermark"),
                    "must be in (0, 1]",
                ));
            }
        }
        if !(0.0..1.0).contains(&self.cluster.rebalance_threshold) {
            return Err(invalid("cluster.rebalance_threshold", "must be in [0, 1)"));
        }
        crate::storage::source::SourceUrl::parse(&self.store.url)
            .map_err(|e| invalid("store.url", e.to_string()))?;
        if self.download.concurrency == 0 || self.download.concurrency > 1024 {
            return Err(invalid("download.concurrency", "must be in 1..=1024"));
        }
        if self.download.retry_max_secs == 0 {
            return Err(invalid("download.retry_max_secs", "must be at least 1"));
        }
        if self.http.max_body_bytes < 1024 {
            return Err(invalid("http.max_body_bytes", "must be at least 1024"));
        }
        if self.query.max_concurrent_maps > 4096 {
            return Err(invalid("query.max_concurrent_maps", "must be in 0..=4096"));
        }
        if self.query.timeout_ms == 0 {
            return Err(invalid("query.timeout_ms", "must be positive"));
        }
        if self.query.max_timeout_ms < self.query.timeout_ms {
            return Err(invalid(
                "query.max_timeout_ms",
                "must be at least query.timeout_ms",
            ));
        }
        if self.cluster.id.is_empty() {
            return Err(invalid("cluster.id", "must not be empty"));
        }
        self.cluster.gossip_addresses()?;
        for (i, seed) in self.cluster.seeds.iter().enumerate() {
            if seed.rsplit_once(':').is_none_or(|(host, port)| {
                host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0)
            }) {
                return Err(invalid(
                    format!("cluster.seeds[{i}]"),
                    format!("{seed:?} is not host:port"),
                ));
            }
        }
        if self.cluster.gossip_interval_ms == 0 || self.cluster.gossip_interval_ms > 60_000 {
            return Err(invalid(
                "cluster.gossip_interval_ms",
                "must be in 1..=60000",
            ));
        }
        for (field, value) in [
            (
                "cluster.dead_node_grace_period_secs",
                self.cluster.dead_node_grace_period_secs,
            ),
            (
                "cluster.marked_for_deletion_grace_period_secs",
                self.cluster.marked_for_deletion_grace_period_secs,
            ),
            (
                "cluster.tombstone_lifetime_secs",
                self.cluster.tombstone_lifetime_secs,
            ),
            ("cluster.disagreement_secs", self.cluster.disagreement_secs),
            ("cluster.gc_interval_secs", self.cluster.gc_interval_secs),
            (
                "index.event_retention_secs",
                self.index.event_retention_secs,
            ),
            ("index.max_events", self.index.max_events),
            (
                "cluster.max_concurrent_moves",
                self.cluster.max_concurrent_moves as u64,
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../config.example.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        parsed.validate().unwrap();
        let defaults = Config::default();
        assert_eq!(parsed.node.http_listen, defaults.node.http_listen);
        assert_eq!(parsed.store.url, defaults.store.url);
        assert_eq!(parsed.download.concurrency, defaults.download.concurrency);
        assert_eq!(parsed.trash.lifetime_secs, defaults.trash.lifetime_secs);
        assert_eq!(parsed.http.max_body_bytes, defaults.http.max_body_bytes);
        assert_eq!(parsed.query.timeout_ms, defaults.query.timeout_ms);
        assert_eq!(parsed.query.max_timeout_ms, defaults.query.max_timeout_ms);
        assert_eq!(
            parsed.query.max_concurrent_maps,
            defaults.query.max_concurrent_maps
        );
        assert_eq!(
            serde_json::to_value(&parsed.cluster).unwrap(),
            serde_json::to_value(&defaults.cluster).unwrap()
        );
    }

    #[test]
    fn validate_names_the_field() {
        let mut config = Config::default();
        config.disks.push(DiskConfig {
            path: "/tmp/x".into(),
            high_watermark: 1.5,
            max_bytes: None,
        });
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("disks[0].high_watermark"), "{err}");

        let mut config = Config::default();
        config.node.http_listen = "nope".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("node.http_listen"), "{err}");

        let mut config = Config::default();
        config.cluster.seeds = vec!["127.0.0.1".into()];
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("cluster.seeds[0]"), "{err}");

        let mut config = Config::default();
        config.cluster.gossip_listen = "0.0.0.0:7071".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("cluster.gossip_advertise"), "{err}");

        let mut config = Config::default();
        config.store.url = "ftp://x".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("store.url"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = toml::from_str::<Config>("[node]\nidd = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("idd"), "{err}");
    }
}
