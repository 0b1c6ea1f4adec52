//! Warm then swap: before an alias moves to a new database, every live member
//! fetches its lazy copies of the new database, and the recent queries of the
//! old one (from every member's log, see `recent`) are replayed against the
//! new one, so that their answers are kept in the result cache when the
//! alias moves. `POST /v1/aliases/_batch` with `"warm": true`, `dram alias
//! set --warm`.

use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::recent::{self, RecentQuery};
use super::{Queries, QueryError, QueryRequest};
use crate::local::LazyFetched;

/// Queries replayed at once.
const REPLAYS: usize = 4;

/// How long the move waits for the replayed answers to reach their owners
/// (each store is bounded by the cache's own timeout, 3 s).
const STORED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One alias move to warm for: the database the alias names now (none for a
/// new alias) and the one it is to name.
#[derive(Debug, Clone)]
pub struct Move {
    pub from: Option<String>,
    pub to: String,
}

/// What warming did (the `warmed` of the batch's answer).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Warmed {
    /// The databases warmed.
    pub databases: Vec<String>,
    /// Members that fetched their lazy copies.
    pub members: usize,
    /// Lazy shards over those members, and the files and bytes fetched now.
    pub lazy_shards: u64,
    pub lazy_files: u64,
    pub lazy_bytes: u64,
    /// Recent queries of the old databases replayed against the new ones,
    /// and those that failed there (a query the new database cannot answer:
    /// a column gone, say). A failure does not stop the move.
    pub queries: usize,
    pub failed: usize,
    /// Members that could not fetch their lazy copies, or be asked for their
    /// recent queries, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub took_ms: u64,
}

impl Queries {
    /// Notes a query this member was the root of, for a later warm-up.
    pub(crate) fn note_recent(&self, database: &str, analysis: &str, request: &QueryRequest) {
        let query = RecentQuery {
            analysis: analysis.to_string(),
            params: request.params.clone(),
            shards: request.shards.clone(),
            at_ms: crate::clock::now_ms(),
        };
        self.inner.recent.note(database, query);
    }

    /// The recent queries of `database` this member was the root of, most
    /// recent first (`GET /v1/internal/recent/{database}`).
    pub fn recent_queries(&self, database: &str) -> Vec<RecentQuery> {
        self.inner.recent.of(database)
    }

    /// Warms the targets of `moves`: each must be a database that is ready.
    /// Fails (and nothing moves) only when a target is unknown or not ready.
    pub async fn warm(&self, moves: &[Move]) -> Result<Warmed, QueryError> {
        let started = Instant::now();
        let mut warmed = Warmed::default();
        for step in moves {
            let to = self.local.resolve(&step.to)?;
            self.local.ready_version(&to)?;
            if !warmed.databases.contains(&to) {
                warmed.databases.push(to);
            }
        }
        let members = self.other_members().await;
        warmed.members = members.len() + 1;
        for database in warmed.databases.clone() {
            self.fetch_lazy_everywhere(&database, &members, &mut warmed)
                .await;
        }
        let limit = self.local.config().cache.warm_queries;
        for step in moves {
            let Some(from) = &step.from else { continue };
            if limit == 0 || *from == step.to {
                continue;
            }
            let mut logs = vec![self.recent_queries(from)];
            for (id, address) in &members {
                match self.peer_recent(address, from).await {
                    Ok(log) => logs.push(log),
                    Err(e) => warmed.errors.push(format!("{id}: recent queries: {e}")),
                }
            }
            let queries = recent::merge(logs, limit);
            // Owned futures (borrowing ones trip rustc's higher-ranked
            // `Send` checks under warp).
            let replays: Vec<_> = queries.into_iter().map(|query| {
                let (queries, to) = (self.clone(), step.to.clone());
                async move {
                    let request = QueryRequest {
                        params: query.params,
                        shards: query.shards,
                        ..QueryRequest::default()
                    };
                    let answer = queries.query(&to, &query.analysis, request).await;
                    if let Err(e) = &answer {
                        tracing::info!(database = to, analysis = query.analysis, error = %e, "a replayed query failed on the new database");
                    }
                    answer.is_ok()
                }
            }).collect();
            let outcomes: Vec<bool> = futures::stream::iter(replays)
                .buffer_unordered(REPLAYS)
                .collect()
                .await;
            warmed.queries += outcomes.len();
            warmed.failed += outcomes.iter().filter(|ok| !**ok).count();
        }
        // The answers reach their owners before the alias moves.
        self.stored(STORED_WAIT).await;
        warmed.took_ms = started.elapsed().as_millis() as u64;
        Ok(warmed)
    }

    /// The other live members and their HTTP addresses, sorted by id.
    async fn other_members(&self) -> Vec<(String, String)> {
        let Some(membership) = self.membership() else {
            return Vec::new();
        };
        let own = self.local.id();
        let mut members: Vec<(String, String)> = membership
            .http_addresses()
            .await
            .into_iter()
            .filter(|(id, _)| id != own)
            .collect();
        members.sort();
        members
    }

    /// Every member (this one and `members`) fetches its lazy copies of
    /// `database`, all at once.
    async fn fetch_lazy_everywhere(
        &self,
        database: &str,
        members: &[(String, String)],
        warmed: &mut Warmed,
    ) {
        let here = {
            let (local, database) = (self.local.clone(), database.to_string());
            async move {
                let result = local.fetch_lazy_copies(&database).await;
                (local.id().to_string(), result.map_err(|e| e.to_string()))
            }
        };
        let there: Vec<_> = members
            .iter()
            .map(|(id, address)| {
                let (queries, id, address) = (self.clone(), id.clone(), address.clone());
                let database = database.to_string();
                async move {
                    let result = queries.peer_fetch_lazy(&address, &database).await;
                    (id, result)
                }
            })
            .collect();
        let (here, there) = tokio::join!(here, futures::future::join_all(there));
        for (id, result) in std::iter::once(here).chain(there) {
            match result {
                Ok(fetched) => {
                    warmed.lazy_shards += fetched.shards;
                    warmed.lazy_files += fetched.files;
                    warmed.lazy_bytes += fetched.bytes;
                }
                Err(e) => warmed.errors.push(format!("{id}: lazy copies: {e}")),
            }
        }
    }

    /// `POST {address}/v1/internal/warm/{database}`.
    async fn peer_fetch_lazy(&self, address: &str, database: &str) -> Result<LazyFetched, String> {
        let url = format!(
            "{}/v1/internal/warm/{database}",
            crate::net::base_url(address)
        );
        self.peer_json(self.peer_request(reqwest::Method::POST, &url))
            .await
    }

    /// `GET {address}/v1/internal/recent/{database}`.
    async fn peer_recent(&self, address: &str, database: &str) -> Result<Vec<RecentQuery>, String> {
        let url = format!(
            "{}/v1/internal/recent/{database}",
            crate::net::base_url(address)
        );
        #[derive(Deserialize)]
        struct Recent {
            queries: Vec<RecentQuery>,
        }
        let recent: Recent = self
            .peer_json(self.peer_request(reqwest::Method::GET, &url))
            .await?;
        Ok(recent.queries)
    }

    fn peer_request(&self, method: reqwest::Method, url: &str) -> Option<reqwest::RequestBuilder> {
        let mut request = self.peer_client()?.request(method, url);
        if let Some(secret) = self.peer_secret() {
            request = request.bearer_auth(secret);
        }
        Some(request)
    }

    async fn peer_json<T: serde::de::DeserializeOwned>(
        &self,
        request: Option<reqwest::RequestBuilder>,
    ) -> Result<T, String> {
        let request = request.ok_or("no HTTP client")?;
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let message = error["error"]["message"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_string);
            return Err(message);
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}
