//! A dram server with an analysis of its own: `line_count` counts the lines
//! of every file of a database. README.md's "Library" section shows this
//! file as it is (a test checks they are the same).
//!
//! cargo run --release --example line_count -- [CONFIG.toml]

use std::io::{BufRead, BufReader};
use std::path::Path;

use dram::{Analysis, AnalysisError, Config, Node, Shard};
use warp::Filter;

/// Counts the lines of every file.
struct LineCount;

impl Analysis for LineCount {
    type Params = (); // from the request's "params" (any serde type; bad ones are 400s)
    type Partial = u64; // what map returns and reduce merges (serde: it travels between nodes)
    type Output = u64; // the response's "result"

    fn description(&self) -> String {
        "lines in every file".into() // `dram analyses` and GET /v1/analyses show it
    }
    fn map(&self, _: &(), shard: &Shard) -> Result<u64, AnalysisError> {
        let mut lines = 0;
        for path in shard.files() {
            for line in BufReader::new(shard.open(&path)?).lines() {
                line?;
                lines += 1;
            }
            shard.check_cancelled()?; // stop early once the query is past its deadline
        }
        Ok(lines)
    }
    fn reduce(&self, _: &(), partials: Vec<u64>) -> Result<u64, AnalysisError> {
        Ok(partials.into_iter().sum()) // associative; reduce(vec![]) is the identity
    }
    fn finish(&self, _: &(), lines: u64) -> Result<u64, AnalysisError> {
        Ok(lines)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init(); // dram logs with tracing
    let config = match std::env::args().nth(1) {
        Some(file) => Config::from_file(Path::new(&file))?, // the TOML `dram serve --config` reads
        None => Config::default(), // 127.0.0.1:7070, ./dram-data, file://./dram-store
    };
    let server = dram::builtin::register(Node::builder(config)) // files, count, group, sql
        .analysis("line_count", LineCount) // POST /v1/query/{db}/line_count
        .routes(|_node| warp::path!("hello").map(|| "hi")) // extra warp routes, given the node
        .serve() // or .start(): the node alone, no HTTP
        .await?;
    println!("serving on {}", server.url());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await; // tells the cluster, finishes the queries in flight
    Ok(())
}
