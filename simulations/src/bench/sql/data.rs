//! The data of the `sql` bench: a fact table `sales` in shards and a global
//! dimension table `products`, as Parquet drawn from a seed, published to a
//! `file://` store, and the same files linked in one folder for DataFusion.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::arrow::array::{Date32Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use dram::storage::{Source, SourceUrl};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{DATABASE, SHARDS};

pub const FILES_PER_SHARD: usize = 2;
const PRODUCTS: i64 = 10_000;
const CATEGORIES: usize = 20;
const REGIONS: [&str; 8] = [
    "north", "south", "east", "west", "central", "coast", "mountain", "islands",
];
/// 2024-01-01 in days since 1970-01-01; `day` covers the 366 days of 2024.
const FIRST_DAY: i32 = 19_723;
const BATCH_ROWS: usize = 65_536;

/// Publishes the folder `db` as database `sales` in the store.
pub async fn publish(db: &Path, store_url: &str) -> Result<()> {
    let store = dram::config::StoreConfig {
        url: store_url.to_string(),
        ..Default::default()
    };
    let url = SourceUrl::resolve(store_url, DATABASE)?;
    let source = Source::open(&url, &store, true)?;
    let plan = dram::publish::plan(db)?;
    dram::publish::publish(&plan, &source, 8, &|_| {}).await?;
    Ok(())
}

/// Writes the database under `dir/db` (`shards/<i>/sales/part-<f>.parquet`,
/// `global/products/products.parquet`) and links the same files under
/// `dir/all/{sales,products}` for the reference; returns the bytes written.
pub fn generate(dir: &Path, rows: usize, seed: u64) -> Result<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let db = dir.join("db");
    let all = dir.join("all");
    let mut written = Vec::new();

    let prices: Vec<f64> = (0..PRODUCTS)
        .map(|_| cents(rng.random_range(1.0..200.0)))
        .collect();
    let categories: Vec<String> = (0..PRODUCTS)
        .map(|_| format!("category-{:02}", rng.random_range(0..CATEGORIES)))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("product_id", DataType::Int64, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
    ]));
    let products = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(1..=PRODUCTS)),
            Arc::new(StringArray::from_iter_values(&categories)),
            Arc::new(Float64Array::from(prices.clone())),
        ],
    )?;
    let path = PathBuf::from("products/products.parquet");
    write_parquet(&db.join("global").join(&path), schema, [Ok(products)])?;
    written.push((db.join("global").join(&path), all.join(&path)));

    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("day", DataType::Date32, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("product_id", DataType::Int64, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
    ]));
    let files = SHARDS * FILES_PER_SHARD;
    let mut next_id = 0i64;
    for file in 0..files {
        let (shard, part) = (file / FILES_PER_SHARD, file % FILES_PER_SHARD);
        let file_rows = rows / files + usize::from(file < rows % files);
        let mut left = file_rows;
        let batches = std::iter::from_fn(|| {
            if left == 0 {
                return None;
            }
            let n = left.min(BATCH_ROWS);
            left -= n;
            let batch = sales_batch(&schema, &mut rng, &prices, next_id, n);
            next_id += n as i64;
            Some(batch)
        });
        let relative = format!("shards/{shard}/sales/part-{part}.parquet");
        write_parquet(&db.join(&relative), schema.clone(), batches)?;
        let linked = all.join(format!("sales/shard-{shard}-part-{part}.parquet"));
        written.push((db.join(relative), linked));
    }

    let mut bytes = 0;
    for (file, linked) in &written {
        bytes += std::fs::metadata(file)?.len();
        if let Some(parent) = linked.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::hard_link(file, linked).is_err() {
            std::fs::copy(file, linked)
                .with_context(|| format!("cannot copy {} for DataFusion", file.display()))?;
        }
    }
    Ok(bytes)
}

/// `n` rows of `sales` from id `first_id`: products skewed towards low ids,
/// `amount` = quantity × price less up to 20 %, in cents, 2 % nulls.
fn sales_batch(
    schema: &SchemaRef,
    rng: &mut StdRng,
    prices: &[f64],
    first_id: i64,
    n: usize,
) -> Result<RecordBatch> {
    let mut day = Vec::with_capacity(n);
    let mut region = Vec::with_capacity(n);
    let mut product = Vec::with_capacity(n);
    let mut quantity = Vec::with_capacity(n);
    let mut amount = Vec::with_capacity(n);
    for _ in 0..n {
        day.push(FIRST_DAY + rng.random_range(0..366));
        region.push(REGIONS[rng.random_range(0..REGIONS.len())]);
        let u: f64 = rng.random();
        let product_id = ((u * u * PRODUCTS as f64) as i64 + 1).min(PRODUCTS);
        let units = rng.random_range(1..=20i64);
        let discount = rng.random_range(0.8..=1.0);
        let price = prices[(product_id - 1) as usize];
        let value = cents(units as f64 * price * discount);
        amount.push((!rng.random_bool(0.02)).then_some(value));
        product.push(product_id);
        quantity.push(units);
    }
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(first_id..first_id + n as i64)),
            Arc::new(Date32Array::from(day)),
            Arc::new(StringArray::from(region)),
            Arc::new(Int64Array::from(product)),
            Arc::new(Int64Array::from(quantity)),
            Arc::new(Float64Array::from(amount)),
        ],
    )?)
}

fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    batches: impl IntoIterator<Item = Result<RecordBatch>>,
) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties))?;
    for batch in batches {
        writer.write(&batch?)?;
    }
    writer.close()?;
    Ok(())
}

fn cents(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
