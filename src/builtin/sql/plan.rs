//! Where a query's physical plan is cut between the shards and the root, and
//! what cannot be cut exactly.
//!
//! - With an aggregation: at the *partial* phase of the lowest one (the one
//!   over the tables). Shards run up to it; the root runs the final phase and
//!   everything above (HAVING, ORDER BY, LIMIT, windows over the groups).
//! - Without: at the merge of partitions (sorted or not) nearest the top.
//!   Shards run it, with its limit (the limit pushed down); the root merges
//!   the shards' outputs the same way and runs what is above.
//! - Neither: shards run the whole plan; the root concatenates.
//!
//! Refused, with the construct named: a window function or a LIMIT whose
//! input is shard data below the cut (each shard would answer for itself),
//! a table read above the cut (the root has no rows), and every operator
//! over shard rows and other rows whose answer over all shards is not the
//! union of each shard's answer ([`check_inputs`]: joins keeping a global
//! table's rows, joins between two shard tables, unions with global rows).

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PiecewiseMergeJoinExec, SortMergeJoinExec,
    SymmetricHashJoinExec,
};
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::{InterleaveExec, UnionExec};
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::prelude::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};

use crate::query::AnalysisError;

type Plan = Arc<dyn ExecutionPlan>;

/// A context whose plans keep the partial and the final aggregation apart
/// and have the same shape on a shard and at the root: two target
/// partitions, every file scan split in two whatever its size, and without
/// the rules that fuse the two phases or answer an aggregate from a table's
/// statistics (a shard's statistics are not the database's).
///
/// With `statistics`, tables are registered with their row counts and sizes:
/// joins then build on the smaller side. The root plans without (it has no
/// rows), and so does a shard whose plan has no aggregation: DataFusion does
/// not split a scan it knows to be small, and the shard's plan must end in
/// the same merge as the root's.
///
/// Each context gets a memory pool of `memory_limit` bytes and no disk to
/// spill to: a query that needs more fails (`memory_limit`), the node stays.
pub(super) fn context(
    statistics: bool,
    memory_limit: u64,
) -> Result<SessionContext, AnalysisError> {
    let rules: Vec<_> = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new()
        .rules
        .into_iter()
        .filter(|rule| {
            !matches!(
                rule.name(),
                "aggregate_statistics" | "CombinePartialFinalAggregate"
            )
        })
        .collect();
    let mut config = SessionConfig::new().with_target_partitions(2);
    config.options_mut().optimizer.repartition_file_min_size = 0;
    config.options_mut().execution.collect_statistics = statistics;
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
        .with_physical_optimizer_rules(rules)
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

/// The physical plan of `sql` in `ctx` (a query that does not plan is the
/// caller's error). Only read-only statements plan: the params are checked
/// by [`read_only`] first, and DataFusion's own guard stands behind it.
pub(super) async fn physical_plan(ctx: &SessionContext, sql: &str) -> Result<Plan, AnalysisError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options)
        .await
        .map_err(planning_failed)?
        .create_physical_plan()
        .await
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
pub(super) fn run_failed(what: &str, e: DataFusionError) -> AnalysisError {
    if let DataFusionError::ResourcesExhausted(message) = e.find_root() {
        return AnalysisError::memory_limit(format!("{what}: past sql.memory_limit: {message}"));
    }
    AnalysisError::failed(format!("{what}: {e}"))
}

/// Where a plan is cut.
pub(super) enum Cut {
    /// The partial phase of the lowest aggregation: shards run it.
    Aggregate(Plan),
    /// A merge of partitions: shards run it; the root runs it again over
    /// their outputs, and what is above.
    Merge(Plan),
    /// Shards run everything; the root concatenates.
    Whole,
}

impl Cut {
    pub(super) fn of(plan: &Plan) -> Cut {
        if let Some(partial) = partial_aggregate(plan) {
            return Cut::Aggregate(partial);
        }
        let mut node = plan.clone();
        loop {
            if is_merge(&node) {
                return Cut::Merge(node);
            }
            let children = node.children();
            let [child] = children.as_slice() else {
                return Cut::Whole;
            };
            node = (*child).clone();
        }
    }

    /// What a shard runs.
    pub(super) fn shard_part(&self, plan: &Plan) -> Plan {
        match self {
            Cut::Aggregate(node) | Cut::Merge(node) => node.clone(),
            Cut::Whole => plan.clone(),
        }
    }
}

fn is_merge(node: &Plan) -> bool {
    node.downcast_ref::<SortPreservingMergeExec>().is_some()
        || node.downcast_ref::<CoalescePartitionsExec>().is_some()
}

/// The partial aggregate of the plan's lowest aggregation, if any. (A query
/// such as `count(DISTINCT x) … GROUP BY g` aggregates twice — by (g, x),
/// then by g — and only the lowest one may be split across shards.)
fn partial_aggregate(plan: &Plan) -> Option<Plan> {
    if let Some(lower) = plan.children().into_iter().find_map(partial_aggregate) {
        return Some(lower);
    }
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>()
        && matches!(
            aggregate.mode(),
            AggregateMode::Final | AggregateMode::FinalPartitioned
        )
    {
        let mut below = aggregate.input().clone();
        loop {
            if let Some(partial) = below.downcast_ref::<AggregateExec>() {
                return (*partial.mode() == AggregateMode::Partial).then(|| below.clone());
            }
            let children = below.children();
            let [child] = children.as_slice() else {
                return None;
            };
            below = (*child).clone();
        }
    }
    None
}

/// `plan` with the node `target` replaced by `replacement`.
pub(super) fn replace(
    plan: &Plan,
    target: &Plan,
    replacement: &Plan,
) -> Result<Plan, AnalysisError> {
    if Arc::ptr_eq(plan, target) {
        return Ok(replacement.clone());
    }
    let children = plan
        .children()
        .into_iter()
        .map(|child| replace(child, target, replacement))
        .collect::<Result<Vec<_>, _>>()?;
    if children.is_empty() {
        return Ok(plan.clone());
    }
    replace_children_if_necessary(plan.clone(), children)
        .map_err(|e| AnalysisError::failed(format!("plan: {e}")))
}

/// Whether a leaf scans files outside `global_dir` (a shard's own data).
fn scans_shard_files(node: &Plan, global_dir: Option<&str>) -> bool {
    let Some(source) = node.downcast_ref::<DataSourceExec>() else {
        return false;
    };
    let Some(scan) = source.data_source().downcast_ref::<FileScanConfig>() else {
        return false;
    };
    scan.file_groups.iter().flat_map(|g| g.iter()).any(|file| {
        let location = file.object_meta.location.as_ref();
        global_dir.is_none_or(|global| !location.starts_with(global))
    })
}

fn scans_files(node: &Plan) -> bool {
    node.downcast_ref::<DataSourceExec>().is_some_and(|source| {
        source
            .data_source()
            .downcast_ref::<FileScanConfig>()
            .is_some()
    })
}

fn cannot_split(what: &str) -> AnalysisError {
    AnalysisError::invalid_params(format!(
        "{what} cannot be split across shards: each shard would answer for its own rows only; \
         aggregate first (windows and limits over GROUP BY results run on all of them), or send \
         map_sql and reduce_sql (reduce_sql reads the shards' rows as table `partials`)"
    ))
}

/// The join type of a join node (a cross join is an inner join).
fn join_type(node: &Plan) -> Option<JoinType> {
    if let Some(join) = node.downcast_ref::<HashJoinExec>() {
        return Some(*join.join_type());
    }
    if let Some(join) = node.downcast_ref::<SortMergeJoinExec>() {
        return Some(join.join_type());
    }
    if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>() {
        return Some(*join.join_type());
    }
    if let Some(join) = node.downcast_ref::<SymmetricHashJoinExec>() {
        return Some(*join.join_type());
    }
    if let Some(join) = node.downcast_ref::<PiecewiseMergeJoinExec>() {
        return Some(join.join_type());
    }
    node.downcast_ref::<CrossJoinExec>()
        .map(|_| JoinType::Inner)
}

/// Whether a node over several inputs, of which `reads` say which read
/// shard rows, gives each shard's part exactly: the union over shards of
/// `node(shard rows, global rows)` must be `node(all rows, global rows)`.
///
/// That holds when the node keeps shard rows one by one and global rows
/// only as they meet them: an inner join; an outer, semi, anti or mark
/// join whose kept (preserved) side is the shard side; a union of shard
/// inputs only. A join keeping a global table's rows would emit them once
/// per shard (or judge "no match" on one shard's rows), a union with
/// global rows would add them once per shard, and rows of two shard tables
/// in different shards would never meet.
fn check_inputs(node: &Plan, reads: &[bool]) -> Result<(), AnalysisError> {
    if reads.len() < 2 || !reads.contains(&true) {
        return Ok(());
    }
    if let Some(join) = join_type(node) {
        let &[left, right] = reads else {
            return Err(cannot_split(&format!("{} over shard rows", node.name())));
        };
        if left && right {
            return Err(cannot_split(
                "a join between two shard tables (rows in different shards would never meet; \
                 join shard tables with global tables, or join within each shard with map_sql)",
            ));
        }
        // The join type as seen from the shard side (as if shard rows were
        // on the left).
        let join = if left { join } else { join.swap() };
        return match join {
            JoinType::Inner
            | JoinType::Left
            | JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::LeftMark => Ok(()),
            JoinType::Right | JoinType::Full => Err(cannot_split(
                "an outer join keeping a global table's unmatched rows (RIGHT or FULL JOIN of \
                 shard rows with a global table)",
            )),
            JoinType::RightSemi => Err(cannot_split(
                "a semi join keeping a global table's rows that match shard rows (IN, EXISTS or \
                 INTERSECT with a global table on the kept side)",
            )),
            JoinType::RightAnti => Err(cannot_split(
                "an anti join keeping a global table's rows that match no shard row (NOT IN, \
                 NOT EXISTS or EXCEPT with a global table on the kept side)",
            )),
            JoinType::RightMark => Err(cannot_split(
                "an EXISTS over shard rows inside OR, keeping a global table's rows",
            )),
        };
    }
    let is_union = node.downcast_ref::<UnionExec>().is_some()
        || node.downcast_ref::<InterleaveExec>().is_some();
    if is_union {
        if reads.iter().all(|r| *r) {
            return Ok(());
        }
        return Err(cannot_split(
            "a UNION of shard rows with rows that are not a shard's (a global table or \
             constants would be added once per shard)",
        ));
    }
    Err(cannot_split(&format!(
        "{} over shard rows and other inputs",
        node.name()
    )))
}

/// Checks a shard's plan can be cut at `cut` exactly; returns whether the
/// shard's part reads shard data at all (one that reads only global tables
/// answers the same on every shard: the root keeps one answer).
/// `global_dir` is where the global tables' files are, as object-store paths.
pub(super) fn check(
    plan: &Plan,
    cut: &Cut,
    global_dir: Option<&str>,
) -> Result<bool, AnalysisError> {
    let part = cut.shard_part(plan);
    // Above the cut: nothing may read a table.
    fn above(node: &Plan, part: &Plan) -> Result<(), AnalysisError> {
        if Arc::ptr_eq(node, part) {
            return Ok(());
        }
        if scans_files(node) {
            return Err(cannot_split(
                "a table read again above the query's aggregation (a join with, or a subquery \
                 over, an aggregate's result)",
            ));
        }
        node.children().into_iter().try_for_each(|c| above(c, part))
    }
    above(plan, &part)?;
    // Below: what must see every shard's rows at once. The nodes the root
    // runs again over all shards' rows are exempt: the merge at the cut, and
    // the top of a plan that runs whole (a LIMIT over a plan without merge).
    let mut exempt: Vec<Plan> = vec![part.clone()];
    if matches!(cut, Cut::Whole) {
        let mut node = plan.clone();
        while node.downcast_ref::<GlobalLimitExec>().is_some() {
            exempt.push(node.clone());
            let Some(child) = node.children().first().map(|c| (*c).clone()) else {
                break;
            };
            node = child;
        }
    }
    // Below an aggregation no LIMIT of the query's can have been pushed: any
    // limit there is a subquery's. Elsewhere the query's own limit is pushed
    // into each partition (TopK sorts, local limits): a subquery's limit is
    // one over all partitions.
    let aggregate = matches!(cut, Cut::Aggregate(_));
    fn below(
        node: &Plan,
        exempt: &[Plan],
        global_dir: Option<&str>,
        aggregate: bool,
    ) -> Result<bool, AnalysisError> {
        let inputs = node
            .children()
            .into_iter()
            .map(|child| below(child, exempt, global_dir, aggregate))
            .collect::<Result<Vec<bool>, _>>()?;
        check_inputs(node, &inputs)?;
        let reads = scans_shard_files(node, global_dir) || inputs.contains(&true);
        if !reads || exempt.iter().any(|e| Arc::ptr_eq(e, node)) {
            return Ok(reads);
        }
        if node.downcast_ref::<WindowAggExec>().is_some()
            || node.downcast_ref::<BoundedWindowAggExec>().is_some()
        {
            return Err(cannot_split("a window function (OVER …) over shard rows"));
        }
        let over_all_partitions = node.downcast_ref::<GlobalLimitExec>().is_some()
            || (is_merge(node) && node.fetch().is_some())
            || node
                .downcast_ref::<SortExec>()
                .is_some_and(|sort| sort.fetch().is_some() && !sort.preserve_partitioning());
        let any_limit = node.fetch().is_some() || node.downcast_ref::<LocalLimitExec>().is_some();
        if over_all_partitions || (aggregate && any_limit) {
            return Err(cannot_split("a LIMIT inside a subquery over shard rows"));
        }
        Ok(reads)
    }
    below(&part, &exempt, global_dir, aggregate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sql` planned on a shard with table `sales` (two small CSV files) and
    /// a global table `regions`: its cut and what `check` says.
    async fn cut_of(sql: &str) -> (Cut, Result<bool, AnalysisError>) {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("shard/sales");
        let global = dir.path().join("global");
        std::fs::create_dir_all(&shard).unwrap();
        std::fs::create_dir_all(global.join("regions")).unwrap();
        std::fs::write(shard.join("a.csv"), "id,region,amount\n1,eu,2.5\n2,us,4\n").unwrap();
        std::fs::write(shard.join("b.csv"), "id,region,amount\n3,eu,1\n").unwrap();
        std::fs::write(global.join("regions/r.csv"), "code,name\neu,Europe\n").unwrap();
        let ctx = context(false, 1 << 30).unwrap();
        let csv = datafusion::prelude::CsvReadOptions::new;
        // Integers in one file, decimals in the other: one schema for both.
        let files = [shard.join("a.csv"), shard.join("b.csv")];
        super::super::tables::register_csv(&ctx, "sales", &format!("{}/", shard.display()), &files)
            .await
            .unwrap();
        ctx.register_csv("regions", &format!("{}/regions/", global.display()), csv())
            .await
            .unwrap();
        let plan = physical_plan(&ctx, sql).await.unwrap();
        let cut = Cut::of(&plan);
        let global = format!("{}/", global.display().to_string().trim_start_matches('/'));
        let checked = check(&plan, &cut, Some(&global));
        (cut, checked)
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
            let ctx = context(false, 1 << 30)?;
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
        let ctx = context(false, 1 << 20).unwrap();
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

    #[tokio::test]
    async fn plans_are_cut_where_one_process_would_split_them() {
        let (cut, reads) = cut_of("SELECT region, avg(amount) FROM sales GROUP BY region").await;
        assert!(matches!(cut, Cut::Aggregate(_)));
        assert!(reads.unwrap());
        let (cut, _) = cut_of("SELECT id FROM sales ORDER BY id LIMIT 2 OFFSET 1").await;
        let Cut::Merge(merge) = cut else {
            panic!("not cut at the merge")
        };
        assert_eq!(
            merge.fetch(),
            Some(3),
            "the shards keep offset + limit rows"
        );
        // A window over the sorted rows of all shards runs at the root.
        let (cut, reads) =
            cut_of("SELECT id, row_number() OVER (ORDER BY id) FROM sales ORDER BY id LIMIT 2")
                .await;
        assert!(matches!(cut, Cut::Merge(_)));
        assert!(reads.unwrap());
        // Only global tables: every shard would answer the same.
        let (_, reads) = cut_of("SELECT count(*) FROM regions").await;
        assert!(!reads.unwrap());
    }

    #[tokio::test]
    async fn what_cannot_be_cut_exactly_is_refused_by_name() {
        for (sql, named) in [
            (
                "SELECT id, rank() OVER (PARTITION BY region ORDER BY amount) FROM sales",
                "window function",
            ),
            (
                "SELECT sum(amount) FROM (SELECT amount FROM sales LIMIT 2)",
                "LIMIT inside a subquery",
            ),
            (
                "SELECT id FROM sales WHERE amount > (SELECT avg(amount) FROM sales)",
                "table read again",
            ),
        ] {
            let (_, checked) = cut_of(sql).await;
            let error = checked
                .err()
                .unwrap_or_else(|| panic!("{sql} was accepted"));
            assert!(error.message().contains(named), "{sql}: {error}");
        }
        // Joins and unions: exact only where shard rows are the kept side.
        for sql in [
            "SELECT count(*) FROM sales s JOIN regions r ON s.region = r.code",
            "SELECT count(*) FROM regions r JOIN sales s ON s.region = r.code",
            "SELECT count(*) FROM sales s LEFT JOIN regions r ON s.region = r.code",
            "SELECT count(*) FROM regions r RIGHT JOIN sales s ON s.region = r.code",
            "SELECT count(*) FROM sales WHERE region IN (SELECT code FROM regions)",
            "SELECT count(*) FROM sales WHERE NOT EXISTS (SELECT 1 FROM regions WHERE code = region)",
            "SELECT count(*) FROM (SELECT id FROM sales UNION ALL SELECT id FROM sales)",
        ] {
            let (_, checked) = cut_of(sql).await;
            assert!(checked.is_ok(), "{sql}: {:?}", checked.err());
        }
        for (sql, named) in [
            (
                "SELECT count(*) FROM sales s RIGHT JOIN regions r ON s.region = r.code",
                "outer join",
            ),
            (
                "SELECT count(*) FROM regions r LEFT JOIN sales s ON s.region = r.code",
                "outer join",
            ),
            (
                "SELECT count(*) FROM sales s FULL JOIN regions r ON s.region = r.code",
                "outer join",
            ),
            (
                "SELECT count(*) FROM regions WHERE code IN (SELECT region FROM sales)",
                "semi join",
            ),
            (
                "SELECT count(*) FROM regions WHERE NOT EXISTS (SELECT 1 FROM sales WHERE region = code)",
                "anti join",
            ),
            (
                "SELECT count(*) FROM regions WHERE code NOT IN (SELECT region FROM sales)",
                "anti join",
            ),
            (
                "SELECT count(*) FROM (SELECT region FROM sales UNION ALL SELECT code FROM regions)",
                "UNION",
            ),
            (
                "SELECT count(*) FROM sales a JOIN sales b ON a.id = b.id",
                "two shard tables",
            ),
            (
                "SELECT code FROM regions INTERSECT SELECT region FROM sales",
                "cannot be split",
            ),
        ] {
            let (_, checked) = cut_of(sql).await;
            let error = checked
                .err()
                .unwrap_or_else(|| panic!("{sql} was accepted"));
            assert!(error.message().contains(named), "{sql}: {error}");
        }
        // A window over a global table alone is fine.
        let (_, checked) =
            cut_of("SELECT code, row_number() OVER (PARTITION BY name ORDER BY code) FROM regions")
                .await;
        assert!(!checked.unwrap());
    }
}
