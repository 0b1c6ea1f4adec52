//! `load`: how fast a node loads a database from S3, beside `rclone copy` and
//! a plain loop of object_store GETs (the practical limit of this machine).
//!
//! ```text
//! cargo run -p simulations --release -- bench --only load [--quick]
//! ```
//!
//! A real s3s-fs server on 127.0.0.1 holds two databases published through
//! its API (`dram::publish`): 1 GiB in 1,000 files (10 shards × 100) and
//! 1 GiB in 8 files (8 shards × 1); 64 MiB each with `--quick`. Per layout and
//! round (4: one per contender), in an order rotated every round so that each
//! goes first once, each contender copies the whole
//! database to local disk and its MB/s is recorded; the table shows medians.
//! Between runs the copy is deleted and `sync` is called (not timed). Target
//! (issue 11): dram ≥ 1.0× rclone and ≥ 0.9× the plain loop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use dram::client::Client;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::support::{
    S3_KEY, S3_SECRET, S3Server, add_and_wait, find_binary, median, publish, s3_node,
    write_random_files,
};
use super::{Settings, Table, ratio};

const BUCKET: &str = "bench";
const GIB: u64 = 1 << 30;
/// GETs in flight in the plain loop (dram's default `download.concurrency`).
const PLAIN_CONCURRENCY: usize = 32;
const RCLONE_FLAGS: [&str; 6] = [
    "--transfers",
    "16",
    "--checkers",
    "16",
    "--multi-thread-streams",
    "4",
];

/// One way a database is split into files.
struct Layout {
    label: &'static str,
    prefix: &'static str,
    shards: usize,
    files_per_shard: usize,
}

const LAYOUTS: [Layout; 2] = [
    Layout {
        label: "1,000 files",
        prefix: "many",
        shards: 10,
        files_per_shard: 100,
    },
    Layout {
        label: "8 files",
        prefix: "few",
        shards: 8,
        files_per_shard: 1,
    },
];

#[derive(Clone, Copy, PartialEq)]
enum Contender {
    Dram,
    Rclone,
    Plain,
    PlainFsync,
}

const CONTENDERS: [Contender; 4] = [
    Contender::Dram,
    Contender::Rclone,
    Contender::Plain,
    Contender::PlainFsync,
];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Dram => "dram",
            Contender::Rclone => "rclone",
            Contender::Plain => "plain",
            Contender::PlainFsync => "plain+fsync",
        }
    }
}

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    let total = if settings.quick { 64 << 20 } else { GIB };
    // As many rounds as contenders: each goes first once.
    let rounds = if settings.quick { 1 } else { CONTENDERS.len() };
    let rclone = find_binary("rclone");
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start(dir.path(), BUCKET)?;
    let runtime = super::nodes::runtime()?;
    let mut rng = StdRng::seed_from_u64(settings.seed);

    let mut sizes = Vec::new();
    for layout in &LAYOUTS {
        let files = layout.shards * layout.files_per_shard;
        let size = (total / files as u64) as usize;
        let folder = dir.path().join(format!("src-{}", layout.prefix));
        let paths: Vec<(String, usize)> = (0..layout.shards)
            .flat_map(|s| (0..layout.files_per_shard).map(move |f| (s, f)))
            .map(|(s, f)| (format!("shards/s{s}/f{f:03}.bin"), size))
            .collect();
        write_random_files(&folder, &paths, &mut rng)?;
        let url = format!("s3://{BUCKET}/{}", layout.prefix);
        runtime.block_on(publish(&folder, &url, &s3.store_config(BUCKET)))?;
        std::fs::remove_dir_all(&folder)?;
        sizes.push((size * files) as u64);
    }
    let rclone_conf = dir.path().join("rclone.conf");
    std::fs::write(
        &rclone_conf,
        format!(
            "[bench]\ntype = s3\nprovider = Other\nendpoint = {}\nregion = us-east-1\n\
             force_path_style = true\naccess_key_id = {S3_KEY}\nsecret_access_key = {S3_SECRET}\n",
            s3.endpoint
        ),
    )?;
    let store: Arc<dyn ObjectStore> = Arc::new(s3.client(BUCKET)?);

    let mut table = Table::new(
        format!(
            "load: {} MiB from s3s-fs to local disk, MB/s (median of {rounds})",
            total >> 20
        ),
        &[
            "layout",
            "dram",
            "rclone",
            "plain GETs",
            "plain+fsync",
            "dram/rclone",
            "dram/plain",
            "dram/plain+fsync",
        ],
    );
    let mut runs_note = Vec::new();
    for (layout, &bytes) in LAYOUTS.iter().zip(&sizes) {
        // Per contender, per run: (MB/s, client CPU s, s3s-fs CPU s).
        let mut runs: [Vec<(f64, f64, f64)>; 4] = Default::default();
        for round in 0..rounds {
            let mut order = CONTENDERS;
            order.rotate_left(round % CONTENDERS.len());
            for contender in order {
                let out = dir.path().join("out");
                let (self_before, children_before) = cpu_seconds();
                let server_before = process_cpu_seconds(s3.pid())?;
                let secs = match contender {
                    Contender::Dram => runtime.block_on(dram_load(&s3, &out, layout.prefix))?,
                    Contender::Rclone => match &rclone {
                        Some(binary) => rclone_copy(binary, &rclone_conf, &out, layout.prefix)?,
                        None => f64::NAN,
                    },
                    Contender::Plain | Contender::PlainFsync => runtime.block_on(plain_gets(
                        store.clone(),
                        &out,
                        layout.prefix,
                        contender == Contender::PlainFsync,
                    ))?,
                };
                let server = process_cpu_seconds(s3.pid())? - server_before;
                let (self_after, children_after) = cpu_seconds();
                let client = (self_after - self_before) + (children_after - children_before);
                let copied = if secs.is_nan() {
                    bytes
                } else {
                    data_bytes(&out)?
                };
                if copied != bytes {
                    bail!("{}: copied {copied} bytes of {bytes}", layout.label);
                }
                if out.exists() {
                    std::fs::remove_dir_all(&out)?;
                }
                // SAFETY: sync(2) takes no arguments and cannot fail.
                unsafe { libc::sync() };
                runs[contender as usize].push((bytes as f64 / 1e6 / secs, client, server));
            }
        }
        let speed = runs
            .each_ref()
            .map(|v| median(&v.iter().map(|r| r.0).collect::<Vec<_>>()));
        let cell = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.0}")
            }
        };
        let mut row = vec![layout.label.to_string()];
        row.extend(speed.iter().map(|v| cell(*v)));
        row.extend(speed[1..].iter().map(|v| ratio(speed[0], *v)));
        table.row(row);
        let gib = bytes as f64 / GIB as f64;
        let contenders: Vec<String> = CONTENDERS
            .iter()
            .map(|c| {
                let v = &runs[*c as usize];
                let list: Vec<String> = v.iter().map(|r| format!("{:.0}", r.0)).collect();
                let client = median(&v.iter().map(|r| r.1 / gib).collect::<Vec<_>>());
                let server = median(&v.iter().map(|r| r.2 / gib).collect::<Vec<_>>());
                format!(
                    "{} {} MB/s, CPU s/GiB {client:.1} + s3s-fs {server:.1}",
                    c.name(),
                    list.join(" ")
                )
            })
            .collect();
        runs_note.push(format!("  {}: {}", layout.label, contenders.join(" | ")));
    }
    if rclone.is_none() {
        table.note("rclone: rclone not found (apt-get install rclone)");
    }
    table.note(format!(
        "data: random bytes; 1,000 files = 10 shards × 100 files of {} bytes, 8 files = 8 shards × 1 \
         file of {} bytes; published with dram::publish through s3s-fs's API ({}); MB = 10^6 bytes",
        total / 1000,
        total / 8,
        s3.endpoint
    ));
    table.note(
        "dram: an in-process node (dram::Server, download.concurrency 32, one disk with max_bytes \
         16 GB, store = the s3s-fs endpoint), timed from POST /v1/databases {\"name\":\"bench\",\"source\":\"s3://bench/<layout>\"} \
         until GET /v1/databases/bench (polled every 10 ms) says ready; a fresh data dir each run. \
         dram verifies sha256 and size of every file; like rclone and plain GETs it leaves \
         writeback to the kernel while it loads, and syncs the disk once it has been idle for \
         download.sync_delay_ms (1 s, after the timer stopped; a crash before it is checked at start).",
    );
    table.note(format!(
        "rclone: env -u AWS_CA_BUNDLE rclone copy bench:{BUCKET}/<layout>/ OUT --config rclone.conf {} \
         (remote: type s3, provider Other, force_path_style true, endpoint as above)",
        RCLONE_FLAGS.join(" ")
    ));
    table.note(format!(
        "plain GETs: object_store AmazonS3 client, LIST the prefix, then whole-object GETs \
         {PLAIN_CONCURRENCY} at a time, sha256 of each body while writing it (tokio::fs) to OUT; \
         plain+fsync: the same, and File::sync_all once each file is written (a flush per file, \
         as dram did before it synced whole disks)"
    ));
    table.note(format!(
        "order rotated every round (each contender goes first once); out dir deleted and sync(2) between runs. Every run's MB/s, \
         and median CPU seconds per GiB of the client (this process's getrusage, rclone's as a \
         child) and of s3s-fs (/proc/<pid>/stat):\n{}",
        runs_note.join("\n")
    ));
    Ok(vec![table])
}

/// Seconds a fresh in-process node takes to load `s3://bench/<prefix>`.
async fn dram_load(s3: &S3Server, data_dir: &Path, prefix: &str) -> Result<f64> {
    let server = s3_node(s3, BUCKET, data_dir).await?;
    let client = Client::new(&server.url());
    let source = format!("s3://{BUCKET}/{prefix}");
    let outcome = add_and_wait(&client, "bench", &source).await;
    server.shutdown().await;
    outcome
}

/// Seconds `rclone copy` takes to copy `bench:bench/<prefix>/` to `out`.
fn rclone_copy(binary: &Path, conf: &Path, out: &Path, prefix: &str) -> Result<f64> {
    let started = Instant::now();
    let output = Command::new(binary)
        .arg("copy")
        .arg(format!("bench:{BUCKET}/{prefix}/"))
        .arg(out)
        .arg("--config")
        .arg(conf)
        .args(RCLONE_FLAGS)
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .output()
        .context("cannot run rclone")?;
    let secs = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "rclone copy failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(secs)
}

/// Seconds a plain loop of GETs takes to copy every object under `prefix`.
async fn plain_gets(
    store: Arc<dyn ObjectStore>,
    out: &Path,
    prefix: &str,
    fsync: bool,
) -> Result<f64> {
    let started = Instant::now();
    let prefix = StorePath::from(prefix);
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    futures::stream::iter(objects)
        .map(|meta| {
            let store = store.clone();
            let target: PathBuf = out.join(meta.location.as_ref());
            async move {
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                let mut file = tokio::fs::File::create(&target).await?;
                let mut hasher = Sha256::new();
                let mut body = store.get(&meta.location).await?.into_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    hasher.update(&chunk);
                    file.write_all(&chunk).await?;
                }
                file.flush().await?;
                if fsync {
                    file.sync_all().await?;
                }
                std::hint::black_box(hasher.finalize());
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(PLAIN_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// CPU seconds (user + system) of this process and of its waited-for children.
fn cpu_seconds() -> (f64, f64) {
    let usage = |who| {
        // SAFETY: getrusage(2) writes into the zeroed struct we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut usage) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    };
    (usage(libc::RUSAGE_SELF), usage(libc::RUSAGE_CHILDREN))
}

/// CPU seconds (user + system) a running process has used, from /proc.
fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: state is field 3, utime 14 and stime 15.
    let ticks: f64 = fields
        .get(11..13)
        .context("short /proc/<pid>/stat")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    // SAFETY: sysconf(3) only reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second)
}

/// Bytes of the database's data files under `dir` (the manifest and dram's own
/// files left out): dram's copy is its blob store, the others' a folder tree.
fn data_bytes(dir: &Path) -> Result<u64> {
    let blobs = dir.join("blobs");
    let root = if blobs.is_dir() {
        blobs
    } else {
        dir.to_path_buf()
    };
    let mut total = 0;
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry?;
        if entry.file_type().is_file() && entry.file_name() != "dram.json" {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}
