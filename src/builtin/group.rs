//! `group`: rows of CSV, TSV or JSON-lines files grouped by the values of some
//! columns, with the count and the sums of other columns per group — SQL's
//! `SELECT by…, count(*), sum(…) … GROUP BY by…`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rows::{Columns, Format, Selection, check_column};
use crate::query::{Analysis, AnalysisError, Shard};

/// Groups a shard may hold before the query fails (memory bound).
pub const MAX_GROUPS: usize = 1_000_000;
/// Groups returned unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 10_000;

/// Grouped count and sums.
pub struct Group;

/// Params of `group`. `files`, `format` and `where` repeat `CountParams`' fields:
/// serde cannot `flatten` into a struct that denies unknown fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupParams {
    /// The column (or columns) whose values make a group.
    pub by: Columns,
    /// Numeric columns summed per group (empty cells are skipped).
    #[serde(default)]
    pub sum: Columns,
    /// `"count"` (default), `"key"`, or one of the `sum` columns: the groups come
    /// largest first (by key: in ascending order).
    #[serde(default)]
    pub order_by: Option<String>,
    /// How many groups to return (default 100, at most 10,000).
    #[serde(default)]
    pub limit: Option<usize>,
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

/// The sum of one column: exact while every value is an integer that fits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sum {
    int: i64,
    float: f64,
    is_float: bool,
}

impl Sum {
    fn add_cell(&mut self, cell: &str) -> Result<(), String> {
        let cell = cell.trim();
        if cell.is_empty() {
            return Ok(());
        }
        if let Ok(int) = cell.parse::<i64>() {
            if let Some(sum) = self.int.checked_add(int) {
                self.int = sum;
                return Ok(());
            }
            self.is_float = true;
            self.float += int as f64;
            return Ok(());
        }
        match cell.parse::<f64>() {
            Ok(float) if float.is_finite() => {
                self.is_float = true;
                self.float += float;
                Ok(())
            }
            _ => Err(format!("{cell:?} is not a number")),
        }
    }

    fn merge(&mut self, other: Sum) {
        match self.int.checked_add(other.int) {
            Some(sum) => self.int = sum,
            None => {
                self.float += other.int as f64;
                self.is_float = true;
            }
        }
        self.float += other.float;
        self.is_float |= other.is_float;
    }

    /// The sum as a JSON number: an integer while it is exact.
    pub fn value(&self) -> Value {
        if self.is_float {
            serde_json::Number::from_f64(self.int as f64 + self.float)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        } else {
            Value::from(self.int)
        }
    }

    fn as_f64(&self) -> f64 {
        self.int as f64 + self.float
    }
}

/// One group while partials are merged: the key's cells and its totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialGroup {
    pub key: Vec<String>,
    pub count: u64,
    pub sums: Vec<Sum>,
}

/// What a shard (or several, reduced) contributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupPartial {
    pub rows: u64,
    pub files: u64,
    pub groups: Vec<PartialGroup>,
}

/// One group of the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRow {
    /// Column → value (as text) of the group.
    pub key: BTreeMap<String, String>,
    pub count: u64,
    /// Column → sum, for each `sum` column.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sum: BTreeMap<String, Value>,
}

/// The answer: the largest groups, and how many there were in all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupOutput {
    /// Rows that passed `where`.
    pub rows: u64,
    pub files: u64,
    pub groups_total: usize,
    pub groups: Vec<GroupRow>,
}

/// The params, checked: what `map` and `finish` work with.
struct Plan {
    by: Vec<String>,
    sum: Vec<String>,
    order: Order,
    limit: usize,
}

enum Order {
    Count,
    Key,
    Sum(usize),
}

impl GroupParams {
    fn plan(&self) -> Result<Plan, AnalysisError> {
        let by = self.by.clone().into_vec();
        if by.is_empty() {
            return Err(AnalysisError::invalid_params(
                "by: name at least one column to group by",
            ));
        }
        let sum = self.sum.clone().into_vec();
        for column in &by {
            check_column("by", column)?;
        }
        for column in &sum {
            check_column("sum", column)?;
        }
        let order = match self.order_by.as_deref() {
            None | Some("count") => Order::Count,
            Some("key") => Order::Key,
            Some(column) => match sum.iter().position(|c| c == column) {
                Some(index) => Order::Sum(index),
                None => {
                    return Err(AnalysisError::invalid_params(format!(
                        "order_by: {column:?} is neither \"count\", \"key\" nor a sum column"
                    )));
                }
            },
        };
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(AnalysisError::invalid_params(format!(
                "limit: {limit} is out of range 1..={MAX_LIMIT}"
            )));
        }
        Ok(Plan {
            by,
            sum,
            order,
            limit,
        })
    }
}

impl Analysis for Group {
    type Params = GroupParams;
    type Partial = GroupPartial;
    type Output = GroupOutput;

    fn description(&self) -> String {
        "count and sums per group of CSV/TSV/JSON-lines rows (params: by, sum, order_by, limit, \
         files, format, where)"
            .into()
    }

    fn map(&self, params: &GroupParams, shard: &Shard) -> Result<GroupPartial, AnalysisError> {
        let plan = params.plan()?;
        let selection = Selection::new(params.files.as_deref(), params.format, &params.filter)?;
        let columns: Vec<String> = plan.by.iter().chain(&plan.sum).cloned().collect();
        let keys = plan.by.len();
        let mut groups: HashMap<Vec<String>, (u64, Vec<Sum>)> = HashMap::new();
        let mut rows = 0u64;
        let files = selection.scan(shard, &columns, |cells| {
            rows += 1;
            let (key, values) = cells.split_at(keys);
            let key: Vec<String> = key.iter().map(|c| c.to_string()).collect();
            if !groups.contains_key(&key) && groups.len() >= MAX_GROUPS {
                return Err(too_many_groups());
            }
            let (count, sums) = groups
                .entry(key)
                .or_insert_with(|| (0, vec![Sum::default(); plan.sum.len()]));
            *count += 1;
            for ((sum, cell), column) in sums.iter_mut().zip(values).zip(&plan.sum) {
                sum.add_cell(cell)
                    .map_err(|e| AnalysisError::invalid_params(format!("sum: {column}: {e}")))?;
            }
            Ok(())
        })?;
        Ok(GroupPartial {
            rows,
            files,
            groups: into_sorted(groups),
        })
    }

    fn reduce(
        &self,
        _: &GroupParams,
        partials: Vec<GroupPartial>,
    ) -> Result<GroupPartial, AnalysisError> {
        let mut merged: HashMap<Vec<String>, (u64, Vec<Sum>)> = HashMap::new();
        let mut rows = 0;
        let mut files = 0;
        for partial in partials {
            rows += partial.rows;
            files += partial.files;
            for group in partial.groups {
                if !merged.contains_key(&group.key) && merged.len() >= MAX_GROUPS {
                    return Err(too_many_groups());
                }
                let (count, sums) = merged
                    .entry(group.key)
                    .or_insert_with(|| (0, vec![Sum::default(); group.sums.len()]));
                *count += group.count;
                for (sum, other) in sums.iter_mut().zip(group.sums) {
                    sum.merge(other);
                }
            }
        }
        Ok(GroupPartial {
            rows,
            files,
            groups: into_sorted(merged),
        })
    }

    fn finish(
        &self,
        params: &GroupParams,
        partial: GroupPartial,
    ) -> Result<GroupOutput, AnalysisError> {
        let plan = params.plan()?;
        let mut groups = partial.groups;
        // Groups arrive sorted by key; a stable sort keeps that order among ties.
        match plan.order {
            Order::Key => {}
            Order::Count => groups.sort_by_key(|g| std::cmp::Reverse(g.count)),
            Order::Sum(index) => groups.sort_by(|a, b| {
                let value = |g: &PartialGroup| g.sums.get(index).map(Sum::as_f64).unwrap_or(0.0);
                value(b).total_cmp(&value(a))
            }),
        }
        let groups_total = groups.len();
        groups.truncate(plan.limit);
        let groups = groups
            .into_iter()
            .map(|group| GroupRow {
                key: plan.by.iter().cloned().zip(group.key).collect(),
                count: group.count,
                sum: plan
                    .sum
                    .iter()
                    .cloned()
                    .zip(group.sums.iter().map(Sum::value))
                    .collect(),
            })
            .collect();
        Ok(GroupOutput {
            rows: partial.rows,
            files: partial.files,
            groups_total,
            groups,
        })
    }
}

fn too_many_groups() -> AnalysisError {
    AnalysisError::failed(format!(
        "more than {MAX_GROUPS} groups: group by fewer columns, or narrow the rows with \"where\""
    ))
}

fn into_sorted(groups: HashMap<Vec<String>, (u64, Vec<Sum>)>) -> Vec<PartialGroup> {
    let mut groups: Vec<PartialGroup> = groups
        .into_iter()
        .map(|(key, (count, sums))| PartialGroup { key, count, sums })
        .collect();
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(cells: &[&str]) -> Sum {
        let mut sum = Sum::default();
        for cell in cells {
            sum.add_cell(cell).unwrap();
        }
        sum
    }

    #[test]
    fn sums_stay_integers_until_a_decimal_appears() {
        assert_eq!(sum_of(&["1", " 2 ", "", "39"]).value(), Value::from(42));
        assert_eq!(sum_of(&["1", "0.5"]).value(), Value::from(1.5));
        let big = sum_of(&[&i64::MAX.to_string(), "1"]);
        assert!(big.is_float, "overflow falls back to a float");
        assert_eq!(big.value(), Value::from(i64::MAX as f64 + 1.0));
        for bad in ["abc", "NaN", "inf", "1,5"] {
            assert!(Sum::default().add_cell(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merging_sums_is_associative_and_keeps_exactness() {
        let parts = [sum_of(&["1", "2"]), sum_of(&["3"]), sum_of(&["4", "5"])];
        let mut left = parts[0];
        left.merge(parts[1]);
        left.merge(parts[2]);
        let mut right = parts[1];
        right.merge(parts[2]);
        let mut right_total = parts[0];
        right_total.merge(right);
        assert_eq!(left.value(), Value::from(15));
        assert_eq!(left.value(), right_total.value());
    }

    fn partial(groups: &[(&str, u64, i64)]) -> GroupPartial {
        GroupPartial {
            rows: groups.iter().map(|g| g.1).sum(),
            files: 1,
            groups: groups
                .iter()
                .map(|(key, count, sum)| PartialGroup {
                    key: vec![key.to_string()],
                    count: *count,
                    sums: vec![sum_of(&[&sum.to_string()])],
                })
                .collect(),
        }
    }

    fn params(value: Value) -> GroupParams {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn reduce_merges_groups_and_finish_orders_and_limits() {
        let params = params(serde_json::json!({"by": "k", "sum": ["v"], "limit": 2}));
        let a = partial(&[("x", 1, 10), ("y", 5, 1)]);
        let b = partial(&[("x", 2, 20), ("z", 1, 100)]);
        let reduced = Group.reduce(&params, vec![a.clone(), b.clone()]).unwrap();
        let other_way = Group
            .reduce(&params, vec![b, Group.reduce(&params, vec![a]).unwrap()])
            .unwrap();
        assert_eq!(reduced, other_way, "grouping and order do not matter");
        let out = Group.finish(&params, reduced.clone()).unwrap();
        assert_eq!(out.groups_total, 3);
        assert_eq!(out.rows, 9);
        let keys: Vec<(&str, u64)> = out
            .groups
            .iter()
            .map(|g| (g.key["k"].as_str(), g.count))
            .collect();
        assert_eq!(keys, [("y", 5), ("x", 3)]);
        assert_eq!(out.groups[1].sum["v"], Value::from(30));

        let by_sum = params_with(&params, "v");
        let out = Group.finish(&by_sum, reduced.clone()).unwrap();
        assert_eq!(out.groups[0].key["k"], "z");
        let by_key = params_with(&params, "key");
        let out = Group.finish(&by_key, reduced).unwrap();
        assert_eq!(out.groups[0].key["k"], "x");
        assert_eq!(out.groups[1].key["k"], "y");
    }

    fn params_with(base: &GroupParams, order_by: &str) -> GroupParams {
        GroupParams {
            order_by: Some(order_by.into()),
            ..base.clone()
        }
    }

    #[test]
    fn bad_params_are_named() {
        let cases = [
            (
                serde_json::json!({"by": []}),
                "by: name at least one column",
            ),
            (
                serde_json::json!({"by": ""}),
                "by: a column name cannot be empty",
            ),
            (
                serde_json::json!({"by": "k", "limit": 0}),
                "limit: 0 is out of range",
            ),
            (
                serde_json::json!({"by": "k", "order_by": "v"}),
                "order_by: \"v\" is neither",
            ),
        ];
        for (value, expected) in cases {
            let error = params(value).plan().err().unwrap();
            assert!(error.message().contains(expected), "{}", error.message());
        }
        assert!(serde_json::from_value::<GroupParams>(serde_json::json!({"sum": "v"})).is_err());
        assert!(
            serde_json::from_value::<GroupParams>(serde_json::json!({"by": "k", "bogus": 1}))
                .is_err()
        );
    }
}
