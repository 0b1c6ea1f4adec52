//! Where a database lives in object storage: a URL (`file://`, `s3://`, `memory://`,
//! or a relative name resolved against the configured store URL) turned into an
//! `object_store` client and a prefix.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::names::check_relative_path;

/// `[store]`: where databases are published and read from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Base URL that relative database sources resolve against.
    pub url: String,
    /// S3 endpoint (for S3-compatible servers); AWS_ENDPOINT otherwise.
    pub endpoint: Option<String>,
    /// S3 region; AWS_REGION / AWS_DEFAULT_REGION otherwise.
    pub region: Option<String>,
    /// Allow plain-HTTP endpoints; AWS_ALLOW_HTTP otherwise.
    pub allow_http: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Sources other than `url` and what is below it that databases may be
    /// defined from: globs of URL prefixes (`"s3://other-bucket/**"`,
    /// `"file:///mnt/exports"`). Empty: the store only.
    pub allowed_sources: Vec<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "file://./dram-store".to_string(),
            endpoint: None,
            region: None,
            allow_http: None,
            access_key_id: None,
            secret_access_key: None,
            allowed_sources: Vec::new(),
        }
    }
}

/// A parsed, absolute source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUrl {
    /// `file://./relative/dir` or `file:///absolute/dir`.
    File(PathBuf),
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
    /// `memory://name/prefix`: a store shared within this process (tests, examples).
    Memory { name: String, prefix: String },
}

impl SourceUrl {
    /// Parses an absolute URL.
    pub fn parse(url: &str) -> Result<SourceUrl, StorageError> {
        let bad = |message: &str| StorageError::InvalidSource {
            url: url.to_string(),
            message: message.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected file://, s3:// or memory://"))?;
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(bad("file:// needs a path"));
                }
                Ok(SourceUrl::File(PathBuf::from(rest)))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("s3:// needs a bucket"));
                }
                Ok(SourceUrl::S3 {
                    bucket: bucket.to_string(),
                    prefix: trim_prefix(prefix, url)?,
                })
            }
            "memory" => {
                let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                Ok(SourceUrl::Memory {
                    name: name.to_string(),
                    prefix: trim_prefix(prefix, url)?,
                })
            }
            _ => Err(bad(
                "unsupported scheme: expected file://, s3:// or memory://",
            )),
        }
    }

    /// Resolves a database source: absolute URLs stand as they are, anything else
    /// is a relative path under `base`.
    pub fn resolve(base: &str, source: &str) -> Result<SourceUrl, StorageError> {
        if source.contains("://") {
            return SourceUrl::parse(source);
        }
        let relative = source.trim_matches('/');
        check_relative_path(relative).map_err(|message| StorageError::InvalidSource {
            url: source.to_string(),
            message,
        })?;
        let base = base.trim_end_matches('/');
        SourceUrl::parse(&format!("{base}/{relative}"))
    }

    /// The same source, a `file://` path made absolute (from the current
    /// folder): what a definition stores, the same for every member.
    pub fn absolute(self) -> Result<SourceUrl, StorageError> {
        match self {
            SourceUrl::File(path) if path.is_relative() => std::path::absolute(&path)
                .map(SourceUrl::File)
                .map_err(|e| StorageError::InvalidSource {
                    url: format!("file://{}", path.display()),
                    message: format!("cannot resolve the path: {e}"),
                }),
            other => Ok(other),
        }
    }

    /// Whether a node with `store` may read this source: under the store's
    /// own URL, or matching one of `store.allowed_sources` (globs of URL
    /// prefixes; `*` within one segment, `**` across). Anything else — a
    /// server path or another bucket — is refused, so that defining a
    /// database cannot make a node read files it was not meant to serve.
    pub fn check_allowed(&self, store: &StoreConfig) -> Result<(), StorageError> {
        let url = self.to_url();
        let refuse = |message: String| StorageError::InvalidSource {
            url: url.clone(),
            message,
        };
        if let SourceUrl::File(path) = self
            && path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(refuse("a file:// source may not contain '..'".into()));
        }
        let base = SourceUrl::parse(&store.url)?.to_url();
        if under(&url, &base) {
            return Ok(());
        }
        for pattern in &store.allowed_sources {
            // A prefix allows what is below it: `x/**` is the same as `x`.
            let prefix = pattern.trim_end_matches('/');
            let prefix = prefix.strip_suffix("/**").unwrap_or(prefix);
            let glob = globset::GlobBuilder::new(prefix)
                .literal_separator(true)
                .build()
                .map_err(|e| refuse(format!("store.allowed_sources has a bad glob: {e}")))?
                .compile_matcher();
            // The URL or any of its prefixes at a '/'.
            let mut prefixes = url.match_indices('/').map(|(i, _)| &url[..i]);
            if glob.is_match(&url) || prefixes.any(|prefix| glob.is_match(prefix)) {
                return Ok(());
            }
        }
        Err(refuse(format!(
            "not under the node's store ({base}) nor in store.allowed_sources: add a glob of \
             URL prefixes there (e.g. \"s3://other-bucket/**\") to allow it"
        )))
    }

    pub fn to_url(&self) -> String {
        match self {
            SourceUrl::File(path) => format!("file://{}", path.display()),
            SourceUrl::S3 { bucket, prefix } => join_url("s3://", bucket, prefix),
            SourceUrl::Memory { name, prefix } => join_url("memory://", name, prefix),
        }
    }
}

/// Whether `url` is `base` or below it.
fn under(url: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    url == base
        || url
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn join_url(scheme: &str, host: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{scheme}{host}")
    } else {
        format!("{scheme}{host}/{prefix}")
    }
}

fn trim_prefix(prefix: &str, url: &str) -> Result<String, StorageError> {
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        check_relative_path(prefix).map_err(|message| StorageError::InvalidSource {
            url: url.to_string(),
            message,
        })?;
    }
    Ok(prefix.to_string())
}

/// Wraps the object store of every source a node opens: the seam through which
/// tests and the simulation harness inject faults and latency (see
/// `NodeBuilder::object_store_layer`).
pub type StoreLayer = Arc<dyn Fn(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> + Send + Sync>;

/// An opened source: a store client and the prefix of the database inside it.
#[derive(Debug, Clone)]
pub struct Source {
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    pub prefix: StorePath,
}

impl Source {
    /// Opens `url`. For `file://`, `create` makes the directory (for publishing);
    /// otherwise a missing directory is an error.
    pub fn open(
        url: &SourceUrl,
        config: &StoreConfig,
        create: bool,
    ) -> Result<Source, StorageError> {
        let text = url.to_url();
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match url {
            SourceUrl::File(path) => {
                if create {
                    std::fs::create_dir_all(path).map_err(|e| StorageError::InvalidSource {
                        url: text.clone(),
                        message: format!("cannot create directory: {e}"),
                    })?;
                } else if !path.is_dir() {
                    return Err(StorageError::SourceNotFound {
                        url: text.clone(),
                        message: "no such directory".to_string(),
                    });
                }
                let store = LocalFileSystem::new_with_prefix(path).map_err(|e| {
                    StorageError::InvalidSource {
                        url: text.clone(),
                        message: e.to_string(),
                    }
                })?;
                (Arc::new(store), String::new())
            }
            SourceUrl::S3 { bucket, prefix } => {
                (Arc::new(s3_store(bucket, config, &text)?), prefix.clone())
            }
            SourceUrl::Memory { name, prefix } => (memory_store(name), prefix.clone()),
        };
        Ok(Source {
            url: text,
            store,
            prefix: StorePath::from(prefix.as_str()),
        })
    }

    /// This source with its store wrapped by `layer`.
    pub fn layered(mut self, layer: Option<&StoreLayer>) -> Source {
        if let Some(layer) = layer {
            self.store = layer(self.store);
        }
        self
    }

    /// The object path of a file of the database, given its relative path:
    /// the key as it is (what a listing gives back for it), so that a name
    /// with non-ASCII or special characters round-trips. (A path that is not
    /// a valid key, which names checked beforehand never are, is escaped.)
    pub fn object_path(&self, relative: &str) -> StorePath {
        let full = if self.prefix.as_ref().is_empty() {
            relative.to_string()
        } else {
            format!("{}/{}", self.prefix, relative)
        };
        StorePath::parse(&full).unwrap_or_else(|_| StorePath::from(full))
    }

    /// The relative path of an object listed under the prefix.
    pub fn relative_path<'a>(&self, object: &'a StorePath) -> Option<&'a str> {
        let full = object.as_ref();
        let prefix = self.prefix.as_ref();
        if prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(prefix)?.strip_prefix('/')
        }
    }
}

fn s3_store(
    bucket: &str,
    config: &StoreConfig,
    url: &str,
) -> Result<object_store::aws::AmazonS3, StorageError> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        });
    if let Some(endpoint) = &config.endpoint {
        // A custom endpoint is an S3-compatible server: path-style requests.
        builder = builder
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    if let Some(allow) = config.allow_http {
        builder = builder.with_allow_http(allow);
    }
    if let Some(key) = &config.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &config.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    builder.build().map_err(|e| StorageError::InvalidSource {
        url: url.to_string(),
        message: e.to_string(),
    })
}

fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = stores
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_resolve() {
        assert_eq!(
            SourceUrl::parse("file://./dram-store").unwrap(),
            SourceUrl::File("./dram-store".into())
        );
        assert_eq!(
            SourceUrl::parse("s3://bucket/a/b/").unwrap(),
            SourceUrl::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            SourceUrl::resolve("file://./dram-store", "sales").unwrap(),
            SourceUrl::File("./dram-store/sales".into())
        );
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            SourceUrl::resolve("file://./dram-store", "sales")
                .unwrap()
                .absolute()
                .unwrap(),
            SourceUrl::File(here.join("dram-store/sales"))
        );
        assert_eq!(
            SourceUrl::parse("s3://b/x").unwrap().absolute().unwrap(),
            SourceUrl::parse("s3://b/x").unwrap()
        );
        assert_eq!(
            SourceUrl::resolve("s3://b/dbs/", "sales/v1")
                .unwrap()
                .to_url(),
            "s3://b/dbs/sales/v1"
        );
        assert!(SourceUrl::resolve("file://./x", "../etc").is_err());
    }

    #[test]
    fn sources_are_the_store_and_the_allowed_ones() {
        let mut store = StoreConfig {
            url: "s3://dbs/prod".into(),
            ..StoreConfig::default()
        };
        let allowed =
            |url: &str, store: &StoreConfig| SourceUrl::parse(url).unwrap().check_allowed(store);
        assert!(allowed("s3://dbs/prod/sales", &store).is_ok());
        assert!(allowed("s3://dbs/prod", &store).is_ok());
        for url in [
            "s3://dbs/production/x",
            "s3://other/sales",
            "file:///etc/passwd",
            "file:///",
            "memory://x/y",
        ] {
            let error = allowed(url, &store).unwrap_err().to_string();
            assert!(error.contains("store.allowed_sources"), "{url}: {error}");
        }
        store.allowed_sources = vec!["s3://other/*".into(), "file:///mnt/exports".into()];
        let mut all_of = store.clone();
        all_of.allowed_sources = vec!["s3://third/**".into()];
        assert!(allowed("s3://third", &all_of).is_ok());
        assert!(allowed("s3://third/a/b", &all_of).is_ok());
        assert!(allowed("s3://thirds/a", &all_of).is_err());
        assert!(allowed("s3://other/sales", &store).is_ok());
        assert!(allowed("s3://other/sales/v1", &store).is_ok());
        assert!(allowed("file:///mnt/exports/day1", &store).is_ok());
        assert!(allowed("file:///mnt/exports2/day1", &store).is_err());
        assert!(allowed("file:///mnt/exports/../../etc", &store).is_err());
        store.url = "file://./dram-store".into();
        assert!(allowed("file://./dram-store/sales", &store).is_ok());
        assert!(allowed("file://./dram-store/../x", &store).is_err());
        assert!(SourceUrl::parse("s3:///x").is_err());
        assert!(SourceUrl::parse("ftp://x").is_err());
        assert!(SourceUrl::parse("s3://b/a/../c").is_err());
    }

    #[test]
    fn object_paths() {
        let source = Source::open(
            &SourceUrl::parse("memory://t/db/v1").unwrap(),
            &StoreConfig::default(),
            false,
        )
        .unwrap();
        let path = source.object_path("shards/0/a");
        assert_eq!(path.as_ref(), "db/v1/shards/0/a");
        assert_eq!(source.relative_path(&path), Some("shards/0/a"));
        assert_eq!(source.relative_path(&StorePath::from("other/x")), None);
    }
}
