//! Errors of a query, with the stable code and HTTP status each maps to.

use super::{AnalysisError, AnalysisErrorKind};
use crate::local::NodeError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The database or alias (not found, not ready, …).
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("analysis {0:?} not found (GET /v1/analyses lists those this node serves)")]
    UnknownAnalysis(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("invalid params for analysis {analysis:?}: {message}")]
    InvalidParams { analysis: String, message: String },
    #[error("analysis {analysis:?} failed{}: {message}", on_shard(.shard))]
    Failed {
        analysis: String,
        shard: Option<String>,
        message: String,
    },
    #[error("analysis {analysis:?} panicked{}: {message}", on_shard(.shard))]
    Panicked {
        analysis: String,
        shard: Option<String>,
        message: String,
    },
    #[error("{message}")]
    ReadOnly { message: String },
    #[error("analysis {analysis:?} needs more memory than it may use{}: {message}", on_shard(.shard))]
    MemoryLimit {
        analysis: String,
        shard: Option<String>,
        message: String,
    },
    #[error("the query passed its deadline of {timeout_ms} ms and was cancelled")]
    Timeout { timeout_ms: u64 },
    #[error("the query was cancelled")]
    Cancelled,
    #[error(
        "no live member holds a ready copy of shard(s) {}{}",
        .shards.join(", "),
        " (allow_partial: true answers without them)"
    )]
    Unavailable { shards: Vec<String> },
    /// Too much work at once: refused at once rather than queued (503 with
    /// `Retry-After`).
    #[error("this node is running {limit} {what} already (its {field}); try again shortly")]
    Overloaded {
        what: &'static str,
        limit: usize,
        field: &'static str,
    },
    /// A holder answered a map request with an error (after the retry).
    #[error("{node}: {message}")]
    Remote {
        node: String,
        status: u16,
        code: String,
        message: String,
    },
}

fn on_shard(shard: &Option<String>) -> String {
    shard
        .as_ref()
        .map(|id| format!(" on shard {id:?}"))
        .unwrap_or_default()
}

impl QueryError {
    /// Wraps what an analysis returned, naming where it happened.
    pub(crate) fn from_analysis(analysis: &str, shard: Option<&str>, e: AnalysisError) -> Self {
        match e.kind() {
            AnalysisErrorKind::InvalidParams => QueryError::InvalidParams {
                analysis: analysis.to_string(),
                message: e.message().to_string(),
            },
            AnalysisErrorKind::Cancelled => QueryError::Cancelled,
            AnalysisErrorKind::ReadOnly => QueryError::ReadOnly {
                message: e.message().to_string(),
            },
            AnalysisErrorKind::MemoryLimit => QueryError::MemoryLimit {
                analysis: analysis.to_string(),
                shard: shard.map(str::to_string),
                message: e.message().to_string(),
            },
            _ => QueryError::Failed {
                analysis: analysis.to_string(),
                shard: shard.map(str::to_string),
                message: e.message().to_string(),
            },
        }
    }

    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Node(e) => e.code(),
            QueryError::UnknownAnalysis(_) => "not_found",
            QueryError::InvalidRequest(_) => "invalid_input",
            QueryError::InvalidParams { .. } => "invalid_params",
            QueryError::Failed { .. } => "analysis_failed",
            QueryError::Panicked { .. } => "analysis_panicked",
            QueryError::Timeout { .. } => "timeout",
            QueryError::ReadOnly { .. } => "read_only",
            QueryError::MemoryLimit { .. } => "memory_limit",
            QueryError::Cancelled => "cancelled",
            QueryError::Unavailable { .. } => "shards_unavailable",
            QueryError::Overloaded { .. } => "overloaded",
            QueryError::Remote { code, .. } => remote_code(code),
        }
    }

    /// The HTTP status this error is reported with.
    pub fn http_status(&self) -> u16 {
        match self {
            QueryError::Node(e) => e.http_status(),
            QueryError::UnknownAnalysis(_) => 404,
            QueryError::InvalidRequest(_)
            | QueryError::InvalidParams { .. }
            | QueryError::ReadOnly { .. } => 400,
            QueryError::MemoryLimit { .. } => 503,
            QueryError::Failed { .. } | QueryError::Panicked { .. } => 500,
            QueryError::Timeout { .. } => 504,
            QueryError::Cancelled
            | QueryError::Unavailable { .. }
            | QueryError::Overloaded { .. } => 503,
            QueryError::Remote { code, status, .. } => match remote_code(code) {
                "leaf_failed" => 502,
                _ => *status,
            },
        }
    }
}

/// The code of another member's error, as this node reports it: the codes dram
/// knows pass through (with their status), anything else is `leaf_failed`.
fn remote_code(code: &str) -> &'static str {
    const KNOWN: [&str; 16] = [
        "analysis_failed",
        "read_only",
        "memory_limit",
        "analysis_panicked",
        "invalid_params",
        "invalid_input",
        "timeout",
        "not_found",
        "not_ready",
        "conflict",
        "shards_unavailable",
        "cancelled",
        "unauthorized",
        "storage_error",
        "catalog_error",
        "overloaded",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == code)
        .unwrap_or("leaf_failed")
}
