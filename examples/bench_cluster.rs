//! Cluster benchmark: N real nodes in one process on 127.0.0.1 (HTTP on port 0,
//! gossip over UDP), for each size and gossip interval:
//!
//! - how long an alias set on one node takes to be visible on every node
//!   (median and max over several changes, each on a different node);
//! - gossip bytes per second per node while the cluster is idle, from the
//!   loopback interface's counters (`/proc/net/dev`, IP and UDP headers
//!   included; nothing else should use loopback meanwhile).
//!
//! ```text
//! cargo run --release --example bench_cluster [-- --nodes 5,20 --intervals 100,1000 --rounds 5]
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dram::storage::{Source, SourceUrl};
use dram::{Config, Node, Server};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let nodes = list_arg("--nodes", "5,20")?;
    let intervals = list_arg("--intervals", "100,1000")?;
    let rounds = list_arg("--rounds", "5")?[0] as usize;
    println!(
        "{:>5} {:>12} {:>16} {:>16} {:>22}",
        "nodes", "interval ms", "alias p50 ms", "alias max ms", "idle gossip B/s/node"
    );
    for &n in &nodes {
        for &interval in &intervals {
            let (p50, max, idle) = measure(n as usize, interval, rounds).await?;
            println!("{n:>5} {interval:>12} {p50:>16} {max:>16} {idle:>22.0}");
        }
    }
    Ok(())
}

async fn measure(n: usize, interval_ms: u64, rounds: usize) -> Result<(u128, u128, f64)> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store)?;
    let store_url = format!("file://{}", store.display());
    publish_tiny(dir.path(), &store_url).await?;

    let mut servers: Vec<Server> = Vec::with_capacity(n);
    let mut seed = String::new();
    for i in 0..n {
        let mut config = Config::default();
        config.node.id = format!("n{i:03}");
        config.node.data_dir = dir.path().join(format!("n{i}"));
        config.node.http_listen = "127.0.0.1:0".into();
        config.store.url = store_url.clone();
        config.cluster.gossip_listen = format!("127.0.0.1:{}", free_udp_port()?);
        config.cluster.gossip_interval_ms = interval_ms;
        if i == 0 {
            seed = config.cluster.gossip_listen.clone();
        } else {
            config.cluster.seeds = vec![seed.clone()];
        }
        servers.push(Node::builder(config).serve().await?);
        // Staggered starts, as real nodes have (one shared timing skews rounds).
        tokio::time::sleep(Duration::from_millis(interval_ms / n as u64 + 1)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for server in &servers {
        loop {
            let status = server
                .node
                .membership()
                .context("node without gossip")?
                .status(&server.node)
                .await?;
            if status.members.iter().filter(|m| m.live).count() == n {
                break;
            }
            if Instant::now() > deadline {
                bail!("{n} nodes did not see each other within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    servers[0]
        .node
        .add_database(serde_json::from_value(
            serde_json::json!({"name": "tiny", "source": "tiny", "replicas": "all"}),
        )?)
        .await?;
    wait_all(&servers, Duration::from_secs(120), |node| {
        node.database("tiny")
            .is_ok_and(|d| d.record.state == dram::catalog::DbState::Ready)
    })
    .await
    .context("the tiny database did not load everywhere")?;

    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let writer = &servers[(round * 7) % n].node;
        let name = format!("alias-{round}");
        let started = Instant::now();
        writer.set_alias(&name, "tiny")?;
        wait_all(&servers, Duration::from_secs(60), |node| {
            node.alias(&name).is_ok()
        })
        .await
        .context("an alias never reached every node")?;
        times.push(started.elapsed().as_millis());
    }
    times.sort_unstable();

    // Idle: every digest agrees, only heartbeats and digests move.
    tokio::time::sleep(Duration::from_millis(interval_ms * 5)).await;
    let window = Duration::from_millis((interval_ms * 20).max(5_000));
    let before = loopback_tx_bytes()?;
    tokio::time::sleep(window).await;
    let after = loopback_tx_bytes()?;
    let idle = (after - before) as f64 / window.as_secs_f64() / n as f64;

    for server in servers {
        server.shutdown().await;
    }
    Ok((times[times.len() / 2], times[times.len() - 1], idle))
}

async fn wait_all(
    servers: &[Server],
    limit: Duration,
    check: impl Fn(&Node) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if servers.iter().all(|s| check(&s.node)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn publish_tiny(dir: &Path, store_url: &str) -> Result<()> {
    let folder = dir.join("tiny");
    std::fs::create_dir_all(folder.join("shards/a"))?;
    std::fs::write(folder.join("shards/a/x.csv"), "n\n1\n")?;
    let store = dram::config::StoreConfig {
        url: store_url.to_string(),
        ..Default::default()
    };
    let url = SourceUrl::resolve(store_url, "tiny")?;
    let source = Source::open(&url, &store, true)?;
    let plan = dram::publish::plan(&folder)?;
    dram::publish::publish(&plan, &source, 4, &|_| {}).await?;
    Ok(())
}

fn loopback_tx_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/dev").context("reading /proc/net/dev")?;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("lo:") {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes …
            return fields
                .get(8)
                .context("short /proc/net/dev line")?
                .parse()
                .context("tx bytes");
        }
    }
    bail!("no loopback interface in /proc/net/dev")
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn list_arg(flag: &str, default: &str) -> Result<Vec<u64>> {
    let text = std::env::args()
        .skip_while(|a| a != flag)
        .nth(1)
        .unwrap_or_else(|| default.to_string());
    text.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("{flag} takes numbers: {text}"))
        })
        .collect()
}
