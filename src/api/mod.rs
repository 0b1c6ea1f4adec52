//! The HTTP API (v1, JSON). Routes call the node and turn its results into
//! responses; `error.rs` is the one place errors become `{"error":{…}}`.

mod admin;
mod auth;
mod cluster;
mod dashboard;
mod error;
mod index;
mod metrics;

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

pub use auth::CLUSTER_HEADER;
pub use error::{ApiError, api_error_response, error_response, json_response};
use error::{recover, respond};

use crate::local::{AddDatabase, AliasAction, NodeError};
use crate::node::Node;
use crate::query::{QueryError, QueryRequest};

/// A request's body: at most `max` bytes (its content-length must say so:
/// 413 otherwise), all of it within `timeout_ms` (408 `timeout` otherwise).
fn body(
    max: u64,
    timeout_ms: u64,
) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Copy {
    warp::body::content_length_limit(max)
        .and(warp::body::stream())
        .and_then(move |stream| read_body(stream, timeout_ms))
}

async fn read_body<B: Buf>(
    stream: impl Stream<Item = Result<B, warp::Error>>,
    timeout_ms: u64,
) -> Result<Bytes, warp::Rejection> {
    let read = async {
        let mut stream = std::pin::pin!(stream);
        let mut out = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let mut chunk = chunk.map_err(|e| error::BodyError::Unreadable(e.to_string()))?;
            while chunk.has_remaining() {
                let len = chunk.chunk().len();
                out.extend_from_slice(chunk.chunk());
                chunk.advance(len);
            }
        }
        Ok::<_, error::BodyError>(out.freeze())
    };
    match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), read).await {
        Ok(read) => read.map_err(warp::reject::custom),
        Err(_) => Err(warp::reject::custom(error::BodyError::Timeout(timeout_ms))),
    }
}

/// Parses a JSON body strictly (unknown fields are errors).
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, NodeError> {
    if body.is_empty() {
        return Err(NodeError::InvalidInput(
            "request body is empty; expected JSON".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| NodeError::InvalidInput(format!("invalid JSON body: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBatch {
    actions: Vec<AliasAction>,
}

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

/// dram's routes, then `extra` (routes a program mounted through the builder),
/// with every rejection turned into a JSON error.
pub fn routes(
    node: Node,
    extra: Option<BoxedFilter<(Response,)>>,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    let max_body = node.config().http.max_body_bytes;
    let body_timeout_ms = node.config().http.body_timeout_ms;
    let max_queries = node.config().query.max_concurrent_queries;
    let queries_running = Arc::new(tokio::sync::Semaphore::new(max_queries));
    let node_for_cluster = node.clone();
    let with_node = warp::any().map(move || node.clone());
    let body = body(max_body, body_timeout_ms);

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
        .and(body)
        .and(with_node.clone())
        .then(|body: Bytes, node: Node| async move {
            let result = match parse::<AddDatabase>(&body) {
                Ok(request) => node.local().add_database(request).await,
                Err(e) => Err(e),
            };
            respond(StatusCode::ACCEPTED, acknowledged(&node, result).await)
        });

    let get_database = warp::path!("v1" / "databases" / String)
        .and(warp::get())
        .and(with_node.clone())
        .then(|name: String, node: Node| async move {
            respond(StatusCode::OK, database_with_holders(&node, &name).await)
        });

    let delete_database = warp::path!("v1" / "databases" / String)
        .and(warp::delete())
        .and(with_node.clone())
        .then(|name: String, node: Node| async move {
            let result = node.local().remove_database(&name).await;
            respond(StatusCode::OK, acknowledged(&node, result).await)
        });

    let restore_database = warp::path!("v1" / "databases" / String / "restore")
        .and(warp::post())
        .and(with_node.clone())
        .then(|name: String, node: Node| async move {
            let result = node.local().restore_database(&name).await;
            respond(StatusCode::OK, acknowledged(&node, result).await)
        });

    let list_aliases = warp::path!("v1" / "aliases")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Node| {
            respond(
                StatusCode::OK,
                node.local()
                    .aliases()
                    .map(|aliases| serde_json::json!({ "aliases": aliases })),
            )
        });

    let batch_aliases = warp::path!("v1" / "aliases" / "_batch")
        .and(warp::post())
        .and(body)
        .and(with_node.clone())
        .then(|body: Bytes, node: Node| async move {
            let result = parse::<AliasBatch>(&body)
                .and_then(|batch| node.local().apply_aliases(&batch.actions))
                .map(|aliases| serde_json::json!({ "applied": aliases }));
            respond(StatusCode::OK, acknowledged(&node, result).await)
        });

    let get_alias = warp::path!("v1" / "aliases" / String)
        .and(warp::get())
        .and(with_node.clone())
        .map(|name: String, node: Node| respond(StatusCode::OK, node.local().alias(&name)));

    let put_alias = warp::path!("v1" / "aliases" / String)
        .and(warp::put())
        .and(body)
        .and(with_node.clone())
        .then(|name: String, body: Bytes, node: Node| async move {
            let result =
                parse::<AliasBody>(&body).and_then(|b| node.local().set_alias(&name, &b.target));
            respond(StatusCode::OK, acknowledged(&node, result).await)
        });

    let delete_alias = warp::path!("v1" / "aliases" / String)
        .and(warp::delete())
        .and(with_node.clone())
        .then(|name: String, node: Node| async move {
            let result = node.local().remove_alias(&name);
            respond(StatusCode::OK, acknowledged(&node, result).await)
        });

    let stats = warp::path!("v1" / "stats")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Node| respond(StatusCode::OK, node.local().stats()));

    let list_analyses = warp::path!("v1" / "analyses")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Node| {
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "analyses": node.queries().analyses().list() }),
            )
        });

    let query = warp::path!("v1" / "query" / String / String)
        .and(warp::post())
        .and(body)
        .and(warp::header::optional::<String>(
            crate::query::FORWARDED_HEADER,
        ))
        .and(warp::header::optional::<String>("accept"))
        .and(with_node.clone())
        .and(warp::any().map(move || queries_running.clone()))
        .then(
            move |target: String,
                  analysis: String,
                  body: Bytes,
                  forwarded: Option<String>,
                  accept: Option<String>,
                  node: Node,
                  running: Arc<tokio::sync::Semaphore>| async move {
                // Refused at once past the bound: a queue would only grow.
                let Ok(_running) = running.try_acquire_owned() else {
                    return api_error_response(&QueryError::Overloaded {
                        what: "queries",
                        limit: max_queries,
                        field: "query.max_concurrent_queries",
                    });
                };
                let request = if body.is_empty() {
                    Ok(QueryRequest::default())
                } else {
                    parse::<QueryRequest>(&body).map_err(QueryError::from)
                };
                #[cfg(feature = "sql")]
                if analysis == "sql"
                    && accept
                        .as_deref()
                        .is_some_and(|a| a.contains(ARROW_STREAM_MEDIA_TYPE))
                {
                    let answer = match request {
                        Ok(request) => node.queries().query_sql_arrow(&target, request).await,
                        Err(e) => Err(e),
                    };
                    return match answer {
                        Ok((bytes, meta)) => arrow_response(bytes, &meta),
                        Err(e) => api_error_response(&e),
                    };
                }
                // The JSON answer written straight from Arrow, when this
                // member runs it (else below: it may forward the query).
                #[cfg(feature = "sql")]
                if analysis == "sql" && node.queries().answers_sql(&target) {
                    let answer = match request {
                        Ok(request) => node.queries().query_sql_json(&target, request).await,
                        Err(e) => Err(e),
                    };
                    return match answer {
                        Ok((body, _)) => {
                            error::bytes_response(StatusCode::OK, "application/json", None, body)
                        }
                        Err(e) => api_error_response(&e),
                    };
                }
                #[cfg(not(feature = "sql"))]
                let _ = accept;
                let result = match request {
                    Ok(request) => {
                        node.queries()
                            .query_or_forward(&target, &analysis, request, forwarded.is_none())
                            .await
                    }
                    Err(e) => Err(e),
                };
                respond(StatusCode::OK, result)
            },
        );

    // Routes mounted by the program; none matches a path when there are none.
    let extra = extra.unwrap_or_else(|| {
        warp::any()
            .and_then(|| async { Err::<Response, _>(warp::reject::not_found()) })
            .boxed()
    });

    // Grouped and boxed: one long chain of `or`s overflows the type checker's
    // recursion limit in release builds.
    let queries = health
        .or(list_analyses)
        .unify()
        .or(query)
        .unify()
        .or(stats)
        .unify()
        .boxed();
    let databases = list_databases
        .or(add_database)
        .unify()
        .or(get_database)
        .unify()
        .or(delete_database)
        .unify()
        .or(restore_database)
        .unify()
        .boxed();
    let aliases = list_aliases
        .or(batch_aliases)
        .unify()
        .or(get_alias)
        .unify()
        .or(put_alias)
        .unify()
        .or(delete_alias)
        .unify()
        .boxed();

    let guard = auth::guard(node_for_cluster.clone());
    let tokens = auth::routes(node_for_cluster.clone(), body.boxed());
    let cluster = cluster::routes(node_for_cluster.clone(), body.boxed())
        .or(admin::routes(node_for_cluster.clone(), body.boxed()))
        .unify()
        .boxed();
    let index = index::routes(node_for_cluster.clone());

    let routes = queries
        .or(tokens)
        .unify()
        .or(databases)
        .unify()
        .or(cluster)
        .unify()
        .or(index)
        .unify()
        .or(metrics::routes(node_for_cluster))
        .unify()
        .or(aliases)
        .unify()
        .or(dashboard::routes())
        .unify()
        .or(extra)
        .unify();
    guard.and(routes).recover(recover).unify()
}

/// A change's answer, once every live member has it: the answer's JSON object
/// with `"acknowledged": true`, or `false` when `cluster.ack_timeout_ms`
/// passed first (the change is made here and still spreading).
async fn acknowledged<T: serde::Serialize>(
    node: &Node,
    result: Result<T, NodeError>,
) -> Result<serde_json::Value, NodeError> {
    let value = serde_json::to_value(result?)
        .map_err(|e| NodeError::InvalidInput(format!("cannot show the answer: {e}")))?;
    let acknowledged = match node.membership() {
        Some(membership) => {
            let timeout = std::time::Duration::from_millis(node.config().cluster.ack_timeout_ms);
            membership.push_registry(node.local()).await;
            membership
                .await_registry_agreement(node.local(), timeout)
                .await
        }
        None => true,
    };
    Ok(match value {
        serde_json::Value::Object(mut object) => {
            object.insert("acknowledged".into(), acknowledged.into());
            serde_json::Value::Object(object)
        }
        other => other,
    })
}

/// The media type of an Arrow IPC stream: `sql` answers in it when asked.
pub const ARROW_STREAM_MEDIA_TYPE: &str = "application/vnd.apache.arrow.stream";

/// Rows as an Arrow IPC stream; the query's meta (JSON) in `x-dram-meta`.
#[cfg(feature = "sql")]
fn arrow_response(bytes: Vec<u8>, meta: &crate::query::QueryMeta) -> Response {
    // A header value is ASCII: anything else in the meta is escaped.
    let meta: String = serde_json::to_string(meta)
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c.to_string()
            } else {
                c.encode_utf16(&mut [0; 2])
                    .iter()
                    .map(|u| format!("\\u{u:04x}"))
                    .collect()
            }
        })
        .collect();
    error::bytes_response(
        StatusCode::OK,
        ARROW_STREAM_MEDIA_TYPE,
        Some(("x-dram-meta", meta)),
        bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_unknown_fields_and_empty_bodies() {
        let err = parse::<AliasBody>(&Bytes::from_static(br#"{"target":"a","x":1}"#)).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(parse::<AliasBody>(&Bytes::new()).is_err());
    }
}
