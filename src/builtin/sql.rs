//! `sql`: SQL over the Parquet and CSV tables of each shard, with DataFusion.
//!
//! In a shard, every folder `<table>/` of `*.parquet` or `*.csv` files is table
//! `<table>`; the database's `global/<table>/` folders are tables every shard
//! can join. The query is planned as DataFusion would plan it in one process,
//! then split where DataFusion itself splits an aggregation: each shard runs
//! the plan up to the *partial* aggregate (states such as sum and count for
//! `avg`, the set of values for `count(DISTINCT …)`), the partials travel as
//! Arrow IPC, and the root runs the *final* aggregate and everything above it
//! (HAVING, ORDER BY, LIMIT) over all partials — exact, as in one process. A
//! plan without an aggregate runs whole on each shard (its ORDER BY and LIMIT
//! included) and the root merges the sorted outputs and applies the limit.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::query::{Analysis, AnalysisError, DataDir, Shard};

/// SQL over the shards' tables.
pub struct Sql;

/// Params of `sql`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlParams {
    /// The query.
    pub sql: String,
}

/// What one or more shards answered: their partial results as Arrow IPC
/// streams (one per shard), and the schemas of the tables they saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SqlPartial {
    pub parts: Vec<ByteBuf>,
    /// Table → an empty Arrow IPC stream carrying its schema.
    #[serde(default)]
    pub tables: BTreeMap<String, ByteBuf>,
}

/// The answer: column names and rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SqlOutput {
    pub columns: Vec<String>,
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::failed(format!("{what}: {e}"))
}

fn invalid(e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::invalid_params(e.to_string())
}

/// A context whose plans keep the partial and the final aggregation apart,
/// the same on the shards and at the root: two target partitions (with one,
/// DataFusion plans a single aggregation), without the rules that fuse the
/// two phases or answer an aggregate from a table's statistics (a shard's
/// statistics are not the database's, and the root plans over empty tables).
fn context() -> SessionContext {
    let rules: Vec<_> = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new()
        .rules
        .into_iter()
        .filter(|rule| {
            !matches!(
                rule.name(),
                "aggregate_statistics" | "CombinePartialFinalAggregate"
            )
        })
        .collect();
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(SessionConfig::new().with_target_partitions(2))
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .build();
    SessionContext::new_with_state(state)
}

/// Registers every `<table>/` folder of `data` whose files are Parquet or
/// CSV (other files are not read); returns the tables' names. A folder with
/// both is refused.
async fn register_tables(
    ctx: &SessionContext,
    data: &DataDir,
) -> Result<Vec<String>, AnalysisError> {
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for path in data.files() {
        if let Some((table, _)) = path.split_once('/')
            && (path.ends_with(".parquet") || path.ends_with(".csv"))
        {
            tables.entry(table.to_string()).or_default().push(path);
        }
    }
    for (table, files) in &tables {
        // Lazy databases: fetch every file of the table first.
        for file in files {
            data.path(file)?;
        }
        let dir = format!("{}/", data.dir().join(table).display());
        let parquet = files.iter().filter(|f| f.ends_with(".parquet")).count();
        let registered = if parquet == files.len() {
            ctx.register_parquet(table, &dir, ParquetReadOptions::default())
                .await
        } else if parquet == 0 {
            ctx.register_csv(table, &dir, CsvReadOptions::new()).await
        } else {
            return Err(AnalysisError::failed(format!(
                "table {table} mixes Parquet and CSV files; a table is one or the other"
            )));
        };
        registered.map_err(|e| failed(&format!("table {table}"), e))?;
    }
    Ok(tables.into_keys().collect())
}

/// The physical plan of `sql` in `ctx` (a query that does not plan is the
/// caller's error).
async fn physical_plan(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Arc<dyn ExecutionPlan>, AnalysisError> {
    ctx.sql(sql)
        .await
        .map_err(invalid)?
        .create_physical_plan()
        .await
        .map_err(invalid)
}

/// The partial aggregate of the plan's lowest aggregation (the one over the
/// tables), if any: everything above it runs at the root. (A query such as
/// `count(DISTINCT x) … GROUP BY g` aggregates twice — by (g, x), then by g —
/// and only the lowest one may be split across shards.)
fn partial_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if let Some(lower) = plan.children().into_iter().find_map(partial_aggregate) {
        return Some(lower);
    }
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>()
        && matches!(
            aggregate.mode(),
            AggregateMode::Final | AggregateMode::FinalPartitioned
        )
    {
        let mut below = aggregate.input().clone();
        loop {
            if let Some(partial) = below.downcast_ref::<AggregateExec>() {
                return (*partial.mode() == AggregateMode::Partial).then(|| below.clone());
            }
            let children = below.children();
            let [child] = children.as_slice() else {
                return None;
            };
            below = (*child).clone();
        }
    }
    None
}

/// `plan` with the node `target` replaced by `replacement`.
fn replace(
    plan: &Arc<dyn ExecutionPlan>,
    target: &Arc<dyn ExecutionPlan>,
    replacement: &Arc<dyn ExecutionPlan>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    if Arc::ptr_eq(plan, target) {
        return Ok(replacement.clone());
    }
    let children = plan
        .children()
        .into_iter()
        .map(|child| replace(child, target, replacement))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    if children.is_empty() {
        return Ok(plan.clone());
    }
    replace_children_if_necessary(plan.clone(), children)
}

/// The node whose input the root replaces with the shards' outputs, for a
/// plan without an aggregate: the merge of sorted partitions (under a limit),
/// or the coalescing of partitions; `None` when the plan is a single stream.
fn merge_point(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if plan.downcast_ref::<SortPreservingMergeExec>().is_some()
        || plan.downcast_ref::<CoalescePartitionsExec>().is_some()
    {
        return Some(plan.clone());
    }
    if plan.downcast_ref::<GlobalLimitExec>().is_some() {
        return plan.children().first().and_then(|c| merge_point(c));
    }
    None
}

fn to_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, AnalysisError> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, schema).map_err(|e| failed("arrow ipc", e))?;
    for batch in batches {
        writer.write(batch).map_err(|e| failed("arrow ipc", e))?;
    }
    writer.finish().map_err(|e| failed("arrow ipc", e))?;
    drop(writer);
    Ok(out)
}

fn from_ipc(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), AnalysisError> {
    let reader = StreamReader::try_new(bytes, None).map_err(|e| failed("arrow ipc", e))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed("arrow ipc", e))?;
    Ok((schema, batches))
}

/// Plans `sql` on a shard and runs the shard's share of it.
async fn map_shard(sql: &str, shard: &Shard) -> Result<SqlPartial, AnalysisError> {
    let ctx = context();
    let mut names = register_tables(&ctx, shard.data()).await?;
    if let Some(global) = shard.global() {
        names.extend(register_tables(&ctx, global).await?);
    }
    let mut tables = BTreeMap::new();
    for table in names {
        let provider = ctx
            .table_provider(table.as_str())
            .await
            .map_err(|e| failed(&format!("table {table}"), e))?;
        tables.insert(table, ByteBuf::from(to_ipc(&provider.schema(), &[])?));
    }
    let plan = physical_plan(&ctx, sql).await?;
    let shard_plan = partial_aggregate(&plan).unwrap_or(plan);
    let batches = collect(shard_plan.clone(), ctx.task_ctx())
        .await
        .map_err(|e| failed(&format!("shard {}", shard.id()), e))?;
    Ok(SqlPartial {
        parts: vec![ByteBuf::from(to_ipc(&shard_plan.schema(), &batches)?)],
        tables,
    })
}

/// Runs the root's share over every shard's partial.
async fn finish_all(sql: &str, partial: SqlPartial) -> Result<SqlOutput, AnalysisError> {
    let ctx = context();
    for (table, schema) in &partial.tables {
        let (schema, _) = from_ipc(schema)?;
        let empty =
            MemTable::try_new(schema, vec![vec![], vec![]]).map_err(|e| failed("table", e))?;
        ctx.register_table(table.as_str(), Arc::new(empty))
            .map_err(|e| failed("table", e))?;
    }
    let plan = physical_plan(&ctx, sql).await?;
    let mut parts = Vec::new();
    for bytes in &partial.parts {
        parts.push(from_ipc(bytes)?);
    }
    let result = if let Some(partial_node) = partial_aggregate(&plan) {
        let batches: Vec<RecordBatch> = parts.into_iter().flat_map(|(_, b)| b).collect();
        let memory: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[batches], partial_node.schema(), None)
                .map_err(|e| failed("plan", e))?;
        let merged = replace(&plan, &partial_node, &memory).map_err(|e| failed("plan", e))?;
        collect(merged, ctx.task_ctx()).await
    } else {
        let partitions: Vec<Vec<RecordBatch>> = parts.into_iter().map(|(_, b)| b).collect();
        let partitions = if partitions.is_empty() {
            vec![vec![]]
        } else {
            partitions
        };
        match merge_point(&plan) {
            Some(merge) => {
                let input = merge.children()[0].clone();
                let memory: Arc<dyn ExecutionPlan> =
                    MemorySourceConfig::try_new_exec(&partitions, input.schema(), None)
                        .map_err(|e| failed("plan", e))?;
                let merged = replace(&plan, &input, &memory).map_err(|e| failed("plan", e))?;
                collect(merged, ctx.task_ctx()).await
            }
            None => Ok(partitions.into_iter().flatten().collect()),
        }
    }
    .map_err(|e| failed("final", e))?;
    let schema = plan.schema();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = result.iter().collect();
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

fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Handle::current().block_on(work)
}

impl Analysis for Sql {
    type Params = SqlParams;
    type Partial = SqlPartial;
    type Output = SqlOutput;

    fn description(&self) -> String {
        "SQL over each shard's Parquet and CSV tables (DataFusion), aggregated exactly across shards".into()
    }

    fn map(&self, params: &SqlParams, shard: &Shard) -> Result<SqlPartial, AnalysisError> {
        block_on(map_shard(&params.sql, shard))
    }

    fn reduce(
        &self,
        _params: &SqlParams,
        partials: Vec<SqlPartial>,
    ) -> Result<SqlPartial, AnalysisError> {
        let mut out = SqlPartial::default();
        for partial in partials {
            out.parts.extend(partial.parts);
            for (table, schema) in partial.tables {
                out.tables.entry(table).or_insert(schema);
            }
        }
        Ok(out)
    }

    fn finish(&self, params: &SqlParams, partial: SqlPartial) -> Result<SqlOutput, AnalysisError> {
        block_on(finish_all(&params.sql, partial))
    }
}
