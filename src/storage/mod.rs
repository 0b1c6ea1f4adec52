//! Object storage and local disks: opening sources, reading manifests, fetching
//! files with verification into a content-addressed blob store, and the folders
//! of hard links that databases are served from.

pub mod disk;
pub mod fetch;
pub mod manifest;
pub mod source;

use std::path::PathBuf;

pub use disk::{Disk, DiskStats};
pub use manifest::{Manifest, ManifestFile, Part};
pub use source::{Source, SourceUrl, StoreConfig, StoreLayer};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("invalid source {url:?}: {message}")]
    InvalidSource { url: String, message: String },
    #[error("source {url} not found: {message}")]
    SourceNotFound { url: String, message: String },
    #[error("object store error on {path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error("{0}")]
    Manifest(String),
    #[error("{path}: {message}")]
    Mismatch { path: String, message: String },
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "disk {disk} has no room: {needed} bytes needed, {available} bytes available below its high watermark"
    )]
    DiskFull {
        disk: String,
        needed: u64,
        available: u64,
    },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { path, source }
    }

    pub(crate) fn store(path: impl ToString) -> impl FnOnce(object_store::Error) -> StorageError {
        let path = path.to_string();
        move |source| StorageError::Store { path, source }
    }
}
