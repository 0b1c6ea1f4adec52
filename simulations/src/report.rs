//! The scenario table: one row per run, each invariant pass or FAIL, time to
//! converge after the final heal, bytes read from the object store, queries
//! failed / total; the violations themselves below it.

use std::fmt::Write as _;

use crate::scenario::{INVARIANTS, Outcome};

/// The table of `outcomes`, then the details of every failure.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<16} {:>20}", "scenario", "seed");
    for name in INVARIANTS {
        let _ = write!(out, " {name:>9}");
    }
    let _ = writeln!(
        out,
        " {:>9} {:>9} {:>13} {:>14} {:>7}",
        "converge", "MB moved", "queries f/t", "faults e/c/d", "took"
    );
    for o in outcomes {
        let _ = write!(out, "{:<16} {:>20}", o.scenario, o.seed);
        for (_, violations, _) in &o.invariants {
            let verdict = if *violations == 0 { "pass" } else { "FAIL" };
            let _ = write!(out, " {verdict:>9}");
        }
        let converge = o
            .converge_secs
            .map_or("-".to_string(), |s| format!("{s:.1} s"));
        let _ = writeln!(
            out,
            " {converge:>9} {:>9.2} {:>13} {:>14} {:>5.0} s",
            o.bytes_moved as f64 / 1e6,
            format!("{}/{}", o.queries_failed, o.queries_total),
            format!(
                "{}/{}/{}",
                o.store_failed, o.store_corrupted, o.gossip_dropped
            ),
            o.took_secs
        );
    }
    for o in outcomes
        .iter()
        .filter(|o| o.passed() && !o.query_errors.is_empty())
    {
        let _ = writeln!(
            out,
            "\n{} (seed {}) failed queries, the first:",
            o.scenario, o.seed
        );
        for error in &o.query_errors {
            let _ = writeln!(out, "  {error}");
        }
    }
    for o in outcomes.iter().filter(|o| !o.passed()) {
        let _ = writeln!(out, "\n{} (seed {}):", o.scenario, o.seed);
        if let Some(error) = &o.error {
            let _ = writeln!(out, "  stopped: {error}");
        }
        for (name, violations, details) in &o.invariants {
            for detail in details {
                let _ = writeln!(out, "  {name} ({violations} in all): {detail}");
            }
        }
        for error in &o.query_errors {
            let _ = writeln!(out, "  failed query: {error}");
        }
    }
    out
}
