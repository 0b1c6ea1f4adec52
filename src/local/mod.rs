//! One dram node: its disks, its catalog, the databases it loads and serves, the
//! trash and the aliases. `Local::start` opens everything, resumes unfinished loads
//! and starts the background tasks (trash purge, lazy-cache eviction, counters
//! flush); `Local::shutdown` stops them all.
//!
//! The node is the async shell: decisions (which disk, what is garbage) are small
//! functions over plain data; downloads, catalog writes and deletions happen here.

mod aliases;
mod background;
mod databases;
mod durable;
mod error;
mod gc;
pub mod index;
mod inventory;
mod load;
mod loads;
mod placement;
mod registry;
mod retry;
mod scrub;
mod shard;
mod space;
mod stats;
mod usage;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::catalog::{Catalog, DATABASES, DatabaseRecord, META};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
pub use crate::observe::Load;
use crate::observe::{Events, LoadGuard, LoadTracker, Metrics};
use crate::storage::{Disk, StorageError};
use crate::sync::lock;

pub use aliases::AliasAction;
pub use databases::{AddDatabase, DatabaseInfo, PartInfo};
pub use error::NodeError;
pub use inventory::{HeldDatabase, HeldPart, HeldState, Inventory, InventoryDigest};
pub use placement::Placement;
pub use scrub::ScrubStatus;
pub use shard::{LazyFetched, ShardContext};
pub(crate) use shard::{WeakLocal, json_name};
pub use stats::{DatabaseStats, NodeStats, Stats};

/// Runs file system work on the blocking pool. The work does not panic; its
/// task fails only when the runtime shuts down.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| NodeError::ShuttingDown)?
}

/// A handle to a running node; cheap to clone.
#[derive(Clone)]
pub struct Local {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: Config,
    node_id: String,
    catalog: Arc<Catalog>,
    disks: Vec<Arc<Disk>>,
    /// Loads under way, failed ones waiting to be retried, download slots.
    loads: loads::Loads,
    /// The versions of the registry entries this node writes.
    versions: registry::Versions,
    /// Space reserved and blobs pinned by loads under way.
    claims: Arc<space::Claims>,
    /// The files of each database, and the gates of lazy fetches.
    files: shard::Files,
    /// Reads, lazy accesses and downloads not yet flushed (see `usage`).
    usage: usage::Usage,
    /// The slots bounding the analyses' `map` calls.
    map_slots: Arc<Semaphore>,
    /// Where this node reads the time (the system's clock, or a test's).
    time: Arc<dyn Clock>,
    started_ms: u64,
    /// Which shards this node should hold (see `placement`).
    placement: watch::Sender<Placement>,
    /// Map work under way and recent durations, for the `load` gossip key.
    load: LoadTracker,
    /// Wraps the store of every source this node opens (fault injection).
    store_layer: Option<crate::storage::StoreLayer>,
    /// Prometheus counters and histograms.
    pub(crate) metrics: Metrics,
    /// Events waiting to be written to the catalog.
    events: Events,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The background re-hash of every blob (see `scrub`).
    scrub: Arc<scrub::Scrubber>,
    /// Names resolved to databases, and ready versions, until the catalog's
    /// next write (a query's hot path).
    resolved: crate::catalog::Memo<String>,
    ready_versions: crate::catalog::Memo<String>,
    /// Per `<database>\0<part key>`: the disk of the copy this node serves
    /// and whether it is lazy (`None`: no global data).
    serving_copies: crate::catalog::Memo<Option<(String, bool)>>,
    /// Per database: the shards this node serves its own copy of.
    serving_shards: crate::catalog::Memo<std::collections::HashSet<String>>,
}

impl Inner {
    /// Records an exception (an event, and the failures counter of its disk).
    pub(crate) fn record_error(
        &self,
        disk: Option<&str>,
        database: Option<&str>,
        part: Option<&str>,
        error: &StorageError,
    ) {
        if let Some(disk) = disk {
            let class = crate::observe::events::ErrorClass::of(error);
            self.metrics.download_failed(disk, class.name());
        }
        self.events.record_error(disk, database, part, error);
    }
}

impl Local {
    /// Starts this member's own part, alone: it holds every shard of its
    /// databases.
    pub async fn start(config: Config) -> Result<Local, NodeError> {
        Local::start_with(config, false, None, Arc::new(SystemClock)).await
    }

    /// Opens the node's disks and catalog, resumes loads and starts background
    /// tasks. The configuration must be valid. A `clustered` node holds the
    /// shards placement gives it, once it has met its cluster; any other node
    /// holds every shard of its databases.
    pub(crate) async fn start_with(
        config: Config,
        clustered: bool,
        store_layer: Option<crate::storage::StoreLayer>,
        time: Arc<dyn Clock>,
    ) -> Result<Local, NodeError> {
        config
            .validate()
            .map_err(|e| NodeError::InvalidInput(e.to_string()))?;
        // Absolute from here on: SQL reads local files through an object
        // store that takes absolute paths only (`./dram-data` is the default).
        let mut config = config;
        let absolute = |path: &std::path::Path| {
            std::path::absolute(path).map_err(|e| {
                NodeError::InvalidInput(format!("cannot resolve {}: {e}", path.display()))
            })
        };
        config.node.data_dir = absolute(&config.node.data_dir)?;
        for disk in &mut config.disks {
            disk.path = absolute(&disk.path)?;
        }
        // The store too, so that sources under it (stored absolute) stay
        // under it.
        let store = crate::storage::SourceUrl::parse(&config.store.url)?;
        if matches!(&store, crate::storage::SourceUrl::File(path) if path.is_relative()) {
            config.store.url = store.absolute()?.to_url();
        }
        let data_dir = config.node.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(StorageError::io(&data_dir))?;
        let catalog = Arc::new(Catalog::open(&data_dir.join("catalog.redb"))?);
        let (disks, unsynced) = durable::open_disks(&config, &catalog)?;
        let node_id = node_id(&config, &catalog)?;
        let (shutdown_tx, _) = watch::channel(false);
        let metrics = Metrics::new(&node_id);
        let events = Events::new(&node_id, catalog.clone(), time.clone(), &config.index);
        let started_ms = time.now_ms();
        let inner = Arc::new(Inner {
            loads: loads::Loads::new(config.download.concurrency),
            versions: registry::Versions::new(&node_id),
            time,
            node_id,
            catalog,
            disks,
            claims: Arc::default(),
            files: shard::Files::default(),
            usage: usage::Usage::default(),
            map_slots: Arc::new(Semaphore::new(config.query.map_slots())),
            started_ms,
            placement: watch::Sender::new(if clustered {
                Placement::Waiting
            } else {
                Placement::Everything
            }),
            load: LoadTracker::default(),
            store_layer,
            events,
            metrics,
            shutdown_tx,
            tasks: Mutex::default(),
            scrub: Arc::default(),
            resolved: Default::default(),
            ready_versions: Default::default(),
            serving_copies: Default::default(),
            serving_shards: Default::default(),
            config,
        });
        let node = Local { inner };
        node.inner.observe_registry_clock()?;
        node.inner.define_existing_databases()?;
        node.inner.remove_stray_database_dirs()?;
        node.inner.index_blobs_if_missing()?;
        node.inner.recover_unsynced(unsynced)?;
        node.resume_loads()?;
        node.spawn_background();
        info!(node = %node.inner.node_id, disks = node.inner.disks.len(), "node started");
        let exposed = node.inner.config.exposed_listeners();
        let auth = &node.inner.config.auth;
        if !exposed.is_empty() && (auth.admin_token.is_none() || auth.cluster_secret.is_none()) {
            tracing::warn!(
                listeners = ?exposed,
                admin_token = auth.admin_token.is_some(),
                cluster_secret = auth.cluster_secret.is_some(),
                "auth.insecure: this node is reachable from other machines without an admin \
                 token and a cluster secret; anyone there may change it or join its cluster"
            );
        }
        Ok(node)
    }

    pub fn id(&self) -> &str {
        &self.inner.node_id
    }

    /// When this node started (ms since the epoch).
    /// Milliseconds since the epoch, from this node's clock.
    pub fn now_ms(&self) -> u64 {
        self.inner.time.now_ms()
    }

    /// The clock this node reads the time from.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.inner.time.clone()
    }

    pub fn started_ms(&self) -> u64 {
        self.inner.started_ms
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// This node's Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Capacity and use of each disk.
    pub fn disk_stats(&self) -> Vec<crate::storage::DiskStats> {
        self.inner.disks.iter().map(|d| d.stats()).collect()
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub(crate) fn map_slots(&self) -> Arc<Semaphore> {
        self.inner.map_slots.clone()
    }

    /// Records that a query mapped a shard here (an index read event).
    pub(crate) fn record_read(
        &self,
        database: &str,
        part: &str,
        disk: &str,
        files: u64,
        bytes: u64,
    ) {
        self.inner.metrics.read_bytes(disk, bytes);
        self.inner
            .events
            .record_read(database, part, disk, files, bytes);
    }

    /// This node's event log.
    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    pub(crate) fn count_query(&self, database: &str, shards: &[String]) {
        self.inner.count_query(database, shards);
    }

    /// Counts map work under way until the guard drops.
    pub(crate) fn track_load(&self) -> LoadGuard<'_> {
        self.inner.load.track()
    }

    /// Map work under way now and the p99 of recent map work.
    pub fn load(&self) -> Load {
        self.inner.load.load()
    }

    /// Stops background tasks and loads; flushes counters. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        self.inner.loads.cancel_all();
        let tasks: Vec<_> = lock(&self.inner.tasks).drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        self.inner.close_disks().await;
        if let Err(e) = self.inner.flush_counters() {
            warn!(error = %e, "flushing counters at shutdown failed");
        }
        if let Err(e) = self.inner.events.flush() {
            warn!(error = %e, "writing events at shutdown failed");
        }
    }

    /// Waits (at most `timeout`) until this is the last handle on the node, so that
    /// dropping it closes the catalog. Connections and tasks that just finished
    /// drop their handles a moment after they are done.
    pub async fn wait_released(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while Arc::strong_count(&self.inner) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Resolves a database name or an alias to the database name.
    pub fn resolve(&self, name: &str) -> Result<String, NodeError> {
        self.inner.resolve(name)
    }

    /// What keeps this node from working fully (`GET /v1/health` says
    /// `degraded` with these): its catalog closed by an I/O error (a full
    /// disk) until a write succeeds again.
    pub fn health_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(error) = self.inner.catalog.failure() {
            problems.push(format!("catalog: {error}"));
        }
        problems
    }

    /// Starts a scrub pass now (unless one is under way): `POST /v1/admin/scrub`.
    pub fn scrub_now(&self) -> ScrubStatus {
        self.inner.scrub_now()
    }
}

fn node_id(config: &Config, catalog: &Catalog) -> Result<String, NodeError> {
    let stored: Option<String> = catalog.get(META, "node_id")?;
    let id = if !config.node.id.is_empty() {
        config.node.id.clone()
    } else if let Some(stored) = stored.clone() {
        stored
    } else {
        format!("node-{:08x}", rand::random::<u32>())
    };
    if stored.as_deref() != Some(id.as_str()) {
        catalog.write(|w| w.put(META, "node_id", &id))?;
    }
    Ok(id)
}

impl Inner {
    /// Milliseconds since the epoch, from this node's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.time.now_ms()
    }

    fn disk(&self, id: &str) -> Result<&Arc<Disk>, NodeError> {
        self.disks
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| NodeError::Conflict(format!("disk {id} is not configured on this node")))
    }

    /// Removes `dbs/<name>` folders of databases the catalog does not know (left
    /// by a crash during a purge).
    fn remove_stray_database_dirs(&self) -> Result<(), NodeError> {
        let known: Vec<(String, DatabaseRecord)> = self.catalog.scan(DATABASES, "")?;
        for disk in &self.disks {
            let dbs = disk.root.join("dbs");
            let entries = std::fs::read_dir(&dbs).map_err(StorageError::io(&dbs))?;
            for entry in entries {
                let entry = entry.map_err(StorageError::io(&dbs))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !known.iter().any(|(key, _)| *key == name) {
                    warn!(database = %name, disk = %disk.id, "removing folder of unknown database");
                    disk.remove_database_dir(&name)?;
                }
            }
        }
        Ok(())
    }

    fn flush_counters(&self) -> Result<(), NodeError> {
        let pending = self.usage.take();
        if pending.is_empty() {
            return Ok(());
        }
        Ok(self.catalog.write(|w| pending.write(w))?)
    }
}
