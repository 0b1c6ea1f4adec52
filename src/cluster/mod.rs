//! The cluster: what nodes agree on and how they learn it.
//!
//! - `registry`: the cluster-wide desired state (definitions, aliases) and its
//!   last-writer-wins merge — pure.

pub mod registry;

pub use registry::{Changes, Definition, DefinitionRecord, Registry, RegistryDigest};
