//! `hedge` (issue 24): one slow member. Three members hold a 6-shard database
//! with two copies of each shard; n3's HTTP is reached through a TCP proxy
//! that holds every chunk a client sends for 50 ms (n3 advertises the proxy's
//! address: `node.http_advertise`), so each map request sent to n3 takes 50 ms
//! longer. Queries (`count`, cache off) go to n1, which holds 4 shards and asks
//! n2 or n3 for the other 2. Three clusters in one run: healthy; n3 slowed with
//! the defaults (adaptive selection and early hedges within 5% of requests);
//! n3 slowed with both off (`query.adaptive_selection = false`,
//! `query.hedge_budget = 0`: a holder is waited for up to four times its p99
//! before its shards go elsewhere, as before).
//!
//! ```text
//! cargo run -p simulations --release -- bench --only hedge
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::fanout::write_events;
use super::measure::{Measured, run as measure};
use super::nodes::{config, post_json, publish, runtime, start, wait_placed};
use super::{Settings, Table, ratio};

const SHARDS: usize = 6;
const DELAY_MS: u64 = 50;

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    runtime()?.block_on(hedge(settings))
}

/// A TCP proxy to one address that holds each chunk the client sends for
/// `delay_ms` before passing it on (answers pass at once).
struct DelayProxy {
    addr: SocketAddr,
    target: Arc<OnceLock<SocketAddr>>,
    delay_ms: Arc<AtomicU64>,
}

impl DelayProxy {
    async fn start() -> Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target: Arc<OnceLock<SocketAddr>> = Arc::default();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (to, delay) = (target.clone(), delay_ms.clone());
        // Runs until the case's runtime is dropped.
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Some(target) = to.get().copied() else {
                    continue;
                };
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let requests = async move {
                        let mut buffer = vec![0u8; 64 << 10];
                        while let Ok(n) = client_read.read(&mut buffer).await {
                            if n == 0 {
                                break;
                            }
                            let ms = delay.load(Ordering::Relaxed);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let answers = async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(requests, answers);
                });
            }
        });
        Ok(DelayProxy {
            addr,
            target,
            delay_ms,
        })
    }
}

/// One mode of the case: its label, whether n3 is slowed, and n1's settings.
struct Mode {
    label: &'static str,
    slowed: bool,
    adaptive: bool,
    hedge_budget: f64,
}

/// What a mode measured: latency, and the share of queries with a hedge and
/// with a map request to n3.
struct Figures {
    measured: Measured,
    hedged: f64,
    to_n3: f64,
}

async fn hedge(settings: &Settings) -> Result<Vec<Table>> {
    let (rows, secs) = if settings.quick {
        (2_000, 1)
    } else {
        (20_000, 5)
    };
    let dir = tempfile::tempdir()?;
    let store_url = format!("file://{}", dir.path().join("store").display());
    write_events(&dir.path().join("events"), SHARDS, rows)?;
    publish(&dir.path().join("events"), &store_url, "events", &[]).await?;
    let modes = [
        Mode {
            label: "healthy",
            slowed: false,
            adaptive: true,
            hedge_budget: 0.05,
        },
        Mode {
            label: "n3 +50 ms, defaults",
            slowed: true,
            adaptive: true,
            hedge_budget: 0.05,
        },
        Mode {
            label: "n3 +50 ms, adaptive selection and hedges off",
            slowed: true,
            adaptive: false,
            hedge_budget: 0.0,
        },
    ];
    let mut figures = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let run_dir = dir.path().join(format!("run{i}"));
        figures.push(run_mode(&run_dir, &store_url, mode, secs).await?);
    }
    let mut table = Table::new(
        "hedge: one member of three 50 ms slower; 6 shards, 2 copies each; count over all shards",
        &[
            "mode",
            "q/s",
            "p50 µs",
            "p99 µs",
            "p99 vs healthy",
            "hedged",
            "asked n3",
        ],
    );
    let healthy_p99 = figures[0].measured.p99 as f64;
    for (mode, figures) in modes.iter().zip(&figures) {
        table.row(vec![
            mode.label.to_string(),
            format!("{:.0}", figures.measured.qps),
            figures.measured.p50.to_string(),
            figures.measured.p99.to_string(),
            ratio(figures.measured.p99 as f64, healthy_p99),
            format!("{:.1}%", figures.hedged * 100.0),
            format!("{:.1}%", figures.to_n3 * 100.0),
        ]);
    }
    table.note(format!(
        "{rows} rows per shard; every query to n1 (which holds 4 of the 6 shards), concurrency 1, \
         {secs} s per mode after 50 warm-up queries; n3 slowed by a TCP proxy holding each chunk \
         sent to it for {DELAY_MS} ms; hedged: queries with a hedge (meta.hedges); asked n3: \
         queries with a map request to n3 (meta.nodes), warm-up included."
    ));
    table.note("command: cargo run -p simulations --release -- bench --only hedge");
    Ok(vec![table])
}

/// Starts the three members for `mode`, measures, stops them.
async fn run_mode(dir: &Path, store_url: &str, mode: &Mode, secs: u64) -> Result<Figures> {
    let proxy = DelayProxy::start().await?;
    let mut first = config(dir, "n1", store_url, "hedge", &[])?;
    first.query.adaptive_selection = mode.adaptive;
    first.query.hedge_budget = mode.hedge_budget;
    let n1 = start(first).await?;
    let seeds = vec![n1.node.config().cluster.gossip_listen.clone()];
    let n2 = start(config(dir, "n2", store_url, "hedge", &seeds)?).await?;
    let mut third = config(dir, "n3", store_url, "hedge", &seeds)?;
    third.node.http_advertise = Some(proxy.addr.to_string());
    let n3 = start(third).await?;
    proxy
        .target
        .set(n3.http_addr)
        .map_err(|_| anyhow::anyhow!("the proxy's target is set once"))?;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let body = json!({"name": "events", "source": "events", "replicas": 2});
    post_json(&http, &format!("{}/v1/databases", n1.url()), &body).await?;
    wait_placed(&http, &n1.url(), "events", SHARDS, 2, 3, 60).await?;
    if mode.slowed {
        proxy.delay_ms.store(DELAY_MS, Ordering::Relaxed);
    }

    let counts = Arc::new(AtomicU64::new(0));
    let (hedged, to_n3) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let url = format!("{}/v1/query/events/count", n1.url());
    let (client, c, h, t) = (http.clone(), counts.clone(), hedged.clone(), to_n3.clone());
    let measured = measure(1, secs, move || {
        let (client, url) = (client.clone(), url.clone());
        let (c, h, t) = (c.clone(), h.clone(), t.clone());
        async move {
            let answer: Value = client
                .post(url)
                .json(&json!({"cache": false}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
                .context("the answer")?;
            let meta = &answer["meta"];
            c.fetch_add(1, Ordering::Relaxed);
            if meta["hedges"].as_u64().unwrap_or(0) > 0 {
                h.fetch_add(1, Ordering::Relaxed);
            }
            let nodes = meta["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.iter().any(|n| n["node"] == "n3") {
                t.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::ensure!(
                answer["result"]["rows"].as_u64().is_some(),
                "no count: {answer}"
            );
            Ok(())
        }
    })
    .await?;
    let queries = counts.load(Ordering::Relaxed).max(1) as f64;
    let figures = Figures {
        measured,
        hedged: hedged.load(Ordering::Relaxed) as f64 / queries,
        to_n3: to_n3.load(Ordering::Relaxed) as f64 / queries,
    };
    for server in [n3, n2, n1] {
        server.shutdown().await;
    }
    Ok(figures)
}
