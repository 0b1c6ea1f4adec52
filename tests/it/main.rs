//! Integration tests: real nodes on 127.0.0.1, driven through the HTTP API (and the
//! library API where the issue names it, e.g. lazy opens). One test binary.

mod aliases;
mod auth;
mod backup;
mod builtin;
mod cache;
mod cluster;
mod dashboard;
mod databases;
mod deploy;
mod example;
mod fanout;
mod hostile;
mod index;
mod metrics;
mod pg;
mod placement;
mod query;
mod readme;
mod restart;
mod s3;
mod scrub;
mod sql;
mod support;
mod tls;
mod tpch;
