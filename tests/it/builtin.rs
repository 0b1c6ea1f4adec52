//! The built-in analyses the `dram` binary serves — `files`, `count`, `group` —
//! over CSV, TSV and JSON-lines shards, with answers checked against sums done
//! here by hand, and the errors bad params and bad files get.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::support::{config, expect_error, load, publish, serve};

/// Shard `a`: CSV; shard `b`: TSV and JSON lines (one key missing, one null);
/// a notes file the row analyses skip; global data they never read.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    let mut csv = String::from("city,kind,amount\n");
    let mut tsv = String::from("city\tkind\tamount\n");
    for i in 0..300 {
        let city = ["oslo", "lima", "pune"][i % 3];
        let kind = ["x", "y"][i % 2];
        csv.push_str(&format!("{city},{kind},{i}\n"));
        if i < 100 {
            tsv.push_str(&format!("{city}\t{kind}\t{}.5\n", i))
        }
    }
    let jsonl = [
        r#"{"city": "oslo", "kind": "x", "amount": 7}"#,
        "",
        r#"{"city": "lima", "amount": 3}"#,
        r#"{"city": "lima", "kind": null, "amount": 2.5}"#,
    ]
    .join("\n");
    vec![
        ("shards/a/sales.csv", csv.into_bytes()),
        ("shards/b/sales.tsv", tsv.into_bytes()),
        ("shards/b/more/extra.jsonl", jsonl.into_bytes()),
        (
            "shards/b/notes.txt",
            b"city,kind,amount\nnot,counted,1\n".to_vec(),
        ),
        ("global/cities.csv", b"city\noslo\nlima\npune\n".to_vec()),
    ]
}

/// The groups a query by city (summing amount) must find, computed directly.
fn expected_by_city(only_kind: Option<&str>) -> BTreeMap<String, (u64, f64)> {
    let mut groups: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let mut add = |city: &str, kind: &str, amount: f64| {
        if only_kind.is_none_or(|k| k == kind) {
            let group = groups.entry(city.to_string()).or_default();
            group.0 += 1;
            group.1 += amount;
        }
    };
    for i in 0..300 {
        add(["oslo", "lima", "pune"][i % 3], ["x", "y"][i % 2], i as f64);
        if i < 100 {
            add(
                ["oslo", "lima", "pune"][i % 3],
                ["x", "y"][i % 2],
                i as f64 + 0.5,
            );
        }
    }
    add("oslo", "x", 7.0);
    add("lima", "", 3.0);
    add("lima", "", 2.5);
    groups
}

#[tokio::test]
async fn built_ins_count_and_group_rows_by_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let files = files();
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    publish(dir.path(), &config.store, "rows", &files).await;
    let (server, client) = serve(dram::builtin::register(dram::Node::builder(config))).await;
    load(&client, json!({"name": "rows", "source": "rows"})).await;

    let listed = client.get("/v1/analyses").await.unwrap();
    let names: Vec<&str> = listed["analyses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["count", "files", "group", "sql"]);

    // files: from the manifest, every file of each shard.
    let answer = client
        .post("/v1/query/rows/files", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer["result"]["shards"]["a"]["files"], 1);
    assert_eq!(answer["result"]["shards"]["b"]["files"], 3);
    let bytes: usize = files
        .iter()
        .filter(|(p, _)| p.starts_with("shards/"))
        .map(|(_, b)| b.len())
        .sum();
    assert_eq!(answer["result"]["total"]["bytes"], bytes);

    // count: every CSV, TSV and JSON-lines row (blank lines and notes.txt skipped).
    let answer = client
        .post("/v1/query/rows/count", &json!({}))
        .await
        .unwrap();
    assert_eq!(
        answer["result"],
        json!({"rows": 403, "files": 3, "shards": {"a": 300, "b": 103}})
    );
    // … filtered, on one shard, on one format, on a glob with a forced format.
    let count = |params: Value| {
        let client = client.clone();
        async move {
            let answer = client.post("/v1/query/rows/count", &params).await.unwrap();
            answer["result"]["rows"].as_u64().unwrap()
        }
    };
    assert_eq!(
        count(json!({"params": {"where": {"kind": "x"}}})).await,
        150 + 50 + 1
    );
    assert_eq!(count(json!({"params": {"where": {"kind": null}}})).await, 2);
    assert_eq!(count(json!({"params": {"where": {"amount": 7}}})).await, 2);
    assert_eq!(count(json!({"shards": ["b"]})).await, 103);
    assert_eq!(count(json!({"params": {"format": "tsv"}})).await, 100);
    assert_eq!(count(json!({"params": {"files": "more/**"}})).await, 3);
    assert_eq!(
        count(json!({"params": {"files": "*.txt", "format": "csv"}})).await,
        1
    );

    // group: count and sum per city, exactly as computed here.
    for only_kind in [None, Some("y")] {
        let mut params = json!({"by": "city", "sum": "amount", "order_by": "key"});
        if let Some(kind) = only_kind {
            params["where"] = json!({"kind": kind});
        }
        let answer = client
            .post("/v1/query/rows/group", &json!({"params": params}))
            .await
            .unwrap();
        let result = &answer["result"];
        let expected = expected_by_city(only_kind);
        let got: BTreeMap<String, (u64, f64)> = result["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["key"]["city"].as_str().unwrap().to_string(),
                    (
                        g["count"].as_u64().unwrap(),
                        g["sum"]["amount"].as_f64().unwrap(),
                    ),
                )
            })
            .collect();
        assert_eq!(got, expected, "{only_kind:?}");
        assert_eq!(result["groups_total"], expected.len());
        let rows: u64 = expected.values().map(|g| g.0).sum();
        assert_eq!(result["rows"], rows);
    }
    // Two columns, largest count first, limited; integer sums stay integers.
    let answer = client
        .post(
            "/v1/query/rows/group",
            &json!({"params": {"by": ["city", "kind"], "sum": ["amount"], "limit": 2},
                     "shards": ["a"]}),
        )
        .await
        .unwrap();
    let result = &answer["result"];
    assert_eq!(result["groups_total"], 6);
    assert_eq!(result["groups"].as_array().unwrap().len(), 2);
    let first = &result["groups"][0];
    assert_eq!(first["count"], 50);
    let (city, kind) = (
        first["key"]["city"].as_str().unwrap(),
        first["key"]["kind"].as_str().unwrap(),
    );
    let expected: u64 = (0..300u64)
        .filter(|i| ["oslo", "lima", "pune"][*i as usize % 3] == city)
        .filter(|i| ["x", "y"][*i as usize % 2] == kind)
        .sum();
    assert_eq!(first["sum"]["amount"], json!(expected), "an exact integer");

    // Bad params: 400 naming the problem; bad files: 500 naming file and line.
    let query = |analysis: &str, params: Value| {
        let client = client.clone();
        let path = format!("/v1/query/rows/{analysis}");
        async move { client.post(&path, &json!({"params": params})).await }
    };
    let message = expect_error(
        query("group", json!({"by": "town"})).await,
        400,
        "invalid_params",
    );
    assert!(message.contains("no column \"town\""), "{message}");
    assert!(message.contains("columns: city, kind, amount"), "{message}");
    let message = expect_error(
        query("group", json!({"by": "kind", "sum": "city"})).await,
        400,
        "invalid_params",
    );
    assert!(
        message.contains("sum: city: \"oslo\" is not a number"),
        "{message}"
    );
    let message = expect_error(query("group", json!({})).await, 400, "invalid_params");
    assert!(message.contains("by"), "{message}");
    for bad in [
        json!({"by": "city", "limit": 0}),
        json!({"by": "city", "order_by": "amount"}),
        json!({"by": "city", "colour": "red"}),
        json!({"by": 3}),
    ] {
        expect_error(query("group", bad).await, 400, "invalid_params");
    }
    for bad in [
        json!({"format": "xml"}),
        json!({"files": "[a"}),
        json!({"files": "*.txt"}),
        json!({"where": {"city": ["oslo"]}}),
        json!({"where": {"": "oslo"}}),
        json!("not an object"),
    ] {
        let message = expect_error(query("count", bad.clone()).await, 400, "invalid_params");
        assert!(!message.is_empty(), "{bad}");
    }
    server.shutdown().await;

    // A ragged CSV and a broken JSON line: 500, naming shard, file and line.
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::config(dir.path());
    publish(
        dir.path(),
        &config.store,
        "broken",
        &[
            ("shards/a/x.csv", b"k,v\n1,2\n3\n".as_slice()),
            ("shards/b/y.jsonl", b"{\"k\": 1}\n[1, 2]\n".as_slice()),
        ],
    )
    .await;
    let (server, client) = serve(dram::builtin::register(dram::Node::builder(config))).await;
    load(&client, json!({"name": "broken", "source": "broken"})).await;
    let message = expect_error(
        client
            .post("/v1/query/broken/count", &json!({"shards": ["a"]}))
            .await,
        500,
        "analysis_failed",
    );
    assert!(message.contains("shard a file x.csv: line 3"), "{message}");
    let message = expect_error(
        client
            .post("/v1/query/broken/count", &json!({"shards": ["b"]}))
            .await,
        500,
        "analysis_failed",
    );
    assert!(
        message.contains("shard b file y.jsonl: line 2: not a JSON object"),
        "{message}"
    );
    // The node keeps serving.
    client.get("/v1/health").await.unwrap();
    server.shutdown().await;
}
