//! The command line: its arguments ([`Cli`]), what each subcommand does ([`run`]), and how the
//! binary reports an error ([`main`]).
//!
//! [`roles`] runs the server roles (`serve`, `server`, `monitor`, `proxy`), [`engine`] is the
//! client of a Rucat server (`engine …`), [`token`] makes API tokens. The flags that set a
//! setting are declared with the settings they set, in the library: the roles' in
//! [`RoleArgs`], the client's in [`ClientArgs`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rucat::app::Roles;
use rucat::config::{ClientArgs, ClientSettings, FileConfig, RoleArgs};
use rucat_client::ClientError;

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
    /// [kubernetes], [simulated] and [policy] tables, and [[pool]] tables (warm pools; see the
    /// README).
    #[arg(long, env = "RUCAT_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub client: ClientArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The embedded default: REST server, monitor and Spark Connect proxy in one process, SQLite
    /// under the data directory, engines on the local platform.
    Serve(RoleArgs),
    /// The REST server alone (for several servers and monitors sharing one store).
    Server(RoleArgs),
    /// The monitor alone: drives engines through their states on the platform.
    Monitor(RoleArgs),
    /// The Spark Connect proxy alone: the one address clients connect to (see [proxy]).
    Proxy(RoleArgs),
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

/// Parses the command line and runs it; errors go to standard error, with a hint when a
/// credential was refused.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if let Some(hint) = error.downcast_ref::<ClientError>().and_then(auth_hint) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What to do about a refused credential, in one line.
fn auth_hint(error: &ClientError) -> Option<&'static str> {
    match error {
        ClientError::Api { status, .. } if status.as_u16() == 401 => Some(
            "the server wants a valid credential: pass --token TOKEN or set RUCAT_TOKEN (an operator makes tokens with `rucat token create --user NAME`)",
        ),
        ClientError::Api { status, code, .. } if status.as_u16() == 403 && code == "forbidden" => {
            Some("this needs an admin: use an admin token (`rucat token create --user NAME --admin`)")
        }
        _ => None,
    }
}

/// Logs to standard error, filtered by RUCAT_LOG (else `default`).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUCAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
            init_logging("warn");
            engine::run(ClientSettings::resolve(cli.client, &file), args, file).await
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
