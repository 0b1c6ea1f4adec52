//! Aliases: `GET /v1/aliases`, `POST /v1/aliases/_batch`,
//! `GET|PUT|DELETE /v1/aliases/{name}`.

use bytes::Bytes;
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::respond;
use super::{acknowledged, parse};
use crate::local::AliasAction;
use crate::node::Node;

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

pub(super) fn routes(node: Node, body: BoxedFilter<(Bytes,)>) -> BoxedFilter<(Response,)> {
    let with_node = warp::any().map(move || node.clone());

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
        .and(body.clone())
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
        .and(body.clone())
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

    list_aliases
        .or(batch_aliases)
        .unify()
        .or(get_alias)
        .unify()
        .or(put_alias)
        .unify()
        .or(delete_alias)
        .unify()
        .boxed()
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
