//! Garbage on the gossip port: random bytes, empty and oversized datagrams,
//! chitchat headers with garbage behind them. The node drops them and keeps
//! gossiping.

use std::time::{Duration, Instant};

use dram::Config;
use dram::client::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::node;
use crate::support::{eventually, publish};

/// A chitchat header: magic number 45139 (little-endian), protocol version,
/// message type.
fn gossip_header(version: u8, message: u8) -> Vec<u8> {
    let mut bytes = 45_139u16.to_le_bytes().to_vec();
    bytes.extend([version, message]);
    bytes
}

#[tokio::test]
async fn garbage_on_the_gossip_port_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let tune = |c: &mut Config| {
        c.cluster.gossip_interval_ms = 100;
        c.cluster.node_left_delay_secs = 0;
    };
    let (first, first_client) = node(&dir.path().join("n1"), tune).await;
    let seed = first.node.config().cluster.gossip_listen.clone();
    let (second, second_client) = node(&dir.path().join("n2"), |c| {
        tune(c);
        c.cluster.seeds = vec![seed.clone()];
    })
    .await;
    let live = |client: &Client| {
        let client = client.clone();
        async move {
            let cluster = client.get("/v1/cluster").await.unwrap();
            cluster["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["live"] == true)
                .count()
        }
    };
    eventually(15, "two live members", || async {
        live(&first_client).await == 2 && live(&second_client).await == 2
    })
    .await;

    let seed_value = 7;
    let mut rng = StdRng::seed_from_u64(seed_value);
    let mut packets: Vec<Vec<u8>> = Vec::new();
    packets.extend((0..200).map(|_| {
        let len = rng.random_range(0..1500);
        (0..len).map(|_| rng.random()).collect()
    }));
    packets.extend(std::iter::repeat_n(Vec::new(), 5));
    packets.push((0..65_507).map(|_| rng.random()).collect());
    for version in [0, 1, 9] {
        for message in [0, 1, 2, 3, 200] {
            let mut packet = gossip_header(version, message);
            packet.extend((0..rng.random_range(0..600)).map(|_| rng.random::<u8>()));
            packets.push(packet);
            packets.push(gossip_header(version, message));
        }
    }
    // A Syn claiming 65,535 digests, and well-formed Syns from a stranger, of
    // this cluster and of another.
    let mut claim = gossip_header(0, 0);
    claim.extend([0xff, 0xff, 1, 2, 3]);
    packets.push(claim);
    for cluster in ["dram", "other"] {
        let mut syn = gossip_header(0, 0);
        syn.extend(0u16.to_le_bytes());
        syn.extend((cluster.len() as u16).to_le_bytes());
        syn.extend(cluster.as_bytes());
        packets.push(syn);
    }
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for server in [&first, &second] {
        let target = &server.node.config().cluster.gossip_listen;
        for packet in &packets {
            // Oversized or refused datagrams may fail to send: that is fine.
            let _ = socket.send_to(packet, target).await;
        }
    }

    // Both keep serving and keep gossiping: still two live members over a
    // span in which a dead gossip loop would have been noticed, and a change
    // made on one is acknowledged by the other.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(live(&first_client).await, 2, "seed {seed_value}");
        assert_eq!(live(&second_client).await, 2, "seed {seed_value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first_client.get("/v1/health").await.unwrap();
    second_client.get("/v1/health").await.unwrap();
    let files: &[(&str, &[u8])] = &[("a.csv", b"n\n1\n")];
    publish(
        &dir.path().join("n1"),
        &first.node.config().store,
        "after",
        files,
    )
    .await;
    let body = json!({"name": "after", "source": "after"});
    let answer = first_client.post("/v1/databases", &body).await.unwrap();
    assert_eq!(answer["acknowledged"], true, "{answer}");
    second_client.get("/v1/databases/after").await.unwrap();
    second.shutdown().await;
    first.shutdown().await;
}
