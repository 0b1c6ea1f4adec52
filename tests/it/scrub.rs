//! The scrub and deduplication against silent corruption: one byte changed
//! in a blob, its modification time put back (nothing a restart's check would
//! notice), is found by the next scrub pass; the blob is quarantined (its
//! shard is not served from it again), the error is an event, and the shard
//! is loaded again. A load checks a blob before deduplication links it into
//! another database. Every answer is compared with totals computed from the
//! files themselves.

use std::path::Path;

use dram::client::Client;
use serde_json::{Value, json};

use crate::support::*;

/// Shard `shard`'s table `t`: the numbers `shard*100 + 1 ..= shard*100 + 50`.
fn rows(shard: u32) -> String {
    let mut text = String::from("n\n");
    for i in 1..=50 {
        text.push_str(&format!("{}\n", shard * 100 + i));
    }
    text
}

/// The sum over every shard, from the files.
fn truth(shards: u32) -> i64 {
    (0..shards)
        .flat_map(|s| (1..=50).map(move |i| i64::from(s * 100 + i)))
        .sum()
}

async fn sum(client: &Client, database: &str) -> Result<i64, String> {
    let answer = client
        .post(
            &format!("/v1/query/{database}/sql"),
            // Read anew every time (a kept answer would hide the damage).
            &json!({"params": {"sql": "SELECT sum(n) AS s FROM t"}, "cache": false}),
        )
        .await
        .map_err(|e| e.to_string())?;
    answer["result"]["rows"][0]["s"]
        .as_i64()
        .ok_or_else(|| answer.to_string())
}

/// Changes one digit of `file` in place (through a hard link, the blob
/// changes too) and puts its modification time back.
fn flip_a_digit(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let modified = std::fs::metadata(file).unwrap().modified().unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() - 2; // the last digit of the last row
    bytes[at] = if bytes[at] == b'9' { b'8' } else { b'9' };
    std::fs::write(file, &bytes).unwrap();
    let handle = std::fs::File::options().write(true).open(file).unwrap();
    handle.set_modified(modified).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444)).unwrap();
}

async fn scrub_status(client: &Client) -> Value {
    client.get("/v1/stats").await.unwrap()["scrub"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_blob_is_found_quarantined_and_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let data = config.node.data_dir.clone();
    let texts: Vec<(String, String)> = (0..3)
        .map(|s| (format!("shards/{s}/t/part.csv"), rows(s)))
        .collect();
    let files: Vec<(&str, &[u8])> = texts
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_bytes()))
        .collect();
    publish(dir.path(), &config.store, "db", &files).await;
    publish(dir.path(), &config.store, "copy", &files).await;
    let (server, client) = serve(dram::builtin::register(dram::Node::builder(config))).await;
    load(&client, json!({"name": "db", "source": "db"})).await;
    assert_eq!(sum(&client, "db").await, Ok(truth(3)));

    // Silent corruption: wrong answers, and nothing notices by itself.
    let damaged = data.join("dbs/db/shards/1/t/part.csv");
    flip_a_digit(&damaged);
    assert_ne!(sum(&client, "db").await, Ok(truth(3)), "the damage shows");

    // One scrub pass finds it.
    let before = scrub_status(&client).await;
    let started = client.post("/v1/admin/scrub", &json!({})).await.unwrap();
    assert!(started["scrub"].is_object(), "{started}");
    eventually(30, "a scrub pass finds the damaged blob", || async {
        let status = scrub_status(&client).await;
        status["damaged"] == 1 && status["passes"].as_u64() > before["passes"].as_u64()
    })
    .await;
    // From then on an answer is right or refused, never wrong; the shard is
    // loaded again from the store.
    eventually(30, "the shard is healed", || async {
        match sum(&client, "db").await {
            Ok(total) => {
                assert_eq!(total, truth(3), "a wrong answer after the scrub");
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert_eq!(std::fs::read_to_string(&damaged).unwrap(), rows(1));
    let events = client.get("/v1/events?kind=error").await.unwrap();
    assert!(
        events.to_string().contains("found by the scrub"),
        "the damage is an error event: {events}"
    );
    let metrics = crate::support::metrics_text(&server.url()).await;
    assert!(
        metrics.lines().any(|l| l == "dram_scrub_damaged_blobs 1"),
        "{metrics}"
    );

    // Deduplication checks before it links: a new database with the same
    // content as a damaged blob gets the right bytes, and the database that
    // held the blob is loaded again.
    let damaged = data.join("dbs/db/shards/2/t/part.csv");
    flip_a_digit(&damaged);
    load(&client, json!({"name": "copy", "source": "copy"})).await;
    assert_eq!(sum(&client, "copy").await, Ok(truth(3)));
    assert_eq!(
        std::fs::read_to_string(data.join("dbs/copy/shards/2/t/part.csv")).unwrap(),
        rows(2)
    );
    eventually(30, "the first database is healed too", || async {
        sum(&client, "db").await == Ok(truth(3))
    })
    .await;
    assert_eq!(scrub_status(&client).await["damaged"], 2);
    server.shutdown().await;
}
