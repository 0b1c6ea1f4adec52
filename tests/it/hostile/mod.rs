//! Hostile input against real nodes on 127.0.0.1, each test a small script
//! checking what the node answers and that it keeps serving:
//!
//! - `paths.rs`: names, shard ids, manifest paths and sources that try to
//!   leave the data folder;
//! - `bodies.rs`: bodies too large, malformed or nested too deep, headers too
//!   large;
//! - `clients.rs`: clients that send too slowly or open too many connections,
//!   more queries than allowed;
//! - `gossip.rs`: garbage on the gossip port.

mod bodies;
mod clients;
mod gossip;
mod paths;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dram::client::Client;
use dram::{Config, Node, Server};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{config, load, publish, serve};

/// A node serving the built-in analyses, with `tune` applied to its config.
pub async fn node(dir: &Path, tune: impl FnOnce(&mut Config)) -> (Server, Client) {
    let mut config = config(dir);
    tune(&mut config);
    serve(dram::builtin::register(Node::builder(config))).await
}

/// Publishes and loads `good`: shards `a` and `b`, one CSV file each.
pub async fn load_good(dir: &Path, server: &Server, client: &Client) {
    let files: &[(&str, &[u8])] = &[
        ("shards/a/x.csv", b"n\n1\n2\n"),
        ("shards/b/y.csv", b"n\n3\n"),
    ];
    publish(dir, &server.node.config().store, "good", files).await;
    let info = load(client, json!({"name": "good", "source": "good"})).await;
    assert_eq!(info["state"], "ready", "{info}");
}

/// Sends `request` on a new connection and reads until the server closes it
/// (or `within` passes): what came back.
pub async fn exchange(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Waits (at most `within`) until the server closes `stream`; when it did.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> Instant {
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => panic!("the connection is still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
            Ok(Ok(_)) => {} // an answer before the close (e.g. a 408): read on
        }
    }
}

/// Every path under `dir`, relative to it.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.path().strip_prefix(dir).ok().map(Path::to_path_buf))
        .collect();
    paths.sort();
    paths
}
