//! What may run and how it is planned: the read-only guard (one statement,
//! a query, shallow enough to walk), planning with DataFusion's own guard
//! behind it, and the errors of planning and running.

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};

use crate::query::AnalysisError;

type Plan = Arc<dyn ExecutionPlan>;

/// A context for one shard's `map_sql` (or a `reduce_sql` without an
/// engine): a memory pool of `memory_limit` bytes and no disk to spill to,
/// so a query that needs more fails (`memory_limit`) and the node stays.
pub(super) fn context(memory_limit: u64) -> Result<SessionContext, AnalysisError> {
    let mut config = SessionConfig::new();
    config
        .options_mut()
        .execution
        .listing_table_ignore_subdirectory = false;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(usize::try_from(memory_limit).unwrap_or(usize::MAX), 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
        .map_err(|e| AnalysisError::failed(format!("sql runtime: {e}")))?;
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// Deepest nesting of the parser (parentheses, subqueries); deeper is a 400.
const RECURSION_LIMIT: usize = 64;

/// Refuses `sql` unless it is one read-only statement: a query (SELECT,
/// WITH, VALUES), EXPLAIN of one, SHOW or DESCRIBE. Anything that would
/// define a table (`CREATE EXTERNAL TABLE` reads any path), write a file
/// (`COPY … TO`), change a setting (`SET`) or start a transaction is
/// `read_only`.
pub(super) fn read_only(sql: &str) -> Result<(), AnalysisError> {
    shallow(sql)?;
    let statements = DFParserBuilder::new(sql)
        .with_recursion_limit(RECURSION_LIMIT)
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(AnalysisError::invalid_params)?;
    match statements.len() {
        0 => Err(AnalysisError::invalid_params("no SQL statement given")),
        1 => statements.iter().try_for_each(allowed),
        n => Err(AnalysisError::invalid_params(format!(
            "{n} SQL statements given: send one at a time"
        ))),
    }
}

/// Most operators one expression (or one chain of UNIONs and JOINs) may
/// chain: `1+1+…+1` parses into a tree as deep as it is long, and walking
/// (or dropping) a tree thousands deep overflows a thread's stack.
const MAX_CHAIN: usize = 500;

/// Refuses, from its tokens alone (a flat pass, before any tree is built),
/// SQL chaining more than [`MAX_CHAIN`] operators in one expression or more
/// than that many set operations and joins at one level of parentheses.
fn shallow(sql: &str) -> Result<(), AnalysisError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(AnalysisError::invalid_params)?;
    // Per level of parentheses: operators since the last comma or clause,
    // and set operations and joins at that level.
    let mut levels: Vec<(usize, usize)> = vec![(0, 0)];
    for token in &tokens {
        match token {
            Token::LParen => levels.push((0, 0)),
            Token::RParen if levels.len() > 1 => {
                levels.pop();
            }
            _ => {}
        }
        let Some(level) = levels.last_mut() else {
            break;
        };
        match token {
            Token::Comma => level.0 = 0,
            Token::Word(word) => match word.keyword {
                Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::COLLATE => level.0 += 1,
                Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT | Keyword::JOIN => {
                    level.1 += 1
                }
                Keyword::SELECT
                | Keyword::FROM
                | Keyword::WHERE
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::ORDER
                | Keyword::ON
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::LIMIT
                | Keyword::OFFSET => level.0 = 0,
                _ => {}
            },
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::DuckIntDiv
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::DoubleColon
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::ShiftLeft
            | Token::ShiftRight
            | Token::Arrow
            | Token::LongArrow => level.0 += 1,
            _ => {}
        }
        if level.0 > MAX_CHAIN || level.1 > MAX_CHAIN {
            return Err(AnalysisError::invalid_params(format!(
                "the query chains more than {MAX_CHAIN} operators (or UNIONs, or JOINs) in one \
                 expression: split it, or use IN (…) lists"
            )));
        }
    }
    Ok(())
}

fn allowed(statement: &DFStatement) -> Result<(), AnalysisError> {
    use datafusion::sql::sqlparser::ast::Statement as Ansi;
    let refused = |what: &str| {
        Err(AnalysisError::read_only(format!(
            "{what} is not allowed: dram's SQL is read-only (SELECT, WITH, EXPLAIN, SHOW, \
             DESCRIBE); databases are defined with POST /v1/databases"
        )))
    };
    match statement {
        DFStatement::Statement(ansi) => match ansi.as_ref() {
            Ansi::Query(_)
            | Ansi::ShowTables { .. }
            | Ansi::ShowColumns { .. }
            | Ansi::ShowFunctions { .. }
            | Ansi::ExplainTable { .. } => Ok(()),
            Ansi::Explain { statement, .. } => {
                allowed(&DFStatement::Statement(Box::new((**statement).clone())))
            }
            other => {
                let text = other.to_string();
                let verb: Vec<&str> = text.split_whitespace().take(2).collect();
                refused(&verb.join(" ").to_uppercase())
            }
        },
        DFStatement::Explain(explain) => allowed(&explain.statement),
        DFStatement::CreateExternalTable(_) => refused("CREATE EXTERNAL TABLE"),
        DFStatement::CopyTo(_) => refused("COPY … TO"),
        DFStatement::Reset(_) => refused("RESET"),
    }
}

/// Whether the answer to `sql` is a function of the database alone, so that
/// it may be kept in the result cache: one query (not EXPLAIN, whose ANALYZE
/// reports timings) that calls no function DataFusion marks other than
/// immutable (`random()`, `now()`, `current_date`, …), none it does not know,
/// and no `dram_analysis` (whose analysis may not be repeatable).
pub(crate) fn repeatable(sql: &str) -> bool {
    use std::ops::ControlFlow;
    use std::sync::LazyLock;

    use datafusion::execution::SessionState;
    use datafusion::logical_expr::Volatility;
    use datafusion::sql::sqlparser::ast::{
        Expr, Statement as Ansi, visit_expressions, visit_relations,
    };

    static FUNCTIONS: LazyLock<SessionState> = LazyLock::new(|| SessionContext::new().state());
    // The same guards as for running it: nothing deep is walked.
    if read_only(sql).is_err() {
        return false;
    }
    let Ok(statements) = DFParserBuilder::new(sql)
        .with_recursion_limit(RECURSION_LIMIT)
        .build()
        .and_then(|mut parser| parser.parse_statements())
    else {
        return false;
    };
    let query = match statements.front() {
        Some(DFStatement::Statement(statement)) if statements.len() == 1 => statement,
        _ => return false,
    };
    if !matches!(query.as_ref(), Ansi::Query(_)) {
        return false;
    }
    let last = |name: String| name.rsplit('.').next().unwrap_or_default().to_lowercase();
    let functions = &*FUNCTIONS;
    let volatile = visit_expressions(query.as_ref(), |expr| {
        if let Expr::Function(function) = expr {
            let name = last(function.name.to_string());
            let immutable = match functions.scalar_functions().get(&name) {
                Some(udf) => udf.signature().volatility == Volatility::Immutable,
                None => {
                    functions.aggregate_functions().contains_key(&name)
                        || functions.window_functions().contains_key(&name)
                }
            };
            if !immutable {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    let analysis = visit_relations(query.as_ref(), |relation| {
        if last(relation.to_string()) == crate::query::sql::udtf::NAME {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    volatile.is_continue() && analysis.is_continue()
}

/// The physical plan of `sql` in `ctx` (a query that does not plan is the
/// caller's error). Only read-only statements plan: the params are checked
/// by [`read_only`] first, and DataFusion's own guard stands behind it.
pub(crate) async fn physical_plan(ctx: &SessionContext, sql: &str) -> Result<Plan, AnalysisError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options)
        .await
        .map_err(planning_failed)?
        .create_physical_plan()
        .await
        .and_then(crate::query::sql::preempt::preemptible)
        .map_err(planning_failed)
}

/// A planning error: the query's fault, unless the planner ran out of
/// memory.
fn planning_failed(e: DataFusionError) -> AnalysisError {
    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        return run_failed("plan", e);
    }
    AnalysisError::invalid_params(e)
}

/// An error running a plan: past the memory limit it says so.
pub(crate) fn run_failed(what: &str, e: DataFusionError) -> AnalysisError {
    if let DataFusionError::ResourcesExhausted(message) = e.find_root() {
        return AnalysisError::memory_limit(format!("{what}: past sql.memory_limit: {message}"));
    }
    AnalysisError::failed(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn only_answers_of_the_database_alone_are_repeatable() {
        for sql in [
            "SELECT count(*) FROM sales",
            "SELECT upper(region), sum(amount) AS s FROM sales GROUP BY 1 ORDER BY s DESC",
            "SELECT region, row_number() OVER (ORDER BY amount) FROM sales",
            "SHOW TABLES",
        ] {
            assert_eq!(repeatable(sql), !sql.starts_with("SHOW"), "{sql}");
        }
        for sql in [
            "SELECT random()",
            "SELECT now()",
            "SELECT current_date",
            "SELECT CURRENT_TIMESTAMP",
            "SELECT count(*) FROM sales WHERE day > now() - INTERVAL '1 day'",
            "SELECT no_such_function(1)",
            "SELECT * FROM dram_analysis('group', '{}')",
            "EXPLAIN ANALYZE SELECT count(*) FROM sales",
            "SELECT 1; SELECT 2",
            "DROP TABLE sales",
        ] {
            assert!(!repeatable(sql), "{sql}");
        }
    }

    #[test]
    fn only_read_only_statements_run() {
        for sql in [
            "SELECT 1",
            "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SHOW TABLES",
            "SHOW COLUMNS FROM sales",
            "DESCRIBE sales",
        ] {
            assert!(read_only(sql).is_ok(), "{sql}: {:?}", read_only(sql));
        }
        for sql in [
            "COPY (SELECT 'x') TO 'x.csv'",
            "EXPLAIN COPY (SELECT 'x') TO 'x.csv'",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "CREATE TABLE t AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "INSERT INTO sales VALUES (1)",
            "DROP TABLE sales",
            "SET datafusion.execution.batch_size = 1",
            "RESET datafusion.execution.batch_size",
            "BEGIN",
        ] {
            let error = read_only(sql).expect_err(sql);
            assert_eq!(
                error.kind(),
                crate::query::AnalysisErrorKind::ReadOnly,
                "{sql}"
            );
            assert!(error.message().contains("read-only"), "{sql}: {error}");
        }
        let error = read_only("SELECT 1; SELECT 2").unwrap_err();
        assert!(error.message().contains("one at a time"), "{error}");
    }

    #[test]
    fn deep_expressions_are_refused_not_a_crash() {
        for sql in [
            format!("SELECT {}", vec!["1"; 1_000].join("+")),
            format!("SELECT 1 WHERE {}", vec!["1 = 1"; 1_500].join(" AND ")),
            vec!["SELECT 1"; 1_000].join(" UNION ALL "),
            format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200)),
            format!("SELECT {}", vec!["1"; 200_000].join("*")),
        ] {
            let error = read_only(&sql).expect_err("a deep expression was accepted");
            assert_eq!(
                error.kind(),
                crate::query::AnalysisErrorKind::InvalidParams,
                "{error}"
            );
        }
        // Long but shallow: many terms, each short.
        let wide = format!(
            "SELECT {}",
            (0..2_000)
                .map(|i| format!("{i} + 1 AS c{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        read_only(&wide).unwrap();
        // Just under the bound, the query runs where SQL runs (threads with
        // room for walking a deep tree).
        let sum = format!("SELECT {} AS n", vec!["1"; MAX_CHAIN].join("+"));
        read_only(&sum).unwrap();
        let batches = super::super::block_on(async {
            let ctx = context(1 << 30)?;
            let plan = physical_plan(&ctx, &sum).await?;
            datafusion::physical_plan::collect(plan, ctx.task_ctx())
                .await
                .map_err(|e| run_failed("test", e))
        })
        .unwrap();
        assert_eq!(batches[0].num_rows(), 1);
    }

    #[tokio::test]
    async fn a_query_past_its_memory_limit_fails_cleanly() {
        let ctx = context(1 << 20).unwrap();
        let sql = "SELECT v, count(*) FROM (SELECT value % 1000000 AS v FROM generate_series(1, 3000000)) GROUP BY v ORDER BY v";
        let plan = physical_plan(&ctx, sql).await.unwrap();
        let error = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .map_err(|e| run_failed("test", e))
            .unwrap_err();
        assert_eq!(
            error.kind(),
            crate::query::AnalysisErrorKind::MemoryLimit,
            "{error}"
        );
        assert!(error.message().contains("sql.memory_limit"), "{error}");
    }
}
