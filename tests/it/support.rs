//! Test helpers: real nodes on 127.0.0.1 (port 0), databases published through the
//! library, an s3s-fs server on a free port, and bounded waits.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dram::client::Client;
use dram::config::StoreConfig;
use dram::storage::{Source, SourceUrl};
use dram::{Config, Node, NodeBuilder, Server};
use serde_json::Value;

/// A node config in `dir`: its own data folder, a local store, any free port.
pub fn config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.node.data_dir = dir.join("data");
    config.node.http_listen = "127.0.0.1:0".into();
    config.pg.listen = "127.0.0.1:0".into();
    config.store.url = format!("file://{}", dir.join("store").display());
    config.cluster.gossip_listen = format!("127.0.0.1:{}", free_udp_port());
    // The machine's disk is shared and may be past 90% used by others: each
    // node gets 4 GiB of its own (a disk past its watermark gets nothing new).
    config.disks = vec![dram::config::DiskConfig {
        path: config.node.data_dir.clone(),
        high_watermark: 0.9,
        max_bytes: Some(4 << 30),
    }];
    config
}

/// A TCP port free right now on 127.0.0.1 (for a node process whose
/// address the test must know before it starts).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free right now on 127.0.0.1 (gossip needs a fixed port).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn start(config: Config) -> (Server, Client) {
    serve(Node::builder(config)).await
}

/// Serves a node built by the caller (analyses, extra routes).
pub async fn serve(builder: NodeBuilder) -> (Server, Client) {
    let server = builder.serve().await.expect("node starts");
    let client = Client::new(&server.url());
    (server, client)
}

/// [`publish`] for files held as owned paths and bytes.
pub async fn publish_owned(
    dir: &Path,
    store: &StoreConfig,
    source: &str,
    files: &[(String, Vec<u8>)],
    shard_keys: &[(&str, &str)],
) {
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    publish_co_located(dir, store, source, &files, shard_keys).await;
}

/// Writes `files` into a fresh folder and publishes it at `source`: a URL, or a
/// name under `store.url`, as `dram publish` takes it.
pub async fn publish(dir: &Path, store: &StoreConfig, source: &str, files: &[(&str, &[u8])]) {
    publish_co_located(dir, store, source, files, &[]).await;
}

/// [`publish`], declaring co-located shard tables (`dram publish
/// --shard-key TABLE=COLUMN`).
pub async fn publish_co_located(
    dir: &Path,
    store: &StoreConfig,
    source: &str,
    files: &[(&str, &[u8])],
    shard_keys: &[(&str, &str)],
) {
    let url = SourceUrl::resolve(&store.url, source).unwrap();
    let folder = dir.join(format!("src-{}", url.to_url().replace(['/', ':'], "_")));
    for (path, bytes) in files {
        let target = folder.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, bytes).unwrap();
    }
    let plan = dram::publish::plan(&folder)
        .expect("valid layout")
        .with_shard_keys(
            shard_keys
                .iter()
                .map(|(table, column)| (table.to_string(), column.to_string())),
        )
        .expect("shard tables");
    let source = Source::open(&url, store, true).unwrap();
    dram::publish::publish(&plan, &source, 8, &|_| {})
        .await
        .expect("publish");
}

/// Polls `GET /v1/databases/{name}` until its state is not `loading` (at most 60 s).
pub async fn wait_loaded(client: &Client, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = client.get(&format!("/v1/databases/{name}")).await.unwrap();
        if info["state"] != "loading" {
            return info;
        }
        assert!(Instant::now() < deadline, "{name} still loading: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 20 ms until it returns true (at most `secs` seconds).
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Expects an API error with this HTTP status and code.
pub fn expect_error(
    result: Result<Value, dram::client::ClientError>,
    status: u16,
    code: &str,
) -> String {
    match result {
        Err(dram::client::ClientError::Api {
            status: s,
            code: c,
            message,
        }) => {
            assert_eq!((s, c.as_str()), (status, code), "{message}");
            message
        }
        other => panic!("expected HTTP {status} {code}, got {other:?}"),
    }
}

/// Number of blob files under a data folder.
pub fn blob_count(data_dir: &Path) -> usize {
    walkdir::WalkDir::new(data_dir.join("blobs"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An s3s-fs server on 127.0.0.1, killed on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

/// The credentials README's S3 example gives s3s-fs.
pub const S3_KEY: &str = "dram-key";
pub const S3_SECRET: &str = "dram-secret";

impl S3Server {
    /// Starts s3s-fs with a bucket `bucket`; `None` (with a loud message) if the
    /// binary is missing outside CI. In CI a missing binary fails the test.
    pub async fn start(dir: &Path, bucket: &str) -> Option<S3Server> {
        let binary = find_s3s_fs();
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("CI").is_none(),
                "s3s-fs is missing in CI: .ci/run must install it"
            );
            eprintln!(
                "\n*** SKIPPING S3 TEST: s3s-fs not found; install it with \
                 `cargo install s3s-fs@0.14.1 --locked --features binary` ***\n"
            );
            return None;
        };
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn s3s-fs");
            let mut server = S3Server {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
            };
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(server);
                }
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("s3s-fs did not start");
    }

    /// README's S3 example's `[store]` (the TOML it writes to `s3.toml`), on
    /// this server's endpoint instead of port 9000.
    pub fn readme_store_config(&self) -> StoreConfig {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let opening = "cat > s3.toml <<'EOF'\n";
        let start = readme
            .find(opening)
            .expect("README's S3 example writes s3.toml")
            + opening.len();
        let toml = &readme[start..];
        let toml = &toml[..toml.find("\nEOF\n").expect("the heredoc ends")];
        let toml = toml.replace("http://127.0.0.1:9000", &self.endpoint);
        let config: dram::Config = toml::from_str(&toml).unwrap();
        config.store
    }

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
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_s3s_fs() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The `dram` binary built for these tests.
pub fn dram_binary() -> &'static str {
    env!("CARGO_BIN_EXE_dram")
}

/// Runs a `dram` client command against the node at `url` (without blocking the
/// runtime the node runs on); returns what it printed, or fails the test.
pub async fn dram_cli(args: &[&str], url: &str) -> String {
    let output = tokio::process::Command::new(dram_binary())
        .args(args)
        .args(["--node", url])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "dram {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// `POST /v1/databases` with `body`, then waits until the load has ended.
pub async fn load(client: &Client, body: Value) -> Value {
    let name = body["name"]
        .as_str()
        .expect("body names the database")
        .to_string();
    client
        .post("/v1/databases", &body)
        .await
        .expect("load accepted");
    wait_loaded(client, &name).await
}

/// Reads a file of a served shard through the library API.
pub async fn read(server: &Server, database: &str, shard: &str, path: &str) -> Vec<u8> {
    let context = server
        .node
        .local()
        .shard(database, shard)
        .expect("shard is served");
    context.read(path).await.expect("file reads").to_vec()
}

/// Each shard's copies as `client`'s node sees them: (member, state), from
/// `GET /v1/cluster/shards` (empty while the node does not know the database).
pub async fn copies(client: &Client, database: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let Ok(holders) = client
        .get(&format!("/v1/cluster/shards?database={database}"))
        .await
    else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (shard, list) in holders["shards"].as_object().into_iter().flatten() {
        let list = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    h["node"].as_str().unwrap_or_default().to_string(),
                    h["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        out.insert(shard.clone(), list);
    }
    out
}

/// The members with a ready copy, among `copies` of one shard.
pub fn ready(list: &[(String, String)]) -> Vec<&str> {
    list.iter()
        .filter(|(_, state)| state == "ready")
        .map(|(node, _)| node.as_str())
        .collect()
}

/// The Prometheus text of the node at `url` (`GET /metrics`).
pub async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
