//! Analyses the `dram` binary serves out of the box; a custom server registers
//! all of them with [`register`], or one by one.
//!
//! - `files`: per shard, the number of files and bytes (from the manifest).
//! - `count`: rows of CSV, TSV and JSON-lines files, optionally filtered.
//! - `group`: count and sums per group of rows, by column name.

mod count;
mod files;
mod group;
mod rows;

#[cfg(feature = "sql")]
pub use crate::query::sql::analysis::{Sql, SqlOutput, SqlParams, SqlPartial};
pub use count::{Count, CountParams, RowCount};
pub use files::Files;
pub use group::{Group, GroupOutput, GroupParams, GroupRow};
pub use rows::{Columns, Format};

use crate::builder::NodeBuilder;

/// Every built-in analysis under its usual name (for `Client::query_direct`).
pub fn analyses() -> crate::query::Analyses {
    let mut analyses = crate::query::Analyses::default();
    // Distinct fixed names: these inserts cannot fail.
    let _ = analyses.insert("files", Files);
    let _ = analyses.insert("count", Count);
    let _ = analyses.insert("group", Group);
    #[cfg(feature = "sql")]
    let _ = analyses.insert("sql", Sql::default());
    analyses
}

/// Registers every built-in analysis under its usual name (`sql` with the
/// builder's `[sql]` settings).
pub fn register(builder: NodeBuilder) -> NodeBuilder {
    #[cfg(feature = "sql")]
    let sql = Sql::new(&builder.config().sql);
    let builder = builder
        .analysis("files", Files)
        .analysis("count", Count)
        .analysis("group", Group);
    #[cfg(feature = "sql")]
    let builder = builder.analysis("sql", sql);
    builder
}
