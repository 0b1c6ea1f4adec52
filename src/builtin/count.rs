//! `count`: the number of rows in a shard's CSV, TSV or JSON-lines files,
//! optionally only those where some columns have given values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rows::{Format, Selection};
use crate::query::{Analysis, AnalysisError, Shard};

/// Counts rows per shard and in all.
pub struct Count;

/// Params of `count`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountParams {
    /// Glob over paths inside each shard (default: every `.csv`, `.tsv`, `.jsonl`, `.ndjson`).
    #[serde(default)]
    pub files: Option<String>,
    /// Format of the chosen files (default: from each file's extension).
    #[serde(default)]
    pub format: Option<Format>,
    /// Only rows whose columns equal these values (compared as text).
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, Value>,
}

/// Rows counted, files read, and rows per shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCount {
    pub rows: u64,
    pub files: u64,
    pub shards: BTreeMap<String, u64>,
}

impl Analysis for Count {
    type Params = CountParams;
    type Partial = RowCount;
    type Output = RowCount;

    fn description(&self) -> String {
        "rows of CSV/TSV/JSON-lines files (params: files glob, format, where {column: value})"
            .into()
    }

    fn map(&self, params: &CountParams, shard: &Shard) -> Result<RowCount, AnalysisError> {
        let selection = Selection::new(params.files.as_deref(), params.format, &params.filter)?;
        let mut rows = 0u64;
        let files = selection.scan(shard, &[], |_| {
            rows += 1;
            Ok(())
        })?;
        Ok(RowCount {
            rows,
            files,
            shards: BTreeMap::from([(shard.id().to_string(), rows)]),
        })
    }

    fn reduce(&self, _: &CountParams, partials: Vec<RowCount>) -> Result<RowCount, AnalysisError> {
        let mut total = RowCount::default();
        for partial in partials {
            total.rows += partial.rows;
            total.files += partial.files;
            for (id, rows) in partial.shards {
                *total.shards.entry(id).or_default() += rows;
            }
        }
        Ok(total)
    }

    fn finish(&self, _: &CountParams, total: RowCount) -> Result<RowCount, AnalysisError> {
        Ok(total)
    }
}
