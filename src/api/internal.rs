//! Node to node (`/v1/internal/*`; the guard in `auth` lets only members
//! of this cluster, with its secret, through): a member's registry (pulled,
//! or pushed with a change), its inventory, map requests of a query's root,
//! byte ranges of the files of its parts (for another member's SQL), and the
//! primary's trash requests.

use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::Semaphore;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{json_response, respond};
use crate::local::NodeError;
use crate::node::Node;
use crate::primary::actions::TrashRequest;
use crate::query::{MapRequest, PARTIAL_MEDIA_TYPE, QueryError};

pub(super) fn routes(node: Node, body: BoxedFilter<(bytes::Bytes,)>) -> BoxedFilter<(Response,)> {
    let max_maps = node.config().query.max_map_requests;
    let maps_running = Arc::new(Semaphore::new(max_maps));
    let with_node = warp::any().map(move || node.clone());

    // The guard (`auth`) has checked the cluster secret and id.
    let internal = warp::path("v1").and(warp::path("internal")).and(with_node);
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
            move |node: Node, body: bytes::Bytes, running: Arc<Semaphore>| {
                async move {
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
                        Ok((bytes, cached)) => {
                            let mut response = super::error::bytes_response(
                                StatusCode::OK,
                                PARTIAL_MEDIA_TYPE,
                                None,
                                bytes,
                            );
                            if cached > 0 {
                                response.headers_mut().insert(
                                    crate::query::root::CACHED_SHARDS_HEADER,
                                    warp::http::HeaderValue::from(cached),
                                );
                            }
                            response
                        }
                        Err(e) => super::error::api_error_response(&e),
                    }
                }
                .boxed()
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
            |node: Node, tail: warp::path::Tail, range: Option<String>| {
                async move {
                    let location = super::auth::percent_decode(tail.as_str())
                        .unwrap_or_else(|| tail.as_str().to_string());
                    match crate::query::sql::remote::serve_range(
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
                }
                .boxed()
            },
        );
    let trash = internal
        .clone()
        .and(warp::path!("trash"))
        .and(warp::post())
        .and(body.clone())
        .then(|node: Node, body: bytes::Bytes| {
            async move {
                let result = async {
                    let request: TrashRequest = super::parse(&body)?;
                    let (membership, role) = super::cluster::clustered(&node)?;
                    role.trash(node.local(), membership, &request).await?;
                    Ok::<_, NodeError>(serde_json::json!({"trashed": true}))
                }
                .await;
                respond(StatusCode::OK, result)
            }
            .boxed()
        });

    // The result cache's share this member owns (see `query::cache`).
    let cache_get = internal
        .clone()
        .and(warp::path!("cache" / String))
        .and(warp::get())
        .map(|node: Node, key: String| {
            use crate::query::cache::{DATABASE_HEADER, SHARDS_HEADER};
            match node.queries().kept_here(&key) {
                Some(cached) => {
                    let mut response = super::error::bytes_response(
                        StatusCode::OK,
                        "application/json",
                        Some((SHARDS_HEADER, cached.shards.to_string())),
                        cached.result,
                    );
                    if let Ok(value) = warp::http::HeaderValue::from_str(&cached.database) {
                        response.headers_mut().insert(DATABASE_HEADER, value);
                    }
                    response
                }
                None => super::error::error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no answer kept under this key",
                ),
            }
        });
    // Warm alias moves (see `query::warm`): this member's recent queries of
    // a database, and the fetch of its lazy copies of one.
    let recent = internal
        .clone()
        .and(warp::path!("recent" / String))
        .and(warp::get())
        .map(|node: Node, database: String| {
            let queries = node.queries().recent_queries(&database);
            json_response(StatusCode::OK, &serde_json::json!({ "queries": queries }))
        });
    let warm = internal
        .clone()
        .and(warp::path!("warm" / String))
        .and(warp::post())
        .then(|node: Node, database: String| {
            async move {
                respond(
                    StatusCode::OK,
                    node.local().fetch_lazy_copies(&database).await,
                )
            }
            .boxed()
        });
    let cache_put = internal
        .and(warp::path!("cache" / String))
        .and(warp::put())
        .and(warp::header::optional::<usize>(
            crate::query::cache::SHARDS_HEADER,
        ))
        .and(warp::header::optional::<String>(
            crate::query::cache::DATABASE_HEADER,
        ))
        .and(body)
        .map(
            |node: Node,
             key: String,
             shards: Option<usize>,
             database: Option<String>,
             body: bytes::Bytes| {
                let valid = crate::query::cache::is_key(&key)
                    && database.as_deref().is_some_and(crate::names::is_valid_name)
                    && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
                let (Some(shards), Some(database), true) = (shards, database, valid) else {
                    return super::error::error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_input",
                        "a cache entry is a 64-hex-digit key, x-dram-shards and x-dram-database \
                     headers and a JSON body",
                    );
                };
                node.queries().keep_here(
                    key,
                    crate::query::cache::Cached {
                        result: body,
                        shards,
                        database,
                    },
                );
                json_response(StatusCode::OK, &serde_json::json!({"kept": true}))
            },
        );
    let routes = registry
        .or(registry_push)
        .unify()
        .or(cache_get)
        .unify()
        .or(cache_put)
        .unify()
        .or(recent)
        .unify()
        .or(warm)
        .unify()
        .or(inventory)
        .unify()
        .or(trash)
        .unify()
        .or(map)
        .unify();
    #[cfg(feature = "sql")]
    let routes = routes.or(file).unify();
    routes.boxed()
}
