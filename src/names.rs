//! What counts as a valid name: databases, aliases and node ids share one rule,
//! shard ids another, and file paths inside a database must stay inside it.

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`: database, alias and node names.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[A-Za-z0-9_-]{1,64}`: shard ids.
pub fn is_valid_shard_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Checks a database name, with a message fit for a user.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name {name:?}: must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}"
        ))
    }
}

/// Checks a relative file path of a database: non-empty, `/`-separated, no empty,
/// `.` or `..` segments, no leading `/`, no backslash or NUL.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".to_string());
    }
    if path.len() > 1024 {
        return Err(format!("path longer than 1024 bytes: {path:?}"));
    }
    if path.starts_with('/') {
        return Err(format!("absolute path {path:?}"));
    }
    if path.contains('\\') || path.contains('\0') {
        return Err(format!("path {path:?} contains a backslash or NUL"));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(format!("path {path:?} has an empty segment")),
            "." | ".." => return Err(format!("path {path:?} has a {segment:?} segment")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("sales-2024.v1_a"));
        assert!(is_valid_name("a"));
        assert!(is_valid_name(&"a".repeat(128)));
        assert!(!is_valid_name(&"a".repeat(129)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("-a"));
        assert!(!is_valid_name(".a"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("é"));
    }

    #[test]
    fn shard_ids() {
        assert!(is_valid_shard_id("0"));
        assert!(is_valid_shard_id("_a-B9"));
        assert!(!is_valid_shard_id(""));
        assert!(!is_valid_shard_id("a.b"));
        assert!(!is_valid_shard_id(&"a".repeat(65)));
    }

    #[test]
    fn paths() {
        assert!(check_relative_path("shards/0/a.parquet").is_ok());
        assert!(check_relative_path("global/x").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "a//b",
            "a/./b",
            "a/",
            "a\\b",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
