//! TPC-H (scale 0.01, generated here) on three real members: all 22 queries
//! as written, in two layouts (lineitem and orders co-located by orderkey and
//! declared so in the manifest, so joins on it run shard by shard,
//! and scattered with no key lined up with a shard), each answer equal to
//! one-process DataFusion's over the same rows. The plans are distributed:
//! stages run on the members holding the shards. Every join repartitions
//! both of its sides across the members (`sql.broadcast_join_bytes` = 1),
//! the path where a wrong answer would hide; the default sends small sides
//! to every task (`sql.rs` and `simulations bench --only tpch` check those
//! answers). With two copies of every shard, a member that dies
//! unannounced costs no answer.

use serde_json::{Value, json};

use crate::cluster::{members_with, on_all};
use crate::support::{copies, publish_owned, ready};

#[path = "../../simulations/src/tpch.rs"]
mod generated;

use generated::{Layout, QUERIES};

const SHARDS: u64 = 6;

/// Asks `client` for `sql` over `database` and checks the answer is
/// one-process DataFusion's over the same rows (`ctx`); `what` names the
/// query in a failure.
async fn answers_as_datafusion(
    ctx: &datafusion::prelude::SessionContext,
    client: &dram::client::Client,
    database: &str,
    sql: &str,
    what: &str,
) -> Value {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let answer = ask(client, database, sql)
        .await
        .unwrap_or_else(|e| panic!("{database}, {what}: {e}"));
    generated::same_answer(
        sql,
        &answer["result"]["rows"],
        &generated::rows_json(&batches),
    )
    .unwrap_or_else(|e| panic!("{database}, {what}: {e}\n{answer}"));
    answer
}

/// Asks `client` for `sql` over `database`.
async fn ask(
    client: &dram::client::Client,
    database: &str,
    sql: impl std::fmt::Display,
) -> Result<Value, dram::client::ClientError> {
    client
        .post(
            &format!("/v1/query/{database}/sql"),
            &json!({"params": {"sql": sql.to_string()}}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_22_tpch_queries_answer_as_one_process_would() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = members_with(dir.path(), 3, |config| {
        config.sql.broadcast_join_bytes = 1;
    })
    .await;
    let store_config = members[0].server.node.config().store.clone();

    for (done, (database, layout, replicas)) in [
        ("tpch_colocated", Layout::Colocated, 1),
        ("tpch_scattered", Layout::Scattered, 1),
        ("tpch_replicated", Layout::Scattered, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let clients: Vec<&dram::client::Client> = members.iter().map(|m| &m.client).collect();
        let reference = dir.path().join(format!("reference-{database}"));
        let files = generated::database(0.01, SHARDS, layout, &reference);
        // The co-located layout says so in its manifest: joins and groups on
        // orderkey then run shard by shard.
        let shard_keys: &[(&str, &str)] = match layout {
            Layout::Colocated => &generated::SHARD_KEYS,
            Layout::Scattered => &[],
        };
        publish_owned(dir.path(), &store_config, database, &files, shard_keys).await;
        clients[0]
            .post(
                "/v1/databases",
                &json!({"name": database, "source": database, "replicas": replicas}),
            )
            .await
            .unwrap();
        on_all(&clients, 60, "every shard placed", |c| {
            Box::pin(async move {
                let view = copies(c, database).await;
                view.len() == SHARDS as usize && view.values().all(|h| ready(h).len() == replicas)
            })
        })
        .await;

        let ctx = generated::reference_context(&reference).await;
        if replicas > 1 {
            // A member dies (unannounced: its peers have not noticed yet).
            // Its part of each query runs again on the other holders.
            let n3 = members.pop().unwrap();
            n3.server.shutdown_unannounced().await;
            for (i, sql) in QUERIES.iter().enumerate().take(5) {
                let what = format!("Q{} without n3", i + 1);
                answers_as_datafusion(&ctx, &members[i % 2].client, database, sql, &what).await;
            }
            break;
        }
        for (i, sql) in QUERIES.iter().enumerate() {
            let client = clients[i % clients.len()];
            let answer =
                answers_as_datafusion(&ctx, client, database, sql, &format!("Q{}", i + 1)).await;
            assert_eq!(answer["meta"]["shards"], SHARDS, "Q{}", i + 1);
        }

        // Every shard scan ran on a holder of its shard: what a member read
        // of other members' shards is the Parquet metadata the coordinator
        // plans with (DataFusion reads a file's last 512 KiB for it), once
        // per file, not the rows of 22 queries.
        let files_so_far = (done + 1) as f64 * 2.0 * SHARDS as f64;
        for member in &members {
            let metrics = crate::support::metrics_text(&member.server.url()).await;
            let remote: f64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix(r#"dram_sql_remote_read_bytes_total{part="shard"} "#))
                .map_or(0.0, |v| v.parse().unwrap());
            assert!(
                remote <= files_so_far * 512.0 * 1024.0,
                "{database}: {remote} bytes of shards read from other members"
            );
        }

        // The plan is distributed: its stages run on the three members
        // (EXPLAIN ANALYZE shows the plan that ran).
        let explained = ask(
            clients[0],
            database,
            format!("EXPLAIN ANALYZE {}", QUERIES[0]),
        )
        .await
        .unwrap();
        let plan: String = explained["result"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|row| row["plan"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        // The scan's stage has a task on each member, each reading the
        // shards that member holds.
        assert!(plan.contains("DistributedExec"), "{plan}");
        assert!(plan.contains("tasks=3"), "{plan}");
        // Joins repartition both sides across the members here.
        let joins = ask(clients[2], database, format!("EXPLAIN {}", QUERIES[2]))
            .await
            .unwrap();
        let plan = joins["result"]["rows"].to_string();
        assert!(plan.contains("mode=Partitioned"), "{plan}");
        assert!(!plan.contains("mode=CollectLeft"), "{plan}");
        // Q12 joins orders and lineitem on orderkey: shard by shard where
        // they are co-located (no row moves for it), else both sides are
        // repartitioned on it.
        let q12 = ask(clients[1], database, format!("EXPLAIN {}", QUERIES[11]))
            .await
            .unwrap();
        let plan = q12["result"]["rows"].to_string();
        let shuffled = ["l_orderkey", "o_orderkey"]
            .iter()
            .any(|key| plan.contains(&format!("RepartitionExec: partitioning=Hash([{key}")));
        assert_eq!(shuffled, layout == Layout::Scattered, "{database}: {plan}");
        assert!(plan.contains("mode=Partitioned"), "{plan}");
        // A join of a co-located table on its key with a table that is not:
        // DataFusion hashes the other side, so the co-located side is
        // hashed too (its shards are not DataFusion's hash partitions).
        let mixed = "SELECT count(*) AS n, sum(c_acctbal) AS s \
                     FROM lineitem JOIN customer ON l_orderkey = c_custkey";
        answers_as_datafusion(&ctx, clients[0], database, mixed, "a mixed join").await;
        let mixed_plan = ask(clients[0], database, format!("EXPLAIN {mixed}"))
            .await
            .unwrap();
        let plan = mixed_plan["result"]["rows"].to_string();
        assert!(
            plan.contains("RepartitionExec: partitioning=Hash([l_orderkey"),
            "{database}: {plan}"
        );
        // And, relied on by nothing, lineitem's scan splits its files over
        // all partitions again rather than reading whole shards.
        assert!(!plan.contains("output_partitioning="), "{database}: {plan}");
        // A union of a co-located table with another, each grouped by the
        // key, grouped again: DataFusion interleaves inputs it finds
        // partitioned alike, so the co-located side is hashed too (without
        // that, groups were split: a wrong answer).
        let union = "SELECT k, count(*) AS n FROM (SELECT l_orderkey AS k FROM lineitem \
                     GROUP BY l_orderkey UNION ALL SELECT c_custkey AS k FROM customer \
                     GROUP BY c_custkey) u GROUP BY k ORDER BY n DESC, k LIMIT 20";
        answers_as_datafusion(&ctx, clients[1], database, union, "a union").await;
        let shown = ask(clients[1], database, format!("EXPLAIN {union}"))
            .await
            .unwrap()["result"]["rows"]
            .to_string();
        assert!(shown.contains("InterleaveExec"), "{database}: {shown}");
        // count(*) is answered from the Parquet files' metadata: exact,
        // without reading a row.
        let counted = ask(
            clients[1],
            database,
            "EXPLAIN ANALYZE SELECT count(*) AS n FROM lineitem",
        )
        .await
        .unwrap();
        let plan = counted["result"]["rows"].to_string();
        assert!(!plan.contains("DataSourceExec"), "{plan}");
        let nodes: Vec<&Value> = explained["meta"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(nodes.len(), 3, "{explained}");
    }
}
