//! `gossip` (issue 11, case 5): how long an alias set on one node takes to be
//! resolvable on every node, on 5, 20 and 50 real nodes in this process
//! (gossip over UDP on 127.0.0.1 every 100 ms), against the epidemic model's
//! prediction: push-pull gossip with 3 peers a round informs everyone in
//! about log(n) rounds (`scale::epidemic_rounds`, the mean of simulated
//! runs). dram's path is longer than one key's: the registry digest changes,
//! spreads, and each member then pulls the registry over HTTP and merges it.
//!
//! ```text
//! cargo run -p simulations --release -- bench --only gossip
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dram::{Node, Server};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::nodes::{config, publish, runtime};
use super::{Settings, Table, ratio};
use crate::scale::epidemic_rounds;

const INTERVAL_MS: u64 = 100;

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    let (sizes, changes): (&[usize], usize) = if settings.quick {
        (&[5], 3)
    } else {
        (&[5, 20, 50], 7)
    };
    let mut table = Table::new(
        "gossip: alias set on one node → resolvable on all, 100 ms gossip",
        &[
            "nodes",
            "model rounds",
            "model ms",
            "measured p50 ms",
            "measured max ms",
            "p50 / model",
        ],
    );
    let mut rng = StdRng::seed_from_u64(settings.seed);
    for &n in sizes {
        let runs = 200;
        let model_rounds = (0..runs)
            .map(|_| epidemic_rounds(n, &mut rng))
            .sum::<usize>() as f64
            / runs as f64;
        let model_ms = model_rounds * INTERVAL_MS as f64;
        let times = runtime()?.block_on(measure(n, changes))?;
        let p50 = times[times.len() / 2] as f64;
        let max = times[times.len() - 1] as f64;
        table.row(vec![
            n.to_string(),
            format!("{model_rounds:.1}"),
            format!("{model_ms:.0}"),
            format!("{p50:.0}"),
            format!("{max:.0}"),
            ratio(p50, model_ms),
        ]);
    }
    table.note(format!(
        "{changes} alias changes per size, each set on a different member; model: mean of 200 \
         simulated push-pull runs with 3 peers per round (chitchat's gossip count)."
    ));
    table.note("command: cargo run -p simulations --release -- bench --only gossip");
    Ok(vec![table])
}

/// Starts `n` nodes, loads a tiny database everywhere, then sets `changes`
/// aliases one after the other; returns the milliseconds each took to reach
/// every node, sorted.
async fn measure(n: usize, changes: usize) -> Result<Vec<u128>> {
    let dir = tempfile::tempdir()?;
    let store_url = format!("file://{}", dir.path().join("store").display());
    let folder = dir.path().join("tiny");
    std::fs::create_dir_all(folder.join("shards/a"))?;
    std::fs::write(folder.join("shards/a/x.csv"), "n\n1\n")?;
    publish(&folder, &store_url, "tiny", &[]).await?;

    let mut servers: Vec<Server> = Vec::with_capacity(n);
    let mut seeds = Vec::new();
    for i in 0..n {
        let mut config = config(dir.path(), &format!("n{i:03}"), &store_url, "bench", &seeds)?;
        config.cluster.gossip_interval_ms = INTERVAL_MS;
        if i == 0 {
            seeds.push(config.cluster.gossip_listen.clone());
        }
        servers.push(Node::builder(config).serve().await?);
        // Staggered starts, as real nodes have (one shared timing skews rounds).
        tokio::time::sleep(Duration::from_millis(INTERVAL_MS / n as u64 + 1)).await;
    }
    let outcome = changes_reach_all(&servers, n, changes).await;
    for server in servers {
        server.shutdown().await;
    }
    outcome
}

async fn changes_reach_all(servers: &[Server], n: usize, changes: usize) -> Result<Vec<u128>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for server in servers {
        loop {
            let status = server
                .node
                .cluster_status()
                .await?
                .context("node without gossip")?;
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
        .local()
        .add_database(serde_json::from_value(
            serde_json::json!({"name": "tiny", "source": "tiny", "replicas": "all"}),
        )?)
        .await?;
    wait_all(servers, Duration::from_secs(120), |node| {
        node.local()
            .database("tiny")
            .is_ok_and(|d| d.record.state == dram::catalog::DbState::Ready)
    })
    .await
    .context("the tiny database did not load everywhere")?;
    let mut times = Vec::with_capacity(changes);
    for change in 0..changes {
        let writer = &servers[(change * 7) % n].node;
        let name = format!("alias-{change}");
        let started = Instant::now();
        writer.local().set_alias(&name, "tiny")?;
        wait_all(servers, Duration::from_secs(60), |node| {
            node.local().alias(&name).is_ok()
        })
        .await
        .context("an alias never reached every node")?;
        times.push(started.elapsed().as_millis());
    }
    times.sort_unstable();
    Ok(times)
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
