//! `Node::builder`: how a program makes its own dram server. Register analyses
//! by name, mount extra warp routes, then `serve()` (a node with its HTTP API) or
//! `start()` (the node alone, for embedding). The `dram` binary is built this way.
//!
//! ```no_run
//! # async fn run() -> Result<(), dram::NodeError> {
//! use dram::{Config, Node};
//! use warp::Filter;
//!
//! let server = Node::builder(Config::default())
//!     .analysis("files", dram::builtin::Files)
//!     .routes(|_node| warp::path!("hello").map(|| "hello"))
//!     .serve()
//!     .await?;
//! println!("serving on {}", server.url());
//! # Ok(()) }
//! ```

use std::sync::Arc;

use chitchat::ProtocolVersion;
use chitchat::transport::Transport;
use object_store::ObjectStore;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::local::NodeError;
use crate::node::Node;
use crate::query::{Analyses, Analysis};
use crate::server::Server;
use crate::storage::StoreLayer;

type MountRoutes = Box<dyn FnOnce(Node) -> BoxedFilter<(Response,)> + Send>;

/// Builds a node: its configuration, its analyses and extra HTTP routes.
pub struct NodeBuilder {
    config: Config,
    analyses: Analyses,
    routes: Vec<MountRoutes>,
    gossip_transport: Option<Arc<dyn Transport>>,
    store_layer: Option<StoreLayer>,
    clock: Arc<dyn Clock>,
    gossip_reads: Vec<ProtocolVersion>,
    error: Option<String>,
}

impl Node {
    /// A builder for a node with this configuration.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            analyses: Analyses::default(),
            routes: Vec::new(),
            gossip_transport: None,
            store_layer: None,
            clock: Arc::new(SystemClock),
            gossip_reads: crate::cluster::wire::READS.to_vec(),
            error: None,
        }
    }
}

impl NodeBuilder {
    /// Serves `analysis` at `POST /v1/query/{database}/{name}`. A name that is
    /// invalid or taken makes `start`/`serve` fail.
    pub fn analysis(mut self, name: &str, analysis: impl Analysis) -> Self {
        if let Err(e) = self.analyses.insert(name, analysis)
            && self.error.is_none()
        {
            self.error = Some(e);
        }
        self
    }

    /// The configuration the node will start with.
    /// The clock the node reads the time from (default: the system's). A
    /// test moves a [`ManualClock`](crate::clock::ManualClock) to drive
    /// the trash lifetime, garbage collection's age and the primary's
    /// settle time.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Mounts extra warp routes beside the API (tried after dram's own). The
    /// closure receives the started node, e.g. to run queries from a route.
    pub fn routes<F, R, T>(mut self, mount: F) -> Self
    where
        F: FnOnce(Node) -> R + Send + 'static,
        R: Filter<Extract = (T,), Error = Rejection> + Clone + Send + Sync + 'static,
        T: Reply + 'static,
    {
        self.routes.push(Box::new(move |node| {
            mount(node).map(|reply: T| reply.into_response()).boxed()
        }));
        self
    }

    /// Gossips over `transport` instead of UDP (signed with the cluster
    /// secret when one is set): e.g. chitchat's in-memory `ChannelTransport`,
    /// whose links a test can cut to partition a cluster.
    pub fn gossip_transport(mut self, transport: impl Transport) -> Self {
        self.gossip_transport = Some(Arc::new(transport));
        self
    }

    /// The gossip wire versions the node reads and says it reads (default:
    /// V0 and V1). Given `[V0]` alone it behaves as a member of a dram that
    /// predates V1: the cluster keeps sending V0 while it is live (and a V1
    /// datagram it gets is dropped). For tests of a rolling upgrade; see
    /// `cluster::wire`. An empty list makes `serve` fail.
    pub fn gossip_reads(mut self, versions: &[ProtocolVersion]) -> Self {
        if !versions.contains(&ProtocolVersion::V0) && self.error.is_none() {
            self.error = Some("gossip_reads must include V0: every dram reads it".into());
        }
        self.gossip_reads = versions.to_vec();
        self
    }

    /// Wraps the object store of every database source the node opens with
    /// `layer`: e.g. a store that fails or slows down on purpose, as the
    /// simulation harness does.
    pub fn object_store_layer(
        mut self,
        layer: impl Fn(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> + Send + Sync + 'static,
    ) -> Self {
        self.store_layer = Some(Arc::new(layer));
        self
    }

    fn check(&mut self) -> Result<(), NodeError> {
        match self.error.take() {
            Some(e) => Err(NodeError::InvalidInput(e)),
            None => Ok(()),
        }
    }

    fn setup(&self) -> crate::node::Setup {
        crate::node::Setup {
            analyses: self.analyses.clone(),
            store_layer: self.store_layer.clone(),
            clock: self.clock.clone(),
            gossip_reads: self.gossip_reads.clone(),
        }
    }

    /// Starts the node without HTTP (extra routes are not mounted).
    pub async fn start(mut self) -> Result<Node, NodeError> {
        self.check()?;
        Node::alone(self.config.clone(), self.setup()).await
    }

    /// Starts the node and serves its HTTP API on `node.http_listen`.
    pub async fn serve(mut self) -> Result<Server, NodeError> {
        self.check()?;
        let tls = crate::server::tls_acceptor(&self.config.http)?;
        let (listener, http_addr) = Server::bind(&self.config.node.http_listen).await?;
        let transport = self.gossip_transport.take();
        let node = Node::join(self.config.clone(), self.setup(), http_addr, transport).await?;
        let extra = self
            .routes
            .into_iter()
            .map(|mount| mount(node.clone()))
            .reduce(|a, b| a.or(b).unify().boxed());
        Server::serve(listener, http_addr, node, extra, tls).await
    }
}
