//! The manifest `dram.json`: every file of a database with its size and sha256,
//! and how files split into global data and shards. Parsing checks everything a
//! hostile or broken manifest could get wrong before any byte is downloaded.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::names::{check_relative_path, is_valid_shard_id};

pub const MANIFEST_NAME: &str = "dram.json";
pub const FORMAT: u32 = 1;

/// One file of a database. `sha256` is `None` only for a database published
/// without a manifest, until its bytes have been hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub files: Vec<ManifestFile>,
    /// Shard tables whose rows were put in shards by a column (table →
    /// column), all by the same mapping from the column's value to a shard:
    /// their rows with equal keys are in the same shard (co-located, as
    /// Citus says), so SQL joins and groups on these columns shard by shard
    /// instead of moving rows between members. Declared by whoever wrote the
    /// shards (`dram publish --shard-key TABLE=COLUMN`); a wrong declaration
    /// gives wrong answers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shard_keys: BTreeMap<String, String>,
}

/// A part of a database: its global data or one shard. Its key (`global`,
/// `shards/<id>`) is also its folder, in object storage and on local disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Part {
    Global,
    Shard(String),
}

impl Part {
    pub fn key(&self) -> String {
        match self {
            Part::Global => "global".to_string(),
            Part::Shard(id) => format!("shards/{id}"),
        }
    }

    pub fn from_key(key: &str) -> Option<Part> {
        if key == "global" {
            Some(Part::Global)
        } else {
            key.strip_prefix("shards/")
                .filter(|id| is_valid_shard_id(id))
                .map(|id| Part::Shard(id.to_string()))
        }
    }

    pub fn shard_id(&self) -> Option<&str> {
        match self {
            Part::Global => None,
            Part::Shard(id) => Some(id),
        }
    }
}

/// A file placed in its part: `local` is its path inside the part's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedFile {
    pub file: ManifestFile,
    pub local: String,
}

impl Manifest {
    /// Parses and checks `dram.json`.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed manifest: {e}"))?;
        if manifest.format != FORMAT {
            return Err(format!(
                "unsupported manifest format {} (expected {FORMAT})",
                manifest.format
            ));
        }
        if manifest.files.iter().any(|f| f.sha256.is_none()) {
            return Err("manifest entry without sha256".to_string());
        }
        manifest.check()?;
        Ok(manifest)
    }

    /// Checks paths, hashes and duplicates.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = HashSet::with_capacity(self.files.len());
        for file in &self.files {
            check_relative_path(&file.path).map_err(|e| format!("manifest: {e}"))?;
            if file.path == MANIFEST_NAME {
                return Err(format!("manifest lists itself ({MANIFEST_NAME})"));
            }
            if let Some(hash) = &file.sha256
                && !is_sha256_hex(hash)
            {
                return Err(format!(
                    "manifest: {}: sha256 must be 64 lowercase hex digits",
                    file.path
                ));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(format!("manifest lists {} twice", file.path));
            }
        }
        for (table, column) in &self.shard_keys {
            check_shard_key(table, column).map_err(|e| format!("manifest: {e}"))?;
        }
        self.parts().map(|_| ())
    }

    /// Splits files into parts. With a `shards/` folder, every file must be under
    /// `shards/<id>/` or `global/`; without one, every non-global file is shard `0`.
    pub fn parts(&self) -> Result<BTreeMap<Part, Vec<PlacedFile>>, String> {
        let sharded = self.files.iter().any(|f| f.path.starts_with("shards/"));
        let mut parts: BTreeMap<Part, Vec<PlacedFile>> = BTreeMap::new();
        for file in &self.files {
            let (part, local) = if let Some(rest) = file.path.strip_prefix("global/") {
                (Part::Global, rest.to_string())
            } else if sharded {
                let rest = file.path.strip_prefix("shards/").ok_or_else(|| {
                    format!(
                        "{} is outside shards/ and global/ in a sharded database",
                        file.path
                    )
                })?;
                let (id, local) = rest
                    .split_once('/')
                    .ok_or_else(|| format!("{} is not inside a shard folder", file.path))?;
                if !is_valid_shard_id(id) {
                    return Err(format!(
                        "{}: shard id {id:?} must match [A-Za-z0-9_-]{{1,64}}",
                        file.path
                    ));
                }
                (Part::Shard(id.to_string()), local.to_string())
            } else {
                (Part::Shard("0".to_string()), file.path.clone())
            };
            parts.entry(part).or_default().push(PlacedFile {
                file: file.clone(),
                local,
            });
        }
        Ok(parts)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The version of a database: sha256 of its canonical manifest.
    pub fn version(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}

/// Checks one declared shard key: a table name (a folder or file stem in a
/// shard) and a column name.
pub fn check_shard_key(table: &str, column: &str) -> Result<(), String> {
    let printable = |text: &str| !text.chars().any(char::is_control);
    if table.is_empty()
        || table.len() > 255
        || table.starts_with('.')
        || table.contains('/')
        || !printable(table)
    {
        return Err(format!(
            "shard key: {table:?} is not a table name (a folder or file name in a shard)"
        ));
    }
    if column.is_empty() || column.len() > 255 || !printable(column) {
        return Err(format!(
            "shard key of {table}: {column:?} is not a column name"
        ));
    }
    Ok(())
}

pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            size: 1,
            sha256: Some("a".repeat(64)),
        }
    }

    /// A manifest without shard keys is written as before they existed, so
    /// its version (the hash of its bytes) is unchanged.
    #[test]
    fn shard_keys_are_written_only_when_declared() {
        let plain = Manifest {
            format: 1,
            files: vec![file("shards/0/t/a.parquet")],
            ..Manifest::default()
        };
        let text = String::from_utf8(serde_json::to_vec(&plain).unwrap()).unwrap();
        assert!(!text.contains("shard_keys"), "{text}");
        let keyed = Manifest {
            shard_keys: [("t".to_string(), "k".to_string())].into(),
            ..plain.clone()
        };
        let parsed: Manifest =
            serde_json::from_slice(&serde_json::to_vec(&keyed).unwrap()).unwrap();
        assert_eq!(parsed, keyed);
        assert_ne!(plain.version(), keyed.version());
    }

    #[test]
    fn sharded_layout() {
        let m = Manifest {
            format: 1,
            files: vec![
                file("global/dict"),
                file("shards/a/x"),
                file("shards/b/y/z"),
            ],
            ..Manifest::default()
        };
        let parts = m.parts().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[&Part::Shard("b".into())][0].local, "y/z");
        assert_eq!(parts[&Part::Global][0].local, "dict");
    }

    #[test]
    fn flat_layout_is_shard_zero() {
        let m = Manifest {
            format: 1,
            files: vec![file("a.csv"), file("sub/b.csv"), file("global/g")],
            ..Manifest::default()
        };
        let parts = m.parts().unwrap();
        assert_eq!(parts[&Part::Shard("0".into())].len(), 2);
        assert_eq!(parts[&Part::Global].len(), 1);
    }

    #[test]
    fn rejects_bad_manifests() {
        let cases = [
            r#"{"format":2,"files":[]}"#,
            r#"{"format":1,"files":[{"path":"../x","size":1,"sha256":"AA"}]}"#,
            r#"{"format":1,"files":[{"path":"/x","size":1}]}"#,
            r#"{"format":1,"files":[{"path":"x","size":1,"sha256":"zz"}]}"#,
            r#"{"format":1,"files":[],"extra":1}"#,
            r#"not json"#,
        ];
        for case in cases {
            assert!(Manifest::parse(case.as_bytes()).is_err(), "accepted {case}");
        }
        let dup = Manifest {
            format: 1,
            files: vec![file("a"), file("a")],
            ..Manifest::default()
        };
        assert!(dup.check().unwrap_err().contains("twice"));
        let stray = Manifest {
            format: 1,
            files: vec![file("shards/0/a"), file("b")],
            ..Manifest::default()
        };
        assert!(stray.check().unwrap_err().contains("outside"));
        let bad_id = Manifest {
            format: 1,
            files: vec![file("shards/a.b/x")],
            ..Manifest::default()
        };
        assert!(bad_id.check().is_err());
        let keyed = |table: &str, column: &str| Manifest {
            format: 1,
            files: vec![file("shards/0/t/a.parquet")],
            shard_keys: [(table.to_string(), column.to_string())].into(),
        };
        assert!(keyed("t", "k").check().is_ok());
        for (table, column) in [
            ("", "k"),
            ("a/b", "k"),
            (".t", "k"),
            ("t", ""),
            ("t", "k\n"),
        ] {
            assert!(
                keyed(table, column).check().is_err(),
                "{table:?}={column:?}"
            );
        }
    }

    #[test]
    fn part_keys_round_trip() {
        for part in [Part::Global, Part::Shard("x_1".into())] {
            assert_eq!(Part::from_key(&part.key()), Some(part));
        }
        assert_eq!(Part::from_key("shards/"), None);
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests (proptest, 2,000 cases each): parsing never panics,
    //! whatever the bytes, and a manifest it accepts names only paths that
    //! stay inside their part's folder.

    use std::path::{Component, Path};

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// Tokens of JSON and of manifests, hostile ones included.
    fn token() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("{"),
            Just("}"),
            Just("["),
            Just("]"),
            Just(":"),
            Just(","),
            Just(r#""format""#),
            Just(r#""files""#),
            Just(r#""path""#),
            Just(r#""size""#),
            Just(r#""sha256""#),
            Just("1"),
            Just("-1"),
            Just("1e400"),
            Just("18446744073709551616"),
            Just("null"),
            Just("true"),
            Just(r#""../x""#),
            Just(r#""shards/0/a""#),
            Just(r#""\u0000""#),
            Just(r#""\ud800""#),
            Just(" "),
        ]
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            4 => Just("shards"),
            2 => Just("global"),
            3 => Just("0"),
            3 => Just("a"),
            2 => Just("b-1"),
            2 => Just("x.csv"),
            1 => Just(".."),
            1 => Just("."),
            1 => Just(""),
            1 => Just("dram.json"),
            1 => Just("a.b"),
            1 => Just("..\\.."),
            1 => Just("é"),
            1 => Just("\0"),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => vec(segment(), 1..5).prop_map(|s| s.join("/")),
            1 => vec(segment(), 1..4).prop_map(|s| format!("/{}", s.join("/"))),
            1 => any::<String>(),
        ]
    }

    fn sha256() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            8 => "[0-9a-f]{64}".prop_map(Some),
            1 => Just(Some("A".repeat(64))),
            1 => Just(None),
            1 => any::<String>().prop_map(Some),
        ]
    }

    fn manifest() -> impl Strategy<Value = Manifest> {
        let file = (path(), any::<u64>(), sha256()).prop_map(|(path, size, sha256)| ManifestFile {
            path,
            size,
            sha256,
        });
        let format = prop_oneof![9 => Just(FORMAT), 1 => any::<u32>()];
        (format, vec(file, 0..8)).prop_map(|(format, files)| Manifest {
            format,
            files,
            ..Manifest::default()
        })
    }

    /// Non-empty, relative, no empty, `.` or `..` segment, no NUL or backslash.
    fn is_clean(path: &str) -> bool {
        !path.is_empty()
            && !path.starts_with('/')
            && !path.contains(['\0', '\\'])
            && path
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
            let _ = Manifest::parse(&bytes);
        }

        #[test]
        fn json_like_text_never_panics(tokens in vec(token(), 0..64)) {
            let _ = Manifest::parse(tokens.concat().as_bytes());
        }

        #[test]
        fn accepted_manifests_name_only_paths_inside(manifest in manifest()) {
            let bytes = serde_json::to_vec(&manifest).unwrap();
            let Ok(parsed) = Manifest::parse(&bytes) else {
                return Ok(());
            };
            prop_assert_eq!(&parsed, &manifest);
            for file in &parsed.files {
                prop_assert!(is_clean(&file.path), "{:?}", file.path);
            }
            let base = Path::new("/data/dbs/db");
            for (part, files) in parsed.parts().unwrap() {
                if let Some(id) = part.shard_id() {
                    prop_assert!(is_valid_shard_id(id), "{id:?}");
                }
                let folder = base.join(part.key());
                for placed in files {
                    prop_assert!(is_clean(&placed.local), "{:?}", placed.local);
                    let local = folder.join(&placed.local);
                    prop_assert!(local.starts_with(&folder) && local != folder);
                    let plain = |c: Component| matches!(c, Component::RootDir | Component::Normal(_));
                    prop_assert!(local.components().all(plain), "{local:?}");
                }
            }
        }
    }
}
