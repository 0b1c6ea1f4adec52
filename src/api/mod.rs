//! The HTTP API (v1, JSON). Routes call the node and turn its results into
//! responses; `error.rs` is the one place errors become `{"error":{…}}`, and
//! `auth.rs` the one guard deciding who may call what, before any route runs.
//!
//! One file per resource: `databases`, `aliases`, `query`, `cluster` (the
//! cluster as this node sees it, the plan, GC), `internal` (node to node),
//! `admin` (backups, scrub), `index` (where every file is), `metrics`,
//! `dashboard`, `openapi` (the API described); `auth` also serves
//! `POST /v1/tokens`.

mod admin;
mod aliases;
mod auth;
mod cluster;
mod dashboard;
mod databases;
mod error;
mod index;
mod internal;
mod metrics;
mod openapi;
mod query;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

pub use auth::CLUSTER_HEADER;
use error::recover;
pub use error::{ApiError, api_error_response, error_response, json_response};

use crate::local::NodeError;
use crate::node::Node;
pub use query::ARROW_STREAM_MEDIA_TYPE;

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

/// dram's routes, then `extra` (routes a program mounted through the builder),
/// with every rejection turned into a JSON error.
pub fn routes(
    node: Node,
    extra: Option<BoxedFilter<(Response,)>>,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    let body = body(
        node.config().http.max_body_bytes,
        node.config().http.body_timeout_ms,
    )
    .boxed();
    // Routes mounted by the program; none matches a path when there are none.
    let extra = extra.unwrap_or_else(|| {
        warp::any()
            .and_then(|| async { Err::<Response, _>(warp::reject::not_found()) })
            .boxed()
    });
    // Grouped and boxed: one long chain of `or`s overflows the type checker's
    // recursion limit in release builds.
    let routes = query::routes(node.clone(), body.clone())
        .or(auth::routes(node.clone(), body.clone()))
        .unify()
        .or(databases::routes(node.clone(), body.clone()))
        .unify()
        .or(cluster::routes(node.clone()))
        .unify()
        .or(internal::routes(node.clone(), body.clone()))
        .unify()
        .or(admin::routes(node.clone(), body.clone()))
        .unify()
        .or(index::routes(node.clone()))
        .unify()
        .or(metrics::routes(node.clone()))
        .unify()
        .or(aliases::routes(node.clone(), body))
        .unify()
        .or(dashboard::routes())
        .unify()
        .or(openapi::routes())
        .unify()
        .or(extra)
        .unify();
    auth::guard(node).and(routes).recover(recover).unify()
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
