//! Queries: analyses registered on the builder, served at
//! `POST /v1/query/{database_or_alias}/{analysis}`, over full and lazy databases;
//! pinned versions under alias swaps; errors, panics and deadlines; the map bound;
//! reads recorded; the `dram query` command.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dram::query::{Analysis, AnalysisError, Shard};
use dram::{Config, Node, NodeBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::support::{config, expect_error, load, publish, serve};

/// Sums the integers (one per line) of every shard file, times the factor in
/// `global/factor.txt`.
struct SumNumbers;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SumParams {
    #[serde(default)]
    add: i64,
}

#[derive(Serialize, Deserialize, Default)]
struct SumPartial {
    total: i64,
    files: u64,
}

impl Analysis for SumNumbers {
    type Params = SumParams;
    type Partial = SumPartial;
    type Output = Value;

    fn description(&self) -> String {
        "sums numbers times the global factor".into()
    }

    fn map(&self, _: &SumParams, shard: &Shard) -> Result<SumPartial, AnalysisError> {
        let factor: i64 = shard
            .require_global()?
            .read_to_string("factor.txt")?
            .trim()
            .parse()?;
        let mut partial = SumPartial::default();
        for path in shard.files() {
            let text = String::from_utf8(shard.read(&path)?.to_vec())?;
            for line in text.lines().filter(|l| !l.is_empty()) {
                partial.total += factor * line.trim().parse::<i64>()?;
            }
            partial.files += 1;
        }
        Ok(partial)
    }

    fn reduce(
        &self,
        _: &SumParams,
        partials: Vec<SumPartial>,
    ) -> Result<SumPartial, AnalysisError> {
        Ok(partials
            .into_iter()
            .fold(SumPartial::default(), |a, b| SumPartial {
                total: a.total + b.total,
                files: a.files + b.files,
            }))
    }

    fn finish(&self, params: &SumParams, partial: SumPartial) -> Result<Value, AnalysisError> {
        Ok(json!({"total": partial.total + params.add, "files": partial.files}))
    }
}

/// Misbehaves on request: fails, panics, rejects its params, or spins until the
/// query is cancelled (noting that it saw the cancellation).
struct Misbehave {
    saw_cancel: Arc<AtomicBool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MisbehaveParams {
    mode: String,
}

impl Analysis for Misbehave {
    type Params = MisbehaveParams;
    type Partial = u64;
    type Output = u64;

    fn map(&self, params: &MisbehaveParams, shard: &Shard) -> Result<u64, AnalysisError> {
        match params.mode.as_str() {
            "fail" if shard.id() == "b" => Err(AnalysisError::failed("bad data in b")),
            "panic" if shard.id() == "b" => panic!("boom in b"),
            "invalid" => Err(AnalysisError::invalid_params("mode invalid is not allowed")),
            "spin" => {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    if shard.is_cancelled() {
                        self.saw_cancel.store(true, Ordering::SeqCst);
                        return Err(AnalysisError::cancelled());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(0)
            }
            _ => Ok(1),
        }
    }

    fn reduce(&self, _: &MisbehaveParams, partials: Vec<u64>) -> Result<u64, AnalysisError> {
        Ok(partials.into_iter().sum())
    }

    fn finish(&self, _: &MisbehaveParams, total: u64) -> Result<u64, AnalysisError> {
        Ok(total)
    }
}

/// The labels (`label.txt`) of the shards mapped, slowly, and how many maps ran
/// at once at most.
#[derive(Default, Clone)]
struct Labels {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Analysis for Labels {
    type Params = ();
    type Partial = BTreeSet<String>;
    type Output = BTreeSet<String>;

    fn map(&self, _: &(), shard: &Shard) -> Result<BTreeSet<String>, AnalysisError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(3));
        let label = shard.data().read_to_string("label.txt");
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(BTreeSet::from([label?.trim().to_string()]))
    }

    fn reduce(
        &self,
        _: &(),
        partials: Vec<BTreeSet<String>>,
    ) -> Result<BTreeSet<String>, AnalysisError> {
        Ok(partials.into_iter().flatten().collect())
    }

    fn finish(&self, _: &(), labels: BTreeSet<String>) -> Result<BTreeSet<String>, AnalysisError> {
        Ok(labels)
    }
}

fn builder(config: Config, labels: &Labels, saw_cancel: &Arc<AtomicBool>) -> NodeBuilder {
    dram::builtin::register(Node::builder(config))
        .analysis("sum", SumNumbers)
        .analysis(
            "misbehave",
            Misbehave {
                saw_cancel: saw_cancel.clone(),
            },
        )
        .analysis("labels", labels.clone())
}

const NUMBERS: &[(&str, &[u8])] = &[
    ("global/factor.txt", b"10\n"),
    ("shards/a/1.txt", b"1\n2\n"),
    ("shards/a/2.txt", b"3\n"),
    ("shards/b/1.txt", b"4\n"),
    ("shards/c/1.txt", b"5\n6\n"),
];

#[tokio::test]
async fn query_maps_every_shard_with_global_data_and_reduces() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    publish(dir.path(), &config.store, "numbers", NUMBERS).await;
    let (server, client) = serve(builder(config, &Labels::default(), &Arc::default())).await;
    load(&client, json!({"name": "numbers", "source": "numbers"})).await;

    let listed = client.get("/v1/analyses").await.unwrap();
    let names: Vec<&str> = listed["analyses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"sum") && names.contains(&"files"),
        "{listed}"
    );
    assert!(listed.to_string().contains("sums numbers"), "{listed}");

    let answer = client
        .post("/v1/query/numbers/sum", &json!({"params": {"add": 7}}))
        .await
        .unwrap();
    assert_eq!(answer["result"], json!({"total": 217, "files": 4}));
    let info = client.get("/v1/databases/numbers").await.unwrap();
    assert_eq!(answer["meta"]["database"], "numbers");
    assert_eq!(answer["meta"]["version"], info["version"]);
    assert_eq!(answer["meta"]["shards"], 3);
    assert!(answer["meta"]["took_ms"].is_u64());

    // A chosen subset, repeated ids counted once; params may be left out.
    let answer = client
        .post("/v1/query/numbers/sum", &json!({"shards": ["a", "c", "a"]}))
        .await
        .unwrap();
    assert_eq!(answer["result"], json!({"total": 170, "files": 3}));
    assert_eq!(answer["meta"]["shards"], 2);

    // The built-in `files` counts from the manifest.
    let files = client
        .post("/v1/query/numbers/files", &json!({}))
        .await
        .unwrap();
    assert_eq!(files["result"]["total"], json!({"files": 4, "bytes": 12}));
    assert_eq!(
        files["result"]["shards"]["a"],
        json!({"files": 2, "bytes": 6})
    );

    // Reads are recorded per database and per shard.
    let info = client.get("/v1/databases/numbers").await.unwrap();
    let shard_a = info["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "a")
        .unwrap()
        .clone();
    assert_eq!(shard_a["queries"], 3, "{shard_a}");
    assert_eq!(
        shard_a["reads"], 4,
        "two queries read its two files: {shard_a}"
    );
    assert!(shard_a["last_read_ms"].is_u64());
    let stats = client.get("/v1/stats").await.unwrap();
    assert_eq!(stats["databases"][0]["queries"], 3, "{stats}");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_queries_get_clear_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.query.max_timeout_ms = 60_000;
    publish(dir.path(), &config.store, "numbers", NUMBERS).await;
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let (server, client) = serve(builder(config, &Labels::default(), &saw_cancel)).await;
    load(&client, json!({"name": "numbers", "source": "numbers"})).await;
    let post = |path: &'static str, body: Value| {
        let client = client.clone();
        async move { client.post(path, &body).await }
    };

    let message = expect_error(
        post("/v1/query/numbers/nope", json!({})).await,
        404,
        "not_found",
    );
    assert!(message.contains("nope"), "{message}");
    expect_error(
        post("/v1/query/nothing/sum", json!({})).await,
        404,
        "not_found",
    );
    let message = expect_error(
        post("/v1/query/numbers/sum", json!({"params": {"add": "x"}})).await,
        400,
        "invalid_params",
    );
    assert!(message.contains("invalid type"), "{message}");
    expect_error(
        post("/v1/query/numbers/sum", json!({"params": {"mul": 2}})).await,
        400,
        "invalid_params",
    );
    expect_error(
        post("/v1/query/numbers/sum", json!({"param": {}})).await,
        400,
        "invalid_input",
    );
    expect_error(
        post("/v1/query/numbers/sum", json!({"shards": []})).await,
        400,
        "invalid_input",
    );
    let message = expect_error(
        post("/v1/query/numbers/sum", json!({"shards": ["zz"]})).await,
        404,
        "not_found",
    );
    assert!(message.contains("numbers/zz"), "{message}");
    let message = expect_error(
        post("/v1/query/numbers/sum", json!({"timeout_ms": 600_000})).await,
        400,
        "invalid_input",
    );
    assert!(message.contains("max_timeout_ms"), "{message}");

    let message = expect_error(
        post(
            "/v1/query/numbers/misbehave",
            json!({"params": {"mode": "fail"}}),
        )
        .await,
        500,
        "analysis_failed",
    );
    assert!(
        message.contains("bad data in b") && message.contains("\"b\""),
        "{message}"
    );
    let message = expect_error(
        post(
            "/v1/query/numbers/misbehave",
            json!({"params": {"mode": "panic"}}),
        )
        .await,
        500,
        "analysis_panicked",
    );
    assert!(message.contains("boom in b"), "{message}");
    expect_error(
        post(
            "/v1/query/numbers/misbehave",
            json!({"params": {"mode": "invalid"}}),
        )
        .await,
        400,
        "invalid_params",
    );

    // Past its deadline a query answers 504 at once and its maps see the cancel.
    let started = Instant::now();
    let message = expect_error(
        post(
            "/v1/query/numbers/misbehave",
            json!({"params": {"mode": "spin"}, "timeout_ms": 200}),
        )
        .await,
        504,
        "timeout",
    );
    assert!(message.contains("200 ms"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
    crate::support::eventually(10, "maps to see the cancellation", || {
        let saw = saw_cancel.clone();
        async move { saw.load(Ordering::SeqCst) }
    })
    .await;

    // A client that hangs up stops the maps too, long before the deadline.
    saw_cancel.store(false, Ordering::SeqCst);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let hung_up = impatient
        .post(format!("{}/v1/query/numbers/misbehave", server.url()))
        .json(&json!({"params": {"mode": "spin"}, "timeout_ms": 60_000}))
        .send()
        .await;
    assert!(hung_up.is_err(), "the spinning query answered: {hung_up:?}");
    let hung_up_at = Instant::now();
    crate::support::eventually(10, "maps to see the client go", || {
        let saw = saw_cancel.clone();
        async move { saw.load(Ordering::SeqCst) }
    })
    .await;
    assert!(hung_up_at.elapsed() < Duration::from_secs(5));

    // None of that hurt the node.
    let answer = post(
        "/v1/query/numbers/misbehave",
        json!({"params": {"mode": "ok"}}),
    )
    .await
    .unwrap();
    assert_eq!(answer["result"], 3);
    let answer = post("/v1/query/numbers/sum", json!({})).await.unwrap();
    assert_eq!(answer["result"]["total"], 210);
    server.shutdown().await;
}

/// Two versions of one database, each shard saying which version it is.
fn labelled(version: &str, shards: usize) -> Vec<(String, Vec<u8>)> {
    (0..shards)
        .map(|i| {
            (
                format!("shards/s{i:02}/label.txt"),
                format!("{version}\n").into_bytes(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_alias_swap_never_mixes_versions_in_one_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.query.max_concurrent_maps = 4;
    for version in ["v1", "v2"] {
        let files = labelled(version, 12);
        let files: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        publish(
            dir.path(),
            &config.store,
            &format!("daily-{version}"),
            &files,
        )
        .await;
    }
    let labels = Labels::default();
    let (server, client) = serve(builder(config, &labels, &Arc::default())).await;
    for version in ["v1", "v2"] {
        let name = format!("daily-{version}");
        load(&client, json!({"name": name, "source": name})).await;
    }
    client
        .put("/v1/aliases/daily", &json!({"target": "daily-v1"}))
        .await
        .unwrap();

    let swapping = {
        let client = client.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                let target = if round % 2 == 0 {
                    "daily-v2"
                } else {
                    "daily-v1"
                };
                client
                    .put("/v1/aliases/daily", &json!({"target": target}))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        })
    };
    let mut queries = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        queries.push(tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            for _ in 0..25 {
                let answer = client
                    .post("/v1/query/daily/labels", &json!({}))
                    .await
                    .unwrap();
                let labels = answer["result"].as_array().unwrap().clone();
                assert_eq!(labels.len(), 1, "one answer mixed versions: {answer}");
                let database = answer["meta"]["database"].as_str().unwrap();
                assert_eq!(format!("daily-{}", labels[0].as_str().unwrap()), database);
                assert_eq!(answer["meta"]["alias"], "daily");
                seen.insert(database.to_string());
            }
            seen
        }));
    }
    let mut seen = BTreeSet::new();
    for query in queries {
        seen.extend(query.await.unwrap());
    }
    swapping.await.unwrap();
    assert_eq!(seen.len(), 2, "queries ran while the alias moved: {seen:?}");
    let most = labels.most.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&most),
        "map calls at once: {most} (bound 4)"
    );

    // A removed alias is a 404 for the next query, not a mixed answer.
    client.delete("/v1/aliases/daily").await.unwrap();
    expect_error(
        client.post("/v1/query/daily/labels", &json!({})).await,
        404,
        "not_found",
    );
    server.shutdown().await;
}

#[tokio::test]
async fn queries_fetch_the_files_of_a_lazy_database_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    publish(dir.path(), &config.store, "numbers", NUMBERS).await;
    let (server, client) = serve(builder(config, &Labels::default(), &Arc::default())).await;
    load(
        &client,
        json!({"name": "numbers", "source": "numbers", "mode": "lazy"}),
    )
    .await;
    let before = client.get("/v1/stats").await.unwrap()["node"]["files_downloaded"]
        .as_u64()
        .unwrap();
    let answer = client
        .post("/v1/query/numbers/sum", &json!({"shards": ["a"]}))
        .await
        .unwrap();
    assert_eq!(answer["result"]["total"], 60);
    let after = client.get("/v1/stats").await.unwrap()["node"]["files_downloaded"]
        .as_u64()
        .unwrap();
    assert_eq!(after - before, 2, "shard a's two files were fetched");
    let again = client
        .post("/v1/query/numbers/sum", &json!({}))
        .await
        .unwrap();
    assert_eq!(again["result"]["total"], 210);
    server.shutdown().await;
}

#[tokio::test]
async fn the_query_command_prints_the_answer_and_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    publish(dir.path(), &config.store, "numbers", NUMBERS).await;
    let (server, client) = serve(builder(config, &Labels::default(), &Arc::default())).await;
    load(&client, json!({"name": "numbers", "source": "numbers"})).await;
    let url = server.url();
    let run = |args: Vec<&str>| {
        let url = url.clone();
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(crate::support::dram_binary())
                .args(&args)
                .args(["--node", &url])
                .output()
                .unwrap()
        })
    };
    let out = run(vec![
        "query",
        "numbers",
        "sum",
        "--params",
        r#"{"add":1}"#,
        "--shard",
        "b",
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["result"]["total"], 41);
    assert_eq!(printed["meta"]["shards"], 1);

    let out = run(vec!["query", "numbers", "sum", "--params", "{add:1}"])
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--params is not valid JSON"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = run(vec!["query", "numbers", "nope"]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("\"nope\" not found"),
        "{stderr}"
    );

    let out = run(vec!["analyses"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sum\tsums numbers"), "{stdout}");

    // `db add --wait` ends when the load does (its progress on stderr);
    // `--timeout` only goes with `--wait` (clap's usage error: status 2).
    let out = run(vec![
        "db",
        "add",
        "again",
        "numbers",
        "--wait",
        "--timeout",
        "60",
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("again: ready"),
        "{out:?}"
    );
    let out = run(vec!["db", "ls"]).await.unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    let again = listed
        .lines()
        .find(|l| l.starts_with("again "))
        .unwrap_or_default();
    assert!(
        again.contains(" B ") && again.ends_with("100.0%"),
        "{listed}"
    );
    let out = run(vec!["db", "rm", "again"]).await.unwrap();
    let removed = String::from_utf8_lossy(&out.stdout);
    assert!(
        removed.contains("purged in 24 h (20") && removed.contains("dram db restore again"),
        "{removed}"
    );
    let out = run(vec!["db", "add", "other", "numbers", "--timeout", "5"])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2) && stderr.contains("--wait"),
        "{stderr}"
    );

    // Shell completions: a bash script bash itself reads, naming the
    // subcommands and the global options.
    let out = run(vec!["completions", "bash"]).await.unwrap();
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && script.contains("_dram()"),
        "{out:?}"
    );
    assert!(
        script.contains("analyses") && script.contains("--node"),
        "{script}"
    );
    let checked = std::process::Command::new("bash")
        .args(["-n", "-c", &script])
        .status()
        .unwrap();
    assert!(checked.success());

    // A config error prints on one line (messages of several lines are
    // folded: `main.rs`'s test).
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[node]\nhttp_listen = \n").unwrap();
    let out = run(vec!["serve", "--config", bad.to_str().unwrap()])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("bad.toml"),
        "{stderr}"
    );
    server.shutdown().await;
}

/// Two nodes, one copy of each shard: the holders' maps stop when the query's
/// client hangs up at the root, and when the query's deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hang_ups_and_deadlines_at_the_root_stop_the_holders_maps() {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str, seeds: Vec<String>, saw: Arc<AtomicBool>| {
        let mut config = config(&dir.path().join(name));
        config.node.id = name.to_string();
        config.store.url = format!("file://{}", dir.path().join("store").display());
        config.cluster.gossip_interval_ms = 100;
        config.cluster.seeds = seeds;
        config.query.max_timeout_ms = 60_000;
        serve(builder(config, &Labels::default(), &saw))
    };
    let saw = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let (n1, c1) = start("n1", vec![], saw[0].clone()).await;
    let seed = n1.node.config().cluster.gossip_listen.clone();
    let (n2, c2) = start("n2", vec![seed], saw[1].clone()).await;
    publish(dir.path(), &n1.node.config().store, "numbers", NUMBERS).await;
    crate::support::eventually(20, "two members", || {
        let c = c1.clone();
        async move {
            let status = c.get("/v1/cluster").await.unwrap_or_default();
            status["members"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|m| m["live"] == true).count() == 2)
        }
    })
    .await;
    c1.post(
        "/v1/databases",
        &json!({"name": "numbers", "source": "numbers"}),
    )
    .await
    .unwrap();
    let counts = Arc::new(std::sync::Mutex::new([0usize; 2]));
    crate::support::eventually(30, "every shard ready on one node", || {
        let c = c1.clone();
        let counts = counts.clone();
        async move {
            let shards = crate::support::copies(&c, "numbers").await;
            let mut held = [0usize; 2];
            for list in shards.values() {
                for node in crate::support::ready(list) {
                    held[usize::from(node != "n1")] += 1;
                }
            }
            shards.len() == 3
                && shards
                    .values()
                    .all(|list| crate::support::ready(list).len() == 1)
                && {
                    *counts.lock().unwrap() = held;
                    true
                }
        }
    })
    .await;
    let held = *counts.lock().unwrap();
    // The root: a node that lacks some shard; the holder: the other one.
    let (root, root_url, holder) = if held[0] < 3 {
        (&c1, n1.url(), 1)
    } else {
        (&c2, n2.url(), 0)
    };
    crate::support::eventually(10, "the root to know the database", || {
        let root = root.clone();
        async move {
            root.get("/v1/databases/numbers")
                .await
                .is_ok_and(|info| info["state"] == "ready")
        }
    })
    .await;
    let answer = root
        .post(
            "/v1/query/numbers/misbehave",
            &json!({"params": {"mode": "ok"}}),
        )
        .await
        .unwrap();
    assert_eq!(answer["result"], 3, "{answer}");

    // The client hangs up.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let hung_up = impatient
        .post(format!("{root_url}/v1/query/numbers/misbehave"))
        .json(&json!({"params": {"mode": "spin"}, "timeout_ms": 60_000}))
        .send()
        .await;
    assert!(hung_up.is_err(), "{hung_up:?}");
    let at = Instant::now();
    crate::support::eventually(10, "the holder's maps to stop", || {
        let saw = saw[holder].clone();
        async move { saw.load(Ordering::SeqCst) }
    })
    .await;
    assert!(at.elapsed() < Duration::from_secs(5));

    // The deadline passes.
    saw[holder].store(false, Ordering::SeqCst);
    expect_error(
        root.post(
            "/v1/query/numbers/misbehave",
            &json!({"params": {"mode": "spin"}, "timeout_ms": 300}),
        )
        .await,
        504,
        "timeout",
    );
    crate::support::eventually(10, "the holder's maps to see the deadline", || {
        let saw = saw[holder].clone();
        async move { saw.load(Ordering::SeqCst) }
    })
    .await;
    n2.shutdown().await;
    n1.shutdown().await;
}

/// A node that serves its own analyses only has no `sql`: the engine answers
/// for the built-in alone.
#[tokio::test]
async fn a_node_without_the_built_in_sql_serves_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    publish(dir.path(), &config.store, "numbers", NUMBERS).await;
    let (server, client) = serve(Node::builder(config).analysis("sum", SumNumbers)).await;
    load(&client, json!({"name": "numbers", "source": "numbers"})).await;
    let message = expect_error(
        client
            .post(
                "/v1/query/numbers/sql",
                &json!({"params": {"sql": "SELECT 1"}}),
            )
            .await,
        404,
        "not_found",
    );
    assert!(message.contains("analysis \"sql\""), "{message}");
    server.shutdown().await;
}
