//! The one place errors become HTTP responses: `{"error":{"code","message"}}` with
//! a fitting status, for node errors, bad bodies and warp's own rejections alike.

use std::convert::Infallible;

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::local::NodeError;
use crate::query::QueryError;

#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

/// A JSON error response.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail { code, message },
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// An error with a stable code and an HTTP status: what the API reports.
pub trait ApiError: std::fmt::Display {
    fn code(&self) -> &'static str;
    fn http_status(&self) -> u16;
}

impl ApiError for NodeError {
    fn code(&self) -> &'static str {
        NodeError::code(self)
    }
    fn http_status(&self) -> u16 {
        NodeError::http_status(self)
    }
}

impl ApiError for QueryError {
    fn code(&self) -> &'static str {
        QueryError::code(self)
    }
    fn http_status(&self) -> u16 {
        QueryError::http_status(self)
    }
}

/// The response for an error.
pub fn api_error_response(e: &impl ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if e.code() == "overloaded" {
        // Refused, not failed: logging each would add to the overload.
        tracing::debug!(error = %e, "request refused");
        let mut response = error_response(status, e.code(), &e.to_string());
        response.headers_mut().insert(
            warp::http::header::RETRY_AFTER,
            warp::http::HeaderValue::from(RETRY_AFTER_SECS),
        );
        return response;
    }
    if status.is_server_error() {
        tracing::warn!(error = %e, "request failed");
    }
    error_response(status, e.code(), &e.to_string())
}

/// What `Retry-After` says in a 503 `overloaded`, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A request body that could not be read.
#[derive(Debug)]
pub(super) enum BodyError {
    /// It did not arrive within `http.body_timeout_ms` (this many ms).
    Timeout(u64),
    /// The connection failed while it was read.
    Unreadable(String),
}

impl warp::reject::Reject for BodyError {}

/// A JSON success response.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// A success response of raw bytes: their media type, and one more header
/// when given.
pub fn bytes_response(
    status: StatusCode,
    content_type: &str,
    header: Option<(&str, String)>,
    body: impl Into<bytes::Bytes>,
) -> Response {
    let mut builder = warp::http::Response::builder()
        .status(status)
        .header("content-type", content_type);
    if let Some((name, value)) = header {
        builder = builder.header(name, value);
    }
    let body: bytes::Bytes = body.into();
    builder.body(body.into()).unwrap_or_else(|_| {
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot build the response",
        )
    })
}

/// The response for a node operation's result.
pub fn respond<T: Serialize, E: ApiError>(status: StatusCode, result: Result<T, E>) -> Response {
    match result {
        Ok(value) => json_response(status, &value),
        Err(e) => api_error_response(&e),
    }
}

/// Turns warp's rejections (no route, wrong method, body too large) into JSON.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    use warp::reject::{
        InvalidQuery, LengthRequired, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType,
    };
    if let Some(refused) = rejection.find::<super::auth::Refused>() {
        return Ok(refused.response());
    }
    match rejection.find::<BodyError>() {
        Some(BodyError::Timeout(ms)) => {
            return Ok(closing(error_response(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                &format!("the request body did not arrive within {ms} ms (http.body_timeout_ms)"),
            )));
        }
        Some(BodyError::Unreadable(e)) => {
            let message = format!("cannot read the request body: {e}");
            return Ok(closing(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                &message,
            )));
        }
        None => {}
    }
    let (status, code, message) = if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint".to_string(),
        )
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is larger than http.max_body_bytes".to_string(),
        )
    } else if rejection.find::<LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a content-length header is required".to_string(),
        )
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint".to_string(),
        )
    } else if rejection.find::<InvalidQuery>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "the query string has an unknown parameter or a value of the wrong type".to_string(),
        )
    } else if rejection.find::<UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "unsupported content type".to_string(),
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{rejection:?}"),
        )
    };
    let response = error_response(status, code, &message);
    if status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::LENGTH_REQUIRED {
        return Ok(closing(response));
    }
    Ok(response)
}

/// `response` with `Connection: close`: for a request whose body was not
/// (wholly) read, the connection cannot carry another request, and a client
/// that reused it would fail with a broken pipe.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        warp::http::header::CONNECTION,
        warp::http::HeaderValue::from_static("close"),
    );
    response
}
