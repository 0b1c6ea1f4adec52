//! `dram_analysis(name [, params])`: a custom analysis's answer as a table,
//! so SQL (and a Grafana panel over the PostgreSQL protocol) can call a
//! team's Rust analysis. The analysis runs as `POST
//! /v1/query/{database}/{name}` runs it (the same fan-out), over the
//! database the SQL query reads, when the query is planned.
//!
//! The answer becomes rows: an array gives one row per element; an object
//! with one array of objects among its fields (`group`'s `groups`), one row
//! per element of that array; anything else, one row. Objects' keys are the
//! columns, nested objects' keys joined with dots (`key.region`); a
//! scalar's column is `value`. Numbers, strings and booleans keep their
//! types (integers `BIGINT`, others `DOUBLE`), arrays are JSON text.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Expr;
use serde_json::{Map, Value};

use crate::query::{Queries, QueryRequest};

/// The function's name in SQL.
pub(crate) const NAME: &str = "dram_analysis";

/// `dram_analysis` over one database.
pub(crate) struct AnalysisTable {
    queries: Queries,
    target: String,
    /// The runtime the analysis runs on (the node's).
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for AnalysisTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalysisTable")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl AnalysisTable {
    /// The function for queries over `target`, run on the current runtime.
    pub(crate) fn new(queries: Queries, target: &str) -> AnalysisTable {
        AnalysisTable {
            queries,
            target: target.to_string(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn run(&self, name: &str, params: Value) -> Result<Value> {
        let request = QueryRequest {
            params: Some(params),
            ..QueryRequest::default()
        };
        let queries = self.queries.clone();
        let (target, name_owned) = (self.target.clone(), name.to_string());
        let work = async move { queries.query(&target, &name_owned, request).await };
        // Planning is synchronous: the planner's thread waits, the
        // analysis runs on the node's runtime.
        if tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
        {
            return plan_err!("{NAME} needs a multi-thread runtime");
        }
        let runtime = self.runtime.clone();
        let answer = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| runtime.block_on(runtime.spawn(work))),
            Err(_) => runtime.block_on(runtime.spawn(work)),
        };
        match answer {
            Ok(Ok(answer)) => Ok(answer.result),
            Ok(Err(e)) => Err(DataFusionError::Execution(format!(
                "{NAME}('{name}'): {} ({})",
                e,
                e.code()
            ))),
            Err(e) => Err(DataFusionError::Execution(format!("{NAME}('{name}'): {e}"))),
        }
    }
}

impl TableFunctionImpl for AnalysisTable {
    fn call(&self, args: &[Expr]) -> Result<Arc<dyn TableProvider>> {
        let text = |i: usize| match args.get(i) {
            Some(Expr::Literal(ScalarValue::Utf8(Some(s)), _))
            | Some(Expr::Literal(ScalarValue::Utf8View(Some(s)), _))
            | Some(Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _)) => Ok(Some(s.clone())),
            None => Ok(None),
            Some(other) => {
                plan_err!("{NAME}(name, params): arguments are text literals, not {other}")
            }
        };
        let Some(name) = text(0)? else {
            return plan_err!("{NAME}(name, params): name the analysis");
        };
        if args.len() > 2 {
            return plan_err!("{NAME}(name, params): two arguments at most");
        }
        if name == crate::query::sql::SQL {
            return plan_err!("{NAME}('sql') is SQL itself: write the query directly");
        }
        let params = match text(1)? {
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                DataFusionError::Plan(format!("{NAME}('{name}', params): params is JSON: {e}"))
            })?,
            None => Value::Object(Map::new()),
        };
        let answer = self.run(&name, params)?;
        let (schema, batch) = to_batch(answer)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

/// An answer as one batch of rows.
fn to_batch(answer: Value) -> Result<(SchemaRef, RecordBatch)> {
    let rows: Vec<Value> = match answer {
        Value::Array(items) => items,
        Value::Object(mut fields) => {
            let listed: Vec<String> = fields
                .iter()
                .filter(|(_, v)| {
                    v.as_array()
                        .is_some_and(|items| items.iter().all(Value::is_object))
                })
                .map(|(k, _)| k.clone())
                .collect();
            match listed.as_slice() {
                [one] => match fields.remove(one) {
                    Some(Value::Array(items)) => items,
                    other => other.into_iter().collect(),
                },
                _ => vec![Value::Object(fields)],
            }
        }
        other => vec![other],
    };
    let rows: Vec<Map<String, Value>> = rows
        .into_iter()
        .map(|row| {
            let mut columns = Map::new();
            match row {
                Value::Object(fields) => flatten("", fields, &mut columns),
                other => {
                    columns.insert("value".to_string(), flat(other));
                }
            }
            columns
        })
        .collect();
    // Columns in the order they first appear; each typed by its values.
    let mut columns: Vec<(String, Option<DataType>)> = Vec::new();
    for row in &rows {
        for (key, value) in row {
            let seen = match value {
                Value::Null => None,
                Value::Bool(_) => Some(DataType::Boolean),
                Value::Number(n) if n.is_i64() => Some(DataType::Int64),
                Value::Number(_) => Some(DataType::Float64),
                _ => Some(DataType::Utf8),
            };
            match columns.iter_mut().find(|(name, _)| name == key) {
                None => columns.push((key.clone(), seen)),
                Some((_, ty)) => {
                    *ty = match (ty.take(), seen) {
                        (None, seen) => seen,
                        (known, None) => known,
                        (Some(a), Some(b)) if a == b => Some(a),
                        (Some(DataType::Int64), Some(DataType::Float64))
                        | (Some(DataType::Float64), Some(DataType::Int64)) => {
                            Some(DataType::Float64)
                        }
                        _ => Some(DataType::Utf8),
                    }
                }
            }
        }
    }
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, ty)| Field::new(name, ty.clone().unwrap_or(DataType::Utf8), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    // A column of mixed types is text: its values written as JSON text.
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|mut row| {
            for (name, ty) in &columns {
                if ty.as_ref().is_none_or(|t| *t == DataType::Utf8)
                    && let Some(value) = row.get_mut(name)
                    && !matches!(value, Value::String(_) | Value::Null)
                {
                    *value = Value::String(value.to_string());
                }
            }
            Value::Object(row)
        })
        .collect();
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder.serialize(&rows)?;
    let batch = decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    Ok((schema, batch))
}

/// An object's fields as columns, nested objects' with dotted names.
fn flatten(prefix: &str, fields: Map<String, Value>, columns: &mut Map<String, Value>) {
    for (key, value) in fields {
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(nested) => flatten(&name, nested, columns),
            other => {
                columns.insert(name, flat(other));
            }
        }
    }
}

/// Arrays as JSON text.
fn flat(value: Value) -> Value {
    match value {
        Value::Array(_) | Value::Object(_) => Value::String(value.to_string()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use serde_json::json;

    use super::*;

    fn table(answer: Value) -> String {
        let (_, batch) = to_batch(answer).unwrap();
        pretty_format_batches(&[batch]).unwrap().to_string()
    }

    #[test]
    fn answers_become_rows_with_their_types() {
        let (schema, batch) = to_batch(json!([
            {"region": "eu", "n": 3, "share": 0.5, "top": [1, 2]},
            {"region": "us", "n": 4, "share": 1, "ok": true},
        ]))
        .unwrap();
        let types: Vec<(&str, &DataType)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type()))
            .collect();
        assert_eq!(
            types,
            [
                ("region", &DataType::Utf8),
                ("n", &DataType::Int64),
                ("share", &DataType::Float64),
                ("top", &DataType::Utf8),
                ("ok", &DataType::Boolean),
            ]
        );
        assert_eq!(batch.num_rows(), 2);
        let shown = table(json!([{"a": 1}, {"a": "x"}]));
        assert!(shown.contains("| 1 ") && shown.contains("| x "), "{shown}");
        let shown = table(json!(42));
        assert!(shown.contains("value") && shown.contains("42"), "{shown}");
        let shown = table(json!({"total": 7, "by": {"eu": 7}, "top": [1, 2]}));
        assert!(
            shown.contains("by.eu") && shown.contains("[1,2]"),
            "{shown}"
        );
        // `group`'s answer: one row per group.
        let (schema, batch) = to_batch(json!({
            "rows": 9, "groups_total": 2,
            "groups": [
                {"key": {"region": "eu"}, "count": 5, "sum": {"amount": 50}},
                {"key": {"region": "us"}, "count": 4, "sum": {"amount": 1.5}},
            ],
        }))
        .unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["key.region", "count", "sum.amount"]);
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(to_batch(json!([])).unwrap().1.num_rows(), 0);
    }
}
