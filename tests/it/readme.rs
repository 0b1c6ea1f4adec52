//! README.md's quick start and Cluster section, run as they are written: the
//! `sh` blocks are read from README.md and run by bash with the `dram` binary
//! built for these tests. What changes, and only that: the ports (README's
//! 7070…7075 and 5433…5435 become free ones, so that a node a developer runs
//! is not disturbed; a command that uses the defaults is given the free
//! ones) and, for each `dram serve`, a config file giving the
//! node's folder a disk budget (README's own remedy for a disk past 90%: the
//! test machines' disks often are). The answers are checked against counts
//! computed here from the sample's CSV files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::support::{dram_binary, free_tcp_port, free_udp_port};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The text of README's section `heading` (a `## ` or `### ` line), up to
/// the next heading of any level.
fn section(heading: &str) -> String {
    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no {heading:?}"));
    let rest = &readme[start + heading.len() + 2..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    let end = rest[..end].find("\n### ").unwrap_or(end);
    rest[..end].to_string()
}

/// The ```sh blocks of a section, in order.
fn sh_blocks(section: &str) -> Vec<String> {
    section
        .split("```sh\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default().to_string())
        .collect()
}

/// README's ports and the free ones standing in for them.
struct Ports(Vec<(u16, u16)>);

impl Ports {
    fn new() -> Ports {
        let mut pairs = Vec::new();
        for (http, gossip, pg) in [(7070, 7071, 5433), (7072, 7073, 5434), (7074, 7075, 5435)] {
            pairs.push((http, free_tcp_port()));
            pairs.push((gossip, free_udp_port()));
            pairs.push((pg, free_tcp_port()));
        }
        Ports(pairs)
    }

    /// The free port standing in for README's `readme_port`.
    fn free(&self, readme_port: u16) -> u16 {
        self.0.iter().find(|(r, _)| *r == readme_port).unwrap().1
    }

    /// `script` with README's ports replaced and `dram` the test binary.
    fn script(&self, script: &str) -> String {
        let mut out = script.to_string();
        for (readme, free) in &self.0 {
            let port = regex::Regex::new(&format!(r"\b{readme}\b")).unwrap();
            out = port.replace_all(&out, free.to_string()).into_owned();
        }
        let command = regex::Regex::new(r"(?m)^dram ").unwrap();
        command
            .replace_all(&out, format!("{} ", dram_binary()))
            .into_owned()
    }
}

/// A `dram serve` line started in the background in `dir`, with a config
/// file giving its data folder a budget; killed on drop.
async fn serve(dir: &Path, line: &str, ports: &Ports) -> Child {
    let data_dir = line
        .split_whitespace()
        .skip_while(|word| *word != "--data-dir")
        .nth(1)
        .unwrap_or("./dram-data")
        .to_string();
    let config = dir.join(format!("budget-{}.toml", data_dir.trim_start_matches("./")));
    std::fs::write(
        &config,
        format!("[[disks]]\npath = \"{data_dir}\"\nmax_bytes = 10_000_000_000\n"),
    )
    .unwrap();
    // The comment README puts after a command is not part of it.
    let command = line.split(" #").next().unwrap_or(line).trim();
    let mut command = format!("{} --config {}", ports.script(command), config.display());
    // README's first node takes the default addresses; here, free ones.
    for (flag, readme_port) in [("--http", 7070), ("--gossip", 7071), ("--pg", 5433)] {
        if !command.contains(flag) {
            command.push_str(&format!(" {flag} 127.0.0.1:{}", ports.free(readme_port)));
        }
    }
    Command::new("bash")
        .arg("-c")
        .arg(format!("exec {command}"))
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_healthy(http_port: u16) {
    let url = format!("http://127.0.0.1:{http_port}/v1/health");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = reqwest::get(&url).await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "no node answered on {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a README block with bash (`set -euo pipefail`: any command failing
/// fails it) in `dir`; returns what it printed.
async fn run_block(dir: &Path, block: &str, ports: &Ports) -> String {
    let script = format!("set -euo pipefail\n{}", ports.script(block));
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir)
            // The default node (README's 127.0.0.1:7070) is the first one here.
            .env("DRAM_NODE", format!("127.0.0.1:{}", ports.free(7070)))
            .env_remove("DRAM_TOKEN")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the block ran for 3 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "README block failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A folder to run README's commands from: the clone's `examples` linked in,
/// as a user in their clone has it.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repository().join("examples"), dir.path().join("examples")).unwrap();
    dir
}

/// Orders in the sample, and those of product P101, counted from the CSVs.
fn sample_counts() -> (usize, usize) {
    let shards = repository().join("examples/sales/data/shards");
    let (mut orders, mut p101) = (0, 0);
    for shard in std::fs::read_dir(shards).unwrap() {
        let text = std::fs::read_to_string(shard.unwrap().path().join("sales.csv")).unwrap();
        for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
            orders += 1;
            if line.split(',').nth(2) == Some("P101") {
                p101 += 1;
            }
        }
    }
    (orders, p101)
}

fn has_psql() -> bool {
    std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_runs_as_written() {
    let text = section("## Quick start");
    let blocks = sh_blocks(&text);
    assert_eq!(blocks.len(), 2, "the quick start's blocks: {blocks:?}");
    assert_eq!(blocks[0].trim(), "dram serve");
    if !has_psql() {
        assert!(
            std::env::var_os("CI").is_none(),
            "psql is missing in CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: psql is missing; .ci/run installs postgresql-client");
        return;
    }
    let dir = workdir();
    let ports = Ports::new();
    let _node = serve(dir.path(), &blocks[0], &ports).await;
    wait_healthy(ports.free(7070)).await;

    let out = run_block(dir.path(), &blocks[1], &ports).await;
    let (orders, p101) = sample_counts();
    // `dram db add --wait`, then the table of `db ls`.
    assert!(out.contains("sales-2026-11-22: ready"), "{out}");
    // The count analysis: `"rows": N` for P101.
    assert!(out.contains(&format!("\"rows\": {p101}")), "{out}");
    // curl's sql answer and psql's.
    assert!(out.contains(&format!("\"orders\":{orders}")), "{out}");
    assert!(
        out.lines().any(|l| l.trim() == orders.to_string()),
        "psql's answer: {out}"
    );

    // The HTTP API's and the Built-in analyses' examples, on the quick
    // start's database.
    let mut shown = String::new();
    let blocks = [section("## HTTP API"), section("## Built-in analyses")];
    for block in blocks.iter().flat_map(|s| sh_blocks(s)) {
        shown.push_str(&run_block(dir.path(), &block, &ports).await);
    }
    assert!(shown.contains(&format!("\"n\": {orders}")), "{shown}");
    let described: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("openapi.json")).unwrap()).unwrap();
    assert!(described["paths"]["/v1/query/{database}/{analysis}"].is_object());
    assert!(shown.contains("\"name\":\"latest\""), "{shown}");
    let arrow = std::fs::read(dir.path().join("sales.arrow")).unwrap();
    assert!(arrow.starts_with(&[0xff; 4]), "not an Arrow IPC stream");

    // The SQL join of the shards' sales with the global products (JSON rows,
    // stdout not being a terminal): the lines of each category.
    for (category, lines) in lines_per_category() {
        let row = format!("\"category\": \"{category}\",\n    \"lines\": {lines},");
        assert!(out.contains(&row), "no {row:?} in: {out}");
    }
}

/// Sales lines per product category, from the sample's CSV files.
fn lines_per_category() -> std::collections::BTreeMap<String, usize> {
    let data = repository().join("examples/sales/data");
    let products = std::fs::read_to_string(data.join("global/products.csv")).unwrap();
    let category: std::collections::BTreeMap<&str, &str> = products
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            Some((*cells.first()?, *cells.get(2)?))
        })
        .collect();
    let mut lines = std::collections::BTreeMap::new();
    for shard in std::fs::read_dir(data.join("shards")).unwrap() {
        let text = std::fs::read_to_string(shard.unwrap().path().join("sales.csv")).unwrap();
        for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
            let product = line.split(',').nth(2).unwrap();
            *lines.entry(category[product].to_string()).or_insert(0) += 1;
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_cluster_section_runs_as_written() {
    let text = section("### Cluster");
    let blocks = sh_blocks(&text);
    assert!(
        blocks.len() >= 2,
        "the Cluster section's blocks: {blocks:?}"
    );
    let dir = workdir();
    let ports = Ports::new();
    let mut nodes = Vec::new();
    for line in blocks[0].lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.starts_with("dram serve "), "{line}");
        nodes.push(serve(dir.path(), line, &ports).await);
    }
    assert_eq!(nodes.len(), 3);
    for port in [7070, 7072, 7074] {
        wait_healthy(ports.free(port)).await;
    }
    // As a user starting three terminals would: the members have met before
    // the next commands are typed.
    let deadline = Instant::now() + Duration::from_secs(30);
    for port in [7070, 7072, 7074] {
        let url = format!("http://127.0.0.1:{}/v1/cluster", ports.free(port));
        loop {
            let view: serde_json::Value = match reqwest::get(&url).await {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            let live = crate::cluster::live_members(&view).len();
            if live == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the three members never met: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let out = run_block(dir.path(), &blocks[1], &ports).await;
    assert!(out.contains("sales -> sales-1"), "{out}");

    // Every member ends with every shard (replicas all) and health green,
    // as README says `cluster status` shows.
    let status = format!(
        "{} --node 127.0.0.1:{} cluster status",
        dram_binary(),
        ports.free(7074)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = Command::new("bash")
            .arg("-c")
            .arg(&status)
            .output()
            .await
            .unwrap();
        let shown = String::from_utf8_lossy(&output.stdout).into_owned();
        let members = shown.lines().filter(|l| l.contains(" yes ")).count();
        if shown.contains("health green") && members == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never got green: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let shards = run_block(
        dir.path(),
        "dram --node 127.0.0.1:7074 cluster shards sales-1\n",
        &ports,
    )
    .await;
    for region in ["east", "north", "south", "west"] {
        let line = shards
            .lines()
            .find(|l| l.starts_with(region))
            .unwrap_or_else(|| panic!("{region}: {shards}"));
        assert_eq!(line.matches(":ready").count(), 3, "{shards}");
    }
}
