//! `GET /v1/openapi.json`: the HTTP API described in OpenAPI 3, for clients
//! in any language (generators, Postman, Swagger UI). The document is
//! written by hand next to this file and compiled in; a test checks that it
//! names every route the code serves, and no other.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

const DOCUMENT: &str = include_str!("openapi.json");

pub(super) fn routes() -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "openapi.json")
        .and(warp::get())
        .map(|| {
            let mut response = Response::new(DOCUMENT.into());
            response.headers_mut().insert(
                "content-type",
                warp::http::HeaderValue::from_static("application/json"),
            );
            response
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::DOCUMENT;

    /// Every (method, path) the code routes, read from `src/api/*.rs`: each
    /// `warp::path!(…)` (or `warp::path("…")`, `path::tail()`, `path::end()`)
    /// up to the method filter that follows it. Path parameters are `{}`.
    fn routes_in_code() -> BTreeSet<(String, String)> {
        let token = regex::Regex::new(
            r#"warp::path!\(([^)]*)\)|warp::path\("([^"]*)"\)|warp::path::(tail|end)\(\)|warp::(get|post|put|delete|head)\(\)"#,
        )
        .unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut routes = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            // Routes, not tests.
            let source = source.split("#[cfg(test)]").next().unwrap_or_default();
            // `internal.rs` mounts its routes under one prefix filter.
            let internal = path.file_name().is_some_and(|n| n == "internal.rs");
            let prefix: Vec<String> = if internal {
                vec!["v1".into(), "internal".into()]
            } else {
                Vec::new()
            };
            let mut current: Option<Vec<String>> = None;
            for found in token.captures_iter(source) {
                if let Some(segments) = found.get(1) {
                    let mut path = prefix.clone();
                    for segment in segments.as_str().split('/') {
                        let segment = segment.trim();
                        path.push(match segment.strip_prefix('"') {
                            Some(literal) => literal.trim_end_matches('"').to_string(),
                            None => "{}".to_string(),
                        });
                    }
                    current = Some(path);
                } else if let Some(literal) = found.get(2) {
                    if internal && matches!(literal.as_str(), "v1" | "internal") {
                        continue;
                    }
                    let mut path = prefix.clone();
                    path.push(literal.as_str().to_string());
                    current = Some(path);
                } else if let Some(kind) = found.get(3) {
                    match kind.as_str() {
                        "tail" => {
                            if let Some(path) = current.as_mut() {
                                path.push("{}".into());
                            }
                        }
                        _ => current = Some(Vec::new()),
                    }
                } else if let Some(method) = found.get(4)
                    && let Some(path) = current.take()
                {
                    routes.insert((method.as_str().to_string(), format!("/{}", path.join("/"))));
                }
            }
        }
        routes
    }

    fn routes_in_document() -> BTreeSet<(String, String)> {
        let document: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let parameter = regex::Regex::new(r"\{[^}/]+\}").unwrap();
        let mut routes = BTreeSet::new();
        for (path, operations) in document["paths"].as_object().unwrap() {
            for method in operations.as_object().unwrap().keys() {
                if matches!(method.as_str(), "get" | "post" | "put" | "delete" | "head") {
                    let path = parameter.replace_all(path, "{}").to_string();
                    routes.insert((method.clone(), path));
                }
            }
        }
        routes
    }

    #[test]
    fn the_document_describes_every_route_and_no_other() {
        let code = routes_in_code();
        let document = routes_in_document();
        // The scan itself must find the routes it is meant to.
        for known in [
            ("post", "/v1/query/{}/{}"),
            ("get", "/"),
            ("get", "/v1/internal/file/{}"),
            ("get", "/v1/openapi.json"),
        ] {
            assert!(
                code.contains(&(known.0.to_string(), known.1.to_string())),
                "the scan missed {known:?}: {code:?}"
            );
        }
        let undocumented: Vec<_> = code.difference(&document).collect();
        let unknown: Vec<_> = document.difference(&code).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from src/api/openapi.json: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "src/api/openapi.json describes routes the code does not serve: {unknown:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_with_unique_operation_ids() {
        let document: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.")),
            "{}",
            document["openapi"]
        );
        let mut ids = BTreeSet::new();
        for operations in document["paths"].as_object().unwrap().values() {
            for operation in operations.as_object().unwrap().values() {
                if let Some(id) = operation["operationId"].as_str() {
                    assert!(ids.insert(id.to_string()), "operationId {id} twice");
                }
            }
        }
        assert!(ids.len() > 30, "{ids:?}");
    }
}
