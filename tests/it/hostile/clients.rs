//! Clients that send too slowly or open too many connections, and more
//! queries (or map requests) than allowed at once: cut off, closed or refused
//! with 503 `overloaded`, while everyone else is served.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dram::Node;
use dram::client::Client;
use dram::query::{Analysis, AnalysisError, Shard};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{closed_within, exchange, load_good, node};
use crate::support::{config, eventually, serve};

#[tokio::test]
async fn slow_headers_are_cut_off_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path(), |c| c.http.header_timeout_ms = 500).await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.http_addr).await.unwrap();
    slow.write_all(b"GET /v1/hea").await.unwrap();
    let mut silent = TcpStream::connect(server.http_addr).await.unwrap();
    // Meanwhile another client is served, at once.
    let answer = tokio::time::timeout(Duration::from_secs(2), client.get("/v1/health"));
    answer
        .await
        .expect("served while slow clients wait")
        .unwrap();
    let served_by = started.elapsed();
    let (slow_closed, silent_closed) = tokio::join!(
        closed_within(&mut slow, Duration::from_secs(5)),
        closed_within(&mut silent, Duration::from_secs(5)),
    );
    for closed in [slow_closed - started, silent_closed - started] {
        // Not before the timeout: the timer starts once the server accepts.
        assert!(
            closed >= Duration::from_millis(500),
            "closed after {closed:?}: too early"
        );
        assert!(
            served_by < closed,
            "served after the cut-off only: {served_by:?}"
        );
    }
    // A slow request line gets the same treatment after a served request.
    let mut keep_alive = TcpStream::connect(server.http_addr).await.unwrap();
    keep_alive
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = keep_alive.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    keep_alive.write_all(b"GET /v1/he").await.unwrap();
    closed_within(&mut keep_alive, Duration::from_secs(5)).await;
    // (A new client: the server has closed the idle ones of the first.)
    Client::new(&server.url()).get("/v1/health").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path(), |c| c.http.body_timeout_ms = 500).await;
    let started = Instant::now();
    // Keep-alive asked for: the half-read body ends the connection anyway,
    // and the answer says so.
    let request = b"POST /v1/databases HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"na";
    let answer = exchange(server.http_addr, request, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains(r#""code":"timeout""#), "{answer}");
    assert!(answer.contains("http.body_timeout_ms"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    client.get("/v1/health").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn past_the_cap_the_oldest_idle_connection_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path(), |c| c.http.max_connections = 3).await;
    let request = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n";
    // Three keep-alive connections, each served once: the server holds them.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.http_addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        open.push(stream);
    }
    // A fourth is served; the connection idle longest (the first) is closed.
    let mut fourth = TcpStream::connect(server.http_addr).await.unwrap();
    fourth.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = fourth.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut first = open.remove(0);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), first.read_to_end(&mut rest));
    assert!(closed.await.is_ok(), "the oldest idle connection is closed");

    // Hundreds of connections opened and left idle (the attack that used to
    // lock every other client out): a client is still served.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(server.http_addr).await.unwrap());
    }
    for _ in 0..5 {
        client.get("/v1/health").await.unwrap();
    }
    server.shutdown().await;
}

/// Holds its map until `open` is set (or the query is cancelled): a query
/// that stays in flight as long as the test wants.
struct Gate {
    open: Arc<AtomicBool>,
    entered: Arc<AtomicUsize>,
}

impl Analysis for Gate {
    type Params = ();
    type Partial = u64;
    type Output = u64;

    fn map(&self, _: &(), shard: &Shard) -> Result<u64, AnalysisError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(20);
        while !self.open.load(Ordering::SeqCst) {
            shard.check_cancelled()?;
            if Instant::now() > until {
                return Err(AnalysisError::failed("the gate never opened"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(1)
    }

    fn reduce(&self, _: &(), partials: Vec<u64>) -> Result<u64, AnalysisError> {
        Ok(partials.into_iter().sum())
    }

    fn finish(&self, _: &(), total: u64) -> Result<u64, AnalysisError> {
        Ok(total)
    }
}

#[tokio::test]
async fn queries_past_the_bound_get_503_overloaded_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.query.max_concurrent_queries = 2;
    config.query.max_concurrent_maps = 4;
    config.query.max_map_requests = 1;
    let (open, entered) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let gate = Gate {
        open: open.clone(),
        entered: entered.clone(),
    };
    let (server, client) =
        serve(dram::builtin::register(Node::builder(config)).analysis("gate", gate)).await;
    load_good(dir.path(), &server, &client).await;

    let http = reqwest::Client::new();
    let url = format!("{}/v1/query/good/gate", server.url());
    let mut queries = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let request = http.post(&url).json(&json!({"shards": ["a"]})).send();
        queries.spawn(async move {
            let response = request.await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = response.json().await.unwrap();
            (status, retry_after, body)
        });
    }
    // Eight are refused at once while two wait at the gate.
    let mut refused = 0;
    while refused < 8 {
        let joined = tokio::time::timeout(Duration::from_secs(10), queries.join_next())
            .await
            .expect("refusals come at once")
            .unwrap()
            .unwrap();
        let (status, retry_after, body) = joined;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("query.max_concurrent_queries"),
            "{body}"
        );
        assert_eq!(retry_after.as_deref(), Some("1"));
        refused += 1;
    }
    eventually(10, "two queries at the gate", || async {
        entered.load(Ordering::SeqCst) == 2
    })
    .await;
    // Map requests from other members have their own bound: one waits at
    // the gate, the next is refused at once.
    let version = client.get("/v1/databases/good").await.unwrap()["version"].clone();
    let map = json!({"database": "good", "version": version, "analysis": "gate",
                     "shards": ["b"], "timeout_ms": 20_000});
    let map_url = format!("{}/v1/internal/map", server.url());
    let held = tokio::spawn(http.post(&map_url).json(&map).send());
    eventually(10, "a map request at the gate", || async {
        entered.load(Ordering::SeqCst) == 3
    })
    .await;
    let refused = http.post(&map_url).json(&map).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("query.max_map_requests")
    );

    open.store(true, Ordering::SeqCst);
    let held = tokio::time::timeout(Duration::from_secs(10), held).await;
    assert_eq!(held.unwrap().unwrap().unwrap().status(), 200);
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(10), queries.join_next())
        .await
        .expect("the admitted queries finish")
    {
        let (status, _, body) = joined.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"], 1, "{body}");
    }
    // The slots are free again.
    let answer = client
        .post("/v1/query/good/gate", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer["result"], 2);
    server.shutdown().await;
}

/// `dram db ls | head -1`: the reader goes away before the command prints.
/// The command ends quietly (no panic about the broken pipe).
#[tokio::test]
async fn a_cli_command_whose_reader_goes_away_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = super::node(dir.path(), |_| {}).await;
    super::load_good(dir.path(), &server, &client).await;
    let url = server.url();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(crate::support::dram_binary())
            .args(["db", "show", "good", "--node", &url])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is printed
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    server.shutdown().await;
}
