//! `spread`: TPC-H Q6 and Q1 on three members, each database's copies placed
//! by rendezvous alone (`cluster.even_spread = false`, as before issue 24)
//! and spread evenly (the default), in one run. The database's name is one
//! for which rendezvous alone puts most of its 6 shards on one member (found
//! with the library's own placement, before anything starts); every answer is
//! checked equal to one-process DataFusion's over the same files.
//!
//! ```text
//! cargo run -p simulations --release -- bench --only spread
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::support::median;
use super::{Settings, Table, nodes, ratio};
use crate::tpch::{self, Layout, QUERIES};
use dram::catalog::Replicas;
use dram::placement::Candidate;
use dram::placement::plan::ClusterState;

const SHARDS: u64 = 6;
const MEMBERS: [&str; 3] = ["m1", "m2", "m3"];
/// Q1 and Q6: scans of lineitem, the work all on the shards.
const MEASURED: [usize; 2] = [6, 1];

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    nodes::runtime()?.block_on(run_async(settings))
}

/// Copies per member of `database`'s shards as placement puts them on the
/// three members (equal disks, one zone).
fn layout(database: &str, even_spread: bool) -> BTreeMap<String, usize> {
    let candidates = MEMBERS
        .iter()
        .map(|id| Candidate {
            id: id.to_string(),
            zone: String::new(),
            weight: 1,
            full: false,
        })
        .collect();
    let mut state = ClusterState::new(candidates);
    state.even_spread = even_spread;
    let ids: Vec<String> = (0..SHARDS).map(|s| s.to_string()).collect();
    let shards: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut counts = BTreeMap::new();
    for members in state.place(database, &shards, Replicas::Count(1)) {
        for member in members {
            *counts.entry(member).or_default() += 1;
        }
    }
    counts
}

/// The first name `tpch-N` whose shards rendezvous alone puts at least 4 of
/// 6 on one member (and so at most 2 on the others, or none).
fn skewed_name() -> Result<String> {
    for n in 0..1000 {
        let name = format!("tpch-{n}");
        if layout(&name, false).values().any(|&c| c >= 4) {
            return Ok(name);
        }
    }
    bail!("no database name among 1,000 that rendezvous places 4/1/1")
}

async fn run_async(settings: &Settings) -> Result<Vec<Table>> {
    let scale = if settings.quick { 0.01 } else { 1.0 };
    let runs = if settings.quick { 1 } else { 7 };
    let database = skewed_name()?;
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let reference = dir.path().join("reference");
    let files = tpch::database(scale, SHARDS, Layout::Colocated, &reference);
    let folder = dir.path().join("db");
    nodes::write_files(&folder, &files)?;
    drop(files);
    let store_url = format!("file://{}", dir.path().join("store").display());
    nodes::publish(&folder, &store_url, &database, &tpch::SHARD_KEYS).await?;
    let ctx = tpch::reference_context(&reference).await;
    let mut expected = BTreeMap::new();
    for q in MEASURED {
        let batches = ctx.sql(QUERIES[q - 1]).await?.collect().await?;
        expected.insert(q, tpch::rows_json(&batches));
    }

    let mut table = Table::new(
        format!(
            "spread: TPC-H Q6 and Q1 at SF {scale} on 3 members, rendezvous alone vs even spread (median ms)"
        ),
        &[
            "placement",
            "copies per member",
            "Q6 ms",
            "Q1 ms",
            "Q6 vs before",
            "Q1 vs before",
        ],
    );
    let mut before: BTreeMap<usize, f64> = BTreeMap::new();
    for even_spread in [false, true] {
        let cluster = dir.path().join(format!("even-{even_spread}"));
        let ids: Vec<String> = MEMBERS.iter().map(|m| m.to_string()).collect();
        let name = format!("bench-spread-{even_spread}");
        let servers = nodes::members(&cluster, &store_url, &name, &ids, |config| {
            config.cluster.even_spread = even_spread;
            config.sql.memory_limit = 16 << 30;
        })
        .await?;
        let http = reqwest::Client::new();
        let root = servers[0].url();
        nodes::post_json(
            &http,
            &format!("{root}/v1/databases"),
            &json!({"name": database, "source": database, "replicas": 1}),
        )
        .await?;
        // Rendezvous alone may leave a member without any copy.
        let holding = layout(&database, even_spread).len();
        let held =
            nodes::wait_placed(&http, &root, &database, SHARDS as usize, 1, holding, 1800).await?;
        let url = format!("{root}/v1/query/{database}/sql");
        let mut medians = BTreeMap::new();
        for q in MEASURED {
            let body =
                json!({"params": {"sql": QUERIES[q - 1]}, "timeout_ms": 300_000, "cache": false});
            let answer = nodes::post_json(&http, &url, &body).await?;
            if let Err(e) =
                tpch::same_answer(QUERIES[q - 1], &answer["result"]["rows"], &expected[&q])
            {
                bail!("wrong answer for Q{q} (even_spread {even_spread}): {e}");
            }
            let mut times = Vec::new();
            for _ in 0..runs {
                let started = Instant::now();
                let _: Value = nodes::post_json(&http, &url, &body).await?;
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
            medians.insert(q, median(&times));
        }
        let counts = MEMBERS
            .iter()
            .map(|m| held.get(*m).copied().unwrap_or(0).to_string())
            .collect::<Vec<_>>()
            .join("/");
        let versus = |q: usize| match before.get(&q) {
            Some(b) => ratio(medians[&q], *b),
            None => "-".to_string(),
        };
        table.row(vec![
            if even_spread {
                "even spread"
            } else {
                "rendezvous alone"
            }
            .to_string(),
            counts,
            format!("{:.0}", medians[&6]),
            format!("{:.0}", medians[&1]),
            versus(6),
            versus(1),
        ]);
        if !even_spread {
            before = medians;
        }
        for server in servers.into_iter().rev() {
            server.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&cluster);
    }
    table.note(format!(
        "database {database:?}: TPC-H SF {scale}, lineitem and orders in {SHARDS} shards by \
         orderkey, replicas 1; the name is the first for which rendezvous alone puts 4 or more \
         shards on one member; copies per member m1/m2/m3 as loaded"
    ));
    table.note(format!(
        "each query POSTed to m1 over HTTP (cache false), median of {runs} after 1 checked run; \
         every answer equal to one-process DataFusion's; the three members share this machine's \
         cores, so the busiest member's share shows less than on separate machines"
    ));
    table.note("command: cargo run -p simulations --release -- bench --only spread");
    Ok(vec![table])
}
