//! A cluster of real dram nodes in this process, on 127.0.0.1: HTTP on port 0,
//! gossip on free UDP ports through the faulty transport, every database source
//! behind the faulty object store (see `faults`).
//!
//! Each node runs on its own tokio runtime, so a node can *crash*: its runtime
//! is dropped, every task stops at its next await, nothing is shut down
//! gracefully; what survives is what the node had committed to its catalog and
//! disks — as after `kill -9`, at await granularity. `stop` is the graceful
//! shutdown an operator's restart does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use dram::client::Client;
use dram::storage::{Source, SourceUrl};
use dram::{Config, Server};

use crate::faults::{Network, StoreFaults};

/// The cluster secret every simulated node shares.
pub const SECRET: &str = "simulation-secret";

/// How many members a `GET /v1/cluster` answer lists as live.
pub fn live_count(status: &serde_json::Value) -> usize {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["live"] == true)
        .count()
}

/// Settings every node of a simulated cluster gets.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub gossip_interval_ms: u64,
    pub node_left_delay_secs: u64,
    pub primary_settle_secs: u64,
    pub download_concurrency: usize,
    pub retry_max_secs: u64,
    pub gc_interval_secs: u64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            gossip_interval_ms: 100,
            node_left_delay_secs: 3,
            primary_settle_secs: 1,
            download_concurrency: 8,
            retry_max_secs: 2,
            gc_interval_secs: 2,
        }
    }
}

/// One member: its fixed identity and, while it runs, its runtime and server.
pub struct SimNode {
    pub id: String,
    pub gossip: SocketAddr,
    pub data_dir: PathBuf,
    /// The disk's `max_bytes` (set by `fill_disk`).
    pub max_bytes: Option<u64>,
    running: Option<Running>,
}

struct Running {
    runtime: tokio::runtime::Runtime,
    server: Server,
    client: Client,
    /// Set while the node hangs (see `SimCluster::hang`).
    frozen: Option<Arc<AtomicBool>>,
}

/// Worker threads of a node's runtime.
const NODE_WORKERS: usize = 2;

impl SimNode {
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The client of a running node (not of a hung one).
    pub fn client(&self) -> Option<&Client> {
        self.running
            .as_ref()
            .filter(|r| r.frozen.is_none())
            .map(|r| &r.client)
    }
}

/// Real nodes sharing one object store folder, one faulty network and one
/// faulty object store.
pub struct SimCluster {
    pub dir: PathBuf,
    pub store_url: String,
    pub network: Arc<Network>,
    pub store_faults: Arc<StoreFaults>,
    pub settings: NodeSettings,
    pub nodes: Vec<SimNode>,
}

impl SimCluster {
    pub fn new(dir: &Path, seed: u64, settings: NodeSettings) -> Result<SimCluster> {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).context("cannot create the store folder")?;
        Ok(SimCluster {
            dir: dir.to_path_buf(),
            store_url: format!("file://{}", store.display()),
            network: Network::new(seed),
            store_faults: StoreFaults::new(seed ^ 0x5eed),
            settings,
            nodes: Vec::new(),
        })
    }

    /// Adds a node (n1, n2, …) and starts it.
    pub async fn add_node(&mut self) -> Result<usize> {
        let index = self.nodes.len();
        let id = format!("n{}", index + 1);
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .context("no free UDP port")?
            .port();
        self.nodes.push(SimNode {
            data_dir: self.dir.join(&id),
            id,
            gossip: SocketAddr::from(([127, 0, 0, 1], port)),
            max_bytes: None,
            running: None,
        });
        self.start(index).await?;
        Ok(index)
    }

    fn config(&self, index: usize) -> Config {
        let node = &self.nodes[index];
        let mut config = Config::default();
        config.node.id = node.id.clone();
        config.node.data_dir = node.data_dir.clone();
        config.node.http_listen = "127.0.0.1:0".into();
        config.pg.listen = "127.0.0.1:0".into();
        config.store.url = self.store_url.clone();
        config.cluster.gossip_listen = node.gossip.to_string();
        // Every other member is a seed: a restarted first member finds the
        // cluster again. The very first member starts alone.
        config.cluster.seeds = self
            .nodes
            .iter()
            .filter(|other| other.id != node.id)
            .map(|other| other.gossip.to_string())
            .collect();
        config.cluster.gossip_interval_ms = self.settings.gossip_interval_ms;
        config.cluster.disagreement_secs = 1;
        config.cluster.node_left_delay_secs = self.settings.node_left_delay_secs;
        config.cluster.primary_settle_secs = self.settings.primary_settle_secs;
        config.cluster.max_concurrent_moves = 4;
        config.download.concurrency = self.settings.download_concurrency;
        config.download.retry_max_secs = self.settings.retry_max_secs;
        config.cluster.gc_interval_secs = self.settings.gc_interval_secs;
        config.cluster.gc_min_age_secs = 0;
        // 4 GiB of its own unless the script fills it (the machine's disk is
        // shared: others may have filled it past the watermark).
        config.disks = vec![dram::config::DiskConfig {
            path: node.data_dir.clone(),
            high_watermark: 0.9,
            max_bytes: Some(node.max_bytes.unwrap_or(4 << 30)),
        }];
        config.trash.lifetime_secs = 3600;
        config.auth.cluster_secret = Some(SECRET.into());
        config
    }

    /// Starts a stopped or crashed node on its own runtime, with its data.
    pub async fn start(&mut self, index: usize) -> Result<()> {
        if self.nodes[index].running.is_some() {
            return Ok(());
        }
        let config = self.config(index);
        let make_builder = || {
            let faults = self.store_faults.clone();
            dram::builtin::register(dram::Node::builder(config.clone()))
                .gossip_transport(self.network.transport())
                .object_store_layer(move |store| faults.wrap(store))
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(NODE_WORKERS)
            .thread_name(self.nodes[index].id.clone())
            .enable_all()
            .build()
            .context("cannot build a node runtime")?;
        // A node restarted right after a crash may find its catalog still held
        // for a moment by threads of the old runtime finishing their work.
        let mut tries = 0;
        let server = loop {
            let builder = make_builder();
            match runtime.spawn(async move { builder.serve().await }).await {
                Ok(Ok(server)) => break server,
                Ok(Err(e)) if tries < 20 => {
                    tries += 1;
                    tracing::debug!(error = %e, "node start failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(e)) => return Err(anyhow!("{} does not start: {e}", self.nodes[index].id)),
                Err(e) => return Err(anyhow!("{} start task failed: {e}", self.nodes[index].id)),
            }
        };
        let client = Client::new(&server.url());
        self.nodes[index].running = Some(Running {
            runtime,
            server,
            client,
            frozen: None,
        });
        Ok(())
    }

    /// Hangs a node as SIGSTOP would a process: every worker of its runtime
    /// is held, so neither its gossip nor its HTTP server (nor anything else
    /// of it) moves; connections to it stay open and unanswered.
    pub fn hang(&mut self, index: usize) {
        let Some(running) = self.nodes[index].running.as_mut() else {
            return;
        };
        if running.frozen.is_some() {
            return;
        }
        let frozen = Arc::new(AtomicBool::new(true));
        // More holders than workers: whichever workers pick them up, all are held.
        for _ in 0..NODE_WORKERS * 4 {
            let frozen = frozen.clone();
            running.runtime.spawn(async move {
                while frozen.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        running.frozen = Some(frozen);
    }

    /// Lets a hung node go on.
    pub fn resume(&mut self, index: usize) {
        if let Some(frozen) = self.nodes[index]
            .running
            .as_mut()
            .and_then(|r| r.frozen.take())
        {
            frozen.store(false, Ordering::Relaxed);
        }
    }

    /// Crashes a node: its runtime is dropped with every task in it.
    pub async fn crash(&mut self, index: usize) {
        self.resume(index);
        if let Some(running) = self.nodes[index].running.take() {
            let Running {
                runtime, server, ..
            } = running;
            drop(server);
            // Dropping a runtime blocks: not on this runtime's threads.
            let _ = tokio::task::spawn_blocking(move || {
                runtime.shutdown_timeout(Duration::from_secs(2))
            })
            .await;
        }
    }

    /// Stops a node gracefully (as `systemctl stop` would).
    pub async fn stop(&mut self, index: usize) {
        self.resume(index);
        if let Some(running) = self.nodes[index].running.take() {
            let Running {
                runtime, server, ..
            } = running;
            let _ = runtime.spawn(server.shutdown()).await;
            let _ = tokio::task::spawn_blocking(move || {
                runtime.shutdown_timeout(Duration::from_secs(2))
            })
            .await;
        }
    }

    /// Fills a member's disk: restarts it with room for exactly the blobs it
    /// holds (past its high watermark), as if the disk had filled up.
    pub async fn fill_disk(&mut self, index: usize) -> Result<()> {
        self.stop(index).await;
        let used = blob_bytes(&self.nodes[index].data_dir.join("blobs"));
        self.nodes[index].max_bytes = Some(used.max(1));
        self.start(index).await
    }

    /// Stops every node.
    pub async fn shutdown(&mut self) {
        for index in 0..self.nodes.len() {
            self.stop(index).await;
        }
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .collect()
    }

    /// The client of a running node.
    pub fn client(&self, index: usize) -> Result<&Client> {
        self.nodes
            .get(index)
            .and_then(SimNode::client)
            .ok_or_else(|| anyhow!("node {} is not running", index + 1))
    }

    /// Publishes a folder of `files` (relative path → bytes) as database `name`
    /// in the shared store, without faults.
    pub async fn publish(&self, name: &str, files: &[(String, Vec<u8>)]) -> Result<()> {
        let folder = self.dir.join("published").join(name);
        for (path, bytes) in files {
            let target = folder.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, bytes)?;
        }
        let plan = dram::publish::plan(&folder)?;
        let store = dram::config::StoreConfig {
            url: self.store_url.clone(),
            ..Default::default()
        };
        let url = SourceUrl::resolve(&store.url, name)?;
        let source = Source::open(&url, &store, true)?;
        dram::publish::publish(&plan, &source, 8, &|_| {}).await?;
        Ok(())
    }
}

/// Bytes of the files under `dir` (two levels: `blobs/aa/<sha256>`).
fn blob_bytes(dir: &Path) -> u64 {
    let Ok(fans) = std::fs::read_dir(dir) else {
        return 0;
    };
    fans.flatten()
        .filter_map(|fan| std::fs::read_dir(fan.path()).ok())
        .flat_map(|blobs| blobs.flatten())
        .filter_map(|blob| blob.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}
