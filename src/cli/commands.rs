//! What each command does: run a node, publish a folder, and the client
//! commands that talk to a node's API.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use dram::client::Client;
use dram::storage::{Source, SourceUrl};
use dram::{Config, Node};

use super::args::*;
use super::output::*;
use crate::segment;

pub(crate) async fn serve(config: Config) -> Result<()> {
    let server = dram::builtin::register(Node::builder(config))
        .serve()
        .await?;
    eprintln!(
        "dram node {} listening on {}",
        server.node.id(),
        server.url()
    );
    shutdown_signal().await;
    eprintln!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub(crate) async fn publish(
    dir: &std::path::Path,
    url: &str,
    config: &Config,
    concurrency: usize,
    shard_keys: Vec<(String, String)>,
) -> Result<()> {
    let plan = dram::publish::plan(dir)?.with_shard_keys(shard_keys)?;
    let target = SourceUrl::resolve(&config.store.url, url)?;
    let source = Source::open(&target, &config.store, true)?;
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(plan.total_bytes),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    let manifest = dram::publish::publish(&plan, &source, concurrency, &|n| bar.inc(n)).await;
    bar.finish_and_clear();
    let manifest = manifest?;
    println!(
        "published {} files ({} bytes) to {} (version {})",
        manifest.files.len(),
        manifest.total_bytes(),
        source.url,
        manifest.version()
    );
    Ok(())
}

fn replicas(text: &str) -> Result<Value> {
    if text == "all" {
        return Ok(json!("all"));
    }
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(json!(n)),
        _ => bail!("--replicas must be a positive number or \"all\", not {text:?}"),
    }
}

pub(crate) async fn db(command: DbCommand, node: &NodeArg) -> Result<()> {
    match command {
        DbCommand::Add {
            name,
            url,
            lazy,
            replicas: count,
            keep,
            wait,
            timeout,
        } => {
            let client = node.client()?;
            let body = json!({
                "name": name,
                "source": url,
                "mode": if lazy { "lazy" } else { "full" },
                "replicas": replicas(&count)?,
                "keep": keep,
            });
            let mut info = client.post("/v1/databases", &body).await?;
            if wait {
                info = wait_for_database(&client, &name, timeout.map(Duration::from_secs)).await?;
            }
            if node.json {
                print_json(&info);
            } else {
                println!("{name}: {}", info["state"].as_str().unwrap_or("?"));
            }
            if let Some(error) = info["error"].as_str() {
                bail!(
                    "database {name} failed: {error}; it is tried again until `dram db rm {name}` \
                     removes it"
                );
            }
            Ok(())
        }
        DbCommand::Ls => {
            let list = node.client()?.get("/v1/databases").await?;
            if node.json {
                print_json(&list);
                return Ok(());
            }
            println!(
                "{:<32} {:<8} {:<5} {:>6} {:>8} {:>14} {:>7}",
                "NAME", "STATE", "MODE", "SHARDS", "FILES", "BYTES", "DONE"
            );
            for db in list["databases"].as_array().into_iter().flatten() {
                let bytes = db["bytes"].as_u64().unwrap_or(0);
                let done = db["bytes_done"].as_u64().unwrap_or(0);
                // A failed load has done nothing worth a percentage.
                let pct = match (db["state"].as_str(), bytes) {
                    (Some("failed"), _) => "-".to_string(),
                    (_, 0) => "100.0%".to_string(),
                    _ => format!("{:.1}%", done as f64 * 100.0 / bytes as f64),
                };
                println!(
                    "{:<32} {:<8} {:<5} {:>6} {:>8} {:>14} {:>7}",
                    db["name"].as_str().unwrap_or("?"),
                    db["state"].as_str().unwrap_or("?"),
                    db["mode"].as_str().unwrap_or("?"),
                    db["shard_count"].as_u64().unwrap_or(0),
                    db["files"].as_u64().unwrap_or(0),
                    human(bytes),
                    pct
                );
            }
            for db in list["databases"].as_array().into_iter().flatten() {
                if let Some(error) = db["error"].as_str().filter(|_| db["state"] == "failed") {
                    let name = db["name"].as_str().unwrap_or("?");
                    println!("{name} failed: {error}\n  remove it: dram db rm {name}");
                }
            }
            Ok(())
        }
        DbCommand::Show { name } => {
            let info = node.client()?.get(&format!("/v1/databases/{name}")).await?;
            if node.json {
                print_json(&info);
            } else {
                print!("{}", database_tables(&info));
            }
            Ok(())
        }
        DbCommand::Rm { name } => {
            let info = node
                .client()?
                .delete(&format!("/v1/databases/{name}"))
                .await?;
            if node.json {
                print_json(&info);
                return Ok(());
            }
            match info["purge_at_ms"].as_u64() {
                Some(at) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let hours = at.saturating_sub(now) as f64 / 3_600_000.0;
                    println!(
                        "{name}: moved to trash; purged in {hours:.0} h ({}), `dram db restore {name}` \
                         until then",
                        local_time(at)
                    );
                }
                None => println!("{name}: moved to trash"),
            }
            Ok(())
        }
        DbCommand::Restore { name } => {
            let info = node
                .client()?
                .post(&format!("/v1/databases/{name}/restore"), &json!({}))
                .await?;
            println!("{name}: {}", info["state"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}

/// Polls `name` until it is no longer loading (or `timeout` passes),
/// showing its progress: a bar on a terminal (bytes, rate, ETA, parts
/// ready), a plain line every 5 s otherwise.
async fn wait_for_database(
    client: &Client,
    name: &str,
    timeout: Option<Duration>,
) -> Result<Value> {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr())
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    let started = std::time::Instant::now();
    let mut said = started;
    loop {
        let info = client.get(&format!("/v1/databases/{name}")).await?;
        let (done, total) = (
            info["bytes_done"].as_u64().unwrap_or(0),
            info["bytes"].as_u64().unwrap_or(0),
        );
        let parts: Vec<&Value> = info["shards"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(info.get("global").filter(|g| !g.is_null()))
            .collect();
        let ready = parts.iter().filter(|p| p["state"] == "ready").count();
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(format!("{ready}/{} parts ready", parts.len()));
        if info["state"] != "loading" {
            bar.finish_and_clear();
            return Ok(info);
        }
        if !terminal && said.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "{name}: {done}/{total} bytes, {ready}/{} parts ready",
                parts.len()
            );
            said = std::time::Instant::now();
        }
        if let Some(timeout) = timeout
            && started.elapsed() >= timeout
        {
            bar.abandon();
            bail!(
                "{name} is still loading after {} s (--timeout): {done}/{total} bytes, {ready}/{} \
                 parts ready; the load goes on (`dram db show {name}` follows it)",
                timeout.as_secs(),
                parts.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn alias(command: AliasCommand, node: &NodeArg) -> Result<()> {
    match command {
        AliasCommand::Set {
            name,
            target,
            warm: false,
        } => {
            node.client()?
                .put(&format!("/v1/aliases/{name}"), &json!({ "target": target }))
                .await
                .with_context(|| format!("setting alias {name}"))?;
            println!("{name} -> {target}");
        }
        AliasCommand::Set {
            name,
            target,
            warm: true,
        } => {
            let batch = json!({
                "actions": [{"set": {"name": name, "target": target}}],
                "warm": true,
            });
            let answer = node
                .client()?
                .post("/v1/aliases/_batch", &batch)
                .await
                .with_context(|| format!("warming {target} and setting alias {name}"))?;
            if node.json {
                print_json(&answer);
                return Ok(());
            }
            let warmed = &answer["warmed"];
            println!(
                "{name} -> {target} (warmed in {:.1} s: {} lazy files fetched, {} on {} members; {} recent queries replayed, {} failed)",
                warmed["took_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                warmed["lazy_files"],
                human(warmed["lazy_bytes"].as_u64().unwrap_or(0)),
                warmed["members"],
                warmed["queries"],
                warmed["failed"],
            );
            for error in warmed["errors"].as_array().into_iter().flatten() {
                println!("  {}", error.as_str().unwrap_or("?"));
            }
        }
        AliasCommand::Rm { name } => {
            node.client()?
                .delete(&format!("/v1/aliases/{name}"))
                .await
                .with_context(|| format!("removing alias {name}"))?;
            println!("{name} removed");
        }
        AliasCommand::Ls => {
            let list = node.client()?.get("/v1/aliases").await?;
            if node.json {
                print_json(&list);
                return Ok(());
            }
            for alias in list["aliases"].as_array().into_iter().flatten() {
                println!(
                    "{} -> {}",
                    alias["name"].as_str().unwrap_or("?"),
                    alias["target"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

pub(crate) async fn cluster(command: ClusterCommand, node: &NodeArg) -> Result<()> {
    match command {
        ClusterCommand::Status => {
            let status = node.client()?.get("/v1/cluster").await?;
            if node.json {
                print_json(&status);
                return Ok(());
            }
            println!(
                "cluster {}  health {}  (seen from {})",
                status["cluster_id"].as_str().unwrap_or("?"),
                status["health"].as_str().unwrap_or("?"),
                status["node"].as_str().unwrap_or("?")
            );
            match status["primary"]["id"].as_str() {
                Some(primary) => println!("primary {primary} (term {})", status["primary"]["term"]),
                None => println!("no primary (no candidate named by a majority of known members)"),
            }
            for reason in status["reasons"].as_array().into_iter().flatten() {
                println!("  {}", reason.as_str().unwrap_or_default());
            }
            println!(
                "{:<20} {:<5} {:<22} {:<10} {:>12} {:>12} {:>7} {:>12}",
                "member", "live", "http", "zone", "disk free", "disk total", "shards", "bytes"
            );
            for member in status["members"].as_array().into_iter().flatten() {
                let (mut free, mut total) = (0, 0);
                for disk in member["disks"]
                    .as_object()
                    .into_iter()
                    .flat_map(|d| d.values())
                {
                    free += disk["free"].as_u64().unwrap_or(0);
                    total += disk["total"].as_u64().unwrap_or(0);
                }
                println!(
                    "{:<20} {:<5} {:<22} {:<10} {:>12} {:>12} {:>7} {:>12}",
                    member["id"].as_str().unwrap_or("?"),
                    if member["live"] == true {
                        "yes"
                    } else {
                        "DEAD"
                    },
                    member["node"]["http"].as_str().unwrap_or("-"),
                    member["node"]["zone"].as_str().unwrap_or(""),
                    human(free),
                    human(total),
                    member["inventory"]["ready"].as_u64().unwrap_or(0),
                    human(member["inventory"]["bytes"].as_u64().unwrap_or(0)),
                );
            }
            for disagreement in status["disagreements"].as_array().into_iter().flatten() {
                println!(
                    "registry of {} differs from the majority's since {} ms",
                    disagreement["node"].as_str().unwrap_or("?"),
                    disagreement["since_ms"]
                );
            }
            Ok(())
        }
        ClusterCommand::Shards { database } => {
            let path = format!("/v1/cluster/shards?database={}", segment(&database)?);
            let holders = node.client()?.get(&path).await?;
            if node.json {
                print_json(&holders);
                return Ok(());
            }
            let show = |label: &str, list: &Value| {
                let holders: Vec<String> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| {
                        let state = h["state"].as_str().unwrap_or("?");
                        let node = h["node"].as_str().unwrap_or("?");
                        if state == "downloading" {
                            format!("{node}:{state}({}%)", h["pct"])
                        } else {
                            format!("{node}:{state}")
                        }
                    })
                    .collect();
                println!("{label:<20} {}", holders.join(" "));
            };
            show("global", &holders["global"]);
            for (id, list) in holders["shards"].as_object().into_iter().flatten() {
                show(id, list);
            }
            Ok(())
        }
        ClusterCommand::Gc => {
            let report = node.client()?.get("/v1/gc").await?;
            if node.json {
                print_json(&report);
                return Ok(());
            }
            let full: Vec<&str> = report["full_disks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if full.is_empty() {
                println!("no disk past its high watermark: nothing is collected now");
            } else {
                println!("past their high watermark: {}", full.join(", "));
            }
            for entry in report["eligible"].as_array().into_iter().flatten() {
                let read = entry["last_read_ms"]
                    .as_u64()
                    .map_or("never read".to_string(), |ms| {
                        format!("last read at {ms} ms")
                    });
                println!(
                    "{:<24} {:>10}  {read}",
                    entry["database"].as_str().unwrap_or("?"),
                    human(entry["bytes"].as_u64().unwrap_or(0))
                );
            }
            Ok(())
        }
        ClusterCommand::Plan { database, replicas } => {
            let client = node.client()?;
            if let (Some(database), Some(replicas)) = (database, replicas) {
                let path = format!(
                    "/v1/plan?database={}&replicas={}",
                    segment(&database)?,
                    segment(&replicas)?
                );
                let what_if = client.get(&path).await?;
                if node.json {
                    print_json(&what_if);
                    return Ok(());
                }
                println!(
                    "{database}: replicas {} -> {}",
                    what_if["replicas_now"], what_if["replicas"]
                );
                for use_ in what_if["nodes"].as_array().into_iter().flatten() {
                    let bytes = |key: &str| use_[key].as_u64().unwrap_or(0);
                    println!(
                        "{:<20} {:>10} -> {:>10}",
                        use_["node"].as_str().unwrap_or("?"),
                        human(bytes("bytes_now")),
                        human(bytes("bytes_after"))
                    );
                }
                return Ok(());
            }
            let plan = client.get("/v1/plan").await?;
            if node.json {
                print_json(&plan);
                return Ok(());
            }
            let primary = plan["primary"]["id"].as_str().unwrap_or("none");
            println!(
                "plan of {}  (primary {primary})",
                plan["node"].as_str().unwrap_or("?")
            );
            let keys = ["downloads", "trashes", "waiting"];
            if keys
                .iter()
                .all(|key| plan[*key].as_array().is_none_or(Vec::is_empty))
            {
                println!("nothing to do: every shard has its copies where placement wants them");
            }
            for (kind, key) in [
                ("download", "downloads"),
                ("trash", "trashes"),
                ("wait", "waiting"),
            ] {
                for action in plan[key].as_array().into_iter().flatten() {
                    println!(
                        "{kind:<9} {}/{} on {}: {}",
                        action["database"].as_str().unwrap_or("?"),
                        action["shard"].as_str().unwrap_or("?"),
                        action["node"].as_str().unwrap_or("?"),
                        action["reason"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
    }
}

pub(crate) async fn admin(command: AdminCommand, node: &NodeArg) -> Result<()> {
    match command {
        AdminCommand::Backup => {
            let written = node.client()?.post("/v1/admin/backup", &json!({})).await?;
            println!(
                "wrote {} ({})",
                written["backup"].as_str().unwrap_or("?"),
                human(written["bytes"].as_u64().unwrap_or(0))
            );
        }
        AdminCommand::Backups => {
            let listing = node.client()?.get("/v1/admin/backups").await?;
            if node.json {
                print_json(&listing);
                return Ok(());
            }
            println!("backups in {}", listing["url"].as_str().unwrap_or("?"));
            for backup in listing["backups"].as_array().into_iter().flatten() {
                let state = match backup["error"].as_str() {
                    None => "valid".to_string(),
                    Some(error) => format!("NOT VALID: {error}"),
                };
                println!(
                    "{:<64} {:<12} {:>10}  {state}",
                    backup["name"].as_str().unwrap_or("?"),
                    backup["node"].as_str().unwrap_or("?"),
                    human(backup["bytes"].as_u64().unwrap_or(0))
                );
            }
        }
        AdminCommand::Restore { name } => {
            let report = node
                .client()?
                .post("/v1/admin/restore", &json!({ "backup": name }))
                .await?;
            let restored = &report["restored"];
            println!(
                "restored {name}: {} definitions, {} aliases, {} pins",
                restored["definitions"], restored["aliases"], restored["pins"]
            );
            for change in report["overwrote"].as_array().into_iter().flatten() {
                println!(
                    "  {} {}: {} -> {}",
                    change["kind"].as_str().unwrap_or("?"),
                    change["name"].as_str().unwrap_or("?"),
                    change["was"],
                    change["now"]
                );
            }
            for setting in report["settings_differ"].as_array().into_iter().flatten() {
                println!(
                    "  setting {} differs from this node's configuration (not applied)",
                    setting.as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}
