//! Query benchmark: the sales example's analyses (and the built-in `files`, which
//! reads no data: dram's own cost per query) over HTTP at concurrency 1 and 32,
//! against the same queries called in-process (`Node::query`), and a bare warp
//! route (no dram work) as the floor, all in one run on one node.
//!
//! ```text
//! cargo run --release --example bench_query [-- --secs 5]
//! ```
//!
//! The client shares the machine with the node, so compare figures within one
//! run (ratios), not across machines.

#[path = "sales/analyses.rs"]
#[allow(dead_code)]
mod analyses;
#[path = "../simulations/src/bench/measure.rs"]
mod measure;
#[path = "sales/server.rs"]
mod server;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dram::Config;
use dram::query::QueryRequest;
use dram::storage::{Source, SourceUrl};
use serde_json::json;
use warp::Filter;

use measure::{Measured, post, run};

const DATABASE: &str = "sales";

#[tokio::main]
async fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .skip_while(|a| a != "--secs")
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("--secs takes a number")?
        .unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.node.data_dir = dir.path().join("data");
    config.node.http_listen = "127.0.0.1:0".into();
    config.pg.listen = "127.0.0.1:0".into();
    config.store.url = format!("file://{}", dir.path().join("store").display());
    publish(Path::new("examples/sales/data"), &config).await?;

    let server = server::builder(config)
        .routes(|_| {
            warp::path!("bench" / "bare")
                .and(warp::post())
                .and(warp::body::bytes())
                .map(|_body: bytes::Bytes| warp::reply::json(&json!({"result": 1})))
        })
        .serve()
        .await?;
    let node = server.node.clone();
    node.local()
        .add_database(serde_json::from_value(
            json!({"name": DATABASE, "source": DATABASE}),
        )?)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.local().database(DATABASE)?.record.state != dram::catalog::DbState::Ready {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sample database did not load"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shards = node.local().shard_ids(DATABASE)?.len();
    println!(
        "sales example: {shards} shards; {secs} s per row; cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<30} {:>5} {:>10} {:>10} {:>10}",
        "target", "conc", "queries/s", "p50 µs", "p99 µs"
    );

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let base = server.url();
    for analysis in ["files", "top_orders", "revenue_by_category"] {
        let params = if analysis == "top_orders" {
            json!({"k": 5})
        } else {
            json!({})
        };
        for concurrency in [1usize, 32] {
            let in_process = {
                let node = node.clone();
                let params = params.clone();
                run(concurrency, secs, move || {
                    let node = node.clone();
                    // Computed every time: the query path is measured,
                    // not the result cache.
                    let request = QueryRequest {
                        params: Some(params.clone()),
                        cache: Some(false),
                        ..QueryRequest::default()
                    };
                    async move {
                        node.query(DATABASE, analysis, request)
                            .await
                            .map(|_| ())
                            .map_err(anyhow::Error::from)
                    }
                })
                .await?
            };
            let over_http = {
                let url = format!("{base}/v1/query/{DATABASE}/{analysis}");
                let body = json!({ "params": params, "cache": false }).to_string();
                let http = http.clone();
                run(concurrency, secs, move || {
                    post(http.clone(), url.clone(), body.clone())
                })
                .await?
            };
            print_row(&format!("{analysis} in-process"), concurrency, &in_process);
            print_row(&format!("{analysis} http"), concurrency, &over_http);
            println!(
                "{:<30} {:>5} {:>10.2} {:>10} {:>10}",
                "  http / in-process",
                concurrency,
                over_http.qps / in_process.qps,
                format!("+{}", over_http.p50.saturating_sub(in_process.p50)),
                format!("+{}", over_http.p99.saturating_sub(in_process.p99)),
            );
        }
    }
    for concurrency in [1usize, 32] {
        let url = format!("{base}/bench/bare");
        let http = http.clone();
        let bare = run(concurrency, secs, move || {
            post(http.clone(), url.clone(), "{}".into())
        })
        .await?;
        print_row("bare warp route", concurrency, &bare);
    }
    server.shutdown().await;
    Ok(())
}

fn print_row(target: &str, concurrency: usize, m: &Measured) {
    println!(
        "{target:<30} {concurrency:>5} {:>10.0} {:>10} {:>10}",
        m.qps, m.p50, m.p99
    );
}

async fn publish(folder: &Path, config: &Config) -> Result<()> {
    let url = SourceUrl::resolve(&config.store.url, DATABASE)?;
    let source = Source::open(&url, &config.store, true)?;
    let plan = dram::publish::plan(folder)?;
    dram::publish::publish(&plan, &source, 8, &|_| {}).await?;
    Ok(())
}
