//! Prometheus metrics of one node, served at `GET /metrics`. Each node owns its
//! own `prometheus::Registry` (several nodes share one process in tests; the
//! crate's global registry is never used).
//!
//! Counters and histograms (queries, map requests, downloads, reads) live in the
//! registry and are updated where the work happens. Gauges describing the node's
//! state (shards, databases, members, primary, disks, load) are computed at scrape
//! time from that state by [`gauges`], a plain function over plain data, and
//! encoded beside the registry's metrics by [`Metrics::render`].

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use tracing::warn;

use super::Load;
use crate::placement::HeldState;
use crate::placement::inventory::Inventory;
use crate::records::DbState;
use crate::storage::DiskStats;

/// The `analysis` label of a query or map request naming no analysis this node
/// serves: not a valid analysis name, and it keeps what clients type out of the
/// label values.
pub const UNKNOWN_ANALYSIS: &str = "_unknown";

/// Buckets of `dram_query_duration_seconds`: 1 ms to 60 s.
const QUERY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// This node's registry and the collectors updated as work happens. A collector
/// whose (constant) definition the registry refused is logged and left out.
pub struct Metrics {
    registry: Registry,
    queries: Option<IntCounterVec>,
    query_duration: Option<HistogramVec>,
    map_requests: Option<IntCounterVec>,
    download_bytes: Option<IntCounterVec>,
    downloads: Option<IntCounterVec>,
    download_errors: Option<IntCounterVec>,
    read_bytes: Option<IntCounterVec>,
    sql_remote_read_bytes: Option<IntCounterVec>,
    gossip_rejected: Option<IntCounterVec>,
    result_cache: Option<IntCounterVec>,
    result_cache_evictions: Option<IntCounterVec>,
    result_cache_shards: Option<IntCounterVec>,
    pg_connections: Option<prometheus::IntGauge>,
}

/// One open PostgreSQL connection, counted in `dram_pg_connections` until
/// dropped.
pub struct Open(Option<prometheus::IntGauge>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(gauge) = &self.0 {
            gauge.dec();
        }
    }
}

/// One sample of a gauge computed at scrape time. Samples of one name must carry
/// the same label names, in the same order.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Gauge {
    pub(crate) fn new(name: &'static str, help: &'static str, value: f64) -> Gauge {
        Gauge {
            name,
            help,
            labels: Vec::new(),
            value,
        }
    }

    pub(crate) fn label(mut self, name: &'static str, value: impl Into<String>) -> Gauge {
        self.labels.push((name, value.into()));
        self
    }
}

/// Registers `collector`, or logs why it cannot be and leaves it out.
fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    collector: prometheus::Result<C>,
) -> Option<C> {
    let registered = collector.and_then(|c| registry.register(Box::new(c.clone())).map(|()| c));
    match registered {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(metric = name, error = %e, "metric left out");
            None
        }
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Option<IntCounterVec> {
    register(
        registry,
        name,
        IntCounterVec::new(Opts::new(name, help), labels),
    )
}

/// Adds `by` to the counter with these label values (their number is fixed by
/// the definitions below).
fn add(counter: &Option<IntCounterVec>, labels: &[&str], by: u64) {
    if let Some(counter) = counter
        && let Ok(counter) = counter.get_metric_with_label_values(labels)
    {
        counter.inc_by(by);
    }
}

impl Metrics {
    /// A fresh registry with every collector of a node, and `dram_node_info`.
    pub fn new(node_id: &str) -> Metrics {
        let registry = Registry::new();
        let info = register(
            &registry,
            "dram_node_info",
            IntGaugeVec::new(
                Opts::new(
                    "dram_node_info",
                    "This node: its id and dram version; always 1.",
                ),
                &["node", "version"],
            ),
        );
        if let Some(info) = info
            && let Ok(gauge) =
                info.get_metric_with_label_values(&[node_id, env!("CARGO_PKG_VERSION")])
        {
            gauge.set(1);
        }
        let query_duration = register(
            &registry,
            "dram_query_duration_seconds",
            HistogramVec::new(
                HistogramOpts::new(
                    "dram_query_duration_seconds",
                    "Time to answer queries this node ran as root, by analysis.",
                )
                .buckets(QUERY_BUCKETS.to_vec()),
                &["analysis"],
            ),
        );
        Metrics {
            queries: counter(
                &registry,
                "dram_queries_total",
                "Queries this node ran as root, by analysis and outcome (ok or the error code).",
                &["analysis", "outcome"],
            ),
            query_duration,
            map_requests: counter(
                &registry,
                "dram_map_requests_total",
                "Map requests (POST /v1/internal/map) other roots sent this node, by analysis.",
                &["analysis"],
            ),
            download_bytes: counter(
                &registry,
                "dram_download_bytes_total",
                "Bytes of files downloaded from object storage, by disk.",
                &["disk"],
            ),
            downloads: counter(
                &registry,
                "dram_downloads_total",
                "Files downloaded from object storage, by disk.",
                &["disk"],
            ),
            download_errors: counter(
                &registry,
                "dram_download_errors_total",
                "Failed file downloads, by disk and class (checksum, io, store).",
                &["disk", "class"],
            ),
            read_bytes: counter(
                &registry,
                "dram_read_bytes_total",
                "Bytes analyses read from local files, by disk.",
                &["disk"],
            ),
            sql_remote_read_bytes: counter(
                &registry,
                "dram_sql_remote_read_bytes_total",
                "Bytes SQL read from holders because this node holds no copy of their part, \
                 by part kind (shard or global); shard scans run on holders, so shard bytes \
                 here mean a task ran away from its data.",
                &["part"],
            ),
            gossip_rejected: counter(
                &registry,
                "dram_gossip_rejected_total",
                "Gossip datagrams dropped unread: not signed with this cluster's secret \
                 (bad_signature), or too short to carry a signature (unsigned).",
                &["reason"],
            ),
            result_cache: counter(
                &registry,
                "dram_result_cache_total",
                "Queries that looked in this member's result cache, by outcome (hit, miss), \
                 or did not (bypass: cache false, Cache-Control: no-cache).",
                &["outcome"],
            ),
            result_cache_shards: counter(
                &registry,
                "dram_result_cache_shards_total",
                "Shards this member was to map for a query that may use the result cache: \
                 hit (their partials were kept here), miss (mapped, and kept).",
                &["outcome"],
            ),
            result_cache_evictions: counter(
                &registry,
                "dram_result_cache_evictions_total",
                "Answers pushed out of the result cache by cache.result_bytes.",
                &[],
            ),
            pg_connections: register(
                &registry,
                "dram_pg_connections",
                prometheus::IntGauge::new(
                    "dram_pg_connections",
                    "PostgreSQL protocol connections open (at most pg.max_connections).",
                ),
            ),
            registry,
        }
    }

    /// Counts a PostgreSQL connection open until the returned guard drops.
    pub fn pg_connection(&self) -> Open {
        if let Some(gauge) = &self.pg_connections {
            gauge.inc();
        }
        Open(self.pg_connections.clone())
    }

    /// The counter of gossip datagrams dropped, for the gossip transport.
    pub fn gossip_rejected(&self) -> Option<IntCounterVec> {
        self.gossip_rejected.clone()
    }

    /// A query this node ran as root ended: `outcome` is `ok` or its error code.
    pub fn query_done(&self, analysis: &str, outcome: &str, took: Duration) {
        add(&self.queries, &[analysis, outcome], 1);
        if let Some(histogram) = &self.query_duration
            && let Ok(histogram) = histogram.get_metric_with_label_values(&[analysis])
        {
            histogram.observe(took.as_secs_f64());
        }
    }

    /// A query used the result cache so: `hit`, `miss` or `bypass`.
    pub fn result_cache(&self, outcome: &str) {
        add(&self.result_cache, &[outcome], 1);
    }

    /// `count` shards' partials were (`hit`) or were not (`miss`) in this
    /// member's result cache.
    pub fn result_cache_shards(&self, outcome: &str, count: u64) {
        if count > 0 {
            add(&self.result_cache_shards, &[outcome], count);
        }
    }

    /// Keeping an answer pushed `count` others out of the result cache.
    pub fn result_cache_evicted(&self, count: u64) {
        add(&self.result_cache_evictions, &[], count);
    }

    /// A map request from another root arrived.
    pub fn map_request(&self, analysis: &str) {
        add(&self.map_requests, &[analysis], 1);
    }

    /// A file of `bytes` was downloaded onto `disk`.
    pub fn download_done(&self, disk: &str, bytes: u64) {
        add(&self.download_bytes, &[disk], bytes);
        add(&self.downloads, &[disk], 1);
    }

    /// A download onto `disk` failed; `class` is `checksum`, `io` or `store`.
    pub fn download_failed(&self, disk: &str, class: &str) {
        add(&self.download_errors, &[disk, class], 1);
    }

    /// Analyses read `bytes` from files on `disk`.
    pub fn read_bytes(&self, disk: &str, bytes: u64) {
        add(&self.read_bytes, &[disk], bytes);
    }

    /// SQL read `bytes` of a `part` kind (`shard`, `global`) from a holder.
    pub fn sql_remote_read(&self, part: &str, bytes: u64) {
        add(&self.sql_remote_read_bytes, &[part], bytes);
    }

    /// The text exposition (format 0.0.4) of the registry and of `gauges`.
    pub fn render(&self, gauges: &[Gauge]) -> prometheus::Result<String> {
        // The gauges go through a registry of their own: it checks them (no name
        // twice, label names consistent) and sorts the families.
        let scrape = Registry::new();
        let mut families: Vec<(&str, GaugeVec)> = Vec::new();
        for gauge in gauges {
            let index = match families.iter().position(|(name, _)| *name == gauge.name) {
                Some(index) => index,
                None => {
                    let names: Vec<&str> = gauge.labels.iter().map(|(name, _)| *name).collect();
                    let vec = GaugeVec::new(Opts::new(gauge.name, gauge.help), &names)?;
                    scrape.register(Box::new(vec.clone()))?;
                    families.push((gauge.name, vec));
                    families.len() - 1
                }
            };
            let vec = &families[index].1;
            let values: Vec<&str> = gauge
                .labels
                .iter()
                .map(|(_, value)| value.as_str())
                .collect();
            vec.get_metric_with_label_values(&values)?.set(gauge.value);
        }
        let mut all = self.registry.gather();
        all.extend(scrape.gather());
        all.sort_by(|a, b| a.name().cmp(b.name()));
        prometheus::TextEncoder::new().encode_to_string(&all)
    }
}

const SHARD_STATES: [(HeldState, &str); 5] = [
    (HeldState::Ready, "ready"),
    (HeldState::Downloading, "downloading"),
    (HeldState::Lazy, "lazy"),
    (HeldState::Failed, "failed"),
    (HeldState::Trashed, "trashed"),
];

const DATABASE_STATES: [(DbState, &str); 4] = [
    (DbState::Ready, "ready"),
    (DbState::Loading, "loading"),
    (DbState::Failed, "failed"),
    (DbState::Trashed, "trashed"),
];

/// The gauges of a scrape, from this node's own state: its inventory, its
/// disks and its map work under way (the cluster's are `cluster::gauges`).
pub fn gauges(inventory: &Inventory, disks: &[DiskStats], load: Load) -> Vec<Gauge> {
    let mut out = Vec::new();
    for (state, label) in SHARD_STATES {
        let count = inventory
            .databases
            .values()
            .flat_map(|database| database.shards.values())
            .filter(|part| part.state == state)
            .count();
        out.push(
            Gauge::new(
                "dram_shards",
                "Shards this node holds, by state.",
                count as f64,
            )
            .label("state", label),
        );
    }
    for (state, label) in DATABASE_STATES {
        let count = inventory
            .databases
            .values()
            .filter(|database| database.state == state)
            .count();
        out.push(
            Gauge::new(
                "dram_databases",
                "Databases this node knows, by state.",
                count as f64,
            )
            .label("state", label),
        );
    }
    for disk in disks {
        let samples = [
            (
                "dram_disk_capacity_bytes",
                "Bytes dram may fill on a disk.",
                disk.capacity_bytes,
            ),
            (
                "dram_disk_used_bytes",
                "Bytes dram uses on a disk.",
                disk.used_by_dram_bytes,
            ),
            (
                "dram_disk_free_bytes",
                "Free bytes of a disk's file system.",
                disk.free_bytes,
            ),
            (
                "dram_disk_over_watermark",
                "1 when a disk is past its high watermark (it gets nothing new).",
                u64::from(disk.over_watermark),
            ),
            (
                "dram_disk_unsynced",
                "1 while files written to a disk wait for its next sync.",
                u64::from(disk.unsynced),
            ),
        ];
        for (name, help, value) in samples {
            out.push(Gauge::new(name, help, value as f64).label("disk", disk.id.as_str()));
        }
    }
    out.push(Gauge::new(
        "dram_queries_inflight",
        "Map work under way on this node (local or for other roots).",
        load.inflight as f64,
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::placement::inventory::{HeldDatabase, HeldPart};

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(line_start)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn counters_increase_and_render_with_help_type_and_labels() {
        let metrics = Metrics::new("n1");
        metrics.query_done("count", "ok", Duration::from_millis(3));
        metrics.query_done("count", "ok", Duration::from_millis(20));
        metrics.query_done("count", "not_found", Duration::from_millis(1));
        metrics.map_request("count");
        metrics.download_done("0", 100);
        metrics.download_done("0", 50);
        metrics.download_failed("0", "checksum");
        metrics.read_bytes("1", 7);
        let text = metrics.render(&[]).unwrap();

        assert!(text.contains("# HELP dram_queries_total "), "{text}");
        assert!(text.contains("# TYPE dram_queries_total counter"), "{text}");
        assert!(
            text.contains("# TYPE dram_query_duration_seconds histogram"),
            "{text}"
        );
        let at = |line: &str| sample(&text, line);
        assert_eq!(
            at(r#"dram_queries_total{analysis="count",outcome="ok"}"#),
            Some(2.0)
        );
        assert_eq!(
            at(r#"dram_queries_total{analysis="count",outcome="not_found"}"#),
            Some(1.0)
        );
        assert_eq!(
            at(r#"dram_query_duration_seconds_count{analysis="count"}"#),
            Some(3.0)
        );
        assert_eq!(
            at(r#"dram_query_duration_seconds_bucket{analysis="count",le="0.005"}"#),
            Some(2.0)
        );
        assert_eq!(
            at(r#"dram_query_duration_seconds_bucket{analysis="count",le="60"}"#),
            Some(3.0)
        );
        assert_eq!(
            at(r#"dram_map_requests_total{analysis="count"}"#),
            Some(1.0)
        );
        assert_eq!(at(r#"dram_download_bytes_total{disk="0"}"#), Some(150.0));
        assert_eq!(at(r#"dram_downloads_total{disk="0"}"#), Some(2.0));
        assert_eq!(
            at(r#"dram_download_errors_total{class="checksum",disk="0"}"#),
            Some(1.0)
        );
        assert_eq!(at(r#"dram_read_bytes_total{disk="1"}"#), Some(7.0));
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            at(&format!(
                r#"dram_node_info{{node="n1",version="{version}"}}"#
            )),
            Some(1.0)
        );
    }

    #[test]
    fn two_instances_are_independent() {
        let (a, b) = (Metrics::new("a"), Metrics::new("b"));
        a.query_done("count", "ok", Duration::from_millis(1));
        let (text_a, text_b) = (a.render(&[]).unwrap(), b.render(&[]).unwrap());
        assert!(text_a.contains(r#"dram_queries_total{analysis="count",outcome="ok"} 1"#));
        assert!(!text_b.contains("dram_queries_total{"), "{text_b}");
        assert!(text_b.contains(r#"dram_node_info{node="b""#), "{text_b}");
        assert!(!text_b.contains(r#"node="a""#), "{text_b}");
    }

    #[test]
    fn gauges_render_and_bad_gauges_are_errors() {
        let metrics = Metrics::new("n1");
        let text = metrics
            .render(&[
                Gauge::new("dram_x", "An x.", 2.0).label("state", "ready"),
                Gauge::new("dram_x", "An x.", 3.0).label("state", "lazy"),
                Gauge::new("dram_y", "A y.", 1.5),
            ])
            .unwrap();
        assert!(
            text.contains("# HELP dram_x An x.\n# TYPE dram_x gauge\n"),
            "{text}"
        );
        assert_eq!(sample(&text, r#"dram_x{state="lazy"}"#), Some(3.0));
        assert_eq!(sample(&text, "dram_y"), Some(1.5));
        let mismatched = [
            Gauge::new("dram_x", "An x.", 2.0).label("state", "ready"),
            Gauge::new("dram_x", "An x.", 2.0),
        ];
        assert!(metrics.render(&mismatched).is_err());
    }

    fn part(state: HeldState) -> HeldPart {
        HeldPart {
            state,
            bytes: 10,
            pct: 100,
            error: None,
        }
    }

    #[test]
    fn gauges_count_shards_databases_and_disks() {
        let shards = BTreeMap::from([
            ("0".to_string(), part(HeldState::Ready)),
            ("1".to_string(), part(HeldState::Ready)),
            ("2".to_string(), part(HeldState::Downloading)),
        ]);
        let inventory = Inventory {
            node: "n1".into(),
            databases: BTreeMap::from([(
                "sales".to_string(),
                HeldDatabase {
                    state: DbState::Loading,
                    version: None,
                    global: None,
                    shards,
                    last_read_ms: None,
                },
            )]),
        };
        let disk = DiskStats {
            id: "0".into(),
            path: "/data".into(),
            total_bytes: 1000,
            free_bytes: 400,
            used_by_dram_bytes: 600,
            high_watermark: 0.5,
            max_bytes: None,
            capacity_bytes: 1000,
            over_watermark: true,
            unsynced: false,
        };
        let load = Load {
            inflight: 2,
            p99_ms: 0,
        };
        let gauges = gauges(&inventory, &[disk], load);
        let text = Metrics::new("n1").render(&gauges).unwrap();
        let at = |line: &str| sample(&text, line);
        assert_eq!(at(r#"dram_shards{state="ready"}"#), Some(2.0));
        assert_eq!(at(r#"dram_shards{state="downloading"}"#), Some(1.0));
        assert_eq!(at(r#"dram_shards{state="trashed"}"#), Some(0.0));
        assert_eq!(at(r#"dram_databases{state="loading"}"#), Some(1.0));
        assert_eq!(at(r#"dram_databases{state="ready"}"#), Some(0.0));
        assert_eq!(at(r#"dram_disk_used_bytes{disk="0"}"#), Some(600.0));
        assert_eq!(at(r#"dram_disk_over_watermark{disk="0"}"#), Some(1.0));
        assert_eq!(at("dram_queries_inflight"), Some(2.0));
        assert!(!text.contains("dram_members"), "outside a cluster: {text}");
    }
}
