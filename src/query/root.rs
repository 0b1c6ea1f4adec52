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
pub(crate) struct Gathered {
    pub partials: Vec<DynPartial>,
    pub meta: GatheredMeta,
}

pub(crate) struct GatheredMeta {
    pub shards: usize,
    pub nodes: Vec<NodeMeta>,
    pub retries: usize,
    pub missing_shards: Vec<String>,
}

/// One map request's outcome.
struct Answer {
    node: String,
    shards: Vec<String>,
    took_ms: u64,
    result: Result<DynPartial, QueryError>,
}

impl Node {
    /// Maps `shard_ids`: here those this node holds, elsewhere the others.
    pub(crate) async fn gather(
        &self,
        query: &RootQuery,
        shard_ids: Vec<String>,
    ) -> Result<Gathered, QueryError> {
        let (local, remote): (Vec<String>, Vec<String>) = shard_ids
            .into_iter()
            .partition(|id| self.serves_shard(&query.database, id));
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
        let mut gathered = Gathered {
            partials: Vec::new(),
            meta: GatheredMeta {
                shards: 0,
                nodes: Vec::new(),
                retries: 0,
                missing_shards: Vec::new(),
            },
        };
        if shards.is_empty() {
            return Ok(gathered);
        }
        let (holders, http) = match self.membership() {
            Some(membership) => (
                membership
                    .serving_holders(self, &query.database, &query.version)
                    .await?,
                membership.http_addresses().await,
            ),
            None => (HashMap::new(), HashMap::new()),
        };
        // Per shard, its holders best first (rendezvous: the same one each time).
        let mut candidates: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut missing = Vec::new();
        for shard in shards {
            let mut list: Vec<String> = holders
                .get(&shard)
                .into_iter()
                .flatten()
                .filter(|node| http.contains_key(*node))
                .cloned()
                .collect();
            let key = shard_key(&query.database, &shard);
            list.sort_by(|a, b| score(&key, b, 1).total_cmp(&score(&key, a, 1)));
            if list.is_empty() {
                missing.push(shard);
            } else {
                candidates.insert(shard, list);
            }
        }
        let client = self
            .membership()
            .map(|m| m.http_client().clone())
            .unwrap_or_default();

        let mut round: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (shard, list) in &candidates {
            round
                .entry(list[0].clone())
                .or_default()
                .push(shard.clone());
        }
        let mut failed: Vec<(String, String, QueryError)> = Vec::new();
        for answer in self.send_all(&client, &http, query, round).await {
            let error = match answer.result {
                Ok(partial) => {
                    gathered.partials.push(partial);
                    gathered.meta.shards += answer.shards.len();
                    None
                }
                Err(e) => {
                    for shard in &answer.shards {
                        failed.push((shard.clone(), answer.node.clone(), clone_error(&e)));
                    }
                    Some(e.to_string())
                }
            };
            gathered.meta.nodes.push(NodeMeta {
                node: answer.node,
                shards: answer.shards.len(),
                took_ms: answer.took_ms,
                error,
            });
        }
        // One retry per failed shard, on its next holder.
        let mut retry: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut last_errors: HashMap<String, QueryError> = HashMap::new();
        for (shard, node, error) in failed {
            let next = candidates[&shard].iter().find(|c| **c != node).cloned();
            if let Some(next) = next {
                retry.entry(next).or_default().push(shard.clone());
                gathered.meta.retries += 1;
            }
            last_errors.insert(shard, error);
        }
        for answer in self.send_all(&client, &http, query, retry).await {
            let error = match answer.result {
                Ok(partial) => {
                    gathered.partials.push(partial);
                    gathered.meta.shards += answer.shards.len();
                    for shard in &answer.shards {
                        last_errors.remove(shard);
                    }
                    None
                }
                Err(e) => {
                    for shard in &answer.shards {
                        last_errors.insert(shard.clone(), clone_error(&e));
                    }
                    Some(e.to_string())
                }
            };
            gathered.meta.nodes.push(NodeMeta {
                node: answer.node,
                shards: answer.shards.len(),
                took_ms: answer.took_ms,
                error,
            });
        }
        if !last_errors.is_empty() && !query.allow_partial {
            let (_, error) = last_errors
                .into_iter()
                .min_by(|a, b| a.0.cmp(&b.0))
                .ok_or(QueryError::Cancelled)?;
            return Err(error);
        }
        missing.extend(last_errors.into_keys());
        missing.sort();
        if !missing.is_empty() && !query.allow_partial {
            return Err(QueryError::Unavailable { shards: missing });
        }
        gathered.meta.missing_shards = missing;
        Ok(gathered)
    }

    /// Sends one map request per node at once.
    async fn send_all(
        &self,
        client: &reqwest::Client,
        http: &HashMap<String, String>,
        query: &RootQuery,
        by_node: BTreeMap<String, Vec<String>>,
    ) -> Vec<Answer> {
        let requests = by_node.into_iter().map(|(node, shards)| async move {
            let started = Instant::now();
            let result = self.send(client, http, query, &node, &shards).await;
            Answer {
                node,
                shards,
                took_ms: started.elapsed().as_millis() as u64,
                result,
            }
        });
        futures::future::join_all(requests).await
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        http: &HashMap<String, String>,
        query: &RootQuery,
        node: &str,
        shards: &[String],
    ) -> Result<DynPartial, QueryError> {
        let remote = |message: String| QueryError::Remote {
            node: node.to_string(),
            status: 502,
            code: "leaf_failed".into(),
            message,
        };
        let address = http
            .get(node)
            .ok_or_else(|| remote("no HTTP address known".into()))?;
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
        let mut request = client
            .post(format!("http://{address}/v1/internal/map"))
            .timeout(left)
            .json(&body);
        if let Some(secret) = &self.config().auth.cluster_secret {
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
        let name = query.analysis_name.clone();
        super::leaf::blocking(&name, move || analysis.decode(&bytes)).await
    }

    /// Whether this node serves its own copy of a shard.
    fn serves_shard(&self, database: &str, shard: &str) -> bool {
        self.shard(database, shard).is_ok()
    }

    /// `POST /v1/internal/map`: maps shards of the pinned version here and
    /// returns the pre-reduced partial as MessagePack.
    pub async fn map_request(&self, request: MapRequest) -> Result<Vec<u8>, QueryError> {
        let analysis = self
            .analyses()
            .get(&request.analysis)
            .ok_or_else(|| QueryError::UnknownAnalysis(request.analysis.clone()))?;
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
