//! `sql`: SQL over a database's tables, with DataFusion.
//!
//! A `sql` query runs on the distributed engine (`query::sql`): the member
//! that receives it coordinates, the members holding the shards scan them,
//! and the answer is the one DataFusion gives in one process over the same
//! files. This module holds the analysis's parameters and answer, the
//! read-only guard, and the explicit pair for what SQL cannot say: `map_sql`
//! runs on every shard (its tables and the global ones), `reduce_sql` runs
//! on the coordinator over table `partials` (all the shards' rows of
//! `map_sql`) and the global tables.
//!
//! Only queries run (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE): anything that
//! would define, write or set something is refused as `read_only`. Each part
//! of a query holds at most `sql.memory_limit` bytes and nothing spills to
//! disk; a cancelled query (deadline, caller gone, shutdown) stops at once.

mod plan;
mod tables;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::query::{Analysis, AnalysisError, Shard};
pub(crate) use plan::{physical_plan, repeatable, run_failed};
pub(crate) use tables::to_ipc;
pub(crate) use tables::unify as unify_schemas;
use tables::{conform, failed, from_ipc};

/// SQL over a database's tables: read-only, each part of a query within
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
}

impl Default for Sql {
    fn default() -> Sql {
        Sql::new(&crate::config::SqlConfig::default())
    }
}

/// Params of `sql`: either `sql`, run on the distributed engine, or
/// `map_sql` run on every shard and `reduce_sql` run on the coordinator over
/// table `partials` (all the shards' rows of `map_sql`) and the global
/// tables.
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

/// Whether a `sql` query's answer may be kept in the result cache: every
/// statement it runs is [`repeatable`].
pub(crate) fn repeatable_params(params: Option<&serde_json::Value>) -> bool {
    let Some(params) = params.cloned() else {
        return false;
    };
    let Ok(params) = serde_json::from_value::<SqlParams>(params) else {
        return false;
    };
    match (&params.sql, &params.map_sql, &params.reduce_sql) {
        (Some(sql), None, None) => repeatable(sql),
        (None, Some(map), Some(reduce)) => repeatable(map) && repeatable(reduce),
        _ => false,
    }
}

/// How a `sql` query runs.
pub(crate) enum SqlMode<'a> {
    Split(&'a str),
    Explicit { map: &'a str, reduce: &'a str },
}

/// How the query runs; every statement given must be read-only.
pub(crate) fn sql_mode(params: &SqlParams) -> Result<SqlMode<'_>, AnalysisError> {
    match (&params.sql, &params.map_sql, &params.reduce_sql) {
        (Some(sql), None, None) => {
            plan::read_only(sql)?;
            Ok(SqlMode::Split(sql))
        }
        (None, Some(map), Some(reduce)) => {
            plan::read_only(map)?;
            plan::read_only(reduce)?;
            Ok(SqlMode::Explicit { map, reduce })
        }
        (Some(_), _, _) => Err(AnalysisError::invalid_params(
            "give either sql, or map_sql and reduce_sql, not both",
        )),
        _ => Err(AnalysisError::invalid_params(
            "missing sql (or the pair map_sql and reduce_sql)",
        )),
    }
}

/// What one or more shards answered to `map_sql`: their rows as Arrow IPC
/// streams (one per shard).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SqlPartial {
    pub parts: Vec<ByteBuf>,
}

/// The answer: column names and rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SqlOutput {
    pub columns: Vec<String>,
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Runs `map_sql` whole on a shard, over its tables and the global ones.
async fn map_explicit(
    this: &Sql,
    map_sql: &str,
    shard: &Shard,
) -> Result<SqlPartial, AnalysisError> {
    let ctx = plan::context(this.memory_limit)?;
    tables::register(&ctx, shard.data()).await?;
    if let Some(global) = shard.global() {
        tables::register(&ctx, global).await?;
    }
    let plan = plan::physical_plan(&ctx, map_sql).await?;
    let batches = collect(plan.clone(), ctx.task_ctx())
        .await
        .map_err(|e| plan::run_failed(&format!("shard {}", shard.id()), e))?;
    Ok(SqlPartial {
        parts: vec![ByteBuf::from(to_ipc(&plan.schema(), &batches)?)],
    })
}

/// Runs `reduce_sql` in `ctx` (the coordinator's, with the global tables)
/// over table `partials`: every shard's rows of `map_sql`.
pub(crate) async fn reduce_explicit(
    ctx: &SessionContext,
    reduce_sql: &str,
    partials: Vec<SqlPartial>,
) -> Result<(SchemaRef, Vec<RecordBatch>), AnalysisError> {
    let parts = partials
        .iter()
        .flat_map(|p| &p.parts)
        .map(|bytes| from_ipc(bytes))
        .collect::<Result<Vec<_>, _>>()?;
    if parts.is_empty() {
        return Err(AnalysisError::failed("no shard answered map_sql"));
    }
    let schemas: Vec<SchemaRef> = parts.iter().map(|(s, _)| s.clone()).collect();
    let schema = tables::unify(&schemas);
    let rows = parts
        .iter()
        .flat_map(|(_, batches)| batches)
        .map(|b| conform(b, &schema, true))
        .collect::<Result<Vec<RecordBatch>, _>>()?;
    let table = MemTable::try_new(schema, vec![rows]).map_err(|e| failed("partials", e))?;
    ctx.register_table("partials", Arc::new(table))
        .map_err(|e| failed("partials", e))?;
    let plan = plan::physical_plan(ctx, reduce_sql).await?;
    let batches = collect(plan.clone(), ctx.task_ctx())
        .await
        .map_err(|e| plan::run_failed("reduce_sql", e))?;
    Ok((plan.schema(), batches))
}

/// The answer as JSON: column names, and each row as an object with its
/// columns in SELECT order (see [`json_rows`]).
pub(crate) fn sql_output(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<SqlOutput, AnalysisError> {
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let bytes = json_rows(batches)?;
    let rows = if bytes.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| failed("json", e))?
    };
    Ok(SqlOutput { columns, rows })
}

/// The rows as a JSON array, written straight from Arrow: each row an
/// object with its columns in SELECT order. Decimals are text with every
/// digit, and so are 64-bit integers past 2^53 (a JSON number there loses
/// digits in most clients); NULLs are left out of their row. Empty when
/// there are no batches.
pub(crate) fn json_rows(batches: &[RecordBatch]) -> Result<Vec<u8>, AnalysisError> {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::arrow::json::WriterBuilder;
    use datafusion::arrow::json::writer::JsonArray;
    let decimals_as_text = |batch: &RecordBatch| -> Result<RecordBatch, AnalysisError> {
        if !batch
            .schema()
            .fields()
            .iter()
            .any(|f| f.data_type().is_decimal())
        {
            return Ok(batch.clone());
        }
        let mut fields = Vec::with_capacity(batch.num_columns());
        let mut arrays = Vec::with_capacity(batch.num_columns());
        for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
            if field.data_type().is_decimal() {
                let text = datafusion::arrow::compute::cast(array, &DataType::Utf8)
                    .map_err(|e| failed("json", e))?;
                fields.push(field.as_ref().clone().with_data_type(DataType::Utf8));
                arrays.push(text);
            } else {
                fields.push(field.as_ref().clone());
                arrays.push(array.clone());
            }
        }
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        RecordBatch::try_new(schema, arrays).map_err(|e| failed("json", e))
    };
    let batches = batches
        .iter()
        .map(decimals_as_text)
        .collect::<Result<Vec<_>, _>>()?;
    let mut writer = WriterBuilder::new()
        .with_encoder_factory(Arc::new(ExactIntegers))
        .build::<_, JsonArray>(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer.write_batches(&refs).map_err(|e| failed("json", e))?;
    writer.finish().map_err(|e| failed("json", e))?;
    Ok(writer.into_inner())
}

/// Writes 64-bit integers past 2^53 as JSON strings, every other as a number.
#[derive(Debug)]
struct ExactIntegers;

/// The largest integer every JSON client reads exactly (a double's mantissa).
const EXACT: u64 = 1 << 53;

struct ExactInteger<'a, T: datafusion::arrow::datatypes::ArrowPrimitiveType>(
    &'a datafusion::arrow::array::PrimitiveArray<T>,
);

impl<T> datafusion::arrow::json::Encoder for ExactInteger<'_, T>
where
    T: datafusion::arrow::datatypes::ArrowPrimitiveType,
    T::Native: std::fmt::Display + TryInto<i128> + Copy,
{
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        use std::io::Write;
        let value = self.0.value(idx);
        let exact = value
            .try_into()
            .is_ok_and(|v: i128| v.unsigned_abs() <= u128::from(EXACT));
        // Writing to a Vec cannot fail.
        let _ = if exact {
            write!(out, "{value}")
        } else {
            write!(out, "\"{value}\"")
        };
    }
}

impl datafusion::arrow::json::EncoderFactory for ExactIntegers {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a datafusion::arrow::datatypes::FieldRef,
        array: &'a dyn datafusion::arrow::array::Array,
        _options: &'a datafusion::arrow::json::EncoderOptions,
    ) -> Result<
        Option<datafusion::arrow::json::writer::NullableEncoder<'a>>,
        datafusion::arrow::error::ArrowError,
    > {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{DataType, Int64Type, UInt64Type};
        use datafusion::arrow::json::writer::{Encoder, NullableEncoder};
        let encoder: Box<dyn Encoder + 'a> = match array.data_type() {
            DataType::Int64 => Box::new(ExactInteger(array.as_primitive::<Int64Type>())),
            DataType::UInt64 => Box::new(ExactInteger(array.as_primitive::<UInt64Type>())),
            _ => return Ok(None),
        };
        Ok(Some(NullableEncoder::new(encoder, array.nulls().cloned())))
    }
}

/// Runs `work` (from the blocking pool, where `map` runs) on the SQL
/// runtime, polled on a thread with a deep stack; when the query is
/// cancelled (deadline, caller gone, shutdown) the work is dropped, and with
/// it every task DataFusion spawned for it.
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
    let runtime = crate::query::sql::runtime()?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("dram-sql-query".into())
            .stack_size(crate::query::sql::STACK_BYTES)
            .spawn_scoped(scope, || runtime.block_on(work))
            .map_err(|e| AnalysisError::failed(format!("cannot start a sql thread: {e}")))?
            .join()
            .map_err(|_| AnalysisError::failed("the sql query panicked"))?
    })
}

/// `sql` with a `sql` param runs on the distributed engine, not through `map`.
fn engine_only() -> AnalysisError {
    AnalysisError::failed(
        "a sql query runs on the distributed SQL engine: send it to POST \
         /v1/query/{database}/sql on a member",
    )
}

impl Analysis for Sql {
    type Params = SqlParams;
    type Partial = SqlPartial;
    type Output = SqlOutput;

    fn description(&self) -> String {
        "SQL over the database's Parquet, CSV, TSV and JSON-lines tables, distributed over the members (DataFusion)".into()
    }

    fn map(&self, params: &SqlParams, shard: &Shard) -> Result<SqlPartial, AnalysisError> {
        match sql_mode(params)? {
            SqlMode::Split(_) => Err(engine_only()),
            SqlMode::Explicit { map, .. } => block_on(map_explicit(self, map, shard)),
        }
    }

    fn reduce(
        &self,
        _params: &SqlParams,
        partials: Vec<SqlPartial>,
    ) -> Result<SqlPartial, AnalysisError> {
        Ok(SqlPartial {
            parts: partials.into_iter().flat_map(|p| p.parts).collect(),
        })
    }

    fn finish(&self, params: &SqlParams, partial: SqlPartial) -> Result<SqlOutput, AnalysisError> {
        match sql_mode(params)? {
            SqlMode::Split(_) => Err(engine_only()),
            SqlMode::Explicit { reduce, .. } => block_on(async move {
                let ctx = plan::context(self.memory_limit)?;
                let (schema, batches) = reduce_explicit(&ctx, reduce, vec![partial]).await?;
                sql_output(&schema, &batches)
            }),
        }
    }
}
