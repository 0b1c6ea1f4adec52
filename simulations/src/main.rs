//! dram's simulation harness (the library is `simulations`; this parses the
//! command line).
//!
//! ```text
//! cargo run -p simulations --release -- scenarios [--only NAME,…] [--seed S]
//! cargo run -p simulations --release -- scale [--nodes 10,100,1000,10000] [--shards 10000]
//!                                             [--replicas 3] [--seed S] [--csv FILE]
//! cargo run -p simulations --release -- all [--seed S]
//! cargo run -p simulations --release -- bench [--only CASE,…] [--quick] [--seed S]
//! ```
//!
//! `scenarios` (part 1) runs the shipped scripts against real nodes with faults
//! and prints one table; `scale` (part 2) drives dram's real placement,
//! rebalancer and election code and a gossip model at up to 10,000 members;
//! `all` does both. Every run prints its seed; `--seed` replays it. `bench`
//! measures dram beside the tools users would otherwise use (`bench/`).

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use simulations::{bench, report, scale, scenario, scenarios};

#[derive(Parser)]
#[command(about = "dram's simulation harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The shipped scenarios on real nodes, with faults; one table.
    Scenarios {
        /// Only these scenarios (comma-separated names).
        #[arg(long)]
        only: Option<String>,
        /// Seed of the run (random when absent; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The cluster's costs as it grows (placement, rebalancing, re-replication,
    /// elections, gossip), without sockets.
    Scale {
        /// Cluster sizes, comma-separated.
        #[arg(long, default_value = "10,100,1000,10000")]
        nodes: String,
        #[command(flatten)]
        common: Common,
    },
    /// dram side by side with its references (rclone, plain object_store,
    /// DataFusion, bare warp, …); one table per case, with ratios.
    Bench {
        /// Only these cases (comma-separated names).
        #[arg(long)]
        only: Option<String>,
        /// Small data and short runs: checks every case runs, not figures.
        #[arg(long)]
        quick: bool,
        /// Seed of the generated data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// `tpch`: also print the distributed plan with its metrics
        /// (EXPLAIN ANALYZE) of these queries (comma-separated numbers).
        #[arg(long, value_delimiter = ',')]
        explain: Vec<usize>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,warp::server=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (nodes, common) = match cli.command {
        Command::Scenarios { only, seed } => return run_scenarios(only.as_deref(), seed),
        Command::Scale { nodes, common } => (nodes, common),
        Command::Bench {
            only,
            quick,
            seed,
            explain,
        } => {
            let only: Vec<String> = only
                .iter()
                .flat_map(|o| o.split(','))
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect();
            return bench::run(
                &only,
                &bench::Settings {
                    quick,
                    seed,
                    explain,
                },
            );
        }
        Command::All { common } => {
            let passed = run_scenarios(None, common.seed);
            println!();
            run_scale("10,100,1000,10000".to_string(), common)?;
            return passed;
        }
    };
    run_scale(nodes, common)
}

/// Runs the scenarios (all, or those named) and prints the table; fails when
/// one failed.
fn run_scenarios(only: Option<&str>, seed: Option<u64>) -> Result<()> {
    let mut chosen = scenarios::all();
    if let Some(only) = only {
        let names: Vec<&str> = only.split(',').map(str::trim).collect();
        for name in &names {
            if !chosen.iter().any(|s| s.name == *name) {
                let known: Vec<&str> = chosen.iter().map(|s| s.name).collect();
                bail!(
                    "--only: no scenario {name:?} (there are: {})",
                    known.join(", ")
                );
            }
        }
        chosen.retain(|s| names.contains(&s.name));
    }
    let seed = seed.unwrap_or_else(rand::random);
    println!("seed {seed} (replay with --seed {seed})");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    let mut outcomes = Vec::new();
    for scenario in &chosen {
        eprintln!("{}: {}", scenario.name, scenario.about);
        let outcome = runtime.block_on(scenario::run(scenario, seed))?;
        eprintln!(
            "{}: {} in {:.0} s",
            scenario.name,
            if outcome.passed() { "passed" } else { "FAILED" },
            outcome.took_secs
        );
        outcomes.push(outcome);
    }
    print!("{}", report::table(&outcomes));
    println!(
        "invariants: answers = every query answer equals the reference computed from the published \
         files; copies = while a majority runs, no shard below its replicas minus the members down; \
         checksums = every stored blob hashes to its name; primary = no primary on a minority side \
         after failure detection; converged = after the final heal every member sees the same \
         registry, members and primary within {} s; no loss = then every database fully placed and \
         answering exactly through every member. converge: seconds from the last fault, heal or \
         membership change until the cluster had settled again; MB moved: \
         bytes read from the object store; queries f/t: failed (errors, no wrong answers) / total; faults e/c/d: object store \
         requests failed, GETs corrupted, gossip datagrams dropped.",
        scenario::CONVERGE_SECS
    );
    if outcomes.iter().all(scenario::Outcome::passed) {
        Ok(())
    } else {
        bail!("a scenario failed: replay it with --only NAME --seed {seed}")
    }
}

fn run_scale(nodes: String, common: Common) -> Result<()> {
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
         moved by a leave over the leaver's copies (1 = only its copies); db max/µ: the most copies \
         of the database a member holds over its share by weight of its zone's copies; use max/µ: fullest \
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
