//! Aliases: `GET /v1/aliases`, `POST /v1/aliases/_batch`,
//! `GET|PUT|DELETE /v1/aliases/{name}`.

use bytes::Bytes;
use futures::FutureExt;
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
    /// Before the aliases move: every member fetches its lazy copies of the
    /// new targets, and the old targets' recent queries are replayed against
    /// the new ones (see `query::warm`).
    #[serde(default)]
    warm: bool,
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
        .then(|body: Bytes, node: Node| {
            async move {
                let batch = match parse::<AliasBatch>(&body) {
                    Ok(batch) => batch,
                    Err(e) => return super::error::api_error_response(&e),
                };
                let warmed = match batch.warm {
                    true => match node
                        .queries()
                        .warm(&warm_moves(&node, &batch.actions))
                        .await
                    {
                        Ok(warmed) => Some(warmed),
                        Err(e) => return super::error::api_error_response(&e),
                    },
                    false => None,
                };
                let result =
                    node.local()
                        .apply_aliases(&batch.actions)
                        .map(|aliases| match warmed {
                            Some(warmed) => {
                                serde_json::json!({ "applied": aliases, "warmed": warmed })
                            }
                            None => serde_json::json!({ "applied": aliases }),
                        });
                respond(StatusCode::OK, acknowledged(&node, result).await)
            }
            .boxed()
        });

    let get_alias = warp::path!("v1" / "aliases" / String)
        .and(warp::get())
        .and(with_node.clone())
        .map(|name: String, node: Node| respond(StatusCode::OK, node.local().alias(&name)));

    let put_alias = warp::path!("v1" / "aliases" / String)
        .and(warp::put())
        .and(body.clone())
        .and(with_node.clone())
        .then(|name: String, body: Bytes, node: Node| {
            async move {
                let result = parse::<AliasBody>(&body)
                    .and_then(|b| node.local().set_alias(&name, &b.target));
                respond(StatusCode::OK, acknowledged(&node, result).await)
            }
            .boxed()
        });

    let delete_alias = warp::path!("v1" / "aliases" / String)
        .and(warp::delete())
        .and(with_node.clone())
        .then(|name: String, node: Node| {
            async move {
                let result = node.local().remove_alias(&name);
                respond(StatusCode::OK, acknowledged(&node, result).await)
            }
            .boxed()
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

/// The moves a batch makes: each alias it sets, from the database it names
/// now (if any) to its new target.
fn warm_moves(node: &Node, actions: &[AliasAction]) -> Vec<crate::query::Move> {
    actions
        .iter()
        .filter_map(|action| match action {
            AliasAction::Set(set) => Some(crate::query::Move {
                from: node.local().alias(&set.name).ok().and_then(|a| a.target),
                to: set.target.clone(),
            }),
            AliasAction::Remove(_) => None,
        })
        .collect()
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
