//! The primary: the one member allowed to do destructive work (trash, garbage
//! collection, rebalancing moves).
//!
//! - `election`: who the primary is, from the members' gossiped views — pure.
//! - `role`: this member's part in the election each round ([`Role`]).
//! - `round`: the settled primary's round: backups, verified trashes of extra
//!   copies, rebalancing moves, garbage collection.
//! - `actions`: trashing extra copies over HTTP, and the checks a holder makes.
//! - `report`: `/v1/plan`, `/v1/gc` and the holder's side of a trash.
//! - `gc`: which databases garbage collection may delete, coldest first — pure.

pub mod actions;
pub mod election;
pub mod gc;
mod report;
mod role;
mod round;

pub use election::{Primary, PrimaryState, View, candidate, elect};
pub use report::{GcReport, PlanReport, WhatIf, what_if_replicas};
pub use role::Role;
