//! The PostgreSQL protocol with the real clients: Debian's `psql` and PyPI's
//! psycopg (3, in `tests/venv`, which `.ci/run` makes), against 3 members
//! whose shards each hold one copy. Every answer is compared with the HTTP
//! `sql` answer to the same query.

use std::path::{Path, PathBuf};
use std::process::Output;

use dram::client::Client;
use serde_json::{Value, json};

use crate::cluster::{members_with, on_all};
use crate::support::{copies, publish, ready};

const ADMIN: &str = "pg-admin-token";
const SHARDS: usize = 3;

fn sales(shard: usize) -> String {
    let mut csv = String::from("region,amount,day\n");
    for i in 0..40 {
        let region = ["eu", "us", "asia"][(i + shard) % 3];
        csv.push_str(&format!(
            "{region},{},2024-0{}-1{}\n",
            i * 7 + shard,
            1 + i % 9,
            i % 10
        ));
    }
    csv
}

const REGIONS: &str = "code,name\neu,Europe\nus,Americas\nasia,Asia\n";

/// What Grafana's PostgreSQL data source asks when a panel is edited: its
/// table list and a table's columns (as datafusion-postgres's fixtures
/// replay them).
const GRAFANA: &[&str] = &[
    "SELECT 1",
    r#"SELECT
        CASE WHEN
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              )
          THEN quote_ident(table_name)
          ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
        END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog',
          '_timescaledb_cache', '_timescaledb_catalog', '_timescaledb_internal',
          '_timescaledb_config', 'timescaledb_information', 'timescaledb_experimental')
        ORDER BY 1"#,
    r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE
          CASE WHEN array_length(parse_ident('public.sales'),1) = 2
            THEN quote_ident(table_schema) = (parse_ident('public.sales'))[1]
              AND quote_ident(table_name) = (parse_ident('public.sales'))[2]
            ELSE quote_ident(table_name) = 'public.sales'
          END"#,
];

/// What Metabase asks when it syncs a PostgreSQL database.
const METABASE: &[&str] = &[
    "SET extra_float_digits = 2",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    r#"SELECT nspname AS "TABLE_SCHEM", current_database() AS "TABLE_CATALOG"
       FROM pg_catalog.pg_namespace WHERE nspname <> 'pg_toast'
       AND (nspname !~ '^pg_temp_' OR nspname = (pg_catalog.current_schemas(true))[1])
       ORDER BY "TABLE_SCHEM""#,
    "show timezone",
];

/// What DBeaver (PostgreSQL JDBC) asks when it connects and opens the
/// database's tree.
const DBEAVER: &[&str] = &[
    "SET extra_float_digits = 3",
    "SET application_name = 'DBeaver 25.1.5 - Main <shop>'",
    "SELECT current_schema(),session_user",
    "SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n \
     LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 \
     AND d.classoid='pg_namespace'::regclass ORDER BY nspname",
    "SELECT n.nspname = ANY(current_schemas(true)), n.nspname, t.typname \
     FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid \
     WHERE t.oid = 1034",
    "SHOW search_path",
    "SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datname='shop'",
    "SELECT * FROM pg_catalog.pg_settings where name='standard_conforming_strings'",
    "SELECT version()",
    "SELECT * FROM pg_catalog.pg_enum WHERE 1<>1 LIMIT 1",
    "SELECT reltype FROM pg_catalog.pg_class WHERE 1<>1 LIMIT 1",
    "SELECT c.oid,c.*,d.description FROM pg_catalog.pg_class c \
     LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=c.oid AND d.objsubid=0 \
     AND d.classoid='pg_class'::regclass WHERE c.relkind not in ('i','I','c')",
];

/// Rows per region in the files, named as `regions.csv` names them, as
/// psql prints `name|count`.
fn regions_counted() -> String {
    let mut counts = std::collections::BTreeMap::new();
    for shard in 0..SHARDS {
        for line in sales(shard).lines().skip(1) {
            let code = line.split(',').next().unwrap();
            let name = REGIONS
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{code},")))
                .unwrap();
            *counts.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    counts
        .iter()
        .map(|(name, n)| format!("{name}|{n}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs psql with `args` against `url` (unaligned, tuples only, `|` between
/// columns, SQLSTATEs in errors).
pub(crate) async fn psql(url: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new("psql");
    command
        .arg(url)
        .args(["-X", "-A", "-t", "-F", "|", "-v", "VERBOSITY=verbose"])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10");
    tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .expect("psql answers within 60 s")
        .expect("psql runs (Debian's postgresql-client; .ci/run installs it)")
}

pub(crate) fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The HTTP `sql` answer's rows as psql prints them unaligned.
async fn http_rows(client: &Client, database: &str, sql: &str) -> String {
    let answer = client
        .post(
            &format!("/v1/query/{database}/sql"),
            &json!({"params": {"sql": sql}}),
        )
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let cell = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // Each row an object, NULLs left out: in the order of `columns`.
    let columns: Vec<&str> = answer["result"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    answer["result"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| cell(row.get(*c).unwrap_or(&Value::Null)))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/venv/bin/python")
}

/// Runs a psycopg script (`conninfo` in its environment) and parses the
/// JSON it prints.
async fn psycopg(conninfo: &str, script: &str) -> Value {
    psycopg_with(conninfo, script, &[]).await
}

/// [`psycopg`], with more in the script's environment.
async fn psycopg_with(conninfo: &str, script: &str, env: &[(&str, &str)]) -> Value {
    let queries: Vec<&str> = GRAFANA
        .iter()
        .chain(DBEAVER)
        .chain(METABASE)
        .copied()
        .collect();
    let output = tokio::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .env("CONNINFO", conninfo)
        .env("QUERIES", serde_json::to_string(&queries).unwrap())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("tests/venv has python with psycopg (.ci/run makes it)");
    assert!(
        output.status.success(),
        "psycopg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_clients_get_the_http_answers_from_any_member() {
    let dir = tempfile::tempdir().unwrap();
    let members = members_with(dir.path(), 3, |config| {
        config.auth.admin_token = Some(ADMIN.into());
    })
    .await;
    let clients: Vec<Client> = members
        .iter()
        .map(|m| Client::new(&m.server.url()).with_token(Some(ADMIN.into())))
        .collect();
    let store = members[0].server.node.config().store.clone();
    let shards: Vec<(String, String)> = (0..SHARDS)
        .map(|i| (format!("shards/s{i}/sales.csv"), sales(i)))
        .collect();
    let mut files: Vec<(&str, &[u8])> = shards
        .iter()
        .map(|(path, csv)| (path.as_str(), csv.as_bytes()))
        .collect();
    files.push(("global/regions.csv", REGIONS.as_bytes()));
    publish(dir.path(), &store, "shop", &files).await;
    publish(
        dir.path(),
        &store,
        "other",
        &[("shards/a/x.csv", b"a\n1\n")],
    )
    .await;
    for database in ["shop", "other"] {
        clients[0]
            .post(
                "/v1/databases",
                &json!({"name": database, "source": database, "replicas": 1}),
            )
            .await
            .unwrap();
    }
    let refs: Vec<&Client> = clients.iter().collect();
    on_all(&refs, 30, "every shard of shop ready once", |c| {
        Box::pin(async move {
            let view = copies(c, "shop").await;
            view.len() == SHARDS && view.values().all(|holders| ready(holders).len() == 1)
        })
    })
    .await;

    for (i, member) in members.iter().enumerate() {
        let port = member.server.pg_addr().expect("pg listens").port();
        let url = format!("host=127.0.0.1 port={port} dbname=shop user=dram password={ADMIN}");
        for sql in [
            "SELECT region, count(*) AS n, sum(amount) AS total FROM sales GROUP BY region ORDER BY region",
            "SELECT r.name, max(s.amount) AS top FROM sales s JOIN regions r ON s.region = r.code \
             GROUP BY r.name ORDER BY r.name",
        ] {
            let expected = http_rows(&clients[i], "shop", sql).await;
            assert!(!expected.is_empty(), "{sql}");
            assert_eq!(stdout(&psql(&url, &["-c", sql]).await), expected, "{sql}");
        }
        // A custom analysis as a table, alone and joined with a table:
        // `group`'s counts per region, as the files have them.
        let analysis = stdout(
            &psql(
                &url,
                &[
                    "-c",
                    r#"SELECT r.name, g.count FROM dram_analysis('group', '{"by": "region"}') g
                       JOIN regions r ON g."key.region" = r.code ORDER BY r.name"#,
                ],
            )
            .await,
        );
        assert_eq!(analysis, regions_counted(), "{analysis}");
        if i == 0 {
            let over_http = http_rows(
                &clients[0],
                "shop",
                r#"SELECT r.name, g.count FROM dram_analysis('group', '{"by": "region"}') g
                   JOIN regions r ON g."key.region" = r.code ORDER BY r.name"#,
            )
            .await;
            assert_eq!(over_http, analysis);
            for (sql, says) in [
                ("SELECT * FROM dram_analysis('nope')", "nope"),
                (
                    "SELECT * FROM dram_analysis('sql', '{}')",
                    "write the query directly",
                ),
                (
                    "SELECT * FROM dram_analysis('group', '{by')",
                    "params is JSON",
                ),
                (
                    "SELECT * FROM dram_analysis('group', '{\"by\": 1}')",
                    "group",
                ),
                ("SELECT * FROM dram_analysis(1)", "text literals"),
            ] {
                let out = psql(&url, &["-c", sql]).await;
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(!out.status.success() && err.contains(says), "{sql}: {err}");
            }
        }
        let tables = stdout(&psql(&url, &["-c", "\\dt"]).await);
        assert!(
            tables.contains("|sales|table|") && tables.contains("|regions|table|"),
            "{tables}"
        );
    }

    // `\l` lists the databases (the admin token sees them all), `\d` a
    // table's columns.
    let port = members[0].server.pg_addr().unwrap().port();
    let url = format!("host=127.0.0.1 port={port} dbname=shop user=dram password={ADMIN}");
    let listed = stdout(&psql(&url, &["-c", "\\l"]).await);
    let names: Vec<&str> = listed.lines().filter_map(|l| l.split('|').next()).collect();
    assert!(
        names.contains(&"shop") && names.contains(&"other"),
        "{listed}"
    );
    let described = stdout(&psql(&url, &["-c", "\\d sales"]).await);
    let columns: Vec<&str> = described
        .lines()
        .filter_map(|l| l.split('|').next())
        .collect();
    assert_eq!(columns, ["region", "amount", "day"], "{described}");

    // Writes are refused, with SQLSTATE 25006, and change nothing.
    for write in [
        "INSERT INTO sales VALUES ('eu', 1, '2024-01-01')",
        "COPY (SELECT 'x') TO '/tmp/dram-pg-copy.csv'",
        "CREATE TABLE t (a INT)",
    ] {
        let out = psql(&url, &["-c", write]).await;
        assert!(!out.status.success(), "{write}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("25006"), "{write}: {err}");
    }
    assert!(!Path::new("/tmp/dram-pg-copy.csv").exists());
    let out = psql(&url, &["-c", "SELEC 1"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("42601"));
    let out = psql(&url, &["-c", "SELECT * FROM nope"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("42P01"));

    // Passwords: a wrong one, and a signed token for another database, are
    // refused; a token for shop opens shop.
    let wrong = format!("host=127.0.0.1 port={port} dbname=shop user=dram password=nope");
    let out = psql(&wrong, &["-c", "SELECT 1"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = |database: &'static str| {
        let client = &clients[0];
        async move {
            client
                .post("/v1/tokens", &json!({"database": database, "ttl": 600}))
                .await
                .unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let other = token("other").await;
    let out = psql(
        &format!("host=127.0.0.1 port={port} dbname=shop user=dram password={other}"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("this token opens \"other\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shop = token("shop").await;
    let out = psql(
        &format!("host=127.0.0.1 port={port} dbname=shop user=dram password={shop}"),
        &["-c", "SELECT count(*) FROM sales"],
    )
    .await;
    assert_eq!(stdout(&out), (SHARDS * 40).to_string());
    let out = psql(
        &format!("host=127.0.0.1 port={port} dbname=gone user=dram password={ADMIN}"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    // psycopg: a prepared statement with a parameter; exact decimals, dates,
    // timestamps, booleans, text, big integers and NULL, as answers and as
    // parameters.
    let conninfo = format!("host=127.0.0.1 port={port} dbname=shop user=dram password={ADMIN}");
    let answer = psycopg(
        &conninfo,
        r#"
import datetime, decimal, json, os, psycopg
with psycopg.connect(os.environ["CONNINFO"]) as conn, conn.cursor() as cur:
    out = {}
    cur.execute("SELECT region, count(*) FROM sales WHERE amount > %s GROUP BY region ORDER BY region", (100,))
    out["over_100"] = [list(r) for r in cur.fetchall()]
    cur.execute("SELECT CAST('12345678901234.56789' AS DECIMAL(20,5)), DATE '2024-02-29', true, "
                "CAST(NULL AS INT), CAST('2024-02-29 13:45:07.123456' AS TIMESTAMP), 'naïve ☕', "
                "CAST(-9007199254740993 AS BIGINT)")
    d, day, b, n, ts, text, big = cur.fetchone()
    out["types"] = [str(d), day.isoformat(), b, n, ts.isoformat(), text, str(big)]
    cur.execute("SELECT %s::TIMESTAMP, %s::DECIMAL(20,5), %s::DATE",
                (datetime.datetime(2024, 2, 29, 13, 45, 7, 123456), decimal.Decimal("12345678901234.56789"),
                 datetime.date(2024, 2, 29)))
    ts, d, day = cur.fetchone()
    out["bound"] = [ts.isoformat(), str(d), day.isoformat()]
    try:
        cur.execute("INSERT INTO sales VALUES ('eu', 1, '2024-01-01')")
    except psycopg.Error as e:
        out["insert"] = e.sqlstate
print(json.dumps(out))
"#,
    )
    .await;
    let expected = http_rows(
        &clients[0],
        "shop",
        "SELECT region, count(*) FROM sales WHERE amount > 100 GROUP BY region ORDER BY region",
    )
    .await;
    let got: Vec<String> = answer["over_100"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}|{}", r[0].as_str().unwrap(), r[1]))
        .collect();
    assert_eq!(got.join("\n"), expected);
    assert_eq!(
        answer["types"],
        json!([
            "12345678901234.56789",
            "2024-02-29",
            true,
            null,
            "2024-02-29T13:45:07.123456",
            "naïve ☕",
            "-9007199254740993"
        ])
    );
    assert_eq!(
        answer["bound"],
        json!([
            "2024-02-29T13:45:07.123456",
            "12345678901234.56789",
            "2024-02-29"
        ])
    );
    assert_eq!(answer["insert"], "25006");

    // Parameters of every common type, bound by psycopg (the extended
    // protocol), give the answer of the same query written with literals;
    // a prepared statement runs twice.
    let answer = psycopg(
        &conninfo,
        r#"
import datetime, decimal, json, os, psycopg
with psycopg.connect(os.environ["CONNINFO"]) as conn, conn.cursor() as cur:
    out = {}
    sql = "SELECT count(*), sum(amount) FROM sales WHERE region = %s AND day >= %s AND amount < %s AND (amount > %s) = %s"
    params = ("eu", datetime.date(2024, 3, 1), decimal.Decimal("150.5"), 20, True)
    out["typed"] = [list(cur.execute(sql, params, prepare=True).fetchone()) for _ in range(2)]
    cur.execute("SELECT region, amount FROM sales ORDER BY amount DESC, region LIMIT %s", (4,))
    out["limit"] = [list(r) for r in cur.fetchall()]
    cur.execute("SELECT count(*) FROM sales WHERE region = %s", (None,))
    out["null"] = cur.fetchone()[0]
    print(json.dumps(out))
"#,
    )
    .await;
    let typed = http_rows(
        &clients[0],
        "shop",
        "SELECT count(*), sum(amount) FROM sales WHERE region = 'eu' AND day >= DATE '2024-03-01' \
         AND amount < 150.5 AND (amount > 20) = true",
    )
    .await;
    for got in answer["typed"].as_array().unwrap() {
        assert_eq!(format!("{}|{}", got[0], got[1]), typed, "{answer}");
    }
    let limit = http_rows(
        &clients[0],
        "shop",
        "SELECT region, amount FROM sales ORDER BY amount DESC, region LIMIT 4",
    )
    .await;
    let got: Vec<String> = answer["limit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}|{}", r[0].as_str().unwrap(), r[1]))
        .collect();
    assert_eq!(got.join("\n"), limit);
    assert_eq!(answer["null"], 0);

    // A larger answer (14,400 rows of a join across every member) comes
    // whole, row by row: the count and sum psycopg makes equal the HTTP
    // answer's.
    let answer = psycopg(
        &conninfo,
        r#"
import json, os, psycopg
with psycopg.connect(os.environ["CONNINFO"]) as conn, conn.cursor() as cur:
    rows, total = 0, 0
    for a, b in cur.stream("SELECT s.amount AS a, t.amount AS b FROM sales s CROSS JOIN sales t"):
        rows += 1
        total += a * b
    print(json.dumps([rows, total]))
"#,
    )
    .await;
    let expected = http_rows(
        &clients[0],
        "shop",
        "SELECT count(*), sum(s.amount * t.amount) FROM sales s CROSS JOIN sales t",
    )
    .await;
    assert_eq!(format!("{}|{}", answer[0], answer[1]), expected);

    // The startup and browsing queries of Grafana and DBeaver answer, over
    // both protocols; Grafana's lists the tables and a table's columns.
    for sql in GRAFANA.iter().chain(DBEAVER).chain(METABASE) {
        stdout(&psql(&url, &["-c", sql]).await);
    }
    let answer = psycopg(
        &conninfo,
        r#"
import json, os, psycopg
out = {"failed": []}
with psycopg.connect(os.environ["CONNINFO"], autocommit=True) as conn:
    for i, sql in enumerate(json.loads(os.environ["QUERIES"])):
        try:
            cur = conn.execute(sql)
            out[str(i)] = [[str(v) for v in r] for r in cur.fetchall()] if cur.description else []
        except psycopg.Error as e:
            out["failed"].append([sql, e.sqlstate, str(e)])
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(answer["failed"], json!([]), "{answer}");
    let tables: Vec<&str> = answer["1"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().trim_start_matches("public."))
        .collect();
    assert_eq!(tables, ["regions", "sales"], "{answer}");
    let columns: Vec<&str> = answer["2"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["region", "amount", "day"]);
}

/// A member's PostgreSQL connections are bounded: one past
/// `pg.max_connections` is refused (SQLSTATE 53300) and counted connections
/// show in `/metrics`; one that runs nothing for `pg.idle_timeout_secs` is
/// closed, while one that keeps running statements stays open; a catalog
/// query past `query.timeout_ms` is cancelled (57014).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_and_idle_ones_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::config(dir.path());
    config.pg.max_connections = 2;
    config.pg.idle_timeout_secs = 1;
    config.query.timeout_ms = 3000;
    let (server, client) =
        crate::support::serve(dram::builtin::register(dram::Node::builder(config))).await;
    let store = server.node.config().store.clone();
    publish(
        dir.path(),
        &store,
        "shop",
        &[("shards/a/sales.csv", sales(0).as_bytes())],
    )
    .await;
    client
        .post("/v1/databases", &json!({"name": "shop", "source": "shop"}))
        .await
        .unwrap();
    crate::support::eventually(30, "shop ready", || async {
        client.get("/v1/databases/shop").await.unwrap()["state"] == "ready"
    })
    .await;
    let port = server.pg_addr().unwrap().port();
    let metrics = format!("{}/metrics", server.url());
    let answer = psycopg_with(
        &format!("host=127.0.0.1 port={port} dbname=shop user=dram"),
        r#"
import json, os, time, urllib.request, psycopg
out = {}
busy = psycopg.connect(os.environ["CONNINFO"], autocommit=True)
idle = psycopg.connect(os.environ["CONNINFO"], autocommit=True)
try:
    psycopg.connect(os.environ["CONNINFO"])
except psycopg.OperationalError as e:
    out["third"] = str(e)
out["metrics"] = [l for l in urllib.request.urlopen(os.environ["METRICS"]).read().decode().splitlines()
                  if l.startswith("dram_pg_connections")]
for _ in range(10):
    out["busy"] = busy.execute("SELECT count(*) FROM sales").fetchone()[0]
    time.sleep(0.25)
# A catalog query past query.timeout_ms is cancelled too; the connection goes on.
started = time.time()
try:
    busy.execute("SELECT count(*) FROM pg_catalog.pg_class a, pg_catalog.pg_class b, "
                 "pg_catalog.pg_class c, pg_catalog.pg_class d, pg_catalog.pg_class e").fetchall()
except psycopg.Error as e:
    out["late"] = e.sqlstate
out["late_s"] = time.time() - started
out["after"] = busy.execute("SELECT count(*) FROM sales").fetchone()[0]
try:
    idle.execute("SELECT 1")
    out["idle"] = "open"
except psycopg.OperationalError as e:
    out["idle"] = "closed"
print(json.dumps(out))
"#,
        &[("METRICS", &metrics)],
    )
    .await;
    let third = answer["third"].as_str().unwrap_or_default();
    assert!(third.contains("too many connections"), "{answer}");
    assert_eq!(
        answer["metrics"],
        json!(["dram_pg_connections 2"]),
        "{answer}"
    );
    assert_eq!(answer["busy"], 40, "{answer}");
    assert_eq!(answer["late"], "57014", "{answer}");
    assert!(answer["late_s"].as_f64().unwrap() < 30.0, "{answer}");
    assert_eq!(answer["after"], 40, "{answer}");
    assert_eq!(answer["idle"], "closed", "{answer}");
    server.shutdown().await;
}
