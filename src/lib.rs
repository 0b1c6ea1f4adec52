//! dram (Data Retrieval Application Manager): serve read-only databases from
//! object storage on local disk.
//!
//! A *database* is an immutable folder in object storage (`shards/<id>/**`,
//! `global/**`, and a `dram.json` manifest). A node downloads it, fully or lazily,
//! verifies every byte, keeps each distinct file once (content-addressed blobs
//! hard-linked into place), serves it, and deletes it through a trash.
//!
//! # Layout
//!
//! Modules import downwards only: the leaves first, then the core, then the
//! layers over it. The core (`node`, `cluster`, `primary`, `query`) still
//! import one another; taking that circle apart is issue 21's next step.
//!
//! Leaves (import no module of the core):
//! - [`clock`]: the wall clock, milliseconds since the epoch.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`catalog`]: the node's durable state in redb.
//! - [`storage`]: sources in object storage (`[store]`), manifests, fetching,
//!   local disks.
//! - [`placement`]: which members should hold each shard (weighted rendezvous
//!   hashing, zones, full disks) and the rebalancer's moves, from the members'
//!   inventories (`placement::inventory`) — pure.
//! - [`registry`]: the cluster-wide definitions, aliases and pins, merged
//!   last-writer-wins by hybrid logical clock — pure.
//! - [`net`]: node to node: the peer client, the cluster header, TLS files.
//! - `hlc`, `names`, `auth`: hybrid logical clocks, names, tokens.
//!
//! Core:
//! - [`node`]: the node itself: loads, trash, aliases, stats, shard access.
//! - [`cluster`]: gossip membership with its sync loop, health, the registry's
//!   backups.
//! - [`primary`]: primary election, and the primary's actions (trashing extra
//!   copies, garbage collection).
//! - [`query`]: analyses (`map` per shard, `reduce`, `finish`) and running them;
//!   `query::sql` is the distributed SQL engine (datafusion-distributed: the
//!   coordinator, each member's worker, shard scans routed to their holders,
//!   co-located tables, the `dram://` object store over every database's
//!   files) with the `sql` analysis (`query::sql::analysis`).
//!
//! Over the core:
//! - [`builtin`]: the analyses the `dram` binary serves out of the box.
//! - [`api`]: the HTTP API over warp.
//! - [`server`]: a node with its HTTP API, as `dram serve` runs it.
//! - [`builder`]: building a node with analyses and extra routes.
//! - [`publish`]: uploading a local folder as a database.
//! - [`client`]: the HTTP client the command line uses.

pub mod api;
pub mod auth;
pub mod builder;
pub mod builtin;
pub mod catalog;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
mod connections;
pub mod hlc;
pub mod names;
pub mod net;
pub mod node;
pub mod placement;
pub mod primary;
pub mod publish;
pub mod query;
pub mod registry;
pub mod server;
pub mod storage;
mod sync;

pub use builder::NodeBuilder;
pub use config::Config;
pub use node::{Node, NodeError, ShardContext};
pub use query::{Analysis, AnalysisError, Shard};
pub use server::Server;
