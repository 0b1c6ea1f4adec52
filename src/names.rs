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

#[cfg(test)]
mod fuzz {
    //! Property tests (proptest, 2,000 cases each): the checks agree with a
    //! plain model of their pattern, and whatever they accept stays inside
    //! the folder it is joined to.

    use std::path::{Component, Path};

    use proptest::prelude::*;

    use super::*;

    /// Pieces that matter to names and paths: separators, dots, NUL, spaces,
    /// non-ASCII, encodings, long runs.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a"),
            Just("Z9"),
            Just("."),
            Just(".."),
            Just("/"),
            Just("\\"),
            Just("\0"),
            Just("-"),
            Just("_"),
            Just("é"),
            Just(" "),
            Just("%2e%2e"),
            Just("x.csv"),
        ]
        .prop_map(str::to_string)
    }

    fn tricky() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(piece(), 0..12).prop_map(|pieces| pieces.concat()),
            (1usize..200).prop_map(|n| "a".repeat(n)),
        ]
    }

    fn path_like() -> impl Strategy<Value = String> {
        prop_oneof![
            tricky(),
            proptest::collection::vec(piece(), 1..6).prop_map(|segments| segments.join("/")),
        ]
    }

    /// `relative` joined to a base stays strictly inside it, through plain
    /// components only.
    fn stays_inside(relative: &str) -> bool {
        let base = Path::new("/data/dbs/db");
        let joined = base.join(relative);
        joined.starts_with(base)
            && joined != base
            && Path::new(relative)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn names_match_their_pattern_and_are_one_segment(name in tricky()) {
            let b = name.as_bytes();
            let model = (1..=128).contains(&b.len())
                && b[0].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
            prop_assert_eq!(is_valid_name(&name), model);
            prop_assert_eq!(check_name("database", &name).is_ok(), model);
            if model {
                prop_assert!(stays_inside(&name));
                prop_assert_eq!(Path::new(&name).components().count(), 1);
            }
        }

        #[test]
        fn shard_ids_match_their_pattern_and_are_one_segment(id in tricky()) {
            let b = id.as_bytes();
            let model = (1..=64).contains(&b.len())
                && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_-".contains(c));
            prop_assert_eq!(is_valid_shard_id(&id), model);
            if model {
                prop_assert!(stays_inside(&id));
                prop_assert_eq!(Path::new(&id).components().count(), 1);
            }
        }

        #[test]
        fn accepted_relative_paths_stay_inside(path in path_like()) {
            if check_relative_path(&path).is_ok() {
                prop_assert!(stays_inside(&path), "{path:?}");
                prop_assert!(path.len() <= 1024);
                prop_assert!(!path.contains(['\0', '\\']));
                let bad = |s: &str| s.is_empty() || s == "." || s == "..";
                prop_assert!(!path.split('/').any(bad), "{path:?}");
            }
        }
    }
}
