//! Access on a real node: the admin token guards every change (and, with
//! `require_token_for_reads`, every read); signed tokens open one database or
//! alias until they expire; the previous key is honoured during its grace
//! period; node-to-node routes need the secret and the same cluster id; a node
//! of another cluster, or with another secret or none, does not join gossip.

use std::time::Duration;

use dram::client::Client;
use serde_json::{Value, json};

use crate::cluster::{SECRET, live_members, member_with};
use crate::support::{dram_binary, dram_cli, eventually, expect_error, publish, wait_loaded};

const ADMIN: &str = "admin-token-for-tests";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_guard_changes_reads_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let n1 = member_with(
        dir.path(),
        "n1",
        &store,
        &[],
        |config| {
            config.auth.admin_token = Some(ADMIN.into());
            config.auth.require_token_for_reads = true;
            config.auth.token_key = Some("key-1".into());
            config.auth.previous_token_key = Some("key-0".into());
        },
        None,
    )
    .await;
    let url = n1.server.url();
    let anonymous = &n1.client;
    let admin = Client::new(&url).with_token(Some(ADMIN.into()));
    let store_config = n1.server.node.config().store.clone();
    for name in ["sales", "other"] {
        publish(
            dir.path(),
            &store_config,
            name,
            &[("shards/0/rows.csv", b"a\n1\n2\n")],
        )
        .await;
    }

    // Without a token: health and the dashboard page only.
    assert_eq!(anonymous.get("/v1/health").await.unwrap()["status"], "ok");
    let page = reqwest::get(format!("{url}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let define = json!({"name": "sales", "source": "sales"});
    let message = expect_error(
        anonymous.post("/v1/databases", &define).await,
        401,
        "unauthorized",
    );
    assert!(message.contains("Bearer"), "{message}");
    expect_error(anonymous.get("/v1/databases").await, 401, "unauthorized");
    expect_error(
        anonymous.get("/metrics").await.map(|_| Value::Null),
        401,
        "unauthorized",
    );
    // A token that is no key of this cluster's is refused wherever it goes.
    let wrong = Client::new(&url).with_token(Some("not-the-admin-token".into()));
    for refused in [
        wrong.post("/v1/databases", &define).await,
        wrong.get("/v1/databases").await,
        wrong.post("/v1/query/sales/count", &json!({})).await,
    ] {
        let message = expect_error(refused, 401, "unauthorized");
        assert!(message.contains("invalid token"), "{message}");
    }
    // Admin reads are admin calls.
    expect_error(
        anonymous.get("/v1/admin/backups").await,
        401,
        "unauthorized",
    );

    // The admin does everything.
    admin.post("/v1/databases", &define).await.unwrap();
    admin
        .post(
            "/v1/databases",
            &json!({"name": "other", "source": "other"}),
        )
        .await
        .unwrap();
    for name in ["sales", "other"] {
        assert_eq!(wait_loaded(&admin, name).await["state"], "ready");
    }
    admin
        .put("/v1/aliases/current", &json!({"target": "sales"}))
        .await
        .unwrap();

    // A token for `sales`: its queries, directly and through the alias.
    expect_error(
        anonymous
            .post("/v1/tokens", &json!({"database": "sales", "ttl": 60}))
            .await,
        401,
        "unauthorized",
    );
    let issued = admin
        .post("/v1/tokens", &json!({"database": "sales", "ttl": 60}))
        .await
        .unwrap();
    let token = issued["token"].as_str().unwrap().to_string();
    let holder = Client::new(&url).with_token(Some(token.clone()));
    for target in ["sales", "current"] {
        let answer = holder
            .post(&format!("/v1/query/{target}/count"), &json!({}))
            .await
            .unwrap();
        assert_eq!(answer["result"]["rows"], 2, "{answer}");
    }
    let message = expect_error(
        holder.post("/v1/query/other/count", &json!({})).await,
        403,
        "forbidden",
    );
    assert!(message.contains("sales"), "{message}");
    expect_error(holder.get("/v1/databases").await, 403, "forbidden");
    expect_error(
        holder.post("/v1/databases", &define).await,
        403,
        "forbidden",
    );
    // Tampered: another database in it, or another signature.
    let tampered = token.replacen(&hex::encode("sales"), &hex::encode("other"), 1);
    let message = expect_error(
        Client::new(&url)
            .with_token(Some(tampered))
            .post("/v1/query/other/count", &json!({}))
            .await,
        401,
        "unauthorized",
    );
    assert!(message.contains("signature"), "{message}");

    // Expired.
    let short = admin
        .post("/v1/tokens", &json!({"database": "sales", "ttl": 1}))
        .await
        .unwrap();
    let short = Client::new(&url).with_token(short["token"].as_str().map(str::to_string));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let message = expect_error(
        short.post("/v1/query/sales/count", &json!({})).await,
        401,
        "unauthorized",
    );
    assert!(message.contains("expired"), "{message}");

    // Key rotation: the previous key's tokens work during the grace period;
    // tokens of a key this node never had do not.
    let far = dram::clock::now_ms() + 60_000;
    let old = dram::auth::SigningKey::new("key-0").sign("sales", far);
    Client::new(&url)
        .with_token(Some(old))
        .post("/v1/query/sales/count", &json!({}))
        .await
        .unwrap();
    let stranger = dram::auth::SigningKey::new("key-9").sign("sales", far);
    expect_error(
        Client::new(&url)
            .with_token(Some(stranger))
            .post("/v1/query/sales/count", &json!({}))
            .await,
        401,
        "unauthorized",
    );

    // Bad requests for tokens.
    expect_error(
        admin
            .post("/v1/tokens", &json!({"database": "sales", "ttl": 0}))
            .await,
        400,
        "invalid_input",
    );
    expect_error(
        admin
            .post("/v1/tokens", &json!({"database": "nope", "ttl": 5}))
            .await,
        404,
        "not_found",
    );
    expect_error(
        admin
            .post("/v1/tokens", &json!({"database": "../x", "ttl": 5}))
            .await,
        400,
        "invalid_input",
    );

    // Node-to-node routes: the secret, and the same cluster id.
    let internal = || reqwest::Client::new().get(format!("{url}/v1/internal/registry"));
    assert_eq!(internal().send().await.unwrap().status(), 401);
    assert_eq!(
        internal()
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let foreign = internal()
        .bearer_auth(SECRET)
        .header(dram::api::CLUSTER_HEADER, "another-cluster")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    // Refusals say what is wrong.
    let said = |response: reqwest::Response| async move {
        let body: Value = response.json().await.unwrap();
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let unsent = said(internal().send().await.unwrap()).await;
    assert!(unsent.contains("none was sent"), "{unsent}");
    let admin = said(internal().bearer_auth(ADMIN).send().await.unwrap()).await;
    assert!(admin.contains("not the cluster secret"), "{admin}");

    // The command line carries the token.
    let printed = dram_cli(&["token", "sales", "--ttl", "60", "--token", ADMIN], &url).await;
    let cli_token = printed.trim().to_string();
    assert!(cli_token.starts_with("dram1."), "{printed}");
    let rows = dram_cli(
        &[
            "query",
            "current",
            "count",
            "--result-only",
            "--token",
            &cli_token,
        ],
        &url,
    )
    .await;
    assert!(rows.contains("\"rows\": 2"), "{rows}");
    // Client options go before the subcommand too, and host:port is a node.
    let output = tokio::process::Command::new(dram_binary())
        .args([
            "--node",
            url.trim_start_matches("http://"),
            "--token",
            &cli_token,
        ])
        .args(["query", "current", "count", "--result-only"])
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("\"rows\": 2"), "{output:?}");
}

#[tokio::test]
async fn a_node_of_another_cluster_does_not_join() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let n1 = member_with(dir.path(), "n1", &store, &[], |_| {}, None).await;
    let seeds = [n1.gossip.as_str()];
    let stranger = member_with(
        dir.path(),
        "x1",
        &store,
        &seeds,
        |config| config.cluster.id = "another-cluster".into(),
        None,
    )
    .await;
    // Same cluster id, but another secret, or none: every gossip datagram is
    // signed with the secret, and theirs are dropped unread.
    let forger = member_with(
        dir.path(),
        "y1",
        &store,
        &seeds,
        |config| config.auth.cluster_secret = Some("another secret".into()),
        None,
    )
    .await;
    let open = member_with(
        dir.path(),
        "z1",
        &store,
        &seeds,
        |config| config.auth.cluster_secret = None,
        None,
    )
    .await;
    let friend = member_with(dir.path(), "n2", &store, &seeds, |_| {}, None).await;
    eventually(20, "n2 joins n1", || async {
        let status = n1.client.get("/v1/cluster").await.unwrap_or(Value::Null);
        live_members(&status).contains(&"n2".to_string())
    })
    .await;
    // By then the others had as long to join; they never did, on either side.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = n1.client.get("/v1/cluster").await.unwrap();
    assert_eq!(live_members(&status), ["n1", "n2"], "{status}");
    for (outsider, name) in [(&stranger, "x1"), (&forger, "y1"), (&open, "z1")] {
        let theirs = outsider.client.get("/v1/cluster").await.unwrap();
        assert_eq!(live_members(&theirs), [name], "{theirs}");
    }
    let metrics = crate::support::metrics_text(&n1.server.url()).await;
    let rejected = |reason: &str| {
        let line = format!("dram_gossip_rejected_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // The forger's and the open member's (an unsigned datagram's last bytes
    // are no valid tag either).
    assert!(rejected("bad_signature") >= 2.0, "{metrics}");
    drop(friend);
}

/// Where reads are open, a presented token is still checked: a bad one is
/// 401 (it used to be ignored), a good one and none are served.
#[tokio::test]
async fn a_bad_token_is_refused_even_where_reads_are_open() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = member_with(
        dir.path(),
        "n1",
        &dir.path().join("store"),
        &[],
        |config| config.auth.admin_token = Some(ADMIN.into()),
        None,
    )
    .await;
    let url = n1.server.url();
    n1.client.get("/v1/databases").await.unwrap();
    let expired = dram::auth::SigningKey::derived_from_secret(SECRET).sign("x", 1);
    for token in ["garbage", expired.as_str()] {
        let message = expect_error(
            Client::new(&url)
                .with_token(Some(token.to_string()))
                .get("/v1/databases")
                .await,
            401,
            "unauthorized",
        );
        assert!(message.contains("invalid token"), "{message}");
    }
    Client::new(&url)
        .with_token(Some(ADMIN.into()))
        .get("/v1/databases")
        .await
        .unwrap();
    n1.server.shutdown().await;
}
