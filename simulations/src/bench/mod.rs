//! `bench`: dram measured side by side with what users would otherwise use,
//! in one run on this machine (127.0.0.1 only; everything is set up here).
//!
//! Each case compares dram with its reference in the same run and prints a
//! table with ratios; a case that cannot run (a tool missing, say) prints
//! why instead of a number. The machines are shared and noisy: read the
//! ratios, not the absolute figures.
//!
//! Cases live one per file and export `run(&Settings) -> Result<Vec<Table>>`.

pub mod cache;
pub mod dedup;
pub mod digest;
pub mod fanout;
pub mod gossip;
pub mod hedge;
pub mod http;
pub mod idle;
pub mod load;
pub mod measure;
pub mod nodes;
pub mod pg;
pub mod restart;
pub mod spread;
pub mod sql;
pub mod support;
pub mod tpch;
pub mod turns;

use std::fmt::Write as _;

use anyhow::{Result, bail};

/// How a run is sized.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Smaller data and shorter runs (a smoke test of every case, not figures).
    pub quick: bool,
    /// Seed of generated data.
    pub seed: u64,
    /// `tpch`: queries whose distributed plan (EXPLAIN ANALYZE) is printed.
    pub explain: Vec<usize>,
}

/// One printed table: a title, columns, rows of cells, and notes below.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Table {
        Table {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            ..Table::default()
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table as aligned text: the first column left, the others right.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                if i == 0 {
                    let _ = write!(out, "{cell:<width$}");
                } else {
                    let _ = write!(out, "  {cell:>width$}");
                }
            }
            out.trim_end().to_string()
        };
        let mut out = format!("## {}\n", self.title);
        let _ = writeln!(out, "{}", line(&self.columns));
        for row in &self.rows {
            let _ = writeln!(out, "{}", line(row));
        }
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        out
    }
}

/// `a / b` as "1.23×", or "-" when `b` is zero or either is not finite.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 || !a.is_finite() || !b.is_finite() {
        "-".to_string()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// A case: its name on the command line, what it measures, and its runner.
pub struct Case {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Settings) -> Result<Vec<Table>>,
}

/// Every case, in the order they run.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "load",
            about: "load 1 GiB (1,000 files, then 8) from s3s-fs: dram vs rclone copy vs plain GETs",
            run: load::run,
        },
        Case {
            name: "dedup",
            about: "load v2 sharing 90% of its files with v1: bytes fetched and time",
            run: dedup::run,
        },
        Case {
            name: "restart",
            about: "restart a node holding 10,000 ready shards: time until it serves, peak memory",
            run: restart::run,
        },
        Case {
            name: "idle",
            about: "idle cluster of 20 nodes: resident memory and network bytes/s per node",
            run: idle::run,
        },
        Case {
            name: "sql",
            about: "the sql analysis on 1, 2 and 4 nodes vs one-process DataFusion, same Parquet",
            run: sql::run,
        },
        Case {
            name: "tpch",
            about: "the 22 TPC-H queries (SF1) on 1, 2 and 3 members vs one-process DataFusion",
            run: tpch::run,
        },
        Case {
            name: "fanout",
            about: "12 shards on 3 nodes vs on one node: latency and throughput",
            run: fanout::run,
        },
        Case {
            name: "cache",
            about: "a dashboard mix of 20 queries (Zipf) on 3 members, with and without the result cache",
            run: cache::run,
        },
        Case {
            name: "hedge",
            about: "one member of 3 slowed by 50 ms: p99 with adaptive selection and hedges, and without",
            run: hedge::run,
        },
        Case {
            name: "spread",
            about: "TPC-H Q6 and Q1 on 3 members: rendezvous alone (4 of 6 shards on one) vs each database spread evenly",
            run: spread::run,
        },
        Case {
            name: "http",
            about: "a trivial query over dram's HTTP API vs a bare warp server",
            run: http::run,
        },
        Case {
            name: "pg",
            about: "pgbench through the PostgreSQL listener vs the HTTP API; a 1M-row answer by psycopg vs Arrow IPC",
            run: pg::run,
        },
        Case {
            name: "gossip",
            about: "alias convergence on 5, 20, 50 nodes vs the epidemic model",
            run: gossip::run,
        },
        Case {
            name: "digest",
            about: "a gossip round's digest, uncompressed (V0) vs zstd (V1), 10 to 10,000 members",
            run: digest::run,
        },
    ]
}

/// Runs the chosen cases (all when `only` is empty) and prints their tables
/// as they finish; a case that fails prints why and the others still run.
pub fn run(only: &[String], settings: &Settings) -> Result<()> {
    let mut chosen = cases();
    for name in only {
        if !chosen.iter().any(|c| c.name == name) {
            let known: Vec<&str> = chosen.iter().map(|c| c.name).collect();
            bail!("--only: no case {name:?} (there are: {})", known.join(", "));
        }
    }
    if !only.is_empty() {
        chosen.retain(|c| only.iter().any(|n| n == c.name));
    }
    println!(
        "dram bench: {} on {} cores{}",
        chosen.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if settings.quick {
            " (--quick: smoke sizes, not figures)"
        } else {
            ""
        }
    );
    let mut failed = Vec::new();
    for case in &chosen {
        eprintln!("{}: {}", case.name, case.about);
        let started = std::time::Instant::now();
        match (case.run)(settings) {
            Ok(tables) => {
                for table in tables {
                    println!("\n{}", table.render());
                }
            }
            Err(e) => {
                println!("\n## {}\ncould not run: {e:#}", case.name);
                failed.push(case.name);
            }
        }
        eprintln!("{}: {:.0} s", case.name, started.elapsed().as_secs_f64());
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("cases that could not run: {}", failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_ratios_guard_zero() {
        let mut t = Table::new("load", &["case", "MB/s", "ratio"]);
        t.row(vec!["dram".into(), "250.0".into(), ratio(250.0, 200.0)]);
        t.row(vec!["rclone".into(), "200.0".into(), ratio(200.0, 0.0)]);
        t.note("a note");
        let text = t.render();
        assert_eq!(
            text,
            "## load\ncase     MB/s  ratio\ndram    250.0  1.25×\nrclone  200.0      -\na note\n"
        );
    }
}
