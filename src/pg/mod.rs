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
//! - `errors.rs`: dram's errors as SQLSTATEs.

mod errors;
mod session;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;

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
        let handlers = Arc::new(Handlers {
            startup: Arc::new(startup::Startup::new(node.clone(), connections.clone())),
            session: Arc::new(session::Session::new(node.clone())),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        });
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
    handlers: Arc<Handlers>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    slots: Arc<Semaphore>,
    node: Node,
    closing: CancellationToken,
) {
    let connections = TaskTracker::new();
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "pg: too many connections (pg.max_connections): refused");
            connections.spawn(errors::refuse_too_many(socket));
            continue;
        };
        let (handlers, tls, closing) = (handlers.clone(), tls.clone(), closing.clone());
        let gauge = node.metrics().pg_connection();
        connections.spawn(async move {
            let _slot = slot;
            let _open = gauge;
            tokio::select! {
                _ = closing.cancelled() => {}
                served = datafusion_postgres::pgwire::tokio::process_socket(socket, tls, handlers) => {
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

/// The handlers of every connection.
struct Handlers {
    startup: Arc<startup::Startup>,
    session: Arc<session::Session>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
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
