//! The two analyses of the sales example server.
//!
//! The sales database has one shard per region, `shards/<region>/sales.csv`
//! (`order_id,date,product_id,quantity,unit_price`), and a global product table,
//! `global/products.csv` (`product_id,name,category,list_price`).
//!
//! - [`RevenueByCategory`]: revenue, orders and units per product category, a
//!   grouped sum that joins every sale with the global product table.
//! - [`TopOrders`]: the `k` orders of largest value, exact: each shard keeps its
//!   own top `k`, and the reduce keeps the top `k` of those.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use dram::{Analysis, AnalysisError, Shard};
use serde::{Deserialize, Serialize};

/// The sales file of every shard.
pub const SALES: &str = "sales.csv";
/// The product table in the global data.
pub const PRODUCTS: &str = "products.csv";

/// One line of `sales.csv`.
#[derive(Debug, Deserialize)]
pub struct Sale {
    pub order_id: String,
    pub date: String,
    pub product_id: String,
    pub quantity: u32,
    pub unit_price: String,
}

impl Sale {
    /// The order's value in cents (prices have at most two decimals; money is
    /// summed as integers so that sums are exact).
    pub fn cents(&self) -> Result<i64, AnalysisError> {
        let unit = parse_cents(&self.unit_price).ok_or_else(|| {
            AnalysisError::failed(format!(
                "order {}: unit_price {:?} is not a price",
                self.order_id, self.unit_price
            ))
        })?;
        Ok(unit * i64::from(self.quantity))
    }
}

/// `"12.5"` → 1250; `None` for anything but a non-negative amount with at most
/// two decimals.
pub fn parse_cents(text: &str) -> Option<i64> {
    let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
    if units.is_empty() || fraction.len() > 2 {
        return None;
    }
    if !units
        .bytes()
        .chain(fraction.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let units: i64 = units.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<2}").parse().ok()?;
    units.checked_mul(100)?.checked_add(fraction)
}

/// Reads the sales of a shard, calling `each` for the sales within `dates`.
fn for_each_sale(
    shard: &Shard,
    dates: &DateRange,
    mut each: impl FnMut(Sale) -> Result<(), AnalysisError>,
) -> Result<(), AnalysisError> {
    let mut reader = csv::Reader::from_reader(shard.open(SALES)?);
    for (index, sale) in reader.deserialize::<Sale>().enumerate() {
        if index % 4096 == 0 {
            shard.check_cancelled()?;
        }
        let sale =
            sale.map_err(|e| AnalysisError::failed(format!("shard {} {SALES}: {e}", shard.id())))?;
        if dates.contains(&sale.date) {
            each(sale)?;
        }
    }
    Ok(())
}

/// An optional date range, inclusive, as `YYYY-MM-DD` strings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateRange {
    /// Only orders on or after this day (`YYYY-MM-DD`).
    #[serde(default)]
    pub from: Option<String>,
    /// Only orders on or before this day.
    #[serde(default)]
    pub to: Option<String>,
}

impl DateRange {
    fn check(&self) -> Result<(), AnalysisError> {
        for (field, date) in [("from", &self.from), ("to", &self.to)] {
            if let Some(date) = date {
                let ok = date.len() == 10
                    && date.bytes().enumerate().all(|(i, b)| match i {
                        4 | 7 => b == b'-',
                        _ => b.is_ascii_digit(),
                    });
                if !ok {
                    return Err(AnalysisError::invalid_params(format!(
                        "{field}: {date:?} is not a date (YYYY-MM-DD)"
                    )));
                }
            }
        }
        Ok(())
    }

    fn contains(&self, date: &str) -> bool {
        self.from.as_deref().is_none_or(|from| date >= from)
            && self.to.as_deref().is_none_or(|to| date <= to)
    }
}

/// Revenue per product category: joins each sale with `global/products.csv`.
pub struct RevenueByCategory;

/// Totals of one category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryTotal {
    pub orders: u64,
    pub units: u64,
    pub revenue_cents: i64,
}

/// One line of the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryRevenue {
    pub category: String,
    pub orders: u64,
    pub units: u64,
    /// In currency units, two decimals.
    pub revenue: String,
}

impl Analysis for RevenueByCategory {
    type Params = DateRange;
    type Partial = BTreeMap<String, CategoryTotal>;
    type Output = Vec<CategoryRevenue>;

    fn description(&self) -> String {
        "revenue, orders and units per product category, largest first (params: from, to)".into()
    }

    fn map(&self, dates: &DateRange, shard: &Shard) -> Result<Self::Partial, AnalysisError> {
        dates.check()?;
        let categories = product_categories(shard)?;
        let mut totals: BTreeMap<String, CategoryTotal> = BTreeMap::new();
        for_each_sale(shard, dates, |sale| {
            let category = categories.get(&sale.product_id).ok_or_else(|| {
                AnalysisError::failed(format!(
                    "order {}: product {} is not in global/{PRODUCTS}",
                    sale.order_id, sale.product_id
                ))
            })?;
            let total = totals.entry(category.clone()).or_default();
            total.orders += 1;
            total.units += u64::from(sale.quantity);
            total.revenue_cents += sale.cents()?;
            Ok(())
        })?;
        Ok(totals)
    }

    fn reduce(
        &self,
        _: &DateRange,
        partials: Vec<Self::Partial>,
    ) -> Result<Self::Partial, AnalysisError> {
        let mut merged: BTreeMap<String, CategoryTotal> = BTreeMap::new();
        for partial in partials {
            for (category, total) in partial {
                let into = merged.entry(category).or_default();
                into.orders += total.orders;
                into.units += total.units;
                into.revenue_cents += total.revenue_cents;
            }
        }
        Ok(merged)
    }

    fn finish(
        &self,
        _: &DateRange,
        totals: Self::Partial,
    ) -> Result<Vec<CategoryRevenue>, AnalysisError> {
        let mut totals: Vec<(String, CategoryTotal)> = totals.into_iter().collect();
        totals.sort_by_key(|(category, total)| (Reverse(total.revenue_cents), category.clone()));
        Ok(totals
            .into_iter()
            .map(|(category, total)| CategoryRevenue {
                category,
                orders: total.orders,
                units: total.units,
                revenue: money(total.revenue_cents),
            })
            .collect())
    }
}

/// product_id → category, from the global product table.
fn product_categories(shard: &Shard) -> Result<HashMap<String, String>, AnalysisError> {
    #[derive(Deserialize)]
    struct Product {
        product_id: String,
        category: String,
    }
    let global = shard.require_global()?;
    let mut reader = csv::Reader::from_reader(global.open(PRODUCTS)?);
    let mut categories = HashMap::new();
    for product in reader.deserialize::<Product>() {
        let product =
            product.map_err(|e| AnalysisError::failed(format!("global/{PRODUCTS}: {e}")))?;
        categories.insert(product.product_id, product.category);
    }
    Ok(categories)
}

/// The `k` orders of largest value.
pub struct TopOrders;

/// Params of [`TopOrders`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopParams {
    /// How many orders (default 10, at most 10,000).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Only orders on or after this day (`YYYY-MM-DD`).
    #[serde(default)]
    pub from: Option<String>,
    /// Only orders on or before this day.
    #[serde(default)]
    pub to: Option<String>,
}

fn default_k() -> usize {
    10
}

/// The largest `k` accepted.
pub const MAX_K: usize = 10_000;

/// One order of the answer (and of a partial).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopOrder {
    pub order_id: String,
    pub region: String,
    pub date: String,
    pub product_id: String,
    pub value_cents: i64,
}

/// One order of the answer: the value in currency units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankedOrder {
    pub order_id: String,
    pub region: String,
    pub date: String,
    pub product_id: String,
    pub value: String,
}

impl TopOrder {
    /// Largest value first; ties by order id, so the answer never depends on
    /// which shard finished first.
    fn rank(&self) -> (Reverse<i64>, &str) {
        (Reverse(self.value_cents), &self.order_id)
    }
}

impl Ord for TopOrder {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for TopOrder {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl TopParams {
    fn check(&self) -> Result<(), AnalysisError> {
        if self.k == 0 || self.k > MAX_K {
            return Err(AnalysisError::invalid_params(format!(
                "k: {} is out of range 1..={MAX_K}",
                self.k
            )));
        }
        self.dates().check()
    }

    fn dates(&self) -> DateRange {
        DateRange {
            from: self.from.clone(),
            to: self.to.clone(),
        }
    }
}

impl Analysis for TopOrders {
    type Params = TopParams;
    type Partial = Vec<TopOrder>;
    type Output = Vec<RankedOrder>;

    fn description(&self) -> String {
        "the k orders of largest value (params: k = 10, from, to)".into()
    }

    fn map(&self, params: &TopParams, shard: &Shard) -> Result<Vec<TopOrder>, AnalysisError> {
        params.check()?;
        // A max-heap on rank holds the best k seen: its top is the worst of them.
        let mut best: BinaryHeap<TopOrder> = BinaryHeap::with_capacity(params.k + 1);
        for_each_sale(shard, &params.dates(), |sale| {
            let value_cents = sale.cents()?;
            best.push(TopOrder {
                order_id: sale.order_id,
                region: shard.id().to_string(),
                date: sale.date,
                product_id: sale.product_id,
                value_cents,
            });
            if best.len() > params.k {
                best.pop();
            }
            Ok(())
        })?;
        Ok(best.into_sorted_vec())
    }

    fn reduce(
        &self,
        params: &TopParams,
        partials: Vec<Vec<TopOrder>>,
    ) -> Result<Vec<TopOrder>, AnalysisError> {
        let mut all: Vec<TopOrder> = partials.into_iter().flatten().collect();
        all.sort();
        all.truncate(params.k);
        Ok(all)
    }

    fn finish(&self, _: &TopParams, top: Vec<TopOrder>) -> Result<Vec<RankedOrder>, AnalysisError> {
        Ok(top
            .into_iter()
            .map(|order| RankedOrder {
                value: money(order.value_cents),
                order_id: order.order_id,
                region: order.region,
                date: order.date,
                product_id: order.product_id,
            })
            .collect())
    }
}

/// Cents as `"1234.50"`.
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:02}",
        cents.unsigned_abs() / 100,
        cents.unsigned_abs() % 100
    )
}
