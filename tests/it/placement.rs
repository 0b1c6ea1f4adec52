//! Placement and replication on real nodes (127.0.0.1, 100 ms gossip): a
//! six-shard database with two copies of each shard on four nodes; a node killed
//! (its shards copied elsewhere only after `node_left_delay`); a node added
//! (shards move to it, the old copies trashed only once the new ones are ready).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chitchat::transport::ChannelTransport;
use dram::client::Client;
use serde_json::{Value, json};

use crate::cluster::{Member, SECRET, live_members, member_with, on_all};
use crate::support::{copies, dram_cli, expect_error, publish, ready};

/// Every one of `shards` shards has exactly `n` copies that are not trashed,
/// all ready.
fn placed(copies: &BTreeMap<String, Vec<(String, String)>>, shards: usize, n: usize) -> bool {
    copies.len() == shards
        && copies.values().all(|list| {
            let kept: Vec<_> = list.iter().filter(|(_, s)| s != "trashed").collect();
            kept.len() == n && ready(list).len() == n
        })
}

async fn start(dir: &std::path::Path, name: &str, seeds: &[&str]) -> Member {
    start_on(dir, name, seeds, None).await
}

async fn start_on(
    dir: &std::path::Path,
    name: &str,
    seeds: &[&str],
    transport: Option<ChannelTransport>,
) -> Member {
    member_with(
        dir,
        name,
        &dir.join("store"),
        seeds,
        |config| {
            config.cluster.node_left_delay_secs = 3;
            config.cluster.primary_settle_secs = 1;
            config.cluster.max_concurrent_moves = 4;
            config.trash.lifetime_secs = 3600;
        },
        transport,
    )
    .await
}

/// Publishes `events`: six shards of 50 CSV rows each.
async fn publish_events(dir: &std::path::Path, member: &Member) {
    let store = member.server.node.config().store.clone();
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|s| {
            let rows: String = (0..50).map(|r| format!("{s},{r}\n")).collect();
            (
                format!("shards/{s}/rows.csv"),
                format!("shard,row\n{rows}").into_bytes(),
            )
        })
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    publish(dir, &store, "events", &files).await;
}

/// Defines `events` with two copies of each shard and waits until every member
/// sees each shard on exactly two members.
async fn define_events(admin: &Client, clients: &[&Client]) {
    admin
        .post(
            "/v1/databases",
            &json!({"name": "events", "source": "events", "replicas": 2}),
        )
        .await
        .unwrap();
    on_all(clients, 60, "every shard on exactly 2 nodes", |c| {
        Box::pin(async move { placed(&copies(c, "events").await, 6, 2) })
    })
    .await;
}

/// Copies of `events` this node holds in its trash.
async fn trashed_here(client: &Client) -> usize {
    trashed_here_in(client, "events").await
}

/// Copies of `database` this node holds in its trash.
async fn trashed_here_in(client: &Client, database: &str) -> usize {
    let Ok(info) = client.get(&format!("/v1/databases/{database}")).await else {
        return 0;
    };
    info["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["trashed_ms"].is_u64())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_keep_two_copies_as_members_leave_and_join() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = start(dir.path(), "n1", &[]).await;
    let seed = n1.gossip.clone();
    let seeds = [seed.as_str()];
    let mut members = vec![n1];
    for name in ["n2", "n3", "n4"] {
        members.push(start(dir.path(), name, &seeds).await);
    }
    publish_events(dir.path(), &members[0]).await;

    let clients: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    on_all(&clients, 30, "four live members", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap_or(Value::Null);
            live_members(&status).len() == 4 && !status["primary"].is_null()
        })
    })
    .await;
    // Each shard on exactly two nodes, seen alike by every node; no node holds all.
    define_events(&members[0].client, &clients).await;
    let view = copies(&members[0].client, "events").await;
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for list in view.values() {
        for node in ready(list) {
            *held.entry(node).or_default() += 1;
        }
    }
    assert_eq!(held.values().sum::<usize>(), 12, "{view:?}");
    assert!(
        held.values().all(|n| *n < 6),
        "a node holds everything: {held:?}"
    );
    let status = members[0].client.get("/v1/cluster").await.unwrap();
    assert_eq!(status["health"], "green", "{status}");

    // Kill a node (not the primary, n1) that holds shards.
    let victim_index = (1..4)
        .find(|i| held.contains_key(format!("n{}", i + 1).as_str()))
        .unwrap();
    let victim = members.remove(victim_index);
    let victim_id = victim.server.node.id().to_string();
    let lost: Vec<String> = view
        .iter()
        .filter(|(_, list)| ready(list).contains(&victim_id.as_str()))
        .map(|(shard, _)| shard.clone())
        .collect();
    victim.server.shutdown().await;
    let killed = Instant::now();
    let primary = &members[0].client.clone();
    crate::support::eventually(10, "the victim seen dead", || async {
        let status = primary.get("/v1/cluster").await.unwrap();
        !live_members(&status).contains(&victim_id)
    })
    .await;
    // Within node_left_delay (3 s): nothing is copied yet.
    let plan = primary.get("/v1/plan").await.unwrap();
    let within = killed.elapsed() < Duration::from_secs(2);
    if within {
        assert_eq!(
            plan["downloads"],
            json!([]),
            "copied before the delay: {plan}"
        );
        let now = copies(primary, "events").await;
        for shard in &lost {
            assert_eq!(ready(&now[shard]).len(), 1, "{shard}: {now:?}");
        }
    }
    // After it: two ready copies again among the three left.
    let clients: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    on_all(&clients, 60, "two copies again after the leave", |c| {
        Box::pin(async move { placed(&copies(c, "events").await, 6, 2) })
    })
    .await;
    assert!(
        killed.elapsed() >= Duration::from_secs(3),
        "re-replicated before the delay"
    );

    // A node joins: shards move to it (and a few between the others, as each
    // member's quota of the database shrinks); an old copy is trashed only once
    // the new one is ready, so every shard keeps two ready copies throughout.
    members.push(start(dir.path(), "n5", &seeds).await);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = copies(primary, "events").await;
        for (shard, list) in &now {
            assert!(
                ready(list).len() >= 2,
                "{shard} fell below two ready copies: {list:?}"
            );
        }
        let on_new = now.values().filter(|l| ready(l).contains(&"n5")).count();
        let trashed = now
            .values()
            .flatten()
            .filter(|(_, s)| s == "trashed")
            .count();
        // Every copy made replaced one now trashed: n5's, and the few that
        // changed places between the others as their quotas shrank.
        let made = now
            .values()
            .flatten()
            .filter(|(_, s)| s != "trashed")
            .count()
            - 12;
        if placed(&now, 6, 2) && on_new > 0 && made == 0 && trashed >= on_new {
            let plan = primary.get("/v1/plan").await.unwrap();
            if plan["downloads"] == json!([]) && plan["waiting"] == json!([]) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the join did not settle: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // A trashed copy is still on its node, listed with when it was trashed.
    let now = copies(primary, "events").await;
    let (shard, old_holder) = now
        .iter()
        .find_map(|(shard, list)| {
            list.iter()
                .find(|(_, s)| s == "trashed")
                .map(|(node, _)| (shard.clone(), node.clone()))
        })
        .unwrap();
    let holder = members
        .iter()
        .find(|m| m.server.node.id() == old_holder)
        .unwrap();
    let info = holder.client.get("/v1/databases/events").await.unwrap();
    let part = info["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == shard.as_str())
        .unwrap();
    assert!(part["trashed_ms"].as_u64().is_some(), "{info}");

    // The plan is empty once settled; a what-if shows a third copy's cost.
    let plan = primary.get("/v1/plan").await.unwrap();
    assert_eq!(plan["downloads"], json!([]), "{plan}");
    // (The plan reads the state of the last gossip round: poll until it has
    // caught up with the trashes above.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let what_if = primary
            .get("/v1/plan?database=events&replicas=3")
            .await
            .unwrap();
        let sum = |key: &str| -> u64 {
            what_if["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n[key].as_u64().unwrap())
                .sum()
        };
        // Six shards of 250 bytes: 2 copies now, 3 after.
        if sum("bytes_now") == 6 * 2 * 250 {
            assert_eq!(sum("bytes_after"), 6 * 3 * 250, "{what_if}");
            break;
        }
        assert!(Instant::now() < deadline, "{what_if}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let printed = dram_cli(
        &["cluster", "plan", "--database", "events", "--replicas", "3"],
        &members[0].server.url(),
    )
    .await;
    assert!(
        printed.contains("replicas 2 -> 3") && printed.contains("n5"),
        "{printed}"
    );
    for (query, status, code) in [
        ("?database=events&replicas=0", 400, "invalid_input"),
        ("?database=events", 400, "invalid_input"),
        ("?database=nothing&replicas=2", 404, "not_found"),
        ("?color=blue", 400, "invalid_input"),
    ] {
        expect_error(primary.get(&format!("/v1/plan{query}")).await, status, code);
    }

    for member in members {
        member.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_side_of_a_partition_trashes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let transport = ChannelTransport::default();
    let mut members = Vec::new();
    for name in ["n1", "n2", "n3", "n4", "n5"] {
        let seed = members.first().map(|m: &Member| m.gossip.clone());
        let seeds: Vec<&str> = seed.iter().map(String::as_str).collect();
        members.push(start_on(dir.path(), name, &seeds, Some(transport.clone())).await);
    }
    publish_events(dir.path(), &members[0]).await;
    let clients: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    on_all(&clients, 30, "five live members and a primary", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap_or(Value::Null);
            live_members(&status).len() == 5 && status["primary"]["id"] == "n1"
        })
    })
    .await;
    define_events(&members[0].client, &clients).await;

    let old_term = members[0].client.get("/v1/cluster").await.unwrap()["primary"]["term"]
        .as_u64()
        .unwrap();

    // Cut gossip between {n1, n2} (n1 was primary) and {n3, n4, n5}.
    let address = |m: &Member| m.gossip.parse::<std::net::SocketAddr>().unwrap();
    let (minority, majority) = members.split_at(2);
    for a in minority {
        for b in majority {
            transport.remove_link(address(a), address(b)).await;
        }
    }
    let small: Vec<&Client> = minority.iter().map(|m| &m.client).collect();
    let large: Vec<&Client> = majority.iter().map(|m| &m.client).collect();
    on_all(&large, 30, "n3 primary of the majority side", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap();
            live_members(&status).len() == 3 && status["primary"]["id"] == "n3"
        })
    })
    .await;
    on_all(&small, 30, "no primary on the minority side", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap();
            live_members(&status).len() == 2 && status["primary"].is_null()
        })
    })
    .await;
    // Past node_left_delay each side copies what it lacks: the majority, with a
    // primary, may trash its own extras; the minority adds copies only.
    on_all(
        &small,
        60,
        "the minority side holds two copies of every shard",
        |c| Box::pin(async move { placed(&copies(c, "events").await, 6, 2) }),
    )
    .await;
    on_all(
        &large,
        60,
        "the majority side holds two copies of every shard",
        |c| Box::pin(async move { placed(&copies(c, "events").await, 6, 2) }),
    )
    .await;
    // A holder on either side refuses the old primary's trash requests: the
    // minority sees no primary, the majority knows a newer term.
    for member in &members {
        let view = copies(&member.client, "events").await;
        let id = member.server.node.id();
        let Some(shard) = view
            .iter()
            .find(|(_, l)| ready(l).contains(&id))
            .map(|(s, _)| s)
        else {
            continue;
        };
        let refused = reqwest::Client::new()
            .post(format!("{}/v1/internal/trash", member.server.url()))
            .bearer_auth(SECRET)
            .json(&json!({"database": "events", "shard": shard, "primary": "n1", "term": old_term}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            409,
            "{id} obeyed a trash from the old primary"
        );
        let body: Value = refused.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        let expected = if id <= "n2" {
            "not the primary"
        } else {
            "stale"
        };
        assert!(message.contains(expected), "{id}: {body}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for client in &small {
        assert_eq!(
            trashed_here(client).await,
            0,
            "the minority side trashed a copy"
        );
        let status = client.get("/v1/cluster").await.unwrap();
        assert!(status["primary"].is_null(), "{status}");
    }

    // Healed: one primary (n1 again, in a newer term) everywhere, and the
    // extra copies made on both sides trashed down to two per shard.
    for a in minority {
        for b in majority {
            transport.add_link(address(a), address(b)).await;
        }
    }
    let majority_term = large[0].get("/v1/cluster").await.unwrap()["primary"]["term"]
        .as_u64()
        .unwrap();
    on_all(&clients, 30, "one primary after healing", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap();
            live_members(&status).len() == 5
                && status["primary"]["id"] == "n1"
                && status["primary"]["term"].as_u64() > Some(majority_term)
        })
    })
    .await;
    on_all(&clients, 60, "two copies per shard after healing", |c| {
        Box::pin(async move { placed(&copies(c, "events").await, 6, 2) })
    })
    .await;
    for member in members {
        member.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_deletes_the_coldest_unaliased_database_when_a_disk_fills() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config(dir.path());
    config.node.id = "solo".into();
    config.cluster.gossip_interval_ms = 100;
    config.cluster.primary_settle_secs = 1;
    config.cluster.gc_interval_secs = 1;
    config.cluster.gc_min_age_secs = 0;
    config.trash.lifetime_secs = 3600;
    let disk = |max_bytes: u64| dram::config::DiskConfig {
        path: dir.path().join("data"),
        high_watermark: 0.9,
        max_bytes: Some(max_bytes),
    };
    config.disks = vec![disk(200_000)];
    let store = config.store.clone();
    let names = ["cold", "warm", "aliased", "kept"];
    for (i, name) in names.iter().enumerate() {
        // 18 kB of rows unique to each database (no shared blobs).
        let rows: String = (0..2_000).map(|r| format!("{i},{r:06}\n")).collect();
        publish(dir.path(), &store, name, &[("rows.csv", rows.as_bytes())]).await;
    }
    let (server, client) =
        crate::support::serve(dram::builtin::register(dram::Node::builder(config.clone()))).await;
    for name in names {
        let body = json!({"name": name, "source": name, "keep": name == "kept"});
        client.post("/v1/databases", &body).await.unwrap();
        crate::support::wait_loaded(&client, name).await;
    }
    client
        .put("/v1/aliases/current", &json!({"target": "aliased"}))
        .await
        .unwrap();
    client
        .post("/v1/query/warm/count", &json!({}))
        .await
        .unwrap();
    // Room to spare: nothing to do yet, but the order is known.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = client.get("/v1/gc").await.unwrap();
        let order: Vec<&str> = report["eligible"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["database"].as_str().unwrap())
            .collect();
        if order == ["cold", "warm"] {
            break report;
        }
        assert!(Instant::now() < deadline, "gc order: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["triggered"], false, "{report}");
    assert!(
        report["eligible"][0]["bytes"].as_u64().unwrap() >= 18_000,
        "{report}"
    );
    assert!(report["eligible"][1]["last_read_ms"].is_u64(), "{report}");
    let printed = dram_cli(&["cluster", "gc"], &server.url()).await;
    let cold = printed.find("cold").unwrap_or(usize::MAX);
    let warm = printed.find("warm").unwrap_or(0);
    assert!(cold < warm && printed.contains("never read"), "{printed}");
    server.shutdown().await;

    // The same data under a smaller cap: past the watermark. The primary (this
    // node) deletes the coldest eligible database, and the trash is purged early
    // until the disk is below its watermark again.
    config.disks = vec![disk(75_000)];
    let (server, client) =
        crate::support::serve(dram::builtin::register(dram::Node::builder(config))).await;
    crate::support::eventually(20, "cold collected and purged", || {
        let client = client.clone();
        async move { client.get("/v1/databases/cold").await.is_err() }
    })
    .await;
    for name in ["warm", "aliased", "kept"] {
        let info = client.get(&format!("/v1/databases/{name}")).await.unwrap();
        assert_eq!(info["state"], "ready", "{name}: {info}");
    }
    crate::support::eventually(10, "the disk below its watermark", || {
        let client = client.clone();
        async move {
            let report = client.get("/v1/gc").await.unwrap();
            report["triggered"] == false && report["eligible"][0]["database"] == "warm"
        }
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rebalancer_moves_copies_from_the_fuller_member_copy_first() {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &'static str, seeds: Vec<String>| {
        let dir = dir.path().to_path_buf();
        async move {
            let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
            member_with(
                &dir,
                name,
                &dir.join("store"),
                &seeds,
                |config| {
                    config.disks = vec![dram::config::DiskConfig {
                        path: config.node.data_dir.clone(),
                        high_watermark: 0.9,
                        max_bytes: Some(2_000_000),
                    }];
                    config.cluster.primary_settle_secs = 1;
                    config.cluster.max_concurrent_moves = 1;
                    config.cluster.rebalance_threshold = 0.01;
                    config.trash.lifetime_secs = 3600;
                },
                None,
            )
            .await
        }
    };
    let n1 = start("n1", vec![]).await;
    let n2 = start("n2", vec![n1.gossip.clone()]).await;
    // Six shards spread 3/3 over the two members (equal capacities); the
    // three placement gives n1 hold 55 kB each, n2's 550 bytes each: n1's
    // disk fills faster.
    let candidates: Vec<dram::placement::Candidate> = ["n1", "n2"]
        .iter()
        .map(|id| dram::placement::Candidate {
            id: id.to_string(),
            zone: String::new(),
            weight: 1,
            full: false,
        })
        .collect();
    let shards: Vec<String> = (0..6).map(|s| format!("s{s}")).collect();
    let layout = dram::placement::plan::Layout {
        name: "skewed".into(),
        replicas: dram::catalog::Replicas::Count(1),
        shards: shards.iter().map(|s| (s.clone(), 0)).collect(),
        global_bytes: 0,
    };
    let placed_on = dram::placement::plan::ClusterState::new(candidates).placement(&layout);
    let on_n1: Vec<&String> = shards
        .iter()
        .zip(&placed_on)
        .filter(|(_, members)| *members == &["n1"])
        .map(|(s, _)| s)
        .collect();
    assert_eq!(on_n1.len(), 3, "placement spreads 3/3: {placed_on:?}");
    let files: Vec<(String, Vec<u8>)> = shards
        .iter()
        .map(|s| {
            let rows = if on_n1.contains(&s) { 5_000 } else { 50 };
            let rows: String = (0..rows).map(|r| format!("{s:>4},{r:05}\n")).collect();
            (format!("shards/{s}/rows.csv"), rows.into_bytes())
        })
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let store = n1.server.node.config().store.clone();
    publish(dir.path(), &store, "skewed", &files).await;
    on_all(
        &[&n1.client, &n2.client],
        30,
        "two members and a primary",
        |c| {
            Box::pin(async move {
                let status = c.get("/v1/cluster").await.unwrap_or(Value::Null);
                live_members(&status).len() == 2 && status["primary"]["id"] == "n1"
            })
        },
    )
    .await;
    n1.client
        .post(
            "/v1/databases",
            &json!({"name": "skewed", "source": "skewed"}),
        )
        .await
        .unwrap();

    // One big shard moves to n2 (another would leave n2 fuller than n1, and
    // n2 past 1.2 times its share of the database); a shard always keeps a
    // ready copy (the new one is ready before the old one is trashed).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut saw_big_on_n1 = false;
    let mut saw_move_planned = false;
    loop {
        let now = copies(&n1.client, "skewed").await;
        if now.len() == 6 {
            let on = |node: &str| now.values().filter(|l| ready(l).contains(&node)).count();
            let big_on = |node: &str| {
                on_n1
                    .iter()
                    .filter(|s| {
                        now.get(s.as_str())
                            .is_some_and(|l| ready(l).contains(&node))
                    })
                    .count()
            };
            saw_big_on_n1 |= big_on("n1") == 3 && on("n2") == 3;
            // Once loaded, never a shard without a ready copy.
            for (shard, list) in now.iter().filter(|_| saw_big_on_n1) {
                assert!(
                    !ready(list).is_empty(),
                    "{shard} has no ready copy: {list:?}"
                );
            }
            if placed(&now, 6, 1) && on("n1") == 2 && on("n2") == 4 && big_on("n2") == 1 {
                break;
            }
        }
        if !saw_move_planned {
            let plan = n1.client.get("/v1/plan").await.unwrap();
            saw_move_planned = plan["moves"].as_array().is_some_and(|m| {
                m.iter().any(|m| {
                    m["from"] == "n1"
                        && m["to"] == "n2"
                        && on_n1.iter().any(|s| m["shard"] == s.as_str())
                })
            });
        }
        assert!(Instant::now() < deadline, "not balanced: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_big_on_n1, "placement first put the big shards on n1");
    assert!(saw_move_planned, "GET /v1/plan never showed a move");
    assert_eq!(trashed_here_in(&n1.client, "skewed").await, 1);
    // Balanced: nothing more to move.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plan = n1.client.get("/v1/plan").await.unwrap();
    assert_eq!(plan["moves"], json!([]), "{plan}");
    n2.server.shutdown().await;
    n1.server.shutdown().await;
}
