//! Analyses the `dram` binary serves out of the box; a custom server registers
//! any of them with [`register`] or one by one.
//!
//! - `files`: per shard, the number of files and bytes.

mod files;

pub use files::Files;

use crate::builder::NodeBuilder;

/// Registers every built-in analysis under its usual name.
pub fn register(builder: NodeBuilder) -> NodeBuilder {
    builder.analysis("files", Files)
}
