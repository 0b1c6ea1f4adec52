//! dram's simulation harness.
//!
//! ```text
//! cargo run -p simulations --release -- scale [--nodes 10,100,1000,10000] [--shards 10000]
//!                                             [--replicas 3] [--seed S] [--csv FILE]
//! cargo run -p simulations --release -- all
//! ```
//!
//! `scale` (part 2) drives dram's real placement, rebalancer and election code
//! and a round-based gossip model at cluster sizes up to 10,000 members; see
//! `scale.rs`. Every run prints its seed; `--seed` replays it.

mod scale;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "dram's simulation harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The cluster's costs as it grows (placement, rebalancing, re-replication,
    /// elections, gossip), without sockets.
    Scale {
        /// Cluster sizes, comma-separated.
        #[arg(long, default_value = "10,100,1000,10000")]
        nodes: String,
        #[command(flatten)]
        common: Common,
    },
    /// Everything, at the default sizes.
    All {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Shards of the simulated database.
    #[arg(long, default_value_t = 10_000)]
    shards: usize,
    /// Copies of each shard.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Download bandwidth per member, MB/s (for re-replication time).
    #[arg(long, default_value_t = 200.0)]
    bandwidth: f64,
    /// Seed of the run (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the figures as CSV to this file.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (nodes, common) = match cli.command {
        Command::Scale { nodes, common } => (nodes, common),
        Command::All { common } => ("10,100,1000,10000".to_string(), common),
    };
    let sizes: Vec<usize> = nodes
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .with_context(|| format!("--nodes: {n:?} is not a number"))
        })
        .collect::<Result<_>>()?;
    if sizes.iter().any(|n| *n < 2) {
        anyhow::bail!("--nodes: every cluster size must be at least 2");
    }
    if common.shards == 0 || common.replicas == 0 {
        anyhow::bail!("--shards and --replicas must be at least 1");
    }
    let seed = common.seed.unwrap_or_else(rand::random);
    println!(
        "seed {seed} (replay with --seed {seed}); {} shards, {} copies each",
        common.shards, common.replicas
    );
    let settings = scale::Settings {
        shards: common.shards,
        replicas: common.replicas,
        bandwidth_mb_s: common.bandwidth,
        seed,
    };
    let mut rows = Vec::new();
    for n in sizes {
        let row = scale::run(n, &settings);
        // Progress as it goes: the large sizes take a while.
        eprintln!("{n} nodes done in {:.1} s", row.took_secs);
        rows.push(row);
    }
    print!("{}", scale::table(&rows));
    println!(
        "join/ideal: copies moved by a join over the newcomer's weight share; leave/held: copies \
         moved by a leave over the leaver's copies (1 = only its copies); use max/µ: fullest \
         member's use over the mean, after placement and after the rebalancer; re-repl: bytes to \
         copy after a loss, in all and on the busiest member, and seconds at {} MB/s; rounds: \
         gossip rounds for an alias change to reach everyone; gossip B/rnd: modelled digest bytes \
         per member and round (! = a digest no longer fits one UDP datagram)",
        common.bandwidth
    );
    if let Some(path) = common.csv {
        std::fs::write(&path, scale::csv(&rows))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("CSV written to {}", path.display());
    }
    Ok(())
}
