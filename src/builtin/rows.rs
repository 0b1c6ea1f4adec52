//! Reading rows out of a shard's CSV, TSV and JSON-lines files by column name,
//! shared by the `count` and `group` built-ins.
//!
//! A cell is compared and grouped as text: a CSV cell as written, a JSON string
//! as its content, any other JSON value as its compact JSON text, and a missing
//! JSON key or `null` as the empty string.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader};

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::query::{AnalysisError, Shard};

/// How often (in rows) a long scan looks at the query's cancellation.
const CANCEL_EVERY: u64 = 16 * 1024;

/// The file formats the row built-ins read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated, first row is the header.
    Csv,
    /// Tab-separated, first row is the header.
    Tsv,
    /// One JSON object per line (blank lines are skipped).
    Jsonl,
}

impl Format {
    /// The format a file's name implies: `.csv`, `.tsv`, `.jsonl` or `.ndjson`.
    pub fn of_path(path: &str) -> Option<Format> {
        let extension = path.rsplit_once('.')?.1.to_ascii_lowercase();
        match extension.as_str() {
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
        })
    }
}

/// Which files and rows a row built-in reads, checked before any shard is read.
#[derive(Debug, Clone)]
pub struct Selection {
    files: Option<GlobMatcher>,
    format: Option<Format>,
    filter: Vec<(String, String)>,
}

impl Selection {
    /// `files`: a glob over paths inside the shard (default: every file whose
    /// extension names `format`, or any known format); `format`: the format of
    /// every chosen file (default: from each file's extension); `filter`: column → value, every one must be equal for a row to count.
    pub fn new(
        files: Option<&str>,
        format: Option<Format>,
        filter: &BTreeMap<String, Value>,
    ) -> Result<Selection, AnalysisError> {
        let files = match files {
            None => None,
            Some(pattern) => Some(
                Glob::new(pattern)
                    .map_err(|e| {
                        AnalysisError::invalid_params(format!("files: bad glob {pattern:?}: {e}"))
                    })?
                    .compile_matcher(),
            ),
        };
        let mut pairs = Vec::with_capacity(filter.len());
        for (column, value) in filter {
            check_column("where", column)?;
            let text = match value {
                Value::Array(_) | Value::Object(_) => {
                    return Err(AnalysisError::invalid_params(format!(
                        "where.{column}: expected a string, number, boolean or null, got {value}"
                    )));
                }
                other => text_of(Some(other)).into_owned(),
            };
            pairs.push((column.clone(), text));
        }
        Ok(Selection {
            files,
            format,
            filter: pairs,
        })
    }

    /// The files of the shard this selection reads, with their formats.
    fn files(&self, shard: &Shard) -> Result<Vec<(String, Format)>, AnalysisError> {
        let mut chosen = Vec::new();
        for path in shard.files() {
            match &self.files {
                // Without a glob: the files whose extension names the format
                // (any known format when none is given).
                None => match (Format::of_path(&path), self.format) {
                    (Some(found), Some(wanted)) if found == wanted => chosen.push((path, found)),
                    (Some(found), None) => chosen.push((path, found)),
                    _ => {}
                },
                Some(glob) if glob.is_match(&path) => {
                    let format = self.format.or_else(|| Format::of_path(&path)).ok_or_else(|| {
                        AnalysisError::invalid_params(format!(
                            "files: {path} has no known extension (.csv, .tsv, .jsonl, .ndjson); \
                             set \"format\""
                        ))
                    })?;
                    chosen.push((path, format));
                }
                Some(_) => {}
            }
        }
        Ok(chosen)
    }

    /// Calls `row` with the cells of `columns` for every row that passes the
    /// filter, over every chosen file of the shard. Returns the number of files read.
    pub fn scan(
        &self,
        shard: &Shard,
        columns: &[String],
        mut row: impl FnMut(&[Cow<'_, str>]) -> Result<(), AnalysisError>,
    ) -> Result<u64, AnalysisError> {
        let files = self.files(shard)?;
        let mut rows = 0u64;
        for (path, format) in &files {
            let located = |e: AnalysisError| e.context(format!("shard {} file {path}", shard.id()));
            let reader = BufReader::with_capacity(256 * 1024, shard.open(path)?);
            match format {
                Format::Csv | Format::Tsv => {
                    let delimiter = if *format == Format::Csv { b',' } else { b'\t' };
                    self.scan_csv(shard, reader, delimiter, columns, &mut rows, &mut row)
                        .map_err(located)?;
                }
                Format::Jsonl => self
                    .scan_jsonl(shard, reader, columns, &mut rows, &mut row)
                    .map_err(located)?,
            }
        }
        Ok(files.len() as u64)
    }

    fn scan_csv(
        &self,
        shard: &Shard,
        reader: impl std::io::Read,
        delimiter: u8,
        columns: &[String],
        rows: &mut u64,
        row: &mut impl FnMut(&[Cow<'_, str>]) -> Result<(), AnalysisError>,
    ) -> Result<(), AnalysisError> {
        let mut csv = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .from_reader(reader);
        let header = csv.headers().map_err(csv_error)?.clone();
        let index = |column: &str| -> Result<usize, AnalysisError> {
            header.iter().position(|h| h == column).ok_or_else(|| {
                let known: Vec<&str> = header.iter().collect();
                AnalysisError::invalid_params(format!(
                    "no column {column:?} (columns: {})",
                    known.join(", ")
                ))
            })
        };
        let filter: Vec<(usize, &str)> = self
            .filter
            .iter()
            .map(|(column, value)| Ok((index(column)?, value.as_str())))
            .collect::<Result<_, AnalysisError>>()?;
        let wanted: Vec<usize> = columns.iter().map(|c| index(c)).collect::<Result<_, _>>()?;
        let mut record = csv::StringRecord::new();
        while csv.read_record(&mut record).map_err(csv_error)? {
            *rows += 1;
            if rows.is_multiple_of(CANCEL_EVERY) {
                shard.check_cancelled()?;
            }
            if filter
                .iter()
                .any(|(i, value)| record.get(*i).unwrap_or("") != *value)
            {
                continue;
            }
            let cells: Vec<Cow<'_, str>> = wanted
                .iter()
                .map(|i| Cow::Borrowed(record.get(*i).unwrap_or("")))
                .collect();
            row(&cells).map_err(|e| e.context(format!("line {}", line_of(&record))))?;
        }
        Ok(())
    }

    fn scan_jsonl(
        &self,
        shard: &Shard,
        reader: impl BufRead,
        columns: &[String],
        rows: &mut u64,
        row: &mut impl FnMut(&[Cow<'_, str>]) -> Result<(), AnalysisError>,
    ) -> Result<(), AnalysisError> {
        for (number, line) in reader.lines().enumerate() {
            let line_number = number + 1;
            let line = line.map_err(|e| {
                AnalysisError::failed(format!("line {line_number}: cannot read: {e}"))
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let object: serde_json::Map<String, Value> =
                serde_json::from_str(&line).map_err(|e| {
                    AnalysisError::failed(format!("line {line_number}: not a JSON object: {e}"))
                })?;
            *rows += 1;
            if rows.is_multiple_of(CANCEL_EVERY) {
                shard.check_cancelled()?;
            }
            if self
                .filter
                .iter()
                .any(|(column, value)| text_of(object.get(column)) != value.as_str())
            {
                continue;
            }
            let cells: Vec<Cow<'_, str>> = columns.iter().map(|c| text_of(object.get(c))).collect();
            row(&cells).map_err(|e| e.context(format!("line {line_number}")))?;
        }
        Ok(())
    }
}

/// The text a JSON value is compared and grouped as.
fn text_of(value: Option<&Value>) -> Cow<'_, str> {
    match value {
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

fn line_of(record: &csv::StringRecord) -> u64 {
    record.position().map(|p| p.line()).unwrap_or(0)
}

fn csv_error(e: csv::Error) -> AnalysisError {
    let line = e
        .position()
        .map(|p| format!("line {}: ", p.line()))
        .unwrap_or_default();
    match e.kind() {
        csv::ErrorKind::Io(io) => AnalysisError::failed(format!("{line}cannot read: {io}")),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => AnalysisError::failed(format!(
            "{line}{len} fields where the header has {expected_len}"
        )),
        csv::ErrorKind::Utf8 { .. } => AnalysisError::failed(format!("{line}not UTF-8 text")),
        _ => AnalysisError::failed(format!("{line}{e}")),
    }
}

/// A column name given in params must not be empty.
pub fn check_column(field: &str, column: &str) -> Result<(), AnalysisError> {
    if column.is_empty() {
        return Err(AnalysisError::invalid_params(format!(
            "{field}: a column name cannot be empty"
        )));
    }
    Ok(())
}

/// One column name or several, as params accept either `"a"` or `["a", "b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Columns {
    One(String),
    Many(Vec<String>),
}

impl Columns {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Columns::One(column) => vec![column],
            Columns::Many(columns) => columns,
        }
    }
}

impl Default for Columns {
    fn default() -> Self {
        Columns::Many(Vec::new())
    }
}
