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
//! Modules import downwards only (no module imports one that imports it
//! back): the leaves first, then this member's own state, the cluster, the
//! primary and the queries over them, and the node composing them.
//!
//! Leaves:
//! - [`clock`]: where time comes from ([`clock::Clock`]; a test's
//!   [`clock::ManualClock`]).
//! - [`records`]: the plain records the catalog keeps (databases, parts,
//!   aliases).
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
//! - `hlc`, `names`, `auth`, `sync`: hybrid logical clocks, names, tokens, locks.
//!
//! Components, each made with what it needs (no pointer back to the node):
//! - [`observe`]: Prometheus metrics, the event log, the load of map work.
//! - [`local`]: this member's own data ([`Local`]): loads (fetch, verify,
//!   link, durable marks), the lazy cache, trash and purge, scrub, space,
//!   definitions and aliases as stored here, stats, the index, shard access;
//!   its state is held by small components (`Loads`, `Claims`, `Files`,
//!   `Usage`, `Versions`).
//! - [`cluster`]: gossip ([`cluster::Membership`]): keys, pulls, the membership
//!   view, health, disagreement, the registry's backups, and this member's
//!   placement each round.
//! - [`primary`]: the election (pure), this member's part in it
//!   ([`primary::Role`]), and the settled primary's round (verified trashes of
//!   extra copies, rebalancing moves, garbage collection) and reports.
//! - [`query`]: analyses (`map` per shard, `reduce`, `finish`) and running them
//!   ([`query::Queries`]: root, fan-out, leaf); `query::sql` is the distributed
//!   SQL engine (datafusion-distributed: the coordinator, each member's worker,
//!   shard scans routed to their holders, co-located tables, the `dram://`
//!   object store over every database's files) with the `sql` analysis.
//!
//! Composition:
//! - [`node`]: a [`Node`] composes the components and runs the cluster's
//!   round (sync, election, placement, the primary's round).
//!
//! Over the node:
//! - [`api`]: the HTTP API over warp.
//! - [`server`]: a node with its HTTP API, as `dram serve` runs it.
//! - [`builder`]: building a node with analyses and extra routes.
//! - [`builtin`]: the analyses the `dram` binary serves out of the box.
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
pub mod local;
pub mod names;
pub mod net;
pub mod node;
pub mod observe;
#[cfg(feature = "sql")]
pub mod pg;
pub mod placement;
pub mod primary;
pub mod publish;
pub mod query;
pub mod records;
pub mod registry;
pub mod server;
pub mod storage;
mod sync;

pub use builder::NodeBuilder;
pub use config::Config;
pub use local::{Local, NodeError, ShardContext};
pub use node::Node;
pub use query::{Analysis, AnalysisError, Shard};
pub use server::Server;
