//! The `dram` command: runs a node, publishes databases, and talks to a node's API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use dram::client::Client;
use dram::storage::{Source, SourceUrl};
use dram::{Config, Node};

#[derive(Parser)]
#[command(
    name = "dram",
    version,
    about = "Serve read-only databases from object storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (embedded defaults without --config; flags override both).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: ServeOverrides,
    },
    /// Upload a local folder as a database, with its manifest.
    Publish {
        /// Folder with shards/<id>/ and global/ (or flat: one shard "0").
        dir: PathBuf,
        /// Destination: file://…, s3://bucket/prefix, or a name under store.url.
        url: String,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Files uploaded at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Databases on a node.
    #[command(subcommand)]
    Db(DbCommand),
    /// Aliases on a node.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Run an analysis over a database (or alias) and print its answer.
    Query {
        /// Database or alias.
        database: String,
        /// Analysis name (`dram analyses` lists them).
        analysis: String,
        /// The analysis's parameters, as JSON.
        #[arg(long)]
        params: Option<String>,
        /// Map only this shard (repeat for several); all shards without it.
        #[arg(long = "shard", value_name = "ID")]
        shards: Vec<String>,
        /// Deadline in milliseconds (the node's query.timeout_ms without it).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Print only the result, without the meta.
        #[arg(long)]
        result_only: bool,
        /// Ask the holders directly (the node only tells where the shards are)
        /// and reduce here; built-in analyses only.
        #[arg(long)]
        direct: bool,
        /// Answer without shards no live member holds (listed in the meta).
        #[arg(long)]
        allow_partial: bool,
        /// The cluster secret the holders' map endpoint needs (with --direct).
        #[arg(long, env = "DRAM_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: Option<String>,
        #[command(flatten)]
        node: NodeArg,
    },
    /// The analyses a node serves.
    Analyses {
        #[command(flatten)]
        node: NodeArg,
    },
    /// Per-database and per-disk statistics of a node.
    Stats {
        #[command(flatten)]
        node: NodeArg,
    },
    /// SQL over a database's Parquet and CSV tables (the `sql` analysis): a
    /// table on a terminal, JSON rows otherwise.
    Sql {
        /// Database or alias.
        database: String,
        /// The query (split between the shards and this node by dram).
        #[arg(required_unless_present = "map", conflicts_with_all = ["map", "reduce"])]
        sql: Option<String>,
        /// Instead of a query: SQL each shard runs…
        #[arg(long, requires = "reduce")]
        map: Option<String>,
        /// …and SQL over table `partials` (every shard's rows of --map).
        #[arg(long, requires = "map")]
        reduce: Option<String>,
        /// Print JSON even on a terminal.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeArg,
    },
    /// A signed token that lets its holder query one database or alias until
    /// it expires (needs the admin token when one is set).
    Token {
        /// The database or alias the token opens.
        database: String,
        /// Seconds it is valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[command(flatten)]
        node: NodeArg,
    },
    /// The cluster as a node sees it.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Backups of the registry (definitions, aliases, pins) in backup.url.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Write a backup of the registry now.
    Backup {
        #[command(flatten)]
        node: NodeArg,
    },
    /// List the backups, newest first, with their validity.
    Backups {
        #[command(flatten)]
        node: NodeArg,
    },
    /// Make the cluster's registry equal backup NAME's (entries made since are removed).
    Restore {
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
}

/// Settings of `dram serve` that override the config file.
#[derive(Args, Clone, Default)]
struct ServeOverrides {
    /// node.id
    #[arg(long = "id", value_name = "ID")]
    node_id: Option<String>,
    /// node.data_dir
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// node.http_listen
    #[arg(long = "http", value_name = "ADDR")]
    http_listen: Option<String>,
    /// cluster.gossip_listen
    #[arg(long = "gossip", value_name = "ADDR")]
    gossip_listen: Option<String>,
    /// cluster.seeds (repeat for several)
    #[arg(long = "seed", value_name = "ADDR")]
    seeds: Vec<String>,
}

impl ServeOverrides {
    fn apply(self, config: &mut Config) {
        if let Some(id) = self.node_id {
            config.node.id = id;
        }
        if let Some(dir) = self.data_dir {
            config.node.data_dir = dir;
        }
        if let Some(http) = self.http_listen {
            config.node.http_listen = http;
        }
        if let Some(gossip) = self.gossip_listen {
            config.cluster.gossip_listen = gossip;
        }
        if !self.seeds.is_empty() {
            config.cluster.seeds = self.seeds;
        }
    }
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Health, members (live or dead), their disks and what they serve.
    Status {
        #[command(flatten)]
        node: NodeArg,
    },
    /// Which members hold each shard of a database, and in which state.
    Shards {
        database: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// The databases garbage collection may delete, coldest first, and whether a
    /// full disk makes it run now.
    Gc {
        #[command(flatten)]
        node: NodeArg,
    },
    /// What placement would do now (downloads, trashes, extra copies waiting),
    /// or with --database and --replicas how disk use per node would change.
    Plan {
        #[arg(long, requires = "replicas")]
        database: Option<String>,
        /// Another replication factor: a number or "all".
        #[arg(long, requires = "database")]
        replicas: Option<String>,
        #[command(flatten)]
        node: NodeArg,
    },
}

#[derive(Args, Clone)]
struct NodeArg {
    /// The node's URL.
    #[arg(long, env = "DRAM_NODE", default_value = "http://127.0.0.1:7070")]
    node: String,
    /// A token for the node: the admin token, or a signed token for a query.
    #[arg(long, env = "DRAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificates to trust for an https:// node (its own certificate).
    #[arg(long, env = "DRAM_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
}

impl NodeArg {
    /// A client of the node, sending the token and trusting the CA when given.
    fn client(&self) -> Result<Client> {
        let client = Client::new(&self.node).with_token(self.token.clone());
        let Some(path) = &self.ca else {
            return Ok(client);
        };
        let pem =
            std::fs::read(path).with_context(|| format!("--ca: cannot read {}", path.display()))?;
        client
            .with_ca_pem(&pem)
            .with_context(|| format!("--ca {}", path.display()))
    }
}

#[derive(Subcommand)]
enum DbCommand {
    /// Load a database on the node.
    Add {
        name: String,
        /// Source URL, or a name under the node's store.url.
        url: String,
        /// Fetch shard files on first use instead of now.
        #[arg(long)]
        lazy: bool,
        /// Copies to keep in a cluster: a number or "all".
        #[arg(long, default_value = "1")]
        replicas: String,
        /// Never collect it as garbage, even when no alias points to it.
        #[arg(long)]
        keep: bool,
        /// Wait until the database is ready (or failed).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        node: NodeArg,
    },
    /// List databases.
    Ls {
        #[command(flatten)]
        node: NodeArg,
    },
    /// Show one database with its shards and progress.
    Show {
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Delete a database (to the trash; restorable until purged).
    Rm {
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Bring a database back from the trash.
    Restore {
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
}

#[derive(Subcommand)]
enum AliasCommand {
    /// Point NAME at database TARGET.
    Set {
        name: String,
        target: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Remove an alias.
    Rm {
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// List aliases.
    Ls {
        #[command(flatten)]
        node: NodeArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if serving { "info" } else { "warn" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(path) => Ok(Config::from_file(path)?),
        None => Ok(Config::default()),
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve { config, overrides } => {
            let mut config = load_config(config.as_ref())?;
            overrides.apply(&mut config);
            // Secrets from the environment override the file.
            for (variable, slot) in [
                ("DRAM_ADMIN_TOKEN", &mut config.auth.admin_token),
                ("DRAM_CLUSTER_SECRET", &mut config.auth.cluster_secret),
                ("DRAM_TOKEN_KEY", &mut config.auth.token_key),
            ] {
                if let Ok(value) = std::env::var(variable) {
                    *slot = Some(value);
                }
            }
            config.validate()?;
            serve(config).await
        }
        Command::Cluster(command) => cluster(command).await,
        Command::Admin(command) => admin(command).await,
        Command::Sql {
            database,
            sql,
            map,
            reduce,
            json,
            node,
        } => {
            let params = match sql {
                Some(sql) => serde_json::json!({ "sql": sql }),
                None => serde_json::json!({ "map_sql": map, "reduce_sql": reduce }),
            };
            let answer = node
                .client()?
                .post(
                    &format!("/v1/query/{database}/sql"),
                    &serde_json::json!({ "params": params }),
                )
                .await?;
            let result = &answer["result"];
            if json || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                println!("{}", serde_json::to_string_pretty(&result["rows"])?);
            } else {
                print!("{}", sql_table(result));
            }
            Ok(())
        }
        Command::Token {
            database,
            ttl,
            node,
        } => {
            let answer = node
                .client()?
                .post(
                    "/v1/tokens",
                    &serde_json::json!({"database": database, "ttl": ttl}),
                )
                .await?;
            println!("{}", answer["token"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Publish {
            dir,
            url,
            config,
            concurrency,
        } => publish(&dir, &url, &load_config(config.as_ref())?, concurrency).await,
        Command::Db(command) => db(command).await,
        Command::Alias(command) => alias(command).await,
        Command::Query {
            database,
            analysis,
            params,
            shards,
            timeout_ms,
            result_only,
            direct,
            allow_partial,
            cluster_secret,
            node,
        } => {
            let mut body = json!({});
            if let Some(params) = params {
                let params: Value = serde_json::from_str(&params)
                    .with_context(|| format!("--params is not valid JSON: {params}"))?;
                body["params"] = params;
            }
            if !shards.is_empty() {
                body["shards"] = json!(shards);
            }
            if let Some(ms) = timeout_ms {
                body["timeout_ms"] = json!(ms);
            }
            if allow_partial {
                body["allow_partial"] = json!(true);
            }
            let path = format!("/v1/query/{}/{}", segment(&database)?, segment(&analysis)?);
            let client = node.client()?.with_cluster_secret(cluster_secret);
            let answer = if direct {
                let request: dram::query::QueryRequest = serde_json::from_value(body)?;
                let answer = client
                    .query_direct(&dram::builtin::analyses(), &database, &analysis, request)
                    .await?;
                serde_json::to_value(answer)?
            } else {
                client.post(&path, &body).await?
            };
            print_json(if result_only {
                &answer["result"]
            } else {
                &answer
            });
            Ok(())
        }
        Command::Analyses { node } => {
            let listed = node.client()?.get("/v1/analyses").await?;
            for analysis in listed["analyses"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}",
                    analysis["name"].as_str().unwrap_or("?"),
                    analysis["description"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Stats { node } => {
            let stats = node.client()?.get("/v1/stats").await?;
            print_json(&stats);
            Ok(())
        }
    }
}

/// A name as one URL path segment; names never need escaping, so anything that
/// would is refused here with a clear message rather than sent.
fn segment(name: &str) -> Result<&str> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("{name:?} is not a valid name (letters, digits, '.', '_', '-')");
    }
    Ok(name)
}

async fn serve(config: Config) -> Result<()> {
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

async fn publish(
    dir: &std::path::Path,
    url: &str,
    config: &Config,
    concurrency: usize,
) -> Result<()> {
    let plan = dram::publish::plan(dir)?;
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

async fn db(command: DbCommand) -> Result<()> {
    match command {
        DbCommand::Add {
            name,
            url,
            lazy,
            replicas: count,
            keep,
            wait,
            node,
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
                info = wait_for_database(&client, &name).await?;
            }
            println!("{name}: {}", info["state"].as_str().unwrap_or("?"));
            if let Some(error) = info["error"].as_str() {
                bail!("database {name} failed: {error}");
            }
            Ok(())
        }
        DbCommand::Ls { node } => {
            let list = node.client()?.get("/v1/databases").await?;
            println!(
                "{:<32} {:<8} {:<5} {:>6} {:>8} {:>14} {:>7}",
                "NAME", "STATE", "MODE", "SHARDS", "FILES", "BYTES", "DONE"
            );
            for db in list["databases"].as_array().into_iter().flatten() {
                let bytes = db["bytes"].as_u64().unwrap_or(0);
                let done = db["bytes_done"].as_u64().unwrap_or(0);
                let pct = if bytes == 0 {
                    100.0
                } else {
                    done as f64 * 100.0 / bytes as f64
                };
                println!(
                    "{:<32} {:<8} {:<5} {:>6} {:>8} {:>14} {:>6.1}%",
                    db["name"].as_str().unwrap_or("?"),
                    db["state"].as_str().unwrap_or("?"),
                    db["mode"].as_str().unwrap_or("?"),
                    db["shard_count"].as_u64().unwrap_or(0),
                    db["files"].as_u64().unwrap_or(0),
                    bytes,
                    pct
                );
            }
            Ok(())
        }
        DbCommand::Show { name, node } => {
            print_json(&node.client()?.get(&format!("/v1/databases/{name}")).await?);
            Ok(())
        }
        DbCommand::Rm { name, node } => {
            let info = node
                .client()?
                .delete(&format!("/v1/databases/{name}"))
                .await?;
            println!(
                "{name}: moved to trash, purged at {} ms",
                info["purge_at_ms"]
            );
            Ok(())
        }
        DbCommand::Restore { name, node } => {
            let info = node
                .client()?
                .post(&format!("/v1/databases/{name}/restore"), &json!({}))
                .await?;
            println!("{name}: {}", info["state"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}

async fn wait_for_database(client: &Client, name: &str) -> Result<Value> {
    loop {
        let info = client.get(&format!("/v1/databases/{name}")).await?;
        match info["state"].as_str() {
            Some("loading") => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => return Ok(info),
        }
    }
}

async fn alias(command: AliasCommand) -> Result<()> {
    match command {
        AliasCommand::Set { name, target, node } => {
            node.client()?
                .put(&format!("/v1/aliases/{name}"), &json!({ "target": target }))
                .await
                .with_context(|| format!("setting alias {name}"))?;
            println!("{name} -> {target}");
        }
        AliasCommand::Rm { name, node } => {
            node.client()?
                .delete(&format!("/v1/aliases/{name}"))
                .await
                .with_context(|| format!("removing alias {name}"))?;
            println!("{name} removed");
        }
        AliasCommand::Ls { node } => {
            let list = node.client()?.get("/v1/aliases").await?;
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

async fn cluster(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status { node } => {
            let status = node.client()?.get("/v1/cluster").await?;
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
        ClusterCommand::Shards { database, node } => {
            let path = format!("/v1/cluster/shards?database={}", segment(&database)?);
            let holders = node.client()?.get(&path).await?;
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
        ClusterCommand::Gc { node } => {
            let report = node.client()?.get("/v1/gc").await?;
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
        ClusterCommand::Plan {
            database,
            replicas,
            node,
        } => {
            let client = node.client()?;
            if let (Some(database), Some(replicas)) = (database, replicas) {
                let path = format!(
                    "/v1/plan?database={}&replicas={}",
                    segment(&database)?,
                    segment(&replicas)?
                );
                let what_if = client.get(&path).await?;
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
            let primary = plan["primary"]["id"].as_str().unwrap_or("none");
            println!(
                "plan of {}  (primary {primary})",
                plan["node"].as_str().unwrap_or("?")
            );
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

async fn admin(command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Backup { node } => {
            let written = node.client()?.post("/v1/admin/backup", &json!({})).await?;
            println!(
                "wrote {} ({})",
                written["backup"].as_str().unwrap_or("?"),
                human(written["bytes"].as_u64().unwrap_or(0))
            );
        }
        AdminCommand::Backups { node } => {
            let listing = node.client()?.get("/v1/admin/backups").await?;
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
        AdminCommand::Restore { name, node } => {
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

/// Bytes as `12.3 GiB`.
fn human(bytes: u64) -> String {
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

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// A `sql` answer as a text table: a header, a rule, a line per row.
fn sql_table(result: &serde_json::Value) -> String {
    let columns: Vec<String> = result["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    let cell = |value: &serde_json::Value| match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = result["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| columns.iter().map(|c| cell(&row[c.as_str()])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .fold(c.chars().count(), usize::max)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&columns);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&rule));
    for row in &rows {
        out.push_str(&line(row));
    }
    out.push_str(&format!("({} rows)\n", rows.len()));
    out
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
            "region  total\n------  -----\neu      18\nasia\n(2 rows)\n"
        );
    }
}
