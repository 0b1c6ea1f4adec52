//! The invariants, checked all the time while a scenario runs (every
//! `INTERVAL`), not only at its end:
//!
//! - `copies`: while a majority of members runs, no shard of a database that
//!   was once fully placed has fewer ready copies on running members than its
//!   replicas minus the members down (at least one). A shortfall counts once the
//!   next snapshot confirms it, so a snapshot that caught one member after a
//!   move's trash and another before its copy was ready does not.
//! - `primary`: once a partition is older than the failure-detection grace, no
//!   member on a minority side names a primary.
//! - `checksums`: every blob on every member's disk (running or not) hashes to
//!   its name: nothing unverified was ever stored as verified.
//!
//! `answers` (every query answer equals the reference) is checked by the query
//! load; `converged` and `no loss` at the end of the run (see `mod.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dram::client::Client;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Time between snapshots.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// Time between two checks of every blob.
const BLOB_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long one snapshot request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// What the invariants watch: who runs, how the network is cut, which
/// databases must keep their copies.
#[derive(Clone, Default)]
pub struct Topology {
    /// Per member: its client while it runs.
    pub clients: Vec<Option<Client>>,
    pub data_dirs: Vec<PathBuf>,
    /// The gossip partition (member indexes per side) and when it began.
    pub partition: Option<(Vec<Vec<usize>>, Instant)>,
    /// Databases once fully placed: replicas and shard ids.
    pub placed: BTreeMap<String, (usize, Vec<String>)>,
}

impl Topology {
    pub fn running(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|i| self.clients[*i].is_some())
            .collect()
    }
}

/// Violations seen, per invariant (the first few, with what was seen).
#[derive(Default)]
pub struct Verdicts {
    violations: Mutex<BTreeMap<&'static str, (usize, Vec<String>)>>,
}

impl Verdicts {
    pub fn fail(&self, invariant: &'static str, detail: String) {
        let mut violations = self
            .violations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = violations.entry(invariant).or_default();
        entry.0 += 1;
        if entry.1.len() < 5 {
            tracing::warn!(invariant, detail, "invariant violated");
            entry.1.push(detail);
        }
    }

    /// Violations of `invariant` and the first details.
    pub fn of(&self, invariant: &str) -> (usize, Vec<String>) {
        self.violations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(invariant)
            .cloned()
            .unwrap_or_default()
    }
}

/// Checks the invariants until `stop_rx` says stop.
pub async fn run(
    topology: Arc<Mutex<Topology>>,
    verdicts: Arc<Verdicts>,
    grace: Duration,
    mut stop_rx: tokio::sync::watch::Receiver<bool>,
) {
    let mut suspects: BTreeSet<(String, String)> = BTreeSet::new();
    let mut last_blob_check = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop_rx.changed() => break,
        }
        let topo = topology
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        suspects = check_copies(&topo, &suspects, &verdicts).await;
        check_primary(&topo, grace, &verdicts).await;
        if last_blob_check.elapsed() >= BLOB_CHECK_EVERY {
            last_blob_check = Instant::now();
            check_blobs(&topo.data_dirs, &verdicts).await;
        }
    }
    let data_dirs = topology
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .data_dirs
        .clone();
    check_blobs(&data_dirs, &verdicts).await;
}

async fn get(client: &Client, path: &str) -> Option<Value> {
    tokio::time::timeout(REQUEST_TIMEOUT, client.get(path))
        .await
        .ok()?
        .ok()
}

/// One snapshot of where the copies of a database's shards are.
#[derive(Default)]
pub struct Copies {
    /// Per shard: each running member's copy, as `n<i>:<state>`.
    pub held: BTreeMap<String, Vec<String>>,
}

impl Copies {
    /// Ready copies of `shard`.
    pub fn ready(&self, shard: &str) -> usize {
        self.held
            .get(shard)
            .map_or(0, |h| h.iter().filter(|c| c.ends_with(":ready")).count())
    }

    /// Every copy of `shard`, for a report.
    pub fn describe(&self, shard: &str) -> String {
        self.held
            .get(shard)
            .map_or("none".to_string(), |h| h.join(" "))
    }
}

/// The copies of each shard of `database` on the running members, or `None`
/// when a member did not answer (it may have just been stopped) or the
/// database is being deleted (a member has it in its trash).
pub async fn ready_copies(topo: &Topology, database: &str) -> Option<Copies> {
    let mut copies = Copies::default();
    for index in topo.running() {
        let client = topo.clients[index].as_ref()?;
        let info = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.get(&format!("/v1/databases/{database}")),
        )
        .await
        {
            Ok(Ok(info)) => info,
            // Not (or no longer) defined there: it holds nothing of it.
            Ok(Err(dram::client::ClientError::Api { status: 404, .. })) => continue,
            _ => return None,
        };
        if info["state"] == "trashed" {
            return None;
        }
        for part in info["shards"].as_array().into_iter().flatten() {
            let Some(id) = part["id"].as_str() else {
                continue;
            };
            let state = match part["state"].as_str() {
                Some("ready") if !part["trashed_ms"].is_null() => "trashed",
                Some(state) => state,
                None => "unknown",
            };
            copies
                .held
                .entry(id.to_string())
                .or_default()
                .push(format!("n{}:{state}", index + 1));
        }
    }
    Some(copies)
}

/// Returns the shards short of copies in this snapshot.
async fn check_copies(
    topo: &Topology,
    suspects: &BTreeSet<(String, String)>,
    verdicts: &Verdicts,
) -> BTreeSet<(String, String)> {
    let total = topo.clients.len();
    let running = topo.running().len();
    let mut short = BTreeSet::new();
    if running * 2 <= total {
        return short;
    }
    for (database, (replicas, shards)) in &topo.placed {
        let Some(copies) = ready_copies(topo, database).await else {
            return suspects.clone();
        };
        let floor = (*replicas)
            .min(total)
            .saturating_sub(total - running)
            .max(1);
        for shard in shards {
            let held = copies.ready(shard);
            if held < floor {
                let key = (database.clone(), shard.clone());
                if suspects.contains(&key) {
                    verdicts.fail(
                        "copies",
                        format!(
                            "{database}/{shard}: {held} ready copies on {running} running of {total} members, at least {floor} promised (copies: {})",
                            copies.describe(shard)
                        ),
                    );
                }
                short.insert(key);
            }
        }
    }
    short
}

async fn check_primary(topo: &Topology, grace: Duration, verdicts: &Verdicts) {
    let Some((groups, since)) = &topo.partition else {
        return;
    };
    if since.elapsed() < grace {
        return;
    }
    let total = topo.clients.len();
    for group in groups.iter().filter(|g| g.len() * 2 <= total) {
        for index in group {
            let Some(client) = topo.clients.get(*index).and_then(Option::as_ref) else {
                continue;
            };
            let Some(status) = get(client, "/v1/cluster").await else {
                continue;
            };
            if !status["primary"].is_null() {
                verdicts.fail(
                    "primary",
                    format!(
                        "n{} on a minority side ({} of {total}) names primary {} {:.1} s into the partition",
                        index + 1,
                        group.len(),
                        status["primary"],
                        since.elapsed().as_secs_f64()
                    ),
                );
            }
        }
    }
}

/// Hashes every blob of every member's disk.
pub async fn check_blobs(data_dirs: &[PathBuf], verdicts: &Verdicts) {
    let dirs = data_dirs.to_vec();
    let bad = tokio::task::spawn_blocking(move || {
        dirs.iter()
            .flat_map(|d| corrupt_blobs(d))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for detail in bad {
        verdicts.fail("checksums", detail);
    }
}

/// Blobs under `data_dir/blobs` whose content does not hash to their name.
fn corrupt_blobs(data_dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let Ok(fans) = std::fs::read_dir(data_dir.join("blobs")) else {
        return bad;
    };
    for fan in fans.flatten() {
        let Ok(blobs) = std::fs::read_dir(fan.path()) else {
            continue;
        };
        for blob in blobs.flatten() {
            let name = blob.file_name().to_string_lossy().to_string();
            // A blob purged between listing and reading is not a violation.
            let Ok(bytes) = std::fs::read(blob.path()) else {
                continue;
            };
            let sha = hex::encode(Sha256::digest(&bytes));
            if sha != name {
                bad.push(format!(
                    "{} holds a blob named {name} whose content hashes to {sha}",
                    data_dir.display()
                ));
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_that_does_not_hash_to_its_name_is_a_violation() {
        let dir = tempfile::tempdir().unwrap();
        let fan = dir.path().join("blobs").join("ab");
        std::fs::create_dir_all(&fan).unwrap();
        let good = hex::encode(Sha256::digest(b"good"));
        std::fs::write(fan.join(&good), b"good").unwrap();
        let verdicts = Verdicts::default();
        check_blobs(&[dir.path().to_path_buf()], &verdicts).await;
        assert_eq!(verdicts.of("checksums").0, 0);

        std::fs::write(fan.join(hex::encode(Sha256::digest(b"bad"))), b"bad!").unwrap();
        check_blobs(&[dir.path().to_path_buf()], &verdicts).await;
        let (count, details) = verdicts.of("checksums");
        assert_eq!(count, 1, "{details:?}");
        assert!(details[0].contains("hashes to"), "{details:?}");
    }
}
