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
//! - Locality (`routing.rs`): a shard table's scan for shard S runs on the
//!   holder chosen for S (local first, then least busy; version pinned).
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
pub(crate) mod routing;
pub(crate) mod store;
pub(crate) mod tables;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
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

use super::{NodeMeta, QueryError, QueryMeta, QueryRequest, QueryResponse};
use crate::node::{Node, NodeError, WeakNode};
use crate::query::AnalysisError;
use crate::query::sql::analysis::SqlParams;
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
    /// Where this member's worker listens, once it does.
    bound: OnceLock<SocketAddr>,
    /// This member's worker, as the others reach it (once it listens).
    url: OnceLock<Url>,
    closing: CancellationToken,
}

impl SqlEngine {
    pub(crate) fn new(
        config: &crate::config::Config,
        node: WeakNode,
    ) -> Result<SqlEngine, NodeError> {
        let limit = usize::try_from(config.sql.memory_limit).unwrap_or(usize::MAX);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limit, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| NodeError::InvalidInput(format!("sql runtime: {e}")))?;
        store::register(&runtime, node);
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
            bound: OnceLock::new(),
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
        let _ = self.bound.set(local);
        Ok(local)
    }

    /// Where this member's worker listens, once it does.
    pub(crate) fn bound(&self) -> Option<SocketAddr> {
        self.bound.get().copied()
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

    /// The tables of a version, worked out once.
    async fn tables(
        &self,
        node: &Node,
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

/// An answer's rows, as DataFusion typed them.
type Rows = (SchemaRef, Vec<RecordBatch>);

/// What a query asks for: shards of a pinned version, by a deadline.
#[derive(Clone, Copy)]
struct Asked<'a> {
    database: &'a str,
    version: &'a str,
    shards: &'a [String],
    allow_partial: bool,
    deadline: tokio::time::Instant,
}

/// What a query reads where.
struct Reading {
    placement: Placement,
    /// Member → shards it reads.
    nodes: BTreeMap<String, usize>,
    /// Shards read (those with a holder).
    shards: Vec<String>,
    missing: Vec<String>,
    /// Other members' worker addresses (`host:port`) → their ids.
    members: HashMap<String, String>,
}

impl Reading {
    /// The member an error is about, when it says a worker could not be
    /// reached or its connection broke (not when the query itself failed).
    fn failed_member(&self, message: &str) -> Option<String> {
        const BROKEN: [&str; 7] = [
            "connect",
            "Unavailable",
            "transport error",
            "broken pipe",
            "connection reset",
            "stream closed",
            "h2 protocol error",
        ];
        if !BROKEN.iter().any(|b| message.contains(b)) {
            return None;
        }
        self.members
            .iter()
            .find(|(address, _)| message.contains(address.as_str()))
            .map(|(_, member)| member.clone())
    }
}

impl Node {
    /// Runs the built-in `sql` analysis: `None` when the request is not one
    /// the engine runs (another analysis, or no engine here).
    pub(crate) async fn run_sql(
        &self,
        target: &str,
        analysis_name: &str,
        request: &QueryRequest,
    ) -> Option<Result<QueryResponse, QueryError>> {
        // The built-in `sql` only: a node that serves no `sql`, or its own
        // analysis of that name, answers as for any other analysis.
        if analysis_name != SQL {
            return None;
        }
        let engine = self.builtin_sql_engine()?;
        let answer = self.run_sql_with(engine, target, request).await;
        Some(answer.and_then(|(rows, meta)| {
            let output = crate::query::sql::analysis::sql_output(&rows.0, &rows.1)
                .map_err(|e| QueryError::from_analysis(SQL, None, e))?;
            let result = serde_json::to_value(output).map_err(|e| QueryError::Failed {
                analysis: SQL.into(),
                shard: None,
                message: e.to_string(),
            })?;
            Ok(QueryResponse { result, meta })
        }))
    }

    /// Whether this member answers `sql` over `target` itself, with the
    /// built-in engine: it serves the built-in `sql` and knows the target.
    pub fn answers_sql(&self, target: &str) -> bool {
        self.builtin_sql_engine().is_some() && self.resolve(target).is_ok()
    }

    /// The engine, when this node serves the built-in `sql` (not its own
    /// analysis of that name).
    fn builtin_sql_engine(&self) -> Option<Arc<SqlEngine>> {
        let served = self.analyses().get(SQL)?.analysis_type()
            == std::any::TypeId::of::<crate::query::sql::analysis::Sql>();
        self.sql_engine().filter(|_| served).cloned()
    }

    /// Runs a `sql` query (`POST /v1/query/{database}/sql` with `Accept:
    /// application/vnd.apache.arrow.stream`): the rows as an Arrow IPC
    /// stream, exactly as DataFusion typed them, and the query's meta.
    pub async fn query_sql_arrow(
        &self,
        target: &str,
        request: QueryRequest,
    ) -> Result<(Vec<u8>, QueryMeta), QueryError> {
        self.query_sql_encoded(target, request, |(schema, batches)| {
            crate::query::sql::analysis::to_ipc(schema, batches)
        })
        .await
    }

    /// Runs a `sql` query: the whole JSON answer (`{"result": {"columns",
    /// "rows"}, "meta"}`, as [`Node::query`] gives it), its rows written
    /// straight from Arrow, and the query's meta.
    pub async fn query_sql_json(
        &self,
        target: &str,
        request: QueryRequest,
    ) -> Result<(Vec<u8>, QueryMeta), QueryError> {
        let (mut body, meta) = self
            .query_sql_encoded(target, request, |(schema, batches)| {
                let rows = crate::query::sql::analysis::json_rows(batches)?;
                let columns: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
                let mut body = Vec::with_capacity(rows.len() + 64);
                body.extend_from_slice(b"{\"result\":{\"columns\":");
                serde_json::to_writer(&mut body, &columns)
                    .map_err(|e| AnalysisError::failed(format!("json: {e}")))?;
                body.extend_from_slice(b",\"rows\":");
                body.extend_from_slice(if rows.is_empty() { b"[]" } else { &rows });
                body.extend_from_slice(b"},\"meta\":");
                Ok(body)
            })
            .await?;
        serde_json::to_writer(&mut body, &meta).map_err(|e| QueryError::Failed {
            analysis: SQL.into(),
            shard: None,
            message: e.to_string(),
        })?;
        body.push(b'}');
        Ok((body, meta))
    }

    /// Runs a `sql` query here and encodes its rows; counted in the query
    /// metrics.
    async fn query_sql_encoded(
        &self,
        target: &str,
        request: QueryRequest,
        encode: impl FnOnce(&Rows) -> Result<Vec<u8>, AnalysisError>,
    ) -> Result<(Vec<u8>, QueryMeta), QueryError> {
        let started = Instant::now();
        let answer = async {
            let engine = self
                .builtin_sql_engine()
                .ok_or_else(|| QueryError::UnknownAnalysis(SQL.into()))?;
            let (rows, meta) = self.run_sql_with(engine, target, &request).await?;
            let bytes = encode(&rows).map_err(|e| QueryError::from_analysis(SQL, None, e))?;
            Ok((bytes, meta))
        }
        .await;
        let outcome = answer.as_ref().map_or_else(QueryError::code, |_| "ok");
        self.metrics().query_done(SQL, outcome, started.elapsed());
        answer
    }

    async fn run_sql_with(
        &self,
        engine: Arc<SqlEngine>,
        target: &str,
        request: &QueryRequest,
    ) -> Result<(Rows, QueryMeta), QueryError> {
        let started = Instant::now();
        let analysis_error = |e: AnalysisError| QueryError::from_analysis(SQL, None, e);
        let timeout_ms = self.query_timeout(request.timeout_ms)?;
        let params: SqlParams = serde_json::from_value(
            request
                .params
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
        )
        .map_err(|e| QueryError::InvalidParams {
            analysis: SQL.into(),
            message: e.to_string(),
        })?;
        let mode = crate::query::sql::analysis::sql_mode(&params).map_err(analysis_error)?;
        let database = self.resolve(target)?;
        let version = self.ready_version(&database)?;
        let shard_ids = self.chosen_shards(&database, request.shards.clone())?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let work = async {
            match mode {
                crate::query::sql::analysis::SqlMode::Split(sql) => {
                    // A member that fails (it died, its worker is gone) has
                    // the query run again once without it.
                    let mut excluded: Vec<String> = Vec::new();
                    loop {
                        let asked = Asked {
                            database: &database,
                            version: &version,
                            shards: &shard_ids,
                            allow_partial: request.allow_partial,
                            deadline,
                        };
                        let reading = self.reading(&engine, &asked, &excluded).await?;
                        if excluded.is_empty() {
                            self.count_query(&database, &reading.shards);
                        }
                        let (node, engine) = (self.clone(), engine.clone());
                        let (db, ver, sql) = (database.clone(), version.clone(), sql.to_string());
                        let placement = reading.placement.clone();
                        let shards = reading.shards.clone();
                        let output = on_sql_runtime(async move {
                            let ctx = engine.session(Some(placement), explains_analyze(&sql));
                            let tables = engine.tables(&node, &ctx, &db, &ver).await?;
                            tables.register(&ctx, &shards, true)?;
                            run(&ctx, &sql, &tables).await
                        })
                        .await;
                        let output = match output {
                            Ok(output) => output,
                            Err(e) => match reading.failed_member(e.message()) {
                                Some(member) if excluded.is_empty() => {
                                    tracing::info!(
                                        member,
                                        error = %e.message(),
                                        "a member failed during a SQL query: running it again without it"
                                    );
                                    if let Some(membership) = self.membership() {
                                        membership.note_failed_holders([member.as_str()]);
                                    }
                                    excluded.push(member);
                                    continue;
                                }
                                _ => return Err(analysis_error(e)),
                            },
                        };
                        let nodes = reading
                            .nodes
                            .into_iter()
                            .map(|(node, shards)| NodeMeta {
                                node,
                                shards,
                                took_ms: started.elapsed().as_millis() as u64,
                                error: None,
                            })
                            .collect();
                        let retries = if excluded.is_empty() { 0 } else { 1 };
                        break Ok::<_, QueryError>((
                            output,
                            nodes,
                            reading.shards.len(),
                            retries,
                            reading.missing,
                        ));
                    }
                }
                crate::query::sql::analysis::SqlMode::Explicit { reduce, .. } => {
                    let analysis = self
                        .analyses()
                        .get(SQL)
                        .ok_or_else(|| QueryError::UnknownAnalysis(SQL.into()))?;
                    let parsed = analysis
                        .params(request.params.clone())
                        .map_err(analysis_error)?;
                    let query = super::root::RootQuery::new(
                        &database,
                        &version,
                        SQL,
                        analysis.clone(),
                        parsed,
                        request,
                        timeout_ms,
                    );
                    let gathered = self.gather(&query, shard_ids.clone()).await?;
                    let partials = gathered
                        .partials
                        .into_iter()
                        .map(|p| {
                            p.downcast::<crate::query::sql::analysis::SqlPartial>()
                                .map(|p| *p)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| QueryError::Failed {
                            analysis: SQL.into(),
                            shard: None,
                            message: "the analysis named sql is not the built-in one".into(),
                        })?;
                    let (node, engine) = (self.clone(), engine.clone());
                    let (db, ver, reduce) = (database.clone(), version.clone(), reduce.to_string());
                    let output = on_sql_runtime(async move {
                        let ctx = engine.session(None, false);
                        let tables = engine.tables(&node, &ctx, &db, &ver).await?;
                        tables.register(&ctx, &[], false)?;
                        crate::query::sql::analysis::reduce_explicit(&ctx, &reduce, partials).await
                    })
                    .await
                    .map_err(analysis_error)?;
                    let meta = gathered.meta;
                    Ok((
                        output,
                        meta.nodes,
                        meta.shards,
                        meta.retries,
                        meta.missing_shards,
                    ))
                }
            }
        };
        let (output, nodes, shards, retries, missing_shards) =
            match tokio::time::timeout_at(deadline, work).await {
                Ok(result) => result?,
                Err(_) => return Err(QueryError::Timeout { timeout_ms }),
            };
        Ok((
            output,
            QueryMeta {
                alias: (target != database).then(|| target.to_string()),
                database,
                version,
                shards,
                nodes,
                retries,
                hedges: 0,
                missing_shards,
                took_ms: started.elapsed().as_millis() as u64,
            },
        ))
    }

    /// Chooses the member that reads each shard: this one for the shards it
    /// serves, else a live holder with a worker, the least busy first.
    async fn reading(
        &self,
        engine: &SqlEngine,
        asked: &Asked<'_>,
        excluded: &[String],
    ) -> Result<Reading, QueryError> {
        let Asked {
            database,
            version,
            shards,
            allow_partial,
            deadline,
        } = *asked;
        let here = self.serving_shards(database)?;
        let own = engine.url.get().cloned();
        let mut chosen: HashMap<String, Url> = HashMap::new();
        let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
        let mut missing = Vec::new();
        let remote: Vec<String> = shards
            .iter()
            .filter(|s| !here.contains(*s))
            .cloned()
            .collect();
        let mut workers: Vec<Url> = own.iter().cloned().collect();
        let found = match self.membership() {
            Some(membership) => Some(
                super::root::holders_when_known(membership, database, version, &remote, deadline)
                    .await,
            ),
            None => None,
        };
        let mut members = HashMap::new();
        if let Some(found) = &found {
            for (member, worker) in &found.workers {
                if excluded.contains(member) {
                    continue;
                }
                if let Ok(url) = Url::parse(worker) {
                    members.insert(url.authority().to_string(), member.clone());
                    workers.push(url);
                }
            }
        }
        let mut assigned: HashMap<String, u64> = HashMap::new();
        for shard in shards {
            if here.contains(shard) {
                *nodes.entry(self.id().to_string()).or_default() += 1;
                if let Some(own) = &own {
                    chosen.insert(shard.clone(), own.clone());
                }
                continue;
            }
            let best = found.as_ref().and_then(|found| {
                found
                    .holders
                    .get(shard)?
                    .iter()
                    .filter(|member| !excluded.contains(member))
                    .filter_map(|member| {
                        let url = Url::parse(found.workers.get(member)?).ok()?;
                        let busy = found.load.get(member).copied().unwrap_or(0)
                            + assigned.get(member).copied().unwrap_or(0);
                        Some((busy, member.clone(), url))
                    })
                    .min_by_key(|(busy, _, _)| *busy)
            });
            match best {
                Some((_, member, url)) => {
                    *assigned.entry(member.clone()).or_default() += 1;
                    *nodes.entry(member).or_default() += 1;
                    chosen.insert(shard.clone(), url);
                }
                None => missing.push(shard.clone()),
            }
        }
        if !missing.is_empty() && !allow_partial {
            return Err(QueryError::Unavailable { shards: missing });
        }
        let read: Vec<String> = shards
            .iter()
            .filter(|s| !missing.contains(s))
            .cloned()
            .collect();
        Ok(Reading {
            placement: Placement::new(chosen, workers, own),
            nodes,
            shards: read,
            missing,
            members,
        })
    }

    /// This member's SQL engine, when the `sql` feature is on.
    pub(crate) fn sql_engine(&self) -> Option<&Arc<SqlEngine>> {
        self.sql_slot().get()
    }
}

/// Runs `work` on the SQL runtime; dropping the returned future (deadline,
/// caller gone, shutdown) drops the work, and with it every stage it runs
/// on this member and the streams from the others (which stop theirs).
async fn on_sql_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, AnalysisError>> + Send + 'static,
) -> Result<T, AnalysisError> {
    let handle = runtime()?.spawn(work);
    let abort = handle.abort_handle();
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _guard = AbortOnDrop(abort);
    match handle.await {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Err(AnalysisError::cancelled()),
        Err(_) => Err(AnalysisError::failed("the sql query panicked")),
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

/// Whether `sql` is an EXPLAIN ANALYZE.
fn explains_analyze(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(3)
        .map(str::to_ascii_uppercase)
        .collect();
    words.first().is_some_and(|w| w == "EXPLAIN") && words.iter().any(|w| w == "ANALYZE")
}

/// Plans and runs one read-only statement; a missing table's error lists
/// the tables there are.
async fn run(ctx: &SessionContext, sql: &str, tables: &Tables) -> Result<Rows, AnalysisError> {
    let started = Instant::now();
    let plan = match crate::query::sql::analysis::physical_plan(ctx, sql).await {
        Ok(plan) => plan,
        Err(e) if e.message().contains("not found") && e.message().contains("table") => {
            let names = tables.names();
            return Err(AnalysisError::invalid_params(format!(
                "{}; the tables of {} are: {}",
                e.message(),
                tables.database,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
        Err(e) => return Err(e),
    };
    let planned = started.elapsed();
    let schema: SchemaRef = plan.schema();
    let batches: Vec<RecordBatch> = datafusion::physical_plan::collect(plan, ctx.task_ctx())
        .await
        .map_err(|e| crate::query::sql::analysis::run_failed("query", e))?;
    tracing::debug!(
        plan_ms = planned.as_secs_f64() * 1e3,
        run_ms = (started.elapsed() - planned).as_secs_f64() * 1e3,
        "sql query"
    );
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options are set where the planner and the workers read them
    /// (once they were set on a config without datafusion-distributed's
    /// options, failed, and every query ran with lz4 and stage metrics).
    #[test]
    fn distributed_queries_carry_their_options() {
        let placement = Placement::new(HashMap::new(), Vec::new(), None);
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
