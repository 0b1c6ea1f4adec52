//! Cluster routes: `GET /v1/cluster`, `GET /v1/cluster/shards?database=D`, and
//! the node-to-node `/v1/internal/*` routes, which need the cluster secret when
//! one is configured.

use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{error_response, respond};
use crate::node::{Node, NodeError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardsQuery {
    database: String,
}

fn not_clustered() -> NodeError {
    NodeError::NotReady("this node has not joined gossip (it serves no HTTP)".into())
}

/// Whether `authorization` carries the cluster secret (always, when none is set).
fn authorized(node: &Node, authorization: Option<&str>) -> bool {
    match &node.config().auth.cluster_secret {
        None => true,
        Some(secret) => authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|token| constant_time_eq(token.as_bytes(), secret.as_bytes())),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn routes(node: Node) -> BoxedFilter<(Response,)> {
    let with_node = warp::any().map(move || node.clone());

    let status = warp::path!("v1" / "cluster")
        .and(warp::get())
        .and(with_node.clone())
        .then(|node: Node| async move {
            let result = match node.membership() {
                Some(membership) => membership.status(&node).await,
                None => Err(not_clustered()),
            };
            respond(StatusCode::OK, result)
        });

    let shards = warp::path!("v1" / "cluster" / "shards")
        .and(warp::get())
        .and(warp::query::<ShardsQuery>())
        .and(with_node.clone())
        .then(|query: ShardsQuery, node: Node| async move {
            let result = match node.membership() {
                Some(membership) => membership.shard_holders(&node, &query.database).await,
                None => Err(not_clustered()),
            };
            respond(StatusCode::OK, result)
        });

    let internal = warp::path("v1")
        .and(warp::path("internal"))
        .and(warp::header::optional::<String>("authorization"))
        .and(with_node.clone())
        .and_then(|authorization: Option<String>, node: Node| async move {
            if authorized(&node, authorization.as_deref()) {
                Ok(node)
            } else {
                Err(warp::reject::custom(Unauthorized))
            }
        });
    let registry = internal
        .clone()
        .and(warp::path!("registry"))
        .and(warp::get())
        .map(|node: Node| respond(StatusCode::OK, node.registry()));
    let inventory = internal
        .and(warp::path!("inventory"))
        .and(warp::get())
        .map(|node: Node| respond(StatusCode::OK, node.inventory()));

    status
        .or(shards)
        .unify()
        .or(registry)
        .unify()
        .or(inventory)
        .unify()
        .boxed()
}

/// A `/v1/internal/*` request without the cluster secret.
#[derive(Debug)]
pub(super) struct Unauthorized;

impl warp::reject::Reject for Unauthorized {}

pub(super) fn unauthorized_response() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "node-to-node calls need the cluster secret (auth.cluster_secret) as a bearer token",
    )
}
