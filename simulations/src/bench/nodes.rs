//! Real dram nodes for the benchmarks, in this process on 127.0.0.1 (HTTP on
//! port 0, gossip over UDP), and databases published to a local-disk store.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dram::storage::{Source, SourceUrl};
use dram::{Config, Server};
use serde_json::Value;

use super::support::free_udp_port;

/// A node's configuration: id `name`, data under `dir/name`, the store at
/// `store_url`, in cluster `cluster` joining through `seeds`.
pub fn config(
    dir: &Path,
    name: &str,
    store_url: &str,
    cluster: &str,
    seeds: &[String],
) -> Result<Config> {
    let mut config = Config::default();
    config.node.id = name.to_string();
    config.node.data_dir = dir.join(name);
    config.node.http_listen = "127.0.0.1:0".into();
    config.pg.listen = "127.0.0.1:0".into();
    config.store.url = store_url.to_string();
    config.cluster.id = cluster.to_string();
    config.cluster.gossip_listen = format!("127.0.0.1:{}", free_udp_port()?);
    config.cluster.gossip_interval_ms = 100;
    config.cluster.seeds = seeds.to_vec();
    // The machine's disk is shared: whatever others fill, this node has 8 GiB
    // of its own (a disk past its watermark gets nothing new).
    config.disks = vec![dram::config::DiskConfig {
        path: config.node.data_dir.clone(),
        high_watermark: 0.9,
        max_bytes: Some(8 << 30),
    }];
    Ok(config)
}

/// Starts a node with the built-in analyses.
pub async fn start(config: Config) -> Result<Server> {
    Ok(dram::builtin::register(dram::Node::builder(config))
        .serve()
        .await?)
}

/// Three members n1, n2, n3 of cluster `bench` (n2 and n3 seeded by n1),
/// data under `dir`, the store at `store_url`.
pub async fn three_members(dir: &Path, store_url: &str) -> Result<[Server; 3]> {
    let n1 = start(config(dir, "n1", store_url, "bench", &[])?).await?;
    let seeds = vec![n1.node.config().cluster.gossip_listen.clone()];
    let n2 = start(config(dir, "n2", store_url, "bench", &seeds)?).await?;
    let n3 = start(config(dir, "n3", store_url, "bench", &seeds)?).await?;
    Ok([n1, n2, n3])
}

/// Members `ids` of cluster `cluster` (the others seeded by the first), data
/// under `dir`, the store at `store_url`, each configuration passed through
/// `tune` first.
pub async fn members(
    dir: &Path,
    store_url: &str,
    cluster: &str,
    ids: &[String],
    tune: impl Fn(&mut Config),
) -> Result<Vec<Server>> {
    let mut servers: Vec<Server> = Vec::new();
    let mut seeds = Vec::new();
    for id in ids {
        let mut config = config(dir, id, store_url, cluster, &seeds)?;
        tune(&mut config);
        let server = start(config).await?;
        if seeds.is_empty() {
            seeds.push(server.node.config().cluster.gossip_listen.clone());
        }
        servers.push(server);
    }
    Ok(servers)
}

/// Writes `files` (path inside the database, bytes) under `folder`.
pub fn write_files(folder: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    for (path, content) in files {
        let target = folder.join(path);
        std::fs::create_dir_all(target.parent().context("a file path")?)?;
        std::fs::write(&target, content)?;
    }
    Ok(())
}

/// Uploads `folder` as database `name` (with its manifest, declaring the
/// co-located `shard_keys`) to `store_url`.
pub async fn publish(
    folder: &Path,
    store_url: &str,
    name: &str,
    shard_keys: &[(&str, &str)],
) -> Result<()> {
    let store = dram::config::StoreConfig {
        url: store_url.to_string(),
        ..Default::default()
    };
    let url = SourceUrl::resolve(store_url, name)?;
    let source = Source::open(&url, &store, true)?;
    let plan = dram::publish::plan(folder)?.with_shard_keys(
        shard_keys
            .iter()
            .map(|(table, column)| (table.to_string(), column.to_string())),
    )?;
    dram::publish::publish(&plan, &source, 8, &|_| {}).await?;
    Ok(())
}

/// Waits (at most `secs`) until `url`'s node sees each of the `shards` shards
/// of `database` ready on exactly `copies` members, spread over `nodes`
/// members in all, and the database ready; returns the shards each member
/// holds.
pub async fn wait_placed(
    http: &reqwest::Client,
    url: &str,
    database: &str,
    shards: usize,
    copies: usize,
    nodes: usize,
    secs: u64,
) -> Result<BTreeMap<String, usize>> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let view: Value = http
            .get(format!("{url}/v1/cluster/shards?database={database}"))
            .send()
            .await?
            .json()
            .await?;
        let listed = view["shards"].as_object().cloned().unwrap_or_default();
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        let placed = listed.len() == shards
            && listed.values().all(|holders| {
                let ready: Vec<&str> = holders
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|h| h["state"] == "ready")
                    .filter_map(|h| h["node"].as_str())
                    .collect();
                for node in &ready {
                    *held.entry(node.to_string()).or_default() += 1;
                }
                ready.len() == copies
            });
        if placed && held.len() == nodes {
            // The database too (its state follows its shards' a moment later).
            let info: Value = http
                .get(format!("{url}/v1/databases/{database}"))
                .send()
                .await?
                .json()
                .await?;
            if info["state"] == "ready" {
                return Ok(held);
            }
        }
        if Instant::now() > deadline {
            let info: Value = http
                .get(format!("{url}/v1/databases/{database}"))
                .send()
                .await?
                .json()
                .await
                .unwrap_or(Value::Null);
            bail!("{database} not placed on {nodes} nodes within {secs} s: {view}; {info}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs `body` to `url` and fails unless the answer is a success.
pub async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let response = http
        .post(url)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "POST {url}: HTTP {status}: {answer}");
    Ok(answer)
}

/// A multi-threaded runtime for one case.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}
