//! The node-to-node side of distributed SQL: this member's datafusion-distributed
//! worker (a gRPC service on `sql.worker_listen`) and the connections to the
//! other members' workers. Both directions carry the cluster secret when one
//! is set (`Authorization: Bearer …`); a call without it is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{ChannelResolver, WorkerChannel};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use url::Url;

/// Connections to other members' workers, one per worker, each call
/// carrying the cluster secret; over TLS to `https://` workers, trusting
/// `ca` (PEM).
#[derive(Clone)]
pub(crate) struct Channels {
    secret: Option<http::HeaderValue>,
    ca: Option<Arc<Vec<u8>>>,
    open: Arc<Mutex<HashMap<Url, BoxCloneSyncChannel>>>,
}

/// The worker's TLS: the node's certificate and key (PEM).
pub(crate) struct WorkerTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl Channels {
    pub(crate) fn new(secret: Option<&str>, ca: Option<Vec<u8>>) -> Result<Channels, String> {
        let secret = secret
            .map(|s| http::HeaderValue::from_str(&format!("Bearer {s}")))
            .transpose()
            .map_err(|_| "the cluster secret is not a valid HTTP header value".to_string())?
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        Ok(Channels {
            secret,
            ca: ca.map(Arc::new),
            open: Arc::default(),
        })
    }

    fn channel(&self, url: &Url) -> Result<BoxCloneSyncChannel, DataFusionError> {
        let mut open = crate::sync::lock(&self.open);
        if let Some(channel) = open.get(url) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| DataFusionError::Configuration(format!("worker URL {url}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let endpoint = match (url.scheme(), &self.ca) {
            ("https", Some(ca)) => endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca.as_slice())),
                )
                .map_err(|e| DataFusionError::Configuration(format!("worker TLS: {e}")))?,
            _ => endpoint,
        };
        // Connects on first use and again after the member comes back.
        let channel = endpoint.connect_lazy();
        let secret = self.secret.clone();
        let authorized = tower::ServiceBuilder::new()
            .map_request(move |mut request: http::Request<tonic::body::Body>| {
                if let Some(secret) = &secret {
                    request
                        .headers_mut()
                        .insert(http::header::AUTHORIZATION, secret.clone());
                }
                request
            })
            .service(channel);
        let channel = BoxCloneSyncChannel::new(authorized);
        open.insert(url.clone(), channel.clone());
        Ok(channel)
    }
}

#[async_trait::async_trait]
impl ChannelResolver for Channels {
    async fn get_worker_client_for_url(
        &self,
        url: &Url,
    ) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        self.channel(url).map(create_worker_client)
    }
}

/// Serves `worker` on `listener` until `closing`, refusing calls without
/// the cluster secret (when one is set).
pub(crate) async fn serve(
    worker: datafusion_distributed::Worker,
    listener: TcpListener,
    secret: Option<String>,
    tls: Option<WorkerTls>,
    closing: CancellationToken,
) {
    let check = move |request: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
        let Some(secret) = &secret else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(token) if crate::auth::constant_time_eq(token.as_bytes(), secret.as_bytes()) => {
                Ok(request)
            }
            _ => Err(tonic::Status::unauthenticated(
                "the SQL worker is node-to-node: the cluster secret is needed",
            )),
        }
    };
    let service =
        tonic::service::interceptor::InterceptedService::new(worker.into_worker_server(), check);
    // A listener passed in keeps its own socket options: without NODELAY a
    // stage's small frames wait for the peer's delayed ACK (40 ms each).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = Server::builder();
    if let Some(tls) = tls {
        let identity = tonic::transport::Identity::from_pem(tls.cert, tls.key);
        server =
            match server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)) {
                Ok(server) => server,
                Err(e) => {
                    tracing::warn!(error = %e, "the SQL worker cannot use the node's certificate");
                    return;
                }
            };
    }
    let served = server
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, closing.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the SQL worker stopped");
    }
}

/// Binds the worker's listener: `sql.worker_listen`, or (empty) the HTTP
/// listener's address with a port of the system's choice.
pub(crate) async fn bind(
    configured: &str,
    http: SocketAddr,
) -> Result<(TcpListener, SocketAddr), String> {
    let address = if configured.is_empty() {
        SocketAddr::new(http.ip(), 0).to_string()
    } else {
        configured.to_string()
    };
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|e| format!("cannot listen on {address} (sql.worker_listen): {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("sql.worker_listen: {e}"))?;
    Ok((listener, local))
}
