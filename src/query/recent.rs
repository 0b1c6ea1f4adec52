//! The recent queries of each database: the distinct cacheable queries this
//! member was the root of, most recently asked first, at most
//! `cache.warm_queries` per database. An alias moved with `"warm": true`
//! replays those of its old database against the new one before it moves
//! (see `warm`), so that the first users of the new version find their
//! answers kept.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sync::lock;

/// How many databases the log follows (least recently queried out first).
const DATABASES: usize = 256;

/// One query as a root received it (the database aside).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecentQuery {
    pub analysis: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<String>>,
    /// When it was last asked (Unix milliseconds).
    pub at_ms: u64,
}

impl RecentQuery {
    /// What makes two queries the same one: the result cache's key without
    /// a version.
    pub(crate) fn identity(&self) -> String {
        super::cache::key(
            "",
            &self.analysis,
            self.params.as_ref(),
            self.shards.as_deref(),
        )
    }
}

pub(crate) struct RecentQueries {
    per_database: usize,
    log: Mutex<lru::LruCache<String, lru::LruCache<String, RecentQuery>>>,
}

impl RecentQueries {
    /// A log of at most `per_database` queries per database (0: none).
    pub(crate) fn new(per_database: usize) -> RecentQueries {
        RecentQueries {
            per_database,
            log: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(DATABASES).expect("not zero"),
            )),
        }
    }

    /// Notes that `query` was asked of `database`.
    pub(crate) fn note(&self, database: &str, query: RecentQuery) {
        let Some(capacity) = std::num::NonZeroUsize::new(self.per_database) else {
            return;
        };
        let mut log = lock(&self.log);
        let queries = log.get_or_insert_mut(database.to_string(), || lru::LruCache::new(capacity));
        queries.put(query.identity(), query);
    }

    /// The queries asked of `database`, most recent first.
    pub(crate) fn of(&self, database: &str) -> Vec<RecentQuery> {
        let log = lock(&self.log);
        log.peek(database)
            .map(|queries| queries.iter().map(|(_, q)| q.clone()).collect())
            .unwrap_or_default()
    }
}

/// The `limit` most recent distinct queries of several members' logs.
pub(crate) fn merge(
    logs: impl IntoIterator<Item = Vec<RecentQuery>>,
    limit: usize,
) -> Vec<RecentQuery> {
    let mut newest: std::collections::HashMap<String, RecentQuery> = Default::default();
    for query in logs.into_iter().flatten() {
        let identity = query.identity();
        match newest.get(&identity) {
            Some(known) if known.at_ms >= query.at_ms => {}
            _ => {
                newest.insert(identity, query);
            }
        }
    }
    let mut all: Vec<RecentQuery> = newest.into_values().collect();
    all.sort_by(|a, b| {
        b.at_ms
            .cmp(&a.at_ms)
            .then_with(|| a.analysis.cmp(&b.analysis))
    });
    all.truncate(limit);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(analysis: &str, params: Value, at_ms: u64) -> RecentQuery {
        RecentQuery {
            analysis: analysis.into(),
            params: Some(params),
            shards: None,
            at_ms,
        }
    }

    #[test]
    fn the_log_keeps_distinct_queries_most_recent_first_within_its_bound() {
        let log = RecentQueries::new(2);
        log.note("db", query("count", json!({"a": 1, "b": 2}), 1));
        log.note("db", query("group", json!({}), 2));
        // The same query, keys in another order: asked again, now the newest.
        log.note("db", query("count", json!({"b": 2, "a": 1}), 3));
        let recent = log.of("db");
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].at_ms, 3);
        assert_eq!(recent[1].analysis, "group");
        log.note("db", query("files", json!({}), 4));
        let names: Vec<String> = log.of("db").into_iter().map(|q| q.analysis).collect();
        assert_eq!(names, ["files", "count"]);
        assert!(log.of("other").is_empty());
        let off = RecentQueries::new(0);
        off.note("db", query("count", json!({}), 1));
        assert!(off.of("db").is_empty());
    }

    #[test]
    fn merged_logs_keep_each_query_once_at_its_latest() {
        let a = vec![query("count", json!({}), 5), query("group", json!({}), 1)];
        let b = vec![query("count", json!({}), 7), query("files", json!({}), 6)];
        let merged = merge([a, b], 10);
        let seen: Vec<(String, u64)> = merged
            .iter()
            .map(|q| (q.analysis.clone(), q.at_ms))
            .collect();
        assert_eq!(
            seen,
            [
                ("count".into(), 7),
                ("files".into(), 6),
                ("group".into(), 1)
            ]
        );
        assert_eq!(merge([seen_none()], 10), Vec::new());
        let limited = merge(
            [vec![query("a", json!({}), 1), query("b", json!({}), 2)]],
            1,
        );
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].analysis, "b");
    }

    fn seen_none() -> Vec<RecentQuery> {
        Vec::new()
    }
}
