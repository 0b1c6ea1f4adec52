//! A connection's start: over TLS when the node has a certificate (else
//! FATAL 28000, as `hostssl` rules), the database it names (`dbname`, a database or an
//! alias this member knows; else FATAL 3D000) and its password. The password
//! is the admin token, or a signed token for that database or alias (sent in
//! clear text: use TLS beyond loopback). A node with no admin token that lets
//! anyone read (`auth.require_token_for_reads = false`) asks loopback
//! clients for none.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::{
    ClientInfo, ConnectionManager, METADATA_DATABASE, METADATA_USER, PgWireConnectionState,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::Authentication;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use futures::Sink;
use futures::SinkExt;

use super::Activity;
use super::errors::error;
use crate::auth::{Keys, constant_time_eq};
use crate::node::Node;

/// What a connection may list besides its own database (`\l`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Every database and alias: the admin token, or a node open to all.
    All,
    /// Its own only: a signed token.
    Own,
}

/// What every connection's start shares.
pub(super) struct Shared {
    node: Node,
    parameters: DefaultServerParameterProvider,
    pids: RandomPidSecretKeyGenerator,
    connections: Arc<ConnectionManager>,
}

impl Shared {
    pub(super) fn new(node: Node, connections: Arc<ConnectionManager>) -> Arc<Shared> {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.6 (dram {})", env!("CARGO_PKG_VERSION"));
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        Arc::new(Shared {
            node,
            parameters,
            pids: RandomPidSecretKeyGenerator::default(),
            connections,
        })
    }
}

/// One connection's start: it gives the connection its [`Activity`], or
/// refuses it (one past `pg.max_connections`).
pub(super) struct Startup {
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    refused: bool,
}

impl std::ops::Deref for Startup {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Startup {
    pub(super) fn new(shared: Arc<Shared>, activity: Arc<Activity>, refused: bool) -> Startup {
        Startup {
            shared,
            activity,
            refused,
        }
    }

    /// Whether `client` may connect without a password.
    fn open<C: ClientInfo>(&self, client: &C) -> bool {
        let auth = &self.node.config().auth;
        !auth.require_token_for_reads
            && auth.admin_token.is_none()
            && client.socket_addr().ip().is_loopback()
    }

    /// Whether `password` opens `database`, and what else it may see; why
    /// not otherwise.
    fn check(&self, password: &str, database: &str) -> Result<Access, PgWireError> {
        let auth = &self.node.config().auth;
        let password = password.trim();
        if auth
            .admin_token
            .as_deref()
            .is_some_and(|admin| constant_time_eq(password.as_bytes(), admin.as_bytes()))
        {
            return Ok(Access::All);
        }
        let local = self.node.local();
        let refused = |why: String| error("FATAL", "28P01", why);
        let keys = Keys::of(auth, local.started_ms())
            .ok_or_else(|| refused("the password must be the admin token".into()))?;
        let grant = keys
            .verify(password, local.now_ms())
            .map_err(|e| refused(format!("invalid token: {e}")))?;
        let opens = grant.name == database
            || local
                .resolve(database)
                .is_ok_and(|resolved| resolved == grant.name);
        if opens {
            Ok(Access::Own)
        } else {
            Err(error(
                "FATAL",
                "28000",
                format!("this token opens {:?}, not {database:?}", grant.name),
            ))
        }
    }

    /// Accepts the connection: its cancel key, registered for cancel
    /// requests, then AuthenticationOk and the server's parameters.
    async fn admit<C>(&self, client: &mut C, access: Access) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard) = self.connections.register(pid, secret);
        client.session_extensions().insert(handle);
        client.session_extensions().insert(guard);
        client.session_extensions().insert(access);
        finish_authentication(client, &self.parameters).await
    }
}

/// The database a connection named (PostgreSQL's default: the user name).
pub(super) fn database<C: ClientInfo>(client: &C) -> String {
    let metadata = client.metadata();
    metadata
        .get(METADATA_DATABASE)
        .or_else(|| metadata.get(METADATA_USER))
        .cloned()
        .unwrap_or_default()
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.refused {
            return Err(error(
                "FATAL",
                "53300",
                "too many connections to this member (pg.max_connections)",
            ));
        }
        client.session_extensions().insert(self.activity.clone());
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                // As the HTTP API: over TLS only when the node has a
                // certificate (the password would travel in clear).
                let http = &self.node.config().http;
                if http.tls_cert.is_some() && http.tls_key.is_some() && !client.is_secure() {
                    return Err(error(
                        "FATAL",
                        "28000",
                        "this node accepts TLS connections only: connect with sslmode=require \
                         (or verify-full with its certificate as sslrootcert)"
                            .to_string(),
                    ));
                }
                // Named, not listed: the client has shown no password yet.
                let database = database(client);
                if self.node.local().resolve(&database).is_err() {
                    return Err(error(
                        "FATAL",
                        "3D000",
                        format!(
                            "database {database:?} does not exist on this member (dbname is \
                             a database or an alias)"
                        ),
                    ));
                }
                if self.open(client) {
                    return self.admit(client, Access::All).await;
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?;
                let access = self.check(&password.password, &database(client))?;
                self.admit(client, access).await?;
            }
            _ => {}
        }
        Ok(())
    }
}
