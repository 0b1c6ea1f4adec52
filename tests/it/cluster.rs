//! A cluster of real nodes on 127.0.0.1 (HTTP on port 0, gossip on free UDP
//! ports, 100 ms gossip), driven as a script: members find each other through a
//! seed; a database defined on one node is loaded by all; aliases set, raced and
//! removed on different nodes converge everywhere; a batch never shows half; a
//! node stops, a new one joins and catches up.

use std::path::Path;
use std::time::{Duration, Instant};

use dram::Server;
use dram::client::Client;
use serde_json::{Value, json};

use crate::support::{config, dram_cli, expect_error, publish, serve};

pub(crate) const SECRET: &str = "test-cluster-secret";

pub(crate) struct Member {
    pub(crate) server: Server,
    pub(crate) client: Client,
    pub(crate) gossip: String,
}

/// Starts a node whose store is the shared `store` folder, joining via `seeds`.
async fn member(dir: &Path, name: &str, store: &Path, seeds: &[&str]) -> Member {
    member_with(dir, name, store, seeds, |_| {}, None).await
}

/// `member`, with `tweak` applied to its configuration, gossiping over
/// `transport` (in memory, links that can be cut) instead of UDP when given.
pub(crate) async fn member_with(
    dir: &Path,
    name: &str,
    store: &Path,
    seeds: &[&str],
    tweak: impl FnOnce(&mut dram::Config),
    transport: Option<chitchat::transport::ChannelTransport>,
) -> Member {
    let (mut builder, gossip) = member_builder(dir, name, store, seeds, tweak);
    if let Some(transport) = transport {
        builder = builder.gossip_transport(transport);
    }
    member_of(builder, gossip).await
}

/// What `member_with` starts (with its gossip address), to build on.
pub(crate) fn member_builder(
    dir: &Path,
    name: &str,
    store: &Path,
    seeds: &[&str],
    tweak: impl FnOnce(&mut dram::Config),
) -> (dram::NodeBuilder, String) {
    let mut config = config(&dir.join(name));
    config.node.id = name.to_string();
    config.store.url = format!("file://{}", store.display());
    config.cluster.seeds = seeds.iter().map(|s| s.to_string()).collect();
    config.cluster.gossip_interval_ms = 100;
    config.cluster.disagreement_secs = 1;
    config.auth.cluster_secret = Some(SECRET.into());
    tweak(&mut config);
    let gossip = config.cluster.gossip_listen.clone();
    (dram::builtin::register(dram::Node::builder(config)), gossip)
}

/// The `store` folder under `dir` the members share, and its configuration.
fn shared_store(dir: &Path) -> (std::path::PathBuf, dram::config::StoreConfig) {
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let config = dram::config::StoreConfig {
        url: format!("file://{}", store.display()),
        ..Default::default()
    };
    (store, config)
}

/// Serves `builder` as a member gossiping on `gossip`.
pub(crate) async fn member_of(builder: dram::NodeBuilder, gossip: String) -> Member {
    let (server, client) = serve(builder).await;
    Member {
        server,
        client,
        gossip,
    }
}

/// Two members, n1 and n2 (seeded by n1), sharing the `store` folder under
/// `dir`, once each sees both live.
pub(crate) async fn two_members(dir: &Path) -> (Member, Member) {
    let mut members = members(dir, 2).await;
    let n2 = members.pop().expect("two members");
    let n1 = members.pop().expect("two members");
    (n1, n2)
}

/// `count` members n1, n2, … (seeded by n1), sharing the `store` folder under
/// `dir`, once each sees all of them live.
pub(crate) async fn members(dir: &Path, count: usize) -> Vec<Member> {
    members_with(dir, count, |_| {}).await
}

/// `members`, with `tweak` applied to each one's configuration.
pub(crate) async fn members_with(
    dir: &Path,
    count: usize,
    tweak: impl Fn(&mut dram::Config),
) -> Vec<Member> {
    let store = dir.join("store");
    let n1 = member_with(dir, "n1", &store, &[], &tweak, None).await;
    let seeds = [n1.gossip.clone()];
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let mut members = vec![n1];
    for i in 2..=count {
        members.push(member_with(dir, &format!("n{i}"), &store, &seeds, &tweak, None).await);
    }
    let clients: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    on_all(&clients, 20, "every member live", |c| {
        Box::pin(async move {
            live_members(&c.get("/v1/cluster").await.unwrap_or(Value::Null)).len() == count
        })
    })
    .await;
    members
}

/// Polls `check` on every client until all agree it holds (at most `secs`).
pub(crate) async fn on_all(
    clients: &[&Client],
    secs: u64,
    what: &str,
    check: impl Fn(&Client) -> futures::future::BoxFuture<'_, bool>,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut all = true;
        for client in clients {
            if !check(client).await {
                all = false;
                break;
            }
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn live_members(status: &Value) -> Vec<String> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["live"] == true)
        .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn alias_target(client: &Client, name: &str) -> Option<String> {
    let aliases = client.get("/v1/aliases").await.ok()?;
    aliases["aliases"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["target"].as_str().map(str::to_string))
}

async fn database_state(client: &Client, name: &str) -> Option<String> {
    let info = client.get(&format!("/v1/databases/{name}")).await.ok()?;
    info["state"].as_str().map(str::to_string)
}

#[tokio::test]
async fn nodes_share_definitions_and_aliases_through_gossip() {
    let dir = tempfile::tempdir().unwrap();
    let (store, store_config) = shared_store(dir.path());
    for (name, rows) in [("daily-1", "1\n2\n"), ("daily-2", "3\n")] {
        publish(
            dir.path(),
            &store_config,
            name,
            &[
                ("shards/a/x.csv", format!("n\n{rows}").as_bytes()),
                ("shards/b/x.csv", b"n\n9\n".as_slice()),
            ],
        )
        .await;
    }

    // Three members: n1 alone, n2 and n3 join through it.
    let n1 = member(dir.path(), "n1", &store, &[]).await;
    let seed = n1.gossip.clone();
    let n2 = member(dir.path(), "n2", &store, &[&seed]).await;
    let n3 = member(dir.path(), "n3", &store, &[&seed]).await;
    let all = [&n1.client, &n2.client, &n3.client];
    on_all(&all, 20, "three live members", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap();
            live_members(&status) == ["n1", "n2", "n3"]
        })
    })
    .await;

    // One command, all members download.
    n1.client
        .post(
            "/v1/databases",
            &json!({"name": "daily-1", "source": "daily-1", "replicas": "all"}),
        )
        .await
        .unwrap();
    n2.client
        .post(
            "/v1/databases",
            &json!({"name": "daily-2", "source": "daily-2"}),
        )
        .await
        .unwrap();
    on_all(&all, 30, "both databases ready everywhere", |c| {
        Box::pin(async move {
            database_state(c, "daily-1").await.as_deref() == Some("ready")
                && database_state(c, "daily-2").await.as_deref() == Some("ready")
        })
    })
    .await;
    on_all(&all, 20, "green health and every holder known", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap();
            let shards = c.get("/v1/cluster/shards?database=daily-1").await.unwrap();
            let holders = |id: &str| shards["shards"][id].as_array().map_or(0, |h| h.len());
            status["health"] == "green" && holders("a") == 3 && holders("b") == 3
        })
    })
    .await;
    // One primary, the lowest id, named by all.
    on_all(&all, 20, "n1 primary everywhere", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap();
            status["primary"]["id"] == "n1" && status["primary"]["term"].as_u64() > Some(0)
        })
    })
    .await;
    let first_term = n1.client.get("/v1/cluster").await.unwrap()["primary"]["term"]
        .as_u64()
        .unwrap();

    let info = n2.client.get("/v1/databases/daily-1").await.unwrap();
    let holders: Vec<&str> = info["holders"]["shards"]["a"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["node"].as_str().unwrap())
        .collect();
    assert_eq!(holders.len(), 3, "{info}");
    // The CLI shows the same.
    let printed = dram_cli(&["cluster", "status"], &n3.server.url()).await;
    assert!(printed.contains("health green"), "{printed}");
    for id in ["n1", "n2", "n3"] {
        assert!(printed.contains(id), "{printed}");
    }
    let printed = dram_cli(&["cluster", "shards", "daily-1"], &n3.server.url()).await;
    assert!(
        printed.contains("n1:ready") && printed.contains("n3:ready"),
        "{printed}"
    );

    let status = n3.client.get("/v1/cluster").await.unwrap();
    let first = &status["members"][0];
    assert_eq!(first["id"], "n1");
    assert!(
        first["node"]["http"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(first["disks"]["0"]["total"].as_u64().unwrap() > 0);
    // daily-1 ("all") on three members, daily-2 (one copy) placed once.
    let ready: u64 = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["inventory"]["ready"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(ready, 3 * 2 + 2, "{status}");
    // A definition made elsewhere is a conflict here too.
    expect_error(
        n3.client
            .post(
                "/v1/databases",
                &json!({"name": "daily-1", "source": "daily-2"}),
            )
            .await,
        409,
        "conflict",
    );

    // An alias set on one node is answered once every node has it: right
    // after the answer, every node resolves it.
    let set = n2
        .client
        .put("/v1/aliases/daily", &json!({"target": "daily-1"}))
        .await
        .unwrap();
    assert_eq!(set["acknowledged"], true, "{set}");
    for client in &all {
        assert_eq!(
            alias_target(client, "daily").await.as_deref(),
            Some("daily-1")
        );
    }
    let answer = n3
        .client
        .post("/v1/query/daily/count", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer["result"]["rows"], 3);

    // Two nodes write one alias at once: one winner, everywhere.
    let (to_one, to_two) = (json!({"target": "daily-1"}), json!({"target": "daily-2"}));
    let (r1, r3) = tokio::join!(
        n1.client.put("/v1/aliases/race", &to_one),
        n3.client.put("/v1/aliases/race", &to_two),
    );
    r1.unwrap();
    r3.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut targets = Vec::new();
        for client in all {
            targets.push(alias_target(client, "race").await);
        }
        if targets.iter().all(|t| t.is_some() && *t == targets[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alias race never converged: {targets:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A batch on n3 is never seen half-applied on n1.
    n3.client
        .post(
            "/v1/aliases/_batch",
            &json!({"actions": [
                {"set": {"name": "left", "target": "daily-1"}},
                {"set": {"name": "right", "target": "daily-2"}},
                {"remove": {"name": "daily"}}
            ]}),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let aliases = n1.client.get("/v1/aliases").await.unwrap();
        let names: Vec<&str> = aliases["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        let seen = [
            names.contains(&"left"),
            names.contains(&"right"),
            !names.contains(&"daily"),
        ];
        assert!(
            seen.iter().all(|s| *s) || seen.iter().all(|s| !*s),
            "half a batch on n1: {names:?}"
        );
        if seen[0] {
            break;
        }
        assert!(Instant::now() < deadline, "the batch never reached n1");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Deleting a database on one node trashes it everywhere.
    n1.client.delete("/v1/databases/daily-2").await.unwrap();
    on_all(&all, 10, "daily-2 in every trash", |c| {
        Box::pin(async move { database_state(c, "daily-2").await.as_deref() == Some("trashed") })
    })
    .await;

    // Node-to-node calls need the secret.
    let url = format!("{}/v1/internal/registry", n1.server.url());
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 401);
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // n3 stops; n4 joins later and receives every definition and alias. Then
    // the writer of most of them, n1, stops too: they survive on n2 and n4.
    n3.server.shutdown().await;
    let n4 = member(dir.path(), "n4", &store, &[&n2.gossip]).await;
    on_all(&[&n1.client], 20, "n3 dead and n4 live on n1", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap();
            live_members(&status) == ["n1", "n2", "n4"]
                && status["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["id"] == "n3" && m["live"] == false)
        })
    })
    .await;
    n1.server.shutdown().await;
    let rest = [&n2.client, &n4.client];
    on_all(&rest, 30, "n4 caught up", |c| {
        Box::pin(async move {
            database_state(c, "daily-1").await.as_deref() == Some("ready")
                && alias_target(c, "left").await.as_deref() == Some("daily-1")
                && alias_target(c, "daily").await.is_none()
                && alias_target(c, "race").await.is_some()
        })
    })
    .await;
    assert_eq!(
        alias_target(&n4.client, "race").await,
        alias_target(&n2.client, "race").await
    );
    // Two live of four known members: no majority, no primary, nothing deleted.
    on_all(&rest, 20, "no primary among two of four", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap();
            status["primary"].is_null() && live_members(&status) == ["n2", "n4"]
        })
    })
    .await;
    // daily-2 was deleted before n4 joined: n4 never loads it.
    assert_eq!(database_state(&n4.client, "daily-2").await, None);
    let registries: Vec<Value> = futures::future::join_all(
        rest.iter()
            .map(|c| async move { c.get("/v1/cluster").await.unwrap()["registry"].clone() }),
    )
    .await;
    assert_eq!(registries[0], registries[1], "same registry on n2 and n4");
    // n3 comes back with its old data: it receives what changed while it was
    // away, and serves what it held without loading it again.
    n4.client
        .put("/v1/aliases/while-away", &json!({"target": "daily-1"}))
        .await
        .unwrap();
    let n3 = member(dir.path(), "n3", &store, &[&n2.gossip]).await;
    assert_eq!(
        database_state(&n3.client, "daily-1").await.as_deref(),
        Some("ready"),
        "served from its own disk at once"
    );
    on_all(&[&n3.client], 20, "n3 caught up", |c| {
        Box::pin(async move {
            alias_target(c, "while-away").await.as_deref() == Some("daily-1")
                && alias_target(c, "daily").await.is_none()
                && database_state(c, "daily-2").await.as_deref() == Some("trashed")
        })
    })
    .await;
    // n1 is gone: with three of the four known members live, n2 is primary, in
    // a later term. (With two of four, nobody would be.)
    let rest = [&n2.client, &n3.client, &n4.client];
    on_all(&rest, 20, "n2 primary in a new term", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap();
            status["primary"]["id"] == "n2" && status["primary"]["term"].as_u64() > Some(first_term)
        })
    })
    .await;
    let stats = n3.client.get("/v1/stats").await.unwrap();
    assert_eq!(
        stats["node"]["files_downloaded"], 0,
        "nothing downloaded again"
    );
    n3.server.shutdown().await;
    n2.server.shutdown().await;
    n4.server.shutdown().await;
}

/// A node purging a deleted database removes the aliases that pointed at it, but
/// a move of such an alias made elsewhere after the deletion — and merged here
/// only after the purge — still wins.
#[tokio::test]
async fn a_purge_never_undoes_an_alias_move_made_after_the_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.trash.lifetime_secs = 1;
    let store = config.store.clone();
    for name in ["old", "new"] {
        publish(dir.path(), &store, name, &[("x.csv", b"n\n1\n".as_slice())]).await;
    }
    let (server, client) = serve(dram::Node::builder(config)).await;
    for name in ["old", "new"] {
        crate::support::load(&client, json!({"name": name, "source": name})).await;
    }
    client
        .put("/v1/aliases/current", &json!({"target": "old"}))
        .await
        .unwrap();
    client
        .put("/v1/aliases/stale", &json!({"target": "old"}))
        .await
        .unwrap();
    client.delete("/v1/databases/old").await.unwrap();
    let deleted = server.node.local().registry().unwrap().definitions["old"]
        .version
        .clone();

    // Elsewhere, just after the deletion, `current` moved to `new`; this node
    // hears of it only after its purge.
    let mut moved = server.node.local().registry().unwrap();
    moved.definitions.clear();
    moved.aliases.retain(|name, _| name == "current");
    let record = moved.aliases.get_mut("current").unwrap();
    record.target = Some("new".into());
    record.version = dram::hlc::Hlc {
        ms: deleted.ms + 1,
        counter: 0,
        node: "elsewhere".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while database_state(&client, "old").await.is_some() {
        assert!(Instant::now() < deadline, "old was never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        alias_target(&client, "stale").await,
        None,
        "purged with its database"
    );
    assert_eq!(alias_target(&client, "current").await, None);
    server.node.local().merge_registry(&moved).unwrap();
    assert_eq!(
        alias_target(&client, "current").await.as_deref(),
        Some("new"),
        "the later move wins over the purge's removal"
    );
    server.shutdown().await;
}

/// A seed (no `seeds` of its own) restarted in a running cluster used to name
/// itself primary at once and give itself every shard (downloaded, then
/// trashed). Now it waits to hear from a majority of the members its catalog
/// last knew: no primary of its own while alone, nothing downloaded, each
/// shard still held once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_seed_waits_for_its_cluster_before_placing_or_leading() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut members = members(dir.path(), 3).await;
    let files: Vec<(String, String)> = (0..6)
        .map(|s| (format!("shards/{s}/rows.csv"), format!("n\n{s}\n")))
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_bytes()))
        .collect();
    publish(
        dir.path(),
        &members[0].server.node.config().store,
        "db",
        &files,
    )
    .await;
    members[1]
        .client
        .post(
            "/v1/databases",
            &json!({"name": "db", "source": "db", "replicas": 1}),
        )
        .await
        .unwrap();
    let clients: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    let once = |c: &Client| {
        let c = c.clone();
        Box::pin(async move {
            let view = crate::support::copies(&c, "db").await;
            view.len() == 6
                && view
                    .values()
                    .all(|holders| crate::support::ready(holders).len() == 1)
        }) as futures::future::BoxFuture<'static, bool>
    };
    on_all(&clients, 30, "every shard held once, a primary", |c| {
        let placed = once(c);
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap_or(Value::Null);
            placed.await && !status["primary"].is_null()
        })
    })
    .await;

    // n1 restarts on the same data and gossip address.
    let n1 = members.remove(0);
    let gossip = n1.gossip.clone();
    n1.server.shutdown().await;
    let n1 = member_with(
        dir.path(),
        "n1",
        &store,
        &[],
        |config| config.cluster.gossip_listen = gossip.clone(),
        None,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = n1.client.get("/v1/cluster").await.unwrap();
        if live_members(&status).len() == 3 {
            break;
        }
        assert!(
            status["primary"].is_null(),
            "alone after its restart, n1 sees a primary: {status}"
        );
        assert!(Instant::now() < deadline, "n1 never met its cluster again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Placement with everyone in view gives n1 what it already holds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = n1.client.get("/v1/stats").await.unwrap();
    assert_eq!(stats["node"]["bytes_downloaded"], 0, "{stats}");
    assert!(once(&n1.client).await, "each shard is still held once");

    // A fresh member (no catalog to remember anyone by) seeded with n2:
    // alone for its first rounds, it used to elect itself and log "primary
    // elected primary=n9" while n1 was primary.
    let seed = members[0].gossip.clone();
    let n9 = member(dir.path(), "n9", &store, &[&seed]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = n9.client.get("/v1/cluster").await.unwrap();
        assert_ne!(
            status["primary"]["id"], "n9",
            "a fresh member calls itself primary: {status}"
        );
        if live_members(&status).len() == 4 && status["primary"]["id"] == "n1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n9 never saw n1 primary: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n9.server.shutdown().await;
    n1.server.shutdown().await;
    for member in members {
        member.server.shutdown().await;
    }
}

/// A change taken by a member that dies right after: it used to live only in
/// that member's catalog (gossip had not carried it yet), and came back when
/// the member did. The member now pushes the change to every live member
/// before it waits for their acknowledgement: the others have it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_outlives_the_member_that_took_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let transport = chitchat::transport::ChannelTransport::default();
    let n1 = member_with(
        dir.path(),
        "n1",
        &store,
        &[],
        |_| {},
        Some(transport.clone()),
    )
    .await;
    let seeds = [n1.gossip.as_str()];
    let n2 = member_with(
        dir.path(),
        "n2",
        &store,
        &seeds,
        |_| {},
        Some(transport.clone()),
    )
    .await;
    publish(
        dir.path(),
        &n1.server.node.config().store,
        "gone",
        &[("shards/0/a.csv", b"x\n1\n".as_slice())],
    )
    .await;
    n1.client
        .post("/v1/databases", &json!({"name": "gone", "source": "gone"}))
        .await
        .unwrap();
    on_all(&[&n1.client, &n2.client], 30, "both hold gone", |c| {
        Box::pin(async move { database_state(c, "gone").await.as_deref() == Some("ready") })
    })
    .await;

    // Gossip between them cut (HTTP still works): only a push can carry the
    // deletion before n1 dies, 150 ms after it took it.
    let a: std::net::SocketAddr = n1.gossip.parse().unwrap();
    let b: std::net::SocketAddr = n2.gossip.parse().unwrap();
    transport.remove_link(a, b).await;
    transport.remove_link(b, a).await;
    let deleting = {
        let client = n1.client.clone();
        tokio::spawn(async move { client.delete("/v1/databases/gone").await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    n1.server.shutdown_unannounced().await;
    let _ = deleting.await;
    let state = database_state(&n2.client, "gone").await;
    assert!(
        state.as_deref() != Some("ready"),
        "n2 still serves the deleted database: {state:?}"
    );
    n2.server.shutdown().await;
}

/// A rolling upgrade: a member of a dram that predates compressed digests
/// (it reads V0 only) joins a cluster already on V1, is heard, keeps the
/// cluster on V0 while it is live and converges with it; once it has left,
/// the others send V1 and still converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gossip_compresses_digests_once_every_live_member_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let (store, store_config) = shared_store(dir.path());
    publish(
        dir.path(),
        &store_config,
        "d",
        &[("shards/a/x.csv", b"n\n1\n".as_slice())],
    )
    .await;
    let n1 = member(dir.path(), "n1", &store, &[]).await;
    let seed = n1.gossip.clone();
    let n2 = member(dir.path(), "n2", &store, &[&seed]).await;
    let (builder, gossip) = member_builder(dir.path(), "old", &store, &[&seed], |_| {});
    let old = member_of(
        builder.gossip_reads(&[chitchat::ProtocolVersion::V0]),
        gossip,
    )
    .await;
    let version = |status: &Value| status["gossip_version"].as_u64();

    let all = [&n1.client, &n2.client, &old.client];
    on_all(
        &all,
        20,
        "three live members, each seen reading what it reads",
        |c| {
            Box::pin(async move {
                let status = c.get("/v1/cluster").await.unwrap();
                let reads = |id: &str| {
                    status["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|m| m["id"] == id)
                        .map(|m| m["node"]["gossip"].clone())
                };
                live_members(&status) == ["n1", "n2", "old"]
                    && reads("n1") == Some(json!([0, 1]))
                    && reads("old") == Some(json!([0]))
            })
        },
    )
    .await;
    n1.client
        .post("/v1/databases", &json!({"name": "d", "source": "d"}))
        .await
        .unwrap();
    // Set on n2, known to all, the old member included.
    alias_everywhere(&n2.client, "before", &all).await;
    for member in [&n1, &n2, &old] {
        let status = member.client.get("/v1/cluster").await.unwrap();
        assert_eq!(version(&status), Some(0), "{status}");
    }
    // The old member leaves: the others move to V1 and keep converging.
    old.server.shutdown().await;
    let upgraded = [&n1.client, &n2.client];
    on_all(
        &upgraded,
        20,
        "V1 once only members reading it are live",
        |c| {
            Box::pin(async move {
                let status = c.get("/v1/cluster").await.unwrap();
                live_members(&status) == ["n1", "n2"] && version(&status) == Some(1)
            })
        },
    )
    .await;
    // Set over V1 gossip, known to both.
    alias_everywhere(&n1.client, "after", &upgraded).await;
}

/// Points alias `name` at `d` through `on`, and waits until every client
/// resolves it.
async fn alias_everywhere(on: &Client, name: &'static str, clients: &[&Client]) {
    on.put(&format!("/v1/aliases/{name}"), &json!({"target": "d"}))
        .await
        .unwrap();
    on_all(clients, 20, &format!("alias {name} known to all"), |c| {
        Box::pin(async move { alias_target(c, name).await.as_deref() == Some("d") })
    })
    .await;
}

/// A member's gossip stays the same size whatever it holds: its inventory
/// travels as a digest (hash, shards ready, bytes), never a list. One
/// shard, then 10,000 more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_members_gossip_stays_small_with_ten_thousand_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (store, store_config) = shared_store(dir.path());
    publish(
        dir.path(),
        &store_config,
        "one",
        &[("shards/a/x.csv", b"n\n1\n".as_slice())],
    )
    .await;
    let many: Vec<(String, Vec<u8>)> = (0..10_000)
        .map(|i| {
            (
                format!("shards/s{i:05}/x.csv"),
                format!("n\n{i}\n").into_bytes(),
            )
        })
        .collect();
    crate::support::publish_owned(dir.path(), &store_config, "many", &many, &[]).await;
    let n1 = member(dir.path(), "n1", &store, &[]).await;
    let client = &n1.client;

    // The bytes of n1's gossip keys and values once it gossips `ready`
    // shards.
    let gossip_bytes = |ready: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = client.get("/v1/cluster").await.unwrap();
            let me = status["members"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["self"] == true)
                .cloned()
                .unwrap_or(Value::Null);
            // Once it names a primary too (a key of its own), so that both
            // readings have the same keys.
            if me["inventory"]["ready"] == ready && me["primary"]["names"].is_string() {
                return me["gossip_bytes"].as_u64().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{ready} shards never gossiped: {me}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    client
        .post("/v1/databases", &json!({"name": "one", "source": "one"}))
        .await
        .unwrap();
    let one = gossip_bytes(1).await;
    client
        .post("/v1/databases", &json!({"name": "many", "source": "many"}))
        .await
        .unwrap();
    let more = gossip_bytes(10_001).await;
    println!("n1's gossip keys and values: {one} bytes with 1 shard, {more} with 10,001");
    // Only numbers grow (shards ready, bytes, disk use): a few digits.
    assert!(
        more <= one + 32 && more < 1024,
        "gossip values: {one} bytes with 1 shard, {more} with 10,001"
    );
}
