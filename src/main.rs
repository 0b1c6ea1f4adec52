//! The `dram` command: runs a node, publishes databases, and talks to a node's
//! API. This file parses the command line and dispatches; `cli/` holds the
//! grammar (`args`), the commands (`commands`) and how answers print (`output`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

use dram::Config;

mod cli;

use cli::args::*;
use cli::commands::*;
use cli::output::*;

fn main() -> ExitCode {
    dram::net::install_crypto_provider();
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    if !serving {
        // A client command whose reader goes away (`dram db show x | head -1`)
        // ends quietly, as other command-line tools do, instead of panicking
        // on the closed pipe. (A server keeps ignoring SIGPIPE: a client
        // hanging up must not stop it.)
        // SAFETY: nothing else runs yet; setting a signal's disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if serving { "info" } else { "warn" })
    });
    // Colours only on a terminal: a log redirected to a file stays plain.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, &cli.node)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// An error message on one line: the engine's multi-line messages (a
/// SQL plan error, a TOML error's excerpt) folded, runs of blanks as one.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(path) => Ok(Config::from_file(path)?),
        None => Ok(Config::default()),
    }
}

async fn run(command: Command, node: &NodeArg) -> Result<()> {
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
        Command::Cluster(command) => cluster(command, node).await,
        Command::Admin(command) => admin(command, node).await,
        Command::Sql {
            database,
            sql,
            map,
            reduce,
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
            if node.json || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                println!("{}", serde_json::to_string_pretty(&result["rows"])?);
            } else {
                print!("{}", sql_table(result));
            }
            Ok(())
        }
        Command::Token { database, ttl } => {
            let answer = node
                .client()?
                .post(
                    "/v1/tokens",
                    &serde_json::json!({"database": database, "ttl": ttl}),
                )
                .await?;
            if node.json {
                print_json(&answer);
            } else {
                println!("{}", answer["token"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        Command::Publish {
            dir,
            url,
            config,
            concurrency,
            shard_keys,
        } => {
            publish(
                &dir,
                &url,
                &load_config(config.as_ref())?,
                concurrency,
                shard_keys,
            )
            .await
        }
        Command::Db(command) => db(command, node).await,
        Command::Alias(command) => alias(command, node).await,
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
        Command::Analyses => {
            let listed = node.client()?.get("/v1/analyses").await?;
            if node.json {
                print_json(&listed);
                return Ok(());
            }
            for analysis in listed["analyses"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}",
                    analysis["name"].as_str().unwrap_or("?"),
                    analysis["description"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "dram", &mut std::io::stdout());
            Ok(())
        }
        Command::Stats => {
            let stats = node.client()?.get("/v1/stats").await?;
            if node.json {
                print_json(&stats);
            } else {
                print!("{}", stats_tables(&stats));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_on_one_line() {
        let plan = "query: Error during planning: Invalid function 'nope'.\n\
                    Did you mean 'now'?\n\n  at line 1";
        assert_eq!(
            one_line(plan),
            "query: Error during planning: Invalid function 'nope'. Did you mean 'now'? at line 1"
        );
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn times_print_as_local_minutes() {
        let shown = cli::output::local_time(1_796_668_279_843);
        let digits: String = shown.chars().filter(char::is_ascii_digit).collect();
        assert_eq!((shown.len(), digits.len()), (16, 12), "{shown}");
        assert!(shown.starts_with("2026-12-"), "{shown}");
    }
}
