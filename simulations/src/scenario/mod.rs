//! Part 1 — cluster scenarios: real dram nodes in this process (127.0.0.1),
//! driven by a script of `Op`s, with faults injected at the object store and
//! the gossip transport, and the invariants checked all the time (`monitor`).
//!
//! A run is seeded: the data, the fault decisions (which request fails, which
//! datagram is dropped) and the query load's choices come from the seed, which
//! every run prints. Thread timing is the machine's, so a replay repeats the
//! same script and the same fault draws, not the same interleaving.
//!
//! At the end every fault is healed and the run checks `converged` (every
//! running member has the same registry, sees every other live and names the
//! same primary, within `CONVERGE_SECS`) and `no loss` (every database fully
//! placed again and answering exactly, through every member, aliases included).

pub mod monitor;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::cluster::{NodeSettings, SimCluster};
use crate::data::{Answer, Dataset, dataset, parse_answer, query_params};
use crate::faults::StoreFaultConfig;
use monitor::{Topology, Verdicts};

/// How long the cluster has to converge once every fault is healed.
pub const CONVERGE_SECS: u64 = 45;
/// The invariants, in the order the table shows them.
pub const INVARIANTS: [&str; 6] = [
    "answers",
    "copies",
    "checksums",
    "primary",
    "converged",
    "no loss",
];

/// One step of a scenario. Members are numbered from 0 (node `n1`).
#[derive(Debug, Clone)]
pub enum Op {
    /// Starts this many new members; all join through member 0.
    Start(usize),
    /// Publishes a database: shards × files of `rows` rows.
    Publish {
        name: &'static str,
        shards: usize,
        files: usize,
        rows: usize,
    },
    /// Defines a published database on a member.
    Define {
        on: usize,
        name: &'static str,
        replicas: usize,
    },
    /// Sets an alias on a member.
    Alias {
        on: usize,
        name: &'static str,
        target: &'static str,
    },
    /// Sets one alias on several members at the same moment.
    AliasRace {
        name: &'static str,
        writes: Vec<(usize, &'static str)>,
    },
    /// Starts `concurrency` query loops against a database or alias, each
    /// asking a random running member.
    QueryLoad {
        target: &'static str,
        concurrency: usize,
    },
    /// Stops the query loops.
    StopQueryLoad,
    /// Kills a member (its runtime dropped: no graceful shutdown).
    Crash(usize),
    /// Stops a member gracefully.
    Stop(usize),
    /// Starts a stopped or crashed member again, with its data.
    Restart(usize),
    /// Hangs a member as SIGSTOP would: its gossip and HTTP stop answering,
    /// connections to it stay open (the query load stops picking it).
    Hang(usize),
    /// Lets a hung member go on.
    Resume(usize),
    /// Changes one byte of one of a member's stored files of a database,
    /// through its blob, and puts the file's time back: silent corruption.
    CorruptBlob { on: usize, database: &'static str },
    /// Asks a member for a scrub pass now and waits for it to end.
    Scrub(usize),
    /// Cuts gossip between the sides.
    Partition(Vec<Vec<usize>>),
    /// Gossip datagrams dropped at this rate.
    GossipDrop(f64),
    /// Heals the gossip network.
    Heal,
    /// Fills a member's disk past its high watermark (it restarts with room
    /// for just what it holds).
    FillDisk(usize),
    /// Object store faults from now on.
    Store(StoreFaultConfig),
    /// Heals the object store.
    StoreHeal,
    /// Lets time pass.
    Wait(Duration),
    /// Waits until a condition holds; the scenario fails after `secs`.
    Await { until: Until, secs: u64 },
}

/// Flips one byte of the first shard file under `dir` (through its hard
/// link, the blob changes) and puts its modification time back.
fn corrupt_a_file(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let file = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .find(|e| e.file_type().is_file() && e.path().to_string_lossy().contains("/shards/"))
        .ok_or_else(|| anyhow::anyhow!("no shard file under {}", dir.display()))?
        .into_path();
    let modified = std::fs::metadata(&file)?.modified()?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    let mut bytes = std::fs::read(&file)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes)?;
    std::fs::File::options()
        .write(true)
        .open(&file)?
        .set_modified(modified)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444))?;
    Ok(())
}

/// `POST /v1/admin/scrub`, then waits (at most 30 s) until a pass that
/// began after it has ended.
async fn scrub(client: &dram::client::Client) -> Result<()> {
    let asked = dram::clock::now_ms();
    client.post("/v1/admin/scrub", &json!({})).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = client.get("/v1/stats").await?;
        let scrub = &stats["scrub"];
        let began = scrub["pass_started_ms"].as_u64().unwrap_or(0);
        if scrub["running"] == false && began >= asked {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no scrub pass ended within 30 s: {scrub}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Conditions a scenario waits for.
#[derive(Debug, Clone)]
pub enum Until {
    /// Every shard of the database has min(replicas, running) ready copies on
    /// running members, and no more.
    Placed(&'static str),
    /// Every running member sees the others live, has the same registry and
    /// names the same primary.
    Converged,
    /// A member is downloading the database (some part not ready yet).
    Downloading { on: usize, database: &'static str },
    /// No running member serves the database any more (deleted, e.g. by
    /// garbage collection); from then on the run no longer expects it.
    Gone(&'static str),
    /// No running member's disk is past its high watermark.
    DisksBelowWatermark,
}

/// A named script and the node settings it runs with.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub settings: NodeSettings,
    pub ops: Vec<Op>,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: &'static str,
    pub seed: u64,
    /// Per invariant: violations and the first details.
    pub invariants: Vec<(&'static str, usize, Vec<String>)>,
    /// Seconds from the script's last fault, heal or membership change (a
    /// kill, restart, join, heal, full disk) until the cluster had settled
    /// again (its last wait after it); without one, from the final heal.
    pub converge_secs: Option<f64>,
    /// Bytes read from the object store by every member.
    pub bytes_moved: u64,
    /// Faults injected: object store requests failed and GETs corrupted,
    /// gossip datagrams dropped.
    pub store_failed: u64,
    pub store_corrupted: u64,
    pub gossip_dropped: u64,
    pub queries_failed: u64,
    pub queries_total: u64,
    /// The first query errors.
    pub query_errors: Vec<String>,
    pub took_secs: f64,
    /// The script stopped early (a wait timed out or a step failed).
    pub error: Option<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.invariants.iter().all(|(_, n, _)| *n == 0)
    }
}

/// Counts of the query load.
#[derive(Default)]
struct QueryStats {
    total: AtomicU64,
    failed: AtomicU64,
    /// The first errors, for the report.
    errors: Mutex<Vec<String>>,
}

struct Run {
    cluster: SimCluster,
    topology: Arc<Mutex<Topology>>,
    verdicts: Arc<Verdicts>,
    datasets: BTreeMap<&'static str, Dataset>,
    /// Database name → replicas, as defined.
    defined: BTreeMap<&'static str, usize>,
    /// Alias → target, as last written by the script (for races: the
    /// candidates).
    aliases: BTreeMap<String, Vec<String>>,
    queries: Arc<QueryStats>,
    load_stop_tx: Option<tokio::sync::watch::Sender<bool>>,
    load_tasks: Vec<tokio::task::JoinHandle<()>>,
    rng: StdRng,
    /// When the last fault, heal or membership change happened.
    changed_at: Option<Instant>,
    /// Seconds from it to the end of the last wait after it.
    settled_after_change: Option<f64>,
}

/// Runs `scenario` with `seed`.
pub async fn run(scenario: &Scenario, seed: u64) -> Result<Outcome> {
    let started = Instant::now();
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let cluster = SimCluster::new(dir.path(), seed, scenario.settings.clone())?;
    let verdicts = Arc::new(Verdicts::default());
    let topology = Arc::new(Mutex::new(Topology::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Failure detection plus a few gossip rounds.
    let grace = Duration::from_millis(3000 + 20 * scenario.settings.gossip_interval_ms);
    let monitor = tokio::spawn(monitor::run(
        topology.clone(),
        verdicts.clone(),
        grace,
        stop_rx,
    ));
    let mut run = Run {
        cluster,
        topology,
        verdicts,
        datasets: BTreeMap::new(),
        defined: BTreeMap::new(),
        aliases: BTreeMap::new(),
        queries: Arc::default(),
        load_stop_tx: None,
        load_tasks: Vec::new(),
        rng: StdRng::seed_from_u64(seed),
        changed_at: None,
        settled_after_change: None,
    };
    let mut error = None;
    for (step, op) in scenario.ops.iter().enumerate() {
        tracing::info!(
            scenario = scenario.name,
            step = step + 1,
            at_ms = started.elapsed().as_millis() as u64,
            ?op,
            "step"
        );
        if let Err(e) = run.apply(op).await {
            error = Some(format!("step {} ({op:?}): {e:#}", step + 1));
            break;
        }
    }
    run.stop_queries().await;
    let mut converge_secs = run.settled_after_change;
    if error.is_none() {
        match run.finish().await {
            Ok(secs) => converge_secs = converge_secs.or(Some(secs)),
            Err(e) => error = Some(format!("after healing: {e:#}")),
        }
    }
    let _ = stop_tx.send(true);
    let _ = monitor.await;
    run.cluster.shutdown().await;
    let store = run.cluster.store_faults.stats();
    let invariants = INVARIANTS
        .iter()
        .map(|name| {
            let (count, details) = run.verdicts.of(name);
            (*name, count, details)
        })
        .collect();
    Ok(Outcome {
        scenario: scenario.name,
        seed,
        invariants,
        converge_secs,
        bytes_moved: store.bytes_read,
        store_failed: store.failed,
        store_corrupted: store.corrupted,
        gossip_dropped: run.cluster.network.stats().dropped,
        queries_failed: run.queries.failed.load(Ordering::Relaxed),
        queries_total: run.queries.total.load(Ordering::Relaxed),
        query_errors: run
            .queries
            .errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone(),
        took_secs: started.elapsed().as_secs_f64(),
        error,
    })
}

impl Run {
    fn update_topology(&self, change: impl FnOnce(&mut Topology)) {
        let mut topo = self
            .topology
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        topo.clients = self
            .cluster
            .nodes
            .iter()
            .map(|n| n.client().cloned())
            .collect();
        topo.data_dirs = self
            .cluster
            .nodes
            .iter()
            .map(|n| n.data_dir.clone())
            .collect();
        change(&mut topo);
    }

    fn topology(&self) -> Topology {
        self.topology
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    async fn apply(&mut self, op: &Op) -> Result<()> {
        if matches!(
            op,
            Op::Start(_)
                | Op::Crash(_)
                | Op::Stop(_)
                | Op::Restart(_)
                | Op::Hang(_)
                | Op::Resume(_)
                | Op::Heal
                | Op::StoreHeal
                | Op::FillDisk(_)
        ) {
            self.changed_at = Some(Instant::now());
            self.settled_after_change = None;
        }
        match op {
            Op::Start(n) => {
                for _ in 0..*n {
                    self.cluster.add_node().await?;
                    // Watched at once: copies move to a new member (and
                    // are trashed elsewhere) while the next one starts.
                    self.update_topology(|_| {});
                }
            }
            Op::Publish {
                name,
                shards,
                files,
                rows,
            } => {
                let data = dataset(name, *shards, *files, *rows, &mut self.rng);
                self.cluster.publish(name, &data.files).await?;
                self.datasets.insert(name, data);
            }
            Op::Define { on, name, replicas } => {
                self.cluster
                    .client(*on)?
                    .post(
                        "/v1/databases",
                        &json!({"name": name, "source": name, "replicas": replicas}),
                    )
                    .await?;
                self.defined.insert(name, *replicas);
            }
            Op::Alias { on, name, target } => {
                self.cluster
                    .client(*on)?
                    .put(&format!("/v1/aliases/{name}"), &json!({"target": target}))
                    .await?;
                self.aliases
                    .insert(name.to_string(), vec![target.to_string()]);
            }
            Op::AliasRace { name, writes } => {
                let mut calls = Vec::new();
                for (on, target) in writes {
                    let client = self.cluster.client(*on)?.clone();
                    let path = format!("/v1/aliases/{name}");
                    let body = json!({"target": target});
                    calls.push(async move { client.put(&path, &body).await });
                }
                for result in futures::future::join_all(calls).await {
                    result?;
                }
                self.aliases.insert(
                    name.to_string(),
                    writes.iter().map(|(_, t)| t.to_string()).collect(),
                );
            }
            Op::QueryLoad {
                target,
                concurrency,
            } => self.start_queries(target, *concurrency),
            Op::StopQueryLoad => self.stop_queries().await,
            // The query load stops picking a member before it goes down (as a
            // load balancer would after its health check): failed queries
            // then measure the cluster, not requests sent to a dead address.
            Op::Crash(index) => {
                self.update_topology(|t| t.clients[*index] = None);
                self.cluster.crash(*index).await
            }
            Op::Stop(index) => {
                self.update_topology(|t| t.clients[*index] = None);
                self.cluster.stop(*index).await
            }
            Op::Restart(index) => self.cluster.start(*index).await?,
            // As with a stop, the load stops picking the member first (and
            // the queries it was already asked finish): what fails then is
            // the cluster's, not requests sent to the hung member itself.
            Op::Hang(index) => {
                self.update_topology(|t| t.clients[*index] = None);
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.cluster.hang(*index);
                self.update_topology(|t| t.clients[*index] = None);
            }
            Op::Resume(index) => self.cluster.resume(*index),
            Op::CorruptBlob { on, database } => {
                let dir = self.cluster.nodes[*on].data_dir.join("dbs").join(database);
                corrupt_a_file(&dir)?;
            }
            Op::Scrub(index) => {
                let client = self.cluster.client(*index)?.clone();
                scrub(&client).await?;
            }
            Op::Partition(groups) => {
                let addresses = groups
                    .iter()
                    .map(|g| g.iter().map(|i| self.cluster.nodes[*i].gossip).collect())
                    .collect();
                self.cluster.network.partition(addresses);
                self.update_topology(|t| t.partition = Some((groups.clone(), Instant::now())));
            }
            Op::GossipDrop(rate) => self.cluster.network.set_drop_rate(*rate),
            Op::Heal => {
                self.cluster.network.heal();
                self.update_topology(|t| t.partition = None);
            }
            Op::FillDisk(index) => {
                self.update_topology(|t| t.clients[*index] = None);
                self.cluster.fill_disk(*index).await?
            }
            Op::Store(config) => self.cluster.store_faults.set(*config),
            Op::StoreHeal => self.cluster.store_faults.heal(),
            Op::Wait(duration) => tokio::time::sleep(*duration).await,
            Op::Await { until, secs } => {
                self.await_until(until, *secs).await?;
            }
        }
        self.update_topology(|_| {});
        Ok(())
    }

    /// Polls `until` for at most `secs`; returns how long it took.
    async fn await_until(&mut self, until: &Until, secs: u64) -> Result<Duration> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        loop {
            let last = self.holds(until).await?;
            if last.is_none() {
                match until {
                    Until::Placed(name) => self.arm(name),
                    Until::Gone(name) => self.forget(name),
                    _ => {}
                }
                if let Some(changed_at) = self.changed_at {
                    self.settled_after_change = Some(changed_at.elapsed().as_secs_f64());
                }
                return Ok(started.elapsed());
            }
            if Instant::now() >= deadline {
                bail!(
                    "not reached in {secs} s: {until:?} ({})",
                    last.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// From now on the monitor checks the copies of `name`.
    fn arm(&self, name: &str) {
        let (Some(data), Some(replicas)) = (self.datasets.get(name), self.defined.get(name)) else {
            return;
        };
        let shards = (0..data.shards).map(|s| s.to_string()).collect();
        let replicas = *replicas;
        self.update_topology(|t| {
            t.placed.insert(name.to_string(), (replicas, shards));
        });
    }

    /// The database is gone: no copies to keep, no answers to expect.
    fn forget(&mut self, name: &str) {
        self.defined.remove(name);
        self.update_topology(|t| {
            t.placed.remove(name);
        });
    }

    /// `None` when `until` holds, else what is missing.
    async fn holds(&self, until: &Until) -> Result<Option<String>> {
        let topo = self.topology();
        match until {
            Until::Placed(name) => {
                let data = self
                    .datasets
                    .get(*name)
                    .ok_or_else(|| anyhow!("{name} was never published"))?;
                let replicas = self.defined.get(*name).copied().unwrap_or(1);
                let want = replicas.min(topo.running().len());
                let Some(copies) = monitor::ready_copies(&topo, name).await else {
                    return Ok(Some("a member did not answer".into()));
                };
                let off: Vec<String> = (0..data.shards)
                    .map(|s| s.to_string())
                    .filter(|s| copies.ready(s) != want)
                    .map(|s| format!("{s}: {}", copies.describe(&s)))
                    .collect();
                if !off.is_empty() {
                    return Ok(Some(format!(
                        "shards with other than {want} ready copies: {off:?}"
                    )));
                }
                // And every member's view (what its queries will use) shows them.
                for index in topo.running() {
                    let Some(client) = topo.clients[index].as_ref() else {
                        continue;
                    };
                    let view = client
                        .get(&format!("/v1/cluster/shards?database={name}"))
                        .await
                        .unwrap_or_default();
                    for shard in 0..data.shards {
                        let seen = view["shards"][shard.to_string()]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|h| h["state"] == "ready")
                            .count();
                        if seen < want {
                            return Ok(Some(format!(
                                "n{} sees {seen} ready copies of shard {shard}",
                                index + 1
                            )));
                        }
                    }
                }
                Ok(None)
            }
            Until::Converged => converged(&topo).await,
            Until::Gone(name) => {
                for index in topo.running() {
                    let Some(client) = topo.clients[index].as_ref() else {
                        continue;
                    };
                    match client.get(&format!("/v1/databases/{name}")).await {
                        Err(dram::client::ClientError::Api { status: 404, .. }) => {}
                        Ok(info) if info["state"] == "trashed" => {}
                        Ok(info) => {
                            return Ok(Some(format!("n{} has it {}", index + 1, info["state"])));
                        }
                        Err(e) => return Ok(Some(format!("n{}: {e}", index + 1))),
                    }
                }
                Ok(None)
            }
            Until::DisksBelowWatermark => {
                for index in topo.running() {
                    let Some(client) = topo.clients[index].as_ref() else {
                        continue;
                    };
                    let status = client.get("/v1/cluster").await?;
                    let full: Vec<String> = status["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|m| {
                            m["disks"]
                                .as_object()
                                .is_some_and(|d| d.values().any(|d| d["full"] == true))
                        })
                        .map(|m| m["id"].to_string())
                        .collect();
                    if !full.is_empty() {
                        return Ok(Some(format!("n{} sees full disks on {full:?}", index + 1)));
                    }
                }
                Ok(None)
            }
            Until::Downloading { on, database } => {
                let client = self.cluster.client(*on)?;
                let info = client.get(&format!("/v1/databases/{database}")).await.ok();
                let downloading = info.is_some_and(|info| {
                    info["shards"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["state"] == "downloading")
                        && info["bytes_done"].as_u64().unwrap_or(0) > 0
                });
                Ok((!downloading).then(|| "not downloading".to_string()))
            }
        }
    }

    fn start_queries(&mut self, target: &str, concurrency: usize) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        for task in 0..concurrency {
            let topology = self.topology.clone();
            let verdicts = self.verdicts.clone();
            let stats = self.queries.clone();
            let answers: BTreeMap<String, Answer> = self
                .datasets
                .iter()
                .map(|(name, data)| (name.to_string(), data.answer.clone()))
                .collect();
            let target = target.to_string();
            let mut stop_rx = stop_rx.clone();
            let mut rng = StdRng::seed_from_u64(self.rng.random::<u64>() ^ task as u64);
            self.load_tasks.push(tokio::spawn(async move {
                loop {
                    if *stop_rx.borrow() {
                        return;
                    }
                    let client = {
                        let topo = topology
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        let running = topo.running();
                        if running.is_empty() {
                            None
                        } else {
                            let pick = running[rng.random_range(0..running.len())];
                            topo.clients[pick].clone().map(|c| (pick, c))
                        }
                    };
                    if let Some((index, client)) = client {
                        query_once(index, &client, &target, &answers, &stats, &verdicts).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = stop_rx.changed() => return,
                    }
                }
            }));
        }
        self.load_stop_tx = Some(stop_tx);
    }

    async fn stop_queries(&mut self) {
        if let Some(stop_tx) = self.load_stop_tx.take() {
            let _ = stop_tx.send(true);
        }
        for task in self.load_tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Heals every fault, then waits for convergence and full placement and
    /// checks every answer through every member. Returns the seconds it took.
    async fn finish(&mut self) -> Result<f64> {
        self.apply(&Op::Heal).await?;
        self.apply(&Op::StoreHeal).await?;
        let started = Instant::now();
        let deadline = Duration::from_secs(CONVERGE_SECS);
        let converged = self.await_until(&Until::Converged, CONVERGE_SECS).await;
        if let Err(e) = &converged {
            self.verdicts.fail("converged", e.to_string());
        }
        let names: Vec<&'static str> = self.defined.keys().copied().collect();
        for name in names {
            let left = deadline.saturating_sub(started.elapsed()).as_secs().max(1);
            if let Err(e) = self.await_until(&Until::Placed(name), left).await {
                self.verdicts.fail("no loss", format!("{name}: {e:#}"));
            }
        }
        let took = started.elapsed().as_secs_f64();
        self.check_everything_answers().await;
        Ok(took)
    }

    /// Every database and alias answers exactly through every running member,
    /// and every member resolves each alias alike.
    async fn check_everything_answers(&self) {
        let topo = self.topology();
        let stats = &self.queries;
        let answers: BTreeMap<String, Answer> = self
            .datasets
            .iter()
            .map(|(name, data)| (name.to_string(), data.answer.clone()))
            .collect();
        for index in topo.running() {
            let Some(client) = topo.clients[index].as_ref() else {
                continue;
            };
            let targets = self
                .defined
                .keys()
                .map(|n| n.to_string())
                .chain(self.aliases.keys().cloned());
            for name in targets {
                if !query_once(index, client, &name, &answers, stats, &self.verdicts).await {
                    self.verdicts.fail(
                        "no loss",
                        format!("n{}: a query of {name} failed after healing", index + 1),
                    );
                }
            }
        }
        for (alias, candidates) in &self.aliases {
            let mut seen = BTreeMap::new();
            for index in topo.running() {
                let Some(client) = topo.clients[index].as_ref() else {
                    continue;
                };
                let target = client
                    .get("/v1/aliases")
                    .await
                    .ok()
                    .and_then(|v| alias_target(&v, alias));
                seen.insert(index, target);
            }
            let targets: std::collections::BTreeSet<_> = seen.values().collect();
            let agreed = targets.len() == 1
                && targets
                    .iter()
                    .next()
                    .and_then(|t| t.as_ref())
                    .is_some_and(|t| candidates.contains(t));
            if !agreed {
                self.verdicts.fail(
                    "converged",
                    format!("alias {alias}: members disagree or lost it: {seen:?}"),
                );
            }
        }
    }
}

fn alias_target(aliases: &Value, name: &str) -> Option<String> {
    aliases["aliases"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["target"].as_str().map(str::to_string))
}

/// One `group` query through member `index`; a wrong answer is a violation
/// of `answers`. Returns whether it answered.
async fn query_once(
    index: usize,
    client: &dram::client::Client,
    target: &str,
    answers: &BTreeMap<String, Answer>,
    stats: &QueryStats,
    verdicts: &Verdicts,
) -> bool {
    stats.total.fetch_add(1, Ordering::Relaxed);
    let path = format!("/v1/query/{target}/group");
    let reply =
        tokio::time::timeout(Duration::from_secs(10), client.post(&path, &query_params())).await;
    let reply = match reply {
        Ok(Ok(reply)) => reply,
        failed => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer in 10 s".to_string(),
            };
            tracing::info!(node = index + 1, target, error, "query failed");
            let mut errors = stats
                .errors
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if errors.len() < 5 {
                errors.push(format!("n{}: {target}: {error}", index + 1));
            }
            return false;
        }
    };
    let database = reply["meta"]["database"].as_str().unwrap_or_default();
    let Some(expected) = answers.get(database) else {
        verdicts.fail(
            "answers",
            format!(
                "n{}: {target} answered as unknown database {database:?}",
                index + 1
            ),
        );
        return true;
    };
    match parse_answer(&reply["result"]) {
        Some(answer) if answer == *expected => {}
        other => verdicts.fail(
            "answers",
            format!(
                "n{}: {target} ({database}) answered {other:?}, expected {expected:?}",
                index + 1
            ),
        ),
    }
    true
}

/// `None` when every running member sees the others live, has the same
/// registry and names the same primary; else what differs.
async fn converged(topo: &Topology) -> Result<Option<String>> {
    let running = topo.running();
    let mut registries = BTreeMap::new();
    let mut primaries = BTreeMap::new();
    for index in &running {
        let Some(client) = topo.clients[*index].as_ref() else {
            continue;
        };
        let Ok(status) = client.get("/v1/cluster").await else {
            return Ok(Some(format!("n{} does not answer", index + 1)));
        };
        let live = crate::cluster::live_count(&status);
        if live != running.len() {
            return Ok(Some(format!(
                "n{} sees {live} live of {} running",
                index + 1,
                running.len()
            )));
        }
        registries.insert(*index, status["registry"]["hash"].clone());
        primaries.insert(*index, status["primary"]["id"].clone());
    }
    let distinct = |m: &BTreeMap<usize, Value>| {
        m.values()
            .map(|v| v.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    if distinct(&registries) > 1 {
        return Ok(Some(format!("registries differ: {registries:?}")));
    }
    if distinct(&primaries) > 1 || primaries.values().any(Value::is_null) {
        return Ok(Some(format!("primaries: {primaries:?}")));
    }
    Ok(None)
}
