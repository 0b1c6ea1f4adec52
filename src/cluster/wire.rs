//! The gossip wire version, rolled out safely. chitchat 0.13 writes a
//! message's digest uncompressed (`ProtocolVersion::V0`) or zstd-compressed
//! (`V1`); a dram older than this module reads V0 only. Each member
//! gossips the versions it reads (the `gossip` field of its `node` key;
//! absent: V0 only) and sends V1 once every live member reads it, V0 until
//! then: a rolling upgrade never sends a member a datagram it cannot read,
//! and the cluster moves to V1 once its last old member has left.
//!
//! chitchat answers a message in the version it came in, and starts a
//! round (a `Syn`) in the version of its configuration; the socket here
//! sets the version the cluster agreed on on each `Syn`, just before it is
//! encoded (by the transport underneath: plain or signed UDP, or a test's
//! channels). A member that predates V1 joining a cluster already on V1 may
//! be sent a few `Syn`s it cannot read until the others have heard it (its
//! own rounds, in V0, are answered in V0): it is dropped as a reader of
//! that version would drop it, and counted in
//! `dram_gossip_rejected_total{reason="unreadable_version"}`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use prometheus::IntCounterVec;

use crate::sync::lock;

/// Every version this dram reads.
pub const READS: [ProtocolVersion; 2] = [ProtocolVersion::V0, ProtocolVersion::V1];

/// The version a member sends: the newest every live member reads (`reads`
/// of each, this one's included). A member that gossips no versions reads
/// V0 only.
pub fn agreed<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> ProtocolVersion {
    let everyone_reads_v1 = reads
        .into_iter()
        .all(|versions| versions.contains(&ProtocolVersion::V1.to_code()));
    if everyone_reads_v1 {
        ProtocolVersion::V1
    } else {
        ProtocolVersion::V0
    }
}

/// The version this member sends now, shared by its socket and its rounds.
#[derive(Clone)]
pub(crate) struct WireVersion(Arc<AtomicU8>);

impl WireVersion {
    /// V0 until the first round has heard the other members.
    pub(crate) fn new() -> WireVersion {
        WireVersion(Arc::new(AtomicU8::new(ProtocolVersion::V0.to_code())))
    }

    pub(crate) fn get(&self) -> ProtocolVersion {
        ProtocolVersion::from_code(self.0.load(Ordering::Relaxed)).unwrap_or(ProtocolVersion::V0)
    }

    /// Sets the version; true when it changed.
    pub(crate) fn set(&self, version: ProtocolVersion) -> bool {
        self.0.swap(version.to_code(), Ordering::Relaxed) != version.to_code()
    }
}

/// A transport whose socket was opened beforehand (so that a bind error is
/// reported as it is), handing chitchat that socket with the wire version
/// set on every message.
pub(crate) struct VersionedTransport {
    socket: Mutex<Option<VersionedSocket>>,
}

impl VersionedTransport {
    /// Opens `inner`'s socket on `listen`.
    pub(crate) async fn open(
        inner: &dyn Transport,
        listen: SocketAddr,
        version: WireVersion,
        reads: &[ProtocolVersion],
        rejected: Option<IntCounterVec>,
    ) -> anyhow::Result<VersionedTransport> {
        let socket = inner.open(listen).await?;
        Ok(VersionedTransport {
            socket: Mutex::new(Some(VersionedSocket {
                inner: socket,
                version,
                reads: reads.to_vec(),
                rejected,
            })),
        })
    }
}

#[async_trait]
impl Transport for VersionedTransport {
    async fn open(&self, _listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = lock(&self.socket).take();
        match socket {
            Some(socket) => Ok(Box::new(socket)),
            None => anyhow::bail!("the gossip socket was already handed out"),
        }
    }
}

struct VersionedSocket {
    inner: Box<dyn Socket>,
    version: WireVersion,
    reads: Vec<ProtocolVersion>,
    rejected: Option<IntCounterVec>,
}

#[async_trait]
impl Socket for VersionedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        mut envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // A reply keeps the version chitchat gave it, the version of the
        // message it answers: a member that predates V1 always gets its
        // answers in V0, and is heard (and counted) even by a cluster
        // already on V1.
        if matches!(envelope.message, ChitchatMessage::Syn { .. }) {
            envelope.version = self.version.get();
        }
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let received = self.inner.recv().await?;
            if self.reads.contains(&received.envelope.version) {
                return Ok(received);
            }
            tracing::debug!(from = %received.from_addr, version = ?received.envelope.version,
                "gossip datagram in a version this member does not read, dropped");
            if let Some(counter) = &self.rejected
                && let Ok(counter) = counter.get_metric_with_label_values(&["unreadable_version"])
            {
                counter.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chitchat::transport::ChannelTransport;

    use super::*;

    async fn socket(
        channels: &ChannelTransport,
        port: u16,
        sends: ProtocolVersion,
        reads: &[ProtocolVersion],
        rejected: &IntCounterVec,
    ) -> Box<dyn Socket> {
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let version = WireVersion::new();
        version.set(sends);
        VersionedTransport::open(channels, listen, version, reads, Some(rejected.clone()))
            .await
            .unwrap()
            .open(listen)
            .await
            .unwrap()
    }

    fn syn() -> ChitchatMessage {
        ChitchatMessage::Syn {
            cluster_id: "c".into(),
            digest: Default::default(),
        }
    }

    /// A round starts in the agreed version, a reply keeps the version of
    /// what it answers, and a member drops what it cannot read.
    #[tokio::test]
    async fn rounds_start_in_the_agreed_version_and_replies_echo() {
        let rejected = IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap();
        let channels = ChannelTransport::default();
        let mut new = socket(&channels, 1, ProtocolVersion::V1, &READS, &rejected).await;
        let mut old = socket(
            &channels,
            2,
            ProtocolVersion::V0,
            &[ProtocolVersion::V0],
            &rejected,
        )
        .await;
        let (new_addr, old_addr) = (new.local_addr().unwrap(), old.local_addr().unwrap());
        let envelope = |version, message| ChitchatEnvelope { version, message };

        // A Syn goes out in V1 whatever chitchat set: the old member drops it.
        new.send(old_addr, envelope(ProtocolVersion::V0, syn()))
            .await
            .unwrap();
        // A reply in V0 (chitchat echoes the version it was asked in) stays V0.
        new.send(
            old_addr,
            envelope(ProtocolVersion::V0, ChitchatMessage::BadCluster),
        )
        .await
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), old.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got.envelope,
            envelope(ProtocolVersion::V0, ChitchatMessage::BadCluster)
        );
        assert_eq!(
            rejected.with_label_values(&["unreadable_version"]).get(),
            1,
            "the V1 Syn"
        );
        // The old member's Syn goes out in V0 and is read by the new one.
        old.send(new_addr, envelope(ProtocolVersion::V1, syn()))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), new.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.envelope, envelope(ProtocolVersion::V0, syn()));
    }

    #[test]
    fn v1_once_every_member_reads_it() {
        let both: &[u8] = &[0, 1];
        let old: &[u8] = &[];
        let pinned: &[u8] = &[0];
        assert_eq!(agreed([both, both]), ProtocolVersion::V1);
        assert_eq!(agreed([both, old, both]), ProtocolVersion::V0);
        assert_eq!(agreed([both, pinned]), ProtocolVersion::V0);
        assert_eq!(agreed([both]), ProtocolVersion::V1, "alone");
    }
}
