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
    for _ in 0..50 {
        call().await?;
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
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
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Measured {
        qps: latencies.len() as f64 / elapsed,
        p50: at(0.50),
        p99: at(0.99),
    })
}
