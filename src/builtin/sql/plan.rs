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
//! and a table read above the cut (the root has no rows).

use std::sync::Arc;

use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::prelude::{SessionConfig, SessionContext};

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
pub(super) fn context(statistics: bool) -> SessionContext {
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
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .build();
    SessionContext::new_with_state(state)
}

/// The physical plan of `sql` in `ctx` (a query that does not plan is the
/// caller's error).
pub(super) async fn physical_plan(ctx: &SessionContext, sql: &str) -> Result<Plan, AnalysisError> {
    let invalid = |e: datafusion::error::DataFusionError| AnalysisError::invalid_params(e);
    ctx.sql(sql)
        .await
        .map_err(invalid)?
        .create_physical_plan()
        .await
        .map_err(invalid)
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
        let mut reads = scans_shard_files(node, global_dir);
        for child in node.children() {
            reads |= below(child, exempt, global_dir, aggregate)?;
        }
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
        let ctx = context(false);
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
        // A window over a global table alone is fine.
        let (_, checked) =
            cut_of("SELECT code, row_number() OVER (PARTITION BY name ORDER BY code) FROM regions")
                .await;
        assert!(!checked.unwrap());
    }
}
