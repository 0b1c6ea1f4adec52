//! The sales server: dram's built-ins, the sales analyses, and a report route.

use dram::api::{api_error_response, json_response};
use dram::query::QueryRequest;
use dram::{Config, Node, NodeBuilder};
use serde::Deserialize;
use serde_json::json;
use warp::Filter;
use warp::http::StatusCode;

use super::analyses::{RevenueByCategory, TopOrders};

/// A node builder with everything the sales server serves: the built-ins,
/// `revenue_by_category`, `top_orders`, and `GET /sales/{database}/report`.
pub fn builder(config: Config) -> NodeBuilder {
    dram::builtin::register(Node::builder(config))
        .analysis("revenue_by_category", RevenueByCategory)
        .analysis("top_orders", TopOrders)
        .routes(|node| {
            warp::path!("sales" / String / "report")
                .and(warp::get())
                .and(warp::query::<ReportQuery>())
                .then(move |target: String, range: ReportQuery| {
                    let node = node.clone();
                    async move { report(&node, &target, range).await }
                })
        })
}

/// Query string of `GET /sales/{database}/report`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
}

/// Revenue per category and the five largest orders, from one version of the
/// database: the second query names the database the first one resolved, so an
/// alias moving in between cannot mix two versions into one report.
async fn report(node: &Node, target: &str, range: ReportQuery) -> warp::reply::Response {
    let params = json!({"from": range.from, "to": range.to});
    let request = |params| QueryRequest {
        params: Some(params),
        ..QueryRequest::default()
    };
    let revenue = match node
        .query(target, "revenue_by_category", request(params.clone()))
        .await
    {
        Ok(answer) => answer,
        Err(e) => return api_error_response(&e),
    };
    let mut top_params = params;
    top_params["k"] = json!(5);
    let top = match node
        .query(&revenue.meta.database, "top_orders", request(top_params))
        .await
    {
        Ok(answer) => answer,
        Err(e) => return api_error_response(&e),
    };
    json_response(
        StatusCode::OK,
        &json!({
            "database": revenue.meta.database,
            "version": revenue.meta.version,
            "revenue_by_category": revenue.result,
            "top_orders": top.result,
        }),
    )
}
