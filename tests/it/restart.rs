//! Crash consistency: a node process killed with SIGKILL in the middle of a download
//! restarts, serves what was ready without downloading it again, and finishes the
//! rest; nothing half-written is ever served.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dram::client::Client;
use serde_json::json;

use crate::support::*;

struct NodeProcess {
    child: Child,
    client: Client,
    /// Where it serves the PostgreSQL protocol, when the test chose it.
    pg: Option<String>,
}

impl NodeProcess {
    /// Runs `dram serve --config FILE` and waits for it to say where it listens.
    fn start(config_file: &Path) -> NodeProcess {
        let mut child = Command::new(dram_binary())
            .args(["serve", "--config"])
            .arg(config_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dram serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some((_, url)) = line.split_once("listening on ") {
                        break url.trim().to_string();
                    }
                    said.push(line);
                }
                _ => {
                    let _ = child.kill();
                    panic!(
                        "dram serve exited before listening; it said:\n{}",
                        said.join("\n")
                    );
                }
            }
        };
        // Keep draining stderr so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        NodeProcess {
            child,
            client: Client::new(&url),
            pg: None,
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `count` files of `size` bytes (each different) over `shards`
/// shards as database `name`; returns them.
async fn publish_files(
    dir: &Path,
    config: &dram::Config,
    name: &str,
    count: u32,
    shards: u32,
    size: u32,
) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let body: Vec<u8> = (0..size).map(|j| ((i * 7 + j) % 253) as u8).collect();
            (format!("shards/{}/f{i}", i % shards), body)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    publish(dir, &config.store, name, &refs).await;
    files
}

/// Every file of `files` is under `dir` with its content.
fn assert_on_disk(dir: &Path, files: &[(String, Vec<u8>)], when: &str) {
    for (path, body) in files {
        let on_disk =
            std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path} {when}: {e}"));
        assert!(on_disk == *body, "{path} differs {when}");
    }
}

fn write_config(dir: &Path, config: &dram::Config) -> std::path::PathBuf {
    let file = dir.join("node.toml");
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_download_restarts_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.download.concurrency = 1; // slow enough to be caught mid-way
    let files = publish_files(dir.path(), &config, "big", 240, 6, 100_000).await;
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let config_file = write_config(dir.path(), &config);

    let node = NodeProcess::start(&config_file);
    node.client
        .post("/v1/databases", &json!({"name": "big", "source": "big"}))
        .await
        .unwrap();
    // Kill it once a good part, but not all, is downloaded.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = node.client.get("/v1/databases/big").await.unwrap();
        let done = info["bytes_done"].as_u64().unwrap_or(0);
        assert_eq!(
            info["state"], "loading",
            "finished before it could be killed: {info}"
        );
        if done > total / 3 {
            break;
        }
        assert!(Instant::now() < deadline, "download made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.kill();

    // Nothing of the unfinished database is served while it cannot finish:
    // with its source gone for a while, the restarted node keeps it unready
    // (the rest of a local store would otherwise arrive before a first look).
    let data = dir.path().join("data");
    let source = dir.path().join("store/big");
    let away = dir.path().join("store/big.away");
    std::fs::rename(&source, &away).unwrap();
    let node = NodeProcess::start(&config_file);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let info = node.client.get("/v1/databases/big").await.unwrap();
        assert_ne!(info["state"], "ready", "{info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::rename(&away, &source).unwrap();
    eventually(60, "big ready after its source is back", || async {
        node.client.get("/v1/databases/big").await.unwrap()["state"] == "ready"
    })
    .await;
    let stats = node.client.get("/v1/stats").await.unwrap();
    let fetched_again = stats["node"]["bytes_downloaded"].as_u64().unwrap();
    assert!(
        fetched_again < total,
        "verified blobs from before the kill are kept: fetched {fetched_again} of {total}"
    );
    assert_on_disk(&data.join("dbs/big"), &files, "after resume");
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
    node.kill();

    // A ready database is served after a crash without any download.
    let node = NodeProcess::start(&config_file);
    let info = node.client.get("/v1/databases/big").await.unwrap();
    assert_eq!(info["state"], "ready");
    let stats = node.client.get("/v1/stats").await.unwrap();
    assert_eq!(stats["node"]["bytes_downloaded"], 0);
    assert_eq!(stats["node"]["files_downloaded"], 0);
}

/// Downloads are not flushed file by file; what a crash may have cut short
/// before the disk was synced is checked at start. A blob whose content was
/// lost is removed and fetched again, a lost link is made again from its
/// intact blob, and nothing damaged is ever served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynced_files_are_checked_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.download.sync_delay_ms = 3_600_000; // nothing is synced while it runs
    let files = publish_files(dir.path(), &config, "db", 12, 4, 50_000).await;
    let config_file = write_config(dir.path(), &config);

    let node = NodeProcess::start(&config_file);
    node.client
        .post("/v1/databases", &json!({"name": "db", "source": "db"}))
        .await
        .unwrap();
    let info = wait_loaded(&node.client, "db").await;
    assert_eq!(info["state"], "ready", "{info}");
    node.kill();

    // What a power loss before the sync could leave: a file's content gone
    // (its blob now holds zeros), another file's directory entry gone.
    let dbs = dir.path().join("data/dbs/db");
    let damaged = dbs.join(&files[0].0);
    let size = files[0].1.len();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&damaged, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&damaged, vec![0u8; size]).unwrap();
    std::fs::set_permissions(&damaged, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::remove_file(dbs.join(&files[5].0)).unwrap();

    let node = NodeProcess::start(&config_file);
    let info = wait_loaded(&node.client, "db").await;
    assert_eq!(info["state"], "ready", "{info}");
    assert_on_disk(&dbs, &files, "after the check");
    let stats = node.client.get("/v1/stats").await.unwrap();
    assert_eq!(
        stats["node"]["bytes_downloaded"], size as u64,
        "only the damaged file is fetched again: {stats}"
    );
    let answer = node
        .client
        .post("/v1/query/db/files", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer["result"]["total"]["files"], 12, "{answer}");
    let events = node.client.get("/v1/events?kind=error").await.unwrap();
    let messages: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["error"]["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("before it was synced")),
        "the damaged blob is an error event: {events}"
    );
    node.kill();

    // A file of a shard made ready long before the last sync, damaged after
    // it: its blob is checked (written since), and the shard, having lost a
    // link, loads again. (The wait puts every write of the runs above more
    // than the check's 2 s of clock slack before the next start's sync.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let node = NodeProcess::start(&config_file);
    wait_loaded(&node.client, "db").await;
    node.kill();
    let damaged = dbs.join(&files[3].0);
    std::fs::set_permissions(&damaged, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&damaged, vec![7u8; size]).unwrap();
    let node = NodeProcess::start(&config_file);
    let info = wait_loaded(&node.client, "db").await;
    assert_eq!(info["state"], "ready", "{info}");
    assert_on_disk(&dbs, &files, "after the second check");
    let stats = node.client.get("/v1/stats").await.unwrap();
    assert_eq!(stats["node"]["bytes_downloaded"], size as u64, "{stats}");
    node.kill();
}

/// CPU seconds (user + system) the process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ
}

/// CPU seconds `pid` uses over the next `window`.
async fn cpu_over(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    tokio::time::sleep(window).await;
    cpu_seconds(pid) - before
}

/// A SQL query that would keep a core busy for many minutes: each shard
/// counts 10^11 generated rows.
const ENDLESS: &str =
    "SELECT count(*) AS n FROM generate_series(1, 100000000000) WHERE value % 7 = 3";

/// A query past its deadline, or whose caller hangs up, stops its work (it
/// used to keep a core busy for over a minute after the 504), and a node
/// running one stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sql_query_stops_its_work_and_sigterm_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.http.shutdown_grace_ms = 500;
    publish(
        dir.path(),
        &config.store,
        "db",
        &[
            ("shards/a/t/x.csv", b"n\n1\n".as_slice()),
            ("shards/b/t/y.csv", b"n\n2\n"),
        ],
    )
    .await;
    let config_file = write_config(dir.path(), &config);
    let node = NodeProcess::start(&config_file);
    let pid = node.child.id();
    node.client
        .post("/v1/databases", &json!({"name": "db", "source": "db"}))
        .await
        .unwrap();
    wait_loaded(&node.client, "db").await;
    let idle = cpu_over(pid, Duration::from_millis(1500)).await;

    // Past its deadline: 504, then the node goes quiet.
    let started = Instant::now();
    let answer = node
        .client
        .post(
            "/v1/query/db/sql",
            &json!({"params": {"sql": ENDLESS}, "timeout_ms": 1000}),
        )
        .await;
    expect_error(answer, 504, "timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after_deadline = cpu_over(pid, Duration::from_millis(1500)).await;
    assert!(
        after_deadline < idle + 0.5,
        "{after_deadline:.2} CPU s in 1.5 s after the deadline (idle: {idle:.2})"
    );

    // The caller hangs up: the same.
    let url = format!("{}/v1/query/db/sql", node.client.base_url());
    let gone = reqwest::Client::new()
        .post(&url)
        .json(&json!({"params": {"sql": ENDLESS}}))
        .timeout(Duration::from_millis(800))
        .send()
        .await;
    assert!(gone.is_err(), "the query answered: {gone:?}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after_hangup = cpu_over(pid, Duration::from_millis(1500)).await;
    assert!(
        after_hangup < idle + 0.5,
        "{after_hangup:.2} CPU s in 1.5 s after the caller left (idle: {idle:.2})"
    );

    // SIGTERM while a query runs: the node stops within seconds.
    let running = tokio::spawn(
        reqwest::Client::new()
            .post(&url)
            .json(&json!({"params": {"sql": ENDLESS}}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut node = node;
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopping = Instant::now();
    let exited = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break Some(status);
        }
        if stopping.elapsed() > Duration::from_secs(5) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        exited.is_some(),
        "the node did not stop within 5 s of SIGTERM while a query ran (grace 0.5 s)"
    );
    let _ = running.await;
}

/// A Parquet file of `batches` × 1 Mi rows of one integer column `n` (all
/// 7: a few KiB on disk, seconds of work for a query that hashes each row).
fn many_rows(batches: usize) -> Vec<u8> {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let column = std::sync::Arc::new(Int64Array::from(vec![7; 1 << 20]));
    let batch = RecordBatch::try_new(schema.clone(), vec![column]).unwrap();
    let mut bytes = Vec::new();
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    for _ in 0..batches {
        writer.write(&batch).unwrap();
    }
    writer.close().unwrap();
    bytes
}

/// Two `dram serve` members and database `big` (shards a and b of table
/// `t`, `batches` Mi rows each, one copy): the member asked and the member
/// that scans (the one holding more shards). n1's disk budget is already
/// used up (its catalog fills it), so it takes no shard and n2 holds both.
async fn two_processes(dir: &Path, batches: usize) -> (NodeProcess, NodeProcess) {
    let rows = many_rows(batches);
    let mut first = config(&dir.join("n1"));
    first.node.id = "n1".into();
    first.disks[0].max_bytes = Some(1024);
    first.store.url = format!("file://{}", dir.join("store").display());
    publish(
        dir,
        &first.store,
        "big",
        &[
            ("shards/a/t/x.parquet", rows.as_slice()),
            ("shards/b/t/y.parquet", rows.as_slice()),
        ],
    )
    .await;
    let mut second = config(&dir.join("n2"));
    second.node.id = "n2".into();
    second.store.url = first.store.url.clone();
    second.cluster.seeds = vec![first.cluster.gossip_listen.clone()];
    std::fs::create_dir_all(dir.join("n1")).unwrap();
    std::fs::create_dir_all(dir.join("n2")).unwrap();
    first.pg.listen = format!("127.0.0.1:{}", free_tcp_port());
    second.pg.listen = format!("127.0.0.1:{}", free_tcp_port());
    let mut n1 = NodeProcess::start(&write_config(&dir.join("n1"), &first));
    let mut n2 = NodeProcess::start(&write_config(&dir.join("n2"), &second));
    n1.pg = Some(first.pg.listen.clone());
    n2.pg = Some(second.pg.listen.clone());
    eventually(30, "two members", || async {
        let view = n1.client.get("/v1/cluster").await.unwrap_or_default();
        crate::cluster::live_members(&view).len() == 2
    })
    .await;
    n1.client
        .post(
            "/v1/databases",
            &json!({"name": "big", "source": "big", "replicas": 1}),
        )
        .await
        .unwrap();
    eventually(60, "both shards placed", || async {
        let view = copies(&n1.client, "big").await;
        view.len() == 2 && view.values().all(|h| ready(h).len() == 1)
    })
    .await;
    let held = copies(&n1.client, "big").await;
    let on_n1 = held.values().filter(|h| ready(h) == ["n1"]).count();
    if on_n1 == 2 { (n2, n1) } else { (n1, n2) }
}

/// A query sent to a member that holds no shard (or fewer) runs its scans
/// on the holder: the planner would run a stage of one task under a head of
/// one task on the coordinator, reading every row over the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_query_scans_where_the_shards_are() {
    let dir = tempfile::tempdir().unwrap();
    let (asked, scanner) = two_processes(dir.path(), 4).await;
    let pid = scanner.child.id();
    let idle = cpu_over(pid, Duration::from_millis(1500)).await;
    // `random() < 0` is never true, but no row group is pruned by it.
    let sql = "SELECT count(*) AS c FROM t \
               WHERE md5(repeat(CAST(n AS VARCHAR), 4)) > 'f' OR random() < 0";
    let url = format!("{}/v1/query/big/sql", asked.client.base_url());
    let running = tokio::spawn(
        reqwest::Client::new()
            .post(&url)
            .json(&json!({"params": {"sql": sql}, "timeout_ms": 120_000}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let working = cpu_over(pid, Duration::from_millis(1000)).await;
    assert!(
        working > idle + 0.5,
        "the member holding the shards used {working:.2} CPU s in 1 s (idle: {idle:.2})"
    );
    let answer: serde_json::Value = running.await.unwrap().unwrap().json().await.unwrap();
    // md5 of "7777" begins with 'd': no row passes.
    assert_eq!(answer["result"]["rows"], json!([{"c": 0}]), "{answer}");
}

/// A query past its deadline stops on every member, although the stage
/// scanning never waits on anything: it decodes row groups in memory and its
/// aggregation pulls every batch in one poll (once, the member scanning went
/// on for minutes after the 504). Asked of the other member (the scan is a
/// remote stage) and of the member scanning (its own worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_distributed_query_stops_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let (asked, scanner) = two_processes(dir.path(), 16).await;
    let pid = scanner.child.id();
    let idle = cpu_over(pid, Duration::from_millis(1500)).await;
    // random(): no row group is pruned by its statistics; minutes of work.
    let sql = "SELECT count(*) AS c FROM t \
               WHERE md5(repeat(CAST(n + random() AS VARCHAR), 40)) > 'f'";
    for (who, member) in [
        ("the other member", &asked),
        ("the member scanning", &scanner),
    ] {
        let url = format!("{}/v1/query/big/sql", member.client.base_url());
        let answer = reqwest::Client::new()
            .post(&url)
            .json(&json!({"params": {"sql": sql}, "timeout_ms": 3000}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 504, "{:?}", answer.text().await);
        goes_idle(pid, idle, &format!("asked of {who}, past the deadline")).await;
    }
}

/// Waits until process `pid` uses no more CPU than when `idle` (CPU s per
/// second), within a few seconds however busy the machine running the tests
/// is (the work stopped would go on for minutes).
async fn goes_idle(pid: u32, idle: f64, after: &str) {
    let since = Instant::now();
    let mut busy = Vec::new();
    loop {
        let used = cpu_over(pid, Duration::from_millis(1000)).await;
        if used < idle + 0.2 {
            return;
        }
        busy.push(used);
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "{after}: the member scanning still works 15 s later \
             (CPU s per second: {busy:.2?}; idle: {idle:.2})"
        );
    }
}

/// A query cancelled by a SQL client stops on every member: psql's Ctrl-C
/// (SIGINT: psql sends a cancel request, the simple protocol) and psycopg's
/// `cancel_safe()` (the extended protocol) both get SQLSTATE 57014, and the
/// member scanning goes idle, as for a query past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_cancelled_by_a_sql_client_stops_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let (asked, scanner) = two_processes(dir.path(), 16).await;
    let pid = scanner.child.id();
    let idle = cpu_over(pid, Duration::from_millis(1500)).await;
    let (host, port) = asked.pg.as_deref().unwrap().split_once(':').unwrap();
    let url = format!("host={host} port={port} dbname=big user=dram");
    let sql = "SELECT count(*) AS c FROM t \
               WHERE md5(repeat(CAST(n + random() AS VARCHAR), 40)) > 'f'";

    // psql, interrupted as a user's Ctrl-C does.
    let psql = tokio::process::Command::new("psql")
        .arg(&url)
        .args(["-X", "-v", "VERBOSITY=verbose", "-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs (Debian's postgresql-client; .ci/run installs it)");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let working = cpu_over(pid, Duration::from_millis(1000)).await;
    assert!(
        working > idle + 0.5,
        "the member scanning used {working:.2} CPU s in 1 s (idle: {idle:.2})"
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &psql.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let out = tokio::time::timeout(Duration::from_secs(30), psql.wait_with_output())
        .await
        .expect("psql ends after its cancel")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("57014"), "psql: {err}");
    goes_idle(pid, idle, "cancelled by psql").await;

    // psycopg, from another thread, as an application cancels.
    let script = r#"
import json, os, sys, threading, time, psycopg
conn = psycopg.connect(os.environ["CONNINFO"], autocommit=True)
threading.Timer(2.0, conn.cancel_safe).start()
out = {}
try:
    conn.execute(sys.argv[1]).fetchall()
except psycopg.Error as e:
    out["cancelled"] = e.sqlstate
out["after"] = conn.execute("SELECT 41 + 1").fetchone()[0]
print(json.dumps(out))
"#;
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/venv/bin/python");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .args(["-c", script, sql])
            .env("CONNINFO", &url)
            .output(),
    )
    .await
    .expect("psycopg ends after its cancel")
    .expect("tests/venv has python with psycopg (.ci/run makes it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer, json!({"cancelled": "57014", "after": 42}));
    goes_idle(pid, idle, "cancelled by psycopg").await;
}
