//! Bodies too large, without a length, malformed or nested too deep, and
//! headers too large: refused with a fitting status and a message saying why.

use std::time::Duration;

use serde_json::Value;

use super::{exchange, node};

#[tokio::test]
async fn oversized_malformed_and_deeply_nested_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path(), |c| c.http.max_body_bytes = 200_000).await;
    let http = reqwest::Client::new();
    let url = server.url();
    let post = |path: &str, body: Vec<u8>| {
        http.post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let error = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };

    // Over http.max_body_bytes: 413, whatever the route.
    let huge = format!(r#"{{"name":"a","source":"{}"}}"#, "x".repeat(300_000));
    for path in [
        "/v1/databases",
        "/v1/query/good/count",
        "/v1/aliases/_batch",
    ] {
        let (status, code, _) = error(post(path, huge.clone().into_bytes()).await.unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (413, "payload_too_large"),
            "{path}"
        );
    }
    // A body without a length (chunked) is refused rather than read without bound.
    let chunked = b"POST /v1/databases HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = exchange(server.http_addr, chunked, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    // Headers past hyper's buffer (about 400 KB) are refused without a route.
    let huge_header = format!(
        "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "x".repeat(500_000)
    );
    let answer = exchange(
        server.http_addr,
        huge_header.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Malformed JSON: 400 saying what is wrong and where.
    for (body, expected) in [
        (&b"{\"name\": \"a\","[..], "EOF while parsing"),
        (
            b"{\"name\": 5, \"source\": \"x\"}",
            "invalid type: integer `5`",
        ),
        (
            b"{\"nme\": \"a\", \"source\": \"x\"}",
            "unknown field `nme`",
        ),
        (b"\xff\xfe{}", "expected value"),
        (
            b"{\"name\": \"a\", \"source\": \"x\"} [",
            "trailing characters",
        ),
    ] {
        let (status, code, message) =
            error(post("/v1/databases", body.to_vec()).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (400, "invalid_input"), "{message}");
        assert!(message.contains(expected), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
    }

    // 100,000 nested arrays (or 30,000 objects), where a field takes any JSON
    // value: 400 from serde_json's recursion limit (128), no stack overflow
    // (which would abort this whole test process). Elsewhere the first
    // bracket of the wrong type already stops the parser.
    let arrays = "[".repeat(100_000);
    let objects = "{\"a\":".repeat(30_000);
    for nested in [&arrays, &objects] {
        for (path, body) in [
            (
                "/v1/databases",
                format!(r#"{{"name":"a","source":"x","replicas":{nested}"#),
            ),
            ("/v1/query/good/count", format!(r#"{{"params":{nested}"#)),
            (
                "/v1/query/good/count",
                format!(r#"{{"params":{{"where":{nested}"#),
            ),
        ] {
            let (status, code, message) = error(post(path, body.into_bytes()).await.unwrap()).await;
            assert_eq!(
                (status, code.as_str()),
                (400, "invalid_input"),
                "{path}: {message}"
            );
            assert!(
                message.contains("recursion limit exceeded"),
                "{path}: {message}"
            );
        }
        for path in [
            "/v1/databases",
            "/v1/query/good/count",
            "/v1/aliases/_batch",
        ] {
            let (status, code, message) =
                error(post(path, nested.clone().into_bytes()).await.unwrap()).await;
            assert_eq!(
                (status, code.as_str()),
                (400, "invalid_input"),
                "{path}: {message}"
            );
        }
    }
    client.get("/v1/health").await.unwrap();
    server.shutdown().await;
}
