//! Cluster routes: `GET /v1/cluster`, `GET /v1/cluster/shards?database=D`,
//! `GET /v1/plan[?database=D&replicas=K]`, and the node-to-node `/v1/internal/*`
//! routes, which need the cluster secret when one is configured.

use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::Semaphore;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{error_response, respond};
use crate::catalog::{AllReplicas, Replicas};
use crate::cluster::Membership;
use crate::local::NodeError;
use crate::node::Node;
use crate::primary::Role;
use crate::primary::actions::TrashRequest;
use crate::query::{MapRequest, PARTIAL_MEDIA_TYPE, QueryError};

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

fn not_clustered() -> NodeError {
    NodeError::NotReady("this node has not joined gossip (it serves no HTTP)".into())
}

/// The node's membership and role in the election, if it is in a cluster.
fn clustered(node: &Node) -> Result<(&Membership, &Role), NodeError> {
    match (node.membership(), node.role()) {
        (Some(membership), Some(role)) => Ok((membership, role)),
        _ => Err(not_clustered()),
    }
}

/// Whether `authorization` carries the cluster secret (always, when none is set).
fn authorized(node: &Node, authorization: Option<&str>) -> bool {
    match node.config().auth.peer_secret() {
        None => true,
        Some(secret) => authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|token| {
                crate::auth::constant_time_eq(token.trim().as_bytes(), secret.as_bytes())
            }),
    }
}

pub(super) fn routes(node: Node, body: BoxedFilter<(bytes::Bytes,)>) -> BoxedFilter<(Response,)> {
    let max_maps = node.config().query.max_map_requests;
    let maps_running = Arc::new(Semaphore::new(max_maps));
    let with_node = warp::any().map(move || node.clone());

    let status = warp::path!("v1" / "cluster")
        .and(warp::get())
        .and(with_node.clone())
        .then(|node: Node| async move {
            let result = match node.cluster_status().await {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err(not_clustered()),
                Err(e) => Err(e),
            };
            respond(StatusCode::OK, result)
        });

    let shards = warp::path!("v1" / "cluster" / "shards")
        .and(warp::get())
        .and(warp::query::<ShardsQuery>())
        .and(with_node.clone())
        .then(|query: ShardsQuery, node: Node| async move {
            let result = match node.membership() {
                Some(membership) => {
                    membership
                        .shard_holders(node.local(), &query.database)
                        .await
                }
                None => Err(not_clustered()),
            };
            respond(StatusCode::OK, result)
        });

    let plan = warp::path!("v1" / "plan")
        .and(warp::get())
        .and(warp::query::<PlanQuery>())
        .and(with_node.clone())
        .then(|query: PlanQuery, node: Node| async move {
            respond(StatusCode::OK, plan(&node, query).await)
        });

    let gc = warp::path!("v1" / "gc")
        .and(warp::get())
        .and(with_node.clone())
        .then(|node: Node| async move {
            let result = match clustered(&node) {
                Ok((membership, role)) => role.gc_report(node.local(), membership).await,
                Err(e) => Err(e),
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
        .map(|node: Node| respond(StatusCode::OK, node.local().registry()));
    // A member's registry pushed with a change it took: merged as if pulled.
    let registry_push = internal
        .clone()
        .and(warp::path!("registry"))
        .and(warp::post())
        .and(body.clone())
        .map(|node: Node, body: bytes::Bytes| {
            let result = super::parse::<crate::registry::Registry>(&body)
                .and_then(|remote| node.local().merge_registry(&remote))
                .map(|changes| serde_json::json!({"merged": !changes.is_empty()}));
            respond(StatusCode::OK, result)
        });
    let inventory = internal
        .clone()
        .and(warp::path!("inventory"))
        .and(warp::get())
        .map(|node: Node| respond(StatusCode::OK, node.local().inventory()));
    let map = internal
        .clone()
        .and(warp::path!("map"))
        .and(warp::post())
        .and(body.clone())
        .and(warp::any().map(move || maps_running.clone()))
        .then(
            move |node: Node, body: bytes::Bytes, running: Arc<Semaphore>| async move {
                // Refused at once past the bound: each waits for a map slot.
                let Ok(_running) = running.try_acquire_owned() else {
                    return super::error::api_error_response(&QueryError::Overloaded {
                        what: "map requests",
                        limit: max_maps,
                        field: "query.max_map_requests",
                    });
                };
                let request: Result<MapRequest, QueryError> =
                    super::parse(&body).map_err(QueryError::from);
                let result = match request {
                    Ok(request) => node.queries().map_request(request).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(bytes) => super::error::bytes_response(
                        StatusCode::OK,
                        PARTIAL_MEDIA_TYPE,
                        None,
                        bytes,
                    ),
                    Err(e) => super::error::api_error_response(&e),
                }
            },
        );
    // A byte range of a file of a part this node holds, for a member whose
    // SQL reads a part it does not hold.
    #[cfg(feature = "sql")]
    let file = internal
        .clone()
        .and(warp::path("file"))
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::header::optional::<String>("range"))
        .then(
            |node: Node, tail: warp::path::Tail, range: Option<String>| async move {
                let location = percent_decode(tail.as_str());
                match crate::query::sql::store::serve_range(
                    node.local(),
                    &location,
                    range.as_deref(),
                )
                .await
                {
                    Ok(bytes) => super::error::bytes_response(
                        if range.is_some() {
                            StatusCode::PARTIAL_CONTENT
                        } else {
                            StatusCode::OK
                        },
                        "application/octet-stream",
                        None,
                        bytes,
                    ),
                    Err(e) => super::error::api_error_response(&e),
                }
            },
        );
    let trash = internal
        .and(warp::path!("trash"))
        .and(warp::post())
        .and(body)
        .then(|node: Node, body: bytes::Bytes| async move {
            let result = async {
                let request: TrashRequest = super::parse(&body)?;
                let (membership, role) = clustered(&node)?;
                role.trash(node.local(), membership, &request).await?;
                Ok::<_, NodeError>(serde_json::json!({"trashed": true}))
            }
            .await;
            respond(StatusCode::OK, result)
        });

    let routes = status
        .or(shards)
        .unify()
        .or(registry)
        .unify()
        .or(registry_push)
        .unify()
        .or(inventory)
        .unify()
        .or(trash)
        .unify()
        .or(map)
        .unify()
        .or(plan)
        .unify()
        .or(gc)
        .unify();
    #[cfg(feature = "sql")]
    let routes = routes.or(file).unify();
    routes.boxed()
}

/// A URL path as the text it encodes.
#[cfg(feature = "sql")]
fn percent_decode(path: &str) -> String {
    url::form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
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
