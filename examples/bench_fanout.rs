//! Distributed query benchmark: a 12-shard database on a 3-node cluster with one
//! copy of each shard (every query fans out to the other two nodes), against the
//! same 12 shards on a lone node that holds them all — both in one process on
//! 127.0.0.1, in one run. Queries: `count` (reads every row) and `files` (reads
//! no data: the fan-out's own cost). Latency at concurrency 1, throughput at 32.
//!
//! ```text
//! cargo run --release --example bench_fanout [-- --secs 3 --rows 20000]
//! ```

#[path = "common/measure.rs"]
mod measure;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dram::storage::{Source, SourceUrl};
use dram::{Config, Server};
use serde_json::{Value, json};

use measure::{Measured, post, run};

const SHARDS: usize = 12;

#[tokio::main]
async fn main() -> Result<()> {
    let secs = arg("--secs", 3)?;
    let rows = arg("--rows", 20_000)? as usize;
    let dir = tempfile::tempdir()?;
    let store_url = format!("file://{}", dir.path().join("store").display());
    publish(dir.path(), &store_url, rows).await?;

    let lone = start(dir.path(), "lone", &store_url, "lone", &[]).await?;
    let n1 = start(dir.path(), "n1", &store_url, "bench", &[]).await?;
    let seed = n1.node.config().cluster.gossip_listen.clone();
    let n2 = start(dir.path(), "n2", &store_url, "bench", &[&seed]).await?;
    let n3 = start(dir.path(), "n3", &store_url, "bench", &[&seed]).await?;
    let http = reqwest::Client::new();
    for (server, replicas) in [(&lone, json!(1)), (&n1, json!(1))] {
        let url = format!("{}/v1/databases", server.url());
        let body = json!({"name": "events", "source": "events", "replicas": replicas});
        let response = http.post(url).json(&body).send().await?;
        anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
    }
    wait_until(&http, &lone, 1).await?;
    let spread = wait_until(&http, &n1, 3).await?;
    let spread_label = format!(
        "3 nodes, {}",
        spread
            .iter()
            .map(|(node, n)| format!("{node}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    println!("{SHARDS} shards of {rows} rows; one copy each; {secs} s per row of figures");
    println!(
        "{:<10} {:<28} {:>5} {:>10} {:>10} {:>10}",
        "query", "target", "conc", "q/s", "p50 µs", "p99 µs"
    );
    for analysis in ["count", "files"] {
        for concurrency in [1, 32] {
            let mut figures = Vec::new();
            for (label, server) in [
                ("one node, all 12 shards", &lone),
                (spread_label.as_str(), &n1),
            ] {
                let url = format!("{}/v1/query/events/{analysis}", server.url());
                let http = http.clone();
                let measured = run(concurrency, secs, move || {
                    post(http.clone(), url.clone(), "{}".to_string())
                })
                .await?;
                print_row(analysis, label, concurrency, &measured);
                figures.push(measured);
            }
            if concurrency == 1 {
                println!(
                    "{:<10} {:<28} p50 ratio {:.2} (+{} µs), p99 ratio {:.2}",
                    "",
                    "distributed / one node",
                    figures[1].p50 as f64 / figures[0].p50 as f64,
                    figures[1].p50 as i64 - figures[0].p50 as i64,
                    figures[1].p99 as f64 / figures[0].p99 as f64,
                );
            } else {
                println!(
                    "{:<10} {:<28} throughput ratio {:.2}",
                    "",
                    "distributed / one node",
                    figures[1].qps / figures[0].qps
                );
            }
        }
    }
    for server in [n3, n2, n1, lone] {
        server.shutdown().await;
    }
    Ok(())
}

fn print_row(analysis: &str, label: &str, concurrency: usize, m: &Measured) {
    println!(
        "{analysis:<10} {label:<28} {concurrency:>5} {:>10.0} {:>10} {:>10}",
        m.qps, m.p50, m.p99
    );
}

async fn start(
    dir: &Path,
    name: &str,
    store_url: &str,
    cluster: &str,
    seeds: &[&str],
) -> Result<Server> {
    let mut config = Config::default();
    config.node.id = name.to_string();
    config.node.data_dir = dir.join(name);
    config.node.http_listen = "127.0.0.1:0".into();
    config.store.url = store_url.to_string();
    config.cluster.id = cluster.to_string();
    config.cluster.gossip_listen = format!("127.0.0.1:{}", free_udp_port()?);
    config.cluster.gossip_interval_ms = 100;
    config.cluster.seeds = seeds.iter().map(|s| s.to_string()).collect();
    Ok(dram::builtin::register(dram::Node::builder(config))
        .serve()
        .await?)
}

/// Waits until `server` sees every shard of `events` ready on `nodes` members
/// in all (one copy each, spread over them); returns the shards per member.
async fn wait_until(
    http: &reqwest::Client,
    server: &Server,
    nodes: usize,
) -> Result<std::collections::BTreeMap<String, usize>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = format!("{}/v1/cluster/shards?database=events", server.url());
        let holders: Value = http.get(url).send().await?.json().await?;
        let shards = holders["shards"].as_object().cloned().unwrap_or_default();
        let mut used: std::collections::BTreeMap<String, usize> = Default::default();
        let ready = shards.len() == SHARDS
            && shards.values().all(|list| {
                let ready: Vec<&str> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|h| h["state"] == "ready")
                    .filter_map(|h| h["node"].as_str())
                    .collect();
                for node in &ready {
                    *used.entry(node.to_string()).or_default() += 1;
                }
                ready.len() == 1
            });
        if ready && used.len() == nodes {
            return Ok(used);
        }
        if Instant::now() > deadline {
            bail!("events not placed on {nodes} nodes: {holders}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish(dir: &Path, store_url: &str, rows: usize) -> Result<()> {
    let folder = dir.join("events");
    for s in 0..SHARDS {
        let shard = folder.join(format!("shards/{s:02}"));
        std::fs::create_dir_all(&shard)?;
        let mut csv = String::from("category,amount\n");
        for r in 0..rows {
            csv.push_str(&format!("c{},{}\n", (r + s) % 17, (r * 31 + s) % 1000));
        }
        std::fs::write(shard.join("rows.csv"), csv)?;
    }
    let store = dram::config::StoreConfig {
        url: store_url.to_string(),
        ..Default::default()
    };
    let url = SourceUrl::resolve(store_url, "events")?;
    let source = Source::open(&url, &store, true)?;
    let plan = dram::publish::plan(&folder)?;
    dram::publish::publish(&plan, &source, 8, &|_| {}).await?;
    Ok(())
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn arg(flag: &str, default: u64) -> Result<u64> {
    std::env::args()
        .skip_while(|a| a != flag)
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .with_context(|| format!("{flag} takes a number"))
        .map(|v| v.unwrap_or(default))
}
