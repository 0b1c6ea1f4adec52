//! `tpch`: the 22 TPC-H queries as written, on dram's distributed SQL with 1,
//! 2 and 3 members, against one-process DataFusion over the same Parquet
//! files in the same run. Every dram answer is checked equal to DataFusion's.
//!
//! TPC-H SF1 (`--quick`: SF 0.01) is generated here (`tpchgen`, no
//! download); `lineitem` and `orders` are spread over 6 shards by orderkey,
//! the other tables are global.

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use super::support::median_ms;
use super::{Settings, Table, nodes, ratio};
use crate::tpch::{self, Layout, QUERIES};

const SHARDS: u64 = 6;
const DATABASE: &str = "tpch";
const MEMBERS: [usize; 3] = [1, 2, 3];

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    nodes::runtime()?.block_on(run_async(settings))
}

async fn run_async(settings: &Settings) -> Result<Vec<Table>> {
    let scale = if settings.quick { 0.01 } else { 1.0 };
    let runs = if settings.quick { 1 } else { 3 };
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let started = Instant::now();
    let reference = dir.path().join("reference");
    let files = tpch::database(scale, SHARDS, Layout::Colocated, &reference);
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let folder = dir.path().join("db");
    for (path, content) in &files {
        let target = folder.join(path);
        std::fs::create_dir_all(target.parent().context("a file path")?)?;
        std::fs::write(&target, content)?;
    }
    drop(files);
    let generated_s = started.elapsed().as_secs_f64();
    let store_url = format!("file://{}", dir.path().join("store").display());
    nodes::publish(&folder, &store_url, DATABASE).await?;

    // The reference: one-process DataFusion, tables registered once.
    let ctx = tpch::reference_context(&reference).await;
    let mut expected = Vec::new();
    let mut reference_ms = Vec::new();
    for (i, sql) in QUERIES.iter().enumerate() {
        let batches = ctx
            .sql(sql)
            .await?
            .collect()
            .await
            .with_context(|| format!("DataFusion: Q{}", i + 1))?;
        expected.push(tpch::rows_json(&batches));
        reference_ms.push(
            median_ms(runs, || async {
                ctx.sql(sql).await?.collect().await?;
                Ok(())
            })
            .await?,
        );
    }
    drop(ctx);

    let mut dram_ms: Vec<Vec<f64>> = vec![Vec::new(); QUERIES.len()];
    let mut loads = Vec::new();
    for members in MEMBERS {
        let cluster = dir.path().join(format!("members-{members}"));
        let mut servers = Vec::new();
        let mut seeds = Vec::new();
        for i in 1..=members {
            let mut config = nodes::config(
                &cluster,
                &format!("m{i}"),
                &store_url,
                &format!("bench-tpch-{members}"),
                &seeds,
            )?;
            // Like one-process DataFusion, which has no limit.
            config.sql.memory_limit = 16 << 30;
            let server = nodes::start(config).await?;
            if seeds.is_empty() {
                seeds.push(server.node.config().cluster.gossip_listen.clone());
            }
            servers.push(server);
        }
        let http = reqwest::Client::new();
        let root = servers[0].url();
        let loaded = Instant::now();
        nodes::post_json(
            &http,
            &format!("{root}/v1/databases"),
            &json!({"name": DATABASE, "source": DATABASE, "replicas": 1}),
        )
        .await?;
        let held =
            nodes::wait_placed(&http, &root, DATABASE, SHARDS as usize, 1, members, 1800).await?;
        loads.push(format!(
            "{members} member{}: {:.1} s ({})",
            if members == 1 { "" } else { "s" },
            loaded.elapsed().as_secs_f64(),
            held.values()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join("/")
        ));
        let url = format!("{root}/v1/query/{DATABASE}/sql");
        for (i, sql) in QUERIES.iter().enumerate() {
            let body = json!({"params": {"sql": sql}, "timeout_ms": 300_000});
            let answer = nodes::post_json(&http, &url, &body)
                .await
                .with_context(|| format!("dram on {members} member(s): Q{}", i + 1))?;
            if let Err(e) = tpch::same_answer(sql, &answer["result"]["rows"], &expected[i]) {
                bail!(
                    "wrong answer from dram on {members} member(s), Q{}: {e}",
                    i + 1
                );
            }
            if settings.explain.contains(&(i + 1)) {
                let sql = format!("EXPLAIN ANALYZE {sql}");
                let body = json!({"params": {"sql": sql}, "timeout_ms": 300_000});
                let plan: Value = nodes::post_json(&http, &url, &body).await?;
                for row in plan["result"]["rows"].as_array().into_iter().flatten() {
                    eprintln!(
                        "Q{} on {members} member(s), {}:\n{}",
                        i + 1,
                        row["plan_type"].as_str().unwrap_or_default(),
                        row["plan"].as_str().unwrap_or_default()
                    );
                }
            }
            let ms = median_ms(runs, || async {
                nodes::post_json(&http, &url, &body)
                    .await
                    .map(|_: Value| ())
            })
            .await?;
            dram_ms[i].push(ms);
        }
        for server in servers.into_iter().rev() {
            server.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&cluster);
    }

    let mut table = Table::new(
        format!("tpch: the 22 TPC-H queries at SF {scale}, dram vs DataFusion (median ms)"),
        &[
            "query",
            "DataFusion",
            "dram 1",
            "dram 2",
            "dram 3",
            "1/DF",
            "2/DF",
            "3/DF",
        ],
    );
    let mut sums = [0.0; 4];
    for (i, reference) in reference_ms.iter().enumerate() {
        let mut cells = vec![format!("Q{}", i + 1), format!("{reference:.0}")];
        sums[0] += reference;
        for (j, ms) in dram_ms[i].iter().enumerate() {
            sums[j + 1] += ms;
            cells.push(format!("{ms:.0}"));
        }
        cells.extend(dram_ms[i].iter().map(|ms| ratio(*ms, *reference)));
        table.row(cells);
    }
    let mut total = vec!["sum".to_string()];
    total.extend(sums.iter().map(|s| format!("{s:.0}")));
    total.extend(sums[1..].iter().map(|s| ratio(*s, sums[0])));
    table.row(total);
    let reference_ms = &reference_ms;
    let worst = (0..QUERIES.len())
        .flat_map(|i| dram_ms[i].iter().map(move |ms| (ms / reference_ms[i], i)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .ok_or_else(|| anyhow!("no query measured"))?;
    table.note(format!(
        "data: TPC-H SF {scale} generated by tpchgen in {generated_s:.0} s, {:.0} MB of Parquet \
         (row groups of 128 Ki rows); lineitem and orders in {SHARDS} shards by orderkey, the \
         other six tables global",
        bytes as f64 / 1e6
    ));
    table.note(
        "DataFusion: one SessionContext in this process over one file per table, default \
         settings; time = plan + collect",
    );
    table.note(format!(
        "dram: 1, 2, 3 members in this process on 127.0.0.1 (replicas 1; shards per member \
         after load: {}), sql.memory_limit 16 GiB; every query POSTed to the first member over \
         HTTP, time = request to parsed JSON answer; every answer equal to DataFusion's (numbers \
         within 1e-9 relative)",
        loads.join(", ")
    ));
    table.note(format!(
        "median of {runs} after 1 warm-up; the slowest against DataFusion: Q{} at {:.2}×; \
         all members share this machine's cores: more members add no CPU here",
        worst.1 + 1,
        worst.0
    ));
    Ok(vec![table])
}
