//! What a connection's statements do. Each is parsed (PostgreSQL dialect)
//! and sorted:
//!
//! - a query of the database's tables (`SELECT`, `WITH`, `VALUES`,
//!   `EXPLAIN`) runs as `POST /v1/query/{dbname}/sql` runs it: distributed
//!   over the members, the version pinned once, the same answer;
//! - a query of `pg_catalog` or `information_schema`, or of no table at all
//!   (`SELECT version()`), and `SET`, `SHOW`, `BEGIN`/`COMMIT`/`ROLLBACK`,
//!   cursors: on this member, over a context with the same tables and
//!   datafusion-postgres's catalog (what psql's `\dt`, Grafana and DBeaver
//!   read);
//! - anything else would write: refused with SQLSTATE 25006.
//!
//! The extended protocol is `extended.rs`.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;

use datafusion::sql::sqlparser::ast::{ObjectName, Statement, visit_relations};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::DfSessionService;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::query::SimpleQueryHandler;
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response};
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, ConnectionHandle};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::data::DataRow;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::channel::oneshot;
use futures::{Sink, Stream, StreamExt};
use std::fmt::Debug;

use super::errors::{error, query_error, read_only};
use super::extended::ReadOnlyParser;
use super::startup::{Access, database};
use super::{Activity, Running};
use crate::node::Node;
use crate::query::QueryRequest;
use crate::sync::lock;
use datafusion::catalog::MemoryCatalogProvider;

/// A parsed statement as datafusion-postgres keeps it: its text, and the
/// statement with its plan.
pub(super) type Prepared = (String, Option<(Statement, LogicalPlan)>);

/// Catalog contexts kept (one per database version in use).
const KEPT: usize = 8;

/// A catalog context's key: the name connected to, the database it names
/// and its version, and the other databases listed.
type Key = (String, String, String, Vec<String>);

/// Where a statement runs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// The database's tables, distributed.
    Data,
    /// The catalog, session settings or no table: on this member.
    Catalog,
    /// It would write.
    Refused(&'static str),
}

pub(super) fn route(statement: &Statement) -> Route {
    match statement {
        Statement::Query(_) => {
            let mut tables = 0;
            let mut catalog = false;
            let _ = visit_relations(statement, |name: &ObjectName| {
                tables += 1;
                let text = name.to_string().to_ascii_lowercase();
                let last = text.rsplit('.').next().unwrap_or_default();
                if text.starts_with("pg_catalog.")
                    || text.starts_with("information_schema.")
                    || last.starts_with("pg_")
                {
                    catalog = true;
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            if catalog || tables == 0 {
                Route::Catalog
            } else {
                Route::Data
            }
        }
        Statement::Explain { .. } | Statement::ExplainTable { .. } => Route::Data,
        Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Route::Catalog,
        Statement::Insert(_) => Route::Refused("INSERT"),
        Statement::Update { .. } => Route::Refused("UPDATE"),
        Statement::Delete(_) => Route::Refused("DELETE"),
        Statement::Copy { .. } => Route::Refused("COPY"),
        Statement::CreateTable(_)
        | Statement::CreateView { .. }
        | Statement::CreateIndex(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction(_)
        | Statement::Drop { .. }
        | Statement::AlterTable { .. }
        | Statement::Truncate { .. } => Route::Refused("DDL"),
        _ => Route::Refused("this statement"),
    }
}

pub(super) fn parse(sql: &str) -> PgWireResult<Vec<Statement>> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| error("ERROR", "42601", format!("syntax error: {e}")))
}

/// The catalog contexts of the database versions connections use.
pub(super) struct Catalogs {
    node: Node,
    kept: Mutex<Vec<(Key, Arc<DfSessionService>)>>,
    /// Over no table: what prepared statements are described with.
    pub(super) plain: Arc<DfSessionService>,
    /// The member's databases and aliases, and when they were read.
    names: Mutex<Option<(std::time::Instant, Vec<String>)>>,
}

/// How long the list of databases and aliases is reused.
const NAMES_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Catalogs {
    fn new(node: Node) -> Catalogs {
        let ctx = datafusion::prelude::SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_information_schema(true),
        );
        let _ = setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider);
        Catalogs {
            node,
            kept: Mutex::default(),
            plain: Arc::new(DfSessionService::new(Arc::new(ctx))),
            names: Mutex::default(),
        }
    }

    /// The context of the connection of `client`: the version of its
    /// database ready here, under the name it connected with, with the
    /// other databases and aliases it may see listed beside (as empty
    /// catalogs: `\l`, `pg_database`).
    pub(super) async fn of<C: ClientInfo>(
        &self,
        client: &C,
    ) -> PgWireResult<Arc<DfSessionService>> {
        let target = database(client);
        let local = self.node.local();
        let not_found = |e: crate::local::NodeError| query_error(&e.into());
        let database = local.resolve(&target).map_err(not_found)?;
        let version = local.ready_version(&database).map_err(not_found)?;
        let access = client.session_extensions().get::<Access>();
        let listed = match access.as_deref() {
            Some(Access::All) => self.names(&target),
            _ => Vec::new(),
        };
        let key = (target.clone(), database, version, listed);
        if let Some((_, service)) = lock(&self.kept).iter().find(|(k, _)| *k == key) {
            return Ok(service.clone());
        }
        let (ctx, database, version) = self
            .node
            .queries()
            .catalog_session(&target)
            .await
            .map_err(|e| query_error(&e))?;
        let listed = key.3;
        for name in &listed {
            ctx.register_catalog(name, Arc::new(MemoryCatalogProvider::new()));
        }
        setup_pg_catalog(&ctx, &target, EmptyContextProvider)
            .map_err(|e| error("ERROR", "XX000", format!("pg_catalog: {e}")))?;
        let service = Arc::new(DfSessionService::new(Arc::new(ctx)));
        let mut kept = lock(&self.kept);
        if kept.len() >= KEPT {
            kept.remove(0);
        }
        kept.push(((target, database, version, listed), service.clone()));
        Ok(service)
    }

    /// The databases and aliases of this member but `target`, sorted (read
    /// again after [`NAMES_FOR`]).
    fn names(&self, target: &str) -> Vec<String> {
        let mut kept = lock(&self.names);
        let fresh = kept
            .as_ref()
            .is_some_and(|(read, _)| read.elapsed() < NAMES_FOR);
        if !fresh {
            let local = self.node.local();
            let databases = local.databases().unwrap_or_default();
            let aliases = local.aliases().unwrap_or_default();
            let mut names: Vec<String> = databases
                .into_iter()
                .map(|d| d.record.name)
                .chain(aliases.into_iter().map(|a| a.name))
                .collect();
            names.sort();
            names.dedup();
            *kept = Some((std::time::Instant::now(), names));
        }
        kept.as_ref()
            .map(|(_, names)| names.iter().filter(|n| *n != target).cloned().collect())
            .unwrap_or_default()
    }
}

/// The query handlers of every connection.
pub(super) struct Session {
    node: Node,
    pub(super) catalogs: Arc<Catalogs>,
    pub(super) parser: Arc<ReadOnlyParser>,
}

impl Session {
    pub(super) fn new(node: Node) -> Session {
        let catalogs = Arc::new(Catalogs::new(node.clone()));
        Session {
            node,
            parser: Arc::new(ReadOnlyParser {
                catalogs: catalogs.clone(),
                parsed: Mutex::default(),
            }),
            catalogs,
        }
    }

    /// How long a statement may run (`query.timeout_ms`).
    pub(super) fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.node.config().query.timeout_ms)
    }

    /// Runs a query of the database's tables as the `sql` analysis does,
    /// and hands its rows on as they come, in `format`. A cancel request
    /// while they are sent stops the query too (before the first rows,
    /// pgwire drops the query itself).
    pub(super) async fn data<C: ClientInfo>(
        &self,
        client: &C,
        sql: &str,
        format: &Format,
    ) -> PgWireResult<Response> {
        let request = QueryRequest {
            params: Some(serde_json::json!({ "sql": sql })),
            ..QueryRequest::default()
        };
        let (rows, _) = self
            .node
            .queries()
            .query_sql_stream(&database(client), request)
            .await
            .map_err(|e| query_error(&e))?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields: Arc<Vec<FieldInfo>> = Arc::new(arrow_schema_to_pg_fields(
            &rows.schema(),
            format,
            Some(options),
        )?);
        let encoded = fields.clone();
        let rows = rows.into_stream().flat_map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> = match batch {
                Ok(batch) => encode_recordbatch(encoded.clone(), batch),
                Err(e) => Box::new(std::iter::once(Err(query_error(&e)))),
            };
            futures::stream::iter(rows)
        });
        let guard = Guard::of(client, self.timeout());
        Ok(Response::Query(QueryResponse::new(
            fields,
            guard.rows(rows),
        )))
    }
}

/// `work`, or SQLSTATE 57014 past `timeout`.
pub(super) async fn within<T>(
    timeout: std::time::Duration,
    work: impl std::future::Future<Output = PgWireResult<T>>,
) -> PgWireResult<T> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// A statement past `query.timeout_ms`.
fn timed_out() -> PgWireError {
    error(
        "ERROR",
        "57014",
        "canceling statement due to statement timeout (query.timeout_ms)",
    )
}

/// What bounds the rows a statement sends: the connection's cancel key, its
/// activity, and the statement's deadline.
pub(super) struct Guard {
    handle: Option<Arc<ConnectionHandle>>,
    running: Option<Running>,
    deadline: tokio::time::Instant,
}

impl Guard {
    /// For a statement of `client`'s connection, due within `timeout`.
    pub(super) fn of<C: ClientInfo>(client: &C, timeout: std::time::Duration) -> Guard {
        Guard {
            handle: client
                .session_extensions()
                .get::<Arc<ConnectionHandle>>()
                .map(|handle| (*handle).clone()),
            running: Activity::running(client),
            deadline: tokio::time::Instant::now() + timeout,
        }
    }

    /// `response`'s rows, guarded.
    pub(super) fn response(self, response: Response) -> Response {
        match response {
            Response::Query(mut query) => {
                let rows =
                    std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
                query.data_rows = Box::pin(self.rows(rows));
                Response::Query(query)
            }
            other => other,
        }
    }

    /// `rows`, ended by a cancel request on the connection (SQLSTATE 57014,
    /// never cut short silently) or past the deadline (57014 too). It listens
    /// for the cancel from its first row: by then pgwire no longer does. The
    /// connection counts as running a statement until the stream is dropped.
    fn rows(
        self,
        rows: impl Stream<Item = PgWireResult<DataRow>> + Send + 'static,
    ) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
        enum Cancel {
            Unheard(Option<Arc<ConnectionHandle>>),
            Heard(Option<oneshot::Receiver<()>>),
            Done,
        }
        let Guard {
            handle,
            running,
            deadline,
        } = self;
        let rows = Box::pin(rows.map(move |row| {
            let _running = &running;
            row
        }));
        // One timer for the whole answer, not one per row.
        let late = Box::pin(tokio::time::sleep_until(deadline));
        futures::stream::unfold(
            (rows, Cancel::Unheard(handle), late),
            move |(mut rows, cancel, mut late)| async move {
                let mut receiver = match cancel {
                    Cancel::Done => return None,
                    Cancel::Heard(receiver) => receiver,
                    Cancel::Unheard(handle) => match handle {
                        Some(handle) => Some(handle.start_query().await),
                        None => None,
                    },
                };
                loop {
                    let heard = async {
                        match receiver.as_mut() {
                            Some(listening) => listening.await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        row = rows.next() => {
                            let row = row?;
                            return Some((row, (rows, Cancel::Heard(receiver), late)));
                        }
                        heard = heard => match heard {
                            Ok(()) => {
                                return Some((Err(PgWireError::QueryCanceled), (rows, Cancel::Done, late)));
                            }
                            // Another query on this connection took the
                            // cancel key over (a suspended portal): go on
                            // without listening.
                            Err(_) => receiver = None,
                        },
                        _ = late.as_mut() => {
                            return Some((Err(timed_out()), (rows, Cancel::Done, late)));
                        }
                    }
                }
            },
        )
    }
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _running = Activity::running(client);
        let statements = parse(query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let single = statements.len() == 1;
        let mut responses = Vec::with_capacity(statements.len());
        for statement in &statements {
            // One statement runs as the client wrote it; several, as parsed.
            let sql = if single {
                query.to_string()
            } else {
                statement.to_string()
            };
            match route(statement) {
                Route::Refused(what) => return Err(read_only(what)),
                Route::Data => {
                    responses.push(self.data(client, &sql, &Format::UnifiedText).await?);
                }
                Route::Catalog => {
                    let service = self.catalogs.of(client).await?;
                    let answered = within(
                        self.timeout(),
                        SimpleQueryHandler::do_query(&*service, client, &sql),
                    )
                    .await?;
                    for response in answered {
                        responses.push(Guard::of(client, self.timeout()).response(response));
                    }
                }
            }
        }
        Ok(responses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(sql: &str) -> Route {
        route(&parse(sql).unwrap()[0])
    }

    #[test]
    fn statements_are_routed_by_what_they_read_and_writes_are_refused() {
        assert_eq!(
            routed("SELECT region, count(*) FROM sales GROUP BY 1"),
            Route::Data
        );
        assert_eq!(
            routed("WITH t AS (SELECT 1 FROM sales) SELECT * FROM t"),
            Route::Data
        );
        assert_eq!(routed("EXPLAIN SELECT * FROM sales"), Route::Data);
        assert_eq!(routed("SELECT version()"), Route::Catalog);
        assert_eq!(
            routed("SELECT c.relname FROM pg_catalog.pg_class c"),
            Route::Catalog
        );
        assert_eq!(
            routed("SELECT * FROM information_schema.tables"),
            Route::Catalog
        );
        assert_eq!(routed("SET datestyle = 'ISO'"), Route::Catalog);
        assert_eq!(routed("BEGIN"), Route::Catalog);
        assert_eq!(
            routed("INSERT INTO sales VALUES (1)"),
            Route::Refused("INSERT")
        );
        assert_eq!(
            routed("COPY (SELECT 'x') TO '/tmp/x.csv'"),
            Route::Refused("COPY")
        );
        assert_eq!(routed("CREATE TABLE t (a INT)"), Route::Refused("DDL"));
        assert_eq!(routed("DROP TABLE sales"), Route::Refused("DDL"));
        assert!(parse("SELEC 1").is_err());
    }
}
