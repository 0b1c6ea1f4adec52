//! `fanout` (issue 11, case 3): a 12-shard database on a 3-node cluster with
//! one copy of each shard — every query fans out to the two other nodes —
//! against the same 12 shards on a lone node that holds them all, in one run.
//! Queries: `count` (reads every row) and `files` (reads no data: the
//! fan-out's own cost). Latency at concurrency 1, throughput at 32.
//!
//! ```text
//! cargo run -p simulations --release -- bench --only fanout
//! ```

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use super::measure::{Measured, post};
use super::nodes::{config, post_json, publish, runtime, start, three_members, wait_placed};
use super::turns::{Call, call, interleaved};
use super::{Settings, Table, ratio};

const SHARDS: usize = 12;

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    runtime()?.block_on(fanout(settings))
}

async fn fanout(settings: &Settings) -> Result<Vec<Table>> {
    let (rows, secs) = if settings.quick {
        (2_000, 1)
    } else {
        (20_000, 3)
    };
    let dir = tempfile::tempdir()?;
    let store_url = format!("file://{}", dir.path().join("store").display());
    write_events(&dir.path().join("events"), SHARDS, rows)?;
    publish(&dir.path().join("events"), &store_url, "events", &[]).await?;

    let lone = start(config(dir.path(), "lone", &store_url, "lone", &[])?).await?;
    let [n1, n2, n3] = three_members(dir.path(), &store_url).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    for server in [&lone, &n1] {
        let body = json!({"name": "events", "source": "events", "replicas": 1});
        post_json(&http, &format!("{}/v1/databases", server.url()), &body).await?;
    }
    wait_placed(&http, &lone.url(), "events", SHARDS, 1, 1, 60).await?;
    let spread = wait_placed(&http, &n1.url(), "events", SHARDS, 1, 3, 60).await?;
    let spread: Vec<String> = spread.iter().map(|(n, s)| format!("{n}:{s}")).collect();

    let mut table = Table::new(
        "fanout: 12 shards on 3 nodes (one copy each) vs all 12 on one node",
        &[
            "query",
            "conc",
            "one node q/s",
            "3 nodes q/s",
            "q/s ratio",
            "one node p50 µs",
            "3 nodes p50 µs",
            "p50 ratio",
            "3 nodes p99 µs",
        ],
    );
    for analysis in ["count", "files"] {
        for concurrency in [1usize, 32] {
            // The lone node and the cluster take turns (see `interleaved`).
            let calls: Vec<Call> = [&lone, &n1]
                .into_iter()
                .map(|server| {
                    let url = format!("{}/v1/query/events/{analysis}", server.url());
                    let http = http.clone();
                    call(move || post(http.clone(), url.clone(), r#"{"cache": false}"#.to_string()))
                })
                .collect();
            let figures: Vec<Measured> = interleaved(concurrency, secs, &calls).await?;
            let (one, three) = (&figures[0], &figures[1]);
            table.row(vec![
                analysis.to_string(),
                concurrency.to_string(),
                format!("{:.0}", one.qps),
                format!("{:.0}", three.qps),
                ratio(three.qps, one.qps),
                one.p50.to_string(),
                three.p50.to_string(),
                ratio(three.p50 as f64, one.p50 as f64),
                three.p99.to_string(),
            ]);
        }
    }
    table.note(format!(
        "{rows} rows per shard; shards per member of the cluster: {}; {secs} one-second turns \
         per figure (one node and the cluster take turns), client in the same process; all \
         nodes share this machine's cores, so the cluster cannot be faster here: the ratios \
         show what the fan-out costs.",
        spread.join(" ")
    ));
    table.note("command: cargo run -p simulations --release -- bench --only fanout");
    for server in [n3, n2, n1, lone] {
        server.shutdown().await;
    }
    Ok(vec![table])
}

/// Writes `shards` shards of `rows` rows each (`category,amount`) under
/// `folder`: the data of the fan-out and hedge cases.
pub(super) fn write_events(folder: &Path, shards: usize, rows: usize) -> Result<()> {
    for s in 0..shards {
        let shard = folder.join(format!("shards/{s:02}"));
        std::fs::create_dir_all(&shard)?;
        let mut csv = String::from("category,amount\n");
        for r in 0..rows {
            csv.push_str(&format!("c{},{}\n", (r + s) % 17, (r * 31 + s) % 1000));
        }
        std::fs::write(shard.join("rows.csv"), csv)?;
    }
    Ok(())
}
