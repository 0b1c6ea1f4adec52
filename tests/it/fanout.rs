//! Queries across a cluster of real nodes (127.0.0.1, 100 ms gossip): any node
//! answers for every shard, whoever holds it; answers equal a reference computed
//! here from the published rows; a holder killed during a stream of queries costs
//! retries, not wrong answers; an alias swapped during a stream never mixes
//! versions; shards with no live holder fail with 503 or, with `allow_partial`,
//! are listed as missing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dram::client::Client;
use serde_json::{Value, json};

use crate::cluster::{Member, SECRET, live_members, member_with, on_all};
use crate::support::{copies, expect_error, publish, ready};

const SHARDS: usize = 8;

/// Files (path, bytes), the number of rows, and per category its rows and sum.
type Dataset = (Vec<(String, Vec<u8>)>, u64, BTreeMap<String, (u64, i64)>);

/// Rows of one database: shard `s` has `20 + 7s + 3·seed` rows of `category,amount`.
fn dataset(seed: usize) -> Dataset {
    let mut files = Vec::new();
    let mut total = 0;
    let mut by_category: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for s in 0..SHARDS {
        let mut csv = String::from("category,amount\n");
        for r in 0..(20 + s * 7 + seed * 3) {
            let category = ["books", "games", "tools"][(r + s + seed) % 3];
            let amount = (r * 13 + s * 5 + seed) as i64 % 97;
            csv.push_str(&format!("{category},{amount}\n"));
            total += 1;
            let entry = by_category.entry(category.to_string()).or_default();
            entry.0 += 1;
            entry.1 += amount;
        }
        files.push((format!("shards/{s}/rows.csv"), csv.into_bytes()));
    }
    (files, total, by_category)
}

async fn publish_dataset(dir: &std::path::Path, member: &Member, name: &str, seed: usize) -> u64 {
    let (files, total, _) = dataset(seed);
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let store = member.server.node.config().store.clone();
    publish(dir, &store, name, &files).await;
    total
}

/// Waits until every node sees `database` with `copies` ready copies per shard.
async fn wait_placed(clients: &[&Client], database: &str, n: usize) {
    let what = format!("{database} placed");
    let database = database.to_string();
    on_all(clients, 60, &what, |c| {
        let database = database.clone();
        Box::pin(async move {
            let shards = copies(c, &database).await;
            shards.len() == SHARDS && shards.values().all(|list| ready(list).len() == n)
        })
    })
    .await;
}

async fn count(
    client: &Client,
    target: &str,
    extra: Value,
) -> Result<Value, dram::client::ClientError> {
    // Computed every time: these tests watch the fan-out, not the cache.
    let mut body = json!({"cache": false});
    if let Value::Object(map) = extra {
        for (k, v) in map {
            body[k] = v;
        }
    }
    client
        .post(&format!("/v1/query/{target}/count"), &body)
        .await
}

async fn start(dir: &std::path::Path, name: &str, seeds: &[&str]) -> Member {
    member_with(dir, name, &dir.join("store"), seeds, |_| {}, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_answers_for_every_shard_and_survives_a_lost_holder() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = start(dir.path(), "n1", &[]).await;
    let seed = n1.gossip.clone();
    let mut members = vec![n1];
    for name in ["n2", "n3", "n4"] {
        members.push(start(dir.path(), name, &[&seed]).await);
    }
    let total_one = publish_dataset(dir.path(), &members[0], "one", 0).await;
    let total_two = publish_dataset(dir.path(), &members[0], "two", 1).await;
    let (_, _, by_category) = dataset(1);
    {
        let clients: Vec<&Client> = members.iter().map(|m| &m.client).collect();
        on_all(&clients, 30, "four live members", |c| {
            Box::pin(async move {
                let status = c.get("/v1/cluster").await.unwrap_or(Value::Null);
                live_members(&status).len() == 4
            })
        })
        .await;
        let admin = &members[0].client;
        admin
            .post(
                "/v1/databases",
                &json!({"name": "one", "source": "one", "replicas": 1}),
            )
            .await
            .unwrap();
        admin
            .post(
                "/v1/databases",
                &json!({"name": "two", "source": "two", "replicas": 2}),
            )
            .await
            .unwrap();
        wait_placed(&clients, "one", 1).await;
        wait_placed(&clients, "two", 2).await;

        // The same answers from every node, equal to the reference.
        for member in &members {
            let c = &member.client;
            let answer = count(c, "one", json!({})).await.unwrap();
            assert_eq!(answer["result"]["rows"], total_one, "{answer}");
            let meta = &answer["meta"];
            assert_eq!(meta["shards"], SHARDS, "{answer}");
            assert_eq!(meta["retries"], 0, "{answer}");
            let nodes = meta["nodes"].as_array().unwrap();
            assert!(
                nodes.len() > 1,
                "one copy per shard over four nodes: {answer}"
            );
            let mapped: u64 = nodes.iter().map(|n| n["shards"].as_u64().unwrap()).sum();
            assert_eq!(mapped, SHARDS as u64, "{answer}");

            let answer = c
                .post(
                    "/v1/query/two/group",
                    &json!({
                        "params": {"by": "category", "sum": "amount", "order_by": "key"},
                        "cache": false
                    }),
                )
                .await
                .unwrap();
            let got: BTreeMap<String, (u64, i64)> = answer["result"]["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| {
                    (
                        g["key"]["category"].as_str().unwrap().to_string(),
                        (
                            g["count"].as_u64().unwrap(),
                            g["sum"]["amount"].as_i64().unwrap(),
                        ),
                    )
                })
                .collect();
            assert_eq!(got, by_category, "{answer}");
            assert_eq!(answer["result"]["rows"], total_two);
        }
        // The smart client: shard map from one node, partials straight from
        // the holders, reduced here; the same answers.
        let direct = Client::new(&members[3].server.url()).with_cluster_secret(Some(SECRET.into()));
        let analyses = dram::builtin::analyses();
        let answer = direct
            .query_direct(&analyses, "one", "count", Default::default())
            .await
            .unwrap();
        assert_eq!(answer.result["rows"], total_one, "{answer:?}");
        assert_eq!(answer.meta.shards, SHARDS);
        assert!(answer.meta.nodes.len() > 1, "{answer:?}");
        let request = dram::query::QueryRequest {
            params: Some(json!({"by": "category", "sum": "amount", "order_by": "key"})),
            ..Default::default()
        };
        let answer = direct
            .query_direct(&analyses, "two", "group", request)
            .await
            .unwrap();
        assert_eq!(answer.result["rows"], total_two);
        assert_eq!(
            answer.result["groups"].as_array().unwrap().len(),
            by_category.len()
        );
        // Without the secret the holders refuse; the CLI passes it on.
        let refused = Client::new(&members[3].server.url())
            .query_direct(&analyses, "one", "count", Default::default())
            .await;
        assert!(
            matches!(refused, Err(dram::client::ClientError::Api { .. })),
            "{refused:?}"
        );
        let printed = crate::support::dram_cli(
            &[
                "query",
                "one",
                "count",
                "--direct",
                "--result-only",
                "--cluster-secret",
                SECRET,
            ],
            &members[1].server.url(),
        )
        .await;
        assert!(
            printed.contains(&format!("\"rows\": {total_one}")),
            "{printed}"
        );

        // One shard, wherever it is.
        let answer = count(&members[2].client, "one", json!({"shards": ["3"]}))
            .await
            .unwrap();
        assert_eq!(answer["meta"]["shards"], 1, "{answer}");
        expect_error(
            count(&members[2].client, "one", json!({"shards": ["nope"]})).await,
            404,
            "not_found",
        );
    }

    // A holder dies during a stream of queries on the two-copy database: every
    // answer right, some after a retry on the other copy.
    let root = members[0].client.clone();
    let answer = count(&root, "two", json!({})).await.unwrap();
    let victim_id = answer["meta"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_string())
        .find(|n| n != "n1")
        .expect("n1 asked another node");
    let index = members
        .iter()
        .position(|m| m.server.node.id() == victim_id)
        .unwrap();
    let victim = members.remove(index);
    let stream = tokio::spawn(async move {
        let mut retried = 0;
        let mut answers_retried = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen_dead = false;
        let mut answers = 0;
        while Instant::now() < deadline && !(seen_dead && answers > 20) {
            let answer = count(&root, "two", json!({})).await.unwrap();
            assert_eq!(answer["result"]["rows"], total_two, "{answer}");
            let retries = answer["meta"]["retries"].as_u64().unwrap();
            retried += retries;
            answers_retried += usize::from(retries > 0);
            answers += 1;
            let status = root.get("/v1/cluster").await.unwrap();
            seen_dead = live_members(&status).len() == 3;
        }
        (retried, answers, seen_dead, answers_retried)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    victim.server.shutdown_unannounced().await;
    let (retried, answers, seen_dead, answers_retried) = stream.await.unwrap();
    assert!(seen_dead, "the victim was never seen dead");
    assert!(retried >= 1, "no answer was retried in {answers} answers");
    // Once a holder failed, the root tries it last: one answer pays the retry,
    // not every answer until gossip notices the death.
    assert_eq!(
        answers_retried, 1,
        "{answers_retried} of {answers} answers retried"
    );

    // The one-copy database lost the victim's shards: 503 naming them, or an
    // answer without them when the request allows it.
    let root = &members[0].client;
    let lost: Vec<String> = {
        let holders = root.get("/v1/cluster/shards?database=one").await.unwrap();
        (0..SHARDS)
            .map(|s| s.to_string())
            .filter(|s| holders["shards"][s].as_array().is_none_or(|l| l.is_empty()))
            .collect()
    };
    // (Placement is deterministic: with these names the victim held some.)
    assert!(!lost.is_empty(), "the victim held no shard of `one`");
    {
        let error = expect_error(
            count(root, "one", json!({})).await,
            503,
            "shards_unavailable",
        );
        for shard in &lost {
            assert!(error.contains(shard.as_str()), "{error}");
        }
        let answer = count(root, "one", json!({"allow_partial": true}))
            .await
            .unwrap();
        let missing: Vec<String> = answer["meta"]["missing_shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert_eq!(missing, lost, "{answer}");
        let rows = answer["result"]["rows"].as_u64().unwrap();
        let lost_rows: u64 = lost
            .iter()
            .map(|s| 20 + s.parse::<u64>().unwrap() * 7)
            .sum();
        assert_eq!(rows, total_one - lost_rows, "{answer}");
    }
    for member in members {
        member.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alias_swapped_during_a_stream_never_mixes_versions() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = start(dir.path(), "n1", &[]).await;
    let seed = n1.gossip.clone();
    let n2 = start(dir.path(), "n2", &[&seed]).await;
    let n3 = start(dir.path(), "n3", &[&seed]).await;
    let totals = [
        publish_dataset(dir.path(), &n1, "day-1", 0).await,
        publish_dataset(dir.path(), &n1, "day-2", 5).await,
    ];
    let clients = [&n1.client, &n2.client, &n3.client];
    on_all(&clients, 30, "three live members", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap_or(Value::Null);
            live_members(&status).len() == 3
        })
    })
    .await;
    for day in ["day-1", "day-2"] {
        n1.client
            .post("/v1/databases", &json!({"name": day, "source": day}))
            .await
            .unwrap();
        wait_placed(&clients, day, 1).await;
    }
    n1.client
        .put("/v1/aliases/current", &json!({"target": "day-1"}))
        .await
        .unwrap();
    on_all(&clients, 10, "alias everywhere", |c| {
        Box::pin(async move {
            c.get("/v1/aliases/current")
                .await
                .is_ok_and(|a| a["target"] == "day-1")
        })
    })
    .await;
    let reader = n3.client.clone();
    let stream = tokio::spawn(async move {
        let mut seen = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && seen.len() < 2 || seen.values().sum::<usize>() < 40 {
            assert!(Instant::now() < deadline, "the swap never showed: {seen:?}");
            let answer = count(&reader, "current", json!({})).await.unwrap();
            let database = answer["meta"]["database"].as_str().unwrap().to_string();
            let expected = if database == "day-1" {
                totals[0]
            } else {
                totals[1]
            };
            assert_eq!(
                answer["result"]["rows"], expected,
                "a mixed answer: {answer}"
            );
            *seen.entry(database).or_insert(0usize) += 1;
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    n2.client
        .put("/v1/aliases/current", &json!({"target": "day-2"}))
        .await
        .unwrap();
    let seen = stream.await.unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for member in [n1, n2, n3] {
        member.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_heard_of_a_database_forwards_the_query() {
    let dir = tempfile::tempdir().unwrap();
    // n1 defines `fresh` alone; n2 joins after, gossiping with n1 (in
    // memory: UDP gossip is signed with the secret) but holding no cluster
    // secret: its registry pulls are refused, so it never learns of `fresh`
    // (its queries, carrying no token, are reads n1 answers).
    let transport = chitchat::transport::ChannelTransport::default();
    let store = dir.path().join("store");
    let n1 = member_with(
        dir.path(),
        "n1",
        &store,
        &[],
        |_| {},
        Some(transport.clone()),
    )
    .await;
    let total = publish_dataset(dir.path(), &n1, "fresh", 2).await;
    n1.client
        .post(
            "/v1/databases",
            &json!({"name": "fresh", "source": "fresh", "replicas": "all"}),
        )
        .await
        .unwrap();
    let seed = n1.gossip.clone();
    let n2 = member_with(
        dir.path(),
        "n2",
        &store,
        &[&seed],
        |config| config.auth.cluster_secret = None,
        Some(transport),
    )
    .await;
    on_all(&[&n1.client, &n2.client], 30, "two live members", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap_or(Value::Null);
            live_members(&status).len() == 2
        })
    })
    .await;
    crate::support::wait_loaded(&n1.client, "fresh").await;
    // n2 sees n1's registry digest move ahead of its own, and forwards.
    crate::support::eventually(10, "n2 answers through n1", || {
        let c = n2.client.clone();
        async move {
            count(&c, "fresh", json!({}))
                .await
                .is_ok_and(|a| a["result"]["rows"] == total)
        }
    })
    .await;
    expect_error(n2.client.get("/v1/databases/fresh").await, 404, "not_found");
    // n1's verdict on a name nobody knows comes back as it is.
    expect_error(
        count(&n2.client, "nothing", json!({})).await,
        404,
        "not_found",
    );
    n2.server.shutdown().await;
    n1.server.shutdown().await;
}
