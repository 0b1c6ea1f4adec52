//! Retrying failed loads: the background round starts the loads whose
//! retry is due (see `loads`).

use std::sync::Arc;

use tracing::info;

use super::load::spawn;
use super::{Inner, NodeError};
use crate::catalog::{DATABASES, DatabaseRecord, DbState};

/// Starts again the loads whose retry is due: a database that failed to load,
/// or a ready one with parts left to download and no load running.
pub(super) fn retry_due(inner: &Arc<Inner>) -> Result<(), NodeError> {
    for name in inner.loads.due_now() {
        if inner.loads.is_running(&name) {
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
                inner.loads.forget_failures(&name);
            }
        }
    }
    Ok(())
}
