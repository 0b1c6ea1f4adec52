//! Backup and restore of the registry on real nodes (127.0.0.1, 100 ms gossip),
//! with `backup.url` a folder: the primary backs up every change, keeps
//! `backup.keep`; a restore brings an older registry back on every member;
//! a brand-new cluster restores the newest valid backup by itself and loads
//! its databases again; a damaged object is listed, never restored.

use std::path::Path;
use std::time::{Duration, Instant};

use dram::client::Client;
use serde_json::{Value, json};

use crate::cluster::{Member, live_members, member_with, on_all};
use crate::support::{config, dram_cli, expect_error, publish, start};

async fn member(dir: &Path, name: &str, seeds: &[&str], store: &Path, backups: &Path) -> Member {
    let url = format!("file://{}", backups.display());
    member_with(
        dir,
        name,
        store,
        seeds,
        move |config| {
            config.cluster.primary_settle_secs = 1;
            config.backup.url = Some(url);
            config.backup.keep = 2;
            config.backup.debounce_ms = 300;
        },
        None,
    )
    .await
}

/// Three members, n1 first (the primary), n2 and n3 through it.
async fn cluster(dir: &Path, store: &Path, backups: &Path) -> Vec<Member> {
    let n1 = member(dir, "n1", &[], store, backups).await;
    let seed = n1.gossip.clone();
    let mut members = vec![n1];
    for name in ["n2", "n3"] {
        members.push(member(dir, name, &[&seed], store, backups).await);
    }
    members
}

/// The backups `client` lists, newest first.
async fn listed(client: &Client) -> Vec<Value> {
    let listing = client.get("/v1/admin/backups").await.unwrap();
    listing["backups"].as_array().cloned().unwrap_or_default()
}

/// The newest valid backup `client` lists, read from the folder (`None`
/// while there is none, or it was pruned meanwhile).
async fn newest(client: &Client, folder: &Path) -> Option<(String, Value)> {
    let listing = listed(client).await;
    let name = listing.iter().find(|b| b["valid"] == true)?["name"]
        .as_str()?
        .to_string();
    let bytes = std::fs::read(folder.join(&name)).ok()?;
    Some((name, serde_json::from_slice(&bytes).ok()?))
}

/// Waits (at most 30 s) for the newest valid backup to satisfy `check`.
async fn backup_where(
    client: &Client,
    folder: &Path,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> (String, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = newest(client, folder).await;
        if let Some((name, backup)) = &found
            && check(backup)
        {
            return (name.clone(), backup.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no backup {what}; newest: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An alias's target in a backup.
fn target<'a>(backup: &'a Value, alias: &str) -> Option<&'a str> {
    backup["registry"]["aliases"][alias]["target"].as_str()
}

fn defined(backup: &Value, database: &str) -> bool {
    backup["registry"]["definitions"][database]["definition"].is_object()
}

async fn alias_target(client: &Client, name: &str) -> Option<String> {
    let alias = client.get(&format!("/v1/aliases/{name}")).await.ok()?;
    alias["target"].as_str().map(str::to_string)
}

async fn ready(client: &Client, database: &str) -> bool {
    let Ok(info) = client.get(&format!("/v1/databases/{database}")).await else {
        return false;
    };
    info["state"] == "ready"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_backs_up_changes_and_a_new_cluster_restores_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&store).unwrap();
    let store_config = dram::config::StoreConfig {
        url: format!("file://{}", store.display()),
        ..Default::default()
    };
    for name in ["daily-1", "daily-2"] {
        let rows = format!("n\n{name}\n");
        publish(
            dir.path(),
            &store_config,
            name,
            &[("shards/a/x.csv", rows.as_bytes())],
        )
        .await;
    }

    let old = dir.path().join("old");
    let members = cluster(&old, &store, &backups).await;
    let all: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    let (n1, n2, n3) = (&members[0].client, &members[1].client, &members[2].client);
    on_all(&all, 30, "three live members, n1 primary", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap_or(Value::Null);
            live_members(&status) == ["n1", "n2", "n3"] && status["primary"]["id"] == "n1"
        })
    })
    .await;

    // Two databases and two aliases: a backup written by the primary holds them.
    for name in ["daily-1", "daily-2"] {
        n1.post(
            "/v1/databases",
            &json!({"name": name, "source": name, "replicas": "all"}),
        )
        .await
        .unwrap();
    }
    n2.put("/v1/aliases/sales", &json!({"target": "daily-1"}))
        .await
        .unwrap();
    n3.put("/v1/aliases/orders", &json!({"target": "daily-1"}))
        .await
        .unwrap();
    let (first, backup) = backup_where(n2, &backups, "with both aliases", |b| {
        target(b, "sales") == Some("daily-1")
            && target(b, "orders") == Some("daily-1")
            && defined(b, "daily-1")
            && defined(b, "daily-2")
    })
    .await;
    assert_eq!(backup["format"], 1);
    assert_eq!(backup["cluster_id"], "dram");
    assert_eq!(backup["node"], "n1", "written by the primary");
    assert!(
        first.starts_with("dram-backup-") && first.contains("-n1-"),
        "{first}"
    );
    assert_eq!(backup["settings"]["cluster"]["primary_settle_secs"], 1);
    assert!(backup["settings"]["cluster"].get("seeds").is_none());
    assert!(backup["settings"].get("auth").is_none());

    // A change: a newer backup.
    n1.put("/v1/aliases/orders", &json!({"target": "daily-2"}))
        .await
        .unwrap();
    let (second, _) = backup_where(n1, &backups, "with orders moved", |b| {
        target(b, "orders") == Some("daily-2")
    })
    .await;
    assert!(second > first, "{second} sorts after {first}");

    // One batch (one change): sales moves, a new alias. keep = 2 drops the first.
    n3.post(
        "/v1/aliases/_batch",
        &json!({"actions": [
            {"set": {"name": "sales", "target": "daily-2"}},
            {"set": {"name": "extra", "target": "daily-2"}}
        ]}),
    )
    .await
    .unwrap();
    let (third, _) = backup_where(n1, &backups, "with the batch", |b| {
        target(b, "sales") == Some("daily-2") && target(b, "extra") == Some("daily-2")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = listed(n3)
            .await
            .iter()
            .map(|b| b["name"].as_str().unwrap_or_default().to_string())
            .collect();
        if names == [third.clone(), second.clone()] && !backups.join(&first).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "not pruned to 2: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Restoring the older backup, on n3: sales back, extra removed, everywhere.
    let started = Instant::now();
    let report = n3
        .post("/v1/admin/restore", &json!({"backup": second}))
        .await
        .unwrap();
    assert_eq!(report["backup"], second.as_str());
    assert_eq!(report["acknowledged"], true, "{report}");
    assert_eq!(
        report["restored"],
        json!({"definitions": 2, "aliases": 2, "pins": 0})
    );
    let mut overwrote = report["overwrote"].as_array().unwrap().clone();
    overwrote.sort_by_key(|o| o["name"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        overwrote,
        [
            json!({"kind": "alias", "name": "extra", "was": "daily-2", "now": null}),
            json!({"kind": "alias", "name": "sales", "was": "daily-2", "now": "daily-1"}),
        ],
        "{report}"
    );
    on_all(&all, 20, "the backup's aliases on every member", |c| {
        Box::pin(async move {
            alias_target(c, "sales").await.as_deref() == Some("daily-1")
                && alias_target(c, "orders").await.as_deref() == Some("daily-2")
                && alias_target(c, "extra").await.is_none()
        })
    })
    .await;
    eprintln!("restore reached every member in {:?}", started.elapsed());
    // The restored registry is backed up in turn.
    let (restored, _) = backup_where(n2, &backups, "of the restored registry", |b| {
        target(b, "sales") == Some("daily-1") && target(b, "extra").is_none()
    })
    .await;

    // The CLI: list, and an on-demand backup on any member (written by it).
    let url = members[1].server.url();
    let printed = dram_cli(&["admin", "backups"], &url).await;
    assert!(printed.contains(&restored), "{printed}");
    let printed = dram_cli(&["admin", "backup"], &url).await;
    assert!(printed.contains("-n2-"), "{printed}");
    let (by_n2, _) = backup_where(n1, &backups, "written by n2", |b| b["node"] == "n2").await;
    let printed = dram_cli(&["admin", "restore", &by_n2], &url).await;
    assert!(
        printed.contains("restored") && printed.contains("2 aliases"),
        "{printed}"
    );

    // Bad requests.
    let unknown = "dram-backup-0000000000000001-n1-00000000.json";
    expect_error(
        n2.post("/v1/admin/restore", &json!({"backup": unknown}))
            .await,
        404,
        "not_found",
    );
    expect_error(
        n2.post("/v1/admin/restore", &json!({"backup": "../etc/passwd"}))
            .await,
        400,
        "invalid_input",
    );
    expect_error(
        n2.post("/v1/admin/restore", &json!({"name": second})).await,
        400,
        "invalid_input",
    );
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/admin/restore"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A damaged object named like the newest backup: listed as not valid,
    // refused, never deleted.
    let corrupt = "dram-backup-9999999999999999-n1-deadbeef.json";
    std::fs::write(backups.join(corrupt), b"{\"format\": 1, \"regis").unwrap();
    let listing = listed(n1).await;
    assert_eq!(listing[0]["name"], corrupt, "{listing:?}");
    assert_eq!(listing[0]["valid"], false);
    assert!(
        listing[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a backup")
    );
    let message = expect_error(
        n1.post("/v1/admin/restore", &json!({"backup": corrupt}))
            .await,
        409,
        "conflict",
    );
    assert!(message.contains("not valid"), "{message}");

    // The whole cluster goes; a new one (empty data folders, same backup.url)
    // restores the newest valid backup by itself and loads the databases.
    let newest_valid = newest(n1, &backups).await.unwrap();
    for member in members {
        member.server.shutdown().await;
    }
    let members = cluster(&dir.path().join("new"), &store, &backups).await;
    let all: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    let started = Instant::now();
    on_all(&all, 60, "the backup restored and loaded everywhere", |c| {
        Box::pin(async move {
            alias_target(c, "sales").await.as_deref() == Some("daily-1")
                && alias_target(c, "orders").await.as_deref() == Some("daily-2")
                && alias_target(c, "extra").await.is_none()
                && ready(c, "daily-1").await
                && ready(c, "daily-2").await
        })
    })
    .await;
    eprintln!("new cluster restored and loaded in {:?}", started.elapsed());
    let answer = all[2]
        .post("/v1/query/sales/count", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer["result"]["rows"], 1);
    // It wrote no empty backup first, and the damaged object is still listed.
    let listing = listed(all[1]).await;
    assert_eq!(listing[0]["name"], corrupt);
    assert_eq!(listing[1]["name"], newest_valid.0.as_str(), "{listing:?}");
    for member in members {
        member.server.shutdown().await;
    }
}

#[tokio::test]
async fn without_a_reachable_backup_store_the_admin_routes_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = start(config(&dir.path().join("none"))).await;
    for result in [
        client.get("/v1/admin/backups").await,
        client.post("/v1/admin/backup", &json!({})).await,
        client
            .post("/v1/admin/restore", &json!({"backup": "x"}))
            .await,
    ] {
        let message = expect_error(result, 409, "conflict");
        assert!(message.contains("backup.url"), "{message}");
    }
    server.shutdown().await;

    // A store that cannot be written: 502 with the store's own message.
    let mut config = config(&dir.path().join("broken"));
    config.backup.url = Some("file:///proc/dram-backups".into());
    let (server, client) = start(config).await;
    let message = expect_error(
        client.post("/v1/admin/backup", &json!({})).await,
        502,
        "backup_store_error",
    );
    assert!(message.contains("/proc/dram-backups"), "{message}");
    server.shutdown().await;
}
