//! TPC-H (scale 0.01, generated here) on three real members: all 22 queries
//! as written, in two layouts (lineitem and orders co-located by orderkey,
//! and scattered with no key lined up with a shard), each answer equal to
//! one-process DataFusion's over the same rows. The plans are distributed:
//! stages run on the members holding the shards.

use serde_json::{Value, json};

use crate::cluster::{members, on_all};
use crate::support::{copies, publish, ready};

#[path = "../../simulations/src/tpch.rs"]
mod generated;

use generated::{Layout, QUERIES};

const SHARDS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_22_tpch_queries_answer_as_one_process_would() {
    let dir = tempfile::tempdir().unwrap();
    let members = members(dir.path(), 3).await;
    let clients: Vec<&dram::client::Client> = members.iter().map(|m| &m.client).collect();
    let store_config = members[0].server.node.config().store.clone();

    for (database, layout) in [
        ("tpch_colocated", Layout::Colocated),
        ("tpch_scattered", Layout::Scattered),
    ] {
        let reference = dir.path().join(format!("reference-{database}"));
        let files = generated::database(0.01, SHARDS, layout, &reference);
        let files: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        publish(dir.path(), &store_config, database, &files).await;
        clients[0]
            .post(
                "/v1/databases",
                &json!({"name": database, "source": database, "replicas": 1}),
            )
            .await
            .unwrap();
        on_all(&clients, 60, "every shard placed once", |c| {
            Box::pin(async move {
                let view = copies(c, database).await;
                view.len() == SHARDS as usize && view.values().all(|h| ready(h).len() == 1)
            })
        })
        .await;

        let ctx = generated::reference_context(&reference).await;
        for (i, sql) in QUERIES.iter().enumerate() {
            let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let expected = generated::rows_json(&batches);
            let answer = clients[i % clients.len()]
                .post(
                    &format!("/v1/query/{database}/sql"),
                    &json!({"params": {"sql": sql}}),
                )
                .await
                .unwrap_or_else(|e| panic!("{database} Q{}: {e}", i + 1));
            generated::same_answer(sql, &answer["result"]["rows"], &expected)
                .unwrap_or_else(|e| panic!("{database} Q{}: {e}\n{answer}", i + 1));
            assert_eq!(answer["meta"]["shards"], SHARDS, "Q{}", i + 1);
        }

        // The plan is distributed: its stages run on the three members
        // (EXPLAIN ANALYZE shows the plan that ran).
        let explained = clients[0]
            .post(
                &format!("/v1/query/{database}/sql"),
                &json!({"params": {"sql": format!("EXPLAIN ANALYZE {}", QUERIES[0])}}),
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
        let nodes: Vec<&Value> = explained["meta"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(nodes.len(), 3, "{explained}");
    }
}
