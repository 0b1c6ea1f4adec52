//! The root of a query: the node that received it maps the shards it holds
//! itself and sends one `POST /v1/internal/map` to a holder of the others, with
//! all of that holder's shards. Holders are ready copies of the pinned version on
//! live members, ordered per shard by rendezvous score (the same holder for the
//! same shard, for warm caches). A holder that errors, times out or is dead has
//! its shards retried once on another holder; a shard with no holder fails the
//! query (503) unless `allow_partial` is set. Partials come back as MessagePack.
//!
//! The leaf side of `/v1/internal/map` is `Queries::map_request`: the same code the
//! root runs on its own shards.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::time::Instant as Deadline;

use super::Queries;
use super::analysis::{DynAnalysis, DynParams, DynPartial};
use super::fanout::{FanOut, Hedging, send_map};
use super::latency::MIN_PATIENCE;
use super::leaf::LeafForm;
use super::{NodeMeta, QueryError};
use crate::local::NodeError;
use std::sync::Arc;

/// Map requests in flight that make a holder count as busier than another.
pub(crate) const LOAD_STEP: u64 = 4;

/// How long a holder is waited for once the hedge budget is spent (or before
/// there are figures for early hedges): four times its recent p99 map time
/// as it gossips it, at least `MIN_PATIENCE`.
fn patience(p99_ms: u64) -> Duration {
    Duration::from_millis(p99_ms.saturating_mul(4)).max(MIN_PATIENCE)
}

/// Marks a query another member forwarded (it is not forwarded again).
pub const FORWARDED_HEADER: &str = "x-dram-forwarded";

/// Media type of an encoded partial.
pub const PARTIAL_MEDIA_TYPE: &str = "application/msgpack";

/// A query as the root runs it: the version pinned, the params parsed.
pub(crate) struct RootQuery {
    pub database: String,
    pub version: String,
    pub analysis_name: String,
    pub analysis: Arc<dyn DynAnalysis>,
    pub params: DynParams,
    /// The params as the client sent them, passed on to the leaves.
    pub raw_params: Option<serde_json::Value>,
    pub allow_partial: bool,
    /// Whether the shards' partials may come from (and go to) the result
    /// cache of the member that maps them (not when the request bypasses the
    /// cache).
    pub partials: bool,
    pub deadline: Deadline,
}

/// One member's partial of a query's shards, and how many of them came from
/// its result cache.
pub(crate) struct Mapped {
    pub partial: DynPartial,
    pub cached: usize,
}

/// The header of a map answer that counts the shards whose partials came
/// from the leaf's result cache.
pub(crate) const CACHED_SHARDS_HEADER: &str = "x-dram-cached-shards";

impl RootQuery {
    /// A query of `analysis_name` over `version` of `database`, with `params`
    /// parsed from the request and its deadline `timeout_ms` from now.
    pub(crate) fn new(
        database: &str,
        version: &str,
        analysis_name: &str,
        analysis: Arc<dyn DynAnalysis>,
        params: DynParams,
        request: &super::QueryRequest,
        timeout_ms: u64,
    ) -> RootQuery {
        RootQuery {
            database: database.to_string(),
            version: version.to_string(),
            analysis_name: analysis_name.to_string(),
            analysis,
            params,
            raw_params: request.params.clone(),
            allow_partial: request.allow_partial,
            partials: request.cache != Some(false),
            deadline: Deadline::now() + std::time::Duration::from_millis(timeout_ms),
        }
    }
}

/// The body of `POST /v1/internal/map`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapRequest {
    /// The database by name (the root resolved any alias).
    pub database: String,
    /// The version the root pinned: a holder with another one refuses.
    pub version: String,
    pub analysis: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    pub shards: Vec<String>,
    /// What is left of the query's deadline.
    pub timeout_ms: u64,
    /// `false`: the shards' partials are neither taken from nor kept in the
    /// holder's result cache (sent only then: a holder of an earlier
    /// version, which refuses unknown fields, still takes the others).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub cache: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(value: &bool) -> bool {
    *value
}

/// What the root gathered: partials and the meta that describes them.
#[derive(Default)]
pub(crate) struct Gathered {
    pub partials: Vec<DynPartial>,
    /// The answer itself, when this member mapped every shard and finished
    /// it in the same trip (then `partials` is empty).
    pub finished: Option<serde_json::Value>,
    pub meta: GatheredMeta,
}

/// Gathers `query`'s partials (`gather`), reduces them (waiting for one of
/// `slots`, when given) and finishes the answer, all within `timeout_ms`.
/// Reduce and finish stop when the query ends, however it ends. The node's
/// root and the smart client's answer alike.
pub(crate) async fn conclude(
    query: &RootQuery,
    slots: Option<&Arc<tokio::sync::Semaphore>>,
    timeout_ms: u64,
    gather: impl std::future::Future<Output = Result<Gathered, QueryError>>,
) -> Result<(serde_json::Value, GatheredMeta), QueryError> {
    let name = query.analysis_name.as_str();
    let cancel = tokio_util::sync::CancellationToken::new();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let work = async {
        let mut gathered = gather.await?;
        if let Some(result) = gathered.finished.take() {
            return Ok((result, gathered.meta));
        }
        let (analysis, params) = (query.analysis.clone(), query.params.clone());
        // Reduced (one partial is its own reduction) and finished in one trip
        // to the blocking pool; a reduce of several holds a map slot, as the
        // leaves' do.
        let several = gathered.partials.len() > 1;
        let partials = gathered.partials;
        let finish = move || {
            super::leaf::conclude_partials(&analysis, &params, LeafForm::Finished, partials)
        };
        let output = match slots {
            Some(slots) if several => super::leaf::slotted(name, slots, &cancel, finish).await?,
            _ => super::leaf::blocking(name, &cancel, finish).await?,
        };
        let result = output.finished(name)?;
        Ok::<_, QueryError>((result, gathered.meta))
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
        Ok(result) => result,
        Err(_) => {
            tracing::info!(
                database = query.database,
                analysis = name,
                timeout_ms,
                "query timed out"
            );
            Err(QueryError::Timeout { timeout_ms })
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct GatheredMeta {
    pub shards: usize,
    pub nodes: Vec<NodeMeta>,
    pub retries: usize,
    /// Slow holders whose shards were also asked of their next holders.
    pub hedges: usize,
    pub missing_shards: Vec<String>,
    /// Shards whose partials came from the result cache of the member that
    /// holds them.
    pub cached_shards: usize,
}

impl GatheredMeta {
    /// The answer's meta: `target` asked (a database, or an alias of
    /// `database`), answered from `version`, since `started`.
    pub(crate) fn answered(
        self,
        target: &str,
        database: String,
        version: String,
        started: Instant,
    ) -> super::QueryMeta {
        super::QueryMeta {
            alias: (target != database).then(|| target.to_string()),
            database,
            version,
            shards: self.shards,
            nodes: self.nodes,
            retries: self.retries,
            hedges: self.hedges,
            missing_shards: self.missing_shards,
            took_ms: started.elapsed().as_millis() as u64,
            cache: None,
            cached_shards: self.cached_shards,
        }
    }
}

impl Queries {
    /// Maps `shard_ids`: here those this node holds, elsewhere the others.
    pub(crate) async fn gather(
        &self,
        query: &RootQuery,
        shard_ids: Vec<String>,
    ) -> Result<Gathered, QueryError> {
        self.gather_or_finish(query, shard_ids, false).await
    }

    /// `gather`; when `finish` and this member holds every shard, the answer
    /// is finished in the same trip to the blocking pool as the maps' reduce
    /// (`Gathered::finished`).
    pub(crate) async fn gather_or_finish(
        &self,
        query: &RootQuery,
        shard_ids: Vec<String>,
        finish: bool,
    ) -> Result<Gathered, QueryError> {
        let here = self.local.serving_shards(&query.database)?;
        let (local, remote): (Vec<String>, Vec<String>) =
            shard_ids.into_iter().partition(|id| here.contains(id));
        let form = if finish && remote.is_empty() {
            LeafForm::Finished
        } else {
            LeafForm::Partial
        };
        let local_work = async {
            if local.is_empty() {
                return Ok(None);
            }
            let started = Instant::now();
            let mapped = self.map_here_as(query, &local, form).await?;
            Ok::<_, QueryError>(Some((mapped, started.elapsed().as_millis() as u64)))
        };
        let (local_result, remote_result) = tokio::join!(local_work, self.fan_out(query, remote));
        let mut gathered = remote_result?;
        if let Some(((output, cached), took_ms)) = local_result? {
            match form {
                LeafForm::Finished => {
                    gathered.finished = Some(output.finished(&query.analysis_name)?)
                }
                _ => gathered
                    .partials
                    .push(output.partial(&query.analysis_name)?),
            }
            gathered.meta.shards += local.len();
            gathered.meta.cached_shards += cached;
            gathered.meta.nodes.insert(
                0,
                NodeMeta {
                    node: self.local.id().to_string(),
                    shards: local.len(),
                    took_ms,
                    error: None,
                },
            );
        }
        Ok(gathered)
    }

    /// Sends the map requests for shards this node does not hold, retrying a
    /// failed holder's shards on their other holders in turn.
    async fn fan_out(
        &self,
        query: &RootQuery,
        shards: Vec<String>,
    ) -> Result<Gathered, QueryError> {
        if shards.is_empty() {
            return Ok(Gathered::default());
        }
        let found = match self.membership() {
            Some(membership) => {
                holders_when_known(
                    membership,
                    &query.database,
                    &query.version,
                    &shards,
                    query.deadline,
                )
                .await
            }
            None => Default::default(),
        };
        let config = &self.local.config().query;
        let hedging = Hedging {
            latencies: &self.inner.latencies,
            analysis: &query.analysis_name,
            budget: config.hedge_budget,
            fixed: (config.holder_timeout_ms > 0)
                .then(|| Duration::from_millis(config.holder_timeout_ms)),
            patience: found
                .p99_ms
                .iter()
                .map(|(node, p99)| (node.clone(), patience(*p99)))
                .collect(),
            gossiped_ms: &found.p99_ms,
            adaptive: config.adaptive_selection,
        };
        let (holders, http, load) = (&found.holders, &found.http, &found.load);
        let client = self
            .membership()
            .map(|m| m.http_client().clone())
            .unwrap_or_default();
        let secret = self.local.config().auth.peer_secret().map(str::to_string);
        let plan = FanOut {
            database: &query.database,
            shards,
            holders,
            load,
            hedging: Some(hedging),
            allow_partial: query.allow_partial,
        };
        let result = plan
            .run(|node, shards| {
                let (client, secret) = (&client, secret.as_deref());
                async move {
                    let address = http.get(&node).cloned().unwrap_or_default();
                    send_map(client, &node, &address, secret, query, &shards).await
                }
            })
            .await;
        if let (Some(membership), Ok(gathered)) = (self.membership(), &result) {
            let failed = gathered.meta.nodes.iter().filter(|n| n.error.is_some());
            membership.note_failed_holders(failed.map(|n| n.node.as_str()));
        }
        result
    }

    /// Sends a query to the member whose registry is furthest ahead; `None`
    /// when no member is ahead of this one.
    pub(crate) async fn forward(
        &self,
        target: &str,
        analysis: &str,
        request: &super::QueryRequest,
    ) -> Option<Result<super::QueryResponse, QueryError>> {
        let membership = self.membership()?;
        let address = membership.member_ahead(&self.local).await.ok()??;
        let remote = |status: u16, code: &str, message: String| QueryError::Remote {
            node: address.clone(),
            status,
            code: code.to_string(),
            message,
        };
        tracing::debug!(target, to = %address, "query forwarded: this node has not heard of its target yet");
        let mut forwarded = membership
            .http_client()
            .post(format!(
                "{}/v1/query/{target}/{analysis}",
                crate::net::base_url(&address)
            ))
            .header(FORWARDED_HEADER, "1")
            .json(request);
        // The member trusts a member: the query was checked here.
        if let Some(secret) = self.local.config().auth.peer_secret() {
            forwarded = forwarded.bearer_auth(secret);
        }
        let response = forwarded.send().await;
        let response = match response {
            Ok(response) => response,
            Err(e) => return Some(Err(remote(502, "leaf_failed", e.to_string()))),
        };
        let status = response.status();
        let body: serde_json::Value = match response.json().await {
            Ok(body) => body,
            Err(e) => return Some(Err(remote(502, "leaf_failed", e.to_string()))),
        };
        if status.is_success() {
            return Some(
                serde_json::from_value(body).map_err(|e| remote(502, "leaf_failed", e.to_string())),
            );
        }
        let code = body["error"]["code"].as_str().unwrap_or("leaf_failed");
        let message = body["error"]["message"]
            .as_str()
            .map_or_else(|| format!("HTTP {status}"), str::to_string);
        // The member's own verdict (e.g. a real 404) is passed on as it is.
        Some(Err(remote(status.as_u16(), code, message)))
    }

    /// `POST /v1/internal/map`: maps shards of the pinned version here and
    /// returns the pre-reduced partial as MessagePack, with how many shards'
    /// partials came from the result cache.
    pub async fn map_request(&self, request: MapRequest) -> Result<(Vec<u8>, usize), QueryError> {
        let analysis = self.analyses().get(&request.analysis);
        self.local.metrics().map_request(match analysis {
            Some(_) => &request.analysis,
            None => crate::observe::metrics::UNKNOWN_ANALYSIS,
        });
        let analysis =
            analysis.ok_or_else(|| QueryError::UnknownAnalysis(request.analysis.clone()))?;
        let version = self.local.ready_version(&request.database)?;
        if version != request.version {
            return Err(NodeError::Conflict(format!(
                "database {:?} is at version {version} here, not {}",
                request.database, request.version
            ))
            .into());
        }
        let shards = self.chosen_shards(&request.database, Some(request.shards))?;
        let params = analysis
            .params(request.params.clone())
            .map_err(|e| QueryError::from_analysis(&request.analysis, None, e))?;
        let timeout_ms = request
            .timeout_ms
            .min(self.local.config().query.max_timeout_ms);
        let query = RootQuery {
            database: request.database,
            version,
            analysis_name: request.analysis.clone(),
            analysis: analysis.clone(),
            params,
            raw_params: request.params,
            allow_partial: false,
            partials: request.cache,
            deadline: Deadline::now() + std::time::Duration::from_millis(timeout_ms),
        };
        let work = async {
            let (output, cached) = self.map_here_as(&query, &shards, LeafForm::Encoded).await?;
            Ok((output.encoded(&request.analysis)?, cached))
        };
        match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), work).await {
            Ok(result) => result,
            Err(_) => Err(QueryError::Timeout { timeout_ms }),
        }
    }
}

/// How long a root whose view is not current (it has just started, or a
/// member's inventory changed and is not pulled yet) waits for a holder of a
/// shard it knows none of, rather than answering 503 at once.
pub(crate) const VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The holders of the query's shards, waiting (at most `VIEW_WAIT`, within
/// the deadline) while some shard has none and the view is not current.
pub(crate) async fn holders_when_known(
    membership: &crate::cluster::Membership,
    database: &str,
    version: &str,
    shards: &[String],
    deadline: Deadline,
) -> crate::cluster::membership::QueryHolders {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let until = tokio::time::Instant::now() + VIEW_WAIT.min(left);
    loop {
        let found = membership.query_holders(database, version).await;
        let unknown = shards.iter().any(|s| !found.holders.contains_key(s));
        if !unknown || found.current || tokio::time::Instant::now() >= until {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
