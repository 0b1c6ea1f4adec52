//! The `dram` binary's own modules (the library does not use them): the
//! command line's grammar, what each command does, and how answers print.

pub mod args;
pub mod commands;
pub mod output;
