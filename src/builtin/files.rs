//! `files`: how many files and bytes each shard has (from the manifest, so it
//! reads nothing and works on lazy databases without fetching).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::query::{Analysis, AnalysisError, Shard};

/// Per-shard file and byte counts, with totals.
pub struct Files;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCount {
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesOutput {
    pub total: FileCount,
    pub shards: BTreeMap<String, FileCount>,
}

impl Analysis for Files {
    type Params = ();
    type Partial = BTreeMap<String, FileCount>;
    type Output = FilesOutput;

    fn description(&self) -> String {
        "files and bytes per shard, from the manifest (params: none)".into()
    }

    fn map(&self, _: &(), shard: &Shard) -> Result<Self::Partial, AnalysisError> {
        let mut count = FileCount::default();
        for path in shard.files() {
            count.files += 1;
            count.bytes += shard.data().size(&path)?;
        }
        Ok(BTreeMap::from([(shard.id().to_string(), count)]))
    }

    fn reduce(&self, _: &(), partials: Vec<Self::Partial>) -> Result<Self::Partial, AnalysisError> {
        let mut merged = BTreeMap::new();
        for partial in partials {
            for (id, count) in partial {
                let slot: &mut FileCount = merged.entry(id).or_default();
                slot.files += count.files;
                slot.bytes += count.bytes;
            }
        }
        Ok(merged)
    }

    fn finish(&self, _: &(), shards: Self::Partial) -> Result<FilesOutput, AnalysisError> {
        let total = shards
            .values()
            .fold(FileCount::default(), |acc, c| FileCount {
                files: acc.files + c.files,
                bytes: acc.bytes + c.bytes,
            });
        Ok(FilesOutput { total, shards })
    }
}
