//! TPC-H for dram's SQL: the eight tables generated in process (`tpchgen`,
//! no download) as Parquet, laid out as a dram database, and the 22 queries
//! with the specification's validation parameters.
//!
//! `lineitem` and `orders` are shard tables; the other six are global. Two
//! layouts: `Colocated` puts an order and its line items in the same shard
//! (by orderkey); `Scattered` spreads each table's rows over the shards on
//! its own, so no join key lines up with a shard.
//!
//! Shared by the integration tests (`tests/it/tpch.rs` includes this file)
//! and `simulations bench --only tpch`.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;

/// How the sharded tables' rows are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// By orderkey: an order and its line items share a shard.
    Colocated,
    /// Each row to a shard of its own, independent of every key.
    Scattered,
}

/// The tables read from every shard.
pub const SHARDED: [&str; 2] = ["lineitem", "orders"];

/// The shard keys of the co-located layout, as its manifest declares them.
pub const SHARD_KEYS: [(&str, &str); 2] = [("lineitem", "l_orderkey"), ("orders", "o_orderkey")];

/// The tables in the global data.
pub const GLOBAL: [&str; 6] = [
    "customer", "nation", "part", "partsupp", "region", "supplier",
];

/// One table's rows, generated.
fn generate(table: &str, scale: f64) -> (SchemaRef, Vec<RecordBatch>) {
    use tpchgen::generators::*;
    use tpchgen_arrow::*;
    fn collect(
        reader: impl datafusion::arrow::record_batch::RecordBatchReader,
    ) -> (SchemaRef, Vec<RecordBatch>) {
        let schema = reader.schema();
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .expect("generated rows");
        (schema, batches)
    }
    match table {
        "lineitem" => collect(LineItemArrow::new(LineItemGenerator::new(scale, 1, 1))),
        "orders" => collect(OrderArrow::new(OrderGenerator::new(scale, 1, 1))),
        "customer" => collect(CustomerArrow::new(CustomerGenerator::new(scale, 1, 1))),
        "nation" => collect(NationArrow::new(NationGenerator::new(scale, 1, 1))),
        "part" => collect(PartArrow::new(PartGenerator::new(scale, 1, 1))),
        "partsupp" => collect(PartSuppArrow::new(PartSuppGenerator::new(scale, 1, 1))),
        "region" => collect(RegionArrow::new(RegionGenerator::new(scale, 1, 1))),
        "supplier" => collect(SupplierArrow::new(SupplierGenerator::new(scale, 1, 1))),
        other => panic!("no TPC-H table {other}"),
    }
}

fn parquet(schema: &SchemaRef, batches: &[RecordBatch]) -> Vec<u8> {
    let mut out = Vec::new();
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut writer =
        ArrowWriter::try_new(&mut out, schema.clone(), Some(properties)).expect("parquet writer");
    for batch in batches {
        writer.write(batch).expect("parquet write");
    }
    writer.close().expect("parquet close");
    out
}

/// The shard of each row of `batch`.
fn shard_of(
    table: &str,
    batch: &RecordBatch,
    first_row: u64,
    shards: u64,
    layout: Layout,
) -> Vec<u64> {
    let key = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
            .expect("an Int64 key column")
    };
    match layout {
        Layout::Colocated => {
            let keys = key(if table == "orders" {
                "o_orderkey"
            } else {
                "l_orderkey"
            });
            keys.iter()
                .map(|k| k.unwrap_or(0) as u64 % shards)
                .collect()
        }
        Layout::Scattered => {
            // A multiplicative hash of the row number, with another factor
            // per table: no key lines up with a shard.
            let factor: u64 = if table == "orders" {
                0x9E37_79B9
            } else {
                0x85EB_CA6B
            };
            (0..batch.num_rows() as u64)
                .map(|i| ((first_row + i).wrapping_mul(factor) >> 7) % shards)
                .collect()
        }
    }
}

/// Writes TPC-H at `scale` in two forms: the dram database (files as
/// `(path in the database, bytes)`), and every table whole under
/// `reference/<table>.parquet` for one-process DataFusion.
pub fn database(
    scale: f64,
    shards: u64,
    layout: Layout,
    reference: &Path,
) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(reference).expect("reference folder");
    let mut files = Vec::new();
    for table in GLOBAL.iter().chain(SHARDED.iter()) {
        let (schema, batches) = generate(table, scale);
        let whole = parquet(&schema, &batches);
        std::fs::write(reference.join(format!("{table}.parquet")), &whole).expect("reference file");
        if GLOBAL.contains(table) {
            files.push((format!("global/{table}/{table}.parquet"), whole));
            continue;
        }
        let mut per_shard: Vec<Vec<RecordBatch>> = vec![Vec::new(); shards as usize];
        let mut row = 0;
        for batch in &batches {
            let targets = shard_of(table, batch, row, shards, layout);
            row += batch.num_rows() as u64;
            for (shard, rows) in per_shard.iter_mut().enumerate() {
                let indices: UInt32Array = targets
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| **s == shard as u64)
                    .map(|(i, _)| i as u32)
                    .collect();
                if !indices.is_empty() {
                    rows.push(take_record_batch(batch, &indices).expect("take rows"));
                }
            }
        }
        for (shard, rows) in per_shard.iter().enumerate() {
            files.push((
                format!("shards/{shard}/{table}/part.parquet"),
                parquet(&schema, rows),
            ));
        }
    }
    files
}

/// The reference tables' files, by table.
pub fn reference_files(reference: &Path) -> Vec<(&'static str, PathBuf)> {
    GLOBAL
        .iter()
        .chain(SHARDED.iter())
        .map(|t| (*t, reference.join(format!("{t}.parquet"))))
        .collect()
}

/// A one-process DataFusion context over the reference files.
pub async fn reference_context(reference: &Path) -> datafusion::prelude::SessionContext {
    let ctx = datafusion::prelude::SessionContext::new();
    for (table, path) in reference_files(reference) {
        ctx.register_parquet(
            table,
            path.display().to_string(),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await
        .expect("register a reference table");
    }
    ctx
}

/// Rows as JSON objects (Arrow's JSON writer: decimals and dates as text).
pub fn rows_json(batches: &[RecordBatch]) -> serde_json::Value {
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    writer
        .write_batches(&batches.iter().collect::<Vec<_>>())
        .expect("rows as json");
    writer.finish().expect("rows as json");
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        serde_json::json!([])
    } else {
        serde_json::from_slice(&bytes).expect("json rows")
    }
}

/// Whether two answers agree: the same rows in the same order (sorted first
/// when the query has no ORDER BY), numbers to `1e-9` relative.
pub fn same_answer(
    sql: &str,
    got: &serde_json::Value,
    expected: &serde_json::Value,
) -> Result<(), String> {
    let rows = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        let mut rows = v.as_array().cloned().unwrap_or_default();
        if !sql.to_ascii_lowercase().contains("order by") {
            rows.sort_by_key(|r| r.to_string());
        }
        rows
    };
    let (got, expected) = (rows(got), rows(expected));
    if got.len() != expected.len() {
        return Err(format!("{} rows, expected {}", got.len(), expected.len()));
    }
    for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
        if !close(a, b) {
            return Err(format!("row {i}: {a} instead of {b}"));
        }
    }
    Ok(())
}

fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    let number = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ if a == b => true,
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => false,
        },
    }
}

/// The 22 queries (TPC-H 3.0.1, validation parameters), `Q1` first. Q15's
/// view is written as a common table expression (the specification's
/// approved variant): dram's SQL is read-only.
pub const QUERIES: [&str; 22] = [
    // Q1
    "select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty, sum(l_extendedprice) as sum_base_price, sum(l_extendedprice * (1 - l_discount)) as sum_disc_price, sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) as sum_charge, avg(l_quantity) as avg_qty, avg(l_extendedprice) as avg_price, avg(l_discount) as avg_disc, count(*) as count_order from lineitem where l_shipdate <= date '1998-12-01' - interval '90' day group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus",
    // Q2
    "select s_acctbal, s_name, n_name, p_partkey, p_mfgr, s_address, s_phone, s_comment from part, supplier, partsupp, nation, region where p_partkey = ps_partkey and s_suppkey = ps_suppkey and p_size = 15 and p_type like '%BRASS' and s_nationkey = n_nationkey and n_regionkey = r_regionkey and r_name = 'EUROPE' and ps_supplycost = (select min(ps_supplycost) from partsupp, supplier, nation, region where p_partkey = ps_partkey and s_suppkey = ps_suppkey and s_nationkey = n_nationkey and n_regionkey = r_regionkey and r_name = 'EUROPE') order by s_acctbal desc, n_name, s_name, p_partkey limit 100",
    // Q3
    "select l_orderkey, sum(l_extendedprice * (1 - l_discount)) as revenue, o_orderdate, o_shippriority from customer, orders, lineitem where c_mktsegment = 'BUILDING' and c_custkey = o_custkey and l_orderkey = o_orderkey and o_orderdate < date '1995-03-15' and l_shipdate > date '1995-03-15' group by l_orderkey, o_orderdate, o_shippriority order by revenue desc, o_orderdate limit 10",
    // Q4
    "select o_orderpriority, count(*) as order_count from orders where o_orderdate >= date '1993-07-01' and o_orderdate < date '1993-07-01' + interval '3' month and exists (select * from lineitem where l_orderkey = o_orderkey and l_commitdate < l_receiptdate) group by o_orderpriority order by o_orderpriority",
    // Q5
    "select n_name, sum(l_extendedprice * (1 - l_discount)) as revenue from customer, orders, lineitem, supplier, nation, region where c_custkey = o_custkey and l_orderkey = o_orderkey and l_suppkey = s_suppkey and c_nationkey = s_nationkey and s_nationkey = n_nationkey and n_regionkey = r_regionkey and r_name = 'ASIA' and o_orderdate >= date '1994-01-01' and o_orderdate < date '1994-01-01' + interval '1' year group by n_name order by revenue desc",
    // Q6
    "select sum(l_extendedprice * l_discount) as revenue from lineitem where l_shipdate >= date '1994-01-01' and l_shipdate < date '1994-01-01' + interval '1' year and l_discount between 0.06 - 0.01 and 0.06 + 0.01 and l_quantity < 24",
    // Q7
    "select supp_nation, cust_nation, l_year, sum(volume) as revenue from (select n1.n_name as supp_nation, n2.n_name as cust_nation, extract(year from l_shipdate) as l_year, l_extendedprice * (1 - l_discount) as volume from supplier, lineitem, orders, customer, nation n1, nation n2 where s_suppkey = l_suppkey and o_orderkey = l_orderkey and c_custkey = o_custkey and s_nationkey = n1.n_nationkey and c_nationkey = n2.n_nationkey and ((n1.n_name = 'FRANCE' and n2.n_name = 'GERMANY') or (n1.n_name = 'GERMANY' and n2.n_name = 'FRANCE')) and l_shipdate between date '1995-01-01' and date '1996-12-31') as shipping group by supp_nation, cust_nation, l_year order by supp_nation, cust_nation, l_year",
    // Q8
    "select o_year, sum(case when nation = 'BRAZIL' then volume else 0 end) / sum(volume) as mkt_share from (select extract(year from o_orderdate) as o_year, l_extendedprice * (1 - l_discount) as volume, n2.n_name as nation from part, supplier, lineitem, orders, customer, nation n1, nation n2, region where p_partkey = l_partkey and s_suppkey = l_suppkey and l_orderkey = o_orderkey and o_custkey = c_custkey and c_nationkey = n1.n_nationkey and n1.n_regionkey = r_regionkey and r_name = 'AMERICA' and s_nationkey = n2.n_nationkey and o_orderdate between date '1995-01-01' and date '1996-12-31' and p_type = 'ECONOMY ANODIZED STEEL') as all_nations group by o_year order by o_year",
    // Q9
    "select nation, o_year, sum(amount) as sum_profit from (select n_name as nation, extract(year from o_orderdate) as o_year, l_extendedprice * (1 - l_discount) - ps_supplycost * l_quantity as amount from part, supplier, lineitem, partsupp, orders, nation where s_suppkey = l_suppkey and ps_suppkey = l_suppkey and ps_partkey = l_partkey and p_partkey = l_partkey and o_orderkey = l_orderkey and s_nationkey = n_nationkey and p_name like '%green%') as profit group by nation, o_year order by nation, o_year desc",
    // Q10
    "select c_custkey, c_name, sum(l_extendedprice * (1 - l_discount)) as revenue, c_acctbal, n_name, c_address, c_phone, c_comment from customer, orders, lineitem, nation where c_custkey = o_custkey and l_orderkey = o_orderkey and o_orderdate >= date '1993-10-01' and o_orderdate < date '1993-10-01' + interval '3' month and l_returnflag = 'R' and c_nationkey = n_nationkey group by c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment order by revenue desc limit 20",
    // Q11
    "select ps_partkey, sum(ps_supplycost * ps_availqty) as value from partsupp, supplier, nation where ps_suppkey = s_suppkey and s_nationkey = n_nationkey and n_name = 'GERMANY' group by ps_partkey having sum(ps_supplycost * ps_availqty) > (select sum(ps_supplycost * ps_availqty) * 0.0001 from partsupp, supplier, nation where ps_suppkey = s_suppkey and s_nationkey = n_nationkey and n_name = 'GERMANY') order by value desc, ps_partkey",
    // Q12
    "select l_shipmode, sum(case when o_orderpriority = '1-URGENT' or o_orderpriority = '2-HIGH' then 1 else 0 end) as high_line_count, sum(case when o_orderpriority <> '1-URGENT' and o_orderpriority <> '2-HIGH' then 1 else 0 end) as low_line_count from orders, lineitem where o_orderkey = l_orderkey and l_shipmode in ('MAIL', 'SHIP') and l_commitdate < l_receiptdate and l_shipdate < l_commitdate and l_receiptdate >= date '1994-01-01' and l_receiptdate < date '1994-01-01' + interval '1' year group by l_shipmode order by l_shipmode",
    // Q13
    "select c_count, count(*) as custdist from (select c_custkey, count(o_orderkey) as c_count from customer left outer join orders on c_custkey = o_custkey and o_comment not like '%special%requests%' group by c_custkey) as c_orders group by c_count order by custdist desc, c_count desc",
    // Q14
    "select 100.00 * sum(case when p_type like 'PROMO%' then l_extendedprice * (1 - l_discount) else 0 end) / sum(l_extendedprice * (1 - l_discount)) as promo_revenue from lineitem, part where l_partkey = p_partkey and l_shipdate >= date '1995-09-01' and l_shipdate < date '1995-09-01' + interval '1' month",
    // Q15
    "with revenue0 (supplier_no, total_revenue) as (select l_suppkey, sum(l_extendedprice * (1 - l_discount)) from lineitem where l_shipdate >= date '1996-01-01' and l_shipdate < date '1996-01-01' + interval '3' month group by l_suppkey) select s_suppkey, s_name, s_address, s_phone, total_revenue from supplier, revenue0 where s_suppkey = supplier_no and total_revenue = (select max(total_revenue) from revenue0) order by s_suppkey",
    // Q16
    "select p_brand, p_type, p_size, count(distinct ps_suppkey) as supplier_cnt from partsupp, part where p_partkey = ps_partkey and p_brand <> 'Brand#45' and p_type not like 'MEDIUM POLISHED%' and p_size in (49, 14, 23, 45, 19, 3, 36, 9) and ps_suppkey not in (select s_suppkey from supplier where s_comment like '%Customer%Complaints%') group by p_brand, p_type, p_size order by supplier_cnt desc, p_brand, p_type, p_size",
    // Q17
    "select sum(l_extendedprice) / 7.0 as avg_yearly from lineitem, part where p_partkey = l_partkey and p_brand = 'Brand#23' and p_container = 'MED BOX' and l_quantity < (select 0.2 * avg(l_quantity) from lineitem where l_partkey = p_partkey)",
    // Q18
    "select c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice, sum(l_quantity) from customer, orders, lineitem where o_orderkey in (select l_orderkey from lineitem group by l_orderkey having sum(l_quantity) > 300) and c_custkey = o_custkey and o_orderkey = l_orderkey group by c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice order by o_totalprice desc, o_orderdate limit 100",
    // Q19
    "select sum(l_extendedprice * (1 - l_discount)) as revenue from lineitem, part where (p_partkey = l_partkey and p_brand = 'Brand#12' and p_container in ('SM CASE', 'SM BOX', 'SM PACK', 'SM PKG') and l_quantity >= 1 and l_quantity <= 1 + 10 and p_size between 1 and 5 and l_shipmode in ('AIR', 'AIR REG') and l_shipinstruct = 'DELIVER IN PERSON') or (p_partkey = l_partkey and p_brand = 'Brand#23' and p_container in ('MED BAG', 'MED BOX', 'MED PKG', 'MED PACK') and l_quantity >= 10 and l_quantity <= 10 + 10 and p_size between 1 and 10 and l_shipmode in ('AIR', 'AIR REG') and l_shipinstruct = 'DELIVER IN PERSON') or (p_partkey = l_partkey and p_brand = 'Brand#34' and p_container in ('LG CASE', 'LG BOX', 'LG PACK', 'LG PKG') and l_quantity >= 20 and l_quantity <= 20 + 10 and p_size between 1 and 15 and l_shipmode in ('AIR', 'AIR REG') and l_shipinstruct = 'DELIVER IN PERSON')",
    // Q20
    "select s_name, s_address from supplier, nation where s_suppkey in (select ps_suppkey from partsupp where ps_partkey in (select p_partkey from part where p_name like 'forest%') and ps_availqty > (select 0.5 * sum(l_quantity) from lineitem where l_partkey = ps_partkey and l_suppkey = ps_suppkey and l_shipdate >= date '1994-01-01' and l_shipdate < date '1994-01-01' + interval '1' year)) and s_nationkey = n_nationkey and n_name = 'CANADA' order by s_name",
    // Q21
    "select s_name, count(*) as numwait from supplier, lineitem l1, orders, nation where s_suppkey = l1.l_suppkey and o_orderkey = l1.l_orderkey and o_orderstatus = 'F' and l1.l_receiptdate > l1.l_commitdate and exists (select * from lineitem l2 where l2.l_orderkey = l1.l_orderkey and l2.l_suppkey <> l1.l_suppkey) and not exists (select * from lineitem l3 where l3.l_orderkey = l1.l_orderkey and l3.l_suppkey <> l1.l_suppkey and l3.l_receiptdate > l3.l_commitdate) and s_nationkey = n_nationkey and n_name = 'SAUDI ARABIA' group by s_name order by numwait desc, s_name limit 100",
    // Q22
    "select cntrycode, count(*) as numcust, sum(c_acctbal) as totacctbal from (select substring(c_phone from 1 for 2) as cntrycode, c_acctbal from customer where substring(c_phone from 1 for 2) in ('13', '31', '23', '29', '30', '18', '17') and c_acctbal > (select avg(c_acctbal) from customer where c_acctbal > 0.00 and substring(c_phone from 1 for 2) in ('13', '31', '23', '29', '30', '18', '17')) and not exists (select * from orders where o_custkey = c_custkey)) as custsale group by cntrycode order by cntrycode",
];
