//! Shared by the benchmarks: run a call from N tasks for a while and report
//! throughput and latency percentiles; POST a JSON body.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

pub async fn post(http: reqwest::Client, url: String, body: String) -> Result<()> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
    response.bytes().await?;
    Ok(())
}

pub struct Measured {
    pub qps: f64,
    pub p50: u64,
    pub p99: u64,
}

/// Runs `call` from `concurrency` tasks for `secs` seconds (after a short warm-up)
/// and reports throughput and latency percentiles in microseconds.
pub async fn run<F, Fut>(concurrency: usize, secs: u64, call: F) -> Result<Measured>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let call = Arc::new(call);
    warm_up(&*call).await?;
    let mut latencies = Vec::new();
    let elapsed = slice(
        concurrency,
        Duration::from_secs(secs),
        &call,
        &mut latencies,
    )
    .await?;
    Ok(Measured::of(latencies, elapsed))
}

pub(crate) async fn warm_up<F, Fut>(call: &F) -> Result<()>
where
    F: Fn() -> Fut + ?Sized,
    Fut: Future<Output = Result<()>>,
{
    for _ in 0..50 {
        call().await?;
    }
    Ok(())
}

/// Runs `call` from `concurrency` tasks for `length`, adding each call's
/// latency (µs) to `latencies`; returns the seconds it took.
pub(crate) async fn slice<F, Fut>(
    concurrency: usize,
    length: Duration,
    call: &Arc<F>,
    latencies: &mut Vec<u64>,
) -> Result<f64>
where
    F: Fn() -> Fut + Send + Sync + 'static + ?Sized,
    Fut: Future<Output = Result<()>> + Send,
{
    let started = Instant::now();
    let until = started + length;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                call().await?;
                latencies.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    for worker in workers {
        latencies.extend(worker.await??);
    }
    Ok(started.elapsed().as_secs_f64())
}

impl Measured {
    pub(crate) fn of(mut latencies: Vec<u64>, elapsed: f64) -> Measured {
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        Measured {
            qps: latencies.len() as f64 / elapsed,
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}
