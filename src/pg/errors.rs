//! dram's errors as PostgreSQL errors, each with its SQLSTATE.

use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError};

use crate::query::QueryError;

/// An error with `severity` (`ERROR`, `FATAL`), SQLSTATE `code` and message.
pub(super) fn error(severity: &str, code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_string(),
        code.to_string(),
        message.into(),
    )))
}

/// A statement dram refuses: it would write (25006, read_only_sql_transaction).
pub(super) fn read_only(what: &str) -> PgWireError {
    error(
        "ERROR",
        "25006",
        format!(
            "dram is read-only: {what} is refused (SELECT, WITH, VALUES, EXPLAIN, SHOW, SET and \
             transaction statements run)"
        ),
    )
}

/// The SQLSTATE of a query's error.
pub(super) fn sqlstate(e: &QueryError) -> &'static str {
    let message = e.to_string();
    match e.code() {
        "read_only" => "25006",
        "timeout" | "cancelled" => "57014",
        "memory_limit" => "53200",
        "overloaded" => "53000",
        "shards_unavailable" => "58000",
        // A database that is loading or failed: object_not_in_prerequisite_state.
        "not_ready" => "55000",
        "shutting_down" => "57P01",
        "not_found" if message.contains("database") => "3D000",
        "not_found" => "42704",
        "invalid_params" | "invalid_input" => {
            let lower = message.to_ascii_lowercase();
            if lower.contains("table") && lower.contains("not found") {
                "42P01"
            } else if lower.contains("parser error") || lower.contains("syntax") {
                "42601"
            } else if lower.contains("schema error") || lower.contains("no field named") {
                "42703"
            } else {
                "42000"
            }
        }
        _ => "XX000",
    }
}

/// A query's error as the client sees it.
pub(super) fn query_error(e: &QueryError) -> PgWireError {
    error("ERROR", sqlstate(e), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::AnalysisError;

    #[test]
    fn query_errors_get_their_sqlstates() {
        let state = |e: AnalysisError| sqlstate(&QueryError::from_analysis("sql", None, e));
        assert_eq!(state(AnalysisError::read_only("INSERT")), "25006");
        assert_eq!(state(AnalysisError::cancelled()), "57014");
        assert_eq!(state(AnalysisError::memory_limit("2 GiB")), "53200");
        assert_eq!(
            state(AnalysisError::invalid_params(
                "sql parser error: Expected: an expression"
            )),
            "42601"
        );
        assert_eq!(
            state(AnalysisError::invalid_params(
                "table 'datafusion.public.nope' not found"
            )),
            "42P01"
        );
        assert_eq!(sqlstate(&QueryError::Timeout { timeout_ms: 5 }), "57014");
        let node = |e: crate::local::NodeError| sqlstate(&QueryError::from(e));
        assert_eq!(
            node(crate::local::NodeError::NotReady("loading".into())),
            "55000"
        );
        assert_eq!(node(crate::local::NodeError::ShuttingDown), "57P01");
    }
}
