//! Errors of node operations, with the stable code and HTTP status each maps to.

use crate::catalog::CatalogError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotReady(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The backup store (`backup.url`) failed or could not be reached:
    /// what dram was doing there, and why it failed.
    #[error("backup store {url}: {doing}: {reason}")]
    BackupStore {
        url: String,
        doing: String,
        reason: String,
    },
}

impl NodeError {
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> NodeError {
        NodeError::NotFound {
            kind,
            name: name.into(),
        }
    }

    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::InvalidInput(_) => "invalid_input",
            NodeError::NotFound { .. } => "not_found",
            NodeError::Conflict(_) => "conflict",
            NodeError::NotReady(_) => "not_ready",
            NodeError::Storage(StorageError::InvalidSource { .. }) => "invalid_source",
            NodeError::Storage(StorageError::SourceNotFound { .. }) => "source_not_found",
            NodeError::Storage(_) => "storage_error",
            NodeError::Catalog(_) => "catalog_error",
            NodeError::ShuttingDown => "shutting_down",
            NodeError::BackupStore { .. } => "backup_store_error",
        }
    }

    /// The HTTP status this error is reported with.
    pub fn http_status(&self) -> u16 {
        match self {
            NodeError::InvalidInput(_) => 400,
            NodeError::Storage(StorageError::InvalidSource { .. }) => 400,
            NodeError::NotFound { .. } => 404,
            NodeError::Storage(StorageError::SourceNotFound { .. }) => 404,
            NodeError::Conflict(_) => 409,
            NodeError::NotReady(_) => 409,
            NodeError::ShuttingDown => 503,
            NodeError::BackupStore { .. } => 502,
            NodeError::Storage(_) | NodeError::Catalog(_) => 500,
        }
    }
}
