//! `rucat engine …`: the client of a Rucat server, through the `rucat-client` crate.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use rucat::config::{ClientSettings, FileConfig};
use rucat::engine::admission::{Admission, Inadmissible};
use rucat::engine::{EngineId, EngineName, EngineRequest, EngineType, SparkConf};
use rucat::platform::kubernetes::{is_dns_label, objects, DriverSpec, KubernetesConfig};
use rucat_client::{Client, CreateRequest, Engine, EngineState, EventsRequest, ListRequest};

use super::output::{OutputFormat, Table};

#[derive(Debug, Args)]
pub struct EngineArgs {
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
    /// Show an engine (JSON by default).
    Get {
        /// The engine's id
        id: String,
        /// Print the engine as JSON or as a FIELD/VALUE table
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
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
        /// Print the page ({"engines", "next_cursor"}) as JSON: --output json
        #[arg(long)]
        json: bool,
        /// Print a table, or the page ({"engines", "next_cursor"}) as JSON
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Stop an engine (its configuration is kept for a restart).
    Stop {
        /// The engine's id
        id: String,
        /// Wait until it is Terminated
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Restart a stopped engine with the same configuration (or cancel a pending stop).
    Restart {
        /// The engine's id
        id: String,
        /// Wait until it is Running
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Delete a stopped (or failed) engine.
    Delete {
        /// The engine's id
        /// The engine's id
        id: String,
    },
    /// Print an engine's driver log (live, or the one kept when it stopped).
    Logs {
        /// The engine's id
        id: String,
        /// Print the log as it is (table), or {"source", "log"} as JSON
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print an engine's history: each state change, who caused it and why.
    Events {
        /// The engine's id
        id: String,
        /// Only events of these types (created, state_change, attempt_failed; comma-separated)
        #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
        types: Vec<String>,
        /// Only events with a cause of these kinds (user, monitor, timeout, idle,
        /// platform_error, health_check, store_error; comma-separated)
        #[arg(long = "cause", value_name = "KIND", value_delimiter = ',')]
        causes: Vec<String>,
        /// Print a table, or the events as a JSON array
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Wait until an engine reaches a state; prints its endpoint (if it has one).
    Wait {
        /// The engine's id
        id: String,
        #[arg(long, default_value = "Running")]
        state: EngineState,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Print the endpoint (table), or the engine as JSON
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Run a SQL statement on a running engine (through the Spark Connect proxy, with your
    /// credential) and print its result.
    Sql {
        /// The engine's id
        id: String,
        /// The statement, e.g. "SELECT 1 AS one"
        query: String,
        /// Print an aligned table, or the rows as a JSON array of objects
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print the Spark Connect connection string of a running engine (through the proxy).
    Connect {
        /// The engine's id
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

fn parse_conf(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

/// Runs an engine command against the server of `client` (`render` needs no server: it reads
/// the configuration file's [kubernetes] and [policy] tables).
pub async fn run(client: ClientSettings, args: EngineArgs, file: FileConfig) -> anyhow::Result<()> {
    if let EngineCommand::Render {
        request,
        id,
        namespace,
    } = args.command
    {
        return render(file, request, id, namespace).await;
    }
    let client = Client::new(&client.server, client.token);
    engine_command(&client, args.command).await
}

/// `rucat engine render`: the checks a create goes through, then the objects on standard output.
async fn render(
    file: FileConfig,
    request: RequestArgs,
    id: Option<String>,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let config = KubernetesConfig::from_file(&file.kubernetes)?;
    let policy = file.policy.unwrap_or_default();
    let configs: BTreeMap<String, String> = request.configs.into_iter().collect();
    let request = EngineRequest {
        name: EngineName::parse(&request.name)?,
        engine_type: EngineType::Spark,
        version: request.engine_version,
        configs: SparkConf::parse(configs.clone())?,
        idle_timeout_minutes: None,
    };
    let admission = Admission {
        policy: &policy,
        versions: &config.versions,
    };
    match admission.admit(&request) {
        Ok(()) => {}
        Err(Inadmissible::Version {
            version, available, ..
        }) => bail!(
            "unknown version {version:?}; available: {}",
            available.join(", ")
        ),
        Err(refused) => return Err(refused.into()),
    }
    let id = match id {
        Some(text) => EngineId::parse(&text)
            .with_context(|| format!("{text:?} is not an engine id (32 lowercase hex digits)"))?,
        None => EngineId::generate(),
    };
    let namespace = match namespace.or_else(|| config.namespace.clone()) {
        Some(namespace) => namespace,
        None => kube_namespace().await,
    };
    if !is_dns_label(&namespace) {
        bail!(
            "{namespace:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
        );
    }
    let spec = DriverSpec {
        // As the engine's first start makes them.
        generation: 1,
        id: &id,
        name: request.name.as_str(),
        version: &request.version,
        configs: &configs,
        pool: None,
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", objects::render(&spec, &namespace, &config))?;
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

/// Waits until the engine is in `state`, showing each state it passes on standard error; then
/// prints its endpoint (if it has one), or with `--output json` the engine, on standard output.
async fn wait_for(
    client: &Client,
    id: &str,
    state: EngineState,
    timeout_secs: u64,
    output: OutputFormat,
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
    match output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&engine)?)?,
        OutputFormat::Table => {
            if let Some(endpoint) = engine.endpoint {
                writeln!(out, "{endpoint}")?;
            }
        }
    }
    Ok(())
}

/// One engine as FIELD/VALUE lines.
fn engine_table(engine: &Engine) -> Table {
    let mut table = Table::new(["FIELD", "VALUE"]);
    let configs: Vec<String> = engine
        .configs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let idle = engine.idle_timeout_minutes.to_string();
    let rows: [(&str, &str); 11] = [
        ("id", &engine.id),
        ("name", &engine.name),
        ("owner", &engine.owner),
        ("type", &engine.engine_type),
        ("version", &engine.version),
        ("state", engine.state.as_str()),
        ("error", engine.error.as_deref().unwrap_or("-")),
        ("endpoint", engine.endpoint.as_deref().unwrap_or("-")),
        ("idle_timeout_minutes", &idle),
        ("create_time", &engine.create_time.to_rfc3339()),
        ("update_time", &engine.update_time.to_rfc3339()),
    ];
    for (field, value) in rows {
        table.row([field, value]);
    }
    table.row(["configs".to_owned(), configs.join(", ")]);
    table
}

async fn engine_command(client: &Client, command: EngineCommand) -> anyhow::Result<()> {
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
                let format = OutputFormat::Table;
                wait_for(client, &id, EngineState::Running, timeout, format, &mut out).await?;
            }
        }
        EngineCommand::Get { id, output } => {
            let engine = client.get(&id).await?;
            match output {
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&engine)?)?,
                OutputFormat::Table => engine_table(&engine).write(&mut out)?,
            }
        }
        EngineCommand::List {
            state,
            owner,
            limit,
            json,
            output,
        } => {
            let page = client
                .list_with(&ListRequest {
                    state,
                    owner,
                    limit,
                    cursor: None,
                })
                .await?;
            if json || output == OutputFormat::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&page)?)?;
            } else {
                let mut table = Table::new(["ID", "NAME", "OWNER", "STATE", "VERSION", "ENDPOINT"]);
                for engine in page.engines {
                    let owner = match &engine.pool {
                        Some(pool) => format!("(pool {pool})"),
                        None => engine.owner.clone(),
                    };
                    table.row([
                        engine.id.as_str(),
                        &engine.name,
                        &owner,
                        engine.state.as_str(),
                        &engine.version,
                        engine.endpoint.as_deref().unwrap_or("-"),
                    ]);
                }
                table.write(&mut out)?;
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
                let format = OutputFormat::Table;
                wait_for(
                    client,
                    &id,
                    EngineState::Terminated,
                    timeout,
                    format,
                    &mut out,
                )
                .await?;
            }
        }
        EngineCommand::Restart { id, wait, timeout } => {
            let engine = client.restart(&id).await?;
            writeln!(out, "{}", engine.state)?;
            if wait {
                let format = OutputFormat::Table;
                wait_for(client, &id, EngineState::Running, timeout, format, &mut out).await?;
            }
        }
        EngineCommand::Delete { id } => {
            client.delete(&id).await?;
            writeln!(out, "deleted {id}")?;
        }
        EngineCommand::Logs { id, output } => {
            let logs = client.logs(&id).await?;
            match output {
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&logs)?)?,
                OutputFormat::Table => write!(out, "{}", logs.log)?,
            }
        }
        EngineCommand::Events {
            id,
            types,
            causes,
            output,
        } => {
            let request = EventsRequest {
                types,
                causes,
                ..EventsRequest::default()
            };
            let events = client.events_with(&id, &request).await?;
            match output {
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&events)?)?,
                OutputFormat::Table => {
                    let mut table = Table::new(["TIME", "FROM", "TO", "BY", "CAUSE", "MESSAGE"]);
                    let or_dash = |text: Option<String>| text.unwrap_or_else(|| "-".into());
                    for event in events {
                        table.row([
                            event.time.to_rfc3339(),
                            or_dash(event.from.map(|state| state.to_string())),
                            event.to.to_string(),
                            or_dash(event.actor.map(|actor| actor.to_string())),
                            or_dash(event.cause.map(|cause| cause.to_string())),
                            event.message.unwrap_or_default(),
                        ]);
                    }
                    table.write(&mut out)?;
                }
            }
        }
        EngineCommand::Wait {
            id,
            state,
            timeout,
            output,
        } => {
            wait_for(client, &id, state, timeout, output, &mut out).await?;
        }
        EngineCommand::Sql { id, query, output } => {
            sql(client, &id, &query, output, &mut out).await?
        }
        EngineCommand::Render { .. } => bail!("render is handled before connecting"),
        EngineCommand::Connect { id, with_token } => {
            let engine = client.get(&id).await?;
            match (engine.state, engine.endpoint) {
                (EngineState::Running, Some(endpoint)) => match (with_token, client.has_token()) {
                    (true, true) => {
                        use secrecy::ExposeSecret;
                        let connection = client.connection_string(&endpoint)?;
                        writeln!(out, "{}", connection.expose_secret())?
                    }
                    (true, false) => {
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

/// `rucat engine sql`: the statement's result, through a Spark Connect session on the engine.
#[cfg(feature = "spark")]
async fn sql(
    client: &Client,
    id: &str,
    query: &str,
    output: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let spark = client.session(id).await?;
    let batch = async { spark.sql(query).await?.collect().await }
        .await
        .map_err(rucat_client::ClientError::from)
        .with_context(|| format!("the query failed on engine {id}"))?;
    match output {
        OutputFormat::Table => super::output::arrow_table(&batch)?.write(out)?,
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&super::output::arrow_json(&batch)?)?
        )?,
    }
    Ok(())
}

#[cfg(not(feature = "spark"))]
async fn sql(
    _client: &Client,
    _id: &str,
    _query: &str,
    _output: OutputFormat,
    _out: &mut impl Write,
) -> anyhow::Result<()> {
    bail!("this rucat was built without Spark Connect (cargo feature `spark`): `engine sql` is not available")
}
