//! The files of parts this node does not hold: which members hold them, and
//! their bytes read over HTTP from the first that answers
//! (`GET /v1/internal/file/…` with a `Range` header, at most [`MAX_RANGE`]
//! bytes a request); and the other side, `serve_range`.

use std::ops::Range;

use bytes::Bytes;
use datafusion::object_store::Result as StoreResult;
use datafusion::object_store::path::Path;

use super::store::{FileRef, generic};
use crate::cluster::Membership;
use crate::local::{Local, NodeError};
use crate::storage::Part;

/// Base URLs of the live members serving a copy of the file's part at its
/// version, least busy first.
pub(super) async fn holders(membership: Option<&Membership>, file: &FileRef) -> Vec<String> {
    let Some(membership) = membership else {
        return Vec::new();
    };
    let found = membership
        .query_holders(&file.database, &file.version)
        .await;
    let mut members: Vec<&String> = match &file.part {
        Part::Shard(id) => found.holders.get(id).into_iter().flatten().collect(),
        // Every holder of a shard holds the global data too.
        Part::Global => {
            let mut all: Vec<&String> = found.holders.values().flatten().collect();
            all.sort();
            all.dedup();
            all
        }
    };
    members.sort_by_key(|m| found.load.get(*m).copied().unwrap_or(0));
    members
        .into_iter()
        .filter_map(|m| found.http.get(m).cloned())
        .collect()
}

/// A file of a part this node does not hold, and who holds it.
pub(super) struct Remote<'a> {
    pub node: &'a Local,
    pub membership: Option<&'a Membership>,
    /// Base URLs of its holders, best first.
    pub holders: &'a [String],
    pub file: &'a FileRef,
}

impl Remote<'_> {
    /// The bytes `range` of the file, in requests of at most [`MAX_RANGE`]
    /// bytes.
    pub(super) async fn read(&self, range: &Range<u64>) -> StoreResult<Bytes> {
        if range.end - range.start <= MAX_RANGE {
            return self.read_range(range).await;
        }
        let mut bytes = bytes::BytesMut::with_capacity((range.end - range.start) as usize);
        let mut start = range.start;
        while start < range.end {
            let end = (start + MAX_RANGE).min(range.end);
            bytes.extend_from_slice(&self.read_range(&(start..end)).await?);
            start = end;
        }
        Ok(bytes.freeze())
    }

    /// The bytes `range` of the file, from the first holder that answers.
    async fn read_range(&self, range: &Range<u64>) -> StoreResult<Bytes> {
        let Remote {
            node,
            membership,
            holders,
            file,
        } = self;
        let Some(membership) = membership else {
            return Err(generic(format!(
                "this node holds no copy of {} of {:?} and is in no cluster",
                file.part.key(),
                file.database
            )));
        };
        let mut failures = Vec::new();
        for base in holders.iter() {
            let url = format!(
                "{}/v1/internal/file/{}",
                crate::net::base_url(base),
                file.location()
            );
            let mut request = membership.http_client().get(&url).header(
                "range",
                format!("bytes={}-{}", range.start, range.end.saturating_sub(1)),
            );
            if let Some(secret) = node.config().auth.peer_secret() {
                request = request.bearer_auth(secret);
            }
            let asked = std::time::Instant::now();
            let answer = match request.send().await {
                Ok(response) if response.status().is_success() => response.bytes().await,
                Ok(response) => {
                    failures.push(format!("{base}: HTTP {}", response.status()));
                    continue;
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(bytes) if bytes.len() as u64 == range.end - range.start => {
                    tracing::debug!(
                        file = %file.location(),
                        bytes = bytes.len(),
                        ms = asked.elapsed().as_secs_f64() * 1e3,
                        "sql read a range from a holder"
                    );
                    return Ok(bytes);
                }
                Ok(bytes) => failures.push(format!(
                    "{base}: {} bytes instead of {}",
                    bytes.len(),
                    range.end - range.start
                )),
                Err(e) => failures.push(format!("{base}: {e}")),
            }
        }
        Err(generic(if failures.is_empty() {
            format!(
                "no live member holds a ready copy of {} of {:?}",
                file.part.key(),
                file.database
            )
        } else {
            format!(
                "cannot read {} of {:?} from its holders: {}",
                file.path,
                file.database,
                failures.join("; ")
            )
        }))
    }
}

/// Serves `GET /v1/internal/file/<database>/<version>/<part>/<path>` with a
/// `Range: bytes=a-b` header: the bytes of a file of a part this node holds.
pub(crate) async fn serve_range(
    node: &Local,
    location: &str,
    range: Option<&str>,
) -> Result<Bytes, NodeError> {
    let location = Path::parse(location)
        .map_err(|e| NodeError::InvalidInput(format!("bad file path: {e}")))?;
    let file = FileRef::parse(&location)
        .ok_or_else(|| NodeError::not_found("file", location.to_string()))?;
    let here = node
        .ready_version(&file.database)
        .map_err(|e| NodeError::NotReady(e.to_string()))?;
    if here != file.version {
        return Err(NodeError::Conflict(format!(
            "database {:?} is at version {here} here, not {}",
            file.database, file.version
        )));
    }
    let context = match &file.part {
        Part::Global => node.global(&file.database)?,
        Part::Shard(id) => node.shard(&file.database, id)?,
    };
    let size = context.size(&file.path)?;
    let range = parse_range(range, size)?;
    let local = context.path(&file.path).await?;
    crate::local::blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let io = |e| crate::storage::StorageError::io(&local)(e);
        let mut handle = std::fs::File::open(&local).map_err(io)?;
        handle.seek(SeekFrom::Start(range.start)).map_err(io)?;
        let mut buffer = vec![0; (range.end - range.start) as usize];
        handle.read_exact(&mut buffer).map_err(io)?;
        Ok(Bytes::from(buffer))
    })
    .await
}

/// Most bytes one range request may ask for (DataFusion asks for column
/// chunks and footers, mostly far smaller; a larger read is several
/// requests).
const MAX_RANGE: u64 = 64 << 20;

fn parse_range(header: Option<&str>, size: u64) -> Result<Range<u64>, NodeError> {
    let range = match header {
        None => 0..size,
        Some(text) => {
            let bad = || NodeError::InvalidInput(format!("bad range {text:?}"));
            let (start, end) = text
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .ok_or_else(bad)?;
            let start: u64 = start.trim().parse().map_err(|_| bad())?;
            let end: u64 = end.trim().parse().map_err(|_| bad())?;
            if end < start || end >= size {
                return Err(bad());
            }
            start..end + 1
        }
    };
    if range.end - range.start > MAX_RANGE {
        return Err(NodeError::InvalidInput(format!(
            "ranges are at most {MAX_RANGE} bytes"
        )));
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_inside_the_file() {
        assert_eq!(parse_range(Some("bytes=2-5"), 10).unwrap(), 2..6);
        assert_eq!(parse_range(None, 10).unwrap(), 0..10);
        for bad in ["bytes=5-2", "bytes=0-10", "2-5", "bytes=a-b"] {
            assert!(parse_range(Some(bad), 10).is_err(), "{bad}");
        }
    }
}
