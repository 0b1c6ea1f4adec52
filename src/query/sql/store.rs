//! The files of every database this node knows, as one DataFusion object
//! store: `dram://data/<database>/<version>/<part>/<path>`, where `<part>` is
//! `global` or `shards/<id>`.
//!
//! A file of a part this node serves is read from its local copy (a lazy part
//! fetches and verifies it first). A file of a part it does not hold is read
//! from a member that does, over `GET /v1/internal/file/…` with a byte range:
//! the holder verified the bytes when it loaded them. Task routing sends a
//! shard's scan to a holder, so that is the exception (a global table read on
//! a member without the database, a stage the planner kept on the root).
//!
//! The version is part of every path: a file's bytes never change, so
//! DataFusion's caches of metadata and statistics never go stale, and a member
//! at another version refuses instead of answering with other bytes.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    CopyOptions, Error as StoreError, GetOptions, GetRange, GetResult, GetResultPayload,
    ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, Result as StoreResult,
};
use futures::StreamExt;
use futures::stream::BoxStream;

use super::remote;
use crate::cluster::Membership;
use crate::local::{Local, NodeError, WeakLocal};
use crate::storage::{ManifestFile, Part};

/// The object store URL tables are registered under.
pub(crate) const STORE_URL: &str = "dram://data";

const STORE: &str = "dram";

/// One file of one part of a pinned database version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRef {
    pub database: String,
    pub version: String,
    pub part: Part,
    /// The path inside the part.
    pub path: String,
}

/// The path of a part (or a folder or file in it) inside the store.
pub(crate) fn part_prefix(database: &str, version: &str, part: &Part) -> String {
    format!("{database}/{version}/{}", part.key())
}

/// The URL of a folder or file of a part, for a `ListingTableUrl`.
pub(crate) fn url(database: &str, version: &str, part: &Part, path: &str) -> String {
    let location = Path::from(format!("{}/{path}", part_prefix(database, version, part)));
    format!("{STORE_URL}/{location}")
}

impl FileRef {
    /// `None` for a path that names no file of a part.
    pub(crate) fn parse(location: &Path) -> Option<FileRef> {
        let mut parts = location.parts();
        let database = parts.next()?.as_ref().to_string();
        let version = parts.next()?.as_ref().to_string();
        let part = match parts.next()?.as_ref() {
            "global" => Part::Global,
            "shards" => Part::from_key(&format!("shards/{}", parts.next()?.as_ref()))?,
            _ => return None,
        };
        let path = parts
            .map(|p| p.as_ref().to_string())
            .collect::<Vec<_>>()
            .join("/");
        (!path.is_empty()).then_some(FileRef {
            database,
            version,
            part,
            path,
        })
    }

    pub(super) fn location(&self) -> Path {
        Path::from(format!(
            "{}/{}",
            part_prefix(&self.database, &self.version, &self.part),
            self.path
        ))
    }
}

/// Every database of one node, read-only.
pub(crate) struct DramStore {
    node: WeakLocal,
    /// The other members, for the holders of files not here.
    membership: Option<std::sync::Weak<Membership>>,
    local: LocalFileSystem,
    /// Files of a pinned version found on local disk: their bytes never
    /// change, so later reads skip the catalog. A path that is gone (its
    /// copy purged) is looked up again.
    found: std::sync::Mutex<std::collections::HashMap<Path, (PathBuf, ManifestFile)>>,
}

/// Local files remembered at most.
const FOUND: usize = 65_536;

impl fmt::Debug for DramStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DramStore")
    }
}

impl fmt::Display for DramStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DramStore")
    }
}

pub(super) fn generic(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Generic {
        store: STORE,
        source: e.into(),
    }
}

fn not_found(path: &Path) -> StoreError {
    StoreError::NotFound {
        path: path.to_string(),
        source: format!("no file {path} in any database version this node knows").into(),
    }
}

fn read_only() -> StoreError {
    StoreError::NotSupported {
        source: "databases are read-only".into(),
    }
}

/// Where a file's bytes are.
enum Located {
    Here(PathBuf),
    /// Base URLs of members holding its part, best first.
    Holders(Vec<String>),
}

impl DramStore {
    pub(crate) fn new(
        node: WeakLocal,
        membership: Option<std::sync::Weak<Membership>>,
    ) -> DramStore {
        DramStore {
            node,
            membership,
            local: LocalFileSystem::new(),
            found: Default::default(),
        }
    }

    fn membership(&self) -> Option<Arc<Membership>> {
        self.membership.as_ref()?.upgrade()
    }

    fn node(&self) -> StoreResult<Local> {
        self.node
            .upgrade()
            .ok_or_else(|| generic("the node is shutting down"))
    }

    /// The file as the manifest of its pinned version describes it.
    fn describe(&self, node: &Local, location: &Path) -> StoreResult<(FileRef, ManifestFile)> {
        let file = FileRef::parse(location).ok_or_else(|| not_found(location))?;
        check_version(node, &file.database, &file.version)?;
        let entry = node
            .manifest_file(&file.database, &file.part, &file.path)
            .map_err(generic)?
            .ok_or_else(|| not_found(location))?;
        Ok((file, entry))
    }

    async fn locate(&self, node: &Local, file: &FileRef) -> StoreResult<Located> {
        let context = match &file.part {
            Part::Global => node.global(&file.database),
            Part::Shard(id) => node.shard(&file.database, id),
        };
        match context {
            Ok(context) => {
                let local = context.path(&file.path).await.map_err(generic)?;
                Ok(Located::Here(local))
            }
            Err(NodeError::NotFound { .. } | NodeError::NotReady(_)) => Ok(Located::Holders(
                remote::holders(self.membership().as_deref(), file).await,
            )),
            Err(e) => Err(generic(e)),
        }
    }
}

/// Refuses a version other than the one ready here: the query pinned it.
pub(super) fn check_version(node: &Local, database: &str, version: &str) -> StoreResult<()> {
    let here = node.ready_version(database).map_err(generic)?;
    if here == version {
        Ok(())
    } else {
        Err(generic(format!(
            "database {database:?} is at version {here} on {}, not {version}: its alias moved \
             during the query; run it again",
            node.id()
        )))
    }
}

fn meta(location: &Path, entry: &ManifestFile) -> ObjectMeta {
    ObjectMeta {
        location: location.clone(),
        last_modified: Default::default(),
        size: entry.size,
        e_tag: entry.sha256.clone(),
        version: None,
    }
}

/// `range` of a file of `size` bytes as start..end.
fn resolve(range: Option<&GetRange>, size: u64, location: &Path) -> StoreResult<Range<u64>> {
    let bounded = match range {
        None => 0..size,
        Some(GetRange::Bounded(r)) => r.start..r.end.min(size),
        Some(GetRange::Offset(start)) => *start..size,
        Some(GetRange::Suffix(n)) => size.saturating_sub(*n)..size,
    };
    if bounded.start > bounded.end || (bounded.start >= size && size > 0) {
        return Err(generic(format!(
            "range {bounded:?} is outside {location} ({size} bytes)"
        )));
    }
    Ok(bounded)
}

#[async_trait::async_trait]
impl ObjectStore for DramStore {
    async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> StoreResult<PutResult> {
        Err(read_only())
    }

    async fn put_multipart_opts(
        &self,
        _: &Path,
        _: PutMultipartOptions,
    ) -> StoreResult<Box<dyn MultipartUpload>> {
        Err(read_only())
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> StoreResult<GetResult> {
        let known = crate::sync::lock(&self.found).get(location).cloned();
        if let Some((local, entry)) = known {
            let path = Path::from_absolute_path(&local).map_err(generic)?;
            match self.local.get_opts(&path, options.clone()).await {
                Ok(mut result) => {
                    result.meta = meta(location, &entry);
                    return Ok(result);
                }
                Err(_) => {
                    crate::sync::lock(&self.found).remove(location);
                }
            }
        }
        let node = self.node()?;
        let (file, entry) = self.describe(&node, location)?;
        match self.locate(&node, &file).await? {
            Located::Here(local) => {
                let path = Path::from_absolute_path(&local).map_err(generic)?;
                let mut result = self.local.get_opts(&path, options).await?;
                result.meta = meta(location, &entry);
                let mut found = crate::sync::lock(&self.found);
                if found.len() >= FOUND {
                    found.clear();
                }
                found.insert(location.clone(), (local, entry));
                Ok(result)
            }
            Located::Holders(holders) => {
                let range = resolve(options.range.as_ref(), entry.size, location)?;
                let bytes = if options.head || range.is_empty() {
                    Bytes::new()
                } else {
                    let membership = self.membership();
                    let remote = remote::Remote {
                        node: &node,
                        membership: membership.as_deref(),
                        holders: &holders,
                        file: &file,
                    };
                    remote.read(&range).await?
                };
                let kind = if file.part == Part::Global {
                    "global"
                } else {
                    "shard"
                };
                node.metrics().sql_remote_read(kind, bytes.len() as u64);
                Ok(GetResult {
                    payload: GetResultPayload::Stream(
                        futures::stream::once(async move { Ok(bytes) }).boxed(),
                    ),
                    meta: meta(location, &entry),
                    range,
                    attributes: Default::default(),
                })
            }
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, StoreResult<Path>>,
    ) -> BoxStream<'static, StoreResult<Path>> {
        locations.map(|_| Err(read_only())).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, StoreResult<ObjectMeta>> {
        let listed = self.node().and_then(|node| list(&node, prefix));
        match listed {
            Ok(files) => futures::stream::iter(files.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> StoreResult<ListResult> {
        let node = self.node()?;
        let depth = prefix.map_or(0, |p| p.parts().count());
        let mut objects = Vec::new();
        let mut common_prefixes: Vec<Path> = Vec::new();
        for object in list(&node, prefix)? {
            let parts: Vec<_> = object.location.parts().collect();
            if parts.len() == depth + 1 {
                objects.push(object);
            } else {
                let folder = Path::from_iter(parts.into_iter().take(depth + 1));
                if !common_prefixes.contains(&folder) {
                    common_prefixes.push(folder);
                }
            }
        }
        Ok(ListResult {
            common_prefixes,
            objects,
        })
    }

    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> StoreResult<()> {
        Err(read_only())
    }
}

/// The files under `prefix`, which must name a part or a folder in one.
fn list(node: &Local, prefix: Option<&Path>) -> StoreResult<Vec<ObjectMeta>> {
    let Some(prefix) = prefix else {
        return Err(generic("list a part of a database version, not the store"));
    };
    let mut parts = prefix.parts();
    let (Some(database), Some(version), Some(kind)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(generic(format!("{prefix} names no part of a database")));
    };
    let (database, version) = (database.as_ref(), version.as_ref());
    let part = match kind.as_ref() {
        "global" => Part::Global,
        "shards" => parts
            .next()
            .and_then(|id| Part::from_key(&format!("shards/{}", id.as_ref())))
            .ok_or_else(|| generic(format!("{prefix} names no shard")))?,
        _ => return Err(generic(format!("{prefix} names no part of a database"))),
    };
    let inside: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
    check_version(node, database, version)?;
    let files = node.part_files(database, &part).map_err(generic)?;
    let base = part_prefix(database, version, &part);
    let mut listed: Vec<ObjectMeta> = files
        .iter()
        .filter(|(path, _)| {
            let segments: Vec<&str> = path.split('/').collect();
            segments.len() > inside.len() && segments.iter().zip(&inside).all(|(a, b)| a == b)
        })
        .map(|(path, entry)| meta(&Path::from(format!("{base}/{path}")), entry))
        .collect();
    listed.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(listed)
}

/// Registers the store on a runtime environment.
pub(crate) fn register(
    runtime: &datafusion::execution::runtime_env::RuntimeEnv,
    node: WeakLocal,
    membership: Option<std::sync::Weak<Membership>>,
) {
    let url = url::Url::parse(STORE_URL).expect("the store URL is valid");
    runtime.register_object_store(&url, Arc::new(DramStore::new(node, membership)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_file_of_a_part() {
        let file = FileRef::parse(&Path::from("db/v1/shards/eu/sales/part 0.csv")).unwrap();
        assert_eq!(file.part, Part::Shard("eu".into()));
        assert_eq!(file.path, "sales/part 0.csv");
        assert_eq!(
            file.location(),
            Path::from("db/v1/shards/eu/sales/part 0.csv")
        );
        let global = FileRef::parse(&Path::from("db/v1/global/products.csv")).unwrap();
        assert_eq!(global.part, Part::Global);
        for bad in ["db/v1/global", "db/v1/other/x", "db/v1/shards/../x", "db"] {
            assert!(FileRef::parse(&Path::from(bad)).is_none(), "{bad}");
        }
        assert_eq!(
            url("db", "v1", &Part::Shard("eu".into()), "sales/"),
            "dram://data/db/v1/shards/eu/sales"
        );
    }

    #[test]
    fn resolved_ranges_stay_inside_the_file() {
        let location = Path::from("x");
        assert_eq!(
            resolve(Some(&GetRange::Suffix(4)), 10, &location).unwrap(),
            6..10
        );
        assert_eq!(resolve(None, 0, &location).unwrap(), 0..0);
        assert!(resolve(Some(&GetRange::Offset(11)), 10, &location).is_err());
    }
}
