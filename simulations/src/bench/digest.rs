//! `digest` (issue 25): the bytes of a gossip round's opening message (a
//! `Syn`: chitchat's digest of every member it knows) as chitchat 0.13
//! writes it, uncompressed (`V0`, what dram sent before) and zstd-compressed
//! (`V1`, what it sends once every live member reads it), for clusters of
//! 10 to 10,000 members with dram-like ids and addresses — and so the
//! largest cluster whose `Syn` fits one UDP datagram (65,507 bytes) in each.
//! Not a model: a real chitchat holds the members' states, and its own
//! socket encodes the message it sends.
//!
//! ```text
//! cargo run -p simulations --release -- bench --only digest
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatId, ChitchatMessage, DeletionStatus,
    FailureDetectorConfig, ProtocolVersion, VersionedValue, spawn_chitchat,
};

use super::nodes::runtime;
use super::{Settings, Table, ratio};

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    let sizes: &[usize] = if settings.quick {
        &[10, 1_000]
    } else {
        &[10, 100, 500, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000]
    };
    let runtime = runtime()?;
    let mut table = Table::new(
        "digest: a gossip round's Syn, uncompressed (V0) and compressed (V1)",
        &[
            "members", "V0 bytes", "V1 bytes", "V1/V0", "V0 fits", "V1 fits",
        ],
    );
    let mut largest = [None::<usize>; 2];
    for &n in sizes {
        let mut bytes = [0usize; 2];
        for (i, version) in [ProtocolVersion::V0, ProtocolVersion::V1]
            .into_iter()
            .enumerate()
        {
            bytes[i] = runtime.block_on(syn_bytes(n, version))?;
            if bytes[i] <= MAX_DATAGRAM {
                largest[i] = Some(n);
            }
        }
        let fits = |b: usize| if b <= MAX_DATAGRAM { "yes" } else { "no" }.to_string();
        let shown = |b: usize| {
            if b <= MAX_DATAGRAM {
                b.to_string()
            } else {
                format!("> {MAX_DATAGRAM}")
            }
        };
        let both_fit = bytes.iter().all(|b| *b <= MAX_DATAGRAM);
        table.row(vec![
            n.to_string(),
            shown(bytes[0]),
            shown(bytes[1]),
            if both_fit {
                ratio(bytes[1] as f64, bytes[0] as f64)
            } else {
                "-".into()
            },
            fits(bytes[0]),
            fits(bytes[1]),
        ]);
    }
    // The limit between the largest size that fit and the next, to 10 members.
    for (i, version) in [ProtocolVersion::V0, ProtocolVersion::V1]
        .into_iter()
        .enumerate()
    {
        let Some(mut fits) = largest[i] else { continue };
        let Some(mut fails) = sizes.iter().copied().find(|&n| n > fits) else {
            continue;
        };
        while fails - fits > 10 {
            let middle = (fits + fails) / 2;
            if runtime.block_on(syn_bytes(middle, version))? <= MAX_DATAGRAM {
                fits = middle;
            } else {
                fails = middle;
            }
        }
        largest[i] = Some(fits);
    }
    let show = |n: Option<usize>| n.map_or("none measured".into(), |n| format!("{n}"));
    table.note(format!(
        "largest cluster whose Syn fits one datagram ({MAX_DATAGRAM} bytes; bisected to 10 \
         members): V0 {}, V1 {}. Members named like dram's (`node-` and 8 hex digits), each at its own address, \
         with a start time as generation and a few hundred key versions; a Syn larger than a \
         datagram is not sent at all (the UDP send fails), so past the V0 limit an uncompressed \
         cluster stops gossiping.",
        show(largest[0]),
        show(largest[1]),
    ));
    table.note("command: cargo run -p simulations --release -- bench --only digest");
    Ok(vec![table])
}

/// The bytes of the first `Syn` a chitchat that knows `n` members (itself
/// included) sends in `version`; above a datagram, the bytes it would take.
async fn syn_bytes(n: usize, version: ProtocolVersion) -> Result<usize> {
    let capture = Capture::default();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let self_id = ChitchatId::new("node-00000000", 1_765_000_000_000, listen);
    let config = ChitchatConfig {
        chitchat_id: self_id,
        cluster_id: "bench".into(),
        // Rounds far apart: the populated state is in place before the
        // first one that counts.
        gossip_interval: Duration::from_millis(200),
        listen_addr: listen,
        // Somewhere to gossip to: the round's Syn goes to a seed.
        seed_nodes: vec!["127.0.0.1:9".into()],
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: version,
    };
    let handle = spawn_chitchat(config, Vec::new(), &capture).await?;
    {
        let chitchat = handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        for i in 1..n {
            let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7071));
            let id = ChitchatId::new(
                format!("node-{:08x}", (i as u64).wrapping_mul(0x9e37_79b9) as u32),
                1_765_000_000_000 + i as u64 * 1_013,
                addr,
            );
            let max_version = 200 + (i as u64 * 7) % 300;
            let values = ["node", "registry", "inv", "load"].map(|key| {
                (
                    key.to_string(),
                    VersionedValue {
                        value: format!("{key}-{i}"),
                        version: max_version,
                        status: DeletionStatus::Set,
                    },
                )
            });
            chitchat.reset_node_state_if_update(&id, values.into_iter(), max_version, 0);
        }
    }
    *capture.wanted.lock().expect("not poisoned") = true;
    let bytes = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(bytes) = *capture.bytes.lock().expect("not poisoned") {
                return bytes;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("chitchat sent no Syn within 10 s")?;
    handle.shutdown().await?;
    Ok(bytes)
}

/// A transport that writes each `Syn` with chitchat's own UDP socket to a
/// loopback socket of its own and counts the datagram's bytes (sends
/// nothing anywhere else).
#[derive(Clone, Default)]
struct Capture {
    /// Set once the state is populated: Syns before it do not count.
    wanted: Arc<Mutex<bool>>,
    bytes: Arc<Mutex<Option<usize>>>,
}

#[async_trait]
impl Transport for Capture {
    async fn open(&self, _listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = UdpSocket::open(loopback).await?;
        let sink = tokio::net::UdpSocket::bind(loopback).await?;
        Ok(Box::new(CaptureSocket {
            capture: self.clone(),
            codec,
            sink,
        }))
    }
}

struct CaptureSocket {
    capture: Capture,
    codec: UdpSocket,
    sink: tokio::net::UdpSocket,
}

#[async_trait]
impl Socket for CaptureSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.codec.local_addr()
    }

    async fn send(
        &mut self,
        _to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let is_syn = matches!(envelope.message, ChitchatMessage::Syn { .. });
        if !is_syn || !*self.capture.wanted.lock().expect("not poisoned") {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let sink = self.sink.local_addr()?;
        let bytes = match self.codec.send(sink, envelope).await {
            Ok(_) => {
                let mut buf = vec![0u8; 1 << 17];
                let (len, _) = self.sink.recv_from(&mut buf).await?;
                len
            }
            // Larger than a datagram: not sent (shown as "> 65507").
            Err(_) => MAX_DATAGRAM + 1,
        };
        *self.capture.bytes.lock().expect("not poisoned") = Some(bytes);
        Ok(SendOutcome {
            num_bytes_sent: bytes,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        std::future::pending().await
    }
}
