//! `GET /metrics`: this node's metrics in the Prometheus text format (0.0.4),
//! the registry's counters and histograms and the gauges computed at scrape time
//! (see `local::metrics`).

use futures::FutureExt;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{api_error_response, error_response};
use crate::node::Node;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) fn routes(node: Node) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .and(warp::any().map(move || node.clone()))
        .then(|node: Node| async move { scrape(&node).await }.boxed())
        .boxed()
}

async fn scrape(node: &Node) -> Response {
    let gauges = match node.metric_gauges().await {
        Ok(gauges) => gauges,
        Err(e) => return api_error_response(&e),
    };
    let text = match node.metrics().render(&gauges) {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the metrics");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("cannot encode the metrics: {e}"),
            );
        }
    };
    warp::http::Response::builder()
        .header("content-type", CONTENT_TYPE)
        .body(text.into())
        .unwrap_or_else(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot build the response",
            )
        })
}
