//! `tpch`: the 22 TPC-H queries as written, on dram's distributed SQL with 1,
//! 2 and 3 members, against one-process DataFusion over the same Parquet
//! files in the same run. Every dram answer is checked equal to DataFusion's.
//!
//! TPC-H SF1 (`--quick`: SF 0.01) is generated here (`tpchgen`, no
//! download); `lineitem` and `orders` are spread over 6 shards by orderkey and
//! declared co-located (`--shard-key`); the other tables are global.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::support::median;
use super::{Settings, Table, nodes, ratio};
use crate::tpch::{self, Layout, QUERIES};

const SHARDS: u64 = 6;
const DATABASE: &str = "tpch";
const MEMBERS: [usize; 3] = [1, 2, 3];

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    nodes::runtime()?.block_on(run_async(settings))
}

async fn run_async(settings: &Settings) -> Result<Vec<Table>> {
    if let Some(n) = settings
        .explain
        .iter()
        .find(|n| !(1..=QUERIES.len()).contains(n))
    {
        bail!("--explain {n}: TPC-H has queries 1 to {}", QUERIES.len());
    }
    let scale = if settings.quick { 0.01 } else { 1.0 };
    let runs = if settings.quick { 1 } else { 5 };
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let started = Instant::now();
    let reference = dir.path().join("reference");
    let files = tpch::database(scale, SHARDS, Layout::Colocated, &reference);
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let folder = dir.path().join("db");
    nodes::write_files(&folder, &files)?;
    drop(files);
    let generated_s = started.elapsed().as_secs_f64();
    let store_url = format!("file://{}", dir.path().join("store").display());
    nodes::publish(&folder, &store_url, DATABASE, &tpch::SHARD_KEYS).await?;

    // The reference: one-process DataFusion, tables registered once; it
    // runs beside dram below, so that both see the same machine.
    let ctx = tpch::reference_context(&reference).await;
    let mut expected = Vec::new();
    for (i, sql) in QUERIES.iter().enumerate() {
        let batches = ctx
            .sql(sql)
            .await?
            .collect()
            .await
            .with_context(|| format!("DataFusion: Q{}", i + 1))?;
        expected.push(tpch::rows_json(&batches));
    }

    let mut dram_ms: Vec<Vec<f64>> = vec![Vec::new(); QUERIES.len()];
    // DataFusion's time per query in each phase, measured run by run
    // between dram's runs of the same query.
    let mut reference_ms: Vec<Vec<f64>> = vec![Vec::new(); QUERIES.len()];
    let mut loads = Vec::new();
    for members in MEMBERS {
        let cluster = dir.path().join(format!("members-{members}"));
        let ids: Vec<String> = (1..=members).map(|i| format!("m{i}")).collect();
        let name = format!("bench-tpch-{members}");
        let servers = nodes::members(&cluster, &store_url, &name, &ids, |config| {
            // Like one-process DataFusion, which has no limit.
            config.sql.memory_limit = 16 << 30;
        })
        .await?;
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
            let body = json!({"params": {"sql": sql}, "timeout_ms": 300_000, "cache": false});
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
                let body = json!({"params": {"sql": sql}, "timeout_ms": 300_000, "cache": false});
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
            let (mut reference, mut dram) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let started = Instant::now();
                ctx.sql(sql).await?.collect().await?;
                reference.push(started.elapsed().as_secs_f64() * 1e3);
                let started = Instant::now();
                let _: Value = nodes::post_json(&http, &url, &body).await?;
                dram.push(started.elapsed().as_secs_f64() * 1e3);
            }
            reference_ms[i].push(median(&reference));
            dram_ms[i].push(median(&dram));
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
    // Ratios within each phase: dram against DataFusion measured beside it.
    let mut sums = [0.0; 3];
    let mut reference_sums = [0.0; 3];
    let mut shown_reference = 0.0;
    let mut worst = (0.0, 0);
    for i in 0..QUERIES.len() {
        let shown = median(&reference_ms[i]);
        shown_reference += shown;
        let mut cells = vec![format!("Q{}", i + 1), format!("{shown:.0}")];
        let mut ratios = Vec::new();
        for (phase, (ms, reference)) in dram_ms[i].iter().zip(&reference_ms[i]).enumerate() {
            sums[phase] += ms;
            reference_sums[phase] += reference;
            cells.push(format!("{ms:.0}"));
            ratios.push(ratio(*ms, *reference));
            if ms / reference > worst.0 {
                worst = (ms / reference, i);
            }
        }
        cells.extend(ratios);
        table.row(cells);
    }
    let mut total = vec!["sum".to_string(), format!("{shown_reference:.0}")];
    total.extend(sums.iter().map(|s| format!("{s:.0}")));
    total.extend(
        sums.iter()
            .zip(&reference_sums)
            .map(|(dram, reference)| ratio(*dram, *reference)),
    );
    table.row(total);
    table.note(format!(
        "data: TPC-H SF {scale} generated by tpchgen in {generated_s:.0} s, {:.0} MB of Parquet \
         (row groups of 128 Ki rows); lineitem and orders in {SHARDS} shards by orderkey (declared co-located), the \
         other six tables global",
        bytes as f64 / 1e6
    ));
    table.note(
        "DataFusion: one SessionContext in this process over one file per table, default \
         settings; time = plan + collect; it runs each query right before each of dram's runs \
         of it, so both see the same load on this shared machine; the ratios are against \
         DataFusion in the same phase, its column shows the median of its three phases",
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
