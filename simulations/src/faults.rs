//! Seeded fault injection for dram's simulation harness, at the two I/O edges
//! of a node: object storage ([`StoreFaults`] wraps any `ObjectStore` in a
//! [`FaultyStore`]) and gossip transport ([`Network`] hands every node a
//! [`FaultyTransport`] over real UDP). Knobs can be turned while a cluster runs;
//! every fault decision is drawn from one seeded `StdRng`, so the same seed and
//! the same sequence of calls give the same faults. Counters tell a scenario
//! what it actually exercised.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use futures::stream::{self, BoxStream, StreamExt};
use futures::{FutureExt, TryFutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Objects with this name are manifests and are never corrupted.
const MANIFEST_NAME: &str = "dram.json";

/// No timer at all without latency, so a runtime without one works unfaulted.
async fn wait(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the object store does wrong; the default does nothing wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreFaultConfig {
    /// Probability that a request fails with an injected `Generic` error.
    pub fail_rate: f64,
    /// Probability that a successful GET of a data file has one byte flipped
    /// (never for keys ending in `dram.json`, never for HEAD).
    pub corrupt_rate: f64,
    /// Added before every request.
    pub latency: Duration,
    /// Every request fails.
    pub outage: bool,
}

/// Counters since [`StoreFaults::new`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub requests: u64,
    pub failed: u64,
    pub corrupted: u64,
    /// Bytes in the bodies of successful GETs (the length of their ranges).
    pub bytes_read: u64,
}

#[derive(Debug)]
struct StoreState {
    config: StoreFaultConfig,
    rng: StdRng,
    stats: StoreStats,
}

/// Fault knobs shared by every store it wraps, with their seeded rng and
/// counters, all behind one short-held lock.
#[derive(Debug)]
pub struct StoreFaults {
    state: Mutex<StoreState>,
}

impl StoreFaults {
    pub fn new(seed: u64) -> Arc<StoreFaults> {
        Arc::new(StoreFaults {
            state: Mutex::new(StoreState {
                config: StoreFaultConfig::default(),
                rng: StdRng::seed_from_u64(seed),
                stats: StoreStats::default(),
            }),
        })
    }

    pub fn set(&self, config: StoreFaultConfig) {
        lock(&self.state).config = config;
    }

    pub fn config(&self) -> StoreFaultConfig {
        lock(&self.state).config
    }

    /// Back to no faults; the rng and counters carry on.
    pub fn heal(&self) {
        self.set(StoreFaultConfig::default());
    }

    pub fn stats(&self) -> StoreStats {
        lock(&self.state).stats
    }

    pub fn wrap(self: &Arc<Self>, inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(FaultyStore {
            inner,
            faults: Arc::clone(self),
        })
    }

    /// Counts a request and decides, now, whether it fails.
    fn decide(&self) -> Result<()> {
        let mut state = lock(&self.state);
        let draw: f64 = state.rng.random();
        let outage = state.config.outage;
        let fail = outage || draw < state.config.fail_rate;
        state.stats.requests += 1;
        state.stats.failed += u64::from(fail);
        if !fail {
            return Ok(());
        }
        let why = if outage { "outage" } else { "fail_rate" };
        Err(object_store::Error::Generic {
            store: "faulty",
            source: format!("injected fault ({why})").into(),
        })
    }

    /// Latency, then the failure decision: what every request goes through.
    async fn inject(&self) -> Result<()> {
        wait(self.config().latency).await;
        self.decide()
    }

    /// Where to flip a byte of a `len`-byte GET body, if it is to be corrupted.
    fn corruption(&self, location: &Path, len: u64) -> Option<u64> {
        if location.as_ref().ends_with(MANIFEST_NAME) || len == 0 {
            return None;
        }
        let mut state = lock(&self.state);
        let draw: f64 = state.rng.random();
        (draw < state.config.corrupt_rate).then(|| state.rng.random_range(0..len))
    }
}

/// An `ObjectStore` that delegates to `inner` after applying [`StoreFaults`].
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Arc<StoreFaults>,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.faults.inject().await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.faults.inject().await?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            faults: Arc::clone(&self.faults),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.faults.inject().await?;
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if head {
            return Ok(result);
        }
        let len = result.range.end.saturating_sub(result.range.start);
        match self.faults.corruption(location, len) {
            Some(at) => corrupt(result, at, &self.faults).await,
            None => {
                lock(&self.faults.state).stats.bytes_read += len;
                Ok(result)
            }
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let faults = Arc::clone(&self.faults);
        let checked = locations.and_then(move |location| {
            let faults = Arc::clone(&faults);
            async move { faults.inject().await.map(|()| location) }
        });
        self.inner.delete_stream(checked.boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let faults = Arc::clone(&self.faults);
        let listing = self.inner.list(prefix);
        // A failed listing is a stream whose only item is the error.
        async move { faults.inject().await.map(|()| listing) }
            .try_flatten_stream()
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.faults.inject().await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.faults.inject().await?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// Reads the whole body, flips the byte at `at` and returns it as one chunk.
async fn corrupt(result: GetResult, at: u64, faults: &StoreFaults) -> Result<GetResult> {
    let (meta, range) = (result.meta.clone(), result.range.clone());
    let (attributes, extensions) = (result.attributes.clone(), result.extensions.clone());
    let mut body = result.bytes().await?.to_vec();
    if let Some(byte) = usize::try_from(at).ok().and_then(|at| body.get_mut(at)) {
        *byte ^= 0xff;
        lock(&faults.state).stats.corrupted += 1;
    }
    lock(&faults.state).stats.bytes_read += body.len() as u64;
    let body = Bytes::from(body);
    let payload = GetResultPayload::Stream(stream::once(async move { Ok(body) }).boxed());
    Ok(GetResult {
        payload,
        meta,
        range,
        attributes,
        extensions,
    })
}

/// A multipart upload whose parts and completion go through the faults too.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    faults: Arc<StoreFaults>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        // Decided before the inner upload sees the part, so a failed part is lost.
        if let Err(e) = self.faults.decide() {
            return futures::future::ready(Err(e)).boxed();
        }
        let delay = wait(self.faults.config().latency);
        let part = self.inner.put_part(data); // now, so parts keep their order
        delay.then(|()| part).boxed()
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.faults.inject().await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.faults.inject().await?;
        self.inner.abort().await
    }
}

/// Counters since [`Network::new`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Datagrams handed to the real socket.
    pub sent: u64,
    /// Datagrams dropped at the sender, plus in-flight ones discarded at the
    /// receiver because a partition began while they travelled.
    pub dropped: u64,
    /// Bytes of the datagrams in `sent`.
    pub bytes_sent: u64,
}

#[derive(Debug)]
struct NetworkState {
    rng: StdRng,
    drop_rate: f64,
    /// Group index of every address while a partition is in force.
    groups: Option<HashMap<SocketAddr, usize>>,
    stats: NetworkStats,
}

impl NetworkState {
    fn is_cut(&self, a: SocketAddr, b: SocketAddr) -> bool {
        self.groups.as_ref().is_some_and(|groups| {
            let group = groups.get(&a);
            group.is_none() || group != groups.get(&b)
        })
    }
}

/// The gossip network of one simulated cluster. Links are named by the
/// addresses sockets are bound to, so nodes must listen on a concrete address
/// (`127.0.0.1:port`), not a wildcard.
#[derive(Debug)]
pub struct Network {
    state: Mutex<NetworkState>,
}

impl Network {
    pub fn new(seed: u64) -> Arc<Network> {
        Arc::new(Network {
            state: Mutex::new(NetworkState {
                rng: StdRng::seed_from_u64(seed),
                drop_rate: 0.0,
                groups: None,
                stats: NetworkStats::default(),
            }),
        })
    }

    pub fn set_drop_rate(&self, rate: f64) {
        lock(&self.state).drop_rate = rate;
    }

    /// Cuts every link between different groups; an address in no group is cut
    /// off from all.
    pub fn partition(&self, groups: Vec<Vec<SocketAddr>>) {
        let groups = groups
            .into_iter()
            .enumerate()
            .flat_map(|(index, group)| group.into_iter().map(move |addr| (addr, index)))
            .collect();
        lock(&self.state).groups = Some(groups);
    }

    /// No partition, no drops.
    pub fn heal(&self) {
        let mut state = lock(&self.state);
        state.groups = None;
        state.drop_rate = 0.0;
    }

    pub fn stats(&self) -> NetworkStats {
        lock(&self.state).stats
    }

    pub fn transport(self: &Arc<Self>) -> FaultyTransport {
        FaultyTransport {
            network: Arc::clone(self),
        }
    }

    /// Whether a datagram from `from` to `to` is dropped; counts the drop.
    fn drops(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let mut state = lock(&self.state);
        let draw: f64 = state.rng.random();
        let drop = state.is_cut(from, to) || draw < state.drop_rate;
        state.stats.dropped += u64::from(drop);
        drop
    }

    /// Whether a datagram that arrived from `from` at `to` crossed a cut link.
    fn discards(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let mut state = lock(&self.state);
        let cut = state.is_cut(from, to);
        state.stats.dropped += u64::from(cut);
        cut
    }

    fn count_sent(&self, bytes: usize) {
        let mut state = lock(&self.state);
        state.stats.sent += 1;
        state.stats.bytes_sent += bytes as u64;
    }
}

/// chitchat `Transport` over real UDP, with the faults of its [`Network`].
#[derive(Debug)]
pub struct FaultyTransport {
    network: Arc<Network>,
}

#[async_trait]
impl Transport for FaultyTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
        let local_addr = inner.local_addr()?;
        Ok(Box::new(FaultySocket {
            inner,
            local_addr,
            network: Arc::clone(&self.network),
        }))
    }
}

struct FaultySocket {
    inner: Box<dyn Socket>,
    local_addr: SocketAddr,
    network: Arc<Network>,
}

#[async_trait]
impl Socket for FaultySocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if self.network.drops(self.local_addr, to) {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let outcome = self.inner.send(to, envelope).await?;
        self.network.count_sent(outcome.num_bytes_sent);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = self.inner.recv().await?;
            if !self.network.discards(outcome.from_addr, self.local_addr) {
                return Ok(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chitchat::{ChitchatMessage, ProtocolVersion};
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use tokio::time::{Instant, timeout};

    use super::*;

    fn with(change: impl FnOnce(&mut StoreFaultConfig)) -> StoreFaultConfig {
        let mut config = StoreFaultConfig::default();
        change(&mut config);
        config
    }

    async fn store(faults: &Arc<StoreFaults>, files: &[(&str, &[u8])]) -> Arc<dyn ObjectStore> {
        let inner = InMemory::new();
        for (key, body) in files {
            let body = Bytes::copy_from_slice(body).into();
            inner.put(&Path::from(*key), body).await.unwrap();
        }
        faults.wrap(Arc::new(inner))
    }

    async fn read(store: &Arc<dyn ObjectStore>, key: &str) -> Result<Bytes> {
        store.get(&Path::from(key)).await?.bytes().await
    }

    async fn write(store: &Arc<dyn ObjectStore>, key: &str) -> Result<PutResult> {
        let body = PutPayload::from_static(b"bye");
        store.put(&Path::from(key), body).await
    }

    async fn list(store: &Arc<dyn ObjectStore>) -> Result<Vec<ObjectMeta>> {
        store.list(None).try_collect().await
    }

    #[tokio::test]
    async fn outage_fails_every_request_until_healed() {
        let faults = StoreFaults::new(7);
        let store = store(&faults, &[("db/a.bin", b"hello")]).await;
        faults.set(with(|c| c.outage = true));
        let errors = [
            read(&store, "db/a.bin").await.err(),
            write(&store, "db/b.bin").await.err(),
            list(&store).await.err(),
            store.list(None).next().await.and_then(|item| item.err()),
            store.put_multipart(&Path::from("db/c.bin")).await.err(),
        ];
        for error in errors.map(|e| e.map(|e| e.to_string()).unwrap_or_default()) {
            assert!(error.contains("injected fault (outage)"), "{error:?}");
        }

        faults.heal();
        assert_eq!(faults.config(), StoreFaultConfig::default());
        assert_eq!(&read(&store, "db/a.bin").await.unwrap()[..], b"hello");
        write(&store, "db/b.bin").await.unwrap();
        assert_eq!(list(&store).await.unwrap().len(), 2);
        let stats = faults.stats();
        assert_eq!((stats.requests, stats.failed, stats.bytes_read), (8, 5, 5));
    }

    async fn outcomes(seed: u64) -> Vec<bool> {
        let faults = StoreFaults::new(seed);
        let store = store(&faults, &[("db/a.bin", b"hello")]).await;
        faults.set(with(|c| c.fail_rate = 0.5));
        let mut outcomes = Vec::new();
        for _ in 0..64 {
            outcomes.push(read(&store, "db/a.bin").await.is_ok());
        }
        outcomes
    }

    #[tokio::test]
    async fn fail_rate_is_reproducible_from_the_seed() {
        let first = outcomes(42).await;
        assert_eq!(first, outcomes(42).await, "seed 42 must replay");
        let failed = first.iter().filter(|ok| !**ok).count();
        assert!((10..=54).contains(&failed), "{failed} of 64 failed");
        assert_ne!(first, outcomes(43).await);
    }

    #[tokio::test]
    async fn corruption_flips_one_byte_of_data_files_only() {
        let data = vec![0xab_u8; 1000];
        let manifest = br#"{"files":[]}"#;
        let faults = StoreFaults::new(1);
        let files: [(&str, &[u8]); 2] = [("db/part-0", &data), ("db/dram.json", manifest)];
        let store = store(&faults, &files).await;
        faults.set(with(|c| c.corrupt_rate = 1.0));

        let part = read(&store, "db/part-0").await.unwrap();
        assert_eq!(part.len(), data.len());
        assert_eq!(part.iter().zip(&data).filter(|(a, b)| a != b).count(), 1);
        assert_eq!(&read(&store, "db/dram.json").await.unwrap()[..], manifest);
        let head = store.head(&Path::from("db/part-0")).await.unwrap();
        assert_eq!(head.size, 1000, "HEAD is never corrupted");
        let stats = faults.stats();
        assert_eq!((stats.corrupted, stats.bytes_read), (1, 1012));
    }

    #[tokio::test]
    async fn latency_delays_requests() {
        let faults = StoreFaults::new(3);
        let store = store(&faults, &[("db/a.bin", b"hello")]).await;
        faults.set(with(|c| c.latency = Duration::from_millis(50)));
        let started = Instant::now();
        read(&store, "db/a.bin").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    fn envelope() -> ChitchatEnvelope {
        let message = ChitchatMessage::BadCluster;
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message,
        }
    }

    /// Whether a datagram reaches `socket` within 200 ms.
    async fn arrives(socket: &mut Box<dyn Socket>) -> bool {
        let received = timeout(Duration::from_millis(200), socket.recv()).await;
        received.is_ok_and(|outcome| outcome.is_ok())
    }

    #[tokio::test]
    async fn partitions_and_drops_cut_gossip() {
        let network = Network::new(11);
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut a = network.transport().open(any).await.unwrap();
        let mut b = network.transport().open(any).await.unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());

        assert!(a.send(b_addr, envelope()).await.unwrap().num_bytes_sent > 0);
        assert!(arrives(&mut b).await, "healthy link");

        network.partition(vec![vec![a_addr], vec![b_addr]]);
        assert_eq!(a.send(b_addr, envelope()).await.unwrap().num_bytes_sent, 0);
        assert!(!arrives(&mut b).await, "partitioned");

        network.heal();
        b.send(a_addr, envelope()).await.unwrap();
        assert!(arrives(&mut a).await, "healed");

        // In flight when a partition begins: discarded on receipt.
        a.send(b_addr, envelope()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        network.partition(vec![vec![a_addr]]);
        assert!(!arrives(&mut b).await, "in flight across a new partition");

        network.heal();
        network.set_drop_rate(1.0);
        for _ in 0..5 {
            assert_eq!(b.send(a_addr, envelope()).await.unwrap().num_bytes_sent, 0);
        }
        assert!(!arrives(&mut a).await, "drop rate 1.0");

        let stats = network.stats();
        assert_eq!((stats.sent, stats.dropped), (3, 7));
        assert!(stats.bytes_sent > 0 && stats.bytes_sent.is_multiple_of(3));
    }
}
