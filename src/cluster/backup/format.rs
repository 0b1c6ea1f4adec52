//! The backup object, its name, how it is verified and which backups pruning
//! deletes — pure.
//!
//! A backup is one JSON object: `{format: 1, cluster_id, written_ms, node,
//! registry, settings, sha256}`, where `sha256` is the hex sha256 of the compact
//! JSON of every other field, in that order. Its name is
//! `dram-backup-<written_ms, 16 digits>-<node>-<8 hex>.json`: names sort by
//! time, and two writers never pick the same one.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::cluster::Registry;
use crate::config::Config;

/// The format this dram writes and reads.
pub const FORMAT: u32 = 1;
const NAME_PREFIX: &str = "dram-backup-";
const NAME_SUFFIX: &str = ".json";

/// One backup of the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub format: u32,
    pub cluster_id: String,
    pub written_ms: u64,
    /// The member that wrote it.
    pub node: String,
    /// The registry as `GET /v1/internal/registry` serves it, tombstones included.
    pub registry: Registry,
    /// Configuration worth restoring by hand (see [`settings`]); never applied.
    pub settings: Value,
    /// sha256 of the compact JSON of the fields above.
    pub sha256: String,
}

/// What the checksum covers: every field but `sha256`, in order.
#[derive(Serialize)]
struct Covered<'a> {
    format: u32,
    cluster_id: &'a str,
    written_ms: u64,
    node: &'a str,
    registry: &'a Registry,
    settings: &'a Value,
}

impl Backup {
    pub fn new(
        cluster_id: &str,
        node: &str,
        written_ms: u64,
        registry: Registry,
        settings: Value,
    ) -> Backup {
        let mut backup = Backup {
            format: FORMAT,
            cluster_id: cluster_id.to_string(),
            written_ms,
            node: node.to_string(),
            registry,
            settings,
            sha256: String::new(),
        };
        backup.sha256 = backup.checksum();
        backup
    }

    fn checksum(&self) -> String {
        let covered = Covered {
            format: self.format,
            cluster_id: &self.cluster_id,
            written_ms: self.written_ms,
            node: &self.node,
            registry: &self.registry,
            settings: &self.settings,
        };
        // Plain data with string keys: serializing it cannot fail.
        sha256_hex(&serde_json::to_vec(&covered).unwrap_or_default())
    }

    /// The bytes stored (indented: operators read backups).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec_pretty(self).map_err(|e| format!("cannot encode the backup: {e}"))
    }

    /// Reads and verifies a stored backup named `name`, for cluster `cluster_id`:
    /// it parses, is of a format this dram reads, its checksum holds, and its
    /// name and content agree. The error says what is wrong.
    pub fn decode(bytes: &[u8], name: &BackupName, cluster_id: &str) -> Result<Backup, String> {
        let backup: Backup =
            serde_json::from_slice(bytes).map_err(|e| format!("not a backup: {e}"))?;
        if backup.format != FORMAT {
            return Err(format!(
                "format {} is not one this dram reads ({FORMAT})",
                backup.format
            ));
        }
        if backup.checksum() != backup.sha256 {
            return Err("checksum mismatch: the object is damaged or was edited".into());
        }
        if backup.written_ms != name.written_ms || backup.node != name.node {
            return Err("its name does not match its content".into());
        }
        if backup.cluster_id != cluster_id {
            return Err(format!(
                "written by cluster {:?}, not {cluster_id:?}",
                backup.cluster_id
            ));
        }
        Ok(backup)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A backup's name, parsed. Orders as the names sort: by time first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackupName {
    pub written_ms: u64,
    pub node: String,
    /// 8 hex digits drawn by the writer.
    pub nonce: String,
}

impl BackupName {
    pub fn new(written_ms: u64, node: &str, nonce: u32) -> BackupName {
        BackupName {
            written_ms,
            node: node.to_string(),
            nonce: format!("{nonce:08x}"),
        }
    }

    /// `None` when `name` is not a backup's name.
    pub fn parse(name: &str) -> Option<BackupName> {
        let rest = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
        let (ms, rest) = rest.split_at_checked(16)?;
        if !ms.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (node, nonce) = rest.strip_prefix('-')?.rsplit_once('-')?;
        let hex = |s: &str| {
            s.len() == 8
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !crate::names::is_valid_name(node) || !hex(nonce) {
            return None;
        }
        Some(BackupName {
            written_ms: ms.parse().ok()?,
            node: node.to_string(),
            nonce: nonce.to_string(),
        })
    }
}

impl fmt::Display for BackupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{NAME_PREFIX}{:016}-{}-{}{NAME_SUFFIX}",
            self.written_ms, self.node, self.nonce
        )
    }
}

/// The backups pruning deletes, given every backup listed and whether it is
/// valid: the valid ones older than the `keep` newest valid ones. Objects that
/// are not valid backups are never deleted (they may be another cluster's, or
/// worth a look); listings show them as `valid: false`.
pub fn to_prune(listed: &[(BackupName, bool)], keep: usize) -> Vec<BackupName> {
    let mut valid: Vec<&BackupName> = listed
        .iter()
        .filter(|(_, valid)| *valid)
        .map(|(name, _)| name)
        .collect();
    valid.sort_by(|a, b| b.cmp(a));
    valid.into_iter().skip(keep).cloned().collect()
}

/// The configuration a backup records: what a rebuilt cluster would want
/// again — `[cluster]` without addresses and seeds, and the node-independent
/// sections (`[http]` without its TLS files). Never `[node]`, `[[disks]]`,
/// `[store]` or `[auth]` (addresses, paths, credentials and secrets).
pub fn settings(config: &Config) -> Value {
    let value = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
    let mut cluster = value(serde_json::to_value(&config.cluster));
    if let Some(map) = cluster.as_object_mut() {
        for key in ["gossip_listen", "gossip_advertise", "seeds"] {
            map.remove(key);
        }
    }
    let mut out = Map::new();
    out.insert("cluster".into(), cluster);
    for (section, settings) in [
        ("backup", serde_json::to_value(&config.backup)),
        ("download", serde_json::to_value(&config.download)),
        ("cache", serde_json::to_value(&config.cache)),
        ("trash", serde_json::to_value(&config.trash)),
        ("index", serde_json::to_value(&config.index)),
        ("http", serde_json::to_value(&config.http)),
        ("query", serde_json::to_value(&config.query)),
    ] {
        out.insert(section.into(), value(settings));
    }
    // Certificate and key paths are each member's own.
    if let Some(http) = out.get_mut("http").and_then(Value::as_object_mut) {
        http.retain(|key, _| !key.starts_with("tls"));
    }
    Value::Object(out)
}

/// The settings whose values differ between two [`settings`] objects, as
/// dotted paths (`cluster.primary_settle_secs`), sorted.
pub fn settings_differ(a: &Value, b: &Value) -> Vec<String> {
    fn leaves(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, value, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let (mut left, mut right) = (BTreeMap::new(), BTreeMap::new());
    leaves("", a, &mut left);
    leaves("", b, &mut right);
    let mut paths: Vec<String> = left
        .keys()
        .chain(right.keys())
        .filter(|path| left.get(*path) != right.get(*path))
        .cloned()
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::AliasRecord;
    use crate::hlc::Hlc;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        registry.aliases.insert(
            "sales".into(),
            AliasRecord {
                name: "sales".into(),
                target: Some("sales-1".into()),
                version: Hlc {
                    ms: 5,
                    counter: 0,
                    node: "n1".into(),
                },
                updated_ms: 5,
            },
        );
        registry
    }

    #[test]
    fn names_round_trip_and_sort_by_time() {
        let a = BackupName::new(9, "n-2.x", 0xab);
        assert_eq!(
            a.to_string(),
            "dram-backup-0000000000000009-n-2.x-000000ab.json"
        );
        assert_eq!(BackupName::parse(&a.to_string()), Some(a.clone()));
        let b = BackupName::new(10, "a", 0);
        let c = BackupName::new(100_000, "a", 0);
        let mut names = [c.to_string(), a.to_string(), b.to_string()];
        names.sort();
        assert_eq!(names, [a.to_string(), b.to_string(), c.to_string()]);
        assert!(a < b && b < c);
        for bad in [
            "dram-backup-000000000000009-n1-000000ab.json",
            "dram-backup-0000000000000009-n1-000000ag.json",
            "dram-backup-0000000000000009-n1-000000ab.json.tmp",
            "dram-backup-000000000000000x-n1-000000ab.json",
            "dram-backup-0000000000000009--000000ab.json",
            "dram-backup-0000000000000009-../x-000000ab.json",
            "other.json",
        ] {
            assert_eq!(BackupName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn decode_verifies_what_encode_wrote() {
        let backup = Backup::new("dram", "n1", 42, registry(), json_settings());
        let name = BackupName::new(42, "n1", 7);
        let bytes = backup.encode().unwrap();
        assert_eq!(Backup::decode(&bytes, &name, "dram").unwrap(), backup);

        // Truncated: does not parse.
        let err = Backup::decode(&bytes[..bytes.len() / 2], &name, "dram").unwrap_err();
        assert!(err.starts_with("not a backup"), "{err}");
        // Edited but still JSON: the checksum catches it.
        let edited = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("sales-1", "sales-2");
        let err = Backup::decode(edited.as_bytes(), &name, "dram").unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        // Renamed, another cluster's, another format.
        let err = Backup::decode(&bytes, &BackupName::new(43, "n1", 7), "dram").unwrap_err();
        assert!(err.contains("name"), "{err}");
        let err = Backup::decode(&bytes, &name, "other").unwrap_err();
        assert!(err.contains("cluster"), "{err}");
        let mut future = backup.clone();
        future.format = 2;
        future.sha256 = future.checksum();
        let err = Backup::decode(&future.encode().unwrap(), &name, "dram").unwrap_err();
        assert!(err.contains("format 2"), "{err}");
    }

    fn json_settings() -> Value {
        settings(&Config::default())
    }

    #[test]
    fn pruning_keeps_the_newest_valid_and_never_deletes_invalid_objects() {
        let n = |ms| BackupName::new(ms, "n1", 0);
        let listed = vec![
            (n(1), true),
            (n(2), false),
            (n(3), true),
            (n(4), true),
            (n(5), false),
            (n(6), true),
        ];
        assert_eq!(to_prune(&listed, 2), [n(3), n(1)]);
        assert_eq!(to_prune(&listed, 4), Vec::<BackupName>::new());
        assert_eq!(to_prune(&listed, 1), [n(4), n(3), n(1)]);
        assert!(to_prune(&[], 1).is_empty());
    }

    #[test]
    fn settings_leave_out_addresses_and_secrets() {
        let mut config = Config::default();
        config.auth.admin_token = Some("secret-token".into());
        config.store.secret_access_key = Some("secret-key".into());
        let value = settings(&config);
        let text = value.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(value["cluster"].get("seeds").is_none());
        assert!(value["cluster"].get("gossip_listen").is_none());
        assert!(value["http"].get("max_body_bytes").is_some());
        assert!(value["http"].get("tls_cert").is_none());
        assert_eq!(value["cluster"]["primary_settle_secs"], 10);

        let mut other = config.clone();
        other.cluster.primary_settle_secs = 1;
        other.trash.lifetime_secs = 5;
        other.cluster.seeds = vec!["127.0.0.1:1".into()];
        assert_eq!(
            settings_differ(&settings(&other), &value),
            ["cluster.primary_settle_secs", "trash.lifetime_secs"]
        );
        assert!(settings_differ(&value, &value).is_empty());
    }
}
