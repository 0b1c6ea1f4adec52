//! Placement cost: how long one round of the placement core takes as clusters
//! grow — `plan` (every shard's chosen members, downloads, extra copies) and the
//! rebalancer over a settled cluster — for N members and S shards with 3 copies
//! each. Every member computes `plan` once per gossip round; the primary also
//! runs the rebalancer.
//!
//! ```text
//! cargo run --release --example bench_placement [-- --nodes 10,100,1000 --shards 1000,10000]
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use dram::catalog::Replicas;
use dram::placement::Candidate;
use dram::placement::HeldState;
use dram::placement::plan::{ClusterState, Layout, plan};
use dram::placement::rebalance::{Usage, rebalance};

fn main() -> Result<()> {
    let nodes = list_arg("--nodes", "10,100,1000")?;
    let shards = list_arg("--shards", "1000,10000")?;
    println!(
        "{:>6} {:>7} {:>14} {:>16} {:>14}",
        "nodes", "shards", "plan ms", "rebalance ms", "moves found"
    );
    for &n in &nodes {
        for &s in &shards {
            let (plan_ms, rebalance_ms, moves) = measure(n, s);
            println!("{n:>6} {s:>7} {plan_ms:>14.1} {rebalance_ms:>16.1} {moves:>14}");
        }
    }
    Ok(())
}

fn measure(nodes: usize, shards: usize) -> (f64, f64, usize) {
    let candidates: Vec<Candidate> = (0..nodes)
        .map(|i| Candidate {
            id: format!("node-{i:04}"),
            zone: format!("z{}", i % 3),
            weight: 1_000 + (i as u64 % 4) * 250,
            full: false,
        })
        .collect();
    let layout = Layout {
        name: "events".into(),
        replicas: Replicas::Count(3),
        shards: (0..shards)
            .map(|s| (format!("{s:05}"), 1_000_000 + (s as u64 % 7) * 400_000))
            .collect(),
        global_bytes: 0,
    };
    let mut cluster = ClusterState::new(candidates);
    // Settle the cluster: every chosen copy ready.
    let layouts = [layout];
    for action in plan(&layouts, &cluster).downloads {
        cluster.set_state(
            &action.node,
            &action.database,
            &action.shard,
            HeldState::Ready,
        );
    }
    let started = Instant::now();
    let settled = plan(&layouts, &cluster);
    let plan_ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(settled.downloads.is_empty() && settled.trashes.is_empty());

    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for (shard, bytes) in &layouts[0].shards {
        for (node, _) in cluster.copies("events", shard) {
            *used.entry(node).or_default() += bytes;
        }
    }
    let usage: Vec<Usage> = cluster
        .candidates
        .iter()
        .map(|c| Usage {
            node: c.id.clone(),
            used: used.get(c.id.as_str()).copied().unwrap_or(0),
            capacity: c.weight * 1_000_000_000 / 100,
        })
        .collect();
    let started = Instant::now();
    let moves = rebalance(&layouts, &cluster, &usage, 2, 0.05);
    let rebalance_ms = started.elapsed().as_secs_f64() * 1e3;
    (plan_ms, rebalance_ms, moves.len())
}

fn list_arg(flag: &str, default: &str) -> Result<Vec<usize>> {
    let args: Vec<String> = std::env::args().collect();
    let value = args
        .iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or(default);
    value
        .split(',')
        .map(|v| {
            v.parse()
                .with_context(|| format!("{flag}: {v:?} is not a number"))
        })
        .collect()
}
