//! `sql`: the built-in `sql` analysis against single-process DataFusion over
//! the same Parquet files, in one run.
//!
//! ```text
//! cargo run -p simulations --release -- bench --only sql [--quick] [--seed S]
//! ```
//!
//! A fact table `sales` (10 million rows; 200,000 with `--quick`) in 8 shards
//! of 2 Parquet files each, and a global dimension table `products`, drawn
//! from the seed. DataFusion reads every file in one `SessionContext`; dram
//! serves the same files as a database published to a `file://` store, on 1,
//! 2 and 4 real nodes in this process (one copy of each shard, spread evenly),
//! queried over HTTP at one node. For each query: the median time of each and
//! the ratio dram / DataFusion. Every dram answer must equal DataFusion's
//! (floats within 1e-9 relative): a difference fails the case, naming the query.

mod data;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use dram::client::Client;
use dram::{Config, Server};
use serde_json::{Value, json};

use super::support::median_ms;
use super::{Settings, Table, ratio};
use data::FILES_PER_SHARD;

const SHARDS: usize = 8;
const DATABASE: &str = "sales";
const CLUSTER_SIZES: [usize; 3] = [1, 2, 4];
const GOSSIP_INTERVAL_MS: u64 = 100;
/// Each node's disk cap (`max_bytes`): room for the database several times over.
const DISK_BYTES: u64 = 8 << 30;

/// One benchmark query; `ordered` when its SQL fixes the order of its rows.
struct Query {
    name: &'static str,
    sql: &'static str,
    ordered: bool,
}

const QUERIES: &[Query] = &[
    Query {
        name: "count(*)",
        sql: "SELECT count(*) AS n FROM sales",
        ordered: true,
    },
    Query {
        name: "sum, avg by region",
        sql: "SELECT region, count(*) AS n, sum(amount) AS total, avg(quantity) AS mean_quantity \
              FROM sales GROUP BY region ORDER BY region",
        ordered: true,
    },
    Query {
        name: "top 10 of 10k products",
        sql: "SELECT product_id, sum(quantity) AS units, sum(amount) AS total FROM sales \
              GROUP BY product_id ORDER BY units DESC, product_id LIMIT 10",
        ordered: true,
    },
    Query {
        name: "filter + aggregate",
        sql: "SELECT region, count(*) AS n, sum(amount) AS total FROM sales \
              WHERE day BETWEEN DATE '2024-03-01' AND DATE '2024-03-31' AND quantity >= 10 \
              GROUP BY region ORDER BY region",
        ordered: true,
    },
    Query {
        name: "join products by category",
        sql: "SELECT p.category, count(*) AS n, sum(s.amount) AS total, \
              sum(s.quantity * p.price) AS list_value \
              FROM sales s JOIN products p ON s.product_id = p.product_id \
              GROUP BY p.category ORDER BY p.category",
        ordered: true,
    },
    Query {
        name: "count(DISTINCT product_id)",
        sql: "SELECT count(DISTINCT product_id) AS products FROM sales",
        ordered: true,
    },
    Query {
        name: "count(DISTINCT) by region",
        sql: "SELECT region, count(DISTINCT product_id) AS products FROM sales \
              GROUP BY region ORDER BY region",
        ordered: true,
    },
    Query {
        name: "top 100 rows by amount",
        sql: "SELECT id, day, region, product_id, quantity, amount FROM sales \
              ORDER BY amount DESC NULLS LAST, id LIMIT 100",
        ordered: true,
    },
];

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    super::nodes::runtime()?.block_on(run_async(settings))
}

/// What one query answered and how long it took, per configuration.
struct Measured {
    rows: usize,
    reference_ms: f64,
    dram_ms: Vec<f64>,
}

async fn run_async(settings: &Settings) -> Result<Vec<Table>> {
    let rows = if settings.quick { 200_000 } else { 10_000_000 };
    let runs = if settings.quick { 1 } else { 5 };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;

    let started = Instant::now();
    let bytes = data::generate(dir.path(), rows, settings.seed)?;
    let generated_s = started.elapsed().as_secs_f64();
    let store_url = format!("file://{}", dir.path().join("store").display());
    data::publish(&dir.path().join("db"), &store_url).await?;

    // The reference: one context over every file, registered once.
    let ctx = SessionContext::new();
    let all = dir.path().join("all");
    for table in ["sales", "products"] {
        let folder = format!("{}/", all.join(table).display());
        ctx.register_parquet(table, &folder, ParquetReadOptions::default())
            .await
            .with_context(|| format!("DataFusion: cannot register {table}"))?;
    }
    let target_partitions = ctx.state().config().target_partitions();
    let mut measured = Vec::new();
    let mut expected = Vec::new();
    for query in QUERIES {
        let (columns, answer) = reference(&ctx, query.sql)
            .await
            .with_context(|| format!("DataFusion: {}", query.name))?;
        let reference_ms = median_ms(runs, || async {
            ctx.sql(query.sql).await?.collect().await?;
            Ok(())
        })
        .await
        .with_context(|| format!("DataFusion: {}", query.name))?;
        measured.push(Measured {
            rows: answer.len(),
            reference_ms,
            dram_ms: Vec::new(),
        });
        expected.push((columns, answer));
    }
    drop(ctx);

    let mut loads = Vec::new();
    for nodes in CLUSTER_SIZES {
        let cluster_dir = dir.path().join(format!("nodes-{nodes}"));
        let ids = balanced_ids(nodes);
        let running = start_cluster(&cluster_dir, &store_url, &ids).await?;
        let root = Client::new(&running[0].server.url());
        let outcome = measure_cluster(&root, &ids, runs, &expected, &mut measured).await;
        for node in running.into_iter().rev() {
            node.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&cluster_dir);
        loads.push(format!(
            "{nodes} node{}: {:.1} s",
            if nodes == 1 { "" } else { "s" },
            outcome?
        ));
    }

    let mut table = Table::new(
        format!(
            "sql: dram vs DataFusion, {} rows in {SHARDS} shards (median ms)",
            thousands(rows as u64)
        ),
        &[
            "query",
            "rows",
            "DataFusion",
            "dram 1 node",
            "2 nodes",
            "4 nodes",
            "1 node/DF",
            "2 nodes/DF",
            "4 nodes/DF",
        ],
    );
    for (query, m) in QUERIES.iter().zip(&measured) {
        let mut cells = vec![
            query.name.to_string(),
            m.rows.to_string(),
            format!("{:.1}", m.reference_ms),
        ];
        cells.extend(m.dram_ms.iter().map(|ms| format!("{ms:.1}")));
        cells.extend(m.dram_ms.iter().map(|ms| ratio(*ms, m.reference_ms)));
        table.row(cells);
    }
    table.note(format!(
        "data: `sales` {} rows (id, day Date32, region of 8, product_id of 10k skewed, quantity, \
         amount Float64 with 2% nulls) in {SHARDS} shards × {FILES_PER_SHARD} Parquet files \
         (snappy, row groups of 128 Ki rows) + global `products` (10k rows, 20 categories), \
         {:.1} MB of Parquet; generated from seed {} in {generated_s:.1} s",
        thousands(rows as u64),
        bytes as f64 / 1e6,
        settings.seed
    ));
    table.note(format!(
        "DataFusion: one SessionContext in this process over the same files, tables registered \
         once, target_partitions = {target_partitions} (the default: the {cores} cores); \
         time = plan + collect"
    ));
    table.note(format!(
        "dram: real nodes in this process on 127.0.0.1, each on a runtime of 2 threads, gossip \
         every {GOSSIP_INTERVAL_MS} ms, disk capped at {} GiB; file:// store, replicas 1, node \
         ids chosen so that placement gives each node 8/n shards; every query POSTed to the \
         first node over HTTP; time = request to parsed JSON answer (each shard plans afresh \
         and registers its files, as every dram query does)",
        DISK_BYTES >> 30
    ));
    table.note(format!(
        "median of {runs} run{} after 1 warm-up; every dram answer equals DataFusion's \
         (floats within 1e-9 relative); loads (POST to every shard ready): {}",
        if runs == 1 { "" } else { "s" },
        loads.join(", ")
    ));
    table.note(format!(
        "all nodes share this machine's {cores} cores: more nodes add no CPU here, so the \
         columns show the cost of distributing a query, not its gain"
    ));
    Ok(vec![table])
}

/// Places the database on the running nodes `ids` through `root`, checks
/// every answer against the reference and adds the median times to
/// `measured`; returns the load time.
async fn measure_cluster(
    root: &Client,
    ids: &[String],
    runs: usize,
    expected: &[(Vec<String>, Vec<Value>)],
    measured: &mut [Measured],
) -> Result<f64> {
    let started = Instant::now();
    root.post(
        "/v1/databases",
        &json!({"name": DATABASE, "source": DATABASE, "replicas": 1}),
    )
    .await
    .context("POST /v1/databases")?;
    wait_placed(root, ids).await?;
    let load_s = started.elapsed().as_secs_f64();
    let nodes = ids.len();
    for ((query, (columns, rows)), m) in QUERIES.iter().zip(expected).zip(measured.iter_mut()) {
        let body = json!({"params": {"sql": query.sql}, "cache": false});
        let path = format!("/v1/query/{DATABASE}/sql");
        let answer = root
            .post(&path, &body)
            .await
            .map_err(|e| anyhow!("dram on {nodes} node(s), query {:?}: {e}", query.name))?;
        let meta = &answer["meta"];
        ensure!(
            meta["shards"] == SHARDS
                && meta["nodes"].as_array().map(Vec::len) == Some(nodes)
                && meta["retries"] == 0,
            "dram on {nodes} node(s), query {:?}: not every shard on its own holder: {meta}",
            query.name
        );
        let got_columns: Vec<String> = answer["result"]["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect();
        let got_rows = answer["result"]["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ensure!(
            &got_columns == columns,
            "wrong answer from dram on {nodes} node(s), query {:?}: columns {got_columns:?}, \
             DataFusion {columns:?}",
            query.name
        );
        if let Err(difference) = same_rows(rows, &got_rows, query.ordered) {
            bail!(
                "wrong answer from dram on {nodes} node(s), query {:?} ({}): {difference}",
                query.name,
                query.sql
            );
        }
        let ms = median_ms(runs, || async {
            root.post(&path, &body).await?;
            Ok(())
        })
        .await
        .with_context(|| format!("dram on {nodes} node(s), query {:?}", query.name))?;
        m.dram_ms.push(ms);
    }
    Ok(load_s)
}

/// DataFusion's answer (the warm-up run): column names and JSON rows, as
/// dram writes them.
async fn reference(ctx: &SessionContext, sql: &str) -> Result<(Vec<String>, Vec<Value>)> {
    let frame = ctx.sql(sql).await?;
    let columns = frame
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let batches = frame.collect().await?;
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
    writer.finish()?;
    let bytes = writer.into_inner();
    let rows = if bytes.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((columns, rows))
}

/// `Err(what differs)` unless `got` has the rows of `expected` (in order when
/// `ordered`), numbers within 1e-9 relative.
fn same_rows(expected: &[Value], got: &[Value], ordered: bool) -> Result<(), String> {
    if expected.len() != got.len() {
        return Err(format!(
            "{} rows, DataFusion {} (first: {:?} vs {:?})",
            got.len(),
            expected.len(),
            got.first(),
            expected.first()
        ));
    }
    let (mut expected, mut got) = (expected.to_vec(), got.to_vec());
    if !ordered {
        expected.sort_by_cached_key(sort_key);
        got.sort_by_cached_key(sort_key);
    }
    for (i, (want, have)) in expected.iter().zip(&got).enumerate() {
        if !same_value(want, have) {
            return Err(format!("row {i}: {have}, DataFusion {want}"));
        }
    }
    Ok(())
}

/// A row as text with its floats rounded, for sorting unordered answers.
fn sort_key(row: &Value) -> String {
    match row {
        Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => {
            format!("{:.6e}", n.as_f64().unwrap_or(f64::NAN))
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", sort_key(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
            }
        },
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_value(v, w))
        }
        _ => a == b,
    }
}

/// Node ids `n1-k … nN-k`, with the first `k` for which dram's placement
/// (rendezvous hashing; equal disks weigh the same) gives every node
/// `SHARDS / N` shards.
fn balanced_ids(nodes: usize) -> Vec<String> {
    let ids_for = |k: usize| -> Vec<String> { (1..=nodes).map(|i| format!("n{i}-{k}")).collect() };
    for k in 0..10_000 {
        let ids = ids_for(k);
        let mut held = vec![0; nodes];
        for shard in 0..SHARDS {
            let key = dram::placement::shard_key(DATABASE, &shard.to_string());
            let best = (0..nodes).max_by(|a, b| {
                let score = |i: usize| dram::placement::score(&key, &ids[i], 1);
                score(*a).total_cmp(&score(*b)).then(b.cmp(a))
            });
            if let Some(best) = best {
                held[best] += 1;
            }
        }
        if held.iter().all(|h| *h == SHARDS / nodes) {
            return ids;
        }
    }
    ids_for(0)
}

/// A node on a runtime of its own (two worker threads), as a process of its
/// own would be: one node's query work does not hold up another's gossip.
struct RunningNode {
    runtime: tokio::runtime::Runtime,
    server: Server,
}

impl RunningNode {
    async fn shutdown(self) {
        let RunningNode { runtime, server } = self;
        let _ = runtime.spawn(server.shutdown()).await;
        // Dropping a runtime blocks: not on this runtime's threads.
        let _ =
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5)))
                .await;
    }
}

/// Starts one node per id (a cluster of its own, the first node its seed) and
/// waits until every node sees them all live.
async fn start_cluster(dir: &Path, store_url: &str, ids: &[String]) -> Result<Vec<RunningNode>> {
    let mut nodes: Vec<RunningNode> = Vec::new();
    for id in ids {
        let mut config = Config::default();
        config.node.id = id.clone();
        config.node.data_dir = dir.join(id);
        config.node.http_listen = "127.0.0.1:0".into();
        config.pg.listen = "127.0.0.1:0".into();
        config.store.url = store_url.to_string();
        config.cluster.id = format!("bench-sql-{}", ids.len());
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .context("no free UDP port")?
            .port();
        config.cluster.gossip_listen = format!("127.0.0.1:{port}");
        config.cluster.gossip_interval_ms = GOSSIP_INTERVAL_MS;
        // Capped: the file system is shared with others, and past its high
        // watermark the primary's garbage collection would delete `sales`.
        config.disks = vec![dram::config::DiskConfig {
            path: config.node.data_dir.clone(),
            high_watermark: 0.9,
            max_bytes: Some(DISK_BYTES),
        }];
        config.cluster.seeds = nodes
            .first()
            .map(|n| n.server.node.config().cluster.gossip_listen.clone())
            .into_iter()
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(id.clone())
            .enable_all()
            .build()
            .context("cannot build a node runtime")?;
        let builder = dram::builtin::register(dram::Node::builder(config));
        let server = runtime
            .spawn(async move { builder.serve().await })
            .await
            .map_err(|e| anyhow!("node {id}: start task failed: {e}"))?
            .with_context(|| format!("node {id} does not start"))?;
        nodes.push(RunningNode { runtime, server });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        let client = Client::new(&node.server.url());
        loop {
            let status = client.get("/v1/cluster").await.unwrap_or(Value::Null);
            let live = crate::cluster::live_count(&status);
            if live == ids.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} nodes not all live after 30 s: {status}", ids.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(nodes)
}

/// Waits until `root` sees every shard with exactly one copy, ready, on the
/// node placement chose (`balanced_ids`): `SHARDS / ids.len()` each.
async fn wait_placed(root: &Client, ids: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let path = format!("/v1/cluster/shards?database={DATABASE}");
    loop {
        let view = root.get(&path).await.unwrap_or(Value::Null);
        let shards = view["shards"].as_object().cloned().unwrap_or_default();
        let mut held = vec![0; ids.len()];
        let one_ready_copy = shards.len() == SHARDS
            && shards
                .values()
                .all(|list| match list.as_array().map(Vec::as_slice) {
                    Some([holder]) if holder["state"] == "ready" => {
                        let node = holder["node"].as_str().unwrap_or_default();
                        match ids.iter().position(|id| id == node) {
                            Some(i) => {
                                held[i] += 1;
                                true
                            }
                            None => false,
                        }
                    }
                    _ => false,
                });
        if one_ready_copy && held.iter().all(|h| *h == SHARDS / ids.len()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let database = root
                .get(&format!("/v1/databases/{DATABASE}"))
                .await
                .unwrap_or_else(|e| json!(e.to_string()));
            bail!(
                "{DATABASE} not placed on {} nodes after 600 s: {view}; on the root: {database}",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 10000000 as "10,000,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_compare_within_float_tolerance_and_ids_balance() {
        let a = vec![
            json!({"r": "x", "n": 3, "t": 1.0}),
            json!({"r": "y", "n": 1}),
        ];
        let close = vec![
            json!({"r": "x", "n": 3, "t": 1.0 + 1e-12}),
            json!({"r": "y", "n": 1}),
        ];
        assert!(same_rows(&a, &close, true).is_ok());
        let swapped: Vec<Value> = close.iter().rev().cloned().collect();
        assert!(same_rows(&a, &swapped, true).is_err());
        assert!(same_rows(&a, &swapped, false).is_ok());
        let off = vec![
            json!({"r": "x", "n": 3, "t": 1.001}),
            json!({"r": "y", "n": 1}),
        ];
        assert!(same_rows(&a, &off, false).is_err());
        assert!(same_rows(&a, &a[..1], true).is_err());
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(thousands(200), "200");
        assert_eq!(balanced_ids(1), ["n1-0"]);
        assert_eq!(balanced_ids(4).len(), 4);
    }
}
