//! What this node tells its operators: Prometheus metrics (`metrics`), the
//! event log (`events`: reads, writes and errors per disk, kept in the
//! catalog) and the load of its map work (`load`, gossiped). Each is a small
//! component with its own state; the index and stats views read this
//! member's storage and live with it (`local::index`, `local::stats`).

pub mod events;
pub mod load;
pub mod metrics;

pub use events::Events;
pub use load::{Load, LoadGuard, LoadTracker};
pub use metrics::{Gauge, Metrics};
