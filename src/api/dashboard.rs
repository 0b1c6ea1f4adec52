//! The admin dashboard: `GET /` and its two assets, one page of plain HTML, CSS
//! and JavaScript compiled into the binary (no build step, nothing fetched from
//! elsewhere: it works offline). The page reads the public API (`/v1/cluster`,
//! `/v1/databases`, `/v1/cluster/shards`, `/v1/aliases`, `/v1/events`, `/v1/gc`)
//! every 2 s; it holds no state of its own.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::error_response;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// `GET /` (only the root: other unknown paths stay JSON 404s),
/// `GET /dashboard/app.js` and `GET /dashboard/style.css`.
pub(super) fn routes() -> BoxedFilter<(Response,)> {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| asset("text/html; charset=utf-8", INDEX_HTML));
    let app = warp::path!("dashboard" / "app.js")
        .and(warp::get())
        .map(|| asset("text/javascript; charset=utf-8", APP_JS));
    let style = warp::path!("dashboard" / "style.css")
        .and(warp::get())
        .map(|| asset("text/css; charset=utf-8", STYLE_CSS));
    index.or(app).unify().or(style).unify().boxed()
}

fn asset(content_type: &str, body: &'static str) -> Response {
    warp::http::Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .header("x-content-type-options", "nosniff")
        .body(body.into())
        .unwrap_or_else(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot build the response",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_carry_their_type_and_are_never_cached() {
        let response = asset("text/css; charset=utf-8", STYLE_CSS);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/css; charset=utf-8"
        );
        assert_eq!(response.headers()["cache-control"], "no-cache");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import"));
        }
        assert!(INDEX_HTML.contains(r#"src="/dashboard/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/dashboard/style.css""#));
        assert!(
            !APP_JS.contains("innerHTML"),
            "build the DOM with text nodes"
        );
    }
}
