//! A running node with its HTTP API: what `dram serve` and the tests start.
//!
//! dram runs warp's filter on its own accept loop (warp 0.4 has neither TLS
//! nor header timeouts): each connection is served by hyper's HTTP/1 server
//! with a header read timeout (`http.header_timeout_ms`: a client that sends
//! its headers too slowly, or stays idle between requests, is cut off), at
//! most `http.max_connections` at once (a connection past the cap is closed
//! at once), optionally over TLS (`http.tls_cert` and `http.tls_key`; the
//! handshake gets the header timeout too). Request bodies have their own
//! timeout (`http.body_timeout_ms`, in `api`). Shutdown stops accepting,
//! lets requests in flight finish and closes idle connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::config::{Config, HttpConfig};
use crate::connections::{Admitted, Connections, RequestTracker};
use crate::local::NodeError;
use crate::net::{field_error, read_certificates, read_key};
use crate::node::Node;

/// A node serving HTTP; `shutdown()` stops both.
pub struct Server {
    pub node: Node,
    pub http_addr: SocketAddr,
    tls: bool,
    closing: CancellationToken,
    http: JoinHandle<()>,
    /// The PostgreSQL protocol's listener (`[pg]`).
    #[cfg(feature = "sql")]
    pg: Option<crate::pg::PgServer>,
}

impl Server {
    /// Starts a node that serves no analyses and binds its HTTP listener
    /// (`node.http_listen`; port 0 picks a free port, see `http_addr`). Use
    /// [`Node::builder`] to serve analyses and extra routes.
    pub async fn start(config: Config) -> Result<Server, NodeError> {
        Node::builder(config).serve().await
    }

    pub(crate) async fn bind(listen: &str) -> Result<(TcpListener, SocketAddr), NodeError> {
        let fail =
            |e: std::io::Error| NodeError::InvalidInput(format!("cannot listen on {listen}: {e}"));
        let listener = TcpListener::bind(listen).await.map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        Ok((listener, addr))
    }

    /// Serves the node's HTTP API (and `extra` routes) on `listener`, and
    /// the PostgreSQL protocol on `pg.listen`.
    pub(crate) async fn serve(
        listener: TcpListener,
        http_addr: SocketAddr,
        node: Node,
        extra: Option<BoxedFilter<(Response,)>>,
        tls: Option<TlsAcceptor>,
    ) -> Result<Server, NodeError> {
        #[cfg(feature = "sql")]
        let pg = match crate::pg::PgServer::start(&node, tls.as_ref()).await {
            Ok(pg) => pg,
            Err(e) => {
                node.shutdown().await;
                return Err(e);
            }
        };
        let closing = CancellationToken::new();
        let limits = Limits::of(&node.config().http);
        let service = hyper_util::service::TowerToHyperService::new(warp::service(
            crate::api::routes(node.clone(), extra),
        ));
        let https = tls.is_some();
        let http = tokio::spawn(accept_loop(listener, service, tls, limits, closing.clone()));
        tracing::info!(node = %node.id(), http = %http_addr, tls = https, "serving");
        Ok(Server {
            node,
            http_addr,
            tls: https,
            closing,
            http,
            #[cfg(feature = "sql")]
            pg,
        })
    }

    /// Where the PostgreSQL protocol listens, if it does.
    pub fn pg_addr(&self) -> Option<SocketAddr> {
        #[cfg(feature = "sql")]
        {
            self.pg.as_ref().map(|pg| pg.addr())
        }
        #[cfg(not(feature = "sql"))]
        {
            None
        }
    }

    /// The base URL of the API (`https://…` with TLS on).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }

    /// Stops serving and shuts the node down. Returns once the node's catalog is
    /// closed, unless the caller still holds handles on it (`Local` clones,
    /// `ShardContext`s): then it gives up waiting after a few seconds.
    pub async fn shutdown(self) {
        // Leave first: peers stop sending map requests here, then the
        // requests in flight finish (within the grace period).
        self.node.announce_leaving().await;
        self.stop().await;
    }

    /// Stops without telling the cluster first, as a member that fails
    /// would: its peers find out from refused requests and, later, gossip
    /// (fault injection in tests and simulations).
    pub async fn shutdown_unannounced(self) {
        self.stop().await;
    }

    async fn stop(mut self) {
        self.closing.cancel();
        let _ = (&mut self.http).await;
        #[cfg(feature = "sql")]
        if let Some(pg) = self.pg.take() {
            pg.shutdown().await;
        }
        self.node.shutdown().await;
        if !self.node.release(Duration::from_secs(3)).await {
            tracing::warn!(
                "node handles are still held after shutdown; the catalog stays open until they are dropped"
            );
        }
    }
}

/// What bounds a connection.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    shutdown_grace: Duration,
    max_connections: usize,
    max_connections_per_ip: usize,
}

impl Limits {
    fn of(http: &HttpConfig) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(http.header_timeout_ms),
            shutdown_grace: Duration::from_millis(http.shutdown_grace_ms),
            max_connections: http.max_connections,
            max_connections_per_ip: http.max_connections_per_ip,
        }
    }
}

/// A connection's service, marking its requests in flight (an idle
/// connection may be closed to admit another, see `connections`).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    requests: RequestTracker,
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, S::Error>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let busy = self.requests.request();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(busy);
            answer
        })
    }
}

/// Accepts connections until `closing`, then waits for the open ones to finish
/// their requests in flight.
async fn accept_loop<S>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    closing: CancellationToken,
) where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connections = Connections::new(limits.max_connections, limits.max_connections_per_ip);
    let tracker = TaskTracker::new();
    let mut refused = 0u64;
    let mut last_warned: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = closing.cancelled() => break,
        };
        let admitted = match connections.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                // Every connection at the cap is busy: this one is closed at
                // once, so that its client is told now rather than left
                // waiting behind them.
                drop(stream);
                refused += 1;
                if last_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        max_connections_per_ip = limits.max_connections_per_ip,
                        ?refusal,
                        %peer,
                        refused,
                        "connection refused: the open connections at the cap are all busy"
                    );
                    last_warned = Some(Instant::now());
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (service, tls, closing) = (service.clone(), tls.clone(), closing.clone());
        let service = Tracked {
            inner: service,
            requests: admitted.requests(),
        };
        tracker.spawn(async move {
            let Some(acceptor) = tls else {
                return serve_connection(stream, service, limits, closing, admitted).await;
            };
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)) => handshake,
                () = closing.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => serve_connection(stream, service, limits, closing, admitted).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out (http.header_timeout_ms)"),
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// An accept that failed: nothing to do when the client gave up; otherwise
/// (out of file descriptors, …) a short pause, not a busy loop.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves HTTP/1 requests on one connection until the client closes it, it
/// breaks a limit, or the server closes (the request in flight has
/// `http.shutdown_grace_ms` to finish).
async fn serve_connection<I, S>(
    io: I,
    service: S,
    limits: Limits,
    closing: CancellationToken,
    admitted: Admitted,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        // Closed while idle to admit another connection past a cap.
        () = admitted.closing().cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            // Past the grace period the request is dropped, and with it its
            // query: its work stops (see `query::cancellation`).
            match tokio::time::timeout(limits.shutdown_grace, connection).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::info!("a request still running at shutdown was cancelled");
                    return;
                }
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection closed");
    }
}

/// The TLS acceptor for `http.tls_cert` and `http.tls_key`, or `None` when TLS
/// is off. Files that cannot be read or used are errors naming the field.
pub(crate) fn tls_acceptor(http: &HttpConfig) -> Result<Option<TlsAcceptor>, NodeError> {
    let (Some(cert_path), Some(key_path)) = (&http.tls_cert, &http.tls_key) else {
        return Ok(None);
    };
    let certs = read_certificates("http.tls_cert", cert_path).map_err(NodeError::InvalidInput)?;
    let key = read_key("http.tls_key", key_path).map_err(NodeError::InvalidInput)?;
    if let Some(ca) = &http.tls_ca {
        read_certificates("http.tls_ca", ca).map_err(NodeError::InvalidInput)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NodeError::InvalidInput(field_error("http.tls_cert", cert_path, &e)))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            NodeError::InvalidInput(field_error(
                "http.tls_key",
                key_path,
                &format!("does not fit http.tls_cert: {e}"),
            ))
        })?;
    // HTTP/1.1 only: what the connections are served with.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
