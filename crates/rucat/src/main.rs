//! The `rucat` binary: the roles (`serve`, `server`, `monitor`) and the client (`engine …`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use rucat::app::{Application, Roles};
use rucat::auth::token::{self, TokenEntry};
use rucat::auth::Role;
use rucat::client::{Client, ClientError, CreateRequest, ListRequest};
use rucat::config::{FileConfig, Overrides, Settings};
use rucat::engine::{Engine, EngineId, EngineName, EngineState, SparkConf};
use rucat::platform::kubernetes::{objects, DriverSpec};
use rucat::shutdown;
use secrecy::SecretString;

/// Rucat creates, connects to and manages Spark Connect engines. `rucat serve` runs everything in
/// one process on SQLite; `rucat server` and `rucat monitor` processes can share one PostgreSQL
/// store.
///
/// Settings come from flags, then environment variables, then the configuration file
/// (--config, TOML), then defaults. See each subcommand's --help.
#[derive(Debug, Parser)]
#[command(name = "rucat", version)]
struct Cli {
    /// Configuration file (TOML) with any of the settings below, plus [auth] (API tokens, a
    /// tokens file, [auth.jwt] for OIDC), [quota], [database], [monitor], [local],
    /// [kubernetes], [simulated] and [policy] tables (see the README).
    #[arg(long, env = "RUCAT_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    Engine(EngineArgs),
    /// Make API tokens (an operator's command; it needs no server).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new random API token (256 bits) once, with the configuration entry that lets it
    /// in: add the entry to the tokens file ([auth] tokens_file, read again when it changes) or
    /// as [[auth.tokens]] to the configuration file, and give the token to its user. Rucat keeps
    /// only the token's SHA-256; a lost token cannot be shown again, only replaced.
    Create {
        /// The user the token authenticates as (the owner of the engines they create)
        #[arg(long, value_name = "NAME")]
        user: String,
        /// Make it an admin token: it sees and acts on every engine
        #[arg(long)]
        admin: bool,
        /// Print {"user", "role", "token", "hash"} as JSON instead
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct RoleArgs {
    /// REST listen address [default: 127.0.0.1:3000]. Without authentication ([auth] in the
    /// configuration file) only loopback addresses are accepted.
    #[arg(long, env = "RUCAT_LISTEN", value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Spark Connect proxy listen address [default: 127.0.0.1:15002]. Plaintext only on
    /// loopback unless [proxy] allow_plaintext; TLS with [proxy] tls_cert and tls_key.
    #[arg(long, env = "RUCAT_PROXY_LISTEN", value_name = "HOST:PORT")]
    proxy_listen: Option<String>,
    /// Data directory: SQLite file, local engines' work directories and logs [default: ~/.rucat]
    #[arg(long, env = "RUCAT_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Store URL: sqlite://PATH, or postgres://USER[:PASSWORD]@HOST[:PORT]/DB to share one store
    /// between several servers and monitors [default: sqlite://<data-dir>/rucat.db]
    #[arg(
        long,
        env = "RUCAT_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Most connections this process opens to the store [default: 8 for SQLite, 10 for
    /// PostgreSQL]
    #[arg(long, env = "RUCAT_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    database_max_connections: Option<u32>,
    /// Where engines run: local (Spark processes on this machine), kubernetes (a driver pod per
    /// engine, through the kubeconfig in KUBECONFIG or ~/.kube/config, or the pod's service
    /// account in a cluster; see the [kubernetes] table) or simulated (engines run nowhere;
    /// every create and delete is written to <data-dir>/simulated/journal)
    /// [default: local] [possible values: local, kubernetes, simulated]
    #[arg(long, env = "RUCAT_PLATFORM")]
    platform: Option<String>,
    /// Spark distribution for the local platform [default: the one scripts/setup.sh installed]
    #[arg(long, env = "SPARK_HOME", value_name = "DIR")]
    spark_home: Option<PathBuf>,
    /// Let the REST server listen beyond loopback although nothing authenticates its users:
    /// anyone who reaches the address manages every engine. For development behind a network
    /// policy only; configure [auth] instead.
    #[arg(long, env = "RUCAT_ALLOW_UNAUTHENTICATED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    allow_unauthenticated: Option<bool>,
}

#[derive(Debug, Args)]
struct EngineArgs {
    /// Rucat server to talk to [default: http://127.0.0.1:3000]
    #[arg(long, env = "RUCAT_SERVER", global = true, value_name = "URL")]
    server: Option<String>,
    /// API token (or OIDC JWT) for the server, sent as Authorization: Bearer
    #[arg(long, env = "RUCAT_TOKEN", global = true, hide_env_values = true, value_parser = secret)]
    token: Option<SecretString>,
    #[command(subcommand)]
    command: EngineCommand,
}

/// What an engine request is made of, on the command line.
#[derive(Debug, Args)]
struct RequestArgs {
    /// Engine name: 1 to 128 letters, digits, '-', '_' or '.'
    #[arg(long)]
    name: String,
    /// Spark version (one the server offers: with the kubernetes platform, one of [kubernetes]
    /// versions)
    #[arg(long = "version", value_name = "VERSION")]
    engine_version: String,
    /// Spark configuration, KEY=VALUE (repeatable)
    #[arg(long = "conf", value_name = "KEY=VALUE", value_parser = parse_conf)]
    configs: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
enum EngineCommand {
    /// Ask for a new Spark engine; prints its id (and, with --wait, its progress and endpoint).
    Create {
        #[command(flatten)]
        request: RequestArgs,
        /// Stop the engine after this many minutes without a Spark Connect call (0: never)
        /// [default: the server's]
        #[arg(long, value_name = "MINUTES")]
        idle_timeout_minutes: Option<u32>,
        /// Wait until the engine is Running and print its sc:// endpoint
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Show an engine (JSON).
    Get { id: String },
    /// List engines: your own, or with an admin token everyone's.
    List {
        /// Only engines in this state (e.g. Running)
        #[arg(long)]
        state: Option<EngineState>,
        /// Only this user's engines (admins only)
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// At most this many engines per page
        #[arg(long)]
        limit: Option<u32>,
        /// Print the page as JSON
        #[arg(long)]
        json: bool,
    },
    /// Stop an engine (its configuration is kept for a restart).
    Stop {
        id: String,
        /// Wait until it is Terminated
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Restart a stopped engine with the same configuration (or cancel a pending stop).
    Restart {
        id: String,
        /// Wait until it is Running
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Delete a stopped (or failed) engine.
    Delete { id: String },
    /// Print an engine's driver log (live, or the one kept when it stopped).
    Logs { id: String },
    /// Print an engine's state history.
    Events { id: String },
    /// Wait until an engine reaches a state.
    Wait {
        id: String,
        #[arg(long, default_value = "Running")]
        state: EngineState,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Print the Spark Connect connection string of a running engine (through the proxy).
    Connect {
        id: String,
        /// Add the client's credential (--token, RUCAT_TOKEN) as ;token=, so that the string
        /// works as printed (it then holds a secret: mind where it goes)
        #[arg(long)]
        with_token: bool,
    },
    /// Print the Kubernetes objects (driver pod and headless Service) the kubernetes platform
    /// would create for this engine request, from the configuration file's [kubernetes] and
    /// [policy] tables, without creating anything. Refuses what the server would refuse.
    Render {
        #[command(flatten)]
        request: RequestArgs,
        /// Render for this engine id [default: a new id, as a create would make]
        #[arg(long)]
        id: Option<String>,
        /// Namespace of the objects [default: [kubernetes] namespace, else the kubeconfig
        /// context's, else "default"]
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// A credential, held so that it cannot be printed by accident.
fn secret(text: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(text.to_owned()))
}

fn parse_conf(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUCAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
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

fn file_config(path: Option<&PathBuf>) -> anyhow::Result<FileConfig> {
    Ok(match path {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = file_config(cli.config.as_ref())?;
    match cli.command {
        Command::Serve(args) => run_roles(args, file, Roles::ALL).await,
        Command::Server(args) => run_roles(args, file, Roles::SERVER).await,
        Command::Monitor(args) => run_roles(args, file, Roles::MONITOR).await,
        Command::Proxy(args) => run_roles(args, file, Roles::PROXY).await,
        Command::Token(TokenArgs {
            command: TokenCommand::Create { user, admin, json },
        }) => create_token(user, admin, json),
        Command::Engine(args) => {
            init_logging("warn");
            let settings = Settings::resolve(
                Overrides {
                    server: args.server,
                    token: args.token,
                    data_dir: Some(PathBuf::new()),
                    ..Overrides::default()
                },
                file,
            )?;
            if let EngineCommand::Render {
                request,
                id,
                namespace,
            } = args.command
            {
                return render(&settings, request, id, namespace).await;
            }
            let client = Client::new(&settings.server, settings.token.clone());
            engine_command(&client, settings.token.clone(), args.command).await
        }
    }
}

async fn run_roles(args: RoleArgs, file: FileConfig, roles: Roles) -> anyhow::Result<()> {
    init_logging("info");
    let settings = Settings::resolve(
        Overrides {
            listen: args.listen,
            proxy_listen: args.proxy_listen,
            data_dir: args.data_dir,
            database_url: args.database_url,
            database_max_connections: args.database_max_connections,
            platform: args.platform,
            spark_home: args.spark_home,
            allow_unauthenticated: args.allow_unauthenticated,
            ..Overrides::default()
        },
        file,
    )?;
    let application = Application::build(&settings, roles).await?;
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::signal().await;
        tracing::info!("shutdown requested; finishing requests and steps under way");
        trigger.fire();
    });
    application.run(shutdown).await?;
    Ok(())
}

/// `rucat token create`: a new token, shown once, and its configuration entry.
fn create_token(user: String, admin: bool, json: bool) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    rucat::auth::check_user_name(&user).map_err(anyhow::Error::msg)?;
    let (secret, hash) = token::generate().map_err(anyhow::Error::msg)?;
    let entry = TokenEntry {
        user,
        role: if admin { Role::Admin } else { Role::User },
        hash,
    };
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "user": entry.user,
            "role": entry.role,
            "token": secret.expose_secret(),
            "hash": entry.hash,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(
            out,
            "# The token of {} (shown this once; Rucat keeps only its hash):\n{}\n\n\
             # Add this entry to the tokens file (or as [[auth.tokens]] to the configuration file):\n{}",
            entry.user,
            secret.expose_secret(),
            token::entry_toml(&entry, "tokens")
        )?;
    }
    out.flush().context("cannot write to standard output")?;
    Ok(())
}

/// Waits until the engine is in `state`, showing each state it passes on standard error, then
/// prints its endpoint (if it has one) on standard output.
async fn wait_for(
    client: &Client,
    id: &str,
    state: EngineState,
    timeout_secs: u64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    out.flush()?;
    let show = |engine: &Engine| match &engine.error {
        Some(error) => eprintln!("{}: {}", engine.state, error),
        None => eprintln!("{}", engine.state),
    };
    let engine = client
        .wait(id, state, Duration::from_secs(timeout_secs), show)
        .await?;
    if let Some(endpoint) = engine.endpoint {
        writeln!(out, "{endpoint}")?;
    }
    Ok(())
}

/// `rucat engine render`: the checks a create goes through, then the objects on standard output.
async fn render(
    settings: &Settings,
    request: RequestArgs,
    id: Option<String>,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let config = &settings.kubernetes;
    let name = EngineName::parse(&request.name)?;
    let configs: BTreeMap<String, String> = request.configs.into_iter().collect();
    let conf = SparkConf::parse(configs.clone())?;
    if !config.versions.contains(&request.engine_version) {
        bail!(
            "unknown version {:?}; available: {}",
            request.engine_version,
            config.versions.join(", ")
        );
    }
    settings.policy.check(&conf)?;
    let id = match id {
        Some(text) => EngineId::parse(&text)
            .with_context(|| format!("{text:?} is not an engine id (32 lowercase hex digits)"))?,
        None => EngineId::generate(),
    };
    let namespace = match namespace.or_else(|| config.namespace.clone()) {
        Some(namespace) => namespace,
        None => kube_namespace().await,
    };
    if !rucat::config::is_dns_label(&namespace) {
        bail!(
            "{namespace:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
        );
    }
    let spec = DriverSpec {
        // As the engine's first start makes them.
        generation: 1,
        id: &id,
        name: name.as_str(),
        version: &request.engine_version,
        configs: &configs,
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", objects::render(&spec, &namespace, config))?;
    out.flush().context("cannot write to standard output")?;
    Ok(())
}

/// The namespace of the kubeconfig's current context (or of the pod, in a cluster), else
/// "default".
async fn kube_namespace() -> String {
    match kube::Config::infer().await {
        Ok(config) => config.default_namespace,
        Err(_) => "default".to_owned(),
    }
}

async fn engine_command(
    client: &Client,
    token: Option<SecretString>,
    command: EngineCommand,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        EngineCommand::Create {
            request,
            idle_timeout_minutes,
            wait,
            timeout,
        } => {
            let configs: BTreeMap<String, String> = request.configs.into_iter().collect();
            let id = client
                .create_with(&CreateRequest {
                    name: request.name,
                    version: request.engine_version,
                    configs,
                    idle_timeout_minutes,
                })
                .await?;
            writeln!(out, "{id}")?;
            if wait {
                wait_for(client, &id, EngineState::Running, timeout, &mut out).await?;
            }
        }
        EngineCommand::Get { id } => {
            let engine = client.get(&id).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&engine)?)?;
        }
        EngineCommand::List {
            state,
            owner,
            limit,
            json,
        } => {
            let page = client
                .list_with(&ListRequest {
                    state,
                    owner,
                    limit,
                    cursor: None,
                })
                .await?;
            if json {
                let value =
                    serde_json::json!({"engines": page.engines, "next_cursor": page.next_cursor});
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                writeln!(
                    out,
                    "{:<32}  {:<24}  {:<16}  {:<20}  {:<8}  ENDPOINT",
                    "ID", "NAME", "OWNER", "STATE", "VERSION"
                )?;
                for engine in page.engines {
                    writeln!(
                        out,
                        "{:<32}  {:<24}  {:<16}  {:<20}  {:<8}  {}",
                        engine.id,
                        engine.name,
                        engine.owner,
                        engine.state.as_str(),
                        engine.version,
                        engine.endpoint.as_deref().unwrap_or("-")
                    )?;
                }
                if let Some(cursor) = page.next_cursor {
                    writeln!(
                        out,
                        "(more engines: the next page starts after cursor {cursor})"
                    )?;
                }
            }
        }
        EngineCommand::Stop { id, wait, timeout } => {
            let engine = client.stop(&id).await?;
            writeln!(out, "{}", engine.state)?;
            if wait {
                wait_for(client, &id, EngineState::Terminated, timeout, &mut out).await?;
            }
        }
        EngineCommand::Restart { id, wait, timeout } => {
            let engine = client.restart(&id).await?;
            writeln!(out, "{}", engine.state)?;
            if wait {
                wait_for(client, &id, EngineState::Running, timeout, &mut out).await?;
            }
        }
        EngineCommand::Delete { id } => {
            client.delete(&id).await?;
            writeln!(out, "deleted {id}")?;
        }
        EngineCommand::Logs { id } => {
            let logs = client.logs(&id).await?;
            write!(out, "{}", logs.log)?;
        }
        EngineCommand::Events { id } => {
            for event in client.events(&id).await? {
                let from = event
                    .from
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into());
                let by = event
                    .actor
                    .map(|actor| actor.to_string())
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{}  {:<20} -> {:<20}  {:<24}  {}",
                    event.time.to_rfc3339(),
                    from,
                    event.to.as_str(),
                    by,
                    event.message.unwrap_or_default()
                )?;
            }
        }
        EngineCommand::Wait { id, state, timeout } => {
            wait_for(client, &id, state, timeout, &mut out).await?;
        }
        EngineCommand::Render { .. } => bail!("render is handled before connecting"),
        EngineCommand::Connect { id, with_token } => {
            let engine = client.get(&id).await?;
            match (engine.state, engine.endpoint) {
                (EngineState::Running, Some(endpoint)) => match (with_token, token) {
                    (true, Some(token)) => {
                        use secrecy::ExposeSecret;
                        writeln!(out, "{endpoint};token={}", token.expose_secret())?
                    }
                    (true, None) => {
                        bail!("--with-token needs a credential: pass --token or set RUCAT_TOKEN")
                    }
                    (false, _) => writeln!(out, "{endpoint}")?,
                },
                (state, _) => {
                    bail!("engine {id} is {state}, not Running: no endpoint to connect to")
                }
            }
        }
    }
    out.flush().context("cannot write to standard output")?;
    Ok(())
}
