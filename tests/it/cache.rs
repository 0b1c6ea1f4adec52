//! The result cache: an answer is kept per (database version, analysis,
//! params, shards) and given again without mapping anything; a new version
//! behind an alias is computed anew; `Cache-Control: no-cache`, `cache:
//! false` and SQL that calls `now()` or `random()` are never taken from it;
//! a token for one database never reads another's kept answer; a query over
//! another shard set maps only the shards never mapped (their partials are
//! kept where they were mapped). Answers are checked against totals computed
//! here from the files.

use std::collections::BTreeMap;

use dram::client::Client;
use serde_json::{Value, json};

use crate::support::*;

const ADMIN: &str = "admin-token-for-the-cache";

/// Rows `key,n` of two shards, `rows` per shard, the values depending on `seed`.
fn shards(seed: u64, rows: u64) -> Vec<(String, Vec<u8>)> {
    ["a", "b"]
        .iter()
        .enumerate()
        .map(|(s, id)| {
            let mut text = String::from("key,n\n");
            for r in 0..rows {
                let key = ["x", "y", "z"][((r + seed + s as u64) % 3) as usize];
                text.push_str(&format!("{key},{}\n", r * seed + s as u64));
            }
            (format!("shards/{id}/rows.csv"), text.into_bytes())
        })
        .collect()
}

/// Sum of `n` per key, from the files.
fn sums(files: &[(String, Vec<u8>)], only: Option<&str>) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for (path, text) in files {
        if only.is_some_and(|id| !path.contains(&format!("/{id}/"))) {
            continue;
        }
        for line in std::str::from_utf8(text).unwrap().lines().skip(1) {
            let (key, n) = line.split_once(',').unwrap();
            *sums.entry(key.to_string()).or_insert(0) += n.parse::<u64>().unwrap();
        }
    }
    sums
}

fn group_sums(answer: &Value) -> BTreeMap<String, u64> {
    answer["result"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let total = &g["sum"]["n"];
            let total = total
                .as_u64()
                .or_else(|| total.as_str().and_then(|t| t.parse().ok()))
                .unwrap();
            (g["key"]["key"].as_str().unwrap().to_string(), total)
        })
        .collect()
}

async fn ask(client: &Client, target: &str, analysis: &str, body: Value) -> Value {
    client
        .post(&format!("/v1/query/{target}/{analysis}"), &body)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_kept_per_version_and_given_again_only_where_they_may_be() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.auth.admin_token = Some(ADMIN.into());
    config.auth.require_token_for_reads = true;
    config.auth.token_key = Some("cache-key".into());
    let store = config.store.clone();
    let v1 = shards(1, 40);
    let v2 = shards(7, 50);
    for (name, files) in [("v1", &v1), ("v2", &v2)] {
        publish_owned(dir.path(), &store, name, files, &[]).await;
    }
    let (server, _) = serve(dram::builtin::register(dram::Node::builder(config))).await;
    let admin = Client::new(&server.url()).with_token(Some(ADMIN.into()));
    for name in ["v1", "v2"] {
        admin
            .post("/v1/databases", &json!({"name": name, "source": name}))
            .await
            .unwrap();
        assert_eq!(wait_loaded(&admin, name).await["state"], "ready");
    }
    admin
        .put("/v1/aliases/daily", &json!({"target": "v1"}))
        .await
        .unwrap();

    // An analysis: computed once, then given again, mapping nothing.
    let group = json!({"params": {"by": "key", "sum": "n"}});
    let first = ask(&admin, "daily", "group", group.clone()).await;
    assert_eq!(first["meta"]["cache"], "miss", "{first}");
    assert_eq!(group_sums(&first), sums(&v1, None));
    let again = ask(
        &admin,
        "daily",
        "group",
        json!({"params": {"sum": "n", "by": "key"}}),
    )
    .await;
    assert_eq!(again["meta"]["cache"], "hit", "{again}");
    assert_eq!(again["result"], first["result"]);
    assert_eq!(again["meta"]["nodes"], json!([]), "{again}");
    assert_eq!(again["meta"]["version"], first["meta"]["version"]);
    assert_eq!(again["meta"]["alias"], "daily");
    // Other shards are another answer, made of the partial kept for "a"
    // when the whole was computed: nothing is mapped.
    let one = ask(
        &admin,
        "daily",
        "group",
        json!({"params": {"by": "key", "sum": "n"}, "shards": ["a"]}),
    )
    .await;
    assert_eq!(one["meta"]["cache"], "partial", "{one}");
    assert_eq!(one["meta"]["cached_shards"], 1, "{one}");
    assert_eq!(group_sums(&one), sums(&v1, Some("a")));

    // Asked not to: computed, and said so.
    let raw = reqwest::Client::new();
    let fresh: Value = raw
        .post(format!("{}/v1/query/daily/group", server.url()))
        .bearer_auth(ADMIN)
        .header("cache-control", "no-cache")
        .json(&group)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["meta"]["cache"], "bypass", "{fresh}");
    assert_eq!(fresh["meta"].get("cached_shards"), None, "{fresh}");
    assert_eq!(group_sums(&fresh), sums(&v1, None));
    let off = ask(
        &admin,
        "daily",
        "group",
        json!({"params": {"by": "key", "sum": "n"}, "cache": false}),
    )
    .await;
    assert_eq!(off["meta"]["cache"], "bypass", "{off}");

    // SQL: a query of the data is kept; one that reads the clock never is.
    let total: u64 = sums(&v1, None).values().sum();
    let sql = json!({"params": {"sql": "SELECT sum(n) AS total FROM rows"}});
    for expected in ["miss", "hit"] {
        let answer = ask(&admin, "daily", "sql", sql.clone()).await;
        assert_eq!(answer["meta"]["cache"], expected, "{answer}");
        assert_eq!(answer["result"]["rows"][0]["total"], total, "{answer}");
    }
    let clock = json!({"params": {"sql": "SELECT sum(n) AS total, now() AS at FROM rows"}});
    for _ in 0..2 {
        let answer = ask(&admin, "daily", "sql", clock.clone()).await;
        assert_eq!(answer["meta"]["cache"], "bypass", "{answer}");
    }

    // The alias moves: the new version's answer, computed, never v1's.
    admin
        .put("/v1/aliases/daily", &json!({"target": "v2"}))
        .await
        .unwrap();
    let moved = ask(&admin, "daily", "group", group.clone()).await;
    assert_eq!(moved["meta"]["cache"], "miss", "{moved}");
    assert_eq!(moved["meta"]["database"], "v2");
    assert_eq!(group_sums(&moved), sums(&v2, None));
    let total2: u64 = sums(&v2, None).values().sum();
    let answer = ask(&admin, "daily", "sql", sql.clone()).await;
    assert_eq!(answer["meta"]["cache"], "miss", "{answer}");
    assert_eq!(answer["result"]["rows"][0]["total"], total2, "{answer}");

    // A token for v1 reads v1's kept answer, never v2's (kept just above).
    let token = admin
        .post("/v1/tokens", &json!({"database": "v1", "ttl": 600}))
        .await
        .unwrap();
    let holder = Client::new(&server.url()).with_token(token["token"].as_str().map(str::to_string));
    let own = ask(&holder, "v1", "group", group.clone()).await;
    assert_eq!(own["meta"]["cache"], "hit", "{own}");
    assert_eq!(group_sums(&own), sums(&v1, None));
    expect_error(
        holder.post("/v1/query/v2/group", &group).await,
        403,
        "forbidden",
    );
    expect_error(
        holder.post("/v1/query/daily/group", &group).await,
        403,
        "forbidden",
    );

    // What /metrics says.
    let metrics = || async {
        reqwest::Client::new()
            .get(format!("{}/metrics", server.url()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let value = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    let text = metrics().await;
    assert_eq!(
        value(&text, "dram_result_cache_total{outcome=\"hit\"}"),
        3.0
    );
    assert!(value(&text, "dram_result_cache_total{outcome=\"miss\"}") >= 5.0);
    assert!(value(&text, "dram_result_cache_total{outcome=\"bypass\"}") >= 4.0);
    assert!(value(&text, "dram_result_cache_bytes") > 0.0);
    // Shards: "a" once from the cache; mapped and kept: v1's and v2's two.
    assert_eq!(
        value(&text, "dram_result_cache_shards_total{outcome=\"hit\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "dram_result_cache_shards_total{outcome=\"miss\"}"),
        4.0
    );
    // v1: three answers and two partials; v2: two answers, two partials.
    assert_eq!(value(&text, "dram_result_cache_entries"), 9.0);

    // A deleted database's answers are forgotten (at the next answer kept,
    // a second or more after the last look): v1's five entries leave, v2's
    // four stay, and the new answer and its two partials are kept.
    admin.delete("/v1/databases/v1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let fresh = ask(&admin, "v2", "group", json!({"params": {"by": "key"}})).await;
    assert_eq!(fresh["meta"]["cache"], "miss", "{fresh}");
    assert_eq!(value(&metrics().await, "dram_result_cache_entries"), 7.0);
    server.shutdown().await;
}

/// Three members: the answer one computes is kept by the key's owner, and the
/// same query on any member is then a hit, the same answer, computed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_answer_serves_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let members = crate::cluster::members(dir.path(), 3).await;
    let files = shards(3, 60);
    let store = members[0].server.node.config().store.clone();
    publish_owned(dir.path(), &store, "db", &files, &[]).await;
    members[0]
        .client
        .post(
            "/v1/databases",
            &json!({"name": "db", "source": "db", "replicas": 1}),
        )
        .await
        .unwrap();
    let clients: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    crate::cluster::on_all(&clients, 30, "db ready, both shards held", |c| {
        Box::pin(async move {
            let view = copies(c, "db").await;
            view.len() == 2 && view.values().all(|h| ready(h).len() == 1)
        })
    })
    .await;
    let group = json!({"params": {"by": "key", "sum": "n"}});
    let mut outcomes = Vec::new();
    for member in &members {
        // The owner may take the answer a moment after it was given.
        let mut answer = ask(&member.client, "db", "group", group.clone()).await;
        for _ in 0..50 {
            if outcomes.is_empty() || answer["meta"]["cache"] == "hit" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            answer = ask(&member.client, "db", "group", group.clone()).await;
        }
        assert_eq!(group_sums(&answer), sums(&files, None), "{answer}");
        outcomes.push(answer["meta"]["cache"].as_str().unwrap().to_string());
    }
    assert_eq!(outcomes, ["miss", "hit", "hit"]);
    // The answer is kept once, by the key's owner; each shard's partial by
    // the member that mapped it.
    let mut kept = 0.0;
    for member in &members {
        let text = metrics_text(&member.server.url()).await;
        kept += text
            .lines()
            .find(|l| l.starts_with("dram_result_cache_entries"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap();
    }
    assert_eq!(kept, 3.0);
    // One shard asked of a member that does not hold it: its holder gives
    // the partial it kept (the root reads the count from the map answer).
    let view = copies(&members[0].client, "db").await;
    let holder_of_a = ready(&view["a"])[0].to_string();
    let elsewhere = members
        .iter()
        .find(|m| m.server.node.id() != holder_of_a)
        .unwrap();
    let one = ask(
        &elsewhere.client,
        "db",
        "group",
        json!({"params": {"by": "key", "sum": "n"}, "shards": ["a"]}),
    )
    .await;
    assert_eq!(one["meta"]["cache"], "partial", "{one}");
    assert_eq!(one["meta"]["cached_shards"], 1, "{one}");
    assert_eq!(
        one["meta"]["nodes"][0]["node"],
        holder_of_a.as_str(),
        "{one}"
    );
    assert_eq!(group_sums(&one), sums(&files, Some("a")));
    for member in members {
        member.server.shutdown().await;
    }
}

/// Warm then swap on two members: queries asked of the alias's database on
/// either member are replayed against the new, lazy database before the alias
/// moves (its lazy copies fetched first on both), so the same queries on the
/// moved alias are hits, with the new database's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_alias_move_replays_recent_queries_before_it_moves() {
    let dir = tempfile::tempdir().unwrap();
    let members = crate::cluster::members(dir.path(), 2).await;
    let v1 = shards(2, 30);
    let v2 = shards(5, 40);
    let store = members[0].server.node.config().store.clone();
    for (name, files) in [("v1", &v1), ("v2", &v2)] {
        publish_owned(dir.path(), &store, name, files, &[]).await;
    }
    let (first, second) = (&members[0].client, &members[1].client);
    for body in [
        json!({"name": "v1", "source": "v1", "replicas": 1}),
        json!({"name": "v2", "source": "v2", "replicas": 1, "mode": "lazy"}),
    ] {
        first.post("/v1/databases", &body).await.unwrap();
    }
    let clients: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    crate::cluster::on_all(&clients, 30, "v1 ready and v2 lazy, both placed", |c| {
        Box::pin(async move {
            let (one, two) = (copies(c, "v1").await, copies(c, "v2").await);
            let placed = |view: &BTreeMap<String, Vec<(String, String)>>, state: &str| {
                view.len() == 2
                    && view
                        .values()
                        .all(|h| h.iter().filter(|(_, s)| s == state).count() == 1)
            };
            placed(&one, "ready") && placed(&two, "lazy")
        })
    })
    .await;
    first
        .put("/v1/aliases/daily", &json!({"target": "v1"}))
        .await
        .unwrap();

    let group = json!({"params": {"by": "key", "sum": "n"}});
    let sql = json!({"params": {"sql": "SELECT sum(n) AS total FROM rows"}});
    let clock = json!({"params": {"sql": "SELECT count(*) AS n, now() AS at FROM rows"}});
    assert_eq!(
        group_sums(&ask(first, "daily", "group", group.clone()).await),
        sums(&v1, None)
    );
    ask(second, "daily", "sql", sql.clone()).await;
    ask(second, "daily", "count", json!({})).await;
    // Never kept, so never replayed.
    ask(second, "daily", "sql", clock.clone()).await;

    // A target that is not a database: refused, nothing moves.
    let ghost = json!({"actions": [{"set": {"name": "daily", "target": "ghost"}}], "warm": true});
    expect_error(
        first.post("/v1/aliases/_batch", &ghost).await,
        404,
        "not_found",
    );
    assert_eq!(
        first.get("/v1/aliases/daily").await.unwrap()["target"],
        "v1"
    );

    let batch = json!({"actions": [{"set": {"name": "daily", "target": "v2"}}], "warm": true});
    let moved = first.post("/v1/aliases/_batch", &batch).await.unwrap();
    let warmed = &moved["warmed"];
    assert_eq!(warmed["databases"], json!(["v2"]), "{moved}");
    assert_eq!(warmed["members"], 2, "{moved}");
    assert_eq!(warmed["lazy_shards"], 2, "{moved}");
    let v2_bytes: usize = v2.iter().map(|(_, bytes)| bytes.len()).sum();
    assert_eq!(warmed["lazy_files"], 2, "{moved}");
    assert_eq!(warmed["lazy_bytes"], v2_bytes, "{moved}");
    assert_eq!(warmed["queries"], 3, "{moved}");
    assert_eq!(warmed["failed"], 0, "{moved}");
    assert_eq!(moved["applied"][0]["target"], "v2", "{moved}");

    // The moved alias: the new database's answers, already kept.
    for client in [first, second] {
        let answer = ask(client, "daily", "group", group.clone()).await;
        assert_eq!(answer["meta"]["cache"], "hit", "{answer}");
        assert_eq!(answer["meta"]["database"], "v2", "{answer}");
        assert_eq!(group_sums(&answer), sums(&v2, None));
        let answer = ask(client, "daily", "sql", sql.clone()).await;
        assert_eq!(answer["meta"]["cache"], "hit", "{answer}");
        let total: u64 = sums(&v2, None).values().sum();
        assert_eq!(answer["result"]["rows"][0]["total"], total, "{answer}");
        let answer = ask(client, "daily", "count", json!({})).await;
        assert_eq!(answer["meta"]["cache"], "hit", "{answer}");
        assert_eq!(answer["result"]["rows"], 80, "{answer}");
    }
    for member in members {
        member.server.shutdown().await;
    }
}
