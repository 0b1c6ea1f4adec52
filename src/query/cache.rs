//! The result cache: answers kept per (database version, analysis, params,
//! shards). A database version never changes, so an answer kept for one is
//! never stale and nothing is ever invalidated: entries leave least recently
//! used first once `cache.result_bytes` is reached. An answer is kept as the
//! bytes of its `result` JSON (what a response carries), with the number of
//! shards it covers; only whole answers are kept (none that left a shard out).
//!
//! The key holds the version, never the alias or the token that asked: who
//! may read a database is decided before the cache is looked at. It is the
//! sha256 of those parts, so that it has one size and can travel in a URL.
//!
//! Cluster-wide without a shared store: each key has an owner, the live
//! member rendezvous hashing picks for it; a root asks the owner (one hop,
//! `GET /v1/internal/cache/{key}`) before computing, and hands it the answer
//! after (`PUT`). An owner that does not answer soon is a miss.
//!
//! Per-shard partials are kept where they are made: the member that maps a
//! shard keeps what `map` gave for it (encoded), in its own part of the
//! cache, under [`partial_key`]. Holders are chosen by rendezvous score, so
//! the same shard goes to the same member while it is live: a query over
//! another shard set, or whose answer was pushed out, maps only the shards
//! never mapped before (`meta.cache: "partial"`, `meta.cached_shards`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::Value;
use sha2::Digest;

use crate::sync::lock;

/// One kept answer.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    /// The answer's `result`, as JSON.
    pub result: Bytes,
    /// Shards it covers.
    pub shards: usize,
    /// The database it answers about: its entries are forgotten once it is
    /// deleted.
    pub database: String,
}

/// What became of a query with respect to the cache (`meta.cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    /// Computed, some shards' partials taken from the cache.
    Partial,
    Miss,
    /// The request asked not to use it (`cache: false`, `Cache-Control:
    /// no-cache`), or the cache is off.
    Bypass,
}

impl CacheUse {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheUse::Hit => "hit",
            CacheUse::Partial => "partial",
            CacheUse::Miss => "miss",
            CacheUse::Bypass => "bypass",
        }
    }
}

/// This member's share of the cache, for `/metrics` (hits and misses are
/// counted where the query runs, in `dram_result_cache_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
}

pub(crate) struct ResultCache {
    budget: u64,
    inner: Mutex<Inner>,
    evictions: AtomicU64,
}

struct Inner {
    entries: lru::LruCache<String, Cached>,
    bytes: u64,
}

/// What an entry costs: its bytes and its key's, plus bookkeeping.
fn cost(key: &str, cached: &Cached) -> u64 {
    (key.len() + cached.result.len() + 64) as u64
}

impl ResultCache {
    /// A cache of at most `budget` bytes (0: keeps nothing).
    pub(crate) fn new(budget: u64) -> ResultCache {
        ResultCache {
            budget,
            inner: Mutex::new(Inner {
                entries: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            evictions: AtomicU64::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The answer kept for `key` (now the most recently used).
    pub(crate) fn get(&self, key: &str) -> Option<Cached> {
        lock(&self.inner).entries.get(key).cloned()
    }

    /// Keeps an answer; one larger than an eighth of the budget is not kept
    /// (it would push out many others).
    /// Returns how many answers it pushed out.
    pub(crate) fn put(&self, key: String, cached: Cached) -> u64 {
        let cost = cost(&key, &cached);
        if !self.enabled() || cost > self.budget / 8 {
            return 0;
        }
        let mut evicted = 0;
        let mut inner = lock(&self.inner);
        if let Some(old) = inner.entries.put(key.clone(), cached) {
            inner.bytes = inner.bytes.saturating_sub(self::cost(&key, &old));
        }
        inner.bytes += cost;
        while inner.bytes > self.budget {
            let Some((key, old)) = inner.entries.pop_lru() else {
                break;
            };
            inner.bytes = inner.bytes.saturating_sub(self::cost(&key, &old));
            self.evictions.fetch_add(1, Ordering::Relaxed);
            evicted += 1;
        }
        evicted
    }

    /// Forgets the answers about databases `keep` says no to; returns how
    /// many.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) -> u64 {
        let mut inner = lock(&self.inner);
        let gone: Vec<String> = inner
            .entries
            .iter()
            .filter(|(_, cached)| !keep(&cached.database))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &gone {
            if let Some(old) = inner.entries.pop(key) {
                inner.bytes = inner.bytes.saturating_sub(cost(key, &old));
            }
        }
        gone.len() as u64
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let inner = lock(&self.inner);
        CacheStats {
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: inner.entries.len() as u64,
            bytes: inner.bytes,
        }
    }
}

/// The key of a query's answer: the version (never the alias), the analysis,
/// the params with object keys sorted (absent, `null` and `{}` alike), and
/// the shards asked for, sorted (`*`: all of them).
pub(crate) fn key(
    version: &str,
    analysis: &str,
    params: Option<&Value>,
    shards: Option<&[String]>,
) -> String {
    let params = canonical_params(params);
    let shards = match shards {
        None => "*".to_string(),
        Some(ids) => {
            let mut ids = ids.to_vec();
            ids.sort();
            ids.dedup();
            serde_json::to_string(&ids).unwrap_or_default()
        }
    };
    let text = format!("{version}\0{analysis}\0{params}\0{shards}");
    hex_digest(&text)
}

/// The key of one shard's partial (what `map` gave for it, encoded as the
/// analysis encodes partials for the wire): like [`key`]'s, in a space of
/// its own, since a partial is not an answer.
pub(crate) fn partial_key(
    version: &str,
    analysis: &str,
    params: Option<&Value>,
    shard: &str,
) -> String {
    let params = canonical_params(params);
    let text = format!("partial\0{version}\0{analysis}\0{params}\0{shard}");
    hex_digest(&text)
}

/// The sha256 of `text` in hex, written through a table (`hex::encode`
/// collects one `char` at a time: a tenth of a cached answer's time).
fn hex_digest(text: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for byte in sha2::Sha256::digest(text.as_bytes()) {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    out
}

/// The params as a key holds them: object keys sorted; absent, `null` and
/// `{}` alike.
fn canonical_params(params: Option<&Value>) -> String {
    match params {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::Object(map)) if map.is_empty() => "{}".to_string(),
        Some(value) => canonical(value),
    }
}

/// How long a root waits for the owner of a key before it computes the
/// answer itself.
const OWNER_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// The headers carrying a kept answer's shard count and database on the
/// internal routes.
pub(crate) const SHARDS_HEADER: &str = "x-dram-shards";
pub(crate) const DATABASE_HEADER: &str = "x-dram-database";

/// The answer the owner at `address` keeps for `key`; `None` when it keeps
/// none, or does not answer within [`OWNER_WAIT`].
pub(crate) async fn fetch(
    client: Option<&reqwest::Client>,
    address: &str,
    secret: Option<&str>,
    key: &str,
) -> Option<Cached> {
    let client = client?;
    let url = format!("{}/v1/internal/cache/{key}", crate::net::base_url(address));
    let mut request = client.get(url).timeout(OWNER_WAIT);
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let header = |name: &str| Some(response.headers().get(name)?.to_str().ok()?.to_string());
    let shards = header(SHARDS_HEADER)?.parse().ok()?;
    let database = header(DATABASE_HEADER)?;
    let result = response.bytes().await.ok()?;
    Some(Cached {
        result,
        shards,
        database,
    })
}

/// Hands `cached` to the owner at `address` (what it keeps is its own
/// affair: an answer over its budget's share is dropped there).
pub(crate) async fn store(
    client: &reqwest::Client,
    address: &str,
    secret: Option<&str>,
    key: &str,
    cached: Cached,
) {
    let url = format!("{}/v1/internal/cache/{key}", crate::net::base_url(address));
    let mut request = client
        .put(url)
        .timeout(OWNER_WAIT * 10)
        .header(SHARDS_HEADER, cached.shards.to_string())
        .header(DATABASE_HEADER, &cached.database)
        .header("content-type", "application/json")
        .body(cached.result);
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    if let Err(e) = request.send().await {
        tracing::debug!(error = %e, address, "the result cache's owner did not take an answer");
    }
}

/// Whether `text` is a key as [`key`] makes them (what the internal cache
/// routes accept).
pub(crate) fn is_key(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// JSON text with every object's keys in sorted order.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(bytes: usize) -> Cached {
        Cached {
            result: Bytes::from(vec![b'1'; bytes]),
            shards: 1,
            database: "db".into(),
        }
    }

    #[test]
    fn keys_are_the_sha256_in_lower_case_hex() {
        for text in ["", "v1\0count\0{}\0*", "partial\0é\0x"] {
            assert_eq!(
                hex_digest(text),
                hex::encode(sha2::Sha256::digest(text.as_bytes()))
            );
        }
        assert!(is_key(&key("v1", "count", None, None)));
    }

    #[test]
    fn keys_ignore_key_order_and_empty_params_but_not_values_or_versions() {
        let a = key(
            "v1",
            "count",
            Some(&json!({"a": 1, "b": {"y": 2, "x": 1}})),
            None,
        );
        let b = key(
            "v1",
            "count",
            Some(&json!({"b": {"x": 1, "y": 2}, "a": 1})),
            None,
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            key(
                "v1",
                "count",
                Some(&json!({"a": 2, "b": {"x": 1, "y": 2}})),
                None
            )
        );
        assert_ne!(
            a,
            key(
                "v2",
                "count",
                Some(&json!({"a": 1, "b": {"x": 1, "y": 2}})),
                None
            )
        );
        assert_ne!(
            a,
            key(
                "v1",
                "group",
                Some(&json!({"a": 1, "b": {"x": 1, "y": 2}})),
                None
            )
        );
        assert_eq!(
            key("v", "c", None, None),
            key("v", "c", Some(&json!({})), None)
        );
        assert_eq!(
            key("v", "c", None, None),
            key("v", "c", Some(&Value::Null), None)
        );
        let shards = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            key("v", "c", None, Some(&shards(&["b", "a", "b"]))),
            key("v", "c", None, Some(&shards(&["a", "b"])))
        );
        assert_ne!(
            key("v", "c", None, Some(&shards(&["a"]))),
            key("v", "c", None, None)
        );
    }

    #[test]
    fn a_shard_partial_has_a_key_of_its_own() {
        let shard = vec!["s1".to_string()];
        let params = json!({"b": 1, "a": 2});
        let partial = partial_key("v", "count", Some(&params), "s1");
        assert_ne!(partial, key("v", "count", Some(&params), Some(&shard)));
        assert_eq!(
            partial,
            partial_key("v", "count", Some(&json!({"a": 2, "b": 1})), "s1")
        );
        assert_ne!(partial, partial_key("v", "count", Some(&params), "s2"));
        assert_ne!(partial, partial_key("w", "count", Some(&params), "s1"));
        assert!(is_key(&partial));
    }

    #[test]
    fn least_recently_used_answers_leave_first_within_the_budget() {
        let cache = ResultCache::new(8 * 1000);
        for i in 0..8 {
            cache.put(format!("k{i}"), answer(900));
        }
        // k0 is read: k1 is the least recently used.
        assert!(cache.get("k0").is_some());
        cache.put("k8".into(), answer(900));
        let stats = cache.stats();
        assert!(stats.bytes <= 8 * 1000, "{stats:?}");
        assert!(stats.evictions >= 1, "{stats:?}");
        assert!(cache.get("k0").is_some());
        assert!(cache.get("k1").is_none());
        assert!(cache.get("k8").is_some());
        // Replacing an entry does not count it twice.
        let before = cache.stats().bytes;
        cache.put("k8".into(), answer(900));
        assert_eq!(cache.stats().bytes, before);
    }

    #[test]
    fn answers_about_a_deleted_database_are_forgotten() {
        let cache = ResultCache::new(8 * 1000);
        cache.put("a".into(), answer(100));
        let other = Cached {
            database: "other".into(),
            ..answer(100)
        };
        cache.put("b".into(), other);
        let before = cache.stats().bytes;
        assert_eq!(cache.retain(|database| database != "db"), 1);
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some());
        assert_eq!(cache.stats().entries, 1);
        assert!(cache.stats().bytes < before);
        assert_eq!(cache.retain(|_| true), 0);
    }

    #[test]
    fn an_answer_larger_than_an_eighth_of_the_budget_is_not_kept_nor_is_any_when_off() {
        let cache = ResultCache::new(8 * 1000);
        cache.put("big".into(), answer(1000));
        assert!(cache.get("big").is_none());
        let off = ResultCache::new(0);
        assert!(!off.enabled());
        off.put("k".into(), answer(1));
        assert!(off.get("k").is_none());
    }
}
