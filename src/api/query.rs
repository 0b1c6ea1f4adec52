//! Queries: `GET /v1/analyses` and `POST /v1/query/{database_or_alias}/{analysis}`
//! (JSON, or an Arrow IPC stream for `sql` when asked), at most
//! `query.max_concurrent_queries` at once; `Cache-Control: no-cache` keeps
//! the result cache out of a query.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{self, api_error_response, json_response};
use super::parse;
use crate::node::Node;
use crate::query::{QueryError, QueryRequest};

pub(super) fn routes(node: Node, body: BoxedFilter<(Bytes,)>) -> BoxedFilter<(Response,)> {
    let max_queries = node.config().query.max_concurrent_queries;
    let queries_running = Arc::new(tokio::sync::Semaphore::new(max_queries));
    let with_node = warp::any().map(move || node.clone());

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
        .and(warp::header::optional::<String>("cache-control"))
        .and(with_node.clone())
        .and(warp::any().map(move || queries_running.clone()))
        .then(
            move |target: String,
                  analysis: String,
                  body: Bytes,
                  forwarded: Option<String>,
                  accept: Option<String>,
                  cache_control: Option<String>,
                  node: Node,
                  running: Arc<tokio::sync::Semaphore>| {
                async move {
                    // Refused at once past the bound: a queue would only grow.
                    let Ok(_running) = running.try_acquire_owned() else {
                        return api_error_response(&QueryError::Overloaded {
                            what: "queries",
                            limit: max_queries,
                            field: "query.max_concurrent_queries",
                        });
                    };
                    let mut request = if body.is_empty() {
                        Ok(QueryRequest::default())
                    } else {
                        parse::<QueryRequest>(&body).map_err(QueryError::from)
                    };
                    // `Cache-Control: no-cache` (or `no-store`): computed anew,
                    // and not kept.
                    if let (Ok(request), Some(control)) = (&mut request, &cache_control)
                        && control
                            .split(',')
                            .any(|d| matches!(d.trim(), "no-cache" | "no-store"))
                    {
                        request.cache = Some(false);
                    }
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
                            Ok((body, _)) => error::bytes_response(
                                StatusCode::OK,
                                "application/json",
                                None,
                                body,
                            ),
                            Err(e) => api_error_response(&e),
                        };
                    }
                    #[cfg(not(feature = "sql"))]
                    let _ = accept;
                    let result = match request {
                        Ok(request) => {
                            node.queries()
                                .query_json(&target, &analysis, request, forwarded.is_none())
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(body) => {
                            error::bytes_response(StatusCode::OK, "application/json", None, body)
                        }
                        Err(e) => api_error_response(&e),
                    }
                }
                .boxed()
            },
        );

    list_analyses.or(query).unify().boxed()
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
