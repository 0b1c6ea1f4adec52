//! `sql`: SQL over the Parquet and CSV tables of each shard, with DataFusion.
//!
//! In a shard, every folder `<table>/` of `*.parquet` or `*.csv` files is table
//! `<table>`; the database's `global/<table>/` folders are tables every shard
//! can join. The query is planned as DataFusion would plan it in one process,
//! then cut where DataFusion itself splits the work (`plan.rs`): each shard
//! runs the plan up to the *partial* aggregate (states such as sum and count
//! for `avg`, the set of values for `count(DISTINCT …)`) or up to the merge
//! of its sorted or limited rows; the partials travel as Arrow IPC; the root
//! runs the rest (final aggregate, HAVING, ORDER BY, LIMIT) over all of them
//! — exact, as in one process. What cannot be cut exactly is refused with
//! the construct named, or runs as an explicit `map_sql` / `reduce_sql` pair.
//!
//! Only queries run (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE): anything that
//! would define, write or set something is refused as `read_only`. Each part
//! of a query holds at most `sql.memory_limit` bytes and nothing spills to
//! disk; a cancelled query (deadline, caller gone, shutdown) stops at once.

mod plan;
mod tables;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::query::{Analysis, AnalysisError, Shard};
use plan::Cut;
use tables::{conform, failed, from_ipc, to_ipc, unify};

/// SQL over the shards' tables: read-only, each part of a query within
/// `memory_limit` bytes, stopped when the query is cancelled.
#[derive(Debug, Clone)]
pub struct Sql {
    memory_limit: u64,
}

impl Sql {
    /// `sql` with the node's `[sql]` settings.
    pub fn new(config: &crate::config::SqlConfig) -> Sql {
        Sql {
            memory_limit: config.memory_limit,
        }
    }

    fn context(&self, statistics: bool) -> Result<SessionContext, AnalysisError> {
        plan::context(statistics, self.memory_limit)
    }
}

impl Default for Sql {
    fn default() -> Sql {
        Sql::new(&crate::config::SqlConfig::default())
    }
}

/// Params of `sql`: either `sql`, split automatically, or `map_sql` run on
/// every shard and `reduce_sql` run at the root over table `partials` (all
/// the shards' rows of `map_sql`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlParams {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub map_sql: Option<String>,
    #[serde(default)]
    pub reduce_sql: Option<String>,
}

enum Mode<'a> {
    Split(&'a str),
    Explicit { map: &'a str, reduce: &'a str },
}

impl SqlParams {
    /// How the query runs; every statement given must be read-only.
    fn mode(&self) -> Result<Mode<'_>, AnalysisError> {
        match (&self.sql, &self.map_sql, &self.reduce_sql) {
            (Some(sql), None, None) => {
                plan::read_only(sql)?;
                Ok(Mode::Split(sql))
            }
            (None, Some(map), Some(reduce)) => {
                plan::read_only(map)?;
                plan::read_only(reduce)?;
                Ok(Mode::Explicit { map, reduce })
            }
            (Some(_), _, _) => Err(AnalysisError::invalid_params(
                "give either sql, or map_sql and reduce_sql, not both",
            )),
            _ => Err(AnalysisError::invalid_params(
                "missing sql (or the pair map_sql and reduce_sql)",
            )),
        }
    }
}

/// What one or more shards answered: their results as Arrow IPC streams (one
/// per shard), and the schemas of the tables they saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SqlPartial {
    pub parts: Vec<ByteBuf>,
    /// Table → an empty Arrow IPC stream carrying its schema, as a shard saw
    /// it; one per shard (CSV schemas are inferred per shard).
    #[serde(default)]
    pub tables: BTreeMap<String, Vec<ByteBuf>>,
    /// The shards' part read only global tables: every shard answered the
    /// same, one answer is kept.
    #[serde(default)]
    pub global_only: bool,
}

/// The answer: column names and rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SqlOutput {
    pub columns: Vec<String>,
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The shard's tables (its own and the global ones) registered in a fresh
/// context, with where the global files are as object-store paths.
async fn shard_context(
    sql: &Sql,
    shard: &Shard,
    statistics: bool,
) -> Result<(SessionContext, Vec<String>, Option<String>), AnalysisError> {
    let ctx = sql.context(statistics)?;
    let mut names = tables::register(&ctx, shard.data()).await?;
    let mut global_dir = None;
    if let Some(global) = shard.global() {
        names.extend(tables::register(&ctx, global).await?);
        let dir = global.dir();
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        global_dir = Some(format!(
            "{}/",
            dir.display().to_string().trim_start_matches('/')
        ));
    }
    Ok((ctx, names, global_dir))
}

/// Runs `plan` and encodes its rows.
async fn run_part(
    ctx: &SessionContext,
    part: Arc<dyn ExecutionPlan>,
    shard: &Shard,
) -> Result<ByteBuf, AnalysisError> {
    let batches = collect(part.clone(), ctx.task_ctx())
        .await
        .map_err(|e| plan::run_failed(&format!("shard {}", shard.id()), e))?;
    Ok(ByteBuf::from(to_ipc(&part.schema(), &batches)?))
}

/// Plans `sql` on a shard and runs the shard's share of it.
async fn map_split(this: &Sql, sql: &str, shard: &Shard) -> Result<SqlPartial, AnalysisError> {
    let (mut ctx, names, global_dir) = shard_context(this, shard, true).await?;
    let mut tables = BTreeMap::new();
    let mut empty_table = false;
    for table in names {
        let provider = ctx
            .table_provider(table.as_str())
            .await
            .map_err(|e| failed(&format!("table {table}"), e))?;
        let schema = provider.schema();
        // CSV files without rows type every column Null.
        empty_table |=
            !schema.fields().is_empty() && schema.fields().iter().all(|f| f.data_type().is_null());
        tables.insert(table, vec![ByteBuf::from(to_ipc(&schema, &[])?)]);
    }
    let mut plan = match plan::physical_plan(&ctx, sql).await {
        Ok(plan) => plan,
        // A shard whose table has no rows (so no types) may not plan, say
        // `sum` over a Null column: it adds nothing to the answer. (A query
        // that is wrong fails on the shards with rows.)
        Err(_) if empty_table => {
            let nothing = to_ipc(
                &Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                &[],
            )?;
            return Ok(SqlPartial {
                parts: vec![ByteBuf::from(nothing)],
                tables,
                global_only: false,
            });
        }
        Err(e) => return Err(e),
    };
    if !matches!(Cut::of(&plan), Cut::Aggregate(_)) {
        // The shard's part ends in a merge of rows: planned as the root plans.
        ctx = shard_context(this, shard, false).await?.0;
        plan = plan::physical_plan(&ctx, sql).await?;
    }
    let cut = Cut::of(&plan);
    let reads_shard = plan::check(&plan, &cut, global_dir.as_deref())?;
    let mut part = cut.shard_part(&plan);
    // A plan that runs whole keeps its top LIMIT but not the OFFSET: the
    // root skips rows once, over all shards.
    if let Some(limit) = part.downcast_ref::<GlobalLimitExec>()
        && limit.skip() > 0
    {
        let fetch = limit.fetch().map(|f| f + limit.skip());
        part = Arc::new(GlobalLimitExec::new(limit.input().clone(), 0, fetch));
    }
    Ok(SqlPartial {
        parts: vec![run_part(&ctx, part, shard).await?],
        tables,
        global_only: !reads_shard,
    })
}

/// Runs `map_sql` whole on a shard.
async fn map_explicit(
    this: &Sql,
    map_sql: &str,
    shard: &Shard,
) -> Result<SqlPartial, AnalysisError> {
    let (ctx, _, _) = shard_context(this, shard, true).await?;
    let plan = plan::physical_plan(&ctx, map_sql).await?;
    Ok(SqlPartial {
        parts: vec![run_part(&ctx, plan, shard).await?],
        ..SqlPartial::default()
    })
}

/// The shards' rows, each part conformed to `schema` (see [`conform`]).
fn rows_as(
    parts: &[(SchemaRef, Vec<RecordBatch>)],
    schema: &SchemaRef,
    missing_as_null: bool,
) -> Result<Vec<Vec<RecordBatch>>, AnalysisError> {
    parts
        .iter()
        .map(|(_, batches)| {
            batches
                .iter()
                .map(|b| conform(b, schema, missing_as_null))
                .collect()
        })
        .collect()
}

fn decode(partial: &SqlPartial) -> Result<Vec<(SchemaRef, Vec<RecordBatch>)>, AnalysisError> {
    partial.parts.iter().map(|bytes| from_ipc(bytes)).collect()
}

/// Runs the root's share of `sql` over every shard's partial.
async fn finish_split(
    this: &Sql,
    sql: &str,
    partial: SqlPartial,
) -> Result<SqlOutput, AnalysisError> {
    let ctx = this.context(false)?;
    for (table, schemas) in &partial.tables {
        let schemas = schemas
            .iter()
            .map(|s| from_ipc(s).map(|(schema, _)| schema))
            .collect::<Result<Vec<_>, _>>()?;
        ctx.register_table(table.as_str(), tables::planning_table(unify(&schemas))?)
            .map_err(|e| failed("table", e))?;
    }
    let plan = plan::physical_plan(&ctx, sql).await?;
    let parts = decode(&partial)?;
    let batches = match Cut::of(&plan) {
        Cut::Aggregate(node) => {
            let rows = rows_as(&parts, &node.schema(), false)?
                .into_iter()
                .flatten()
                .collect();
            let memory: Arc<dyn ExecutionPlan> =
                MemorySourceConfig::try_new_exec(&[rows], node.schema(), None)
                    .map_err(|e| failed("plan", e))?;
            collect(plan::replace(&plan, &node, &memory)?, ctx.task_ctx()).await
        }
        Cut::Merge(merge) => {
            let input = merge.children()[0].clone();
            let mut partitions = rows_as(&parts, &input.schema(), false)?;
            if partitions.is_empty() {
                partitions.push(vec![]);
            }
            let memory: Arc<dyn ExecutionPlan> =
                MemorySourceConfig::try_new_exec(&partitions, input.schema(), None)
                    .map_err(|e| failed("plan", e))?;
            collect(plan::replace(&plan, &input, &memory)?, ctx.task_ctx()).await
        }
        Cut::Whole => {
            let rows: Vec<RecordBatch> = rows_as(&parts, &plan.schema(), false)?
                .into_iter()
                .flatten()
                .collect();
            Ok(match plan.downcast_ref::<GlobalLimitExec>() {
                Some(limit) => slice(rows, limit.skip(), limit.fetch()),
                None => rows,
            })
        }
    }
    .map_err(|e| plan::run_failed("final", e))?;
    output(&plan.schema(), &batches)
}

/// Runs `reduce_sql` over table `partials`: every shard's rows of `map_sql`.
async fn finish_explicit(
    this: &Sql,
    reduce_sql: &str,
    partial: SqlPartial,
) -> Result<SqlOutput, AnalysisError> {
    let parts = decode(&partial)?;
    if parts.is_empty() {
        return Err(AnalysisError::failed("no shard answered map_sql"));
    }
    let schemas: Vec<SchemaRef> = parts.iter().map(|(s, _)| s.clone()).collect();
    let schema = unify(&schemas);
    let rows: Vec<RecordBatch> = rows_as(&parts, &schema, true)?
        .into_iter()
        .flatten()
        .collect();
    let ctx = this.context(false)?;
    let table = MemTable::try_new(schema, vec![rows]).map_err(|e| failed("partials", e))?;
    ctx.register_table("partials", Arc::new(table))
        .map_err(|e| failed("partials", e))?;
    let plan = plan::physical_plan(&ctx, reduce_sql).await?;
    let batches = collect(plan.clone(), ctx.task_ctx())
        .await
        .map_err(|e| plan::run_failed("reduce_sql", e))?;
    output(&plan.schema(), &batches)
}

/// Rows `skip..skip + fetch` of `batches`.
fn slice(batches: Vec<RecordBatch>, mut skip: usize, mut fetch: Option<usize>) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for batch in batches {
        if fetch == Some(0) {
            break;
        }
        let rows = batch.num_rows();
        if skip >= rows {
            skip -= rows;
            continue;
        }
        let take = fetch.map_or(rows - skip, |f| f.min(rows - skip));
        out.push(batch.slice(skip, take));
        skip = 0;
        fetch = fetch.map(|f| f - take);
    }
    out
}

fn output(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<SqlOutput, AnalysisError> {
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer.write_batches(&refs).map_err(|e| failed("json", e))?;
    writer.finish().map_err(|e| failed("json", e))?;
    let bytes = writer.into_inner();
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = if bytes.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| failed("json", e))?
    };
    Ok(SqlOutput { columns, rows })
}

/// Runs `work` (from the blocking pool, where `map` and `finish` run) on
/// DataFusion's own runtime: the tasks it spawns for scans and repartitions
/// then run on their own threads instead of the node's runtime, whose
/// workers also keep gossip's heartbeats on time (a member busy with SQL
/// must not look dead to its peers). When the query is cancelled (deadline,
/// caller gone, shutdown) the work is dropped, and with it every task
/// DataFusion spawned for it.
///
/// Planning and running walk the query's expression trees recursively: the
/// work is polled on a thread of its own, and DataFusion's tasks run on
/// threads, with [`STACK_BYTES`] of stack (reserved, not used, until a deep
/// query needs it).
fn block_on<T: Send>(
    work: impl std::future::Future<Output = Result<T, AnalysisError>> + Send,
) -> Result<T, AnalysisError> {
    let cancel = crate::query::cancellation();
    let work = async move {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(AnalysisError::cancelled()),
            done = work => done,
        }
    };
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("dram-sql")
            .thread_stack_size(STACK_BYTES)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    let runtime = runtime
        .as_ref()
        .map_err(|e| AnalysisError::failed(format!("cannot start the sql runtime: {e}")))?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("dram-sql-query".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, || runtime.block_on(work))
            .map_err(|e| AnalysisError::failed(format!("cannot start a sql thread: {e}")))?
            .join()
            .map_err(|_| AnalysisError::failed("the sql query panicked"))?
    })
}

/// The stack of the threads that plan and run SQL.
const STACK_BYTES: usize = 64 << 20;

impl Analysis for Sql {
    type Params = SqlParams;
    type Partial = SqlPartial;
    type Output = SqlOutput;

    fn description(&self) -> String {
        "SQL over each shard's Parquet and CSV tables (DataFusion), aggregated exactly across shards".into()
    }

    fn map(&self, params: &SqlParams, shard: &Shard) -> Result<SqlPartial, AnalysisError> {
        match params.mode()? {
            Mode::Split(sql) => block_on(map_split(self, sql, shard)),
            Mode::Explicit { map, .. } => block_on(map_explicit(self, map, shard)),
        }
    }

    fn reduce(
        &self,
        _params: &SqlParams,
        partials: Vec<SqlPartial>,
    ) -> Result<SqlPartial, AnalysisError> {
        let mut out = SqlPartial {
            global_only: !partials.is_empty() && partials.iter().all(|p| p.global_only),
            ..SqlPartial::default()
        };
        for partial in partials {
            if out.global_only && !out.parts.is_empty() {
                break;
            }
            out.parts.extend(partial.parts);
            for (table, schemas) in partial.tables {
                let known = out.tables.entry(table).or_default();
                for schema in schemas {
                    // Shards mostly agree: keep each distinct schema once.
                    if !known.contains(&schema) {
                        known.push(schema);
                    }
                }
            }
        }
        Ok(out)
    }

    fn finish(&self, params: &SqlParams, partial: SqlPartial) -> Result<SqlOutput, AnalysisError> {
        match params.mode()? {
            Mode::Split(sql) => block_on(finish_split(self, sql, partial)),
            Mode::Explicit { reduce, .. } => block_on(finish_explicit(self, reduce, partial)),
        }
    }
}
