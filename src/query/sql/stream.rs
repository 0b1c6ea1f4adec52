//! A SQL answer as it comes: the query runs on the SQL runtime and hands its
//! batches over a small channel, so a client that reads rows one by one (the
//! PostgreSQL protocol) never makes this member hold the whole answer.
//! Dropping the stream stops the query, and with it every stage it runs here
//! and the streams from the other members (which stop theirs).

use std::collections::VecDeque;
use std::future::Future;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::runtime;
use crate::query::sql::analysis::run_failed;
use crate::query::{AnalysisError, QueryError};

/// Batches made ahead of the reader: the most a slow reader makes this
/// member hold (besides what the plan's operators hold).
const AHEAD: usize = 2;

/// The rows of a query as they come.
pub(crate) struct RowStream {
    schema: SchemaRef,
    ready: VecDeque<RecordBatch>,
    rest: Option<Running>,
    deadline: Instant,
    timeout_ms: u64,
}

/// The part of a query still running on the SQL runtime.
struct Running {
    batches: mpsc::Receiver<Result<RecordBatch, AnalysisError>>,
    _run: AbortOnDrop,
}

/// Aborts the query's task when the stream is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RowStream {
    /// An answer already complete.
    pub(crate) fn done(schema: SchemaRef, batches: Vec<RecordBatch>) -> RowStream {
        RowStream {
            schema,
            ready: batches.into(),
            rest: None,
            deadline: Instant::now(),
            timeout_ms: 0,
        }
    }

    /// Starts a query on the SQL runtime (`plan` plans it and starts its
    /// stream) and waits for its first batch, so that an error in planning
    /// or in reaching the other members comes back here, before any row was
    /// handed on. Batches after the first must arrive by `deadline`.
    pub(crate) async fn start(
        plan: impl Future<Output = Result<SendableRecordBatchStream, AnalysisError>> + Send + 'static,
        deadline: Instant,
        timeout_ms: u64,
    ) -> Result<RowStream, AnalysisError> {
        let (first_tx, first_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(AHEAD);
        let handle = runtime()?.spawn(async move {
            let mut stream = match plan.await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = first_tx.send(Err(e));
                    return;
                }
            };
            let first = match stream.next().await.transpose() {
                Ok(first) => first,
                Err(e) => {
                    let _ = first_tx.send(Err(run_failed("query", e)));
                    return;
                }
            };
            let more = first.is_some();
            if first_tx.send(Ok((stream.schema(), first))).is_err() || !more {
                return;
            }
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| run_failed("query", e));
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        let run = AbortOnDrop(handle.abort_handle());
        let (schema, first) = match first_rx.await {
            Ok(first) => first?,
            // The task ended without a word: aborted, or it panicked.
            Err(_) => {
                return Err(match handle.await {
                    Err(e) if e.is_panic() => AnalysisError::failed("the sql query panicked"),
                    _ => AnalysisError::cancelled(),
                });
            }
        };
        Ok(RowStream {
            schema,
            ready: first.into_iter().collect(),
            rest: Some(Running {
                batches: rx,
                _run: run,
            }),
            deadline,
            timeout_ms,
        })
    }

    /// The answer's columns.
    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The next batch; `None` after the last.
    pub(crate) async fn next(&mut self) -> Option<Result<RecordBatch, QueryError>> {
        if let Some(batch) = self.ready.pop_front() {
            return Some(Ok(batch));
        }
        let running = self.rest.as_mut()?;
        let next = match tokio::time::timeout_at(self.deadline, running.batches.recv()).await {
            Ok(next) => {
                next.map(|batch| batch.map_err(|e| QueryError::from_analysis("sql", None, e)))
            }
            Err(_) => Some(Err(QueryError::Timeout {
                timeout_ms: self.timeout_ms,
            })),
        };
        if !matches!(next, Some(Ok(_))) {
            self.rest = None;
        }
        next
    }

    /// Every batch that is left.
    pub(crate) async fn collect(mut self) -> Result<Vec<RecordBatch>, QueryError> {
        let mut batches = Vec::new();
        while let Some(batch) = self.next().await {
            batches.push(batch?);
        }
        Ok(batches)
    }

    /// The batches as a stream.
    pub(crate) fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<RecordBatch, QueryError>> + Send + 'static {
        futures::stream::unfold(self, |mut rows| async move {
            let next = rows.next().await?;
            Some((next, rows))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    use super::*;

    fn counting(stop: Arc<std::sync::atomic::AtomicUsize>) -> SendableRecordBatchStream {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batches = futures::stream::iter(0..).map(move |i: i64| {
            stop.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
                vec![Arc::new(Int64Array::from(vec![i]))],
            )
            .map_err(Into::into)
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_holds_few_batches_and_dropping_stops_the_query() {
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stream = counting(made.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut rows = RowStream::start(async move { Ok(stream) }, deadline, 30_000)
            .await
            .unwrap();
        for expected in 0..5 {
            let batch = rows.next().await.unwrap().unwrap();
            let n = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            assert_eq!(n.value(0), expected);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ahead = made.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            ahead <= 5 + AHEAD + 2,
            "{ahead} batches made for 5 read: the query ran ahead of its reader"
        );
        drop(rows);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = made.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            made.load(std::sync::atomic::Ordering::SeqCst),
            after,
            "the query went on after its stream was dropped"
        );
    }

    #[tokio::test]
    async fn an_error_before_the_first_batch_comes_back_from_start() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let failed = RowStream::start(
            async { Err(AnalysisError::invalid_params("no such table")) },
            deadline,
            30_000,
        )
        .await;
        assert!(matches!(failed, Err(e) if e.message().contains("no such table")));
    }
}
