//! The built-in `sql` analysis on two real nodes (shards spread, one copy
//! each, so queries fan out): every answer equals DataFusion run over all the
//! files in one process.

use datafusion::arrow::json::ArrayWriter;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use serde_json::{Value, json};

use crate::cluster::{on_all, two_members};
use crate::support::{copies, publish, ready};

const QUERIES: &[&str] = &[
    "SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY total DESC, region",
    "SELECT count(*) AS n, min(amount) AS lo, max(amount) AS hi, avg(amount) AS mean FROM sales",
    "SELECT region, count(DISTINCT customer) AS customers FROM sales GROUP BY region ORDER BY region",
    "SELECT customer, amount FROM sales WHERE amount > 40 ORDER BY amount DESC, customer LIMIT 3",
    "SELECT r.name, sum(s.amount) AS total FROM sales s JOIN regions r ON s.region = r.code GROUP BY r.name ORDER BY r.name",
    "SELECT region, sum(amount) AS total FROM sales GROUP BY region HAVING sum(amount) > 100 ORDER BY region",
];

fn shard_csv(shard: usize) -> String {
    let mut text = String::from("region,customer,amount\n");
    for row in 0..20 {
        let region = ["eu", "us", "asia"][(shard + row) % 3];
        let customer = format!("c{}", (row * 7 + shard) % 9);
        let amount = (shard * 31 + row * 17) % 97;
        text.push_str(&format!("{region},{customer},{amount}\n"));
    }
    text
}

async fn reference(dir: &std::path::Path, sql: &str) -> Value {
    let ctx = SessionContext::new();
    ctx.register_csv(
        "sales",
        &format!("{}/", dir.join("sales").display()),
        CsvReadOptions::new(),
    )
    .await
    .unwrap();
    ctx.register_csv(
        "regions",
        &format!("{}/", dir.join("regions").display()),
        CsvReadOptions::new(),
    )
    .await
    .unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut writer = ArrayWriter::new(Vec::new());
    writer
        .write_batches(&batches.iter().collect::<Vec<_>>())
        .unwrap();
    writer.finish().unwrap();
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        json!([])
    } else {
        serde_json::from_slice(&bytes).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_answers_as_one_process_would() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2) = two_members(dir.path()).await;
    let clients = [&n1.client, &n2.client];

    // Four shards of `sales`, a global `regions` table; the same files for the
    // reference.
    let all = dir.path().join("all");
    std::fs::create_dir_all(all.join("sales")).unwrap();
    std::fs::create_dir_all(all.join("regions")).unwrap();
    let regions = "code,name\neu,Europe\nus,Americas\nasia,Asia\n";
    std::fs::write(all.join("regions/regions.csv"), regions).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        "global/regions/regions.csv".into(),
        regions.as_bytes().to_vec(),
    )];
    for shard in 0..4 {
        let text = shard_csv(shard);
        std::fs::write(all.join(format!("sales/{shard}.csv")), &text).unwrap();
        files.push((format!("shards/{shard}/sales/part.csv"), text.into_bytes()));
    }
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let store_config = n1.server.node.config().store.clone();
    publish(dir.path(), &store_config, "shop", &files).await;
    n1.client
        .post(
            "/v1/databases",
            &json!({"name": "shop", "source": "shop", "replicas": 1}),
        )
        .await
        .unwrap();
    on_all(&clients, 30, "every shard ready once", |c| {
        Box::pin(async move {
            let view = copies(c, "shop").await;
            view.len() == 4 && view.values().all(|l| ready(l).len() == 1)
        })
    })
    .await;

    for sql in QUERIES {
        let expected = reference(&all, sql).await;
        for client in clients {
            let answer = client
                .post("/v1/query/shop/sql", &json!({"params": {"sql": sql}}))
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(answer["result"]["rows"], expected, "{sql}: {answer}");
        }
    }
    // The command line (not a terminal: JSON rows).
    let sql = QUERIES[0];
    let printed = crate::support::dram_cli(&["sql", "shop", sql], &n2.server.url()).await;
    let rows: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(rows, reference(&all, sql).await, "{printed}");

    // Bad SQL is the caller's error.
    let bad = n1
        .client
        .post(
            "/v1/query/shop/sql",
            &json!({"params": {"sql": "SELEKT 1"}}),
        )
        .await;
    crate::support::expect_error(bad, 400, "invalid_params");

    // A table folder mixing Parquet and CSV is refused, naming the table.
    publish(
        dir.path(),
        &store_config,
        "mixed",
        &[
            ("shards/0/t/a.csv", b"x\n1\n".as_slice()),
            ("shards/0/t/b.parquet", b"not parquet".as_slice()),
        ],
    )
    .await;
    n1.client
        .post(
            "/v1/databases",
            &json!({"name": "mixed", "source": "mixed"}),
        )
        .await
        .unwrap();
    crate::support::wait_loaded(&n1.client, "mixed").await;
    let mixed = n1
        .client
        .post(
            "/v1/query/mixed/sql",
            &json!({"params": {"sql": "SELECT * FROM t"}}),
        )
        .await;
    let message = crate::support::expect_error(mixed, 500, "analysis_failed");
    assert!(
        message.contains("table t mixes Parquet and CSV"),
        "{message}"
    );
}
