//! `idle`: what an idle cluster of 20 dram nodes costs each node: resident
//! memory, and network bytes per second (gossip, and any node-to-node HTTP),
//! beside bare chitchat clusters of the same size and interval.
//!
//! ```text
//! cargo build --release --bin dram
//! cargo run -p simulations --release -- bench --only idle [--quick]
//! ```
//!
//! Twenty release `dram serve` processes (5 with `--quick`) form one cluster
//! (every node seeds on the first), at gossip intervals of 1000 ms (the
//! default) and 100 ms. Once every node lists all members live (GET
//! /v1/cluster) and a few rounds passed, the loopback counters are read over
//! 10 s (3 s with `--quick`) and each process's VmRSS. Everything runs in a
//! network namespace of its own (unshare(2) on the measuring thread; its
//! children inherit it), so the counters hold only this cluster's traffic;
//! where that is not allowed, the host's loopback counters are used instead
//! (and say so).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig, spawn_chitchat};

use super::support::{DramProcess, dram_binary, free_udp_port, median, node_config, wait_for};
use super::{Settings, Table, ratio};

const INTERVALS_MS: [u64; 2] = [1000, 100];

/// One measured cluster.
struct Idle {
    members_secs: f64,
    rss_mb: Vec<f64>,
    bytes_per_node: f64,
    udp_per_node: f64,
    tcp_segments: f64,
}

pub fn run(settings: &Settings) -> Result<Vec<Table>> {
    let nodes = if settings.quick { 5 } else { 20 };
    let window = Duration::from_secs(if settings.quick { 3 } else { 10 });
    let binary = dram_binary()?;
    std::thread::spawn(move || -> Result<Table> {
        // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread to a new
        // network namespace; no memory is involved.
        let isolated = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
        if isolated {
            let status = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .context("cannot run `ip link set lo up` in the new network namespace")?;
            if !status.success() {
                bail!("`ip link set lo up` failed in the new network namespace");
            }
        }
        let mut table = Table::new(
            format!("idle: {nodes} nodes, per node, counters over {window:?}"),
            &[
                "cluster",
                "gossip ms",
                "all live after s",
                "RSS median MB",
                "RSS max MB",
                "B/s per node",
                "UDP dgrams/s/node",
                "TCP segs/s",
                "B/s vs chitchat",
            ],
        );
        for interval in INTERVALS_MS {
            let dram = dram_cluster(&binary, nodes, interval, window)?;
            let bare = chitchat_cluster(nodes, interval, window)?;
            for (label, idle) in [("dram", &dram), ("chitchat alone", &bare)] {
                let rss = |v: f64| {
                    if v.is_nan() {
                        "-".to_string()
                    } else {
                        format!("{v:.1}")
                    }
                };
                let max = idle.rss_mb.iter().copied().fold(f64::NAN, f64::max);
                table.row(vec![
                    label.to_string(),
                    interval.to_string(),
                    format!("{:.1}", idle.members_secs),
                    rss(median(&idle.rss_mb)),
                    rss(max),
                    format!("{:.0}", idle.bytes_per_node),
                    format!("{:.1}", idle.udp_per_node),
                    format!("{:.1}", idle.tcp_segments),
                    ratio(idle.bytes_per_node, bare.bytes_per_node),
                ]);
            }
        }
        table.note(format!(
            "dram: {nodes} processes of {} serve --config nK.toml (data_dir and one [[disks]] there, max_bytes 16 GB; http_listen \
             127.0.0.1:0, gossip_listen 127.0.0.1:<free>, seeds = [node 0's gossip address], \
             gossip_interval_ms; RUST_LOG=warn), started {{interval/{nodes}}} ms apart",
            binary.display()
        ));
        table.note(
            "chitchat alone: chitchat 0.13 over UDP in this process, the same ChitchatConfig as \
             dram's (failure detector initial_interval = the gossip interval), one 120-byte key \
             per node (dram's `node` key is about that size)",
        );
        table.note(format!(
            "all live after = from the last start until every node lists {nodes} live members \
             (GET /v1/cluster, polled); then 5 rounds and at least 15 s pass before the window (the joins' registry and inventory pulls leave pooled HTTP connections that close 5–10 s later). \
             B/s = loopback transmit bytes (IP and UDP/TCP headers included) / window / nodes; \
             UDP dgrams = Udp OutDatagrams, TCP segs = Tcp OutSegs of all nodes (node-to-node \
             HTTP; none is expected when idle); RSS = VmRSS of each dram process at the window's end"
        ));
        table.note(if isolated {
            "counters: /proc/thread-self/net/{dev,snmp} of a network namespace holding only this \
             cluster (unshare(CLONE_NEWNET) on the measuring thread)"
        } else {
            "counters: the HOST's loopback (unshare(CLONE_NEWNET) not permitted here): other \
             traffic on 127.0.0.1 during the window is counted too"
        });
        Ok(table)
    })
    .join()
    .map_err(|_| anyhow!("the idle measurement panicked"))?
    .map(|table| vec![table])
}

/// Loopback bytes sent, UDP datagrams sent and TCP segments sent, in the
/// calling thread's network namespace.
fn counters() -> Result<(u64, u64, u64)> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    let lo_tx = dev
        .lines()
        .find_map(|l| l.trim().strip_prefix("lo:"))
        .and_then(|rest| rest.split_whitespace().nth(8)?.parse().ok())
        .context("no lo line in /proc/thread-self/net/dev")?;
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    let field = |protocol: &str, name: &str| -> Result<u64> {
        let mut lines = snmp.lines().filter(|l| l.starts_with(protocol));
        let (header, values) = (lines.next(), lines.next());
        let index = header
            .and_then(|h| h.split_whitespace().position(|f| f == name))
            .with_context(|| format!("no {protocol} {name} in /proc/thread-self/net/snmp"))?;
        values
            .and_then(|v| v.split_whitespace().nth(index)?.parse().ok())
            .with_context(|| format!("no {protocol} {name} value"))
    };
    Ok((
        lo_tx,
        field("Udp:", "OutDatagrams")?,
        field("Tcp:", "OutSegs")?,
    ))
}

/// Reads the counters over `window` (after waiting `settle`): per second.
fn rates(settle: Duration, window: Duration, wait: impl Fn(Duration)) -> Result<[f64; 3]> {
    wait(settle);
    let before = counters()?;
    wait(window);
    let after = counters()?;
    let secs = window.as_secs_f64();
    Ok([
        (after.0 - before.0) as f64 / secs,
        (after.1 - before.1) as f64 / secs,
        (after.2 - before.2) as f64 / secs,
    ])
}

/// Time left after full membership before counting: 5 rounds, and at least
/// long enough for the HTTP connections of the joins (registry and inventory
/// pulls, idle after it) to be closed by the peers' client pools (5 s idle,
/// checked now and then: 5 to 10 s).
fn settle(interval_ms: u64) -> Duration {
    Duration::from_millis((interval_ms * 5).max(15_000))
}

fn dram_cluster(binary: &Path, n: usize, interval_ms: u64, window: Duration) -> Result<Idle> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store)?;
    let store_url = format!("file://{}", store.display());
    let mut nodes: Vec<DramProcess> = Vec::with_capacity(n);
    let mut seeds = Vec::new();
    for i in 0..n {
        let port = free_udp_port()?;
        let config = dir.path().join(format!("n{i}.toml"));
        let data = dir.path().join(format!("n{i}"));
        std::fs::write(
            &config,
            node_config(&data, &store_url, port, &seeds, interval_ms),
        )?;
        nodes.push(DramProcess::start(binary, &config, &[])?);
        if i == 0 {
            seeds.push(format!("127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(interval_ms / n as u64 + 1));
    }
    let started = Instant::now();
    for node in &nodes {
        wait_for(
            Duration::from_secs(120),
            "every node to see all members live",
            || {
                let status = node.get("/v1/cluster").ok()?;
                let live = crate::cluster::live_count(&status);
                (live == n).then_some(())
            },
        )?;
    }
    let members_secs = started.elapsed().as_secs_f64();
    let [bytes, udp, tcp] = rates(settle(interval_ms), window, std::thread::sleep)?;
    let rss_mb = nodes
        .iter()
        .map(|node| Ok(node.status_kb("VmRSS")? as f64 / 1024.0))
        .collect::<Result<Vec<f64>>>()?;
    Ok(Idle {
        members_secs,
        rss_mb,
        bytes_per_node: bytes / n as f64,
        udp_per_node: udp / n as f64,
        tcp_segments: tcp,
    })
}

/// The same cluster of bare chitchat instances in this process (on this
/// thread, so in the same network namespace).
fn chitchat_cluster(n: usize, interval_ms: u64, window: Duration) -> Result<Idle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let interval = Duration::from_millis(interval_ms);
    let (handles, members_secs) = runtime.block_on(async {
        let mut handles = Vec::with_capacity(n);
        let mut seeds = Vec::new();
        for i in 0..n {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_udp_port()?).parse()?;
            let config = ChitchatConfig {
                chitchat_id: ChitchatId::new(format!("n{i:03}"), 1, addr),
                cluster_id: "bench".into(),
                gossip_interval: interval,
                listen_addr: addr,
                seed_nodes: seeds.clone(),
                failure_detector_config: FailureDetectorConfig {
                    initial_interval: interval,
                    max_interval: interval.max(Duration::from_secs(10)),
                    ..FailureDetectorConfig::default()
                },
                marked_for_deletion_grace_period: Duration::from_secs(3600),
                catchup_callback: None,
                extra_liveness_predicate: None,
                // What dram sends once every member reads it (`cluster::wire`).
                protocol_version: chitchat::ProtocolVersion::V1,
            };
            let value = format!(
                "{{\"http\":\"127.0.0.1:{}\",\"pad\":\"{}\"}}",
                40000 + i,
                "x".repeat(90)
            );
            handles
                .push(spawn_chitchat(config, vec![("node".into(), value)], &UdpTransport).await?);
            if i == 0 {
                seeds.push(addr.to_string());
            }
            tokio::time::sleep(Duration::from_millis(interval_ms / n as u64 + 1)).await;
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        for handle in &handles {
            while handle.chitchat().lock().await.live_nodes().count() < n {
                if Instant::now() > deadline {
                    bail!("bare chitchat: {n} nodes did not all see each other within 120 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok((handles, started.elapsed().as_secs_f64()))
    })?;
    // The gossip runs while this thread waits inside the runtime.
    let measured = rates(settle(interval_ms), window, |d| {
        runtime.block_on(async { tokio::time::sleep(d).await })
    });
    runtime.block_on(async {
        for handle in handles {
            let _ = handle.shutdown().await;
        }
    });
    let [bytes, udp, tcp] = measured?;
    Ok(Idle {
        members_secs,
        rss_mb: Vec::new(),
        bytes_per_node: bytes / n as f64,
        udp_per_node: udp / n as f64,
        tcp_segments: tcp,
    })
}
