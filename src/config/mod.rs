//! Node configuration: one `Config` struct read from TOML, with embedded defaults so
//! that `dram serve` runs with no file at all. `validate()` names the bad field.
//! Every option here is shown, with its default, in `config.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    pub sql: SqlConfig,
    pub pg: PgConfig,
    pub scrub: ScrubConfig,
    pub cluster: ClusterConfig,
    pub backup: BackupConfig,
    pub auth: AuthConfig,
}

mod sections;

pub use sections::*;

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
        if self.pg.enabled {
            self.pg
                .listen
                .parse::<SocketAddr>()
                .map_err(|e| invalid("pg.listen", format!("not an address: {e}")))?;
            if self.pg.max_connections == 0 {
                return Err(invalid("pg.max_connections", "must be positive"));
            }
        }
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
        if self.scrub.bytes_per_sec < 1 << 20 {
            return Err(invalid(
                "scrub.bytes_per_sec",
                "must be at least 1048576 (1 MiB/s)",
            ));
        }
        if self.scrub.interval_secs == 0 {
            return Err(invalid("scrub.interval_secs", "must be positive"));
        }
        if self.sql.memory_limit < 1 << 20 {
            return Err(invalid(
                "sql.memory_limit",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if !matches!(self.sql.compression.as_str(), "none" | "lz4" | "zstd") {
            return Err(invalid(
                "sql.compression",
                format!("must be none, lz4 or zstd, not {:?}", self.sql.compression),
            ));
        }
        if !(0.0..1.0).contains(&self.cluster.rebalance_threshold) {
            return Err(invalid("cluster.rebalance_threshold", "must be in [0, 1)"));
        }
        crate::storage::source::SourceUrl::parse(&self.store.url)
            .map_err(|e| invalid("store.url", e.to_string()))?;
        if let Some(url) = &self.backup.url {
            crate::storage::source::SourceUrl::parse(url)
                .map_err(|e| invalid("backup.url", e.to_string()))?;
        }
        if self.backup.keep == 0 {
            return Err(invalid("backup.keep", "must be at least 1"));
        }
        if self.backup.interval_secs == 0 {
            return Err(invalid("backup.interval_secs", "must be at least 1"));
        }
        if self.download.concurrency == 0 || self.download.concurrency > 1024 {
            return Err(invalid("download.concurrency", "must be in 1..=1024"));
        }
        for (field, value) in [
            ("auth.admin_token", &self.auth.admin_token),
            ("auth.cluster_secret", &self.auth.cluster_secret),
            ("auth.token_key", &self.auth.token_key),
            ("auth.previous_token_key", &self.auth.previous_token_key),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(field, "must not be empty (leave it out instead)"));
            }
        }
        if self.auth.require_token_for_reads && self.auth.admin_token.is_none() {
            return Err(invalid(
                "auth.require_token_for_reads",
                "needs auth.admin_token (or DRAM_ADMIN_TOKEN): without it anyone could make tokens",
            ));
        }
        if let Some(advertise) = &self.node.http_advertise
            && advertise.rsplit_once(':').is_none_or(|(host, port)| {
                host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0)
            })
        {
            return Err(invalid(
                "node.http_advertise",
                format!("{advertise:?} is not host:port"),
            ));
        }
        if self.download.retry_max_secs == 0 {
            return Err(invalid("download.retry_max_secs", "must be at least 1"));
        }
        self.http.validate()?;
        for (field, value) in [
            (
                "query.max_concurrent_queries",
                self.query.max_concurrent_queries,
            ),
            ("query.max_map_requests", self.query.max_map_requests),
        ] {
            if value == 0 || value > 1_000_000 {
                return Err(invalid(field, "must be in 1..=1000000"));
            }
        }
        if self.query.max_concurrent_maps > 4096 {
            return Err(invalid("query.max_concurrent_maps", "must be in 0..=4096"));
        }
        if self.query.timeout_ms == 0 {
            return Err(invalid("query.timeout_ms", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.query.hedge_budget) {
            return Err(invalid(
                "query.hedge_budget",
                "must be a share of requests in 0..=1 (0.05: at most 5% more)",
            ));
        }
        if self.cache.warm_queries > 10_000 {
            return Err(invalid(
                "cache.warm_queries",
                "must be in 0..=10000 (queries kept per database, and replayed by a warm alias move)",
            ));
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
                "cluster.dead_member_grace_secs",
                self.cluster.dead_member_grace_secs,
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
            ("auth.max_token_ttl_secs", self.auth.max_token_ttl_secs),
            (
                "cluster.max_concurrent_moves",
                self.cluster.max_concurrent_moves as u64,
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        self.check_exposure()
    }

    /// The addresses this node listens on that other machines can reach
    /// (anything but loopback), by setting name.
    pub fn exposed_listeners(&self) -> Vec<&'static str> {
        let reachable = |address: &str| {
            address
                .parse::<SocketAddr>()
                .is_ok_and(|a| !a.ip().is_loopback())
        };
        let mut exposed = Vec::new();
        if reachable(&self.node.http_listen) {
            exposed.push("node.http_listen");
        }
        if reachable(&self.cluster.gossip_listen) {
            exposed.push("cluster.gossip_listen");
        }
        if reachable(&self.sql.worker_listen) {
            exposed.push("sql.worker_listen");
        }
        if self.pg.enabled && reachable(&self.pg.listen) {
            exposed.push("pg.listen");
        }
        exposed
    }

    /// Closed by default: a node reachable from other machines needs an
    /// admin token (else anyone may change the cluster) and a cluster secret
    /// (else anyone may join its gossip and call its node-to-node API),
    /// unless `auth.insecure` says otherwise.
    fn check_exposure(&self) -> Result<(), ConfigError> {
        let exposed = self.exposed_listeners();
        if exposed.is_empty() || self.auth.insecure {
            return Ok(());
        }
        for (field, value, env) in [
            (
                "auth.admin_token",
                &self.auth.admin_token,
                "DRAM_ADMIN_TOKEN",
            ),
            (
                "auth.cluster_secret",
                &self.auth.cluster_secret,
                "DRAM_CLUSTER_SECRET",
            ),
        ] {
            if value.is_none() {
                return Err(invalid(
                    field,
                    format!(
                        "must be set (or {env}) when {} is not a loopback address; \
                         auth.insecure = true runs without it",
                        exposed.join(" or ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
