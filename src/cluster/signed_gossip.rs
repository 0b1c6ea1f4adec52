//! Gossip datagrams signed with the cluster secret: an HMAC-SHA256 tag after
//! every datagram. With `auth.cluster_secret` set, a datagram without a valid
//! tag — from a stranger, or a member with another secret — is dropped before
//! chitchat reads it and counted in `dram_gossip_rejected_total`: whoever can
//! send UDP to the gossip port can neither join the cluster nor change what
//! it believes. Without a secret, datagrams are chitchat's own.
//!
//! chitchat 0.13 keeps its message encoding to itself, so the bytes are got
//! through its own UDP socket, bound on loopback: a message to send goes from
//! it to a relay socket here, is signed and leaves by the gossip socket; a
//! datagram that arrives is checked, and its message handed to chitchat's
//! socket to decode. Every step but the wait for a datagram is immediate.
//!
//! A tag proves a datagram came from a holder of the secret; a replay of one
//! seen before is not refused (chitchat's versions make an old state
//! harmless).

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use hmac::{Hmac, Mac};
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket as TokioUdp;

/// The largest UDP payload (IPv4), as chitchat sizes its datagrams.
const MAX_DATAGRAM: usize = 65_507;
/// Bytes of the tag after each datagram.
const TAG_BYTES: usize = 32;

type Key = [u8; 32];

/// UDP gossip, signed with a key derived from the cluster secret.
pub struct SignedUdpTransport {
    key: Key,
    rejected: Option<IntCounterVec>,
}

impl SignedUdpTransport {
    /// Signs and checks datagrams with a key derived from `cluster_secret`;
    /// refusals are counted in `rejected`, labelled by reason.
    pub fn new(cluster_secret: &str, rejected: Option<IntCounterVec>) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"dram gossip v1\0");
        hash.update(cluster_secret.as_bytes());
        SignedUdpTransport {
            key: hash.finalize().into(),
            rejected,
        }
    }
}

#[async_trait]
impl Transport for SignedUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let gossip = TokioUdp::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = UdpSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let relay = TokioUdp::bind(loopback).await?;
        let relay_addr = relay.local_addr()?;
        Ok(Box::new(SignedSocket {
            gossip,
            codec,
            codec_addr,
            relay,
            relay_addr,
            key: self.key,
            rejected: self.rejected.clone(),
            pending_from: None,
            buf: vec![0; MAX_DATAGRAM + TAG_BYTES].into_boxed_slice(),
        }))
    }
}

struct SignedSocket {
    /// The gossip socket peers talk to.
    gossip: TokioUdp,
    /// chitchat's socket: encodes what is sent, decodes what arrived.
    codec: UdpSocket,
    codec_addr: SocketAddr,
    /// Where `codec` sends encoded messages to, and relays arrivals from.
    relay: TokioUdp,
    relay_addr: SocketAddr,
    key: Key,
    rejected: Option<IntCounterVec>,
    /// The sender of a datagram handed to `codec` whose decoding a cancelled
    /// `recv` did not wait for.
    pending_from: Option<SocketAddr>,
    buf: Box<[u8]>,
}

fn mac(key: &Key, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(payload);
    mac
}

impl SignedSocket {
    fn reject(&self, from: SocketAddr, reason: &'static str) {
        tracing::debug!(%from, reason, "gossip datagram dropped");
        if let Some(counter) = &self.rejected
            && let Ok(counter) = counter.get_metric_with_label_values(&[reason])
        {
            counter.inc();
        }
    }

    /// The message of a datagram whose tag is valid.
    fn verified<'a>(&self, from: SocketAddr, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let Some(split) = datagram.len().checked_sub(TAG_BYTES) else {
            self.reject(from, "unsigned");
            return None;
        };
        let (message, tag) = datagram.split_at(split);
        if mac(&self.key, message).verify_slice(tag).is_err() {
            self.reject(from, "bad_signature");
            return None;
        }
        Some(message)
    }
}

#[async_trait]
impl Socket for SignedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.gossip
            .local_addr()
            .context("failed to get UDP socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // Nothing stale may sit in the relay (a send cancelled half-way).
        while self.relay.try_recv_from(&mut self.buf).is_ok() {}
        self.codec.send(self.relay_addr, envelope).await?;
        let len = loop {
            let (len, from) = self.relay.recv_from(&mut self.buf).await?;
            if from == self.codec_addr {
                break len;
            }
        };
        let tag = mac(&self.key, &self.buf[..len]).finalize().into_bytes();
        self.buf[len..len + TAG_BYTES].copy_from_slice(&tag);
        let signed = len + TAG_BYTES;
        if signed > MAX_DATAGRAM {
            // Only a datagram chitchat filled to the brim: too large for UDP
            // once signed. Dropped like a lost datagram; a later round retries.
            tracing::warn!(bytes = signed, %to, "signed gossip datagram too large, not sent");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        match self.gossip.send_to(&self.buf[..signed], to).await {
            Ok(num_bytes_sent) => Ok(SendOutcome { num_bytes_sent }),
            // A peer gone away is not a broken transport.
            Err(e) if transient(&e) => Ok(SendOutcome { num_bytes_sent: 0 }),
            Err(e) => Err(e).context("failed to send a gossip datagram"),
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(from_addr) = self.pending_from {
                let decoded = self.codec.recv().await?;
                self.pending_from = None;
                return Ok(RecvOutcome {
                    from_addr,
                    envelope: decoded.envelope,
                    num_bytes_received: decoded.num_bytes_received + TAG_BYTES,
                });
            }
            let (len, from) = match self.gossip.recv_from(&mut self.buf).await {
                Ok(received) => received,
                Err(e) if transient(&e) => continue,
                Err(e) => return Err(e).context("fatal UDP recv error"),
            };
            let Some(message) = self.verified(from, &self.buf[..len]) else {
                continue;
            };
            // Handed over without an await: a cancelled `recv` leaves the
            // datagram with its sender noted, and the next call decodes it.
            if self.relay.try_send_to(message, self.codec_addr).is_ok() {
                self.pending_from = Some(from);
            }
        }
    }
}

fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, ConnectionReset, OutOfMemory};
    matches!(e.kind(), ConnectionRefused | ConnectionReset | OutOfMemory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chitchat::ChitchatMessage;

    fn envelope() -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: chitchat::ProtocolVersion::V0,
            message: ChitchatMessage::BadCluster,
        }
    }

    async fn signed(secret: &str, rejected: &IntCounterVec) -> Box<dyn Socket> {
        SignedUdpTransport::new(secret, Some(rejected.clone()))
            .open("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn only_datagrams_signed_with_the_secret_get_through() {
        let rejected = IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap();
        let mut receiver = signed("s3cret", &rejected).await;
        let to = receiver.local_addr().unwrap();
        let mut stranger = chitchat::transport::UdpTransport
            .open("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut other = signed("another", &rejected).await;
        let mut member = signed("s3cret", &rejected).await;
        stranger.send(to, envelope()).await.unwrap();
        other.send(to, envelope()).await.unwrap();
        let forged = TokioUdp::bind("127.0.0.1:0").await.unwrap();
        forged.send_to(&[7u8; 100], to).await.unwrap();
        member.send(to, envelope()).await.unwrap();
        member.send(to, envelope()).await.unwrap();
        for _ in 0..2 {
            let received = tokio::time::timeout(std::time::Duration::from_secs(5), receiver.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(received.from_addr, member.local_addr().unwrap());
            assert_eq!(received.envelope, envelope());
        }
        let count = |reason: &str| rejected.with_label_values(&[reason]).get();
        assert_eq!(count("unsigned"), 1, "the stranger's: shorter than a tag");
        assert_eq!(
            count("bad_signature"),
            2,
            "another secret's and the forged bytes"
        );
    }

    /// `recv` is cancelled all the time (chitchat selects it against its
    /// timer): a datagram taken off the gossip socket is never lost nor
    /// given the wrong sender.
    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let rejected = IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap();
        let mut receiver = signed("k", &rejected).await;
        let to = receiver.local_addr().unwrap();
        let mut first = signed("k", &rejected).await;
        let mut second = signed("k", &rejected).await;
        first.send(to, envelope()).await.unwrap();
        second.send(to, envelope()).await.unwrap();
        let mut senders = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while senders.len() < 2 && tokio::time::Instant::now() < deadline {
            // Poll once, then drop: a cancellation at any point.
            if let Some(received) = futures::FutureExt::now_or_never(receiver.recv()) {
                senders.push(received.unwrap().from_addr);
            }
            tokio::task::yield_now().await;
        }
        senders.sort();
        let mut expected = vec![first.local_addr().unwrap(), second.local_addr().unwrap()];
        expected.sort();
        assert_eq!(senders, expected);
    }
}
