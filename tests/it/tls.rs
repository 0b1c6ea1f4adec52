//! TLS: a node with `http.tls_cert` and `http.tls_key` serves HTTPS only
//! (with a self-signed certificate made here by rcgen), refuses plain HTTP,
//! cuts off a client that never finishes its handshake, fails to start with
//! files it cannot use (naming the field), and members reach each other over
//! HTTPS (their SQL workers too); the PostgreSQL protocol uses the same
//! certificate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dram::{Config, Node, Server};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::support::{config, eventually, publish};

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM files in
/// `dir`: (certificate, key).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn tls_config(dir: &Path, cert: &Path, key: &Path) -> Config {
    let mut config = config(dir);
    config.http.tls_cert = Some(cert.to_path_buf());
    config.http.tls_key = Some(key.to_path_buf());
    config
}

/// A client that trusts `cert` alone.
fn trusting(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap()
}

async fn start_error(config: Config) -> String {
    match Node::builder(config).serve().await {
        Ok(server) => {
            server.shutdown().await;
            panic!("the node started");
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_node_with_a_certificate_serves_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let mut config = tls_config(dir.path(), &cert, &key);
    config.http.header_timeout_ms = 500;
    let server = Server::start(config).await.unwrap();
    let url = server.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let response = trusting(&cert)
        .get(format!("{url}/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    // The command line, told to trust the certificate.
    let cert_arg = cert.display().to_string();
    let listed = crate::support::dram_cli(&["db", "ls", "--ca", &cert_arg], &url).await;
    assert!(listed.contains("NAME"), "{listed}");
    // The library client likewise; a file that is no certificate is an error.
    let client = dram::client::Client::new(&url)
        .with_ca_pem(&std::fs::read(&cert).unwrap())
        .unwrap();
    assert_eq!(client.get("/v1/health").await.unwrap()["status"], "ok");
    assert!(
        dram::client::Client::new(&url)
            .with_ca_pem(b"nope")
            .is_err()
    );

    // Plain HTTP on the TLS port gets no answer.
    let plain = format!("http://{}/v1/health", server.http_addr);
    let answer = reqwest::Client::new().get(&plain).send().await;
    assert!(answer.is_err(), "{answer:?}");
    // Nor does a client that does not trust the certificate.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{url}/v1/health"))
            .send()
            .await
            .is_err()
    );

    // A client that connects and never starts its handshake is cut off after
    // http.header_timeout_ms.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    server.shutdown().await;
}

#[tokio::test]
async fn unusable_tls_files_fail_the_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let (other_cert, other_key) = {
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        certificate(&other)
    };

    for (cert_path, key_path, field, what) in [
        (&missing, &key, "http.tls_cert", "No such file"),
        (&garbage, &key, "http.tls_cert", "no PEM certificate"),
        (&cert, &missing, "http.tls_key", "No such file"),
        (&cert, &garbage, "http.tls_key", "not a PEM private key"),
        (
            &cert,
            &other_key,
            "http.tls_key",
            "does not fit http.tls_cert",
        ),
        (
            &other_cert,
            &key,
            "http.tls_key",
            "does not fit http.tls_cert",
        ),
    ] {
        let node_dir = dir.path().join(format!("n-{field}-{}", what.len()));
        let message = start_error(tls_config(&node_dir, cert_path, key_path)).await;
        assert!(message.contains(field), "{message}");
        assert!(message.contains(what), "{message}");
    }
    // Only one of the two: the config itself is refused, naming the missing one.
    let mut config = config(&dir.path().join("half"));
    config.http.tls_cert = Some(cert.clone());
    let message = start_error(config).await;
    assert!(message.contains("http.tls_key"), "{message}");
}

#[tokio::test]
async fn members_reach_each_other_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let tune = |config: &mut Config| config.cluster.gossip_interval_ms = 100;
    let mut first_config = tls_config(&dir.path().join("n1"), &cert, &key);
    tune(&mut first_config);
    let seed = first_config.cluster.gossip_listen.clone();
    // With the built-in analyses: `sql` runs between them below.
    let serve = |config| dram::builtin::register(Node::builder(config)).serve();
    let first = serve(first_config).await.unwrap();
    let mut second_config = tls_config(&dir.path().join("n2"), &cert, &key);
    tune(&mut second_config);
    second_config.cluster.seeds = vec![seed];
    // One store for both, as members of a cluster share.
    second_config.store.url = first.node.config().store.url.clone();
    let second = serve(second_config).await.unwrap();

    // dram's own client trusts the system's roots only: ask with ours.
    let http = trusting(&cert);
    let get = |url: String| {
        let http = http.clone();
        async move {
            let response = http.get(url).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        }
    };
    eventually(15, "two live members", || async {
        let cluster = get(format!("{}/v1/cluster", first.url())).await;
        let members = cluster["members"].as_array().cloned().unwrap_or_default();
        members.iter().filter(|m| m["live"] == true).count() == 2
    })
    .await;
    let cluster = get(format!("{}/v1/cluster", second.url())).await;
    for member in cluster["members"].as_array().unwrap() {
        assert_eq!(member["node"]["tls"], true, "{member}");
    }

    // A definition made on one member is acknowledged by the other, which
    // pulled the registry over HTTPS.
    let files: &[(&str, &[u8])] = &[("shards/a/x.csv", b"n\n1\n")];
    publish(
        &dir.path().join("n1"),
        &first.node.config().store,
        "db",
        files,
    )
    .await;
    let answer = http
        .post(format!("{}/v1/databases", first.url()))
        .json(&json!({"name": "db", "source": "db", "replicas": "all"}))
        .send()
        .await
        .unwrap();
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["acknowledged"], true, "{answer}");
    // Asking every member (scope=cluster) goes over HTTPS too.
    let disks = get(format!("{}/v1/index/disks?scope=cluster", first.url())).await;
    assert_eq!(disks["nodes"].as_array().unwrap().len(), 2, "{disks}");
    assert_eq!(disks["unreachable"], json!([]), "{disks}");

    // Distributed SQL between them: the workers speak TLS with the same
    // certificate (8 shards, one copy each: both members hold some).
    let shards: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            (
                format!("shards/s{i}/t.csv"),
                format!("n\n{i}\n").into_bytes(),
            )
        })
        .collect();
    crate::support::publish_owned(
        &dir.path().join("n1"),
        &first.node.config().store,
        "spread",
        &shards,
        &[],
    )
    .await;
    let answer = http
        .post(format!("{}/v1/databases", first.url()))
        .json(&json!({"name": "spread", "source": "spread", "replicas": 1}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = get(format!("{}/v1/cluster/shards?database=spread", first.url())).await;
        let shards = view["shards"].as_object().cloned().unwrap_or_default();
        let placed = shards.len() == 8
            && shards.values().all(|h| {
                h.as_array()
                    .is_some_and(|h| h.len() == 1 && h[0]["state"] == "ready")
            });
        if placed {
            break;
        }
        if Instant::now() > deadline {
            let on_second = get(format!("{}/v1/databases/spread", second.url())).await;
            let cluster = get(format!("{}/v1/cluster", second.url())).await;
            panic!("not placed: {view}; on n2: {on_second}; {cluster}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = get(format!("{}/v1/cluster/shards?database=spread", first.url())).await;
    let holders: std::collections::BTreeSet<String> = view["shards"]
        .as_object()
        .unwrap()
        .values()
        .map(|h| h[0]["node"].as_str().unwrap().to_string())
        .collect();
    for sql in [
        "SELECT count(*) AS c, sum(n) AS total FROM t",
        "EXPLAIN ANALYZE SELECT count(*) AS c, sum(n) AS total FROM t",
    ] {
        let response = http
            .post(format!("{}/v1/query/spread/sql", second.url()))
            .json(&json!({"params": {"sql": sql}}))
            .send()
            .await
            .unwrap();
        let answer: Value = response.json().await.unwrap();
        let rows = &answer["result"]["rows"];
        if sql.starts_with("EXPLAIN") {
            let plan = rows.to_string();
            if holders.len() == 2 {
                assert!(plan.contains("DistributedExec"), "{plan}");
            }
        } else {
            assert_eq!(rows, &json!([{"c": 8, "total": 28}]), "{answer}");
        }
    }

    // The PostgreSQL protocol over TLS, with the same certificate; a plain
    // connection is refused, as plain HTTP is.
    let port = second.pg_addr().expect("pg listens").port();
    let base = format!("host=127.0.0.1 port={port} dbname=spread user=dram");
    let verified = format!("sslmode=verify-full sslrootcert={}", cert.display());
    for ssl in ["sslmode=require", verified.as_str()] {
        let out = crate::pg::psql(
            &format!("{base} {ssl}"),
            &["-c", "SELECT count(*), sum(n) FROM t"],
        )
        .await;
        assert_eq!(crate::pg::stdout(&out), "8|28", "{ssl}");
    }
    let out = crate::pg::psql(&format!("{base} sslmode=disable"), &["-c", "SELECT 1"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TLS connections only"),
        "{err}"
    );
    second.shutdown().await;
    first.shutdown().await;
}
