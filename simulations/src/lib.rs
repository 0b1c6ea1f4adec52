//! dram's simulation harness: does the cluster keep its promises under faults,
//! and how do its costs grow with its size?
//!
//! # Layout
//! - `scenario/`: part 1 — scripts (`Op`) run against real nodes in this
//!   process, with invariants checked all the time (`scenario/monitor.rs`).
//! - `scenarios.rs`: the shipped scripts, with pinned seeds as tests.
//! - `cluster.rs`: the nodes, each on its own runtime (so it can crash).
//! - `faults.rs`: the faulty object store and gossip transport.
//! - `data.rs`: the published databases and their reference answers.
//! - `scale.rs`: part 2 — placement, rebalancing, elections and a gossip model
//!   at 10 to 10,000 members, without sockets.
//! - `report.rs`: the scenario table.
//! - `bench/`: dram measured beside its references (rclone, object_store,
//!   DataFusion, warp), one file per case.

pub mod bench;
pub mod cluster;
pub mod data;
pub mod faults;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod scenarios;
pub mod tpch;
