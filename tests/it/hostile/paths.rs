//! Names, shard ids, manifest paths and sources that try to leave the data
//! folder: refused with a clear error, and nothing is written outside.

use std::path::PathBuf;

use dram::client::ClientError;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{load_good, node, tree};
use crate::support::{expect_error, load};

#[tokio::test]
async fn database_and_alias_names_cannot_leave_the_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path(), |_| {}).await;
    let data = dir.path().join("data");
    let before = tree(dir.path());
    let long = "a".repeat(10_000);
    for name in [
        "../x",
        "a/../../b",
        "/etc/passwd",
        "..",
        ".",
        "",
        "a\0b",
        "a\\..\\b",
        long.as_str(),
    ] {
        let body = json!({"name": name, "source": "anything"});
        let message = expect_error(
            client.post("/v1/databases", &body).await,
            400,
            "invalid_input",
        );
        assert!(
            message.contains("invalid database name"),
            "{name:?}: {message}"
        );
        // As a path segment (percent-encoded): 400 naming the alias, or, for
        // `.`, `..` and ``, which URLs resolve away, no such endpoint.
        let body = json!({"target": "good"});
        let path = format!("/v1/aliases/{}", urlencode(name));
        let answer = client.put(&path, &body).await;
        assert!(
            matches!(
                &answer,
                Err(ClientError::Api {
                    status: 400 | 404 | 405,
                    ..
                })
            ),
            "alias {name:?}: {answer:?}"
        );
    }
    // Names in paths: percent-encoded traversal finds nothing and reads nothing.
    for path in [
        "/v1/databases/..%2F..%2Fetc%2Fpasswd",
        "/v1/databases/%2E%2E",
        "/v1/index/databases/..%2Fcatalog.redb",
        "/v1/aliases/..%2F..",
    ] {
        let answer = client.get(path).await;
        assert!(
            matches!(
                &answer,
                Err(ClientError::Api {
                    status: 400 | 404,
                    ..
                })
            ),
            "{path}: {answer:?}"
        );
        let answer = client.delete(path).await;
        assert!(
            matches!(
                &answer,
                Err(ClientError::Api {
                    status: 400 | 404 | 405,
                    ..
                })
            ),
            "DELETE {path}: {answer:?}"
        );
    }
    // An alias whose target tries to escape is refused too.
    let body = json!({"target": "../../etc"});
    let message = expect_error(
        client.put("/v1/aliases/ok", &body).await,
        400,
        "invalid_input",
    );
    assert!(message.contains("invalid database name"), "{message}");
    // Nothing was made anywhere: no database folder, no stray file.
    assert_eq!(tree(dir.path()), before);
    assert!(tree(&data.join("dbs")).len() <= 1, "dbs/ holds nothing");
    client.get("/v1/health").await.unwrap();
    server.shutdown().await;
}

/// `db add` with a source outside the store: it used to read any file the
/// server could (`file:///etc/…` and a `group` query returned it).
#[tokio::test]
async fn sources_outside_the_store_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(secret.join("shards/0")).unwrap();
    std::fs::write(secret.join("shards/0/rows.csv"), "password\nhunter2\n").unwrap();
    let outside = format!("file://{}", secret.display());
    let (server, client) = node(&dir.path().join("n"), |_| {}).await;
    for source in [
        outside.as_str(),
        "file:///etc",
        "file:///",
        "s3://another-bucket/x",
        "memory://other/x",
    ] {
        let body = json!({"name": "stolen", "source": source});
        let message = expect_error(
            client.post("/v1/databases", &body).await,
            400,
            "invalid_source",
        );
        assert!(
            message.contains("store.allowed_sources"),
            "{source}: {message}"
        );
    }
    let store = server.node.config().store.url.clone();
    let message = expect_error(
        client
            .post(
                "/v1/databases",
                &json!({"name": "stolen", "source": format!("{store}/../../secret")}),
            )
            .await,
        400,
        "invalid_source",
    );
    assert!(message.contains(".."), "{message}");
    expect_error(client.get("/v1/databases/stolen").await, 404, "not_found");
    server.shutdown().await;

    // Allowed explicitly, the same folder loads.
    let glob = format!("{outside}/**");
    let (server, client) = node(&dir.path().join("m"), |config| {
        config.store.allowed_sources = vec![glob.clone()];
    })
    .await;
    let info = load(&client, json!({"name": "allowed", "source": outside})).await;
    assert_eq!(info["state"], "ready", "{info}");
    server.shutdown().await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn shard_ids_and_file_globs_cannot_leave_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path(), |_| {}).await;
    load_good(dir.path(), &server, &client).await;
    let long = "a".repeat(10_000);
    for shard in ["../../etc", "a/../../b", "/etc", "..", "a\0", long.as_str()] {
        let body = json!({"shards": [shard]});
        let message = expect_error(
            client.post("/v1/query/good/count", &body).await,
            404,
            "not_found",
        );
        assert!(message.contains("shard"), "{shard:?}: {message}");
        assert!(
            server.node.local().shard("good", shard).is_err(),
            "{shard:?}"
        );
    }
    // The same through the node-to-node map endpoint.
    let version = client.get("/v1/databases/good").await.unwrap()["version"].clone();
    let body = json!({"database": "good", "version": version, "analysis": "count",
                      "shards": ["../../etc"], "timeout_ms": 5000});
    expect_error(
        client.post("/v1/internal/map", &body).await,
        404,
        "not_found",
    );
    // A file glob only ever sees the shard's own files.
    let body = json!({"params": {"files": "../../../../../etc/passwd", "format": "csv"}});
    let answer = client.post("/v1/query/good/count", &body).await.unwrap();
    assert_eq!(answer["result"]["files"], 0, "{answer}");
    let answer = client
        .post("/v1/query/good/count", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer["result"]["rows"], 3, "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn manifests_naming_paths_outside_the_database_fail_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = node(dir.path(), |_| {}).await;
    let store = dir.path().join("store");
    let escape = format!("escape-{}", std::process::id());
    let content = b"hello";
    let sha = hex::encode(Sha256::digest(content));
    // The bytes a follower of `..` would find, in the store and beside it.
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join(&escape), content).unwrap();
    let cases = [
        format!("../../{escape}"),
        "/etc/passwd".to_string(),
        format!("shards/0/../../{escape}"),
        format!("shards/../../../{escape}"),
        format!("global/../../{escape}"),
        format!("shards/0/..\\..\\{escape}"),
        "shards/0/a\u{0}b".to_string(),
        "shards/0//x".to_string(),
        "shards/../x/y".to_string(),
    ];
    for (i, path) in cases.iter().enumerate() {
        let folder = store.join(format!("evil{i}"));
        std::fs::create_dir_all(folder.join("shards/0")).unwrap();
        std::fs::write(folder.join("shards/0/ok.csv"), content).unwrap();
        let manifest = json!({"format": 1, "files": [
            {"path": "shards/0/ok.csv", "size": 5, "sha256": sha},
            {"path": path, "size": 5, "sha256": sha},
        ]});
        std::fs::write(folder.join("dram.json"), manifest.to_string()).unwrap();
    }
    let before = tree(dir.path());
    for (i, path) in cases.iter().enumerate() {
        let name = format!("evil{i}");
        let body = json!({"name": name, "source": name});
        let info = load(&client, body).await;
        assert_eq!(info["state"], "failed", "{path:?}: {info}");
        let error = info["error"].as_str().unwrap_or_default();
        assert!(error.contains("manifest"), "{path:?}: {error}");
    }
    // Nothing written outside the data folder, nor any shard folder inside it.
    let after: Vec<PathBuf> = tree(dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("data"))
        .collect();
    let before: Vec<PathBuf> = before
        .into_iter()
        .filter(|p| !p.starts_with("data"))
        .collect();
    assert_eq!(after, before);
    let stray: Vec<PathBuf> = tree(&dir.path().join("data"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("escape") || p.starts_with("dbs/evil0"))
        .filter(|p| p.components().count() > 2)
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    assert!(!dir.path().parent().unwrap().join(&escape).exists());
    // Sources that climb out of the store are refused before anything is read.
    for source in [
        "../outside",
        "a/../../b",
        "s3://bucket/../x",
        "memory://m/../x",
    ] {
        let body = json!({"name": "climb", "source": source});
        let message = expect_error(
            client.post("/v1/databases", &body).await,
            400,
            "invalid_source",
        );
        assert!(message.contains(".."), "{source}: {message}");
    }
    server.shutdown().await;
}
