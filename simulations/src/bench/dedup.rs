//! `dedup`: loading version 2 of a database that shares 90% of its files with
//! version 1, on the node that holds version 1, against loading it on a fresh
//! node. Content addressing should fetch only the 10% that changed.
//!
//! ```text
//! cargo run -p simulations --release -- bench --only dedup [--quick]
//! ```
//!
//! A real s3s-fs server on 127.0.0.1 holds v1 (1 GiB in 1,000 files, 10
//! shards × 100; 64 MiB with `--quick`) and v2 (the same paths, one file in ten
//! with new content), both published through its API. Per round: node A
//! (fresh) loads v1, then v2; node B (fresh) loads v2. Bytes fetched are the
//! node's `dram_download_bytes_total` (GET /metrics) before and after.

use anyhow::{Result, bail};
use dram::Server;
use dram::client::Client;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::support::{
    S3Server, add_and_wait, http, mb, median, metric_sum, publish, s3_node, write_random_files,
};
use super::{Settings, Table, ratio};

const BUCKET: &str = "bench";
const FILES: usize = 1000;
const SHARDS: usize = 10;

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    let total: u64 = if settings.quick { 64 << 20 } else { 1 << 30 };
    let rounds = if settings.quick { 1 } else { 3 };
    let size = (total / FILES as u64) as usize;
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start(dir.path(), BUCKET)?;
    let runtime = super::nodes::runtime()?;
    let mut rng = StdRng::seed_from_u64(settings.seed);

    let folder = dir.path().join("src");
    let paths: Vec<(String, usize)> = (0..FILES)
        .map(|i| {
            (
                format!("shards/s{}/f{:03}.bin", i % SHARDS, i / SHARDS),
                size,
            )
        })
        .collect();
    write_random_files(&folder, &paths, &mut rng)?;
    let store = s3.store_config(BUCKET);
    runtime.block_on(publish(&folder, &format!("s3://{BUCKET}/v1"), &store))?;
    // v2: every tenth file changed, ten in each shard; the rest as in v1.
    let changed: Vec<(String, usize)> = paths
        .iter()
        .enumerate()
        .filter(|(i, _)| (i / SHARDS) % 10 == i % SHARDS)
        .map(|(_, p)| p.clone())
        .collect();
    write_random_files(&folder, &changed, &mut rng)?;
    runtime.block_on(publish(&folder, &format!("s3://{BUCKET}/v2"), &store))?;
    std::fs::remove_dir_all(&folder)?;
    let v2_bytes = (size * FILES) as f64;
    let changed_bytes = (size * changed.len()) as f64;

    // Per round: (seconds, bytes fetched) of v1 fresh, v2 after v1, v2 fresh.
    let mut runs: [Vec<(f64, f64)>; 3] = Default::default();
    for _ in 0..rounds {
        let a = dir.path().join("node-a");
        let b = dir.path().join("node-b");
        let node = runtime.block_on(s3_node(&s3, BUCKET, &a))?;
        let v1 = load(&runtime, &node, "v1")?;
        let v2_after = load(&runtime, &node, "v2")?;
        runtime.block_on(node.shutdown());
        let node = runtime.block_on(s3_node(&s3, BUCKET, &b))?;
        let v2_fresh = load(&runtime, &node, "v2")?;
        runtime.block_on(node.shutdown());
        for (i, run) in [v1, v2_after, v2_fresh].into_iter().enumerate() {
            runs[i].push(run);
        }
        std::fs::remove_dir_all(&a)?;
        std::fs::remove_dir_all(&b)?;
    }
    let med = |i: usize| {
        let secs: Vec<f64> = runs[i].iter().map(|r| r.0).collect();
        let bytes: Vec<f64> = runs[i].iter().map(|r| r.1).collect();
        (median(&secs), median(&bytes))
    };
    let (v1_secs, v1_bytes) = med(0);
    let (after_secs, after_bytes) = med(1);
    let (fresh_secs, fresh_bytes) = med(2);

    let mut table = Table::new(
        format!(
            "dedup: v2 shares 90% of its {FILES} files ({} MiB) with v1 (median of {rounds})",
            total >> 20
        ),
        &["load", "MB fetched", "of v2", "seconds", "vs v2 fresh"],
    );
    for (label, secs, bytes) in [
        ("v1 on a fresh node", v1_secs, v1_bytes),
        ("v2 after v1, same node", after_secs, after_bytes),
        ("v2 on a fresh node", fresh_secs, fresh_bytes),
    ] {
        table.row(vec![
            label.to_string(),
            mb(bytes),
            format!("{:.1}%", 100.0 * bytes / v2_bytes),
            format!("{secs:.2}"),
            ratio(secs, fresh_secs),
        ]);
    }
    if after_bytes > changed_bytes * 1.01 {
        table.note(format!(
            "UNEXPECTED: v2 after v1 fetched {} MB, the changed files are {} MB",
            mb(after_bytes),
            mb(changed_bytes)
        ));
    }
    table.note(format!(
        "files of {size} random bytes; v2 = v1 with one file in ten rewritten (ten per shard) ({} MB changed); \
         both published with dram::publish through s3s-fs ({}) at s3://{BUCKET}/v1 and /v2",
        mb(changed_bytes),
        s3.endpoint
    ));
    table.note(
        "each load: POST /v1/databases {\"name\":\"v1\"|\"v2\",\"source\":\"s3://bench/v1\"|\"/v2\"} \
         on an in-process node (dram::Server, store = s3s-fs), timed until GET /v1/databases/NAME \
         (polled every 10 ms) is ready; MB fetched = increase of dram_download_bytes_total in \
         GET /metrics (file bodies only; the manifest is not counted); MB = 10^6 bytes",
    );
    let list = |i: usize| {
        runs[i]
            .iter()
            .map(|(s, b)| format!("{s:.2} s/{} MB", mb(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    table.note(format!(
        "every run: v1 {} | v2 after v1 {} | v2 fresh {}",
        list(0),
        list(1),
        list(2)
    ));
    Ok(vec![table])
}

/// Loads `s3://bench/<version>` as database `<version>` on `node`: seconds and
/// bytes fetched from the store.
fn load(runtime: &tokio::runtime::Runtime, node: &Server, version: &str) -> Result<(f64, f64)> {
    let before = downloaded(node)?;
    let client = Client::new(&node.url());
    let secs = runtime.block_on(add_and_wait(
        &client,
        version,
        &format!("s3://{BUCKET}/{version}"),
    ))?;
    Ok((secs, downloaded(node)? - before))
}

/// The node's `dram_download_bytes_total` (the runtime serves it meanwhile).
fn downloaded(node: &Server) -> Result<f64> {
    let (status, page) = http(node.http_addr, "GET", "/metrics", None)?;
    if status != 200 {
        bail!("GET /metrics: HTTP {status}");
    }
    Ok(metric_sum(&page, "dram_download_bytes_total"))
}
