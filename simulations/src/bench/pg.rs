//! `pg`: dram's PostgreSQL listener against its HTTP API, in one run, on a
//! `dram serve` process holding one database of 4 shards.
//!
//! ```text
//! cargo run -p simulations --release -- bench --only pg [--quick]
//! ```
//!
//! 1. Throughput of a small aggregate (`sales`, 20,000 rows): `pgbench -n -f
//!    query.sql -c 8 -j 2 -T 5` through the listener (simple and extended
//!    protocol) against the same query over `POST /v1/query/db/sql` from 8
//!    tasks for the same time (reqwest, JSON answer); 3 rounds taking turns,
//!    medians.
//! 2. A 1,000,000-row answer (`SELECT * FROM big`, 4 columns): fetched by
//!    psycopg row by row (`cursor.stream`) against the Arrow IPC HTTP answer,
//!    rows/s and the node's peak resident memory while it answers (its
//!    high-water mark reset before each).
//!
//! pgbench comes with Debian's `postgresql-15` package (PATH or
//! `/usr/lib/postgresql/*/bin`); psycopg from `tests/venv` (`.ci/run` makes it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use datafusion::arrow::array::{Date32Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::measure::{post, run as measure};
use super::nodes::publish;
use super::support::{
    DramProcess, dram_binary, find_binary, free_tcp_port, free_udp_port, median, node_config,
    wait_for,
};
use super::{Settings, Table, ratio};

const SHARDS: usize = 4;
const DATABASE: &str = "db";
const AGGREGATE: &str =
    "SELECT region, count(*) AS n, sum(amount) AS total FROM sales GROUP BY region ORDER BY region";
const CONCURRENCY: usize = 8;
/// Turns each client takes.
const ROUNDS: usize = 3;

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    let pgbench = pgbench().context(
        "pgbench not found (Debian's postgresql-15 package: /usr/lib/postgresql/15/bin/pgbench)",
    )?;
    let python = python().context(
        "no tests/venv/bin/python with psycopg: run .ci/run once, or python3 -m venv tests/venv \
         && tests/venv/bin/pip install 'psycopg[binary]'",
    )?;
    let secs: u64 = if settings.quick { 1 } else { 5 };
    let big_rows: usize = if settings.quick { 100_000 } else { 1_000_000 };
    let dir = tempfile::tempdir()?;
    let runtime = super::nodes::runtime()?;
    let folder = dir.path().join("db");
    generate(&folder, big_rows, settings.seed)?;
    let store_url = format!("file://{}", dir.path().join("store").display());
    runtime.block_on(publish(&folder, &store_url, DATABASE, &[]))?;

    let pg_port = free_tcp_port()?;
    let config = node_config(
        &dir.path().join("node"),
        &store_url,
        free_udp_port()?,
        &[],
        1000,
    );
    let default_pg = "[pg]\nlisten = \"127.0.0.1:0\"";
    ensure!(
        config.contains(default_pg),
        "node_config wrote no [pg] listen"
    );
    let config = config.replace(
        default_pg,
        &format!("[pg]\nlisten = \"127.0.0.1:{pg_port}\""),
    );
    let config_file = dir.path().join("node.toml");
    std::fs::write(&config_file, config)?;
    let node = DramProcess::start(&dram_binary()?, &config_file, &[])?;
    node.post(
        "/v1/databases",
        &json!({"name": DATABASE, "source": DATABASE}),
    )?;
    wait_for(Duration::from_secs(120), "the database ready", || {
        let db = node.get(&format!("/v1/databases/{DATABASE}")).ok()?;
        (db["state"] == "ready").then_some(())
    })?;
    let conninfo = format!("host=127.0.0.1 port={pg_port} dbname={DATABASE} user=dram");
    let http_base = format!("http://{}", node.http);

    // 1. A small aggregate, 8 clients at once.
    let query_file = dir.path().join("query.sql");
    std::fs::write(&query_file, format!("{AGGREGATE};\n"))?;
    let mut throughput = Table::new(
        "pg: a small aggregate through the PostgreSQL listener vs the HTTP API, 8 clients",
        &["client", "q/s", "vs HTTP", "mean latency ms"],
    );
    let url = format!("{http_base}/v1/query/{DATABASE}/sql");
    let body = json!({"params": {"sql": AGGREGATE}, "cache": false}).to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    // The clients take turns, round after round, so that the machine's
    // drifting load falls on all of them alike; each figure is the median.
    let clients = [
        "pgbench -M simple",
        "pgbench -M extended",
        "HTTP (reqwest, JSON)",
    ];
    let mut figures: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    for _ in 0..ROUNDS {
        for mode in ["simple", "extended"] {
            let (tps, _) = run_pgbench(&pgbench, &query_file, mode, secs, &conninfo)?;
            figures[if mode == "simple" { 0 } else { 1 }].push(tps);
        }
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        let over_http = runtime.block_on(measure(CONCURRENCY, secs, move || {
            post(http.clone(), url.clone(), body.clone())
        }))?;
        figures[2].push(over_http.qps);
    }
    let medians: Vec<f64> = figures.iter().map(|f| median(f)).collect();
    for (client, qps) in clients.iter().zip(&medians) {
        throughput.row(vec![
            client.to_string(),
            format!("{qps:.0}"),
            ratio(*qps, medians[2]),
            format!("{:.2}", CONCURRENCY as f64 / qps * 1e3),
        ]);
    }
    throughput.note(format!(
        "pgbench -n -M MODE -f query.sql -c {CONCURRENCY} -j 2 -T {secs}; HTTP: {CONCURRENCY} tasks \
         in the bench process for {secs} s; {ROUNDS} rounds taking turns, medians. One dram serve \
         process; the clients share its 2 cores."
    ));
    throughput.note("command: cargo run -p simulations --release -- bench --only pg");

    // 2. A large answer.
    let mut large = Table::new(
        format!("pg: a {big_rows}-row answer (SELECT * FROM big, 4 columns)"),
        &[
            "client",
            "rows",
            "seconds",
            "rows/s",
            "node peak RSS MiB",
            "node RSS before MiB",
        ],
    );
    // Each way: the rows it got, the time, and the node's peak while it ran.
    let mut fetch = |client: &str, get: &mut dyn FnMut() -> Result<usize>| -> Result<()> {
        let before = node.status_kb("VmRSS")?;
        reset_peak(node.pid)?;
        let started = Instant::now();
        let rows = get()?;
        let secs = started.elapsed().as_secs_f64();
        let peak = node.status_kb("VmHWM")?;
        ensure!(rows == big_rows, "{client} got {rows} rows, not {big_rows}");
        large.row(vec![
            client.to_string(),
            rows.to_string(),
            format!("{secs:.2}"),
            format!("{:.0}", rows as f64 / secs),
            format!("{:.0}", peak as f64 / 1024.0),
            format!("{:.0}", before as f64 / 1024.0),
        ]);
        Ok(())
    };
    fetch("psycopg cursor.stream", &mut || {
        psycopg_stream(&python, &conninfo)
    })?;
    fetch("HTTP Arrow IPC (reqwest)", &mut || {
        runtime.block_on(arrow_rows(&http_base))
    })?;
    large.note(
        "The listener hands rows on as the query makes them (2 batches ahead at most); the HTTP \
         answer is built whole before it is sent. Peak RSS: /proc/PID/status VmHWM after \
         `echo 5 > /proc/PID/clear_refs`.",
    );
    Ok(vec![throughput, large])
}

/// pgbench in PATH or beside Debian's PostgreSQL server binaries.
fn pgbench() -> Option<PathBuf> {
    find_binary("pgbench").or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin/pgbench")))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

/// `tests/venv`'s python, when psycopg imports there.
fn python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/venv/bin/python");
    let works = Command::new(&python)
        .args(["-c", "import psycopg"])
        .output()
        .is_ok_and(|o| o.status.success());
    works.then_some(python)
}

/// Runs pgbench and reads its transactions per second and mean latency.
fn run_pgbench(
    pgbench: &Path,
    script: &Path,
    mode: &str,
    secs: u64,
    conninfo: &str,
) -> Result<(f64, f64)> {
    let output = Command::new(pgbench)
        .args(["-n", "-M", mode, "-f"])
        .arg(script)
        .args([
            "-c",
            &CONCURRENCY.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
        ])
        .arg(conninfo)
        .output()
        .context("cannot run pgbench")?;
    let out = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench -M {mode} failed: {}{out}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let figure = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .with_context(|| format!("no {prefix:?} in pgbench's output:\n{out}"))
    };
    let failed = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("number of failed transactions:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    ensure!(failed == 0, "pgbench: {failed} transactions failed:\n{out}");
    Ok((figure("tps =")?, figure("latency average =")?))
}

/// Forgets a process's peak resident memory (VmHWM starts again from now).
fn reset_peak(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("cannot reset the peak RSS of process {pid}"))
}

/// psycopg fetches every row of `big`, one by one; how many.
fn psycopg_stream(python: &Path, conninfo: &str) -> Result<usize> {
    let script = r#"
import os, psycopg
with psycopg.connect(os.environ["CONNINFO"]) as conn, conn.cursor() as cur:
    n = 0
    for _ in cur.stream("SELECT * FROM big"):
        n += 1
print(n)
"#;
    let output = Command::new(python)
        .args(["-c", script])
        .env("CONNINFO", conninfo)
        .output()
        .context("cannot run psycopg")?;
    ensure!(
        output.status.success(),
        "psycopg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

/// The Arrow IPC HTTP answer to `SELECT * FROM big`, decoded; its rows.
async fn arrow_rows(base: &str) -> Result<usize> {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/query/{DATABASE}/sql"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"params": {"sql": "SELECT * FROM big"}, "cache": false}))
        .send()
        .await?;
    ensure!(response.status().is_success(), "HTTP {}", response.status());
    let bytes = response.bytes().await?;
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(bytes.as_ref(), None)?;
    let mut rows = 0;
    for batch in reader {
        rows += batch?.num_rows();
    }
    Ok(rows)
}

/// The database: per shard, `sales.parquet` (5,000 rows) and `big.parquet`
/// (`big_rows` / 4), drawn from `seed`.
fn generate(folder: &Path, big_rows: usize, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let regions = ["eu", "us", "asia", "africa", "oceania"];
    for shard in 0..SHARDS {
        let dir = folder.join(format!("shards/s{shard}"));
        std::fs::create_dir_all(&dir)?;
        let sales = Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, false),
            Field::new("amount", DataType::Int64, false),
        ]));
        let n = 5_000;
        let batch = RecordBatch::try_new(
            sales.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|_| regions[rng.random_range(0..regions.len())]),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|_| rng.random_range(1..1_000)),
                )),
            ],
        )?;
        write_parquet(&dir.join("sales.parquet"), &[batch])?;

        let big = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("day", DataType::Date32, false),
            Field::new("region", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
        ]));
        let per_shard = big_rows / SHARDS;
        let first = (shard * per_shard) as i64;
        let mut batches = Vec::new();
        for start in (0..per_shard).step_by(65_536) {
            let len = (per_shard - start).min(65_536);
            let ids = (0..len).map(|i| first + (start + i) as i64);
            batches.push(RecordBatch::try_new(
                big.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(ids)),
                    Arc::new(Date32Array::from_iter_values(
                        (0..len).map(|_| 19_700 + rng.random_range(0..365)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        (0..len).map(|_| regions[rng.random_range(0..regions.len())]),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        (0..len).map(|_| rng.random_range(0.0..10_000.0)),
                    )),
                ],
            )?);
        }
        write_parquet(&dir.join("big.parquet"), &batches)?;
    }
    Ok(())
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let schema = batches.first().context("no batch")?.schema();
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(())
}
