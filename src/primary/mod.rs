//! The primary: the one member allowed to do destructive work (trash, garbage
//! collection, rebalancing moves).
//!
//! - `election`: who the primary is, from the members' gossiped views — pure.

pub mod election;

pub use election::{Primary, PrimaryState, View, candidate, elect};
