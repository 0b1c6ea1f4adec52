//! A complete custom dram server: the built-in analyses, the two sales analyses
//! of `analyses.rs`, and one extra HTTP route.
//!
//! ```sh
//! cargo run --example sales                       # http://127.0.0.1:7070, ./dram-data, file://./dram-store
//! cargo run --example sales -- --config node.toml # or any dram config file
//! ```
//! Then publish `examples/sales/data` and query it (README.md, "Example: a sales
//! server").

mod analyses;
mod server;

use std::path::PathBuf;

use clap::Parser;
use dram::Config;

/// A dram node serving the sales analyses.
#[derive(Parser)]
struct Args {
    /// A dram config file (default: the embedded defaults).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let server = server::builder(config).serve().await?;
    eprintln!(
        "sales server {} listening on {}",
        server.node.id(),
        server.url()
    );
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
