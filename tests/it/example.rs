//! The sales example server (`cargo run --example sales`): its sample database
//! published from the repository, its two analyses and its report route, with
//! answers checked against totals computed here from the CSV files by hand.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dram::storage::{Source, SourceUrl};
use serde_json::{Value, json};

use crate::support::{config, expect_error, load, serve};

// The example's own modules, compiled into this test as they are into the example.
#[allow(dead_code)]
#[path = "../../examples/sales/analyses.rs"]
mod analyses;
#[path = "../../examples/sales/server.rs"]
mod server;

struct Order {
    id: String,
    region: String,
    date: String,
    product: String,
    units: u64,
    cents: i64,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/sales/data")
}

/// Every order of the sample database, read with plain string splitting.
fn orders() -> Vec<Order> {
    let mut orders = Vec::new();
    for region in ["east", "north", "south", "west"] {
        let path = data_dir().join(format!("shards/{region}/sales.csv"));
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let (units, decimals) = fields[4].split_once('.').unwrap();
            assert_eq!(decimals.len(), 2, "prices in the sample have two decimals");
            let unit_cents: i64 = format!("{units}{decimals}").parse().unwrap();
            orders.push(Order {
                id: fields[0].into(),
                region: region.into(),
                date: fields[1].into(),
                product: fields[2].into(),
                units: fields[3].parse().unwrap(),
                cents: unit_cents * fields[3].parse::<i64>().unwrap(),
            });
        }
    }
    orders
}

fn categories() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(data_dir().join("global/products.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[0].to_string(), fields[2].to_string())
        })
        .collect()
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// `revenue_by_category`'s answer, computed here: largest revenue first.
fn expected_revenue(from: &str, to: &str) -> Value {
    let categories = categories();
    let mut totals: BTreeMap<String, (u64, u64, i64)> = BTreeMap::new();
    for order in orders() {
        if order.date.as_str() >= from && order.date.as_str() <= to {
            let total = totals
                .entry(categories[&order.product].clone())
                .or_default();
            total.0 += 1;
            total.1 += order.units;
            total.2 += order.cents;
        }
    }
    let mut totals: Vec<_> = totals.into_iter().collect();
    totals.sort_by(|a, b| b.1.2.cmp(&a.1.2).then(a.0.cmp(&b.0)));
    totals
        .into_iter()
        .map(|(category, (orders, units, cents))| {
            json!({"category": category, "orders": orders, "units": units, "revenue": money(cents)})
        })
        .collect()
}

/// `top_orders`' answer: the k largest orders, ties by order id.
fn expected_top(k: usize, regions: &[&str]) -> Vec<(String, String)> {
    let mut orders: Vec<Order> = orders()
        .into_iter()
        .filter(|o| regions.contains(&o.region.as_str()))
        .collect();
    orders.sort_by(|a, b| b.cents.cmp(&a.cents).then(a.id.cmp(&b.id)));
    orders
        .into_iter()
        .take(k)
        .map(|o| (o.id, money(o.cents)))
        .collect()
}

fn ids_and_values(result: &Value) -> Vec<(String, String)> {
    result
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["order_id"].as_str().unwrap().to_string(),
                o["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn sales_example_answers_match_the_sample_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // Published from the repository's folder, as the README's walkthrough does.
    let plan = dram::publish::plan(&data_dir()).expect("the sample has a valid layout");
    let url = SourceUrl::resolve(&config.store.url, "sales-sample").unwrap();
    let source = Source::open(&url, &config.store, true).unwrap();
    dram::publish::publish(&plan, &source, 8, &|_| {})
        .await
        .unwrap();
    let (server, client) = serve(server::builder(config)).await;
    load(
        &client,
        json!({"name": "sales-sample", "source": "sales-sample"}),
    )
    .await;
    client
        .put("/v1/aliases/sales", &json!({"target": "sales-sample"}))
        .await
        .unwrap();

    let all = ["east", "north", "south", "west"];
    let answer = client
        .post("/v1/query/sales/revenue_by_category", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer["meta"]["shards"], 4);
    assert_eq!(answer["meta"]["database"], "sales-sample");
    assert_eq!(
        answer["result"],
        expected_revenue("0000-00-00", "9999-99-99")
    );
    let answer = client
        .post(
            "/v1/query/sales/revenue_by_category",
            &json!({"params": {"from": "2026-10-01", "to": "2026-10-31"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        answer["result"],
        expected_revenue("2026-10-01", "2026-10-31")
    );

    for (k, regions) in [(10, &all[..]), (1, &all[..]), (25, &["north", "west"][..])] {
        let mut body = json!({"params": {"k": k}});
        if regions.len() < all.len() {
            body["shards"] = json!(regions);
        }
        let answer = client
            .post("/v1/query/sales/top_orders", &body)
            .await
            .unwrap();
        assert_eq!(
            ids_and_values(&answer["result"]),
            expected_top(k, regions),
            "k={k}"
        );
    }
    // k defaults to 10.
    let answer = client
        .post("/v1/query/sales/top_orders", &json!({}))
        .await
        .unwrap();
    assert_eq!(ids_and_values(&answer["result"]), expected_top(10, &all));

    // The sample is queryable with SQL as it is: one file per shard is
    // table `sales`, `global/products.csv` table `products`.
    let answer = client
        .post(
            "/v1/query/sales/sql",
            &json!({"params": {"sql": "SELECT count(*) AS n, sum(quantity) AS units FROM sales"}}),
        )
        .await
        .unwrap();
    let units: u64 = orders().iter().map(|o| o.units).sum();
    assert_eq!(
        answer["result"]["rows"],
        json!([{"n": orders().len(), "units": units}]),
        "{answer}"
    );
    let answer = client
        .post(
            "/v1/query/sales/sql",
            &json!({"params": {"sql": "SELECT p.category, count(*) AS orders FROM sales s JOIN products p ON s.product_id = p.product_id GROUP BY p.category ORDER BY p.category"}}),
        )
        .await
        .unwrap();
    let mut per_category: BTreeMap<String, u64> = BTreeMap::new();
    for order in orders() {
        *per_category
            .entry(categories()[&order.product].clone())
            .or_default() += 1;
    }
    let expected: Vec<Value> = per_category
        .into_iter()
        .map(|(category, orders)| json!({"category": category, "orders": orders}))
        .collect();
    assert_eq!(answer["result"]["rows"], json!(expected), "{answer}");

    // The report route mounted by the example: both analyses on one version.
    let report = client
        .get("/sales/sales/report?from=2026-10-01&to=2026-10-31")
        .await
        .unwrap();
    assert_eq!(report["database"], "sales-sample");
    assert_eq!(
        report["revenue_by_category"],
        expected_revenue("2026-10-01", "2026-10-31")
    );
    assert_eq!(report["top_orders"].as_array().unwrap().len(), 5);

    // Bad params are 400s naming the field; a bad route input too.
    for (params, field) in [
        (json!({"k": 0}), "k: 0 is out of range"),
        (json!({"k": 10_001}), "k: 10001 is out of range"),
        (json!({"k": "ten"}), "invalid type"),
        (
            json!({"from": "last week"}),
            "from: \"last week\" is not a date",
        ),
        (json!({"top": 3}), "unknown field `top`"),
    ] {
        let message = expect_error(
            client
                .post("/v1/query/sales/top_orders", &json!({"params": params}))
                .await,
            400,
            "invalid_params",
        );
        assert!(message.contains(field), "{message}");
    }
    expect_error(
        client.get("/sales/sales/report?to=tomorrow").await,
        400,
        "invalid_params",
    );
    expect_error(
        client.get("/sales/sales/report?colour=red").await,
        400,
        "invalid_input",
    );
    expect_error(client.get("/sales/nope/report").await, 404, "not_found");
    server.shutdown().await;
}

/// README's "Library" section shows `examples/line_count.rs` whole (the
/// build compiles that file) and the dependency lines a server of one's own
/// needs, at the versions dram itself builds with.
#[test]
fn the_readme_library_section_is_the_compiled_example() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/line_count.rs")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{example}```\n")),
        "README.md's Library section differs from examples/line_count.rs"
    );
    let section = &readme[readme.find("## Library").unwrap()..];
    let toml_block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let manifest: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let ours = manifest["dependencies"].as_table().unwrap();
    let theirs: toml::Table = toml_block.parse().unwrap();
    let version = |value: &toml::Value| match value {
        toml::Value::String(v) => Some(v.clone()),
        toml::Value::Table(t) => t
            .get("version")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        _ => None,
    };
    for (name, value) in theirs["dependencies"].as_table().unwrap() {
        if name == "dram" {
            continue;
        }
        let ours = ours
            .get(name)
            .unwrap_or_else(|| panic!("README names {name}, which dram does not use"));
        assert_eq!(version(value), version(ours), "{name}'s version in README");
    }
}
