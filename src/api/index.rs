//! The operations index over HTTP: `GET /v1/index/blobs/{sha256}`,
//! `/v1/index/databases/{name}`, `/v1/index/disks` and `/v1/events`. Each
//! answers for this node, or with `?scope=cluster` for every live member (asked
//! over HTTP, merged here; members that did not answer are listed).

use std::collections::BTreeMap;

use futures::FutureExt;
use serde::Deserialize;
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::respond;
use crate::local::NodeError;
use crate::local::index::{BlobIndex, DatabaseIndex, DisksIndex, max_over_mean};
use crate::node::Node;
use crate::observe::events::{Event, EventFilter, EventKind};

/// Events listed unless `limit` says otherwise.
const DEFAULT_EVENTS: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeQuery {
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    kind: Option<String>,
    since: Option<u64>,
    limit: Option<usize>,
    scope: Option<String>,
}

/// Whether a view covers the cluster (`scope=cluster`) or this node (default).
fn cluster_scope(scope: Option<&str>) -> Result<bool, NodeError> {
    match scope {
        None | Some("node") => Ok(false),
        Some("cluster") => Ok(true),
        Some(other) => Err(NodeError::InvalidInput(format!(
            "scope must be \"node\" or \"cluster\", not {other:?}"
        ))),
    }
}

/// This node's answer and every other live member's (`node`, answer), and the
/// members that did not answer.
async fn gather<T: serde::de::DeserializeOwned>(
    node: &Node,
    own: Result<T, NodeError>,
    path: &str,
) -> Result<(Vec<T>, Vec<Value>), NodeError> {
    let mut answers = Vec::new();
    let mut missing = Vec::new();
    match own {
        Ok(own) => answers.push(own),
        Err(NodeError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    if let Some(membership) = node.membership() {
        for (member, answer) in membership.ask_members::<T>(node.local(), path).await {
            match answer {
                Ok(answer) => answers.push(answer),
                // Not there: the member holds nothing of it.
                Err(e) if e.contains("HTTP 404") => {}
                Err(e) => missing.push(json!({"node": member, "error": e})),
            }
        }
    }
    Ok((answers, missing))
}

async fn blob(node: &Node, sha256: &str, scope: ScopeQuery) -> Result<Value, NodeError> {
    let own = node.local().blob_index(sha256);
    if !cluster_scope(scope.scope.as_deref())? {
        return to_value(own?);
    }
    if let Err(NodeError::InvalidInput(message)) = &own {
        return Err(NodeError::InvalidInput(message.clone()));
    }
    let path = format!("/v1/index/blobs/{sha256}?scope=node");
    let (nodes, unreachable): (Vec<BlobIndex>, _) = gather(node, own, &path).await?;
    if nodes.is_empty() && unreachable.is_empty() {
        return Err(NodeError::not_found("blob", sha256));
    }
    Ok(json!({
        "scope": "cluster",
        "sha256": sha256,
        "size": nodes.iter().map(|n| n.size).max().unwrap_or(0),
        "logical_bytes": nodes.iter().map(|n| n.logical_bytes).sum::<u64>(),
        "stored_bytes": nodes.iter().map(|n| n.stored_bytes).sum::<u64>(),
        "nodes": nodes,
        "unreachable": unreachable,
    }))
}

async fn database(node: &Node, name: &str, scope: ScopeQuery) -> Result<Value, NodeError> {
    let own = node.local().database_index(name);
    if !cluster_scope(scope.scope.as_deref())? {
        return to_value(own?);
    }
    let path = format!("/v1/index/databases/{name}?scope=node");
    let (nodes, unreachable): (Vec<DatabaseIndex>, _) = gather(node, own, &path).await?;
    if nodes.is_empty() && unreachable.is_empty() {
        return Err(NodeError::not_found("database", name));
    }
    // Per part: copies that serve, and where it was last read and written.
    let mut parts: BTreeMap<String, Value> = BTreeMap::new();
    for index in &nodes {
        for part in &index.parts {
            let entry = parts.entry(part.part.clone()).or_insert_with(
                || json!({"copies": 0, "holders": [], "last_read": null, "last_written": null}),
            );
            if let Some(holders) = entry["holders"].as_array_mut() {
                holders.push(json!({"node": index.node, "state": part.state}));
            }
            if matches!(part.state.as_str(), "ready" | "lazy") {
                entry["copies"] = json!(entry["copies"].as_u64().unwrap_or(0) + 1);
            }
            let newer = |slot: &Value, ms: Option<u64>| {
                ms.is_some_and(|ms| slot["ms"].as_u64().is_none_or(|old| ms > old))
            };
            if newer(&entry["last_read"], part.last_read_ms) {
                entry["last_read"] = json!({"node": index.node, "ms": part.last_read_ms});
            }
            if newer(&entry["last_written"], part.written_ms) {
                entry["last_written"] = json!({"node": index.node, "ms": part.written_ms});
            }
        }
    }
    Ok(json!({
        "scope": "cluster",
        "database": name,
        "logical_bytes": nodes.iter().map(|n| n.logical_bytes).sum::<u64>(),
        "shared_bytes": nodes.iter().map(|n| n.shared_bytes).sum::<u64>(),
        "parts": parts,
        "nodes": nodes,
        "unreachable": unreachable,
    }))
}

async fn disks(node: &Node, scope: ScopeQuery) -> Result<Value, NodeError> {
    let own = node.local().disks_index();
    if !cluster_scope(scope.scope.as_deref())? {
        return to_value(own?);
    }
    let (nodes, unreachable): (Vec<DisksIndex>, _) =
        gather(node, own, "/v1/index/disks?scope=node").await?;
    let sum = |f: fn(&crate::local::index::DiskIndex) -> u64| -> u64 {
        nodes.iter().flat_map(|n| &n.disks).map(f).sum()
    };
    let uses: Vec<(String, f64)> = nodes
        .iter()
        .map(|n| {
            let capacity: u64 = n.disks.iter().map(|d| d.capacity_bytes).sum();
            let used: u64 = n.disks.iter().map(|d| d.used_bytes).sum();
            let ratio = if capacity == 0 {
                0.0
            } else {
                used as f64 / capacity as f64
            };
            (n.node.clone(), ratio)
        })
        .collect();
    let ratios: Vec<f64> = uses.iter().map(|(_, r)| *r).collect();
    Ok(json!({
        "scope": "cluster",
        "capacity_bytes": sum(|d| d.capacity_bytes),
        "used_bytes": sum(|d| d.used_bytes),
        "logical_bytes": sum(|d| d.logical_bytes),
        "stored_bytes": sum(|d| d.stored_bytes),
        "saved_bytes": sum(|d| d.saved_bytes),
        "node_use": uses.into_iter().collect::<BTreeMap<_, _>>(),
        "max_over_mean": max_over_mean(&ratios),
        "nodes": nodes,
        "unreachable": unreachable,
    }))
}

async fn events(node: &Node, query: EventsQuery) -> Result<Value, NodeError> {
    let kind = match query.kind.as_deref() {
        None => None,
        Some(text) => Some(EventKind::parse(text).ok_or_else(|| {
            NodeError::InvalidInput(format!("kind must be read, write or error, not {text:?}"))
        })?),
    };
    let limit = query.limit.unwrap_or(DEFAULT_EVENTS);
    if limit == 0 || limit > crate::observe::events::MAX_LIMIT {
        return Err(NodeError::InvalidInput(format!(
            "limit must be in 1..={}",
            crate::observe::events::MAX_LIMIT
        )));
    }
    let filter = EventFilter {
        kind,
        since_ms: query.since.unwrap_or(0),
        limit,
    };
    let own = node
        .local()
        .events()
        .list(&filter)
        .map(|events| json!({"events": events}))
        .map_err(NodeError::from);
    if !cluster_scope(query.scope.as_deref())? {
        return own.map(|v| json!({"node": node.id(), "events": v["events"]}));
    }
    let mut path = format!(
        "/v1/events?scope=node&limit={limit}&since={}",
        filter.since_ms
    );
    if let Some(kind) = &query.kind {
        path.push_str(&format!("&kind={kind}"));
    }
    let (answers, unreachable): (Vec<Value>, _) = gather(node, own, &path).await?;
    let mut merged: Vec<Event> = answers
        .into_iter()
        .flat_map(|a| serde_json::from_value::<Vec<Event>>(a["events"].clone()).unwrap_or_default())
        .collect();
    merged.sort_by_key(|e| std::cmp::Reverse(e.ts_ms));
    merged.truncate(limit);
    Ok(json!({"scope": "cluster", "events": merged, "unreachable": unreachable}))
}

fn to_value<T: serde::Serialize>(value: T) -> Result<Value, NodeError> {
    serde_json::to_value(value)
        .map_err(|e| NodeError::InvalidInput(format!("cannot show the index: {e}")))
}

pub(super) fn routes(node: Node) -> BoxedFilter<(Response,)> {
    let with_node = warp::any().map(move || node.clone());

    let blob = warp::path!("v1" / "index" / "blobs" / String)
        .and(warp::get())
        .and(warp::query::<ScopeQuery>())
        .and(with_node.clone())
        .then(|sha: String, scope: ScopeQuery, node: Node| {
            async move { respond(StatusCode::OK, blob(&node, &sha, scope).await) }.boxed()
        });

    let database = warp::path!("v1" / "index" / "databases" / String)
        .and(warp::get())
        .and(warp::query::<ScopeQuery>())
        .and(with_node.clone())
        .then(|name: String, scope: ScopeQuery, node: Node| {
            async move { respond(StatusCode::OK, database(&node, &name, scope).await) }.boxed()
        });

    let disks = warp::path!("v1" / "index" / "disks")
        .and(warp::get())
        .and(warp::query::<ScopeQuery>())
        .and(with_node.clone())
        .then(|scope: ScopeQuery, node: Node| {
            async move { respond(StatusCode::OK, disks(&node, scope).await) }.boxed()
        });

    let events = warp::path!("v1" / "events")
        .and(warp::get())
        .and(warp::query::<EventsQuery>())
        .and(with_node)
        .then(|query: EventsQuery, node: Node| {
            async move { respond(StatusCode::OK, events(&node, query).await) }.boxed()
        });

    blob.or(database)
        .unify()
        .or(disks)
        .unify()
        .or(events)
        .unify()
        .boxed()
}
