//! One dram node, composed: this member's own data and state ([`Local`]:
//! disks, catalog, registry, loads, trash, observability), the queries it
//! runs ([`Queries`], with the SQL engine), and, once it serves HTTP, its
//! place in the cluster ([`Membership`]: gossip) and in the primary's
//! election ([`Role`]).
//!
//! Each component gets what it needs when it is made, and none holds a
//! pointer back to the node. The node runs the cluster's round every gossip
//! interval: `Membership::sync` (publish, pull, merge), `Role::elect`,
//! `Membership::place` (this member's downloads), then, on the settled
//! primary, `Role::act` (trash, rebalance, garbage collection).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat::transport::{Transport, UdpTransport};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::clock::{Clock, SystemClock};
use crate::cluster::{ClusterStatus, Membership, SignedUdpTransport};
use crate::config::Config;
use crate::local::{Local, NodeError};
use crate::observe::{Gauge, Metrics};
use crate::primary::Role;
use crate::query::{Analyses, Queries, QueryError, QueryRequest, QueryResponse};
use crate::sync::lock;

/// A handle to a running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Parts>,
}

struct Parts {
    local: Local,
    queries: Queries,
    /// `None` for a node started without HTTP.
    cluster: Option<Cluster>,
}

/// A serving node's place in its cluster, and the task running its rounds.
struct Cluster {
    membership: Arc<Membership>,
    role: Arc<Role>,
    rounds: Mutex<Option<JoinHandle<()>>>,
}

/// What a node is started with besides its configuration.
pub(crate) struct Setup {
    pub analyses: Analyses,
    pub store_layer: Option<crate::storage::StoreLayer>,
    pub clock: Arc<dyn Clock>,
    /// The gossip wire versions the node reads (see `cluster::wire`).
    pub gossip_reads: Vec<chitchat::ProtocolVersion>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            analyses: Analyses::default(),
            store_layer: None,
            clock: Arc::new(SystemClock),
            gossip_reads: crate::cluster::wire::READS.to_vec(),
        }
    }
}

impl Node {
    /// Starts a node that serves no analyses, without HTTP; see
    /// [`Node::builder`] to add analyses and serve.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        Node::alone(config, Setup::default()).await
    }

    /// A node without HTTP or gossip: it holds every shard of its databases.
    pub(crate) async fn alone(config: Config, setup: Setup) -> Result<Node, NodeError> {
        crate::net::install_crypto_provider();
        let local = Local::start_with(config, false, setup.store_layer, setup.clock).await?;
        let queries = match sql_engine(&local, None) {
            Ok(sql) => Queries::new(
                local.clone(),
                None,
                setup.analyses,
                #[cfg(feature = "sql")]
                sql,
            ),
            Err(e) => {
                local.shutdown().await;
                return Err(e);
            }
        };
        Ok(Node {
            inner: Arc::new(Parts {
                local,
                queries,
                cluster: None,
            }),
        })
    }

    /// A node that serves HTTP at `http_addr` (bound by the caller) and
    /// joins its cluster's gossip over `transport` (default: UDP, signed
    /// with the cluster secret when one is set).
    pub(crate) async fn join(
        config: Config,
        setup: Setup,
        http_addr: SocketAddr,
        transport: Option<Arc<dyn Transport>>,
    ) -> Result<Node, NodeError> {
        crate::net::install_crypto_provider();
        let clock = setup.clock.clone();
        let local = Local::start_with(config, true, setup.store_layer, setup.clock).await?;
        let secret = local.config().auth.cluster_secret.as_deref();
        let transport: Arc<dyn Transport> = match (transport, secret) {
            (Some(transport), _) => transport,
            (None, Some(secret)) => Arc::new(SignedUdpTransport::new(
                secret,
                local.metrics().gossip_rejected(),
            )),
            (None, None) => Arc::new(UdpTransport),
        };
        let membership =
            match Membership::start(&local, http_addr, &*transport, &setup.gossip_reads).await {
                Ok(membership) => membership,
                Err(e) => {
                    local.shutdown().await;
                    return Err(e);
                }
            };
        let sql = match sql_worker(&local, &membership, http_addr).await {
            Ok(sql) => sql,
            Err(e) => {
                membership.shutdown().await;
                local.shutdown().await;
                return Err(e);
            }
        };
        let role = Arc::new(Role::new(local.id(), clock));
        let queries = Queries::new(
            local.clone(),
            Some(membership.clone()),
            setup.analyses,
            #[cfg(feature = "sql")]
            sql,
        );
        #[cfg(not(feature = "sql"))]
        let _ = sql;
        let rounds = tokio::spawn(rounds(
            local.clone(),
            membership.clone(),
            role.clone(),
            local.config().cluster.gossip_interval(),
        ));
        Ok(Node {
            inner: Arc::new(Parts {
                local,
                queries,
                cluster: Some(Cluster {
                    membership,
                    role,
                    rounds: Mutex::new(Some(rounds)),
                }),
            }),
        })
    }

    /// This member's own data and state.
    pub fn local(&self) -> &Local {
        &self.inner.local
    }

    /// The queries this node runs.
    pub fn queries(&self) -> &Queries {
        &self.inner.queries
    }

    /// Gossip membership: `None` for a node started without HTTP.
    pub fn membership(&self) -> Option<&Arc<Membership>> {
        self.inner.cluster.as_ref().map(|c| &c.membership)
    }

    /// This member's part in the primary's election: `None` without HTTP.
    pub fn role(&self) -> Option<&Arc<Role>> {
        self.inner.cluster.as_ref().map(|c| &c.role)
    }

    pub fn id(&self) -> &str {
        self.inner.local.id()
    }

    pub fn config(&self) -> &Config {
        self.inner.local.config()
    }

    /// This node's Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        self.inner.local.metrics()
    }

    /// Runs an analysis over a database (or alias), this node the root (see
    /// [`Queries::query`]).
    pub async fn query(
        &self,
        target: &str,
        analysis: &str,
        request: QueryRequest,
    ) -> Result<QueryResponse, QueryError> {
        self.inner.queries.query(target, analysis, request).await
    }

    /// `GET /v1/cluster`: the cluster as this node sees it.
    pub async fn cluster_status(&self) -> Result<Option<ClusterStatus>, NodeError> {
        let Some(cluster) = &self.inner.cluster else {
            return Ok(None);
        };
        let status = cluster
            .membership
            .status(&self.inner.local, cluster.role.status())
            .await?;
        Ok(Some(status))
    }

    /// The gauges of a scrape: this member's own, and its view of the cluster.
    pub async fn metric_gauges(&self) -> Result<Vec<Gauge>, NodeError> {
        let mut gauges = self.inner.local.metric_gauges()?;
        let cache = self.queries().cache_stats();
        gauges.push(crate::observe::Gauge::new(
            "dram_result_cache_bytes",
            "Bytes of answers in this member's result cache (at most cache.result_bytes).",
            cache.bytes as f64,
        ));
        gauges.push(crate::observe::Gauge::new(
            "dram_result_cache_entries",
            "Answers in this member's result cache.",
            cache.entries as f64,
        ));
        if let Some(status) = self.cluster_status().await? {
            gauges.extend(status.gauges());
        }
        Ok(gauges)
    }

    /// Tells the cluster this member is leaving (see
    /// [`Membership::announce_leaving`]); nothing outside a cluster.
    pub async fn announce_leaving(&self) {
        if let Some(membership) = self.membership() {
            let interval = self.config().cluster.gossip_interval();
            membership.announce_leaving(interval).await;
        }
    }

    /// Stops the rounds, leaves gossip, stops the SQL worker, then this
    /// member's own tasks and loads. Idempotent.
    pub async fn shutdown(&self) {
        if let Some(cluster) = &self.inner.cluster {
            let rounds = lock(&cluster.rounds).take();
            if let Some(rounds) = rounds {
                rounds.abort();
                let _ = rounds.await;
            }
            cluster.membership.shutdown().await;
        }
        self.inner.queries.shutdown();
        self.inner.local.shutdown().await;
    }

    /// Drops this handle once it is the last (at most `timeout`), so that the
    /// catalog closes. False when other handles (`Node` or `Local` clones,
    /// `ShardContext`s) are still held at the deadline.
    pub async fn release(self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut inner = self.inner;
        let parts = loop {
            match Arc::try_unwrap(inner) {
                Ok(parts) => break parts,
                Err(shared) => inner = shared,
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let Parts {
            local,
            queries,
            cluster,
        } = parts;
        drop((queries, cluster));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        local.wait_released(left).await
    }
}

#[cfg(feature = "sql")]
type SqlEngine = Option<Arc<crate::query::sql::SqlEngine>>;
#[cfg(not(feature = "sql"))]
type SqlEngine = Option<()>;

/// This member's SQL engine (`None` without the `sql` feature), over the
/// other members' files too when it has `membership`.
fn sql_engine(local: &Local, membership: Option<&Arc<Membership>>) -> Result<SqlEngine, NodeError> {
    #[cfg(feature = "sql")]
    {
        let engine = crate::query::sql::SqlEngine::new(
            local.config(),
            local.downgrade(),
            membership.map(Arc::downgrade),
        )?;
        Ok(Some(Arc::new(engine)))
    }
    #[cfg(not(feature = "sql"))]
    {
        let _ = (local, membership);
        Ok(None)
    }
}

/// The SQL engine of a serving member, its worker listening (on
/// `sql.worker_listen`, or beside `http_addr`) and gossiped to the others.
async fn sql_worker(
    local: &Local,
    membership: &Arc<Membership>,
    http_addr: SocketAddr,
) -> Result<SqlEngine, NodeError> {
    let sql = sql_engine(local, Some(membership))?;
    #[cfg(feature = "sql")]
    if let Some(engine) = &sql {
        let config = local.config();
        let worker = engine.listen(&config.sql.worker_listen, http_addr).await?;
        let (_, advertise) = config
            .cluster
            .gossip_addresses()
            .map_err(|e| NodeError::InvalidInput(e.to_string()))?;
        let address = engine.advertise(crate::cluster::advertised(advertise, worker));
        membership.advertise_sql_worker(address).await;
    }
    #[cfg(not(feature = "sql"))]
    let _ = http_addr;
    Ok(sql)
}

/// The cluster's round, every gossip interval (see the module doc), and
/// every minute the collection of old registry tombstones.
async fn rounds(local: Local, membership: Arc<Membership>, role: Arc<Role>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tombstone_every = (60_000 / interval.as_millis().max(1) as u64).max(1);
    let mut count = 0u64;
    loop {
        tick.tick().await;
        if let Err(e) = round(&local, &membership, &role).await {
            warn!(error = %e, "cluster sync round failed");
        }
        count += 1;
        if count.is_multiple_of(tombstone_every)
            && let Err(e) = local.collect_registry_tombstones()
        {
            warn!(error = %e, "collecting registry tombstones failed");
        }
    }
}

async fn round(local: &Local, membership: &Membership, role: &Role) -> Result<(), NodeError> {
    let peers = membership.sync(local).await?;
    role.elect(local, membership, &peers).await;
    if let Some(placed) = membership.place(local, &peers).await? {
        role.act(local, membership, &peers, &placed).await?;
    }
    Ok(())
}
