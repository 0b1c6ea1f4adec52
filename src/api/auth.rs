//! Who may call what, checked once for every request before any route runs
//! (`guard`), and `POST /v1/tokens`.
//!
//! | call | needs |
//! |---|---|
//! | `GET /v1/health`, `GET /`, dashboard assets, `GET /v1/openapi.json` | nothing |
//! | `/v1/internal/*` | the cluster secret (the admin token when no secret is set); a caller naming another cluster id is refused |
//! | `POST /v1/query/{db_or_alias}/…` | with `auth.require_token_for_reads`: the admin token, the cluster secret (a member forwarding), or a signed token for that database or alias |
//! | `/v1/admin/*` (backups, restore, scrub), `POST /v1/tokens`, any change | the admin token, when one is set |
//! | other `GET`s | with `auth.require_token_for_reads`: the admin token or the cluster secret |
//!
//! No token where one is needed → 401; a token that does not allow the call
//! (another database, not the admin token) → 403. A token that is presented
//! is checked wherever it is sent: one that is no key of this cluster's,
//! expired or tampered with → 401, even where the call needs none (a node
//! with no admin token, secret or key — loopback only — reads no token).

use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::error::{error_response, respond};
use crate::auth::{Keys, constant_time_eq};
use crate::local::NodeError;
use crate::node::Node;

pub use crate::net::CLUSTER_HEADER;

/// A refused request.
#[derive(Debug)]
pub(super) struct Refused {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl warp::reject::Reject for Refused {}

impl Refused {
    fn unauthorized(message: impl Into<String>) -> Refused {
        Refused {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.into(),
        }
    }

    fn forbidden(message: impl Into<String>) -> Refused {
        Refused {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
        }
    }

    pub(super) fn response(&self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

/// What a call needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    Nothing,
    Internal,
    /// A query of this database or alias.
    Query(String),
    Read,
    Admin,
}

fn need(method: &Method, path: &str) -> Need {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (_, ["v1", "health"])
        | (&Method::GET, [""] | ["dashboard", _] | ["v1", "openapi.json"]) => Need::Nothing,
        (_, ["v1", "internal", ..]) => Need::Internal,
        (_, ["v1", "admin", ..]) => Need::Admin,
        (&Method::POST, ["v1", "query", target, _]) => {
            Need::Query(percent_decode(target).unwrap_or_else(|| (*target).to_string()))
        }
        (&Method::GET | &Method::HEAD, _) => Need::Read,
        _ => Need::Admin,
    }
}

/// `%xx` escapes decoded (names are ASCII; anything else is left as is).
pub(super) fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The keys this node signs and accepts tokens with, if it has any.
fn keys(node: &Node) -> Option<Keys> {
    Keys::of(&node.config().auth, node.local().started_ms())
}

fn matches(token: &str, secret: Option<&str>) -> bool {
    secret.is_some_and(|s| constant_time_eq(token.as_bytes(), s.as_bytes()))
}

/// Decides whether a call may go ahead.
fn check(
    node: &Node,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    cluster: Option<&str>,
) -> Result<(), Refused> {
    let auth = &node.config().auth;
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let admin = token.is_some_and(|t| matches(t, auth.admin_token.as_deref()));
    let peer = token.is_some_and(|t| matches(t, auth.peer_secret()));
    let missing = || {
        Refused::unauthorized(
            "no token sent: this call needs one (Authorization: Bearer <token>; the command line \
             takes --token or DRAM_TOKEN)",
        )
    };
    let need = need(method, path);
    // A signed token, checked once: a bad one is refused wherever it goes.
    // A node with no credential at all (a loopback node for development)
    // is open and reads no token.
    let keys = keys(node);
    let checks_tokens =
        auth.admin_token.is_some() || auth.peer_secret().is_some() || keys.is_some();
    let grant = match token {
        Some(token) if checks_tokens && !admin && !peer && need != Need::Nothing => {
            let keys = keys.ok_or_else(|| {
                Refused::unauthorized(
                    "invalid token: it is not the admin token, and this node has no key to \
                     check signed tokens",
                )
            })?;
            Some(
                keys.verify(token, node.local().now_ms())
                    .map_err(|e| Refused::unauthorized(format!("invalid token: {e}")))?,
            )
        }
        _ => None,
    };
    match need {
        Need::Nothing => Ok(()),
        Need::Internal => {
            if let Some(cluster) = cluster
                && cluster != node.config().cluster.id
            {
                return Err(Refused::forbidden(format!(
                    "the caller belongs to cluster {cluster:?}, this node to {:?}",
                    node.config().cluster.id
                )));
            }
            match (auth.peer_secret(), token) {
                (None, _) => Ok(()),
                (Some(_), None) => Err(Refused::unauthorized(
                    "node-to-node calls need the cluster secret, and none was sent",
                )),
                (Some(_), Some(_)) if peer => Ok(()),
                (Some(_), Some(_)) => Err(Refused::unauthorized(
                    "the token sent is not the cluster secret, which node-to-node calls need",
                )),
            }
        }
        Need::Admin => match (&auth.admin_token, token) {
            (None, _) => Ok(()),
            _ if admin => Ok(()),
            (Some(_), None) => Err(missing()),
            (Some(_), Some(_)) => Err(Refused::forbidden(
                "this token is not the admin token, which this call needs",
            )),
        },
        Need::Read if !auth.require_token_for_reads || admin || peer => Ok(()),
        Need::Read => match token {
            None => Err(missing()),
            Some(_) => Err(Refused::forbidden(match &grant {
                Some(grant) => format!(
                    "this token may only query {:?}; this call needs the admin token",
                    grant.name
                ),
                None => "this call needs the admin token".to_string(),
            })),
        },
        Need::Query(_) if !auth.require_token_for_reads || admin || peer => Ok(()),
        Need::Query(target) => {
            let Some(grant) = grant else {
                return Err(missing());
            };
            let opens = grant.name == target
                || node
                    .local()
                    .resolve(&target)
                    .is_ok_and(|database| database == grant.name);
            if opens {
                Ok(())
            } else {
                Err(Refused::forbidden(format!(
                    "this token opens {:?}, not {target:?}",
                    grant.name
                )))
            }
        }
    }
}

/// Refuses, before any route runs, a call the request's token does not allow.
pub(super) fn guard(node: Node) -> BoxedFilter<()> {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>(CLUSTER_HEADER))
        .and_then(
            move |method: Method,
                  path: warp::path::FullPath,
                  authorization: Option<String>,
                  cluster: Option<String>| {
                let result = check(
                    &node,
                    &method,
                    path.as_str(),
                    authorization.as_deref(),
                    cluster.as_deref(),
                )
                .map_err(warp::reject::custom);
                async move { result }
            },
        )
        .untuple_one()
        .boxed()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// A database or alias.
    database: String,
    /// Seconds the token is valid.
    ttl: u64,
}

fn issue(node: &Node, body: &bytes::Bytes) -> Result<serde_json::Value, NodeError> {
    let request: TokenRequest = super::parse(body)?;
    let max = node.config().auth.max_token_ttl_secs;
    if request.ttl == 0 || request.ttl > max {
        return Err(NodeError::InvalidInput(format!(
            "ttl must be 1..={max} seconds (auth.max_token_ttl_secs)"
        )));
    }
    crate::names::check_name("database", &request.database).map_err(NodeError::InvalidInput)?;
    node.local().resolve(&request.database)?;
    let keys = keys(node).ok_or_else(|| {
        NodeError::Conflict("set auth.token_key or auth.cluster_secret to sign tokens".into())
    })?;
    let expires_ms = node
        .local()
        .now_ms()
        .saturating_add(request.ttl.saturating_mul(1000));
    Ok(serde_json::json!({
        "token": keys.current.sign(&request.database, expires_ms),
        "database": request.database,
        "expires_ms": expires_ms,
        "key_id": keys.current.id(),
    }))
}

/// `POST /v1/tokens {database, ttl}` (the guard lets only the admin through).
pub(super) fn routes(node: Node, body: BoxedFilter<(bytes::Bytes,)>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "tokens")
        .and(warp::post())
        .and(body)
        .map(move |body: bytes::Bytes| respond(StatusCode::OK, issue(&node, &body)))
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_classified() {
        assert_eq!(need(&Method::GET, "/v1/health"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/dashboard/app.js"), Need::Nothing);
        assert_eq!(need(&Method::POST, "/v1/internal/map"), Need::Internal);
        assert_eq!(need(&Method::GET, "/v1/internal/registry"), Need::Internal);
        assert_eq!(
            need(&Method::POST, "/v1/query/sales%2Dx/count"),
            Need::Query("sales-x".into())
        );
        assert_eq!(need(&Method::GET, "/v1/databases"), Need::Read);
        assert_eq!(need(&Method::GET, "/metrics"), Need::Read);
        assert_eq!(need(&Method::POST, "/v1/databases"), Need::Admin);
        assert_eq!(need(&Method::PUT, "/v1/aliases/a"), Need::Admin);
        assert_eq!(need(&Method::DELETE, "/v1/databases/a"), Need::Admin);
        assert_eq!(need(&Method::POST, "/v1/tokens"), Need::Admin);
        assert_eq!(need(&Method::POST, "/v1/admin/restore"), Need::Admin);
        assert_eq!(need(&Method::GET, "/v1/admin/backups"), Need::Admin);
        assert_eq!(need(&Method::POST, "/v1/query/a"), Need::Admin);
        assert_eq!(percent_decode("a%zz"), None);
    }
}
