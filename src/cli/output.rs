//! How answers are printed: sizes, JSON and SQL result tables.

use serde_json::Value;

/// Bytes as `12.3 GiB`.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub(crate) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// A text table: a header, a rule, a line per row; columns as wide as
/// their widest cell, numbers (cells starting with a digit) right-aligned.
pub(crate) fn table(columns: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .fold(c.chars().count(), usize::max)
        })
        .collect();
    let numeric: Vec<bool> = (0..columns.len())
        .map(|i| {
            let cells = || rows.iter().filter_map(|r| r.get(i));
            cells().any(|c| !c.is_empty())
                && cells().all(|c| {
                    c.is_empty() || c == "-" || c.starts_with(|c: char| c.is_ascii_digit())
                })
        })
        .collect();
    let line = |cells: &[String], header: bool| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(&numeric)
            .map(|((c, w), n)| {
                if *n && !header {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let mut out = line(&header, true);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&rule, true));
    for row in rows {
        out.push_str(&line(row, false));
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn count(value: &Value) -> String {
    value
        .as_u64()
        .map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn when(value: &Value) -> String {
    value.as_u64().map_or_else(|| "-".to_string(), local_time)
}

/// `db show`: the database's state, then a table of its parts (global data
/// and shards) and, in a cluster, which members hold each shard.
pub(crate) fn database_tables(info: &Value) -> String {
    let mut out = format!(
        "{}  {}  {}  replicas {}{}\n",
        text(&info["name"]),
        text(&info["state"]),
        text(&info["mode"]),
        text(&info["replicas"]),
        if info["keep"] == true { "  keep" } else { "" },
    );
    out.push_str(&format!("source   {}\n", text(&info["source"])));
    if let Some(version) = info["version"].as_str() {
        out.push_str(&format!("version  {version}\n"));
    }
    out.push_str(&format!(
        "size     {} in {} files, {} shards ({} done)\n",
        human(info["bytes"].as_u64().unwrap_or(0)),
        count(&info["files"]),
        count(&info["shard_count"]),
        human(info["bytes_done"].as_u64().unwrap_or(0)),
    ));
    for (label, key) in [
        ("created", "created_ms"),
        ("ready", "ready_ms"),
        ("trashed", "trashed_ms"),
        ("purged", "purge_at_ms"),
    ] {
        if info[key].is_u64() {
            out.push_str(&format!("{label:<8} {}\n", when(&info[key])));
        }
    }
    if let Some(error) = info["error"].as_str() {
        out.push_str(&format!("error    {error}\n"));
    }
    if let Some(remedy) = info["remedy"].as_str() {
        out.push_str(&format!("remedy   {remedy}\n"));
    }
    let parts: Vec<&Value> = info
        .get("global")
        .filter(|g| !g.is_null())
        .into_iter()
        .chain(info["shards"].as_array().into_iter().flatten())
        .collect();
    if !parts.is_empty() {
        let holders = |part: &Value| -> String {
            let list = match part["id"].as_str() {
                Some(id) => &info["holders"]["shards"][id],
                None => &info["holders"]["global"],
            };
            list.as_array()
                .into_iter()
                .flatten()
                .map(|h| format!("{}:{}", text(&h["node"]), text(&h["state"])))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rows: Vec<Vec<String>> = parts
            .iter()
            .map(|part| {
                vec![
                    part["id"].as_str().unwrap_or("global").to_string(),
                    text(&part["state"]),
                    text(&part["disk"]),
                    count(&part["files"]),
                    human(part["bytes"].as_u64().unwrap_or(0)),
                    count(&part["reads"]),
                    count(&part["queries"]),
                    when(&part["last_read_ms"]),
                    holders(part),
                    text(&part["error"]),
                ]
            })
            .collect();
        let columns = [
            "PART",
            "STATE",
            "DISK",
            "FILES",
            "BYTES",
            "READS",
            "QUERIES",
            "LAST READ",
            "HOLDERS",
            "ERROR",
        ];
        out.push('\n');
        out.push_str(&table(&columns, &rows));
    }
    out
}

/// `stats`: the node's counters, then its databases and its disks.
pub(crate) fn stats_tables(stats: &Value) -> String {
    let node = &stats["node"];
    let mut out = format!(
        "node {}  up {} s  downloaded {} in {} files ({} files already held; {} saved)\n",
        text(&node["id"]),
        count(&node["uptime_secs"]),
        human(node["bytes_downloaded"].as_u64().unwrap_or(0)),
        count(&node["files_downloaded"]),
        count(&node["files_deduplicated"]),
        human(node["dedup_saved_bytes"].as_u64().unwrap_or(0)),
    );
    let bytes = |v: &Value| human(v.as_u64().unwrap_or(0));
    let databases: Vec<Vec<String>> = stats["databases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                text(&d["name"]),
                text(&d["state"]),
                text(&d["mode"]),
                count(&d["shards"]),
                count(&d["files"]),
                bytes(&d["bytes"]),
                bytes(&d["bytes_local"]),
                bytes(&d["bytes_shared"]),
                count(&d["reads"]),
                count(&d["queries"]),
                when(&d["last_read_ms"]),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "DATABASE",
            "STATE",
            "MODE",
            "SHARDS",
            "FILES",
            "BYTES",
            "LOCAL",
            "SHARED",
            "READS",
            "QUERIES",
            "LAST READ",
        ],
        &databases,
    ));
    let disks: Vec<Vec<String>> = stats["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let total = d["total_bytes"].as_u64().unwrap_or(0);
            let free = d["free_bytes"].as_u64().unwrap_or(0);
            let pct = |n: u64| {
                if total == 0 {
                    "-".to_string()
                } else {
                    format!("{:.0}%", n as f64 * 100.0 / total as f64)
                }
            };
            vec![
                text(&d["id"]),
                text(&d["path"]),
                bytes(&d["used_by_dram_bytes"]),
                pct(total.saturating_sub(free)),
                bytes(&d["total_bytes"]),
                format!(
                    "{:.0}%",
                    d["high_watermark"].as_f64().unwrap_or(0.0) * 100.0
                ),
                d["max_bytes"]
                    .as_u64()
                    .map_or_else(|| "-".to_string(), human),
                if d["over_watermark"] == true {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "DISK",
            "PATH",
            "DRAM",
            "DISK USED",
            "SIZE",
            "WATERMARK",
            "MAX",
            "FULL",
        ],
        &disks,
    ));
    out
}

/// A `sql` answer as a text table: a header, a rule, a line per row.
pub(crate) fn sql_table(result: &serde_json::Value) -> String {
    let columns: Vec<&str> = result["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str())
        .collect();
    let rows: Vec<Vec<String>> = result["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| columns.iter().map(|c| text(&row[*c])).collect())
        .collect();
    let mut out = table(&columns, &rows);
    out.push_str(&format!("({} rows)\n", rows.len()));
    out
}

/// Milliseconds since the epoch as local time, `YYYY-MM-DD HH:MM`.
pub(crate) fn local_time(ms: u64) -> String {
    let secs = (ms / 1000) as libc::time_t;
    // SAFETY: `libc::tm` is plain data, for which all zeroes is a value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r writes only into `tm`, which we own; both
    // pointers are valid for the call.
    let converted = unsafe { libc::localtime_r(&secs, &mut tm) };
    if converted.is_null() {
        return format!("{ms} ms since 1970");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_answers_print_as_a_table() {
        let result = serde_json::json!({
            "columns": ["region", "total"],
            "rows": [{"region": "eu", "total": 18}, {"region": "asia", "total": null}]
        });
        assert_eq!(
            sql_table(&result),
            "region  total\n------  -----\neu         18\nasia\n(2 rows)\n"
        );
    }
}
