//! Where each part of a distributed plan runs: a shard table's scan for shard
//! S on the member chosen to read S (a ready holder of the pinned version:
//! this member first, then the least busy), through datafusion-distributed's
//! task events.
//!
//! The query's members are numbered (sorted by worker URL) and a stage that
//! scans shard tables gets one task per member: task `i` reads the shards of
//! member `i` and is routed there. Every shard scan of a stage is split the
//! same way, so the tasks of a stage agree. If the planner gives a stage
//! fewer tasks, a task also reads other members' shards (their files then
//! come over the network, see `store`); with more, the extra tasks read
//! nothing. Each shard's files are in exactly one task: the answer is exact
//! whatever the planner decides.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::{FileGroup, FileGroupPartitioner, FileScanConfig};
use datafusion::datasource::source::DataSourceExec;

use super::colocate;
use datafusion::error::Result;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedLeafExec, NetworkBoundaryExt,
    RouteTasksEvent, RouteTasksEventResponse, ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse,
    WorkerResolver,
};
use url::Url;

use super::store::{FileRef, STORE_URL};
use crate::storage::Part;

/// Where a query's shards are read: a session extension of the coordinating
/// context.
#[derive(Debug, Clone, Default)]
pub(crate) struct Placement {
    /// Workers reading shards, sorted: task `i` of a shard scan runs on
    /// `readers[i]`.
    pub readers: Vec<Url>,
    /// Shard id → index in `readers`.
    pub shard_reader: HashMap<String, usize>,
    /// Every live member's worker (this member's included).
    pub workers: Vec<Url>,
    /// This (the coordinating) member's worker.
    pub local: Option<Url>,
}

impl Placement {
    /// `chosen`: shard id → the worker chosen to read it.
    pub(crate) fn new(
        chosen: HashMap<String, Url>,
        mut workers: Vec<Url>,
        local: Option<Url>,
    ) -> Placement {
        let mut readers: Vec<Url> = chosen.values().cloned().collect();
        readers.sort();
        readers.dedup();
        let shard_reader = chosen
            .into_iter()
            .map(|(shard, url)| {
                let index = readers.binary_search(&url).unwrap_or(0);
                (shard, index)
            })
            .collect();
        for reader in &readers {
            if !workers.contains(reader) {
                workers.push(reader.clone());
            }
        }
        workers.sort();
        Placement {
            readers,
            shard_reader,
            workers,
            local,
        }
    }

    /// Tasks of a stage scanning shard tables: one per reader. When the one
    /// reader is another member, two (the second reads nothing): the
    /// planner runs a stage of one task under a head of one task here, on
    /// the coordinator, which would then read every row over the network.
    fn scan_tasks(&self) -> usize {
        match self.readers.as_slice() {
            [] => 1,
            [only] if Some(only) != self.local.as_ref() => 2,
            readers => readers.len(),
        }
    }
}

impl WorkerResolver for Placement {
    fn get_urls(&self) -> Result<Vec<Url>> {
        Ok(self.workers.clone())
    }
}

/// The scan of `dram://` files `plan` is, if it is one: its scan config and
/// the parts its files belong to.
fn dram_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<(&FileScanConfig, Vec<Part>)> {
    let source = plan.downcast_ref::<DataSourceExec>()?;
    let scan = source.data_source().downcast_ref::<FileScanConfig>()?;
    if scan.object_store_url.as_str().trim_end_matches('/') != STORE_URL {
        return None;
    }
    let parts = scan
        .file_groups
        .iter()
        .flat_map(|g| g.files())
        .filter_map(|f| FileRef::parse(&f.object_meta.location).map(|r| r.part))
        .collect();
    Some((scan, parts))
}

/// The shard-table scan under `plan`, if it is one: its scan config.
fn shard_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    let (scan, parts) = dram_scan(plan)?;
    parts
        .iter()
        .any(|p| matches!(p, Part::Shard(_)))
        .then_some(scan)
}

fn placement(config: &datafusion::prelude::SessionConfig) -> Option<Arc<Placement>> {
    config.get_extension::<Placement>()
}

/// A stage scanning shard tables wants one task per member reading shards;
/// a scan of global tables alone wants one task (dimension tables are small:
/// spreading them costs more than it saves), unless the stage has more for
/// a shard scan, which then splits the global files over its tasks.
pub(crate) fn desired_task_count(
    ev: DesiredTaskCountEvent,
) -> Option<Result<DesiredTaskCountEventResponse>> {
    if global_scan(ev.plan) {
        return Some(Ok(DesiredTaskCountEventResponse::desired(1)));
    }
    shard_scan(ev.plan)?;
    let placement = placement(ev.session_config)?;
    Some(Ok(DesiredTaskCountEventResponse::desired(
        placement.scan_tasks(),
    )))
}

/// Whether `plan` scans files of `dram://` global data only.
fn global_scan(plan: &Arc<dyn ExecutionPlan>) -> bool {
    dram_scan(plan).is_some_and(|(_, parts)| parts.iter().all(|p| *p == Part::Global))
}

/// Splits a shard-table scan into one variant per task: task `i` reads the
/// shards of reader `i` (and of `i + tasks`, … when there are fewer tasks
/// than readers), each variant in the same number of file groups.
pub(crate) fn scale_up_leaf(
    ev: ScaleUpLeafNodeEvent,
) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let scan = shard_scan(ev.plan)?;
    let placement = placement(ev.session_config)?;
    let tasks = ev.task_count.max(1);
    let groups = ev.session_config.target_partitions().max(1);
    if colocate::is_declared(scan) {
        return Some(colocated_variants(ev.plan, scan, &placement, tasks, groups));
    }
    let mut per_task: Vec<Vec<_>> = vec![Vec::new(); tasks];
    for file in scan.file_groups.iter().flat_map(|g| g.files()) {
        let reader = FileRef::parse(&file.object_meta.location)
            .and_then(|r| r.part.shard_id().map(str::to_string))
            .and_then(|id| placement.shard_reader.get(&id).copied())
            .unwrap_or(0);
        per_task[reader % tasks].push(file.clone());
    }
    let variants: Vec<Arc<dyn ExecutionPlan>> = per_task
        .into_iter()
        .map(|files| {
            let mut split = if files.is_empty() {
                Vec::new()
            } else {
                let whole = vec![FileGroup::new(files)];
                FileGroupPartitioner::new()
                    .with_target_partitions(groups)
                    .with_repartition_file_min_size(0)
                    .repartition_file_groups(&whole)
                    .unwrap_or(whole)
            };
            // Every variant has the same partitions: empty ones read nothing.
            while split.len() < groups {
                split.push(FileGroup::new(Vec::new()));
            }
            let mut variant = scan.clone();
            variant.file_groups = split;
            DataSourceExec::from_data_source(variant) as Arc<dyn ExecutionPlan>
        })
        .collect();
    Some(
        DistributedLeafExec::try_new(ev.plan.clone(), variants)
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
    )
}

/// The variants of a co-located table's scan: task `t` reads the shards of
/// its readers whole, its `i`-th shard (sorted) in partition `i % groups`,
/// the same for every co-located table, so that a join in the stage meets
/// each shard's rows of both tables in one partition.
fn colocated_variants(
    plan: &Arc<dyn ExecutionPlan>,
    scan: &FileScanConfig,
    placement: &Placement,
    tasks: usize,
    groups: usize,
) -> Result<ScaleUpLeafNodeEventResponse> {
    let mut per_task: Vec<Vec<&str>> = vec![Vec::new(); tasks];
    for (shard, reader) in &placement.shard_reader {
        per_task[reader % tasks].push(shard.as_str());
    }
    let files: std::collections::HashSet<_> = scan
        .file_groups
        .iter()
        .flat_map(|g| g.files())
        .map(|f| &f.object_meta.location)
        .collect();
    let mut placed = 0;
    let mut variants = Vec::with_capacity(tasks);
    for mut shards in per_task {
        shards.sort_unstable();
        let (file_groups, _) =
            colocate::shard_groups(scan, |id| shards.iter().position(|s| *s == id), groups);
        placed += file_groups.iter().map(|g| g.len()).sum::<usize>();
        let mut variant = scan.clone();
        variant.file_groups = file_groups;
        variants.push(DataSourceExec::from_data_source(variant) as Arc<dyn ExecutionPlan>);
    }
    // Every file read by one task: none left out, none twice.
    if placed != files.len() {
        return datafusion::common::internal_err!(
            "a co-located scan has files of shards without a reader"
        );
    }
    DistributedLeafExec::try_new(plan.clone(), variants)
        .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf)))
}

/// Sends task `i` of a stage scanning shard tables to reader `i`.
pub(crate) fn route_tasks(ev: RouteTasksEvent) -> Option<Result<RouteTasksEventResponse>> {
    let placement = placement(ev.task_ctx.session_config())?;
    if placement.readers.is_empty() {
        return None;
    }
    let mut scans_shards = false;
    let walked = ev.plan.apply(|node| {
        if let Some(leaf) = node.downcast_ref::<DistributedLeafExec>()
            && shard_scan(leaf.original()).is_some()
        {
            scans_shards = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        // Stages below a network boundary are routed on their own.
        if node.as_ref().is_network_boundary() {
            Ok(TreeNodeRecursion::Jump)
        } else {
            Ok(TreeNodeRecursion::Continue)
        }
    });
    if let Err(e) = walked {
        return Some(Err(e));
    }
    if !scans_shards {
        return None;
    }
    let urls = (0..ev.task_count)
        .map(|i| placement.readers[i % placement.readers.len()].clone())
        .collect();
    Some(Ok(RouteTasksEventResponse::new(urls)))
}
