//! The primary: the one member allowed to do destructive work (trash, garbage
//! collection, rebalancing moves).
//!
//! - `election`: who the primary is, from the members' gossiped views — pure.
//! - `gc`: which databases garbage collection may delete, coldest first — pure.
//! - `actions`: trashing extra copies over HTTP, and the checks a holder makes.

pub mod actions;
pub mod election;
pub mod gc;

pub use election::{Primary, PrimaryState, View, candidate, elect};
