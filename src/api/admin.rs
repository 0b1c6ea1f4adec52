//! Backup routes: `POST /v1/admin/backup` (write one now), `GET
//! /v1/admin/backups` (list them, newest first, with their validity) and
//! `POST /v1/admin/restore {backup}` (make the registry equal a backup's).
//! Any member answers them, from its own registry; `cluster::backup` does the
//! work. Without `backup.url` they answer 409.

use futures::FutureExt;
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::respond;
use crate::cluster::backup;
use crate::local::NodeError;
use crate::node::Node;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    backup: String,
}

pub(super) fn routes(node: Node, body: BoxedFilter<(bytes::Bytes,)>) -> BoxedFilter<(Response,)> {
    let with_node = warp::any().map(move || node.clone());

    let write = warp::path!("v1" / "admin" / "backup")
        .and(warp::post())
        .and(with_node.clone())
        .then(|node: Node| {
            async move {
                respond(
                    StatusCode::OK,
                    backup::backup_now(node.local(), node.membership().map(|m| &**m)).await,
                )
            }
            .boxed()
        });

    let list = warp::path!("v1" / "admin" / "backups")
        .and(warp::get())
        .and(with_node.clone())
        .then(|node: Node| {
            async move { respond(StatusCode::OK, backup::list(node.local()).await) }.boxed()
        });

    let restore = warp::path!("v1" / "admin" / "restore")
        .and(warp::post())
        .and(body)
        .and(with_node.clone())
        .then(|body: bytes::Bytes, node: Node| {
            async move {
                let result = match super::parse::<RestoreBody>(&body) {
                    Ok(request) => backup::restore(node.local(), &request.backup).await,
                    Err(e) => Err::<backup::RestoreReport, NodeError>(e),
                };
                respond(StatusCode::OK, super::acknowledged(&node, result).await)
            }
            .boxed()
        });

    let scrub = warp::path!("v1" / "admin" / "scrub")
        .and(warp::post())
        .and(with_node.clone())
        .map(|node: Node| {
            let status = node.local().scrub_now();
            respond(
                StatusCode::ACCEPTED,
                Ok::<_, NodeError>(serde_json::json!({
                    "started": !status.running,
                    "scrub": status,
                })),
            )
        });

    write
        .or(list)
        .unify()
        .or(restore)
        .unify()
        .or(scrub)
        .unify()
        .boxed()
}
