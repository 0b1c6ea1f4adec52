//! What gossip and `GET /v1/cluster` carry: the values of the gossip keys and
//! the cluster as one node shows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::RegistryDigest;
use crate::cluster::health::HealthReport;
use crate::local::InventoryDigest;
use crate::observe::Gauge;

/// The `node` key: what a member is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of its HTTP API.
    pub http: String,
    pub version: String,
    pub started_ms: u64,
    #[serde(default)]
    pub zone: String,
    /// Its API is served over HTTPS (`http.tls_cert`). Absent from the gossip
    /// of members that predate TLS: plain HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// Address of its SQL worker (distributed SQL's node-to-node endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// The gossip wire versions it reads (chitchat's protocol version
    /// codes; see `cluster::wire`). Absent from members that predate V1:
    /// V0 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gossip: Vec<u8>,
}

impl NodeInfo {
    /// The base URL of its API: `http://…` or `https://…`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.http)
    }
}

/// The `primary` key: whom a member names as primary, the highest term it knows,
/// and whether it may be primary itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<String>,
    pub term: u64,
    pub eligible: bool,
}

/// The primary as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryStatus {
    pub id: String,
    pub term: u64,
}

/// A `disk:<id>` key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSummary {
    pub total: u64,
    /// Rounded down to [`DiskSummary::free_step`]: the exact figure moves with
    /// every write on the host, and each change would be gossiped again.
    pub free: u64,
    pub used: u64,
    /// What dram may fill (the placement weight).
    #[serde(default)]
    pub capacity: u64,
    /// Past its high watermark.
    #[serde(default)]
    pub full: bool,
    /// The high watermark, in thousandths of `capacity` (the dashboard
    /// draws it; older members do not send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_permille: Option<u16>,
}

impl DiskSummary {
    /// The step `free` is gossiped in: 0.1% of the disk, at least 1 MiB.
    pub fn free_step(total: u64) -> u64 {
        (total / 1000).max(1 << 20)
    }

    /// `free` rounded down to its step.
    pub fn coarse_free(free: u64, total: u64) -> u64 {
        let step = Self::free_step(total);
        free / step * step
    }
}

/// One member as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub live: bool,
    #[serde(rename = "self")]
    pub is_self: bool,
    pub gossip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeInfo>,
    pub disks: BTreeMap<String, DiskSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventoryDigest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryDigest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PrimaryKey>,
    /// Map work under way and its recent p99 (`load` key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<crate::observe::Load>,
    /// The member is shutting down (`leaving` key): no new map requests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Bytes of its gossip keys and values, as gossip carries them: the
    /// same whatever it holds (its inventory travels as a digest).
    #[serde(default)]
    pub gossip_bytes: u64,
}

/// A member whose registry digest has differed from the majority's for too long.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disagreement {
    pub node: String,
    pub since_ms: u64,
    pub hash: String,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub node: String,
    #[serde(flatten)]
    pub health: HealthReport,
    pub members: Vec<Member>,
    pub registry: RegistryDigest,
    pub disagreements: Vec<Disagreement>,
    /// The primary confirmed by a majority of the known members, if any (none on
    /// the minority side of a partition).
    pub primary: Option<PrimaryStatus>,
    /// The gossip wire version this member sends: 1 (zstd-compressed
    /// digests) once every live member reads it, 0 before.
    #[serde(default)]
    pub gossip_version: u8,
}

/// One holder of a shard, as `GET /v1/cluster/shards` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    pub state: crate::placement::HeldState,
    pub pct: u8,
}

/// `GET /v1/cluster/shards?database=D`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardHolders {
    pub database: String,
    pub global: Vec<Holder>,
    pub shards: BTreeMap<String, Vec<Holder>>,
}

impl ClusterStatus {
    /// The gauges of a scrape that this node's view of the cluster gives:
    /// members by state, the primary's term, whether this node is primary,
    /// registry disagreements.
    pub fn gauges(&self) -> Vec<Gauge> {
        let mut out = Vec::new();
        let live = self.members.iter().filter(|m| m.live).count();
        let dead = self.members.len() - live;
        for (state, count) in [("live", live), ("dead", dead)] {
            out.push(
                Gauge::new(
                    "dram_members",
                    "Cluster members this node sees, by state.",
                    count as f64,
                )
                .label("state", state),
            );
        }
        let primary = self.primary.as_ref();
        out.push(Gauge::new(
            "dram_primary_term",
            "Term of the primary this node sees confirmed (0: none).",
            primary.map_or(0, |p| p.term) as f64,
        ));
        out.push(Gauge::new(
            "dram_is_primary",
            "1 when this node is the confirmed primary.",
            f64::from(u8::from(primary.is_some_and(|p| p.id == self.node))),
        ));
        out.push(Gauge::new(
            "dram_registry_disagreements",
            "Members whose registry has differed from the majority's for too long.",
            self.disagreements.len() as f64,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::DiskSummary;

    #[test]
    fn free_bytes_are_gossiped_in_steps() {
        let total = 252_000_000_000;
        let step = DiskSummary::free_step(total);
        assert_eq!(step, 252_000_000);
        // Writes of a few MB elsewhere on the host leave the gossiped value alone.
        let a = DiskSummary::coarse_free(22_000_100_000, total);
        let b = DiskSummary::coarse_free(22_000_100_000 - 30_000_000, total);
        assert_eq!(a, b);
        assert!(a <= 22_000_100_000 && 22_000_100_000 - a < step);
        // Small disks step by 1 MiB; nothing free stays nothing.
        assert_eq!(DiskSummary::free_step(10 << 20), 1 << 20);
        assert_eq!(DiskSummary::coarse_free(0, 10 << 20), 0);
    }
}
