//! `GET /metrics`: what a Prometheus scrape of a serving node shows after a
//! database is loaded and queried.

use serde_json::json;

use crate::support::{config, expect_error, load, publish, serve};

/// The value of the sample `series` (name and labels, as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn metrics_count_queries_by_outcome_and_show_the_node_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.download.sync_delay_ms = 3000;
    let files: [(&str, &[u8]); 2] = [
        ("shards/a/rows.csv", b"city,amount\noslo,1\nlima,2\n"),
        ("shards/b/rows.csv", b"city,amount\npune,3\n"),
    ];
    publish(dir.path(), &config.store, "rows", &files).await;
    let (server, client) = serve(dram::builtin::register(dram::Node::builder(config))).await;
    let info = load(&client, json!({"name": "rows", "source": "rows"})).await;
    assert_eq!(info["state"], "ready", "{info}");

    let answer = client
        .post("/v1/query/rows/count", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer["result"]["rows"], 3);
    expect_error(
        client.post("/v1/query/nope/count", &json!({})).await,
        404,
        "not_found",
    );

    let response = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let at = |series: &str| sample(&text, series);

    assert!(text.contains("# TYPE dram_queries_total counter"), "{text}");
    assert_eq!(
        at(r#"dram_queries_total{analysis="count",outcome="ok"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        at(r#"dram_queries_total{analysis="count",outcome="not_found"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        at(r#"dram_query_duration_seconds_count{analysis="count"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(at(r#"dram_shards{state="ready"}"#), Some(2.0), "{text}");
    assert_eq!(at(r#"dram_shards{state="failed"}"#), Some(0.0), "{text}");
    assert_eq!(at(r#"dram_databases{state="ready"}"#), Some(1.0), "{text}");
    assert_eq!(at(r#"dram_members{state="live"}"#), Some(1.0), "{text}");
    assert_eq!(at(r#"dram_members{state="dead"}"#), Some(0.0), "{text}");
    assert_eq!(
        at(r#"dram_disk_over_watermark{disk="0"}"#),
        Some(0.0),
        "{text}"
    );
    assert!(
        at(r#"dram_disk_capacity_bytes{disk="0"}"#).is_some_and(|bytes| bytes > 0.0),
        "{text}"
    );
    assert_eq!(at("dram_queries_inflight"), Some(0.0), "{text}");
    let node = server.node.id();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        at(&format!(
            r#"dram_node_info{{node="{node}",version="{version}"}}"#
        )),
        Some(1.0),
        "{text}"
    );

    // The loaded files wait for the disk's sync, which comes once the disk
    // has been idle for download.sync_delay_ms.
    assert_eq!(at(r#"dram_disk_unsynced{disk="0"}"#), Some(1.0), "{text}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = reqwest::get(format!("{}/metrics", server.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(&text, r#"dram_disk_unsynced{disk="0"}"#) == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the disk is never synced: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    server.shutdown().await;
}
