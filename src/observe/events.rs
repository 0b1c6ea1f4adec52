//! Events: what happened on this node's disks, kept in the catalog (`events`
//! table) for `index.event_retention_secs`, at most `index.max_events`:
//!
//! - `read`: queries mapped a shard — coalesced per shard between two flushes
//!   (queries, files opened, bytes read through the shard handles);
//! - `write`: a part's download finished — bytes fetched, time, MB/s;
//! - `error`: a checksum mismatch, a local I/O error or an object-store error,
//!   with its disk.
//!
//! Recording only touches memory; the node's background task flushes every
//! 500 ms (one catalog commit when something happened) and prunes now and
//! then. [`Events`] owns all of it: the events waiting, its catalog handle,
//! the node's clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError, EVENTS};
use crate::clock::Clock;
use crate::config::IndexConfig;
use crate::storage::StorageError;
use crate::sync::lock;

/// Flushes between two prunings of the events table.
const PRUNE_EVERY: u64 = 20;
/// The most events one `events` call returns.
pub const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Read,
    Write,
    Error,
}

impl EventKind {
    pub fn parse(text: &str) -> Option<EventKind> {
        match text {
            "read" => Some(EventKind::Read),
            "write" => Some(EventKind::Write),
            "error" => Some(EventKind::Error),
            _ => None,
        }
    }
}

/// What kind of exception an error event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// A file's size or sha256 differed from its manifest.
    Checksum,
    /// Local disk I/O failed.
    Io,
    /// The object store failed (unreachable, missing object, …).
    Store,
}

impl ErrorClass {
    pub fn of(error: &StorageError) -> ErrorClass {
        match error {
            StorageError::Mismatch { .. } => ErrorClass::Checksum,
            StorageError::Io { .. } | StorageError::DiskFull { .. } => ErrorClass::Io,
            _ => ErrorClass::Store,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Checksum => "checksum",
            ErrorClass::Io => "io",
            ErrorClass::Store => "store",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventError {
    pub class: ErrorClass,
    pub message: String,
}

/// One event. Reads cover `ts_ms - span_ms ..= ts_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ms: u64,
    pub kind: EventKind,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Shard id, or `global`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Reads: queries that mapped the shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<u64>,
    /// Reads: the time the coalesced reads span; writes: the download's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_ms: Option<u64>,
    /// Writes: megabytes (10^6) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
}

impl Event {
    fn new(kind: EventKind, node: &str, ts_ms: u64) -> Event {
        Event {
            ts_ms,
            kind,
            node: node.to_string(),
            disk: None,
            database: None,
            part: None,
            bytes: None,
            files: None,
            queries: None,
            span_ms: None,
            mb_s: None,
            error: None,
        }
    }
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub kind: Option<EventKind>,
    pub since_ms: u64,
    pub limit: usize,
}

/// Reads of one shard since the last flush.
#[derive(Debug, Clone, Copy)]
struct ReadTally {
    disk_index: usize,
    first_ms: u64,
    queries: u64,
    files: u64,
    bytes: u64,
}

/// This node's event log: the events waiting for the next flush, and the
/// ones kept in the catalog.
pub struct Events {
    node_id: String,
    catalog: Arc<Catalog>,
    time: Arc<dyn Clock>,
    /// How long and how many events are kept.
    retention_ms: u64,
    max_events: u64,
    pending: Mutex<Vec<Event>>,
    /// (database, part) → reads; disks by index into `disks`.
    reads: Mutex<HashMap<(String, String), ReadTally>>,
    disks: Mutex<Vec<String>>,
    sequence: AtomicU64,
    flushes: AtomicU64,
}

impl Events {
    pub fn new(
        node_id: &str,
        catalog: Arc<Catalog>,
        time: Arc<dyn Clock>,
        config: &IndexConfig,
    ) -> Events {
        Events {
            node_id: node_id.to_string(),
            catalog,
            time,
            retention_ms: config.event_retention_secs.saturating_mul(1000),
            max_events: config.max_events,
            pending: Mutex::default(),
            reads: Mutex::default(),
            disks: Mutex::default(),
            sequence: AtomicU64::default(),
            flushes: AtomicU64::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.time.now_ms()
    }

    /// Records a finished download of one part.
    pub fn record_write(
        &self,
        database: &str,
        part: &str,
        disk: &str,
        bytes: u64,
        files: u64,
        took: std::time::Duration,
    ) {
        let mut event = Event::new(EventKind::Write, &self.node_id, self.now_ms());
        let secs = took.as_secs_f64();
        event.disk = Some(disk.to_string());
        event.database = Some(database.to_string());
        event.part = Some(part.to_string());
        event.bytes = Some(bytes);
        event.files = Some(files);
        event.span_ms = Some(took.as_millis() as u64);
        event.mb_s = (secs > 0.0).then(|| (bytes as f64 / 1e6 / secs * 100.0).round() / 100.0);
        lock(&self.pending).push(event);
    }

    /// Records an exception: a failed fetch (each try), a local I/O error.
    pub fn record_error(
        &self,
        disk: Option<&str>,
        database: Option<&str>,
        part: Option<&str>,
        error: &StorageError,
    ) {
        let class = ErrorClass::of(error);
        let mut event = Event::new(EventKind::Error, &self.node_id, self.now_ms());
        event.disk = disk.map(str::to_string);
        event.database = database.map(str::to_string);
        event.part = part.map(str::to_string);
        event.error = Some(EventError {
            class,
            message: error.to_string(),
        });
        lock(&self.pending).push(event);
    }

    /// Records that a query mapped a shard, reading `bytes` in `files` files.
    pub fn record_read(&self, database: &str, part: &str, disk: &str, files: u64, bytes: u64) {
        let disk_index = {
            let mut disks = lock(&self.disks);
            match disks.iter().position(|d| d == disk) {
                Some(index) => index,
                None => {
                    disks.push(disk.to_string());
                    disks.len() - 1
                }
            }
        };
        let mut reads = lock(&self.reads);
        let tally = reads
            .entry((database.to_string(), part.to_string()))
            .or_insert(ReadTally {
                disk_index,
                first_ms: self.now_ms(),
                queries: 0,
                files: 0,
                bytes: 0,
            });
        tally.queries += 1;
        tally.files += files;
        tally.bytes += bytes;
    }

    /// Writes the pending events to the catalog (coalesced reads become one
    /// event per shard), pruning old ones every `PRUNE_EVERY` flushes.
    pub fn flush(&self) -> Result<(), CatalogError> {
        let mut events: Vec<Event> = std::mem::take(&mut *lock(&self.pending));
        let reads: Vec<((String, String), ReadTally)> = lock(&self.reads).drain().collect();
        let now = self.now_ms();
        if !reads.is_empty() {
            let disks = lock(&self.disks).clone();
            for ((database, part), tally) in reads {
                let mut event = Event::new(EventKind::Read, &self.node_id, self.now_ms());
                event.ts_ms = now;
                event.disk = disks.get(tally.disk_index).cloned();
                event.database = Some(database);
                event.part = Some(part);
                event.queries = Some(tally.queries);
                event.files = Some(tally.files);
                event.bytes = Some(tally.bytes);
                event.span_ms = Some(now.saturating_sub(tally.first_ms));
                events.push(event);
            }
        }
        let flushes = self.flushes.fetch_add(1, Ordering::Relaxed) + 1;
        let prune = flushes.is_multiple_of(PRUNE_EVERY);
        if events.is_empty() && !prune {
            return Ok(());
        }
        self.catalog.write(|w| {
            for event in &events {
                let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
                w.put(EVENTS, &event_key(event.ts_ms, sequence), event)?;
            }
            if prune {
                let oldest = now.saturating_sub(self.retention_ms);
                w.prune(EVENTS, &event_key(oldest, 0), self.max_events)?;
            }
            Ok::<_, CatalogError>(())
        })
    }

    /// This node's events matching `filter`, newest first (those recorded in
    /// the last half second included).
    pub fn list(&self, filter: &EventFilter) -> Result<Vec<Event>, CatalogError> {
        self.flush()?;
        let limit = filter.limit.clamp(1, MAX_LIMIT);
        let from = event_key(filter.since_ms, 0);
        if filter.kind.is_none() {
            return Ok(self
                .catalog
                .newest_from::<Event>(EVENTS, &from, limit)?
                .into_iter()
                .map(|(_, e)| e)
                .collect());
        }
        // Filtering by kind reads newest first in pages until `limit` match.
        let mut out = Vec::new();
        let mut upper: Option<String> = None;
        loop {
            let page: Vec<(String, Event)> =
                self.catalog
                    .newest_from_below::<Event>(EVENTS, &from, upper.as_deref(), 1000)?;
            let Some((last_key, _)) = page.last() else {
                break;
            };
            upper = Some(last_key.clone());
            let full = page.len() < 1000;
            out.extend(
                page.into_iter()
                    .map(|(_, e)| e)
                    .filter(|e| Some(e.kind) == filter.kind)
                    .take(limit - out.len()),
            );
            if out.len() >= limit || full {
                break;
            }
        }
        Ok(out)
    }

    /// Per disk: error events per hour over the last `hours` hours (oldest
    /// first), and bytes written with the time it took, since `since_ms`.
    pub fn trends(&self, hours: usize, since_ms: u64) -> Result<Trends, CatalogError> {
        self.flush()?;
        let now = self.now_ms();
        let start = now.saturating_sub(hours as u64 * 3_600_000);
        let events: Vec<(String, Event)> = self.catalog.newest_from::<Event>(
            EVENTS,
            &event_key(start.min(since_ms), 0),
            usize::MAX,
        )?;
        let mut trends = Trends::default();
        for (_, event) in events {
            let Some(disk) = event.disk.clone() else {
                continue;
            };
            let entry = trends.disks.entry(disk).or_insert_with(|| DiskTrend {
                errors_per_hour: vec![0; hours],
                ..DiskTrend::default()
            });
            match event.kind {
                EventKind::Error if event.ts_ms >= start => {
                    let age = (now.saturating_sub(event.ts_ms) / 3_600_000) as usize;
                    if age < hours {
                        entry.errors_per_hour[hours - 1 - age] += 1;
                    }
                    *entry
                        .errors_by_class
                        .entry(event.error.map_or("other", |e| e.class.name()))
                        .or_default() += 1;
                }
                EventKind::Write if event.ts_ms >= since_ms => {
                    entry.written_bytes += event.bytes.unwrap_or(0);
                    entry.write_ms += event.span_ms.unwrap_or(0);
                }
                EventKind::Read if event.ts_ms >= since_ms => {
                    entry.read_bytes += event.bytes.unwrap_or(0);
                }
                _ => {}
            }
        }
        Ok(trends)
    }
}

/// Events sort by time, then by the order they were written.
fn event_key(ts_ms: u64, sequence: u64) -> String {
    format!("{ts_ms:016x}\0{:08x}", sequence & 0xffff_ffff)
}

/// Error and throughput trends per disk, from the events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trends {
    pub disks: BTreeMap<String, DiskTrend>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskTrend {
    /// Error events per hour, oldest hour first (the last is the current one).
    pub errors_per_hour: Vec<u64>,
    pub errors_by_class: BTreeMap<&'static str, u64>,
    pub written_bytes: u64,
    /// Sum of the downloads' times (they may overlap).
    pub write_ms: u64,
    pub read_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_then_sequence() {
        let a = event_key(5, 9);
        let b = event_key(6, 1);
        let c = event_key(6, 2);
        assert!(a < b && b < c);
        assert!(event_key(0x1_0000, 0) > event_key(0xffff, 0xffff_ffff));
    }

    #[test]
    fn errors_are_classified() {
        let mismatch = StorageError::Mismatch {
            path: "a".into(),
            message: "sha256".into(),
        };
        assert_eq!(ErrorClass::of(&mismatch), ErrorClass::Checksum);
        let io = StorageError::Io {
            path: "/x".into(),
            source: std::io::Error::other("boom"),
        };
        assert_eq!(ErrorClass::of(&io), ErrorClass::Io);
        assert_eq!(EventKind::parse("write"), Some(EventKind::Write));
        assert_eq!(EventKind::parse("nope"), None);
    }
}
