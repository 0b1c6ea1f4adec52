//! A SQL query on the engine, as a member runs it: where each shard is
//! read (this member first, then the least busy holder, version pinned), the
//! run on the SQL runtime within the deadline, once more without a member
//! that failed, and the answer as JSON or Arrow IPC.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use url::Url;

use super::routing::Placement;
use super::stream::RowStream;
use super::tables::Tables;
use super::udtf::{self, AnalysisTable};
use super::{SQL, SqlEngine, runtime};
use crate::query::Queries;
use crate::query::root::GatheredMeta;
use crate::query::sql::analysis::SqlParams;
use crate::query::{
    AnalysisError, CacheUse, NodeMeta, QueryError, QueryMeta, QueryRequest, QueryResponse,
};

/// An answer's rows, as DataFusion typed them.
/// A query's rows: their schema and batches.
pub(crate) type Rows = (SchemaRef, Vec<RecordBatch>);

/// What a query asks for: shards of a pinned version, by a deadline.
#[derive(Clone, Copy)]
struct Asked<'a> {
    database: &'a str,
    version: &'a str,
    shards: &'a [String],
    allow_partial: bool,
    deadline: tokio::time::Instant,
}

/// What a query reads where.
struct Reading {
    placement: Placement,
    /// Member → shards it reads.
    nodes: BTreeMap<String, usize>,
    /// Shards read (those with a holder).
    shards: Vec<String>,
    missing: Vec<String>,
    /// Other members' worker addresses (`host:port`) → their ids.
    members: HashMap<String, String>,
}

impl Reading {
    /// The member an error is about, when it says a worker could not be
    /// reached or its connection broke (not when the query itself failed).
    fn failed_member(&self, message: &str) -> Option<String> {
        const BROKEN: [&str; 7] = [
            "connect",
            "Unavailable",
            "transport error",
            "broken pipe",
            "connection reset",
            "stream closed",
            "h2 protocol error",
        ];
        if !BROKEN.iter().any(|b| message.contains(b)) {
            return None;
        }
        self.members
            .iter()
            .find(|(address, _)| message.contains(address.as_str()))
            .map(|(_, member)| member.clone())
    }
}

impl Queries {
    /// Runs the built-in `sql` analysis: `None` when the request is not one
    /// the engine runs (another analysis, or no engine here).
    pub(crate) async fn run_sql(
        &self,
        target: &str,
        analysis_name: &str,
        request: &QueryRequest,
    ) -> Option<Result<QueryResponse, QueryError>> {
        // The built-in `sql` only: a node that serves no `sql`, or its own
        // analysis of that name, answers as for any other analysis.
        if analysis_name != SQL {
            return None;
        }
        let engine = self.builtin_sql_engine()?;
        let answer = self.run_sql_whole(engine, target, request).await;
        Some(answer.and_then(|(rows, meta)| {
            let output = crate::query::sql::analysis::sql_output(&rows.0, &rows.1)
                .map_err(|e| QueryError::from_analysis(SQL, None, e))?;
            let result = serde_json::to_value(output).map_err(|e| QueryError::Failed {
                analysis: SQL.into(),
                shard: None,
                message: e.to_string(),
            })?;
            Ok(QueryResponse { result, meta })
        }))
    }

    /// Whether this member answers `sql` over `target` itself, with the
    /// built-in engine: it serves the built-in `sql` and knows the target.
    pub fn answers_sql(&self, target: &str) -> bool {
        self.builtin_sql_engine().is_some() && self.local.resolve(target).is_ok()
    }

    /// The engine, when this node serves the built-in `sql` (not its own
    /// analysis of that name).
    /// Whether `name` is the built-in `sql` analysis.
    pub(crate) fn serves_builtin_sql(&self, name: &str) -> bool {
        name == SQL
            && self.analyses().get(SQL).is_some_and(|a| {
                a.analysis_type() == std::any::TypeId::of::<crate::query::sql::analysis::Sql>()
            })
    }

    fn builtin_sql_engine(&self) -> Option<Arc<SqlEngine>> {
        let served = self.analyses().get(SQL)?.analysis_type()
            == std::any::TypeId::of::<crate::query::sql::analysis::Sql>();
        self.sql_engine().filter(|_| served).cloned()
    }

    /// Runs a `sql` query (`POST /v1/query/{database}/sql` with `Accept:
    /// application/vnd.apache.arrow.stream`): the rows as an Arrow IPC
    /// stream, exactly as DataFusion typed them, and the query's meta.
    pub async fn query_sql_arrow(
        &self,
        target: &str,
        request: QueryRequest,
    ) -> Result<(Vec<u8>, QueryMeta), QueryError> {
        self.query_sql_encoded(target, request, |(schema, batches)| {
            crate::query::sql::analysis::to_ipc(schema, batches)
        })
        .await
    }

    /// Runs a `sql` query: the whole JSON answer (`{"result": {"columns",
    /// "rows"}, "meta"}`, as [`Queries::query`] gives it), its rows written
    /// straight from Arrow, and the query's meta.
    pub async fn query_sql_json(
        &self,
        target: &str,
        request: QueryRequest,
    ) -> Result<(Vec<u8>, QueryMeta), QueryError> {
        const RESULT: &[u8] = b"{\"result\":";
        const META: &[u8] = b",\"meta\":";
        let started = Instant::now();
        let looked = self.look_up(target, SQL, &request).await;
        let kept = looked.as_ref().and_then(|looked| looked.hit(started));
        if let Some((result, meta)) = kept {
            self.local
                .metrics()
                .query_done(SQL, "ok", started.elapsed());
            let mut body = Vec::with_capacity(result.len() + 512);
            body.extend_from_slice(RESULT);
            body.extend_from_slice(&result);
            body.extend_from_slice(META);
            return close_with_meta(body, meta);
        }
        let (body, mut meta) = self
            .query_sql_encoded(target, request, |(schema, batches)| {
                let rows = crate::query::sql::analysis::json_rows(batches)?;
                let columns: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
                let mut body = Vec::with_capacity(rows.len() + 64);
                body.extend_from_slice(b"{\"result\":{\"columns\":");
                serde_json::to_writer(&mut body, &columns)
                    .map_err(|e| AnalysisError::failed(format!("json: {e}")))?;
                body.extend_from_slice(b",\"rows\":");
                body.extend_from_slice(if rows.is_empty() { b"[]" } else { &rows });
                body.extend_from_slice(b"},\"meta\":");
                Ok(body)
            })
            .await?;
        // The body so far is `{"result":` RESULT `,"meta":`.
        match &looked {
            Some(looked) => {
                meta.cache = Some(CacheUse::Miss.as_str().into());
                if body.starts_with(RESULT) && body.ends_with(META) {
                    let result = &body[RESULT.len()..body.len() - META.len()];
                    self.keep(looked, &meta, bytes::Bytes::copy_from_slice(result));
                }
            }
            None => meta.cache = Some(CacheUse::Bypass.as_str().into()),
        }
        close_with_meta(body, meta)
    }

    /// Runs a `sql` query here and encodes its rows; counted in the query
    /// metrics.
    async fn query_sql_encoded(
        &self,
        target: &str,
        request: QueryRequest,
        encode: impl FnOnce(&Rows) -> Result<Vec<u8>, AnalysisError>,
    ) -> Result<(Vec<u8>, QueryMeta), QueryError> {
        let (rows, meta) = self.query_sql_rows(target, request).await?;
        let bytes = encode(&rows).map_err(|e| QueryError::from_analysis(SQL, None, e))?;
        Ok((bytes, meta))
    }

    /// Runs a `sql` query here (the same as `POST /v1/query/{target}/sql`):
    /// its rows as DataFusion typed them, and its meta; counted in the query
    /// metrics.
    pub(crate) async fn query_sql_rows(
        &self,
        target: &str,
        request: QueryRequest,
    ) -> Result<(Rows, QueryMeta), QueryError> {
        self.counted(|engine| self.run_sql_whole(engine, target, &request))
            .await
    }

    /// Runs a `sql` query here as [`Queries::query_sql_rows`] does, but
    /// hands its rows on as they come (a member that fails before the first
    /// row has the query run again without it; after, the stream ends with
    /// the error). Counted in the query metrics once it has started; the
    /// meta's `took_ms` is the time to the first rows.
    pub(crate) async fn query_sql_stream(
        &self,
        target: &str,
        request: QueryRequest,
    ) -> Result<(RowStream, QueryMeta), QueryError> {
        self.counted(|engine| self.run_sql_with(engine, target, &request, false))
            .await
    }

    /// Runs `run` with the built-in engine, counted in the query metrics.
    async fn counted<T, F>(&self, run: impl FnOnce(Arc<SqlEngine>) -> F) -> Result<T, QueryError>
    where
        F: std::future::Future<Output = Result<T, QueryError>>,
    {
        let started = Instant::now();
        let answer = match self.builtin_sql_engine() {
            Some(engine) => run(engine).await,
            None => Err(QueryError::UnknownAnalysis(SQL.into())),
        };
        let outcome = answer.as_ref().map_or_else(QueryError::code, |_| "ok");
        self.local
            .metrics()
            .query_done(SQL, outcome, started.elapsed());
        answer
    }

    /// Runs a `sql` query to its last row.
    async fn run_sql_whole(
        &self,
        engine: Arc<SqlEngine>,
        target: &str,
        request: &QueryRequest,
    ) -> Result<(Rows, QueryMeta), QueryError> {
        let (rows, meta) = self.run_sql_with(engine, target, request, true).await?;
        let schema = rows.schema();
        Ok(((schema, rows.collect().await?), meta))
    }

    /// A context on this member alone over the tables of the version of
    /// `target` ready here (every shard; files this member does not hold are
    /// read from their holders), its catalog named `target`: what SQL
    /// clients' catalog queries read. Returns the database and version.
    pub(crate) async fn catalog_session(
        &self,
        target: &str,
    ) -> Result<(SessionContext, String, String), QueryError> {
        let engine = self
            .builtin_sql_engine()
            .ok_or_else(|| QueryError::UnknownAnalysis(SQL.into()))?;
        let database = self.local.resolve(target)?;
        let version = self.local.ready_version(&database)?;
        let shards = self.local.shard_ids(&database)?;
        let node = self.local.clone();
        let (db, ver, name) = (database.clone(), version.clone(), target.to_string());
        let analyses = AnalysisTable::new(self.clone(), target);
        let ctx = on_sql_runtime(async move {
            let ctx = engine.catalog_context(&name);
            ctx.register_udtf(udtf::NAME, Arc::new(analyses));
            let tables = engine.tables(&node, &ctx, &db, &ver).await?;
            tables.register(&ctx, &shards, true)?;
            Ok(ctx)
        })
        .await
        .map_err(|e| QueryError::from_analysis(SQL, None, e))?;
        Ok((ctx, database, version))
    }

    async fn run_sql_with(
        &self,
        engine: Arc<SqlEngine>,
        target: &str,
        request: &QueryRequest,
        whole: bool,
    ) -> Result<(RowStream, QueryMeta), QueryError> {
        let started = Instant::now();
        let analysis_error = |e: AnalysisError| QueryError::from_analysis(SQL, None, e);
        let timeout_ms = self.query_timeout(request.timeout_ms)?;
        let params: SqlParams = serde_json::from_value(
            request
                .params
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
        )
        .map_err(|e| QueryError::InvalidParams {
            analysis: SQL.into(),
            message: e.to_string(),
        })?;
        let mode = crate::query::sql::analysis::sql_mode(&params).map_err(analysis_error)?;
        let database = self.local.resolve(target)?;
        let version = self.local.ready_version(&database)?;
        let shard_ids = self.chosen_shards(&database, request.shards.clone())?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let work = async {
            match mode {
                crate::query::sql::analysis::SqlMode::Split(sql) => {
                    // A member that fails (it died, its worker is gone) has
                    // the query run again once without it.
                    let mut excluded: Vec<String> = Vec::new();
                    loop {
                        let asked = Asked {
                            database: &database,
                            version: &version,
                            shards: &shard_ids,
                            allow_partial: request.allow_partial,
                            deadline,
                        };
                        let reading = self.reading(&engine, &asked, &excluded).await?;
                        if excluded.is_empty() {
                            self.local.count_query(&database, &reading.shards);
                        }
                        let (node, engine) = (self.local.clone(), engine.clone());
                        let (db, ver, sql) = (database.clone(), version.clone(), sql.to_string());
                        let placement = reading.placement.clone();
                        let shards = reading.shards.clone();
                        let analyses = AnalysisTable::new(self.clone(), target);
                        let plan = async move {
                            let ctx = engine.session(Some(placement), explains_analyze(&sql));
                            ctx.register_udtf(udtf::NAME, Arc::new(analyses));
                            let tables = engine.tables(&node, &ctx, &db, &ver).await?;
                            tables.register(&ctx, &shards, true)?;
                            run(&ctx, &sql, &tables).await
                        };
                        let begun = RowStream::start(plan, deadline, timeout_ms).await;
                        // A whole answer is read here, so that a member
                        // failing midway has it run again too.
                        let output = match begun {
                            Ok(rows) if whole => {
                                let schema = rows.schema();
                                match rows.collect().await {
                                    Ok(batches) => Ok(RowStream::done(schema, batches)),
                                    Err(QueryError::Failed { message, .. }) => {
                                        Err(AnalysisError::failed(message))
                                    }
                                    Err(e) => return Err(e),
                                }
                            }
                            other => other,
                        };
                        let output = match output {
                            Ok(output) => output,
                            Err(e) => match reading.failed_member(e.message()) {
                                Some(member) if excluded.is_empty() => {
                                    tracing::info!(
                                        member,
                                        error = %e.message(),
                                        "a member failed during a SQL query: running it again without it"
                                    );
                                    if let Some(membership) = self.membership() {
                                        membership.note_failed_holders([member.as_str()]);
                                    }
                                    excluded.push(member);
                                    continue;
                                }
                                _ => return Err(analysis_error(e)),
                            },
                        };
                        let nodes = reading
                            .nodes
                            .into_iter()
                            .map(|(node, shards)| NodeMeta {
                                node,
                                shards,
                                took_ms: started.elapsed().as_millis() as u64,
                                error: None,
                            })
                            .collect();
                        let meta = GatheredMeta {
                            shards: reading.shards.len(),
                            nodes,
                            retries: if excluded.is_empty() { 0 } else { 1 },
                            hedges: 0,
                            missing_shards: reading.missing,
                            cached_shards: 0,
                        };
                        break Ok::<_, QueryError>((output, meta));
                    }
                }
                crate::query::sql::analysis::SqlMode::Explicit { reduce, .. } => {
                    let analysis = self
                        .analyses()
                        .get(SQL)
                        .ok_or_else(|| QueryError::UnknownAnalysis(SQL.into()))?;
                    let parsed = analysis
                        .params(request.params.clone())
                        .map_err(analysis_error)?;
                    let query = crate::query::root::RootQuery::new(
                        &database,
                        &version,
                        SQL,
                        analysis.clone(),
                        parsed,
                        request,
                        timeout_ms,
                    );
                    let gathered = self.gather(&query, shard_ids.clone()).await?;
                    let partials = gathered
                        .partials
                        .into_iter()
                        .map(|p| {
                            p.downcast::<crate::query::sql::analysis::SqlPartial>()
                                .map(|p| *p)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| QueryError::Failed {
                            analysis: SQL.into(),
                            shard: None,
                            message: "the analysis named sql is not the built-in one".into(),
                        })?;
                    let (node, engine) = (self.local.clone(), engine.clone());
                    let (db, ver, reduce) = (database.clone(), version.clone(), reduce.to_string());
                    let (schema, batches) = on_sql_runtime(async move {
                        let ctx = engine.session(None, false);
                        let tables = engine.tables(&node, &ctx, &db, &ver).await?;
                        tables.register(&ctx, &[], false)?;
                        crate::query::sql::analysis::reduce_explicit(&ctx, &reduce, partials).await
                    })
                    .await
                    .map_err(analysis_error)?;
                    Ok((RowStream::done(schema, batches), gathered.meta))
                }
            }
        };
        let (output, meta) = match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result?,
            Err(_) => return Err(QueryError::Timeout { timeout_ms }),
        };
        Ok((output, meta.answered(target, database, version, started)))
    }

    /// Chooses the member that reads each shard: this one for the shards it
    /// serves, else a live holder with a worker, the least busy first.
    async fn reading(
        &self,
        engine: &SqlEngine,
        asked: &Asked<'_>,
        excluded: &[String],
    ) -> Result<Reading, QueryError> {
        let Asked {
            database,
            version,
            shards,
            allow_partial,
            deadline,
        } = *asked;
        let here = self.local.serving_shards(database)?;
        let own = engine.url.get().cloned();
        let mut chosen: HashMap<String, Url> = HashMap::new();
        let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
        let mut missing = Vec::new();
        let remote: Vec<String> = shards
            .iter()
            .filter(|s| !here.contains(*s))
            .cloned()
            .collect();
        let mut workers: Vec<Url> = own.iter().cloned().collect();
        let found = match self.membership() {
            Some(membership) => Some(
                crate::query::root::holders_when_known(
                    membership, database, version, &remote, deadline,
                )
                .await,
            ),
            None => None,
        };
        let mut members = HashMap::new();
        if let Some(found) = &found {
            for (member, worker) in &found.workers {
                if excluded.contains(member) {
                    continue;
                }
                if let Ok(url) = Url::parse(worker) {
                    members.insert(url.authority().to_string(), member.clone());
                    workers.push(url);
                }
            }
        }
        let mut assigned: HashMap<String, u64> = HashMap::new();
        for shard in shards {
            if here.contains(shard) {
                *nodes.entry(self.local.id().to_string()).or_default() += 1;
                if let Some(own) = &own {
                    chosen.insert(shard.clone(), own.clone());
                }
                continue;
            }
            let best = found.as_ref().and_then(|found| {
                found
                    .holders
                    .get(shard)?
                    .iter()
                    .filter(|member| !excluded.contains(member))
                    .filter_map(|member| {
                        let url = Url::parse(found.workers.get(member)?).ok()?;
                        let busy = found.load.get(member).copied().unwrap_or(0)
                            + assigned.get(member).copied().unwrap_or(0);
                        Some((busy, member.clone(), url))
                    })
                    .min_by_key(|(busy, _, _)| *busy)
            });
            match best {
                Some((_, member, url)) => {
                    *assigned.entry(member.clone()).or_default() += 1;
                    *nodes.entry(member).or_default() += 1;
                    chosen.insert(shard.clone(), url);
                }
                None => missing.push(shard.clone()),
            }
        }
        if !missing.is_empty() && !allow_partial {
            return Err(QueryError::Unavailable { shards: missing });
        }
        let read: Vec<String> = shards
            .iter()
            .filter(|s| !missing.contains(s))
            .cloned()
            .collect();
        Ok(Reading {
            placement: Placement::new(chosen, workers, own),
            nodes,
            shards: read,
            missing,
            members,
        })
    }

    /// This member's SQL engine, when the `sql` feature is on.
    pub(crate) fn sql_engine(&self) -> Option<&Arc<SqlEngine>> {
        self.inner.sql.as_ref()
    }
}

/// Runs `work` on the SQL runtime; dropping the returned future (deadline,
/// caller gone, shutdown) drops the work, and with it every stage it runs
/// on this member and the streams from the others (which stop theirs).
async fn on_sql_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, AnalysisError>> + Send + 'static,
) -> Result<T, AnalysisError> {
    let handle = runtime()?.spawn(work);
    let abort = handle.abort_handle();
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _guard = AbortOnDrop(abort);
    match handle.await {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Err(AnalysisError::cancelled()),
        Err(_) => Err(AnalysisError::failed("the sql query panicked")),
    }
}

/// Whether `sql` is an EXPLAIN ANALYZE.
fn explains_analyze(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(3)
        .map(str::to_ascii_uppercase)
        .collect();
    words.first().is_some_and(|w| w == "EXPLAIN") && words.iter().any(|w| w == "ANALYZE")
}

/// Plans one read-only statement and starts it; a missing table's error
/// lists the tables there are.
/// A JSON answer's body, written up to `"meta":`, closed with `meta`.
fn close_with_meta(mut body: Vec<u8>, meta: QueryMeta) -> Result<(Vec<u8>, QueryMeta), QueryError> {
    serde_json::to_writer(&mut body, &meta).map_err(|e| QueryError::Failed {
        analysis: SQL.into(),
        shard: None,
        message: e.to_string(),
    })?;
    body.push(b'}');
    Ok((body, meta))
}

async fn run(
    ctx: &SessionContext,
    sql: &str,
    tables: &Tables,
) -> Result<SendableRecordBatchStream, AnalysisError> {
    let started = Instant::now();
    let plan = match crate::query::sql::analysis::physical_plan(ctx, sql).await {
        Ok(plan) => plan,
        Err(e) if e.message().contains("not found") && e.message().contains("table") => {
            let names = tables.names();
            return Err(AnalysisError::invalid_params(format!(
                "{}; the tables of {} are: {}",
                e.message(),
                tables.database,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
        Err(e) => return Err(e),
    };
    tracing::debug!(
        plan_ms = started.elapsed().as_secs_f64() * 1e3,
        "sql query planned"
    );
    datafusion::physical_plan::execute_stream(plan, ctx.task_ctx())
        .map_err(|e| crate::query::sql::analysis::run_failed("query", e))
}
