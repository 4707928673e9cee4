//! The command line: its arguments ([`Cli`]) and what each subcommand does ([`run`]).
//!
//! [`roles`] runs the server roles (`serve`, `server`, `monitor`, `proxy`), [`engine`] is the
//! client of a Rucat server (`engine …`), [`token`] makes API tokens.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rucat::app::Roles;
use rucat::config::FileConfig;
use secrecy::SecretString;

pub mod engine;
pub mod output;
pub mod roles;
pub mod token;

/// Rucat creates, connects to and manages Spark Connect engines. `rucat serve` runs everything in
/// one process on SQLite; `rucat server` and `rucat monitor` processes can share one PostgreSQL
/// store.
///
/// Settings come from flags, then environment variables, then the configuration file
/// (--config, TOML), then defaults. See each subcommand's --help.
#[derive(Debug, Parser)]
#[command(name = "rucat", version)]
pub struct Cli {
    /// Configuration file (TOML) with any of the settings below, plus [auth] (API tokens, a
    /// tokens file, [auth.jwt] for OIDC), [quota], [database], [monitor], [local],
    /// [kubernetes], [simulated] and [policy] tables (see the README).
    #[arg(long, env = "RUCAT_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Rucat server the engine commands talk to [default: http://127.0.0.1:3000]
    #[arg(long, env = "RUCAT_SERVER", global = true, value_name = "URL")]
    pub server: Option<String>,

    /// API token (or OIDC JWT) the engine commands send, as Authorization: Bearer
    #[arg(long, env = "RUCAT_TOKEN", global = true, hide_env_values = true, value_parser = secret)]
    pub token: Option<SecretString>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The embedded default: REST server, monitor and Spark Connect proxy in one process, SQLite
    /// under the data directory, engines on the local platform.
    Serve(roles::RoleArgs),
    /// The REST server alone (for several servers and monitors sharing one store).
    Server(roles::RoleArgs),
    /// The monitor alone: drives engines through their states on the platform.
    Monitor(roles::RoleArgs),
    /// The Spark Connect proxy alone: the one address clients connect to (see [proxy]).
    Proxy(roles::RoleArgs),
    /// Manage engines through a Rucat server.
    Engine(engine::EngineArgs),
    /// Make API tokens (an operator's command; it needs no server).
    Token(token::TokenArgs),
    /// Print a shell completion script: `rucat completions bash > /etc/bash_completion.d/rucat`,
    /// `rucat completions zsh > "${fpath[1]}/_rucat"`, `rucat completions fish >
    /// ~/.config/fish/completions/rucat.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the REST API's OpenAPI 3.1 document, as `GET /openapi.json` serves it (it needs no
    /// server and no configuration).
    Openapi,
}

/// A credential, held so that it cannot be printed by accident.
fn secret(text: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(text.to_owned()))
}

fn file_config(path: Option<&PathBuf>) -> anyhow::Result<FileConfig> {
    Ok(match path {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    })
}

/// `rucat openapi`: the REST API's OpenAPI document, as `GET /openapi.json` serves it.
fn openapi() -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", rucat::server::openapi_json())?;
    out.flush()?;
    Ok(())
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        // Needs no configuration: a broken RUCAT_CONFIG must not break the shell's startup.
        return completions(shell);
    }
    if let Command::Openapi = cli.command {
        // Needs no configuration either: the document is the same for every server.
        return openapi();
    }
    let file = file_config(cli.config.as_ref())?;
    match cli.command {
        Command::Serve(args) => roles::run(args, file, Roles::ALL).await,
        Command::Server(args) => roles::run(args, file, Roles::SERVER).await,
        Command::Monitor(args) => roles::run(args, file, Roles::MONITOR).await,
        Command::Proxy(args) => roles::run(args, file, Roles::PROXY).await,
        Command::Token(args) => token::run(args),
        Command::Completions { shell } => completions(shell),
        Command::Openapi => openapi(),
        Command::Engine(args) => {
            crate::init_logging("warn");
            engine::run(cli.server, cli.token, args, file).await
        }
    }
}

/// `rucat completions SHELL`: the shell's completion script on standard output.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "rucat",
        &mut out,
    );
    out.flush()?;
    Ok(())
}
