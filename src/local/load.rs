//! Loading a database: read its manifest, give each part a disk, fetch every file
//! of every part not yet ready (in parallel, bounded), link it into place, and mark
//! each part ready in one catalog transaction once all its files are verified. A
//! load that stops for any reason resumes from the catalog: ready parts are kept,
//! verified blobs are not fetched again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::loads::Progress;
use super::space::Reservation;
use super::{Inner, NodeError, blocking};
use crate::catalog::{
    DATABASES, DatabaseRecord, DbState, MANIFESTS, Mode, PARTS, PartRecord, PartState, key,
};
use crate::storage::fetch::{fetch_blob, read_manifest};
use crate::storage::manifest::PlacedFile;
use crate::storage::{Disk, Manifest, Part, Source, SourceUrl, StorageError};
use crate::sync::lock;

/// Starts (or restarts) the load of `name` in the background.
pub(super) fn spawn(inner: &Arc<Inner>, name: &str) {
    inner.loads.start(name, |progress, generation| {
        tokio::spawn(run(inner.clone(), name.to_string(), progress, generation)).abort_handle()
    });
}

async fn run(inner: Arc<Inner>, name: String, progress: Progress, generation: u64) {
    let started = std::time::Instant::now();
    match load(&inner, &name, &progress).await {
        Ok(()) => {
            inner.loads.forget_failures(&name);
            info!(database = %name, took_ms = started.elapsed().as_millis() as u64, "database loaded")
        }
        Err(e) => {
            let cap = Duration::from_secs(inner.config.download.retry_max_secs);
            let retry = inner.loads.failed(&name, cap);
            let wait = retry.at.saturating_duration_since(Instant::now());
            warn!(database = %name, error = %e, failures = retry.failures, retry_in_ms = wait.as_millis() as u64, "loading failed");
            let message = format!(
                "{e} (failed {} time(s) in a row; next try in {} s)",
                retry.failures,
                wait.as_secs_f64().ceil()
            );
            if let Err(e2) = mark_failed(&inner, &name, &message, &e.to_string()) {
                warn!(database = %name, error = %e2, "recording the failure failed");
            }
        }
    }
    inner.loads.ended(&name, generation);
}

/// Records a failed load: a loading database is `failed`, and so is every
/// copy it was fetching (a ready database given more shards stays ready),
/// each with the reason, until a retry succeeds.
fn mark_failed(inner: &Inner, name: &str, message: &str, error: &str) -> Result<(), NodeError> {
    inner.catalog.write(|w| {
        if let Some(mut record) = w.get::<DatabaseRecord>(DATABASES, name)?
            && record.state == DbState::Loading
        {
            record.state = DbState::Failed;
            record.error = Some(message.to_string());
            w.put(DATABASES, name, &record)?;
        }
        let parts: Vec<(String, PartRecord)> = w.scan(PARTS, &key(&[name, ""]))?;
        for (part_key, mut part) in parts {
            if part.trashed_ms.is_none()
                && matches!(part.state, PartState::Downloading | PartState::Failed)
            {
                part.state = PartState::Failed;
                // The error alone (no retry count): the inventory digest,
                // gossiped, changes only when the reason does.
                part.error = Some(error.to_string());
                w.put(PARTS, &part_key, &part)?;
            }
        }
        Ok(())
    })
}

async fn load(inner: &Arc<Inner>, name: &str, progress: &Progress) -> Result<(), NodeError> {
    let Some(record) = inner.catalog.get::<DatabaseRecord>(DATABASES, name)? else {
        return Ok(());
    };
    // A ready database loads again when placement gives this node more shards.
    if !matches!(record.state, DbState::Loading | DbState::Ready) {
        return Ok(());
    }
    // A definition from another member is loaded only from a source this
    // node's own configuration allows.
    let url = SourceUrl::parse(&record.source)?;
    url.check_allowed(&inner.config.store)?;
    let source =
        Source::open(&url, &inner.config.store, false)?.layered(inner.store_layer.as_ref());
    let mut manifest = match inner.catalog.get::<Manifest>(MANIFESTS, name)? {
        Some(manifest) => manifest,
        None => register_manifest(inner, &record, &source).await?,
    };
    let parts = manifest.parts().map_err(StorageError::Manifest)?;
    let scan_parts = || -> Result<BTreeMap<Part, PartRecord>, NodeError> {
        Ok(inner
            .catalog
            .scan::<PartRecord>(PARTS, &key(&[name, ""]))?
            .into_iter()
            .filter_map(|(k, r)| Some((Part::from_key(k.split('\0').nth(1)?)?, r)))
            .collect())
    };
    let mut records = scan_parts()?;
    if record.state == DbState::Loading && records.is_empty() {
        register_parts(inner, &record, &manifest).await?;
        records = scan_parts()?;
    }

    // What is left to fetch, and whether it fits.
    let mut work: Vec<(Part, Arc<Disk>, PlacedFile)> = Vec::new();
    let mut remaining: HashMap<Part, usize> = HashMap::new();
    let mut needed: HashMap<String, u64> = HashMap::new();
    for (part, files) in &parts {
        // Parts without a record are placed on other nodes.
        let Some(part_record) = records.get(part) else {
            continue;
        };
        // A failed copy is tried again with the database.
        if !matches!(
            part_record.state,
            PartState::Downloading | PartState::Failed
        ) || part_record.trashed_ms.is_some()
        {
            continue;
        }
        let disk = inner.disk(&part_record.disk)?.clone();
        lock(progress).insert(part.clone(), Arc::new(AtomicU64::new(0)));
        remaining.insert(part.clone(), files.len());
        for placed in files {
            let present = placed
                .file
                .sha256
                .as_deref()
                .is_some_and(|sha| disk.has_blob(sha, placed.file.size));
            if !present {
                *needed.entry(disk.id.clone()).or_default() += placed.file.size;
            }
            work.push((part.clone(), disk.clone(), placed.clone()));
        }
    }
    let reservation = Reservation::take(inner, &needed)?;

    let pinned: Vec<String> = manifest
        .files
        .iter()
        .filter_map(|f| f.sha256.clone())
        .collect();
    inner.claims.pin(pinned.clone());
    let mut fetched_hashes = Vec::new();
    let result = fetch_all(
        inner,
        name,
        &source,
        work,
        progress,
        &mut remaining,
        &mut manifest,
        &mut fetched_hashes,
        &reservation.written,
    )
    .await;
    drop(reservation);
    inner.claims.unpin(pinned);
    inner.claims.unpin(fetched_hashes);
    result?;

    inner.catalog.write(|w| {
        let Some(mut record) = w.get::<DatabaseRecord>(DATABASES, name)? else {
            return Ok(());
        };
        if record.state == DbState::Loading {
            record.state = DbState::Ready;
            record.ready_ms = Some(inner.now_ms());
            record.version = Some(manifest.version());
            record.error = None;
            w.put(DATABASES, name, &record)?;
        }
        Ok::<_, NodeError>(())
    })
}

/// Reads the manifest from the source and records it (with the version, when
/// it names every file's hash).
async fn register_manifest(
    inner: &Inner,
    record: &DatabaseRecord,
    source: &Source,
) -> Result<Manifest, NodeError> {
    let manifest = read_manifest(source).await?;
    manifest.parts().map_err(StorageError::Manifest)?;
    let complete = manifest.files.iter().all(|f| f.sha256.is_some());
    inner.catalog.write(|w| {
        w.put(MANIFESTS, &record.name, &manifest)?;
        super::index::record_manifest(w, &record.name, &manifest)?;
        if complete && let Some(mut stored) = w.get::<DatabaseRecord>(DATABASES, &record.name)? {
            stored.version = Some(manifest.version());
            w.put(DATABASES, &record.name, &stored)?;
        }
        Ok::<_, NodeError>(())
    })?;
    Ok(manifest)
}

/// Records, with a disk for each, the parts this node should hold (waiting for
/// placement in a cluster that has not settled yet).
async fn register_parts(
    inner: &Inner,
    record: &DatabaseRecord,
    manifest: &Manifest,
) -> Result<(), NodeError> {
    let mut parts = manifest.parts().map_err(StorageError::Manifest)?;
    let shard_ids: Vec<String> = parts
        .keys()
        .filter_map(|p| p.shard_id().map(str::to_string))
        .collect();
    let wanted = inner
        .wanted_shards(&record.name, record.replicas, &shard_ids)
        .await?;
    parts.retain(|part, _| match part {
        Part::Shard(id) => wanted.contains(id),
        Part::Global => !wanted.is_empty(),
    });
    let sizes: Vec<(Part, u64)> = parts
        .iter()
        .map(|(part, files)| (part.clone(), files.iter().map(|f| f.file.size).sum()))
        .collect();
    let rooms: Vec<(String, u64)> = inner
        .disks
        .iter()
        .map(|d| (d.id.clone(), d.room()))
        .collect();
    let disks = assign_disks(&rooms, &sizes);
    inner.catalog.write(|w| {
        for (part, files) in &parts {
            let lazy = record.mode == Mode::Lazy && *part != Part::Global;
            let part_record = PartRecord {
                disk: disks.get(part).cloned().unwrap_or_else(|| "0".to_string()),
                state: if lazy {
                    PartState::Lazy
                } else {
                    PartState::Downloading
                },
                files: files.len() as u64,
                bytes: files.iter().map(|f| f.file.size).sum(),
                trashed_ms: None,
                written_ms: None,
                error: None,
            };
            w.put(PARTS, &key(&[&record.name, &part.key()]), &part_record)?;
        }
        Ok::<_, NodeError>(())
    })
}

#[allow(clippy::too_many_arguments)]
async fn fetch_all(
    inner: &Arc<Inner>,
    name: &str,
    source: &Source,
    work: Vec<(Part, Arc<Disk>, PlacedFile)>,
    progress: &Progress,
    remaining: &mut HashMap<Part, usize>,
    manifest: &mut Manifest,
    fetched_hashes: &mut Vec<String>,
    written: &AtomicU64,
) -> Result<(), NodeError> {
    let concurrency = inner.config.download.concurrency;
    let mut unhashed_parts: HashSet<Part> = HashSet::new();
    // Parts with no files left to fetch are ready at once.
    let empty: Vec<Part> = remaining
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(p, _)| p.clone())
        .collect();
    if !empty.is_empty() {
        commit_parts(inner, name, &empty, None)?;
    }
    let mut results = futures::stream::iter(work.into_iter().map(|(part, disk, placed)| {
        let counter = lock(progress).get(&part).cloned().unwrap_or_default();
        async move {
            let _permit = inner
                .loads
                .slots()
                .acquire()
                .await
                .map_err(|_| NodeError::ShuttingDown)?;
            let began = Instant::now();
            let sha = fetch_file(inner, source, &disk, name, &part, &placed, &counter).await?;
            if let Some(new_bytes) = sha.1 {
                written.fetch_add(new_bytes, Ordering::Relaxed);
            }
            let fetched = (began, sha.1.unwrap_or(0), disk.id.clone());
            Ok::<_, NodeError>((part, placed, sha.0, fetched))
        }
    }))
    .buffer_unordered(concurrency);

    // Per part: when its first file began, bytes fetched (for write events).
    let mut writes: HashMap<Part, (Instant, u64, u64)> = HashMap::new();
    while let Some(first) = results.try_next().await? {
        // Group commit: every fetch already done joins this batch, and the
        // parts they complete are marked ready in one transaction.
        let mut batch = vec![first];
        while let Some(next) = results.try_next().now_or_never() {
            match next? {
                Some(done) => batch.push(done),
                None => break,
            }
        }
        let mut completed = Vec::new();
        let mut hashes_learned = false;
        for (part, placed, sha, (began, bytes, disk)) in batch {
            let write = writes.entry(part.clone()).or_insert((began, 0, 0));
            write.0 = write.0.min(began);
            write.1 += bytes;
            write.2 += 1;
            if placed.file.sha256.is_none() {
                fetched_hashes.push(sha.clone());
                inner.claims.pin([sha.clone()]);
                if let Some(entry) = manifest
                    .files
                    .iter_mut()
                    .find(|f| f.path == placed.file.path)
                {
                    entry.sha256 = Some(sha);
                }
                unhashed_parts.insert(part.clone());
            }
            let left = remaining.entry(part.clone()).or_insert(1);
            *left -= 1;
            if *left == 0 {
                hashes_learned |= unhashed_parts.remove(&part);
                completed.push((part, disk));
            }
        }
        if completed.is_empty() {
            continue;
        }
        let parts: Vec<Part> = completed.iter().map(|(part, _)| part.clone()).collect();
        commit_parts(inner, name, &parts, hashes_learned.then_some(&*manifest))?;
        for (part, disk) in completed {
            if let Some((began, bytes, files)) = writes.remove(&part) {
                inner
                    .events
                    .record_write(name, &part.key(), &disk, bytes, files, began.elapsed());
            }
        }
    }
    Ok(())
}

/// Fetches (or finds) one file's blob and links it into its part; returns its hash
/// and, when a new blob was stored, its size. File system calls run on the
/// blocking pool: the task that calls this drives every download of the load.
async fn fetch_file(
    inner: &Arc<Inner>,
    source: &Source,
    disk: &Arc<Disk>,
    name: &str,
    part: &Part,
    placed: &PlacedFile,
    counter: &AtomicU64,
) -> Result<(String, Option<u64>), NodeError> {
    let file = &placed.file;
    // A blob already here is checked before it is linked (deduplication
    // must not spread a damaged blob).
    let present = match &file.sha256 {
        Some(sha) => {
            let (inner, disk, sha, size) = (inner.clone(), disk.clone(), sha.clone(), file.size);
            blocking(move || Ok(inner.intact_blob(&disk, &sha, size))).await?
        }
        None => false,
    };
    let (sha, new_bytes) = match &file.sha256 {
        Some(sha) if present => {
            counter.fetch_add(file.size, Ordering::Relaxed);
            inner.usage.count_reuse();
            (sha.clone(), None)
        }
        _ => {
            let part_key = part.key();
            let failed_try = |e: &StorageError| {
                inner.record_error(Some(&disk.id), Some(name), Some(&part_key), e)
            };
            let fetched = fetch_blob(source, disk, file, counter, &failed_try).await?;
            inner.usage.count_download(fetched.size, fetched.new_blob);
            inner.metrics.download_done(&disk.id, fetched.size);
            (fetched.sha256, fetched.new_blob.then_some(fetched.size))
        }
    };
    let (link_disk, link_sha) = (disk.clone(), sha.clone());
    let (name, part, local) = (name.to_string(), part.clone(), placed.local.clone());
    blocking(move || Ok(link_disk.link(&link_sha, &name, &part, &local)?)).await?;
    Ok((sha, new_bytes))
}

/// Marks parts ready in one transaction, with the manifest if hashes were
/// learned while loading.
fn commit_parts(
    inner: &Inner,
    name: &str,
    parts: &[Part],
    manifest: Option<&Manifest>,
) -> Result<(), NodeError> {
    inner.catalog.write(|w| {
        for part in parts {
            let part_key = key(&[name, &part.key()]);
            if let Some(mut record) = w.get::<PartRecord>(PARTS, &part_key)? {
                record.state = PartState::Ready;
                record.written_ms = Some(crate::clock::now_ms()); // compared with durability marks
                record.error = None;
                w.put(PARTS, &part_key, &record)?;
            }
        }
        if let Some(manifest) = manifest {
            w.put(MANIFESTS, name, manifest)?;
            super::index::record_manifest(w, name, manifest)?;
        }
        Ok(())
    })
}

/// Gives each part the disk with the most room left, largest parts first.
pub(crate) fn assign_disks(
    rooms: &[(String, u64)],
    parts: &[(Part, u64)],
) -> HashMap<Part, String> {
    let mut rooms: Vec<(String, i128)> = rooms
        .iter()
        .map(|(id, r)| (id.clone(), *r as i128))
        .collect();
    let mut order: Vec<&(Part, u64)> = parts.iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = HashMap::new();
    for (part, size) in order {
        let Some(best) = rooms
            .iter_mut()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        else {
            break;
        };
        best.1 -= *size as i128;
        out.insert(part.clone(), best.0.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_largest_parts_to_emptiest_disks() {
        let rooms = vec![("0".to_string(), 100), ("1".to_string(), 60)];
        let parts = vec![
            (Part::Shard("a".into()), 50),
            (Part::Shard("b".into()), 40),
            (Part::Global, 5),
        ];
        let plan = assign_disks(&rooms, &parts);
        assert_eq!(plan[&Part::Shard("a".into())], "0"); // 100 → 50
        assert_eq!(plan[&Part::Shard("b".into())], "1"); // 60 → 20
        assert_eq!(plan[&Part::Global], "0"); // 50 > 20
    }
}
