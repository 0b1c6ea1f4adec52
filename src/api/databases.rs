//! Databases: `GET /v1/health`, `GET|POST /v1/databases`,
//! `GET|DELETE /v1/databases/{name}`, `POST /v1/databases/{name}/restore`,
//! `GET /v1/stats`.

use bytes::Bytes;
use futures::FutureExt;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{json_response, respond};
use super::{acknowledged, parse};
use crate::local::{AddDatabase, NodeError};
use crate::node::Node;

/// A database as this node holds it, with `holders`: which members hold each of
/// its shards, and in which state.
async fn database_with_holders(node: &Node, name: &str) -> Result<serde_json::Value, NodeError> {
    let info = node.local().database(name)?;
    let mut value = serde_json::to_value(&info)
        .map_err(|e| NodeError::InvalidInput(format!("cannot show {name}: {e}")))?;
    if let Ok(ids) = node.local().shard_ids(name) {
        value["shard_ids"] = serde_json::json!(ids);
    }
    if let Some(membership) = node.membership() {
        let holders = membership.shard_holders(node.local(), name).await?;
        value["holders"] = serde_json::json!({"global": holders.global, "shards": holders.shards});
    }
    Ok(value)
}

pub(super) fn routes(node: Node, body: BoxedFilter<(Bytes,)>) -> BoxedFilter<(Response,)> {
    let with_node = warp::any().map(move || node.clone());

    let health = warp::path!("v1" / "health")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Node| {
            // Alive either way (200); `degraded` says what does not work.
            let reasons = node.local().health_problems();
            json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "status": if reasons.is_empty() { "ok" } else { "degraded" },
                    "reasons": reasons,
                    "node": node.id(),
                    "version": env!("CARGO_PKG_VERSION"),
                }),
            )
        });

    let list_databases = warp::path!("v1" / "databases")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Node| {
            respond(
                StatusCode::OK,
                node.local()
                    .databases()
                    .map(|databases| serde_json::json!({ "databases": databases })),
            )
        });

    let add_database = warp::path!("v1" / "databases")
        .and(warp::post())
        .and(body.clone())
        .and(with_node.clone())
        .then(|body: Bytes, node: Node| {
            async move {
                let result = match parse::<AddDatabase>(&body) {
                    Ok(request) => node.local().add_database(request).await,
                    Err(e) => Err(e),
                };
                respond(StatusCode::ACCEPTED, acknowledged(&node, result).await)
            }
            .boxed()
        });

    let get_database = warp::path!("v1" / "databases" / String)
        .and(warp::get())
        .and(with_node.clone())
        .then(|name: String, node: Node| {
            async move { respond(StatusCode::OK, database_with_holders(&node, &name).await) }
                .boxed()
        });

    let delete_database = warp::path!("v1" / "databases" / String)
        .and(warp::delete())
        .and(with_node.clone())
        .then(|name: String, node: Node| {
            async move {
                let result = node.local().remove_database(&name).await;
                respond(StatusCode::OK, acknowledged(&node, result).await)
            }
            .boxed()
        });

    let restore_database = warp::path!("v1" / "databases" / String / "restore")
        .and(warp::post())
        .and(with_node.clone())
        .then(|name: String, node: Node| {
            async move {
                let result = node.local().restore_database(&name).await;
                respond(StatusCode::OK, acknowledged(&node, result).await)
            }
            .boxed()
        });

    let stats = warp::path!("v1" / "stats")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Node| respond(StatusCode::OK, node.local().stats()));

    health
        .or(list_databases)
        .unify()
        .or(add_database)
        .unify()
        .or(get_database)
        .unify()
        .or(delete_database)
        .unify()
        .or(restore_database)
        .unify()
        .or(stats)
        .unify()
        .boxed()
}
