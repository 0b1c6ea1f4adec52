//! The cluster as this node sees it: `GET /v1/cluster`,
//! `GET /v1/cluster/shards?database=D`, `GET /v1/plan[?database=D&replicas=K]`
//! and `GET /v1/gc`.

use futures::FutureExt;
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::respond;
use crate::catalog::{AllReplicas, Replicas};
use crate::cluster::Membership;
use crate::local::NodeError;
use crate::node::Node;
use crate::primary::Role;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardsQuery {
    database: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    database: Option<String>,
    replicas: Option<String>,
}

fn parse_replicas(text: &str) -> Result<Replicas, NodeError> {
    if text == "all" {
        return Ok(Replicas::All(AllReplicas::All));
    }
    match text.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(Replicas::Count(n)),
        _ => Err(NodeError::InvalidInput(format!(
            "replicas must be a positive number or \"all\", not {text:?}"
        ))),
    }
}

async fn plan(node: &Node, query: PlanQuery) -> Result<serde_json::Value, NodeError> {
    let (membership, role) = clustered(node)?;
    let to_json = |value: Result<serde_json::Value, serde_json::Error>| {
        value.map_err(|e| NodeError::InvalidInput(format!("cannot show the plan: {e}")))
    };
    match (query.database, query.replicas) {
        (None, None) => to_json(serde_json::to_value(
            role.plan(node.local(), membership).await?,
        )),
        (Some(database), Some(replicas)) => {
            let replicas = parse_replicas(&replicas)?;
            to_json(serde_json::to_value(
                crate::primary::what_if_replicas(node.local(), membership, &database, replicas)
                    .await?,
            ))
        }
        _ => Err(NodeError::InvalidInput(
            "give both database and replicas, or neither".into(),
        )),
    }
}

pub(super) fn not_clustered() -> NodeError {
    NodeError::NotReady("this node has not joined gossip (it serves no HTTP)".into())
}

/// The node's membership and role in the election, if it is in a cluster.
pub(super) fn clustered(node: &Node) -> Result<(&Membership, &Role), NodeError> {
    match (node.membership(), node.role()) {
        (Some(membership), Some(role)) => Ok((membership, role)),
        _ => Err(not_clustered()),
    }
}

pub(super) fn routes(node: Node) -> BoxedFilter<(Response,)> {
    let with_node = warp::any().map(move || node.clone());

    let status = warp::path!("v1" / "cluster")
        .and(warp::get())
        .and(with_node.clone())
        .then(|node: Node| {
            async move {
                let result = match node.cluster_status().await {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => Err(not_clustered()),
                    Err(e) => Err(e),
                };
                respond(StatusCode::OK, result)
            }
            .boxed()
        });

    let shards = warp::path!("v1" / "cluster" / "shards")
        .and(warp::get())
        .and(warp::query::<ShardsQuery>())
        .and(with_node.clone())
        .then(|query: ShardsQuery, node: Node| {
            async move {
                let result = match node.membership() {
                    Some(membership) => {
                        membership
                            .shard_holders(node.local(), &query.database)
                            .await
                    }
                    None => Err(not_clustered()),
                };
                respond(StatusCode::OK, result)
            }
            .boxed()
        });

    let plan = warp::path!("v1" / "plan")
        .and(warp::get())
        .and(warp::query::<PlanQuery>())
        .and(with_node.clone())
        .then(|query: PlanQuery, node: Node| {
            async move { respond(StatusCode::OK, plan(&node, query).await) }.boxed()
        });

    let gc = warp::path!("v1" / "gc")
        .and(warp::get())
        .and(with_node.clone())
        .then(|node: Node| {
            async move {
                let result = match clustered(&node) {
                    Ok((membership, role)) => role.gc_report(node.local(), membership).await,
                    Err(e) => Err(e),
                };
                respond(StatusCode::OK, result)
            }
            .boxed()
        });

    status
        .or(shards)
        .unify()
        .or(plan)
        .unify()
        .or(gc)
        .unify()
        .boxed()
}
