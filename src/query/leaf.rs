//! The leaf side of a query: runs `map` on this node's shards, in parallel on the
//! blocking pool and bounded by the node's map slots, then pre-reduces the
//! partials into one. A panic or error in user code fails this query only.

use std::cell::RefCell;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::analysis::{DynAnalysis, DynParams, DynPartial};
use super::{AnalysisError, QueryError, Shard};

/// One query's work on this node.
pub(crate) struct LeafTask {
    pub name: String,
    pub analysis: Arc<dyn DynAnalysis>,
    pub params: DynParams,
    /// The shards to map.
    pub shards: Vec<Shard>,
    /// Partials of other shards, as the result cache kept them (encoded).
    pub cached: Vec<(String, bytes::Bytes)>,
    /// Whether each mapped shard's partial is also handed back encoded, to
    /// be kept.
    pub keep: bool,
    /// What the reduced partial is handed back as: itself, encoded (for
    /// another member), or finished (the whole answer, when this member
    /// maps every shard of the query) — all in the same trip to the
    /// blocking pool as the reduce.
    pub form: LeafForm,
    pub slots: Arc<Semaphore>,
    pub cancel: CancellationToken,
}

/// What a leaf's work gave: the shards' partials reduced into one (encoded
/// when asked), and the mapped shards' partials encoded when they were to be
/// kept.
pub(crate) struct Leafed {
    pub output: LeafOutput,
    pub kept: Vec<(String, Vec<u8>)>,
}

/// What a leaf hands back (see `LeafTask::form`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeafForm {
    Partial,
    Encoded,
    Finished,
}

/// The reduced partial, as a value, encoded, or finished (as
/// `LeafTask::form` asked).
pub(crate) enum LeafOutput {
    Partial(DynPartial),
    Encoded(Vec<u8>),
    Finished(serde_json::Value),
}

impl LeafOutput {
    /// The partial of a task not asked to encode it.
    pub(crate) fn partial(self, name: &str) -> Result<DynPartial, QueryError> {
        match self {
            LeafOutput::Partial(partial) => Ok(partial),
            _ => Err(not_as_asked(name)),
        }
    }

    /// The encoded partial of a task asked to encode it.
    pub(crate) fn encoded(self, name: &str) -> Result<Vec<u8>, QueryError> {
        match self {
            LeafOutput::Encoded(bytes) => Ok(bytes),
            _ => Err(not_as_asked(name)),
        }
    }

    /// The answer of a task asked to finish it.
    pub(crate) fn finished(self, name: &str) -> Result<serde_json::Value, QueryError> {
        match self {
            LeafOutput::Finished(answer) => Ok(answer),
            _ => Err(not_as_asked(name)),
        }
    }
}

/// Hands `partials` back in `form`: reduced (unless there is one) and then
/// encoded or finished. Runs on the blocking pool.
pub(crate) fn conclude_partials(
    analysis: &Arc<dyn DynAnalysis>,
    params: &DynParams,
    form: LeafForm,
    mut partials: Vec<DynPartial>,
) -> Result<LeafOutput, AnalysisError> {
    let partial = match partials.len() {
        1 => partials.pop().expect("one partial"),
        _ => analysis.reduce(params, partials)?,
    };
    Ok(match form {
        LeafForm::Partial => LeafOutput::Partial(partial),
        LeafForm::Encoded => LeafOutput::Encoded(analysis.encode(partial)?),
        LeafForm::Finished => LeafOutput::Finished(analysis.finish(params, partial)?),
    })
}

fn not_as_asked(name: &str) -> QueryError {
    let failed = AnalysisError::failed("internal error: a leaf's partial is not in the form asked");
    QueryError::from_analysis(name, None, failed)
}

impl LeafTask {
    /// Maps every shard, decodes the cached partials and reduces them all
    /// into one, handed back in `form`.
    pub async fn run(mut self) -> Result<Leafed, QueryError> {
        // One shard and nothing kept to decode (most queries of a small
        // database, most map requests of a member holding one shard): the
        // map and what follows it share one trip to the blocking pool.
        if self.shards.len() == 1 && self.cached.is_empty() {
            let shard = self.shards.pop().expect("one shard");
            return self.run_one(shard).await;
        }
        let mut maps = JoinSet::new();
        for shard in self.shards {
            let analysis = self.analysis.clone();
            let params = self.params.clone();
            let slots = self.slots.clone();
            let cancel = self.cancel.clone();
            let keep = self.keep;
            maps.spawn(async move {
                let id = shard.id().to_string();
                let _slot = tokio::select! {
                    slot = slots.acquire_owned() => slot.map_err(|_| QueryError::Cancelled)?,
                    () = cancel.cancelled() => return Err(QueryError::Cancelled),
                };
                let result = tokio::task::spawn_blocking(move || {
                    let _current = CurrentQuery::enter(shard.cancellation().clone());
                    shard.check_cancelled()?;
                    let partial = analysis.map(&params, &shard)?;
                    if !keep {
                        return Ok((partial, None));
                    }
                    // Encoding takes the partial: it is decoded again to be
                    // reduced (partials need not be `Clone`).
                    let encoded = analysis.encode(partial)?;
                    Ok((analysis.decode(&encoded)?, Some(encoded)))
                })
                .await;
                Ok((id, result))
            });
        }
        for (id, encoded) in self.cached {
            let analysis = self.analysis.clone();
            maps.spawn(async move {
                let result =
                    tokio::task::spawn_blocking(move || Ok((analysis.decode(&encoded)?, None)))
                        .await;
                Ok((id, result))
            });
        }
        let mut partials = Vec::with_capacity(maps.len());
        let mut kept = Vec::new();
        while let Some(joined) = maps.join_next().await {
            let (shard, mapped) = joined
                .map_err(|e| panicked(&self.name, None, e))
                .and_then(|r| r)?;
            let (partial, encoded) = mapped
                .map_err(|e| panicked(&self.name, Some(&shard), e))?
                .map_err(|e| QueryError::from_analysis(&self.name, Some(&shard), e))?;
            partials.push(partial);
            if let Some(encoded) = encoded {
                kept.push((shard, encoded));
            }
        }
        // One partial is its own reduction (reduce merges: the root reduces
        // what the leaves reduced): no second trip to the blocking pool.
        let output = match (self.form, partials.len()) {
            (LeafForm::Partial, 1) => LeafOutput::Partial(partials.pop().expect("one partial")),
            (form, _) => {
                let (analysis, params) = (self.analysis.clone(), self.params.clone());
                let conclude = move || conclude_partials(&analysis, &params, form, partials);
                slotted(&self.name, &self.slots, &self.cancel, conclude).await?
            }
        };
        Ok(Leafed { output, kept })
    }

    /// `run` for one shard: mapped, kept and handed back in one trip to the
    /// blocking pool, holding one map slot.
    async fn run_one(self, shard: Shard) -> Result<Leafed, QueryError> {
        let id = shard.id().to_string();
        let _slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.map_err(|_| QueryError::Cancelled)?,
            () = self.cancel.cancelled() => return Err(QueryError::Cancelled),
        };
        let (analysis, params, form, keep) = (
            self.analysis.clone(),
            self.params.clone(),
            self.form,
            self.keep,
        );
        let work = move || {
            let _current = CurrentQuery::enter(shard.cancellation().clone());
            shard.check_cancelled()?;
            let partial = analysis.map(&params, &shard)?;
            let (partial, kept) = if keep {
                // Encoding takes the partial: it is decoded again to be
                // handed on (partials need not be `Clone`).
                let encoded = analysis.encode(partial)?;
                (analysis.decode(&encoded)?, Some(encoded))
            } else {
                (partial, None)
            };
            // The map's errors name the shard, those after it do not.
            Ok(conclude_partials(&analysis, &params, form, vec![partial]).map(|o| (o, kept)))
        };
        let (output, kept) = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| panicked(&self.name, Some(&id), e))?
            .map_err(|e: AnalysisError| QueryError::from_analysis(&self.name, Some(&id), e))?
            .map_err(|e| QueryError::from_analysis(&self.name, None, e))?;
        Ok(Leafed {
            output,
            kept: kept.map(|encoded| (id, encoded)).into_iter().collect(),
        })
    }
}

/// `blocking`, holding one map slot.
pub(crate) async fn slotted<T: Send + 'static>(
    name: &str,
    slots: &Arc<Semaphore>,
    cancel: &CancellationToken,
    f: impl FnOnce() -> Result<T, AnalysisError> + Send + 'static,
) -> Result<T, QueryError> {
    let _slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| QueryError::Cancelled)?;
    blocking(name, cancel, f).await
}

/// Runs user code on the blocking pool, turning its errors and panics into
/// query errors; the code sees `cancel` through [`cancellation`].
pub(crate) async fn blocking<T: Send + 'static>(
    name: &str,
    cancel: &CancellationToken,
    f: impl FnOnce() -> Result<T, AnalysisError> + Send + 'static,
) -> Result<T, QueryError> {
    let cancel = cancel.clone();
    tokio::task::spawn_blocking(move || {
        let _current = CurrentQuery::enter(cancel);
        f()
    })
    .await
    .map_err(|e| panicked(name, None, e))?
    .map_err(|e| QueryError::from_analysis(name, None, e))
}

thread_local! {
    static CURRENT: RefCell<Option<CancellationToken>> = const { RefCell::new(None) };
}

/// The query whose `map`, `reduce` or `finish` runs on this thread, for as
/// long as the guard lives.
struct CurrentQuery;

impl CurrentQuery {
    fn enter(cancel: CancellationToken) -> CurrentQuery {
        CURRENT.with(|current| *current.borrow_mut() = Some(cancel));
        CurrentQuery
    }
}

impl Drop for CurrentQuery {
    fn drop(&mut self) {
        CURRENT.with(|current| *current.borrow_mut() = None);
    }
}

/// The cancellation of the query whose `map`, `reduce` or `finish` runs on
/// the calling thread: cancelled once the query passes its deadline, its
/// caller goes away or the node shuts down. Code that waits or computes for
/// long (an engine's own runtime, say) stops when it fires. Outside an
/// analysis, a token that never fires.
pub fn cancellation() -> CancellationToken {
    CURRENT.with(|current| current.borrow().clone().unwrap_or_default())
}

fn panicked(analysis: &str, shard: Option<&str>, e: JoinError) -> QueryError {
    if !e.is_panic() {
        return QueryError::Cancelled;
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string());
    tracing::warn!(analysis, shard, message, "analysis panicked");
    QueryError::Panicked {
        analysis: analysis.to_string(),
        shard: shard.map(str::to_string),
        message,
    }
}
