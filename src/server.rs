//! A running node with its HTTP API: what `dram serve` and the tests start.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::config::Config;
use crate::node::{Node, NodeError};

/// A node serving HTTP; `shutdown()` stops both.
pub struct Server {
    pub node: Node,
    pub http_addr: SocketAddr,
    shutdown_tx: Option<oneshot::Sender<()>>,
    http: JoinHandle<()>,
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

    /// Serves HTTP on `listener` and joins the cluster's gossip.
    pub(crate) async fn serve(
        (listener, http_addr): (TcpListener, SocketAddr),
        node: Node,
        extra: Option<BoxedFilter<(Response,)>>,
        transport: std::sync::Arc<dyn chitchat::transport::Transport>,
    ) -> Result<Server, NodeError> {
        let started = crate::cluster::Membership::start(node.clone(), http_addr, &*transport).await;
        let membership = match started {
            Ok(membership) => membership,
            Err(e) => {
                node.shutdown().await;
                return Err(e);
            }
        };
        node.set_membership(membership);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let http = tokio::spawn(crate::api::run(listener, node.clone(), extra, async move {
            let _ = shutdown_rx.await;
        }));
        tracing::info!(node = %node.id(), http = %http_addr, "serving");
        Ok(Server {
            node,
            http_addr,
            shutdown_tx: Some(shutdown_tx),
            http,
        })
    }

    /// The base URL of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Stops serving and shuts the node down. Returns once the node's catalog is
    /// closed, unless the caller still holds handles on it (`Node` clones,
    /// `ShardContext`s): then it gives up waiting after a few seconds.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.http).await;
        if let Some(membership) = self.node.membership() {
            membership.shutdown().await;
        }
        self.node.shutdown().await;
        if !self.node.wait_released(Duration::from_secs(3)).await {
            tracing::warn!(
                "node handles are still held after shutdown; the catalog stays open until they are dropped"
            );
        }
    }
}
