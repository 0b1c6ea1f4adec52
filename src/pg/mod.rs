//! The PostgreSQL wire protocol (`[pg]`): psql, psycopg, Grafana, DBeaver and
//! other SQL clients run the same read-only SQL as the `sql` analysis, on any
//! member. pgwire speaks the protocol; datafusion-postgres gives the
//! `pg_catalog` and `information_schema` these clients read at startup, and
//! Arrow → PostgreSQL row encoding.
//!
//! - `startup.rs`: the connection's database (`dbname`: a database or an
//!   alias) and its password (the admin token, or a signed token for that
//!   database or alias).
//! - `session.rs`: each statement: a query of the database's tables runs
//!   distributed, exactly as `POST /v1/query/{dbname}/sql` does; a query of
//!   the catalog, `SET`, `SHOW` and transaction statements run on this member
//!   over the same tables; anything that writes is refused (SQLSTATE 25006).
//! - `extended.rs`: the extended protocol (prepared statements with
//!   parameters), the same way.
//! - `errors.rs`: dram's errors as SQLSTATEs.

mod errors;
mod extended;
mod session;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datafusion_postgres::pgwire::api::ClientInfo;

use datafusion_postgres::pgwire::api::ConnectionManager;
use datafusion_postgres::pgwire::api::PgWireServerHandlers;
use datafusion_postgres::pgwire::api::auth::StartupHandler;
use datafusion_postgres::pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::local::NodeError;
use crate::node::Node;

/// The PostgreSQL listener of a node; `shutdown` closes it and its
/// connections.
pub struct PgServer {
    addr: SocketAddr,
    closing: CancellationToken,
    accept: JoinHandle<()>,
}

impl PgServer {
    /// Listens on `pg.listen` (`None` when `pg.enabled` is false), over TLS
    /// when the node's HTTP listener uses TLS (`http`: its acceptor), with
    /// the same certificate: clients ask for it (`sslmode=require`), or
    /// speak TLS at once with ALPN `postgresql` (`sslnegotiation=direct`).
    pub(crate) async fn start(
        node: &Node,
        http: Option<&tokio_rustls::TlsAcceptor>,
    ) -> Result<Option<PgServer>, NodeError> {
        let config = &node.config().pg;
        if !config.enabled {
            return Ok(None);
        }
        let tls = http.map(|http| {
            let mut tls = (**http.config()).clone();
            tls.alpn_protocols = vec![b"postgresql".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(tls))
        });
        let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
            NodeError::InvalidInput(format!(
                "cannot listen on {} (pg.listen): {e}",
                config.listen
            ))
        })?;
        let addr = listener.local_addr().map_err(|e| {
            NodeError::InvalidInput(format!(
                "cannot listen on {} (pg.listen): {e}",
                config.listen
            ))
        })?;
        let connections = Arc::new(ConnectionManager::new());
        let handlers = Handlers {
            startup: startup::Shared::new(node.clone(), connections.clone()),
            session: Arc::new(session::Session::new(node.clone())),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        };
        let closing = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let accept = tokio::spawn(accept_loop(
            listener,
            handlers,
            tls,
            slots,
            node.clone(),
            closing.clone(),
        ));
        tracing::info!(pg = %addr, "serving the PostgreSQL protocol");
        Ok(Some(PgServer {
            addr,
            closing,
            accept,
        }))
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        self.closing.cancel();
        let _ = self.accept.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    handlers: Handlers,
    tls: Option<tokio_rustls::TlsAcceptor>,
    slots: Arc<Semaphore>,
    node: Node,
    closing: CancellationToken,
) {
    let connections = TaskTracker::new();
    let refusals = Arc::new(Semaphore::new(REFUSED_AT_ONCE));
    loop {
        let accepted = tokio::select! {
            _ = closing.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "pg: accepting a connection failed");
                continue;
            }
        };
        // One past the limit is told why (after TLS negotiation, as the
        // client expects), within a few seconds; past a few of those at
        // once, closed without a word.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(slot),
            Err(_) => match refusals.clone().try_acquire_owned() {
                Ok(refusal) => Err(refusal),
                Err(_) => continue,
            },
        };
        let refused = slot.is_err();
        if refused {
            tracing::warn!(%peer, "pg: too many connections (pg.max_connections): refused");
        }
        let activity = Activity::new();
        let connection = Arc::new(Connection {
            startup: Arc::new(startup::Startup::new(
                handlers.startup.clone(),
                activity.clone(),
                refused,
            )),
            session: handlers.session.clone(),
            cancel: handlers.cancel.clone(),
        });
        let (tls, closing) = (tls.clone(), closing.clone());
        let gauge = node.metrics().pg_connection();
        let idle_timeout = if refused {
            REFUSING
        } else {
            Duration::from_secs(node.config().pg.idle_timeout_secs)
        };
        connections.spawn(async move {
            let _slot = slot;
            let _open = gauge;
            tokio::select! {
                _ = closing.cancelled() => {}
                _ = activity.idle_past(idle_timeout) => {
                    tracing::debug!(%peer, "pg: closed a connection idle past pg.idle_timeout_secs");
                }
                served = datafusion_postgres::pgwire::tokio::process_socket(socket, tls, connection) => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "pg: connection ended with an error");
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// The handlers all connections share.
struct Handlers {
    startup: Arc<startup::Shared>,
    session: Arc<session::Session>,
    cancel: Arc<DefaultCancelHandler>,
}

/// The handlers of one connection.
struct Connection {
    startup: Arc<startup::Startup>,
    session: Arc<session::Session>,
    cancel: Arc<DefaultCancelHandler>,
}

/// Connections past the limit being told so at once; more are closed.
const REFUSED_AT_ONCE: usize = 16;
/// How long a refused connection has to hear why.
const REFUSING: Duration = Duration::from_secs(5);

/// When a connection last ran a statement, and how many it runs now.
pub(super) struct Activity {
    since: Instant,
    /// Milliseconds from `since` to the end of the last statement.
    last_ms: AtomicU64,
    running: AtomicUsize,
}

/// A statement running on a connection: it is not idle until this drops.
pub(super) struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        let now = self.0.since.elapsed().as_millis() as u64;
        self.0.last_ms.store(now, Ordering::SeqCst);
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            running: AtomicUsize::new(0),
        })
    }

    /// Marks a statement of `client`'s connection running (its rows sent
    /// included) until the guard drops.
    pub(super) fn running<C: ClientInfo>(client: &C) -> Option<Running> {
        let activity = client.session_extensions().get::<Arc<Activity>>()?;
        activity.running.fetch_add(1, Ordering::SeqCst);
        Some(Running((*activity).clone()))
    }

    /// How long the connection has run nothing (zero while it runs something).
    fn idle(&self) -> Duration {
        if self.running.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
        self.since.elapsed().saturating_sub(last)
    }

    /// Ends once the connection has run nothing for `timeout` (never, for 0).
    async fn idle_past(&self, timeout: Duration) {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::time::sleep(every).await;
            if self.idle() >= timeout {
                return;
            }
        }
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}
