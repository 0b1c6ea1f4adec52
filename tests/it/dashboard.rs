//! The dashboard (`GET /`) in a real browser: three members on 127.0.0.1, one of
//! them with another cluster secret, so its registry pulls are refused and its
//! digest never matches (flagged as disagreeing); a four-shard database with two
//! copies of each shard. Headless chromium (through playwright-core,
//! `tests/browser/dashboard.mjs`) opens the page on the first member and reports
//! what it shows: members, the flagged one, each shard's ready copies. Needs
//! `/usr/bin/chromium` and `tests/browser/node_modules`: `.ci/run` installs both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chitchat::transport::ChannelTransport;
use dram::client::Client;
use serde_json::{Value, json};

use crate::cluster::{Member, SECRET, live_members, member_with, on_all};
use crate::support::{copies, publish, ready};

const CHROMIUM: &str = "/usr/bin/chromium";
const SHARDS: usize = 4;

/// The browser test's folder, or a failure saying how to get what it needs.
fn browser_test_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run .ci/run (it installs chromium for the browser test)"
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run .ci/run (npm ci --prefix tests/browser)"
    );
    dir
}

/// A member gossiping over `transport` (in memory: UDP gossip is signed
/// with the secret, and a member with another one would never join).
async fn start(
    dir: &Path,
    name: &str,
    seeds: &[&str],
    secret: &str,
    transport: &ChannelTransport,
) -> Member {
    let secret = secret.to_string();
    let unbudgeted = name == "n3";
    member_with(
        dir,
        name,
        &dir.join("store"),
        seeds,
        move |config| {
            config.auth.cluster_secret = Some(secret);
            config.cluster.disagreement_secs = 1;
            config.cluster.primary_settle_secs = 1;
            // A change is answered once every live member has it: the member
            // with the other secret never will.
            config.cluster.ack_timeout_ms = 300;
            // n3 (which never loads anything) has no budget: its disk bar
            // counts every program's files, as the watermark does.
            if unbudgeted {
                for disk in &mut config.disks {
                    disk.max_bytes = None;
                    disk.high_watermark = 0.999;
                }
            }
        },
        Some(transport.clone()),
    )
    .await
}

/// Ready copies of each shard of `database` as `client`'s node sees them.
async fn ready_copies(client: &Client, database: &str) -> BTreeMap<String, usize> {
    copies(client, database)
        .await
        .iter()
        .map(|(shard, list)| (shard.clone(), ready(list).len()))
        .collect()
}

/// The members `client`'s node lists as disagreeing.
async fn disagreeing(client: &Client) -> Vec<String> {
    let status = client.get("/v1/cluster").await.unwrap_or(Value::Null);
    let mut ids: Vec<String> = status["disagreements"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["node"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// Runs `dashboard.mjs` on `url` (killed after 60 s) and returns its JSON line.
async fn open_in_browser(browser_dir: &Path, url: &str, screenshot: &Path) -> Value {
    let child = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(url)
        .arg(screenshot)
        .current_dir(browser_dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (install nodejs, then run .ci/run): {e}"));
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the browser test did not finish within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from the browser test: {stdout}\n{stderr}"));
    let seen: Value = serde_json::from_str(line).unwrap();
    assert!(
        output.status.success() && seen.get("error").is_none(),
        "browser test failed ({}): {seen}\n{stderr}",
        output.status
    );
    seen
}

fn strings(value: &Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_shows_members_disagreement_and_shard_copies() {
    let browser_dir = browser_test_dir();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();

    // n3 has another cluster secret: gossip works, its registry pulls do not.
    let transport = ChannelTransport::default();
    let n1 = start(dir.path(), "n1", &[], SECRET, &transport).await;
    let seed = n1.gossip.clone();
    let n2 = start(dir.path(), "n2", &[&seed], SECRET, &transport).await;
    let n3 = start(dir.path(), "n3", &[&seed], "another-secret", &transport).await;
    let all = [&n1.client, &n2.client, &n3.client];
    on_all(&all, 30, "three live members and a primary", |c| {
        Box::pin(async move {
            let status = c.get("/v1/cluster").await.unwrap_or(Value::Null);
            live_members(&status) == ["n1", "n2", "n3"] && !status["primary"].is_null()
        })
    })
    .await;

    let store = n1.server.node.config().store.clone();
    let files: Vec<(String, Vec<u8>)> = (0..SHARDS)
        .map(|s| {
            (
                format!("shards/{s}/rows.csv"),
                format!("n\n{s}\n").into_bytes(),
            )
        })
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    publish(dir.path(), &store, "events", &files).await;
    n1.client
        .post(
            "/v1/databases",
            &json!({"name": "events", "source": "events", "replicas": 2}),
        )
        .await
        .unwrap();
    n1.client
        .put("/v1/aliases/latest", &json!({"target": "events"}))
        .await
        .unwrap();

    // Through the API first: n1 and n2 agree, n3 is flagged; every shard has
    // its copies on n1 and n2 loaded (n3 never learns of the database).
    on_all(
        &[&n1.client],
        60,
        "n3 flagged and every copy settled",
        |c| {
            Box::pin(async move {
                let view = copies(c, "events").await;
                disagreeing(c).await == ["n3"]
                    && view.len() == SHARDS
                    && view
                        .values()
                        .all(|list| list.iter().all(|(_, state)| state == "ready"))
            })
        },
    )
    .await;
    let before = ready_copies(&n1.client, "events").await;

    // The page's own routes; other unknown paths stay JSON errors.
    let http = reqwest::Client::new();
    let url = n1.server.url();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
    ] {
        let response = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        assert_eq!(response.headers()["cache-control"], "no-cache", "{path}");
    }
    let missing = http.get(format!("{url}/nothing")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let seen = open_in_browser(&browser_dir, &format!("{url}/"), &screenshot).await;
    eprintln!("dashboard screenshot: {}", screenshot.display());

    // What the page shows is what the API says.
    let after = ready_copies(&n1.client, "events").await;
    assert_eq!(before, after, "the copies changed while the page was open");
    assert_eq!(strings(&seen["members"]), ["n1", "n2", "n3"], "{seen}");
    assert_eq!(strings(&seen["flagged"]), ["n3"], "{seen}");
    let shown: BTreeMap<String, usize> = seen["databases"]["events"]
        .as_object()
        .unwrap_or_else(|| panic!("no events section: {seen}"))
        .iter()
        .map(|(shard, n)| (shard.clone(), n.as_u64().unwrap_or(u64::MAX) as usize))
        .collect();
    assert_eq!(shown, after, "{seen}");
    let under: Vec<String> = after
        .iter()
        .filter(|(_, n)| **n < 2)
        .map(|(shard, _)| format!("events/{shard}"))
        .collect();
    assert_eq!(strings(&seen["under"]), under, "{seen}");
    // Each disk's bar: dram's bytes, the disk's use by every program, and
    // the high watermark, as n1's view of the cluster says.
    let cluster = n1.client.get("/v1/cluster").await.unwrap();
    for member in cluster["members"].as_array().unwrap() {
        for (id, disk) in member["disks"].as_object().unwrap() {
            let name = format!("{}/{id}", member["id"].as_str().unwrap());
            let card = &seen["disks"][&name];
            let total = disk["total"].as_f64().unwrap();
            let capacity = disk["capacity"].as_f64().unwrap();
            let close = |shown: &Value, want: f64| (shown.as_f64().unwrap() - want).abs() < 0.5;
            let dram = disk["used"].as_f64().unwrap();
            if capacity < total {
                // A budget (`max_bytes`, as these members have): dram's
                // bytes against it; other programs' files do not count.
                assert!(
                    close(&card["dram"], 100.0 * dram / capacity),
                    "{name}: {card} {disk}"
                );
                assert!(
                    close(&card["used"], 100.0 * dram / capacity),
                    "{name}: {card} {disk}"
                );
                assert!(card["text"].as_str().unwrap().contains("budget"), "{card}");
            } else {
                // Other programs' files count too (the watermark counts them).
                let used = total - disk["free"].as_f64().unwrap();
                assert!(
                    close(&card["dram"], 100.0 * dram / total),
                    "{name}: {card} {disk}"
                );
                assert!(
                    close(&card["used"], 100.0 * used / total),
                    "{name}: {card} {disk}"
                );
            }
            let watermark = if name.starts_with("n3/") { 99.9 } else { 90.0 };
            assert!(close(&card["watermark"], watermark), "{name}: {card}");
        }
    }
    assert_eq!(strings(&seen["errors"]), Vec::<String>::new(), "{seen}");
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "no screenshot at {}", screenshot.display());
}
