//! The databases scenarios publish, and the answers queries must give.
//!
//! A database has `shards` shards of CSV files with rows `key,value` (eight
//! keys, integer values drawn from the run's seed). The reference answer of the
//! `group` analysis (count and sum of `value` per `key`) is computed here by
//! reading the published files, independently of dram's code.

use std::collections::BTreeMap;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

/// The params every scenario query sends to the built-in `group` analysis.
/// Computed every time (`cache: false`): the scenarios and benchmarks
/// exercise the fan-out, not the result cache.
pub fn query_params() -> Value {
    json!({
        "params": {"by": "key", "sum": "value", "order_by": "key", "limit": 10000},
        "cache": false
    })
}

/// Count and sum of `value` per key, and the rows in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub rows: u64,
    pub groups: BTreeMap<String, (u64, i64)>,
}

/// A database as published: its files and the answer it must give.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub shards: usize,
    pub files: Vec<(String, Vec<u8>)>,
    pub answer: Answer,
}

/// Generates a database: `shards` × `files_per_shard` files of `rows` rows.
pub fn dataset(
    name: &str,
    shards: usize,
    files_per_shard: usize,
    rows: usize,
    rng: &mut StdRng,
) -> Dataset {
    let mut files = Vec::new();
    for shard in 0..shards {
        for file in 0..files_per_shard {
            let mut text = String::from("key,value\n");
            for _ in 0..rows {
                let key = rng.random_range(0..8);
                let value: i64 = rng.random_range(-1000..=1000);
                text.push_str(&format!("k{key},{value}\n"));
            }
            files.push((format!("shards/{shard}/part-{file}.csv"), text.into_bytes()));
        }
    }
    let answer = reference(&files);
    Dataset {
        name: name.to_string(),
        shards,
        files,
        answer,
    }
}

/// The answer computed from the files themselves.
fn reference(files: &[(String, Vec<u8>)]) -> Answer {
    let mut answer = Answer::default();
    for (_, bytes) in files {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines().skip(1) {
            let Some((key, value)) = line.split_once(',') else {
                continue;
            };
            let Ok(value) = value.parse::<i64>() else {
                continue;
            };
            let group = answer.groups.entry(key.to_string()).or_default();
            group.0 += 1;
            group.1 += value;
            answer.rows += 1;
        }
    }
    answer
}

/// Reads a `group` result (`{"rows", "groups": [{"key": {"key"}, "count",
/// "sum": {"value"}}]}`) into an `Answer`; `None` if it is not one.
pub fn parse_answer(result: &Value) -> Option<Answer> {
    let mut answer = Answer {
        rows: result["rows"].as_u64()?,
        groups: BTreeMap::new(),
    };
    for group in result["groups"].as_array()? {
        let key = group["key"]["key"].as_str()?.to_string();
        let count = group["count"].as_u64()?;
        let sum = group["sum"]["value"].as_i64()?;
        answer.groups.insert(key, (count, sum));
    }
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn reference_counts_every_row() {
        let mut rng = StdRng::seed_from_u64(7);
        let data = dataset("d", 3, 2, 10, &mut rng);
        assert_eq!(data.files.len(), 6);
        assert_eq!(data.answer.rows, 60);
        let counted: u64 = data.answer.groups.values().map(|g| g.0).sum();
        assert_eq!(counted, 60);
        let result = json!({"rows": 2, "groups": [
            {"key": {"key": "k1"}, "count": 2, "sum": {"value": -5}}
        ]});
        let parsed = parse_answer(&result).unwrap();
        assert_eq!(parsed.groups["k1"], (2, -5));
        assert!(parse_answer(&json!({"rows": 1})).is_none());
    }
}
