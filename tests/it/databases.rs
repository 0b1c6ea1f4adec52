//! Loading, serving, deduplicating, trashing and restoring databases on one node.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn blob(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_load_serves_and_stores_shared_files_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let shared = blob(1, 300_000);
    let only_a = blob(2, 1000);
    let only_b = blob(3, 2000);
    let store = config.store.clone();
    publish(
        dir.path(),
        &store,
        "a",
        &[
            ("shards/0/shared.bin", &shared),
            ("shards/1/a.bin", &only_a),
            ("global/dict", b"g"),
        ],
    )
    .await;
    publish(
        dir.path(),
        &store,
        "b",
        &[("part.bin", &only_b), ("same.bin", &shared)],
    )
    .await;
    let data_dir = config.node.data_dir.clone();
    let (server, client) = start(config).await;

    for name in ["a", "b"] {
        let added = client
            .post("/v1/databases", &json!({"name": name, "source": name}))
            .await
            .unwrap();
        assert_eq!(added["name"], name);
        let info = wait_loaded(&client, name).await;
        assert_eq!(info["state"], "ready", "{info}");
        assert_eq!(info["bytes_done"], info["bytes"]);
    }
    let a = client.get("/v1/databases/a").await.unwrap();
    assert_eq!(a["shard_count"], 2);
    assert_eq!(a["global"]["state"], "ready");
    assert_eq!(a["version"].as_str().unwrap().len(), 64);
    let b = client.get("/v1/databases/b").await.unwrap();
    assert_eq!(b["shards"][0]["id"], "0", "a flat database is shard 0");

    // Served bytes are the published ones.
    let shard = server.node.local().shard("a", "0").unwrap();
    assert_eq!(shard.files(), vec!["shared.bin"]);
    assert_eq!(
        shard.read("shared.bin").await.unwrap().as_ref(),
        &shared[..]
    );
    let flat = server.node.local().shard("b", "0").unwrap();
    assert_eq!(flat.read("part.bin").await.unwrap().as_ref(), &only_b[..]);
    assert_eq!(
        server
            .node
            .local()
            .global("a")
            .unwrap()
            .read("dict")
            .await
            .unwrap()
            .as_ref(),
        b"g"
    );
    assert!(server.node.local().shard("a", "9").is_err());
    assert!(matches!(
        shard.read("../../b/shards/0/part.bin").await,
        Err(dram::NodeError::NotFound { .. })
    ));

    // Five files, four distinct contents: the shared one is stored once.
    assert_eq!(blob_count(&data_dir), 4);
    let stats = client.get("/v1/stats").await.unwrap();
    assert_eq!(stats["node"]["dedup_saved_bytes"], 300_000, "{stats}");
    assert_eq!(stats["disks"][0]["dedup_saved_bytes"], 300_000);
    let by_name = |n: &str| {
        stats["databases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("a")["bytes_shared"], 300_000);
    assert_eq!(by_name("b")["bytes_shared"], 300_000);
    assert_eq!(by_name("a")["reads"], 2);
    assert_eq!(by_name("a")["shards"], 2);
    assert!(stats["disks"][0]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        stats["disks"][0]["used_by_dram_bytes"],
        300_000 + 1000 + 2000 + 1
    );

    let list = client.get("/v1/databases").await.unwrap();
    assert_eq!(list["databases"].as_array().unwrap().len(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_load_fetches_shard_files_on_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store = config.store.clone();
    let big = blob(7, 100_000);
    publish(
        dir.path(),
        &store,
        "lz",
        &[
            ("global/meta.json", b"{}"),
            ("shards/x/f1", &big),
            ("shards/y/f2", b"two"),
        ],
    )
    .await;
    let data_dir = config.node.data_dir.clone();
    let (server, client) = start(config).await;
    client
        .post(
            "/v1/databases",
            &json!({"name": "lz", "source": "lz", "mode": "lazy"}),
        )
        .await
        .unwrap();
    let info = wait_loaded(&client, "lz").await;
    assert_eq!(info["state"], "ready");
    assert_eq!(info["mode"], "lazy");
    assert_eq!(info["global"]["state"], "ready");
    assert_eq!(info["shards"][0]["state"], "lazy");
    assert_eq!(
        blob_count(&data_dir),
        1,
        "only global data is fetched at once"
    );

    let shard = server.node.local().shard("lz", "x").unwrap();
    assert_eq!(shard.size("f1").unwrap(), 100_000);
    let (first, second) = tokio::join!(shard.read("f1"), shard.read("f1"));
    assert_eq!(first.unwrap().as_ref(), &big[..]);
    assert_eq!(second.unwrap().as_ref(), &big[..]);
    assert_eq!(
        blob_count(&data_dir),
        2,
        "one fetch for two concurrent opens"
    );
    let mut file = server
        .node
        .local()
        .shard("lz", "y")
        .unwrap()
        .open("f2")
        .await
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).unwrap();
    assert_eq!(text, "two");
    assert_eq!(blob_count(&data_dir), 3);

    let stats = client.get("/v1/stats").await.unwrap();
    let db = &stats["databases"][0];
    assert_eq!(db["reads"], 3);
    assert_eq!(
        db["bytes_local"],
        100_000 + 3 + 2,
        "cached files and global data"
    );
    drop(shard);
    server.shutdown().await;

    // After a restart the cached files are still there and served.
    let (server, _client) = start(crate::support::config(dir.path())).await;
    let shard = server.node.local().shard("lz", "x").unwrap();
    assert_eq!(shard.read("f1").await.unwrap().len(), 100_000);
    let stats = server.node.local().stats().unwrap();
    assert_eq!(stats.node.bytes_downloaded, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trash_stops_serving_restore_brings_back_purge_frees() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // An hour in the trash, on a clock the test moves.
    config.trash.lifetime_secs = 3600;
    let clock = std::sync::Arc::new(dram::clock::ManualClock::from_now());
    let store = config.store.clone();
    publish(dir.path(), &store, "keep", &[("k", b"shared!")]).await;
    publish(
        dir.path(),
        &store,
        "gone",
        &[("k", b"shared!"), ("own", b"only in gone")],
    )
    .await;
    let data_dir = config.node.data_dir.clone();
    let (server, client) = serve(dram::Node::builder(config).clock(clock.clone())).await;
    for name in ["keep", "gone"] {
        assert_eq!(
            load(&client, json!({"name": name, "source": name})).await["state"],
            "ready"
        );
    }
    client
        .put("/v1/aliases/current", &json!({"target": "gone"}))
        .await
        .unwrap();

    let trashed = client.delete("/v1/databases/gone").await.unwrap();
    assert_eq!(trashed["state"], "trashed");
    assert!(trashed["purge_at_ms"].as_u64().unwrap() > trashed["trashed_ms"].as_u64().unwrap());
    // Its shards say so too (they used to say `ready`).
    let shown = client.get("/v1/databases/gone").await.unwrap();
    let shards = shown["shards"].as_array().unwrap();
    assert!(
        !shards.is_empty() && shards.iter().all(|s| s["state"] == "trashed"),
        "{shown}"
    );
    assert!(matches!(
        server.node.local().shard("gone", "0"),
        Err(dram::NodeError::NotReady(message)) if message == "database \"gone\" is trashed, not ready"
    ));
    expect_error(client.delete("/v1/databases/gone").await, 409, "conflict");
    expect_error(
        client
            .post("/v1/databases", &json!({"name": "gone", "source": "gone"}))
            .await,
        409,
        "conflict",
    );

    let restored = client
        .post("/v1/databases/gone/restore", &json!({}))
        .await
        .unwrap();
    assert_eq!(restored["state"], "ready");
    assert_eq!(read(&server, "current", "0", "own").await, b"only in gone");
    expect_error(
        client.post("/v1/databases/keep/restore", &json!({})).await,
        409,
        "conflict",
    );

    client.delete("/v1/databases/gone").await.unwrap();
    assert_eq!(blob_count(&data_dir), 2);
    // Purge rounds run every 500 ms: before the hour is up, none takes it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        client.get("/v1/databases/gone").await.unwrap()["state"],
        "trashed"
    );
    clock.advance(Duration::from_secs(3600));
    eventually(15, "purge of gone", || async {
        client.get("/v1/databases/gone").await.is_err()
    })
    .await;
    expect_error(client.get("/v1/databases/gone").await, 404, "not_found");
    assert_eq!(
        blob_count(&data_dir),
        1,
        "the unshared blob is freed, the shared kept"
    );
    assert!(!data_dir.join("dbs/gone").exists());
    expect_error(client.get("/v1/aliases/current").await, 404, "not_found");
    assert_eq!(read(&server, "keep", "0", "k").await, b"shared!");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.trash.lifetime_secs = 3600;
    // A small body limit, so the rejected body below fits in the socket buffers
    // (a server answering 413 early would otherwise break the client's pipe).
    config.http.max_body_bytes = 16 * 1024;
    let store = config.store.clone();
    publish(dir.path(), &store, "good", &[("a", b"fine")]).await;
    // Hand-written manifests that lie or escape.
    let root = dir.path().join("store");
    let write_db = |name: &str, manifest: &str, files: &[(&str, &[u8])]| {
        let db = root.join(name);
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("dram.json"), manifest).unwrap();
        for (path, bytes) in files {
            std::fs::write(db.join(path), bytes).unwrap();
        }
    };
    let zeros = "0".repeat(64);
    write_db(
        "wrongsize",
        &format!(r#"{{"format":1,"files":[{{"path":"a","size":99,"sha256":"{zeros}"}}]}}"#),
        &[("a", b"abc")],
    );
    write_db(
        "wronghash",
        &format!(r#"{{"format":1,"files":[{{"path":"a","size":3,"sha256":"{zeros}"}}]}}"#),
        &[("a", b"abc")],
    );
    write_db(
        "escape",
        &format!(r#"{{"format":1,"files":[{{"path":"../good/a","size":4,"sha256":"{zeros}"}}]}}"#),
        &[],
    );
    write_db("garbage", "{not json", &[]);

    let (server, client) = start(config).await;
    assert_eq!(
        load(&client, json!({"name": "good", "source": "good"})).await["state"],
        "ready"
    );

    for (name, needle) in [
        ("wrongsize", "99"),
        ("wronghash", "sha256"),
        ("escape", ".."),
        ("garbage", "malformed manifest"),
    ] {
        let info = load(&client, json!({"name": name, "source": name})).await;
        assert_eq!(info["state"], "failed", "{name}: {info}");
        let error = info["error"].as_str().unwrap();
        assert!(error.contains(needle), "{name}: {error}");
        assert!(matches!(
            server.node.local().shard(name, "0"),
            Err(dram::NodeError::NotReady(_))
        ));
    }
    // Failed loads are retried (1, 2, 4 … s): a try in flight may hold a temp
    // file for a moment, none stays.
    let tmp = dir.path().join("data/tmp");
    crate::support::eventually(10, "no temp files left", || async {
        std::fs::read_dir(&tmp).is_ok_and(|d| d.count() == 0)
    })
    .await;
    // A failed database says how to get rid of it, and is deleted at once;
    // the name is free again.
    let failed = client.get("/v1/databases/garbage").await.unwrap();
    assert!(
        failed["remedy"]
            .as_str()
            .unwrap()
            .contains("dram db rm garbage"),
        "{failed}"
    );
    client.delete("/v1/databases/garbage").await.unwrap();
    expect_error(client.get("/v1/databases/garbage").await, 404, "not_found");

    // A source that is not there is refused before anything is defined
    // (it used to fail, and be tried again, forever): 404 naming the URL.
    let error = expect_error(
        client
            .post(
                "/v1/databases",
                &json!({"name": "missing", "source": "missing"}),
            )
            .await,
        404,
        "source_not_found",
    );
    assert!(error.contains("store/missing"), "{error}");
    expect_error(client.get("/v1/databases/missing").await, 404, "not_found");
    // An empty folder holds no database either.
    std::fs::create_dir_all(dir.path().join("store/empty")).unwrap();
    let error = expect_error(
        client
            .post(
                "/v1/databases",
                &json!({"name": "empty", "source": "empty"}),
            )
            .await,
        404,
        "source_not_found",
    );
    assert!(error.contains("no manifest"), "{error}");
    let listed = client.get("/v1/databases").await.unwrap();
    let names: Vec<&str> = listed["databases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"missing") && !names.contains(&"empty"),
        "{listed}"
    );

    // Requests that are wrong get 4xx with a JSON error.
    for (body, code) in [
        (
            json!({"name": "bad/name", "source": "good"}),
            "invalid_input",
        ),
        (json!({"name": "-x", "source": "good"}), "invalid_input"),
        (json!({"name": "ok", "source": "../etc"}), "invalid_source"),
        (
            json!({"name": "ok", "source": "ftp://x/y"}),
            "invalid_source",
        ),
        (
            json!({"name": "ok", "source": "good", "extra": 1}),
            "invalid_input",
        ),
        (
            json!({"name": "ok", "source": "good", "mode": "eager"}),
            "invalid_input",
        ),
        (
            json!({"name": "ok", "source": "good", "replicas": 0}),
            "invalid_input",
        ),
        (json!({"name": "good", "source": "good"}), "conflict"),
    ] {
        let result = client.post("/v1/databases", &body).await;
        let status = if code == "conflict" { 409 } else { 400 };
        expect_error(result, status, code);
    }
    let raw = reqwest::Client::new();
    let url = format!("{}/v1/databases", server.url());
    let too_big = raw
        .post(&url)
        .body(vec![b' '; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    // The unread body ends the connection: the client is told not to reuse it.
    assert_eq!(too_big.headers()["connection"], "close");
    let body: serde_json::Value = too_big.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    let not_json = raw.post(&url).body("name=x").send().await.unwrap();
    assert_eq!(not_json.status(), 400);
    let nowhere = raw
        .get(format!("{}/v2/nothing", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 404);
    let body: serde_json::Value = nowhere.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    expect_error(client.get("/v1/databases/nope").await, 404, "not_found");

    // The good database kept serving throughout.
    assert_eq!(read(&server, "good", "0", "a").await, b"fine");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_fit_fails_and_others_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let store = config.store.clone();
    publish(dir.path(), &store, "small", &[("a", b"1")]).await;
    publish(dir.path(), &store, "big", &[("b", &blob(9, 4096))]).await;
    let (server, client) = start(config.clone()).await;
    client
        .post(
            "/v1/databases",
            &json!({"name": "small", "source": "small"}),
        )
        .await
        .unwrap();
    assert_eq!(wait_loaded(&client, "small").await["state"], "ready");
    server.shutdown().await;

    // The same disk with a watermark below what is already used: no room at all.
    config.disks = vec![dram::config::DiskConfig {
        path: config.node.data_dir.clone(),
        high_watermark: 0.000_001,
        max_bytes: None,
    }];
    let (server, client) = start(config).await;
    let info = load(&client, json!({"name": "big", "source": "big"})).await;
    assert_eq!(info["state"], "failed");
    assert!(
        info["error"].as_str().unwrap().contains("no room"),
        "{info}"
    );
    // Its copies say `failed` with the reason, here and in the cluster's
    // view (they used to say downloading, 0%).
    let shown = client.get("/v1/databases/big").await.unwrap();
    let shard = &shown["shards"][0];
    assert_eq!(shard["state"], "failed", "{shown}");
    assert!(
        shard["error"].as_str().unwrap().contains("no room"),
        "{shown}"
    );
    let held = client.get("/v1/internal/inventory").await.unwrap();
    let held = &held["databases"]["big"]["shards"]["0"];
    assert_eq!(held["state"], "failed", "{held}");
    assert!(
        held["error"].as_str().unwrap().contains("no room"),
        "{held}"
    );
    assert_eq!(read(&server, "small", "0", "a").await, b"1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        std::fs::read_dir(dir.path().join("data/tmp"))
            .unwrap()
            .count(),
        0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_files_are_evicted_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.disks = vec![dram::config::DiskConfig {
        path: config.node.data_dir.clone(),
        high_watermark: 0.9,
        max_bytes: Some(300_000), // 270,000 bytes below the watermark
    }];
    config.cache.eviction_grace_ms = 0;
    let store = config.store.clone();
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| blob(20 + i, 100_000)).collect();
    publish(
        dir.path(),
        &store,
        "lz",
        &[
            ("shards/0/f0", &bodies[0]),
            ("shards/0/f1", &bodies[1]),
            ("shards/0/f2", &bodies[2]),
        ],
    )
    .await;
    let data_dir = config.node.data_dir.clone();
    let (server, client) = start(config).await;
    client
        .post(
            "/v1/databases",
            &json!({"name": "lz", "source": "lz", "mode": "lazy"}),
        )
        .await
        .unwrap();
    assert_eq!(wait_loaded(&client, "lz").await["state"], "ready");
    let shard = server.node.local().shard("lz", "0").unwrap();
    let local = |name: &str| data_dir.join("dbs/lz/shards/0").join(name).exists();

    for i in 0..2 {
        shard.read(&format!("f{i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        local("f0") && local("f1"),
        "below the watermark nothing is evicted"
    );

    shard.read("f0").await.unwrap(); // f1 is now the least recently used
    shard.read("f2").await.unwrap(); // 300,000 bytes: over the watermark
    eventually(10, "eviction of f1", || async { !local("f1") }).await;
    assert!(local("f0") && local("f2"));
    assert_eq!(blob_count(&data_dir), 2);
    let before = server.node.local().stats().unwrap().node.bytes_downloaded;
    assert_eq!(shard.read("f1").await.unwrap().as_ref(), &bodies[1][..]);
    let after = server.node.local().stats().unwrap().node.bytes_downloaded;
    assert_eq!(after - before, 100_000, "an evicted file is fetched again");
    drop(shard);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_never_promise_the_same_space_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.disks = vec![dram::config::DiskConfig {
        path: config.node.data_dir.clone(),
        high_watermark: 1.0,
        max_bytes: Some(1_000_000),
    }];
    config.download.concurrency = 1;
    let store = config.store.clone();
    for (name, seed) in [("a", 40u8), ("b", 80u8)] {
        let bodies: Vec<(String, Vec<u8>)> = (0..40u8)
            .map(|i| (format!("f{i}"), blob(seed + i, 20_000)))
            .collect();
        let files: Vec<(&str, &[u8])> = bodies
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        publish(dir.path(), &store, name, &files).await;
    }
    let (server, client) = start(config).await;
    // Each fits alone (800,000 of 1,000,000 bytes); together they do not.
    let (body_a, body_b) = (
        json!({"name": "a", "source": "a"}),
        json!({"name": "b", "source": "b"}),
    );
    let (a, b) = tokio::join!(
        client.post("/v1/databases", &body_a),
        client.post("/v1/databases", &body_b),
    );
    a.unwrap();
    b.unwrap();
    let a = wait_loaded(&client, "a").await;
    let b = wait_loaded(&client, "b").await;
    let mut states = [a["state"].as_str().unwrap(), b["state"].as_str().unwrap()];
    states.sort();
    assert_eq!(states, ["failed", "ready"], "{a}\n{b}");
    let failed = if a["state"] == "failed" { &a } else { &b };
    assert!(
        failed["error"].as_str().unwrap().contains("no room"),
        "{failed}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("data/tmp"))
            .unwrap()
            .count(),
        0
    );
    let ready = if a["state"] == "ready" { "a" } else { "b" };
    assert_eq!(read(&server, ready, "0", "f3").await.len(), 20_000);
    server.shutdown().await;
}

/// `dram db add --wait --timeout SECS` gives up waiting (exit 1, saying the
/// load goes on) when the load takes longer; here a file of the source is a
/// named pipe nobody writes to, so its download cannot end until the test
/// writes (nothing) to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_add_wait_gives_up_at_its_timeout_and_the_load_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let db = dir.path().join("store/stuck");
    std::fs::create_dir_all(&db).unwrap();
    let zeros = "0".repeat(64);
    std::fs::write(
        db.join("dram.json"),
        format!(r#"{{"format":1,"files":[{{"path":"a","size":5,"sha256":"{zeros}"}}]}}"#),
    )
    .unwrap();
    let pipe = db.join("a");
    let path = std::ffi::CString::new(pipe.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the pipe.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let (server, client) = start(config).await;

    let started = std::time::Instant::now();
    let output = tokio::process::Command::new(dram_binary())
        .args(["db", "add", "stuck", "stuck", "--wait", "--timeout", "1"])
        .args(["--node", &server.url()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("still loading after 1 s") && stderr.contains("the load goes on"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let info = client.get("/v1/databases/stuck").await.unwrap();
    assert_eq!(info["state"], "loading", "{info}");

    // The pipe's reader gets an end of file: the download ends (wrongly
    // sized). The pipe becomes a plain file, so that no retry blocks again
    // and nothing is left blocked when the node stops.
    use std::os::unix::fs::OpenOptionsExt;
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&pipe)
        .expect("the download has the pipe open");
    std::fs::remove_file(&pipe).unwrap();
    std::fs::write(&pipe, b"12345").unwrap();
    drop(writer);
    let info = wait_loaded(&client, "stuck").await;
    assert_eq!(info["state"], "failed", "{info}");
    server.shutdown().await;
}
