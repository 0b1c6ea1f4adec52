//! Retrying failed loads: a database whose load failed is tried again after
//! 1 s, 2 s, 4 s, … at most `download.retry_max_secs`; the background round
//! starts the loads whose retry is due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use super::load::{running, spawn};
use super::{Inner, NodeError};
use crate::catalog::{DATABASES, DatabaseRecord, DbState};
use crate::sync::lock;

/// A database whose last load failed: failures in a row, and when to try again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retry {
    pub(super) failures: u32,
    pub(super) at: Instant,
}

/// The wait before the next try after `failures` failed loads in a row:
/// 1 s, 2 s, 4 s, … at most `cap`.
pub(crate) fn retry_delay(failures: u32, cap: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << exponent).min(cap)
}

/// Whether a load of `name` may start now (it has not failed, or its retry is due).
pub(super) fn due(inner: &Inner, name: &str) -> bool {
    lock(&inner.load_retries)
        .get(name)
        .is_none_or(|retry| retry.at <= Instant::now())
}

/// Starts again the loads whose retry is due: a database that failed to load,
/// or a ready one with parts left to download and no load running.
pub(super) fn retry_due(inner: &Arc<Inner>) -> Result<(), NodeError> {
    let now = Instant::now();
    let due: Vec<String> = lock(&inner.load_retries)
        .iter()
        .filter(|(_, retry)| retry.at <= now)
        .map(|(name, _)| name.clone())
        .collect();
    for name in due {
        if running(inner, &name) {
            continue;
        }
        let state = inner
            .catalog
            .get::<DatabaseRecord>(DATABASES, &name)?
            .map(|r| r.state);
        match state {
            Some(DbState::Failed) => {
                let reset = inner.catalog.write(|w| {
                    let Some(mut record) = w.get::<DatabaseRecord>(DATABASES, &name)? else {
                        return Ok(false);
                    };
                    if record.state != DbState::Failed {
                        return Ok(false);
                    }
                    record.state = DbState::Loading;
                    w.put(DATABASES, &name, &record)?;
                    Ok::<_, NodeError>(true)
                })?;
                if reset {
                    info!(database = %name, "retrying a failed load");
                    spawn(inner, &name);
                }
            }
            Some(DbState::Loading | DbState::Ready) => spawn(inner, &name),
            Some(DbState::Trashed) | None => {
                lock(&inner.load_retries).remove(&name);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_the_cap() {
        let cap = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n, cap).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(u32::MAX, cap), cap);
        assert_eq!(retry_delay(5, Duration::from_secs(2)).as_secs(), 2);
    }
}
