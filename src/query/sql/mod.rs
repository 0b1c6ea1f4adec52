//! The SQL engine: the built-in `sql` analysis runs on datafusion-distributed
//! (DataFusion 55). The member that receives a query coordinates: it plans
//! the query once as DataFusion would in one process, and the distributed
//! planner cuts the plan into stages that stream Arrow between members
//! (shuffles, broadcasts). Every member runs a worker (`worker.rs`) for the
//! stages sent to it.
//!
//! - Tables (`tables.rs`): every member knows a version's tables from its
//!   manifest; files are read through the `dram://` object store
//!   (`store.rs`), from the local copy or from a holder.
//! - A query (`run.rs`): where each shard is read, the run on the SQL
//!   runtime within the deadline, once more without a member that failed;
//!   its rows whole, or as they come (`stream.rs`).
//! - Locality (`routing.rs`): a shard table's scan for shard S runs on the
//!   holder chosen for S (local first, then least busy; version pinned).
//! - Co-located tables (`colocate.rs`) and cancellable scans (`preempt.rs`).
//! - Read-only, within `sql.memory_limit` per member, cancelled with the
//!   query on every member (deadline, caller gone, shutdown): every leaf
//!   yields to the runtime between slices of work (`preempt.rs`), so an
//!   aborted stage stops within one slice.
//! - The explicit `map_sql` / `reduce_sql` pair runs `map_sql` on every shard
//!   through the fan-out and `reduce_sql` here over table `partials` and the
//!   global tables.

pub(crate) mod analysis;
pub(crate) mod colocate;
pub(crate) mod preempt;
pub(crate) mod remote;
pub(crate) mod routing;
mod run;
pub(crate) mod store;
pub(crate) mod stream;
pub(crate) mod tables;
mod udtf;
mod worker;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_distributed::{
    DistributedConfig, DistributedExt, SessionStateBuilderExt, Worker, WorkerQueryContext,
};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::local::{Local, NodeError, WeakLocal};
use crate::query::AnalysisError;
use routing::Placement;
use tables::Tables;

/// The name the engine answers under.
const SQL: &str = "sql";

/// Versions whose tables a member keeps worked out.
const KEPT_VERSIONS: usize = 64;

/// The stack of the threads that plan and run SQL: planning walks a query's
/// expression trees recursively (reserved, not used, until a deep query
/// needs it).
pub(crate) const STACK_BYTES: usize = 64 << 20;

/// The runtime SQL runs on, apart from the node's: DataFusion's scans and
/// repartitions keep its threads busy, and the node's runtime must keep
/// gossip's heartbeats on time (a member busy with SQL must not look dead).
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, AnalysisError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("dram-sql")
                .thread_stack_size(STACK_BYTES)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| AnalysisError::failed(format!("cannot start the sql runtime: {e}")))
}

/// One member's engine: its DataFusion runtime (memory pool, `dram://`
/// store, caches of file metadata and statistics), its worker, and the
/// connections to the other members' workers.
pub(crate) struct SqlEngine {
    runtime: Arc<RuntimeEnv>,
    worker: Worker,
    channels: worker::Channels,
    secret: Option<String>,
    /// The node's certificate and key (PEM), when it serves TLS: the worker
    /// serves it too.
    tls: Option<(Vec<u8>, Vec<u8>)>,
    /// How rows travel between members (`sql.compression`: none, lz4 or
    /// zstd, checked with the config; datafusion-distributed's own words).
    compression: String,
    /// `sql.broadcast_join_bytes`.
    broadcast_join_bytes: u64,
    tables: Mutex<Vec<Arc<Tables>>>,
    /// This member's worker, as the others reach it (once it listens).
    url: OnceLock<Url>,
    closing: CancellationToken,
}

impl SqlEngine {
    /// An engine over this member's files (`node`) and, through
    /// `membership`, the other members' (`None`: alone).
    pub(crate) fn new(
        config: &crate::config::Config,
        node: WeakLocal,
        membership: Option<std::sync::Weak<crate::cluster::Membership>>,
    ) -> Result<SqlEngine, NodeError> {
        let limit = usize::try_from(config.sql.memory_limit).unwrap_or(usize::MAX);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limit, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| NodeError::InvalidInput(format!("sql runtime: {e}")))?;
        store::register(&runtime, node, membership);
        let secret = config.auth.peer_secret().map(str::to_string);
        let read = |field: &str, path: &Option<std::path::PathBuf>| {
            path.as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|e| {
                        NodeError::InvalidInput(format!(
                            "config field `{field}` ({}): {e}",
                            p.display()
                        ))
                    })
                })
                .transpose()
        };
        let http = &config.http;
        let tls = if http.tls() {
            match (
                read("http.tls_cert", &http.tls_cert)?,
                read("http.tls_key", &http.tls_key)?,
            ) {
                (Some(cert), Some(key)) => Some((cert, key)),
                _ => None,
            }
        } else {
            None
        };
        let ca = match (&tls, read("http.tls_ca", &http.tls_ca)?) {
            (Some(_), Some(ca)) => Some(ca),
            (Some((cert, _)), None) => Some(cert.clone()),
            (None, _) => None,
        };
        let channels =
            worker::Channels::new(secret.as_deref(), ca).map_err(NodeError::InvalidInput)?;
        let worker_channels = channels.clone();
        let worker = Worker::from_session_builder(move |ctx: WorkerQueryContext| {
            let channels = worker_channels.clone();
            async move {
                Ok(ctx
                    .builder
                    .with_distributed_channel_resolver(channels)
                    .with_distributed_worker_plan_rewrite_handler(preempt::rewrite_worker_plan)
                    .build())
            }
        })
        .with_runtime_env(runtime.clone());
        Ok(SqlEngine {
            runtime,
            worker,
            channels,
            secret,
            tls,
            compression: config.sql.compression.clone(),
            broadcast_join_bytes: config.sql.broadcast_join_bytes,
            tables: Mutex::default(),
            url: OnceLock::new(),
            closing: CancellationToken::new(),
        })
    }

    /// Starts this member's worker on `sql.worker_listen` (or beside the
    /// HTTP listener): returns the address it listens on.
    pub(crate) async fn listen(
        &self,
        configured: &str,
        http: SocketAddr,
    ) -> Result<SocketAddr, NodeError> {
        let (listener, local) = worker::bind(configured, http)
            .await
            .map_err(NodeError::InvalidInput)?;
        let runtime = runtime().map_err(|e| NodeError::InvalidInput(e.message().to_string()))?;
        // Tasks sent to this worker run on the SQL runtime.
        let listener = listener
            .into_std()
            .map_err(|e| NodeError::InvalidInput(format!("sql.worker_listen: {e}")))?;
        let (worker, secret, closing) = (
            self.worker.clone(),
            self.secret.clone(),
            self.closing.clone(),
        );
        let tls = self
            .tls
            .clone()
            .map(|(cert, key)| worker::WorkerTls { cert, key });
        runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => worker::serve(worker, listener, secret, tls, closing).await,
                Err(e) => tracing::warn!(error = %e, "the SQL worker cannot listen"),
            }
        });
        Ok(local)
    }

    /// Records the address other members reach this member's worker at.
    pub(crate) fn advertise(&self, address: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{address}");
        if let Ok(parsed) = Url::parse(&url) {
            let _ = self.url.set(parsed);
        }
        address.to_string()
    }

    pub(crate) fn shutdown(&self) {
        self.closing.cancel();
    }

    /// A coordinating context: distributed over `placement` when there is
    /// one (members to run on), else this process alone.
    /// `analyze`: the query is an EXPLAIN ANALYZE, whose stages report their
    /// metrics back (other queries skip that work).
    fn session(&self, placement: Option<Placement>, analyze: bool) -> SessionContext {
        let distributed = match (placement, self.url.get()) {
            (Some(placement), Some(url)) if placement.workers.len() > 1 => {
                Some((placement, url.clone()))
            }
            _ => None,
        };
        let config = session_config(
            distributed.as_ref().map(|(placement, _)| placement),
            &self.compression,
            self.broadcast_join_bytes,
            analyze,
        );
        let mut rules = PhysicalOptimizer::new().rules;
        rules.push(Arc::new(colocate::CoLocatedJoins));
        let builder = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.runtime.clone())
            .with_default_features()
            .with_physical_optimizer_rules(rules);
        let state = match distributed {
            Some((placement, url)) => builder
                .with_distributed_worker_resolver(placement)
                .with_distributed_channel_resolver(self.channels.clone())
                .with_distributed_local_worker_context(self.worker.to_local_worker_context(url))
                .with_distributed_desired_task_count_handler(routing::desired_task_count)
                .with_distributed_scale_up_leaf_node_handler(routing::scale_up_leaf)
                .with_distributed_route_tasks_handler(routing::route_tasks)
                .with_distributed_planner()
                .build(),
            None => builder.build(),
        };
        SessionContext::new_with_state(state)
    }

    /// A context on this member alone whose catalog is named `name` (what
    /// SQL clients show as the current database).
    fn catalog_context(&self, name: &str) -> SessionContext {
        let config = session_config(None, &self.compression, self.broadcast_join_bytes, false)
            .with_default_catalog_and_schema(name, "public");
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.runtime.clone())
            .with_default_features()
            .build();
        SessionContext::new_with_state(state)
    }

    /// The tables of a version, worked out once.
    async fn tables(
        &self,
        node: &Local,
        ctx: &SessionContext,
        database: &str,
        version: &str,
    ) -> Result<Arc<Tables>, AnalysisError> {
        let known = crate::sync::lock(&self.tables)
            .iter()
            .find(|t| t.database == database && t.version == version)
            .cloned();
        if let Some(tables) = known {
            return Ok(tables);
        }
        let tables = Arc::new(Tables::load(node, ctx, database, version).await?);
        let mut kept = crate::sync::lock(&self.tables);
        if kept.len() >= KEPT_VERSIONS {
            kept.remove(0);
        }
        kept.push(tables.clone());
        Ok(tables)
    }
}

/// A query's DataFusion options; distributed over `placement`, with
/// datafusion-distributed's options, which travel to every worker with its
/// stages: how rows go between members (`sql.compression`) and whether
/// stages report their metrics back (only for EXPLAIN ANALYZE).
fn session_config(
    placement: Option<&Placement>,
    compression: &str,
    broadcast_join_bytes: u64,
    analyze: bool,
) -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(true);
    let options = config.options_mut();
    options.execution.listing_table_ignore_subdirectory = false;
    options.execution.collect_statistics = true;
    let Some(placement) = placement else {
        return config;
    };
    // Across members, sending a join's small side to every task costs less
    // than moving both sides over the network (DataFusion's one-process
    // threshold is for threads sharing memory). The row count decides only
    // where the byte size is unknown: about 32 bytes a row.
    if broadcast_join_bytes > 0 {
        let optimizer = &mut config.options_mut().optimizer;
        optimizer.hash_join_single_partition_threshold =
            usize::try_from(broadcast_join_bytes).unwrap_or(usize::MAX);
        optimizer.hash_join_single_partition_threshold_rows =
            usize::try_from(broadcast_join_bytes / 32).unwrap_or(usize::MAX);
    }
    let mut config = config.with_extension(Arc::new(placement.clone()));
    let mut options = DistributedConfig::default();
    options.compression = compression.to_string();
    options.collect_metrics = analyze;
    config.set_distributed_option_extension(options);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options are set where the planner and the workers read them
    /// (once they were set on a config without datafusion-distributed's
    /// options, failed, and every query ran with lz4 and stage metrics).
    #[test]
    fn distributed_queries_carry_their_options() {
        let placement = Placement::new(std::collections::HashMap::new(), Vec::new(), None);
        for (compression, analyze) in [("none", false), ("lz4", true), ("zstd", false)] {
            let config = session_config(Some(&placement), compression, 64 << 20, analyze);
            let state = SessionStateBuilder::new()
                .with_config(config)
                .with_distributed_planner()
                .build();
            let options = DistributedConfig::from_session_config(state.config()).unwrap();
            assert_eq!(options.compression, compression);
            assert_eq!(options.collect_metrics, analyze);
            let optimizer = &state.config().options().optimizer;
            assert_eq!(optimizer.hash_join_single_partition_threshold, 64 << 20);
            assert_eq!(optimizer.hash_join_single_partition_threshold_rows, 2 << 20);
        }
        // In one process, DataFusion's own options.
        let local = session_config(None, "none", 64 << 20, false);
        assert!(DistributedConfig::from_session_config(&local).is_err());
        let defaults = SessionConfig::new();
        assert_eq!(
            local
                .options()
                .optimizer
                .hash_join_single_partition_threshold,
            defaults
                .options()
                .optimizer
                .hash_join_single_partition_threshold
        );
    }
}
