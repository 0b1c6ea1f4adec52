//! `http` (issue 11, case 4): a trivial query over dram's HTTP API (`files`
//! on a one-shard database: no data read, the answer is a few hundred bytes)
//! against a bare warp server on this machine answering the same bytes to the
//! same POST — the floor of any HTTP service here: computed each time
//! (`cache: false`) and from the result cache. Concurrency 1 and 32, one
//! run.
//!
//! ```text
//! cargo run -p simulations --release -- bench --only http
//! ```

use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use bytes::Bytes;
use serde_json::json;
use warp::filters::BoxedFilter;
use warp::{Filter, Reply};

use super::measure::post;
use super::nodes::{config, post_json, publish, runtime, wait_placed};
use super::turns::{Call, call, interleaved};
use super::{Settings, Table, ratio};

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    runtime()?.block_on(http(settings))
}

async fn http(settings: &Settings) -> Result<Vec<Table>> {
    let secs = if settings.quick { 1 } else { 5 };
    let dir = tempfile::tempdir()?;
    let store_url = format!("file://{}", dir.path().join("store").display());
    let folder = dir.path().join("tiny");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("rows.csv"), "n\n1\n2\n")?;
    publish(&folder, &store_url, "tiny", &[]).await?;
    // The node also serves the bare route (`POST /bare`, the same bytes)
    // through its own server: what dram's accept loop, guard and routing
    // cost without the query.
    let bare_reply: Arc<OnceLock<Bytes>> = Arc::default();
    let slot = bare_reply.clone();
    let node = dram::builtin::register(dram::Node::builder(config(
        dir.path(),
        "n1",
        &store_url,
        "bench",
        &[],
    )?))
    .routes(move |_node| bare_route(slot))
    .serve()
    .await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let body = json!({"name": "tiny", "source": "tiny"});
    post_json(&http, &format!("{}/v1/databases", node.url()), &body).await?;
    wait_placed(&http, &node.url(), "tiny", 1, 1, 1, 60).await?;

    // The bytes dram answers, served by a bare warp route.
    let query_url = format!("{}/v1/query/tiny/files", node.url());
    let answer: Bytes = http
        .post(&query_url)
        .header("content-type", "application/json")
        .body(r#"{"cache": false}"#)
        .send()
        .await?
        .bytes()
        .await?;
    let reply = answer.clone();
    let _ = bare_reply.set(answer.clone());
    let served_bare_url = format!("{}/bare", node.url());
    let route = warp::post()
        .and(warp::path!("v1" / "query" / "tiny" / "files"))
        .and(warp::body::bytes())
        .map(move |_body: Bytes| {
            warp::http::Response::builder()
                .header("content-type", "application/json")
                .body(reply.clone())
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the bare warp server")?;
    let bare_url = format!("http://{}/v1/query/tiny/files", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let in_process = route.clone();
    let bare = tokio::spawn(
        warp::serve(route)
            .incoming(listener)
            .graceful(async {
                let _ = stop_rx.await;
            })
            .run(),
    );

    let mut table = Table::new(
        "http: a trivial dram query vs a bare warp server answering the same bytes",
        &[
            "conc",
            "dram",
            "warp q/s",
            "dram q/s",
            "q/s ratio",
            "warp p50 µs",
            "dram p50 µs",
            "warp p99 µs",
            "dram p99 µs",
        ],
    );
    for concurrency in [1usize, 32] {
        // Bare warp, dram computing each answer, dram answering from its
        // result cache and the bare route on dram's server, in turn.
        let calls: Vec<Call> = [
            (&bare_url, r#"{"cache": false}"#),
            (&query_url, r#"{"cache": false}"#),
            (&query_url, "{}"),
            (&served_bare_url, r#"{"cache": false}"#),
        ]
        .into_iter()
        .map(|(url, body)| {
            let (http, url) = (http.clone(), url.clone());
            call(move || post(http.clone(), url.clone(), body.into()))
        })
        .collect();
        let figures = interleaved(concurrency, secs, &calls).await?;
        let warp = &figures[0];
        for (mode, dram) in [
            ("computed", &figures[1]),
            ("cached", &figures[2]),
            ("bare route", &figures[3]),
        ] {
            table.row(vec![
                concurrency.to_string(),
                mode.to_string(),
                format!("{:.0}", warp.qps),
                format!("{:.0}", dram.qps),
                ratio(dram.qps, warp.qps),
                warp.p50.to_string(),
                dram.p50.to_string(),
                warp.p99.to_string(),
                dram.p99.to_string(),
            ]);
        }
    }
    table.note(format!(
        "{} bytes per answer; reqwest client in the same process (it shares the cores); {secs} \
         one-second turns per figure, the four servers taking turns (`turns::interleaved`: \
         measured one after the other, the same bare server differed by 1.3× between the start \
         and the end of a run). dram's path: accept loop with limits, auth guard, alias resolution, pinning \
         the version; computed: the map and finish in one trip to the blocking pool, JSON; \
         cached: the key (sha256), its owner (this node), the kept bytes; bare route: the bare \
         warp route mounted on the node (`POST /bare`), served through dram's accept loop, \
         guard and routes (tried last, after every route of dram's), no query.",
        answer.len()
    ));
    table.note("command: cargo run -p simulations --release -- bench --only http");

    // The same requests handed to the filters directly (`warp::test`): no
    // socket, no client, no HTTP parsing — what dram's own code costs.
    let dram_filter = dram::api::routes(node.node.clone(), None);
    let slot = bare_reply.clone();
    let dram_with_bare = dram::api::routes(node.node.clone(), Some(bare_route(slot)));
    let path = "/v1/query/tiny/files";
    let mut filters = Table::new(
        "http in process: the same requests handed to the filters (warp::test, no socket, no client)",
        &["server", "requests", "µs per request", "× bare warp"],
    );
    let rounds = if settings.quick { 2_000 } else { 20_000 };
    let mut bare_us = 0.0;
    for (name, case) in [
        ("bare warp", InProcess::Bare),
        ("bare route on dram", InProcess::BareOnDram),
        ("dram computed", InProcess::Computed),
        ("dram cached", InProcess::Cached),
    ] {
        let body = if case == InProcess::Cached {
            "{}"
        } else {
            r#"{"cache": false}"#
        };
        let path = if case == InProcess::BareOnDram {
            "/bare"
        } else {
            path
        };
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            let request = warp::test::request()
                .method("POST")
                .path(path)
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .body(body);
            let status = match case {
                InProcess::Bare => request.reply(&in_process).await.status(),
                InProcess::BareOnDram => request.reply(&dram_with_bare).await.status(),
                InProcess::Computed | InProcess::Cached => {
                    request.reply(&dram_filter).await.status()
                }
            };
            anyhow::ensure!(status.is_success(), "{name}: HTTP {status}");
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
        if case == InProcess::Bare {
            bare_us = us;
        }
        filters.row(vec![
            name.to_string(),
            rounds.to_string(),
            format!("{us:.1}"),
            format!("{:.1}×", us / bare_us),
        ]);
    }
    filters.note(
        "one request at a time on the bench's runtime; the computed answer takes one trip to the \
         blocking pool (map, then finish: user code never runs on the runtime's threads), which \
         is most of its time here: waking an idle thread and being woken back; the cached one \
         takes none",
    );
    let _ = stop_tx.send(());
    let _ = bare.await;
    node.shutdown().await;
    Ok(vec![table, filters])
}

/// What the in-process table hands its requests to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InProcess {
    Bare,
    BareOnDram,
    Computed,
    Cached,
}

/// `POST /bare`, answering the bytes in `reply` (dram's answer, once known).
fn bare_route(reply: Arc<OnceLock<Bytes>>) -> BoxedFilter<(warp::reply::Response,)> {
    warp::post()
        .and(warp::path!("bare"))
        .and(warp::body::bytes())
        .map(move |_body: Bytes| {
            warp::http::Response::builder()
                .header("content-type", "application/json")
                .body(reply.get().cloned().unwrap_or_default())
                .into_response()
        })
        .boxed()
}
