//! Co-located shard tables: joins and groups on the shard key, shard by
//! shard. A database's manifest may declare that shard tables put their rows
//! in shards by a column, all by the same mapping (`shard_keys`: TPC-H's
//! lineitem by `l_orderkey` and orders by `o_orderkey`). Then the rows of a
//! join on those columns meet in their shard, and moving them between
//! members (a shuffle on each side) is wasted work.
//!
//! DataFusion's way to say so is a scan's declared output partitioning
//! (`FileScanConfig::output_partitioning`): a scan of a co-located table
//! reads whole shards per partition, shard `i` of the query's sorted shards
//! in partition `i % n` (on a member running some of the shards, `i` counts
//! its own), the same for every co-located table, and declares
//! `Hash([key], n)`. The optimizer then leaves out the repartitions that
//! joins and aggregations on the key would need, and datafusion-distributed
//! keeps such a join in one stage with its scans, where the shards are. A
//! scan whose declaration nothing relies on goes back to DataFusion's split
//! of its files (whole shards leave partitions idle on a member holding
//! fewer shards than it has cores).
//!
//! DataFusion takes a declared `Hash` for its own hash function (its code
//! says so), which the shards' mapping is not. So the last optimizer rule
//! ([`CoLocatedJoins`]) checks every node that pairs its inputs partition by
//! partition (a partitioned join, an interleave of a union): where it would pair a
//! declared input with one DataFusion hashed, the declared input is
//! repartitioned by DataFusion's hash too (as without the declaration); and
//! a partitioned join over declared inputs loses its per-partition dynamic
//! filters, which route rows by DataFusion's hash.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::datasource::source::DataSource;
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::Partitioning;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::InterleaveExec;
use datafusion::physical_plan::{Distribution, ExecutionPlan, ExecutionPlanProperties};

use super::store::FileRef;

/// A co-located shard table: `inner` (its listing over the query's shards)
/// whose scans read whole shards per partition and say so.
#[derive(Debug)]
pub(crate) struct CoLocated {
    pub(crate) inner: Arc<dyn TableProvider>,
    /// The shard key.
    pub(crate) key: String,
    /// The query's shards, sorted: shard `shards[i]` goes to partition
    /// `i % n`, whatever files the table has in each.
    pub(crate) shards: Arc<Vec<String>>,
}

#[async_trait]
impl TableProvider for CoLocated {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let args = ScanArgs::default()
            .with_projection(projection.map(Vec::as_slice))
            .with_filters(Some(filters))
            .with_limit(limit);
        Ok(self.scan_with_args(state, args).await?.into_inner())
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult> {
        let plan = self.inner.scan_with_args(state, args).await?.into_inner();
        let index: HashMap<&str, usize> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let groups = state.config().target_partitions().max(1);
        let declared = declare(&plan, &self.key, |id| index.get(id).copied(), groups);
        Ok(ScanResult::new(declared.unwrap_or(plan)))
    }
}

/// `plan` (a scan of `dram://` shard files) reading whole shards, shard at
/// `position(id)` in group `position % groups`, and declaring
/// `Hash([key], groups)`; `None` when it is not such a scan or has no
/// column `key`.
fn declare(
    plan: &Arc<dyn ExecutionPlan>,
    key: &str,
    position: impl Fn(&str) -> Option<usize>,
    groups: usize,
) -> Option<Arc<dyn ExecutionPlan>> {
    let scan = plan.downcast_ref::<DataSourceExec>()?;
    let config = scan.data_source().downcast_ref::<FileScanConfig>()?;
    let schema = config.file_source.table_schema().table_schema();
    let column = schema.index_of(key).ok()?;
    let (file_groups, left_out) = shard_groups(config, position, groups);
    if left_out > 0 {
        return None;
    }
    let mut declared = config.clone();
    declared.file_groups = file_groups;
    declared.output_partitioning = Some(Partitioning::Hash(
        vec![Arc::new(Column::new(key, column))],
        groups,
    ));
    Some(DataSourceExec::from_data_source(declared))
}

/// The files of `scan` in `groups` groups, whole, each shard's in group
/// `position(shard) % groups`, leaving out the shards without a position;
/// and how many files were left out.
pub(crate) fn shard_groups(
    scan: &FileScanConfig,
    position: impl Fn(&str) -> Option<usize>,
    groups: usize,
) -> (Vec<FileGroup>, usize) {
    let mut grouped: Vec<Vec<PartitionedFile>> = vec![Vec::new(); groups];
    let mut seen = std::collections::HashSet::new();
    let mut left_out = 0;
    for file in scan.file_groups.iter().flat_map(|g| g.files()) {
        // A file split in byte ranges is read whole, once.
        if !seen.insert(file.object_meta.location.clone()) {
            continue;
        }
        let group = FileRef::parse(&file.object_meta.location)
            .and_then(|r| r.part.shard_id().and_then(&position));
        match group {
            Some(i) => {
                let mut whole = file.clone();
                whole.range = None;
                grouped[i % groups].push(whole);
            }
            None => left_out += 1,
        }
    }
    (grouped.into_iter().map(FileGroup::new).collect(), left_out)
}

/// Whether a scan declares its shards' partitioning.
pub(crate) fn is_declared(scan: &FileScanConfig) -> bool {
    matches!(scan.output_partitioning, Some(Partitioning::Hash(..)))
}

/// Where a node's hash partitioning comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A co-located scan's declaration.
    Shards,
    /// DataFusion's hash (a repartition; the rule runs before the plan is
    /// distributed, so there are no shuffles across members yet).
    Hashed,
    /// Not hash partitioned.
    Neither,
}

fn origin(plan: &Arc<dyn ExecutionPlan>) -> Origin {
    if !matches!(plan.output_partitioning(), Partitioning::Hash(..)) {
        return Origin::Neither;
    }
    if let Some(repartition) = plan.downcast_ref::<RepartitionExec>() {
        return match repartition.partitioning() {
            Partitioning::Hash(..) => Origin::Hashed,
            _ => Origin::Neither,
        };
    }
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        return match scan.data_source().downcast_ref::<FileScanConfig>() {
            Some(config) if is_declared(config) => Origin::Shards,
            _ => Origin::Neither,
        };
    }
    if let Some(join) = plan.downcast_ref::<HashJoinExec>()
        && *join.partition_mode() != PartitionMode::Partitioned
    {
        // A collected left side: the output is partitioned as the probe.
        return origin(join.right());
    }
    plan.children()
        .into_iter()
        .map(origin)
        .find(|o| *o != Origin::Neither)
        .unwrap_or(Origin::Neither)
}

/// The inputs a node needs partitioned by key (index, keys), which it pairs
/// partition by partition when there are two or more. An interleave (a
/// union of inputs DataFusion found partitioned alike) says no requirement
/// but pairs its inputs all the same, by their partitioning.
fn keyed_inputs(plan: &Arc<dyn ExecutionPlan>) -> Vec<(usize, Vec<Arc<dyn PhysicalExpr>>)> {
    if plan.is::<InterleaveExec>() {
        return plan
            .children()
            .into_iter()
            .enumerate()
            .filter_map(|(i, child)| match child.output_partitioning() {
                Partitioning::Hash(keys, _) => Some((i, keys.clone())),
                _ => None,
            })
            .collect();
    }
    plan.input_distribution_requirements()
        .per_child_distributions()
        .enumerate()
        .filter_map(|(i, d)| {
            #[expect(deprecated, reason = "HashPartitioned is still what some nodes say")]
            match d {
                Distribution::KeyPartitioned(keys) | Distribution::HashPartitioned(keys) => {
                    Some((i, keys.clone()))
                }
                _ => None,
            }
        })
        .collect()
}

/// The physical optimizer's last rule, run before the plan is distributed
/// (and before EXPLAIN shows it): see the module's documentation.
#[derive(Debug, Default)]
pub(crate) struct CoLocatedJoins;

impl PhysicalOptimizerRule for CoLocatedJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let paired = plan.transform_up(pair)?.data;
        settle(paired, false, config).map(|t| t.data)
    }

    fn name(&self) -> &str {
        "dram_co_located_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Scans whose declared partitioning nothing relies on (no join or grouping
/// on the key above them before a repartition) go back to DataFusion's
/// split of their files over all partitions: whole shards per partition
/// would leave partitions idle on a member holding fewer shards than it has
/// cores. `relied`: a node above needs `plan`'s partitioning.
fn settle(
    plan: Arc<dyn ExecutionPlan>,
    relied: bool,
    config: &ConfigOptions,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return if relied {
            Ok(Transformed::no(plan))
        } else {
            undeclare(plan, config)
        };
    }
    let keyed: Vec<usize> = keyed_inputs(&plan).into_iter().map(|(i, _)| i).collect();
    // Whether the node's output is partitioned as an input is.
    let passes = matches!(
        plan.output_partitioning(),
        Partitioning::Hash(..) | Partitioning::Range(..)
    ) && !plan.is::<RepartitionExec>()
        && !plan.is::<CoalescePartitionsExec>()
        && !plan.is::<SortPreservingMergeExec>();
    let collected_left = plan
        .downcast_ref::<HashJoinExec>()
        .is_some_and(|j| *j.partition_mode() == PartitionMode::CollectLeft);
    let mut settled = Vec::with_capacity(children.len());
    let mut changed = false;
    for (i, child) in children.into_iter().enumerate() {
        let child_relied = keyed.contains(&i) || (relied && passes && !(collected_left && i == 0));
        let done = settle(child, child_relied, config)?;
        changed |= done.transformed;
        settled.push(done.data);
    }
    if !changed {
        return Ok(Transformed::no(plan));
    }
    plan.replace_children(
        settled,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
    .map(Transformed::yes)
}

/// A declared scan as DataFusion would plan it without the declaration.
fn undeclare(
    plan: Arc<dyn ExecutionPlan>,
    config: &ConfigOptions,
) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let Some(scan) = plan.downcast_ref::<DataSourceExec>() else {
        return Ok(Transformed::no(plan));
    };
    let Some(declared) = scan.data_source().downcast_ref::<FileScanConfig>() else {
        return Ok(Transformed::no(plan));
    };
    if !is_declared(declared) {
        return Ok(Transformed::no(plan));
    }
    let mut plain = declared.clone();
    plain.output_partitioning = None;
    let optimizer = &config.optimizer;
    let split = if optimizer.repartition_file_scans {
        plain.repartitioned(
            config.execution.target_partitions,
            optimizer.repartition_file_min_size,
            plan.output_ordering().cloned(),
        )?
    } else {
        None
    };
    let source: Arc<dyn DataSource> = split.unwrap_or_else(|| Arc::new(plain));
    Ok(Transformed::yes(Arc::new(DataSourceExec::new(source))))
}

/// One node of [`CoLocatedJoins`] (its inputs done already).
fn pair(node: Arc<dyn ExecutionPlan>) -> Result<Transformed<Arc<dyn ExecutionPlan>>> {
    let keyed = keyed_inputs(&node);
    if keyed.len() < 2 {
        return Ok(Transformed::no(node));
    }
    let children = node.children();
    let origins: Vec<Origin> = keyed.iter().map(|(i, _)| origin(children[*i])).collect();
    if !origins.contains(&Origin::Shards) {
        return Ok(Transformed::no(node));
    }
    let hashed = keyed
        .iter()
        .zip(&origins)
        .find(|(_, o)| **o == Origin::Hashed)
        .map(|((i, _), _)| children[*i].output_partitioning().partition_count());
    let Some(partitions) = hashed else {
        // Declared inputs only: shard meets shard. DataFusion would route
        // the join's dynamic filter by its hash.
        if node.is::<HashJoinExec>() {
            return node.reset_state().map(Transformed::yes);
        }
        return Ok(Transformed::no(node));
    };
    // Declared and hashed: hash the declared inputs too.
    let ordered = node.required_input_ordering();
    let mut inputs: Vec<Arc<dyn ExecutionPlan>> = children.into_iter().cloned().collect();
    for ((i, keys), origin) in keyed.iter().zip(&origins) {
        if *origin != Origin::Shards {
            continue;
        }
        let mut repartition = RepartitionExec::try_new(
            inputs[*i].clone(),
            Partitioning::Hash(keys.clone(), partitions),
        )?;
        if ordered.get(*i).is_some_and(Option::is_some) {
            repartition = repartition.with_preserve_order();
        }
        inputs[*i] = Arc::new(repartition);
    }
    node.replace_children(
        inputs,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
    .map(Transformed::yes)
}
