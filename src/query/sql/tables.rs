//! A database's tables, as every member sees them from its manifest.
//!
//! In each part (a shard, or the global data), a table is a folder
//! `<table>/` of Parquet, CSV, TSV or JSON-lines files (at any depth), or one
//! file `<table>.<ext>`. A shard table is the union of its rows in every
//! shard; a global table is read whole. A table is one format, and a name is
//! a shard table or a global table, not both.
//!
//! A version's tables (formats, files and schemas) are worked out once per
//! member and kept: a version never changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::object_store::ObjectMeta;
use datafusion::object_store::path::Path;
use datafusion::prelude::SessionContext;

use super::colocate::CoLocated;
use super::store::{self, STORE_URL};
use crate::local::Local;
use crate::query::AnalysisError;
use crate::storage::Part;

/// The file formats a table may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Parquet,
    Csv,
    Tsv,
    Json,
}

impl Format {
    /// The format of a file, from its extension; `None` for other files.
    pub(crate) fn of(path: &str) -> Option<Format> {
        let (_, ext) = path.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "parquet" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            "json" | "jsonl" | "ndjson" => Some(Format::Json),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Parquet => "Parquet",
            Format::Csv => "CSV",
            Format::Tsv => "TSV",
            Format::Json => "JSON lines",
        }
    }

    pub(crate) fn file_format(self) -> Arc<dyn FileFormat> {
        match self {
            Format::Parquet => Arc::new(ParquetFormat::default()),
            Format::Csv => Arc::new(CsvFormat::default().with_has_header(true)),
            Format::Tsv => Arc::new(
                CsvFormat::default()
                    .with_has_header(true)
                    .with_delimiter(b'\t'),
            ),
            Format::Json => Arc::new(JsonFormat::default()),
        }
    }
}

/// The tables of one part: name → format and the files (paths in the part).
pub(crate) fn discover<'a>(
    paths: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, (Format, Vec<String>)>, String> {
    let mut tables: BTreeMap<String, (Format, Vec<String>)> = BTreeMap::new();
    for path in paths {
        let Some(format) = Format::of(path) else {
            continue;
        };
        let name = match path.split_once('/') {
            Some((folder, _)) => folder,
            None => path.rsplit_once('.').map_or(path, |(stem, _)| stem),
        };
        if name.is_empty() || name.starts_with('.') {
            continue;
        }
        let (known, files) = tables
            .entry(name.to_string())
            .or_insert_with(|| (format, Vec::new()));
        if *known != format {
            return Err(format!(
                "table {name} mixes {} and {} files; a table is one format",
                known.name(),
                format.name()
            ));
        }
        files.push(path.to_string());
    }
    for (_, files) in tables.values_mut() {
        files.sort();
    }
    Ok(tables)
}

type FilesByPart = BTreeMap<Part, Vec<String>>;

/// One table of a database version.
#[derive(Debug)]
pub(crate) struct Table {
    pub format: Format,
    pub schema: SchemaRef,
    /// Part → its files of the table (paths in the part), sorted.
    pub files: FilesByPart,
    /// The shard key, when the manifest declares the table co-located
    /// (`colocate.rs`).
    pub key: Option<String>,
}

/// The tables of one database version.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub database: String,
    pub version: String,
    /// Shard tables: their rows are spread over the shards.
    pub shard: BTreeMap<String, Table>,
    pub global: BTreeMap<String, Table>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::failed(format!("{what}: {e}"))
}

impl Tables {
    /// Works out the tables of `version` of `database` from its manifest,
    /// reading the files' schemas through `ctx`'s `dram://` store.
    pub(crate) async fn load(
        node: &Local,
        ctx: &SessionContext,
        database: &str,
        version: &str,
    ) -> Result<Tables, AnalysisError> {
        // (global, name) → the table's format and files by part.
        let mut found: BTreeMap<(bool, String), (Format, FilesByPart)> = BTreeMap::new();
        let mut sizes: HashMap<(Part, String), u64> = HashMap::new();
        for part in node.parts(database).map_err(AnalysisError::from)? {
            let files = node
                .part_files(database, &part)
                .map_err(AnalysisError::from)?;
            let mut paths: Vec<&str> = files.keys().map(String::as_str).collect();
            paths.sort_unstable();
            let tables = discover(paths)
                .map_err(|e| AnalysisError::invalid_params(format!("{}: {e}", part.key())))?;
            for (name, (format, paths)) in tables {
                let global = part == Part::Global;
                let (known, parts) = found
                    .entry((global, name.clone()))
                    .or_insert_with(|| (format, BTreeMap::new()));
                if *known != format {
                    return Err(AnalysisError::invalid_params(format!(
                        "table {name} is {} in one shard and {} in {}",
                        known.name(),
                        format.name(),
                        part.key()
                    )));
                }
                for path in &paths {
                    sizes.insert((part.clone(), path.clone()), files[path].size);
                }
                parts.insert(part.clone(), paths);
            }
        }
        let mut keys = node.shard_keys(database).map_err(AnalysisError::from)?;
        let mut tables = Tables {
            database: database.to_string(),
            version: version.to_string(),
            ..Tables::default()
        };
        for ((global, name), (format, files)) in found {
            let both = if global {
                tables.shard.contains_key(&name)
            } else {
                false
            };
            if both {
                return Err(AnalysisError::invalid_params(format!(
                    "{name} is both a shard table and a global table; rename one of them"
                )));
            }
            let objects: Vec<ObjectMeta> = files
                .iter()
                .flat_map(|(part, paths)| paths.iter().map(move |p| (part, p)))
                .map(|(part, path)| ObjectMeta {
                    location: Path::from(format!(
                        "{}/{path}",
                        store::part_prefix(database, version, part)
                    )),
                    last_modified: Default::default(),
                    size: sizes[&(part.clone(), path.clone())],
                    e_tag: None,
                    version: None,
                })
                .collect();
            let schema = infer_schema(ctx, STORE_URL, format, &objects)
                .await
                .map_err(|e| failed(&format!("table {name}"), e))?;
            let key = if global { None } else { keys.remove(&name) };
            if let Some(key) = &key
                && schema.index_of(key).is_err()
            {
                return Err(AnalysisError::invalid_params(format!(
                    "the manifest of {database} declares shard key {key} for table {name}, \
                     which has no such column"
                )));
            }
            let table = Table {
                format,
                schema,
                files,
                key,
            };
            if global {
                tables.global.insert(name, table);
            } else {
                tables.shard.insert(name, table);
            }
        }
        if let Some((name, _)) = keys.into_iter().next() {
            return Err(AnalysisError::invalid_params(format!(
                "the manifest of {database} declares a shard key for {name}, which is not a \
                 shard table"
            )));
        }
        Ok(tables)
    }

    /// All table names, sorted.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .shard
            .keys()
            .chain(self.global.keys())
            .map(String::as_str)
            .collect();
        names.sort();
        names
    }

    /// Registers the global tables in `ctx` and, with `shard_tables`, the
    /// shard tables over `shards` only.
    pub(crate) fn register(
        &self,
        ctx: &SessionContext,
        shards: &[String],
        shard_tables: bool,
    ) -> Result<(), AnalysisError> {
        let cache = ctx.runtime_env().cache_manager.get_file_statistic_cache();
        let mut sorted = shards.to_vec();
        sorted.sort();
        let shards_sorted = Arc::new(sorted);
        let tables = self
            .shard
            .iter()
            .filter(|_| shard_tables)
            .map(|t| (t, false))
            .chain(self.global.iter().map(|t| (t, true)));
        for ((name, table), global) in tables {
            let mut urls = Vec::new();
            for (part, paths) in &table.files {
                let wanted = global
                    || part
                        .shard_id()
                        .is_some_and(|id| shards.iter().any(|s| s == id));
                if !wanted {
                    continue;
                }
                for path in paths {
                    let url = store::url(&self.database, &self.version, part, path);
                    urls.push(
                        ListingTableUrl::parse(&url)
                            .map_err(|e| failed(&format!("table {name}"), e))?,
                    );
                }
            }
            let provider: Arc<dyn TableProvider> = if urls.is_empty() {
                // No file in the shards asked for: a table without rows.
                Arc::new(
                    datafusion::datasource::MemTable::try_new(table.schema.clone(), vec![vec![]])
                        .map_err(|e| failed(&format!("table {name}"), e))?,
                )
            } else {
                let listing = listing_table(
                    name,
                    urls,
                    table.format,
                    table.schema.clone(),
                    cache.clone(),
                )?;
                match &table.key {
                    Some(key) if !global => Arc::new(CoLocated {
                        inner: listing,
                        key: key.clone(),
                        shards: shards_sorted.clone(),
                    }),
                    _ => listing,
                }
            };
            ctx.register_table(name.as_str(), provider)
                .map_err(|e| failed(&format!("table {name}"), e))?;
        }
        Ok(())
    }
}

/// A table over `urls` (files of one format, with `schema`), its files'
/// statistics kept in `cache`.
pub(crate) fn listing_table(
    name: &str,
    urls: Vec<ListingTableUrl>,
    format: Format,
    schema: SchemaRef,
    cache: Option<Arc<datafusion::execution::cache::cache_manager::FileStatisticsCache>>,
) -> Result<Arc<dyn TableProvider>, AnalysisError> {
    let options = ListingOptions::new(format.file_format()).with_file_extension("");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(config)
        .map_err(|e| failed(&format!("table {name}"), e))?
        .with_cache(cache);
    Ok(Arc::new(table))
}

/// The schema of a table's files (in the store at `store_url`): DataFusion's
/// inference over all of them, or, where files disagree (CSV inferred as
/// integers in one, decimals in another), each file's unified to the wider
/// types.
pub(crate) async fn infer_schema(
    ctx: &SessionContext,
    store_url: &str,
    format: Format,
    objects: &[ObjectMeta],
) -> datafusion::error::Result<SchemaRef> {
    let state = ctx.state();
    let store = state
        .runtime_env()
        .object_store(ObjectStoreUrl::parse(store_url)?)?;
    let file_format = format.file_format();
    let session: &dyn Session = &state;
    match file_format.infer_schema(session, &store, objects).await {
        Ok(schema) => Ok(schema),
        Err(_) if objects.len() > 1 && matches!(format, Format::Csv | Format::Tsv) => {
            let mut schemas = Vec::with_capacity(objects.len());
            for object in objects {
                schemas.push(
                    file_format
                        .infer_schema(session, &store, std::slice::from_ref(object))
                        .await?,
                );
            }
            Ok(crate::query::sql::analysis::unify_schemas(&schemas))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_folders_or_single_files() {
        let tables = discover([
            "sales.csv",
            "orders/a.parquet",
            "orders/2024/b.parquet",
            "notes.txt",
            "events/x.jsonl",
            "events/y.json",
            ".hidden.csv",
        ])
        .unwrap();
        let names: Vec<_> = tables.keys().map(String::as_str).collect();
        assert_eq!(names, vec!["events", "orders", "sales"]);
        assert_eq!(tables["orders"].0, Format::Parquet);
        assert_eq!(
            tables["orders"].1,
            vec!["orders/2024/b.parquet", "orders/a.parquet"]
        );
        assert_eq!(
            tables["sales"],
            (Format::Csv, vec!["sales.csv".to_string()])
        );
        let mixed = discover(["t/a.csv", "t/b.parquet"]).unwrap_err();
        assert!(mixed.contains("mixes"), "{mixed}");
    }
}
