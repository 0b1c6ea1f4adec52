//! Backups of the registry (definitions, aliases, pins, tombstones included)
//! to object storage, and restoring them.
//!
//! The primary backs up after every registry change (once changes settle for
//! `backup.debounce_ms`) and checks every `backup.interval_secs` that the
//! newest backup holds the current registry. A member that started with an
//! empty registry restores the newest valid backup by itself once it is primary
//! and every live member's registry is empty: a cluster rebuilt from nothing
//! gets its definitions and aliases back, and loads its databases again. On
//! demand, any member writes a backup of its registry, lists the backups, or
//! restores one (`/v1/admin/*`).
//!
//! - `format`: the backup object, its name, verification, pruning — pure.
//! - `restore`: what a restore writes — pure.
//! - `schedule`: when the primary backs up or restores — pure.
//! - `store`: the backup store: write and verify, list, read, prune.
//!
//! Here: the node's operations and [`Backups`], the primary's hook, which
//! starts at most one job at a time on its own task so that a slow store never
//! delays a gossip round.

mod format;
mod restore;
mod schedule;
mod store;

pub use format::{Backup, BackupName};
pub use restore::{Counts, Overwrite};
pub use store::{Listed, Written};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::local::{Local, NodeError};
use crate::sync::lock;
use schedule::{Job, Schedule};
use store::BackupStore;

/// A scheduled job that takes longer than this is abandoned (and retried).
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// `GET /v1/admin/backups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    pub url: String,
    /// Newest first.
    pub backups: Vec<Listed>,
}

/// `POST /v1/admin/restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReport {
    pub backup: String,
    /// Live entries of each kind the registry now holds from the backup.
    pub restored: Counts,
    /// Every entry the restore changed, with its value before and after.
    pub overwrote: Vec<Overwrite>,
    /// Settings recorded in the backup that differ from this member's
    /// configuration (dotted paths). Not applied: they live in each member's
    /// configuration file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings_differ: Vec<String>,
}

/// Writes a backup of this node's registry now (on any member; the
/// primary's schedule, through `membership`, counts it).
pub async fn backup_now(
    node: &Local,
    membership: Option<&super::Membership>,
) -> Result<Written, NodeError> {
    let store = BackupStore::open(node.config())?;
    let registry = node.registry()?;
    let hash = registry.digest().hash;
    let written = write(node, &store, registry).await?;
    if let Some(membership) = membership {
        lock(&membership.backups.schedule).written(&hash);
    }
    Ok(written)
}

async fn write(
    node: &Local,
    store: &BackupStore,
    registry: crate::cluster::Registry,
) -> Result<Written, NodeError> {
    let config = node.config();
    let backup = Backup::new(
        &config.cluster.id,
        node.id(),
        node.now_ms(),
        registry,
        format::settings(config),
    );
    let written = store
        .write(&backup, rand::random(), config.backup.keep)
        .await?;
    info!(backup = %written.backup, bytes = written.bytes, url = %store.url(), "registry backed up");
    Ok(written)
}

/// Every object named like a backup in the store, newest first.
pub async fn list(node: &Local) -> Result<Listing, NodeError> {
    let store = BackupStore::open(node.config())?;
    Ok(Listing {
        url: store.url().to_string(),
        backups: store.list().await?,
    })
}

/// Makes the registry equal backup `name`'s, as new changes that spread to
/// every member (see `restore`).
pub async fn restore(node: &Local, name: &str) -> Result<RestoreReport, NodeError> {
    let store = BackupStore::open(node.config())?;
    let backup = store.read(name).await?;
    let plan = restore::plan(
        &node.registry()?,
        &backup.registry,
        node.id(),
        node.now_ms(),
    );
    node.merge_registry(&plan.changes)?;
    let settings_differ =
        format::settings_differ(&backup.settings, &format::settings(node.config()));
    info!(backup = %name, definitions = plan.restored.definitions, aliases = plan.restored.aliases,
        pins = plan.restored.pins, changed = plan.overwrote.len(), "backup restored");
    for o in &plan.overwrote {
        info!(kind = %o.kind, name = %o.name, was = %o.was, now = %o.now, "restore changed an entry");
    }
    if !settings_differ.is_empty() {
        warn!(backup = %name, settings = ?settings_differ,
            "the backup's settings differ from this member's configuration (not applied)");
    }
    Ok(RestoreReport {
        backup: name.to_string(),
        restored: plan.restored,
        overwrote: plan.overwrote,
        settings_differ,
    })
}

/// Restores the newest valid backup into the empty cluster, with the backup's
/// own versions: should any member hold a newer entry after all, it wins.
async fn restore_into_empty(node: &Local) -> Result<Option<String>, NodeError> {
    let store = BackupStore::open(node.config())?;
    let Some((name, backup)) = store.newest_valid().await? else {
        info!(url = %store.url(), "no backup to restore: the cluster starts empty");
        return Ok(None);
    };
    if node.registry()?.digest().entries > 0 {
        info!(backup = %name, "the registry filled meanwhile: no backup restored");
        return Ok(None);
    }
    let changes = node.merge_registry(&backup.registry)?;
    let definitions = changes
        .definitions
        .iter()
        .filter(|d| d.definition.is_some());
    let aliases = changes.aliases.iter().filter(|a| a.target.is_some());
    info!(backup = %name, written_ms = backup.written_ms, by = %backup.node,
        definitions = definitions.count(), aliases = aliases.count(), pins = changes.pins.len(),
        "the cluster was empty: restored the newest valid backup");
    Ok(Some(backup.registry.digest().hash))
}

/// Writes a backup unless the newest valid one holds the registry already.
async fn check(node: &Local) -> Result<Option<String>, NodeError> {
    let store = BackupStore::open(node.config())?;
    let registry = node.registry()?;
    let digest = registry.digest();
    if let Some((_, newest)) = store.newest_valid().await?
        && newest.registry.digest().hash == digest.hash
    {
        return Ok(Some(digest.hash));
    }
    if digest.entries == 0 {
        return Ok(None);
    }
    write(node, &store, registry).await?;
    Ok(Some(digest.hash))
}

async fn run(node: &Local, job: Job) -> Result<Option<String>, NodeError> {
    match job {
        Job::AutoRestore => restore_into_empty(node).await,
        Job::Check => check(node).await,
        Job::Write => {
            let registry = node.registry()?;
            let hash = registry.digest().hash;
            let store = BackupStore::open(node.config())?;
            write(node, &store, registry).await?;
            Ok(Some(hash))
        }
    }
}

/// The primary's backups: the schedule, and the job under way.
pub struct Backups {
    schedule: Arc<Mutex<Schedule>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Backups {
    pub(crate) fn new(node: &Local) -> Backups {
        let started_empty = match node.registry() {
            Ok(registry) => registry.digest().entries == 0,
            Err(e) => {
                warn!(error = %e, "cannot read the registry: no restore from backup at start");
                false
            }
        };
        Backups {
            schedule: Arc::new(Mutex::new(Schedule::new(started_empty))),
            task: Mutex::new(None),
        }
    }

    /// Called in every round of the settled primary, with the live peers'
    /// registry entries (`None`: not gossiped yet): starts the job due, if any
    /// and none is under way. Returns at once.
    pub(crate) fn on_primary_round(&self, node: &Local, peers: &[Option<usize>]) {
        if node.config().backup.url.is_none() {
            return;
        }
        let mut task = lock(&self.task);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let digest = match node.registry() {
            Ok(registry) => registry.digest(),
            Err(e) => {
                warn!(error = %e, "cannot read the registry to back it up");
                return;
            }
        };
        let job = lock(&self.schedule).next(
            node.now_ms(),
            &digest.hash,
            digest.entries,
            peers,
            &node.config().backup,
        );
        let Some(job) = job else {
            return;
        };
        let node = node.clone();
        let schedule = self.schedule.clone();
        *task = Some(tokio::spawn(async move {
            let outcome = match tokio::time::timeout(JOB_TIMEOUT, run(&node, job)).await {
                Ok(Ok(hash)) => Ok(hash),
                Ok(Err(e)) => {
                    warn!(job = ?job, error = %e, "backup job failed; retrying later");
                    Err(())
                }
                Err(_) => {
                    warn!(job = ?job, secs = JOB_TIMEOUT.as_secs(), "backup job timed out");
                    Err(())
                }
            };
            lock(&schedule).done(job, outcome, node.now_ms());
        }));
    }

    /// Stops the job under way, if any.
    pub(crate) async fn shutdown(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}
