//! The cluster: what nodes agree on and how they learn it.
//!
//! - `registry`: the cluster-wide desired state (definitions, aliases) and its
//!   last-writer-wins merge — pure.

//! - `health`: green / yellow / red from definitions and inventories — pure.
//! - `view`: the cluster as placement sees it, from gossip and inventories — pure.
//! - `membership`: chitchat gossip of small digests, and the sync loop that pulls
//!   registries and inventories over HTTP when digests differ.
//! - `backup`: backups of the registry to object storage, and restoring them.

pub mod backup;
pub mod health;
pub mod membership;
pub mod signed_gossip;
pub mod view;
pub mod wire;

pub use crate::registry::{
    Changes, Definition, DefinitionRecord, PinRecord, Registry, RegistryDigest,
};
pub use health::{Health, HealthReport};
pub use membership::{ClusterStatus, Member, Membership, PrimaryKey, PrimaryStatus, ShardHolders};
pub(crate) use membership::{Peer, Round, advertised};
pub use signed_gossip::SignedUdpTransport;
