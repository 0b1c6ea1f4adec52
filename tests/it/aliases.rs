//! Aliases: set, move, remove, and atomic batches that apply whole or not at all.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_move_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store = config.store.clone();
    for (name, body) in [("day1", b"first"), ("day2", b"secnd")] {
        publish(dir.path(), &store, name, &[("f", body)]).await;
    }
    let (server, client) = start(config).await;
    for name in ["day1", "day2"] {
        assert_eq!(
            load(&client, json!({"name": name, "source": name})).await["state"],
            "ready"
        );
    }

    let first = client
        .put("/v1/aliases/sales", &json!({"target": "day1"}))
        .await
        .unwrap();
    assert_eq!(first["target"], "day1");
    let read = |name: &'static str| {
        let node = server.node.clone();
        async move {
            node.local()
                .shard(name, "0")
                .unwrap()
                .read("f")
                .await
                .unwrap()
        }
    };
    assert_eq!(read("sales").await.as_ref(), b"first");

    let second = client
        .put("/v1/aliases/sales", &json!({"target": "day2"}))
        .await
        .unwrap();
    assert_eq!(read("sales").await.as_ref(), b"secnd");
    let version = |v: &serde_json::Value| {
        (
            v["version"]["ms"].as_u64().unwrap(),
            v["version"]["counter"].as_u64().unwrap(),
        )
    };
    assert!(version(&second) > version(&first), "versions grow");
    assert!(second["updated_ms"].as_u64().is_some());
    assert_eq!(
        client.get("/v1/aliases/sales").await.unwrap()["target"],
        "day2"
    );

    // Unknown targets, bad names, and names taken by databases.
    expect_error(
        client
            .put("/v1/aliases/x", &json!({"target": "nope"}))
            .await,
        404,
        "not_found",
    );
    expect_error(
        client
            .put("/v1/aliases/-bad", &json!({"target": "day1"}))
            .await,
        400,
        "invalid_input",
    );
    expect_error(
        client
            .put("/v1/aliases/day1", &json!({"target": "day2"}))
            .await,
        409,
        "conflict",
    );
    expect_error(
        client
            .put("/v1/aliases/x", &json!({"target": "day1", "more": 1}))
            .await,
        400,
        "invalid_input",
    );
    expect_error(
        client
            .post("/v1/databases", &json!({"name": "sales", "source": "day1"}))
            .await,
        409,
        "conflict",
    );

    // A batch with one bad action changes nothing.
    let failing = client
        .post(
            "/v1/aliases/_batch",
            &json!({"actions": [
                {"set": {"name": "sales", "target": "day1"}},
                {"set": {"name": "extra", "target": "day1"}},
                {"remove": {"name": "never-set"}},
            ]}),
        )
        .await;
    expect_error(failing, 404, "not_found");
    assert_eq!(
        client.get("/v1/aliases/sales").await.unwrap()["target"],
        "day2"
    );
    expect_error(client.get("/v1/aliases/extra").await, 404, "not_found");
    expect_error(
        client
            .post(
                "/v1/aliases/_batch",
                &json!({"actions": [{"move": {"name": "a"}}]}),
            )
            .await,
        400,
        "invalid_input",
    );
    expect_error(
        client
            .post("/v1/aliases/_batch", &json!({"actions": []}))
            .await,
        400,
        "invalid_input",
    );

    // A good batch applies whole.
    let applied = client
        .post(
            "/v1/aliases/_batch",
            &json!({"actions": [
                {"set": {"name": "previous", "target": "day2"}},
                {"set": {"name": "sales", "target": "day1"}},
            ]}),
        )
        .await
        .unwrap();
    assert_eq!(applied["applied"].as_array().unwrap().len(), 2);
    let list = client.get("/v1/aliases").await.unwrap();
    let pairs: Vec<(String, String)> = list["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("previous".to_string(), "day2".to_string()),
            ("sales".to_string(), "day1".to_string())
        ]
    );

    client.delete("/v1/aliases/previous").await.unwrap();
    expect_error(
        client.delete("/v1/aliases/previous").await,
        404,
        "not_found",
    );
    server.shutdown().await;

    // Aliases survive a restart, and new versions keep growing.
    let (server, client) = start(crate::support::config(dir.path())).await;
    let before = client.get("/v1/aliases/sales").await.unwrap();
    let after = client
        .put("/v1/aliases/sales", &json!({"target": "day2"}))
        .await
        .unwrap();
    assert!(version(&after) > version(&before));
    server.shutdown().await;
}
