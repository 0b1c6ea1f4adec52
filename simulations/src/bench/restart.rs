//! `restart`: a node holding 10,000 ready shards is stopped (SIGTERM) and
//! started again: how long until it serves them, and its peak memory.
//!
//! ```text
//! cargo build --release --bin dram
//! cargo run -p simulations --release -- bench --only restart [--quick]
//! ```
//!
//! The release `dram` binary beside this one runs as its own process, under
//! `/usr/bin/time -v` (peak RSS; `VmHWM` from /proc without it), with a
//! `file://` store holding one database of 10,000 shards (500 with
//! `--quick`), each one tiny CSV file. The reference is the same binary
//! starting with an empty data dir.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dram::config::StoreConfig;
use serde_json::{Value, json};

use super::support::{
    DramProcess, dram_binary, free_udp_port, median, node_config, publish, wait_for,
};
use super::{Settings, Table, ratio};

const TIME: &str = "/usr/bin/time";

/// Seconds from spawning a node to each milestone, and its peak RSS.
#[derive(Default, Clone)]
struct Run {
    listening: f64,
    ready: f64,
    answered: f64,
    peak_mb: f64,
}

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    let shards: u64 = if settings.quick { 500 } else { 10_000 };
    let rounds = if settings.quick { 1 } else { 3 };
    let binary = dram_binary()?;
    let dir = tempfile::tempdir()?;

    let folder = dir.path().join("src");
    for i in 0..shards {
        let path = folder.join(format!("shards/s{i:05}"));
        std::fs::create_dir_all(&path)?;
        std::fs::write(path.join("rows.csv"), format!("key,value\nk,{i}\n"))?;
    }
    let store = dir.path().join("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let db_url = format!("file://{}", store.join("many").display());
    runtime.block_on(publish(&folder, &db_url, &StoreConfig::default()))?;
    std::fs::remove_dir_all(&folder)?;
    let store_url = format!("file://{}", store.display());

    let write_config = |name: &str| -> Result<std::path::PathBuf> {
        let path = dir.path().join(format!("{name}.toml"));
        let data = dir.path().join(name);
        std::fs::write(
            &path,
            node_config(&data, &store_url, free_udp_port()?, &[], 1000),
        )?;
        Ok(path)
    };
    let empty_config = write_config("empty")?;
    let node_config_path = write_config("node")?;

    // The reference: an empty node, until /v1/health answers. The first start
    // is not counted: it reads the binary from disk.
    let mut empty_runs = Vec::new();
    for round in 0..=rounds {
        let empty_dir = dir.path().join("empty");
        if empty_dir.exists() {
            std::fs::remove_dir_all(&empty_dir)?;
        }
        let run = measure(&binary, &empty_config, dir.path(), |node, run, started| {
            node.get("/v1/health")?;
            run.ready = started.elapsed().as_secs_f64();
            run.answered = run.ready;
            Ok(())
        })?;
        if round > 0 {
            empty_runs.push(run);
        }
    }

    // First start: load the database.
    let first = measure(
        &binary,
        &node_config_path,
        dir.path(),
        |node, run, started| {
            node.post("/v1/databases", &json!({"name": "many", "source": "many"}))?;
            wait_ready(node, shards, Duration::from_secs(1800))?;
            run.ready = started.elapsed().as_secs_f64();
            count(node, shards)?;
            run.answered = started.elapsed().as_secs_f64();
            Ok(())
        },
    )?;

    // Restarts: the node serves what it held.
    let mut restarts = Vec::new();
    for _ in 0..rounds {
        restarts.push(measure(
            &binary,
            &node_config_path,
            dir.path(),
            |node, run, started| {
                wait_ready(node, shards, Duration::from_secs(600))?;
                run.ready = started.elapsed().as_secs_f64();
                wait_for(
                    Duration::from_secs(600),
                    "the count query to answer",
                    || count(node, shards).ok(),
                )?;
                run.answered = started.elapsed().as_secs_f64();
                Ok(())
            },
        )?);
    }

    let med = |runs: &[Run]| Run {
        listening: median(&runs.iter().map(|r| r.listening).collect::<Vec<_>>()),
        ready: median(&runs.iter().map(|r| r.ready).collect::<Vec<_>>()),
        answered: median(&runs.iter().map(|r| r.answered).collect::<Vec<_>>()),
        peak_mb: median(&runs.iter().map(|r| r.peak_mb).collect::<Vec<_>>()),
    };
    let empty = med(&empty_runs);
    let restart = med(&restarts);
    let mut table = Table::new(
        format!(
            "restart: a node holding {shards} ready shards, seconds from spawn (median of {rounds})"
        ),
        &[
            "run",
            "listening",
            "ready",
            "count answers",
            "peak RSS MB",
            "serves vs empty",
        ],
    );
    for (label, run, compare) in [
        ("empty node (reference)".to_string(), &empty, true),
        (
            format!("first start + load of {shards} shards"),
            &first,
            false,
        ),
        (
            format!("restart with {shards} ready shards"),
            &restart,
            true,
        ),
    ] {
        table.row(vec![
            label,
            format!("{:.2}", run.listening),
            format!("{:.2}", run.ready),
            format!("{:.2}", run.answered),
            format!("{:.0}", run.peak_mb),
            if compare {
                ratio(run.answered, empty.answered)
            } else {
                "-".to_string()
            },
        ]);
    }
    let peak_how = if Path::new(TIME).is_file() {
        "peak RSS: \"Maximum resident set size\" of /usr/bin/time -v -o FILE dram serve --config node.toml"
    } else {
        "peak RSS: VmHWM of /proc/<pid>/status before SIGTERM (/usr/bin/time not found)"
    };
    table.note(format!(
        "node: release dram binary ({}), config: data_dir, one [[disks]] there with max_bytes 16 GB, http_listen 127.0.0.1:0, store.url \
         {store_url}, gossip on a free port, RUST_LOG=warn; database `many`: {shards} shards \
         shards/sNNNNN/rows.csv (one row each), published with dram::publish",
        binary.display()
    ));
    table.note(format!(
        "listening = its \"listening on\" line; ready = GET /v1/databases shows `many` ready with \
         {shards} shards (polled every 20 ms; the first start from POST /v1/databases \
         {{\"name\":\"many\",\"source\":\"many\"}}); count answers = POST /v1/query/many/count {{}} \
         answers {shards} rows; empty: GET /v1/health answers; stop = SIGTERM; {peak_how}"
    ));
    table.note(format!(
        "every restart (listening/ready/answers s, peak MB): {}",
        restarts
            .iter()
            .map(|r| format!(
                "{:.2}/{:.2}/{:.2} {:.0}",
                r.listening, r.ready, r.answered, r.peak_mb
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(vec![table])
}

/// Starts a node with `config` under `/usr/bin/time -v` when there is one,
/// runs `until` (which fills `ready` and `answered`), stops it with SIGTERM
/// and reads its peak RSS.
fn measure(
    binary: &Path,
    config: &Path,
    dir: &Path,
    until: impl FnOnce(&DramProcess, &mut Run, Instant) -> Result<()>,
) -> Result<Run> {
    let report = dir.join("time.txt");
    let _ = std::fs::remove_file(&report);
    let report_arg = report.display().to_string();
    let wrapper: Vec<&str> = if Path::new(TIME).is_file() {
        vec![TIME, "-v", "-o", &report_arg]
    } else {
        Vec::new()
    };
    let started = Instant::now();
    let mut node = DramProcess::start(binary, config, &wrapper)?;
    let mut run = Run {
        listening: started.elapsed().as_secs_f64(),
        ..Run::default()
    };
    until(&node, &mut run, started)?;
    let hwm_kb = node.status_kb("VmHWM")?;
    node.terminate()?;
    run.peak_mb = if wrapper.is_empty() {
        hwm_kb as f64 / 1024.0
    } else {
        let text = std::fs::read_to_string(&report)
            .with_context(|| format!("no report from {TIME} in {}", report.display()))?;
        let kb: f64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no maximum resident set size in {TIME}'s report:\n{text}"))?;
        kb / 1024.0
    };
    Ok(run)
}

/// Polls `GET /v1/databases` until `many` is ready with `shards` shards.
fn wait_ready(node: &DramProcess, shards: u64, limit: Duration) -> Result<()> {
    wait_for(limit, "database `many` to be ready", || {
        let list = node.get("/v1/databases").ok()?;
        let many = list["databases"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == "many")?
            .clone();
        (many["state"] == "ready" && many["shard_count"] == shards)
            .then_some(Ok(()))
            .or_else(|| {
                (many["state"] == "failed").then(|| Err(anyhow::anyhow!("`many` failed: {many}")))
            })
    })?
}

/// `POST /v1/query/many/count {}`: fails unless it counts one row per shard.
fn count(node: &DramProcess, shards: u64) -> Result<Value> {
    let answer = node.post("/v1/query/many/count", &json!({"cache": false}))?;
    if answer["result"]["rows"] != shards {
        bail!(
            "count answered {} rows, expected {shards}",
            answer["result"]["rows"]
        );
    }
    Ok(answer)
}
