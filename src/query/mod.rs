//! Analyses and queries. A team implements [`Analysis`] (`map` per shard, an
//! associative `reduce`, `finish`), registers it on the node builder, and the node
//! serves it at `POST /v1/query/{database_or_alias}/{analysis}`.
//!
//! A query resolves its alias once and pins the database it names: a concurrent
//! alias swap never mixes two versions in one answer. `map` runs on the blocking
//! pool, at most `query.max_concurrent_maps` at once over all queries; a query past
//! its deadline is cancelled (its maps see it through [`Shard::is_cancelled`]).
//!
//! [`Queries`] is the component: it runs queries on this member's data
//! (`Local`), reaches the other holders through gossip (`Membership`), and
//! holds the analyses it serves and the SQL engine.
//!
//! Files: `analysis.rs` (the trait, errors, the registry), `shard.rs` (what `map`
//! sees), `leaf.rs` (running maps and the pre-reduce), `root.rs` (a query's
//! root), `fanout.rs` (holders, map requests, retries), `error.rs`.

mod analysis;
pub(crate) mod cache;
mod error;
pub(crate) mod fanout;
mod latency;
pub(crate) mod leaf;
mod recent;
pub(crate) mod root;
mod shard;
#[cfg(feature = "sql")]
pub(crate) mod sql;
mod warm;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use analysis::{Analyses, Analysis, AnalysisError, AnalysisErrorKind, AnalysisInfo};
pub use cache::{CacheStats, CacheUse};
pub use error::QueryError;
pub use leaf::cancellation;
pub use recent::RecentQuery;
pub use root::{FORWARDED_HEADER, MapRequest, PARTIAL_MEDIA_TYPE};
pub use shard::{DataDir, Shard, ShardFile};
pub use warm::{Move, Warmed};

use std::sync::Arc;

use crate::cluster::Membership;
use crate::local::{Local, NodeError};

/// How often keeping an answer also forgets those about deleted databases.
const FORGET_EVERY: Duration = Duration::from_secs(1);

/// Runs queries: this member is the root of the ones asked of it, and the
/// leaf of the map requests other roots send it. Cheap to clone.
#[derive(Clone)]
pub struct Queries {
    local: Local,
    inner: Arc<QueriesInner>,
}

struct QueriesInner {
    /// The other members, for a query's holders (`None`: a node alone,
    /// started without HTTP).
    membership: Option<Arc<Membership>>,
    /// The analyses this node serves.
    analyses: Analyses,
    /// The distributed SQL engine (its worker listens once the node serves).
    #[cfg(feature = "sql")]
    sql: Option<Arc<sql::SqlEngine>>,
    /// Answers kept by database version (`cache.result_bytes`).
    cache: cache::ResultCache,
    /// Round trips of map requests this node sent as root: hedges and the
    /// choice of holder go by them.
    latencies: latency::Latencies,
    /// When the cache last forgot the answers about deleted databases.
    last_forget: std::sync::Mutex<Option<Instant>>,
    /// The recent cacheable queries of each database this member was the
    /// root of (`cache.warm_queries`), for warm alias moves.
    recent: recent::RecentQueries,
    /// Answers on their way to their key's owner (a warm alias move waits
    /// for them before the alias moves).
    storing: std::sync::atomic::AtomicUsize,
}

impl Queries {
    pub(crate) fn new(
        local: Local,
        membership: Option<Arc<Membership>>,
        analyses: Analyses,
        #[cfg(feature = "sql")] sql: Option<Arc<sql::SqlEngine>>,
    ) -> Queries {
        let cache = cache::ResultCache::new(local.config().cache.result_bytes);
        let recent = recent::RecentQueries::new(local.config().cache.warm_queries);
        Queries {
            local,
            inner: Arc::new(QueriesInner {
                membership,
                analyses,
                #[cfg(feature = "sql")]
                sql,
                cache,
                latencies: latency::Latencies::default(),
                last_forget: Default::default(),
                recent,
                storing: Default::default(),
            }),
        }
    }

    /// The result cache's counters and size.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// The analyses this node serves.
    pub fn analyses(&self) -> &Analyses {
        &self.inner.analyses
    }

    fn membership(&self) -> Option<&Arc<Membership>> {
        self.inner.membership.as_ref()
    }

    /// Stops the SQL engine's worker.
    pub(crate) fn shutdown(&self) {
        #[cfg(feature = "sql")]
        if let Some(engine) = &self.inner.sql {
            engine.shutdown();
        }
    }
}

/// The body of `POST /v1/query/{database_or_alias}/{analysis}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The analysis's parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// Shards to map; all of the database's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<String>>,
    /// Deadline in milliseconds (default `query.timeout_ms`, at most
    /// `query.max_timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Answer without the shards no live member holds (listed in
    /// `meta.missing_shards`) instead of failing with 503.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_partial: bool,
    /// `false`: neither take the answer from the result cache nor keep it
    /// there (HTTP: also `Cache-Control: no-cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

/// A query's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryResponse {
    pub result: serde_json::Value,
    pub meta: QueryMeta,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryMeta {
    /// The database that answered (the alias resolved).
    pub database: String,
    /// Its version (sha256 of its manifest).
    pub version: String,
    /// The alias the request named, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Number of shards mapped.
    pub shards: usize,
    /// The nodes that mapped them, with their shards and timings.
    pub nodes: Vec<NodeMeta>,
    /// Shards mapped again on another holder after a holder failed.
    pub retries: usize,
    /// Holders that did not answer within `query.holder_timeout_ms`: their
    /// shards were also asked of other holders (the first answer won).
    #[serde(default)]
    pub hedges: usize,
    /// Shards left out (only with `allow_partial`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_shards: Vec<String>,
    pub took_ms: u64,
    /// `hit` (the answer was kept for this version: nothing was mapped),
    /// `partial` (computed, some shards' partials taken from the cache of
    /// the member that holds them), `miss` (computed), or `bypass` (not
    /// looked for). A computed answer is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Shards whose partials came from the cache (`cache: "partial"`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_shards: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A query's answer with its result as a value, as JSON text, or both
/// (whichever it was made as: computed, or kept in the result cache).
struct Answer {
    value: Option<serde_json::Value>,
    json: Option<bytes::Bytes>,
    meta: QueryMeta,
}

impl From<QueryResponse> for Answer {
    fn from(response: QueryResponse) -> Answer {
        Answer {
            value: Some(response.result),
            json: None,
            meta: response.meta,
        }
    }
}

impl Answer {
    fn into_response(self, analysis_name: &str) -> Result<QueryResponse, QueryError> {
        let result = match (self.value, self.json) {
            (Some(value), _) => value,
            (None, Some(json)) => serde_json::from_slice(&json).map_err(|e| {
                let failed = AnalysisError::failed(format!("cached answer: {e}"));
                QueryError::from_analysis(analysis_name, None, failed)
            })?,
            (None, None) => serde_json::Value::Null,
        };
        Ok(QueryResponse {
            result,
            meta: self.meta,
        })
    }

    /// `{"result": …, "meta": …}`, the result's text as it is. (A JSON value
    /// and the meta always serialize.)
    fn into_json(self) -> bytes::Bytes {
        let json = match (self.json, self.value) {
            (Some(json), _) => json,
            (None, value) => serde_json::to_vec(&value.unwrap_or_default())
                .unwrap_or_default()
                .into(),
        };
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + meta.len() + 20);
        out.extend_from_slice(br#"{"result":"#);
        out.extend_from_slice(&json);
        out.extend_from_slice(br#","meta":"#);
        out.extend_from_slice(&meta);
        out.push(b'}');
        out.into()
    }
}

/// A query's place in the result cache (see [`Queries::look_up`]).
pub(crate) struct Looked {
    target: String,
    database: String,
    version: String,
    key: String,
    /// The key's owner (its HTTP address) when it is another member.
    owner: Option<String>,
    found: Option<cache::Cached>,
}

impl Looked {
    /// The kept answer's result (JSON) and its meta, if there is one.
    pub(crate) fn hit(&self, started: Instant) -> Option<(bytes::Bytes, QueryMeta)> {
        let found = self.found.as_ref()?;
        Some((
            found.result.clone(),
            QueryMeta {
                alias: (self.target != self.database).then(|| self.target.clone()),
                database: self.database.clone(),
                version: self.version.clone(),
                shards: found.shards,
                nodes: Vec::new(),
                retries: 0,
                hedges: 0,
                missing_shards: Vec::new(),
                took_ms: started.elapsed().as_millis() as u64,
                cache: Some(CacheUse::Hit.as_str().into()),
                cached_shards: 0,
            },
        ))
    }
}

/// One node's part in a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub node: String,
    pub shards: usize,
    /// From sending its map request to holding its decoded partial.
    pub took_ms: u64,
    /// Set when this node failed (its shards were retried elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Queries {
    /// Runs an analysis over a database (or alias): this node is the root. It
    /// maps the shards it holds itself, sends one map request to a holder of the
    /// others (see `root`), reduces every partial and finishes.
    pub async fn query(
        &self,
        target: &str,
        analysis_name: &str,
        request: QueryRequest,
    ) -> Result<QueryResponse, QueryError> {
        self.query_or_forward(target, analysis_name, request, true)
            .await
    }

    /// `query`; when this node has not heard of `target` yet and `may_forward`,
    /// the query goes to a member whose registry is ahead (once: a forwarded
    /// query is not forwarded again).
    pub async fn query_or_forward(
        &self,
        target: &str,
        analysis_name: &str,
        request: QueryRequest,
        may_forward: bool,
    ) -> Result<QueryResponse, QueryError> {
        self.answer(target, analysis_name, request, may_forward)
            .await?
            .into_response(analysis_name)
    }

    /// `query_or_forward`, its answer as the JSON text of the HTTP API: an
    /// answer kept in the result cache is written as it was kept, never
    /// parsed again.
    pub async fn query_json(
        &self,
        target: &str,
        analysis_name: &str,
        request: QueryRequest,
        may_forward: bool,
    ) -> Result<bytes::Bytes, QueryError> {
        let answer = self.answer(target, analysis_name, request, may_forward);
        Ok(answer.await?.into_json())
    }

    async fn answer(
        &self,
        target: &str,
        analysis_name: &str,
        request: QueryRequest,
        may_forward: bool,
    ) -> Result<Answer, QueryError> {
        // A node that has just started may not have met its cluster yet: it
        // waits (a little) for a member that knows the target, rather than
        // answering 404 for a database the cluster has.
        let until = Instant::now() + root::VIEW_WAIT;
        while may_forward && matches!(self.local.resolve(target), Err(NodeError::NotFound { .. })) {
            if let Some(answer) = self.forward(target, analysis_name, &request).await {
                return answer.map(Answer::from);
            }
            let settled = match self.membership() {
                Some(membership) => membership.has_settled().await,
                None => true,
            };
            if settled || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Counted where it runs: a forwarded query counts on the member that ran it.
        let started = Instant::now();
        let result = self.run_query(target, analysis_name, request).await;
        let analysis = match self.analyses().get(analysis_name) {
            Some(_) => analysis_name,
            None => crate::observe::metrics::UNKNOWN_ANALYSIS,
        };
        let outcome = result.as_ref().map_or_else(QueryError::code, |_| "ok");
        self.local
            .metrics()
            .query_done(analysis, outcome, started.elapsed());
        result
    }

    /// `compute_query`, through the result cache.
    async fn run_query(
        &self,
        target: &str,
        analysis_name: &str,
        request: QueryRequest,
    ) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let Some(looked) = self.look_up(target, analysis_name, &request).await else {
            let mut answer = self.compute_query(target, analysis_name, request).await?;
            answer.meta.cache = Some(CacheUse::Bypass.as_str().into());
            return Ok(answer.into());
        };
        if let Some((result, meta)) = looked.hit(started) {
            return Ok(Answer {
                value: None,
                json: Some(result),
                meta,
            });
        }
        let mut answer = self.compute_query(target, analysis_name, request).await?;
        let outcome = match answer.meta.cached_shards {
            0 => CacheUse::Miss,
            _ => CacheUse::Partial,
        };
        answer.meta.cache = Some(outcome.as_str().into());
        let json = serde_json::to_vec(&answer.result)
            .ok()
            .map(bytes::Bytes::from);
        if let Some(json) = &json {
            self.keep(&looked, &answer.meta, json.clone());
        }
        Ok(Answer {
            value: Some(answer.result),
            json,
            meta: answer.meta,
        })
    }

    /// Where `request`'s answer would be in the result cache, and whether it
    /// is (asked of the key's owner); `None` when the cache is not to be
    /// used: off, `cache: false`, an analysis that does not cache, or a
    /// target that is not ready (its error comes from the query itself).
    pub(crate) async fn look_up(
        &self,
        target: &str,
        analysis_name: &str,
        request: &QueryRequest,
    ) -> Option<Looked> {
        let cache = &self.inner.cache;
        let cacheable = self.cacheable(analysis_name, request.params.as_ref());
        let metrics = self.local.metrics();
        if !cache.enabled() || request.cache == Some(false) || !cacheable {
            metrics.result_cache(CacheUse::Bypass.as_str());
            return None;
        }
        let database = self.local.resolve(target).ok()?;
        let version = self.local.ready_version(&database).ok()?;
        let key = cache::key(
            &version,
            analysis_name,
            request.params.as_ref(),
            request.shards.as_deref(),
        );
        let owner = self.cache_owner(&key).await;
        let found = match &owner {
            None => cache.get(&key),
            Some(owner) => cache::fetch(self.peer_client(), owner, self.peer_secret(), &key).await,
        };
        let outcome = if found.is_some() {
            CacheUse::Hit
        } else {
            CacheUse::Miss
        };
        metrics.result_cache(outcome.as_str());
        self.note_recent(&database, analysis_name, request);
        Some(Looked {
            target: target.to_string(),
            database,
            version,
            key,
            owner,
            found,
        })
    }

    /// Whether answers of `analysis_name` with `params` may be kept: the
    /// analysis says its answers depend on the data alone, and for the
    /// built-in `sql`, the query calls nothing that changes (no `now()`, no
    /// `random()`).
    fn cacheable(&self, analysis_name: &str, params: Option<&serde_json::Value>) -> bool {
        let cacheable = match self.analyses().get(analysis_name) {
            Some(analysis) => analysis.cacheable(),
            None => false,
        };
        #[cfg(feature = "sql")]
        let cacheable = cacheable
            && (!self.serves_builtin_sql(analysis_name)
                || sql::analysis::repeatable_params(params));
        #[cfg(not(feature = "sql"))]
        let _ = params;
        cacheable
    }

    /// The HTTP address of the live member that owns `key` in the result
    /// cache (rendezvous hashing over the live members); `None` when it is
    /// this member, or this member is alone.
    async fn cache_owner(&self, key: &str) -> Option<String> {
        let members = self.membership()?.members_for_queries().await;
        let own = self.local.id();
        let others: Vec<_> = members
            .iter()
            .filter(|m| m.live && m.id != own)
            .filter_map(|m| Some((m.id.as_str(), m.node.as_ref()?)))
            .collect();
        if others.is_empty() {
            return None;
        }
        let key_hash = crate::placement::stable_hash(key);
        let score = |id: &str| crate::placement::score_of_hashed(key_hash, id, 1);
        let (_, owner) = others
            .iter()
            .map(|(id, node)| (*id, Some(*node)))
            .chain([(own, None)])
            .map(|(id, node)| ((score(id), id), node))
            .max_by(|(a, _), (b, _)| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)))?;
        owner.map(crate::cluster::membership::NodeInfo::url)
    }

    fn peer_client(&self) -> Option<&reqwest::Client> {
        self.membership().map(|m| m.http_client())
    }

    fn peer_secret(&self) -> Option<&str> {
        self.local.config().auth.peer_secret()
    }

    /// Keeps a whole answer (none that left a shard out), computed on the
    /// version looked up, with the key's owner.
    pub(crate) fn keep(&self, looked: &Looked, meta: &QueryMeta, result: bytes::Bytes) {
        if !meta.missing_shards.is_empty() || meta.version != looked.version {
            return;
        }
        let cached = cache::Cached {
            result,
            shards: meta.shards,
            database: looked.database.clone(),
        };
        match (&looked.owner, self.peer_client()) {
            (Some(owner), Some(client)) => {
                let (client, owner, key) = (client.clone(), owner.clone(), looked.key.clone());
                let secret = self.peer_secret().map(str::to_string);
                // The answer is given now; the owner is told on the side.
                let inner = self.inner.clone();
                inner.storing.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    cache::store(&client, &owner, secret.as_deref(), &key, cached).await;
                    inner.storing.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ => self.keep_here(looked.key.clone(), cached),
        }
    }

    /// Waits (at most `limit`) until the answers on their way to their
    /// owners have arrived.
    pub(crate) async fn stored(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.inner.storing.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Keeps an answer in this member's own part of the result cache.
    pub(crate) fn keep_here(&self, key: String, cached: cache::Cached) {
        self.forget_deleted();
        let evicted = self.inner.cache.put(key, cached);
        if evicted > 0 {
            self.local.metrics().result_cache_evicted(evicted);
        }
    }

    /// Forgets the kept answers about databases deleted meanwhile (they can
    /// no longer be asked for, and would only hold memory until pushed out):
    /// at most once per `FORGET_EVERY`, so that keeping answers does not read
    /// the registry each time.
    fn forget_deleted(&self) {
        {
            let mut last = crate::sync::lock(&self.inner.last_forget);
            if last.is_some_and(|at| at.elapsed() < FORGET_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Ok(registry) = self.local.registry() else {
            return;
        };
        let defined = |database: &str| {
            registry
                .definitions
                .get(database)
                .is_some_and(|d| d.definition.is_some())
        };
        let forgotten = self.inner.cache.retain(defined);
        if forgotten > 0 {
            tracing::debug!(forgotten, "answers about deleted databases forgotten");
        }
    }

    /// An answer in this member's own part of the result cache (asked by
    /// another member's query).
    pub(crate) fn kept_here(&self, key: &str) -> Option<cache::Cached> {
        self.inner.cache.get(key)
    }

    async fn compute_query(
        &self,
        target: &str,
        analysis_name: &str,
        request: QueryRequest,
    ) -> Result<QueryResponse, QueryError> {
        #[cfg(feature = "sql")]
        if let Some(answer) = self.run_sql(target, analysis_name, &request).await {
            return answer;
        }
        let started = Instant::now();
        let analysis = self
            .analyses()
            .get(analysis_name)
            .ok_or_else(|| QueryError::UnknownAnalysis(analysis_name.to_string()))?;
        let timeout_ms = self.query_timeout(request.timeout_ms)?;
        let database = self.local.resolve(target)?;
        let version = self.local.ready_version(&database)?;
        let shard_ids = self.chosen_shards(&database, request.shards.clone())?;
        let params = analysis
            .params(request.params.clone())
            .map_err(|e| QueryError::from_analysis(analysis_name, None, e))?;
        let query = root::RootQuery::new(
            &database,
            &version,
            analysis_name,
            analysis.clone(),
            params.clone(),
            &request,
            timeout_ms,
        );
        let (result, gathered) = root::conclude(
            &query,
            Some(&self.local.map_slots()),
            timeout_ms,
            self.gather_or_finish(&query, shard_ids, true),
        )
        .await?;
        Ok(QueryResponse {
            result,
            meta: gathered.answered(target, database, version, started),
        })
    }

    /// Maps `shard_ids` of a database on this node and reduces them into one
    /// partial, handed back in `form` (itself, encoded for another member,
    /// or finished when this member maps every shard of the query: in the
    /// same trip to the blocking pool as the reduce); with how many shards'
    /// partials came from the cache. Every handle is opened before any map
    /// runs: the query reads this version whatever happens to the alias
    /// meanwhile. A shard whose partial this member's result cache keeps is
    /// not mapped again; the partials of those mapped are kept (when the
    /// query may use the cache).
    pub(crate) async fn map_here_as(
        &self,
        query: &root::RootQuery,
        shard_ids: &[String],
        form: leaf::LeafForm,
    ) -> Result<(leaf::LeafOutput, usize), QueryError> {
        let partials = query.partials
            && self.inner.cache.enabled()
            && self.cacheable(&query.analysis_name, query.raw_params.as_ref());
        let partial_key = |id: &str| {
            cache::partial_key(
                &query.version,
                &query.analysis_name,
                query.raw_params.as_ref(),
                id,
            )
        };
        let mut cached = Vec::new();
        let mut to_map = Vec::with_capacity(shard_ids.len());
        for id in shard_ids {
            match partials.then(|| self.inner.cache.get(&partial_key(id))) {
                Some(Some(kept)) => cached.push((id.clone(), kept.result)),
                _ => to_map.push(id.clone()),
            }
        }
        if partials {
            let metrics = self.local.metrics();
            metrics.result_cache_shards(CacheUse::Hit.as_str(), cached.len() as u64);
            metrics.result_cache_shards(CacheUse::Miss.as_str(), to_map.len() as u64);
        }
        let cached_count = cached.len();
        let _load = self.local.track_load();
        let cancel = CancellationToken::new();
        let _cancel_on_drop = cancel.clone().drop_guard();
        let runtime = tokio::runtime::Handle::current();
        let database = &query.database;
        let global = match self.local.global(database) {
            Ok(context) => Some(DataDir::new(context, runtime.clone(), cancel.clone())),
            Err(NodeError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let mut handles = Vec::with_capacity(to_map.len());
        let shards = to_map
            .iter()
            .map(|id| {
                let data = DataDir::new(
                    self.local.shard(database, id)?,
                    runtime.clone(),
                    cancel.clone(),
                );
                handles.push((id, data.clone()));
                Ok(Shard::new(
                    query.version.clone(),
                    data,
                    global.clone(),
                    cancel.clone(),
                ))
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        self.local.count_query(database, shard_ids);
        let leaf = leaf::LeafTask {
            name: query.analysis_name.clone(),
            analysis: query.analysis.clone(),
            params: query.params.clone(),
            shards,
            cached,
            keep: partials,
            form,
            slots: self.local.map_slots(),
            cancel: cancel.clone(),
        };
        let leafed = leaf.run().await;
        for (id, data) in handles {
            let (files, bytes) = data.reads();
            let part = crate::storage::Part::Shard(id.clone()).key();
            self.local
                .record_read(database, &part, data.disk_id(), files, bytes);
        }
        let leafed = leafed?;
        for (id, encoded) in leafed.kept {
            let kept = cache::Cached {
                result: encoded.into(),
                shards: 1,
                database: database.clone(),
            };
            self.keep_here(partial_key(&id), kept);
        }
        Ok((leafed.output, cached_count))
    }

    fn query_timeout(&self, requested: Option<u64>) -> Result<u64, QueryError> {
        let config = &self.local.config().query;
        match requested {
            None => Ok(config.timeout_ms),
            Some(0) => Err(QueryError::InvalidRequest(
                "timeout_ms must be positive".into(),
            )),
            Some(ms) if ms > config.max_timeout_ms => Err(QueryError::InvalidRequest(format!(
                "timeout_ms {ms} is above this node's query.max_timeout_ms ({})",
                config.max_timeout_ms
            ))),
            Some(ms) => Ok(ms),
        }
    }

    /// The shards a query maps: those asked for (each once, each existing), or all.
    pub(crate) fn chosen_shards(
        &self,
        database: &str,
        requested: Option<Vec<String>>,
    ) -> Result<Vec<String>, QueryError> {
        let all = self.local.shard_ids(database)?;
        let Some(requested) = requested else {
            return Ok(all);
        };
        if requested.is_empty() {
            return Err(QueryError::InvalidRequest(
                "shards is empty: leave it out to query every shard".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut chosen: Vec<String> = Vec::with_capacity(requested.len());
        for id in requested {
            if all.binary_search(&id).is_err() {
                return Err(NodeError::not_found("shard", format!("{database}/{id}")).into());
            }
            if seen.insert(id.clone()) {
                chosen.push(id);
            }
        }
        Ok(chosen)
    }
}
