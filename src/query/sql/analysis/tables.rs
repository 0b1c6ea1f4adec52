//! Tables and the bytes between nodes: registering a shard's tables for
//! `map_sql`, Arrow IPC, and one schema for what shards saw differently (CSV
//! schemas are inferred per shard: one shard's `amount` may be integers,
//! another's decimals).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::object_store::ObjectMeta;
use datafusion::object_store::path::Path;
use datafusion::prelude::SessionContext;

use crate::query::sql::tables::{discover, infer_schema, listing_table};
use crate::query::{AnalysisError, DataDir};

pub(super) fn failed(what: &str, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::failed(format!("{what}: {e}"))
}

/// Registers the tables of one part (see `query::sql::tables`: folders and
/// single files of Parquet, CSV, TSV or JSON lines) from its local files;
/// returns their names. Lazy databases fetch the tables' files here.
pub(super) async fn register(
    ctx: &SessionContext,
    data: &DataDir,
) -> Result<Vec<String>, AnalysisError> {
    let files = data.files();
    let tables =
        discover(files.iter().map(String::as_str)).map_err(AnalysisError::invalid_params)?;
    for (name, (format, paths)) in &tables {
        let mut urls = Vec::with_capacity(paths.len());
        let mut objects = Vec::with_capacity(paths.len());
        for path in paths {
            let local = data.path(path)?;
            let local = std::fs::canonicalize(&local).unwrap_or(local);
            let location = Path::from_absolute_path(&local)
                .map_err(|e| failed(&format!("table {name}"), e))?;
            objects.push(ObjectMeta {
                location,
                last_modified: Default::default(),
                size: data.size(path)?,
                e_tag: None,
                version: None,
            });
            let url = ListingTableUrl::parse(local.display().to_string())
                .map_err(|e| failed(&format!("table {name}"), e))?;
            urls.push(url);
        }
        let schema = infer_schema(ctx, "file:///", *format, &objects)
            .await
            .map_err(|e| failed(&format!("table {name}"), e))?;
        let table = listing_table(name, urls, *format, schema, None)?;
        ctx.register_table(name.as_str(), table)
            .map_err(|e| failed(&format!("table {name}"), e))?;
    }
    Ok(tables.into_keys().collect())
}

pub(crate) fn to_ipc(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, AnalysisError> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, schema).map_err(|e| failed("arrow ipc", e))?;
    for batch in batches {
        writer.write(batch).map_err(|e| failed("arrow ipc", e))?;
    }
    writer.finish().map_err(|e| failed("arrow ipc", e))?;
    drop(writer);
    Ok(out)
}

pub(super) fn from_ipc(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), AnalysisError> {
    let reader = StreamReader::try_new(bytes, None).map_err(|e| failed("arrow ipc", e))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed("arrow ipc", e))?;
    Ok((schema, batches))
}

/// The type two shards' inferences of one column agree on: the wider number,
/// or text when they are not both numbers.
fn wider(a: &DataType, b: &DataType) -> DataType {
    use DataType::*;
    if a == b {
        return a.clone();
    }
    match (a, b) {
        (Null, other) | (other, Null) => other.clone(),
        (x, y) if x.is_integer() && y.is_integer() => Int64,
        (x, y) if x.is_numeric() && y.is_numeric() => Float64,
        _ => Utf8,
    }
}

/// One schema for a table the shards saw with `schemas`: the columns of all
/// of them in the order first seen, each of the wider type, nullable when
/// any shard's is (or a shard lacks it).
pub(crate) fn unify(schemas: &[SchemaRef]) -> SchemaRef {
    let mut fields: Vec<Field> = Vec::new();
    for schema in schemas {
        for field in schema.fields() {
            match fields.iter_mut().find(|f| f.name() == field.name()) {
                Some(known) => {
                    let data_type = wider(known.data_type(), field.data_type());
                    let nullable = known.is_nullable() || field.is_nullable();
                    *known = Field::new(known.name(), data_type, nullable);
                }
                None => fields.push(field.as_ref().clone()),
            }
        }
    }
    for field in &mut fields {
        if schemas
            .iter()
            .any(|s| s.field_with_name(field.name()).is_err())
        {
            *field = field.clone().with_nullable(true);
        }
    }
    Arc::new(Schema::new(fields))
}

/// `batch` as `schema`: columns matched by name (by position when the names
/// repeat, as in `SELECT a, a`), cast where the types differ; missing ones
/// null when `missing_as_null`, else an error (a shard's plan was not cut as
/// the root's).
pub(super) fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
    missing_as_null: bool,
) -> Result<RecordBatch, AnalysisError> {
    if batch.schema() == *schema {
        return Ok(batch.clone());
    }
    let same_names = batch.num_columns() == schema.fields().len()
        && batch
            .schema()
            .fields()
            .iter()
            .zip(schema.fields())
            .all(|(a, b)| a.name() == b.name());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let column = if same_names {
            Some(batch.column(i).clone())
        } else {
            batch.column_by_name(field.name()).cloned()
        };
        columns.push(match column {
            Some(column) if column.data_type() == field.data_type() => column,
            Some(column) => cast(&column, field.data_type())
                .map_err(|e| failed(&format!("column {}", field.name()), e))?,
            None if missing_as_null => new_null_array(field.data_type(), batch.num_rows()),
            None => {
                return Err(AnalysisError::failed(format!(
                    "a shard's partial result has no column {} (it has {:?}): the shard planned \
                     the query differently; send map_sql and reduce_sql instead",
                    field.name(),
                    batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                )));
            }
        });
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| failed("partial results", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array};

    #[test]
    fn shards_inferring_different_types_get_the_wider_one() {
        let ints = Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, true),
            Field::new("amount", DataType::Int64, false),
        ]));
        let floats = Arc::new(Schema::new(vec![
            Field::new("amount", DataType::Float64, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let one = unify(&[ints.clone(), floats]);
        let types: Vec<_> = one
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable()))
            .collect();
        assert_eq!(
            types,
            vec![
                ("region", DataType::Utf8, true),
                ("amount", DataType::Float64, true),
                ("note", DataType::Utf8, true),
            ]
        );
        let batch = RecordBatch::try_new(
            ints,
            vec![
                Arc::new(datafusion::arrow::array::StringArray::from(vec!["eu"])),
                Arc::new(Int64Array::from(vec![7])),
            ],
        )
        .unwrap();
        let conformed = conform(&batch, &one, true).unwrap();
        assert!(conform(&batch, &one, false).is_err());
        let amount = conformed
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(amount.value(0), 7.0);
        assert_eq!(conformed.column(2).null_count(), 1);
        assert_eq!(wider(&DataType::Int32, &DataType::Utf8), DataType::Utf8);
    }
}
