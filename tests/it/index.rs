//! The operations index on two real nodes: which blobs serve which databases
//! (content addressing's savings), read and write events with their bytes,
//! a checksum error recorded against its disk, trends and activity per disk,
//! the cluster-wide views, the trash in `/v1/gc`, and bad input.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cluster::two_members;
use crate::support::{eventually, expect_error, publish, wait_loaded};

async fn events(client: &dram::client::Client, query: &str) -> Vec<Value> {
    let answer = client.get(&format!("/v1/events?{query}")).await.unwrap();
    answer["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_tells_where_files_are_and_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (n1, n2) = two_members(dir.path()).await;
    let clients = [&n1.client, &n2.client];

    // Two databases sharing one file's content.
    let shared: &[u8] = b"k,v\nx,1\ny,2\n";
    let store_config = n1.server.node.config().store.clone();
    publish(
        dir.path(),
        &store_config,
        "a",
        &[
            ("shards/0/data.csv", shared),
            ("shards/1/data.csv", b"k,v\nz,3\n"),
        ],
    )
    .await;
    publish(
        dir.path(),
        &store_config,
        "b",
        &[("shards/0/same.csv", shared)],
    )
    .await;
    for name in ["a", "b"] {
        let answer = n1
            .client
            .post(
                "/v1/databases",
                &json!({"name": name, "source": name, "replicas": "all"}),
            )
            .await
            .unwrap();
        assert_eq!(answer["acknowledged"], true, "{answer}");
    }
    for client in clients {
        for name in ["a", "b"] {
            eventually(30, "loaded everywhere", || async {
                wait_loaded(client, name).await["state"] == "ready"
            })
            .await;
        }
    }
    let count = n1
        .client
        .post("/v1/query/a/count", &json!({}))
        .await
        .unwrap();
    assert_eq!(count["result"]["rows"], 3, "{count}");

    // Writes: one per part downloaded, with bytes and speed.
    let writes = events(&n1.client, "kind=write").await;
    let parts: Vec<&str> = writes
        .iter()
        .filter(|e| e["database"] == "a")
        .filter_map(|e| e["part"].as_str())
        .collect();
    assert!(
        parts.contains(&"shards/0") && parts.contains(&"shards/1"),
        "{writes:?}"
    );
    assert!(
        writes.iter().all(|e| e["disk"] == "0" && e["node"] == "n1"),
        "{writes:?}"
    );
    // Reads: the query mapped both shards here and read their bytes.
    let reads = events(&n1.client, "kind=read").await;
    let read_bytes: u64 = reads
        .iter()
        .filter(|e| e["database"] == "a")
        .map(|e| e["bytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(read_bytes, (shared.len() + 8) as u64, "{reads:?}");

    // The shared content: one blob, two uses, stored once per node.
    let sha = hex::encode(Sha256::digest(shared));
    let blob = n1
        .client
        .get(&format!("/v1/index/blobs/{sha}"))
        .await
        .unwrap();
    let uses: Vec<&str> = blob["uses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["database"].as_str())
        .collect();
    assert_eq!(uses, ["a", "b"], "{blob}");
    assert_eq!(blob["logical_bytes"], 2 * shared.len() as u64, "{blob}");
    assert_eq!(blob["stored_bytes"], shared.len() as u64, "{blob}");
    let everywhere = n1
        .client
        .get(&format!("/v1/index/blobs/{sha}?scope=cluster"))
        .await
        .unwrap();
    assert_eq!(
        everywhere["nodes"].as_array().map(Vec::len),
        Some(2),
        "{everywhere}"
    );
    assert_eq!(
        everywhere["stored_bytes"],
        2 * shared.len() as u64,
        "{everywhere}"
    );

    // A database across the cluster: copies, where last read and written.
    let a = n2
        .client
        .get("/v1/index/databases/a?scope=cluster")
        .await
        .unwrap();
    let shard0 = &a["parts"]["shards/0"];
    assert_eq!(shard0["copies"], 2, "{a}");
    assert_eq!(shard0["last_read"]["node"], "n1", "{a}");
    assert!(shard0["last_written"]["ms"].is_u64(), "{a}");
    let here = n1.client.get("/v1/index/databases/a").await.unwrap();
    assert_eq!(here["shared_bytes"], shared.len() as u64, "{here}");

    // Disks: what content addressing saves, how much was read lately.
    let disks = n1.client.get("/v1/index/disks").await.unwrap();
    let disk = &disks["disks"][0];
    assert_eq!(disk["saved_bytes"], shared.len() as u64, "{disks}");
    assert!(
        disk["read_share"]["hour"].as_f64().unwrap() > 0.0,
        "{disks}"
    );
    assert_eq!(
        disk["errors_per_hour"].as_array().map(Vec::len),
        Some(24),
        "{disks}"
    );
    let cluster_disks = n1
        .client
        .get("/v1/index/disks?scope=cluster")
        .await
        .unwrap();
    assert_eq!(cluster_disks["nodes"].as_array().map(Vec::len), Some(2));
    assert!(
        cluster_disks["max_over_mean"].as_f64().unwrap() >= 1.0,
        "{cluster_disks}"
    );

    // A file changed in the store after publishing fails its checksum: an
    // error event per try, on its disk (on every member: replicas "all"), and
    // the load fails.
    publish(
        dir.path(),
        &store_config,
        "c",
        &[("shards/0/x.csv", b"k\n1\n")],
    )
    .await;
    std::fs::write(store.join("c/shards/0/x.csv"), b"k\n2\n").unwrap();
    n2.client
        .post(
            "/v1/databases",
            &json!({"name": "c", "source": "c", "replicas": "all"}),
        )
        .await
        .unwrap();
    eventually(30, "checksum errors recorded", || async {
        events(&n2.client, "kind=error")
            .await
            .iter()
            .any(|e| e["error"]["class"] == "checksum" && e["database"] == "c")
    })
    .await;
    let errors = events(&n1.client, "kind=error&scope=cluster").await;
    assert!(
        errors.iter().any(|e| e["node"] == "n2" && e["disk"] == "0"),
        "{errors:?}"
    );
    let disks = n2.client.get("/v1/index/disks").await.unwrap();
    assert!(
        disks["disks"][0]["errors_by_class"]["checksum"].as_u64() >= Some(1),
        "{disks}"
    );

    // The same in the Prometheus metrics.
    let metrics = crate::support::metrics_text(&n2.server.url()).await;
    assert!(
        metrics.contains(r#"dram_download_errors_total{class="checksum",disk="0"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"dram_download_bytes_total{disk="0"}"#),
        "{metrics}"
    );

    // The trash, in /v1/gc.
    n1.client.delete("/v1/databases/b").await.unwrap();
    eventually(10, "b in n1's trash", || async {
        let gc = n1.client.get("/v1/gc").await.unwrap();
        gc["trash"].as_array().is_some_and(|t| {
            t.iter()
                .any(|i| i["database"] == "b" && i["purge_at_ms"].is_u64())
        })
    })
    .await;

    // Bad input.
    expect_error(
        n1.client.get("/v1/index/blobs/xyz").await,
        400,
        "invalid_input",
    );
    expect_error(
        n1.client
            .get(&format!("/v1/index/blobs/{}", "0".repeat(64)))
            .await,
        404,
        "not_found",
    );
    expect_error(
        n1.client.get("/v1/index/databases/nope").await,
        404,
        "not_found",
    );
    expect_error(
        n1.client.get("/v1/index/disks?scope=galaxy").await,
        400,
        "invalid_input",
    );
    expect_error(
        n1.client.get("/v1/events?kind=nope").await,
        400,
        "invalid_input",
    );
    expect_error(
        n1.client.get("/v1/events?limit=0").await,
        400,
        "invalid_input",
    );
}
