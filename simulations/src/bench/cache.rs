//! `cache` (issue 24): a dashboard's mix — 20 distinct queries (`group` and
//! `sql`), asked again and again, the popular ones most (Zipf, s = 1.1), as
//! panels refreshing do — on a 3-member cluster holding one copy of each of
//! 12 shards, with the result cache and without it (`"cache": false`), in one
//! run. Every query goes to n1; the key owners are spread over the members.
//!
//! ```text
//! cargo run -p simulations --release -- bench --only cache
//! ```

use std::sync::Arc;

use anyhow::Result;
use serde_json::{Value, json};

use super::measure::{Measured, post, run as measure};
use super::nodes::{post_json, publish, runtime, three_members, wait_placed};
use super::{Settings, Table, ratio};

const SHARDS: usize = 12;
const QUERIES: usize = 20;
const ZIPF_S: f64 = 1.1;

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    runtime()?.block_on(cache(settings))
}

/// The 20 queries: `group` by category with filters on one value of the
/// other column, and `sql` aggregates over ranges.
fn queries() -> Vec<(&'static str, Value)> {
    (0..QUERIES)
        .map(|i| {
            if i % 2 == 0 {
                (
                    "group",
                    json!({"params": {"by": "category", "sum": "amount", "where": {"parity": (i / 2 % 2).to_string()}, "limit": 5 + i}}),
                )
            } else {
                (
                    "sql",
                    json!({"params": {"sql": format!(
                        "SELECT category, count(*) AS n, sum(amount) AS total FROM rows \
                         WHERE amount >= {} GROUP BY category ORDER BY total DESC LIMIT 10",
                        i * 37
                    )}}),
                )
            }
        })
        .collect()
}

/// Cumulative Zipf weights over `n` ranks.
fn zipf(n: usize) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(ZIPF_S)).collect();
    let total: f64 = weights.iter().sum();
    let mut sum = 0.0;
    weights
        .iter()
        .map(|w| {
            sum += w / total;
            sum
        })
        .collect()
}

async fn counter(http: &reqwest::Client, url: &str, outcome: &str) -> Result<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let line = format!("dram_result_cache_total{{outcome=\"{outcome}\"}}");
    Ok(text
        .lines()
        .find(|l| l.starts_with(&line))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0))
}

async fn cache(settings: &Settings) -> Result<Vec<Table>> {
    let (rows, secs) = if settings.quick {
        (2_000, 1)
    } else {
        (20_000, 5)
    };
    let dir = tempfile::tempdir()?;
    let store_url = format!("file://{}", dir.path().join("store").display());
    write_rows(&dir.path().join("events"), rows)?;
    publish(&dir.path().join("events"), &store_url, "events", &[]).await?;
    let [n1, n2, n3] = three_members(dir.path(), &store_url).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let body = json!({"name": "events", "source": "events", "replicas": 1});
    post_json(&http, &format!("{}/v1/databases", n1.url()), &body).await?;
    wait_placed(&http, &n1.url(), "events", SHARDS, 1, 3, 60).await?;

    let queries = Arc::new(queries());
    let cumulative = Arc::new(zipf(QUERIES));
    let mut table = Table::new(
        "cache: a dashboard mix of 20 queries (Zipf s=1.1) on 3 members, 12 shards",
        &[
            "mode",
            "conc",
            "q/s",
            "p50 µs",
            "p99 µs",
            "q/s vs uncached",
            "hits",
        ],
    );
    for concurrency in [1usize, 8] {
        let mut figures: Vec<(Measured, String)> = Vec::new();
        for cached in [false, true] {
            let (hits, misses) = (
                counter(&http, &n1.url(), "hit").await?,
                counter(&http, &n1.url(), "miss").await?,
            );
            let (queries, cumulative, base) = (queries.clone(), cumulative.clone(), n1.url());
            let http_call = http.clone();
            let measured = measure(concurrency, secs, move || {
                let draw: f64 = rand::random();
                let rank = cumulative.partition_point(|c| *c < draw).min(QUERIES - 1);
                let (analysis, body) = &queries[rank];
                let mut body = body.clone();
                if !cached {
                    body["cache"] = json!(false);
                }
                post(
                    http_call.clone(),
                    format!("{base}/v1/query/events/{analysis}"),
                    body.to_string(),
                )
            })
            .await?;
            let hits = counter(&http, &n1.url(), "hit").await? - hits;
            let misses = counter(&http, &n1.url(), "miss").await? - misses;
            let share = if cached && hits + misses > 0.0 {
                format!("{:.1}%", 100.0 * hits / (hits + misses))
            } else {
                "-".to_string()
            };
            figures.push((measured, share));
        }
        let uncached_qps = figures[0].0.qps;
        for (mode, (measured, share)) in ["uncached", "cached"].iter().zip(&figures) {
            table.row(vec![
                mode.to_string(),
                concurrency.to_string(),
                format!("{:.0}", measured.qps),
                measured.p50.to_string(),
                measured.p99.to_string(),
                ratio(measured.qps, uncached_qps),
                share.clone(),
            ]);
        }
    }
    table.note(format!(
        "{rows} rows per shard, one copy of each on 3 members; every query sent to n1, {secs} s \
         per figure after 50 warm-up queries (which fill the cache); hits: the share of \
         cached queries answered from the cache (n1's own or a key owner's)."
    ));
    table.note("command: cargo run -p simulations --release -- bench --only cache");
    for server in [n3, n2, n1] {
        server.shutdown().await;
    }
    Ok(vec![table])
}

fn write_rows(folder: &std::path::Path, rows: usize) -> Result<()> {
    for s in 0..SHARDS {
        let shard = folder.join(format!("shards/{s:02}"));
        std::fs::create_dir_all(&shard)?;
        let mut csv = String::from("category,parity,amount\n");
        for r in 0..rows {
            csv.push_str(&format!(
                "c{},{},{}\n",
                (r + s) % 17,
                r % 2,
                (r * 31 + s) % 1000
            ));
        }
        std::fs::write(shard.join("rows.csv"), csv)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_ranks_are_drawn_most_popular_first_and_cover_all() {
        let cumulative = zipf(QUERIES);
        assert!((cumulative[QUERIES - 1] - 1.0).abs() < 1e-9);
        assert!(cumulative.windows(2).all(|w| w[0] < w[1]));
        // The first query is drawn about 28% of the time at s = 1.1.
        assert!(
            cumulative[0] > 0.25 && cumulative[0] < 0.32,
            "{}",
            cumulative[0]
        );
        assert_eq!(queries().len(), QUERIES);
    }
}
