//! What the bench cases share: free ports on 127.0.0.1, child processes killed
//! on drop, an s3s-fs server, `dram serve` processes, a tiny blocking HTTP
//! client (for processes in another network namespace), publishing a folder,
//! and medians.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dram::client::Client;
use dram::config::{DiskConfig, StoreConfig};
use dram::storage::{Source, SourceUrl};
use dram::{Config, Node, Server};
use rand::RngCore;
use rand::rngs::StdRng;
use serde_json::json;

pub const S3_KEY: &str = "drambenchkey";
pub const S3_SECRET: &str = "drambenchsecret";

/// A TCP port free right now on 127.0.0.1.
pub fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A UDP port free right now on 127.0.0.1 (gossip needs a fixed port).
pub fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<Proc> {
        let name = name.into();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Proc { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name` in PATH or in ~/.cargo/bin.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin").join(name));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The `dram` binary beside this executable (same profile), or why not.
pub fn dram_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let path = exe.with_file_name("dram");
    if !path.is_file() {
        bail!(
            "no dram binary at {}: build it with `cargo build --release --bin dram`",
            path.display()
        );
    }
    Ok(path)
}

/// An s3s-fs server on 127.0.0.1 with one bucket, killed on drop.
pub struct S3Server {
    proc: Proc,
    pub endpoint: String,
}

impl S3Server {
    /// Starts s3s-fs serving `dir/s3` with the bucket `bucket`.
    pub fn start(dir: &Path, bucket: &str) -> Result<S3Server> {
        let binary = find_binary("s3s-fs")
            .context("s3s-fs not found (cargo install s3s-fs@0.14.1 --locked --features binary)")?;
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(bucket))?;
        for _ in 0..5 {
            let port = free_tcp_port()?;
            let mut proc = Proc::spawn(
                "s3s-fs",
                Command::new(&binary)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
                    .arg(&root)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
            for _ in 0..250 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(S3Server {
                        proc,
                        endpoint: format!("http://127.0.0.1:{port}"),
                    });
                }
                if proc.child.try_wait()?.is_some() {
                    break; // port taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("s3s-fs did not start within 5 s (5 tries)")
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// dram's store settings for this server, base URL `s3://bucket`.
    pub fn store_config(&self, bucket: &str) -> StoreConfig {
        StoreConfig {
            url: format!("s3://{bucket}"),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            access_key_id: Some(S3_KEY.into()),
            secret_access_key: Some(S3_SECRET.into()),
            allowed_sources: Vec::new(),
        }
    }

    /// A plain object_store client of `bucket`, configured as TESTING.md says.
    pub fn client(&self, bucket: &str) -> Result<object_store::aws::AmazonS3> {
        Ok(object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_access_key_id(S3_KEY)
            .with_secret_access_key(S3_SECRET)
            .with_virtual_hosted_style_request(false)
            .build()?)
    }
}

/// Writes `files` (path → size, random bytes from `rng`) under `dir`.
pub fn write_random_files(dir: &Path, files: &[(String, usize)], rng: &mut StdRng) -> Result<()> {
    let mut buf = Vec::new();
    for (path, size) in files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        buf.resize(*size, 0);
        rng.fill_bytes(&mut buf);
        std::fs::write(&target, &buf).with_context(|| format!("cannot write {target:?}"))?;
    }
    Ok(())
}

/// Publishes the folder `dir` as a database at `url` (as `dram publish` does:
/// every file through the store's API, then `dram.json`).
pub async fn publish(dir: &Path, url: &str, store: &StoreConfig) -> Result<()> {
    let plan = dram::publish::plan(dir)?;
    let source = Source::open(&SourceUrl::parse(url)?, store, true)?;
    dram::publish::publish(&plan, &source, 8, &|_| {})
        .await
        .with_context(|| format!("cannot publish {} to {url}", dir.display()))?;
    Ok(())
}

/// The cap on a benchmark node's disk (`[[disks]] max_bytes`): the shared
/// file system here is often past dram's default watermark of its size.
pub const DISK_MAX_BYTES: u64 = 16_000_000_000;

/// An in-process node whose store is `bucket` on `s3` (HTTP and gossip on
/// free ports, data in `data_dir`).
pub async fn s3_node(s3: &S3Server, bucket: &str, data_dir: &Path) -> Result<Server> {
    let mut config = Config::default();
    config.node.data_dir = data_dir.to_path_buf();
    config.node.http_listen = "127.0.0.1:0".into();
    config.pg.listen = "127.0.0.1:0".into();
    config.disks = vec![DiskConfig {
        path: data_dir.to_path_buf(),
        high_watermark: 0.9,
        max_bytes: Some(DISK_MAX_BYTES),
    }];
    config.store = s3.store_config(bucket);
    config.cluster.gossip_listen = format!("127.0.0.1:{}", free_udp_port()?);
    Ok(Node::builder(config).serve().await?)
}

/// `POST /v1/databases {name, source}`, then polls `GET /v1/databases/{name}`
/// every 10 ms until it is ready (at most 10 minutes); the seconds it took.
pub async fn add_and_wait(client: &Client, name: &str, source: &str) -> Result<f64> {
    let started = Instant::now();
    client
        .post("/v1/databases", &json!({"name": name, "source": source}))
        .await?;
    let deadline = started + Duration::from_secs(600);
    loop {
        let info = client.get(&format!("/v1/databases/{name}")).await?;
        match info["state"].as_str() {
            Some("ready") => return Ok(started.elapsed().as_secs_f64()),
            Some("loading") if Instant::now() < deadline => {}
            _ => bail!("{name} did not load from {source}: {info}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sum of a counter's series in a Prometheus text page.
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `dram serve` process (maybe run by a wrapper such as `/usr/bin/time`),
/// its pid and the address its HTTP API listens on. Drop kills both.
pub struct DramProcess {
    pub proc: Proc,
    /// The dram process itself (the wrapper's child when there is one).
    pub pid: u32,
    pub http: SocketAddr,
}

/// The TOML config of one benchmark node (HTTP on a free port).
pub fn node_config(
    data_dir: &Path,
    store_url: &str,
    gossip_port: u16,
    seeds: &[String],
    gossip_interval_ms: u64,
) -> String {
    let seeds: Vec<String> = seeds.iter().map(|s| format!("{s:?}")).collect();
    let data = data_dir.display().to_string();
    format!(
        "[node]\ndata_dir = {data:?}\nhttp_listen = \"127.0.0.1:0\"\n\n\
         [pg]\nlisten = \"127.0.0.1:0\"\n\n\
         [[disks]]\npath = {data:?}\nmax_bytes = {DISK_MAX_BYTES}\n\n[store]\nurl = {store_url:?}\n\n\
         [cluster]\ngossip_listen = \"127.0.0.1:{gossip_port}\"\nseeds = [{}]\n\
         gossip_interval_ms = {gossip_interval_ms}\n",
        seeds.join(", ")
    )
}

impl DramProcess {
    /// Runs `wrapper… dram serve --config CONFIG` (logs at warn) and waits (at
    /// most 60 s) for its "listening on" line; its stderr is drained by a thread.
    pub fn start(binary: &Path, config: &Path, wrapper: &[&str]) -> Result<DramProcess> {
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn("dram serve", &mut command)?;
        let stderr = proc.child.stderr.take().context("no stderr pipe")?;
        let (addr_tx, addr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("listening on http://").nth(1) {
                    let _ = addr_tx.send(Ok(url.trim().to_string()));
                }
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            let _ = addr_tx.send(Err(tail.join("\n")));
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(tail)) => bail!("dram serve exited before listening:\n{tail}"),
            Err(_) => bail!("dram serve did not say where it listens within 60 s"),
        };
        let pid = if wrapper.is_empty() {
            proc.pid()
        } else {
            child_of(proc.pid()).context("cannot find the dram process under its wrapper")?
        };
        Ok(DramProcess {
            proc,
            pid,
            http: addr
                .parse()
                .with_context(|| format!("bad address {addr:?}"))?,
        })
    }

    /// SIGTERM to dram, then waits (at most 60 s) for it (and its wrapper) to exit.
    pub fn terminate(&mut self) -> Result<()> {
        // SAFETY: kill(2) on a pid we started; it cannot touch our memory.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        wait_for(
            Duration::from_secs(60),
            "dram to exit after SIGTERM",
            || self.proc.child.try_wait().ok().flatten(),
        )?;
        Ok(())
    }

    /// A line of `/proc/<pid>/status` (such as `VmRSS`), in kB.
    pub fn status_kb(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))
    }

    /// GET `path` as JSON (error on a non-2xx status).
    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        json_call(self.http, "GET", path, None)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        json_call(self.http, "POST", path, Some(&body.to_string()))
    }
}

impl Drop for DramProcess {
    fn drop(&mut self) {
        if self.pid != self.proc.pid() && self.proc.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as in `terminate`; the wrapper is killed by `Proc`'s drop.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// The (first) child process of `parent`, from `/proc/*/stat`, waiting up to 5 s.
fn child_of(parent: u32) -> Option<u32> {
    let find = || {
        std::fs::read_dir("/proc").ok()?.find_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the ")" closing the command name: state, then the parent pid.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
    };
    wait_for(Duration::from_secs(5), "a child process", find).ok()
}

/// One HTTP/1.0 request on a fresh connection (blocking, 30 s timeouts):
/// status and body. Blocking on purpose: it runs on the thread that owns a
/// network namespace.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let timeout = Duration::from_secs(30);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {path}: malformed response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

fn json_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<serde_json::Value> {
    let (status, text) = http(addr, method, path, body)?;
    if !(200..300).contains(&status) {
        bail!("{method} {path}: HTTP {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
}

/// Calls `check` every 20 ms until it returns `Some` (at most `limit`).
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// `bytes` as "12.3 MB" (10^6).
pub fn mb(bytes: f64) -> String {
    format!("{:.1}", bytes / 1e6)
}

/// The median of `runs` timed calls of `work`, in milliseconds (the caller
/// has already run it once to warm up).
pub async fn median_ms<F, Fut>(runs: usize, mut work: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        work().await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_configs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let page = "# HELP x\ndram_download_bytes_total{disk=\"0\"} 150\n\
                    dram_download_bytes_total{disk=\"1\"} 50\ndram_downloads_total 3\n";
        assert_eq!(metric_sum(page, "dram_download_bytes_total"), 200.0);
        let config = node_config(
            Path::new("/d"),
            "file:///s",
            7001,
            &["127.0.0.1:7000".into()],
            100,
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.toml"), config).unwrap();
        let parsed = dram::Config::from_file(&dir.path().join("c.toml")).unwrap();
        assert_eq!(parsed.cluster.seeds, ["127.0.0.1:7000"]);
        assert_eq!(parsed.cluster.gossip_interval_ms, 100);
        assert_eq!(parsed.node.data_dir, Path::new("/d"));
        assert_eq!(parsed.disks[0].max_bytes, Some(DISK_MAX_BYTES));
    }
}
