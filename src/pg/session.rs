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
//! The extended protocol (prepared statements with parameters, as psycopg
//! sends them) plans and runs on this member's catalog context, over the
//! same tables and files (those it does not hold are read from their
//! holders).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use std::ops::ControlFlow;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::sql::sqlparser::ast::{
    self, ObjectName, Statement, visit_expressions_mut, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::unparser::expr_to_sql;
use datafusion_postgres::DfSessionService;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, ConnectionHandle, Type};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::data::DataRow;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::channel::oneshot;
use futures::{Sink, Stream, StreamExt};
use std::fmt::Debug;

use super::errors::{error, query_error, read_only};
use super::startup::{Access, database};
use super::{Activity, Running};
use crate::node::Node;
use crate::query::QueryRequest;
use crate::sync::lock;
use datafusion::catalog::MemoryCatalogProvider;

/// A parsed statement as datafusion-postgres keeps it: its text, and the
/// statement with its plan.
type Prepared = (String, Option<(Statement, LogicalPlan)>);

/// Catalog contexts kept (one per database version in use).
const KEPT: usize = 8;

/// A catalog context's key: the name connected to, the database it names
/// and its version, and the other databases listed.
type Key = (String, String, String, Vec<String>);

/// Where a statement runs.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// The database's tables, distributed.
    Data,
    /// The catalog, session settings or no table: on this member.
    Catalog,
    /// It would write.
    Refused(&'static str),
}

fn route(statement: &Statement) -> Route {
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

fn parse(sql: &str) -> PgWireResult<Vec<Statement>> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| error("ERROR", "42601", format!("syntax error: {e}")))
}

/// The catalog contexts of the database versions connections use.
pub(super) struct Catalogs {
    node: Node,
    kept: Mutex<Vec<(Key, Arc<DfSessionService>)>>,
    /// Over no table: what prepared statements are described with.
    plain: Arc<DfSessionService>,
}

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
        }
    }

    /// The context of the connection of `client`: the version of its
    /// database ready here, under the name it connected with, with the
    /// other databases and aliases it may see listed beside (as empty
    /// catalogs: `\l`, `pg_database`).
    async fn of<C: ClientInfo>(&self, client: &C) -> PgWireResult<Arc<DfSessionService>> {
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

    /// The databases and aliases of this member but `target`, sorted.
    fn names(&self, target: &str) -> Vec<String> {
        let local = self.node.local();
        let databases = local.databases().unwrap_or_default();
        let aliases = local.aliases().unwrap_or_default();
        let mut names: Vec<String> = databases
            .into_iter()
            .map(|d| d.record.name)
            .chain(aliases.into_iter().map(|a| a.name))
            .filter(|name| name != target)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The query handlers of every connection.
pub(super) struct Session {
    node: Node,
    catalogs: Arc<Catalogs>,
    parser: Arc<ReadOnlyParser>,
}

impl Session {
    pub(super) fn new(node: Node) -> Session {
        let catalogs = Arc::new(Catalogs::new(node.clone()));
        Session {
            node,
            parser: Arc::new(ReadOnlyParser {
                catalogs: catalogs.clone(),
            }),
            catalogs,
        }
    }

    /// Runs a query of the database's tables as the `sql` analysis does,
    /// and hands its rows on as they come, in `format`. A cancel request
    /// while they are sent stops the query too (before the first rows,
    /// pgwire drops the query itself).
    async fn data<C: ClientInfo>(
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
        let handle = client
            .session_extensions()
            .get::<Arc<ConnectionHandle>>()
            .map(|handle| (*handle).clone());
        // The connection is busy until its last row is sent.
        let running = Activity::running(client);
        Ok(Response::Query(QueryResponse::new(
            fields,
            cancellable(rows, handle, running),
        )))
    }
}

/// `rows`, ended by a cancel request on the connection of `handle` with
/// SQLSTATE 57014 (never cut short silently). It listens from its first
/// row: by then pgwire no longer does. The connection counts as running a
/// statement (`running`) until the stream is dropped.
fn cancellable(
    rows: impl Stream<Item = PgWireResult<DataRow>> + Send + 'static,
    handle: Option<Arc<ConnectionHandle>>,
    running: Option<Running>,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    enum Cancel {
        Unheard(Option<Arc<ConnectionHandle>>),
        Heard(Option<oneshot::Receiver<()>>),
        Done,
    }
    let rows = Box::pin(rows.map(move |row| {
        let _running = &running;
        row
    }));
    futures::stream::unfold(
        (rows, Cancel::Unheard(handle)),
        |(mut rows, cancel)| async move {
            let mut receiver = match cancel {
                Cancel::Done => return None,
                Cancel::Heard(receiver) => receiver,
                Cancel::Unheard(handle) => match handle {
                    Some(handle) => Some(handle.start_query().await),
                    None => None,
                },
            };
            let Some(listening) = receiver.as_mut() else {
                let row = rows.next().await?;
                return Some((row, (rows, Cancel::Heard(None))));
            };
            tokio::select! {
                row = rows.next() => {
                    let row = row?;
                    Some((row, (rows, Cancel::Heard(receiver))))
                }
                heard = listening => match heard {
                    Ok(()) => Some((Err(PgWireError::QueryCanceled), (rows, Cancel::Done))),
                    // Another query on this connection took the cancel key
                    // over (a suspended portal): go on without listening.
                    Err(_) => {
                        let row = rows.next().await?;
                        Some((row, (rows, Cancel::Heard(None))))
                    }
                },
            }
        },
    )
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
                    responses.extend(SimpleQueryHandler::do_query(&*service, client, &sql).await?);
                }
            }
        }
        Ok(responses)
    }
}

/// Parses prepared statements: refuses what would write, then plans the
/// rest on the connection's catalog context.
pub(super) struct ReadOnlyParser {
    catalogs: Arc<Catalogs>,
}

#[async_trait]
impl QueryParser for ReadOnlyParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        for statement in parse(sql)? {
            if let Route::Refused(what) = route(&statement) {
                return Err(read_only(what));
            }
        }
        let service = self.catalogs.of(client).await?;
        let parser = ExtendedQueryHandler::query_parser(&*service);
        parser.parse_sql(client, sql, types).await
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        ExtendedQueryHandler::query_parser(&*self.catalogs.plain).get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        ExtendedQueryHandler::query_parser(&*self.catalogs.plain)
            .get_result_schema(statement, format)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = Prepared;
    type QueryParser = ReadOnlyParser;

    fn query_parser(&self) -> Arc<ReadOnlyParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _running = Activity::running(client);
        if let (_, Some((statement, plan))) = &portal.statement.statement
            && route(statement) == Route::Data
        {
            let sql = bind(statement, plan, portal)?;
            return self.data(client, &sql, &portal.result_column_format).await;
        }
        let service = self.catalogs.of(client).await?;
        ExtendedQueryHandler::do_query(&*service, client, portal, max_rows).await
    }
}

/// The statement of `portal` with its parameters written in as literals of
/// their types: what runs distributed.
fn bind(
    statement: &Statement,
    plan: &LogicalPlan,
    portal: &Portal<Prepared>,
) -> PgWireResult<String> {
    let invalid = |message: String| error("ERROR", "22023", message);
    let types = plan
        .get_parameter_types()
        .map_err(|e| invalid(format!("parameters: {e}")))?;
    let mut types: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .map(|(id, ty)| (placeholder_index(&id).unwrap_or(usize::MAX), ty))
        .collect();
    types.sort_by_key(|(index, _)| *index);
    let types: Vec<Option<&DataType>> = types.iter().map(|(_, ty)| ty.as_ref()).collect();
    let values = match deserialize_parameters(portal, &types)? {
        ParamValues::List(values) => values,
        ParamValues::Map(_) => return Err(invalid("named parameters are not supported".into())),
    };
    let mut bound = statement.clone();
    let mut failed = None;
    let _ = visit_expressions_mut(&mut bound, |expr| {
        if let ast::Expr::Value(value) = expr
            && let ast::Value::Placeholder(name) = &value.value
        {
            let literal = placeholder_index(name)
                .and_then(|index| values.get(index - 1))
                .ok_or_else(|| format!("no value for parameter {name}"))
                .and_then(|value| {
                    expr_to_sql(&datafusion::logical_expr::lit(value.value.clone()))
                        .map_err(|e| format!("parameter {name}: {e}"))
                });
            match literal {
                Ok(literal) => *expr = literal,
                Err(message) => {
                    failed = Some(message);
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    match failed {
        Some(message) => Err(invalid(message)),
        None => Ok(bound.to_string()),
    }
}

/// `$3` → 3.
fn placeholder_index(name: &str) -> Option<usize> {
    name.strip_prefix('$')?
        .parse()
        .ok()
        .filter(|index| *index > 0)
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
