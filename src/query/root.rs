//! The root of a query: the node that received it maps the shards it holds
//! itself and sends one `POST /v1/internal/map` to a holder of the others, with
//! all of that holder's shards. Holders are ready copies of the pinned version on
//! live members, ordered per shard by rendezvous score (the same holder for the
//! same shard, for warm caches). A holder that errors, times out or is dead has
//! its shards retried once on another holder; a shard with no holder fails the
//! query (503) unless `allow_partial` is set. Partials come back as MessagePack.
//!
//! The leaf side of `/v1/internal/map` is `Node::map_request`: the same code the
//! root runs on its own shards.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::time::Instant as Deadline;

use super::analysis::{DynAnalysis, DynParams, DynPartial};
use super::{NodeMeta, QueryError};
use crate::node::{Node, NodeError};
use crate::placement::{score, shard_key};
use std::sync::Arc;

/// Map requests in flight that make a holder count as busier than another.
const LOAD_STEP: u64 = 4;

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
    pub deadline: Deadline,
}

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
}

/// What the root gathered: partials and the meta that describes them.
#[derive(Default)]
pub(crate) struct Gathered {
    pub partials: Vec<DynPartial>,
    pub meta: GatheredMeta,
}

#[derive(Default)]
pub(crate) struct GatheredMeta {
    pub shards: usize,
    pub nodes: Vec<NodeMeta>,
    pub retries: usize,
    pub missing_shards: Vec<String>,
}

impl Node {
    /// Maps `shard_ids`: here those this node holds, elsewhere the others.
    pub(crate) async fn gather(
        &self,
        query: &RootQuery,
        shard_ids: Vec<String>,
    ) -> Result<Gathered, QueryError> {
        let here = self.serving_shards(&query.database)?;
        let (local, remote): (Vec<String>, Vec<String>) =
            shard_ids.into_iter().partition(|id| here.contains(id));
        let local_work = async {
            if local.is_empty() {
                return Ok(None);
            }
            let started = Instant::now();
            let partial = self.map_here(query, &local).await?;
            Ok::<_, QueryError>(Some((partial, started.elapsed().as_millis() as u64)))
        };
        let (local_result, remote_result) = tokio::join!(local_work, self.fan_out(query, remote));
        let mut gathered = remote_result?;
        if let Some((partial, took_ms)) = local_result? {
            gathered.partials.push(partial);
            gathered.meta.shards += local.len();
            gathered.meta.nodes.insert(
                0,
                NodeMeta {
                    node: self.id().to_string(),
                    shards: local.len(),
                    took_ms,
                    error: None,
                },
            );
        }
        Ok(gathered)
    }

    /// Sends the map requests for shards this node does not hold, retrying a
    /// failed holder's shards once elsewhere.
    async fn fan_out(
        &self,
        query: &RootQuery,
        shards: Vec<String>,
    ) -> Result<Gathered, QueryError> {
        if shards.is_empty() {
            return Ok(Gathered::default());
        }
        let found = match self.membership() {
            Some(membership) => holders_when_known(membership, query, &shards).await,
            None => Default::default(),
        };
        let (holders, http, load) = (found.holders, found.http, found.load);
        let client = self
            .membership()
            .map(|m| m.http_client().clone())
            .unwrap_or_default();
        let secret = self.config().auth.cluster_secret.clone();
        let plan = FanOut {
            database: &query.database,
            shards,
            holders: &holders,
            load: &load,
            allow_partial: query.allow_partial,
        };
        let result = plan
            .run(|node, shards| {
                let (client, http, secret) = (&client, &http, secret.as_deref());
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
        let address = membership.member_ahead(self).await.ok()??;
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
                crate::server::base_url(&address)
            ))
            .header(FORWARDED_HEADER, "1")
            .json(request);
        // The member trusts a member: the query was checked here.
        if let Some(secret) = &self.config().auth.cluster_secret {
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

    /// The shards of `database` this node serves its own copy of (one scan of
    /// its part records).
    fn serving_shards(
        &self,
        database: &str,
    ) -> Result<std::collections::HashSet<String>, QueryError> {
        let parts: Vec<(String, crate::catalog::PartRecord)> = self
            .catalog()
            .scan(crate::catalog::PARTS, &crate::catalog::key(&[database, ""]))
            .map_err(NodeError::from)?;
        Ok(parts
            .into_iter()
            .filter(|(_, record)| record.is_serving())
            .filter_map(|(k, _)| {
                let part = crate::storage::Part::from_key(k.split('\0').nth(1)?)?;
                part.shard_id().map(str::to_string)
            })
            .collect())
    }

    /// `POST /v1/internal/map`: maps shards of the pinned version here and
    /// returns the pre-reduced partial as MessagePack.
    pub async fn map_request(&self, request: MapRequest) -> Result<Vec<u8>, QueryError> {
        let analysis = self.analyses().get(&request.analysis);
        self.metrics().map_request(match analysis {
            Some(_) => &request.analysis,
            None => crate::node::metrics::UNKNOWN_ANALYSIS,
        });
        let analysis =
            analysis.ok_or_else(|| QueryError::UnknownAnalysis(request.analysis.clone()))?;
        let version = self.ready_version(&request.database)?;
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
        let timeout_ms = request.timeout_ms.min(self.config().query.max_timeout_ms);
        let query = RootQuery {
            database: request.database,
            version,
            analysis_name: request.analysis.clone(),
            analysis: analysis.clone(),
            params,
            raw_params: request.params,
            allow_partial: false,
            deadline: Deadline::now() + std::time::Duration::from_millis(timeout_ms),
        };
        let work = async {
            let partial = self.map_here(&query, &shards).await?;
            super::leaf::blocking(&request.analysis, move || analysis.encode(partial)).await
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
async fn holders_when_known(
    membership: &crate::cluster::Membership,
    query: &RootQuery,
    shards: &[String],
) -> crate::cluster::membership::QueryHolders {
    let left = query
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    let until = tokio::time::Instant::now() + VIEW_WAIT.min(left);
    loop {
        let found = membership
            .query_holders(&query.database, &query.version)
            .await;
        let unknown = shards.iter().any(|s| !found.holders.contains_key(s));
        if !unknown || found.current || tokio::time::Instant::now() >= until {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The fan-out core, shared by a query's root and the direct client: each
/// shard goes to its best holder (rendezvous order), one request per holder;
/// a failed request's shards are retried once on their next holder.
pub(crate) struct FanOut<'a> {
    pub database: &'a str,
    pub shards: Vec<String>,
    /// Shard → the members holding a ready copy.
    pub holders: &'a HashMap<String, Vec<String>>,
    /// Map work under way per member (the `load` gossip key); absent is idle.
    pub load: &'a HashMap<String, u64>,
    pub allow_partial: bool,
}

/// A shard whose request failed: (shard, (node, error)).
type ShardFailure = (String, (String, QueryError));

/// One map request's outcome.
struct Answer {
    node: String,
    shards: Vec<String>,
    took_ms: u64,
    result: Result<DynPartial, QueryError>,
}

impl FanOut<'_> {
    /// Runs the requests through `send(node, shards)`.
    pub(crate) async fn run<F, Fut>(self, send: F) -> Result<Gathered, QueryError>
    where
        F: Fn(String, Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<DynPartial, QueryError>>,
    {
        let mut gathered = Gathered::default();
        // Per shard, its holders best first: the least loaded, ties by rendezvous
        // score (the same holder each time while loads are even: warm caches).
        let mut candidates: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut missing = Vec::new();
        for shard in self.shards {
            let mut list: Vec<String> = self.holders.get(&shard).cloned().unwrap_or_default();
            let key = shard_key(self.database, &shard);
            // Loads compare in steps of `LOAD_STEP`: a request or two in flight
            // does not outweigh cache affinity.
            let load = |node: &String| self.load.get(node).copied().unwrap_or(0) / LOAD_STEP;
            list.sort_by(|a, b| {
                load(a)
                    .cmp(&load(b))
                    .then_with(|| score(&key, b, 1).total_cmp(&score(&key, a, 1)))
            });
            if list.is_empty() {
                missing.push(shard);
            } else {
                candidates.insert(shard, list);
            }
        }
        let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (shard, list) in &candidates {
            first
                .entry(list[0].clone())
                .or_default()
                .push(shard.clone());
        }
        let mut errors: HashMap<String, (String, QueryError)> = HashMap::new();
        for answer in send_all(&send, first).await {
            if let Err(e) = gathered.take(answer) {
                errors.extend(e);
            }
        }
        // One retry per failed shard, on its next holder.
        let mut retry: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (shard, (node, _)) in &errors {
            if let Some(next) = candidates[shard].iter().find(|c| *c != node) {
                retry.entry(next.clone()).or_default().push(shard.clone());
                gathered.meta.retries += 1;
            }
        }
        for answer in send_all(&send, retry).await {
            let shards = answer.shards.clone();
            match gathered.take(answer) {
                Ok(()) => {
                    for shard in &shards {
                        errors.remove(shard);
                    }
                }
                Err(e) => errors.extend(e),
            }
        }
        if !self.allow_partial
            && let Some(shard) = errors.keys().min().cloned()
            && let Some((_, error)) = errors.remove(&shard)
        {
            return Err(error);
        }
        missing.extend(errors.into_keys());
        missing.sort();
        if !missing.is_empty() && !self.allow_partial {
            return Err(QueryError::Unavailable { shards: missing });
        }
        gathered.meta.missing_shards = missing;
        Ok(gathered)
    }
}

impl Gathered {
    /// Keeps an answer's partial, or returns its shards with the error.
    fn take(&mut self, answer: Answer) -> Result<(), Vec<ShardFailure>> {
        let (error, failed) = match answer.result {
            Ok(partial) => {
                self.partials.push(partial);
                self.meta.shards += answer.shards.len();
                (None, Vec::new())
            }
            Err(e) => {
                let failed = answer
                    .shards
                    .iter()
                    .map(|shard| (shard.clone(), (answer.node.clone(), clone_error(&e))))
                    .collect();
                (Some(e.to_string()), failed)
            }
        };
        self.meta.nodes.push(NodeMeta {
            node: answer.node,
            shards: answer.shards.len(),
            took_ms: answer.took_ms,
            error,
        });
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}

/// Sends one request per node at once.
async fn send_all<F, Fut>(send: &F, by_node: BTreeMap<String, Vec<String>>) -> Vec<Answer>
where
    F: Fn(String, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<DynPartial, QueryError>>,
{
    let requests = by_node.into_iter().map(|(node, shards)| async move {
        let started = Instant::now();
        let result = send(node.clone(), shards.clone()).await;
        Answer {
            node,
            shards,
            took_ms: started.elapsed().as_millis() as u64,
            result,
        }
    });
    futures::future::join_all(requests).await
}

/// `POST {address}/v1/internal/map` for `shards`, decoded (`address`: the
/// holder's base URL, or `host:port` for plain HTTP).
pub(crate) async fn send_map(
    client: &reqwest::Client,
    node: &str,
    address: &str,
    secret: Option<&str>,
    query: &RootQuery,
    shards: &[String],
) -> Result<DynPartial, QueryError> {
    let remote = |message: String| QueryError::Remote {
        node: node.to_string(),
        status: 502,
        code: "leaf_failed".into(),
        message,
    };
    if address.is_empty() {
        return Err(remote("no HTTP address known".into()));
    }
    let left = query
        .deadline
        .saturating_duration_since(Deadline::now())
        .max(std::time::Duration::from_millis(1));
    let body = MapRequest {
        database: query.database.clone(),
        version: query.version.clone(),
        analysis: query.analysis_name.clone(),
        params: query.raw_params.clone(),
        shards: shards.to_vec(),
        timeout_ms: left.as_millis() as u64,
    };
    let url = crate::server::base_url(address);
    let mut request = client
        .post(format!("{url}/v1/internal/map"))
        .timeout(left)
        .json(&body);
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.map_err(|e| remote(e.to_string()))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| remote(e.to_string()))?;
    if !status.is_success() {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(QueryError::Remote {
            node: node.to_string(),
            status: status.as_u16(),
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("leaf_failed")
                .to_string(),
            message: body["error"]["message"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_string),
        });
    }
    let analysis = query.analysis.clone();
    super::leaf::blocking(&query.analysis_name, move || analysis.decode(&bytes)).await
}

/// A copy of an error to report for each shard of a failed request.
fn clone_error(e: &QueryError) -> QueryError {
    QueryError::Remote {
        node: match e {
            QueryError::Remote { node, .. } => node.clone(),
            _ => String::new(),
        },
        status: e.http_status(),
        code: e.code().to_string(),
        message: match e {
            QueryError::Remote { message, .. } => message.clone(),
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn holders(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(shard, nodes)| {
                (
                    shard.to_string(),
                    nodes.iter().map(|n| n.to_string()).collect(),
                )
            })
            .collect()
    }

    /// Runs a fan-out where `failing` members fail; returns what was sent where.
    async fn fan_out(
        shards: &[&str],
        holders: &HashMap<String, Vec<String>>,
        load: &HashMap<String, u64>,
        failing: &[&str],
        allow_partial: bool,
    ) -> (Result<Gathered, QueryError>, Vec<(String, Vec<String>)>) {
        let sent = Mutex::new(Vec::new());
        let plan = FanOut {
            database: "db",
            shards: shards.iter().map(|s| s.to_string()).collect(),
            holders,
            load,
            allow_partial,
        };
        let result = plan
            .run(|node, shards| {
                sent.lock().unwrap().push((node.clone(), shards.clone()));
                let fails = failing.contains(&node.as_str());
                async move {
                    if fails {
                        Err(QueryError::Remote {
                            node,
                            status: 502,
                            code: "leaf_failed".into(),
                            message: "connection refused".into(),
                        })
                    } else {
                        Ok(Box::new(shards.len()) as DynPartial)
                    }
                }
            })
            .await;
        (result, sent.into_inner().unwrap())
    }

    #[tokio::test]
    async fn one_request_per_holder_the_least_loaded_first_then_rendezvous() {
        let map = holders(&[("0", &["a", "b"]), ("1", &["a", "b"]), ("2", &["a", "b"])]);
        let (result, sent) = fan_out(&["0", "1", "2"], &map, &HashMap::new(), &[], false).await;
        let gathered = result.unwrap();
        assert_eq!(gathered.meta.shards, 3);
        assert_eq!(gathered.meta.retries, 0);
        let requests: usize = sent.len();
        assert!(requests <= 2, "one request per holder: {sent:?}");
        // The same choice every time while loads are even.
        let (_, again) = fan_out(&["0", "1", "2"], &map, &HashMap::new(), &[], false).await;
        let sorted = |mut v: Vec<(String, Vec<String>)>| {
            v.sort();
            v
        };
        assert_eq!(sorted(sent), sorted(again));
        // b busy: everything goes to a.
        let load = HashMap::from([("b".to_string(), 8)]);
        let (_, busy) = fan_out(&["0", "1", "2"], &map, &load, &[], false).await;
        assert_eq!(
            busy,
            [("a".to_string(), vec!["0".into(), "1".into(), "2".into()])]
        );
    }

    #[tokio::test]
    async fn a_failed_holder_is_retried_once_elsewhere_and_missing_shards_fail_or_are_listed() {
        let map = holders(&[("0", &["a", "b"]), ("1", &["a"])]);
        let load = HashMap::from([("b".to_string(), LOAD_STEP)]);
        let (result, sent) = fan_out(&["0", "1"], &map, &load, &["a"], true).await;
        let gathered = result.unwrap();
        assert_eq!(gathered.meta.retries, 1, "{sent:?}");
        assert_eq!(gathered.meta.shards, 1);
        assert_eq!(gathered.meta.missing_shards, ["1"], "no other holder of 1");
        assert!(
            gathered
                .meta
                .nodes
                .iter()
                .any(|n| n.node == "a" && n.error.is_some())
        );
        // Without allow_partial the holder's error is the answer.
        let (result, _) = fan_out(&["0", "1"], &map, &load, &["a"], false).await;
        assert!(matches!(result, Err(QueryError::Remote { .. })));
        // A shard nobody holds: 503 naming it.
        let (result, _) = fan_out(&["0", "9"], &map, &load, &[], false).await;
        match result {
            Err(QueryError::Unavailable { shards }) => assert_eq!(shards, ["9"]),
            other => panic!("{:?}", other.err()),
        }
    }
}
