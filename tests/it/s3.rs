//! The S3 path end to end, against a real S3-compatible server (s3s-fs).

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_load_through_s3() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = S3Server::start(dir.path(), "dbs").await else {
        return;
    };
    let mut config = config(dir.path());
    // README's S3 example, as a user copies it.
    config.store = s3.readme_store_config();
    assert_eq!(
        serde_json::to_value(&config.store).unwrap(),
        serde_json::to_value(s3.store_config("dbs")).unwrap()
    );
    let store = config.store.clone();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(
        dir.path(),
        &store,
        "s3://dbs/daily/v1",
        &[
            ("global/g", b"global"),
            ("shards/a/big", &big),
            ("shards/b/small", b"small"),
        ],
    )
    .await;

    // A database uploaded without a manifest: hashes are recorded while loading.
    let raw = dram::storage::Source::open(
        &dram::storage::SourceUrl::parse("s3://dbs/raw").unwrap(),
        &store,
        false,
    )
    .unwrap();
    use object_store::ObjectStoreExt;
    for (path, body) in [("x.csv", &b"1,2"[..]), ("y.csv", &b"3,4"[..])] {
        raw.store
            .put(&raw.object_path(path), body.to_vec().into())
            .await
            .unwrap();
    }

    let (server, client) = start(config).await;
    client
        .post(
            "/v1/databases",
            &json!({"name": "daily", "source": "daily/v1"}),
        )
        .await
        .unwrap();
    client
        .post(
            "/v1/databases",
            &json!({"name": "raw", "source": "s3://dbs/raw", "mode": "full"}),
        )
        .await
        .unwrap();
    let daily = wait_loaded(&client, "daily").await;
    assert_eq!(daily["state"], "ready", "{daily}");
    assert_eq!(daily["source"], "s3://dbs/daily/v1");
    assert_eq!(daily["bytes"], 3_000_000 + 6 + 5);
    let shard = server.node.local().shard("daily", "a").unwrap();
    assert_eq!(shard.read("big").await.unwrap().as_ref(), &big[..]);

    let raw_info = wait_loaded(&client, "raw").await;
    assert_eq!(raw_info["state"], "ready", "{raw_info}");
    assert_eq!(raw_info["version"].as_str().unwrap().len(), 64);
    assert_eq!(read(&server, "raw", "0", "y.csv").await, b"3,4");

    // A missing prefix is refused before anything is defined, naming it;
    // an unreachable endpoint (below) ends `failed` with the cause.
    let error = crate::support::expect_error(
        client
            .post(
                "/v1/databases",
                &json!({"name": "none", "source": "nothing/here"}),
            )
            .await,
        404,
        "source_not_found",
    );
    assert!(
        error.contains("s3://dbs/nothing/here") && error.contains("no manifest"),
        "{error}"
    );
    drop(shard); // the catalog closes when the last handle on the node is gone
    server.shutdown().await;

    let mut config = crate::support::config(dir.path());
    config.store = s3.store_config("dbs");
    config.store.endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    let (server, client) = start(config).await;
    client
        .post(
            "/v1/databases",
            &json!({"name": "away", "source": "daily/v1"}),
        )
        .await
        .unwrap();
    let away = wait_loaded(&client, "away").await;
    assert_eq!(away["state"], "failed");
    assert!(!away["error"].as_str().unwrap().is_empty());
    // Databases loaded before are still served.
    assert_eq!(read(&server, "daily", "b", "small").await, b"small");
    server.shutdown().await;
}
