//! The command line's grammar (clap): commands, their arguments and the
//! flags every client command shares.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use dram::Config;
use dram::client::Client;

#[derive(Parser)]
#[command(
    name = "dram",
    version,
    about = "Serve read-only databases from object storage"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) node: NodeArg,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
        /// TABLE=COLUMN: the shard table's rows were put in shards by this
        /// column, every such table by the same mapping (co-located), so SQL
        /// joins and groups on it run shard by shard. Repeat for each table.
        #[arg(long = "shard-key", value_name = "TABLE=COLUMN", value_parser = shard_key)]
        shard_keys: Vec<(String, String)>,
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
    },
    /// The analyses a node serves.
    Analyses,
    /// Per-database and per-disk statistics of a node.
    Stats,
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
    },
    /// A signed token that lets its holder query one database or alias until
    /// it expires (needs the admin token when one is set).
    Token {
        /// The database or alias the token opens.
        database: String,
        /// Seconds it is valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// The cluster as a node sees it.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Backups of the registry (definitions, aliases, pins) in backup.url.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print the shell's completion script: `source <(dram completions bash)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// Write a backup of the registry now.
    Backup,
    /// List the backups, newest first, with their validity.
    Backups,
    /// Make the cluster's registry equal backup NAME's (entries made since are removed).
    Restore { name: String },
}

/// Settings of `dram serve` that override the config file.
#[derive(Args, Clone, Default)]
pub(crate) struct ServeOverrides {
    /// node.id
    #[arg(long = "id", value_name = "ID")]
    pub(crate) node_id: Option<String>,
    /// node.data_dir
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// node.http_listen
    #[arg(long = "http", value_name = "ADDR")]
    pub(crate) http_listen: Option<String>,
    /// cluster.gossip_listen
    #[arg(long = "gossip", value_name = "ADDR")]
    pub(crate) gossip_listen: Option<String>,
    /// pg.listen (the PostgreSQL protocol)
    #[arg(long = "pg", value_name = "ADDR")]
    pub(crate) pg_listen: Option<String>,
    /// cluster.seeds (repeat for several)
    #[arg(long = "seed", value_name = "ADDR")]
    pub(crate) seeds: Vec<String>,
}

impl ServeOverrides {
    pub(crate) fn apply(self, config: &mut Config) {
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
        if let Some(pg) = self.pg_listen {
            config.pg.listen = pg;
        }
        if !self.seeds.is_empty() {
            config.cluster.seeds = self.seeds;
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Health, members (live or dead), their disks and what they serve.
    Status,
    /// Which members hold each shard of a database, and in which state.
    Shards { database: String },
    /// The databases garbage collection may delete, coldest first, and whether a
    /// full disk makes it run now.
    Gc,
    /// What placement would do now (downloads, trashes, extra copies waiting),
    /// or with --database and --replicas how disk use per node would change.
    Plan {
        #[arg(long, requires = "replicas")]
        database: Option<String>,
        /// Another replication factor: a number or "all".
        #[arg(long, requires = "database")]
        replicas: Option<String>,
    },
}

#[derive(Args, Clone)]
pub(crate) struct NodeArg {
    /// The node a client command talks to: its URL, or host:port (http).
    #[arg(
        long,
        global = true,
        env = "DRAM_NODE",
        default_value = "http://127.0.0.1:7070"
    )]
    pub(crate) node: String,
    /// A token for the node: the admin token, or a signed token for a query
    /// [env: DRAM_TOKEN].
    // Read from the environment here, not by clap: clap counts an option
    // given by the environment as used and shows it in every usage line.
    #[arg(long, global = true)]
    pub(crate) token: Option<String>,
    /// PEM certificates to trust for an https:// node (its own certificate)
    /// [env: DRAM_CA].
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Print the node's answer as JSON (tables otherwise; `query` always
    /// prints JSON, `sql` also when stdout is not a terminal).
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl NodeArg {
    /// A client of the node, sending the token and trusting the CA when given.
    pub(crate) fn client(&self) -> Result<Client> {
        let url = if self.node.contains("://") {
            self.node.clone()
        } else {
            format!("http://{}", self.node)
        };
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let token = self.token.clone().or_else(|| from_env("DRAM_TOKEN"));
        let client = Client::new(&url).with_token(token);
        let ca = self
            .ca
            .clone()
            .or_else(|| from_env("DRAM_CA").map(PathBuf::from));
        let Some(path) = &ca else {
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
pub(crate) enum DbCommand {
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
        /// Wait until the database is ready (or failed), with a progress bar
        /// on a terminal (a line every 5 s otherwise).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds (the load
        /// goes on; exit status 1).
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<u64>,
    },
    /// List databases.
    Ls,
    /// Show one database with its shards and progress.
    Show { name: String },
    /// Delete a database (to the trash; restorable until purged).
    Rm { name: String },
    /// Bring a database back from the trash.
    Restore { name: String },
}

#[derive(Subcommand)]
pub(crate) enum AliasCommand {
    /// Point NAME at database TARGET.
    Set {
        name: String,
        target: String,
        /// First fetch every lazy copy of TARGET on every member and replay
        /// the recent queries of NAME's current database against TARGET, so
        /// that their answers are cached when NAME moves.
        #[arg(long)]
        warm: bool,
    },
    /// Remove an alias.
    Rm { name: String },
    /// List aliases.
    Ls,
}

/// `TABLE=COLUMN` of `--shard-key`.
fn shard_key(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((table, column)) if !table.is_empty() && !column.is_empty() => {
            Ok((table.to_string(), column.to_string()))
        }
        _ => Err(format!("{text:?} is not TABLE=COLUMN")),
    }
}
