//! The built-in `sql` analysis on three real nodes (six shards, one copy each,
//! so every query fans out): each answer equals DataFusion's over all the
//! files in one process, for CSV and Parquet databases (and a lazy one).
//! Shards differ: one holds no sales at all, one's amounts are whole numbers
//! (CSV infers integers there, decimals elsewhere). Joins of every shape,
//! windows and subqueries over several shards answer exactly; an explicit
//! map_sql/reduce_sql runs.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::json::ArrayWriter;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use dram::client::Client;
use serde_json::{Value, json};

use crate::cluster::{members, on_all};
use crate::support::{copies, dram_cli, expect_error, publish, publish_owned, ready};

const SHARDS: usize = 6;

/// Queries whose answer must equal one process's. Those without ORDER BY are
/// compared as sets of rows.
const QUERIES: &[&str] = &[
    "SELECT count(*) AS n FROM sales",
    "SELECT region, count(*) AS n, sum(amount) AS total, avg(amount) AS mean, min(amount) AS lo, max(amount) AS hi FROM sales GROUP BY region ORDER BY region NULLS FIRST",
    "SELECT region, sum(quantity) AS q, count(quantity) AS known FROM sales GROUP BY region",
    "SELECT customer, sum(amount) AS spent FROM sales GROUP BY customer ORDER BY spent DESC, customer LIMIT 5",
    "SELECT count(DISTINCT customer) AS customers, median(quantity) AS mq FROM sales",
    "SELECT region, count(DISTINCT product) AS products FROM sales GROUP BY region ORDER BY region NULLS LAST",
    "SELECT p.category, sum(s.amount * s.quantity) AS revenue FROM sales s JOIN products p ON s.product = p.product GROUP BY p.category ORDER BY revenue DESC",
    "SELECT r.name, count(*) AS n FROM sales s LEFT JOIN regions r ON s.region = r.code GROUP BY r.name ORDER BY r.name NULLS LAST",
    "SELECT id, amount FROM sales WHERE amount > 50 AND region = 'eu' ORDER BY amount DESC, id LIMIT 7",
    "SELECT id, customer FROM sales WHERE quantity IS NULL ORDER BY id",
    "SELECT id FROM sales ORDER BY id LIMIT 5 OFFSET 10",
    "SELECT * FROM sales WHERE day = 3",
    "SELECT region, sum(amount) AS total FROM sales GROUP BY region HAVING count(*) > 30 ORDER BY 1",
    "SELECT day, count(*) AS n FROM sales WHERE day BETWEEN 5 AND 9 GROUP BY day ORDER BY day",
    "SELECT DISTINCT region FROM sales ORDER BY region",
    "SELECT region, customer, sum(amount) AS total FROM sales GROUP BY region, customer ORDER BY 3 DESC, 1, 2 LIMIT 3",
    "SELECT count(*) AS n FROM sales WHERE product IN (SELECT product FROM products WHERE category = 'toys')",
    "SELECT region, sum(amount) AS total, rank() OVER (ORDER BY sum(amount) DESC) AS place FROM sales GROUP BY region ORDER BY place, region",
    "SELECT id, row_number() OVER (ORDER BY id) AS rn FROM sales ORDER BY id LIMIT 4",
    "SELECT category, count(*) AS n, max(price) AS top FROM products GROUP BY category ORDER BY category",
    "SELECT sum(amount) AS total, count(*) AS n FROM sales WHERE region = 'nowhere'",
    "SELECT CASE WHEN amount > 50 THEN 'big' ELSE 'small' END AS size, count(*) AS n FROM sales GROUP BY 1 ORDER BY 1",
    "SELECT 1 + 1 AS two",
    "SELECT id, amount FROM sales WHERE amount IS NOT NULL ORDER BY amount, id LIMIT 3",
];

/// Queries the earlier engine, which cut one plan between shards and a root,
/// had to refuse: they need rows of several shards to meet.
const ACROSS_SHARDS: &[&str] = &[
    "SELECT id, row_number() OVER (PARTITION BY region ORDER BY id) AS rn FROM sales ORDER BY id",
    "SELECT sum(amount) AS s FROM (SELECT amount FROM sales ORDER BY amount DESC LIMIT 3)",
    "SELECT id FROM sales WHERE amount > (SELECT avg(amount) FROM sales) ORDER BY id",
    "SELECT a.id, b.id AS other FROM sales a JOIN sales b ON a.customer = b.customer AND a.id < b.id WHERE a.day = 1 AND b.day = 2 ORDER BY 1, 2",
];

/// The join-shape matrix: {inner, left, right, full, semi, anti, UNION,
/// UNION ALL, INTERSECT, EXCEPT} × {shard–shard, shard–global,
/// global–shard}: every cell answers as one process does.
const JOIN_SHAPES: &[&str] = &[
    // shard – global
    "SELECT count(*) AS n, sum(s.amount) AS t FROM sales s JOIN regions r ON s.region = r.code AND r.code <> 'us'",
    "SELECT count(*) AS n, count(r.name) AS named FROM sales s LEFT JOIN regions r ON s.region = r.code AND r.code <> 'us'",
    "SELECT count(*) AS n FROM sales s RIGHT JOIN regions r ON s.region = r.code",
    "SELECT count(*) AS n FROM sales s FULL JOIN regions r ON s.region = r.code",
    "SELECT count(*) AS n FROM sales WHERE region IN (SELECT code FROM regions WHERE code <> 'us')",
    "SELECT count(*) AS n FROM sales s WHERE EXISTS (SELECT 1 FROM regions r WHERE r.code = s.region AND r.code <> 'eu')",
    "SELECT count(*) AS n FROM sales WHERE region NOT IN (SELECT code FROM regions WHERE code <> 'us')",
    "SELECT count(*) AS n, sum(amount) AS t FROM sales s WHERE NOT EXISTS (SELECT 1 FROM regions r WHERE r.code = s.region AND r.code <> 'eu')",
    "SELECT count(*) AS n FROM (SELECT region FROM sales UNION SELECT code FROM regions)",
    "SELECT count(*) AS n FROM (SELECT region FROM sales UNION ALL SELECT code FROM regions)",
    "SELECT region FROM sales INTERSECT SELECT code FROM regions WHERE code <> 'us'",
    "SELECT region FROM sales EXCEPT SELECT code FROM regions WHERE code <> 'us'",
    // global – shard
    "SELECT count(*) AS n, sum(s.amount) AS t FROM regions r JOIN sales s ON s.region = r.code",
    "SELECT count(*) AS n FROM regions r LEFT JOIN sales s ON s.region = r.code",
    "SELECT count(*) AS n, count(r.code) AS matched FROM regions r RIGHT JOIN sales s ON s.region = r.code AND r.code <> 'us'",
    "SELECT count(*) AS n FROM regions r FULL JOIN sales s ON s.region = r.code",
    "SELECT count(*) AS n FROM regions WHERE code IN (SELECT region FROM sales)",
    "SELECT count(*) AS n FROM regions r WHERE EXISTS (SELECT 1 FROM sales s WHERE s.region = r.code)",
    "SELECT count(*) AS n FROM regions WHERE code NOT IN (SELECT region FROM sales WHERE region IS NOT NULL)",
    "SELECT count(*) AS n FROM regions r WHERE NOT EXISTS (SELECT 1 FROM sales s WHERE s.region = r.code)",
    "SELECT count(*) AS n FROM (SELECT code FROM regions UNION SELECT region FROM sales)",
    "SELECT count(*) AS n FROM (SELECT code FROM regions UNION ALL SELECT region FROM sales)",
    "SELECT code FROM regions INTERSECT SELECT region FROM sales",
    "SELECT code FROM regions EXCEPT SELECT region FROM sales",
    // shard – shard
    "SELECT count(*) AS n FROM sales a JOIN sales b ON a.customer = b.customer",
    "SELECT count(*) AS n FROM sales a LEFT JOIN sales b ON a.customer = b.customer AND a.id < b.id",
    "SELECT count(*) AS n FROM sales a RIGHT JOIN sales b ON a.customer = b.customer AND a.id < b.id",
    "SELECT count(*) AS n FROM sales a FULL JOIN sales b ON a.customer = b.customer AND a.id < b.id",
    "SELECT count(*) AS n FROM sales WHERE customer IN (SELECT customer FROM sales WHERE region = 'asia')",
    "SELECT count(*) AS n FROM sales a WHERE NOT EXISTS (SELECT 1 FROM sales b WHERE b.customer = a.customer AND b.region = 'asia')",
    "SELECT count(*) AS n, count(DISTINCT x) AS d FROM (SELECT customer AS x FROM sales UNION SELECT product FROM sales)",
    "SELECT count(*) AS n FROM (SELECT customer AS x FROM sales UNION ALL SELECT product FROM sales)",
    "SELECT customer FROM sales WHERE region = 'eu' INTERSECT SELECT customer FROM sales WHERE region = 'us'",
    "SELECT customer FROM sales WHERE region = 'eu' EXCEPT SELECT customer FROM sales WHERE region = 'us'",
];

/// Shard `shard`'s sales as CSV: nulls among regions, quantities and
/// amounts; shard 1's amounts whole numbers; the last shard has none.
fn sales_csv(shard: usize) -> String {
    let mut text = String::from("id,day,region,customer,product,quantity,amount\n");
    let rows = if shard == SHARDS - 1 {
        0
    } else {
        25 + shard * 7
    };
    for row in 0..rows {
        let id = shard * 1000 + row;
        let region = ["eu", "us", "asia", "", "eu"][(shard + row) % 5];
        let customer = format!("c{}", (row * 7 + shard * 3) % 23);
        let product = format!("p{}", (row * 3 + shard) % 10);
        let quantity = if row % 6 == 1 {
            String::new()
        } else {
            ((row + shard) % 9 + 1).to_string()
        };
        let cents = (shard * 3_137 + row * 1_711) % 9_973;
        let amount = if row % 11 == 4 {
            String::new()
        } else if shard == 1 {
            (cents / 100).to_string()
        } else {
            format!("{}.{:02}", cents / 100, cents % 100)
        };
        let day = (row * 5 + shard) % 30 + 1;
        text.push_str(&format!(
            "{id},{day},{region},{customer},{product},{quantity},{amount}\n"
        ));
    }
    text
}

const PRODUCTS: &str = "product,category,price\np0,toys,3.5\np1,toys,9\np2,books,12.25\np3,books,7\np4,garden,30\np5,garden,2.5\np6,food,1.25\np7,food,4\np8,toys,15\np9,tools,22\n";
const REGIONS: &str = "code,name\neu,Europe\nus,Americas\nasia,Asia\n";

fn sales_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("day", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("customer", DataType::Utf8, false),
        Field::new("product", DataType::Utf8, false),
        Field::new("quantity", DataType::Int64, true),
        Field::new("amount", DataType::Float64, true),
    ]))
}

/// `csv` as Parquet bytes, with one schema for every shard.
async fn to_parquet(csv: &str, schema: &Arc<Schema>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("part.csv");
    std::fs::write(&file, csv).unwrap();
    let ctx = SessionContext::new();
    let batches = ctx
        .read_csv(
            file.display().to_string(),
            CsvReadOptions::new().schema(schema),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema.clone(), None).unwrap();
    for batch in &batches {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
    out
}

/// The database's files under the layout dram reads (`format` "csv" or
/// "parquet"), and the same tables in `all/` for one process.
async fn database_files(all: &Path, format: &str) -> Vec<(String, Vec<u8>)> {
    let schema = sales_schema();
    let mut files = Vec::new();
    let mut put = |path: String, local: std::path::PathBuf, bytes: Vec<u8>| {
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        std::fs::write(&local, &bytes).unwrap();
        files.push((path, bytes));
    };
    for (table, text) in [("products", PRODUCTS), ("regions", REGIONS)] {
        let bytes = if format == "csv" {
            text.as_bytes().to_vec()
        } else {
            let ctx_schema = infer(text).await;
            to_parquet(text, &ctx_schema).await
        };
        put(
            format!("global/{table}/{table}.{format}"),
            all.join(format!("{table}/{table}.{format}")),
            bytes,
        );
    }
    for shard in 0..SHARDS {
        let text = sales_csv(shard);
        let bytes = if format == "csv" {
            text.into_bytes()
        } else {
            to_parquet(&text, &schema).await
        };
        put(
            format!("shards/{shard}/sales/part.{format}"),
            all.join(format!("sales/{shard}.{format}")),
            bytes,
        );
    }
    files
}

/// The schema DataFusion infers for a small CSV text.
async fn infer(text: &str) -> Arc<Schema> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.csv");
    std::fs::write(&file, text).unwrap();
    let ctx = SessionContext::new();
    let df = ctx
        .read_csv(file.display().to_string(), CsvReadOptions::new())
        .await
        .unwrap();
    Arc::new(df.schema().as_arrow().clone())
}

/// DataFusion's answer over every file in one process. (Over a folder,
/// DataFusion refuses CSV files inferred as integers in one and decimals in
/// another: the reference is told the sales schema dram works out alone.)
async fn reference(all: &Path, format: &str, sql: &str) -> Value {
    let ctx = SessionContext::new();
    let schema = sales_schema();
    for table in ["sales", "products", "regions"] {
        let dir = format!("{}/", all.join(table).display());
        if format == "csv" {
            let mut options = CsvReadOptions::new();
            if table == "sales" {
                options = options.schema(&schema);
            }
            ctx.register_csv(table, &dir, options).await
        } else {
            ctx.register_parquet(table, &dir, ParquetReadOptions::default())
                .await
        }
        .unwrap();
    }
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

/// Rows comparable across summation orders (floats to 9 significant digits),
/// sorted when the query does not order them.
fn comparable(sql: &str, rows: &Value) -> Vec<String> {
    fn round(value: &Value) -> Value {
        match value {
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or_default();
                json!(format!("{f:.9e}"))
            }
            Value::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), round(v))).collect())
            }
            other => other.clone(),
        }
    }
    let mut rows: Vec<String> = rows
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|row| round(row).to_string())
        .collect();
    if !sql.contains("ORDER BY") {
        rows.sort();
    }
    rows
}

async fn ask(
    client: &Client,
    database: &str,
    params: Value,
) -> Result<Value, dram::client::ClientError> {
    client
        .post(
            &format!("/v1/query/{database}/sql"),
            &json!({ "params": params }),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_answers_as_one_process_would() {
    let dir = tempfile::tempdir().unwrap();
    let members = members(dir.path(), 3).await;
    let clients: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    let store_config = members[0].server.node.config().store.clone();

    for (database, format, mode) in [
        ("shop", "csv", "full"),
        ("shop_pq", "parquet", "full"),
        ("shop_lazy", "parquet", "lazy"),
    ] {
        let all = dir.path().join(format!("all-{database}"));
        let files = database_files(&all, format).await;
        publish_owned(dir.path(), &store_config, database, &files, &[]).await;
        clients[0]
            .post(
                "/v1/databases",
                &json!({"name": database, "source": database, "replicas": 1, "mode": mode}),
            )
            .await
            .unwrap();
        let state = if mode == "lazy" { "lazy" } else { "ready" };
        on_all(&clients, 30, "every shard placed once", |c| {
            Box::pin(async move {
                let view = copies(c, database).await;
                view.len() == SHARDS
                    && view.values().all(|holders| {
                        holders.iter().filter(|(_, s)| s == state).count() == 1
                            || (state == "ready" && ready(holders).len() == 1)
                    })
            })
        })
        .await;

        for (i, sql) in QUERIES.iter().enumerate() {
            let expected = comparable(sql, &reference(&all, format, sql).await);
            // Each query through one member in turn (all three for the first).
            let through: Vec<&Client> = if i == 0 {
                clients.clone()
            } else {
                vec![clients[i % clients.len()]]
            };
            for client in through {
                let answer = ask(client, database, json!({"sql": sql}))
                    .await
                    .unwrap_or_else(|e| panic!("{database}: {sql}: {e}"));
                assert_eq!(
                    comparable(sql, &answer["result"]["rows"]),
                    expected,
                    "{database}: {sql}: {answer}"
                );
                assert_eq!(answer["meta"]["shards"], SHARDS, "{sql}");
            }
        }
        if mode == "lazy" {
            continue;
        }
        for (i, sql) in ACROSS_SHARDS.iter().chain(JOIN_SHAPES).enumerate() {
            let answer = ask(clients[i % clients.len()], database, json!({"sql": sql}))
                .await
                .unwrap_or_else(|e| panic!("{database}: {sql}: {e}"));
            assert_eq!(
                comparable(sql, &answer["result"]["rows"]),
                comparable(sql, &reference(&all, format, sql).await),
                "{database}: {sql}: {answer}"
            );
        }
    }

    // What cannot be split runs as an explicit pair: the shards' rows of
    // map_sql are table `partials` for reduce_sql.
    let all = dir.path().join("all-shop");
    let explicit = ask(
        clients[2],
        "shop",
        json!({
            "map_sql": "SELECT region, amount FROM sales WHERE amount IS NOT NULL",
            "reduce_sql": "SELECT region, approx_median(amount) AS m, count(*) AS n FROM partials GROUP BY region ORDER BY region NULLS FIRST",
        }),
    )
    .await
    .unwrap();
    let expected = reference(
        &all,
        "csv",
        "SELECT region, approx_median(amount) AS m, count(*) AS n FROM sales WHERE amount IS NOT NULL GROUP BY region ORDER BY region NULLS FIRST",
    )
    .await;
    assert_eq!(
        comparable("ORDER BY", &explicit["result"]["rows"]),
        comparable("ORDER BY", &expected),
        "{explicit}"
    );
    // reduce_sql reads the global tables too.
    let explicit = ask(
        clients[1],
        "shop",
        json!({
            "map_sql": "SELECT product FROM sales",
            "reduce_sql": "SELECT p.category, count(*) AS n FROM partials x JOIN products p ON x.product = p.product GROUP BY p.category ORDER BY p.category",
        }),
    )
    .await
    .unwrap();
    let expected = reference(
        &all,
        "csv",
        "SELECT p.category, count(*) AS n FROM sales s JOIN products p ON s.product = p.product GROUP BY p.category ORDER BY p.category",
    )
    .await;
    assert_eq!(explicit["result"]["rows"], expected, "{explicit}");
    for (params, named) in [
        (
            json!({"sql": "SELECT 1", "map_sql": "SELECT 1"}),
            "not both",
        ),
        (json!({"map_sql": "SELECT 1"}), "missing sql"),
        (json!({"sql": "SELEKT 1"}), "SELEKT"),
        (json!({"sql": "SELECT * FROM nowhere"}), "nowhere"),
        (json!({"query": "SELECT 1"}), "unknown field"),
    ] {
        let message = expect_error(
            ask(clients[0], "shop", params.clone()).await,
            400,
            "invalid_params",
        );
        assert!(message.contains(named), "{params}: {message}");
    }

    // Hostile SQL: nothing is written or defined, deep expressions are a
    // 400 (they used to overflow a worker's stack and abort the node).
    let written = dir.path().join("written.csv");
    for (sql, code, named) in [
        (
            format!("COPY (SELECT 'x') TO '{}'", written.display()),
            "read_only",
            "COPY",
        ),
        (
            "CREATE EXTERNAL TABLE secret STORED AS CSV LOCATION '/etc/passwd'".to_string(),
            "read_only",
            "CREATE EXTERNAL TABLE",
        ),
        (
            "SET datafusion.execution.target_partitions = 1".to_string(),
            "read_only",
            "SET",
        ),
        (
            format!("SELECT {} AS n", vec!["1"; 1_000].join("+")),
            "invalid_params",
            "chains more than",
        ),
        (
            format!(
                "SELECT count(*) AS n FROM sales WHERE {}",
                vec!["id > 0"; 1_500].join(" AND ")
            ),
            "invalid_params",
            "chains more than",
        ),
    ] {
        for (i, client) in clients.iter().enumerate() {
            let params = if i == 2 {
                json!({"map_sql": sql, "reduce_sql": "SELECT 1"})
            } else {
                json!({"sql": sql})
            };
            let message = expect_error(ask(client, "shop", params).await, 400, code);
            assert!(message.contains(named), "{sql:.80}: {message}");
        }
    }
    assert!(!written.exists(), "COPY wrote a file");
    let n = ask(clients[0], "shop", json!({"sql": "SELECT 1+1+1 AS n"}))
        .await
        .unwrap();
    assert_eq!(
        n["result"]["rows"],
        json!([{"n": 3}]),
        "the node still answers"
    );

    // The command line (not a terminal: JSON rows).
    let sql = QUERIES[1];
    let printed = dram_cli(&["sql", "shop", sql], &members[1].server.url()).await;
    let rows: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        comparable(sql, &rows),
        comparable(sql, &reference(&all, "csv", sql).await),
        "{printed}"
    );

    let printed = dram_cli(
        &[
            "sql",
            "shop",
            "--map",
            "SELECT amount FROM sales",
            "--reduce",
            "SELECT count(*) AS n FROM partials",
        ],
        &members[2].server.url(),
    )
    .await;
    let rows: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        rows,
        reference(&all, "csv", "SELECT count(*) AS n FROM sales").await
    );

    // What there is: SHOW TABLES, information_schema, DESCRIBE; a missing
    // table's error lists the tables there are.
    let shown = ask(clients[1], "shop", json!({"sql": "SHOW TABLES"}))
        .await
        .unwrap();
    let mut names: Vec<&str> = shown["result"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["table_schema"] == "public")
        .filter_map(|row| row["table_name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["products", "regions", "sales"], "{shown}");
    let columns = ask(
        clients[2],
        "shop",
        json!({"sql": "SELECT column_name FROM information_schema.columns WHERE table_name = 'regions' ORDER BY ordinal_position"}),
    )
    .await
    .unwrap();
    assert_eq!(
        columns["result"]["rows"],
        json!([{"column_name": "code"}, {"column_name": "name"}]),
        "{columns}"
    );
    let described = ask(clients[0], "shop", json!({"sql": "DESCRIBE products"}))
        .await
        .unwrap();
    assert_eq!(
        described["result"]["rows"].as_array().unwrap().len(),
        3,
        "{described}"
    );
    let missing = ask(clients[0], "shop", json!({"sql": "SELECT * FROM nowhere"})).await;
    let message = expect_error(missing, 400, "invalid_params");
    assert!(
        message.contains("nowhere") && message.contains("products, regions, sales"),
        "{message}"
    );

    // Answers keep SELECT's column order; decimals and integers past 2^53
    // keep every digit (as text); NULLs are left out of their row. The same
    // over HTTP (rows written straight from Arrow) and in the process.
    let sql = "SELECT 9007199254740993 AS z_big, CAST('12345678901234567.89' AS DECIMAL(38, 2)) \
               AS a_dec, 7 AS m_small, -9007199254740993 AS neg, 9007199254740992 AS edge, \
               CAST(NULL AS BIGINT) AS gone";
    let exact = ask(clients[1], "shop", json!({ "sql": sql }))
        .await
        .unwrap();
    assert_eq!(
        exact["result"]["columns"],
        json!(["z_big", "a_dec", "m_small", "neg", "edge", "gone"])
    );
    assert_eq!(
        exact["result"]["rows"].to_string(),
        r#"[{"z_big":"9007199254740993","a_dec":"12345678901234567.89","m_small":7,"neg":"-9007199254740993","edge":9007199254740992}]"#
    );
    let in_process = members[1]
        .server
        .node
        .query(
            "shop",
            "sql",
            dram::query::QueryRequest {
                params: Some(json!({ "sql": sql })),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(in_process.result.to_string(), exact["result"].to_string());
    assert_eq!(exact["meta"]["database"], in_process.meta.database.as_str());

    // Arrow IPC when asked for: the same rows, typed as DataFusion typed them.
    let sql = QUERIES[1];
    let url = format!("{}/v1/query/shop/sql", members[0].server.url());
    let response = reqwest::Client::new()
        .post(&url)
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"params": {"sql": sql}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let meta: Value =
        serde_json::from_str(response.headers()["x-dram-meta"].to_str().unwrap()).unwrap();
    assert_eq!(meta["shards"], SHARDS);
    let bytes = response.bytes().await.unwrap();
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(bytes.as_ref(), None).unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let mut writer = ArrayWriter::new(Vec::new());
    writer
        .write_batches(&batches.iter().collect::<Vec<_>>())
        .unwrap();
    writer.finish().unwrap();
    let rows: Value = serde_json::from_slice(&writer.into_inner()).unwrap();
    assert_eq!(
        comparable(sql, &rows),
        comparable(sql, &reference(&all, "csv", sql).await)
    );

    // Tables as single files, and TSV and JSON lines.
    publish(
        dir.path(),
        &store_config,
        "flat",
        &[
            (
                "shards/north/sales.csv",
                b"id,amount\n1,2.5\n2,4\n".as_slice(),
            ),
            ("shards/south/sales.csv", b"id,amount\n3,1\n".as_slice()),
            (
                "shards/north/visits/a.tsv",
                b"page\tn\nhome\t3\n".as_slice(),
            ),
            (
                "shards/south/visits/b.tsv",
                b"page\tn\nhome\t4\nshop\t1\n".as_slice(),
            ),
            (
                "shards/north/events.jsonl",
                b"{\"kind\":\"click\",\"n\":2}\n".as_slice(),
            ),
            (
                "shards/south/events.jsonl",
                b"{\"kind\":\"view\",\"n\":5}\n{\"kind\":\"click\",\"n\":1}\n".as_slice(),
            ),
            (
                "global/products.csv",
                b"id,name\n1,kite\n3,ball\n".as_slice(),
            ),
            ("shards/north/README.txt", b"not a table".as_slice()),
        ],
    )
    .await;
    clients[0]
        .post("/v1/databases", &json!({"name": "flat", "source": "flat"}))
        .await
        .unwrap();
    crate::support::wait_loaded(clients[0], "flat").await;
    for (sql, expected) in [
        (
            "SELECT count(*) AS n, sum(amount) AS total FROM sales",
            json!([{"n": 3, "total": 7.5}]),
        ),
        (
            "SELECT page, sum(n) AS n FROM visits GROUP BY page ORDER BY page",
            json!([{"page": "home", "n": 7}, {"page": "shop", "n": 1}]),
        ),
        (
            "SELECT kind, sum(n) AS n FROM events GROUP BY kind ORDER BY kind",
            json!([{"kind": "click", "n": 3}, {"kind": "view", "n": 5}]),
        ),
        (
            "SELECT p.name, s.amount FROM sales s JOIN products p ON s.id = p.id ORDER BY p.name",
            json!([{"name": "ball", "amount": 1.0}, {"name": "kite", "amount": 2.5}]),
        ),
        (
            "SELECT name FROM products ORDER BY name",
            json!([{"name": "ball"}, {"name": "kite"}]),
        ),
    ] {
        // Through every member: two shards on three members leave one
        // holding nothing of `flat`, which reads every file from a holder
        // (GET /v1/internal/file). Each member computes (no result cache:
        // the first answer would be a hit on the others).
        for client in &clients {
            let answer = client
                .post(
                    "/v1/query/flat/sql",
                    &json!({"params": {"sql": sql}, "cache": false}),
                )
                .await
                .unwrap();
            assert_eq!(answer["result"]["rows"], expected, "{sql}: {answer}");
        }
    }
    let held = copies(clients[0], "flat").await;
    let holders: std::collections::BTreeSet<&str> = held
        .values()
        .flatten()
        .map(|(node, _)| node.as_str())
        .collect();
    assert!(holders.len() < 3, "{held:?}");
    // The member holding none of it read from holders (counted).
    let stranger = members
        .iter()
        .find(|m| !holders.contains(m.server.node.id()))
        .unwrap();
    let metrics = crate::support::metrics_text(&stranger.server.url()).await;
    assert!(
        metrics.contains(r#"dram_sql_remote_read_bytes_total{part="shard"}"#)
            && metrics.contains(r#"dram_sql_remote_read_bytes_total{part="global"}"#),
        "{metrics}"
    );

    // The SQL worker is node-to-node: a call without the cluster secret is
    // refused; with it, answered.
    let cluster = clients[0].get("/v1/cluster").await.unwrap();
    let worker = cluster["members"][0]["node"]["sql"]
        .as_str()
        .unwrap_or_else(|| panic!("no worker address gossiped: {cluster}"))
        .to_string();
    for secret in [None, Some("wrong"), Some(crate::cluster::SECRET)] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{worker}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let header = secret.map(|s| http::HeaderValue::from_str(&format!("Bearer {s}")).unwrap());
        let channel = tower::ServiceBuilder::new()
            .map_request(move |mut request: http::Request<tonic::body::Body>| {
                if let Some(header) = &header {
                    request
                        .headers_mut()
                        .insert("authorization", header.clone());
                }
                request
            })
            .service(channel);
        let mut client = datafusion_distributed::grpc::create_worker_client(
            datafusion_distributed::grpc::BoxCloneSyncChannel::new(channel),
        );
        let answer = client
            .get_worker_info(datafusion_distributed::GetWorkerInfoRequest {})
            .await;
        match secret {
            Some(crate::cluster::SECRET) => assert!(answer.is_ok(), "{:?}", answer.err()),
            _ => {
                let refused = answer.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(refused.contains("cluster secret"), "{secret:?}: {refused}");
            }
        }
    }

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
    clients[0]
        .post(
            "/v1/databases",
            &json!({"name": "mixed", "source": "mixed"}),
        )
        .await
        .unwrap();
    crate::support::wait_loaded(clients[0], "mixed").await;
    let mixed = ask(clients[0], "mixed", json!({"sql": "SELECT * FROM t"})).await;
    let message = expect_error(mixed, 400, "invalid_params");
    assert!(
        message.contains("table t mixes CSV and Parquet"),
        "{message}"
    );
}
