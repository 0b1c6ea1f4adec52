//! Calls measured against each other, taking turns (see [`interleaved`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::future::{BoxFuture, FutureExt};

use super::measure::{Measured, slice, warm_up};

/// A call to compare with others (see [`interleaved`]).
pub type Call = Arc<dyn Fn() -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// `call` as a [`Call`].
pub fn call<F, Fut>(call: F) -> Call
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    Arc::new(move || call().boxed())
}

/// Measures several calls against each other: each runs from `concurrency`
/// tasks for a second, in turn, `secs` times over, and gets the figures of
/// all its seconds. On a shared, noisy machine the calls then share its
/// slow and fast moments (another process, a heap that has grown, threads
/// left by the call before) instead of one call getting the quiet seconds:
/// measured one after the other, the same bare server differed by 1.3×
/// between the start and the end of one run.
pub async fn interleaved(concurrency: usize, secs: u64, calls: &[Call]) -> Result<Vec<Measured>> {
    for call in calls {
        warm_up(&**call).await?;
    }
    let mut latencies = vec![Vec::new(); calls.len()];
    let mut elapsed = vec![0.0; calls.len()];
    for _ in 0..secs.max(1) {
        for (i, call) in calls.iter().enumerate() {
            elapsed[i] +=
                slice(concurrency, Duration::from_secs(1), call, &mut latencies[i]).await?;
        }
    }
    Ok(latencies
        .into_iter()
        .zip(elapsed)
        .map(|(latencies, elapsed)| Measured::of(latencies, elapsed))
        .collect())
}
