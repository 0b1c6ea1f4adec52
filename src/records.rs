//! The records kept in the catalog: what a database is and where it stands, each
//! part of it, aliases, lazily cached files and read counters.

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;

/// How a database is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every file downloaded before the database is served.
    #[default]
    Full,
    /// Manifest and global data at once; shard files on first open.
    Lazy,
}

/// How many copies of each shard the cluster keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Replicas {
    Count(u32),
    All(AllReplicas),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllReplicas {
    All,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas::Count(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbState {
    /// Manifest being read or files being downloaded; not served yet.
    Loading,
    /// Served.
    Ready,
    /// Loading failed; `error` says why. Not served.
    Failed,
    /// Deleted: not served, purged after the trash lifetime unless restored.
    Trashed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRecord {
    pub name: String,
    /// The source as resolved to an absolute URL.
    pub source: String,
    pub mode: Mode,
    pub replicas: Replicas,
    /// Never collected as garbage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
    pub state: DbState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// sha256 of the manifest, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trashed_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartState {
    Downloading,
    Ready,
    /// Lazy: files are fetched on first open.
    Lazy,
    Failed,
}

/// One part (global data or a shard) of a database on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The disk that holds it.
    pub disk: String,
    pub state: PartState,
    pub files: u64,
    pub bytes: u64,
    /// Set when the primary trashed this copy: no longer served, purged after
    /// the trash lifetime unless placement wants it back first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trashed_ms: Option<u64>,
    /// When this copy became ready (its download finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_ms: Option<u64>,
    /// Why the last load of a `failed` copy failed (it is tried again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PartRecord {
    /// Whether a query may read this copy.
    pub fn is_serving(&self) -> bool {
        self.trashed_ms.is_none() && matches!(self.state, PartState::Ready | PartState::Lazy)
    }
}

/// An alias; `target: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub name: String,
    pub target: Option<String>,
    pub version: Hlc,
    pub updated_ms: u64,
}

/// A lazily fetched file that is on local disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub sha256: String,
    pub size: u64,
    pub disk: String,
    pub last_access_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    /// Files opened.
    pub reads: u64,
    /// Queries that mapped it.
    #[serde(default)]
    pub queries: u64,
    pub last_read_ms: Option<u64>,
}
