//! What a node starts when it opens: the loads it left unfinished, and the
//! background round every 500 ms (events, retries, the trash purge, counters,
//! syncs, space).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Local, NodeError, load, retry, scrub};
use crate::catalog::{DATABASES, DatabaseRecord, DbState};
use crate::sync::lock;

impl Local {
    pub(super) fn resume_loads(&self) -> Result<(), NodeError> {
        let records: Vec<(String, DatabaseRecord)> = self.inner.catalog.scan(DATABASES, "")?;
        let parts: Vec<(String, crate::catalog::PartRecord)> =
            self.inner.catalog.scan(crate::catalog::PARTS, "")?;
        for (_, record) in records {
            let downloading = || {
                parts.iter().any(|(k, p)| {
                    k.split('\0').next() == Some(record.name.as_str())
                        && matches!(
                            p.state,
                            crate::catalog::PartState::Downloading
                                | crate::catalog::PartState::Failed
                        )
                        && p.trashed_ms.is_none()
                })
            };
            if record.state == DbState::Failed {
                // A restart is a retry: the first try comes at once.
                self.inner.loads.retry_now(&record.name);
            } else if record.state == DbState::Loading
                || (record.state == DbState::Ready && downloading())
            {
                info!(database = %record.name, "resuming load");
                load::spawn(&self.inner, &record.name);
            }
        }
        Ok(())
    }

    pub(super) fn spawn_background(&self) {
        let weak = Arc::downgrade(&self.inner);
        let mut shutdown_rx = self.inner.shutdown_tx.subscribe();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut rounds = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown_rx.changed() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.events.flush() {
                    warn!(error = %e, "writing events failed");
                }
                if let Err(e) = retry::retry_due(&inner) {
                    warn!(error = %e, "retrying failed loads failed");
                }
                if let Err(e) = inner.purge_expired().await {
                    warn!(error = %e, "trash purge failed");
                }
                if let Err(e) = inner.evict_if_needed().await {
                    warn!(error = %e, "lazy cache eviction failed");
                }
                if let Err(e) = inner.purge_trash_under_pressure().await {
                    warn!(error = %e, "purging the trash under disk pressure failed");
                }
                rounds += 1;
                if rounds.is_multiple_of(10)
                    && let Err(e) = inner.flush_counters()
                {
                    warn!(error = %e, "flushing counters failed");
                }
            }
        });
        lock(&self.inner.tasks).push(task);

        // The flusher: its syncs may take seconds and must not hold up the rest.
        let weak = Arc::downgrade(&self.inner);
        let mut shutdown_rx = self.inner.shutdown_tx.subscribe();
        let flusher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut dirty_since = HashMap::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown_rx.changed() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                inner.sync_idle_disks(&mut dirty_since).await;
            }
        });
        lock(&self.inner.tasks).push(flusher);

        let scrub = tokio::spawn(scrub::run(
            Arc::downgrade(&self.inner),
            self.inner.scrub.clone(),
            self.inner.shutdown_tx.subscribe(),
        ));
        lock(&self.inner.tasks).push(scrub);
    }
}
