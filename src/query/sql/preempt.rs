//! Cancellable CPU work. Tokio drops an aborted task only when its poll
//! returns, and a DataFusion pipeline over data already in memory (a decoded
//! row group, a table in memory) never returns `Pending`: an aggregation
//! pulls every batch of its input in one poll. So a query cancelled by its
//! deadline, its caller or the coordinator's death kept its stages busy
//! until their input ran out (minutes, for an expensive filter).
//!
//! Every leaf a member runs is wrapped in [`Preemptible`]: once a slice of
//! wall time has passed since its task last yielded, the leaf hands control
//! back to the runtime (wakes itself and returns `Pending`), where an aborted
//! task stops. DataFusion's own `CooperativeExec` counts batches against
//! tokio's budget (128 a poll), which is seconds when a batch is expensive.
//!
//! The wrapper is invisible to the plan's readers: it keeps the leaf's place
//! (no extra node, so EXPLAIN ANALYZE's metrics line up), name, display,
//! metrics, and downcasts (`downcast_delegate`).

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics, internal_err};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion_distributed::{
    NetworkBoundaryExt, WorkerPlanRewriteEvent, WorkerPlanRewriteEventResponse,
};
use futures::{Stream, StreamExt};

/// How long a task runs a pipeline before it yields (and an abort lands).
const SLICE: Duration = Duration::from_millis(10);

/// `plan` with every leaf this member runs made [`Preemptible`]. It stops at
/// network boundaries: the stages under them run on workers, which wrap
/// their own leaves ([`rewrite_worker_plan`]).
pub(crate) fn preemptible(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    if plan.is_network_boundary() || (plan.as_ref() as &dyn Any).is::<Preemptible>() {
        return Ok(plan);
    }
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(Arc::new(Preemptible { inner: plan }));
    }
    let wrapped = children
        .iter()
        .map(|child| preemptible(child.clone()))
        .collect::<Result<Vec<_>>>()?;
    if wrapped
        .iter()
        .zip(&children)
        .all(|(a, b)| Arc::ptr_eq(a, b))
    {
        return Ok(plan);
    }
    // The wrapper keeps the properties of the leaf it wraps.
    plan.replace_children(
        wrapped,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )
}

/// The worker's hook: a stage sent to this member gets its leaves wrapped
/// before it runs.
pub(crate) fn rewrite_worker_plan(
    ev: WorkerPlanRewriteEvent<'_>,
) -> Result<WorkerPlanRewriteEventResponse> {
    preemptible(ev.plan).map(WorkerPlanRewriteEventResponse::new)
}

/// A leaf whose stream yields once a [`SLICE`] has passed without a yield.
#[derive(Debug)]
pub(crate) struct Preemptible {
    inner: Arc<dyn ExecutionPlan>,
}

impl DisplayAs for Preemptible {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for Preemptible {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.inner.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return internal_err!("{} is a leaf: it takes no children", self.name());
        }
        Ok(self)
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Preemptible {
            inner: self.inner.clone().reset_state()?,
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let inner = self.inner.execute(partition, context)?;
        Ok(Box::pin(Slices {
            inner,
            since: Instant::now(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.inner.metrics()
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        self.inner.statistics_from_inputs(input_stats, args)
    }

    fn fetch(&self) -> Option<usize> {
        self.inner.fetch()
    }
}

/// A leaf's stream: `Pending` (already woken) once [`SLICE`] has passed
/// since the task last gave control back.
struct Slices {
    inner: SendableRecordBatchStream,
    since: Instant,
}

impl Stream for Slices {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.since.elapsed() >= SLICE {
            self.since = Instant::now();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = self.inner.poll_next_unpin(cx);
        if polled.is_pending() {
            self.since = Instant::now();
        }
        polled
    }
}

impl RecordBatchStream for Slices {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;

    /// A leaf whose every batch takes longer than a slice hands control back
    /// between batches (without the wrapper, all in one poll).
    #[tokio::test]
    async fn a_busy_leaf_gives_control_back_between_slices() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS VALUES (1), (2), (3)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let plan = ctx
            .sql("SELECT sum(column1) FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let wrapped = preemptible(plan.clone()).unwrap();
        // Nothing shows: same nodes, same text, and the leaf still reads
        // as what it wraps.
        assert_eq!(
            displayable(plan.as_ref()).indent(true).to_string(),
            displayable(wrapped.as_ref()).indent(true).to_string()
        );
        let mut leaf = wrapped.clone();
        while let Some(child) = leaf.children().first().cloned() {
            leaf = child.clone();
        }
        assert!((leaf.as_ref() as &dyn Any).is::<Preemptible>());
        assert!(leaf.is::<DataSourceExec>());

        // A stream that is always ready, each batch past a slice.
        let schema = plan.schema();
        let batch = RecordBatch::new_empty(schema.clone());
        let slow = futures::stream::iter(std::iter::repeat_with(move || {
            std::thread::sleep(SLICE + Duration::from_millis(2));
            Ok(batch.clone())
        }));
        let mut stream = Slices {
            inner: Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, slow),
            ),
            since: Instant::now(),
        };
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut polls = Vec::new();
        for _ in 0..4 {
            polls.push(stream.poll_next_unpin(&mut cx).is_ready());
        }
        assert_eq!(polls, [true, false, true, false]);

        // And the wrapped plan answers as before.
        let answer = datafusion::physical_plan::collect(wrapped, ctx.task_ctx())
            .await
            .unwrap();
        let expected = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        assert_eq!(answer, expected);
    }
}
