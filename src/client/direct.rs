//! The smart client: learns the shard map from any node (the database's version,
//! its shards and their holders, the members' addresses), sends the map requests
//! straight to the holders (`POST /v1/internal/map`, with the cluster secret
//! when one is set), retries a failed holder's shards once elsewhere, and
//! reduces and finishes here with the same analysis code the nodes run.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;

use super::{Client, ClientError};
use crate::query::fanout::{FanOut, send_map};
use crate::query::root::RootQuery;
use crate::query::{Analyses, QueryError, QueryRequest, QueryResponse};

/// Deadline of a direct query that names none.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

fn api_error(e: QueryError) -> ClientError {
    ClientError::Api {
        status: e.http_status(),
        code: e.code().to_string(),
        message: e.to_string(),
    }
}

impl Client {
    /// Runs `analysis` (found in `analyses`, which must match what the nodes
    /// serve) over a database or alias without a root node: the partials come
    /// straight from the holders and are reduced here.
    pub async fn query_direct(
        &self,
        analyses: &Analyses,
        target: &str,
        analysis_name: &str,
        request: QueryRequest,
    ) -> Result<QueryResponse, ClientError> {
        // SQL runs on the members' distributed engine: a member coordinates.
        if analysis_name == "sql" {
            let path = format!("/v1/query/{target}/{analysis_name}");
            let body = serde_json::to_value(&request).map_err(|e| ClientError::Protocol {
                url: path.clone(),
                message: e.to_string(),
            })?;
            let answer = self.post(&path, &body).await?;
            return serde_json::from_value(answer).map_err(|e| ClientError::Protocol {
                url: path,
                message: e.to_string(),
            });
        }
        let started = Instant::now();
        let analysis = analyses
            .get(analysis_name)
            .ok_or_else(|| api_error(QueryError::UnknownAnalysis(analysis_name.to_string())))?;
        let params = analysis
            .params(request.params.clone())
            .map_err(|e| api_error(QueryError::from_analysis(analysis_name, None, e)))?;
        let database = match self.get(&format!("/v1/aliases/{target}")).await {
            Ok(alias) => alias["target"].as_str().unwrap_or(target).to_string(),
            Err(ClientError::Api { status: 404, .. }) => target.to_string(),
            Err(e) => return Err(e),
        };
        let info = self.get(&format!("/v1/databases/{database}")).await?;
        if info["state"] != "ready" {
            return Err(api_error(QueryError::Node(
                crate::local::NodeError::NotReady(format!(
                    "database {database:?} is not ready: {}",
                    info["state"]
                )),
            )));
        }
        let version = info["version"].as_str().unwrap_or_default().to_string();
        let all: Vec<String> = strings(&info["shard_ids"]);
        let shards = match request.shards.clone() {
            None => all,
            Some(asked) => {
                if let Some(unknown) = asked.iter().find(|s| !all.contains(s)) {
                    return Err(api_error(QueryError::Node(
                        crate::local::NodeError::not_found(
                            "shard",
                            format!("{database}/{unknown}"),
                        ),
                    )));
                }
                asked
            }
        };
        let cluster = self.get("/v1/cluster").await?;
        let http: HashMap<String, String> = cluster["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["live"] == true)
            .filter_map(|m| {
                let tls = m["node"]["tls"] == true;
                let address = m["node"]["http"].as_str()?;
                let url = format!("{}://{address}", if tls { "https" } else { "http" });
                Some((m["id"].as_str()?.to_string(), url))
            })
            .collect();
        let load: HashMap<String, u64> = cluster["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m["id"].as_str()?.to_string(),
                    m["load"]["inflight"].as_u64()?,
                ))
            })
            .collect();
        let mut holders: HashMap<String, Vec<String>> = HashMap::new();
        for (shard, list) in info["holders"]["shards"].as_object().into_iter().flatten() {
            for holder in list.as_array().into_iter().flatten() {
                let serving = matches!(holder["state"].as_str(), Some("ready" | "lazy"));
                if let Some(node) = holder["node"].as_str()
                    && serving
                    && http.contains_key(node)
                {
                    holders
                        .entry(shard.clone())
                        .or_default()
                        .push(node.to_string());
                }
            }
        }
        let timeout_ms = request.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        let query = RootQuery::new(
            &database,
            &version,
            analysis_name,
            analysis.clone(),
            params.clone(),
            &request,
            timeout_ms,
        );
        let fan_out = FanOut {
            database: &database,
            shards,
            holders: &holders,
            load: &load,
            hedging: None,
            allow_partial: request.allow_partial,
        };
        let secret = self.cluster_secret.as_deref();
        let gather = fan_out.run(|node, shards| {
            let (http, query) = (&http, &query);
            async move {
                let address = http.get(&node).cloned().unwrap_or_default();
                send_map(&self.http, &node, &address, secret, query, &shards).await
            }
        });
        let (result, meta) = crate::query::root::conclude(&query, None, timeout_ms, gather)
            .await
            .map_err(api_error)?;
        Ok(QueryResponse {
            result,
            meta: meta.answered(target, database, version, started),
        })
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}
