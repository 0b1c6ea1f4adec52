//! The extended protocol: prepared statements with parameters, as psycopg,
//! JDBC and Grafana's driver send every query. A statement is parsed and
//! described on the connection's catalog context (its columns are known
//! before it runs); a query of the tables then runs distributed, as the
//! simple protocol's do, with its parameters bound as typed literals, and
//! its rows are sent as they come.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{self, Statement, visit_expressions_mut};
use datafusion::sql::unparser::expr_to_sql;
use datafusion_postgres::DfSessionService;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::pgwire::api::portal::{Format, Portal, PortalExecutionState};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, send_query_response};
use datafusion_postgres::pgwire::api::results::{FieldInfo, Response};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::{Entry, PortalStore};
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, PgWireConnectionState, Type,
};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::extendedquery::Execute;
use futures::Sink;
use futures::channel::oneshot;
use futures::future::{Either, select};

use super::Activity;
use super::errors::{error, read_only};
use super::session::{Catalogs, Guard, Prepared, Route, Session, parse, route, within};
use crate::sync::lock;

/// Parses prepared statements: refuses what would write, then plans the
/// rest on the connection's catalog context.
pub(super) struct ReadOnlyParser {
    pub(super) catalogs: Arc<Catalogs>,
    /// Queries of the tables parsed lately, newest last: a driver that
    /// prepares the same statement again (pgbench, a dashboard's panels)
    /// does not have it planned again.
    pub(super) parsed: Mutex<VecDeque<Parsed>>,
}

/// A statement as parsed on a catalog context, with the types the client
/// gave its parameters.
pub(super) struct Parsed {
    service: Arc<DfSessionService>,
    sql: String,
    types: Vec<Option<Type>>,
    statement: Prepared,
}

/// Statements kept parsed.
const PARSED: usize = 256;

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
        let statements = parse(sql)?;
        for statement in &statements {
            if let Route::Refused(what) = route(statement) {
                return Err(read_only(what));
            }
        }
        let service = self.catalogs.of(client).await?;
        let kept =
            |p: &Parsed| Arc::ptr_eq(&p.service, &service) && p.sql == sql && p.types == types;
        if let Some(parsed) = lock(&self.parsed).iter().find(|p| kept(p)) {
            return Ok(Some(parsed.statement.clone()));
        }
        let parser = ExtendedQueryHandler::query_parser(&*service);
        let parsed = parser.parse_sql(client, sql, types).await?;
        // Only queries of the tables: others may be parsed with effects
        // (datafusion-postgres's hooks).
        if let (Some(statement), [one]) = (&parsed, statements.as_slice())
            && route(one) == Route::Data
        {
            let mut kept = lock(&self.parsed);
            if kept.len() >= PARSED {
                kept.pop_front();
            }
            kept.push_back(Parsed {
                service: service.clone(),
                sql: sql.to_string(),
                types: types.to_vec(),
                statement: statement.clone(),
            });
        }
        Ok(parsed)
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

    /// pgwire gathers every row of a portal executed whole (`max_rows` 0,
    /// what drivers send) before it sends the first; a query of the tables
    /// sends them as they come instead. Anything else, pgwire's way.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let streamed = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal))
                if message.max_rows == 0
                    && matches!(client.state(), PgWireConnectionState::ReadyForQuery)
                    && matches!(&portal.statement.statement, (_, Some((statement, _))) if route(statement) == Route::Data)
                    && matches!(*portal.state().lock().await, PortalExecutionState::Initial) =>
            {
                Some(portal)
            }
            _ => None,
        };
        let Some(portal) = streamed else {
            return self._on_execute(client, message).await;
        };
        client.set_state(PgWireConnectionState::QueryInProgress);
        // A cancel request before the first rows drops the query here; after,
        // the rows' guard hears it.
        let cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
            Some(handle) => handle.start_query().await,
            None => oneshot::channel().1,
        };
        let response = match select(
            Box::pin(ExtendedQueryHandler::do_query(self, client, &portal, 0)),
            cancel,
        )
        .await
        {
            Either::Left((response, _)) => response?,
            Either::Right((Ok(()), _)) => return Err(PgWireError::QueryCanceled),
            Either::Right((Err(_), running)) => running.await?,
        };
        *portal.state().lock().await = PortalExecutionState::Finished;
        if let Response::Query(rows) = response {
            send_query_response(client, rows, false).await?;
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
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
        let response = within(
            self.timeout(),
            ExtendedQueryHandler::do_query(&*service, client, portal, max_rows),
        )
        .await?;
        Ok(Guard::of(client, self.timeout()).response(response))
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
